//! `rbac.authorization.k8s.io/v1` as the standalone apiserver serves it: the structural
//! schemas of `Role`, `ClusterRole`, `RoleBinding` and `ClusterRoleBinding` (as
//! kube-apiserver publishes them: `rules` and `subjects` atomic lists, `roleRef` an atomic
//! map), their defaulting and validation (a port of Kubernetes' `pkg/apis/rbac/v1`
//! defaults and `pkg/apis/rbac/validation`), and Substrate's own ClusterRoles
//! (`substrate-actor-view|edit|admin`), which `config/rbac/substrate-actor-roles.yaml` holds
//! too (`cargo run -p crds --bin crdgen` writes it; a test fails when it drifts).

use k8s_openapi::api::rbac::v1::{
    AggregationRule, ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef,
    Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::validation::{self, FieldError};

/// The API group of RBAC.
pub const GROUP: &str = "rbac.authorization.k8s.io";
/// Its one version.
pub const VERSION: &str = "v1";
/// Label set on every object of the bootstrap policy.
pub const BOOTSTRAPPING_LABEL: &str = "kubernetes.io/bootstrapping";
/// Value of [`BOOTSTRAPPING_LABEL`].
pub const BOOTSTRAPPING_VALUE: &str = "rbac-defaults";
/// Annotation: `"true"` lets the apiserver reconcile a bootstrap object at every start.
pub const AUTOUPDATE_ANNOTATION: &str = "rbac.authorization.kubernetes.io/autoupdate";
/// Labels that aggregate a ClusterRole into `admin`, `edit` and `view`.
pub const AGGREGATE_TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
pub const AGGREGATE_TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
pub const AGGREGATE_TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

/// Subject kinds.
pub const USER_KIND: &str = "User";
pub const GROUP_KIND: &str = "Group";
pub const SERVICE_ACCOUNT_KIND: &str = "ServiceAccount";

// ---- schemas -----------------------------------------------------------------------------

fn strings(description: &str) -> Value {
    json!({"type": "array", "description": description, "items": {"type": "string"},
           "x-kubernetes-list-type": "atomic"})
}

fn policy_rule() -> Value {
    json!({
        "type": "object",
        "description": "PolicyRule holds information that describes a policy rule, but does not contain information about who the rule applies to or which namespace the rule applies to.",
        "required": ["verbs"],
        "properties": {
            "apiGroups": strings("APIGroups is the name of the APIGroup that contains the resources.  If multiple API groups are specified, any action requested against one of the enumerated resources in any API group will be allowed. \"\" represents the core API group and \"*\" represents all API groups."),
            "nonResourceURLs": strings("NonResourceURLs is a set of partial urls that a user should have access to.  *s are allowed, but only as the full, final step in the path. Rules can either apply to API resources (such as \"pods\" or \"secrets\") or non-resource URL paths (such as \"/api\"),  but not both."),
            "resourceNames": strings("ResourceNames is an optional white list of names that the rule applies to.  An empty set means that everything is allowed."),
            "resources": strings("Resources is a list of resources this rule applies to. '*' represents all resources."),
            "verbs": strings("Verbs is a list of Verbs that apply to ALL the ResourceKinds contained in this rule. '*' represents all verbs."),
        },
    })
}

fn rules() -> Value {
    json!({"type": "array", "items": policy_rule(), "x-kubernetes-list-type": "atomic",
           "description": "Rules holds all the PolicyRules for this Role"})
}

fn label_selector() -> Value {
    json!({
        "type": "object",
        "x-kubernetes-map-type": "atomic",
        "properties": {
            "matchExpressions": {"type": "array", "x-kubernetes-list-type": "atomic", "items": {
                "type": "object", "required": ["key", "operator"],
                "properties": {"key": {"type": "string"}, "operator": {"type": "string"},
                               "values": strings("values")},
            }},
            "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    })
}

fn binding_props() -> Value {
    let string = |d: &str| json!({"type": "string", "description": d});
    json!({
        "roleRef": {
            "type": "object",
            "description": "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace. If the RoleRef cannot be resolved, the Authorizer must return an error. This field is immutable.",
            "required": ["apiGroup", "kind", "name"],
            "x-kubernetes-map-type": "atomic",
            "properties": {
                "apiGroup": string("APIGroup is the group for the resource being referenced"),
                "kind": string("Kind is the type of resource being referenced"),
                "name": string("Name is the name of resource being referenced"),
            },
        },
        "subjects": {
            "type": "array",
            "description": "Subjects holds references to the objects the role applies to.",
            "x-kubernetes-list-type": "atomic",
            "items": {
                "type": "object",
                "description": "Subject contains a reference to the object or user identities a role binding applies to.  This can either hold a direct API object reference, or a value for non-objects such as user and group names.",
                "required": ["kind", "name"],
                "x-kubernetes-map-type": "atomic",
                "properties": {
                    "apiGroup": string("APIGroup holds the API group of the referenced subject. Defaults to \"\" for ServiceAccount subjects. Defaults to \"rbac.authorization.k8s.io\" for User and Group subjects."),
                    "kind": string("Kind of object being referenced. Values defined by this API group are \"User\", \"Group\", and \"ServiceAccount\"."),
                    "name": string("Name of the object being referenced."),
                    "namespace": string("Namespace of the referenced object.  If the object kind is non-namespace, such as \"User\" or \"Group\", and this value is not empty the Authorizer should report an error."),
                },
            },
        },
    })
}

/// The OpenAPI v3 schema (without `metadata`, `apiVersion`, `kind`) of an RBAC kind.
pub fn schema(kind: &str) -> Value {
    match kind {
        "Role" => json!({
            "type": "object",
            "description": "Role is a namespaced, logical grouping of PolicyRules that can be referenced as a unit by a RoleBinding.",
            "properties": {"rules": rules()},
        }),
        "ClusterRole" => json!({
            "type": "object",
            "description": "ClusterRole is a cluster level, logical grouping of PolicyRules that can be referenced as a unit by a RoleBinding or ClusterRoleBinding.",
            "properties": {
                "rules": rules(),
                "aggregationRule": {
                    "type": "object",
                    "description": "AggregationRule is an optional field that describes how to build the Rules for this ClusterRole. If AggregationRule is set, then the Rules are controller managed and direct changes to Rules will be stomped by the controller.",
                    "properties": {"clusterRoleSelectors": {
                        "type": "array", "items": label_selector(), "x-kubernetes-list-type": "atomic",
                        "description": "ClusterRoleSelectors holds a list of selectors which will be used to find ClusterRoles and create the rules. If any of the selectors match, then the ClusterRole's permissions will be added",
                    }},
                },
            },
        }),
        "RoleBinding" => json!({
            "type": "object",
            "description": "RoleBinding references a role, but does not contain it.  It can reference a Role in the same namespace or a ClusterRole in the global namespace. It adds who information via Subjects and namespace information by which namespace it exists in.  RoleBindings in a given namespace only have effect in that namespace.",
            "required": ["roleRef"],
            "properties": binding_props(),
        }),
        _ => json!({
            "type": "object",
            "description": "ClusterRoleBinding references a ClusterRole, but not contain it.  It can reference a ClusterRole in the global namespace, and adds who information via Subject.",
            "required": ["roleRef"],
            "properties": binding_props(),
        }),
    }
}

// ---- defaulting and validation -------------------------------------------------------------

/// Fills what the typed decoding requires and what Kubernetes defaults (`SetDefaults_RoleRef`,
/// `SetDefaults_Subject`) on the JSON of any RBAC kind, so that validation reports missing
/// fields in Kubernetes' words instead of a decoding error.
pub fn default_json(obj: &mut Value) {
    if let Some(rules) = obj.get_mut("rules").and_then(Value::as_array_mut) {
        for r in rules.iter_mut().filter(|r| r.is_object()) {
            if r.get("verbs").is_none_or(Value::is_null) {
                r["verbs"] = json!([]);
            }
        }
    }
    if let Some(rr) = obj.get_mut("roleRef").filter(|r| r.is_object()) {
        for f in ["kind", "name"] {
            if rr.get(f).is_none_or(Value::is_null) {
                rr[f] = json!("");
            }
        }
        if rr.get("apiGroup").is_none_or(|g| g.is_null() || g == "") {
            rr["apiGroup"] = json!(GROUP);
        }
    }
    if let Some(subjects) = obj.get_mut("subjects").and_then(Value::as_array_mut) {
        for s in subjects.iter_mut().filter(|s| s.is_object()) {
            for f in ["kind", "name"] {
                if s.get(f).is_none_or(Value::is_null) {
                    s[f] = json!("");
                }
            }
            let empty = s.get("apiGroup").is_none_or(|g| g.is_null() || g == "");
            let kind = s.get("kind").and_then(Value::as_str).unwrap_or_default();
            if empty && (kind == USER_KIND || kind == GROUP_KIND) {
                s["apiGroup"] = json!(GROUP);
            }
        }
    }
}

/// `%#v` of a `[]string`, as Kubernetes prints an invalid list value.
struct GoStrings<'a>(&'a [String]);

impl std::fmt::Debug for GoStrings<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items: Vec<String> = self.0.iter().map(|s| format!("{s:?}")).collect();
        write!(f, "[]string{{{}}}", items.join(", "))
    }
}

/// `%#v` of an `rbac.RoleRef`, as Kubernetes prints it in `cannot change roleRef`.
pub struct GoRoleRef<'a>(pub &'a RoleRef);

