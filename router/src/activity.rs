//! Activity reporting: which actors served traffic, batched into one `status.lastActiveTime`
//! merge patch per active actor every flush interval (never a write per request).
//!
//! Each request and each upgraded connection holds a [`Guard`] while it is open; an actor
//! with an open guard counts as active at every flush, so a long WebSocket or a long download
//! keeps its actor from being suspended as idle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crds::substrate::Actor;

use crate::host::ActorKey;
use crate::metrics::Metrics;

#[derive(Default)]
struct Entry {
    /// Traffic seen since the last flush.
    touched: bool,
    /// Open requests and tunnels.
    open: usize,
}

/// Per-actor activity since the last flush.
#[derive(Default)]
pub struct Activity {
    entries: Mutex<HashMap<ActorKey, Entry>>,
}

/// Marks an actor active while held.
pub struct Guard {
    activity: Arc<Activity>,
    key: Arc<ActorKey>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut m = self.activity.lock();
        if let Some(e) = m.get_mut(&*self.key) {
            e.open = e.open.saturating_sub(1);
            e.touched = true;
        }
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ActorKey, Entry>> {
        // A panic while holding this lock leaves counters only; keep going.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records traffic for `key` and holds it open until the guard drops.
    pub fn begin(self: &Arc<Self>, key: &Arc<ActorKey>) -> Guard {
        let mut m = self.lock();
        // No allocation when the actor is already known (every request but its first).
        let e = match m.get_mut(&**key) {
            Some(e) => e,
            None => m.entry((**key).clone()).or_default(),
        };
        e.open += 1;
        e.touched = true;
        Guard {
            activity: self.clone(),
            key: key.clone(),
        }
    }

    /// The actors active since the last call (touched, or with something open); forgets the
    /// idle ones.
    pub fn take_active(&self) -> Vec<ActorKey> {
        let mut m = self.lock();
        let active = m
            .iter()
            .filter(|(_, e)| e.touched || e.open > 0)
            .map(|(k, _)| k.clone())
            .collect();
        m.retain(|_, e| e.open > 0);
        for e in m.values_mut() {
            e.touched = false;
        }
        active
    }

    /// Open requests and tunnels of `key`.
    pub fn open(&self, key: &ActorKey) -> usize {
        self.lock().get(key).map_or(0, |e| e.open)
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
        drop(a.begin(&Arc::new(k1.clone())));
        let g = a.begin(&Arc::new(k2.clone()));
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
}
