//! A snapshot of the RBAC objects, indexed for authorization, and the decisions over it: a
//! port of Kubernetes' `DefaultRuleResolver` (`pkg/registry/rbac/validation/rule.go`) and
//! `RBACAuthorizer.Authorize` (`plugin/pkg/auth/authorizer/rbac/rbac.go`).
//!
//! [`Policy`] is pure: built from lists of objects ([`Policy::new`], or from their JSON with
//! [`Policy::from_json`]), it answers [`Policy::authorize`] with exactly kube-apiserver's
//! decision and reason for the same objects. Bindings are indexed by namespace, so a
//! decision visits the cluster role bindings and the role bindings of the request's
//! namespace only (as Kubernetes' listers do).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use serde_json::Value;

use super::rules;
use crate::auth::UserInfo;
use crate::authz::{Answer, Attributes};

/// Why a binding's role could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleRefError {
    /// The role does not exist; `resource` is `role` or `clusterrole`. Worded as a lister's
    /// NotFound: `clusterrole.rbac.authorization.k8s.io "x" not found`.
    #[error("{resource}.rbac.authorization.k8s.io {name:?} not found")]
    NotFound {
        resource: &'static str,
        name: String,
    },
    #[error("unsupported role reference kind: {0:?}")]
    UnsupportedKind(String),
}

/// A binding, stripped to what a decision needs.
#[derive(Debug, Clone)]
struct Binding {
    name: String,
    /// `""` for a ClusterRoleBinding.
    namespace: String,
    role_ref: RoleRef,
    subjects: Vec<Subject>,
}

/// What [`Policy::visit_rules_for`] calls with each rule (or resolution error) and where it
/// came from; returning false stops the visit.
pub type Visitor<'v> =
    dyn FnMut(&Source<'_>, Option<&PolicyRule>, Option<&RoleRefError>) -> bool + 'v;

/// The RBAC objects of one moment, indexed. Cheap to share (`Arc` inside).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    roles: HashMap<(String, String), Arc<Vec<PolicyRule>>>,
    cluster_roles: HashMap<String, Arc<Vec<PolicyRule>>>,
    /// Role bindings by namespace.
    role_bindings: HashMap<String, Vec<Binding>>,
    cluster_role_bindings: Vec<Binding>,
}

fn meta_name(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    m.name.clone().unwrap_or_default()
}

impl Policy {
    /// A policy of these objects.
    pub fn new(
        roles: Vec<Role>,
        cluster_roles: Vec<ClusterRole>,
        role_bindings: Vec<RoleBinding>,
        cluster_role_bindings: Vec<ClusterRoleBinding>,
    ) -> Self {
        let mut p = Policy::default();
        for r in roles {
            let ns = r.metadata.namespace.clone().unwrap_or_default();
            p.roles.insert(
                (ns, meta_name(&r.metadata)),
                Arc::new(r.rules.unwrap_or_default()),
            );
        }
        for r in cluster_roles {
            p.cluster_roles.insert(
                meta_name(&r.metadata),
                Arc::new(r.rules.unwrap_or_default()),
            );
        }
        for b in role_bindings {
            let namespace = b.metadata.namespace.clone().unwrap_or_default();
            p.role_bindings
                .entry(namespace.clone())
                .or_default()
                .push(Binding {
                    name: meta_name(&b.metadata),
                    namespace,
                    role_ref: b.role_ref,
                    subjects: b.subjects.unwrap_or_default(),
                });
        }
        p.cluster_role_bindings = cluster_role_bindings
            .into_iter()
            .map(|b| Binding {
                name: meta_name(&b.metadata),
                namespace: String::new(),
                role_ref: b.role_ref,
                subjects: b.subjects.unwrap_or_default(),
            })
            .collect();
        // Listers return objects in no promised order; sort for stable reasons.
        p.cluster_role_bindings.sort_by(|a, b| a.name.cmp(&b.name));
        for v in p.role_bindings.values_mut() {
            v.sort_by(|a, b| a.name.cmp(&b.name));
        }
        p
    }

