//! The scheduler: binds actors to free workers (`POST .../actors/<name>/resume`) and asks
//! running actors to suspend (`POST .../actors/<name>/suspend`).
//!
//! Binding is two compare-and-swap writes, worker first, so no lock and no scan is needed and
//! a crash between them is harmless:
//! 1. claim: a free, heartbeating, schedulable (not `spec.unschedulable`: cordoned) worker
//!    of the template's pool (picked at random from the in-memory watch cache of workers)
//!    gets `status.phase=Bound` and `status.actor` (with the actor's uid) — CAS on the
//!    worker's resourceVersion, so two resumes never claim the same worker; the loser picks
//!    another one;
//! 2. bind: the actor gets `status.phase=Resuming` and `status.worker` — CAS on the actor.
//!
//! The bind also adds the [`crds::finalizers::SANDBOX`] finalizer to the actor (one write):
//! from then on deleting the actor only sets its `deletionTimestamp`; its node agent stops
//! the sandbox and frees the worker, then the operator removes the finalizer.
//!
//! A worker whose `status.actor` does not point back (the actor is gone, has another uid, or
//! names another worker) is released by [`release_orphans`] after a grace period, which
//! covers a crash between 1 and 2 and a resume that lost the race on the actor.
//!
//! With no free worker the actor gets condition `Scheduled=False` (reason `NoFreeWorker`;
//! `Ready=False` and `Reconciling=True` with that reason, for kstatus and people),
//! the caller gets `202 Accepted` with that actor, and [`run`] binds it as soon as a worker
//! frees up (oldest request first).

use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use serde_json::{Value, json};

use crds::resources::{ACTOR_TEMPLATES, ACTORS, WORKERS};

use crate::registry::{Registry, now_rfc3339, rkey};
use crate::scheduler_queue::Queue;
use crate::status::ApiError;

/// Condition type that tells whether a resume found a worker.
pub const SCHEDULED: &str = "Scheduled";
/// Reason of `Scheduled=False` while the actor waits for a worker.
pub const NO_FREE_WORKER: &str = crds::conditions::reasons::NO_FREE_WORKER;
/// Condition type on a bound worker whose actor does not point back at it.
pub const ORPHANED: &str = "Orphaned";
/// A worker that has not heartbeated for this long is not given new actors.
pub const HEARTBEAT_GRACE: Duration = Duration::from_secs(30);
/// How long a bound worker may stay unreferenced before it is released.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(15);
const RESYNC: Duration = Duration::from_secs(2);

fn str_at<'a>(v: &'a Value, p: &str) -> Option<&'a str> {
    v.pointer(p).and_then(Value::as_str)
}

fn age(ts: Option<&str>) -> Option<Duration> {
    let t: jiff::Timestamp = ts?.parse().ok()?;
    let d = jiff::Timestamp::now().duration_since(t);
    Some(Duration::try_from(d).unwrap_or(Duration::ZERO))
}

/// Sets condition `type_` on `obj.status.conditions`; `lastTransitionTime` changes only when
/// the status does.
pub fn set_condition(obj: &mut Value, type_: &str, status: &str, reason: &str, message: &str) {
    let generation = obj
        .pointer("/metadata/generation")
        .cloned()
        .unwrap_or(json!(0));
    if !obj["status"].is_object() {
        obj["status"] = json!({});
    }
    if !obj["status"]["conditions"].is_array() {
        obj["status"]["conditions"] = json!([]);
    }
    let Some(conds) = obj["status"]["conditions"].as_array_mut() else {
        return;
    };
    let now = now_rfc3339();
    match conds.iter_mut().find(|c| c["type"] == type_) {
        Some(c) => {
            if c["status"] != status {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!(status);
            c["reason"] = json!(reason);
            c["message"] = json!(message);
            c["observedGeneration"] = generation;
        }
        None => conds.push(json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": now, "observedGeneration": generation,
        })),
    }
}

