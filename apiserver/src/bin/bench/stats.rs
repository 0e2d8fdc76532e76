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

/// `a / b`, `None` when either is missing or `b` is not positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Cores the server used during a phase: its apiserver plus its store.
pub fn server_cores(u: &Usage) -> Option<f64> {
    match (u.apiserver, u.storage) {
        (None, None) => None,
        (a, s) => Some(a.unwrap_or(0.0) + s.unwrap_or(0.0)),
    }
}

/// One operation measured on two servers (`a` is Substrate, `b` kube-apiserver).
pub struct Compared {
    pub name: String,
    pub a_rate: f64,
    pub b_rate: f64,
    /// Throughput of `a` over `b` (how many times faster).
    pub rate_ratio: Option<f64>,
    /// p99 latency of `b` over `a` (how many times lower `a`'s is).
    pub p99_ratio: Option<f64>,
    pub a_cores: Option<f64>,
    pub b_cores: Option<f64>,
    /// ops/s per server core.
    pub a_per_core: Option<f64>,
    pub b_per_core: Option<f64>,
    pub per_core_ratio: Option<f64>,
    pub a_bench: Option<f64>,
    pub b_bench: Option<f64>,
    pub errors: u64,
}

/// The rows of `a` that `b` has too (by name, in `a`'s order), compared.
pub fn compare(a: &[PhaseResult], b: &[PhaseResult]) -> Vec<Compared> {
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    a.iter()
        .filter_map(|ra| {
            let rb = b.iter().find(|rb| rb.name == ra.name)?;
            let cores = |r: &PhaseResult| r.usage.as_ref().and_then(server_cores);
            let bench = |r: &PhaseResult| r.usage.as_ref().and_then(|u| u.bench);
            let (a_cores, b_cores) = (cores(ra), cores(rb));
            let a_per_core = ratio(Some(ra.ops_per_sec()), a_cores);
            let b_per_core = ratio(Some(rb.ops_per_sec()), b_cores);
            Some(Compared {
                name: ra.name.clone(),
                a_rate: ra.ops_per_sec(),
                b_rate: rb.ops_per_sec(),
                rate_ratio: ratio(Some(ra.ops_per_sec()), Some(rb.ops_per_sec())),
                p99_ratio: ratio(secs(rb.p(0.99)), secs(ra.p(0.99))),
                a_cores,
                b_cores,
                a_per_core,
                b_per_core,
                per_core_ratio: ratio(a_per_core, b_per_core),
                a_bench: bench(ra),
                b_bench: bench(rb),
                errors: ra.rec.failed() + rb.rec.failed(),
            })
        })
        .collect()
}

/// The side-by-side table of [`compare`]: ops/s, p50/p99 of both, the ratios, the cores each
/// server (apiserver + store) and the benchmark used, and ops/s per server core.
pub fn compare_table(a_label: &str, a: &[PhaseResult], b_label: &str, b: &[PhaseResult]) -> String {
    use std::fmt::Write;
    let f = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
    let find = |rows: &[PhaseResult], name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .map(|r| format!("{}/{}", fmt_dur(r.p(0.5)), fmt_dur(r.p(0.99))))
            .unwrap_or_default()
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "A = {a_label}, B = {b_label}; ratio = A ops/s / B ops/s; p99 ratio = B p99 / A p99; \
         cores = apiserver + store of each; per core = ops/s / those cores"
    );
    let _ = writeln!(
        out,
        "{:<22} {:>9} {:>9} {:>7} {:>17} {:>17} {:>6} {:>11} {:>9} {:>9} {:>7} {:>9}",
        "operation",
        "A ops/s",
        "B ops/s",
        "ratio",
        "A p50/p99",
        "B p50/p99",
        "p99 r.",
        "cores A/B",
        "A /core",
        "B /core",
        "ratio",
        "bench A/B"
    );
    for c in compare(a, b) {
        let _ = writeln!(
            out,
            "{:<22} {:>9.1} {:>9.1} {:>7} {:>17} {:>17} {:>6} {:>11} {:>9} {:>9} {:>7} {:>9}{}",
            c.name,
            c.a_rate,
            c.b_rate,
            f(c.rate_ratio, 2),
            find(a, &c.name),
            find(b, &c.name),
            f(c.p99_ratio, 1),
            format!("{}/{}", f(c.a_cores, 2), f(c.b_cores, 2)),
            f(c.a_per_core, 0),
            f(c.b_per_core, 0),
            f(c.per_core_ratio, 2),
            format!("{}/{}", f(c.a_bench, 2), f(c.b_bench, 2)),
            if c.errors > 0 {
                format!("  ({} errors)", c.errors)
            } else {
                String::new()
            }
        );
    }
    out
}