impl std::fmt::Debug for GoRoleRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rbac.RoleRef{{APIGroup:{:?}, Kind:{:?}, Name:{:?}}}",
            self.0.api_group, self.0.kind, self.0.name
        )
    }
}

fn is_empty(v: &Option<Vec<String>>) -> bool {
    v.as_ref().is_none_or(Vec::is_empty)
}

/// `ValidatePolicyRule`.
pub fn validate_policy_rule(rule: &PolicyRule, namespaced: bool, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if rule.verbs.is_empty() {
        errs.push(FieldError::required(
            format!("{path}.verbs"),
            "verbs must contain at least one value",
        ));
    }
    if let Some(urls) = rule.non_resource_urls.as_ref().filter(|u| !u.is_empty()) {
        if namespaced {
            errs.push(FieldError::invalid(
                format!("{path}.nonResourceURLs"),
                GoStrings(urls),
                "namespaced rules cannot apply to non-resource URLs",
            ));
        }
        if !is_empty(&rule.api_groups)
            || !is_empty(&rule.resources)
            || !is_empty(&rule.resource_names)
        {
            errs.push(FieldError::invalid(
                format!("{path}.nonResourceURLs"),
                GoStrings(urls),
                "rules cannot apply to both regular resources and non-resource URLs",
            ));
        }
        return errs;
    }
    if is_empty(&rule.api_groups) {
        errs.push(FieldError::required(
            format!("{path}.apiGroups"),
            "resource rules must supply at least one api group",
        ));
    }
    if is_empty(&rule.resources) {
        errs.push(FieldError::required(
            format!("{path}.resources"),
            "resource rules must supply at least one resource",
        ));
    }
    errs
}

