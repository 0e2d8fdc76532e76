//! The in-memory watch cache of one resource type.
//!
//! The cache holds the state of every object at [`WatchCache::rv`] and a bounded history of
//! the most recent events (at most `StoreOptions::history`). It is written only by the feed
//! task of the [`Store`](super::Store) (which follows the Valkey stream); everything else
//! reads it.
//!
//! * [`WatchCache::list`] serves a page of the state at the current rv or at an older rv still
//!   covered by the history: the current objects with the newer events undone (their `prev`).
//! * A [`Watcher`] is a cursor (the last rv it returned) into the history. It never blocks the
//!   feed: when the history has moved past its cursor it fails with
//!   [`StorageError::TooOld`] and the client relists, like Kubernetes.
//! * A reset (Valkey lost data, or its stream was trimmed past the cache's position) replaces
//!   the whole state and bumps an epoch: every existing [`Watcher`] then fails with
//!   [`StorageError::Expired`].
//! * Locks are `std::sync` and never held across `.await`; wakeups go through one
//!   `tokio::sync::watch` channel, so a watcher costs one receiver.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use super::{EventType, ListPage, ListRequest, ObjectKey, ResourceKey, StorageError, WatchEvent};

/// An event as read from the stream, before the cache attaches `prev`.
#[derive(Debug, Clone)]
pub(crate) struct StreamEvent {
    pub rv: u64,
    pub kind: EventType,
    pub key: ObjectKey,
    /// With `metadata.resourceVersion = rv`.
    pub object: Arc<Value>,
}

/// A full load of one resource: state at `rv` and the retained events with rv <= `rv`
/// (ascending).
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub rv: u64,
    pub objects: Vec<(ObjectKey, Value)>,
    pub history: Vec<StreamEvent>,
}

/// Why the feed could not apply an event: the cache must be reloaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    #[error("gap in the event stream: expected rv {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    #[error("event {kind:?} at rv {rv} does not match the cached state of {key}")]
    Inconsistent {
        rv: u64,
        kind: EventType,
        key: ObjectKey,
    },
}

struct State {
    epoch: u64,
    rv: u64,
    /// Every event with rv > `oldest` (and <= `rv`) is in `history`.
    oldest: u64,
    objects: BTreeMap<ObjectKey, Arc<Value>>,
    history: VecDeque<Arc<WatchEvent>>,
}

struct Shared {
    resource: ResourceKey,
    capacity: usize,
    state: RwLock<State>,
    /// `(epoch, rv)`, sent after every change of the state.
    tx: watch::Sender<(u64, u64)>,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The watch cache of one resource type. See the module docs.
pub struct WatchCache {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WatchCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.read();
        f.debug_struct("WatchCache")
            .field("resource", &self.shared.resource)
            .field("epoch", &st.epoch)
            .field("rv", &st.rv)
            .field("oldest", &st.oldest)
            .field("objects", &st.objects.len())
            .field("history", &st.history.len())
            .finish()
    }
}

impl WatchCache {
    /// A cache holding `loaded`, keeping at most `capacity` (at least 1) events.
    pub(crate) fn new(resource: ResourceKey, capacity: usize, loaded: Loaded) -> Self {
        let state = build_state(0, capacity.max(1), loaded);
        let (tx, _) = watch::channel((state.epoch, state.rv));
        Self {
            shared: Arc::new(Shared {
                resource,
                capacity: capacity.max(1),
                state: RwLock::new(state),
                tx,
            }),
        }
    }

    /// Replaces the whole state and expires every existing [`Watcher`].
    pub(crate) fn reset(&self, loaded: Loaded) {
        let (epoch, rv) = {
            let mut st = self.shared.write();
            let new = build_state(st.epoch + 1, self.shared.capacity, loaded);
            *st = new;
            (st.epoch, st.rv)
        };
        tracing::info!(resource = %self.shared.resource, epoch, rv, "watch cache reset");
        self.shared.tx.send_replace((epoch, rv));
    }

