//! The Substrate operator: level-triggered control loops over the apiserver's objects.
//!
//! * **Golden snapshots**: for every `ActorTemplate` whose status does not record a golden
//!   snapshot for its current generation, a golden actor `<namespace>-<template>` in the
//!   reserved `ate-golden` atespace is created and resumed (the node agent cold-boots it and
//!   waits for the template's readiness probe), then suspended; its snapshot is recorded in
//!   the template's status with `Ready=True`. New actors resume from it.
//! * **Actor lifecycle policy**: `OnDemand` actors idle (no activity) longer than
//!   `idleTimeout` are suspended; `Always` actors that are not running are resumed;
//!   `Suspended` actors that run are suspended.
//! * **Dead workers**: an actor bound to a worker that is gone or has not heartbeated for
//!   [`DEAD_WORKER_AFTER`] goes back to `Suspended` at its last good snapshot, and the worker
//!   is marked `Unhealthy` (the scheduler gives it no new actors until it heartbeats again).
//!
//! Every pass re-reads the state from watch caches (kube-runtime reflectors) and acts only
//! on differences, so a restart or a missed event converges on the next pass.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crds::ate::{ActorTemplate, WorkerPool};
use crds::substrate::{Activation, Actor, ActorPhase, Worker, WorkerPhase};

/// A bound worker silent for this long is considered dead.
pub const DEAD_WORKER_AFTER: Duration = Duration::from_secs(30);
/// Idle timeout of `OnDemand` actors without `spec.idleTimeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Annotation on a golden actor: the template generation it was booted for.
pub const GOLDEN_GENERATION: &str = "substrate.ate.dev/template-generation";

/// Why an operator step failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
}

/// Operator settings.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Period of the full pass.
    pub resync: Duration,
    /// Idle timeout for actors that do not set one.
    pub default_idle_timeout: Duration,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(2),
            default_idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// First delay before an `Always` actor whose resume failed is resumed again; it doubles
/// with every failure in a row, up to [`RETRY_MAX`].
pub const RETRY_BASE: Duration = Duration::from_secs(5);
/// Longest delay between two resume attempts of a failing `Always` actor.
pub const RETRY_MAX: Duration = Duration::from_secs(300);

/// The delay before retry number `attempt` (0-based).
pub fn retry_delay(attempt: u32) -> Duration {
    RETRY_BASE
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(RETRY_MAX)
}

/// The operator.
pub struct Operator {
    client: kube::Client,
    cfg: OperatorConfig,
    /// Failed `Always` actors (by uid): resume attempts so far and when the next is due.
    retries: std::sync::Mutex<std::collections::HashMap<String, (u32, std::time::Instant)>>,
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn age(t: &Time) -> Duration {
    let secs = jiff::Timestamp::now().as_second() - t.0.as_second();
    Duration::from_secs(secs.max(0) as u64)
}

/// The golden actor's name for a template: `<namespace>-<name>`, shortened with a hash when
/// longer than a DNS label allows.
pub fn golden_name(namespace: &str, name: &str) -> String {
    use sha2::Digest;
    let full = format!("{namespace}-{name}");
    if full.len() <= 63 {
        return full;
    }
    let hash = sha2::Sha256::digest(full.as_bytes());
    let hex: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("{}-{hex}", full[..54].trim_end_matches('-'))
}

fn phase(a: &Actor) -> Option<ActorPhase> {
    a.status.as_ref().and_then(|s| s.phase)
}

/// A template's kstatus conditions: `Ready`, `Reconciling`, `Stalled`.
fn template_conditions(
    ready: bool,
    reason: &str,
    message: &str,
    reconciling: bool,
    stalled: bool,
    generation: i64,
) -> Value {
    let c = |t: &str, s: bool| {
        json!({"type": t, "status": if s { "True" } else { "False" }, "reason": reason,
            "message": message, "lastTransitionTime": now(), "observedGeneration": generation})
    };
    json!([
        c("Ready", ready),
        c("Reconciling", reconciling),
        c("Stalled", stalled)
    ])
}

fn ns_name(a: &Actor) -> (String, String) {
    (
        a.metadata.namespace.clone().unwrap_or_default(),
        a.metadata.name.clone().unwrap_or_default(),
    )
}

impl Operator {
    pub fn new(client: kube::Client, cfg: OperatorConfig) -> Arc<Self> {
        Arc::new(Self {
            client,
            cfg,
            retries: Default::default(),
        })
    }

