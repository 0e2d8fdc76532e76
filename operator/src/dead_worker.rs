//! Dead workers (per `Actor`, triggered also by its `Worker`): an actor bound to a worker that
//! is gone goes back to `Suspended` at its last good snapshot at once; one bound to a worker
//! whose heartbeat is older than [`DEAD_WORKER_AFTER`] likewise (by then the sandbox has
//! fenced itself: see [`crds::liveness`]), and the worker is marked `Unhealthy`. The
//! `Ready=False` condition (reason `WorkerLost`) says which happened. In a cluster, an actor
//! whose worker's node agent pod was deleted or failed since the worker's last heartbeat is
//! released at once too ([`crate::agent_pods`]). An alive binding is looked at again when its
//! heartbeat would expire.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use crds::conditions::{READY, RECONCILING, SCHEDULED, reasons};
use crds::liveness::{DEAD_WORKER_AFTER, SANDBOX_FENCE_AFTER};
use crds::substrate::{Actor, ActorPhase, Worker};

use crate::act::{self, Outcome};
use crate::runner::Ctx;
use crate::{OperatorError, age, is_not_found};

/// Slack added to a heartbeat deadline so the recheck lands after it.
const RECHECK_SLACK: Duration = Duration::from_millis(200);

/// Whether a worker is alive: it exists and heartbeated less than [`DEAD_WORKER_AFTER`] ago.
pub fn alive(worker: Option<&Worker>, now: Timestamp) -> bool {
    heartbeat_age(worker, now).is_some_and(|a| a < DEAD_WORKER_AFTER)
}

fn heartbeat_age(worker: Option<&Worker>, now: Timestamp) -> Option<Duration> {
    worker
        .and_then(|w| w.status.as_ref())
        .and_then(|s| s.last_heartbeat_time.as_ref())
        .map(|t| age(t, now))
}

/// What to do about an actor's binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not bound to a worker (or not this controller's business).
    NotBound,
    /// Bound to an alive worker: look again after `recheck_after`.
    Alive { recheck_after: Duration },
    /// Release the actor from `worker`.
    Release { worker: String, why: Lost },
}

/// Why a worker is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The `Worker` object is gone.
    Deleted,
    /// The worker's node agent has been silent for [`DEAD_WORKER_AFTER`].
    Silent,
    /// The worker's node agent pod was deleted or failed (its sandboxes with it) after the
    /// worker's last heartbeat.
    AgentPodGone,
}

impl Lost {
    /// The message of the `Ready=False` condition.
    pub fn message(self, worker: &str) -> String {
        match self {
            Lost::Deleted => format!(
                "worker {worker} was deleted; the actor resumes from its last good snapshot"
            ),
            Lost::Silent => format!(
                "the node agent of worker {worker} was silent for {}s and the sandbox fenced itself after {}s; the actor resumes from its last good snapshot",
                DEAD_WORKER_AFTER.as_secs(),
                SANDBOX_FENCE_AFTER.as_secs()
            ),
            Lost::AgentPodGone => format!(
                "the node agent pod of worker {worker} was deleted or failed, and its sandboxes with it; the actor resumes from its last good snapshot"
            ),
        }
    }
}

/// Decides about actor `a`, bound (maybe) to `worker` (from the cache; `None` when absent),
/// whose node's agent pod was last seen gone at `agent_lost` (cluster mode).
pub fn decide(
    a: &Actor,
    worker: Option<&Worker>,
    agent_lost: Option<Timestamp>,
    now: Timestamp,
) -> Verdict {
    if a.metadata.deletion_timestamp.is_some()
        || a.metadata.namespace.as_deref() == Some(crds::GOLDEN_ATESPACE)
    {
        return Verdict::NotBound;
    }
    let Some(status) = a.status.as_ref() else {
        return Verdict::NotBound;
    };
    let Some(bound) = &status.worker else {
        return Verdict::NotBound;
    };
    if !matches!(
        status.phase,
        Some(ActorPhase::Resuming | ActorPhase::Running | ActorPhase::Suspending)
    ) {
        return Verdict::NotBound;
    }
    let Some(w) = worker else {
        return Verdict::Release {
            worker: bound.name.clone(),
            why: Lost::Deleted,
        };
    };
    let heartbeat = heartbeat_age(Some(w), now);
    if let (Some(lost), Some(hb)) = (agent_lost, heartbeat) {
        let since_loss =
            Duration::from_millis((now.as_millisecond() - lost.as_millisecond()).max(0) as u64);
        if hb > since_loss {
            return Verdict::Release {
                worker: bound.name.clone(),
                why: Lost::AgentPodGone,
            };
        }
    }
    match heartbeat {
        Some(a) if a < DEAD_WORKER_AFTER => Verdict::Alive {
            recheck_after: DEAD_WORKER_AFTER - a + RECHECK_SLACK,
        },
        _ => Verdict::Release {
            worker: bound.name.clone(),
            why: Lost::Silent,
        },
    }
}

