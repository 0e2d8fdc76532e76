//! Privilege-escalation prevention on RBAC writes, as Kubernetes' policy-based RBAC storage
//! (`pkg/registry/rbac/{role,clusterrole,rolebinding,clusterrolebinding}/policybased`,
//! `pkg/registry/rbac/escalation_check.go`, `ConfirmNoEscalation`):
//!
//! - members of `system:masters` (and the apiserver itself) may write anything;
//! - a Role or ClusterRole may be written by a user who may `escalate` it, or who holds
//!   every rule it grants (in its namespace; cluster-wide for a ClusterRole); setting or
//!   changing an `aggregationRule` needs `*` on everything;
//! - a binding may be written by a user who may `bind` the role it refers to (in the
//!   binding's namespace), or who holds every rule of that role;
//! - a write that changes only `ownerReferences` or `finalizers` (the garbage collector's) is
//!   not checked.
//!
//! Denials are `403`s worded as Kubernetes words them: `roles.rbac.authorization.k8s.io "x"
//! is forbidden: user "alice" (groups=["team-a" "system:authenticated"]) is attempting to
//! grant RBAC permissions not currently held:\n{APIGroups:["..."], Resources:["..."],
//! Verbs:["..."]}`.

use std::sync::Arc;

use crds::resources::{Kind, ResourceInfo};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, RoleRef};
use serde_json::Value;

use super::{Policy, RbacAuthorizer, RoleRefError, rules};
use crate::auth::UserInfo;
use crate::authz::{Attributes, Chain, PRIVILEGED_GROUP};
use crate::registry::WriteCheck;
use crate::status::ApiError;

/// The [`WriteCheck`] of RBAC writes. `authz` answers the `escalate` and `bind` questions
/// (the server's whole chain, as Kubernetes asks its whole authorizer).
pub struct EscalationCheck {
    pub rbac: RbacAuthorizer,
    pub authz: Chain,
}

/// `EscalationAllowed`: `system:masters`, and the apiserver's own in-process identity.
pub fn escalation_allowed(user: &UserInfo) -> bool {
    user.in_group(PRIVILEGED_GROUP) || *user == UserInfo::system()
}

/// `*` on everything, resources and paths (`fullAuthority`).
pub fn full_authority() -> Vec<PolicyRule> {
    let all = || Some(vec!["*".to_string()]);
    vec![
        PolicyRule {
            api_groups: all(),
            resources: all(),
            verbs: vec!["*".into()],
            ..Default::default()
        },
        PolicyRule {
            non_resource_urls: all(),
            verbs: vec!["*".into()],
            ..Default::default()
        },
    ]
}

/// `ConfirmNoEscalation`: `Err(message)` naming the rules `user` does not hold in
/// `namespace` (`""`: cluster-wide).
pub fn confirm_no_escalation(
    policy: &Policy,
    user: &UserInfo,
    namespace: &str,
    rules: &[PolicyRule],
) -> Result<(), String> {
    let (owner, errors) = policy.rules_for(user, namespace);
    let (covered, missing) = rules::covers(&owner, rules);
    if covered {
        return Ok(());
    }
    let mut missing: Vec<String> = rules::compact(&missing)
        .iter()
        .map(rules::compact_string)
        .collect();
    missing.sort();
    missing.dedup();
    let mut msg = format!(
        "user {:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        user.name,
        rules::go_quoted(&user.groups),
        missing.join("\n")
    );
    if !errors.is_empty() {
        msg.push_str(&format!(
            "; resolution errors: [{}]",
            super::policy::aggregate(&errors)
        ));
    }
    Err(msg)
}

/// `IsOnlyMutatingGCFields`: `new` differs from `old` in ownerReferences and finalizers
/// only (and what the server maintains).
fn only_gc_fields(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in [
                "ownerReferences",
                "finalizers",
                "managedFields",
                "resourceVersion",
                "selfLink",
            ] {
                m.shift_remove(f);
            }
        }
        v
    };
    strip(old) == strip(new)
}

