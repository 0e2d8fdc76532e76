//! A decision cache in front of any [`Authorizer`], as kube's webhook authorizer keeps one:
//! allowed answers for `--authorization-webhook-cache-authorized-ttl`, denied and no-opinion
//! answers for `--authorization-webhook-cache-unauthorized-ttl`, errors never. Keyed by every
//! attribute (user, groups, extra, verb, group, version, resource, subresource, namespace,
//! name, path); bounded; concurrent identical misses make one review
//! ([`ttl_cache::TtlCache`]).

use std::sync::Arc;
use std::time::Duration;

use super::{Answer, AnswerFuture, Attributes, Authorizer, AuthzError, Decision};
use ttl_cache::{Stats, TtlCache};

/// Default bound on cached decisions.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// How long decisions are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    pub authorized: Duration,
    pub unauthorized: Duration,
}

impl Default for Ttls {
    /// kube's defaults for delegated authorization (10 s each).
    fn default() -> Self {
        Self {
            authorized: Duration::from_secs(10),
            unauthorized: Duration::from_secs(10),
        }
    }
}

/// See the module docs.
pub struct CachedAuthorizer {
    inner: Arc<dyn Authorizer>,
    ttls: Ttls,
    cache: TtlCache<Attributes, Answer, AuthzError>,
}

impl CachedAuthorizer {
    pub fn new(inner: Arc<dyn Authorizer>, ttls: Ttls, capacity: usize) -> Self {
        Self {
            inner,
            ttls,
            cache: TtlCache::new(capacity),
        }
    }

    /// Hits, misses, coalesced misses and evictions so far.
    pub fn stats(&self) -> Stats {
        self.cache.stats()
    }

    /// Decisions stored.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

impl Authorizer for CachedAuthorizer {
    fn authorize<'a>(&'a self, attrs: &'a Attributes) -> AnswerFuture<'a> {
        let ttls = self.ttls;
        Box::pin(async move {
            self.cache
                .get_or_fetch(
                    attrs,
                    |a: &Answer| match a.decision {
                        Decision::Allow => ttls.authorized,
                        Decision::Deny | Decision::NoOpinion => ttls.unauthorized,
                    },
                    || self.inner.authorize(attrs),
                )
                .await
        })
    }

