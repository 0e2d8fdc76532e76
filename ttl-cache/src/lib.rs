//! A bounded cache of answers with a time to live per entry, where concurrent misses for the
//! same key wait for one fetch (kube's `singleflight` in front of its webhook caches).
//!
//! Used by the apiserver for authorization decisions (`apiserver::authz::cache`) and token
//! reviews (`apiserver::auth::token`), and by the router for its access checks
//! (`router::access`). Time is `tokio::time::Instant`, so tests run it with paused time.
//! When full, an expired entry is dropped if one is found quickly, else an arbitrary one (the
//! first in the hash map's order: random with respect to keys): no bookkeeping per hit.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How many entries an eviction looks at for an expired one before taking any.
const EVICTION_PROBE: usize = 16;

enum Slot<V, E> {
    Ready {
        value: V,
        expires: Instant,
    },
    /// A fetch in flight: its id and where its result is published.
    Pending {
        id: u64,
        result: watch::Receiver<Option<Result<V, E>>>,
    },
}

/// What a caller does after looking at the map (the lock is not held across an await).
enum Step<V, E> {
    Wait(watch::Receiver<Option<Result<V, E>>>),
    Fetch(watch::Sender<Option<Result<V, E>>>, u64),
}

/// Counters (for metrics and tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
    /// Callers that waited for another caller's fetch.
    pub coalesced: u64,
    pub evictions: u64,
}

/// See the module docs.
pub struct TtlCache<K, V, E> {
    slots: Mutex<HashMap<K, Slot<V, E>>>,
    capacity: usize,
    next_id: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    coalesced: AtomicU64,
    evictions: AtomicU64,
}

/// Removes a pending slot when its fetch is dropped before finishing (the caller went away),
/// so the next caller fetches again instead of waiting forever.
struct PendingGuard<'a, K: Hash + Eq + Clone, V: Clone, E: Clone> {
    cache: &'a TtlCache<K, V, E>,
    key: K,
    id: u64,
    armed: bool,
}

