//! Activity reporting: which actors served traffic, recorded as `status.lastActiveTime` so
//! idle suspension (the operator's, `now - lastActiveTime >= idleTimeout`) knows when an actor
//! was last used.
//!
//! # The guarantee
//!
//! **No request that reached the router is cut by an idle suspend**, as long as the apiserver
//! accepts the router's writes (the operator's suspend goes through the same apiserver), and
//! the router's `--default-idle-timeout` is not longer than the operator's. It rests on
//! three rules, each a pure function below, unit-tested:
//!
//! 1. *Before forwarding* ([`stale`]): a request for an `OnDemand` actor whose recorded
//!    activity — the newest `lastActiveTime` the router knows the apiserver holds, its own
//!    write or what the routing table's watch showed — leaves less than half the idle
//!    timeout waits for a write of `lastActiveTime = now` ([`Reporter::ensure`], one write
//!    per actor shared by the requests that arrive meanwhile). This covers the first request
//!    through a router that just (re)started, whose in-memory activity was lost with the
//!    previous process, and any request that comes close to the deadline. When that write
//!    finds the actor no longer `Running` (a suspend committed first), the request waits for
//!    the routing table to show it and is routed from there: it wakes the actor instead of
//!    going to a sandbox being checkpointed.
//! 2. *While open* ([`due`]): each request and each upgraded connection holds a [`Guard`];
//!    an actor with an open guard, or traffic since its last write, is written again every
//!    `min(--activity-interval, idleTimeout / 3)`, so a long download, upload or WebSocket
//!    keeps its actor from being suspended as idle for as long as it lasts.
//! 3. *On shutdown* (SIGTERM, [`Reporter::flush`] with `force`): every actor with traffic
//!    since its last write is written before the process exits. A router killed with
//!    `SIGKILL` loses that, and rule 1 covers it: at most `interval` of activity is lost,
//!    and the first request afterwards is recorded before it is forwarded.
//!
//! The operator's idle suspend is conditional on the `lastActiveTime` it decided on
//! (`POST .../suspend` with `{"preconditions": {"lastActiveTime": ...}}`, refused with 409
//! once a newer one is recorded), so a write that commits before the suspend always wins,
//! even if the operator's cache has not seen it yet.
//!
//! Writes stay batched: an actor with steady traffic is written once per
//! `--activity-interval` (when the idle timeout is at least three times that), by the flush
//! loop, never per request; a request pays for a write only in the cases of rule 1.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crds::substrate::{Activation, Actor, ActorPhase};

use crate::host::ActorKey;
use crate::metrics::Metrics;

/// Longest a request waits for the write of rule 1; past it the request is forwarded anyway
/// (the apiserver is slow or unreachable, and so is the operator's suspend) and the flush
/// loop keeps trying.
pub const SYNC_REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long (ms) after a failed write of rule 1 requests are forwarded without waiting
/// for another.
const SYNC_BACKOFF_MS: i64 = 5_000;

/// Longest a graceful shutdown waits for its last flush.
pub const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Rule 1: whether a request at `now` must wait for its activity to be recorded before it
/// is forwarded, given the newest `lastActiveTime` known recorded (`recorded`, ms) and the
/// actor's idle timeout (`idle`, ms; 0 when it is not suspended for idleness).
pub fn stale(recorded: i64, idle: u64, now: i64) -> bool {
    idle > 0 && now.saturating_sub(recorded) >= i64::try_from(idle / 2).unwrap_or(i64::MAX)
}

/// Rule 2: whether the flush loop at `now` writes an actor with activity (traffic since its
/// last write, or something open): once `interval` (ms) has passed since the recorded
/// activity, or a third of the idle timeout if that is shorter.
pub fn due(recorded: i64, idle: u64, interval: u64, now: i64) -> bool {
    let period = if idle == 0 {
        interval
    } else {
        interval.min(idle / 3)
    };
    now.saturating_sub(recorded) >= i64::try_from(period).unwrap_or(i64::MAX)
}

