//! Actor lifecycle (per `Actor`):
//!
//! * policy: idle `OnDemand` actors are suspended, `Always` actors are resumed (a failed
//!   resume is retried with exponential backoff), `Suspended` actors that run are suspended,
//!   and `status.observedGeneration` follows the spec of settled actors;
//! * deletion: the scheduler puts the [`SANDBOX`] finalizer on an actor when it binds it to a
//!   worker. A deleted actor's node agent kills the sandbox (no checkpoint), unbinds the
//!   actor and frees the worker; the finalizer is then removed here and the object goes. If
//!   the worker is gone or dead (its sandbox fenced itself, [`crds::liveness`]) the worker is
//!   marked `Unhealthy` and the finalizer removed at once; if its live node agent has not
//!   stopped the sandbox within the stop deadline, the finalizer is removed anyway (the
//!   scheduler's orphan rule and the agent's stray-sandbox rule are the safety net). A
//!   settled, unbound actor loses the finalizer too, so deleting it takes no controller;
//! * deadlines ([`crate::Deadlines`], from the `Reconciling=True` condition's transition
//!   time) on a live worker: a resume past its deadline fails (`Failed`,
//!   `ResumeDeadlineExceeded`, retried like any failed resume); a suspend past its deadline
//!   is reported `Stalled=True` (`SuspendDeadlineExceeded`) while the node agent retries it.
//!
//! [`decide`] is pure; [`reconcile`] performs its decision.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::Api;
use kube::runtime::controller::Action;
use serde_json::json;

use crds::conditions::{READY, RECONCILING, SCHEDULED, STALLED, reasons};
use crds::finalizers::SANDBOX;
use crds::substrate::{Activation, Actor, ActorPhase, Worker};

use crate::act::{self, Outcome};
use crate::runner::Ctx;
use crate::{OperatorConfig, OperatorError, age};

/// A deleted actor bound to a live worker is looked at again at least this often (its worker
/// may die meanwhile: then it is finalized without waiting for the stop deadline).
pub const DELETING_RECHECK: Duration = crds::liveness::HEARTBEAT_INTERVAL;
/// Slack added to a deadline so the recheck lands after it.
const DEADLINE_SLACK: Duration = Duration::from_millis(200);

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
    /// Remove the [`SANDBOX`] finalizer: the actor is bound to no worker.
    Finalize,
    /// A deleted actor bound to a worker that is gone or dead (its sandbox has fenced
    /// itself): mark the worker `Unhealthy`, say so, and remove the finalizer.
    FinalizeLost {
        worker: String,
    },
    /// A deleted actor whose live worker's node agent did not stop the sandbox within the
    /// stop deadline: say so and remove the finalizer.
    FinalizeStuck {
        worker: String,
        waited: Duration,
    },
    /// A resume past its deadline on a live worker: the actor goes `Failed`.
    FailResume {
        worker: String,
        waited: Duration,
    },
    /// A suspend past its deadline on a live worker: `Stalled=True` (the node agent retries).
    SuspendStalled {
        worker: String,
        waited: Duration,
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

/// Whether the actor carries the [`SANDBOX`] finalizer.
pub fn has_sandbox_finalizer(a: &Actor) -> bool {
    a.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == SANDBOX))
}

/// The worker the actor is bound to.
fn bound_worker(a: &Actor) -> Option<&str> {
    a.status
        .as_ref()
        .and_then(|s| s.worker.as_ref())
        .map(|w| w.name.as_str())
}

/// When the actor's current transition (resume or suspend) started: the transition time of
/// its `Reconciling=True` condition (the scheduler sets it when it binds the actor and when
/// a suspend starts).
pub fn transition_started(a: &Actor) -> Option<Timestamp> {
    a.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == RECONCILING && c.status == "True")
        .map(|c| c.last_transition_time.0)
}

fn condition<'a>(a: &'a Actor, type_: &str) -> Option<&'a Condition> {
    a.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// The decision about a deleted actor (nothing when it lacks the [`SANDBOX`] finalizer: not
/// ours to finalize).
fn decide_deleted(a: &Actor, worker_alive: bool, cfg: &OperatorConfig, now: Timestamp) -> Decision {
    let mut d = Decision::nothing();
    let Some(deleted) = a.metadata.deletion_timestamp.as_ref() else {
        return d;
    };
    if !has_sandbox_finalizer(a) {
        return d;
    }
    let Some(worker) = bound_worker(a) else {
        d.act = Act::Finalize;
        return d;
    };
    let worker = worker.to_string();
    if !worker_alive {
        d.act = Act::FinalizeLost { worker };
        return d;
    }
    let waited = age(deleted, now);
    if waited >= cfg.deadlines.stop {
        d.act = Act::FinalizeStuck { worker, waited };
    } else {
        d.requeue_after =
            Some((cfg.deadlines.stop - waited + DEADLINE_SLACK).min(DELETING_RECHECK));
    }
    d
}