    /// Rules are not cached: a rules review is rare and must reflect the current policy.
    fn rules_for<'a>(
        &'a self,
        user: &'a crate::auth::UserInfo,
        namespace: &'a str,
    ) -> crate::authz::RulesFuture<'a> {
        self.inner.rules_for(user, namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::UserInfo;
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers from a table, counting calls; can be held (to test coalescing) or failed.
    struct Fake {
        calls: AtomicUsize,
        answer: Mutex<Result<Answer, AuthzError>>,
        gate: tokio::sync::watch::Receiver<bool>,
    }

    impl Authorizer for Fake {
        fn authorize<'a>(&'a self, _: &'a Attributes) -> AnswerFuture<'a> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                let mut gate = self.gate.clone();
                let _ = gate.wait_for(|open| *open).await;
                self.answer.lock().unwrap().clone()
            })
        }
    }

    fn fake(answer: Result<Answer, AuthzError>) -> (Arc<Fake>, tokio::sync::watch::Sender<bool>) {
        let (tx, rx) = tokio::sync::watch::channel(true);
        (
            Arc::new(Fake {
                calls: AtomicUsize::new(0),
                answer: Mutex::new(answer),
                gate: rx,
            }),
            tx,
        )
    }

    fn alice() -> UserInfo {
        UserInfo {
            name: "alice".into(),
            groups: vec!["team-a".into(), "system:authenticated".into()],
            extra: BTreeMap::new(),
        }
    }

    fn get(user: &UserInfo, ns: &str, name: &str) -> Attributes {
        Attributes::resource(
            user,
            "get",
            "substrate.ate.dev",
            "v1",
            "actors",
            None,
            Some(ns),
            Some(name),
        )
    }

    fn ttls(allowed: u64, denied: u64) -> Ttls {
        Ttls {
            authorized: Duration::from_secs(allowed),
            unauthorized: Duration::from_secs(denied),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn allowed_and_denied_decisions_live_for_their_own_ttls() {
        let (allow, _g) = fake(Ok(Answer::allow("")));
        let cached = CachedAuthorizer::new(allow.clone(), ttls(10, 3), 100);
        let a = get(&alice(), "team-a", "x");
        for _ in 0..3 {
            assert!(cached.authorize(&a).await.unwrap().allowed());
        }
        assert_eq!(allow.calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(9)).await;
        cached.authorize(&a).await.unwrap();
        assert_eq!(allow.calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        cached.authorize(&a).await.unwrap();
        assert_eq!(allow.calls.load(Ordering::SeqCst), 2);

        let (deny, _g) = fake(Ok(Answer::deny("no")));
        let cached = CachedAuthorizer::new(deny.clone(), ttls(10, 3), 100);
        let d = cached.authorize(&a).await.unwrap();
        assert_eq!((d.decision, d.reason.as_str()), (Decision::Deny, "no"));
        tokio::time::advance(Duration::from_secs(2)).await;
        cached.authorize(&a).await.unwrap();
        assert_eq!(deny.calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        cached.authorize(&a).await.unwrap();
        assert_eq!(deny.calls.load(Ordering::SeqCst), 2);

        // No opinion is an unauthorized answer too.
        let (none, _g) = fake(Ok(Answer::no_opinion("")));
        let cached = CachedAuthorizer::new(none.clone(), ttls(10, 3), 100);
        cached.authorize(&a).await.unwrap();
        tokio::time::advance(Duration::from_secs(4)).await;
        cached.authorize(&a).await.unwrap();
        assert_eq!(none.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn every_attribute_is_part_of_the_key() {
        let (allow, _g) = fake(Ok(Answer::allow("")));
        let cached = CachedAuthorizer::new(allow.clone(), ttls(10, 10), 100);
        let base = get(&alice(), "team-a", "x");
        let mut variants = vec![base.clone()];
        let mut v = base.clone();
        v.user.name = "bob".into();
        variants.push(v);
        let mut v = base.clone();
        v.user.groups.push("admins".into());
        variants.push(v);
        let mut v = base.clone();
        v.user.extra.insert("scopes".into(), vec!["a".into()]);
        variants.push(v);
        let changes: [fn(&mut Attributes); 7] = [
            |a: &mut Attributes| a.verb = "delete".into(),
            |a: &mut Attributes| a.group = "ate.dev".into(),
            |a: &mut Attributes| a.version = "v2".into(),
            |a: &mut Attributes| a.resource = "workers".into(),
            |a: &mut Attributes| a.subresource = "status".into(),
            |a: &mut Attributes| a.namespace = "team-b".into(),
            |a: &mut Attributes| a.name = "y".into(),
        ];
        for change in changes {
            let mut v = base.clone();
            change(&mut v);
            variants.push(v);
        }
        variants.push(Attributes::non_resource(&alice(), "get", "/apis"));
        variants.push(Attributes::non_resource(&alice(), "get", "/api"));
        for v in &variants {
            cached.authorize(v).await.unwrap();
        }
        assert_eq!(allow.calls.load(Ordering::SeqCst), variants.len());
        for v in &variants {
            cached.authorize(v).await.unwrap();
        }
        assert_eq!(allow.calls.load(Ordering::SeqCst), variants.len());
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_is_bounded() {
        let (allow, _g) = fake(Ok(Answer::allow("")));
        let cached = CachedAuthorizer::new(allow.clone(), ttls(60, 60), 50);
        for i in 0..500 {
            cached
                .authorize(&get(&alice(), "team-a", &format!("a{i}")))
                .await
                .unwrap();
        }
        assert_eq!(cached.len(), 50);
        assert_eq!(cached.stats().evictions, 450);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_identical_misses_make_one_review() {
        let (allow, gate) = fake(Ok(Answer::allow("")));
        gate.send(false).unwrap();
        let cached = Arc::new(CachedAuthorizer::new(allow.clone(), ttls(10, 10), 100));
        let a = get(&alice(), "team-a", "x");
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let cached = cached.clone();
                let a = a.clone();
                tokio::spawn(async move { cached.authorize(&a).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(5)).await;
        gate.send(true).unwrap();
        for t in tasks {
            assert!(t.await.unwrap().unwrap().allowed());
        }
        assert_eq!(allow.calls.load(Ordering::SeqCst), 1);
        assert_eq!(cached.stats().coalesced, 15);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_review_is_not_cached() {
        let (flaky, _g) = fake(Err(AuthzError("connection refused".into())));
        let cached = CachedAuthorizer::new(flaky.clone(), ttls(10, 10), 100);
        let a = get(&alice(), "team-a", "x");
        assert_eq!(
            cached.authorize(&a).await.unwrap_err().0,
            "connection refused"
        );
        *flaky.answer.lock().unwrap() = Ok(Answer::allow(""));
        assert!(cached.authorize(&a).await.unwrap().allowed());
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 2);
    }
}
