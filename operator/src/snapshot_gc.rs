//! Snapshot garbage collection: a tenant's memory images must not outlive the tenant.
//!
//! Snapshots live in the object store under `<atespace>/<actor>/<id>/` (see
//! `nodeagent::snapshots`); the node agent writes ids `s<unix ms>_<actor uid>`, so a snapshot
//! names the actor *object* that wrote it, not just its name (a recreated actor with the
//! same name is another actor). Like Kubernetes' garbage collector, the sweep lists the
//! store and deletes every snapshot whose owner no longer exists in the apiserver, and the
//! superseded snapshots of live actors:
//!
//! * never a snapshot named by a status: an actor's `status.snapshot` (the one it resumes
//!   from) or a template's (its golden snapshot, though the golden actor that wrote it is
//!   deleted when the template changes);
//! * never the golden actor's snapshots of a template some actor is `Resuming` from (it may
//!   be fetching the template's previous golden snapshot);
//! * an owner seen deleted (a watch `DELETED` event) → at once;
//! * an owner merely unknown to the cache → only when the snapshot is older than the grace
//!   (`--snapshot-gc-grace`): the actor that wrote it may not be in the cache yet;
//! * a live actor's committed snapshots other than the one its status names → once older
//!   than the grace (a suspend in flight has uploaded but not yet recorded a new one); its
//!   uncommitted uploads only after an hour (a big upload may be slow; the node agent
//!   removes them too);
//! * ids without a uid (written before uids were recorded) are owned by the actor of that
//!   name;
//! * a golden actor whose template is gone (and older than the grace) is deleted, so its
//!   snapshots go like any deleted actor's (the template owned it).
//!
//! Triggers: actor and template watch events (a deleted actor's prefix is swept within
//! [`DEBOUNCE`]; an actor whose snapshot changed is swept once the grace has passed, so its
//! superseded snapshot goes then), a full sweep at start (owners deleted while no operator ran), and a full
//! sweep every `--snapshot-gc-interval` or as soon as a snapshot kept only for its youth
//! comes of age (and 30 s after cutting a deleted actor's unfinished upload, which a suspend
//! racing the delete may still commit). A failed sweep (the store may be down) is retried with backoff (0.5 s
//! doubling to 60 s) and logged once per outage. [`decide`] is pure and unit-tested.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::mpsc;
use kube::runtime::reflector::ObjectRef;
use nodeagent::snapshots::{SnapshotKey, SnapshotStore, StoredSnapshot};

use crds::ate::ActorTemplate;
use crds::substrate::{Actor, ActorPhase};

use crate::caches::Caches;
use crate::metrics::Metrics;

/// Default grace: a snapshot younger than this is kept unless its owner was seen deleted.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(600);
/// Default period of the full sweep (the safety net for missed events).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
/// A live actor's uncommitted upload younger than this is left alone (at least the grace).
pub const UNCOMMITTED_GRACE: Duration = Duration::from_secs(3600);
/// Events within this long of each other are swept together.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// More deleted actors than this at once are swept with one full listing.
const MAX_TARGETS: usize = 256;
/// How long an owner seen deleted is remembered.
const TOMBSTONE_TTL: Duration = Duration::from_secs(3600);
/// After deleting a deleted owner's unfinished upload, sweep again this soon: the upload may
/// still have been writing (it then commits a snapshot nobody owns).
const RESWEEP_UNFINISHED: Duration = Duration::from_secs(30);
/// Full sweeps for snapshots coming of age are at least this far apart (or the grace).
const RECHECK_FLOOR: Duration = Duration::from_secs(30);
/// Snapshots deleted at once (each is a few object-store requests).
const DELETE_CONCURRENCY: usize = 16;
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Settings of the snapshot GC.
#[derive(Debug, Clone)]
pub struct SnapshotGcConfig {
    /// The snapshot store (no local cache needed).
    pub store: Arc<SnapshotStore>,
    pub grace: Duration,
    pub interval: Duration,
}

impl SnapshotGcConfig {
    pub fn new(store: Arc<SnapshotStore>) -> Self {
        Self {
            store,
            grace: DEFAULT_GRACE,
            interval: DEFAULT_INTERVAL,
        }
    }
}

