//! Counters per controller, rendered in the Prometheus text format
//! (`ate_operator_reconciles_total{controller="lifecycle"}` ...).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::snapshot_gc::Reason;

/// The controllers, in the order of [`Metrics`]' arrays.
pub const CONTROLLERS: [&str; 4] = ["golden", "lifecycle", "dead_worker", "pool"];

fn index(controller: &str) -> Option<usize> {
    CONTROLLERS.iter().position(|c| *c == controller)
}

/// Counters of the operator.
#[derive(Debug, Default)]
pub struct Metrics {
    reconciles: [AtomicU64; 4],
    errors: [AtomicU64; 4],
    /// Reconciles that found their object gone on the apiserver (404).
    gone: [AtomicU64; 4],
    /// Times this replica became the leader.
    pub leader_acquired: AtomicU64,
    /// Times this replica stopped leading.
    pub leader_lost: AtomicU64,
    /// Snapshots deleted by the GC, per [`Reason`] (in [`Reason::ALL`]'s order).
    snapshots_deleted: [AtomicU64; 4],
    /// Bytes of the snapshots the GC deleted.
    pub snapshot_bytes_deleted: AtomicU64,
    /// Snapshot GC sweeps run.
    pub snapshot_sweeps: AtomicU64,
    /// Snapshot GC sweeps that failed (listing or deleting; retried with backoff).
    pub snapshot_gc_errors: AtomicU64,
}

/// A snapshot of one controller's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub reconciles: u64,
    pub errors: u64,
    pub gone: u64,
}

impl Metrics {
    fn bump(arr: &[AtomicU64; 4], controller: &str) {
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

    pub(crate) fn snapshot_deleted(&self, reason: Reason, bytes: u64) {
        self.snapshots_deleted[reason.index()].fetch_add(1, Ordering::Relaxed);
        self.snapshot_bytes_deleted
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// Snapshots the GC deleted for `reason`.
    pub fn snapshots_deleted(&self, reason: Reason) -> u64 {
        self.snapshots_deleted[reason.index()].load(Ordering::Relaxed)
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
        out
    }
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
    }
}