fn forbidden(res: &ResourceInfo, name: &str, msg: &str) -> ApiError {
    let message = if name.is_empty() {
        format!("{} is forbidden: {msg}", res.qualified())
    } else {
        format!("{} {name:?} is forbidden: {msg}", res.qualified())
    };
    ApiError::forbidden_msg(message)
        .with_details(serde_json::json!({"name": name, "group": res.group, "kind": res.plural}))
}

fn has_aggregation_rule(v: Option<&Value>) -> bool {
    v.and_then(|v| serde_json::from_value::<ClusterRole>(v.clone()).ok())
        .and_then(|r| r.aggregation_rule)
        .and_then(|a| a.cluster_role_selectors)
        .is_some_and(|s| !s.is_empty())
}

impl EscalationCheck {
    async fn allowed(&self, a: &Attributes) -> bool {
        match self.authz.authorize(a).await {
            Ok(answer) => answer.allowed(),
            Err(e) => {
                tracing::warn!(user = %a.user.name, verb = %a.verb, error = %e, "escalation check: authorization failed");
                false
            }
        }
    }

    async fn check_role(
        &self,
        user: &UserInfo,
        res: &ResourceInfo,
        ns: &str,
        old: Option<&Value>,
        new: &Value,
    ) -> Result<(), ApiError> {
        let name = new
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        // `RoleEscalationAuthorized`: the request's name (none on a create).
        let request_name = if old.is_some() { name } else { "" };
        let escalate = Attributes::resource(
            user,
            "escalate",
            res.group,
            "*",
            res.plural,
            None,
            Some(ns).filter(|n| !n.is_empty()),
            Some(request_name).filter(|n| !n.is_empty()),
        );
        if self.allowed(&escalate).await {
            return Ok(());
        }
        if old.is_some_and(|o| only_gc_fields(o, new)) {
            return Ok(());
        }
        let rules: Vec<PolicyRule> = new
            .get("rules")
            .and_then(|r| serde_json::from_value(r.clone()).ok())
            .unwrap_or_default();
        let policy = self.rbac.policy();
        confirm_no_escalation(&policy, user, ns, &rules).map_err(|m| forbidden(res, name, &m))?;
        if res.kind_id == Kind::ClusterRole
            && (has_aggregation_rule(Some(new)) || has_aggregation_rule(old))
            && confirm_no_escalation(&policy, user, ns, &full_authority()).is_err()
        {
            return Err(forbidden(
                res,
                name,
                "must have cluster-admin privileges to use the aggregationRule",
            ));
        }
        Ok(())
    }

    async fn check_binding(
        &self,
        user: &UserInfo,
        res: &ResourceInfo,
        ns: &str,
        old: Option<&Value>,
        new: &Value,
    ) -> Result<(), ApiError> {
        if old.is_some_and(|o| only_gc_fields(o, new)) {
            return Ok(());
        }
        let name = new
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(role_ref) = new
            .get("roleRef")
            .and_then(|r| serde_json::from_value::<RoleRef>(r.clone()).ok())
        else {
            return Ok(());
        };
        // `BindingAuthorized`.
        let resource = match role_ref.kind.as_str() {
            "ClusterRole" => Some("clusterroles"),
            "Role" => Some("roles"),
            _ => None,
        };
        if let Some(resource) = resource {
            let bind = Attributes::resource(
                user,
                "bind",
                &role_ref.api_group,
                "",
                resource,
                None,
                Some(ns).filter(|n| !n.is_empty()),
                Some(role_ref.name.as_str()),
            );
            if self.allowed(&bind).await {
                return Ok(());
            }
        }
        let policy = self.rbac.policy();
        let rules = policy
            .role_reference_rules(&role_ref, ns)
            .map_err(|e| match e {
                // The registry's NotFound, as Kubernetes' rule resolver reads the storage.
                RoleRefError::NotFound { resource, name } => ApiError::new(
                    404,
                    "NotFound",
                    format!("{resource}s.rbac.authorization.k8s.io {name:?} not found"),
                )
                .with_details(serde_json::json!({"name": name, "group": crds::rbac::GROUP, "kind": format!("{resource}s")})),
                RoleRefError::UnsupportedKind(_) => ApiError::internal(e.to_string()),
            })?;
        confirm_no_escalation(&policy, user, ns, rules).map_err(|m| forbidden(res, name, &m))
    }
}

