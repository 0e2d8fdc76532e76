//! The static table of every kind Substrate serves, and the typed hooks the apiserver runs on
//! untyped JSON: normalization (defaults, pruning of unknown fields), validation, immutable
//! fields, unknown-field detection against the generated schema.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition,
};
use kube::CustomResourceExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::validation::{self, FieldError, NameRule};
use crate::{Actor, ActorTemplate, Atespace, Worker, WorkerPool};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};

/// Which kind a [`ResourceInfo`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Atespace,
    Actor,
    Worker,
    WorkerPool,
    ActorTemplate,
    /// `coordination.k8s.io/v1` `Lease` (leader election of the operator).
    Lease,
    /// `rbac.authorization.k8s.io/v1` (standalone authorization, [`crate::rbac`]).
    Role,
    ClusterRole,
    RoleBinding,
    ClusterRoleBinding,
}

/// Everything the apiserver needs to know to serve one resource.
#[derive(Debug)]
pub struct ResourceInfo {
    pub kind_id: Kind,
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub list_kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub namespaced: bool,
    /// Fields usable in field selectors besides `metadata.name` and `metadata.namespace`.
    pub selectable_fields: &'static [&'static str],
    /// Whether the object has a `status` subresource.
    pub has_status: bool,
    /// Whether `spec` may be omitted (it is then defaulted to `{}`).
    pub spec_optional: bool,
    /// Whether this kind is a CRD when Kubernetes is present (the `ate.dev` group).
    pub is_crd: bool,
    pub name_rule: NameRule,
}

const CATEGORIES: &[&str] = &[crate::CATEGORY];

pub static ATESPACES: ResourceInfo = ResourceInfo {
    kind_id: Kind::Atespace,
    group: crate::SUBSTRATE_GROUP,
    version: crate::VERSION,
    kind: "Atespace",
    list_kind: "AtespaceList",
    plural: "atespaces",
    singular: "atespace",
    short_names: &["ates"],
    categories: CATEGORIES,
    namespaced: false,
    selectable_fields: &["status.phase"],
    has_status: true,
    spec_optional: true,
    is_crd: false,
    name_rule: NameRule::Label,
};

pub static ACTORS: ResourceInfo = ResourceInfo {
    kind_id: Kind::Actor,
    group: crate::SUBSTRATE_GROUP,
    version: crate::VERSION,
    kind: "Actor",
    list_kind: "ActorList",
    plural: "actors",
    singular: "actor",
    short_names: &["act"],
    categories: CATEGORIES,
    namespaced: true,
    selectable_fields: &[
        "status.phase",
        "spec.activation",
        "spec.template.name",
        "status.worker.name",
        "status.worker.node",
    ],
    has_status: true,
    spec_optional: false,
    is_crd: false,
    name_rule: NameRule::Label,
};

pub static WORKERS: ResourceInfo = ResourceInfo {
    kind_id: Kind::Worker,
    group: crate::SUBSTRATE_GROUP,
    version: crate::VERSION,
    kind: "Worker",
    list_kind: "WorkerList",
    plural: "workers",
    singular: "worker",
    short_names: &["wkr"],
    categories: CATEGORIES,
    namespaced: false,
    selectable_fields: &["spec.pool", "spec.node", "status.phase"],
    has_status: true,
    spec_optional: false,
    is_crd: false,
    name_rule: NameRule::Subdomain,
};

pub static WORKER_POOLS: ResourceInfo = ResourceInfo {
    kind_id: Kind::WorkerPool,
    group: crate::ATE_GROUP,
    version: crate::VERSION,
    kind: "WorkerPool",
    list_kind: "WorkerPoolList",
    plural: "workerpools",
    singular: "workerpool",
    short_names: &["wp"],
    categories: CATEGORIES,
    namespaced: true,
    selectable_fields: &[],
    has_status: true,
    spec_optional: false,
    is_crd: true,
    name_rule: NameRule::Subdomain,
};

