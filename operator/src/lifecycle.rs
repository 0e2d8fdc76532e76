//! Actor lifecycle policy (per `Actor`): idle `OnDemand` actors are suspended, `Always` actors
//! are resumed (a failed resume is retried with exponential backoff), `Suspended` actors that
//! run are suspended, and `status.observedGeneration` follows the spec of settled actors.
//!
//! [`decide`] is pure; [`reconcile`] performs its decision.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use serde_json::json;

use crds::substrate::{Activation, Actor, ActorPhase};

use crate::act::{self, Outcome};
use crate::runner::Ctx;
use crate::{OperatorError, age};

/// First delay before an `Always` actor whose resume failed is resumed again; it doubles
/// with every failure in a row, up to [`RETRY_MAX`].
pub const RETRY_BASE: Duration = Duration::from_secs(5);
/// Longest delay between two resume attempts of a failing `Always` actor.
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// A resume or suspend the apiserver refused (409) is tried again after this long.
pub const REFUSED_RETRY: Duration = Duration::from_secs(2);

/// The delay before retry number `attempt` (0-based).
pub fn retry_delay(attempt: u32) -> Duration {
    RETRY_BASE
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(RETRY_MAX)
}

/// Resume attempts of a failing object: how many so far and when the next is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub attempts: u32,
    pub next: Timestamp,
}

/// Whether the next retry is due (at once the first time, then after [`retry_delay`]):
/// `Ok(the state after this attempt)`, or `Err(how long until it is due)`.
pub fn retry_check(state: Option<Retry>, now: Timestamp) -> Result<Retry, Duration> {
    let cur = state.unwrap_or(Retry {
        attempts: 0,
        next: now,
    });
    if now < cur.next {
        return Err(until(now, cur.next));
    }
    Ok(Retry {
        attempts: cur.attempts + 1,
        next: now + retry_delay(cur.attempts),
    })
}

pub(crate) fn until(now: Timestamp, then: Timestamp) -> Duration {
    Duration::from_millis((then.as_millisecond() - now.as_millisecond()).max(0) as u64)
}

/// What to do to an actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act {
    Nothing,
    /// Resume an `Always` actor that is not running.
    Resume,
    /// Resume an `Always` actor whose last resume failed.
    RetryResume,
    /// Suspend a running actor whose spec says `Suspended`.
    Suspend,
    /// Suspend an `OnDemand` actor idle for `timeout`.
    IdleSuspend {
        timeout: Duration,
    },
}

/// How the resume-retry state of the actor changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryChange {
    Keep,
    Clear,
    Set(Retry),
}

/// The lifecycle decision for one actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Record `status.observedGeneration` first.
    pub observed_generation: Option<i64>,
    pub act: Act,
    pub retry: RetryChange,
    /// When to look again without a watch event (`None`: only on an event, or the resync).
    pub requeue_after: Option<Duration>,
}

impl Decision {
    fn nothing() -> Self {
        Decision {
            observed_generation: None,
            act: Act::Nothing,
            retry: RetryChange::Keep,
            requeue_after: None,
        }
    }
}

fn phase(a: &Actor) -> Option<ActorPhase> {
    a.status.as_ref().and_then(|s| s.phase)
}

/// Whether the actor waits for a free worker (`Scheduled=False`): the scheduler resumes it.
pub(crate) fn waiting(a: &Actor) -> bool {
    a.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == crds::conditions::SCHEDULED && c.status == "False")
    })
}

