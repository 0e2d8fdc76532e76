//! Wires the controllers: the shared watches, one kube-runtime [`Controller`] per concern,
//! per-object error backoff, and the failure summary.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use kube::runtime::controller::{self, Action, Config, Controller};
use kube::runtime::reflector::ObjectRef;

use clients::Clients;
use crds::substrate::{Actor, Worker};
use k8s_openapi::api::core::v1::Pod;

use crate::caches::{Caches, Feeds};
use crate::lifecycle::Retry;
use crate::metrics::Metrics;
use crate::snapshot_gc::{self, SnapshotGcConfig};
use crate::summary::{self, Summary};
use crate::{
    OperatorConfig, OperatorError, cordon, dead_worker, golden, lifecycle, namespaces, pool,
};

/// Reconciles in flight at once, per controller.
const CONCURRENCY: u16 = 16;
/// First delay after a failed reconcile of an object; doubles per failure in a row.
const ERROR_BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest delay after failed reconciles of an object.
const ERROR_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What every reconcile can reach.
pub(crate) struct Ctx {
    /// Actors and workers: `substrate`; templates and pools: `cluster`.
    pub(crate) clients: Clients,
    pub(crate) cfg: OperatorConfig,
    pub(crate) caches: Caches,
    pub(crate) metrics: Arc<Metrics>,
    summary: Mutex<Summary>,
    /// Resume-retry state of failing actors (by uid).
    retries: Mutex<HashMap<String, Retry>>,
    /// Failed reconciles in a row, per (controller, object).
    failures: Mutex<HashMap<(&'static str, String), u32>>,
    /// Drain suspends under way (the cordon controller's bound on them).
    pub(crate) drains: crate::cordon::DrainSlots,
}

impl Ctx {
    pub(crate) fn retry(&self, uid: &str) -> Option<Retry> {
        self.retries.lock().ok()?.get(uid).copied()
    }

    pub(crate) fn set_retry(&self, uid: &str, r: Option<Retry>) {
        if let Ok(mut m) = self.retries.lock() {
            match r {
                Some(r) => {
                    m.insert(uid.to_string(), r);
                }
                None => {
                    m.remove(uid);
                }
            }
        }
    }

    /// The object turned out deleted on the apiserver: done with it.
    pub(crate) fn gone(&self, controller: &'static str, uid: &str) -> Action {
        self.metrics.found_gone(controller);
        self.set_retry(uid, None);
        tracing::debug!(controller, uid, "object gone; nothing to do");
        Action::await_change()
    }

    fn succeeded(&self, controller: &'static str, key: &str) {
        if let Ok(mut m) = self.failures.lock()
            && !m.is_empty()
        {
            m.remove(&(controller, key.to_string()));
        }
    }

    /// Counts a failure of `key` and returns how long to wait before the next attempt.
    fn failed(&self, controller: &'static str, key: &str, err: &OperatorError) -> Duration {
        self.metrics.failed(controller);
        let n = self
            .failures
            .lock()
            .map(|mut m| {
                let n = m.entry((controller, key.to_string())).or_insert(0);
                *n += 1;
                *n
            })
            .unwrap_or(1);
        let backoff = ERROR_BACKOFF_BASE
            .saturating_mul(1u32 << (n - 1).min(16))
            .min(ERROR_BACKOFF_MAX);
        let record = self.summary.lock().map(|mut s| {
            s.record(
                summary::Key {
                    controller,
                    kind: err.kind(),
                },
                &format!("{key}: {err}"),
                Instant::now(),
            )
        });
        if matches!(record, Ok(summary::Record::Log)) {
            tracing::warn!(controller, object = %key, error = %err, ?backoff,
                "reconcile failed; retrying with backoff (alike failures are summarised)");
        }
        backoff
    }

    fn flush_summary(&self) {
        let lines = match self.summary.lock() {
            Ok(mut s) => s.flush(Instant::now()),
            Err(_) => return,
        };
        let interval = summary::DEFAULT_INTERVAL;
        for l in lines {
            tracing::warn!(controller = l.key.controller, kind = %l.key.kind, count = l.suppressed,
                ?interval, example = %l.example, "more reconcile failures like this in the last interval");
        }
    }
}

fn object_key<K: kube::Resource>(o: &K) -> String {
    let m = o.meta();
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default()
    )
}