pub static ACTOR_TEMPLATES: ResourceInfo = ResourceInfo {
    kind_id: Kind::ActorTemplate,
    group: crate::ATE_GROUP,
    version: crate::VERSION,
    kind: "ActorTemplate",
    list_kind: "ActorTemplateList",
    plural: "actortemplates",
    singular: "actortemplate",
    short_names: &["atpl"],
    categories: CATEGORIES,
    namespaced: true,
    selectable_fields: &["spec.workerPoolRef.name"],
    has_status: true,
    spec_optional: false,
    is_crd: true,
    name_rule: NameRule::Subdomain,
};

/// `coordination.k8s.io/v1` leases, as Kubernetes serves them: the operator's replicas elect
/// their leader with one (served so the standalone apiserver needs no Kubernetes).
pub static LEASES: ResourceInfo = ResourceInfo {
    kind_id: Kind::Lease,
    group: crate::COORDINATION_GROUP,
    version: "v1",
    kind: "Lease",
    list_kind: "LeaseList",
    plural: "leases",
    singular: "lease",
    short_names: &[],
    categories: &[],
    namespaced: true,
    selectable_fields: &[],
    has_status: false,
    spec_optional: true,
    is_crd: false,
    name_rule: NameRule::Subdomain,
};

const fn rbac(
    kind_id: Kind,
    kind: &'static str,
    list_kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
) -> ResourceInfo {
    ResourceInfo {
        kind_id,
        group: crate::rbac::GROUP,
        version: crate::rbac::VERSION,
        kind,
        list_kind,
        plural,
        singular,
        short_names: &[],
        categories: &[],
        namespaced,
        selectable_fields: &[],
        has_status: false,
        spec_optional: false,
        is_crd: false,
        name_rule: NameRule::PathSegment,
    }
}

/// `rbac.authorization.k8s.io/v1` `Role` (standalone authorization).
pub static ROLES: ResourceInfo = rbac(Kind::Role, "Role", "RoleList", "roles", "role", true);
/// `rbac.authorization.k8s.io/v1` `ClusterRole`.
pub static CLUSTER_ROLES: ResourceInfo = rbac(
    Kind::ClusterRole,
    "ClusterRole",
    "ClusterRoleList",
    "clusterroles",
    "clusterrole",
    false,
);
/// `rbac.authorization.k8s.io/v1` `RoleBinding`.
pub static ROLE_BINDINGS: ResourceInfo = rbac(
    Kind::RoleBinding,
    "RoleBinding",
    "RoleBindingList",
    "rolebindings",
    "rolebinding",
    true,
);
/// `rbac.authorization.k8s.io/v1` `ClusterRoleBinding`.
pub static CLUSTER_ROLE_BINDINGS: ResourceInfo = rbac(
    Kind::ClusterRoleBinding,
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "clusterrolebindings",
    "clusterrolebinding",
    false,
);

/// Every kind, in discovery order.
pub static ALL: [&ResourceInfo; 10] = [
    &ATESPACES,
    &ACTORS,
    &WORKERS,
    &WORKER_POOLS,
    &ACTOR_TEMPLATES,
    &LEASES,
    &CLUSTER_ROLE_BINDINGS,
    &CLUSTER_ROLES,
    &ROLE_BINDINGS,
    &ROLES,
];

/// The schema and printer columns of an RBAC kind, as a CustomResourceDefinition (the shape
/// every other kind's schema comes in). The columns are those kube-apiserver prints
/// (`table.rs` computes the binding's `Role` cell, which no JSONPath can express).
fn rbac_crd(res: &ResourceInfo) -> CustomResourceDefinition {
    let columns = match res.kind_id {
        Kind::Role | Kind::ClusterRole => serde_json::json!([
            {"name": "Created At", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ]),
        _ => serde_json::json!([
            {"name": "Role", "type": "string", "jsonPath": ".roleRef.name"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ]),
    };
    let crd = serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": res.qualified()},
        "spec": {
            "group": res.group,
            "names": {"kind": res.kind, "listKind": res.list_kind, "plural": res.plural, "singular": res.singular},
            "scope": if res.namespaced { "Namespaced" } else { "Cluster" },
            "versions": [{
                "name": res.version, "served": true, "storage": true,
                "schema": {"openAPIV3Schema": crate::rbac::schema(res.kind)},
                "additionalPrinterColumns": columns,
            }],
        },
    });
    // A literal of the right shape: decoding cannot fail.
    serde_json::from_value(crd).unwrap_or_default()
}