fn validate_rules(rules: Option<&Vec<PolicyRule>>, namespaced: bool) -> Vec<FieldError> {
    rules
        .into_iter()
        .flatten()
        .enumerate()
        .flat_map(|(i, r)| validate_policy_rule(r, namespaced, &format!("rules[{i}]")))
        .collect()
}

/// `ValidateRole`.
pub fn validate_role(r: &Role) -> Vec<FieldError> {
    let mut e = validation::validate_metadata(&r.metadata, validation::NameRule::PathSegment);
    e.extend(validate_rules(r.rules.as_ref(), true));
    e
}

/// `ValidateClusterRole`.
pub fn validate_cluster_role(r: &ClusterRole) -> Vec<FieldError> {
    let mut e = validation::validate_metadata(&r.metadata, validation::NameRule::PathSegment);
    e.extend(validate_rules(r.rules.as_ref(), false));
    if let Some(AggregationRule {
        cluster_role_selectors,
    }) = &r.aggregation_rule
    {
        let selectors = cluster_role_selectors.as_deref().unwrap_or_default();
        if selectors.is_empty() {
            e.push(FieldError::required(
                "aggregationRule.clusterRoleSelectors",
                "at least one clusterRoleSelector required if aggregationRule is non-nil",
            ));
        }
        for (i, s) in selectors.iter().enumerate() {
            e.extend(validation::validate_label_selector(
                s,
                &format!("aggregationRule.clusterRoleSelectors[{i}]"),
            ));
        }
    }
    e
}

