//! The Substrate operator: level-triggered controllers (kube-runtime [`Controller`]s) over the
//! apiserver's objects, one per concern, each in its own module:
//!
//! * [`golden`] (per `ActorTemplate`): for every template whose status does not record a
//!   golden snapshot for its current generation, a golden actor `<namespace>-<template>` in
//!   the reserved `ate-golden` atespace is created and resumed (the node agent cold-boots it
//!   and waits for the template's readiness probe), then suspended; its snapshot is recorded
//!   in the template's status with `Ready=True`. New actors resume from it.
//! * [`lifecycle`] (per `Actor`): `OnDemand` actors idle (no activity) longer than
//!   `idleTimeout` are suspended; `Always` actors that are not running are resumed (a failed
//!   resume is retried with exponential backoff); `Suspended` actors that run are suspended;
//!   `status.observedGeneration` follows the spec of settled actors. It owns the
//!   [`SANDBOX`](crds::finalizers::SANDBOX) finalizer (removed once a deleted actor's node
//!   agent stopped its sandbox and freed its worker, with bounded fallbacks for dead workers
//!   and wedged agents) and the [`Deadlines`] of `Resuming`/`Suspending`.
//! * [`dead_worker`] (per `Actor`): an actor bound to a worker that is gone or whose heartbeat
//!   is older than [`DEAD_WORKER_AFTER`] goes back to `Suspended` at its last good snapshot,
//!   and the worker is marked `Unhealthy`.
//! * [`pool`] (per `WorkerPool`, triggered by its `Worker`s too): kstatus of the pool.
//! * [`cordon`] (per `Worker`, triggered by its actor and its `Node` too): a worker whose Node
//!   is cordoned (cluster mode) gets `spec.unschedulable`; the running actor of a cordoned
//!   worker (however it was cordoned) is suspended, a few at a time, so that it resumes on
//!   another worker; the worker's `Schedulable` condition says so.
//! * [`namespaces`] (cluster mode only): a Namespace for every Atespace, created or adopted;
//!   deleted with its Atespace only when the operator created it; a deleted Namespace deletes
//!   its Atespace.
//! * [`snapshot_gc`] (when given the snapshot store): deletes the snapshots of deleted
//!   actors (at once, on their watch event) and of owners gone while no operator ran, and
//!   live actors' superseded snapshots, after a grace; a full sweep now and then.
//!
//! The operator talks to two apiservers through [`Clients`]: actors, workers and atespaces
//! are Substrate's; templates, pools, namespaces and the leader lease the cluster's (one and
//! the same apiserver standalone).
//!
//! Each controller decides with a pure function (the object, what the watch caches hold, the
//! time) returning an action and when to look again; a thin layer performs the action. Work is
//! queued per object: a watch event reconciles that object within milliseconds, a deadline
//! (idle timeout, dead-worker deadline, retry backoff) requeues it then, and a failure backs
//! off per object. An object that is gone (404) is done: no retry, no warning. Failures are
//! logged through a [`summary`] that bounds the volume. With [`leader`] election on, the
//! controllers (and their caches) run only while this replica holds the lease.

use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use clients::{Clients, Mode};

pub mod agent_pods;
pub mod caches;
pub mod cordon;
pub mod dead_worker;
pub mod golden;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod namespaces;
pub mod pool;
pub mod snapshot_gc;
pub mod summary;

mod act;
mod runner;

pub use caches::{CacheKeys, Caches};
pub use crds::liveness::DEAD_WORKER_AFTER;
pub use golden::{GOLDEN_GENERATION, golden_name};
pub use leader::LeaderConfig;
pub use lifecycle::{RETRY_BASE, RETRY_MAX, retry_delay};
pub use metrics::Metrics;
pub use snapshot_gc::SnapshotGcConfig;

/// Idle timeout of `OnDemand` actors without `spec.idleTimeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Why an operator step failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
}

impl OperatorError {
    /// A short, stable name of the failure for counting alike failures (`api 500
    /// InternalError`, `http`, `json`).
    pub fn kind(&self) -> String {
        match self {
            OperatorError::Kube(kube::Error::Api(e)) => format!("api {} {}", e.code, e.reason),
            OperatorError::Kube(kube::Error::HyperError(_)) => "http".into(),
            OperatorError::Kube(kube::Error::Service(_)) => "connection".into(),
            OperatorError::Kube(_) => "client".into(),
            OperatorError::Json(_) => "json".into(),
        }
    }
}

/// Whether `e` says the object is gone.
pub(crate) fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Operator settings.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Safety net: an object with no deadline of its own is reconciled again after this long
    /// even without a watch event (watch events, not this, drive the normal work).
    pub resync: Duration,
    /// Idle timeout for actors that do not set one.
    pub default_idle_timeout: Duration,
    /// Deadlines of resumes, suspends and sandbox stops on live workers.
    pub deadlines: Deadlines,
    /// Cluster mode: the node agents' pods, watched so that a deleted or failed one releases
    /// the actors of its node at once ([`agent_pods`]); `None`: not watched.
    pub agent_pods: Option<agent_pods::AgentPods>,
    /// Cluster mode: watch the cluster's Nodes and cordon the workers of a cordoned one
    /// ([`cordon`]).
    pub watch_nodes: bool,
    /// Drain suspends (actors moved off cordoned workers) under way at most at once.
    pub drain_in_flight: usize,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(300),
            default_idle_timeout: DEFAULT_IDLE_TIMEOUT,
            deadlines: Deadlines::default(),
            agent_pods: None,
            watch_nodes: true,
            drain_in_flight: cordon::DEFAULT_DRAIN_IN_FLIGHT,
        }
    }
}

