//! Cordon and drain (per `Worker`, triggered also by the actor bound to it and, in a cluster,
//! by its `Node`):
//!
//! * cordon (cluster mode): a worker whose Node is cordoned ([`node_cordon`]: `kubectl
//!   cordon`/`drain`, or a taint that announces the node's removal, such as the
//!   cluster-autoscaler's scale-down taint) gets `spec.unschedulable=true` and the
//!   [`CORDONED_BY_NODE`] annotation; when the Node is uncordoned, only a worker carrying that
//!   annotation is uncordoned, so a worker cordoned by hand stays cordoned. A node agent pod is
//!   a DaemonSet pod, which `kubectl drain` does not evict, and its termination leaves the
//!   sandboxes running (rolling upgrades must not disturb actors): this is what moves actors
//!   off a node that goes away.
//! * drain (both modes; keyed on `spec.unschedulable`, however it was set): the running actor
//!   of a cordoned worker is asked to suspend (`POST .../actors/<name>/suspend`, the path an
//!   idle actor takes), at most [`DrainSlots`]' limit at once. The scheduler binds no new
//!   actor to a cordoned worker, so the next resume (a request through the router; for an
//!   `Always` actor, the lifecycle controller at once) lands on another worker.
//! * the worker's `Schedulable` condition says which: `False` with reason `Draining` while
//!   an actor is bound to it, `Cordoned` once none is; `True` again when uncordoned.
//!
//! [`decide_cordon`], [`decide_drain`] and [`schedulable_condition`] are pure; [`reconcile`]
//! performs them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::{Value, json};

use crds::annotations::CORDONED_BY_NODE;
use crds::conditions::{SCHEDULABLE, reasons};
use crds::substrate::{Actor, ActorPhase, Worker};

use crate::act::{self, Outcome};
use crate::runner::Ctx;
use crate::{OperatorError, is_not_found};

/// Default of how many actors a drain suspends at once (over all cordoned workers).
pub const DEFAULT_DRAIN_IN_FLIGHT: usize = 8;
/// A worker whose drain waits for a free slot is looked at again after this long.
pub const DRAIN_RETRY: Duration = Duration::from_secs(1);

/// Taint keys that cordon a node's workers when their effect is `NoSchedule` or `NoExecute`:
/// taints that say the node is going away or takes no new work, which the node agent's
/// DaemonSet tolerates (DaemonSet pods tolerate `unschedulable` by default) but new actors
/// must not. Other taints (a dedicated pool's `NoSchedule`, which the DaemonSet tolerates on
/// purpose) are the cluster's business, not a cordon.
pub const CORDON_TAINTS: &[&str] = &[
    // `kubectl cordon` (the node lifecycle controller mirrors spec.unschedulable with it).
    "node.kubernetes.io/unschedulable",
    // cluster-autoscaler's scale-down of the node.
    "ToBeDeletedByClusterAutoscaler",
    // Karpenter's disruption (consolidation, expiry, drift) of the node.
    "karpenter.sh/disrupted",
    // A node declared out of service (shut down; its pods are force-deleted).
    "node.kubernetes.io/out-of-service",
];

/// Why `node` is cordoned (`spec.unschedulable`, or a [`CORDON_TAINTS`] taint with effect
/// `NoSchedule` or `NoExecute`); `None` when it is not.
pub fn node_cordon(node: &Node) -> Option<String> {
    let spec = node.spec.as_ref()?;
    if spec.unschedulable == Some(true) {
        return Some("spec.unschedulable".into());
    }
    spec.taints
        .iter()
        .flatten()
        .find(|t| {
            CORDON_TAINTS.contains(&t.key.as_str())
                && matches!(t.effect.as_str(), "NoSchedule" | "NoExecute")
        })
        .map(|t| format!("taint {}:{}", t.key, t.effect))
}