/// The actor's idle timeout in ms: `spec.idleTimeout`, else `default`; 0 unless `OnDemand`
/// (only those are suspended when idle).
pub fn idle_timeout_ms(a: &Actor, default: Duration) -> u64 {
    if a.spec.activation != Activation::OnDemand {
        return 0;
    }
    let t = a
        .spec
        .idle_timeout
        .as_deref()
        .and_then(|d| crds::duration::parse(d).ok())
        .unwrap_or(default);
    u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `status.lastActiveTime` in ms.
pub fn last_active_ms(a: &Actor) -> Option<i64> {
    a.status
        .as_ref()?
        .last_active_time
        .as_ref()
        .map(|t| t.0.as_millisecond())
}

/// One actor's activity, shared by the map and by whoever holds it (a client connection's
/// cached route, an open request): a request through a cached route touches a few atomics,
/// no lock and no map.
#[derive(Default)]
pub struct Counters {
    /// Traffic seen since the last write.
    touched: AtomicBool,
    /// Open requests and tunnels.
    open: AtomicUsize,
    /// The newest `lastActiveTime` (ms) known to be recorded by the apiserver.
    recorded: AtomicI64,
    /// The idle timeout (ms; 0: not suspended when idle).
    idle: AtomicU64,
    /// Until when (ms) rule 1 is not applied after its write failed: requests are not held
    /// up, one after another, by an apiserver that does not answer.
    sync_backoff: AtomicI64,
    /// Held while a request writes for rule 1: the requests that arrive meanwhile wait for
    /// that write instead of sending their own.
    reporting: tokio::sync::Mutex<()>,
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

    /// Takes what the routing table shows of the actor: its idle timeout and its recorded
    /// activity (kept if older than what is known).
    pub fn learn(&self, a: &Actor, default_idle: Duration) {
        if let Some(t) = last_active_ms(a) {
            self.recorded.fetch_max(t, Ordering::Relaxed);
        }
        self.idle
            .store(idle_timeout_ms(a, default_idle), Ordering::Relaxed);
    }

    /// Rule 1 for a request at `now`.
    pub fn stale(&self, now: i64) -> bool {
        stale(
            self.recorded.load(Ordering::Relaxed),
            self.idle.load(Ordering::Relaxed),
            now,
        )
    }

    /// The newest `lastActiveTime` (ms) known recorded.
    pub fn recorded(&self) -> i64 {
        self.recorded.load(Ordering::Relaxed)
    }

    fn recorded_at(&self, t: i64) {
        self.recorded.fetch_max(t, Ordering::Relaxed);
    }
}

/// Per-actor activity.
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
        // Dropping the `Arc` after these stores (a release) is what lets `take_due` forget
        // an entry nobody holds without missing them.
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

    /// The actors to write at `now` (rule 2; with `force`, every actor with activity since
    /// its last write); forgets the ones nobody holds that have nothing left to report.
    pub fn take_due(
        &self,
        now: i64,
        interval: Duration,
        force: bool,
    ) -> Vec<(ActorKey, Arc<Counters>)> {
        let interval = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        let mut m = self.lock();
        let mut out = Vec::new();
        m.retain(|key, c| {
            let held = Arc::strong_count(c) > 1;
            // Not held: every guard's stores happened before its release of the `Arc`, and
            // nobody can take a new one without the lock, so they are all visible below.
            fence(Ordering::Acquire);
            let open = c.open.load(Ordering::Relaxed);
            let is_due = force
                || due(
                    c.recorded.load(Ordering::Relaxed),
                    c.idle.load(Ordering::Relaxed),
                    interval,
                    now,
                );
            if is_due {
                let touched = c.touched.swap(false, Ordering::Relaxed);
                if touched || open > 0 {
                    out.push((key.clone(), c.clone()));
                }
            }
            held || open > 0 || c.touched.load(Ordering::Relaxed)
        });
        out
    }

    /// Open requests and tunnels of `key`.
    pub fn open(&self, key: &ActorKey) -> usize {
        self.lock()
            .get(key)
            .map_or(0, |c| c.open.load(Ordering::Relaxed))
    }
}

/// What [`Reporter::ensure`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// The recorded activity leaves at least half the idle timeout: nothing written.
    Fresh,
    /// Written; the actor is still `Running` on a worker.
    Written,
    /// Written, but the actor is no longer `Running` (a suspend came first): route it again
    /// once the routing table shows this resourceVersion.
    NotRunning { resource_version: Option<u64> },
    /// The write failed or took too long (logged); the flush loop keeps trying.
    Failed,
}

