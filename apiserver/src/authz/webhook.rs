//! Delegated authorization: every question becomes a `SubjectAccessReview`
//! (`authorization.k8s.io/v1`) to the cluster's kube-apiserver, mapped as kube's webhook
//! authorizer maps it (`k8s.io/apiserver/plugin/pkg/authorizer/webhook`): resource attributes
//! (namespace, verb, group, version, resource, subresource, name) or non-resource ones (path,
//! verb), and the user (name, groups, extra). `status.allowed` is allow, `status.denied` deny,
//! anything else no opinion; the reason is passed through. Transient failures are retried
//! ([`crate::webhook_retry`]); a failed call is an [`AuthzError`] (the chain answers 500) and
//! is logged. Put a [`super::cache::CachedAuthorizer`] in front.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    SubjectAccessReviewStatus,
};

use super::{Answer, AnswerFuture, Attributes, Authorizer, AuthzError};

/// Sends a review and returns its status (a trait so tests run without a cluster).
pub trait Reviewer: Send + Sync {
    fn review(
        &self,
        review: SubjectAccessReview,
    ) -> BoxFuture<'_, Result<SubjectAccessReviewStatus, String>>;
}

/// A [`Reviewer`] that creates the review in a cluster.
pub struct KubeReviewer {
    api: kube::Api<SubjectAccessReview>,
}

impl KubeReviewer {
    pub fn new(client: kube::Client) -> Self {
        Self {
            api: kube::Api::all(client),
        }
    }
}

impl Reviewer for KubeReviewer {
    fn review(
        &self,
        review: SubjectAccessReview,
    ) -> BoxFuture<'_, Result<SubjectAccessReviewStatus, String>> {
        Box::pin(async move {
            let params = kube::api::PostParams::default();
            let created = crate::webhook_retry::with_retries("SubjectAccessReview", || {
                self.api.create(&params, &review)
            })
            .await?;
            created
                .status
                .ok_or_else(|| "the SubjectAccessReview came back without a status".to_string())
        })
    }
}

/// See the module docs.
pub struct WebhookAuthorizer {
    reviewer: Arc<dyn Reviewer>,
}

