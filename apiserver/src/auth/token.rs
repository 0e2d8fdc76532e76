//! Bearer tokens (ServiceAccount tokens, OIDC via the cluster) authenticated by a
//! `TokenReview` (`authentication.k8s.io/v1`) to the cluster's kube-apiserver, as kube's
//! delegating authenticator does: no audiences (the kube-apiserver's own), answers cached for
//! `--authentication-token-webhook-cache-ttl` (accepted and refused alike; a failed call is
//! not cached), the cache keyed by a SHA-256 of the token (the token is never stored as a key
//! nor logged) and bounded. Transient failures are retried ([`crate::webhook_retry`]). A
//! refused token and a failed review are both 401, as in kube; the failure is logged.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use sha2::{Digest, Sha256};

use super::UserInfo;
use ttl_cache::{Stats, TtlCache};

/// Default bound on cached token reviews.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Why a token did not authenticate (answered 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The cluster does not know the token.
    #[error("invalid bearer token{}", if .0.is_empty() { String::new() } else { format!(": {}", .0) })]
    Refused(String),
    /// The review could not be made.
    #[error("token review failed: {0}")]
    Failed(String),
}

/// The cluster's answer about one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reviewed {
    User(UserInfo),
    /// Not authenticated, with the review's error if any.
    Refused(String),
}

/// Sends a token review (a trait so tests run without a cluster).
pub trait TokenReviewer: Send + Sync {
    fn review(&self, token: &str) -> BoxFuture<'_, Result<Reviewed, String>>;
}

/// A [`TokenReviewer`] that creates the review in a cluster.
pub struct KubeTokenReviewer {
    api: kube::Api<TokenReview>,
}

impl KubeTokenReviewer {
    pub fn new(client: kube::Client) -> Self {
        Self {
            api: kube::Api::all(client),
        }
    }
}

/// The user a review's status names (`None`: not authenticated).
pub fn reviewed(status: Option<TokenReviewStatus>) -> Reviewed {
    let status = status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Reviewed::Refused(status.error.unwrap_or_default());
    }
    let user = status.user.unwrap_or_default();
    let mut groups = user.groups.unwrap_or_default();
    if !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".into());
    }
    match user.username.filter(|u| !u.is_empty()) {
        Some(name) => Reviewed::User(UserInfo {
            name,
            groups,
            extra: user.extra.unwrap_or_default(),
        }),
        None => Reviewed::Refused("the review named no user".into()),
    }
}

impl TokenReviewer for KubeTokenReviewer {
    fn review(&self, token: &str) -> BoxFuture<'_, Result<Reviewed, String>> {
        let review = TokenReview {
            metadata: Default::default(),
            spec: TokenReviewSpec {
                audiences: None,
                token: Some(token.to_string()),
            },
            status: None,
        };
        Box::pin(async move {
            let params = kube::api::PostParams::default();
            let created = crate::webhook_retry::with_retries("TokenReview", || {
                self.api.create(&params, &review)
            })
            .await?;
            Ok(reviewed(created.status))
        })
    }
}

/// The token of an `Authorization: Bearer <token>` header (kube's bearertoken
/// authenticator: scheme case-insensitive, the token the next space-separated field).
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let mut parts = v.trim().splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// See the module docs.
pub struct TokenAuthenticator {
    reviewer: Arc<dyn TokenReviewer>,
    ttl: Duration,
    cache: TtlCache<[u8; 32], Reviewed, String>,
}

impl TokenAuthenticator {
    pub fn new(reviewer: Arc<dyn TokenReviewer>, ttl: Duration, capacity: usize) -> Self {
        Self {
            reviewer,
            ttl,
            cache: TtlCache::new(capacity),
        }
    }

    pub fn stats(&self) -> Stats {
        self.cache.stats()
    }

