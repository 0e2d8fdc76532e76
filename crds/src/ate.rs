//! `ate.dev/v1alpha1`: WorkerPool and ActorTemplate — CRDs in a cluster, served by our apiserver
//! when it runs standalone.

// kube's `printcolumn(...)` attributes repeat `type_ = ...` by design; clippy reads them as
// duplicates of one attribute.
#![allow(clippy::duplicated_attributes)]
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::substrate::SnapshotRef;

/// A WorkerPool is a set of identical warm workers.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ate.dev",
    version = "v1alpha1",
    kind = "WorkerPool",
    plural = "workerpools",
    singular = "workerpool",
    shortname = "wp",
    category = "substrate",
    namespaced,
    status = "WorkerPoolStatus",
    derive = "PartialEq",
    doc = "WorkerPool is a set of identical warm gVisor workers that actors are multiplexed onto.",
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Free", type_ = "integer", json_path = ".status.freeReplicas"),
    printcolumn(name = "Bound", type_ = "integer", json_path = ".status.boundReplicas"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".spec.image",
        priority = "1"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPoolSpec {
    /// Number of warm workers.
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Image of the worker pod (the executor); ignored by the single-machine node agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Labels copied onto each Worker, matched by actors' `workerSelector`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub worker_labels: BTreeMap<String, String>,
    /// Node selector for worker pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
}

/// Observed state of a WorkerPool.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPoolStatus {
    /// Workers that exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Workers that are healthy (free or bound, heartbeating).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Ready workers waiting for an actor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_replicas: Option<i32>,
    /// Ready workers running an actor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_replicas: Option<i32>,
    /// Generation of the spec this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions (`Ready`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// An ActorTemplate describes what an actor runs; its golden snapshot (booted once, checkpointed
/// when ready) is what new actors resume from.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ate.dev",
    version = "v1alpha1",
    kind = "ActorTemplate",
    plural = "actortemplates",
    singular = "actortemplate",
    shortname = "atpl",
    category = "substrate",
    namespaced,
    status = "ActorTemplateStatus",
    derive = "PartialEq",
    doc = "ActorTemplate describes the containers of an actor and the golden snapshot new actors resume from.",
    printcolumn(
        name = "Pool",
        type_ = "string",
        json_path = ".spec.workerPoolRef.name"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Snapshot",
        type_ = "string",
        json_path = ".status.snapshot.uri",
        priority = "1"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ActorTemplateSpec {
    /// The containers of the actor's sandbox.
    #[schemars(length(min = 1))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub containers: Vec<Container>,
    /// Image of the pause (sandbox) container, if the runtime needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_image: Option<String>,
    /// runsc settings for this template's sandboxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runsc_config: Option<RunscConfig>,
    /// Object-store URL prefix for snapshots (`file:///...`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix`); defaults to the system's snapshot store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_location: Option<String>,
    /// The WorkerPool actors of this template run on.
    pub worker_pool_ref: LocalObjectRef,
    /// How to tell that a booted actor is ready (for the golden snapshot and every resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// Which other atespaces' actors may use this template (and its golden snapshot). Actors
    /// of the template's own atespace always may; without `sharing`, no other atespace may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharing: Option<TemplateSharing>,
}

/// The atespaces an ActorTemplate is shared with: those listed by name, and those whose
/// labels match the selector. Checked when an actor naming the template in
/// `spec.template.namespace` is created, and again at every resume.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSharing {
    /// Atespaces (by name) whose actors may use this template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub atespaces: Vec<String>,
    /// Atespaces whose labels match may use this template. An empty selector (`{}`) matches
    /// every atespace; leaving it out matches none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atespace_selector: Option<LabelSelector>,
}

/// A container of an actor.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Unique name within the template.
    pub name: String,
    /// OCI image reference.
    pub image: String,
    /// Entrypoint override.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub env: Vec<EnvVar>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Ports the container listens on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["containerPort", "protocol"]))]
    pub ports: Vec<ContainerPort>,
}

/// An environment variable.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Value.
    #[serde(default)]
    pub value: String,
}

