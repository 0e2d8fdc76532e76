//! Leader election on a `coordination.k8s.io/v1` `Lease`, so that two operator replicas never
//! act at once.
//!
//! A replica campaigns: it creates the lease, or takes it over once the holder has not
//! renewed it for `leaseDurationSeconds` *as observed by this replica's clock* (the record
//! unchanged since it was first seen, as client-go does: no clock sync needed), or when the
//! holder released it (no `holderIdentity`). Every write is a compare-and-swap on
//! `resourceVersion`, so of two candidates only one wins. The leader renews every
//! `retry_period`; when it has not renewed successfully for `renew_deadline` (shorter than the
//! lease duration) or sees another holder, it stops its controllers at once: by the time
//! another replica may take the lease over, the old leader has stopped acting. On shutdown it
//! releases the lease so a standby takes over without waiting.
//!
//! [`decide`] and [`observe`] are pure; [`run_elected`] does the I/O.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::is_not_found;
use crate::metrics::Metrics;

/// Default lease duration (`leaseDurationSeconds`).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// Default: the leader stops acting when it could not renew for this long.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Default period of renewals and of campaign attempts.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Leader election settings.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Atespace (namespace) of the lease.
    pub namespace: String,
    pub name: String,
    /// This replica's `holderIdentity`.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// The defaults, with `identity` (use [`default_identity`] for a unique one).
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        LeaderConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: LEASE_DURATION,
            renew_deadline: RENEW_DEADLINE,
            retry_period: RETRY_PERIOD,
        }
    }
}

/// `<hostname>-<pid>-<random>`: unique per process.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "operator".into());
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{host}-{}-{nonce:08x}", std::process::id())
}

/// A lease record as first seen by this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub resource_version: String,
    pub seen_at: Instant,
}

/// Updates the observation with the lease's current `resource_version` (a change restarts
/// the clock).
pub fn observe(prev: Option<Observation>, resource_version: &str, now: Instant) -> Observation {
    match prev {
        Some(p) if p.resource_version == resource_version => p,
        _ => Observation {
            resource_version: resource_version.to_string(),
            seen_at: now,
        },
    }
}

/// What a candidate does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No lease yet: create it, holding it.
    Create,
    /// We hold it: renew it.
    Renew,
    /// Free or expired: take it over.
    TakeOver,
    /// Someone else holds it: look again after this long.
    Wait(Duration),
}

/// Decides for candidate `me` given the lease (if any), when its current record was first
/// seen, and the retry period.
pub fn decide(
    lease: Option<&LeaseSpec>,
    observed: Option<&Observation>,
    me: &str,
    now: Instant,
    retry_period: Duration,
) -> Step {
    let Some(spec) = lease else {
        return Step::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == me => Step::Renew,
        None | Some("") => Step::TakeOver,
        Some(_) => {
            let duration = spec
                .lease_duration_seconds
                .map_or(LEASE_DURATION, |s| Duration::from_secs(s.max(1) as u64));
            let Some(o) = observed else {
                return Step::Wait(retry_period);
            };
            let expires = o.seen_at + duration;
            if now >= expires {
                Step::TakeOver
            } else {
                Step::Wait(retry_period.min(expires - now))
            }
        }
    }
}

/// The spec written for `step` by `me`, from the current spec.
pub fn next_spec(
    cur: Option<&LeaseSpec>,
    step: &Step,
    me: &str,
    duration: Duration,
    now: jiff::Timestamp,
) -> LeaseSpec {
    let mut spec = cur.cloned().unwrap_or_default();
    let t = Some(MicroTime(now));
    match step {
        Step::Create => {
            spec = LeaseSpec {
                holder_identity: Some(me.into()),
                lease_duration_seconds: Some(duration.as_secs().max(1) as i32),
                acquire_time: t.clone(),
                renew_time: t,
                lease_transitions: Some(0),
                ..Default::default()
            };
        }
        Step::TakeOver => {
            let had_holder = spec
                .holder_identity
                .as_deref()
                .is_some_and(|h| !h.is_empty());
            spec.holder_identity = Some(me.into());
            spec.lease_duration_seconds = Some(duration.as_secs().max(1) as i32);
            spec.acquire_time = t.clone();
            spec.renew_time = t;
            spec.lease_transitions =
                Some(spec.lease_transitions.unwrap_or(0) + i32::from(had_holder));
        }
        Step::Renew => {
            spec.renew_time = t;
            spec.lease_duration_seconds = Some(duration.as_secs().max(1) as i32);
        }
        Step::Wait(_) => {}
    }
    spec
}