/// The structural schema of a `Lease` (Kubernetes' `LeaseSpec`), and its printer columns.
fn lease_crd() -> CustomResourceDefinition {
    let time =
        |d: &str| serde_json::json!({"type": "string", "format": "date-time", "description": d});
    let int = |d: &str| serde_json::json!({"type": "integer", "format": "int32", "description": d});
    let string = |d: &str| serde_json::json!({"type": "string", "description": d});
    let schema = serde_json::json!({
        "type": "object",
        "description": "Lease defines a lease concept.",
        "properties": {
            "spec": {
                "type": "object",
                "description": "LeaseSpec is a specification of a Lease.",
                "properties": {
                    "acquireTime": time("acquireTime is a time when the current lease was acquired."),
                    "holderIdentity": string("holderIdentity contains the identity of the holder of a current lease."),
                    "leaseDurationSeconds": int("leaseDurationSeconds is a duration that candidates for a lease need to wait to force acquire it."),
                    "leaseTransitions": int("leaseTransitions is the number of transitions of a lease between holders."),
                    "preferredHolder": string("PreferredHolder signals to a lease holder that the lease has a more optimal holder and should be given up."),
                    "renewTime": time("renewTime is a time when the current holder of a lease has last updated the lease."),
                    "strategy": string("Strategy indicates the strategy for picking the leader for coordinated leader election."),
                },
            },
        },
    });
    let crd = serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": LEASES.qualified()},
        "spec": {
            "group": LEASES.group,
            "names": {"kind": LEASES.kind, "listKind": LEASES.list_kind, "plural": LEASES.plural, "singular": LEASES.singular},
            "scope": "Namespaced",
            "versions": [{
                "name": LEASES.version, "served": true, "storage": true,
                "schema": {"openAPIV3Schema": schema},
                "additionalPrinterColumns": [
                    {"name": "Holder", "type": "string", "jsonPath": ".spec.holderIdentity"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
            }],
        },
    });
    // A literal of the right shape: decoding cannot fail.
    serde_json::from_value(crd).unwrap_or_default()
}

/// Looks a resource up by group and plural.
pub fn find(group: &str, plural: &str) -> Option<&'static ResourceInfo> {
    ALL.iter()
        .copied()
        .find(|r| r.group == group && r.plural == plural)
}

/// The fields of `metadata` (ObjectMeta) a client may send.
pub const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