    async fn action(&self, a: &Actor, verb: &str) -> Result<(), OperatorError> {
        let (ns, name) = ns_name(a);
        let api: Api<Actor> = Api::namespaced(self.client.clone(), &ns);
        match api
            .create_subresource::<Value, Actor>(verb, &name, &PostParams::default(), &json!({}))
            .await
        {
            Ok(_) => Ok(()),
            // Refused (e.g. template missing): the condition on the actor says why.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                tracing::debug!(atespace = %ns, actor = %name, verb, reason = %e.message, "action refused");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs until the future is dropped.
    pub async fn run(self: Arc<Self>) {
        let (actors, aw) = reflector::store::<Actor>();
        let (workers, ww) = reflector::store::<Worker>();
        let (templates, tw) = reflector::store::<ActorTemplate>();
        let (pools, pw) = reflector::store::<WorkerPool>();
        let a = watcher(Api::<Actor>::all(self.client.clone()), Default::default())
            .default_backoff()
            .reflect(aw)
            .applied_objects()
            .map(|_| ());
        let w = watcher(Api::<Worker>::all(self.client.clone()), Default::default())
            .default_backoff()
            .reflect(ww)
            .applied_objects()
            .map(|_| ());
        let t = watcher(
            Api::<ActorTemplate>::all(self.client.clone()),
            Default::default(),
        )
        .default_backoff()
        .reflect(tw)
        .applied_objects()
        .map(|_| ());
        let p = watcher(
            Api::<WorkerPool>::all(self.client.clone()),
            Default::default(),
        )
        .default_backoff()
        .reflect(pw)
        .applied_objects()
        .map(|_| ());
        let mut events = std::pin::pin!(futures::stream::select(
            futures::stream::select(a, p),
            futures::stream::select(w, t)
        ));
        let mut tick = tokio::time::interval(self.cfg.resync);
        loop {
            tokio::select! {
                e = events.next() => if e.is_none() { return },
                _ = tick.tick() => {
                    if let Err(e) = self.pass(&actors, &workers, &templates).await {
                        tracing::warn!(error = %e, "operator pass failed; will retry");
                    }
                    if let Err(e) = self.pools(&pools, &workers).await {
                        tracing::warn!(error = %e, "operator pass failed; will retry");
                    }
                }
            }
        }
    }

    /// WorkerPool status for every pool.
    pub async fn pools(
        &self,
        pools: &Store<WorkerPool>,
        workers: &Store<Worker>,
    ) -> Result<(), OperatorError> {
        for p in pools.state() {
            if let Err(e) = self.pool_status(&p, workers).await {
                tracing::warn!(pool = ?p.metadata.name, error = %e, "pool status step failed");
            }
        }
        Ok(())
    }

    /// One level-triggered pass over everything.
    pub async fn pass(
        &self,
        actors: &Store<Actor>,
        workers: &Store<Worker>,
        templates: &Store<ActorTemplate>,
    ) -> Result<(), OperatorError> {
        for t in templates.state() {
            if let Err(e) = self.golden(&t, actors).await {
                tracing::warn!(template = ?t.metadata.name, error = %e, "golden snapshot step failed");
            }
        }
        for a in actors.state() {
            if let Err(e) = self.lifecycle(&a, workers).await {
                let (ns, name) = ns_name(&a);
                tracing::warn!(atespace = %ns, actor = %name, error = %e, "lifecycle step failed");
            }
        }
        Ok(())
    }

    async fn golden(&self, t: &ActorTemplate, actors: &Store<Actor>) -> Result<(), OperatorError> {
        let tns = t.metadata.namespace.clone().unwrap_or_default();
        let tname = t.metadata.name.clone().unwrap_or_default();
        let generation = t.metadata.generation.unwrap_or(0);
        let status = t.status.clone().unwrap_or_default();
        if t.current_golden().is_some() {
            return Ok(());
        }
        let gname = golden_name(&tns, &tname);
        let api: Api<Actor> = Api::namespaced(self.client.clone(), crds::GOLDEN_ATESPACE);
        let golden = actors.state().into_iter().find(|a| {
            a.metadata.namespace.as_deref() == Some(crds::GOLDEN_ATESPACE)
                && a.metadata.name.as_deref() == Some(&gname)
        });
        let templates: Api<ActorTemplate> = Api::namespaced(self.client.clone(), &tns);
        // kstatus: the new generation is seen and being worked on (once per generation;
        // a failed boot says Stalled instead, until a retry succeeds).
        let has = |t: &str| {
            status.conditions.iter().any(|c| {
                c.type_ == t && c.status == "True" && c.observed_generation == Some(generation)
            })
        };
        if !has("Reconciling") && !has("Stalled") {
            let msg = format!("booting the golden actor {}/{gname}", crds::GOLDEN_ATESPACE);
            templates
                .patch_status(
                    &tname,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {
                        "observedGeneration": generation,
                        "conditions": template_conditions(false, "GoldenBooting", &msg, true, false, generation),
                    }})),
                )
                .await?;
        }
        let Some(golden) = golden else {
            let obj: Actor = serde_json::from_value(json!({
                "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
                "metadata": {"name": gname, "namespace": crds::GOLDEN_ATESPACE,
                             "annotations": {GOLDEN_GENERATION: generation.to_string()},
                             "labels": {"substrate.ate.dev/golden": "true"}},
                "spec": {"template": {"namespace": tns, "name": tname}, "activation": "OnDemand", "idleTimeout": "87600h"},
            }))?;
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => {
                    tracing::info!(template = %format!("{tns}/{tname}"), golden = %gname, "golden actor created")
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(());
        };
        let booted_for = golden
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(GOLDEN_GENERATION))
            .and_then(|g| g.parse::<i64>().ok());
        if booted_for != Some(generation) {
            // The template changed: boot a new golden actor.
            if golden.metadata.deletion_timestamp.is_none() {
                api.delete(&gname, &Default::default()).await?;
            }
            return Ok(());
        }
        let gstatus = golden.status.clone().unwrap_or_default();
        match gstatus.phase {
            None | Some(ActorPhase::Suspended) if gstatus.snapshot.is_none() => {
                let waiting = gstatus
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Scheduled" && c.status == "False");
                if !waiting {
                    self.action(&golden, "resume").await?;
                }
            }
            Some(ActorPhase::Running) => self.action(&golden, "suspend").await?,
            Some(ActorPhase::Suspended) => {
                let snapshot = gstatus.snapshot.clone();
                let msg = format!(
                    "golden snapshot taken from {}/{gname}",
                    crds::GOLDEN_ATESPACE
                );
                let patch = json!({"status": {
                    "snapshot": snapshot,
                    "observedGeneration": generation,
                    "conditions": template_conditions(true, "GoldenSnapshotReady", &msg, false, false, generation),
                }});
                templates
                    .patch_status(&tname, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
                tracing::info!(template = %format!("{tns}/{tname}"), "golden snapshot recorded");
            }
            Some(ActorPhase::Failed) => {
                let msg = gstatus
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Ready")
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                let patch = json!({"status": {
                    "observedGeneration": generation,
                    "conditions": template_conditions(false, "GoldenBootFailed", &msg, false, true, generation),
                }});
                if !has("Stalled") {
                    templates
                        .patch_status(&tname, &PatchParams::default(), &Patch::Merge(patch))
                        .await?;
                }
                // Try again, with backoff: the failure left the golden actor without a
                // worker, and the cause (a missing image...) may last.
                if self.retry_due(golden.metadata.uid.as_deref().unwrap_or_default()) {
                    self.action(&golden, "resume").await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether the next retry of the object with `uid` is due (exponential backoff: at once,
    /// then [`RETRY_BASE`], doubling up to [`RETRY_MAX`]); records the attempt when it is.
    fn retry_due(&self, uid: &str) -> bool {
        let Ok(mut r) = self.retries.lock() else {
            return false;
        };
        let now = std::time::Instant::now();
        let entry = r.entry(uid.to_string()).or_insert((0, now));
        if now < entry.1 {
            return false;
        }
        entry.1 = now + retry_delay(entry.0);
        entry.0 += 1;
        true
    }

    /// WorkerPool status (kstatus): `replicas`, `readyReplicas` (its workers that are Free or
    /// Bound and heartbeating), `observedGeneration`, `Ready` and `Reconciling`. Written
    /// only when it changes.
    async fn pool_status(
        &self,
        pool: &WorkerPool,
        workers: &Store<Worker>,
    ) -> Result<(), OperatorError> {
        let ns = pool.metadata.namespace.clone().unwrap_or_default();
        let name = pool.metadata.name.clone().unwrap_or_default();
        let generation = pool.metadata.generation.unwrap_or(0);
        let want = pool.spec.replicas;
        let ready = workers
            .state()
            .iter()
            .filter(|w| w.spec.pool == name)
            .filter(|w| {
                w.status.as_ref().is_some_and(|s| {
                    matches!(s.phase, Some(WorkerPhase::Free | WorkerPhase::Bound))
                        && s.last_heartbeat_time
                            .as_ref()
                            .is_some_and(|t| age(t) < DEAD_WORKER_AFTER)
                })
            })
            .count() as i32;
        let ok = ready >= want;
        let (reason, msg) = if ok {
            ("WorkersReady", format!("{ready} of {want} workers ready"))
        } else {
            (
                "WorkersNotReady",
                format!("{ready} of {want} workers ready"),
            )
        };
        let cur = pool.status.clone().unwrap_or_default();
        let cond = |t: &str| cur.conditions.iter().find(|c| c.type_ == t);
        let unchanged = cur.observed_generation == Some(generation)
            && cur.replicas == Some(want)
            && cur.ready_replicas == Some(ready)
            && cond("Ready").is_some_and(|c| c.reason == reason);
        if unchanged {
            return Ok(());
        }
        let keep = |t: &str, status: bool| {
            cond(t)
                .filter(|c| (c.status == "True") == status)
                .map(|c| c.last_transition_time.clone())
        };
        let c = |t: &str, status: bool, reason: &str| {
            json!({"type": t, "status": if status { "True" } else { "False" }, "reason": reason,
                "message": msg, "observedGeneration": generation,
                "lastTransitionTime": keep(t, status).map_or_else(|| json!(now()), |t| json!(t))})
        };
        let api: Api<WorkerPool> = Api::namespaced(self.client.clone(), &ns);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "observedGeneration": generation, "replicas": want, "readyReplicas": ready,
                "conditions": [c("Ready", ok, reason), c("Reconciling", !ok, reason)],
            }})),
        )
        .await?;
        Ok(())
    }