/// Removes condition `type_`.
pub fn remove_condition(obj: &mut Value, type_: &str) {
    if let Some(conds) = obj
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    {
        conds.retain(|c| c["type"] != type_);
    }
}

/// Adds `finalizer` to `obj.metadata.finalizers` unless it is there.
fn add_finalizer(obj: &mut Value, finalizer: &str) {
    if !obj["metadata"]["finalizers"].is_array() {
        obj["metadata"]["finalizers"] = json!([]);
    }
    if let Some(f) = obj["metadata"]["finalizers"].as_array_mut()
        && !f.iter().any(|x| x == finalizer)
    {
        f.push(json!(finalizer));
    }
}

/// The condition `type_` of `obj`, if set.
pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn waiting(actor: &Value) -> bool {
    condition(actor, SCHEDULED).is_some_and(|c| c["status"] == "False")
}

/// Whether `actor` waits in the scheduler's queue for a worker: not bound (`Suspended` or
/// `Failed`) and `Scheduled=False`.
pub(crate) fn waits_for_worker(actor: &Value) -> bool {
    waiting(actor) && matches!(phase(actor), "Suspended" | "Failed")
}

/// The body of `POST .../actors/<name>/suspend` (all optional; an empty body is `{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuspendOptions {
    #[serde(default)]
    pub preconditions: SuspendPreconditions,
    #[serde(default, rename = "apiVersion")]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
}

/// Conditions the actor must meet for the suspend to happen.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuspendPreconditions {
    /// Suspend only if `status.lastActiveTime` is not newer than this (RFC 3339): an idle
    /// suspend names the activity it judged idle, and loses to any recorded since.
    #[serde(default, rename = "lastActiveTime")]
    pub last_active_time: Option<String>,
}

impl SuspendOptions {
    /// Decodes a suspend body (JSON; empty means no options); 400 when it cannot be read,
    /// so a suspend whose conditions were not understood does not happen.
    pub fn decode(body: &[u8]) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let bad =
            |e: String| ApiError::bad_request(format!("couldn't decode the suspend options: {e}"));
        let v: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
        if !v.is_object() {
            return Err(bad(format!("expected an object, got {v}")));
        }
        let o: Self = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
        if let Some(t) = &o.preconditions.last_active_time
            && t.parse::<jiff::Timestamp>().is_err()
        {
            return Err(ApiError::bad_request(format!(
                "preconditions.lastActiveTime {t:?} is not an RFC 3339 time"
            )));
        }
        Ok(o)
    }
}

/// The actor's `status.lastActiveTime` when it is newer than `seen` (a time is newer when
/// both parse and it is later, or when they differ and one does not parse).
fn newer_activity(obj: &Value, seen: &str) -> Option<String> {
    let cur = obj.pointer("/status/lastActiveTime")?.as_str()?;
    let newer = match (
        cur.parse::<jiff::Timestamp>(),
        seen.parse::<jiff::Timestamp>(),
    ) {
        (Ok(c), Ok(s)) => c > s,
        _ => cur != seen,
    };
    newer.then(|| cur.to_string())
}

fn phase(obj: &Value) -> &str {
    str_at(obj, "/status/phase").unwrap_or("Suspended")
}

/// What a resume request did.
#[derive(Debug)]
pub enum Resumed {
    /// Bound to a worker now, or already bound: 200.
    Bound(Value),
    /// Waiting for a free worker: 202.
    Waiting(Value),
}

/// Why an actor cannot be placed right now.
enum Placement {
    /// The claimed worker, kept out of the orphan rule until its actor's bind is seen.
    Worker(Value, Claiming),
    NoFreeWorker(String),
}

/// A worker this scheduler is binding (claimed, the actor's bind not yet in the cache): the
/// orphan rule leaves it alone, instead of marking it `Orphaned` in the instant between the
/// claim and the bind (the claim's own write wakes the loop) and clearing the mark at the
/// next pass — two worker writes per resume for nothing.
struct Claiming {
    set: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    worker: String,
}