    /// The user `token` names, from the cache or a review.
    pub async fn authenticate(&self, token: &str) -> Result<UserInfo, TokenError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let ttl = self.ttl;
        let r = self
            .cache
            .get_or_fetch(&key, |_| ttl, || self.reviewer.review(token))
            .await;
        match r {
            Ok(Reviewed::User(u)) => Ok(u),
            Ok(Reviewed::Refused(e)) => {
                tracing::debug!(token_sha256 = %short(&key), error = %e, "bearer token refused");
                Err(TokenError::Refused(e))
            }
            Err(e) => {
                tracing::warn!(token_sha256 = %short(&key), error = %e, "TokenReview failed");
                Err(TokenError::Failed(e))
            }
        }
    }
}

/// The first bytes of a token's hash, to tell tokens apart in logs.
fn short(key: &[u8; 32]) -> String {
    key[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    struct Fake {
        calls: Mutex<Vec<String>>,
        answer: Mutex<Result<Reviewed, String>>,
    }

    impl TokenReviewer for Fake {
        fn review(&self, token: &str) -> BoxFuture<'_, Result<Reviewed, String>> {
            self.calls.lock().unwrap().push(token.to_string());
            let a = self.answer.lock().unwrap().clone();
            Box::pin(async move { a })
        }
    }

    fn sa() -> UserInfo {
        UserInfo {
            name: "system:serviceaccount:team-a:bot".into(),
            groups: vec![
                "system:serviceaccounts".into(),
                "system:authenticated".into(),
            ],
            extra: BTreeMap::new(),
        }
    }

    fn fake(answer: Result<Reviewed, String>) -> Arc<Fake> {
        Arc::new(Fake {
            calls: Mutex::new(vec![]),
            answer: Mutex::new(answer),
        })
    }

    #[test]
    fn bearer_tokens_are_read_as_kube_reads_them() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(http::header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        assert_eq!(bearer(&h("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("Bearer abc extra")), Some("abc"));
        assert_eq!(bearer(&h("Basic abc")), None);
        assert_eq!(bearer(&h("Bearer")), None);
        assert_eq!(bearer(&http::HeaderMap::new()), None);
    }

    #[test]
    fn review_statuses_become_users_or_refusals() {
        use k8s_openapi::api::authentication::v1::UserInfo as KubeUser;
        let ok = reviewed(Some(TokenReviewStatus {
            authenticated: Some(true),
            user: Some(KubeUser {
                username: Some("system:serviceaccount:team-a:bot".into()),
                groups: Some(vec!["system:serviceaccounts".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }));
        assert_eq!(ok, Reviewed::User(sa()));
        assert_eq!(
            reviewed(Some(TokenReviewStatus {
                authenticated: Some(false),
                error: Some("token expired".into()),
                ..Default::default()
            })),
            Reviewed::Refused("token expired".into())
        );
        assert_eq!(reviewed(None), Reviewed::Refused(String::new()));
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_cached_for_the_ttl_and_failures_are_not() {
        let f = fake(Ok(Reviewed::User(sa())));
        let t = TokenAuthenticator::new(f.clone(), Duration::from_secs(10), 100);
        assert_eq!(t.authenticate("tok").await, Ok(sa()));
        assert_eq!(t.authenticate("tok").await, Ok(sa()));
        assert_eq!(f.calls.lock().unwrap().len(), 1);
        tokio::time::advance(Duration::from_secs(11)).await;
        *f.answer.lock().unwrap() = Ok(Reviewed::Refused("revoked".into()));
        assert_eq!(
            t.authenticate("tok").await,
            Err(TokenError::Refused("revoked".into()))
        );
        // Refusals are cached too.
        t.authenticate("tok").await.unwrap_err();
        assert_eq!(f.calls.lock().unwrap().len(), 2);
        // A failed review is not.
        *f.answer.lock().unwrap() = Err("connection refused".into());
        assert_eq!(
            t.authenticate("other").await,
            Err(TokenError::Failed("connection refused".into()))
        );
        *f.answer.lock().unwrap() = Ok(Reviewed::User(sa()));
        assert_eq!(t.authenticate("other").await, Ok(sa()));
        assert_eq!(f.calls.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let f = fake(Ok(Reviewed::User(sa())));
        let t = TokenAuthenticator::new(f, Duration::from_secs(10), 8);
        for i in 0..40 {
            t.authenticate(&format!("t{i}")).await.unwrap();
        }
        assert_eq!(t.stats().evictions, 32);
    }
}