/// What the cordon controller changes on a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CordonChange {
    Nothing,
    /// Its node is cordoned: `spec.unschedulable=true`, annotated [`CORDONED_BY_NODE`].
    Cordon {
        node: String,
        why: String,
    },
    /// Its node is no longer cordoned and the operator cordoned it: uncordon it.
    Uncordon {
        node: String,
    },
    /// Cordoned by the operator once, uncordoned by hand since: drop the annotation only.
    Forget,
}

fn annotated(w: &Worker) -> Option<&str> {
    w.metadata
        .annotations
        .as_ref()?
        .get(CORDONED_BY_NODE)
        .map(String::as_str)
}

/// Decides the cordon of worker `w` from its node (`None`: no such Node in the cache, or the
/// worker names none: nothing changes, so a missing watch or a standalone worker is never
/// uncordoned).
pub fn decide_cordon(w: &Worker, node: Option<&Node>) -> CordonChange {
    let Some(node) = node else {
        return CordonChange::Nothing;
    };
    let name = node.metadata.name.clone().unwrap_or_default();
    if w.spec.node.as_deref() != Some(name.as_str()) || w.metadata.deletion_timestamp.is_some() {
        return CordonChange::Nothing;
    }
    match (node_cordon(node), w.spec.unschedulable, annotated(w)) {
        // Already cordoned, by the node or by hand (then it stays the user's: not annotated,
        // so the node's uncordon leaves it).
        (Some(_), true, _) => CordonChange::Nothing,
        (Some(why), false, _) => CordonChange::Cordon { node: name, why },
        (None, true, Some(_)) => CordonChange::Uncordon { node: name },
        (None, false, Some(_)) => CordonChange::Forget,
        (None, _, None) => CordonChange::Nothing,
    }
}

/// The merge patch of a change (with `resourceVersion`: written only over what was decided on).
pub fn cordon_patch(w: &Worker, change: &CordonChange) -> Option<Value> {
    let rv = w.metadata.resource_version.clone();
    let (unschedulable, annotation) = match change {
        CordonChange::Nothing => return None,
        CordonChange::Cordon { node, .. } => (json!(true), json!(node)),
        CordonChange::Uncordon { .. } => (Value::Null, Value::Null),
        CordonChange::Forget => {
            return Some(json!({"metadata": {"resourceVersion": rv,
                "annotations": {CORDONED_BY_NODE: null}}}));
        }
    };
    Some(json!({
        "metadata": {"resourceVersion": rv, "annotations": {CORDONED_BY_NODE: annotation}},
        "spec": {"unschedulable": unschedulable},
    }))
}

/// The actor to suspend to drain worker `w`: its bound actor (`actor`, from the cache) when
/// the worker is cordoned and the actor runs there. A resuming actor is suspended once it
/// runs (its checkpoint needs a running sandbox); golden actors are left to the golden
/// controller, which suspends them as soon as they are ready.
pub fn decide_drain<'a>(w: &Worker, actor: Option<&'a Actor>) -> Option<&'a Actor> {
    if !w.spec.unschedulable {
        return None;
    }
    let bound = w.status.as_ref()?.actor.as_ref()?;
    let a = actor?;
    let st = a.status.as_ref()?;
    let here = st.worker.as_ref().map(|x| x.name.as_str()) == w.metadata.name.as_deref();
    let same = bound.uid.is_none() || a.metadata.uid == bound.uid;
    (here
        && same
        && st.phase == Some(ActorPhase::Running)
        && a.metadata.deletion_timestamp.is_none()
        && a.metadata.namespace.as_deref() != Some(crds::GOLDEN_ATESPACE))
    .then_some(a)
}

