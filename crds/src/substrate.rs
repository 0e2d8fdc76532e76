//! `substrate.ate.dev/v1alpha1`: Atespace, Actor, Worker — served by the aggregated apiserver.

// kube's `printcolumn(...)` attributes repeat `type_ = ...` by design; clippy reads them as
// duplicates of one attribute.
#![allow(clippy::duplicated_attributes)]
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An Atespace is the tenant boundary: the namespace segment of every Actor names its atespace,
/// so Kubernetes RBAC in namespace `team-a` scopes the actors of atespace `team-a`.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[kube(
    group = "substrate.ate.dev",
    version = "v1alpha1",
    kind = "Atespace",
    plural = "atespaces",
    singular = "atespace",
    shortname = "ates",
    category = "substrate",
    status = "AtespaceStatus",
    derive = "PartialEq",
    doc = "Atespace is a tenant scope for actors; an actor's namespace names its atespace.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Display Name",
        type_ = "string",
        json_path = ".spec.displayName",
        priority = "1"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AtespaceSpec {
    /// Human-readable name shown by tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Free-form description of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who may reach this atespace's actors over HTTP through the router. Unset: `Open`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_access: Option<HttpAccess>,
}

impl AtespaceSpec {
    /// The HTTP access policy in force (`Open` when unset).
    pub fn http_access_policy(&self) -> HttpAccessPolicy {
        self.http_access
            .as_ref()
            .map(|h| h.policy)
            .unwrap_or_default()
    }
}

/// Who may reach an atespace's actors over HTTP (the router's check, see docs/tenancy.md).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpAccess {
    /// `Open` (default) or `Authorized`.
    #[serde(default)]
    pub policy: HttpAccessPolicy,
}

/// HTTP access policy of an atespace.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum HttpAccessPolicy {
    /// Anyone who reaches the router.
    #[default]
    Open,
    /// A request must carry `Authorization: Bearer <token>` of a user (authenticated by a
    /// `TokenReview`) allowed the request's verb on `actors/proxy` of the actor (a
    /// `SubjectAccessReview`); the router removes the header before forwarding.
    Authorized,
}

/// The subresource a request through the router is authorized as (`actors/proxy`, as
/// kube-apiserver authorizes `pods/proxy`).
pub const PROXY_SUBRESOURCE: &str = "proxy";

/// Lifecycle phase of an atespace, as for a namespace.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum AtespacePhase {
    /// Accepts new actors.
    Active,
    /// Being deleted: refuses new actors, its actors are being deleted.
    Terminating,
}

/// Observed state of an Atespace.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AtespaceStatus {
    /// Active or Terminating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<AtespacePhase>,
    /// Generation of the spec this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions (`Ready`; `Terminating` details while deleting).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// An Actor is one long-lived, stateful, mostly idle workload. It runs on a worker while active
/// and is checkpointed to object storage while suspended.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "substrate.ate.dev",
    version = "v1alpha1",
    kind = "Actor",
    plural = "actors",
    singular = "actor",
    shortname = "act",
    category = "substrate",
    namespaced,
    status = "ActorStatus",
    derive = "PartialEq",
    doc = "Actor is a long-lived, stateful workload that is suspended to a snapshot while idle and resumed on any free worker on demand.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Worker", type_ = "string", json_path = ".status.worker.name"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Template",
        type_ = "string",
        json_path = ".spec.template.name",
        priority = "1"
    ),
    printcolumn(
        name = "Activation",
        type_ = "string",
        json_path = ".spec.activation",
        priority = "1"
    ),
    printcolumn(
        name = "Address",
        type_ = "string",
        json_path = ".status.worker.address",
        priority = "1"
    ),
    printcolumn(
        name = "Last Active",
        type_ = "date",
        json_path = ".status.lastActiveTime",
        priority = "1"
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".status.image",
        priority = "1"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ActorSpec {
    /// The ActorTemplate (`ate.dev`) this actor is created from. Immutable. The template may be
    /// created after the actor (GitOps applies in any order).
    pub template: TemplateRef,
    /// When the actor runs: `OnDemand` (default: suspended until traffic, suspended again after
    /// `idleTimeout`), `Always` (kept running) or `Suspended` (kept suspended).
    #[serde(default)]
    pub activation: Activation,
    /// How long an `OnDemand` actor may stay idle before it is suspended, as a duration such as
    /// `5m` or `1h30m`. Defaults to the system's idle timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Restricts the workers this actor may be scheduled on, by the workers' labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_selector: Option<LabelSelector>,
}

/// A reference to an ActorTemplate.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    /// Namespace of the ActorTemplate; defaults to the actor's atespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the ActorTemplate.
    pub name: String,
}