/// Why a write of `lastActiveTime` failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the actor no longer exists")]
    Gone,
    #[error("patching status.lastActiveTime")]
    Patch(#[source] kube::Error),
    #[error("the write did not finish within {0:?}")]
    Timeout(Duration),
    #[error("the write's task ended: {0}")]
    Task(String),
}

/// Writes `lastActiveTime`: periodically ([`flush_loop`]), before a request when needed
/// ([`Reporter::ensure`]) and on shutdown.
pub struct Reporter {
    client: kube::Client,
    metrics: Arc<Metrics>,
    /// `--activity-interval`.
    pub interval: Duration,
    /// `--default-idle-timeout`: the operator's idle timeout of actors without one.
    pub default_idle: Duration,
    /// The runtime writes run on (the one `new` was called on, where the client lives): a
    /// write started by a request outlives the request.
    runtime: tokio::runtime::Handle,
}

impl Reporter {
    pub fn new(
        client: kube::Client,
        metrics: Arc<Metrics>,
        interval: Duration,
        default_idle: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            client,
            metrics,
            interval,
            default_idle,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// `{"status":{"lastActiveTime":<now>}}`: the time written (ms; the field has whole
    /// seconds) and the actor as the write left it.
    async fn write(client: kube::Client, key: ActorKey) -> Result<(i64, Actor), ReportError> {
        let now = jiff::Timestamp::now();
        let secs = now.as_second();
        let text = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let api: Api<Actor> = Api::namespaced(client, &key.atespace);
        let patch = json!({"status": {"lastActiveTime": text}});
        match api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(a) => Ok((secs.saturating_mul(1000), a)),
            Err(kube::Error::Api(e)) if e.code == 404 => Err(ReportError::Gone),
            Err(e) => Err(ReportError::Patch(e)),
        }
    }

    /// Writes one actor for the flush loop; a failure leaves it to report at the next tick.
    async fn report(&self, key: ActorKey, c: Arc<Counters>) {
        match Self::write(self.client.clone(), key.clone()).await {
            Ok((t, _)) => {
                c.recorded_at(t);
                self.metrics.activity_patches.inc();
            }
            Err(ReportError::Gone) => {}
            Err(e) => {
                c.touched.store(true, Ordering::Relaxed);
                tracing::warn!(atespace = %key.atespace, actor = %key.name, error = %e, source = ?std::error::Error::source(&e).map(|s| s.to_string()), "reporting activity failed");
            }
        }
    }

    /// One flush: writes every due actor (rule 2), concurrently; with `force`, every actor
    /// with activity since its last write (rule 3).
    pub async fn flush(&self, activity: &Activity, force: bool) {
        let due = activity.take_due(now_ms(), self.interval, force);
        if due.is_empty() {
            return;
        }
        futures::future::join_all(due.into_iter().map(|(k, c)| self.report(k, c))).await;
    }

