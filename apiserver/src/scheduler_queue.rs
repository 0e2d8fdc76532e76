//! The scheduler's queue: the actors waiting for a worker (`Scheduled=False`, phase
//! `Suspended` or `Failed`), kept up to date from the actors' watch cache event by event, so
//! a scheduler pass (on every worker change and every 2 s) looks at the waiting actors only —
//! not at every actor, which at a million actors made each worker heartbeat a scan of all of
//! them. A full look at the actors happens only when the queue (re)starts from a snapshot.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

use crate::storage::WatchCache;
use crate::storage::{EventType, ObjectKey};

/// See the module docs.
#[derive(Debug, Default)]
pub struct Queue {
    /// Waiting actors and the time they started waiting (their `Scheduled` condition's
    /// `lastTransitionTime`).
    waiting: Mutex<BTreeMap<ObjectKey, String>>,
}

/// Whether `actor` waits for a worker, and since when (its `Scheduled` condition's
/// `lastTransitionTime`).
fn waits_since(actor: &Value) -> Option<String> {
    use crate::scheduler::{SCHEDULED, condition, waits_for_worker};
    waits_for_worker(actor).then(|| {
        condition(actor, SCHEDULED)
            .and_then(|c| c["lastTransitionTime"].as_str())
            .unwrap_or_default()
            .to_string()
    })
}

impl Queue {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<ObjectKey, String>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the state of `key` now (`None`: deleted).
    pub fn observe(&self, key: &ObjectKey, actor: Option<&Value>) {
        match actor.and_then(waits_since) {
            Some(since) => {
                self.map().insert(key.clone(), since);
            }
            None => {
                self.map().remove(key);
            }
        }
    }

    /// Replaces the queue with the waiting actors among `actors`.
    pub fn reset(&self, actors: &[Arc<Value>]) {
        let fresh: BTreeMap<ObjectKey, String> = actors
            .iter()
            .filter_map(|a| {
                let since = waits_since(a)?;
                let meta = a.get("metadata")?;
                let key = ObjectKey::new(
                    meta.get("namespace").and_then(Value::as_str).unwrap_or(""),
                    meta.get("name").and_then(Value::as_str)?,
                );
                Some((key, since))
            })
            .collect();
        *self.map() = fresh;
    }

    /// The waiting actors, those waiting longest first.
    pub fn oldest_first(&self) -> Vec<ObjectKey> {
        let mut v: Vec<(String, ObjectKey)> = self
            .map()
            .iter()
            .map(|(k, since)| (since.clone(), k.clone()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, k)| k).collect()
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

/// Keeps `queue` equal to the waiting actors of `cache`, forever: a snapshot, then its
/// events; again from a snapshot when the watch fails (history passed by, or a reset).
pub async fn follow(queue: Arc<Queue>, cache: Arc<WatchCache>) {
    loop {
        let (_, actors, mut watcher) = cache.watch_with_snapshot(None);
        queue.reset(&actors);
        drop(actors);
        loop {
            match watcher.next().await {
                Ok(ev) => {
                    let obj = (ev.kind != EventType::Deleted).then_some(ev.object.as_ref());
                    queue.observe(&ev.key, obj);
                }
                Err(e) => {
                    tracing::info!(error = %e, "scheduler queue: actors watch ended; starting again from a snapshot");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn actor(name: &str, phase: &str, scheduled: Option<(&str, &str)>) -> Value {
        let mut a = json!({"metadata": {"namespace": "t", "name": name},
                           "status": {"phase": phase, "conditions": []}});
        if let Some((status, since)) = scheduled {
            a["status"]["conditions"] = json!([{"type": "Scheduled", "status": status,
                                                 "reason": "NoFreeWorker",
                                                 "lastTransitionTime": since}]);
        }
        a
    }

    #[test]
    fn only_unbound_actors_with_scheduled_false_wait_oldest_first() {
        let q = Queue::default();
        let k = |n: &str| ObjectKey::new("t", n);
        q.reset(&[
            Arc::new(actor(
                "late",
                "Suspended",
                Some(("False", "2026-01-01T00:00:09Z")),
            )),
            Arc::new(actor(
                "early",
                "Failed",
                Some(("False", "2026-01-01T00:00:01Z")),
            )),
            Arc::new(actor(
                "bound",
                "Resuming",
                Some(("False", "2026-01-01T00:00:00Z")),
            )),
            Arc::new(actor(
                "placed",
                "Suspended",
                Some(("True", "2026-01-01T00:00:00Z")),
            )),
            Arc::new(actor("never", "Suspended", None)),
        ]);
        assert_eq!(q.oldest_first(), vec![k("early"), k("late")]);

        // Events: bound now, a new one waits, one deleted.
        q.observe(
            &k("early"),
            Some(&actor("early", "Resuming", Some(("True", "x")))),
        );
        q.observe(
            &k("never"),
            Some(&actor(
                "never",
                "Suspended",
                Some(("False", "2026-01-01T00:00:05Z")),
            )),
        );
        assert_eq!(q.oldest_first(), vec![k("never"), k("late")]);
        q.observe(&k("late"), None);
        assert_eq!(q.oldest_first(), vec![k("never")]);
        assert_eq!(q.len(), 1);
    }
}