/// Decides for actor `a`. `worker_alive`: whether the worker it is bound to (if any) is
/// alive; an actor on a dead worker is left to the dead-worker controller. `retry`: the
/// resume-retry state of this actor.
pub fn decide(
    a: &Actor,
    worker_alive: bool,
    retry: Option<Retry>,
    default_idle_timeout: Duration,
    now: Timestamp,
) -> Decision {
    if a.metadata.deletion_timestamp.is_some()
        || a.metadata.namespace.as_deref() == Some(crds::GOLDEN_ATESPACE)
    {
        return Decision::nothing();
    }
    let status = a.status.clone().unwrap_or_default();
    if status.worker.is_some()
        && matches!(
            phase(a),
            Some(ActorPhase::Resuming | ActorPhase::Running | ActorPhase::Suspending)
        )
        && !worker_alive
    {
        return Decision::nothing();
    }
    let mut d = Decision::nothing();
    // kstatus (Flux health checks, `kubectl wait`): once an actor is settled, its spec has
    // been acted on; `observedGeneration` says so.
    if matches!(
        phase(a),
        None | Some(ActorPhase::Suspended | ActorPhase::Running | ActorPhase::Failed)
    ) && a.metadata.generation.is_some()
        && status.observed_generation != a.metadata.generation
    {
        d.observed_generation = a.metadata.generation;
    }
    if phase(a) == Some(ActorPhase::Running) {
        d.retry = RetryChange::Clear;
    }
    match (a.spec.activation, phase(a)) {
        // Retry with exponential backoff: the failure may be lasting (a missing image), and
        // every attempt costs a worker for a while.
        (Activation::Always, Some(ActorPhase::Failed)) => match retry_check(retry, now) {
            Ok(next) => {
                d.act = Act::RetryResume;
                d.retry = RetryChange::Set(next);
            }
            Err(wait) => d.requeue_after = Some(wait),
        },
        (Activation::Always, None | Some(ActorPhase::Suspended)) if !waiting(a) => {
            d.act = Act::Resume;
        }
        (Activation::Suspended, Some(ActorPhase::Running | ActorPhase::Resuming)) => {
            d.act = Act::Suspend;
        }
        (Activation::OnDemand, Some(ActorPhase::Running)) => {
            let timeout = a
                .spec
                .idle_timeout
                .as_deref()
                .and_then(|d| crds::duration::parse(d).ok())
                .unwrap_or(default_idle_timeout);
            if let Some(idle) = status.last_active_time.as_ref().map(|t| age(t, now)) {
                if idle >= timeout {
                    d.act = Act::IdleSuspend { timeout };
                } else {
                    d.requeue_after = Some(timeout - idle);
                }
            }
        }
        _ => {}
    }
    d
}

