//! Who may reach an actor over HTTP: an atespace's `spec.httpAccess.policy`.
//!
//! `Open` (the default): anyone who reaches the router; nothing is checked and the request is
//! forwarded as it came. `Authorized`: before the actor is looked up, resumed or forwarded to,
//!
//! 1. the request must carry `Authorization: Bearer <token>` (read as kube reads it: the
//!    scheme case-insensitive, the token the next space-separated field); else `401` with
//!    `WWW-Authenticate: Bearer realm="substrate"`;
//! 2. the token is authenticated by a `TokenReview` (`authentication.k8s.io/v1`) sent to the
//!    apiserver; not authenticated: `401`;
//! 3. the user (name, uid, groups, extra from the review) must be allowed the request's verb
//!    ([`verb`]: as kube-apiserver maps the method of a `pods/proxy` request) on
//!    `actors/proxy` of that actor in that atespace, by a `SubjectAccessReview`; else `403`;
//! 4. a review that could not be made (apiserver unreachable, refused the review, timed out):
//!    `503`.
//!
//! A refused request never wakes the actor. An admitted request is forwarded without its
//! `Authorization` header (kube-apiserver's proxy does not pass the caller's credentials on
//! either). Answers are cached, each for its TTL (`--access-token-cache-ttl`,
//! `--access-decision-cache-ttl`, 10 s by default), bounded, concurrent misses coalesced:
//! token reviews by the token's SHA-256 (the token is neither stored nor logged), decisions
//! by (user, groups, verb, atespace, actor). A failed review is not cached.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response};
use k8s_openapi::api::authentication::v1 as authnv1;
use k8s_openapi::api::authorization::v1 as authzv1;
use sha2::{Digest, Sha256};

use crate::host::ActorKey;
use crate::proxy::{ProxyBody, text};
use ttl_cache::TtlCache;

/// The `WWW-Authenticate` challenge of a `401`.
pub const CHALLENGE: &str = "Bearer realm=\"substrate\"";
/// Default bound on each cache.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Default TTL of each cache.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// How long one review may take before the request is answered `503`.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// The verb a request is authorized as: kube-apiserver's `RequestInfo` for a resource request
/// (`pods/proxy` included): `GET`/`HEAD` get, `POST` create, `PUT` update, `PATCH` patch,
/// `DELETE` delete, any other method its name in lower case (`options`, `connect`, ...).
pub fn verb(method: &Method) -> Cow<'static, str> {
    Cow::Borrowed(match *method {
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => return Cow::Owned(method.as_str().to_ascii_lowercase()),
    })
}

/// The token of an `Authorization: Bearer <token>` header (kube's bearertoken authenticator).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let mut parts = v.trim().splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A user as a `TokenReview` names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// A `TokenReview`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reviewed {
    User(User),
    /// Not authenticated (with the review's `status.error`, if any).
    Refused(String),
}

/// Why a request was refused. Each maps to one HTTP answer ([`Denial::response`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No `Authorization: Bearer` header, or a malformed one.
    NoToken,
    /// The token review did not authenticate the token.
    Unauthenticated,
    /// The user may not use `verb` on `actors/proxy` of the actor.
    Forbidden { user: String, verb: String },
    /// A review could not be made.
    Unavailable { review: &'static str, error: String },
}

impl Denial {
    /// Metric label (`substrate_router_access_denials_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoToken => "no_token",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden { .. } => "forbidden",
            Self::Unavailable { .. } => "unavailable",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::NoToken | Self::Unauthenticated => 401,
            Self::Forbidden { .. } => 403,
            Self::Unavailable { .. } => 503,
        }
    }

    /// The plain-text message naming the actor.
    pub fn message(&self, key: &ActorKey) -> String {
        match self {
            Self::NoToken => format!(
                "actor {key}: atespace {:?} requires an Authorization: Bearer token",
                key.atespace
            ),
            Self::Unauthenticated => {
                format!("actor {key}: the bearer token is not valid (Unauthorized)")
            }
            Self::Forbidden { user, verb } => format!(
                "User {user:?} cannot {verb} actors/proxy {:?} in atespace {:?}",
                key.name, key.atespace
            ),
            Self::Unavailable { review, error } => format!(
                "actor {key}: the request could not be authorized: {review} failed ({error})"
            ),
        }
    }

    /// The router's answer.
    pub fn response(&self, key: &ActorKey) -> Response<ProxyBody> {
        let mut r = text(self.status(), self.message(key));
        if self.status() == 401 {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(CHALLENGE),
            );
        }
        r
    }
}