impl ResourceInfo {
    /// `group/version`.
    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }

    /// `plural.group`, as Kubernetes names a resource in messages.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }

    /// The CustomResourceDefinition generated from the Rust type.
    pub fn crd(&self) -> CustomResourceDefinition {
        match self.kind_id {
            Kind::Atespace => Atespace::crd(),
            Kind::Actor => Actor::crd(),
            Kind::Worker => Worker::crd(),
            Kind::WorkerPool => WorkerPool::crd(),
            Kind::ActorTemplate => ActorTemplate::crd(),
            Kind::Lease => lease_crd(),
            Kind::Role | Kind::ClusterRole | Kind::RoleBinding | Kind::ClusterRoleBinding => {
                rbac_crd(self)
            }
        }
    }

    /// The structural OpenAPI v3 schema of the whole object (from the CRD).
    pub fn schema(&self) -> Value {
        self.schema_ref().clone()
    }

    /// [`ResourceInfo::schema`], generated once per kind: generating a CRD is expensive and
    /// the write path needs the schema on every request (unknown-field detection).
    pub fn schema_ref(&self) -> &'static Value {
        static SCHEMAS: [std::sync::OnceLock<Value>; ALL.len()] =
            [const { std::sync::OnceLock::new() }; ALL.len()];
        SCHEMAS[self.kind_id as usize].get_or_init(|| {
            self.crd()
                .spec
                .versions
                .first()
                .and_then(|v| v.schema.as_ref())
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .and_then(|s| serde_json::to_value(s).ok())
                .unwrap_or(Value::Null)
        })
    }

    /// The printer columns (`kubectl get`), from the CRD.
    pub fn printer_columns(&self) -> Vec<CustomResourceColumnDefinition> {
        self.crd()
            .spec
            .versions
            .first()
            .and_then(|v| v.additional_printer_columns.clone())
            .unwrap_or_default()
    }

    /// Decodes `obj` into the Rust type, applies defaults, drops unknown fields and checks
    /// every semantic rule. Returns the normalized JSON or every problem found.
    pub fn normalize(&self, mut obj: Value) -> Result<Value, Vec<FieldError>> {
        if self.spec_optional
            && let Some(map) = obj.as_object_mut()
            && map.get("spec").is_none_or(Value::is_null)
        {
            map.insert("spec".into(), Value::Object(Default::default()));
        }
        match self.kind_id {
            Kind::Atespace => roundtrip::<Atespace>(obj, |a| {
                validation::validate_metadata(&a.metadata, self.name_rule)
            }),
            Kind::Actor => roundtrip::<Actor>(obj, |a| {
                let mut e = validation::validate_metadata(&a.metadata, self.name_rule);
                e.extend(validation::validate_actor_spec(&a.spec));
                e
            }),
            Kind::Worker => roundtrip::<Worker>(obj, |w| {
                let mut e = validation::validate_metadata(&w.metadata, self.name_rule);
                e.extend(validation::validate_worker_spec(&w.spec));
                e
            }),
            Kind::WorkerPool => roundtrip::<WorkerPool>(obj, |p| {
                let mut e = validation::validate_metadata(&p.metadata, self.name_rule);
                e.extend(validation::validate_worker_pool_spec(&p.spec));
                e
            }),
            Kind::ActorTemplate => roundtrip::<ActorTemplate>(obj, |t| {
                let mut e = validation::validate_metadata(&t.metadata, self.name_rule);
                e.extend(validation::validate_actor_template_spec(&t.spec));
                e
            }),
            Kind::Lease => roundtrip::<Lease>(obj, |l| {
                validation::validate_metadata(&l.metadata, self.name_rule)
            }),
            Kind::Role => {
                crate::rbac::default_json(&mut obj);
                roundtrip::<Role>(obj, crate::rbac::validate_role)
            }
            Kind::ClusterRole => {
                crate::rbac::default_json(&mut obj);
                roundtrip::<ClusterRole>(obj, crate::rbac::validate_cluster_role)
            }
            Kind::RoleBinding => {
                crate::rbac::default_json(&mut obj);
                roundtrip::<RoleBinding>(obj, crate::rbac::validate_role_binding)
            }
            Kind::ClusterRoleBinding => {
                crate::rbac::default_json(&mut obj);
                roundtrip::<ClusterRoleBinding>(obj, crate::rbac::validate_cluster_role_binding)
            }
        }
    }

    /// Whether the registry keeps `metadata.generation` (bumped when `spec` changes). RBAC
    /// objects have no spec, and Kubernetes sets no generation on them.
    pub fn has_generation(&self) -> bool {
        !matches!(
            self.kind_id,
            Kind::Role | Kind::ClusterRole | Kind::RoleBinding | Kind::ClusterRoleBinding
        )
    }

    /// Rules between the stored object and its replacement (immutable fields). Both must
    /// already be normalized.
    pub fn validate_update(&self, old: &Value, new: &Value) -> Vec<FieldError> {
        fn spec<T: DeserializeOwned>(v: &Value) -> Option<T> {
            v.get("spec")
                .and_then(|s| serde_json::from_value(s.clone()).ok())
        }
        match self.kind_id {
            Kind::Actor => match (spec(old), spec(new)) {
                (Some(o), Some(n)) => validation::validate_actor_update(&o, &n),
                _ => Vec::new(),
            },
            Kind::Worker => match (spec(old), spec(new)) {
                (Some(o), Some(n)) => validation::validate_worker_update(&o, &n),
                _ => Vec::new(),
            },
            Kind::RoleBinding | Kind::ClusterRoleBinding => {
                crate::rbac::validate_binding_update(old, new)
            }
            _ => Vec::new(),
        }
    }

    /// Fields of `obj` that the schema does not know, as dotted paths (`spec.foo`,
    /// `spec.containers[0].bar`), for `fieldValidation=Strict|Warn`.
    pub fn unknown_fields(&self, obj: &Value) -> Vec<String> {
        let schema = self.schema_ref();
        let mut out = Vec::new();
        if let Some(map) = obj.as_object() {
            for (k, v) in map {
                match k.as_str() {
                    "apiVersion" | "kind" => {}
                    "metadata" => {
                        if let Some(meta) = v.as_object() {
                            for mk in meta.keys() {
                                if !OBJECT_META_FIELDS.contains(&mk.as_str()) {
                                    out.push(format!("metadata.{mk}"));
                                }
                            }
                        }
                    }
                    _ => match schema.get("properties").and_then(|p| p.get(k)) {
                        Some(s) => walk_unknown(s, v, k, &mut out),
                        None => out.push(k.clone()),
                    },
                }
            }
        }
        out
    }
}