/// The actor released from `worker`: `Suspended`, unbound, `Ready=False` with reason
/// `WorkerLost` (its snapshot untouched: the last good one). `None` if it is no longer bound
/// to `worker`.
pub fn released(cur: &Actor, worker: &str, why: Lost, now: Timestamp) -> Option<Value> {
    let st = cur.status.as_ref()?;
    if st.worker.as_ref().map(|w| w.name.as_str()) != Some(worker) {
        return None;
    }
    let mut new = cur.clone();
    let st = new.status.as_mut()?;
    st.worker = None;
    st.phase = Some(ActorPhase::Suspended);
    st.conditions
        .retain(|c| ![READY, SCHEDULED, RECONCILING].contains(&c.type_.as_str()));
    let mut obj = serde_json::to_value(&new).ok()?;
    let mut conds = obj["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    conds.push(json!({
        "type": READY, "status": "False", "reason": reasons::WORKER_LOST,
        "message": why.message(worker),
        "lastTransitionTime": crate::fmt_time(now), "observedGeneration": cur.metadata.generation.unwrap_or(0),
    }));
    obj["status"]["conditions"] = Value::Array(conds);
    Some(obj)
}

/// Reconciles one actor's binding.
pub(crate) async fn reconcile(a: Arc<Actor>, ctx: Arc<Ctx>) -> Result<Action, OperatorError> {
    let now = crate::now();
    let bound = a.status.as_ref().and_then(|s| s.worker.as_ref());
    let worker = bound.and_then(|w| ctx.caches.worker(&w.name));
    let agent_lost = worker
        .as_ref()
        .and_then(|w| w.spec.node.as_deref())
        .and_then(|node| ctx.caches.agent_loss.lost_at(node));
    let uid = a.metadata.uid.clone().unwrap_or_default();
    match decide(&a, worker.as_deref(), agent_lost, now) {
        Verdict::NotBound => Ok(Action::requeue(ctx.cfg.resync)),
        Verdict::Alive { recheck_after } => Ok(Action::requeue(recheck_after.min(ctx.cfg.resync))),
        Verdict::Release { worker, why } => match release(&ctx, &a, &worker, why, now).await? {
            Outcome::Gone => Ok(ctx.gone("dead_worker", &uid)),
            Outcome::Refused => Ok(Action::requeue(crate::lifecycle::REFUSED_RETRY)),
            Outcome::Done => Ok(Action::requeue(ctx.cfg.resync)),
        },
    }
}