fn validate_role_ref(rr: &RoleRef, kinds: &[&str]) -> Vec<FieldError> {
    let mut e = Vec::new();
    if rr.api_group != GROUP {
        e.push(FieldError::not_supported(
            "roleRef.apiGroup",
            &rr.api_group,
            &[GROUP],
        ));
    }
    if !kinds.contains(&rr.kind.as_str()) {
        e.push(FieldError::not_supported("roleRef.kind", &rr.kind, kinds));
    }
    if rr.name.is_empty() {
        e.push(FieldError::required("roleRef.name", ""));
    } else {
        for m in validation::path_segment_name(&rr.name) {
            e.push(FieldError::invalid("roleRef.name", &rr.name, m));
        }
    }
    e
}

/// `ValidateRoleBindingSubject`.
pub fn validate_subject(s: &Subject, namespaced: bool, path: &str) -> Vec<FieldError> {
    let mut e = Vec::new();
    if s.name.is_empty() {
        e.push(FieldError::required(format!("{path}.name"), ""));
    }
    let group = s.api_group.as_deref().unwrap_or_default();
    match s.kind.as_str() {
        SERVICE_ACCOUNT_KIND => {
            if !s.name.is_empty() {
                for m in validation::dns1123_subdomain(&s.name) {
                    e.push(FieldError::invalid(format!("{path}.name"), &s.name, m));
                }
            }
            if !group.is_empty() {
                e.push(FieldError::not_supported(
                    format!("{path}.apiGroup"),
                    group,
                    &[""],
                ));
            }
            if !namespaced && s.namespace.as_deref().unwrap_or_default().is_empty() {
                e.push(FieldError::required(format!("{path}.namespace"), ""));
            }
        }
        USER_KIND | GROUP_KIND => {
            if group != GROUP {
                e.push(FieldError::not_supported(
                    format!("{path}.apiGroup"),
                    group,
                    &[GROUP],
                ));
            }
        }
        other => e.push(FieldError::not_supported(
            format!("{path}.kind"),
            other,
            &[SERVICE_ACCOUNT_KIND, USER_KIND, GROUP_KIND],
        )),
    }
    e
}

fn validate_binding(
    meta: &ObjectMeta,
    rr: &RoleRef,
    subjects: Option<&Vec<Subject>>,
    namespaced: bool,
) -> Vec<FieldError> {
    let mut e = validation::validate_metadata(meta, validation::NameRule::PathSegment);
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    e.extend(validate_role_ref(rr, kinds));
    for (i, s) in subjects.into_iter().flatten().enumerate() {
        e.extend(validate_subject(s, namespaced, &format!("subjects[{i}]")));
    }
    e
}

/// `ValidateRoleBinding`.
pub fn validate_role_binding(b: &RoleBinding) -> Vec<FieldError> {
    validate_binding(&b.metadata, &b.role_ref, b.subjects.as_ref(), true)
}

/// `ValidateClusterRoleBinding`.
pub fn validate_cluster_role_binding(b: &ClusterRoleBinding) -> Vec<FieldError> {
    validate_binding(&b.metadata, &b.role_ref, b.subjects.as_ref(), false)
}

