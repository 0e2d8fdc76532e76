//! API types for Substrate — the Rust counterpart of apimachinery for our two API groups.
//!
//! - `substrate.ate.dev/v1alpha1` ([`substrate`]): `Atespace` (cluster-scoped tenant boundary),
//!   `Actor` (namespaced: the namespace *is* the atespace) and `Worker` (cluster-scoped). Served by
//!   our aggregated apiserver and stored in Valkey.
//! - `ate.dev/v1alpha1` ([`ate`]): `WorkerPool` and `ActorTemplate`. CRDs in a cluster; served by
//!   our apiserver too when it runs without Kubernetes.
//!
//! This crate does no I/O. It holds the types (serde + schemars + kube derive), constants
//! (labels, finalizers, condition types), pure validation ([`validation`]), the static resource
//! table every component uses ([`resources`]), and the CRD YAML generator ([`crdgen`]).

pub mod ate;
pub mod crdgen;
pub mod duration;
pub mod resources;
pub mod substrate;
pub mod validation;

pub use ate::{ActorTemplate, WorkerPool};
pub use substrate::{Actor, Atespace, Worker};

/// API group served by the aggregated apiserver.
pub const SUBSTRATE_GROUP: &str = "substrate.ate.dev";
/// API group of the CRD kinds.
pub const ATE_GROUP: &str = "ate.dev";
/// API group of `Lease` (served for the operator's leader election).
pub const COORDINATION_GROUP: &str = "coordination.k8s.io";
/// The one version of both groups.
pub const VERSION: &str = "v1alpha1";
/// Category shared by every kind, so `kubectl get substrate` lists them all.
pub const CATEGORY: &str = "substrate";

/// Prefix of atespace names reserved for the system (`ate-golden`, ...).
pub const RESERVED_PREFIX: &str = "ate-";
/// Atespace holding golden actors (one per ActorTemplate).
pub const GOLDEN_ATESPACE: &str = "ate-golden";
/// Group whose members may create reserved (`ate-`) atespaces: the system components.
pub const SYSTEM_GROUP: &str = "substrate:system";

/// Condition types.
pub mod conditions {
    /// kstatus-compatible readiness.
    pub const READY: &str = "Ready";
    /// kstatus: the controller is working towards the desired state.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: progress stopped on an error that needs a change of input.
    pub const STALLED: &str = "Stalled";
    /// Whether an actor is bound to a worker (`False` while a resume waits for one).
    pub const SCHEDULED: &str = "Scheduled";

    /// Condition reasons set by the operator.
    pub mod reasons {
        /// `Ready=False` on an actor released from a dead worker (deleted, or its node agent
        /// silent for [`DEAD_WORKER_AFTER`](crate::liveness::DEAD_WORKER_AFTER)).
        pub const WORKER_LOST: &str = "WorkerLost";
        /// A template's golden actor is booting.
        pub const GOLDEN_BOOTING: &str = "GoldenBooting";
        /// A template's golden snapshot is recorded.
        pub const GOLDEN_SNAPSHOT_READY: &str = "GoldenSnapshotReady";
        /// A template's golden actor failed to boot (`Stalled=True`).
        pub const GOLDEN_BOOT_FAILED: &str = "GoldenBootFailed";
        /// A worker pool has as many ready workers as it wants.
        pub const WORKERS_READY: &str = "WorkersReady";
        /// A worker pool has fewer ready workers than it wants.
        pub const WORKERS_NOT_READY: &str = "WorkersNotReady";
    }
}

/// How liveness of workers is judged, shared by the node agent, the executors and the operator.
///
/// A dead node *agent* is not a dead *sandbox*: the executors keep their sandboxes serving
/// while the agent restarts. The rule that keeps an actor from ever having two live copies
/// (or silently going back in time) is a fence by time:
///
/// * the node agent heartbeats every `Worker` of its node at least every
///   [`HEARTBEAT_INTERVAL`](liveness::HEARTBEAT_INTERVAL) and talks to each executor as
///   often;
/// * an executor that has heard nothing from its agent for
///   [`SANDBOX_FENCE_AFTER`](liveness::SANDBOX_FENCE_AFTER) stops its sandbox (it fences
///   itself: nobody could record a suspend for it any more);
/// * the operator releases an actor bound to a silent worker to its last good snapshot only
///   after [`DEAD_WORKER_AFTER`](liveness::DEAD_WORKER_AFTER), which is longer than the fence
///   plus a heartbeat, so by then the sandbox is known stopped. A `Worker` that is deleted
///   (its pod or node gone) releases its actor at once.
pub mod liveness {
    use std::time::Duration;

    /// The node agent heartbeats its workers (and pings its executors) at least this often.
    pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
    /// An executor not contacted by its node agent for this long stops its sandbox.
    pub const SANDBOX_FENCE_AFTER: Duration = Duration::from_secs(20);
    /// A bound worker whose heartbeat is older than this is dead: its sandbox has fenced
    /// itself, and its actor goes back to its last good snapshot.
    pub const DEAD_WORKER_AFTER: Duration = Duration::from_secs(30);

    const _: () = assert!(
        SANDBOX_FENCE_AFTER.as_secs() + HEARTBEAT_INTERVAL.as_secs() <= DEAD_WORKER_AFTER.as_secs()
    );
}

/// Well-known labels.
pub mod labels {
    /// Set on actors: the pool of the worker the actor is bound to.
    pub const WORKER_POOL: &str = "substrate.ate.dev/worker-pool";
}