/// A port a container listens on.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// Optional port name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Port number.
    #[schemars(range(min = 1, max = 65535))]
    pub container_port: i32,
    /// TCP (default) or UDP.
    // Not nullable in the schema: a key of `x-kubernetes-list-map-keys` must not be (the
    // apiextensions apiserver refuses the CRD otherwise); the default fills it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", extend("default" = "TCP"))]
    pub protocol: Option<String>,
}

/// runsc settings.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunscConfig {
    /// gVisor platform: `systrap` (default) or `ptrace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Extra runsc flags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

/// A reference to an object in the same namespace.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct LocalObjectRef {
    /// Name of the object.
    pub name: String,
}

/// A readiness probe.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    /// HTTP GET check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    /// Delay before the first probe (or the fixed wait when no check is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i32>,
    /// Interval between probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i32>,
    /// Timeout of one probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    /// Failures before the actor is considered failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i32>,
}

/// An HTTP GET probe.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpGetAction {
    /// Path, e.g. `/healthz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Port number.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// Observed state of an ActorTemplate.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActorTemplateStatus {
    /// Generation of the spec this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions (`Ready` once the golden snapshot exists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The golden snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotRef>,
}

impl TemplateSharing {
    /// Whether the atespace `name` with `labels` is shared with: listed by name, or its
    /// labels match `atespaceSelector` (`{}` matches every atespace).
    pub fn allows(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.atespaces.iter().any(|a| a == name)
            || self
                .atespace_selector
                .as_ref()
                .is_some_and(|s| selector_matches(s, labels))
    }
}

/// Whether `labels` match a `LabelSelector` (every `matchLabels` pair and every
/// `matchExpressions` requirement; an unknown operator matches nothing).
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    pairs
        && sel.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

impl ActorTemplate {
    /// Whether actors of atespace `name` (with `labels`) may use this template: those of
    /// the template's own atespace and of the golden atespace always; others when
    /// `spec.sharing` allows them.
    pub fn usable_from(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.metadata.namespace.as_deref() == Some(name)
            || name == crate::GOLDEN_ATESPACE
            || self
                .spec
                .sharing
                .as_ref()
                .is_some_and(|s| s.allows(name, labels))
    }

    /// The golden snapshot when it was taken for the template's current generation
    /// (`Ready=True` observed at it). `observedGeneration` alone is not enough: it moves as
    /// soon as a new golden boot starts, while `snapshot` still names the old one.
    pub fn current_golden(&self) -> Option<&SnapshotRef> {
        let st = self.status.as_ref()?;
        let generation = self.metadata.generation?;
        st.conditions
            .iter()
            .any(|c| {
                c.type_ == "Ready"
                    && c.status == "True"
                    && c.observed_generation == Some(generation)
            })
            .then_some(st.snapshot.as_ref())
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_template_is_usable_from_its_atespace_the_golden_one_and_those_it_shares_with() {
        let mut t: ActorTemplate = serde_json::from_value(serde_json::json!({
            "apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
            "metadata": {"name": "t", "namespace": "lib"},
            "spec": {"containers": [{"name": "a", "image": "x"}], "workerPoolRef": {"name": "p"}},
        }))
        .unwrap();
        let none = labels(&[]);
        let gold = labels(&[("tier", "gold")]);
        assert!(t.usable_from("lib", &none));
        assert!(t.usable_from(crate::GOLDEN_ATESPACE, &none));
        assert!(!t.usable_from("team-a", &gold));
        t.spec.sharing = serde_json::from_value(serde_json::json!({
            "atespaces": ["team-b"],
            "atespaceSelector": {"matchLabels": {"tier": "gold"},
                "matchExpressions": [{"key": "banned", "operator": "DoesNotExist"}]},
        }))
        .unwrap();
        assert!(t.usable_from("team-a", &gold));
        assert!(!t.usable_from("team-a", &labels(&[("tier", "gold"), ("banned", "")])));
        assert!(t.usable_from("team-b", &none));
        assert!(!t.usable_from("team-c", &labels(&[("tier", "free")])));
        // `{}` selects every atespace; no selector, none.
        let all = TemplateSharing {
            atespaces: vec![],
            atespace_selector: Some(LabelSelector::default()),
        };
        assert!(all.allows("anyone", &none));
        assert!(!TemplateSharing::default().allows("anyone", &none));
    }
}