/// The `Schedulable` condition worker `w` should carry (`None`: leave it as it is, e.g. a
/// worker never cordoned carries none).
pub fn schedulable_condition(w: &Worker) -> Option<(bool, &'static str, String)> {
    let bound = w.status.as_ref().and_then(|s| s.actor.as_ref());
    let by = match annotated(w) {
        Some(node) => format!("its node {node} is cordoned"),
        None => "cordoned by hand (spec.unschedulable)".to_string(),
    };
    if !w.spec.unschedulable {
        let had = current_condition(w).is_some();
        return had.then(|| {
            (
                true,
                reasons::SCHEDULABLE,
                "the worker takes new actors".to_string(),
            )
        });
    }
    Some(match bound {
        Some(a) => (
            false,
            reasons::DRAINING,
            format!(
                "{by}: takes no new actors; actor {}/{} is being suspended and resumes on another worker",
                a.namespace, a.name
            ),
        ),
        None => (
            false,
            reasons::CORDONED,
            format!("{by}: takes no new actors"),
        ),
    })
}

fn current_condition(w: &Worker) -> Option<&Condition> {
    w.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == SCHEDULABLE)
}

/// `w` with its `Schedulable` condition set to `want` (transition time kept when the status
/// does not change); `None` when it says that already.
pub fn with_schedulable(
    w: &Worker,
    want: &(bool, &'static str, String),
    now: Timestamp,
) -> Option<Worker> {
    let (status, reason, message) = want;
    let status = if *status { "True" } else { "False" };
    let cur = current_condition(w);
    if cur.is_some_and(|c| c.status == status && c.reason == *reason && c.message == *message) {
        return None;
    }
    let since = cur
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    let mut new = w.clone();
    let st = new.status.get_or_insert_with(Default::default);
    st.conditions.retain(|c| c.type_ != SCHEDULABLE);
    st.conditions.push(Condition {
        type_: SCHEDULABLE.into(),
        status: status.into(),
        reason: (*reason).into(),
        message: message.clone(),
        last_transition_time: since,
        observed_generation: w.metadata.generation,
    });
    Some(new)
}

/// A drain suspend under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainEntry {
    /// `namespace/name` of the actor.
    pub actor: String,
    /// The cordoned worker it is moved off.
    pub worker: String,
    pub started: Instant,
}

/// The drain suspends under way (by actor uid), at most `limit` at once over all workers: a
/// node with many actors is drained a few at a time, so the checkpoint uploads and the
/// resumes elsewhere do not all land at once.
#[derive(Debug)]
pub struct DrainSlots {
    limit: usize,
    /// A suspend still not done after this long no longer holds its slot (it is the
    /// lifecycle controller's business: `SuspendDeadlineExceeded`).
    expiry: Duration,
    inner: Mutex<HashMap<String, DrainEntry>>,
}

impl DrainSlots {
    pub fn new(limit: usize, expiry: Duration) -> Self {
        Self {
            limit: limit.max(1),
            expiry,
            inner: Mutex::default(),
        }
    }

    /// Takes a slot for the drain of actor `uid` if one is free (or it holds one already),
    /// after releasing the slots of suspends that are over: `under_way(entry)` says whether
    /// that actor is still bound to the worker it is moved off.
    pub fn try_take(
        &self,
        uid: &str,
        entry: DrainEntry,
        under_way: impl Fn(&str, &DrainEntry) -> bool,
    ) -> bool {
        let Ok(mut m) = self.inner.lock() else {
            return false;
        };
        let now = entry.started;
        m.retain(|u, e| now.saturating_duration_since(e.started) < self.expiry && under_way(u, e));
        if m.contains_key(uid) {
            return true;
        }
        if m.len() >= self.limit {
            return false;
        }
        m.insert(uid.to_string(), entry);
        true
    }

    /// Gives the slot of `uid` back (its suspend was refused or the actor is gone).
    pub fn release(&self, uid: &str) {
        if let Ok(mut m) = self.inner.lock() {
            m.remove(uid);
        }
    }