/// Why a snapshot is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Its actor was seen deleted.
    OwnerDeleted,
    /// No actor owns it and it is older than the grace.
    OwnerGone,
    /// Its actor lives and resumes from a newer snapshot.
    Superseded,
    /// An upload of a live actor that never committed.
    Abandoned,
}

impl Reason {
    pub const ALL: [Reason; 4] = [
        Reason::OwnerDeleted,
        Reason::OwnerGone,
        Reason::Superseded,
        Reason::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::OwnerDeleted => "owner_deleted",
            Reason::OwnerGone => "owner_gone",
            Reason::Superseded => "superseded",
            Reason::Abandoned => "abandoned",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// `(atespace, actor)`.
pub type ActorName = (String, String);

/// What the watch caches say about the snapshots' owners.
#[derive(Debug, Clone, Default)]
pub struct Owners {
    /// Live actors (including ones being deleted behind a finalizer): name → uid.
    pub actors: HashMap<ActorName, String>,
    /// Snapshots named by a status: `(atespace, actor, id)`.
    pub referenced: HashSet<(String, String, String)>,
    /// Actors whose every snapshot is kept for now (golden actors of templates an actor is
    /// being restored from).
    pub protected: HashSet<ActorName>,
}

/// `(atespace, actor, id)` of a snapshot URI (`<store>/<atespace>/<actor>/<id>[/manifest.json]`).
pub fn key_of_uri(uri: &str) -> Option<(String, String, String)> {
    let rest = uri.trim_end_matches('/');
    let rest = rest
        .strip_suffix(nodeagent::snapshots::MANIFEST_NAME)
        .map_or(rest, |r| r.trim_end_matches('/'));
    let mut parts = rest.rsplit('/');
    let id = parts.next()?;
    let actor = parts.next()?;
    let atespace = parts.next()?;
    if [atespace, actor, id].iter().any(|p| p.is_empty()) {
        return None;
    }
    Some((atespace.into(), actor.into(), id.into()))
}

impl Owners {
    /// From the cached actors and templates.
    pub fn from_objects<'a>(
        actors: impl IntoIterator<Item = &'a Actor>,
        templates: impl IntoIterator<Item = &'a ActorTemplate>,
    ) -> Self {
        let mut o = Owners::default();
        for a in actors {
            let (Some(ns), Some(name)) = (&a.metadata.namespace, &a.metadata.name) else {
                continue;
            };
            o.actors.insert(
                (ns.clone(), name.clone()),
                a.metadata.uid.clone().unwrap_or_default(),
            );
            let st = a.status.as_ref();
            let own = st.and_then(|s| s.snapshot.as_ref());
            if let Some(k) = own.and_then(|s| key_of_uri(&s.uri)) {
                o.referenced.insert(k);
            }
            // Restoring from its template's golden snapshot, whichever the template named
            // when the restore began.
            let resuming = st.and_then(|s| s.phase.as_ref()) == Some(&ActorPhase::Resuming);
            if resuming && own.is_none() && ns != crds::GOLDEN_ATESPACE {
                let tns = a.spec.template.namespace.as_deref().unwrap_or(ns);
                o.protected.insert((
                    crds::GOLDEN_ATESPACE.to_string(),
                    crate::golden::golden_name(tns, &a.spec.template.name),
                ));
            }
        }
        for t in templates {
            let snap = t.status.as_ref().and_then(|s| s.snapshot.as_ref());
            if let Some(k) = snap.and_then(|s| key_of_uri(&s.uri)) {
                o.referenced.insert(k);
            }
        }
        o
    }
}

/// Owners seen deleted (watch `DELETED` events).
#[derive(Debug, Clone, Default)]
pub struct Deleted {
    pub uids: HashSet<String>,
    /// Names of deleted actors (for snapshots whose id records no uid).
    pub names: HashSet<ActorName>,
}

/// What a sweep decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    pub delete: Vec<(SnapshotKey, Reason)>,
    /// Snapshots kept only because they are young.
    pub young: usize,
    /// When the youngest of those comes of age (sweep again then).
    pub recheck_after: Option<Duration>,
    /// Uncommitted snapshots of deleted owners among the deletions: an upload may still be
    /// writing there (a suspend racing the delete), so look again soon.
    pub unfinished: usize,
}