    /// Applies events (ascending rv) read from the stream. Events at or below the current rv
    /// are skipped. Stops at the first event that does not follow the current state: the
    /// caller must then reload.
    pub(crate) fn apply(
        &self,
        events: impl IntoIterator<Item = StreamEvent>,
    ) -> Result<(), ApplyError> {
        let mut result = Ok(());
        let (epoch, rv, changed) = {
            let mut st = self.shared.write();
            let before = st.rv;
            for ev in events {
                if ev.rv <= st.rv {
                    continue;
                }
                if ev.rv != st.rv + 1 {
                    result = Err(ApplyError::Gap {
                        expected: st.rv + 1,
                        got: ev.rv,
                    });
                    break;
                }
                let prev = st.objects.get(&ev.key).cloned();
                let consistent = match ev.kind {
                    EventType::Added => prev.is_none(),
                    EventType::Modified | EventType::Deleted => prev.is_some(),
                };
                if !consistent {
                    result = Err(ApplyError::Inconsistent {
                        rv: ev.rv,
                        kind: ev.kind,
                        key: ev.key,
                    });
                    break;
                }
                match ev.kind {
                    EventType::Deleted => {
                        st.objects.remove(&ev.key);
                    }
                    EventType::Added | EventType::Modified => {
                        st.objects.insert(ev.key.clone(), ev.object.clone());
                    }
                }
                st.rv = ev.rv;
                push_event(
                    &mut st,
                    self.shared.capacity,
                    Arc::new(WatchEvent::new(ev.rv, ev.kind, ev.key, ev.object, prev)),
                );
            }
            (st.epoch, st.rv, st.rv != before)
        };
        if changed {
            self.shared.tx.send_replace((epoch, rv));
        }
        result
    }

    /// The resource this cache holds.
    pub fn resource(&self) -> ResourceKey {
        self.shared.resource
    }

    /// The resourceVersion the cache reflects.
    pub fn rv(&self) -> u64 {
        self.shared.read().rv
    }

    /// The oldest rv a watch can start from ([`WatchCache::watch_from`] yields events > rv).
    pub fn oldest_rv(&self) -> u64 {
        self.shared.read().oldest
    }

    /// Incremented by every reset.
    pub fn epoch(&self) -> u64 {
        self.shared.read().epoch
    }

    /// The cached object, with `metadata.resourceVersion`.
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<Value>> {
        self.shared.read().objects.get(key).cloned()
    }

    /// The state at the returned rv, sorted by key; only `namespace` when given.
    pub fn snapshot(&self, namespace: Option<&str>) -> (u64, Vec<Arc<Value>>) {
        let st = self.shared.read();
        (st.rv, snapshot_of(&st, namespace))
    }

    /// One page of the state at `req.at` (the current rv when `None`), in key order: the
    /// objects after `req.start_after` (in `req.namespace`) that `filter` accepts, at most
    /// `req.limit` of them. Every page of a list served at one rv is a slice of the same
    /// snapshot, whatever was written in between.
    ///
    /// The state at an older rv is the current state with the history events newer than that
    /// rv undone (each event keeps the object's previous state). [`StorageError::TooOld`] when
    /// the history no longer reaches back to `req.at`; an `at` ahead of the cache is served at
    /// the cache's rv (wait with [`WatchCache::wait_for_rv`] first).
    pub fn list(
        &self,
        req: &ListRequest,
        filter: &dyn Fn(&Value) -> bool,
    ) -> Result<ListPage, StorageError> {
        let st = self.shared.read();
        let at = req.at.map_or(st.rv, |at| at.min(st.rv));
        let range = KeyRange::new(req);
        let undone = undo_since(&st, at, &range)?;
        let current = st
            .objects
            .range((range.lower.clone(), Bound::Unbounded))
            .take_while(|(k, _)| range.upper_ok(k))
            .map(|(k, v)| (k, Some(v)));
        let undone_iter = undone.iter().map(|(k, v)| (k, v.as_ref()));
        let limit = req.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut last = None;
        let mut next = None;
        for (key, obj) in merge_overriding(current, undone_iter) {
            let Some(obj) = obj else { continue };
            if !filter(obj) {
                continue;
            }
            if items.len() == limit {
                // Another match remains: the page ends at the last returned key.
                next = last.take();
                break;
            }
            items.push(obj.clone());
            last = Some(key);
        }
        Ok(ListPage {
            rv: at,
            items,
            next: next.cloned(),
        })
    }