impl WriteCheck for EscalationCheck {
    fn check<'a>(
        &'a self,
        user: &'a UserInfo,
        res: &'static ResourceInfo,
        ns: Option<&'a str>,
        old: Option<&'a Value>,
        new: &'a Value,
    ) -> futures::future::BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            if escalation_allowed(user) {
                return Ok(());
            }
            let ns = ns.unwrap_or_default();
            match res.kind_id {
                Kind::Role | Kind::ClusterRole => self.check_role(user, res, ns, old, new).await,
                Kind::RoleBinding | Kind::ClusterRoleBinding => {
                    self.check_binding(user, res, ns, old, new).await
                }
                _ => Ok(()),
            }
        })
    }
}

/// The check as a registry wants it.
pub fn check(rbac: RbacAuthorizer, authz: Chain) -> Arc<dyn WriteCheck> {
    Arc::new(EscalationCheck { rbac, authz })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo::new(name, groups)
    }

    #[tokio::test]
    async fn writes_of_roles_and_bindings_are_checked_as_kubernetes_checks_them() {
        use crds::resources::{CLUSTER_ROLES, ROLE_BINDINGS, ROLES};
        let objs = [
            json!({"kind": "Role", "metadata": {"name": "rbac", "namespace": "team-a"},
                   "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings", "clusterroles"], "verbs": ["create", "update", "get"]},
                             {"apiGroups": ["substrate.ate.dev"], "resources": ["actors"], "verbs": ["get"]}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "rbac", "namespace": "team-a"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "rbac"},
                   "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}]}),
            json!({"kind": "ClusterRole", "metadata": {"name": "edit"},
                   "rules": [{"apiGroups": ["substrate.ate.dev"], "resources": ["actors"], "verbs": ["*"]}]}),
        ];
        let rbac = RbacAuthorizer::new(Policy::from_manifests(&objs));
        let chain = Chain::new(vec![], vec![Arc::new(rbac.clone())]);
        let check = EscalationCheck { rbac, authz: chain };
        let alice = user("alice", &["system:authenticated"]);
        let role = |name: &str, verbs: &[&str]| {
            json!({"kind": "Role", "metadata": {"name": name, "namespace": "team-a"},
            "rules": [{"apiGroups": ["substrate.ate.dev"], "resources": ["actors"], "verbs": verbs}]})
        };
        let run = |res, old: Option<Value>, new: Value| {
            let check = &check;
            let alice = &alice;
            async move {
                check
                    .check(alice, res, Some("team-a"), old.as_ref(), &new)
                    .await
            }
        };
        // Roles: what she holds, yes; more, no (in her namespace); `escalate` lets her.
        assert!(run(&ROLES, None, role("r", &["get"])).await.is_ok());
        let e = run(&ROLES, None, role("r", &["delete"])).await.unwrap_err();
        assert_eq!(e.code, 403);
        assert!(
            e.message
                .starts_with("roles.rbac.authorization.k8s.io \"r\" is forbidden: user \"alice\""),
            "{}",
            e.message
        );
        // (`*` on roles includes `escalate`.)
        let escalator = Policy::from_manifests(&[
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "e"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "esc"},
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}]}),
            json!({"kind": "ClusterRole", "metadata": {"name": "esc"},
            "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["*"]}]}),
        ]);
        let esc = RbacAuthorizer::new(escalator);
        let esc_check = EscalationCheck {
            rbac: esc.clone(),
            authz: Chain::new(vec![], vec![Arc::new(esc)]),
        };
        assert!(
            esc_check
                .check(
                    &alice,
                    &ROLES,
                    Some("team-a"),
                    None,
                    &role("r", &["delete"])
                )
                .await
                .is_ok()
        );
        // A change of only finalizers or owner references is not checked.
        let mut gc = role("r", &["delete"]);
        gc["metadata"]["finalizers"] = json!(["x"]);
        assert!(run(&ROLES, Some(role("r", &["delete"])), gc).await.is_ok());
        // Bindings: a missing role is the registry's 404; `bind` is not held here.
        let binding = |kind: &str, name: &str| {
            json!({"kind": "RoleBinding", "metadata": {"name": "b", "namespace": "team-a"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}})
        };
        let e = run(&ROLE_BINDINGS, None, binding("Role", "nope"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (404, "roles.rbac.authorization.k8s.io \"nope\" not found")
        );
        assert!(
            run(&ROLE_BINDINGS, None, binding("Role", "rbac"))
                .await
                .is_ok()
        );
        assert_eq!(
            run(&ROLE_BINDINGS, None, binding("ClusterRole", "edit"))
                .await
                .unwrap_err()
                .code,
            403
        );
        // An aggregation rule needs everything, whatever its rules.
        let agg = json!({"kind": "ClusterRole", "metadata": {"name": "agg"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"a": "b"}}]}});
        let e = check
            .check(&alice, &CLUSTER_ROLES, None, None, &agg)
            .await
            .unwrap_err();
        assert!(
            e.message
                .ends_with("must have cluster-admin privileges to use the aggregationRule"),
            "{}",
            e.message
        );
        // system:masters and the apiserver itself are trusted.
        let root = user("root", &["system:masters"]);
        assert!(
            check
                .check(&root, &CLUSTER_ROLES, None, None, &agg)
                .await
                .is_ok()
        );
        assert!(
            check
                .check(&UserInfo::system(), &CLUSTER_ROLES, None, None, &agg)
                .await
                .is_ok()
        );
    }

    #[test]
    fn escalation_is_refused_with_kubernetes_message() {
        let cr = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "edit"},
            "rules": [{"apiGroups": ["substrate.ate.dev"], "resources": ["actors"], "verbs": ["get", "list"]}]});
        let rb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "b", "namespace": "team-a"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "team-a"}]});
        let p = Policy::from_json([], [&cr], [&rb], []);
        let alice = user("alice", &["team-a", "system:authenticated"]);
        let want = |verbs: &[&str]| PolicyRule {
            api_groups: Some(vec!["substrate.ate.dev".into()]),
            resources: Some(vec!["actors".into()]),
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            ..Default::default()
        };
        assert!(confirm_no_escalation(&p, &alice, "team-a", &[want(&["get"])]).is_ok());
        // Not in another namespace, nor cluster-wide.
        assert!(confirm_no_escalation(&p, &alice, "team-b", &[want(&["get"])]).is_err());
        assert_eq!(
            confirm_no_escalation(&p, &alice, "team-a", &[want(&["get", "delete", "create"])])
                .unwrap_err(),
            "user \"alice\" (groups=[\"team-a\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"substrate.ate.dev\"], Resources:[\"actors\"], Verbs:[\"delete\" \"create\"]}"
        );
        assert!(only_gc_fields(
            &json!({"metadata": {"name": "a"}, "rules": []}),
            &json!({"metadata": {"name": "a", "finalizers": ["x"]}, "rules": []})
        ));
        assert!(!only_gc_fields(
            &json!({"metadata": {"name": "a"}, "rules": []}),
            &json!({"metadata": {"name": "a", "labels": {"x": "y"}}, "rules": []})
        ));
    }
}
