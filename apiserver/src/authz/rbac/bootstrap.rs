//! The bootstrap policy of the standalone apiserver, as kube-apiserver's
//! `rbac/bootstrap-roles` post-start hook (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy`,
//! `pkg/registry/rbac/reconciliation`): created when missing, and at every start reconciled
//! unless annotated `rbac.authorization.kubernetes.io/autoupdate: "false"` (missing labels,
//! annotations, rules, aggregation selectors and subjects are added; a binding whose
//! `roleRef` changed is recreated).
//!
//! ClusterRoles: `cluster-admin`, `admin`, `edit`, `view` (aggregated through the
//! `rbac.authorization.k8s.io/aggregate-to-*` labels), `system:aggregate-to-admin` (Roles and
//! RoleBindings, LocalSubjectAccessReviews) and `system:aggregate-to-view` (namespaces) as
//! kube's are for what is served here, `system:discovery`,
//! `system:basic-user`, `system:public-info-viewer`, `system:auth-delegator`
//! (unbound: what a delegating server's identity is bound to), and Substrate's `substrate-actor-view`,
//! `-edit`, `-admin`. ClusterRoleBindings: `cluster-admin` (group `system:masters`),
//! `system:discovery` and `system:basic-user` (`system:authenticated`),
//! `system:public-info-viewer` (`system:authenticated`, `system:unauthenticated`), and
//! `substrate:system` (group `substrate:system`, Substrate's components) to `cluster-admin`.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{
    AggregationRule, ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde_json::Value;

use crds::rbac::{
    AGGREGATE_TO_ADMIN, AGGREGATE_TO_EDIT, AGGREGATE_TO_VIEW, AUTOUPDATE_ANNOTATION,
    BOOTSTRAPPING_LABEL, BOOTSTRAPPING_VALUE, GROUP,
};
use crds::resources::{CLUSTER_ROLE_BINDINGS, CLUSTER_ROLES, ResourceInfo};

use crate::auth::UserInfo;
use crate::registry::Registry;
use crate::request::{DeleteOptions, WriteOptions};
use crate::status::ApiError;

/// kube's `system:discovery` paths.
pub const DISCOVERY_URLS: &[&str] = &[
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/healthz",
    "/livez",
    "/openapi",
    "/openapi/*",
    "/readyz",
    "/version",
    "/version/",
];
/// kube's `system:public-info-viewer` paths.
pub const PUBLIC_INFO_URLS: &[&str] = &["/healthz", "/livez", "/readyz", "/version", "/version/"];

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

fn meta(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    let mut l: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.insert(BOOTSTRAPPING_LABEL.into(), BOOTSTRAPPING_VALUE.into());
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(l),
        annotations: Some([(AUTOUPDATE_ANNOTATION.to_string(), "true".to_string())].into()),
        ..Default::default()
    }
}

fn role(name: &str, labels: &[(&str, &str)], rules: Vec<PolicyRule>) -> ClusterRole {
    ClusterRole {
        metadata: meta(name, labels),
        rules: Some(rules),
        aggregation_rule: None,
    }
}

fn aggregated(name: &str, labels: &[(&str, &str)], selector_label: &str) -> ClusterRole {
    ClusterRole {
        metadata: meta(name, labels),
        rules: None,
        aggregation_rule: Some(AggregationRule {
            cluster_role_selectors: Some(vec![LabelSelector {
                match_labels: Some([(selector_label.to_string(), "true".to_string())].into()),
                ..Default::default()
            }]),
        }),
    }
}

fn urls(paths: &[&str]) -> PolicyRule {
    PolicyRule {
        non_resource_urls: Some(strings(paths)),
        verbs: strings(&["get"]),
        ..Default::default()
    }
}