    /// How many drain suspends are under way.
    pub fn in_flight(&self) -> usize {
        self.inner.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// The cached actor named by `r`.
fn cached_actor(store: &Store<Actor>, ns: &str, name: &str) -> Option<Arc<Actor>> {
    store.get(&ObjectRef::new(name).within(ns))
}

/// Whether the drain of `e` (actor `uid`) is still under way according to the actor cache.
fn still_draining(store: &Store<Actor>, uid: &str, e: &DrainEntry) -> bool {
    let Some((ns, name)) = e.actor.split_once('/') else {
        return false;
    };
    cached_actor(store, ns, name).is_some_and(|a| {
        let st = a.status.as_ref();
        a.metadata.uid.as_deref() == Some(uid)
            && st.and_then(|s| s.worker.as_ref()).map(|w| w.name.as_str())
                == Some(e.worker.as_str())
            && matches!(
                st.and_then(|s| s.phase),
                Some(ActorPhase::Running | ActorPhase::Suspending)
            )
    })
}

/// The worker an actor is bound to (the drain controller's trigger from actors).
pub(crate) fn worker_of(a: &Actor) -> Option<ObjectRef<Worker>> {
    let w = a.status.as_ref()?.worker.as_ref()?;
    Some(ObjectRef::new(&w.name))
}

/// The workers of a node (the controller's trigger from Nodes).
pub(crate) fn workers_of(store: &Store<Worker>, node: &Node) -> Vec<ObjectRef<Worker>> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    store
        .state()
        .iter()
        .filter(|w| w.spec.node.as_deref() == Some(name))
        .map(|w| ObjectRef::from_obj(w.as_ref()))
        .collect()
}

/// The watch of the cluster's Nodes into `writer`, handing each touched one to `touched`. A
/// Node's status (images, conditions) is large and of no use here: only metadata and spec are
/// kept.
pub(crate) fn watch_nodes(
    client: kube::Client,
    writer: reflector::store::Writer<Node>,
    touched: mpsc::UnboundedSender<Node>,
) -> BoxFuture<'static, ()> {
    watcher(Api::<Node>::all(client), watcher::Config::default())
        .default_backoff()
        .modify(|n| {
            n.status = None;
            n.metadata.managed_fields = None;
        })
        .reflect(writer)
        .touched_objects()
        .for_each(move |r| {
            match r {
                Ok(n) => {
                    let _ = touched.unbounded_send(n);
                }
                Err(e) => {
                    tracing::debug!(kind = "Node", error = %e, "watch failed; retrying with backoff")
                }
            }
            futures::future::ready(())
        })
        .boxed()
}