/// The result of one attempt to hold the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attempt {
    /// We hold it (as of the instant the attempt started).
    Held,
    /// Someone else holds it; look again after this long.
    Wait(Duration),
    /// The write lost a race or failed; try again after the retry period.
    Failed,
}

struct Elector {
    api: Api<Lease>,
    cfg: LeaderConfig,
    observed: Option<Observation>,
}

impl Elector {
    async fn attempt(&mut self) -> Attempt {
        let cur = match self.api.get_opt(&self.cfg.name).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "reading the lease failed");
                return Attempt::Failed;
            }
        };
        let now = Instant::now();
        if let Some(l) = &cur {
            let rv = l.metadata.resource_version.clone().unwrap_or_default();
            self.observed = Some(observe(self.observed.take(), &rv, now));
        }
        let spec = cur.as_ref().and_then(|l| l.spec.as_ref());
        let step = decide(
            cur.as_ref()
                .map(|l| l.spec.as_ref().cloned().unwrap_or_default())
                .as_ref(),
            self.observed.as_ref(),
            &self.cfg.identity,
            now,
            self.cfg.retry_period,
        );
        if let Step::Wait(d) = step {
            return Attempt::Wait(d);
        }
        let new_spec = next_spec(
            spec,
            &step,
            &self.cfg.identity,
            self.cfg.lease_duration,
            crate::now(),
        );
        let result = match (&step, cur) {
            (Step::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(new_spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (_, Some(mut lease)) => {
                // `metadata.resourceVersion` is kept: the update is a compare-and-swap.
                lease.spec = Some(new_spec);
                self.api
                    .replace(&self.cfg.name, &PostParams::default(), &lease)
                    .await
            }
            (_, None) => return Attempt::Failed,
        };
        match result {
            Ok(l) => {
                let rv = l.metadata.resource_version.unwrap_or_default();
                self.observed = Some(observe(None, &rv, now));
                if step != Step::Renew {
                    tracing::info!(lease = %self.cfg.name, atespace = %self.cfg.namespace,
                        identity = %self.cfg.identity, "lease acquired");
                }
                Attempt::Held
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Attempt::Failed,
            Err(e) => {
                tracing::debug!(error = %e, "writing the lease failed");
                Attempt::Failed
            }
        }
    }

    /// Campaigns until this replica holds the lease; returns when the holding write started.
    async fn acquire(&mut self) -> Instant {
        loop {
            let started = Instant::now();
            match self.attempt().await {
                Attempt::Held => return started,
                Attempt::Wait(d) => tokio::time::sleep(d).await,
                Attempt::Failed => tokio::time::sleep(self.cfg.retry_period).await,
            }
        }
    }

    /// Renews until renewing fails for `renew_deadline` or another replica holds the lease;
    /// returns then.
    async fn keep(&mut self, mut last: Instant) {
        loop {
            tokio::time::sleep(self.cfg.retry_period).await;
            let started = Instant::now();
            let left = self
                .cfg
                .renew_deadline
                .saturating_sub(started.duration_since(last));
            if left.is_zero() {
                tracing::warn!(lease = %self.cfg.name, "lease not renewed in time; stopping");
                return;
            }
            match tokio::time::timeout(left, self.attempt()).await {
                Ok(Attempt::Held) => last = started,
                Ok(Attempt::Wait(_)) => {
                    tracing::warn!(lease = %self.cfg.name, "lease held by another replica; stopping");
                    return;
                }
                Ok(Attempt::Failed) | Err(_) => {}
            }
        }
    }

    /// Gives the lease up (best effort), so a standby takes over at once.
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.cfg.name, "lease released"),
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                tracing::warn!(lease = %self.cfg.name, error = %e, "releasing the lease failed")
            }
        }
    }
}

/// Campaigns for the lease forever; runs `work()` while leading and drops it when the lease
/// is lost.
pub async fn run_elected<W, F>(
    client: kube::Client,
    cfg: LeaderConfig,
    metrics: Arc<Metrics>,
    work: W,
) where
    W: Fn() -> F,
    F: Future<Output = ()>,
{
    run_elected_until(client, cfg, metrics, work, std::future::pending()).await
}