/// How long an actor's transitions may take on a live worker (defaults: [`crds::lifecycle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// A resume not done after this long fails (`ResumeDeadlineExceeded`).
    pub resume: Duration,
    /// A suspend not done after this long is reported stalled (`SuspendDeadlineExceeded`).
    pub suspend: Duration,
    /// A deleted actor's sandbox not stopped after this long: its finalizer is removed
    /// anyway (`StopDeadlineExceeded`).
    pub stop: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            resume: crds::lifecycle::RESUME_DEADLINE,
            suspend: crds::lifecycle::SUSPEND_DEADLINE,
            stop: crds::lifecycle::STOP_DEADLINE,
        }
    }
}

/// The operator.
pub struct Operator {
    /// Actors and workers on Substrate's apiserver; templates, pools and the leader lease on
    /// the cluster's (one and the same in standalone mode).
    clients: Clients,
    cfg: OperatorConfig,
    /// Leader election; `None` runs the controllers at once (a single replica).
    leader: Option<LeaderConfig>,
    metrics: Arc<Metrics>,
    /// The caches of the current leadership term (none while not leading).
    caches: Mutex<Option<Caches>>,
    /// Snapshot GC settings (`None`: no GC).
    snapshot_gc: Mutex<Option<SnapshotGcConfig>>,
}

impl Operator {
    /// An operator that acts on its own (no leader election: a single replica). A single
    /// `kube::Client` is standalone mode.
    pub fn new(clients: impl Into<Clients>, cfg: OperatorConfig) -> Arc<Self> {
        Self::build(clients.into(), cfg, None)
    }

    /// An operator that acts only while it holds the leader lease.
    pub fn elected(
        clients: impl Into<Clients>,
        cfg: OperatorConfig,
        leader: LeaderConfig,
    ) -> Arc<Self> {
        Self::build(clients.into(), cfg, Some(leader))
    }

    fn build(clients: Clients, cfg: OperatorConfig, leader: Option<LeaderConfig>) -> Arc<Self> {
        Arc::new(Self {
            clients,
            cfg,
            leader,
            metrics: Arc::new(Metrics::default()),
            caches: Mutex::new(None),
            snapshot_gc: Mutex::new(None),
        })
    }

    /// Garbage-collects the snapshots in `cfg.store` (from the next leadership term on: call
    /// before [`Operator::run`]).
    pub fn enable_snapshot_gc(&self, cfg: SnapshotGcConfig) {
        if let Ok(mut g) = self.snapshot_gc.lock() {
            *g = Some(cfg);
        }
    }

    /// Counters of the controllers.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// What the operator's watch caches hold now (`None` while it is not leading).
    pub fn cache_keys(&self) -> Option<CacheKeys> {
        let caches = self.caches.lock().ok()?;
        caches.as_ref().map(Caches::keys)
    }

    /// Runs until the future is dropped: with leader election, campaigns for the lease and
    /// runs the controllers while leading; without, runs the controllers.
    pub async fn run(self: Arc<Self>) {
        match self.leader.clone() {
            Some(lc) => {
                let me = self.clone();
                leader::run_elected(
                    self.clients.cluster.clone(),
                    lc,
                    self.metrics.clone(),
                    move || me.clone().run_controllers(),
                )
                .await
            }
            None => self.run_controllers().await,
        }
    }

    /// Runs until `shutdown` resolves, then (when leading) releases the lease so another
    /// replica takes over at once.
    pub async fn run_until(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        match self.leader.clone() {
            Some(lc) => {
                let me = self.clone();
                leader::run_elected_until(
                    self.clients.cluster.clone(),
                    lc,
                    self.metrics.clone(),
                    move || me.clone().run_controllers(),
                    shutdown,
                )
                .await
            }
            None => {
                tokio::select! {
                    _ = self.run_controllers() => {}
                    _ = shutdown => {}
                }
            }
        }
    }

    /// The controllers and their caches, until dropped.
    async fn run_controllers(self: Arc<Self>) {
        let (caches, feeds) = Caches::new(&self.clients, &self.cfg);
        if let Ok(mut c) = self.caches.lock() {
            *c = Some(caches.clone());
        }
        let _clear = ClearOnDrop(self.clone());
        let gc = self.snapshot_gc.lock().ok().and_then(|g| g.clone());
        runner::run(
            self.clients.clone(),
            self.cfg.clone(),
            caches,
            feeds,
            self.metrics.clone(),
            gc,
        )
        .await;
    }
}

/// Forgets the caches of a leadership term when its controllers stop.
struct ClearOnDrop(Arc<Operator>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        if let Ok(mut c) = self.0.caches.lock() {
            *c = None;
        }
    }
}

pub(crate) fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

/// RFC 3339 with seconds, as the apiserver writes times.
pub(crate) fn fmt_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `now - t`, zero when `t` is in the future.
pub(crate) fn age(
    t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    now: jiff::Timestamp,
) -> Duration {
    let d = now.as_millisecond() - t.0.as_millisecond();
    Duration::from_millis(d.max(0) as u64)
}