/// Counts reconciles and resets an object's failure count when it succeeds.
fn counted<K, Fut>(
    controller: &'static str,
    f: fn(Arc<K>, Arc<Ctx>) -> Fut,
) -> impl FnMut(Arc<K>, Arc<Ctx>) -> BoxFuture<'static, Result<Action, OperatorError>>
where
    K: kube::Resource + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, OperatorError>> + Send + 'static,
{
    move |obj, ctx| {
        let key = object_key(obj.as_ref());
        let fut = f(obj, ctx.clone());
        async move {
            ctx.metrics.reconciled(controller);
            let r = fut.await;
            if r.is_ok() {
                ctx.succeeded(controller, &key);
            }
            r
        }
        .boxed()
    }
}

fn error_policy<K: kube::Resource>(
    controller: &'static str,
) -> impl Fn(Arc<K>, &OperatorError, Arc<Ctx>) -> Action {
    move |obj, err, ctx| Action::requeue(ctx.failed(controller, &object_key(obj.as_ref()), err))
}

/// Drains a controller's output: failures were handled by the error policy; an object
/// scheduled but deleted meanwhile is simply done.
async fn drain<K, S>(controller: &'static str, s: S)
where
    K: kube::Resource + Debug,
    S: futures::Stream<
            Item = Result<
                (ObjectRef<K>, Action),
                controller::Error<OperatorError, kube::runtime::watcher::Error>,
            >,
        >,
{
    s.for_each(|r| {
        if let Err(controller::Error::QueueError(e)) = r {
            tracing::debug!(controller, error = %e, "trigger stream failed");
        }
        futures::future::ready(())
    })
    .await
}

/// Runs the watches and the controllers until dropped.
pub(crate) async fn run(
    clients: Clients,
    cfg: OperatorConfig,
    caches: Caches,
    feeds: Feeds,
    metrics: Arc<Metrics>,
    snapshot_gc: Option<SnapshotGcConfig>,
) {
    let _tracked = metrics.track_caches(caches.clone());
    let drains = cordon::DrainSlots::new(cfg.drain_in_flight, cfg.deadlines.suspend);
    let ctx = Arc::new(Ctx {
        drains,
        clients,
        summary: Mutex::new(Summary::new(summary::DEFAULT_INTERVAL)),
        cfg,
        caches: caches.clone(),
        metrics: metrics.clone(),
        retries: Default::default(),
        failures: Default::default(),
    });
    let Feeds {
        watches,
        templates,
        golden_actors,
        lifecycle_actors,
        lifecycle_templates,
        dead_worker_actors,
        dead_worker_workers,
        pool_workers,
        cordon_workers,
        cordon_actors,
        cordon_nodes,
        pools,
        deleted_actors,
        gc_actors,
        gc_templates,
        namespaces: namespace_feeds,
        agent_pods_lost,
    } = feeds;
    let watches = futures::future::join_all(watches);
    let controllers = async {
        // No decision on partial caches: an actor must not be released because its worker
        // is not listed yet.
        let _ = futures::future::join4(
            caches.actors.wait_until_ready(),
            caches.workers.wait_until_ready(),
            caches.templates.wait_until_ready(),
            caches.pools.wait_until_ready(),
        )
        .await;
        if let (Some(a), Some(n)) = (&caches.atespaces, &caches.namespaces) {
            let _ = futures::future::join(a.wait_until_ready(), n.wait_until_ready()).await;
        }
        tracing::info!("caches synced; controllers starting");
        let config = Config::default().concurrency(CONCURRENCY);
        let golden = Controller::for_stream(templates.map(Ok), caches.templates.clone())
            .watches_stream(golden_actors.map(Ok), |a: Actor| golden::template_of(&a))
            .with_config(config.clone())
            .run(
                counted("golden", golden::reconcile),
                error_policy("golden"),
                ctx.clone(),
            );
        let lifecycle_store = caches.actors.clone();
        let lifecycle = Controller::for_stream(lifecycle_actors.map(Ok), caches.actors.clone())
            .watches_stream(lifecycle_templates.map(Ok), move |t| {
                lifecycle::waiting_for_template(&lifecycle_store, &t)
            })
            .with_config(config.clone())
            .run(
                counted("lifecycle", lifecycle::reconcile),
                error_policy("lifecycle"),
                ctx.clone(),
            );
        let dead_worker_store = caches.workers.clone();
        let dead = Controller::for_stream(dead_worker_actors.map(Ok), caches.actors.clone())
            .watches_stream(dead_worker_workers.map(Ok), |w: Worker| {
                w.status
                    .and_then(|s| s.actor)
                    .map(|r| ObjectRef::<Actor>::new(&r.name).within(&r.namespace))
            })
            .watches_stream(agent_pods_lost.map(Ok), move |pod: Pod| {
                // The actors bound to the workers of the lost pod's node.
                let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
                dead_worker_store
                    .state()
                    .iter()
                    .filter(|w| w.spec.node.as_deref() == Some(node.as_str()))
                    .filter_map(|w| w.status.as_ref().and_then(|s| s.actor.clone()))
                    .map(|r| ObjectRef::<Actor>::new(&r.name).within(&r.namespace))
                    .collect::<Vec<_>>()
            })
            .with_config(config.clone())
            .run(
                counted("dead_worker", dead_worker::reconcile),
                error_policy("dead_worker"),
                ctx.clone(),
            );
        let pool_store = caches.pools.clone();
        let pool = Controller::for_stream(pools.map(Ok), caches.pools.clone())
            .watches_stream(pool_workers.map(Ok), move |w: Worker| {
                pool::pools_of(&w, &pool_store.state())
            })
            .with_config(config.clone())
            .run(
                counted("pool", pool::reconcile),
                error_policy("pool"),
                ctx.clone(),
            );
        let cordon_store = caches.workers.clone();
        let cordon = Controller::for_stream(cordon_workers.map(Ok), caches.workers.clone())
            .watches_stream(cordon_actors.map(Ok), |a: Actor| cordon::worker_of(&a))
            .watches_stream(cordon_nodes.map(Ok), move |n| {
                cordon::workers_of(&cordon_store, &n)
            })
            .with_config(config.clone())
            .run(
                counted("cordon", cordon::reconcile),
                error_policy("cordon"),
                ctx.clone(),
            );
        // Cluster mode: Atespace ↔ Namespace, one controller per side (see `namespaces`).
        let namespaces = async {
            let (Some(feeds), Some(astore), Some(nstore)) = (
                namespace_feeds,
                caches.atespaces.clone(),
                caches.namespaces.clone(),
            ) else {
                return std::future::pending().await;
            };
            let by_atespace = Controller::for_stream(feeds.atespaces.map(Ok), astore)
                .watches_stream(feeds.atespace_namespaces.map(Ok), |n| {
                    namespaces::atespace_of(&n)
                })
                .with_config(config.clone())
                .run(
                    counted("namespaces", namespaces::reconcile_atespace),
                    error_policy("namespaces"),
                    ctx.clone(),
                );
            let by_namespace = Controller::for_stream(feeds.namespaces.map(Ok), nstore)
                .watches_stream(feeds.namespace_atespaces.map(Ok), |a| {
                    namespaces::namespace_of(&a)
                })
                .with_config(config)
                .run(
                    counted("namespace_cleanup", namespaces::reconcile_namespace),
                    error_policy("namespace_cleanup"),
                    ctx.clone(),
                );
            tokio::select! {
                _ = drain("namespaces", by_atespace) => {}
                _ = drain("namespace_cleanup", by_namespace) => {}
            }
        };
        // Snapshot GC (when a store is configured): deleted owners, superseded snapshots.
        let gc = async {
            match snapshot_gc {
                Some(cfg) => {
                    snapshot_gc::run(
                        ctx.clients.substrate.clone(),
                        cfg,
                        caches.clone(),
                        deleted_actors,
                        gc_actors,
                        gc_templates,
                        metrics,
                    )
                    .await
                }
                None => {
                    // Nobody reads them: closed, the watches stop sending.
                    drop((deleted_actors, gc_actors, gc_templates));
                    std::future::pending().await
                }
            }
        };
        let flusher = async {
            let mut tick = tokio::time::interval(summary::DEFAULT_INTERVAL);
            loop {
                tick.tick().await;
                ctx.flush_summary();
            }
        };
        tokio::select! {
            _ = drain("golden", golden) => {}
            _ = drain("lifecycle", lifecycle) => {}
            _ = drain("dead_worker", dead) => {}
            _ = drain("pool", pool) => {}
            _ = drain("cordon", cordon) => {}
            _ = namespaces => {}
            _ = flusher => {}
            _ = gc => {}
        }
    };
    tokio::select! {
        _ = watches => {}
        _ = controllers => {}
    }
}