impl<K: Hash + Eq + Clone, V: Clone, E: Clone> Drop for PendingGuard<'_, K, V, E> {
    fn drop(&mut self) {
        if self.armed {
            let mut slots = self.cache.lock();
            if matches!(slots.get(&self.key), Some(Slot::Pending { id, .. }) if *id == self.id) {
                slots.remove(&self.key);
            }
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone, E: Clone> TtlCache<K, V, E> {
    /// A cache of at most `capacity` answers (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            next_id: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Slot<V, E>>> {
        // A panic while holding the lock leaves the map consistent (every change is one
        // insert or remove), so a poisoned lock is used as is.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers stored (pending fetches excluded).
    pub fn len(&self) -> usize {
        self.lock()
            .values()
            .filter(|s| matches!(s, Slot::Ready { .. }))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> Stats {
        Stats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            coalesced: self.coalesced.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    /// The cached answer for `key`, or the answer of `fetch` (run once however many callers
    /// miss the same key at the same time), stored for `ttl(&answer)` (zero: not stored).
    /// Errors are handed to every waiting caller and not stored.
    pub async fn get_or_fetch<F, Fut>(
        &self,
        key: &K,
        ttl: impl Fn(&V) -> Duration,
        fetch: F,
    ) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let mut fetch = Some(fetch);
        loop {
            let step = {
                let mut slots = self.lock();
                match slots.get(key) {
                    Some(Slot::Ready { value, expires }) if *expires > Instant::now() => {
                        self.hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(value.clone());
                    }
                    Some(Slot::Pending { result, .. }) => Step::Wait(result.clone()),
                    _ => {
                        let (tx, rx) = watch::channel(None);
                        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                        if !slots.contains_key(key) && slots.len() >= self.capacity {
                            self.evict(&mut slots);
                        }
                        slots.insert(key.clone(), Slot::Pending { id, result: rx });
                        Step::Fetch(tx, id)
                    }
                }
            };
            let (tx, id) = match step {
                Step::Wait(mut rx) => {
                    self.coalesced.fetch_add(1, Ordering::Relaxed);
                    // A closed channel without a result: the fetching caller went away; loop
                    // and fetch (or wait for whoever does) again.
                    if let Ok(r) = rx.wait_for(Option::is_some).await
                        && let Some(r) = r.as_ref()
                    {
                        return r.clone();
                    }
                    continue;
                }
                Step::Fetch(tx, id) => (tx, id),
            };
            self.misses.fetch_add(1, Ordering::Relaxed);
            let mut guard = PendingGuard {
                cache: self,
                key: key.clone(),
                id,
                armed: true,
            };
            let Some(fetch) = fetch.take() else {
                // Unreachable: the loop only comes back here after waiting, never after
                // fetching.
                continue;
            };
            let result = fetch().await;
            guard.armed = false;
            {
                let mut slots = self.lock();
                let ours = matches!(slots.get(key), Some(Slot::Pending { id: p, .. }) if *p == id);
                match &result {
                    Ok(value) => {
                        let ttl = ttl(value);
                        if ours && !ttl.is_zero() {
                            slots.insert(
                                key.clone(),
                                Slot::Ready {
                                    value: value.clone(),
                                    expires: Instant::now() + ttl,
                                },
                            );
                        } else if ours {
                            slots.remove(key);
                        }
                    }
                    Err(_) if ours => {
                        slots.remove(key);
                    }
                    Err(_) => {}
                }
            }
            let _ = tx.send(Some(result.clone()));
            return result;
        }
    }

    /// Drops one stored answer: an expired one among the first few looked at, else the first.
    fn evict(&self, slots: &mut HashMap<K, Slot<V, E>>) {
        let now = Instant::now();
        let mut victim: Option<K> = None;
        for (k, s) in slots.iter().take(EVICTION_PROBE) {
            if let Slot::Ready { expires, .. } = s {
                if *expires <= now {
                    victim = Some(k.clone());
                    break;
                }
                if victim.is_none() {
                    victim = Some(k.clone());
                }
            }
        }
        if victim.is_none() {
            victim = slots
                .iter()
                .find(|(_, s)| matches!(s, Slot::Ready { .. }))
                .map(|(k, _)| k.clone());
        }
        if let Some(k) = victim {
            slots.remove(&k);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    type Cache = TtlCache<String, u32, String>;

    fn secs(s: u64) -> impl Fn(&u32) -> Duration {
        move |_| Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_kept_for_their_ttl_and_fetched_again_after() {
        let cache = Cache::new(10);
        let calls = AtomicUsize::new(0);
        let fetch = || async { Ok::<_, String>(calls.fetch_add(1, Ordering::SeqCst) as u32) };
        assert_eq!(
            cache.get_or_fetch(&"a".into(), secs(10), fetch).await,
            Ok(0)
        );
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(
            cache.get_or_fetch(&"a".into(), secs(10), fetch).await,
            Ok(0)
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            cache.get_or_fetch(&"a".into(), secs(10), fetch).await,
            Ok(1)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let s = cache.stats();
        assert_eq!((s.hits, s.misses), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_ttl_depends_on_the_answer_and_zero_is_not_stored() {
        let cache = Cache::new(10);
        let ttl = |v: &u32| Duration::from_secs(if *v == 1 { 30 } else { 0 });
        let n = AtomicUsize::new(0);
        let fetch = || async { Ok::<_, String>(n.fetch_add(1, Ordering::SeqCst) as u32) };
        assert_eq!(cache.get_or_fetch(&"k".into(), ttl, fetch).await, Ok(0));
        assert!(cache.is_empty());
        assert_eq!(cache.get_or_fetch(&"k".into(), ttl, fetch).await, Ok(1));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get_or_fetch(&"k".into(), ttl, fetch).await, Ok(1));
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_not_stored() {
        let cache = Cache::new(10);
        let r = cache
            .get_or_fetch(&"k".into(), secs(10), || async { Err("down".to_string()) })
            .await;
        assert_eq!(r, Err("down".to_string()));
        assert!(cache.is_empty());
        let r = cache
            .get_or_fetch(&"k".into(), secs(10), || async { Ok(7) })
            .await;
        assert_eq!(r, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_holds_at_most_its_capacity_preferring_to_drop_expired_answers() {
        let cache = Cache::new(3);
        for k in ["a", "b"] {
            cache
                .get_or_fetch(&k.into(), secs(5), || async { Ok(1) })
                .await
                .unwrap();
        }
        cache
            .get_or_fetch(&"c".into(), secs(100), || async { Ok(2) })
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        for k in ["d", "e"] {
            cache
                .get_or_fetch(&k.into(), secs(100), || async { Ok(3) })
                .await
                .unwrap();
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.stats().evictions, 2);
        // The expired a and b went; c, d and e are still answered from the cache.
        for k in ["c", "d", "e"] {
            let r = cache
                .get_or_fetch(&k.into(), secs(100), || async {
                    Err("fetched".to_string())
                })
                .await;
            assert!(r.is_ok(), "{k} was evicted");
        }
        // Full of live answers: one of them goes.
        for i in 0..100 {
            cache
                .get_or_fetch(&format!("x{i}"), secs(100), || async { Ok(4) })
                .await
                .unwrap();
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.stats().evictions, 102);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_of_one_key_make_one_fetch() {
        let cache = Arc::new(Cache::new(10));
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let cache = cache.clone();
            let calls = calls.clone();
            let mut released = released.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch(&"k".into(), secs(10), || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let _ = released.wait_for(|r| *r).await;
                        Ok(42)
                    })
                    .await
            }));
        }
        // Every task is waiting: on the fetch or on its result.
        tokio::time::sleep(Duration::from_millis(10)).await;
        release.send(true).unwrap();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(42));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.stats().coalesced, 19);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_share_an_error_and_refetch_when_the_fetching_caller_goes_away() {
        let cache = Arc::new(Cache::new(10));
        // The first caller is cancelled mid-fetch: a waiter fetches itself.
        let c = cache.clone();
        let first = tokio::spawn(async move {
            c.get_or_fetch(&"k".into(), secs(10), std::future::pending)
                .await
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        let c = cache.clone();
        let second = tokio::spawn(async move {
            c.get_or_fetch(&"k".into(), secs(10), || async { Ok(5) })
                .await
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        first.abort();
        assert_eq!(second.await.unwrap(), Ok(5));
        assert_eq!(
            cache
                .get_or_fetch(&"k".into(), secs(10), || async { Ok(6) })
                .await,
            Ok(5)
        );
    }
}