/// Reconciles one actor.
pub(crate) async fn reconcile(a: Arc<Actor>, ctx: Arc<Ctx>) -> Result<Action, OperatorError> {
    let now = crate::now();
    let ns = a.metadata.namespace.clone().unwrap_or_default();
    let name = a.metadata.name.clone().unwrap_or_default();
    let uid = a.metadata.uid.clone().unwrap_or_default();
    let worker_alive = match a.status.as_ref().and_then(|s| s.worker.as_ref()) {
        Some(w) => crate::dead_worker::alive(ctx.caches.worker(&w.name).as_deref(), now),
        None => true,
    };
    let retry = ctx.retry(&uid);
    let d = decide(&a, worker_alive, retry, ctx.cfg.default_idle_timeout, now);
    match d.retry {
        RetryChange::Keep => {}
        RetryChange::Clear => ctx.set_retry(&uid, None),
        RetryChange::Set(r) => ctx.set_retry(&uid, Some(r)),
    }
    if let Some(generation) = d.observed_generation {
        let api: Api<Actor> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"status": {"observedGeneration": generation}});
        if act::patch_status(&api, &name, patch).await? == Outcome::Gone {
            return Ok(ctx.gone("lifecycle", &uid));
        }
    }
    let verb = match &d.act {
        Act::Nothing => None,
        Act::Resume => Some("resume"),
        Act::RetryResume => {
            tracing::info!(atespace = %ns, actor = %name, "resume failed before; retrying");
            Some("resume")
        }
        Act::Suspend => Some("suspend"),
        Act::IdleSuspend { timeout } => {
            tracing::info!(atespace = %ns, actor = %name, ?timeout, "idle: suspending");
            Some("suspend")
        }
    };
    let mut requeue = d
        .requeue_after
        .unwrap_or(ctx.cfg.resync)
        .min(ctx.cfg.resync);
    if let Some(verb) = verb {
        let options = match &d.act {
            Act::IdleSuspend { .. } => act::idle_suspend_options(&a),
            _ => json!({}),
        };
        match act::actor_action_with(&ctx.client, &ns, &name, verb, options).await? {
            Outcome::Done => {}
            Outcome::Refused => requeue = requeue.min(REFUSED_RETRY),
            Outcome::Gone => return Ok(ctx.gone("lifecycle", &uid)),
        }
    }
    Ok(Action::requeue(requeue))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(spec: serde_json::Value, status: serde_json::Value) -> Actor {
        serde_json::from_value(
            json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
            "metadata": {"name": "a", "namespace": "team-a", "uid": "u1", "generation": 1},
            "spec": spec, "status": status}),
        )
        .unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const IDLE: Duration = Duration::from_secs(300);

    #[test]
    fn retry_delays_double_up_to_the_cap() {
        assert_eq!(retry_delay(0), RETRY_BASE);
        assert_eq!(retry_delay(1), RETRY_BASE * 2);
        assert_eq!(retry_delay(3), RETRY_BASE * 8);
        assert_eq!(retry_delay(10), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn idle_actors_are_suspended_and_others_requeued_at_their_deadline() {
        let now = ts("2026-01-01T00:10:00Z");
        let a = actor(
            json!({"template": {"name": "t"}, "idleTimeout": "2m"}),
            json!({"phase": "Running", "observedGeneration": 1, "worker": {"name": "w"},
                   "lastActiveTime": "2026-01-01T00:09:00Z"}),
        );
        let d = decide(&a, true, None, IDLE, now);
        assert_eq!(d.act, Act::Nothing);
        assert_eq!(d.requeue_after, Some(Duration::from_secs(60)));
        assert_eq!(d.retry, RetryChange::Clear);
        let d = decide(&a, true, None, IDLE, ts("2026-01-01T00:11:00Z"));
        assert_eq!(
            d.act,
            Act::IdleSuspend {
                timeout: Duration::from_secs(120)
            }
        );
    }

    #[test]
    fn always_actors_resume_unless_waiting_and_failed_ones_back_off() {
        let now = ts("2026-01-01T00:00:00Z");
        let spec = json!({"template": {"name": "t"}, "activation": "Always"});
        let a = actor(
            spec.clone(),
            json!({"phase": "Suspended", "observedGeneration": 1}),
        );
        assert_eq!(decide(&a, true, None, IDLE, now).act, Act::Resume);
        let waiting = actor(
            spec.clone(),
            json!({"phase": "Suspended", "observedGeneration": 1, "conditions": [{"type": "Scheduled",
                "status": "False", "reason": "NoFreeWorker", "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
        );
        assert_eq!(decide(&waiting, true, None, IDLE, now).act, Act::Nothing);

        let failed = actor(spec, json!({"phase": "Failed", "observedGeneration": 1}));
        // First failure: at once.
        let d = decide(&failed, true, None, IDLE, now);
        assert_eq!(d.act, Act::RetryResume);
        let RetryChange::Set(r) = d.retry else {
            panic!("{d:?}")
        };
        assert_eq!(r.attempts, 1);
        assert_eq!(r.next, now + RETRY_BASE);
        // Second failure 1 s later: wait for the rest of the base delay.
        let later = now + Duration::from_secs(1);
        let d = decide(&failed, true, Some(r), IDLE, later);
        assert_eq!(d.act, Act::Nothing);
        assert_eq!(d.requeue_after, Some(Duration::from_secs(4)));
        let d = decide(&failed, true, Some(r), IDLE, now + RETRY_BASE);
        assert_eq!(d.act, Act::RetryResume);
    }

    #[test]
    fn suspended_actors_that_run_are_suspended() {
        let now = ts("2026-01-01T00:00:00Z");
        let spec = json!({"template": {"name": "t"}, "activation": "Suspended"});
        for p in ["Running", "Resuming"] {
            let a = actor(spec.clone(), json!({"phase": p, "worker": {"name": "w"}}));
            assert_eq!(decide(&a, true, None, IDLE, now).act, Act::Suspend, "{p}");
            // Its worker is dead: left to the dead-worker controller.
            assert_eq!(
                decide(&a, false, None, IDLE, now),
                Decision::nothing(),
                "{p}"
            );
        }
    }

    #[test]
    fn observed_generation_is_recorded_for_settled_actors_only() {
        let now = ts("2026-01-01T00:00:00Z");
        let spec = json!({"template": {"name": "t"}, "activation": "Suspended"});
        let a = actor(spec.clone(), json!({"phase": "Suspended"}));
        assert_eq!(
            decide(&a, true, None, IDLE, now).observed_generation,
            Some(1)
        );
        let a = actor(
            spec.clone(),
            json!({"phase": "Suspending", "worker": {"name": "w"}}),
        );
        assert_eq!(decide(&a, true, None, IDLE, now).observed_generation, None);
        let a = actor(spec, json!({"phase": "Suspended", "observedGeneration": 1}));
        assert_eq!(decide(&a, true, None, IDLE, now), Decision::nothing());
    }

    #[test]
    fn golden_and_deleted_actors_are_left_alone() {
        let now = ts("2026-01-01T00:00:00Z");
        let mut a = actor(
            json!({"template": {"name": "t"}, "activation": "Always"}),
            json!({"phase": "Suspended"}),
        );
        a.metadata.namespace = Some(crds::GOLDEN_ATESPACE.into());
        assert_eq!(decide(&a, true, None, IDLE, now), Decision::nothing());
        a.metadata.namespace = Some("team-a".into());
        a.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
        assert_eq!(decide(&a, true, None, IDLE, now), Decision::nothing());
    }
}