/// The bootstrap ClusterRoles.
pub fn cluster_roles() -> Vec<ClusterRole> {
    let all = || Some(strings(&["*"]));
    let mut roles = vec![
        role(
            "cluster-admin",
            &[],
            vec![
                PolicyRule {
                    api_groups: all(),
                    resources: all(),
                    verbs: strings(&["*"]),
                    ..Default::default()
                },
                PolicyRule {
                    non_resource_urls: all(),
                    verbs: strings(&["*"]),
                    ..Default::default()
                },
            ],
        ),
        aggregated("admin", &[], AGGREGATE_TO_ADMIN),
        aggregated("edit", &[(AGGREGATE_TO_ADMIN, "true")], AGGREGATE_TO_EDIT),
        aggregated("view", &[(AGGREGATE_TO_EDIT, "true")], AGGREGATE_TO_VIEW),
        role("system:discovery", &[], vec![urls(DISCOVERY_URLS)]),
        role(
            "system:basic-user",
            &[],
            vec![PolicyRule {
                api_groups: Some(strings(&["authorization.k8s.io"])),
                resources: Some(strings(&[
                    "selfsubjectaccessreviews",
                    "selfsubjectrulesreviews",
                ])),
                verbs: strings(&["create"]),
                ..Default::default()
            }],
        ),
        // Lets a server delegate authentication and authorization to this one (kube's; not
        // bound by default).
        role(
            "system:auth-delegator",
            &[],
            vec![
                PolicyRule {
                    api_groups: Some(strings(&["authentication.k8s.io"])),
                    resources: Some(strings(&["tokenreviews"])),
                    verbs: strings(&["create"]),
                    ..Default::default()
                },
                PolicyRule {
                    api_groups: Some(strings(&["authorization.k8s.io"])),
                    resources: Some(strings(&["subjectaccessreviews"])),
                    verbs: strings(&["create"]),
                    ..Default::default()
                },
            ],
        ),
        role(
            "system:public-info-viewer",
            &[],
            vec![urls(PUBLIC_INFO_URLS)],
        ),
        // kube's own contributions to admin and view, for the resources served here: a
        // namespace admin manages the namespace's Roles and RoleBindings (within what they
        // hold: escalation prevention) and asks access reviews about it; a viewer reads it.
        role(
            "system:aggregate-to-admin",
            &[(AGGREGATE_TO_ADMIN, "true")],
            vec![
                PolicyRule {
                    api_groups: Some(strings(&["authorization.k8s.io"])),
                    resources: Some(strings(&["localsubjectaccessreviews"])),
                    verbs: strings(&["create"]),
                    ..Default::default()
                },
                PolicyRule {
                    api_groups: Some(strings(&[GROUP])),
                    resources: Some(strings(&["rolebindings", "roles"])),
                    verbs: strings(&[
                        "create",
                        "delete",
                        "deletecollection",
                        "get",
                        "list",
                        "patch",
                        "update",
                        "watch",
                    ]),
                    ..Default::default()
                },
            ],
        ),
        role(
            "system:aggregate-to-view",
            &[(AGGREGATE_TO_VIEW, "true")],
            vec![PolicyRule {
                api_groups: Some(strings(&[""])),
                resources: Some(strings(&["namespaces"])),
                verbs: strings(&["get", "list", "watch"]),
                ..Default::default()
            }],
        ),
    ];
    for mut r in crds::rbac::substrate_actor_roles() {
        let name = r.metadata.name.clone().unwrap_or_default();
        let labels: Vec<(String, String)> = r
            .metadata
            .labels
            .take()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        r.metadata = meta(&name, &labels);
        roles.push(r);
    }
    roles
}

fn binding(name: &str, role: &str, groups: &[&str]) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(name, &[]),
        role_ref: RoleRef {
            api_group: GROUP.into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(
            groups
                .iter()
                .map(|g| Subject {
                    api_group: Some(GROUP.into()),
                    kind: crds::rbac::GROUP_KIND.into(),
                    name: g.to_string(),
                    namespace: None,
                })
                .collect(),
        ),
    }
}