    async fn lifecycle(&self, a: &Actor, workers: &Store<Worker>) -> Result<(), OperatorError> {
        if a.metadata.deletion_timestamp.is_some()
            || a.metadata.namespace.as_deref() == Some(crds::GOLDEN_ATESPACE)
        {
            return Ok(());
        }
        let status = a.status.clone().unwrap_or_default();
        // Dead worker: back to the last good snapshot.
        if let Some(w) = &status.worker
            && matches!(
                phase(a),
                Some(ActorPhase::Resuming | ActorPhase::Running | ActorPhase::Suspending)
            )
        {
            let worker = workers
                .state()
                .into_iter()
                .find(|x| x.metadata.name.as_deref() == Some(&w.name));
            let alive = worker.as_ref().is_some_and(|x| {
                x.status
                    .as_ref()
                    .and_then(|s| s.last_heartbeat_time.as_ref())
                    .is_some_and(|t| age(t) < DEAD_WORKER_AFTER)
            });
            if !alive {
                self.rescue(a, &w.name, worker.is_some()).await?;
                return Ok(());
            }
        }
        // kstatus (Flux health checks, `kubectl wait`): once an actor is settled, its spec
        // has been acted on; `observedGeneration` says so.
        if matches!(
            phase(a),
            None | Some(ActorPhase::Suspended | ActorPhase::Running | ActorPhase::Failed)
        ) && a.metadata.generation.is_some()
            && status.observed_generation != a.metadata.generation
        {
            let (ns, name) = ns_name(a);
            let api: Api<Actor> = Api::namespaced(self.client.clone(), &ns);
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"observedGeneration": a.metadata.generation}})),
            )
            .await?;
        }
        let uid = a.metadata.uid.clone().unwrap_or_default();
        if phase(a) == Some(ActorPhase::Running)
            && let Ok(mut r) = self.retries.lock()
        {
            r.remove(&uid);
        }
        match (a.spec.activation, phase(a)) {
            // Retry with exponential backoff: the failure may be lasting (a missing image),
            // and every attempt costs a worker for a while.
            (Activation::Always, Some(ActorPhase::Failed)) if self.retry_due(&uid) => {
                let (ns, name) = ns_name(a);
                tracing::info!(atespace = %ns, actor = %name, "resume failed before; retrying");
                self.action(a, "resume").await?;
            }
            (Activation::Always, Some(ActorPhase::Failed)) => {}
            (Activation::Always, None | Some(ActorPhase::Suspended)) => {
                let waiting = status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Scheduled" && c.status == "False");
                if !waiting {
                    self.action(a, "resume").await?;
                }
            }
            (Activation::Suspended, Some(ActorPhase::Running | ActorPhase::Resuming)) => {
                self.action(a, "suspend").await?;
            }
            (Activation::OnDemand, Some(ActorPhase::Running)) => {
                let timeout = a
                    .spec
                    .idle_timeout
                    .as_deref()
                    .and_then(|d| crds::duration::parse(d).ok())
                    .unwrap_or(self.cfg.default_idle_timeout);
                let idle = status.last_active_time.as_ref().map(age);
                if idle.is_some_and(|i| i >= timeout) {
                    let (ns, name) = ns_name(a);
                    tracing::info!(atespace = %ns, actor = %name, ?timeout, "idle: suspending");
                    self.action(a, "suspend").await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Returns an actor whose worker died to `Suspended` (its snapshot is untouched: the last
    /// good one) and marks the worker `Unhealthy`.
    async fn rescue(
        &self,
        a: &Actor,
        worker: &str,
        worker_exists: bool,
    ) -> Result<(), OperatorError> {
        let (ns, name) = ns_name(a);
        let api: Api<Actor> = Api::namespaced(self.client.clone(), &ns);
        let Some(mut cur) = api.get_opt(&name).await? else {
            return Ok(());
        };
        let Some(st) = cur.status.as_mut() else {
            return Ok(());
        };
        if st.worker.as_ref().map(|w| w.name.as_str()) != Some(worker) {
            return Ok(());
        }
        st.worker = None;
        st.phase = Some(ActorPhase::Suspended);
        st.conditions
            .retain(|c| !matches!(c.type_.as_str(), "Ready" | "Scheduled" | "Reconciling"));
        let mut obj = serde_json::to_value(&cur)?;
        let conds = obj["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut conds: Vec<Value> = conds;
        conds.push(json!({
            "type": "Ready", "status": "False", "reason": "WorkerLost",
            "message": format!("worker {worker} stopped heartbeating; the actor resumes from its last good snapshot"),
            "lastTransitionTime": now(), "observedGeneration": cur.metadata.generation.unwrap_or(0),
        }));
        obj["status"]["conditions"] = Value::Array(conds);
        let new: Actor = serde_json::from_value(obj)?;
        match api
            .replace_status(&name, &PostParams::default(), &new)
            .await
        {
            Ok(_) => {
                tracing::warn!(atespace = %ns, actor = %name, worker, "worker lost: actor back to its last good snapshot")
            }
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        if worker_exists {
            let workers: Api<Worker> = Api::all(self.client.clone());
            workers
                .patch_status(
                    worker,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"phase": "Unhealthy", "actor": null}})),
                )
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::golden_name;

    #[test]
    fn retry_delays_double_up_to_the_cap() {
        use super::{RETRY_BASE, RETRY_MAX, retry_delay};
        assert_eq!(retry_delay(0), RETRY_BASE);
        assert_eq!(retry_delay(1), RETRY_BASE * 2);
        assert_eq!(retry_delay(3), RETRY_BASE * 8);
        assert_eq!(retry_delay(10), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn golden_names_are_dns_labels() {
        assert_eq!(golden_name("team-a", "counter"), "team-a-counter");
        let long = golden_name(&"n".repeat(40), &"t".repeat(40));
        assert!(long.len() <= 63, "{long}");
        assert!(crds::validation::dns1123_label(&long).is_empty(), "{long}");
        // Distinct long names stay distinct.
        assert_ne!(long, golden_name(&"n".repeat(40), &"u".repeat(40)));
    }
}