impl WebhookAuthorizer {
    pub fn new(reviewer: Arc<dyn Reviewer>) -> Self {
        Self { reviewer }
    }
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The review kube's webhook authorizer sends for `a`.
pub fn review_of(a: &Attributes) -> SubjectAccessReview {
    let (resource_attributes, non_resource_attributes) = if a.resource_request {
        (
            Some(ResourceAttributes {
                namespace: opt(&a.namespace),
                verb: opt(&a.verb),
                group: opt(&a.group),
                version: opt(&a.version),
                resource: opt(&a.resource),
                subresource: opt(&a.subresource),
                name: opt(&a.name),
                ..Default::default()
            }),
            None,
        )
    } else {
        (
            None,
            Some(NonResourceAttributes {
                path: opt(&a.path),
                verb: opt(&a.verb),
            }),
        )
    };
    let extra: BTreeMap<String, Vec<String>> = a.user.extra.clone();
    SubjectAccessReview {
        metadata: Default::default(),
        spec: SubjectAccessReviewSpec {
            user: opt(&a.user.name),
            groups: (!a.user.groups.is_empty()).then(|| a.user.groups.clone()),
            extra: (!extra.is_empty()).then_some(extra),
            resource_attributes,
            non_resource_attributes,
            uid: None,
        },
        status: None,
    }
}

/// The decision kube's webhook authorizer takes from a review's status.
pub fn answer_of(status: &SubjectAccessReviewStatus) -> Answer {
    let reason = status.reason.clone().unwrap_or_default();
    if status.allowed {
        Answer::allow(reason)
    } else if status.denied == Some(true) {
        Answer::deny(reason)
    } else {
        Answer::no_opinion(reason)
    }
}

impl Authorizer for WebhookAuthorizer {
    fn authorize<'a>(&'a self, a: &'a Attributes) -> AnswerFuture<'a> {
        Box::pin(async move {
            match self.reviewer.review(review_of(a)).await {
                Ok(status) => {
                    if let Some(e) = status.evaluation_error.as_deref().filter(|e| !e.is_empty()) {
                        tracing::debug!(user = %a.user.name, verb = %a.verb, resource = %a.resource, path = %a.path, error = %e, "SubjectAccessReview evaluation error");
                    }
                    Ok(answer_of(&status))
                }
                Err(e) => {
                    tracing::warn!(user = %a.user.name, verb = %a.verb, resource = %a.resource, namespace = %a.namespace, path = %a.path, error = %e, "SubjectAccessReview failed");
                    Err(AuthzError(format!("SubjectAccessReview failed: {e}")))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::UserInfo;
    use std::sync::Mutex;

    struct Fake {
        seen: Mutex<Vec<SubjectAccessReview>>,
        status: Result<SubjectAccessReviewStatus, String>,
    }

    impl Reviewer for Fake {
        fn review(
            &self,
            review: SubjectAccessReview,
        ) -> BoxFuture<'_, Result<SubjectAccessReviewStatus, String>> {
            self.seen.lock().unwrap().push(review);
            let s = self.status.clone();
            Box::pin(async move { s })
        }
    }

    fn alice() -> UserInfo {
        let mut extra = BTreeMap::new();
        extra.insert("scopes.example.com".into(), vec!["a".into(), "b".into()]);
        UserInfo {
            name: "alice".into(),
            groups: vec!["team-a".into(), "system:authenticated".into()],
            extra,
        }
    }

    #[test]
    fn resource_requests_map_every_attribute_as_kube_does() {
        let a = Attributes::resource(
            &alice(),
            "create",
            "substrate.ate.dev",
            "v1",
            "actors",
            Some("resume"),
            Some("team-a"),
            Some("x"),
        );
        let json = serde_json::to_value(review_of(&a)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "metadata": {},
                "spec": {
                    "user": "alice",
                    "groups": ["team-a", "system:authenticated"],
                    "extra": {"scopes.example.com": ["a", "b"]},
                    "resourceAttributes": {
                        "namespace": "team-a",
                        "verb": "create",
                        "group": "substrate.ate.dev",
                        "version": "v1",
                        "resource": "actors",
                        "subresource": "resume",
                        "name": "x",
                    },
                },
            })
        );
        // Cluster-scoped list of the core group: empty fields are left out.
        let list = Attributes::resource(&alice(), "list", "", "v1", "namespaces", None, None, None);
        let json = serde_json::to_value(review_of(&list)).unwrap();
        assert_eq!(
            json["spec"]["resourceAttributes"],
            serde_json::json!({"verb": "list", "version": "v1", "resource": "namespaces"})
        );
    }

    #[test]
    fn non_resource_requests_send_path_and_verb() {
        let a = Attributes::non_resource(&alice(), "get", "/openapi/v2");
        let json = serde_json::to_value(review_of(&a)).unwrap();
        assert_eq!(
            json["spec"]["nonResourceAttributes"],
            serde_json::json!({"path": "/openapi/v2", "verb": "get"})
        );
        assert!(json["spec"].get("resourceAttributes").is_none());
    }

    #[tokio::test]
    async fn allowed_denied_and_neither_become_the_three_decisions_with_their_reason() {
        let a = Attributes::non_resource(&alice(), "get", "/apis");
        for (status, decision) in [
            (
                SubjectAccessReviewStatus {
                    allowed: true,
                    reason: Some("RBAC: allowed by RoleBinding \"r\"".into()),
                    ..Default::default()
                },
                super::super::Decision::Allow,
            ),
            (
                SubjectAccessReviewStatus {
                    allowed: false,
                    denied: Some(true),
                    reason: Some("blocked".into()),
                    ..Default::default()
                },
                super::super::Decision::Deny,
            ),
            (
                SubjectAccessReviewStatus {
                    allowed: false,
                    reason: Some("no RBAC policy matched".into()),
                    ..Default::default()
                },
                super::super::Decision::NoOpinion,
            ),
        ] {
            let fake = Arc::new(Fake {
                seen: Mutex::new(vec![]),
                status: Ok(status.clone()),
            });
            let answer = WebhookAuthorizer::new(fake.clone())
                .authorize(&a)
                .await
                .unwrap();
            assert_eq!(answer.decision, decision);
            assert_eq!(Some(answer.reason), status.reason);
            assert_eq!(fake.seen.lock().unwrap().len(), 1);
        }
    }

    #[tokio::test]
    async fn a_failed_review_is_an_error_and_the_chain_answers_500() {
        let fake = Arc::new(Fake {
            seen: Mutex::new(vec![]),
            status: Err("connection refused".into()),
        });
        let webhook: Arc<dyn Authorizer> = Arc::new(WebhookAuthorizer::new(fake));
        let a = Attributes::non_resource(&alice(), "get", "/apis");
        let chain = super::super::Chain::new(vec![], vec![webhook]);
        let e = chain.check(&a).await.unwrap_err();
        assert_eq!(e.code, 500);
        assert!(e.message.contains("connection refused"), "{}", e.message);
    }
}
