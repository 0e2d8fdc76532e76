//! Running operations concurrently and summarizing them: latencies (a sorted `Vec`, which is
//! plenty at these counts), errors by kind with one sample message each, throughput.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{Value, json};

use crate::client::Reply;
use crate::probe::Usage;

/// Why one operation failed: `kind` is what errors are counted by (`HTTP 409`,
/// `transport`, ...), `detail` is one example message.
#[derive(Debug)]
pub struct OpError {
    pub kind: String,
    pub detail: String,
}

impl OpError {
    pub fn new(kind: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            detail: detail.into(),
        }
    }

    pub fn transport(e: &anyhow::Error) -> Self {
        Self::new("transport", format!("{e:#}"))
    }
}

/// Maps a reply to an error unless its status is `want`; the detail is the `metav1.Status`
/// message when there is one.
pub fn expect(reply: Reply, want: StatusCode) -> Result<Reply, OpError> {
    if reply.status == want {
        return Ok(reply);
    }
    let message = serde_json::from_slice::<Value>(&reply.body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| {
            String::from_utf8_lossy(&reply.body)
                .chars()
                .take(300)
                .collect()
        });
    Err(OpError::new(
        format!("HTTP {}", reply.status.as_u16()),
        message,
    ))
}

/// What a set of operations did.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Operations attempted.
    pub ops: usize,
    /// Latencies of the successful operations, sorted.
    pub latencies: Vec<Duration>,
    /// Failed operations by kind.
    pub errors: BTreeMap<String, u64>,
    /// One example message per error kind.
    pub samples: BTreeMap<String, String>,
    /// From the start of the first operation to the end of the last.
    pub elapsed: Duration,
}

impl Recorded {
    pub fn ok(&self) -> usize {
        self.latencies.len()
    }

    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn record_error(&mut self, e: OpError) {
        *self.errors.entry(e.kind.clone()).or_default() += 1;
        self.samples.entry(e.kind).or_insert(e.detail);
    }

    fn merge(&mut self, other: Recorded) {
        self.ops += other.ops;
        self.latencies.extend(other.latencies);
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        for (k, s) in other.samples {
            self.samples.entry(k).or_insert(s);
        }
    }
}

/// Runs `op(0..n)` on `concurrency` tasks (each takes the next index when its previous
/// operation finished), printing progress to stderr every few seconds for long runs.
pub async fn run_concurrent<F, Fut>(label: &str, n: usize, concurrency: usize, op: F) -> Recorded
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), OpError>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let (op, next, done) = (op.clone(), next.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorded::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                let r = op(i).await;
                let d = t.elapsed();
                rec.ops += 1;
                match r {
                    Ok(()) => rec.latencies.push(d),
                    Err(e) => rec.record_error(e),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            rec
        }));
    }
    let progress = {
        let (done, label) = (done.clone(), label.to_string());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                let d = done.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "  {label}: {d}/{n} after {secs:.0}s ({:.0}/s)",
                    d as f64 / secs
                );
            }
        })
    };
    let mut all = Recorded::default();
    for t in tasks {
        match t.await {
            Ok(rec) => all.merge(rec),
            Err(e) => all.record_error(OpError::new("task panicked", e.to_string())),
        }
    }
    progress.abort();
    all.elapsed = started.elapsed();
    all.latencies.sort_unstable();
    all
}

/// Nearest-rank percentile of sorted latencies (`p` in 0..=1).
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
}

/// One row of the report.
#[derive(Debug)]
pub struct PhaseResult {
    pub name: String,
    pub rec: Recorded,
    /// Successful operations per second; `None` uses ok / elapsed.
    pub rate: Option<f64>,
    /// CPU used while the phase ran.
    pub usage: Option<Usage>,
}

impl PhaseResult {
    pub fn new(name: impl Into<String>, rec: Recorded, usage: Option<Usage>) -> Self {
        Self {
            name: name.into(),
            rec,
            rate: None,
            usage,
        }
    }

    pub fn ops_per_sec(&self) -> f64 {
        self.rate.unwrap_or_else(|| {
            let s = self.rec.elapsed.as_secs_f64();
            if s > 0.0 {
                self.rec.ok() as f64 / s
            } else {
                0.0
            }
        })
    }

    pub fn p(&self, q: f64) -> Option<Duration> {
        percentile(&self.rec.latencies, q)
    }

    pub fn max(&self) -> Option<Duration> {
        self.rec.latencies.last().copied()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "ops": self.rec.ops,
            "ok": self.rec.ok(),
            "errors": self.rec.errors,
            "error_samples": self.rec.samples,
            "seconds": (self.rec.elapsed.as_secs_f64() * 1e3).round() / 1e3,
            "ops_per_sec": (self.ops_per_sec() * 10.0).round() / 10.0,
            "latency_ms": {
                "p50": ms(self.p(0.5)),
                "p99": ms(self.p(0.99)),
                "max": ms(self.max()),
            },
            "cpu": self.usage.as_ref().map(Usage::to_json),
        })
    }
}

/// Formats a latency for the table.
pub fn fmt_dur(d: Option<Duration>) -> String {
    match d {
        None => "-".into(),
        Some(d) if d < Duration::from_millis(10) => format!("{:.2}ms", d.as_secs_f64() * 1e3),
        Some(d) if d < Duration::from_secs(1) => format!("{:.1}ms", d.as_secs_f64() * 1e3),
        Some(d) => format!("{:.2}s", d.as_secs_f64()),
    }
}

/// The human-readable table of every phase, with CPU shares and error samples below it.
pub fn table(rows: &[PhaseResult]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:>8} {:>8} {:>8} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "phase", "ops", "ok", "secs", "ops/s", "p50", "p99", "max", "errors"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<22} {:>8} {:>8} {:>8.2} {:>10.1} {:>9} {:>9} {:>9} {:>7}",
            r.name,
            r.rec.ops,
            r.rec.ok(),
            r.rec.elapsed.as_secs_f64(),
            r.ops_per_sec(),
            fmt_dur(r.p(0.5)),
            fmt_dur(r.p(0.99)),
            fmt_dur(r.max()),
            r.rec.failed()
        );
    }
    if rows.iter().any(|r| r.usage.is_some()) {
        let _ = writeln!(
            out,
            "\nCPU while each phase ran (cores busy; the machine has {}):",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        for r in rows {
            if let Some(u) = &r.usage {
                let _ = writeln!(out, "  {:<22} {}", r.name, u.summary());
            }
        }
    }
    for r in rows {
        for (kind, n) in &r.rec.errors {
            let sample = r.rec.samples.get(kind).map_or("", String::as_str);
            let _ = writeln!(out, "  ! {}: {n} x {kind}: {sample}", r.name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&v, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&v, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&v[..1], 0.99), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