/// The deadline decision for an actor in transition on a live worker.
fn decide_deadline(a: &Actor, cfg: &OperatorConfig, now: Timestamp) -> Decision {
    let mut d = Decision::nothing();
    let (Some(worker), Some(started)) = (bound_worker(a), transition_started(a)) else {
        return d;
    };
    let (deadline, resuming) = match phase(a) {
        Some(ActorPhase::Resuming) => (cfg.deadlines.resume, true),
        Some(ActorPhase::Suspending) => (cfg.deadlines.suspend, false),
        _ => return d,
    };
    let waited = age(&Time(started), now);
    if waited < deadline {
        d.requeue_after = Some(deadline - waited + DEADLINE_SLACK);
        return d;
    }
    let worker = worker.to_string();
    if resuming {
        d.act = Act::FailResume { worker, waited };
    } else if condition(a, STALLED)
        .is_none_or(|c| c.status != "True" || c.reason != reasons::SUSPEND_DEADLINE_EXCEEDED)
    {
        d.act = Act::SuspendStalled { worker, waited };
    }
    d
}

/// Decides for actor `a`. `worker_alive`: whether the worker it is bound to (if any) is
/// alive; a live actor on a dead worker is left to the dead-worker controller (a deleted
/// one is finalized here). `retry`: the resume-retry state of this actor.
pub fn decide(
    a: &Actor,
    worker_alive: bool,
    retry: Option<Retry>,
    cfg: &OperatorConfig,
    now: Timestamp,
) -> Decision {
    if a.metadata.deletion_timestamp.is_some() {
        return decide_deleted(a, worker_alive, cfg, now);
    }
    let status = a.status.clone().unwrap_or_default();
    let in_transition = matches!(
        phase(a),
        Some(ActorPhase::Resuming | ActorPhase::Running | ActorPhase::Suspending)
    );
    if status.worker.is_some() && in_transition && !worker_alive {
        return Decision::nothing();
    }
    // A settled actor bound to no worker has no sandbox: deleting it needs no controller.
    if status.worker.is_none() && !in_transition && has_sandbox_finalizer(a) {
        return Decision {
            act: Act::Finalize,
            ..Decision::nothing()
        };
    }
    let deadline = decide_deadline(a, cfg, now);
    if deadline.act != Act::Nothing
        || a.metadata.namespace.as_deref() == Some(crds::GOLDEN_ATESPACE)
    {
        return deadline;
    }
    let default_idle_timeout = cfg.default_idle_timeout;
    let mut d = Decision::nothing();
    d.requeue_after = deadline.requeue_after;
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
                    d.requeue_after = Some(
                        d.requeue_after
                            .map_or(timeout - idle, |r| r.min(timeout - idle)),
                    );
                }
            }
        }
        _ => {}
    }
    d
}

/// Sets condition `type_` (its transition time kept when its status does not change).
fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" };
    let since = conds
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    conds.retain(|c| c.type_ != type_);
    conds.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: since,
        observed_generation: generation,
    });
}

/// Whether `cur` is in `phase` on `worker` and its transition started `deadline` or more
/// before `now`.
fn in_transition_past(
    cur: &Actor,
    phase_: ActorPhase,
    worker: &str,
    deadline: Duration,
    now: Timestamp,
) -> bool {
    transition_started(cur).is_some_and(|started| {
        phase(cur) == Some(phase_)
            && bound_worker(cur) == Some(worker)
            && age(&Time(started), now) >= deadline
    })
}

/// The actor whose resume on `worker` passed `deadline`, failed: `Failed`, unbound,
/// `Ready=False`/`Stalled=True` with reason `ResumeDeadlineExceeded` (its snapshot untouched:
/// it is retried as any failed resume). `None` when `cur` no longer resumes there past the
/// deadline.
pub fn resume_failed(
    cur: &Actor,
    worker: &str,
    deadline: Duration,
    now: Timestamp,
) -> Option<Actor> {
    if !in_transition_past(cur, ActorPhase::Resuming, worker, deadline, now) {
        return None;
    }
    let mut new = cur.clone();
    let generation = cur.metadata.generation;
    let st = new.status.as_mut()?;
    st.phase = Some(ActorPhase::Failed);
    st.worker = None;
    st.conditions
        .retain(|c| !(c.type_ == SCHEDULED && c.status == "True"));
    let message = format!(
        "the resume on worker {worker} did not finish within {}s; the actor is retried like any failed resume",
        deadline.as_secs()
    );
    let reason = reasons::RESUME_DEADLINE_EXCEEDED;
    for (t, v) in [(READY, false), (RECONCILING, false), (STALLED, true)] {
        set_condition(&mut st.conditions, t, v, reason, &message, generation, now);
    }
    Some(new)
}