/// Sends the reviews (a trait so tests run without an apiserver).
pub trait Reviewer: Send + Sync {
    fn token_review(&self, token: &str) -> BoxFuture<'_, Result<Reviewed, String>>;
    /// Whether `user` may `verb` `actors/proxy` of `key`.
    fn access_review<'a>(
        &'a self,
        user: &'a User,
        verb: &'a str,
        key: &'a ActorKey,
    ) -> BoxFuture<'a, Result<bool, String>>;
}

/// A [`Reviewer`] that creates the reviews on the apiserver.
pub struct KubeReviewer {
    tokens: kube::Api<authnv1::TokenReview>,
    access: kube::Api<authzv1::SubjectAccessReview>,
}

impl KubeReviewer {
    pub fn new(client: kube::Client) -> Self {
        Self {
            tokens: kube::Api::all(client.clone()),
            access: kube::Api::all(client),
        }
    }
}

/// The user a review's status names.
pub fn reviewed(status: Option<authnv1::TokenReviewStatus>) -> Reviewed {
    let status = status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Reviewed::Refused(status.error.unwrap_or_default());
    }
    let user = status.user.unwrap_or_default();
    match user.username.filter(|u| !u.is_empty()) {
        Some(name) => Reviewed::User(User {
            name,
            uid: user.uid.unwrap_or_default(),
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        }),
        None => Reviewed::Refused("the review named no user".into()),
    }
}

/// The `SubjectAccessReview` asking whether `user` may `verb` `actors/proxy` of `key`.
pub fn access_review(user: &User, verb: &str, key: &ActorKey) -> authzv1::SubjectAccessReview {
    let some = |s: &str| Some(s.to_string());
    authzv1::SubjectAccessReview {
        metadata: Default::default(),
        spec: authzv1::SubjectAccessReviewSpec {
            user: some(&user.name),
            uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
            groups: (!user.groups.is_empty()).then(|| user.groups.clone()),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            resource_attributes: Some(authzv1::ResourceAttributes {
                namespace: some(&key.atespace),
                verb: some(verb),
                group: some(crds::SUBSTRATE_GROUP),
                version: some("v1alpha1"),
                resource: some("actors"),
                subresource: some(crds::substrate::PROXY_SUBRESOURCE),
                name: some(&key.name),
                ..Default::default()
            }),
            non_resource_attributes: None,
        },
        status: None,
    }
}

impl Reviewer for KubeReviewer {
    fn token_review(&self, token: &str) -> BoxFuture<'_, Result<Reviewed, String>> {
        let review = authnv1::TokenReview {
            metadata: Default::default(),
            spec: authnv1::TokenReviewSpec {
                audiences: None,
                token: Some(token.to_string()),
            },
            status: None,
        };
        Box::pin(async move {
            let created = self
                .tokens
                .create(&Default::default(), &review)
                .await
                .map_err(|e| e.to_string())?;
            Ok(reviewed(created.status))
        })
    }

    fn access_review<'a>(
        &'a self,
        user: &'a User,
        verb: &'a str,
        key: &'a ActorKey,
    ) -> BoxFuture<'a, Result<bool, String>> {
        let review = access_review(user, verb, key);
        Box::pin(async move {
            let created = self
                .access
                .create(&Default::default(), &review)
                .await
                .map_err(|e| e.to_string())?;
            let st = created.status.unwrap_or_default();
            match st.evaluation_error.filter(|e| !e.is_empty()) {
                Some(e) if !st.allowed => Err(format!("evaluation error: {e}")),
                _ => Ok(st.allowed),
            }
        })
    }
}

/// A decision's cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DecisionKey {
    user: String,
    groups: Vec<String>,
    verb: String,
    atespace: String,
    actor: String,
}