    /// A policy of objects given as JSON (as stored); objects that do not decode are skipped
    /// (the registry validated them on the way in).
    pub fn from_json<'a>(
        roles: impl IntoIterator<Item = &'a Value>,
        cluster_roles: impl IntoIterator<Item = &'a Value>,
        role_bindings: impl IntoIterator<Item = &'a Value>,
        cluster_role_bindings: impl IntoIterator<Item = &'a Value>,
    ) -> Self {
        fn typed<'a, T: serde::de::DeserializeOwned>(
            items: impl IntoIterator<Item = &'a Value>,
        ) -> Vec<T> {
            items
                .into_iter()
                .filter_map(|v| match serde_json::from_value(v.clone()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        tracing::warn!(error = %e, name = ?v.pointer("/metadata/name"), "RBAC object skipped");
                        None
                    }
                })
                .collect()
        }
        Self::new(
            typed(roles),
            typed(cluster_roles),
            typed(role_bindings),
            typed(cluster_role_bindings),
        )
    }

    /// A policy of RBAC objects of any of the four kinds, told apart by `kind` (others are
    /// ignored), with the aggregated ClusterRoles' rules filled in as the aggregation
    /// controller fills them ([`super::aggregation::aggregated`]). What a test that compares
    /// decisions with kube-apiserver's feeds the same manifests to.
    pub fn from_manifests<'a>(objects: impl IntoIterator<Item = &'a Value>) -> Self {
        let mut by_kind: [Vec<&Value>; 4] = Default::default();
        for o in objects {
            let i = match o.get("kind").and_then(Value::as_str) {
                Some("Role") => 0,
                Some("ClusterRole") => 1,
                Some("RoleBinding") => 2,
                Some("ClusterRoleBinding") => 3,
                _ => continue,
            };
            by_kind[i].push(o);
        }
        let typed = |items: &[&Value]| -> Vec<ClusterRole> {
            items
                .iter()
                .filter_map(|v| serde_json::from_value((*v).clone()).ok())
                .collect()
        };
        let cluster_roles = super::aggregation::aggregated(typed(&by_kind[1]));
        let p = Self::from_json(
            by_kind[0].iter().copied(),
            [],
            by_kind[2].iter().copied(),
            by_kind[3].iter().copied(),
        );
        Self {
            cluster_roles: cluster_roles
                .into_iter()
                .map(|r| {
                    (
                        meta_name(&r.metadata),
                        Arc::new(r.rules.unwrap_or_default()),
                    )
                })
                .collect(),
            ..p
        }
    }

    /// The rules of a ClusterRole, if it exists.
    pub fn cluster_role_rules(&self, name: &str) -> Option<&[PolicyRule]> {
        self.cluster_roles.get(name).map(|r| r.as_slice())
    }

    /// `GetRoleReferenceRules`: the rules a binding in `namespace` (`""`: a
    /// ClusterRoleBinding) refers to.
    pub fn role_reference_rules(
        &self,
        role_ref: &RoleRef,
        namespace: &str,
    ) -> Result<&[PolicyRule], RoleRefError> {
        match role_ref.kind.as_str() {
            "Role" => self
                .roles
                .get(&(namespace.to_string(), role_ref.name.clone()))
                .map(|r| r.as_slice())
                .ok_or_else(|| RoleRefError::NotFound {
                    resource: "role",
                    name: role_ref.name.clone(),
                }),
            "ClusterRole" => {
                self.cluster_role_rules(&role_ref.name)
                    .ok_or_else(|| RoleRefError::NotFound {
                        resource: "clusterrole",
                        name: role_ref.name.clone(),
                    })
            }
            other => Err(RoleRefError::UnsupportedKind(other.to_string())),
        }
    }

    /// `VisitRulesFor`: calls `visit` with each rule that applies to `user` in `namespace`
    /// (cluster role bindings first, then the namespace's role bindings) and each error met
    /// resolving them; stops when `visit` returns false.
    pub fn visit_rules_for(&self, user: &UserInfo, namespace: &str, visit: &mut Visitor<'_>) {
        let groups: [&[Binding]; 2] = [
            &self.cluster_role_bindings,
            if namespace.is_empty() {
                &[]
            } else {
                self.role_bindings
                    .get(namespace)
                    .map_or(&[][..], Vec::as_slice)
            },
        ];
        for (i, bindings) in groups.into_iter().enumerate() {
            let ns = if i == 0 { "" } else { namespace };
            for b in bindings {
                let Some(subject) = b.subjects.iter().find(|s| applies_to(user, s, ns)) else {
                    continue;
                };
                let source = Source {
                    binding: b,
                    subject,
                };
                match self.role_reference_rules(&b.role_ref, ns) {
                    Err(e) => {
                        if !visit(&source, None, Some(&e)) {
                            return;
                        }
                    }
                    Ok(rules) => {
                        for r in rules {
                            if !visit(&source, Some(r), None) {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    /// `RulesFor`: every rule that applies to `user` in `namespace`, and the resolution
    /// errors (the rules found are still valid: RBAC only adds).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> (Vec<PolicyRule>, Vec<String>) {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        self.visit_rules_for(user, namespace, &mut |_, r, e| {
            if let Some(r) = r {
                rules.push(r.clone());
            }
            if let Some(e) = e {
                errors.push(e.to_string());
            }
            true
        });
        (rules, errors)
    }

    /// `RBACAuthorizer.Authorize`: allow (reason `RBAC: allowed by ...`) when a rule allows
    /// the request, else no opinion, with the resolution errors as the reason
    /// (`RBAC: clusterrole.rbac.authorization.k8s.io "x" not found`, several as `[a, b]`).
    pub fn authorize(&self, a: &Attributes) -> Answer {
        let mut allowed: Option<String> = None;
        let mut errors: Vec<String> = Vec::new();
        self.visit_rules_for(&a.user, &a.namespace, &mut |source, rule, err| {
            if let Some(r) = rule
                && rules::rule_allows(a, r)
            {
                allowed = Some(format!("RBAC: allowed by {source}"));
                return false;
            }
            if let Some(e) = err {
                errors.push(e.to_string());
            }
            true
        });
        match allowed {
            Some(reason) => Answer::allow(reason),
            None if errors.is_empty() => Answer::no_opinion(""),
            None => Answer::no_opinion(format!("RBAC: {}", aggregate(&errors))),
        }
    }

    /// How many objects of each kind the policy holds (roles, cluster roles, role bindings,
    /// cluster role bindings).
    pub fn counts(&self) -> [usize; 4] {
        [
            self.roles.len(),
            self.cluster_roles.len(),
            self.role_bindings.values().map(Vec::len).sum(),
            self.cluster_role_bindings.len(),
        ]
    }
}

/// `utilerrors.NewAggregate(errs).Error()`: one message bare, several (deduplicated) as
/// `[a, b]`.
pub fn aggregate(errors: &[String]) -> String {
    match errors {
        [] => String::new(),
        [one] => one.clone(),
        _ => {
            let mut seen: Vec<&str> = Vec::new();
            for e in errors {
                if !seen.contains(&e.as_str()) {
                    seen.push(e);
                }
            }
            if seen.len() == 1 {
                seen[0].to_string()
            } else {
                format!("[{}]", seen.join(", "))
            }
        }
    }
}

/// The binding and subject a rule came from (kube's `clusterRoleBindingDescriber` and
/// `roleBindingDescriber`).
pub struct Source<'a> {
    binding: &'a Binding,
    subject: &'a Subject,
}

impl fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.binding;
        let s = self.subject;
        let subject = if s.kind == crds::rbac::SERVICE_ACCOUNT_KIND {
            let ns = s
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(&b.namespace);
            format!("{} {:?}", s.kind, format!("{}/{ns}", s.name))
        } else {
            format!("{} {:?}", s.kind, s.name)
        };
        if b.namespace.is_empty() {
            write!(
                f,
                "ClusterRoleBinding {:?} of {} {:?} to {subject}",
                b.name, b.role_ref.kind, b.role_ref.name
            )
        } else {
            write!(
                f,
                "RoleBinding {:?} of {} {:?} to {subject}",
                format!("{}/{}", b.name, b.namespace),
                b.role_ref.kind,
                b.role_ref.name
            )
        }
    }
}