/// The actor whose suspend on `worker` passed `deadline`, with `Stalled=True` and reason
/// `SuspendDeadlineExceeded` (still `Suspending`: the node agent keeps retrying). `None` when
/// `cur` no longer suspends there past the deadline, or says so already.
pub fn suspend_stalled(
    cur: &Actor,
    worker: &str,
    deadline: Duration,
    now: Timestamp,
) -> Option<Actor> {
    if !in_transition_past(cur, ActorPhase::Suspending, worker, deadline, now)
        || condition(cur, STALLED)
            .is_some_and(|c| c.status == "True" && c.reason == reasons::SUSPEND_DEADLINE_EXCEEDED)
    {
        return None;
    }
    let mut new = cur.clone();
    let generation = cur.metadata.generation;
    let message = format!(
        "the suspend on worker {worker} has not finished within {}s; its node agent keeps retrying it",
        deadline.as_secs()
    );
    set_condition(
        &mut new.status.as_mut()?.conditions,
        STALLED,
        true,
        reasons::SUSPEND_DEADLINE_EXCEEDED,
        &message,
        generation,
        now,
    );
    Some(new)
}

/// A deleted actor still bound to `worker`, with `Ready=False` saying why its finalizer is
/// removed without its node agent (`None` if it is no longer bound there).
pub fn finalized_without_agent(
    cur: &Actor,
    worker: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Option<Actor> {
    if cur.metadata.deletion_timestamp.is_none() || bound_worker(cur) != Some(worker) {
        return None;
    }
    let mut new = cur.clone();
    let generation = cur.metadata.generation;
    let st = new.status.as_mut()?;
    set_condition(
        &mut st.conditions,
        READY,
        false,
        reason,
        message,
        generation,
        now,
    );
    Some(new)
}

/// Whether the actor carries an in-progress verdict that waits for the operator: the
/// apiserver's `Reconciling=True/Created` of a fresh actor, or `TemplateNotFound`.
fn awaits_operator(a: &Actor) -> bool {
    condition(a, RECONCILING).is_some_and(|c| {
        c.status == "True"
            && (c.reason == reasons::CREATED || c.reason == reasons::TEMPLATE_NOT_FOUND)
    }) || condition(a, READY).is_some_and(|c| c.reason == reasons::TEMPLATE_NOT_FOUND)
}

/// The ActorTemplate `(namespace, name)` of actor `a`.
pub fn template_of(a: &Actor) -> (String, String) {
    let ns = a
        .spec
        .template
        .namespace
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| a.metadata.namespace.clone())
        .unwrap_or_default();
    (ns, a.spec.template.name.clone())
}

/// The settled status of a suspended actor the apiserver marked `Reconciling=True/Created`
/// on create (or that waits for its template): `observedGeneration` = `generation`, and
/// `Ready=False/Suspended` with `Reconciling=False` — the resting state of an `OnDemand`
/// actor and the requested one of a `Suspended` actor, `Current` for kstatus — or, while
/// its template does not exist, `Ready=False` and `Reconciling=True` with reason
/// `TemplateNotFound` (re-evaluated when the template appears). An `Always` actor whose
/// template exists is left to its resume (which says `Resuming`). `None`: nothing to write.
pub fn settled(cur: &Actor, template_found: bool, now: Timestamp) -> Option<Actor> {
    if cur.metadata.deletion_timestamp.is_some()
        || cur.metadata.namespace.as_deref() == Some(crds::GOLDEN_ATESPACE)
        || phase(cur) != Some(ActorPhase::Suspended)
        || bound_worker(cur).is_some()
        || waiting(cur)
        || !awaits_operator(cur)
        || (template_found && cur.spec.activation == Activation::Always)
    {
        return None;
    }
    let generation = cur.metadata.generation;
    let mut new = cur.clone();
    let st = new.status.as_mut()?;
    if template_found {
        let message = match cur.spec.activation {
            Activation::Suspended => "suspended, as its activation asks",
            _ => "suspended; resumes on demand",
        };
        for (t, v) in [(READY, false), (RECONCILING, false)] {
            set_condition(
                &mut st.conditions,
                t,
                v,
                reasons::SUSPENDED,
                message,
                generation,
                now,
            );
        }
    } else {
        let (tns, tname) = template_of(cur);
        let message = format!("ActorTemplate {tns}/{tname} does not exist (yet)");
        for (t, v) in [(READY, false), (RECONCILING, true)] {
            set_condition(
                &mut st.conditions,
                t,
                v,
                reasons::TEMPLATE_NOT_FOUND,
                &message,
                generation,
                now,
            );
        }
    }
    if generation.is_some() {
        st.observed_generation = generation;
    }
    (new != *cur).then_some(new)
}

/// Whether `a`'s template is in the operator's cache.
fn template_found(ctx: &Ctx, a: &Actor) -> bool {
    let (tns, tname) = template_of(a);
    ctx.caches
        .templates
        .get(&kube::runtime::reflector::ObjectRef::new(&tname).within(&tns))
        .is_some()
}