impl Claiming {
    fn new(set: &Arc<std::sync::Mutex<std::collections::HashSet<String>>>, worker: &str) -> Self {
        set.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(worker.to_string());
        Claiming {
            set: set.clone(),
            worker: worker.to_string(),
        }
    }
}

impl Drop for Claiming {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.worker);
    }
}

fn labels_match(selector: Option<&Value>, worker: &Value) -> bool {
    let Some(sel) = selector else { return true };
    let labels = worker.pointer("/metadata/labels");
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    if let Some(m) = sel.get("matchLabels").and_then(Value::as_object)
        && m.iter().any(|(k, v)| get(k) != v.as_str())
    {
        return false;
    }
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let ok = match e["operator"].as_str().unwrap_or_default() {
            "In" => get(key).is_some_and(|v| values.contains(&v)),
            "NotIn" => get(key).is_none_or(|v| !values.contains(&v)),
            "Exists" => get(key).is_some(),
            "DoesNotExist" => get(key).is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether `worker` is cordoned (`spec.unschedulable`): it takes no new actor.
pub fn is_unschedulable(worker: &Value) -> bool {
    worker.pointer("/spec/unschedulable") == Some(&Value::Bool(true))
}

/// Whether `worker` may take a new actor: free, not cordoned, not being deleted, and
/// heartbeating.
pub fn is_free(worker: &Value) -> bool {
    phase(worker) == "Free"
        && !is_unschedulable(worker)
        && worker.pointer("/metadata/deletionTimestamp").is_none()
        && age(str_at(worker, "/status/lastHeartbeatTime")).is_some_and(|a| a <= HEARTBEAT_GRACE)
}

/// The scheduler (cheap to clone).
#[derive(Clone)]
pub struct Scheduler {
    registry: Registry,
    /// The actors waiting for a worker ([`crate::scheduler_queue`]), kept by [`run`].
    queue: Arc<Queue>,
    /// Workers being bound now ([`Claiming`]).
    claiming: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Scheduler {
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            queue: Arc::default(),
            claiming: Arc::default(),
        }
    }

    /// The pool an actor runs in: its template's `workerPoolRef`.
    async fn pool_of(&self, actor: &Value) -> Result<String, ApiError> {
        let ns = str_at(actor, "/metadata/namespace").unwrap_or_default();
        let tns = str_at(actor, "/spec/template/namespace").unwrap_or(ns);
        let tname = str_at(actor, "/spec/template/name").unwrap_or_default();
        let Some(t) = self.registry.template(tns, tname).await? else {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "actor {ns}/{} cannot resume: {} \"{tname}\" not found in atespace {tns}",
                    str_at(actor, "/metadata/name").unwrap_or_default(),
                    ACTOR_TEMPLATES.qualified()
                ),
            ));
        };
        // A template of another atespace may stop being shared (or be created unshared after
        // the actor): checked at every resume, not only when the actor was created.
        if !crate::tenancy::template_usable(&self.registry, &t, ns).await? {
            let name = str_at(actor, "/metadata/name").unwrap_or_default();
            return Err(ApiError::forbidden_msg(format!(
                "{} \"{name}\" is forbidden: cannot resume: {}",
                ACTORS.qualified(),
                crate::tenancy::not_shared(tname, tns, ns).detail
            ))
            .with_details(crate::status::details(&ACTORS, name)));
        }
        Ok(str_at(&t, "/spec/workerPoolRef/name")
            .unwrap_or_default()
            .to_string())
    }

    /// Claims a free worker of `pool` for `actor` (CAS on the worker).
    async fn claim(&self, actor: &Value, pool: &str) -> Result<Placement, ApiError> {
        let selector = actor.pointer("/spec/workerSelector");
        let (_, workers) = self.registry.store.cache(rkey(&WORKERS)).snapshot(None);
        let in_pool: Vec<_> = workers
            .iter()
            .filter(|w| str_at(w, "/spec/pool") == Some(pool))
            .collect();
        let mut free: Vec<_> = in_pool
            .iter()
            .filter(|w| is_free(w) && labels_match(selector, w))
            .collect();
        free.shuffle(&mut rand::rng());
        let actor_ref = json!({
            "namespace": str_at(actor, "/metadata/namespace"),
            "name": str_at(actor, "/metadata/name"),
            "uid": str_at(actor, "/metadata/uid"),
        });
        for w in free {
            let wname = str_at(w, "/metadata/name").unwrap_or_default();
            let guard = Claiming::new(&self.claiming, wname);
            let mut claimed = false;
            let out = self
                .registry
                .guaranteed_update(&WORKERS, None, wname, |cur| {
                    claimed = false;
                    if !is_free(cur) {
                        return None;
                    }
                    let mut new = cur.clone();
                    new["status"]["phase"] = json!("Bound");
                    new["status"]["actor"] = actor_ref.clone();
                    // A new binding starts the orphan clock afresh: a mark left from an
                    // earlier binding (e.g. one the operator released with a status patch)
                    // would otherwise free this one at the next pass, between this claim
                    // and the actor's bind, and the next resume would share the worker.
                    remove_condition(&mut new, ORPHANED);
                    claimed = true;
                    Some(new)
                })
                .await?;
            if claimed && let Some(w) = out {
                return Ok(Placement::Worker(w, guard));
            }
        }
        let cordoned = in_pool.iter().filter(|w| is_unschedulable(w)).count();
        let why = if in_pool.is_empty() {
            format!("worker pool {pool:?} has no workers")
        } else if cordoned > 0 {
            format!(
                "no free worker in pool {pool:?} ({} workers, {cordoned} cordoned, none free and matching)",
                in_pool.len()
            )
        } else {
            format!(
                "no free worker in pool {pool:?} ({} workers, none free and matching)",
                in_pool.len()
            )
        };
        Ok(Placement::NoFreeWorker(why))
    }

    /// Frees `worker` if it is still bound to the actor with `uid`.
    async fn unclaim(&self, worker: &str, uid: Option<&str>) -> Result<(), ApiError> {
        self.registry
            .guaranteed_update(&WORKERS, None, worker, |cur| {
                if phase(cur) != "Bound" || str_at(cur, "/status/actor/uid") != uid {
                    return None;
                }
                let mut new = cur.clone();
                new["status"]["phase"] = json!("Free");
                if let Some(s) = new["status"].as_object_mut() {
                    s.remove("actor");
                }
                remove_condition(&mut new, ORPHANED);
                Some(new)
            })
            .await?;
        Ok(())
    }

    /// `POST .../actors/<name>/resume`.
    pub async fn resume(&self, ns: &str, name: &str) -> Result<Resumed, ApiError> {
        let actor = self.registry.get(&ACTORS, Some(ns), name).await?;
        if actor.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!("actor {ns}/{name} is being deleted and cannot resume"),
            ));
        }
        if str_at(&actor, "/spec/activation") == Some("Suspended") {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "actor {ns}/{name} has spec.activation=Suspended; set it to OnDemand or Always to resume it"
                ),
            ));
        }
        match phase(&actor) {
            "Running" | "Resuming" if actor.pointer("/status/worker/name").is_some() => {
                return Ok(Resumed::Bound(actor));
            }
            "Suspending" => {
                // Resume once the checkpoint is done.
                return self
                    .mark_waiting(
                        ns,
                        name,
                        "the actor is being suspended; it resumes when the checkpoint is done",
                    )
                    .await;
            }
            _ => {}
        }
        let pool = self.pool_of(&actor).await?;
        match self.claim(&actor, &pool).await? {
            Placement::NoFreeWorker(why) => {
                tracing::info!(atespace = ns, actor = name, pool, "resume waits: {why}");
                self.mark_waiting(
                    ns,
                    name,
                    &format!("{why}; the actor resumes when one frees up"),
                )
                .await
            }
            Placement::Worker(worker, claiming) => {
                let out = self.bind(&actor, &worker).await;
                // Released once the actors' cache holds the bind (or after 2 s).
                if let Ok(Resumed::Bound(a)) = &out {
                    let cache = self.registry.store.cache(rkey(&ACTORS)).clone();
                    let rv = crate::registry::rv_of(a);
                    tokio::spawn(async move {
                        let _ = cache.wait_for_rv(rv, Duration::from_secs(2)).await;
                        drop(claiming);
                    });
                }
                out
            }
        }
    }

    async fn mark_waiting(&self, ns: &str, name: &str, message: &str) -> Result<Resumed, ApiError> {
        let out = self
            .registry
            .guaranteed_update(&ACTORS, Some(ns), name, |cur| {
                let mut new = cur.clone();
                set_condition(&mut new, SCHEDULED, "False", NO_FREE_WORKER, message);
                // Readable by all (kstatus: in progress until it is bound, or cancelled).
                set_condition(
                    &mut new,
                    crds::conditions::READY,
                    "False",
                    NO_FREE_WORKER,
                    message,
                );
                set_condition(
                    &mut new,
                    crds::conditions::RECONCILING,
                    "True",
                    NO_FREE_WORKER,
                    message,
                );
                Some(new)
            })
            .await?
            .ok_or_else(|| ApiError::not_found(&ACTORS, name))?;
        Ok(Resumed::Waiting(out))
    }

    /// Binds `actor` to the claimed `worker` (CAS on the actor); releases the worker when the
    /// actor changed under us in a way that makes the binding wrong.
    async fn bind(&self, actor: &Value, worker: &Value) -> Result<Resumed, ApiError> {
        let ns = str_at(actor, "/metadata/namespace").unwrap_or_default();
        let name = str_at(actor, "/metadata/name").unwrap_or_default();
        let uid = str_at(actor, "/metadata/uid");
        let wname = str_at(worker, "/metadata/name").unwrap_or_default();
        let binding = json!({
            "name": wname,
            "pool": str_at(worker, "/spec/pool"),
            "node": str_at(worker, "/spec/node"),
            "address": str_at(worker, "/spec/address"),
        });
        let mut bound = false;
        let result = self
            .registry
            .guaranteed_update(&ACTORS, Some(ns), name, |cur| {
                bound = false;
                let suspended = matches!(phase(cur), "Suspended" | "Failed");
                if str_at(cur, "/metadata/uid") != uid
                    || cur.pointer("/metadata/deletionTimestamp").is_some()
                    || !suspended
                {
                    return None;
                }
                let mut new = cur.clone();
                add_finalizer(&mut new, crds::finalizers::SANDBOX);
                new["status"]["phase"] = json!("Resuming");
                new["status"]["worker"] = binding.clone();
                set_condition(
                    &mut new,
                    SCHEDULED,
                    "True",
                    "Bound",
                    &format!("bound to worker {wname}"),
                );
                set_condition(
                    &mut new,
                    crds::conditions::READY,
                    "False",
                    crds::conditions::reasons::RESUMING,
                    &format!("resuming on worker {wname}"),
                );
                // kstatus: in progress until the node agent reports the outcome. The resume
                // deadline runs from now, also when Reconciling was True already (a fresh
                // actor's `Created`, a wait for a worker).
                remove_condition(&mut new, crds::conditions::RECONCILING);
                set_condition(
                    &mut new,
                    crds::conditions::RECONCILING,
                    "True",
                    crds::conditions::reasons::RESUMING,
                    &format!("resuming on worker {wname}"),
                );
                remove_condition(&mut new, crds::conditions::STALLED);
                bound = true;
                Some(new)
            })
            .await;
        match result {
            Ok(Some(a)) if bound => {
                tracing::info!(atespace = ns, actor = name, worker = wname, "actor bound");
                Ok(Resumed::Bound(a))
            }
            Ok(current) => {
                self.unclaim(wname, uid).await?;
                match current {
                    Some(a) if a.pointer("/status/worker/name").is_some() => Ok(Resumed::Bound(a)),
                    Some(_) => Err(ApiError::new(
                        409,
                        "Conflict",
                        format!("actor {ns}/{name} changed while it was being resumed; try again"),
                    )),
                    None => Err(ApiError::not_found(&ACTORS, name)),
                }
            }
            Err(e) => {
                let _ = self.unclaim(wname, uid).await;
                Err(e)
            }
        }
    }

    /// `POST .../actors/<name>/suspend`: a running actor goes `Suspending` (the node agent
    /// checkpoints it); a waiting resume is cancelled; a suspended actor is left alone.
    /// With `options.preconditions.lastActiveTime` (an idle suspend), an actor whose
    /// recorded activity is newer is left alone and the answer is 409: the activity written
    /// after the caller decided wins.
    pub async fn suspend(
        &self,
        ns: &str,
        name: &str,
        options: &SuspendOptions,
    ) -> Result<Value, ApiError> {
        let mut active_since: Option<String> = None;
        let out = self
            .registry
            .guaranteed_update(&ACTORS, Some(ns), name, |cur| {
                active_since = None;
                if let Some(seen) = &options.preconditions.last_active_time
                    && let Some(newer) = newer_activity(cur, seen)
                {
                    active_since = Some(newer);
                    return None;
                }
                let mut new = cur.clone();
                match phase(cur) {
                    "Running" | "Resuming" => {
                        new["status"]["phase"] = json!("Suspending");
                        // The suspend's deadline runs from now, also when it interrupts a
                        // resume (Reconciling was already True then).
                        remove_condition(&mut new, crds::conditions::RECONCILING);
                        set_condition(
                            &mut new,
                            crds::conditions::READY,
                            "False",
                            crds::conditions::reasons::SUSPENDING,
                            "suspend requested",
                        );
                        set_condition(
                            &mut new,
                            crds::conditions::RECONCILING,
                            "True",
                            crds::conditions::reasons::SUSPENDING,
                            "suspend requested",
                        );
                    }
                    _ if waiting(cur) => {
                        remove_condition(&mut new, SCHEDULED);
                        for (t, v) in [
                            (crds::conditions::READY, "False"),
                            (crds::conditions::RECONCILING, "False"),
                        ] {
                            set_condition(
                                &mut new,
                                t,
                                v,
                                crds::conditions::reasons::SUSPENDED,
                                "suspended; the resume that waited for a worker was cancelled",
                            );
                        }
                    }
                    _ => return None,
                }
                Some(new)
            })
            .await?
            .ok_or_else(|| ApiError::not_found(&ACTORS, name))?;
        if let (Some(newer), Some(seen)) = (active_since, &options.preconditions.last_active_time) {
            return Err(ApiError::conflict_msg(
                &ACTORS,
                name,
                &format!(
                    "the actor was active at {newer}, after the precondition's lastActiveTime {seen}; not suspended"
                ),
            ));
        }
        Ok(out)
    }

    /// Forgets a settled actor's snapshot (its memory and filesystem) and the image it ran:
    /// its next resume boots from its template as the template is now (the golden snapshot of
    /// its current generation, or a cold boot). This is how a suspended actor moves onto its
    /// template's new image; its name, spec and labels stay. Refused (409) while the actor
    /// runs or is between states: suspend it first.
    pub async fn reset(&self, ns: &str, name: &str) -> Result<Value, ApiError> {
        let mut busy = None;
        let out = self
            .registry
            .guaranteed_update(&ACTORS, Some(ns), name, |cur| {
                busy = None;
                let p = phase(cur);
                if matches!(p, "Running" | "Resuming" | "Suspending") {
                    busy = Some(p.to_string());
                    return None;
                }
                let mut new = cur.clone();
                let status = new.get_mut("status")?.as_object_mut()?;
                let had = status.remove("snapshot").is_some() | status.remove("image").is_some();
                had.then_some(new)
            })
            .await?
            .ok_or_else(|| ApiError::not_found(&ACTORS, name))?;
        match busy {
            Some(p) => Err(ApiError::conflict_msg(
                &ACTORS,
                name,
                &format!("the actor is {p}: suspend it first, then reset it"),
            )),
            None => Ok(out),
        }
    }

    /// One pass: binds waiting actors while free workers exist (oldest request first) and
    /// releases orphaned workers.
    pub async fn pass(&self) -> Result<(), ApiError> {
        self.release_orphans().await?;
        if self.queue.is_empty() {
            return Ok(());
        }
        let (_, workers) = self.registry.store.cache(rkey(&WORKERS)).snapshot(None);
        if !workers.iter().any(|w| is_free(w)) {
            return Ok(());
        }
        for key in self.queue.oldest_first() {
            let (ns, name) = (key.namespace.as_str(), key.name.as_str());
            match self.resume(ns, name).await {
                Ok(Resumed::Bound(_)) | Ok(Resumed::Waiting(_)) => {}
                Err(e) => {
                    tracing::debug!(atespace = ns, actor = name, error = %e.message, "waiting actor not resumed")
                }
            }
        }
        Ok(())
    }

    /// Frees workers bound to an actor that does not point back at them (for longer than
    /// [`ORPHAN_GRACE`], measured from the worker's last write).
    async fn release_orphans(&self) -> Result<(), ApiError> {
        let (_, workers) = self.registry.store.cache(rkey(&WORKERS)).snapshot(None);
        let actors = self.registry.store.cache(rkey(&ACTORS));
        for w in workers.iter().filter(|w| phase(w) == "Bound") {
            let wname = str_at(w, "/metadata/name").unwrap_or_default();
            if self
                .claiming
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(wname)
            {
                continue;
            }
            let ans = str_at(w, "/status/actor/namespace").unwrap_or_default();
            let aname = str_at(w, "/status/actor/name").unwrap_or_default();
            let uid = str_at(w, "/status/actor/uid");
            let key = crate::registry::okey(Some(ans), aname);
            let points_back = actors.get(&key).is_some_and(|a| {
                str_at(&a, "/metadata/uid") == uid
                    && str_at(&a, "/status/worker/name") == Some(wname)
            });
            if points_back {
                if condition(w, ORPHANED).is_some() {
                    self.registry
                        .guaranteed_update(&WORKERS, None, wname, |cur| {
                            let mut new = cur.clone();
                            remove_condition(&mut new, ORPHANED);
                            Some(new)
                        })
                        .await?;
                }
                continue;
            }
            self.orphan_seen(wname, uid).await?;
        }
        Ok(())
    }

    /// Marks an unreferenced bound worker with an `Orphaned` condition, and frees it when the
    /// condition is older than [`ORPHAN_GRACE`].
    async fn orphan_seen(&self, wname: &str, uid: Option<&str>) -> Result<(), ApiError> {
        self.registry
            .guaranteed_update(&WORKERS, None, wname, |cur| {
                if phase(cur) != "Bound" || str_at(cur, "/status/actor/uid") != uid {
                    return None;
                }
                let mut new = cur.clone();
                match condition(cur, ORPHANED) {
                    Some(c)
                        if age(c["lastTransitionTime"].as_str())
                            .is_some_and(|a| a >= ORPHAN_GRACE) =>
                    {
                        new["status"]["phase"] = json!("Free");
                        if let Some(s) = new["status"].as_object_mut() {
                            s.remove("actor");
                        }
                        remove_condition(&mut new, ORPHANED);
                        tracing::info!(
                            worker = wname,
                            "released a worker whose actor does not reference it"
                        );
                    }
                    Some(_) => return None,
                    None => set_condition(
                        &mut new,
                        ORPHANED,
                        "True",
                        "ActorNotBound",
                        "the bound actor does not reference this worker",
                    ),
                }
                Some(new)
            })
            .await?;
        Ok(())
    }
}