fn walk_unknown(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (k, v) in map {
                if let Some(s) = props.and_then(|p| p.get(k)) {
                    walk_unknown(s, v, &format!("{path}.{k}"), out);
                } else if let Some(a) = additional.filter(|a| a.is_object()) {
                    walk_unknown(a, v, &format!("{path}.{k}"), out);
                } else if additional != Some(&Value::Bool(true)) && props.is_some() {
                    out.push(format!("{path}.{k}"));
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    walk_unknown(s, v, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn roundtrip<T: DeserializeOwned + Serialize>(
    obj: Value,
    check: impl FnOnce(&T) -> Vec<FieldError>,
) -> Result<Value, Vec<FieldError>> {
    let typed: T = serde_path_to_error::deserialize(obj).map_err(|e| vec![decode_error(&e)])?;
    let errs = check(&typed);
    if !errs.is_empty() {
        return Err(errs);
    }
    serde_json::to_value(&typed).map_err(|e| vec![FieldError::invalid("<root>", "", e.to_string())])
}

fn decode_error(e: &serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    let path = e.path().to_string();
    let path = if path == "." { String::new() } else { path };
    let msg = e.inner().to_string();
    // serde_json appends " at line L column C" only for text input; values have none.
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or_default();
        let full = if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
        return FieldError::required(full, "");
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        let value = rest.split('`').next().unwrap_or_default();
        let expected: Vec<&str> = rest
            .split("expected one of ")
            .nth(1)
            .or_else(|| rest.split("expected ").nth(1))
            .map(|s| s.split(", ").map(|v| v.trim_matches('`')).collect())
            .unwrap_or_default();
        return FieldError::not_supported(path, value, &expected);
    }
    FieldError {
        kind: validation::ErrorType::Invalid,
        field: if path.is_empty() {
            "<root>".into()
        } else {
            path
        },
        value: None,
        detail: msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn actor(spec: Value) -> Value {
        json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
               "metadata": {"name": "a1", "namespace": "team-a"}, "spec": spec})
    }

    #[test]
    fn normalize_defaults_and_prunes() {
        let out = ACTORS
            .normalize(actor(json!({"template": {"name": "counter"}, "bogus": 1})))
            .unwrap();
        assert_eq!(out["spec"]["activation"], "OnDemand");
        assert!(out["spec"].get("bogus").is_none());
    }

    #[test]
    fn normalize_reports_paths() {
        let errs = ACTORS
            .normalize(actor(json!({"template": {}})))
            .unwrap_err();
        assert_eq!(errs[0].to_string(), "spec.template.name: Required value");
        let errs = ACTORS
            .normalize(actor(
                json!({"template": {"name": "c"}, "activation": "Sometimes"}),
            ))
            .unwrap_err();
        assert_eq!(errs[0].field, "spec.activation");
        assert!(errs[0].detail.contains("OnDemand"), "{}", errs[0]);
        let errs = ACTORS
            .normalize(actor(json!({"template": {"name": 5}})))
            .unwrap_err();
        assert_eq!(errs[0].field, "spec.template.name");
    }

    #[test]
    fn atespace_http_access_is_validated_and_defaults_to_open() {
        let ate = |spec: Value| {
            json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace",
                "metadata": {"name": "team-a"}, "spec": spec})
        };
        let out = ATESPACES
            .normalize(ate(json!({"httpAccess": {"policy": "Authorized"}})))
            .unwrap();
        assert_eq!(out["spec"]["httpAccess"], json!({"policy": "Authorized"}));
        let a: crate::Atespace = serde_json::from_value(out).unwrap();
        assert_eq!(
            a.spec.http_access_policy(),
            crate::substrate::HttpAccessPolicy::Authorized
        );
        let out = ATESPACES.normalize(ate(json!({"httpAccess": {}}))).unwrap();
        assert_eq!(out["spec"]["httpAccess"], json!({"policy": "Open"}));
        let a: crate::Atespace = serde_json::from_value(ate(json!({}))).unwrap();
        assert_eq!(
            a.spec.http_access_policy(),
            crate::substrate::HttpAccessPolicy::Open
        );
        let errs = ATESPACES
            .normalize(ate(json!({"httpAccess": {"policy": "Closed"}})))
            .unwrap_err();
        assert_eq!(errs[0].field, "spec.httpAccess.policy");
        assert!(errs[0].detail.contains("Authorized"), "{}", errs[0]);
        // The schema served to kubectl (explain, validation) has the enum.
        let schema = ATESPACES.schema_ref();
        assert_eq!(
            schema["properties"]["spec"]["properties"]["httpAccess"]["properties"]["policy"]["enum"],
            json!(["Open", "Authorized"])
        );
    }

    #[test]
    fn atespace_spec_is_optional() {
        let out = ATESPACES
            .normalize(json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace", "metadata": {"name": "team-a"}}))
            .unwrap();
        assert_eq!(out["spec"], json!({}));
    }

    #[test]
    fn unknown_fields_are_found() {
        let obj = json!({"apiVersion": "x", "kind": "Actor", "metadata": {"name": "a", "nope": 1},
            "spec": {"template": {"name": "c", "extra": 1}, "workerSelector": {"matchLabels": {"a": "b"}}, "zzz": true},
            "top": 1});
        let mut u = ACTORS.unknown_fields(&obj);
        u.sort();
        assert_eq!(
            u,
            ["metadata.nope", "spec.template.extra", "spec.zzz", "top"]
        );
        let obj = json!({"spec": {"containers": [{"name": "a", "image": "b", "foo": 1}], "workerPoolRef": {"name": "p"}}});
        assert_eq!(
            ACTOR_TEMPLATES.unknown_fields(&obj),
            ["spec.containers[0].foo"]
        );
    }

    #[test]
    fn every_kind_has_schema_and_columns() {
        for r in ALL {
            assert_eq!(r.schema()["type"], "object", "{}", r.kind);
            assert!(
                r.printer_columns()
                    .iter()
                    .any(|c| c.name == "Age" || c.name == "Created At"),
                "{}",
                r.kind
            );
            assert_eq!(find(r.group, r.plural).map(|f| f.kind), Some(r.kind));
        }
    }
}