/// `appliesToUser`: users by name, groups by membership, service accounts by their user
/// name `system:serviceaccount:<namespace>:<name>` (the namespace defaults to the binding's).
pub fn applies_to(user: &UserInfo, subject: &Subject, namespace: &str) -> bool {
    match subject.kind.as_str() {
        crds::rbac::USER_KIND => user.name == subject.name,
        crds::rbac::GROUP_KIND => user.groups.contains(&subject.name),
        crds::rbac::SERVICE_ACCOUNT_KIND => {
            let ns = subject
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(namespace);
            !ns.is_empty()
                && user
                    .name
                    .strip_prefix("system:serviceaccount:")
                    .and_then(|rest| rest.split_once(':'))
                    .is_some_and(|(n, name)| n == ns && name == subject.name)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::Decision;
    use serde_json::json;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo::new(name, groups)
    }

    fn policy() -> Policy {
        let cr = |name: &str, rules: Value| json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules});
        let rb = |ns: &str, name: &str, kind: &str, role: &str, subjects: Value| {
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": ns}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role}, "subjects": subjects})
        };
        let crb = |name: &str, role: &str, subjects: Value| {
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}, "subjects": subjects})
        };
        let roles = [
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader", "namespace": "team-a"},
            "rules": [{"apiGroups": ["substrate.ate.dev"], "resources": ["actors"], "verbs": ["get"]}]}),
        ];
        let cluster_roles = [
            cr(
                "edit",
                json!([{"apiGroups": ["substrate.ate.dev"], "resources": ["actors", "actors/resume"], "verbs": ["*"]}]),
            ),
            cr(
                "discovery",
                json!([{"nonResourceURLs": ["/apis", "/apis/*"], "verbs": ["get"]}]),
            ),
        ];
        let role_bindings = [
            rb(
                "team-a",
                "alice-edit",
                "ClusterRole",
                "edit",
                json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}]),
            ),
            rb(
                "team-a",
                "gone",
                "ClusterRole",
                "gone",
                json!([{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "team-a"}]),
            ),
            rb(
                "team-a",
                "gone-role",
                "Role",
                "gone",
                json!([{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "team-a"}]),
            ),
            rb(
                "team-a",
                "reader",
                "Role",
                "reader",
                json!([{"kind": "ServiceAccount", "name": "bot"}]),
            ),
        ];
        let cluster_role_bindings = [
            crb(
                "discovery",
                "discovery",
                json!([{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:authenticated"}]),
            ),
            crb(
                "gone",
                "gone",
                json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "carol"}]),
            ),
        ];
        Policy::from_json(
            &roles,
            &cluster_roles,
            &role_bindings,
            &cluster_role_bindings,
        )
    }

    fn ask(
        p: &Policy,
        u: &UserInfo,
        verb: &str,
        resource: &str,
        sub: Option<&str>,
        ns: Option<&str>,
    ) -> Answer {
        p.authorize(&Attributes::resource(
            u,
            verb,
            "substrate.ate.dev",
            "v1alpha1",
            resource,
            sub,
            ns,
            Some("x"),
        ))
    }

    #[test]
    fn decisions_and_reasons_are_kubernetes_ones() {
        let p = policy();
        assert_eq!(p.counts(), [1, 2, 4, 2]);
        let alice = user("alice", &["system:authenticated"]);
        let a = ask(&p, &alice, "delete", "actors", None, Some("team-a"));
        assert_eq!(a.decision, Decision::Allow);
        assert_eq!(
            a.reason,
            "RBAC: allowed by RoleBinding \"alice-edit/team-a\" of ClusterRole \"edit\" to User \"alice\""
        );
        let a = ask(
            &p,
            &alice,
            "create",
            "actors",
            Some("resume"),
            Some("team-a"),
        );
        assert_eq!(a.decision, Decision::Allow);
        // Another namespace, and the cluster scope: no opinion, no reason.
        for ns in [Some("team-b"), None] {
            let a = ask(&p, &alice, "get", "actors", None, ns);
            assert_eq!((a.decision, a.reason.as_str()), (Decision::NoOpinion, ""));
        }
        // Missing roles are reported, one bare, several as a list.
        let carol = user("carol", &[]);
        let a = ask(&p, &carol, "get", "actors", None, None);
        assert_eq!(a.decision, Decision::NoOpinion);
        assert_eq!(
            a.reason,
            "RBAC: clusterrole.rbac.authorization.k8s.io \"gone\" not found"
        );
        let member = user("m", &["team-a"]);
        let a = ask(&p, &member, "get", "actors", None, Some("team-a"));
        assert_eq!(
            a.reason,
            "RBAC: [clusterrole.rbac.authorization.k8s.io \"gone\" not found, role.rbac.authorization.k8s.io \"gone\" not found]"
        );
        // Service accounts: by user name, in the binding's namespace.
        let bot = user(
            "system:serviceaccount:team-a:bot",
            &["system:serviceaccounts", "system:serviceaccounts:team-a"],
        );
        let a = ask(&p, &bot, "get", "actors", None, Some("team-a"));
        assert_eq!(
            a.reason,
            "RBAC: allowed by RoleBinding \"reader/team-a\" of Role \"reader\" to ServiceAccount \"bot/team-a\""
        );
        let other = user("system:serviceaccount:team-b:bot", &[]);
        assert_eq!(
            ask(&p, &other, "get", "actors", None, Some("team-a")).decision,
            Decision::NoOpinion
        );
        // Non-resource paths through a cluster role binding to a group.
        let a = p.authorize(&Attributes::non_resource(
            &alice,
            "get",
            "/apis/substrate.ate.dev",
        ));
        assert_eq!(
            a.reason,
            "RBAC: allowed by ClusterRoleBinding \"discovery\" of ClusterRole \"discovery\" to Group \"system:authenticated\""
        );
        assert_eq!(
            p.authorize(&Attributes::non_resource(&alice, "post", "/apis"))
                .decision,
            Decision::NoOpinion
        );
    }

    /// A cluster-sized policy (1000 atespaces with 3 bindings each, 50 cluster role bindings,
    /// the bootstrap roles): decisions stay right, and their cost is printed (not asserted).
    #[test]
    fn decisions_in_a_large_policy_visit_only_the_namespace() {
        let mut roles = crate::authz::rbac::aggregation::aggregated(
            crate::authz::rbac::bootstrap::cluster_roles(),
        );
        roles.extend((0..50).map(|i| {
            serde_json::from_value(json!({"metadata": {"name": format!("extra-{i}")},
                "rules": [{"apiGroups": ["x"], "resources": ["y"], "verbs": ["get"]}]}))
            .unwrap()
        }));
        let rb = |ns: usize, i: usize| -> RoleBinding {
            serde_json::from_value(json!({"metadata": {"name": format!("b{i}"), "namespace": format!("team-{ns}")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": format!("group-{ns}-{i}")}]}))
            .unwrap()
        };
        let crbs: Vec<ClusterRoleBinding> = (0..50)
            .map(|i| {
                serde_json::from_value(json!({"metadata": {"name": format!("crb-{i}")},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("extra-{i}")},
                    "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": format!("u{i}")}]}))
                .unwrap()
            })
            .chain(crate::authz::rbac::bootstrap::cluster_role_bindings())
            .collect();
        let bindings: Vec<RoleBinding> = (0..1000)
            .flat_map(|ns| (0..3).map(move |i| rb(ns, i)))
            .collect();
        let p = Policy::new(vec![], roles, bindings, crbs);
        let member = user("alice", &["group-500-2", "system:authenticated"]);
        let get = |ns: &str| {
            Attributes::resource(
                &member,
                "get",
                "substrate.ate.dev",
                "v1alpha1",
                "actors",
                None,
                Some(ns),
                Some("a"),
            )
        };
        let (allowed, denied) = (get("team-500"), get("team-501"));
        assert!(p.authorize(&allowed).allowed());
        assert_eq!(p.authorize(&denied).decision, Decision::NoOpinion);
        let n = 20_000u32;
        for (what, a) in [("allowed", &allowed), ("denied", &denied)] {
            let t = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(p.authorize(std::hint::black_box(a)));
            }
            println!(
                "RBAC decision ({what}, 3000 role bindings, 55 cluster role bindings): {:?} each (debug build)",
                t.elapsed() / n
            );
        }
    }

    #[test]
    fn manifests_of_mixed_kinds_make_an_aggregated_policy() {
        let objs = [
            json!({"kind": "ClusterRole", "metadata": {"name": "agg"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"a": "b"}}]}}),
            json!({"kind": "ClusterRole", "metadata": {"name": "src", "labels": {"a": "b"}}, "rules": [{"apiGroups": ["substrate.ate.dev"], "resources": ["actors"], "verbs": ["get"]}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "b", "namespace": "team-a"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "agg"},
                   "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}]}),
            json!({"kind": "Atespace", "metadata": {"name": "team-a"}}),
        ];
        let p = Policy::from_manifests(&objs);
        assert_eq!(p.counts(), [0, 2, 1, 0]);
        let alice = user("alice", &[]);
        assert!(ask(&p, &alice, "get", "actors", None, Some("team-a")).allowed());
    }

    #[test]
    fn rules_for_collects_rules_and_errors() {
        let p = policy();
        let (rules, errors) =
            p.rules_for(&user("m", &["team-a", "system:authenticated"]), "team-a");
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert_eq!(errors.len(), 2);
        assert_eq!(aggregate(&["a".into(), "a".into()]), "a");
    }
}
