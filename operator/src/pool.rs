//! Pool status (per `WorkerPool`, triggered also by its `Worker`s): kstatus `replicas`,
//! `readyReplicas` (its workers that are Free or Bound and heartbeating; of them
//! `freeReplicas` and `boundReplicas`),
//! `observedGeneration`, `Ready` and `Reconciling`. Written only when it changes; looked at
//! again when the heartbeat of a ready worker would expire.
//!
//! [`decide`] is pure; [`reconcile`] writes its patch.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};

use crds::ate::WorkerPool;
use crds::conditions::{READY, RECONCILING, reasons};
use crds::liveness::DEAD_WORKER_AFTER;
use crds::substrate::{Worker, WorkerPhase};

use crate::act::{self, Outcome};
use crate::runner::Ctx;
use crate::{OperatorError, age};

/// The status patch (if the status must change) and when to look again.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolPlan {
    pub patch: Option<Value>,
    /// When the first ready worker's heartbeat expires.
    pub requeue_after: Option<Duration>,
}

/// The pools a worker counts for (every pool of that name: workers name their pool only).
pub(crate) fn pools_of(w: &Worker, pools: &[Arc<WorkerPool>]) -> Vec<ObjectRef<WorkerPool>> {
    pools
        .iter()
        .filter(|p| p.metadata.name.as_deref() == Some(w.spec.pool.as_str()))
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// Decides the status of `pool` given every cached worker.
pub fn decide<'a>(
    pool: &WorkerPool,
    workers: impl IntoIterator<Item = &'a Worker>,
    now: Timestamp,
) -> PoolPlan {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let generation = pool.metadata.generation.unwrap_or(0);
    let want = pool.spec.replicas;
    let mut ready = 0i32;
    let mut free = 0i32;
    let mut first_expiry: Option<Duration> = None;
    for w in workers.into_iter().filter(|w| w.spec.pool == name) {
        let Some(s) = w.status.as_ref() else { continue };
        if !matches!(s.phase, Some(WorkerPhase::Free | WorkerPhase::Bound)) {
            continue;
        }
        let Some(a) = s.last_heartbeat_time.as_ref().map(|t| age(t, now)) else {
            continue;
        };
        if a < DEAD_WORKER_AFTER {
            ready += 1;
            if s.phase == Some(WorkerPhase::Free) {
                free += 1;
            }
            let left = DEAD_WORKER_AFTER - a + Duration::from_millis(200);
            first_expiry = Some(first_expiry.map_or(left, |f| f.min(left)));
        }
    }
    let ok = ready >= want;
    let reason = if ok {
        reasons::WORKERS_READY
    } else {
        reasons::WORKERS_NOT_READY
    };
    let msg = format!("{ready} of {want} workers ready");
    let cur = pool.status.clone().unwrap_or_default();
    let cond = |t: &str| cur.conditions.iter().find(|c| c.type_ == t);
    let unchanged = cur.observed_generation == Some(generation)
        && cur.replicas == Some(want)
        && cur.ready_replicas == Some(ready)
        && cur.free_replicas == Some(free)
        && cur.bound_replicas == Some(ready - free)
        && cond(READY).is_some_and(|c| c.reason == reason);
    if unchanged {
        return PoolPlan {
            patch: None,
            requeue_after: first_expiry,
        };
    }
    let keep = |t: &str, status: bool| {
        cond(t)
            .filter(|c| (c.status == "True") == status)
            .map(|c| c.last_transition_time.clone())
    };
    let c = |t: &str, status: bool| {
        json!({"type": t, "status": if status { "True" } else { "False" }, "reason": reason,
            "message": msg, "observedGeneration": generation,
            "lastTransitionTime": keep(t, status).map_or_else(|| json!(crate::fmt_time(now)), |t| json!(t))})
    };
    PoolPlan {
        patch: Some(json!({"status": {
            "observedGeneration": generation, "replicas": want, "readyReplicas": ready,
            "freeReplicas": free, "boundReplicas": ready - free,
            "conditions": [c(READY, ok), c(RECONCILING, !ok)],
        }})),
        requeue_after: first_expiry,
    }
}

/// Reconciles one pool.
pub(crate) async fn reconcile(p: Arc<WorkerPool>, ctx: Arc<Ctx>) -> Result<Action, OperatorError> {
    let workers = ctx.caches.workers.state();
    let plan = decide(&p, workers.iter().map(|w| w.as_ref()), crate::now());
    if let Some(patch) = plan.patch {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        let api: Api<WorkerPool> = Api::namespaced(ctx.clients.cluster.clone(), &ns);
        if act::patch_status(&api, &name, patch).await? == Outcome::Gone {
            return Ok(ctx.gone("pool", p.metadata.uid.as_deref().unwrap_or_default()));
        }
    }
    Ok(Action::requeue(
        plan.requeue_after
            .unwrap_or(ctx.cfg.resync)
            .min(ctx.cfg.resync),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(status: Value) -> WorkerPool {
        serde_json::from_value(
            json!({"apiVersion": "ate.dev/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": "p", "namespace": "default", "generation": 1},
            "spec": {"replicas": 2}, "status": status}),
        )
        .unwrap()
    }

    fn worker(pool: &str, phase: &str, heartbeat: &str) -> Worker {
        serde_json::from_value(
            json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Worker",
            "metadata": {"name": "w"}, "spec": {"pool": pool},
            "status": {"phase": phase, "lastHeartbeatTime": heartbeat}}),
        )
        .unwrap()
    }

    #[test]
    fn ready_replicas_count_heartbeating_free_or_bound_workers_of_the_pool() {
        let now: Timestamp = "2026-01-01T00:00:40Z".parse().unwrap();
        let ws = [
            worker("p", "Free", "2026-01-01T00:00:30Z"),
            worker("p", "Bound", "2026-01-01T00:00:20Z"),
            worker("p", "Free", "2026-01-01T00:00:05Z"), // stale
            worker("p", "Unhealthy", "2026-01-01T00:00:40Z"),
            worker("q", "Free", "2026-01-01T00:00:40Z"),
        ];
        let plan = decide(&pool(json!({})), &ws, now);
        let patch = plan.patch.unwrap();
        assert_eq!(patch["status"]["readyReplicas"], 2);
        assert_eq!(patch["status"]["freeReplicas"], 1);
        assert_eq!(patch["status"]["boundReplicas"], 1);
        assert_eq!(patch["status"]["conditions"][0]["status"], "True");
        assert_eq!(
            patch["status"]["conditions"][0]["reason"],
            reasons::WORKERS_READY
        );
        // The Bound worker's heartbeat expires first, in 10 s.
        assert_eq!(plan.requeue_after, Some(Duration::from_millis(10_200)));
        // Written already: no patch.
        let again = decide(&pool(patch["status"].clone()), &ws, now);
        assert_eq!(again.patch, None);
        // An actor binds the free worker: the counts move, the status is written again.
        let mut bound = ws.clone();
        bound[0] = worker("p", "Bound", "2026-01-01T00:00:30Z");
        let moved = decide(&pool(patch["status"].clone()), &bound, now)
            .patch
            .unwrap();
        assert_eq!(moved["status"]["readyReplicas"], 2);
        assert_eq!(moved["status"]["freeReplicas"], 0);
        assert_eq!(moved["status"]["boundReplicas"], 2);
    }
}