    /// Waits until the cache reflects at least `rv`.
    pub async fn wait_for_rv(&self, rv: u64, timeout: Duration) -> Result<(), StorageError> {
        let mut rx = self.shared.tx.subscribe();
        let wait = async {
            loop {
                rx.borrow_and_update();
                if self.rv() >= rv {
                    return;
                }
                if rx.changed().await.is_err() {
                    // Unreachable: `self` owns the sender. Wait for the timeout.
                    std::future::pending::<()>().await;
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(()) => Ok(()),
            Err(_) => Err(StorageError::Timeout {
                rv,
                current: self.rv(),
            }),
        }
    }

    /// A watcher yielding every event with rv > `rv`, in order. [`StorageError::TooOld`] when
    /// events after `rv` are no longer held. An `rv` ahead of the cache is allowed: the
    /// watcher then starts with the first event after it.
    pub fn watch_from(&self, rv: u64) -> Result<Watcher, StorageError> {
        let st = self.shared.read();
        if rv < st.oldest {
            return Err(StorageError::TooOld {
                requested: rv,
                oldest: st.oldest,
            });
        }
        Ok(self.watcher(&st, rv))
    }

    /// Atomically: the state at rv (sorted by key, only `namespace` when given) and a watcher
    /// of every event after rv.
    pub fn watch_with_snapshot(&self, namespace: Option<&str>) -> (u64, Vec<Arc<Value>>, Watcher) {
        let st = self.shared.read();
        let items = snapshot_of(&st, namespace);
        (st.rv, items, self.watcher(&st, st.rv))
    }

    fn watcher(&self, st: &State, rv: u64) -> Watcher {
        Watcher {
            shared: self.shared.clone(),
            rx: self.shared.tx.subscribe(),
            epoch: st.epoch,
            pos: rv,
        }
    }
}

/// A cursor over the events of one [`WatchCache`].
pub struct Watcher {
    shared: Arc<Shared>,
    rx: watch::Receiver<(u64, u64)>,
    epoch: u64,
    pos: u64,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("resource", &self.shared.resource)
            .field("epoch", &self.epoch)
            .field("rv", &self.pos)
            .finish()
    }
}

impl Watcher {
    /// The next event. Cancel-safe: dropping the future loses nothing.
    ///
    /// [`StorageError::Expired`] once the cache was reset after the watcher was created;
    /// [`StorageError::TooOld`] when the watcher fell behind the history.
    pub async fn next(&mut self) -> Result<Arc<WatchEvent>, StorageError> {
        loop {
            self.rx.borrow_and_update();
            if let Some(r) = self.try_next() {
                return r;
            }
            if self.rx.changed().await.is_err() {
                // Unreachable: `self.shared` owns the sender.
                return Err(StorageError::Expired);
            }
        }
    }

    /// The next event if one is available now.
    pub fn try_next(&mut self) -> Option<Result<Arc<WatchEvent>, StorageError>> {
        let st = self.shared.read();
        if st.epoch != self.epoch {
            return Some(Err(StorageError::Expired));
        }
        if self.pos < st.oldest {
            return Some(Err(StorageError::TooOld {
                requested: self.pos,
                oldest: st.oldest,
            }));
        }
        let idx = st.history.partition_point(|e| e.rv <= self.pos);
        let ev = st.history.get(idx)?.clone();
        self.pos = ev.rv;
        Some(Ok(ev))
    }

    /// The rv of the last event returned (or the start rv).
    pub fn rv(&self) -> u64 {
        self.pos
    }
}

/// The keys a list request covers: after `start_after`, inside `namespace`, or one name.
struct KeyRange<'a> {
    lower: Bound<ObjectKey>,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
}