/// `ValidateRoleBindingUpdate` / `ValidateClusterRoleBindingUpdate`: the roleRef is
/// immutable. `old` and `new` are the objects' JSON.
pub fn validate_binding_update(old: &Value, new: &Value) -> Vec<FieldError> {
    let rr = |v: &Value| -> Option<RoleRef> {
        v.get("roleRef")
            .and_then(|r| serde_json::from_value(r.clone()).ok())
    };
    match (rr(old), rr(new)) {
        (Some(o), Some(n)) if o != n => vec![FieldError::invalid(
            "roleRef",
            GoRoleRef(&n),
            "cannot change roleRef",
        )],
        _ => Vec::new(),
    }
}

// ---- Substrate's ClusterRoles --------------------------------------------------------------

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(v(groups)),
        resources: Some(v(resources)),
        verbs: v(verbs),
        ..Default::default()
    }
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

/// The rules of `substrate-actor-view`.
pub fn actor_view_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &[crate::SUBSTRATE_GROUP],
            &["actors", "actors/status", "atespaces"],
            READ,
        ),
        rule(
            &[crate::ATE_GROUP],
            &["actortemplates", "workerpools"],
            READ,
        ),
    ]
}

/// The rules of `substrate-actor-edit` (view's, and writing actors and their actions).
pub fn actor_edit_rules() -> Vec<PolicyRule> {
    let mut r = actor_view_rules();
    r.push(rule(&[crate::SUBSTRATE_GROUP], &["actors"], WRITE));
    r.push(rule(
        &[crate::SUBSTRATE_GROUP],
        &["actors/resume", "actors/suspend", "actors/reset"],
        &["create"],
    ));
    // HTTP through the router to actors of `Authorized` atespaces (as kube puts
    // `pods/proxy` in edit and admin, not view).
    r.push(rule(
        &[crate::SUBSTRATE_GROUP],
        &["actors/proxy"],
        PROXY_VERBS,
    ));
    r
}

/// The verbs a request through the router can be authorized as (see
/// `router::access::verb`).
pub const PROXY_VERBS: &[&str] = &["get", "create", "update", "patch", "delete"];

/// The rules of `substrate-actor-admin` (edit's, and writing templates).
pub fn actor_admin_rules() -> Vec<PolicyRule> {
    let mut r = actor_edit_rules();
    r.push(rule(&[crate::ATE_GROUP], &["actortemplates"], WRITE));
    r
}

