//! The watch caches (kube-runtime reflectors): one watch per kind, shared by every controller.
//! Each object a watch touches (created, changed, deleted, relisted) is also handed to the
//! controllers that care about that kind, over unbounded channels, so a slow controller never
//! stalls a watch.

use std::fmt::Debug;
use std::hash::Hash;

use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

use clients::Clients;
use crds::ate::{ActorTemplate, WorkerPool};
use crds::substrate::{Actor, Atespace, Worker};
use k8s_openapi::api::core::v1::{Namespace, Node};

/// The stores of every kind the operator watches.
#[derive(Clone)]
pub struct Caches {
    pub actors: Store<Actor>,
    pub workers: Store<Worker>,
    pub templates: Store<ActorTemplate>,
    pub pools: Store<WorkerPool>,
    /// Cluster mode only (the Atespace ↔ Namespace controllers): atespaces and the cluster's
    /// namespaces.
    pub atespaces: Option<Store<Atespace>>,
    pub namespaces: Option<Store<Namespace>>,
    /// Cluster mode only (the cordon of a Node's workers): the cluster's Nodes, metadata and
    /// spec only.
    pub nodes: Option<Store<Node>>,
    /// When each node's agent pod was last seen gone (cluster mode; empty otherwise).
    pub agent_loss: crate::agent_pods::AgentLoss,
}

/// The keys (`namespace/name`, or `name` for cluster-scoped kinds) of every cached object,
/// sorted: for tests comparing the caches with the apiserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKeys {
    pub actors: Vec<String>,
    pub workers: Vec<String>,
    pub templates: Vec<String>,
    pub pools: Vec<String>,
}

/// The streams of touched objects, one per consumer, and the watch futures feeding them.
pub(crate) struct Feeds {
    pub(crate) watches: Vec<BoxFuture<'static, ()>>,
    pub(crate) templates: mpsc::UnboundedReceiver<ActorTemplate>,
    pub(crate) golden_actors: mpsc::UnboundedReceiver<Actor>,
    pub(crate) lifecycle_actors: mpsc::UnboundedReceiver<Actor>,
    /// Templates touched (for the actors waiting for them: `TemplateNotFound`).
    pub(crate) lifecycle_templates: mpsc::UnboundedReceiver<ActorTemplate>,
    pub(crate) dead_worker_actors: mpsc::UnboundedReceiver<Actor>,
    pub(crate) dead_worker_workers: mpsc::UnboundedReceiver<Worker>,
    pub(crate) pool_workers: mpsc::UnboundedReceiver<Worker>,
    /// For the cordon controller: workers, actors (mapped to their worker) and, in cluster
    /// mode, Nodes (mapped to their workers; a stream that ends at once otherwise).
    pub(crate) cordon_workers: mpsc::UnboundedReceiver<Worker>,
    pub(crate) cordon_actors: mpsc::UnboundedReceiver<Actor>,
    pub(crate) cordon_nodes: mpsc::UnboundedReceiver<Node>,
    pub(crate) pools: mpsc::UnboundedReceiver<WorkerPool>,
    /// Actors the watch saw deleted (`DELETED` events only: a relist reports none).
    pub(crate) deleted_actors: mpsc::UnboundedReceiver<Actor>,
    /// Actors touched (for the snapshot GC: a new snapshot supersedes the previous one).
    pub(crate) gc_actors: mpsc::UnboundedReceiver<Actor>,
    /// Templates touched (for the snapshot GC).
    pub(crate) gc_templates: mpsc::UnboundedReceiver<ActorTemplate>,
    /// Cluster mode only: atespaces and namespaces touched, for each of the two namespace
    /// controllers.
    pub(crate) namespaces: Option<NamespaceFeeds>,
    /// Node agent pods seen deleted or failed (cluster mode with `--agent-pod-selector`;
    /// otherwise a stream that ends at once).
    pub(crate) agent_pods_lost: mpsc::UnboundedReceiver<k8s_openapi::api::core::v1::Pod>,
}

/// The streams of the Atespace ↔ Namespace controllers (cluster mode).
pub(crate) struct NamespaceFeeds {
    /// For the per-Atespace controller: its atespaces, and the namespaces of their names.
    pub(crate) atespaces: mpsc::UnboundedReceiver<Atespace>,
    pub(crate) atespace_namespaces: mpsc::UnboundedReceiver<Namespace>,
    /// For the per-Namespace controller: its namespaces, and the atespaces of their names.
    pub(crate) namespaces: mpsc::UnboundedReceiver<Namespace>,
    pub(crate) namespace_atespaces: mpsc::UnboundedReceiver<Atespace>,
}

fn key<K: kube::Resource>(o: &K) -> String {
    let meta = o.meta();
    match &meta.namespace {
        Some(ns) => format!("{ns}/{}", meta.name.as_deref().unwrap_or_default()),
        None => meta.name.clone().unwrap_or_default(),
    }
}

fn keys<K>(s: &Store<K>) -> Vec<String>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    let mut out: Vec<String> = s.state().iter().map(|o| key(o.as_ref())).collect();
    out.sort();
    out
}

/// A watch of `api` into `writer`, handing every touched object to `subscribers` and every
/// deleted one (a `DELETED` event, after the store dropped it) to `deleted`.
fn watch<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    subscribers: Vec<mpsc::UnboundedSender<K>>,
    deleted: Option<mpsc::UnboundedSender<K>>,
) -> BoxFuture<'static, ()>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .inspect(move |ev| {
            if let (Some(tx), Ok(watcher::Event::Delete(o))) = (&deleted, ev) {
                let _ = tx.unbounded_send(o.clone());
            }
        })
        .touched_objects()
        .for_each(move |r| {
            match r {
                Ok(o) => {
                    for s in &subscribers {
                        let _ = s.unbounded_send(o.clone());
                    }
                }
                Err(e) => {
                    tracing::debug!(kind = %K::kind(&Default::default()), error = %e, "watch failed; retrying with backoff")
                }
            }
            futures::future::ready(())
        })
        .boxed()
}