/// The bootstrap ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    vec![
        binding("cluster-admin", "cluster-admin", &["system:masters"]),
        binding(
            "system:discovery",
            "system:discovery",
            &["system:authenticated"],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            &["system:authenticated"],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &["system:authenticated", "system:unauthenticated"],
        ),
        binding("substrate:system", "cluster-admin", &[crds::SYSTEM_GROUP]),
    ]
}

fn protected(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(AUTOUPDATE_ANNOTATION))
        .is_some_and(|v| v == "false")
}

/// Labels and annotations of `expected` the existing object lacks are added (existing
/// values win).
fn merge_meta(existing: &mut ObjectMeta, expected: &ObjectMeta) {
    for (have, want) in [
        (&mut existing.labels, &expected.labels),
        (&mut existing.annotations, &expected.annotations),
    ] {
        for (k, v) in want.iter().flatten() {
            have.get_or_insert_default()
                .entry(k.clone())
                .or_insert_with(|| v.clone());
        }
    }
}

/// `computeReconciledRole`: the reconciled role, or `None` when nothing changes.
pub fn reconcile_role(existing: &ClusterRole, expected: &ClusterRole) -> Option<ClusterRole> {
    if protected(&existing.metadata) {
        return None;
    }
    let mut out = existing.clone();
    merge_meta(&mut out.metadata, &expected.metadata);
    match &expected.aggregation_rule {
        None => {
            let have = out.rules.clone().unwrap_or_default();
            let (_, missing) =
                super::rules::covers(&have, expected.rules.as_deref().unwrap_or_default());
            if !missing.is_empty() {
                out.rules.get_or_insert_default().extend(missing);
            }
        }
        Some(want) => {
            let sels = out
                .aggregation_rule
                .get_or_insert_default()
                .cluster_role_selectors
                .get_or_insert_default();
            for s in want.cluster_role_selectors.iter().flatten() {
                if !sels.contains(s) {
                    sels.push(s.clone());
                }
            }
        }
    }
    (out != *existing).then_some(out)
}

/// `computeReconciledRoleBinding`'s subjects part: the binding with the missing subjects
/// added, or `None` when nothing changes.
pub fn reconcile_binding(
    existing: &ClusterRoleBinding,
    expected: &ClusterRoleBinding,
) -> Option<ClusterRoleBinding> {
    if protected(&existing.metadata) {
        return None;
    }
    let mut out = existing.clone();
    merge_meta(&mut out.metadata, &expected.metadata);
    let subjects = out.subjects.get_or_insert_default();
    for s in expected.subjects.iter().flatten() {
        if !subjects.contains(s) {
            subjects.push(s.clone());
        }
    }
    (out != *existing).then_some(out)
}

async fn ensure<T>(
    registry: &Registry,
    res: &ResourceInfo,
    expected: &T,
    reconcile: impl Fn(&T, &T) -> Option<T>,
    recreate: impl Fn(&T, &T) -> bool,
) -> Result<(), ApiError>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let body = serde_json::to_value(expected).unwrap_or(Value::Null);
    let name = body
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let system = UserInfo::system();
    let Some(current) = registry.get_opt(res, None, &name).await? else {
        match registry
            .create(&system, res, None, body, &WriteOptions::default())
            .await
        {
            Ok(_) => {
                tracing::info!(resource = %res.qualified(), name = %name, "bootstrap RBAC object created")
            }
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => return Err(e),
        }
        return Ok(());
    };
    let Ok(existing) = serde_json::from_value::<T>(current.clone()) else {
        return Ok(());
    };
    if recreate(&existing, expected) {
        registry
            .delete(&system, res, None, &name, &DeleteOptions::default(), false)
            .await?;
        registry
            .create(&system, res, None, body, &WriteOptions::default())
            .await?;
        tracing::info!(resource = %res.qualified(), name = %name, "bootstrap RBAC object recreated");
        return Ok(());
    }
    let Some(new) = reconcile(&existing, expected) else {
        return Ok(());
    };
    let new = serde_json::to_value(&new).unwrap_or(Value::Null);
    registry
        .guaranteed_update(res, None, &name, |old| {
            let mut n = new.clone();
            if let (Some(m), Some(rv)) = (
                n.get_mut("metadata").and_then(Value::as_object_mut),
                old.pointer("/metadata/resourceVersion"),
            ) {
                m.insert("resourceVersion".into(), rv.clone());
            }
            Some(n)
        })
        .await?;
    tracing::info!(resource = %res.qualified(), name = %name, "bootstrap RBAC object reconciled");
    Ok(())
}