impl<'a> KeyRange<'a> {
    fn new(req: &'a ListRequest) -> Self {
        let namespace = req.namespace.as_deref();
        let name = req.name.as_deref().filter(|_| namespace.is_some());
        // The first key of a namespace is above `<ns>/` (names are not empty).
        let ns_lower = namespace.map(|ns| ObjectKey::new(ns, name.unwrap_or("")));
        let lower = match (&req.start_after, ns_lower) {
            (Some(after), Some(lo)) if *after < lo => Bound::Included(lo),
            (Some(after), _) => Bound::Excluded(after.clone()),
            (None, Some(lo)) => Bound::Included(lo),
            (None, None) => Bound::Unbounded,
        };
        Self {
            lower,
            namespace,
            name,
        }
    }

    /// Whether `key`, at or above the lower bound, is still inside the range.
    fn upper_ok(&self, key: &ObjectKey) -> bool {
        self.namespace.is_none_or(|ns| key.namespace == ns)
            && self.name.is_none_or(|n| key.name == n)
    }

    fn contains(&self, key: &ObjectKey) -> bool {
        let above = match &self.lower {
            Bound::Included(lo) => key >= lo,
            Bound::Excluded(lo) => key > lo,
            Bound::Unbounded => true,
        };
        above && self.upper_ok(key)
    }
}

/// The state at `at` of every key in `range` that changed after `at`: the previous state of
/// its first event after `at` (`None`: it did not exist).
fn undo_since(
    st: &State,
    at: u64,
    range: &KeyRange<'_>,
) -> Result<BTreeMap<ObjectKey, Option<Arc<Value>>>, StorageError> {
    let mut undone = BTreeMap::new();
    if at >= st.rv {
        return Ok(undone);
    }
    if at < st.oldest {
        return Err(StorageError::TooOld {
            requested: at,
            oldest: st.oldest,
        });
    }
    let first = st.history.partition_point(|e| e.rv <= at);
    for ev in st.history.range(first..) {
        if undone.contains_key(&ev.key) || !range.contains(&ev.key) {
            continue;
        }
        let before = match ev.kind {
            EventType::Added => None,
            EventType::Modified | EventType::Deleted => match &ev.prev {
                Some(p) => Some(p.clone()),
                // The history was loaded at startup and does not hold this key's state before
                // its first event: nothing before that event can be rebuilt.
                None => {
                    return Err(StorageError::TooOld {
                        requested: at,
                        oldest: ev.rv,
                    });
                }
            },
        };
        undone.insert(ev.key.clone(), before);
    }
    Ok(undone)
}

/// Merges two key-ordered sequences; on equal keys the second wins.
fn merge_overriding<'a, A, B>(
    a: A,
    b: B,
) -> impl Iterator<Item = (&'a ObjectKey, Option<&'a Arc<Value>>)>
where
    A: Iterator<Item = (&'a ObjectKey, Option<&'a Arc<Value>>)>,
    B: Iterator<Item = (&'a ObjectKey, Option<&'a Arc<Value>>)>,
{
    let mut a = a.peekable();
    let mut b = b.peekable();
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some((ka, _)), Some((kb, _))) => match ka.cmp(kb) {
            std::cmp::Ordering::Less => a.next(),
            std::cmp::Ordering::Greater => b.next(),
            std::cmp::Ordering::Equal => {
                a.next();
                b.next()
            }
        },
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

fn snapshot_of(st: &State, namespace: Option<&str>) -> Vec<Arc<Value>> {
    match namespace {
        None => st.objects.values().cloned().collect(),
        Some(ns) => st
            .objects
            .range(ObjectKey::new(ns, "")..)
            .take_while(|(k, _)| k.namespace == ns)
            .map(|(_, v)| v.clone())
            .collect(),
    }
}

