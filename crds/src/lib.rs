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
pub mod rbac;
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
    /// On a Worker: whether it takes new actors (`False` while `spec.unschedulable`, with
    /// reason [`CORDONED`](reasons::CORDONED) or [`DRAINING`](reasons::DRAINING)).
    pub const SCHEDULABLE: &str = "Schedulable";

    /// Condition reasons (the table of an actor's conditions is in ARCHITECTURE.md,
    /// "Actor conditions").
    pub mod reasons {
        /// `Reconciling=True` on an actor fresh from create: the apiserver writes it (with
        /// `Ready=False`) so kstatus, `kubectl wait` and Argo CD do not take the actor for
        /// settled before the operator has seen it.
        pub const CREATED: &str = "Created";
        /// `Ready=False` and `Reconciling=True` on an actor whose ActorTemplate does not exist
        /// (yet: GitOps may create the actor first); re-evaluated when the template appears.
        pub const TEMPLATE_NOT_FOUND: &str = "TemplateNotFound";
        /// `Ready=False`, `Reconciling=False` on a suspended actor at rest (the resting state
        /// of an `OnDemand` actor, the requested state of a `Suspended` one).
        pub const SUSPENDED: &str = "Suspended";
        /// `Ready=False`, `Reconciling=True` while an actor is bound and resumes.
        pub const RESUMING: &str = "Resuming";
        /// `Ready=False`, `Reconciling=True` while an actor is checkpointed.
        pub const SUSPENDING: &str = "Suspending";
        /// `Ready=True`, `Reconciling=False` on a running actor.
        pub const RUNNING: &str = "Running";
        /// `Scheduled=False` (with `Ready=False`, `Reconciling=True`) on an actor whose
        /// resume waits for a free worker.
        pub const NO_FREE_WORKER: &str = "NoFreeWorker";
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
        /// `Stalled=True` (and `Ready=False`, phase `Failed`) on an actor whose resume did
        /// not finish within [`RESUME_DEADLINE`](crate::lifecycle::RESUME_DEADLINE) on a live
        /// worker; it is retried like any failed resume.
        pub const RESUME_DEADLINE_EXCEEDED: &str = "ResumeDeadlineExceeded";
        /// `Stalled=True` on an actor whose suspend has not finished within
        /// [`SUSPEND_DEADLINE`](crate::lifecycle::SUSPEND_DEADLINE) on a live worker; the
        /// node agent keeps retrying it (the newest checkpoint may exist only on its node).
        pub const SUSPEND_DEADLINE_EXCEEDED: &str = "SuspendDeadlineExceeded";
        /// `Ready=False` on a deleted actor whose sandbox the node agent of its live worker
        /// did not stop within [`STOP_DEADLINE`](crate::lifecycle::STOP_DEADLINE): the
        /// operator removed the [`SANDBOX`](crate::finalizers::SANDBOX) finalizer anyway
        /// (the worker is released by the scheduler's orphan rule, the sandbox by the node
        /// agent's stray-sandbox rule).
        pub const STOP_DEADLINE_EXCEEDED: &str = "StopDeadlineExceeded";
        /// `Ready=False` on a deleted actor whose sandbox was stopped (the last status the
        /// node agent writes before the finalizer goes).
        pub const DELETED: &str = "Deleted";
        /// `Schedulable=False` on a cordoned worker that runs no actor (any more).
        pub const CORDONED: &str = "Cordoned";
        /// `Schedulable=False` on a cordoned worker whose actor is being moved off it
        /// (suspended; it resumes on another worker).
        pub const DRAINING: &str = "Draining";
        /// `Schedulable=True` on a worker that takes new actors (again).
        pub const SCHEDULABLE: &str = "Schedulable";
    }
}

/// Finalizers.
pub mod finalizers {
    /// On an actor while it may have a sandbox: the scheduler adds it when it binds the actor
    /// to a worker; the operator removes it once the actor is bound to no worker (its node
    /// agent stopped the sandbox and freed the worker, or the worker is gone or dead). So
    /// deleting a running actor stops its sandbox and frees its worker before the object
    /// goes; an actor that never ran has none and is deleted at once.
    pub const SANDBOX: &str = "substrate.ate.dev/sandbox";
}

/// Deadlines of an actor's transitions on a live worker (a dead worker is
/// [`liveness`]' business). The operator enforces them, measured from the
/// `lastTransitionTime` of the actor's `Reconciling=True` condition (the scheduler sets it
/// when a resume or suspend starts) or, for a delete, from `deletionTimestamp`.
pub mod lifecycle {
    use std::time::Duration;

    /// A resume (snapshot fetch, restore or boot, readiness) must finish within this long,
    /// else the actor goes `Failed` with reason
    /// [`RESUME_DEADLINE_EXCEEDED`](crate::conditions::reasons::RESUME_DEADLINE_EXCEEDED)
    /// and is retried as failed resumes are. Twice the node agent's default readiness budget
    /// (60 s), and far above a healthy resume (a second or two, tens of seconds for a
    /// multi-GiB snapshot fetched from the object store): only a wedged resume reaches it.
    pub const RESUME_DEADLINE: Duration = Duration::from_secs(120);
    /// A suspend (checkpoint, upload) must finish within this long, else the actor gets
    /// `Stalled=True` with reason
    /// [`SUSPEND_DEADLINE_EXCEEDED`](crate::conditions::reasons::SUSPEND_DEADLINE_EXCEEDED)
    /// (the node agent keeps retrying: failing the suspend would throw away a checkpoint
    /// that may exist only on the node). A checkpoint and upload of a GiB take ~10 s.
    pub const SUSPEND_DEADLINE: Duration = Duration::from_secs(120);
    /// The node agent of a live worker must stop a deleted actor's sandbox within this long
    /// (it takes about a second; longer only when a suspend was under way), else the
    /// operator removes the finalizer with reason
    /// [`STOP_DEADLINE_EXCEEDED`](crate::conditions::reasons::STOP_DEADLINE_EXCEEDED).
    pub const STOP_DEADLINE: Duration = Duration::from_secs(60);
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
    /// Cluster mode: set by the operator on the Namespace it keeps for an Atespace (value: the
    /// atespace's name); a Namespace carrying it is managed by the operator.
    pub const ATESPACE: &str = "substrate.ate.dev/atespace";
}

/// Well-known annotations.
pub mod annotations {
    /// Cluster mode: on a Namespace the operator created for an Atespace (value
    /// [`CREATED_BY_OPERATOR`]); only such a Namespace is deleted with its Atespace.
    pub const CREATED_BY: &str = "substrate.ate.dev/created-by";
    /// The value of [`CREATED_BY`], also the operator's field manager.
    pub const CREATED_BY_OPERATOR: &str = "substrate-operator";
    /// Cluster mode: on a Worker the operator cordoned because its Node is cordoned or
    /// tainted for removal (value: the Node's name). Only such a worker is uncordoned by the
    /// operator with its Node; a worker cordoned by hand stays cordoned.
    pub const CORDONED_BY_NODE: &str = "substrate.ate.dev/cordoned-by-node";
    /// Cluster mode: on an Atespace, the Namespace it has had: `<atespace uid>/<namespace uid>`
    /// (written by the operator; ignored on an Atespace of another uid, e.g. one restored
    /// from a backup). An Atespace whose recorded Namespace is deleted is deleted too.
    pub const NAMESPACE: &str = "substrate.ate.dev/namespace";
}