/// Creates the missing bootstrap objects and reconciles the others.
pub async fn ensure_policy(registry: &Registry) -> Result<(), ApiError> {
    for r in cluster_roles() {
        ensure(registry, &CLUSTER_ROLES, &r, reconcile_role, |_, _| false).await?;
    }
    for b in cluster_role_bindings() {
        ensure(
            registry,
            &CLUSTER_ROLE_BINDINGS,
            &b,
            reconcile_binding,
            |existing: &ClusterRoleBinding, expected| {
                !protected(&existing.metadata) && existing.role_ref != expected.role_ref
            },
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciling_adds_what_is_missing_and_keeps_the_rest() {
        let expected = cluster_roles().remove(0); // cluster-admin
        let mut existing = expected.clone();
        existing.rules = Some(vec![expected.rules.as_ref().unwrap()[0].clone()]);
        existing.metadata.labels = Some([("mine".to_string(), "x".to_string())].into());
        let r = reconcile_role(&existing, &expected).unwrap();
        assert_eq!(r.rules.as_ref().unwrap().len(), 2);
        assert_eq!(r.metadata.labels.as_ref().unwrap()["mine"], "x");
        assert_eq!(
            r.metadata.labels.as_ref().unwrap()[BOOTSTRAPPING_LABEL],
            BOOTSTRAPPING_VALUE
        );
        assert!(reconcile_role(&r, &expected).is_none());
        // Protected: left alone.
        existing
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(AUTOUPDATE_ANNOTATION.into(), "false".into());
        assert!(reconcile_role(&existing, &expected).is_none());
        let b = cluster_role_bindings().remove(0);
        let mut bare = b.clone();
        bare.subjects = None;
        assert_eq!(reconcile_binding(&bare, &b).unwrap().subjects, b.subjects);
    }

    #[test]
    fn a_namespace_admin_manages_bindings_and_a_viewer_reads_the_namespace() {
        use crate::authz::Attributes;
        let mut objects: Vec<Value> = cluster_roles()
            .into_iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap();
                v["kind"] = "ClusterRole".into();
                v
            })
            .collect();
        for (user, role) in [("ann", "admin"), ("vic", "view")] {
            objects.push(serde_json::json!({
                "kind": "RoleBinding", "metadata": {"name": user, "namespace": "team-a"},
                "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
                "subjects": [{"apiGroup": GROUP, "kind": "User", "name": user}],
            }));
        }
        let policy = super::super::Policy::from_manifests(&objects);
        let user = |name: &str| UserInfo::new(name, &["system:authenticated"]);
        let may = |who: &str, verb: &str, group: &str, resource: &str| {
            policy
                .authorize(&Attributes::resource(
                    &user(who),
                    verb,
                    group,
                    "v1",
                    resource,
                    None,
                    Some("team-a"),
                    Some("x"),
                ))
                .allowed()
        };
        assert!(may("ann", "create", GROUP, "rolebindings"));
        assert!(may(
            "ann",
            "create",
            "authorization.k8s.io",
            "localsubjectaccessreviews"
        ));
        assert!(may("ann", "delete", "substrate.ate.dev", "actors"));
        assert!(may("vic", "get", "", "namespaces"));
        assert!(may("vic", "get", "substrate.ate.dev", "actors"));
        assert!(!may("vic", "create", GROUP, "rolebindings"));
        assert!(!may("vic", "delete", "substrate.ate.dev", "actors"));
    }
}