    /// Rule 1 for a request for `key` that holds a guard of `c`: when the recorded activity
    /// is stale, writes `lastActiveTime = now` and waits for it (one write at a time per
    /// actor; requests that waited behind it find it fresh).
    pub async fn ensure(&self, key: &ActorKey, c: &Arc<Counters>) -> Ensured {
        let now = now_ms();
        if !c.stale(now) {
            return Ensured::Fresh;
        }
        if now < c.sync_backoff.load(Ordering::Relaxed) {
            return Ensured::Failed;
        }
        let _one = c.reporting.lock().await;
        let now = now_ms();
        if !c.stale(now) {
            return Ensured::Fresh;
        }
        if now < c.sync_backoff.load(Ordering::Relaxed) {
            return Ensured::Failed;
        }
        let write = self
            .runtime
            .spawn(Self::write(self.client.clone(), key.clone()));
        let out = match tokio::time::timeout(SYNC_REPORT_TIMEOUT, write).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(ReportError::Task(e.to_string())),
            Err(_) => Err(ReportError::Timeout(SYNC_REPORT_TIMEOUT)),
        };
        match out {
            Ok((t, a)) => {
                c.recorded_at(t);
                self.metrics.activity_patches.inc();
                self.metrics.activity_sync_reports.inc();
                let running = a
                    .status
                    .as_ref()
                    .is_some_and(|s| s.phase == Some(ActorPhase::Running) && s.worker.is_some());
                tracing::debug!(atespace = %key.atespace, actor = %key.name, running, "activity recorded before forwarding");
                if running {
                    Ensured::Written
                } else {
                    Ensured::NotRunning {
                        resource_version: a
                            .metadata
                            .resource_version
                            .as_deref()
                            .and_then(|v| v.parse().ok()),
                    }
                }
            }
            Err(ReportError::Gone) => Ensured::Failed,
            Err(e) => {
                c.touched.store(true, Ordering::Relaxed);
                c.sync_backoff
                    .store(now_ms().saturating_add(SYNC_BACKOFF_MS), Ordering::Relaxed);
                tracing::warn!(atespace = %key.atespace, actor = %key.name, error = %e, "recording activity before forwarding failed; forwarding anyway");
                Ensured::Failed
            }
        }
    }
}