/// [`compare`] as JSON.
pub fn compare_json(a: &[PhaseResult], b: &[PhaseResult]) -> Value {
    let r = |v: Option<f64>| v.map(|v| (v * 1000.0).round() / 1000.0);
    Value::Array(
        compare(a, b)
            .into_iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "substrate_ops_per_sec": r(Some(c.a_rate)),
                    "kube_ops_per_sec": r(Some(c.b_rate)),
                    "ratio": r(c.rate_ratio),
                    "p99_ratio": r(c.p99_ratio),
                    "substrate_server_cores": r(c.a_cores),
                    "kube_server_cores": r(c.b_cores),
                    "substrate_per_core": r(c.a_per_core),
                    "kube_per_core": r(c.b_per_core),
                    "per_core_ratio": r(c.per_core_ratio),
                    "substrate_bench_cores": r(c.a_bench),
                    "kube_bench_cores": r(c.b_bench),
                    "errors": c.errors,
                })
            })
            .collect(),
    )
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

    fn row(
        name: &str,
        ops: usize,
        secs: u64,
        p99_ms: u64,
        apiserver: f64,
        store: f64,
    ) -> PhaseResult {
        let latencies: Vec<Duration> = (0..ops).map(|_| Duration::from_millis(p99_ms)).collect();
        let rec = Recorded {
            ops,
            latencies,
            elapsed: Duration::from_secs(secs),
            ..Recorded::default()
        };
        let usage = Usage {
            seconds: secs as f64,
            machine: Some(2.0),
            bench: Some(0.1),
            apiserver: Some(apiserver),
            storage: Some(store),
            storage_name: "store",
            top_commands: Vec::new(),
        };
        PhaseResult::new(name, rec, Some(usage))
    }

    #[test]
    fn comparison_gives_ratios_and_per_core_figures() {
        // A: 1000 ops in 1 s on 0.5 + 0.5 cores; B: 100 ops in 1 s on 1.5 + 0.5 cores.
        let a = vec![
            row("create", 1000, 1, 2, 0.5, 0.5),
            row("only-a", 10, 1, 1, 1.0, 0.0),
        ];
        let b = vec![row("create", 100, 1, 20, 1.5, 0.5)];
        let c = compare(&a, &b);
        assert_eq!(c.len(), 1, "rows only one side has are left out");
        let c = &c[0];
        assert_eq!(c.name, "create");
        assert_eq!(c.rate_ratio, Some(10.0));
        assert_eq!(c.a_cores, Some(1.0));
        assert_eq!(c.b_cores, Some(2.0));
        assert_eq!(c.a_per_core, Some(1000.0));
        assert_eq!(c.b_per_core, Some(50.0));
        assert_eq!(c.per_core_ratio, Some(20.0));
        assert_eq!(c.p99_ratio, Some(10.0));
        let table = compare_table("substrate", &a, "kube-apiserver", &b);
        assert!(
            table.contains("A = substrate, B = kube-apiserver"),
            "{table}"
        );
        let line = table
            .lines()
            .find(|l| l.starts_with("create"))
            .expect(&table);
        assert!(line.contains("10.00"), "{line}");
        assert!(line.contains("1.00/2.00"), "{line}");
        assert!(!table.contains("only-a"), "{table}");
        assert_eq!(compare_json(&a, &b)[0]["ratio"], json!(10.0));
    }

    #[test]
    fn ratios_without_a_denominator_are_missing() {
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
    }
}