fn push_event(st: &mut State, capacity: usize, ev: Arc<WatchEvent>) {
    st.history.push_back(ev);
    while st.history.len() > capacity {
        if let Some(old) = st.history.pop_front() {
            st.oldest = old.rv;
        }
    }
}

fn build_state(epoch: u64, capacity: usize, loaded: Loaded) -> State {
    let Loaded {
        rv,
        objects,
        mut history,
    } = loaded;
    // Keep only the contiguous tail ending at `rv`: only then does the history hold every
    // event after its first rv - 1.
    let mut start = history.len();
    let mut expect = rv;
    while start > 0 && history[start - 1].rv == expect {
        start -= 1;
        expect = expect.saturating_sub(1);
    }
    let history = history.split_off(start);
    let mut st = State {
        epoch,
        rv,
        oldest: history.first().map_or(rv, |e| e.rv - 1),
        objects: objects.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
        history: VecDeque::with_capacity(history.len().min(capacity)),
    };
    let mut last: HashMap<ObjectKey, Arc<Value>> = HashMap::new();
    for ev in history {
        let prev = match ev.kind {
            EventType::Added => None,
            EventType::Modified | EventType::Deleted => last.get(&ev.key).cloned(),
        };
        match ev.kind {
            EventType::Deleted => last.remove(&ev.key),
            EventType::Added | EventType::Modified => {
                last.insert(ev.key.clone(), ev.object.clone())
            }
        };
        push_event(
            &mut st,
            capacity,
            Arc::new(WatchEvent::new(ev.rv, ev.kind, ev.key, ev.object, prev)),
        );
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RES: ResourceKey = ResourceKey {
        group: "test.dev",
        resource: "things",
    };

    fn ev(rv: u64, kind: EventType, ns: &str, name: &str) -> StreamEvent {
        StreamEvent {
            rv,
            kind,
            key: ObjectKey::new(ns, name),
            object: Arc::new(json!({
                "metadata": {"namespace": ns, "name": name, "resourceVersion": rv.to_string()}
            })),
        }
    }

    fn cache(capacity: usize) -> WatchCache {
        WatchCache::new(RES, capacity, Loaded::default())
    }

    #[tokio::test]
    async fn watcher_sees_events_in_order_with_prev() {
        let c = cache(100);
        let mut w = c.watch_from(0).expect("watch");
        c.apply([
            ev(1, EventType::Added, "a", "x"),
            ev(2, EventType::Modified, "a", "x"),
            ev(3, EventType::Deleted, "a", "x"),
        ])
        .expect("apply");
        let e1 = w.next().await.expect("e1");
        assert_eq!(
            (e1.rv, e1.kind, e1.prev.is_none()),
            (1, EventType::Added, true)
        );
        let e2 = w.next().await.expect("e2");
        assert_eq!(e2.kind, EventType::Modified);
        assert_eq!(e2.prev.as_deref(), Some(&*e1.object));
        let e3 = w.next().await.expect("e3");
        assert_eq!(e3.kind, EventType::Deleted);
        assert_eq!(e3.prev.as_deref(), Some(&*e2.object));
        assert!(w.try_next().is_none());
        assert_eq!(c.rv(), 3);
        assert!(c.get(&ObjectKey::new("a", "x")).is_none());
    }

    #[test]
    fn gaps_and_inconsistencies_are_reported() {
        let c = cache(10);
        c.apply([ev(1, EventType::Added, "a", "x")]).expect("apply");
        // Duplicates are skipped.
        c.apply([ev(1, EventType::Added, "a", "x")]).expect("dup");
        assert!(matches!(
            c.apply([ev(3, EventType::Added, "a", "y")]),
            Err(ApplyError::Gap {
                expected: 2,
                got: 3
            })
        ));
        assert!(matches!(
            c.apply([ev(2, EventType::Added, "a", "x")]),
            Err(ApplyError::Inconsistent { rv: 2, .. })
        ));
        assert!(matches!(
            c.apply([ev(2, EventType::Modified, "a", "zz")]),
            Err(ApplyError::Inconsistent { rv: 2, .. })
        ));
        assert_eq!(c.rv(), 1);
    }

    #[tokio::test]
    async fn slow_watcher_gets_too_old_and_history_is_bounded() {
        let c = cache(3);
        let mut slow = c.watch_from(0).expect("watch");
        let evs: Vec<_> = (1..=5)
            .map(|i| ev(i, EventType::Added, "a", &format!("o{i}")))
            .collect();
        c.apply(evs).expect("apply");
        assert_eq!(c.oldest_rv(), 2);
        assert!(matches!(
            slow.next().await,
            Err(StorageError::TooOld {
                requested: 0,
                oldest: 2
            })
        ));
        assert!(matches!(
            c.watch_from(1),
            Err(StorageError::TooOld { oldest: 2, .. })
        ));
        let mut w = c.watch_from(2).expect("watch");
        let rvs: Vec<u64> = [
            w.next().await.expect("a"),
            w.next().await.expect("b"),
            w.next().await.expect("c"),
        ]
        .iter()
        .map(|e| e.rv)
        .collect();
        assert_eq!(rvs, vec![3, 4, 5]);
    }

    #[tokio::test]
    async fn reset_expires_watchers_and_wakes_them() {
        let c = Arc::new(cache(10));
        let mut w = c.watch_from(0).expect("watch");
        let task = tokio::spawn(async move { w.next().await });
        tokio::task::yield_now().await;
        c.reset(Loaded {
            rv: 7,
            objects: vec![(ObjectKey::new("a", "b"), json!({"k": 1}))],
            history: vec![],
        });
        let r = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("woken")
            .expect("join");
        assert!(matches!(r, Err(StorageError::Expired)));
        assert_eq!((c.rv(), c.oldest_rv(), c.epoch()), (7, 7, 1));
        assert!(c.watch_from(7).is_ok());
    }

    #[test]
    fn load_keeps_contiguous_history_and_derives_prev() {
        let c = WatchCache::new(
            RES,
            10,
            Loaded {
                rv: 6,
                objects: vec![],
                history: vec![
                    ev(1, EventType::Added, "a", "x"),
                    ev(3, EventType::Modified, "a", "x"),
                    ev(4, EventType::Modified, "a", "x"),
                    ev(5, EventType::Added, "a", "y"),
                    ev(6, EventType::Modified, "a", "x"),
                ],
            },
        );
        assert_eq!(c.oldest_rv(), 2);
        let mut w = c.watch_from(2).expect("watch");
        let e3 = w.try_next().expect("some").expect("ok");
        assert!(e3.prev.is_none());
        let e4 = w.try_next().expect("some").expect("ok");
        assert_eq!(e4.prev.as_deref(), Some(&*e3.object));
        w.try_next().expect("some").expect("ok");
        let e6 = w.try_next().expect("some").expect("ok");
        assert_eq!(e6.prev.as_deref(), Some(&*e4.object));
        assert!(w.try_next().is_none());
    }

    #[test]
    fn snapshot_filters_by_namespace_in_key_order() {
        let c = cache(10);
        c.apply([
            ev(1, EventType::Added, "team-a", "x"),
            ev(2, EventType::Added, "team", "b"),
            ev(3, EventType::Added, "team", "a"),
            ev(4, EventType::Added, "t", "z"),
        ])
        .expect("apply");
        let names = |v: Vec<Arc<Value>>| -> Vec<String> {
            v.iter()
                .map(|o| {
                    o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect()
        };
        let (rv, team) = c.snapshot(Some("team"));
        assert_eq!(
            (rv, names(team)),
            (4, vec!["a".to_string(), "b".to_string()])
        );
        let (_, all) = c.snapshot(None);
        assert_eq!(names(all), vec!["z", "x", "a", "b"]);
        let (rv, items, mut w) = c.watch_with_snapshot(Some("t"));
        assert_eq!((rv, items.len()), (4, 1));
        assert!(w.try_next().is_none());
    }

    fn names(items: &[Arc<Value>]) -> Vec<String> {
        items
            .iter()
            .map(|o| {
                let m = &o["metadata"];
                format!(
                    "{}/{}@{}",
                    m["namespace"].as_str().unwrap_or_default(),
                    m["name"].as_str().unwrap_or_default(),
                    m["resourceVersion"].as_str().unwrap_or_default()
                )
            })
            .collect()
    }

    fn list(
        c: &WatchCache,
        at: Option<u64>,
        ns: Option<&str>,
        after: Option<ObjectKey>,
        limit: Option<usize>,
    ) -> Result<ListPage, StorageError> {
        c.list(
            &ListRequest {
                namespace: ns.map(str::to_string),
                start_after: after,
                limit,
                at,
                ..Default::default()
            },
            &|_| true,
        )
    }

    #[test]
    fn list_at_an_older_rv_undoes_newer_events() {
        let c = cache(100);
        c.apply([
            ev(1, EventType::Added, "a", "x"),
            ev(2, EventType::Added, "a", "y"),
            ev(3, EventType::Added, "b", "z"),
        ])
        .expect("apply");
        // Page 1 at rv 3, then writes, then page 2 at rv 3.
        let p1 = list(&c, None, None, None, Some(1)).expect("page 1");
        assert_eq!((p1.rv, names(&p1.items)), (3, vec!["a/x@1".to_string()]));
        c.apply([
            ev(4, EventType::Deleted, "a", "y"),
            ev(5, EventType::Added, "a", "xa"),
            ev(6, EventType::Modified, "b", "z"),
            ev(7, EventType::Modified, "b", "z"),
            ev(8, EventType::Deleted, "a", "x"),
        ])
        .expect("apply");
        let p2 = list(&c, Some(3), None, p1.next, Some(1)).expect("page 2");
        assert_eq!((p2.rv, names(&p2.items)), (3, vec!["a/y@2".to_string()]));
        let p3 = list(&c, Some(3), None, p2.next, Some(1)).expect("page 3");
        assert_eq!(names(&p3.items), vec!["b/z@3"]);
        assert!(p3.next.is_none());
        // The current state and an intermediate one.
        let now = list(&c, None, None, None, None).expect("now");
        assert_eq!(
            (now.rv, names(&now.items)),
            (8, vec!["a/xa@5".to_string(), "b/z@7".to_string()])
        );
        let mid = list(&c, Some(6), Some("b"), None, None).expect("rv 6");
        assert_eq!(names(&mid.items), vec!["b/z@6"]);
        let mid = list(&c, Some(5), Some("a"), None, None).expect("rv 5");
        assert_eq!(names(&mid.items), vec!["a/x@1", "a/xa@5"]);
        // Ahead of the cache: served at the cache's rv.
        assert_eq!(list(&c, Some(99), None, None, None).expect("ahead").rv, 8);
    }

    #[test]
    fn list_before_the_history_is_too_old() {
        let c = cache(2);
        c.apply((1..=4).map(|i| ev(i, EventType::Added, "a", &format!("o{i}"))))
            .expect("apply");
        assert_eq!(c.oldest_rv(), 2);
        assert!(matches!(
            list(&c, Some(1), None, None, None),
            Err(StorageError::TooOld {
                requested: 1,
                oldest: 2
            })
        ));
        assert_eq!(
            list(&c, Some(2), None, None, None)
                .expect("rv 2")
                .items
                .len(),
            2
        );
    }

    #[tokio::test]
    async fn wait_for_rv_times_out_and_succeeds() {
        let c = Arc::new(cache(10));
        assert!(matches!(
            c.wait_for_rv(1, Duration::from_millis(10)).await,
            Err(StorageError::Timeout { rv: 1, current: 0 })
        ));
        let c2 = c.clone();
        let waiter = tokio::spawn(async move { c2.wait_for_rv(2, Duration::from_secs(10)).await });
        c.apply([ev(1, EventType::Added, "a", "x")]).expect("apply");
        c.apply([ev(2, EventType::Added, "a", "y")]).expect("apply");
        waiter.await.expect("join").expect("reached");
    }
}