/// Writes due actors every second (or every `interval`, if shorter), until dropped.
pub async fn flush_loop(activity: Arc<Activity>, reporter: Arc<Reporter>) {
    let every = reporter.interval.min(Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        reporter.flush(&activity, false).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    fn actor(spec: serde_json::Value, last_active: Option<&str>) -> Actor {
        let mut a = json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
            "metadata": {"name": "a", "namespace": "s"}, "spec": spec});
        if let Some(t) = last_active {
            a["status"] = json!({"phase": "Running", "lastActiveTime": t});
        }
        serde_json::from_value(a).unwrap()
    }

    #[test]
    fn a_request_waits_for_a_write_when_less_than_half_the_idle_timeout_is_left() {
        let idle = 60_000;
        // Recorded 10 s ago: 50 s left, forwarded at once.
        assert!(!stale(1000 * S, idle, 1010 * S));
        // 30 s ago (half the timeout) or more: recorded first.
        assert!(stale(1000 * S, idle, 1030 * S));
        assert!(stale(1000 * S, idle, 1059 * S));
        // Nothing known (a router that just started and an actor never active).
        assert!(stale(0, idle, 1000 * S));
        // Not suspended when idle (Always, Suspended): never.
        assert!(!stale(0, 0, 1000 * S));
    }

    #[test]
    fn active_actors_are_written_before_a_third_of_their_idle_timeout_passes() {
        let interval = 10_000;
        // A long idle timeout: once per interval.
        assert!(!due(1000 * S, 300_000, interval, 1009 * S));
        assert!(due(1000 * S, 300_000, interval, 1010 * S));
        // A short one: every third of it, however long the interval.
        assert!(!due(1000 * S, 6_000, interval, 1001 * S));
        assert!(due(1000 * S, 6_000, interval, 1002 * S));
        // Not suspended when idle: once per interval.
        assert!(!due(1000 * S, 0, interval, 1009 * S));
        assert!(due(1000 * S, 0, interval, 1010 * S));
        // Together: a request that was forwarded without a write (not stale) is followed by
        // writes that land before its actor's deadline (recorded + idle).
        for idle in [3_000u64, 6_000, 60_000, 300_000] {
            let recorded = 1000 * S;
            let first_due = (recorded..)
                .step_by(100)
                .find(|now| due(recorded, idle, interval, *now))
                .unwrap();
            assert!(first_due < recorded + idle as i64, "idle {idle}");
        }
    }

    #[test]
    fn learning_keeps_the_newest_record_and_takes_the_idle_timeout() {
        let c = Counters::default();
        let default = Duration::from_secs(300);
        c.learn(
            &actor(
                json!({"template": {"name": "t"}, "idleTimeout": "6s"}),
                Some("2026-01-01T00:00:10Z"),
            ),
            default,
        );
        let t10 = "2026-01-01T00:00:10Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond();
        assert_eq!(c.recorded(), t10);
        assert_eq!(c.idle.load(Ordering::Relaxed), 6_000);
        // An older view (a lagging watch) does not move it back.
        c.learn(
            &actor(
                json!({"template": {"name": "t"}}),
                Some("2026-01-01T00:00:05Z"),
            ),
            default,
        );
        assert_eq!(c.recorded(), t10);
        assert_eq!(c.idle.load(Ordering::Relaxed), 300_000, "the default");
        c.learn(
            &actor(
                json!({"template": {"name": "t"}, "activation": "Always"}),
                None,
            ),
            default,
        );
        assert_eq!(c.idle.load(Ordering::Relaxed), 0, "never idle-suspended");
        assert!(!c.stale(t10 + 3600 * S));
    }

    #[test]
    fn open_guards_keep_actors_due_and_touched_ones_report_once() {
        let a = Arc::new(Activity::default());
        let (k1, k2) = (ActorKey::new("s", "one"), ActorKey::new("s", "two"));
        let interval = Duration::from_secs(10);
        drop(a.begin(&k1));
        let g = a.begin(&k2);
        let keys = |v: Vec<(ActorKey, Arc<Counters>)>| {
            let mut k: Vec<ActorKey> = v.into_iter().map(|(k, _)| k).collect();
            k.sort();
            k
        };
        // Nothing recorded yet: both due at once.
        assert_eq!(
            keys(a.take_due(1000 * S, interval, false)),
            vec![k1.clone(), k2.clone()]
        );
        // k1 was only touched; k2 stays open.
        assert_eq!(
            keys(a.take_due(1000 * S, interval, false)),
            vec![k2.clone()]
        );
        assert_eq!(a.open(&k2), 1);
        // Once written, k2 is not due again before the interval.
        a.counters(&k2).recorded_at(1000 * S);
        assert!(a.take_due(1005 * S, interval, false).is_empty());
        assert_eq!(
            keys(a.take_due(1010 * S, interval, false)),
            vec![k2.clone()]
        );
        drop(g);
        a.counters(&k2).recorded_at(1010 * S);
        // The close is activity too: written at the next due time, then forgotten.
        assert!(a.take_due(1011 * S, interval, false).is_empty());
        assert_eq!(
            keys(a.take_due(1020 * S, interval, false)),
            vec![k2.clone()]
        );
        assert!(a.take_due(1040 * S, interval, false).is_empty());
        assert_eq!(a.open(&k1), 0);
        assert!(a.lock().is_empty(), "nothing held, nothing left to report");
    }

    #[test]
    fn a_forced_flush_takes_all_unreported_activity() {
        let a = Arc::new(Activity::default());
        let (k1, k2) = (ActorKey::new("s", "one"), ActorKey::new("s", "two"));
        let c1 = a.counters(&k1);
        c1.recorded_at(1000 * S);
        drop(c1.begin());
        let idle = a.counters(&k2);
        idle.recorded_at(1000 * S);
        // Not due (recorded a second ago) but unreported: a shutdown writes it.
        assert!(
            a.take_due(1001 * S, Duration::from_secs(10), false)
                .is_empty()
        );
        let forced: Vec<ActorKey> = a
            .take_due(1001 * S, Duration::from_secs(10), true)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(forced, vec![k1], "k2 had no traffic");
    }

    #[test]
    fn held_counters_stay_registered_and_report() {
        let a = Arc::new(Activity::default());
        let k = ActorKey::new("s", "cached");
        let interval = Duration::from_secs(1);
        // A cached route holds the counters across flushes, idle or not.
        let route = a.counters(&k);
        assert!(a.take_due(1000 * S, interval, false).is_empty());
        drop(route.begin());
        assert_eq!(
            a.take_due(1000 * S, interval, false).len(),
            1,
            "seen through the map"
        );
        let g = route.begin();
        assert_eq!(a.open(&k), 1);
        drop(route);
        drop(g);
        // Nobody holds them any more: reported once more (the close), then forgotten.
        assert_eq!(a.take_due(1001 * S, interval, false).len(), 1);
        assert!(a.take_due(1002 * S, interval, false).is_empty());
        let again = a.counters(&k);
        assert_eq!(Arc::strong_count(&again), 2, "a fresh entry in the map");
    }
}