/// Runs forever: a pass on every worker change and on a short resync.
pub async fn run(scheduler: Scheduler) {
    let follow = tokio::spawn(crate::scheduler_queue::follow(
        scheduler.queue.clone(),
        scheduler.registry.store.cache(rkey(&ACTORS)).clone(),
    ));
    // The queue follows the actors for as long as the scheduler runs.
    let _follow = crate::storage::AbortOnDrop(follow);
    let cache = scheduler.registry.store.cache(rkey(&WORKERS)).clone();
    loop {
        let rv = cache.rv();
        if let Err(e) = scheduler.pass().await {
            tracing::warn!(error = %e.message, "scheduler pass failed; will retry");
        }
        if let Ok(mut w) = cache.watch_from(rv) {
            let _ = tokio::time::timeout(RESYNC, w.next()).await;
        } else {
            tokio::time::sleep(RESYNC).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspend_options_decode_strictly() {
        assert_eq!(
            SuspendOptions::decode(b"").unwrap(),
            SuspendOptions::default()
        );
        assert_eq!(
            SuspendOptions::decode(b" {} ").unwrap(),
            SuspendOptions::default()
        );
        let o = SuspendOptions::decode(
            br#"{"preconditions": {"lastActiveTime": "2026-01-01T00:00:00Z"}}"#,
        )
        .unwrap();
        assert_eq!(
            o.preconditions.last_active_time.as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        for bad in [
            &br#"{"preconditions": {"lastActiveTime": "yesterday"}}"#[..],
            br#"{"preconditions": {"lastActiveTime": 5}}"#,
            br#"{"precondition": {}}"#,
            b"[]",
            b"0",
            b"{",
        ] {
            let e = SuspendOptions::decode(bad).unwrap_err();
            assert_eq!(e.code, 400, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_cordoned_worker_is_never_free() {
        let now = now_rfc3339();
        let w =
            json!({"spec": {"pool": "p"}, "status": {"phase": "Free", "lastHeartbeatTime": now}});
        assert!(is_free(&w));
        let mut cordoned = w.clone();
        cordoned["spec"]["unschedulable"] = json!(true);
        assert!(is_unschedulable(&cordoned) && !is_free(&cordoned));
        let mut uncordoned = w.clone();
        uncordoned["spec"]["unschedulable"] = json!(false);
        assert!(!is_unschedulable(&uncordoned) && is_free(&uncordoned));
        let mut deleting = w.clone();
        deleting["metadata"] = json!({"deletionTimestamp": now});
        assert!(!is_free(&deleting));
        let mut bound = w;
        bound["status"]["phase"] = json!("Bound");
        assert!(!is_free(&bound));
    }

    #[test]
    fn only_newer_activity_defeats_an_idle_suspend() {
        let a = json!({"status": {"lastActiveTime": "2026-01-01T00:00:10Z"}});
        assert_eq!(newer_activity(&a, "2026-01-01T00:00:10Z"), None);
        assert_eq!(newer_activity(&a, "2026-01-01T00:00:11Z"), None);
        assert_eq!(
            newer_activity(&a, "2026-01-01T00:00:09Z").as_deref(),
            Some("2026-01-01T00:00:10Z")
        );
        // The same instant written differently.
        assert_eq!(newer_activity(&a, "2026-01-01T00:00:10.000Z"), None);
        assert_eq!(
            newer_activity(&json!({"status": {}}), "2026-01-01T00:00:09Z"),
            None
        );
    }
}