/// The checks of `Authorized` atespaces (see the module docs).
pub struct Access {
    reviewer: Arc<dyn Reviewer>,
    token_ttl: Duration,
    decision_ttl: Duration,
    tokens: TtlCache<[u8; 32], Reviewed, String>,
    decisions: TtlCache<DecisionKey, bool, String>,
}

impl Access {
    pub fn new(
        reviewer: Arc<dyn Reviewer>,
        token_ttl: Duration,
        decision_ttl: Duration,
        capacity: usize,
    ) -> Self {
        Self {
            reviewer,
            token_ttl,
            decision_ttl,
            tokens: TtlCache::new(capacity),
            decisions: TtlCache::new(capacity),
        }
    }

    /// Whether a request for `key` with `method` and `headers` may reach the actor; the user
    /// when it may.
    pub async fn check(
        &self,
        key: &ActorKey,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<User, Denial> {
        let Some(token) = bearer(headers) else {
            return Err(Denial::NoToken);
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let ttl = self.token_ttl;
        let reviewed = self
            .tokens
            .get_or_fetch(
                &digest,
                |_| ttl,
                || timed("TokenReview", self.reviewer.token_review(token)),
            )
            .await
            .map_err(|error| Denial::Unavailable {
                review: "TokenReview",
                error,
            })?;
        let user = match reviewed {
            Reviewed::User(u) => u,
            Reviewed::Refused(e) => {
                tracing::debug!(atespace = %key.atespace, actor = %key.name, token_sha256 = %short(&digest), error = %e, "bearer token refused");
                return Err(Denial::Unauthenticated);
            }
        };
        let verb = verb(method);
        let dk = DecisionKey {
            user: user.name.clone(),
            groups: user.groups.clone(),
            verb: verb.to_string(),
            atespace: key.atespace.clone(),
            actor: key.name.clone(),
        };
        let ttl = self.decision_ttl;
        let allowed = self
            .decisions
            .get_or_fetch(
                &dk,
                |_| ttl,
                || {
                    timed(
                        "SubjectAccessReview",
                        self.reviewer.access_review(&user, &verb, key),
                    )
                },
            )
            .await
            .map_err(|error| Denial::Unavailable {
                review: "SubjectAccessReview",
                error,
            })?;
        if !allowed {
            return Err(Denial::Forbidden {
                user: user.name,
                verb: verb.into_owned(),
            });
        }
        Ok(user)
    }
}

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    match tokio::time::timeout(REVIEW_TIMEOUT, f).await {
        Ok(r) => r.inspect_err(|e| tracing::warn!(review = what, error = %e, "review failed")),
        Err(_) => {
            tracing::warn!(review = what, timeout = ?REVIEW_TIMEOUT, "review timed out");
            Err(format!("no answer within {REVIEW_TIMEOUT:?}"))
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
    use std::sync::Mutex;

    #[test]
    fn methods_map_to_kubes_verbs() {
        let v = |m: &str| verb(&Method::from_bytes(m.as_bytes()).unwrap()).into_owned();
        assert_eq!(v("GET"), "get");
        assert_eq!(v("HEAD"), "get");
        assert_eq!(v("POST"), "create");
        assert_eq!(v("PUT"), "update");
        assert_eq!(v("PATCH"), "patch");
        assert_eq!(v("DELETE"), "delete");
        assert_eq!(v("OPTIONS"), "options");
        assert_eq!(v("CONNECT"), "connect");
        assert_eq!(v("PROPFIND"), "propfind");
    }

    #[test]
    fn bearer_tokens_are_read_as_kube_reads_them() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        assert_eq!(bearer(&h("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("  Bearer abc  ")), Some("abc"));
        assert_eq!(bearer(&h("Bearer abc extra")), Some("abc"));
        assert_eq!(bearer(&h("Basic YWxpY2U6cHc=")), None);
        assert_eq!(bearer(&h("Bearer")), None);
        assert_eq!(bearer(&h("Bearer  abc")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn denials_map_to_answers_naming_the_actor() {
        let k = ActorKey::new("team-a", "counter");
        let r = Denial::NoToken.response(&k);
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"substrate\""
        );
        assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(
            Denial::NoToken.message(&k),
            "actor team-a/counter: atespace \"team-a\" requires an Authorization: Bearer token"
        );
        let r = Denial::Unauthenticated.response(&k);
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"substrate\""
        );
        let f = Denial::Forbidden {
            user: "bob".into(),
            verb: "create".into(),
        };
        assert_eq!(f.response(&k).status(), 403);
        assert!(!f.response(&k).headers().contains_key("www-authenticate"));
        assert_eq!(
            f.message(&k),
            "User \"bob\" cannot create actors/proxy \"counter\" in atespace \"team-a\""
        );
        let u = Denial::Unavailable {
            review: "TokenReview",
            error: "connection refused".into(),
        };
        assert_eq!(u.response(&k).status(), 503);
        assert_eq!(u.reason(), "unavailable");
    }

    #[test]
    fn the_access_review_asks_about_actors_proxy_of_the_actor() {
        let u = User {
            name: "alice".into(),
            uid: "1".into(),
            groups: vec!["team-a".into(), "system:authenticated".into()],
            extra: BTreeMap::new(),
        };
        let r = access_review(&u, "get", &ActorKey::new("team-a", "counter"));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v["spec"],
            serde_json::json!({"user": "alice", "uid": "1", "groups": ["team-a", "system:authenticated"],
                "resourceAttributes": {"namespace": "team-a", "verb": "get", "group": "substrate.ate.dev",
                    "version": "v1alpha1", "resource": "actors", "subresource": "proxy", "name": "counter"}})
        );
    }

    /// `alice-token` is alice, allowed `get` in team-a; `bob-token` is bob, allowed nothing;
    /// `down` fails the token review.
    #[derive(Default)]
    struct Fake {
        token_calls: Mutex<u32>,
        access_calls: Mutex<u32>,
        sar_down: Mutex<bool>,
    }

    impl Reviewer for Fake {
        fn token_review(&self, token: &str) -> BoxFuture<'_, Result<Reviewed, String>> {
            *self.token_calls.lock().unwrap() += 1;
            let user = |n: &str| {
                Ok(Reviewed::User(User {
                    name: n.into(),
                    uid: String::new(),
                    groups: vec!["system:authenticated".into()],
                    extra: BTreeMap::new(),
                }))
            };
            let r = match token {
                "alice-token" => user("alice"),
                "bob-token" => user("bob"),
                "down" => Err("connection refused".into()),
                _ => Ok(Reviewed::Refused("unknown".into())),
            };
            Box::pin(async move {
                tokio::task::yield_now().await;
                r
            })
        }

        fn access_review<'a>(
            &'a self,
            user: &'a User,
            verb: &'a str,
            key: &'a ActorKey,
        ) -> BoxFuture<'a, Result<bool, String>> {
            *self.access_calls.lock().unwrap() += 1;
            let r = if *self.sar_down.lock().unwrap() {
                Err("503 Service Unavailable".into())
            } else {
                Ok(user.name == "alice" && verb == "get" && key.atespace == "team-a")
            };
            Box::pin(async move { r })
        }
    }

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[tokio::test(start_paused = true)]
    async fn the_checks_run_in_order_and_answers_are_cached_for_their_ttl() {
        let fake = Arc::new(Fake::default());
        let access = Access::new(fake.clone(), DEFAULT_TTL, DEFAULT_TTL, 100);
        let k = ActorKey::new("team-a", "counter");
        let get = Method::GET;
        // No token: no review at all.
        assert_eq!(
            access.check(&k, &get, &headers(None)).await,
            Err(Denial::NoToken)
        );
        assert_eq!(
            access.check(&k, &get, &headers(Some("Basic x"))).await,
            Err(Denial::NoToken)
        );
        assert_eq!(*fake.token_calls.lock().unwrap(), 0);
        // A refused token: no access review.
        assert_eq!(
            access.check(&k, &get, &headers(Some("Bearer nope"))).await,
            Err(Denial::Unauthenticated)
        );
        assert_eq!(*fake.access_calls.lock().unwrap(), 0);
        let alice = headers(Some("Bearer alice-token"));
        assert_eq!(access.check(&k, &get, &alice).await.unwrap().name, "alice");
        assert_eq!(
            access.check(&k, &Method::POST, &alice).await,
            Err(Denial::Forbidden {
                user: "alice".into(),
                verb: "create".into()
            })
        );
        assert_eq!(
            access
                .check(&k, &get, &headers(Some("Bearer bob-token")))
                .await,
            Err(Denial::Forbidden {
                user: "bob".into(),
                verb: "get".into()
            })
        );
        // Cached: the same questions again cost nothing.
        let (t, a) = (
            *fake.token_calls.lock().unwrap(),
            *fake.access_calls.lock().unwrap(),
        );
        assert_eq!((t, a), (3, 3));
        access.check(&k, &get, &alice).await.unwrap();
        access.check(&k, &Method::HEAD, &alice).await.unwrap();
        assert_eq!(*fake.token_calls.lock().unwrap(), 3);
        assert_eq!(*fake.access_calls.lock().unwrap(), 3);
        // Another actor: another decision, the same token review.
        let other = ActorKey::new("team-a", "other");
        access.check(&other, &get, &alice).await.unwrap();
        assert_eq!(*fake.token_calls.lock().unwrap(), 3);
        assert_eq!(*fake.access_calls.lock().unwrap(), 4);
        // After the TTL both are asked again.
        tokio::time::advance(DEFAULT_TTL + Duration::from_secs(1)).await;
        access.check(&k, &get, &alice).await.unwrap();
        assert_eq!(*fake.token_calls.lock().unwrap(), 4);
        assert_eq!(*fake.access_calls.lock().unwrap(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_reviews_are_unavailable_and_not_cached() {
        let fake = Arc::new(Fake::default());
        let access = Access::new(fake.clone(), DEFAULT_TTL, DEFAULT_TTL, 100);
        let k = ActorKey::new("team-a", "counter");
        let d = access
            .check(&k, &Method::GET, &headers(Some("Bearer down")))
            .await
            .unwrap_err();
        assert_eq!(
            d,
            Denial::Unavailable {
                review: "TokenReview",
                error: "connection refused".into()
            }
        );
        access
            .check(&k, &Method::GET, &headers(Some("Bearer down")))
            .await
            .unwrap_err();
        assert_eq!(*fake.token_calls.lock().unwrap(), 2);
        *fake.sar_down.lock().unwrap() = true;
        let alice = headers(Some("Bearer alice-token"));
        let d = access.check(&k, &Method::GET, &alice).await.unwrap_err();
        assert_eq!(d.status(), 503);
        assert!(
            d.message(&k)
                .contains("SubjectAccessReview failed (503 Service Unavailable)"),
            "{}",
            d.message(&k)
        );
        *fake.sar_down.lock().unwrap() = false;
        access.check(&k, &Method::GET, &alice).await.unwrap();
    }

    #[tokio::test]
    async fn concurrent_misses_ask_once() {
        let fake = Arc::new(Fake::default());
        let access = Arc::new(Access::new(fake.clone(), DEFAULT_TTL, DEFAULT_TTL, 100));
        let k = ActorKey::new("team-a", "counter");
        let alice = headers(Some("Bearer alice-token"));
        let all = (0..8).map(|_| access.check(&k, &Method::GET, &alice));
        for r in futures::future::join_all(all).await {
            assert_eq!(r.unwrap().name, "alice");
        }
        assert_eq!(*fake.token_calls.lock().unwrap(), 1);
        assert_eq!(*fake.access_calls.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn the_caches_are_bounded() {
        let fake = Arc::new(Fake::default());
        let access = Access::new(fake, DEFAULT_TTL, DEFAULT_TTL, 4);
        for i in 0..20 {
            let k = ActorKey::new("team-a", format!("a{i}"));
            let _ = access
                .check(&k, &Method::GET, &headers(Some(&format!("Bearer t{i}"))))
                .await;
            let _ = access
                .check(&k, &Method::GET, &headers(Some("Bearer alice-token")))
                .await;
        }
        assert!(access.tokens.len() <= 4);
        assert!(access.decisions.len() <= 4);
        assert!(access.decisions.stats().evictions >= 16);
    }
}