/// The snapshots of `stored` to delete.
pub fn decide(
    stored: &[StoredSnapshot],
    owners: &Owners,
    deleted: &Deleted,
    now: jiff::Timestamp,
    grace: Duration,
) -> Decision {
    let mut d = Decision::default();
    for s in stored {
        let k = &s.key;
        let name = (k.atespace().to_string(), k.actor().to_string());
        let full = (name.0.clone(), name.1.clone(), k.id().to_string());
        if owners.referenced.contains(&full) || owners.protected.contains(&name) {
            continue;
        }
        let age_ms = now.as_millisecond() - s.last_modified.as_millisecond();
        let age = Duration::from_millis(age_ms.max(0) as u64);
        let live = owners.actors.get(&name);
        let owner_alive = match k.owner_uid() {
            Some(uid) if deleted.uids.contains(uid) => {
                d.delete.push((k.clone(), Reason::OwnerDeleted));
                d.unfinished += usize::from(!s.committed);
                continue;
            }
            Some(uid) => live.is_some_and(|u| u == uid),
            None if live.is_some() => true,
            None if deleted.names.contains(&name) => {
                d.delete.push((k.clone(), Reason::OwnerDeleted));
                d.unfinished += usize::from(!s.committed);
                continue;
            }
            None => false,
        };
        let (wait, reason) = match (owner_alive, s.committed) {
            (false, _) => (grace, Reason::OwnerGone),
            (true, true) => (grace, Reason::Superseded),
            (true, false) => (grace.max(UNCOMMITTED_GRACE), Reason::Abandoned),
        };
        if age >= wait {
            d.delete.push((k.clone(), reason));
        } else {
            d.young += 1;
            let left = wait - age;
            d.recheck_after = Some(d.recheck_after.map_or(left, |r| r.min(left)));
        }
    }
    d
}

/// Golden actors (`ate-golden`) whose template is gone, created longer than `grace` ago (a
/// template created a moment ago may not be in the cache yet): `(name, uid)`. Their
/// template owned them; deleting them lets their snapshots go like any deleted actor's.
pub fn orphaned_golden_actors<'a>(
    actors: impl IntoIterator<Item = &'a Actor>,
    templates: &HashSet<ActorName>,
    now: jiff::Timestamp,
    grace: Duration,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for a in actors {
        let m = &a.metadata;
        if m.namespace.as_deref() != Some(crds::GOLDEN_ATESPACE) || m.deletion_timestamp.is_some() {
            continue;
        }
        let Some(tns) = a.spec.template.namespace.clone() else {
            continue;
        };
        if templates.contains(&(tns, a.spec.template.name.clone())) {
            continue;
        }
        let old = m
            .creation_timestamp
            .as_ref()
            .is_some_and(|t| crate::age(t, now) >= grace);
        if let (true, Some(name), Some(uid)) = (old, &m.name, &m.uid) {
            out.push((name.clone(), uid.clone()));
        }
    }
    out
}

/// What one sweep covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    All,
    Actors(BTreeSet<ActorName>),
}

/// Failed deletions of a sweep (the first error kept).
#[derive(Debug, thiserror::Error)]
#[error("{failed} snapshot operation(s) failed, first: {first}")]
pub struct SweepError {
    failed: usize,
    #[source]
    first: nodeagent::snapshots::SnapshotError,
}

/// The GC loop's state.
struct Gc {
    client: kube::Client,
    cfg: SnapshotGcConfig,
    caches: Caches,
    metrics: Arc<Metrics>,
    uids: HashMap<String, Instant>,
    names: HashMap<ActorName, Instant>,
    pending: BTreeSet<ActorName>,
    /// The snapshot URI each live actor (by uid) was last seen with.
    snapshots: HashMap<String, Option<String>>,
    /// Actors to sweep later: their previous snapshot comes of age then.
    later: Vec<(Instant, ActorName)>,
}