async fn release(
    ctx: &Ctx,
    a: &Actor,
    worker: &str,
    why: Lost,
    now: Timestamp,
) -> Result<Outcome, OperatorError> {
    let ns = a.metadata.namespace.clone().unwrap_or_default();
    let name = a.metadata.name.clone().unwrap_or_default();
    let api: Api<Actor> = Api::namespaced(ctx.clients.substrate.clone(), &ns);
    // The current object (not the cached one): the replace is a compare-and-swap on it.
    let cur = match api.get(&name).await {
        Ok(cur) => cur,
        Err(e) if is_not_found(&e) => return Ok(Outcome::Gone),
        Err(e) => return Err(e.into()),
    };
    let Some(obj) = released(&cur, worker, why, now) else {
        return Ok(Outcome::Done);
    };
    let new: Actor = serde_json::from_value(obj)?;
    match api
        .replace_status(&name, &PostParams::default(), &new)
        .await
    {
        Ok(_) => {
            tracing::warn!(atespace = %ns, actor = %name, worker, reason = ?why, "worker lost: actor back to its last good snapshot")
        }
        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Outcome::Refused),
        Err(e) if is_not_found(&e) => return Ok(Outcome::Gone),
        Err(e) => return Err(e.into()),
    }
    if matches!(why, Lost::Silent | Lost::AgentPodGone) {
        let workers: Api<Worker> = Api::all(ctx.clients.substrate.clone());
        act::patch_status(
            &workers,
            worker,
            json!({"status": {"phase": "Unhealthy", "actor": null}}),
        )
        .await?;
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn actor(phase: &str) -> Actor {
        serde_json::from_value(json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
            "metadata": {"name": "a", "namespace": "team-a", "generation": 3},
            "spec": {"template": {"name": "t"}},
            "status": {"phase": phase, "worker": {"name": "w0"},
                "snapshot": {"uri": "file:///s/1"},
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Running", "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                    {"type": "Other", "status": "True", "reason": "X", "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}))
        .unwrap()
    }

    fn worker(heartbeat: &str) -> Worker {
        serde_json::from_value(
            json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Worker",
            "metadata": {"name": "w0"}, "spec": {"pool": "p"},
            "status": {"phase": "Bound", "lastHeartbeatTime": heartbeat}}),
        )
        .unwrap()
    }

    #[test]
    fn a_lost_agent_pod_releases_at_once_unless_a_new_agent_heartbeated_since() {
        // Heartbeat at :00, the agent pod deleted at :02, looked at :03: released at once.
        let w = worker("2026-01-01T00:00:00Z");
        let a = actor("Running");
        let (lost, now) = (ts("2026-01-01T00:00:02Z"), ts("2026-01-01T00:00:03Z"));
        assert_eq!(
            decide(&a, Some(&w), Some(lost), now),
            Verdict::Release {
                worker: "w0".into(),
                why: Lost::AgentPodGone
            }
        );
        // A new agent pod heartbeated the worker at :05, after the loss: alive.
        let w = worker("2026-01-01T00:00:05Z");
        assert_eq!(
            decide(&a, Some(&w), Some(lost), ts("2026-01-01T00:00:06Z")),
            Verdict::Alive {
                recheck_after: Duration::from_secs(29) + RECHECK_SLACK
            }
        );
        assert!(
            Lost::AgentPodGone
                .message("w0")
                .contains("node agent pod of worker w0")
        );
    }

    #[test]
    fn a_deleted_worker_releases_at_once() {
        let now = ts("2026-01-01T00:00:10Z");
        assert_eq!(
            decide(&actor("Running"), None, None, now),
            Verdict::Release {
                worker: "w0".into(),
                why: Lost::Deleted
            }
        );
    }

    #[test]
    fn a_silent_worker_releases_after_the_dead_worker_delay_only() {
        let w = worker("2026-01-01T00:00:00Z");
        let a = actor("Suspending");
        assert_eq!(
            decide(&a, Some(&w), None, ts("2026-01-01T00:00:10Z")),
            Verdict::Alive {
                recheck_after: Duration::from_secs(20) + RECHECK_SLACK
            }
        );
        assert_eq!(
            decide(&a, Some(&w), None, ts("2026-01-01T00:00:30Z")),
            Verdict::Release {
                worker: "w0".into(),
                why: Lost::Silent
            }
        );
        // Settled actors are not bound.
        assert_eq!(
            decide(&actor("Suspended"), None, None, ts("2026-01-01T00:00:30Z")),
            Verdict::NotBound
        );
    }

    #[test]
    fn the_released_actor_keeps_its_snapshot_and_says_why() {
        let now = ts("2026-01-01T00:01:00Z");
        let out = released(&actor("Running"), "w0", Lost::Silent, now).unwrap();
        let a: Actor = serde_json::from_value(out).unwrap();
        let st = a.status.unwrap();
        assert_eq!(st.phase, Some(ActorPhase::Suspended));
        assert!(st.worker.is_none());
        assert_eq!(st.snapshot.unwrap().uri, "file:///s/1");
        let types: Vec<_> = st.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Other", "Ready"]);
        let ready = &st.conditions[1];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reasons::WORKER_LOST)
        );
        assert!(
            ready.message.contains("silent for 30s"),
            "{}",
            ready.message
        );
        assert_eq!(ready.observed_generation, Some(3));
        let out = released(&actor("Running"), "w0", Lost::Deleted, now).unwrap();
        assert!(
            out["status"]["conditions"][1]["message"]
                .as_str()
                .unwrap()
                .contains("deleted")
        );
        // Bound elsewhere meanwhile: nothing to release.
        assert!(released(&actor("Running"), "w9", Lost::Deleted, now).is_none());
    }
}