/// Reconciles one worker: its cordon (from its Node, cluster mode), its `Schedulable`
/// condition, and the drain of its actor.
pub(crate) async fn reconcile(w: Arc<Worker>, ctx: Arc<Ctx>) -> Result<Action, OperatorError> {
    let name = w.metadata.name.clone().unwrap_or_default();
    let api: Api<Worker> = Api::all(ctx.clients.substrate.clone());
    if let (Some(nodes), Some(node)) = (&ctx.caches.nodes, w.spec.node.as_deref()) {
        let n = nodes.get(&ObjectRef::new(node));
        let change = decide_cordon(&w, n.as_deref());
        if let Some(patch) = cordon_patch(&w, &change) {
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {}
                // Changed meanwhile: the watch event brings the new one here again.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    return Ok(Action::requeue(DRAIN_RETRY));
                }
                Err(e) if is_not_found(&e) => return Ok(ctx.gone("cordon", &name)),
                Err(e) => return Err(e.into()),
            }
            match &change {
                CordonChange::Cordon { node, why } => {
                    tracing::info!(worker = %name, node = %node, why = %why, "node cordoned: worker cordoned")
                }
                CordonChange::Uncordon { node } => {
                    tracing::info!(worker = %name, node = %node, "node uncordoned: worker uncordoned")
                }
                _ => {}
            }
            // The watch event of the write continues from there.
            return Ok(Action::requeue(ctx.cfg.resync));
        }
    }
    if let Some(want) = schedulable_condition(&w)
        && with_schedulable(&w, &want, crate::now()).is_some()
    {
        let now = crate::now();
        let out = act::update_status(&api, &name, |cur| {
            schedulable_condition(cur).and_then(|want| with_schedulable(cur, &want, now))
        })
        .await?;
        if out == Outcome::Gone {
            return Ok(ctx.gone("cordon", &name));
        }
    }
    let bound = w.status.as_ref().and_then(|s| s.actor.as_ref());
    let actor = bound.and_then(|r| cached_actor(&ctx.caches.actors, &r.namespace, &r.name));
    let Some(a) = decide_drain(&w, actor.as_deref()) else {
        return Ok(Action::requeue(ctx.cfg.resync));
    };
    let ns = a.metadata.namespace.clone().unwrap_or_default();
    let aname = a.metadata.name.clone().unwrap_or_default();
    let uid = a.metadata.uid.clone().unwrap_or_default();
    let entry = DrainEntry {
        actor: format!("{ns}/{aname}"),
        worker: name.clone(),
        started: Instant::now(),
    };
    let store = ctx.caches.actors.clone();
    if !ctx
        .drains
        .try_take(&uid, entry, |u, e| still_draining(&store, u, e))
    {
        tracing::debug!(worker = %name, atespace = %ns, actor = %aname, "drain waits for a free slot");
        return Ok(Action::requeue(DRAIN_RETRY));
    }
    match act::actor_action(&ctx.clients.substrate, &ns, &aname, "suspend").await {
        Ok(Outcome::Done) => {
            ctx.metrics.drained();
            tracing::info!(worker = %name, atespace = %ns, actor = %aname, "worker cordoned: suspending its actor to move it");
            Ok(Action::requeue(ctx.cfg.resync))
        }
        Ok(Outcome::Refused | Outcome::Gone) => {
            ctx.drains.release(&uid);
            Ok(Action::requeue(DRAIN_RETRY))
        }
        Err(e) => {
            ctx.drains.release(&uid);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(spec: Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": "n1"}, "spec": spec})).unwrap()
    }

    fn worker(spec: Value, annotations: Option<Value>, status: Value) -> Worker {
        let mut meta = json!({"name": "w1", "resourceVersion": "7", "generation": 1});
        if let Some(a) = annotations {
            meta["annotations"] = a;
        }
        serde_json::from_value(json!({
            "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Worker",
            "metadata": meta, "spec": spec, "status": status,
        }))
        .unwrap()
    }

    fn actor(ns: &str, uid: &str, phase: &str, on: &str) -> Actor {
        serde_json::from_value(json!({
            "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
            "metadata": {"name": "a", "namespace": ns, "uid": uid},
            "spec": {"template": {"name": "t"}},
            "status": {"phase": phase, "worker": {"name": on}},
        }))
        .unwrap()
    }

    #[test]
    fn a_node_is_cordoned_by_spec_or_by_a_removal_taint() {
        assert_eq!(node_cordon(&node(json!({}))), None);
        assert_eq!(node_cordon(&node(json!({"unschedulable": false}))), None);
        assert_eq!(
            node_cordon(&node(json!({"unschedulable": true}))).as_deref(),
            Some("spec.unschedulable")
        );
        for (key, effect, cordoned) in [
            ("ToBeDeletedByClusterAutoscaler", "NoSchedule", true),
            ("node.kubernetes.io/unschedulable", "NoSchedule", true),
            ("karpenter.sh/disrupted", "NoSchedule", true),
            ("node.kubernetes.io/out-of-service", "NoExecute", true),
            // The autoscaler's soft "candidate" mark is no cordon.
            (
                "DeletionCandidateOfClusterAutoscaler",
                "PreferNoSchedule",
                false,
            ),
            ("ToBeDeletedByClusterAutoscaler", "PreferNoSchedule", false),
            // A dedicated pool's taint (the DaemonSet tolerates it on purpose).
            ("dedicated", "NoSchedule", false),
        ] {
            let n = node(json!({"taints": [{"key": key, "effect": effect, "value": "x"}]}));
            assert_eq!(node_cordon(&n).is_some(), cordoned, "{key}:{effect}");
        }
    }

    #[test]
    fn the_operator_uncordons_only_the_workers_it_cordoned() {
        let cordoned = node(json!({"unschedulable": true}));
        let free = node(json!({}));
        let plain = worker(json!({"pool": "p", "node": "n1"}), None, json!({}));
        let by_node = worker(
            json!({"pool": "p", "node": "n1", "unschedulable": true}),
            Some(json!({CORDONED_BY_NODE: "n1"})),
            json!({}),
        );
        let by_hand = worker(
            json!({"pool": "p", "node": "n1", "unschedulable": true}),
            None,
            json!({}),
        );
        let uncordoned_by_hand = worker(
            json!({"pool": "p", "node": "n1"}),
            Some(json!({CORDONED_BY_NODE: "n1"})),
            json!({}),
        );
        // Node cordoned.
        let change = decide_cordon(&plain, Some(&cordoned));
        assert_eq!(
            change,
            CordonChange::Cordon {
                node: "n1".into(),
                why: "spec.unschedulable".into()
            }
        );
        assert_eq!(
            cordon_patch(&plain, &change),
            Some(
                json!({"metadata": {"resourceVersion": "7", "annotations": {CORDONED_BY_NODE: "n1"}},
                        "spec": {"unschedulable": true}})
            )
        );
        assert_eq!(
            decide_cordon(&by_node, Some(&cordoned)),
            CordonChange::Nothing
        );
        assert_eq!(
            decide_cordon(&by_hand, Some(&cordoned)),
            CordonChange::Nothing
        );
        // Level-triggered: the node is still cordoned, so the worker is again.
        assert!(matches!(
            decide_cordon(&uncordoned_by_hand, Some(&cordoned)),
            CordonChange::Cordon { .. }
        ));
        // Node uncordoned.
        let change = decide_cordon(&by_node, Some(&free));
        assert_eq!(change, CordonChange::Uncordon { node: "n1".into() });
        assert_eq!(
            cordon_patch(&by_node, &change),
            Some(
                json!({"metadata": {"resourceVersion": "7", "annotations": {CORDONED_BY_NODE: null}},
                        "spec": {"unschedulable": null}})
            )
        );
        assert_eq!(decide_cordon(&by_hand, Some(&free)), CordonChange::Nothing);
        assert_eq!(decide_cordon(&plain, Some(&free)), CordonChange::Nothing);
        assert_eq!(
            decide_cordon(&uncordoned_by_hand, Some(&free)),
            CordonChange::Forget
        );
        // No Node known (standalone, a node not listed yet, another node): nothing.
        assert_eq!(decide_cordon(&by_node, None), CordonChange::Nothing);
        let mut elsewhere = plain.clone();
        elsewhere.spec.node = Some("n2".into());
        assert_eq!(
            decide_cordon(&elsewhere, Some(&cordoned)),
            CordonChange::Nothing
        );
    }

    #[test]
    fn only_a_running_actor_of_a_cordoned_worker_is_drained() {
        let status =
            json!({"phase": "Bound", "actor": {"namespace": "team-a", "name": "a", "uid": "u1"}});
        let cordoned = worker(
            json!({"pool": "p", "unschedulable": true}),
            None,
            status.clone(),
        );
        let running = actor("team-a", "u1", "Running", "w1");
        assert!(decide_drain(&cordoned, Some(&running)).is_some());
        // Not cordoned.
        let open = worker(json!({"pool": "p"}), None, status);
        assert!(decide_drain(&open, Some(&running)).is_none());
        // Resuming (suspended once it runs), already suspending, elsewhere, another uid.
        for a in [
            actor("team-a", "u1", "Resuming", "w1"),
            actor("team-a", "u1", "Suspending", "w1"),
            actor("team-a", "u1", "Running", "w2"),
            actor("team-a", "u2", "Running", "w1"),
        ] {
            assert!(decide_drain(&cordoned, Some(&a)).is_none(), "{a:?}");
        }
        // Golden actors: the golden controller suspends them.
        let g = actor(crds::GOLDEN_ATESPACE, "u1", "Running", "w1");
        assert!(decide_drain(&cordoned, Some(&g)).is_none());
        // Not in the cache (yet).
        assert!(decide_drain(&cordoned, None).is_none());
    }

    #[test]
    fn the_schedulable_condition_says_cordoned_or_draining() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let open = worker(json!({"pool": "p"}), None, json!({"phase": "Free"}));
        assert_eq!(
            schedulable_condition(&open),
            None,
            "never cordoned: no condition"
        );
        let draining = worker(
            json!({"pool": "p", "unschedulable": true}),
            Some(json!({CORDONED_BY_NODE: "n1"})),
            json!({"phase": "Bound", "actor": {"namespace": "team-a", "name": "a"}}),
        );
        let want = schedulable_condition(&draining).unwrap();
        assert_eq!((want.0, want.1), (false, reasons::DRAINING));
        assert!(
            want.2.contains("node n1") && want.2.contains("team-a/a"),
            "{}",
            want.2
        );
        let out = with_schedulable(&draining, &want, now).unwrap();
        assert!(with_schedulable(&out, &want, now).is_none(), "said once");
        // The actor left: Cordoned, same transition time (still False).
        let mut cordoned = out.clone();
        cordoned.status.as_mut().unwrap().actor = None;
        cordoned.status.as_mut().unwrap().phase = Some(crds::substrate::WorkerPhase::Free);
        let want = schedulable_condition(&cordoned).unwrap();
        assert_eq!((want.0, want.1), (false, reasons::CORDONED));
        let later = now + Duration::from_secs(5);
        let out = with_schedulable(&cordoned, &want, later).unwrap();
        let c = current_condition(&out).unwrap();
        assert_eq!(c.last_transition_time.0, now);
        // Uncordoned: True.
        let mut open = out;
        open.spec.unschedulable = false;
        let want = schedulable_condition(&open).unwrap();
        assert_eq!((want.0, want.1), (true, reasons::SCHEDULABLE));
        let out = with_schedulable(&open, &want, later).unwrap();
        assert_eq!(
            current_condition(&out).unwrap().last_transition_time.0,
            later
        );
        // By hand.
        let by_hand = worker(json!({"pool": "p", "unschedulable": true}), None, json!({}));
        assert!(
            schedulable_condition(&by_hand)
                .unwrap()
                .2
                .contains("by hand")
        );
    }

    #[test]
    fn drain_slots_bound_the_suspends_in_flight() {
        let slots = DrainSlots::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        let e = |a: &str| DrainEntry {
            actor: format!("ns/{a}"),
            worker: format!("w-{a}"),
            started: t0,
        };
        let all = |_: &str, _: &DrainEntry| true;
        assert!(slots.try_take("u1", e("a1"), all));
        assert!(slots.try_take("u2", e("a2"), all));
        assert!(!slots.try_take("u3", e("a3"), all), "full");
        assert!(
            slots.try_take("u1", e("a1"), all),
            "a holder keeps its slot"
        );
        assert_eq!(slots.in_flight(), 2);
        // a1's suspend is over (no longer on its worker): its slot frees.
        assert!(slots.try_take("u3", e("a3"), |u, _| u != "u1"));
        assert_eq!(slots.in_flight(), 2);
        slots.release("u2");
        assert_eq!(slots.in_flight(), 1);
        // A suspend that never finishes does not hold its slot forever.
        let later = DrainEntry {
            started: t0 + Duration::from_secs(61),
            ..e("a4")
        };
        assert!(slots.try_take("u4", later.clone(), all));
        assert!(slots.try_take(
            "u5",
            DrainEntry {
                actor: "ns/a5".into(),
                ..later
            },
            all
        ));
        assert_eq!(slots.in_flight(), 2);
        // At least one slot, whatever the flag says.
        let one = DrainSlots::new(0, Duration::from_secs(60));
        assert!(one.try_take("u1", e("a1"), all));
        assert!(!one.try_take("u2", e("a2"), all));
    }
}