impl Gc {
    /// An actor was touched: when its snapshot changed, the previous one is superseded;
    /// sweep its prefix once that is past the grace.
    fn actor_touched(&mut self, a: &Actor) {
        let (Some(ns), Some(name), Some(uid)) =
            (&a.metadata.namespace, &a.metadata.name, &a.metadata.uid)
        else {
            return;
        };
        let uri = a
            .status
            .as_ref()
            .and_then(|s| s.snapshot.as_ref())
            .map(|s| s.uri.clone());
        let before = self.snapshots.insert(uid.clone(), uri.clone());
        if matches!(before, Some(b) if b != uri) {
            let at = Instant::now() + self.cfg.grace + Duration::from_secs(1);
            self.later.push((at, (ns.clone(), name.clone())));
        }
    }

    /// Moves the actors whose time has come to the pending sweep; when the next is due.
    fn due_later(&mut self, now: Instant) -> Option<Instant> {
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.later)
            .into_iter()
            .partition(|(t, _)| *t <= now);
        self.later = rest;
        self.pending.extend(due.into_iter().map(|(_, n)| n));
        self.later.iter().map(|(t, _)| *t).min()
    }

    /// The watch saw an actor deleted: remember its uid (and its name while no actor of
    /// that name exists) and sweep its prefix.
    fn actor_deleted(&mut self, a: &Actor) {
        let (Some(ns), Some(name)) = (&a.metadata.namespace, &a.metadata.name) else {
            return;
        };
        let uid = a.metadata.uid.clone().unwrap_or_default();
        tracing::debug!(atespace = %ns, actor = %name, %uid, "actor deleted; sweeping its snapshots");
        let now = Instant::now();
        self.snapshots.remove(&uid);
        if !uid.is_empty() {
            self.uids.insert(uid, now);
        }
        self.names.insert((ns.clone(), name.clone()), now);
        self.pending.insert((ns.clone(), name.clone()));
    }

    /// A template was touched: its previous golden snapshot may be unreferenced now.
    fn template_touched(&mut self, t: &ActorTemplate) {
        let (Some(ns), Some(name)) = (&t.metadata.namespace, &t.metadata.name) else {
            return;
        };
        self.pending.insert((
            crds::GOLDEN_ATESPACE.to_string(),
            crate::golden::golden_name(ns, name),
        ));
    }

    fn deleted(&mut self) -> Deleted {
        let now = Instant::now();
        self.uids
            .retain(|_, t| now.duration_since(*t) < TOMBSTONE_TTL);
        self.names
            .retain(|_, t| now.duration_since(*t) < TOMBSTONE_TTL);
        // A name deleted and created again belongs to the new actor.
        let live: Vec<ActorName> = self
            .names
            .keys()
            .filter(|(ns, n)| {
                self.caches
                    .actors
                    .get(&ObjectRef::new(n).within(ns))
                    .is_some()
            })
            .cloned()
            .collect();
        for n in live {
            self.names.remove(&n);
        }
        Deleted {
            uids: self.uids.keys().cloned().collect(),
            names: self.names.keys().cloned().collect(),
        }
    }

    /// Deletes golden actors whose template is gone (with a uid precondition); their
    /// `DELETED` events then sweep their snapshots. Failures are retried on the next sweep.
    async fn delete_orphaned_golden_actors(&self) {
        let orphans = {
            let templates: HashSet<ActorName> = self
                .caches
                .templates
                .state()
                .iter()
                .filter_map(|t| Some((t.metadata.namespace.clone()?, t.metadata.name.clone()?)))
                .collect();
            let actors = self.caches.actors.state();
            orphaned_golden_actors(
                actors.iter().map(|a| a.as_ref()),
                &templates,
                jiff::Timestamp::now(),
                self.cfg.grace,
            )
        };
        let api: kube::Api<Actor> =
            kube::Api::namespaced(self.client.clone(), crds::GOLDEN_ATESPACE);
        for (name, uid) in orphans {
            let dp = kube::api::DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => {
                    tracing::info!(actor = %name, %uid, "golden actor of a deleted template deleted")
                }
                Err(e) if crate::is_not_found(&e) => {}
                Err(e) => {
                    tracing::warn!(actor = %name, error = %e, "could not delete the golden actor of a deleted template; retrying on the next sweep")
                }
            }
        }
    }

    async fn sweep(&mut self, scope: &Scope) -> Result<Decision, SweepError> {
        self.delete_orphaned_golden_actors().await;
        let store = self.cfg.store.clone();
        let stored = match scope {
            Scope::All => store.inventory(None).await,
            Scope::Actors(names) => {
                let mut all = Vec::new();
                let mut res = Ok(());
                for (ns, n) in names {
                    match store.inventory(Some((ns, n))).await {
                        Ok(v) => all.extend(v),
                        Err(e) => {
                            res = Err(e);
                            break;
                        }
                    }
                }
                res.map(|()| all)
            }
        }
        .map_err(|first| SweepError { failed: 1, first })?;
        // The owners as the caches hold them after the listing.
        let owners = {
            let actors = self.caches.actors.state();
            let templates = self.caches.templates.state();
            Owners::from_objects(
                actors.iter().map(|a| a.as_ref()),
                templates.iter().map(|t| t.as_ref()),
            )
        };
        let deleted = self.deleted();
        let d = decide(
            &stored,
            &owners,
            &deleted,
            jiff::Timestamp::now(),
            self.cfg.grace,
        );
        let bytes_of: HashMap<&SnapshotKey, u64> =
            stored.iter().map(|s| (&s.key, s.stored_bytes)).collect();
        let (mut removed, mut bytes, mut failed, mut first) = (0usize, 0u64, 0usize, None);
        // Owned items: a stream borrowing `d` is not `Send` for every lifetime (the
        // operator's future is spawned).
        let mut results = futures::stream::iter(d.delete.clone())
            .map(move |(key, reason)| {
                let store = store.clone();
                async move {
                    let res = store.delete_snapshot(&key).await;
                    (key, reason, res)
                }
            })
            .buffer_unordered(DELETE_CONCURRENCY);
        while let Some((key, reason, res)) = results.next().await {
            match res {
                Ok(()) => {
                    let b = bytes_of.get(&key).copied().unwrap_or(0);
                    tracing::info!(
                        atespace = key.atespace(),
                        actor = key.actor(),
                        snapshot = key.id(),
                        reason = reason.as_str(),
                        bytes = b,
                        "snapshot garbage-collected"
                    );
                    self.metrics.snapshot_deleted(reason, b);
                    removed += 1;
                    bytes += b;
                }
                Err(e) => {
                    failed += 1;
                    first.get_or_insert(e);
                }
            }
        }
        drop(results);
        self.metrics.snapshot_sweeps.fetch_add(1, Ordering::Relaxed);
        let full = *scope == Scope::All;
        if removed > 0 || failed > 0 {
            tracing::info!(
                full,
                listed = stored.len(),
                deleted = removed,
                bytes,
                failed,
                young = d.young,
                "snapshot GC sweep"
            );
        } else {
            tracing::debug!(
                full,
                listed = stored.len(),
                young = d.young,
                "snapshot GC sweep: nothing to delete"
            );
        }
        match first {
            Some(first) => Err(SweepError { failed, first }),
            None => Ok(d),
        }
    }
}