/// The actors waiting for template `t` (`TemplateNotFound`), to look at again when it
/// appears.
pub(crate) fn waiting_for_template(
    actors: &kube::runtime::reflector::Store<Actor>,
    t: &crds::ate::ActorTemplate,
) -> Vec<kube::runtime::reflector::ObjectRef<Actor>> {
    let (tns, tname) = (
        t.metadata.namespace.clone().unwrap_or_default(),
        t.metadata.name.clone().unwrap_or_default(),
    );
    actors
        .state()
        .iter()
        .filter(|a| awaits_operator(a) && template_of(a) == (tns.clone(), tname.clone()))
        .map(|a| kube::runtime::reflector::ObjectRef::from_obj(a.as_ref()))
        .collect()
}

fn unbound(a: &Actor) -> bool {
    bound_worker(a).is_none()
        && !matches!(
            phase(a),
            Some(ActorPhase::Resuming | ActorPhase::Running | ActorPhase::Suspending)
        )
}

/// Reconciles one actor.
pub(crate) async fn reconcile(a: Arc<Actor>, ctx: Arc<Ctx>) -> Result<Action, OperatorError> {
    let now = crate::now();
    let ns = a.metadata.namespace.clone().unwrap_or_default();
    let name = a.metadata.name.clone().unwrap_or_default();
    let uid = a.metadata.uid.clone().unwrap_or_default();
    let worker_alive = match bound_worker(&a) {
        Some(w) => crate::dead_worker::alive(ctx.caches.worker(w).as_deref(), now),
        None => true,
    };
    let retry = ctx.retry(&uid);
    let d = decide(&a, worker_alive, retry, &ctx.cfg, now);
    match d.retry {
        RetryChange::Keep => {}
        RetryChange::Clear => ctx.set_retry(&uid, None),
        RetryChange::Set(r) => ctx.set_retry(&uid, Some(r)),
    }
    let api: Api<Actor> = Api::namespaced(ctx.clients.substrate.clone(), &ns);
    let found = template_found(&ctx, &a);
    if settled(&a, found, now).is_some() {
        // Also records observedGeneration.
        match act::update_status(&api, &name, |cur| settled(cur, found, now)).await? {
            Outcome::Gone => return Ok(ctx.gone("lifecycle", &uid)),
            Outcome::Refused => return Ok(Action::requeue(REFUSED_RETRY)),
            Outcome::Done => {}
        }
        if !found {
            tracing::info!(atespace = %ns, actor = %name, template = %a.spec.template.name, "template not found; waiting for it");
        }
    } else if let Some(generation) = d.observed_generation {
        let patch = json!({"status": {"observedGeneration": generation}});
        if act::patch_status(&api, &name, patch).await? == Outcome::Gone {
            return Ok(ctx.gone("lifecycle", &uid));
        }
    }
    let verb = match &d.act {
        Act::Nothing => None,
        // Its template's appearance triggers this reconcile again.
        Act::Resume if !found => None,
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
        Act::Finalize => {
            let deleting = a.metadata.deletion_timestamp.is_some();
            let out = act::remove_finalizer(&api, &name, SANDBOX, unbound).await?;
            if out == Outcome::Done && deleting {
                tracing::info!(atespace = %ns, actor = %name, "sandbox stopped; finalizer removed");
            }
            return finish(&ctx, &uid, out, ctx.cfg.resync);
        }
        Act::FinalizeLost { worker } => {
            let message = format!(
                "deleted while bound to worker {worker}, which is gone or whose node agent was silent for {}s (the sandbox fenced itself); the worker is marked Unhealthy",
                crds::liveness::DEAD_WORKER_AFTER.as_secs()
            );
            let w = worker.clone();
            let out = act::update_status(&api, &name, |cur| {
                finalized_without_agent(cur, &w, reasons::WORKER_LOST, &message, now)
            })
            .await?;
            if out != Outcome::Done {
                return finish(&ctx, &uid, out, REFUSED_RETRY);
            }
            let workers: Api<Worker> = Api::all(ctx.clients.substrate.clone());
            act::patch_status(
                &workers,
                worker,
                json!({"status": {"phase": "Unhealthy", "actor": null}}),
            )
            .await?;
            let out = act::remove_finalizer(&api, &name, SANDBOX, |cur| {
                bound_worker(cur) == Some(worker.as_str())
            })
            .await?;
            tracing::warn!(atespace = %ns, actor = %name, worker, "deleted actor on a lost worker; finalizer removed");
            return finish(&ctx, &uid, out, REFUSED_RETRY);
        }
        Act::FinalizeStuck { worker, waited } => {
            let message = format!(
                "the node agent of worker {worker} did not stop the sandbox within {}s of the deletion; the worker is left to the scheduler's orphan rule and the sandbox to the node agent",
                ctx.cfg.deadlines.stop.as_secs()
            );
            let w = worker.clone();
            let out = act::update_status(&api, &name, |cur| {
                finalized_without_agent(cur, &w, reasons::STOP_DEADLINE_EXCEEDED, &message, now)
            })
            .await?;
            if out != Outcome::Done {
                return finish(&ctx, &uid, out, REFUSED_RETRY);
            }
            let out = act::remove_finalizer(&api, &name, SANDBOX, |cur| {
                bound_worker(cur) == Some(worker.as_str())
            })
            .await?;
            tracing::warn!(atespace = %ns, actor = %name, worker, ?waited, "sandbox not stopped within the stop deadline; finalizer removed");
            return finish(&ctx, &uid, out, REFUSED_RETRY);
        }
        Act::FailResume { worker, waited } => {
            let deadline = ctx.cfg.deadlines.resume;
            let out =
                act::update_status(&api, &name, |cur| resume_failed(cur, worker, deadline, now))
                    .await?;
            tracing::warn!(atespace = %ns, actor = %name, worker, ?waited, "resume past its deadline: failed");
            return finish(&ctx, &uid, out, REFUSED_RETRY);
        }
        Act::SuspendStalled { worker, waited } => {
            let deadline = ctx.cfg.deadlines.suspend;
            let out = act::update_status(&api, &name, |cur| {
                suspend_stalled(cur, worker, deadline, now)
            })
            .await?;
            tracing::warn!(atespace = %ns, actor = %name, worker, ?waited, "suspend past its deadline: stalled, the node agent retries it");
            return finish(&ctx, &uid, out, ctx.cfg.resync);
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
        match act::actor_action_with(&ctx.clients.substrate, &ns, &name, verb, options).await? {
            Outcome::Done => {}
            Outcome::Refused => requeue = requeue.min(REFUSED_RETRY),
            Outcome::Gone => return Ok(ctx.gone("lifecycle", &uid)),
        }
    }
    Ok(Action::requeue(requeue))
}

/// The action after a write: `after` when done (a watch event follows the write anyway),
/// soon when refused, nothing when the actor is gone.
fn finish(ctx: &Ctx, uid: &str, out: Outcome, after: Duration) -> Result<Action, OperatorError> {
    Ok(match out {
        Outcome::Done => Action::requeue(after.min(ctx.cfg.resync)),
        Outcome::Refused => Action::requeue(REFUSED_RETRY),
        Outcome::Gone => ctx.gone("lifecycle", uid),
    })
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

    fn cfg() -> OperatorConfig {
        OperatorConfig::default()
    }

    /// An actor in `phase` bound to worker `w` (when `bound`), `Reconciling=True` since
    /// `since` (when given), with the sandbox finalizer.
    fn bound_actor(phase: &str, bound: bool, since: Option<&str>) -> Actor {
        let mut status = json!({"phase": phase, "observedGeneration": 1});
        if bound {
            status["worker"] = json!({"name": "w"});
        }
        if let Some(t) = since {
            status["conditions"] = json!([{"type": "Reconciling", "status": "True",
                "reason": phase, "message": "m", "lastTransitionTime": t}]);
        }
        let mut a = actor(json!({"template": {"name": "t"}}), status);
        a.metadata.finalizers = Some(vec![SANDBOX.into()]);
        a
    }

    fn deleted(mut a: Actor, at: &str) -> Actor {
        a.metadata.deletion_timestamp = Some(Time(ts(at)));
        a
    }

    /// An actor as the apiserver creates it: `Reconciling=True` with `reason`.
    fn created(activation: &str, reason: &str) -> Actor {
        actor(
            json!({"template": {"name": "t"}, "activation": activation}),
            json!({"phase": "Suspended", "conditions": [
                {"type": "Ready", "status": "False", "reason": if reason == "Created" { "Suspended" } else { reason },
                 "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Reconciling", "status": "True", "reason": reason, "message": "m",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
        )
    }

    fn reason_of(a: &Actor, t: &str) -> (String, String) {
        let c = condition(a, t).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn a_created_actor_is_settled_with_the_reason_of_its_state() {
        let now = ts("2026-01-01T00:00:05Z");
        for activation in ["OnDemand", "Suspended"] {
            let out = settled(&created(activation, reasons::CREATED), true, now).unwrap();
            assert_eq!(out.status.as_ref().unwrap().observed_generation, Some(1));
            assert_eq!(reason_of(&out, READY), ("False".into(), "Suspended".into()));
            assert_eq!(
                reason_of(&out, RECONCILING),
                ("False".into(), "Suspended".into())
            );
            // Settled once: nothing more to write.
            assert_eq!(settled(&out, true, now), None);
        }
        // No template: still in progress, saying why; settled when it appears.
        let out = settled(&created("OnDemand", reasons::CREATED), false, now).unwrap();
        assert_eq!(out.status.as_ref().unwrap().observed_generation, Some(1));
        assert_eq!(
            reason_of(&out, READY),
            ("False".into(), "TemplateNotFound".into())
        );
        assert_eq!(
            reason_of(&out, RECONCILING),
            ("True".into(), "TemplateNotFound".into())
        );
        assert_eq!(settled(&out, false, now), None);
        let later = settled(&out, true, now).unwrap();
        assert_eq!(
            reason_of(&later, RECONCILING),
            ("False".into(), "Suspended".into())
        );
        // An Always actor with its template is left to its resume (it says Resuming);
        // without one it waits for it and is not resumed.
        assert_eq!(
            settled(&created("Always", reasons::CREATED), true, now),
            None
        );
        let always = settled(&created("Always", reasons::CREATED), false, now).unwrap();
        assert_eq!(
            reason_of(&always, READY),
            ("False".into(), "TemplateNotFound".into())
        );
        // Actors the node agent settled, bound or waiting ones are not touched.
        let at_rest = actor(
            json!({"template": {"name": "t"}}),
            json!({"phase": "Suspended", "observedGeneration": 1, "conditions": [
                {"type": "Reconciling", "status": "False", "reason": "CheckpointFailed", "message": "m",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
        );
        assert_eq!(settled(&at_rest, false, now), None);
        let mut waiting = created("OnDemand", reasons::CREATED);
        waiting.status.as_mut().unwrap().conditions.push(Condition {
            type_: SCHEDULED.into(),
            status: "False".into(),
            reason: "NoFreeWorker".into(),
            message: "m".into(),
            last_transition_time: Time(now),
            observed_generation: None,
        });
        assert_eq!(settled(&waiting, true, now), None);
        let mut golden = created("OnDemand", reasons::CREATED);
        golden.metadata.namespace = Some(crds::GOLDEN_ATESPACE.into());
        assert_eq!(settled(&golden, true, now), None);
    }

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
        let d = decide(&a, true, None, &cfg(), now);
        assert_eq!(d.act, Act::Nothing);
        assert_eq!(d.requeue_after, Some(Duration::from_secs(60)));
        assert_eq!(d.retry, RetryChange::Clear);
        let d = decide(&a, true, None, &cfg(), ts("2026-01-01T00:11:00Z"));
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
        assert_eq!(decide(&a, true, None, &cfg(), now).act, Act::Resume);
        let waiting = actor(
            spec.clone(),
            json!({"phase": "Suspended", "observedGeneration": 1, "conditions": [{"type": "Scheduled",
                "status": "False", "reason": "NoFreeWorker", "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
        );
        assert_eq!(decide(&waiting, true, None, &cfg(), now).act, Act::Nothing);

        let failed = actor(spec, json!({"phase": "Failed", "observedGeneration": 1}));
        // First failure: at once.
        let d = decide(&failed, true, None, &cfg(), now);
        assert_eq!(d.act, Act::RetryResume);
        let RetryChange::Set(r) = d.retry else {
            panic!("{d:?}")
        };
        assert_eq!(r.attempts, 1);
        assert_eq!(r.next, now + RETRY_BASE);
        // Second failure 1 s later: wait for the rest of the base delay.
        let later = now + Duration::from_secs(1);
        let d = decide(&failed, true, Some(r), &cfg(), later);
        assert_eq!(d.act, Act::Nothing);
        assert_eq!(d.requeue_after, Some(Duration::from_secs(4)));
        let d = decide(&failed, true, Some(r), &cfg(), now + RETRY_BASE);
        assert_eq!(d.act, Act::RetryResume);
    }

    #[test]
    fn suspended_actors_that_run_are_suspended() {
        let now = ts("2026-01-01T00:00:00Z");
        let spec = json!({"template": {"name": "t"}, "activation": "Suspended"});
        for p in ["Running", "Resuming"] {
            let a = actor(spec.clone(), json!({"phase": p, "worker": {"name": "w"}}));
            assert_eq!(decide(&a, true, None, &cfg(), now).act, Act::Suspend, "{p}");
            // Its worker is dead: left to the dead-worker controller.
            assert_eq!(
                decide(&a, false, None, &cfg(), now),
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
            decide(&a, true, None, &cfg(), now).observed_generation,
            Some(1)
        );
        let a = actor(
            spec.clone(),
            json!({"phase": "Suspending", "worker": {"name": "w"}}),
        );
        assert_eq!(
            decide(&a, true, None, &cfg(), now).observed_generation,
            None
        );
        let a = actor(spec, json!({"phase": "Suspended", "observedGeneration": 1}));
        assert_eq!(decide(&a, true, None, &cfg(), now), Decision::nothing());
    }

    #[test]
    fn a_deleted_actor_is_finalized_once_unbound_and_waits_while_its_agent_stops_it() {
        let now = ts("2026-01-01T00:00:10Z");
        // Never bound: no finalizer, nothing to do (the apiserver deleted it at once).
        let mut never = deleted(
            bound_actor("Suspended", false, None),
            "2026-01-01T00:00:09Z",
        );
        never.metadata.finalizers = None;
        assert_eq!(decide(&never, true, None, &cfg(), now), Decision::nothing());
        // Bound to a live worker: wait for the node agent, look again soon.
        let a = deleted(bound_actor("Running", true, None), "2026-01-01T00:00:09Z");
        let d = decide(&a, true, None, &cfg(), now);
        assert_eq!(d.act, Act::Nothing);
        assert_eq!(d.requeue_after, Some(DELETING_RECHECK));
        // The agent stopped the sandbox and unbound it: the finalizer goes.
        let a = deleted(
            bound_actor("Suspended", false, None),
            "2026-01-01T00:00:09Z",
        );
        assert_eq!(decide(&a, true, None, &cfg(), now).act, Act::Finalize);
        // Deleting, just bound (Resuming) on a live worker: waits too, whatever its policy.
        let a = deleted(bound_actor("Resuming", true, None), "2026-01-01T00:00:09Z");
        assert_eq!(decide(&a, true, None, &cfg(), now).act, Act::Nothing);
        // Golden actors alike.
        let mut g = deleted(
            bound_actor("Suspended", false, None),
            "2026-01-01T00:00:09Z",
        );
        g.metadata.namespace = Some(crds::GOLDEN_ATESPACE.into());
        assert_eq!(decide(&g, true, None, &cfg(), now).act, Act::Finalize);
        // Another controller's finalizer only: not ours.
        let mut other = a.clone();
        other.metadata.finalizers = Some(vec!["example.com/x".into()]);
        assert_eq!(decide(&other, true, None, &cfg(), now), Decision::nothing());
    }

    #[test]
    fn a_deleted_actor_on_a_dead_worker_or_a_wedged_agent_does_not_stay_forever() {
        let a = deleted(bound_actor("Running", true, None), "2026-01-01T00:00:00Z");
        // Dead (or deleted) worker: its sandbox fenced itself; at once.
        assert_eq!(
            decide(&a, false, None, &cfg(), ts("2026-01-01T00:00:01Z")).act,
            Act::FinalizeLost { worker: "w".into() }
        );
        // Live worker whose agent does not stop it: requeued until the stop deadline...
        let stop = cfg().deadlines.stop;
        let d = decide(
            &a,
            true,
            None,
            &cfg(),
            ts("2026-01-01T00:00:00Z") + stop - Duration::from_secs(1),
        );
        assert_eq!(d.act, Act::Nothing);
        assert_eq!(
            d.requeue_after,
            Some(Duration::from_secs(1) + DEADLINE_SLACK)
        );
        // ... then finalized anyway.
        assert_eq!(
            decide(&a, true, None, &cfg(), ts("2026-01-01T00:00:00Z") + stop).act,
            Act::FinalizeStuck {
                worker: "w".into(),
                waited: stop
            }
        );
        // What the actor says before the finalizer goes.
        let now = ts("2026-01-01T00:01:00Z");
        let out =
            finalized_without_agent(&a, "w", reasons::STOP_DEADLINE_EXCEEDED, "why", now).unwrap();
        let ready = condition(&out, READY).unwrap();
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            ("False", reasons::STOP_DEADLINE_EXCEEDED, "why")
        );
        assert!(finalized_without_agent(&a, "other", "R", "m", now).is_none());
        assert!(
            finalized_without_agent(&bound_actor("Running", true, None), "w", "R", "m", now)
                .is_none(),
            "not deleted"
        );
    }

    #[test]
    fn settled_unbound_actors_lose_the_finalizer_and_bound_ones_keep_it() {
        let now = ts("2026-01-01T00:00:00Z");
        for p in ["Suspended", "Failed"] {
            let a = bound_actor(p, false, None);
            assert_eq!(
                decide(&a, true, None, &cfg(), now).act,
                Act::Finalize,
                "{p}"
            );
            assert!(unbound(&a));
        }
        for p in ["Resuming", "Running", "Suspending"] {
            let a = bound_actor(p, true, None);
            assert_ne!(
                decide(&a, true, None, &cfg(), now).act,
                Act::Finalize,
                "{p}"
            );
            assert!(!unbound(&a), "{p}");
        }
    }

    #[test]
    fn a_resume_past_its_deadline_fails_and_one_before_it_is_requeued_at_it() {
        let a = bound_actor("Resuming", true, Some("2026-01-01T00:00:00Z"));
        let resume = cfg().deadlines.resume;
        let before = ts("2026-01-01T00:00:00Z") + resume - Duration::from_secs(5);
        let d = decide(&a, true, None, &cfg(), before);
        assert_eq!(d.act, Act::Nothing);
        assert_eq!(
            d.requeue_after,
            Some(Duration::from_secs(5) + DEADLINE_SLACK)
        );
        let at = ts("2026-01-01T00:00:00Z") + resume;
        assert_eq!(
            decide(&a, true, None, &cfg(), at).act,
            Act::FailResume {
                worker: "w".into(),
                waited: resume
            }
        );
        // On a dead worker it is the dead-worker controller's business.
        assert_eq!(decide(&a, false, None, &cfg(), at), Decision::nothing());
        // Golden actors have deadlines too.
        let mut g = a.clone();
        g.metadata.namespace = Some(crds::GOLDEN_ATESPACE.into());
        assert!(matches!(
            decide(&g, true, None, &cfg(), at).act,
            Act::FailResume { .. }
        ));
        // A configured deadline.
        let mut short = cfg();
        short.deadlines.resume = Duration::from_secs(3);
        assert!(matches!(
            decide(&a, true, None, &short, ts("2026-01-01T00:00:03Z")).act,
            Act::FailResume { .. }
        ));

        let out = resume_failed(&a, "w", resume, at).unwrap();
        let st = out.status.as_ref().unwrap();
        assert_eq!(st.phase, Some(ActorPhase::Failed));
        assert!(st.worker.is_none());
        for (t, v) in [(READY, "False"), (RECONCILING, "False"), (STALLED, "True")] {
            let c = condition(&out, t).unwrap();
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                (v, reasons::RESUME_DEADLINE_EXCEEDED),
                "{t}"
            );
            assert!(c.message.contains("within 120s"), "{}", c.message);
        }
        // Not yet, not there, or no longer resuming: nothing.
        assert!(resume_failed(&a, "w", resume, before).is_none());
        assert!(resume_failed(&a, "w2", resume, at).is_none());
        assert!(resume_failed(&bound_actor("Running", true, None), "w", resume, at).is_none());
    }

    #[test]
    fn a_suspend_past_its_deadline_is_stalled_once_and_keeps_its_binding() {
        let spec = json!({"template": {"name": "t"}, "activation": "Suspended"});
        let mut a = bound_actor("Suspending", true, Some("2026-01-01T00:00:00Z"));
        a.spec = serde_json::from_value(spec).unwrap();
        let suspend = cfg().deadlines.suspend;
        let at = ts("2026-01-01T00:00:00Z") + suspend;
        let d = decide(&a, true, None, &cfg(), at - Duration::from_secs(1));
        assert_eq!(d.act, Act::Nothing);
        assert_eq!(
            d.requeue_after,
            Some(Duration::from_secs(1) + DEADLINE_SLACK)
        );
        assert_eq!(
            decide(&a, true, None, &cfg(), at).act,
            Act::SuspendStalled {
                worker: "w".into(),
                waited: suspend
            }
        );
        let out = suspend_stalled(&a, "w", suspend, at).unwrap();
        let st = out.status.as_ref().unwrap();
        assert_eq!(st.phase, Some(ActorPhase::Suspending));
        assert_eq!(st.worker.as_ref().unwrap().name, "w");
        let c = condition(&out, STALLED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reasons::SUSPEND_DEADLINE_EXCEEDED)
        );
        // Said once.
        assert_eq!(
            decide(&out, true, None, &cfg(), at + suspend).act,
            Act::Nothing
        );
        assert!(suspend_stalled(&out, "w", suspend, at + suspend).is_none());
    }

    #[test]
    fn a_suspend_that_interrupts_a_resume_has_its_own_deadline() {
        // The scheduler restarts Reconciling's transition time when a suspend starts: the
        // deadline counts from there, not from the resume.
        let a = bound_actor("Suspending", true, Some("2026-01-01T00:01:00Z"));
        let d = decide(&a, true, None, &cfg(), ts("2026-01-01T00:02:00Z"));
        assert_eq!(d.act, Act::Nothing);
        // Without a Reconciling=True condition, no deadline is known.
        let a = bound_actor("Resuming", true, None);
        let d = decide(&a, true, None, &cfg(), ts("2030-01-01T00:00:00Z"));
        assert_eq!(d, Decision::nothing());
    }

    #[test]
    fn golden_and_deleted_actors_are_left_alone() {
        let now = ts("2026-01-01T00:00:00Z");
        let mut a = actor(
            json!({"template": {"name": "t"}, "activation": "Always"}),
            json!({"phase": "Suspended"}),
        );
        a.metadata.namespace = Some(crds::GOLDEN_ATESPACE.into());
        assert_eq!(decide(&a, true, None, &cfg(), now), Decision::nothing());
        a.metadata.namespace = Some("team-a".into());
        a.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
        assert_eq!(decide(&a, true, None, &cfg(), now), Decision::nothing());
    }
}