impl Caches {
    /// The caches and the watches that fill them (not started: see [`Feeds::watches`]).
    /// Actors and workers come from Substrate's apiserver, templates and pools from the
    /// cluster's (the same in standalone mode).
    pub(crate) fn new(clients: &Clients, cfg: &crate::OperatorConfig) -> (Caches, Feeds) {
        let agent_pods = cfg.agent_pods.as_ref();
        let (substrate, cluster) = (&clients.substrate, &clients.cluster);
        let (actors, aw) = reflector::store::<Actor>();
        let (workers, ww) = reflector::store::<Worker>();
        let (templates, tw) = reflector::store::<ActorTemplate>();
        let (pools, pw) = reflector::store::<WorkerPool>();
        let (t_tx, t_rx) = mpsc::unbounded();
        let (lt_tx, lt_rx) = mpsc::unbounded();
        let (ga_tx, ga_rx) = mpsc::unbounded();
        let (la_tx, la_rx) = mpsc::unbounded();
        let (da_tx, da_rx) = mpsc::unbounded();
        let (dw_tx, dw_rx) = mpsc::unbounded();
        let (pw_tx, pw_rx) = mpsc::unbounded();
        let (p_tx, p_rx) = mpsc::unbounded();
        let (del_tx, del_rx) = mpsc::unbounded();
        let (gca_tx, gca_rx) = mpsc::unbounded();
        let (gt_tx, gt_rx) = mpsc::unbounded();
        let (cw_tx, cw_rx) = mpsc::unbounded();
        let (ca_tx, ca_rx) = mpsc::unbounded();
        let (cn_tx, cn_rx) = mpsc::unbounded();
        let mut watches = vec![
            watch(
                Api::<Actor>::all(substrate.clone()),
                aw,
                vec![ga_tx, la_tx, da_tx, gca_tx, ca_tx],
                Some(del_tx),
            ),
            watch(
                Api::<Worker>::all(substrate.clone()),
                ww,
                vec![dw_tx, pw_tx, cw_tx],
                None,
            ),
            watch(
                Api::<ActorTemplate>::all(cluster.clone()),
                tw,
                vec![t_tx, gt_tx, lt_tx],
                None,
            ),
            watch(
                Api::<WorkerPool>::all(cluster.clone()),
                pw,
                vec![p_tx],
                None,
            ),
        ];
        let agent_loss = crate::agent_pods::AgentLoss::default();
        let (lost_tx, lost_rx) = mpsc::unbounded();
        if let Some(pods) = agent_pods.filter(|_| clients.mode.is_cluster()) {
            watches.push(crate::agent_pods::watch(
                cluster.clone(),
                pods,
                agent_loss.clone(),
                lost_tx,
            ));
        }
        let nodes = if clients.mode.is_cluster() && cfg.watch_nodes {
            let (nodes, nw) = reflector::store::<Node>();
            watches.push(crate::cordon::watch_nodes(cluster.clone(), nw, cn_tx));
            Some(nodes)
        } else {
            None
        };
        let (atespaces, namespaces, namespace_feeds) = if clients.mode.is_cluster() {
            let (astore, asw) = reflector::store::<Atespace>();
            let (nstore, nsw) = reflector::store::<Namespace>();
            let (a1_tx, a1_rx) = mpsc::unbounded();
            let (a2_tx, a2_rx) = mpsc::unbounded();
            let (n1_tx, n1_rx) = mpsc::unbounded();
            let (n2_tx, n2_rx) = mpsc::unbounded();
            watches.push(watch(
                Api::<Atespace>::all(substrate.clone()),
                asw,
                vec![a1_tx, a2_tx],
                None,
            ));
            watches.push(watch(
                Api::<Namespace>::all(cluster.clone()),
                nsw,
                vec![n1_tx, n2_tx],
                None,
            ));
            (
                Some(astore),
                Some(nstore),
                Some(NamespaceFeeds {
                    atespaces: a1_rx,
                    atespace_namespaces: n1_rx,
                    namespaces: n2_rx,
                    namespace_atespaces: a2_rx,
                }),
            )
        } else {
            (None, None, None)
        };
        (
            Caches {
                actors,
                workers,
                templates,
                pools,
                atespaces,
                namespaces,
                nodes,
                agent_loss,
            },
            Feeds {
                watches,
                templates: t_rx,
                golden_actors: ga_rx,
                lifecycle_actors: la_rx,
                lifecycle_templates: lt_rx,
                dead_worker_actors: da_rx,
                dead_worker_workers: dw_rx,
                pool_workers: pw_rx,
                cordon_workers: cw_rx,
                cordon_actors: ca_rx,
                cordon_nodes: cn_rx,
                pools: p_rx,
                deleted_actors: del_rx,
                gc_actors: gca_rx,
                gc_templates: gt_rx,
                namespaces: namespace_feeds,
                agent_pods_lost: lost_rx,
            },
        )
    }

    /// The keys of every cached object.
    pub fn keys(&self) -> CacheKeys {
        CacheKeys {
            actors: keys(&self.actors),
            workers: keys(&self.workers),
            templates: keys(&self.templates),
            pools: keys(&self.pools),
        }
    }

    /// The cached worker named `name`.
    pub(crate) fn worker(&self, name: &str) -> Option<std::sync::Arc<Worker>> {
        self.workers.get(&reflector::ObjectRef::new(name))
    }
}
