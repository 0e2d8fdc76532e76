//! The ClusterRole aggregation controller (Kubernetes'
//! `pkg/controller/clusterroleaggregation`): a ClusterRole with
//! `aggregationRule.clusterRoleSelectors` gets as `rules` the union of the rules of the
//! ClusterRoles its selectors select (itself excluded; roles in name order, each rule once),
//! written back through the registry as the apiserver, and only when they differ.
//!
//! It reacts to every change of a ClusterRole: each change re-evaluates every aggregated
//! role (aggregation chains, such as `view` into `edit` into `admin`, settle in a few
//! rounds as each write is itself a change).

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use serde_json::Value;

use crds::resources::CLUSTER_ROLES;

use crate::registry::{Registry, rkey};
use crate::selector::LabelSelector;

/// The rules each aggregated ClusterRole should have, for those whose rules differ:
/// `(name, rules)`. Pure: `roles` is every ClusterRole.
pub fn desired(roles: &[ClusterRole]) -> Vec<(String, Vec<PolicyRule>)> {
    let mut sorted: Vec<&ClusterRole> = roles.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut out = Vec::new();
    for role in &sorted {
        let Some(selectors) = role
            .aggregation_rule
            .as_ref()
            .and_then(|a| a.cluster_role_selectors.as_ref())
        else {
            continue;
        };
        let mut rules: Vec<PolicyRule> = Vec::new();
        for s in selectors {
            let Ok(sel) = LabelSelector::from_label_selector(s) else {
                continue;
            };
            for other in &sorted {
                if other.metadata.name == role.metadata.name {
                    continue;
                }
                let labels: serde_json::Map<String, Value> = other
                    .metadata
                    .labels
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect();
                if !sel.matches(Some(&labels)) {
                    continue;
                }
                for r in other.rules.iter().flatten() {
                    if !rules.contains(r) {
                        rules.push(r.clone());
                    }
                }
            }
        }
        // Semantic equality: no rules and an empty list are the same.
        if role.rules.as_deref().unwrap_or_default() != rules.as_slice() {
            out.push((role.metadata.name.clone().unwrap_or_default(), rules));
        }
    }
    out
}

/// `roles` with every aggregated ClusterRole's rules filled in, as the controller leaves them
/// once settled (chains such as `view` → `edit` → `admin` included). For tests that
/// evaluate a snapshot of RBAC objects without running the controller.
pub fn aggregated(mut roles: Vec<ClusterRole>) -> Vec<ClusterRole> {
    // Each round settles at least one more level of a chain; a cycle stops at the bound.
    for _ in 0..=roles.len() {
        let d = desired(&roles);
        if d.is_empty() {
            break;
        }
        for (name, rules) in d {
            if let Some(r) = roles
                .iter_mut()
                .find(|r| r.metadata.name.as_deref() == Some(name.as_str()))
            {
                r.rules = Some(rules);
            }
        }
    }
    roles
}

/// Brings every aggregated ClusterRole's rules up to date once; how many it rewrote.
pub async fn sync(registry: &Registry, roles: &[ClusterRole]) -> usize {
    let mut n = 0;
    for (name, rules) in desired(roles) {
        let rules_json = serde_json::to_value(&rules).unwrap_or(Value::Null);
        let r = registry
            .guaranteed_update(&CLUSTER_ROLES, None, &name, |old| {
                let mut new = old.clone();
                new["rules"] = rules_json.clone();
                Some(new)
            })
            .await;
        match r {
            Ok(_) => {
                tracing::info!(clusterrole = %name, rules = rules.len(), "aggregated ClusterRole updated");
                n += 1;
            }
            Err(e) => {
                tracing::warn!(clusterrole = %name, error = %e.message, "aggregating ClusterRole failed")
            }
        }
    }
    n
}

/// Runs the controller until aborted.
pub async fn run(registry: Registry) {
    let cache = registry.store.cache(rkey(&CLUSTER_ROLES)).clone();
    loop {
        let (_, items, mut watcher) = cache.watch_with_snapshot(None);
        let roles: Vec<ClusterRole> = items
            .iter()
            .filter_map(|v| serde_json::from_value(v.as_ref().clone()).ok())
            .collect();
        sync(&registry, &roles).await;
        if let Err(e) = watcher.next().await {
            tracing::debug!(error = %e, "ClusterRole watch restarted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role(v: Value) -> ClusterRole {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn aggregated_rules_are_the_union_of_the_selected_roles() {
        let rule = |r: &str| json!({"apiGroups": ["g"], "resources": [r], "verbs": ["get"]});
        let roles = vec![
            role(
                json!({"metadata": {"name": "view"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"to-view": "true"}}]}}),
            ),
            role(
                json!({"metadata": {"name": "b", "labels": {"to-view": "true"}}, "rules": [rule("b"), rule("a")]}),
            ),
            role(
                json!({"metadata": {"name": "a", "labels": {"to-view": "true"}}, "rules": [rule("a")]}),
            ),
            role(json!({"metadata": {"name": "c"}, "rules": [rule("c")]})),
        ];
        let d = desired(&roles);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].0, "view");
        let got: Vec<Value> = d[0]
            .1
            .iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect();
        assert_eq!(got, [rule("a"), rule("b")]);
        // Up to date: nothing to write; an empty selection and no rules are the same.
        let mut done = roles.clone();
        done[0].rules = Some(d[0].1.clone());
        assert!(desired(&done).is_empty());
        let lonely = vec![role(
            json!({"metadata": {"name": "x"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"none": "x"}}]}}),
        )];
        assert!(desired(&lonely).is_empty());
    }

    #[test]
    fn the_bootstrap_chain_view_edit_admin_settles() {
        let roles = aggregated(super::super::bootstrap::cluster_roles());
        let rules_of = |n: &str| {
            roles
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(n))
                .and_then(|r| r.rules.clone())
                .unwrap_or_default()
        };
        let (view, edit, admin) = (rules_of("view"), rules_of("edit"), rules_of("admin"));
        // Substrate's view rules, then kube's (namespaces), in the order of the role names.
        let mut want = crds::rbac::actor_view_rules();
        want.extend(rules_of("system:aggregate-to-view"));
        assert_eq!(view, want);
        assert!(view.iter().all(|r| edit.contains(r)), "{edit:?}");
        assert!(edit.iter().all(|r| admin.contains(r)), "{admin:?}");
        assert!(
            crds::rbac::actor_admin_rules()
                .iter()
                .chain(&rules_of("system:aggregate-to-admin"))
                .all(|r| admin.contains(r))
        );
        assert!(desired(&roles).is_empty());
    }
}