/// Runs the GC until dropped: `deleted` carries the actors the watch saw deleted,
/// `templates` the templates it touched.
pub(crate) async fn run(
    client: kube::Client,
    cfg: SnapshotGcConfig,
    caches: Caches,
    mut deleted: mpsc::UnboundedReceiver<Actor>,
    mut touched: mpsc::UnboundedReceiver<Actor>,
    mut templates: mpsc::UnboundedReceiver<ActorTemplate>,
    metrics: Arc<Metrics>,
) {
    tracing::info!(store = cfg.store.url(), grace = ?cfg.grace, interval = ?cfg.interval, "snapshot GC running");
    let (interval, grace) = (cfg.interval, cfg.grace);
    let mut gc = Gc {
        client,
        cfg,
        caches,
        metrics,
        uids: HashMap::new(),
        names: HashMap::new(),
        pending: BTreeSet::new(),
        snapshots: HashMap::new(),
        later: Vec::new(),
    };
    // A full sweep at once: owners deleted while no operator ran.
    let mut full_at = Instant::now();
    let mut pending_since: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;
    let mut failures: u32 = 0;
    loop {
        let due = {
            let later = gc.due_later(Instant::now());
            if !gc.pending.is_empty() {
                pending_since.get_or_insert_with(Instant::now);
            }
            let events = pending_since.map(|t| t + DEBOUNCE);
            let mut next = events.map_or(full_at, |e| e.min(full_at));
            if let Some(l) = later {
                next = next.min(l);
            }
            retry_at.map_or(next, |r| next.max(r))
        };
        tokio::select! {
            a = deleted.next() => match a {
                Some(a) => {
                    gc.actor_deleted(&a);
                    pending_since.get_or_insert_with(Instant::now);
                }
                None => return,
            },
            a = touched.next() => match a {
                Some(a) => gc.actor_touched(&a),
                None => return,
            },
            t = templates.next() => match t {
                Some(t) => {
                    gc.template_touched(&t);
                    pending_since.get_or_insert_with(Instant::now);
                }
                None => return,
            },
            _ = tokio::time::sleep_until(due.into()) => {
                let now = Instant::now();
                gc.due_later(now);
                if gc.pending.is_empty() && full_at > now {
                    continue;
                }
                let scope = if full_at <= now || gc.pending.len() > MAX_TARGETS {
                    gc.pending.clear();
                    Scope::All
                } else {
                    Scope::Actors(std::mem::take(&mut gc.pending))
                };
                pending_since = None;
                match gc.sweep(&scope).await {
                    Ok(d) => {
                        if failures > 0 {
                            tracing::info!(attempts = failures + 1, "snapshot GC recovered");
                        }
                        failures = 0;
                        retry_at = None;
                        // Snapshots come of age all the time in a busy system: full
                        // listings for them at most every min(grace, 30 s).
                        let floor = grace.min(RECHECK_FLOOR);
                        let mut after = d.recheck_after.map_or(interval, |r| r.max(floor).min(interval));
                        if d.unfinished > 0 {
                            after = after.min(RESWEEP_UNFINISHED);
                        }
                        let next = Instant::now() + after;
                        full_at = if scope == Scope::All { next } else { full_at.min(next) };
                    }
                    Err(e) => {
                        gc.metrics.snapshot_gc_errors.fetch_add(1, Ordering::Relaxed);
                        failures += 1;
                        let backoff = BACKOFF_BASE
                            .saturating_mul(1u32 << (failures - 1).min(16))
                            .min(BACKOFF_MAX);
                        // Once per outage in full; the retries quietly.
                        if failures == 1 {
                            tracing::warn!(error = %e, ?backoff, "snapshot GC failed; retrying with backoff");
                        } else {
                            tracing::debug!(error = %e, ?backoff, attempts = failures, "snapshot GC failed again");
                        }
                        retry_at = Some(Instant::now() + backoff);
                        match scope {
                            Scope::All => full_at = Instant::now(),
                            Scope::Actors(names) => {
                                gc.pending.extend(names);
                                pending_since = Some(Instant::now());
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(600);
    const A: &str = "0b6c7c4e-9d8f-4a57-a3c2-5e7f9d1b2c3a";
    const B: &str = "7d1e2f3a-1111-4a57-a3c2-5e7f9d1b2c3a";

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000).unwrap()
    }

    /// A snapshot of `ns/actor` with `id`, written `age_s` seconds before [`now`].
    fn snap(ns: &str, actor: &str, id: &str, age_s: i64, committed: bool) -> StoredSnapshot {
        StoredSnapshot {
            key: SnapshotKey::new(ns, actor, id).unwrap(),
            committed,
            last_modified: jiff::Timestamp::from_second(now().as_second() - age_s).unwrap(),
            objects: 3,
            stored_bytes: 100,
        }
    }

    fn owners(actors: &[(&str, &str, &str)], referenced: &[(&str, &str, &str)]) -> Owners {
        Owners {
            actors: actors
                .iter()
                .map(|(ns, n, uid)| ((ns.to_string(), n.to_string()), uid.to_string()))
                .collect(),
            referenced: referenced
                .iter()
                .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
                .collect(),
            protected: HashSet::new(),
        }
    }

    fn deleted_ids(d: &Decision) -> Vec<(String, Reason)> {
        d.delete.iter().map(|(k, r)| (k.to_string(), *r)).collect()
    }

    #[test]
    fn a_deleted_actors_snapshots_go_at_once_even_young_ones() {
        let id = format!("s1_{A}");
        let stored = [
            snap("t", "x", &id, 5, true),
            snap("t", "x", &format!("s2_{A}"), 1, false),
        ];
        let deleted = Deleted {
            uids: [A.to_string()].into(),
            names: HashSet::new(),
        };
        let d = decide(&stored, &Owners::default(), &deleted, now(), GRACE);
        assert_eq!(
            deleted_ids(&d),
            vec![
                (format!("t/x/{id}"), Reason::OwnerDeleted),
                (format!("t/x/s2_{A}"), Reason::OwnerDeleted),
            ]
        );
        assert_eq!(
            d.unfinished, 1,
            "the uncommitted one may still be uploading"
        );
    }

    #[test]
    fn an_unknown_owner_is_given_the_grace() {
        let stored = [
            snap("t", "x", &format!("s1_{A}"), 30, true),
            snap("t", "y", &format!("s1_{B}"), 601, true),
        ];
        let d = decide(
            &stored,
            &Owners::default(),
            &Deleted::default(),
            now(),
            GRACE,
        );
        assert_eq!(
            deleted_ids(&d),
            vec![(format!("t/y/s1_{B}"), Reason::OwnerGone)]
        );
        assert_eq!(d.young, 1);
        assert_eq!(d.recheck_after, Some(Duration::from_secs(570)));
    }

    #[test]
    fn a_recreated_actor_with_the_same_name_does_not_own_the_old_snapshots() {
        // x was deleted (uid A) and created again (uid B): A's snapshots go, B's stay.
        let stored = [
            snap("t", "x", &format!("s1_{A}"), 900, true),
            snap("t", "x", &format!("s2_{B}"), 10, true),
        ];
        let o = owners(&[("t", "x", B)], &[("t", "x", &format!("s2_{B}"))]);
        let d = decide(&stored, &o, &Deleted::default(), now(), GRACE);
        assert_eq!(
            deleted_ids(&d),
            vec![(format!("t/x/s1_{A}"), Reason::OwnerGone)]
        );
    }

    #[test]
    fn a_live_actor_keeps_the_snapshot_it_points_at_and_young_ones() {
        let stored = [
            snap("t", "x", &format!("s1_{A}"), 7200, true),
            // Named by the status: kept however old.
            snap("t", "x", &format!("s2_{A}"), 3600, true),
            // Written by a suspend in flight, not yet recorded.
            snap("t", "x", &format!("s3_{A}"), 5, true),
            // An unfinished upload: kept for an hour.
            snap("t", "x", &format!("s4_{A}"), 1200, false),
            snap("t", "x", &format!("s0_{A}"), 4000, false),
        ];
        let o = owners(&[("t", "x", A)], &[("t", "x", &format!("s2_{A}"))]);
        let d = decide(&stored, &o, &Deleted::default(), now(), GRACE);
        assert_eq!(
            deleted_ids(&d),
            vec![
                (format!("t/x/s1_{A}"), Reason::Superseded),
                (format!("t/x/s0_{A}"), Reason::Abandoned),
            ]
        );
        assert_eq!(d.young, 2);
    }

    #[test]
    fn golden_snapshots_named_by_a_template_or_being_restored_from_are_kept() {
        let g = crds::GOLDEN_ATESPACE;
        let stored = [
            // The template's golden snapshot: its golden actor is gone (deleted uid).
            snap(g, "team-a-counter", &format!("s1_{A}"), 9000, true),
            // The previous generation's: an actor is Resuming from the template.
            snap(g, "team-b-web", &format!("s1_{B}"), 9000, true),
            // Unreferenced and unprotected: goes.
            snap(g, "team-c-old", &format!("s1_{B}"), 9000, true),
        ];
        let mut o = owners(&[], &[(g, "team-a-counter", &format!("s1_{A}"))]);
        o.protected
            .insert((g.to_string(), "team-b-web".to_string()));
        let deleted = Deleted {
            uids: [A.to_string()].into(),
            names: HashSet::new(),
        };
        let d = decide(&stored, &o, &deleted, now(), GRACE);
        assert_eq!(
            deleted_ids(&d),
            vec![(format!("{g}/team-c-old/s1_{B}"), Reason::OwnerGone)]
        );
    }

    #[test]
    fn ids_without_a_uid_belong_to_the_actor_of_that_name() {
        let stored = [
            snap("t", "x", "s1", 9000, true),
            snap("t", "y", "s1", 5, true),
            snap("t", "z", "s1", 9000, true),
        ];
        let o = owners(&[("t", "x", A)], &[("t", "x", "s1")]);
        let deleted = Deleted {
            uids: HashSet::new(),
            names: [("t".to_string(), "y".to_string())].into(),
        };
        let d = decide(&stored, &o, &deleted, now(), GRACE);
        assert_eq!(
            deleted_ids(&d),
            vec![
                ("t/y/s1".to_string(), Reason::OwnerDeleted),
                ("t/z/s1".to_string(), Reason::OwnerGone),
            ]
        );
    }

    #[test]
    fn golden_actors_of_deleted_templates_are_orphans_after_the_grace() {
        let golden = |name: &str, tns: &str, created: &str| -> Actor {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
                "metadata": {"name": name, "namespace": "ate-golden", "uid": format!("u-{name}"),
                    "creationTimestamp": created},
                "spec": {"template": {"name": "counter", "namespace": tns}},
            }))
            .unwrap()
        };
        let old = "2027-01-15T07:00:00Z";
        let actors = [
            golden("a-counter", "a", old),
            golden("b-counter", "b", old),
            // Created a moment ago: its template may not be cached yet.
            golden("c-counter", "c", "2027-01-15T07:59:59Z"),
        ];
        let mut tenant = golden("x", "a", old);
        tenant.metadata.namespace = Some("a".into());
        let templates: HashSet<ActorName> = [("a".to_string(), "counter".to_string())].into();
        let now: jiff::Timestamp = "2027-01-15T08:00:00Z".parse().unwrap();
        let orphans = orphaned_golden_actors(
            actors.iter().chain([&tenant]),
            &templates,
            now,
            Duration::from_secs(60),
        );
        assert_eq!(
            orphans,
            vec![("b-counter".to_string(), "u-b-counter".to_string())]
        );
    }

    #[test]
    fn owners_come_from_statuses() {
        let actor: Actor = serde_json::from_value(serde_json::json!({
            "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
            "metadata": {"name": "x", "namespace": "t", "uid": A},
            "spec": {"template": {"name": "counter"}},
            "status": {"phase": "Suspended",
                "snapshot": {"uri": format!("file:///s/t/x/s1_{A}/manifest.json")}},
        }))
        .unwrap();
        let fresh: Actor = serde_json::from_value(serde_json::json!({
            "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
            "metadata": {"name": "y", "namespace": "t", "uid": B},
            "spec": {"template": {"name": "counter", "namespace": "lib"}},
            "status": {"phase": "Resuming"},
        }))
        .unwrap();
        let template: ActorTemplate = serde_json::from_value(serde_json::json!({
            "apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
            "metadata": {"name": "counter", "namespace": "t"},
            "spec": {"containers": [{"name": "c", "image": "i"}], "workerPoolRef": {"name": "p"}},
            "status": {"snapshot": {"uri": "s3://b/p/ate-golden/t-counter/s9_u/manifest.json"}},
        }))
        .unwrap();
        let o = Owners::from_objects([&actor, &fresh], [&template]);
        assert_eq!(o.actors.len(), 2);
        assert!(
            o.referenced
                .contains(&("t".into(), "x".into(), format!("s1_{A}")))
        );
        assert!(
            o.referenced
                .contains(&("ate-golden".into(), "t-counter".into(), "s9_u".into()))
        );
        assert!(
            o.protected
                .contains(&("ate-golden".into(), "lib-counter".into()))
        );
        assert_eq!(
            key_of_uri("file:///s/a/b/c"),
            Some(("a".into(), "b".into(), "c".into()))
        );
        assert_eq!(key_of_uri("c"), None);
    }
}
