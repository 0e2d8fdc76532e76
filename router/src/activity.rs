//! Activity reporting: which actors served traffic, batched into one `status.lastActiveTime`
//! merge patch per active actor every flush interval (never a write per request).
//!
//! Each request and each upgraded connection holds a [`Guard`] while it is open; an actor
//! with an open guard counts as active at every flush, so a long WebSocket or a long download
//! keeps its actor from being suspended as idle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crds::substrate::Actor;

use crate::host::ActorKey;
use crate::metrics::Metrics;

/// One actor's activity since the last flush, shared by the map and by whoever holds it (a
/// client connection's cached route, an open request): a request through a cached route
/// touches two atomics, no lock and no map.
#[derive(Default)]
pub struct Counters {
    /// Traffic seen since the last flush.
    touched: AtomicBool,
    /// Open requests and tunnels.
    open: AtomicUsize,
}

impl Counters {
    /// Records traffic and holds the actor open until the guard drops.
    pub fn begin(self: &Arc<Self>) -> Guard {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.touched.store(true, Ordering::Relaxed);
        Guard {
            counters: self.clone(),
        }
    }
}

/// Per-actor activity since the last flush.
#[derive(Default)]
pub struct Activity {
    entries: Mutex<HashMap<ActorKey, Arc<Counters>>>,
}

/// Marks an actor active while held.
pub struct Guard {
    counters: Arc<Counters>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
        self.counters.touched.store(true, Ordering::Relaxed);
        // Dropping the `Arc` after these stores (a release) is what lets `take_active`
        // forget an entry nobody holds without missing them.
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ActorKey, Arc<Counters>>> {
        // A panic while holding this lock leaves counters only; keep going.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counters of `key`; they stay registered while anyone holds them.
    pub fn counters(&self, key: &ActorKey) -> Arc<Counters> {
        let mut m = self.lock();
        // No allocation when the actor is already known.
        match m.get(key) {
            Some(c) => c.clone(),
            None => m.entry(key.clone()).or_default().clone(),
        }
    }

    /// Records traffic for `key` and holds it open until the guard drops.
    pub fn begin(&self, key: &ActorKey) -> Guard {
        self.counters(key).begin()
    }

    /// The actors active since the last call (touched, or with something open); forgets the
    /// ones nobody holds.
    pub fn take_active(&self) -> Vec<ActorKey> {
        let mut m = self.lock();
        let mut active = Vec::new();
        m.retain(|key, c| {
            let held = Arc::strong_count(c) > 1;
            // Not held: every guard's stores happened before its release of the `Arc`, and
            // nobody can take a new one without the lock, so they are all visible below.
            fence(Ordering::Acquire);
            let touched = c.touched.swap(false, Ordering::Relaxed);
            let open = c.open.load(Ordering::Relaxed);
            if touched || open > 0 {
                active.push(key.clone());
            }
            held || open > 0
        });
        active
    }

    /// Open requests and tunnels of `key`.
    pub fn open(&self, key: &ActorKey) -> usize {
        self.lock()
            .get(key)
            .map_or(0, |c| c.open.load(Ordering::Relaxed))
    }
}

/// Sends one merge patch per active actor every `interval`, until dropped.
pub async fn flush_loop(
    activity: Arc<Activity>,
    client: kube::Client,
    interval: Duration,
    metrics: Arc<Metrics>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        flush(&activity, &client, &metrics).await;
    }
}

/// One flush: `{"status":{"lastActiveTime":<now>}}` for every active actor, concurrently.
pub async fn flush(activity: &Activity, client: &kube::Client, metrics: &Metrics) {
    let active = activity.take_active();
    if active.is_empty() {
        return;
    }
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let patch = json!({"status": {"lastActiveTime": now}});
    let writes = active.into_iter().map(|key| {
        let api: Api<Actor> = Api::namespaced(client.clone(), &key.atespace);
        let patch = patch.clone();
        async move {
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    metrics.activity_patches.inc();
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    tracing::warn!(atespace = %key.atespace, actor = %key.name, error = %e, "reporting activity failed")
                }
            };
        }
    });
    futures::future::join_all(writes).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_guards_keep_actors_active() {
        let a = Arc::new(Activity::default());
        let k1 = ActorKey::new("s", "one");
        let k2 = ActorKey::new("s", "two");
        drop(a.begin(&k1));
        let g = a.begin(&k2);
        let mut act = a.take_active();
        act.sort();
        assert_eq!(act, vec![k1.clone(), k2.clone()]);
        // k1 was only touched; k2 stays open.
        assert_eq!(a.take_active(), vec![k2.clone()]);
        assert_eq!(a.open(&k2), 1);
        drop(g);
        assert_eq!(
            a.take_active(),
            vec![k2.clone()],
            "the close is activity too"
        );
        assert!(a.take_active().is_empty());
        assert_eq!(a.open(&k1), 0);
    }

    #[test]
    fn held_counters_stay_registered_and_report() {
        let a = Arc::new(Activity::default());
        let k = ActorKey::new("s", "cached");
        // A cached route holds the counters across flushes, idle or not.
        let route = a.counters(&k);
        assert!(a.take_active().is_empty());
        assert!(a.take_active().is_empty());
        drop(route.begin());
        assert_eq!(a.take_active(), vec![k.clone()], "seen through the map");
        let g = route.begin();
        assert_eq!(a.open(&k), 1);
        drop(route);
        drop(g);
        // Nobody holds them any more: reported once more (the close), then forgotten.
        assert_eq!(a.take_active(), vec![k.clone()]);
        assert!(a.take_active().is_empty());
        let again = a.counters(&k);
        assert_eq!(Arc::strong_count(&again), 2, "a fresh entry in the map");
    }
}
