//! Counters per controller and the sizes of the watch caches, rendered in the Prometheus text
//! format (`ate_operator_reconciles_total{controller="lifecycle"}`,
//! `ate_operator_cache_objects{kind="actors"}` ...), and the admin HTTP endpoint that serves
//! them ([`serve`]: `/metrics`, `/healthz`, `/livez`, `/readyz`).

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::caches::Caches;

use crate::snapshot_gc::Reason;

/// The controllers, in the order of [`Metrics`]' arrays.
/// `namespaces` and `namespace_cleanup` run in cluster mode only (see [`crate::namespaces`]).
pub const CONTROLLERS: [&str; 7] = [
    "golden",
    "lifecycle",
    "dead_worker",
    "pool",
    "namespaces",
    "namespace_cleanup",
    "cordon",
];

fn index(controller: &str) -> Option<usize> {
    CONTROLLERS.iter().position(|c| *c == controller)
}

/// Counters of the operator.
#[derive(Default)]
pub struct Metrics {
    reconciles: [AtomicU64; CONTROLLERS.len()],
    errors: [AtomicU64; CONTROLLERS.len()],
    /// Reconciles that found their object gone on the apiserver (404).
    gone: [AtomicU64; CONTROLLERS.len()],
    /// Times this replica became the leader.
    pub leader_acquired: AtomicU64,
    /// Times this replica stopped leading.
    pub leader_lost: AtomicU64,
    /// Actors of cordoned workers asked to suspend (to move them to another worker).
    pub drain_suspends: AtomicU64,
    /// Snapshots deleted by the GC, per [`Reason`] (in [`Reason::ALL`]'s order).
    snapshots_deleted: [AtomicU64; 4],
    /// Bytes of the snapshots the GC deleted.
    pub snapshot_bytes_deleted: AtomicU64,
    /// Snapshot GC sweeps run.
    pub snapshot_sweeps: AtomicU64,
    /// Snapshot GC sweeps that failed (listing or deleting; retried with backoff).
    pub snapshot_gc_errors: AtomicU64,
    /// The watch caches of the controllers running now (`None` while they do not run: a
    /// standby replica keeps no caches).
    caches: Mutex<Option<Caches>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Forgets the caches [`Metrics::track_caches`] was given when dropped.
pub(crate) struct TrackedCaches(Arc<Metrics>);

impl Drop for TrackedCaches {
    fn drop(&mut self) {
        if let Ok(mut c) = self.0.caches.lock() {
            *c = None;
        }
    }
}

/// A snapshot of one controller's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub reconciles: u64,
    pub errors: u64,
    pub gone: u64,
}