/// `substrate-actor-view`, `-edit` and `-admin`, aggregated into the cluster's `view`,
/// `edit` and `admin` by the standard labels.
pub fn substrate_actor_roles() -> Vec<ClusterRole> {
    let role = |name: &str, label: &str, rules: Vec<PolicyRule>| ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some([(label.to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        rules: Some(rules),
        aggregation_rule: None,
    };
    vec![
        role(
            "substrate-actor-view",
            AGGREGATE_TO_VIEW,
            actor_view_rules(),
        ),
        role(
            "substrate-actor-edit",
            AGGREGATE_TO_EDIT,
            actor_edit_rules(),
        ),
        role(
            "substrate-actor-admin",
            AGGREGATE_TO_ADMIN,
            actor_admin_rules(),
        ),
    ]
}

/// Where the YAML of [`substrate_actor_roles`] is committed, relative to the workspace.
pub const ACTOR_ROLES_PATH: &str = "config/rbac/substrate-actor-roles.yaml";

/// The YAML of [`substrate_actor_roles`] (a multi-document stream for `kubectl apply -f`).
pub fn render_actor_roles() -> String {
    let mut out = String::from(
        "# Generated by `cargo run -p crds --bin crdgen` from crds/src/rbac.rs; do not edit.\n\
         # Substrate's ClusterRoles, aggregated into the cluster's view/edit/admin.\n",
    );
    for r in substrate_actor_roles() {
        let yaml =
            serde_saphyr::to_string(&r).unwrap_or_else(|e| format!("# render failed: {e}\n"));
        out.push_str("---\n");
        out.push_str(&yaml);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_actor_roles_match_the_rust_data() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(ACTOR_ROLES_PATH);
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `cargo run -p crds --bin crdgen`",
                path.display()
            )
        });
        assert!(
            committed == render_actor_roles(),
            "{} drifted from crds/src/rbac.rs; run `cargo run -p crds --bin crdgen`",
            path.display()
        );
        // And it parses back into the same roles.
        let docs: Vec<ClusterRole> = committed
            .split("\n---\n")
            .skip(1)
            .map(|d| serde_saphyr::from_str(d).expect("a ClusterRole"))
            .collect();
        assert_eq!(docs, substrate_actor_roles());
    }

    #[test]
    fn edit_holds_view_and_admin_holds_edit() {
        let (v, e, a) = (actor_view_rules(), actor_edit_rules(), actor_admin_rules());
        assert!(v.iter().all(|r| e.contains(r)));
        assert!(e.iter().all(|r| a.contains(r)));
        // HTTP through the router: edit and admin, not view (as kube's pods/proxy).
        let proxy = |rules: &[PolicyRule]| {
            rules.iter().any(|r| {
                r.resources
                    .as_ref()
                    .is_some_and(|x| x.iter().any(|x| x == "actors/proxy"))
                    && PROXY_VERBS.iter().all(|v| r.verbs.iter().any(|x| x == v))
            })
        };
        assert!(!proxy(&v));
        assert!(proxy(&e) && proxy(&a));
    }

    fn errs(e: Vec<FieldError>) -> Vec<String> {
        e.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn rules_are_validated_as_kubernetes_does() {
        let bad = PolicyRule {
            non_resource_urls: Some(vec!["/x".into()]),
            resources: Some(vec!["pods".into()]),
            ..Default::default()
        };
        assert_eq!(
            errs(validate_policy_rule(&bad, true, "rules[0]")),
            [
                "rules[0].verbs: Required value: verbs must contain at least one value",
                "rules[0].nonResourceURLs: Invalid value: []string{\"/x\"}: namespaced rules cannot apply to non-resource URLs",
                "rules[0].nonResourceURLs: Invalid value: []string{\"/x\"}: rules cannot apply to both regular resources and non-resource URLs",
            ]
        );
        let no_group = PolicyRule {
            verbs: vec!["get".into()],
            ..Default::default()
        };
        assert_eq!(
            errs(validate_policy_rule(&no_group, false, "rules[1]")),
            [
                "rules[1].apiGroups: Required value: resource rules must supply at least one api group",
                "rules[1].resources: Required value: resource rules must supply at least one resource",
            ]
        );
    }

    #[test]
    fn bindings_are_validated_and_defaulted_as_kubernetes_does() {
        let mut v = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "a/b"},
            "roleRef": {"kind": "Role", "name": "x"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "ServiceAccount", "name": "sa"},
                         {"kind": "Robot", "name": "r"}, {"kind": "Group", "name": "g", "apiGroup": "x"}]});
        default_json(&mut v);
        assert_eq!(v["roleRef"]["apiGroup"], GROUP);
        assert_eq!(v["subjects"][0]["apiGroup"], GROUP);
        assert!(v["subjects"][1].get("apiGroup").is_none());
        let b: ClusterRoleBinding = serde_json::from_value(v).unwrap();
        assert_eq!(
            errs(validate_cluster_role_binding(&b)),
            [
                "metadata.name: Invalid value: \"a/b\": may not contain '/'",
                "roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\"",
                "subjects[1].namespace: Required value",
                "subjects[2].kind: Unsupported value: \"Robot\": supported values: \"ServiceAccount\", \"User\", \"Group\"",
                "subjects[3].apiGroup: Unsupported value: \"x\": supported values: \"rbac.authorization.k8s.io\"",
            ]
        );
        let old = json!({"roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "view"}});
        let new = json!({"roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "edit"}});
        assert_eq!(
            errs(validate_binding_update(&old, &new)),
            [
                "roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"edit\"}: cannot change roleRef"
            ]
        );
        assert!(validate_binding_update(&old, &old).is_empty());
    }
}
