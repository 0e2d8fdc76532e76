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

use crate::authz::{AnswerFuture, Attributes, Authorizer};
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
}
