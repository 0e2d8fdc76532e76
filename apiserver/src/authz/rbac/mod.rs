//! Standalone Kubernetes RBAC: the apiserver serves `Role`, `ClusterRole`, `RoleBinding`
//! and `ClusterRoleBinding` itself and evaluates them as kube-apiserver's RBAC authorizer
//! does.
//!
//! - [`policy`]: a pure snapshot of the RBAC objects ([`Policy`]) and the decision over it
//!   ([`Policy::authorize`]); what tests call to compare decisions with kube-apiserver's.
//! - [`rules`]: rule matching (`RuleAllows`) and covering (`Covers`), ported from Kubernetes.
//! - [`RbacAuthorizer`]: the [`Authorizer`](crate::authz::Authorizer) of the chain. It
//!   answers from memory: the current [`Policy`] behind an `ArcSwap`, rebuilt from the
//!   registry's watch caches whenever an RBAC object changes ([`RbacAuthorizer::run`]); no
//!   Valkey round trip per request.
//! - [`escalation`]: privilege-escalation prevention on writes of roles and bindings (the
//!   `escalate` and `bind` verbs, `ConfirmNoEscalation`).
//! - [`aggregation`]: the ClusterRole aggregation controller (`aggregationRule`).
//! - [`bootstrap`]: the bootstrap policy (`cluster-admin`, `admin`, `edit`, `view`,
//!   `system:discovery`, ..., Substrate's actor roles), created and reconciled at start.

pub mod aggregation;
pub mod bootstrap;
pub mod escalation;
pub mod policy;
pub mod rules;

use std::sync::Arc;

use arc_swap::ArcSwap;
use crds::resources::{CLUSTER_ROLE_BINDINGS, CLUSTER_ROLES, ROLE_BINDINGS, ROLES, ResourceInfo};
use futures::FutureExt;

pub use policy::{Policy, RoleRefError};

use crate::auth::UserInfo;
use crate::authz::{
    AnswerFuture, Attributes, Authorizer, NonResourceRule, ResourceRule, Rules, RulesFuture,
};
use crate::registry::rkey;
use crate::storage::Store;

/// The four RBAC resources, in the order [`Policy::from_json`] takes them.
pub const RESOURCES: [&ResourceInfo; 4] = [
    &ROLES,
    &CLUSTER_ROLES,
    &ROLE_BINDINGS,
    &CLUSTER_ROLE_BINDINGS,
];

/// The RBAC authorizer: the current [`Policy`], swapped atomically when RBAC objects change.
#[derive(Clone, Default)]
pub struct RbacAuthorizer {
    policy: Arc<ArcSwap<Policy>>,
}

impl RbacAuthorizer {
    /// An authorizer answering from `policy` (tests; [`RbacAuthorizer::from_store`] in a
    /// server).
    pub fn new(policy: Policy) -> Self {
        Self {
            policy: Arc::new(ArcSwap::from_pointee(policy)),
        }
    }

    /// An authorizer holding the RBAC objects of `store`'s watch caches now.
    pub fn from_store(store: &Store) -> Self {
        let a = Self::default();
        a.refresh(store);
        a
    }

    /// The policy decisions are made from now.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Replaces the policy.
    pub fn set(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    /// Rebuilds the policy from `store`'s watch caches.
    pub fn refresh(&self, store: &Store) {
        let snaps: Vec<_> = RESOURCES
            .iter()
            .map(|r| store.cache(rkey(r)).snapshot(None).1)
            .collect();
        self.set(build(&snaps));
    }

    /// Keeps the policy up to date with the watch caches: after any RBAC change, the policy
    /// is rebuilt from a fresh snapshot (changes that arrive together are folded into one
    /// rebuild). Runs until aborted.
    pub async fn run(self, store: Store) {
        loop {
            let mut snaps = Vec::new();
            let mut watchers = Vec::new();
            for r in RESOURCES {
                let (_, items, w) = store.cache(rkey(r)).watch_with_snapshot(None);
                snaps.push(items);
                watchers.push(w);
            }
            let policy = build(&snaps);
            tracing::debug!(counts = ?policy.counts(), "RBAC policy rebuilt");
            self.set(policy);
            let next: Vec<_> = watchers.iter_mut().map(|w| w.next().boxed()).collect();
            let (result, _, _) = futures::future::select_all(next).await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "RBAC watch restarted");
            }
        }
    }
}

fn build(snaps: &[Vec<Arc<serde_json::Value>>]) -> Policy {
    let it = |i: usize| snaps[i].iter().map(|v| v.as_ref());
    Policy::from_json(it(0), it(1), it(2), it(3))
}

impl Authorizer for RbacAuthorizer {
    fn authorize<'a>(&'a self, a: &'a Attributes) -> AnswerFuture<'a> {
        let answer = self.policy.load().authorize(a);
        Box::pin(async move { Ok(answer) })
    }

    /// kube's `RBACAuthorizer.RulesFor`: every rule bound to the user in the namespace, as
    /// resource and non-resource rules; a binding whose role is missing makes the answer
    /// incomplete, with the resolution errors as `evaluationError`.
    fn rules_for<'a>(&'a self, user: &'a UserInfo, namespace: &'a str) -> RulesFuture<'a> {
        let (found, errors) = self.policy.load().rules_for(user, namespace);
        Box::pin(async move { to_rules(&found, &errors) })
    }
}

/// `convertToResourceRules` and friends: policy rules in the shape of a rules review.
fn to_rules(found: &[k8s_openapi::api::rbac::v1::PolicyRule], errors: &[String]) -> Rules {
    let mut out = Rules::default();
    for r in found {
        let resources = r.resources.clone().unwrap_or_default();
        if !resources.is_empty() {
            out.resource_rules.push(ResourceRule {
                verbs: r.verbs.clone(),
                api_groups: r.api_groups.clone().unwrap_or_default(),
                resources,
                resource_names: r.resource_names.clone().unwrap_or_default(),
            });
        }
        let urls = r.non_resource_urls.clone().unwrap_or_default();
        if !urls.is_empty() {
            out.non_resource_rules.push(NonResourceRule {
                verbs: r.verbs.clone(),
                non_resource_urls: urls,
            });
        }
    }
    if !errors.is_empty() {
        out.incomplete = true;
        out.evaluation_error = policy::aggregate(errors);
    }
    out
}

#[cfg(test)]
mod rules_for_tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn rules_of_a_tenant_in_their_namespace_only() {
        let objects = [
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                   "metadata": {"name": "actors", "namespace": "team-a"},
                   "rules": [{"apiGroups": ["substrate.ate.dev"], "resources": ["actors"],
                              "verbs": ["get", "list"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "alice", "namespace": "team-a"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "actors"},
                   "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "broken", "namespace": "team-a"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "gone"},
                   "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]}),
        ];
        let rbac = RbacAuthorizer::default();
        rbac.set(Policy::from_manifests(&objects));
        let alice = UserInfo::new("alice", &["system:authenticated"]);
        let rules = rbac.rules_for(&alice, "team-a").await;
        assert_eq!(rules.resource_rules.len(), 1);
        assert_eq!(rules.resource_rules[0].resources, ["actors"]);
        assert_eq!(rules.resource_rules[0].verbs, ["get", "list"]);
        assert!(rules.incomplete);
        assert_eq!(
            rules.evaluation_error,
            r#"clusterrole.rbac.authorization.k8s.io "gone" not found"#
        );
        let elsewhere = rbac.rules_for(&alice, "team-b").await;
        assert!(elsewhere.resource_rules.is_empty());
        assert!(!elsewhere.incomplete);
    }
}