impl Metrics {
    fn bump(arr: &[AtomicU64], controller: &str) {
        if let Some(i) = index(controller) {
            arr[i].fetch_add(1, Ordering::Relaxed);
        }
    }
    pub(crate) fn reconciled(&self, controller: &str) {
        Self::bump(&self.reconciles, controller)
    }
    pub(crate) fn failed(&self, controller: &str) {
        Self::bump(&self.errors, controller)
    }
    pub(crate) fn found_gone(&self, controller: &str) {
        Self::bump(&self.gone, controller)
    }
    pub(crate) fn drained(&self) {
        self.drain_suspends.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot_deleted(&self, reason: Reason, bytes: u64) {
        self.snapshots_deleted[reason.index()].fetch_add(1, Ordering::Relaxed);
        self.snapshot_bytes_deleted
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// Snapshots the GC deleted for `reason`.
    pub fn snapshots_deleted(&self, reason: Reason) -> u64 {
        self.snapshots_deleted[reason.index()].load(Ordering::Relaxed)
    }

    /// Reports the sizes of `caches` (`ate_operator_cache_objects`) until the guard drops.
    pub(crate) fn track_caches(self: &Arc<Self>, caches: Caches) -> TrackedCaches {
        if let Ok(mut c) = self.caches.lock() {
            *c = Some(caches);
        }
        TrackedCaches(self.clone())
    }

    /// Objects in each watch cache (`actors`, `workers`, `templates`, `pools`), or `None`
    /// while the controllers do not run.
    pub fn cache_sizes(&self) -> Option<[(&'static str, usize); 4]> {
        let caches = self.caches.lock().ok()?.clone()?;
        Some([
            ("actors", caches.actors.state().len()),
            ("workers", caches.workers.state().len()),
            ("templates", caches.templates.state().len()),
            ("pools", caches.pools.state().len()),
        ])
    }

    /// The counters of `controller`.
    pub fn counts(&self, controller: &str) -> Counts {
        let Some(i) = index(controller) else {
            return Counts::default();
        };
        Counts {
            reconciles: self.reconciles[i].load(Ordering::Relaxed),
            errors: self.errors[i].load(Ordering::Relaxed),
            gone: self.gone[i].load(Ordering::Relaxed),
        }
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, arr) in [
            (
                "ate_operator_reconciles_total",
                "Reconciles run.",
                &self.reconciles,
            ),
            (
                "ate_operator_reconcile_errors_total",
                "Reconciles that failed.",
                &self.errors,
            ),
            (
                "ate_operator_objects_gone_total",
                "Reconciles that found their object deleted on the apiserver.",
                &self.gone,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (i, c) in CONTROLLERS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{controller=\"{c}\"}} {}",
                    arr[i].load(Ordering::Relaxed)
                );
            }
        }
        for (name, help, v) in [
            (
                "ate_operator_leader_acquired_total",
                "Times this replica became the leader.",
                &self.leader_acquired,
            ),
            (
                "ate_operator_leader_lost_total",
                "Times this replica stopped leading.",
                &self.leader_lost,
            ),
            (
                "ate_operator_drain_suspends_total",
                "Actors of cordoned workers asked to suspend, to resume on another worker.",
                &self.drain_suspends,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let name = "ate_operator_snapshots_deleted_total";
        let _ = writeln!(
            out,
            "# HELP {name} Snapshots deleted by the snapshot GC.\n# TYPE {name} counter"
        );
        for r in Reason::ALL {
            let _ = writeln!(
                out,
                "{name}{{reason=\"{}\"}} {}",
                r.as_str(),
                self.snapshots_deleted(r)
            );
        }
        for (name, help, v) in [
            (
                "ate_operator_snapshot_bytes_deleted_total",
                "Bytes of the snapshots deleted by the snapshot GC.",
                &self.snapshot_bytes_deleted,
            ),
            (
                "ate_operator_snapshot_gc_sweeps_total",
                "Snapshot GC sweeps run.",
                &self.snapshot_sweeps,
            ),
            (
                "ate_operator_snapshot_gc_errors_total",
                "Snapshot GC sweeps that failed (retried with backoff).",
                &self.snapshot_gc_errors,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let sizes = self.cache_sizes();
        let _ = writeln!(
            out,
            "# HELP ate_operator_controllers_running Whether the controllers (and their watch caches) run on this replica (0: standby).\n\
             # TYPE ate_operator_controllers_running gauge\n\
             ate_operator_controllers_running {}",
            u8::from(sizes.is_some())
        );
        if let Some(sizes) = sizes {
            let _ = writeln!(
                out,
                "# HELP ate_operator_cache_objects Objects in the controllers' watch caches, by kind.\n\
                 # TYPE ate_operator_cache_objects gauge"
            );
            for (kind, n) in sizes {
                let _ = writeln!(out, "ate_operator_cache_objects{{kind=\"{kind}\"}} {n}");
            }
        }
        out
    }
}

/// Why the admin endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding the metrics listener {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The admin endpoint, bound: serve it with [`Admin::run`].
pub struct Admin {
    listener: TcpListener,
    metrics: Arc<Metrics>,
}

impl Admin {
    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `/metrics` (Prometheus text), `/healthz`, `/livez` and `/readyz` (200 while
    /// the process runs: a standby replica is healthy too; `ate_operator_controllers_running`
    /// tells which replica acts) over HTTP/1.1 until dropped.
    pub async fn run(self) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(&metrics, &req)) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
                }
            });
        }
    }
}

/// Binds the admin endpoint on `addr` (see [`Admin::run`]).
pub async fn bind(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<Admin, ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    Ok(Admin { listener, metrics })
}

fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match req.uri().path() {
        "/healthz" | "/livez" | "/readyz" => (StatusCode::OK, "ok\n".to_string(), "text/plain"),
        "/metrics" => (
            StatusCode::OK,
            metrics.render(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found\n".to_string(),
            "text/plain",
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_per_controller() {
        let m = Metrics::default();
        m.reconciled("lifecycle");
        m.reconciled("lifecycle");
        m.found_gone("pool");
        m.failed("nope");
        assert_eq!(m.counts("lifecycle").reconciles, 2);
        let text = m.render();
        assert!(
            text.contains("ate_operator_reconciles_total{controller=\"lifecycle\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("ate_operator_objects_gone_total{controller=\"pool\"} 1"),
            "{text}"
        );
        m.snapshot_deleted(Reason::OwnerDeleted, 10);
        let text = m.render();
        assert!(
            text.contains("ate_operator_snapshots_deleted_total{reason=\"owner_deleted\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ate_operator_snapshot_bytes_deleted_total 10"),
            "{text}"
        );
        // No controllers running: no caches to report.
        assert!(
            text.contains("\nate_operator_controllers_running 0\n"),
            "{text}"
        );
        assert!(!text.contains("ate_operator_cache_objects{"), "{text}");
        assert_eq!(m.cache_sizes(), None);
    }
}