/// Activation policy of an actor.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
pub enum Activation {
    /// Suspended until traffic arrives; suspended again after `idleTimeout`.
    #[default]
    OnDemand,
    /// Kept running.
    Always,
    /// Kept suspended; traffic does not wake it.
    Suspended,
}

/// Phase of an actor's lifecycle.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum ActorPhase {
    /// Checkpointed (or never started); no worker.
    Suspended,
    /// Bound to a worker, being restored.
    Resuming,
    /// Running on a worker and reachable.
    Running,
    /// Being checkpointed.
    Suspending,
    /// Failed; see the conditions.
    Failed,
}

impl ActorPhase {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Suspended => "Suspended",
            Self::Resuming => "Resuming",
            Self::Running => "Running",
            Self::Suspending => "Suspending",
            Self::Failed => "Failed",
        }
    }
}

/// Observed state of an Actor.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActorStatus {
    /// Suspended, Resuming, Running, Suspending or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ActorPhase>,
    /// Conditions; `Ready` is kstatus-compatible.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Generation of the spec this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The worker the actor is bound to, while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<ActorWorker>,
    /// The last good snapshot the actor resumes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotRef>,
    /// When the actor last served traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_time: Option<Time>,
    /// The image the actor's process runs, pinned by digest (`<repository>@sha256:...`): the
    /// one it booted with. A snapshot restores onto the image it was taken with, so after a
    /// change of the template's image this stays the old one until the actor boots afresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Where an actor runs.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActorWorker {
    /// Worker name.
    pub name: String,
    /// WorkerPool of the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Node hosting the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Address (IP) the actor answers on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The worker gateway (`<ip>:<port>`) of the node agent running the actor, which
    /// reaches `address` from other nodes (HTTP `CONNECT`); written by that agent with
    /// `Running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// A committed snapshot in object storage.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRef {
    /// Object-store URL of the snapshot's manifest.
    pub uri: String,
    /// Content id of the manifest (sha256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// When it was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,
    /// Compressed size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
}

/// A Worker is one warm sandbox (a pod in a cluster, a local process group on one machine).
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[kube(
    group = "substrate.ate.dev",
    version = "v1alpha1",
    kind = "Worker",
    plural = "workers",
    singular = "worker",
    shortname = "wkr",
    category = "substrate",
    status = "WorkerStatus",
    derive = "PartialEq",
    doc = "Worker is one warm sandbox that runs at most one actor at a time.",
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.pool"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Actor", type_ = "string", json_path = ".status.actor.name"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".spec.node",
        priority = "1"
    ),
    printcolumn(
        name = "Address",
        type_ = "string",
        json_path = ".spec.address",
        priority = "1"
    ),
    printcolumn(
        name = "Atespace",
        type_ = "string",
        json_path = ".status.actor.namespace",
        priority = "1"
    ),
    printcolumn(
        name = "Heartbeat",
        type_ = "date",
        json_path = ".status.lastHeartbeatTime",
        priority = "1"
    ),
    printcolumn(
        name = "Unschedulable",
        type_ = "boolean",
        json_path = ".spec.unschedulable",
        priority = "1"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSpec {
    /// WorkerPool this worker belongs to. Immutable.
    pub pool: String,
    /// Node hosting this worker. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Address (IP) of the worker's sandbox network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Cordoned: the scheduler binds no new actor to this worker, and the operator drains
    /// the one it runs (asks it to suspend; its next resume lands elsewhere). Like a Node's
    /// `spec.unschedulable`: set by hand (`kubectl patch worker`), or in a cluster by the
    /// operator while the worker's Node is cordoned or tainted for removal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unschedulable: bool,
}

/// Phase of a worker.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum WorkerPhase {
    /// Warm and free.
    Free,
    /// Bound to an actor.
    Bound,
    /// Not heartbeating or failing health checks.
    Unhealthy,
}

/// Observed state of a Worker.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    /// Free, Bound or Unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<WorkerPhase>,
    /// The actor bound to this worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<ActorRef>,
    /// Last heartbeat from the node agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
    /// Conditions (`Ready`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Generation of the spec this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The node agent's worker gateway (`<ip>:<port>`): how this worker's address is
    /// reached from other nodes (HTTP `CONNECT`, see the node agent's `--gateway-listen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// A reference to an actor.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActorRef {
    /// The actor's atespace.
    pub namespace: String,
    /// The actor's name.
    pub name: String,
    /// The actor's uid, so a recreated actor of the same name is not confused with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}