/// [`run_elected`] until `shutdown` resolves; then stops the work and releases the lease.
pub async fn run_elected_until<W, F>(
    client: kube::Client,
    cfg: LeaderConfig,
    metrics: Arc<Metrics>,
    work: W,
    shutdown: impl Future<Output = ()>,
) where
    W: Fn() -> F,
    F: Future<Output = ()>,
{
    let mut e = Elector {
        api: Api::namespaced(client, &cfg.namespace),
        cfg,
        observed: None,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let since = tokio::select! {
            s = e.acquire() => s,
            _ = &mut shutdown => return,
        };
        metrics
            .leader_acquired
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(identity = %e.cfg.identity, "leading: controllers starting");
        let stop = {
            let w = work();
            tokio::select! {
                _ = w => false,
                _ = e.keep(since) => false,
                _ = &mut shutdown => true,
            }
        };
        metrics
            .leader_lost
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if stop {
            e.release().await;
            return;
        }
        tracing::warn!(identity = %e.cfg.identity, "not leading any more: controllers stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(2),
            ..Default::default()
        }
    }

    const P: Duration = Duration::from_secs(2);

    #[test]
    fn a_missing_lease_is_created_and_our_own_renewed() {
        let now = Instant::now();
        assert_eq!(decide(None, None, "a", now, P), Step::Create);
        assert_eq!(
            decide(Some(&spec(Some("a"))), None, "a", now, P),
            Step::Renew
        );
        assert_eq!(decide(Some(&spec(None)), None, "a", now, P), Step::TakeOver);
        assert_eq!(
            decide(Some(&spec(Some(""))), None, "a", now, P),
            Step::TakeOver
        );
    }

    #[test]
    fn anothers_lease_is_taken_over_only_after_it_stayed_unchanged_for_its_duration() {
        let t0 = Instant::now();
        let s = spec(Some("b"));
        let o = observe(None, "10", t0);
        assert_eq!(decide(Some(&s), Some(&o), "a", t0, P), Step::Wait(P));
        let near = t0 + Duration::from_secs(14);
        assert_eq!(
            decide(Some(&s), Some(&o), "a", near, P),
            Step::Wait(Duration::from_secs(1))
        );
        // Renewed meanwhile (a new resourceVersion): the clock restarts.
        let o2 = observe(Some(o.clone()), "11", near);
        assert_eq!(o2.seen_at, near);
        assert_eq!(
            observe(Some(o.clone()), "10", near),
            o,
            "unchanged keeps the first sighting"
        );
        let later = t0 + Duration::from_secs(15);
        assert_eq!(decide(Some(&s), Some(&o2), "a", later, P), Step::Wait(P));
        assert_eq!(decide(Some(&s), Some(&o), "a", later, P), Step::TakeOver);
        // Not observed yet: wait.
        assert_eq!(decide(Some(&s), None, "a", later, P), Step::Wait(P));
    }

    #[test]
    fn takeovers_count_transitions_and_renewals_move_renew_time() {
        let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let s = spec(Some("b"));
        let t = next_spec(Some(&s), &Step::TakeOver, "a", LEASE_DURATION, now);
        assert_eq!(t.holder_identity.as_deref(), Some("a"));
        assert_eq!(t.lease_transitions, Some(3));
        assert_eq!(t.acquire_time, Some(MicroTime(now)));
        // A released lease taken over is not a transition from a holder.
        let r = next_spec(Some(&spec(None)), &Step::TakeOver, "a", LEASE_DURATION, now);
        assert_eq!(r.lease_transitions, Some(2));
        let later = now + Duration::from_secs(2);
        let n = next_spec(Some(&t), &Step::Renew, "a", LEASE_DURATION, later);
        assert_eq!(n.renew_time, Some(MicroTime(later)));
        assert_eq!(n.acquire_time, Some(MicroTime(now)));
        let c = next_spec(None, &Step::Create, "a", LEASE_DURATION, now);
        assert_eq!(
            (c.lease_transitions, c.lease_duration_seconds),
            (Some(0), Some(15))
        );
    }
}
