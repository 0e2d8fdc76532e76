//! `substrate-bench-operator`: the operator under load, against a RUNNING system (apiserver,
//! operator with `--metrics-addr`, optionally the router); it prints numbers, it asserts
//! nothing. Run through `hack/bench-operator.sh`, which starts a throwaway system for it;
//! figures and how to read them: `docs/benchmarks.md` ("Operator").
//!
//! Phases (`--phases`, always in this order):
//!
//! 1. `idle`: creates `--actors` actors (`activation: Suspended`, no worker needed) in atespace
//!    `obench-<id>` through the apiserver, waits until the operator's actor cache (and the
//!    router's table) hold as many actors as the apiserver, then watches the operator for
//!    `--idle-seconds`: CPU (`/proc/<pid>/stat`), RSS (`/proc/<pid>/status`), reconciles.
//! 2. `latency`: time from a spec change to the operator's resulting write, seen on a watch:
//!    `spec` patches `spec.idleTimeout` of a suspended actor (the operator records
//!    `status.observedGeneration`); `always` patches `activation: Always` (the operator POSTs
//!    `resume`; with no worker in the pool the apiserver answers by setting
//!    `Scheduled=False`, which is the write seen). `own` is the same watch seeing the
//!    benchmark's own patch: the floor every figure includes.
//! 3. `churn`: patches random actors at `--churn-rate` per second for `--churn-seconds`,
//!    once per `--churn-kinds` (`annotation`: a metadata-only merge patch; `spec`: a change of
//!    `spec.idleTimeout`, which the operator answers with an `observedGeneration` write),
//!    with `always` latency samples taken meanwhile.
//! 4. `cascade`: creates `--cascade-actors` actors in atespace `obench-<id>-cascade`, waits
//!    until the caches hold them, deletes the atespace and samples every 100 ms until the
//!    apiserver has removed it and the operator's caches and the router's table hold exactly
//!    what a fresh LIST of the apiserver returns; prints the time of each.
//!
//! At the end, every cache size is compared with a LIST of the apiserver.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crds::ate::{ActorTemplate, WorkerPool};
use crds::substrate::{Actor, Atespace, Worker};

/// Linux's USER_HZ: the unit of `/proc/<pid>/stat`'s utime and stime.
const TICKS_PER_SECOND: f64 = 100.0;
/// Actors of the idle set kept out of the churn for latency samples.
const RESERVED: usize = 1000;

#[derive(Debug, Parser)]
#[command(
    name = "substrate-bench-operator",
    about = "Operator CPU, memory, reaction time and cache convergence under load"
)]
struct Args {
    /// Kubeconfig of the apiserver.
    #[arg(long, env = "SUBSTRATE_KUBECONFIG")]
    kubeconfig: PathBuf,
    /// The operator's admin endpoint (`--metrics-addr` of substrate-operator).
    #[arg(long, env = "SUBSTRATE_BENCH_OPERATOR_METRICS")]
    operator_metrics: SocketAddr,
    /// The operator's pid (CPU and RSS).
    #[arg(long, env = "SUBSTRATE_BENCH_OPERATOR_PID")]
    operator_pid: u32,
    /// The operator's log file: its growth is reported.
    #[arg(long, env = "SUBSTRATE_BENCH_OPERATOR_LOG")]
    operator_log: Option<PathBuf>,
    /// The router's admin endpoint: its table is compared too.
    #[arg(long, env = "SUBSTRATE_BENCH_ROUTER_METRICS")]
    router_metrics: Option<SocketAddr>,
    #[arg(long, env = "SUBSTRATE_BENCH_ROUTER_PID")]
    router_pid: Option<u32>,
    #[arg(long, env = "SUBSTRATE_BENCH_APISERVER_PID")]
    apiserver_pid: Option<u32>,
    /// Phases to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "idle,latency,churn,cascade"
    )]
    phases: Vec<String>,
    /// Actors of the idle set (at least 2000: 1000 are kept for latency samples).
    #[arg(long, default_value_t = 100_000)]
    actors: usize,
    /// Creates in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// How long the idle operator is watched (the default is its resync period, so every
    /// actor's periodic reconcile falls in the window once).
    #[arg(long, default_value_t = 300)]
    idle_seconds: u64,
    /// Samples per latency kind.
    #[arg(long, default_value_t = 50)]
    latency_samples: usize,
    /// Patches per second in the churn phase.
    #[arg(long, default_value_t = 1000)]
    churn_rate: u64,
    #[arg(long, default_value_t = 60)]
    churn_seconds: u64,
    /// Kinds of churn: `annotation`, `spec`.
    #[arg(long, value_delimiter = ',', default_value = "annotation,spec")]
    churn_kinds: Vec<String>,
    /// Patches in flight at most during churn (more are counted as "behind", not sent).
    #[arg(long, default_value_t = 256)]
    churn_in_flight: usize,
    #[arg(long, default_value_t = 34_000)]
    cascade_actors: usize,
    /// Longest wait for the caches to converge, in seconds.
    #[arg(long, default_value_t = 900)]
    converge_timeout: u64,
}

// ---- /proc ----

fn proc_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// (busy, total) jiffies of the whole machine.
fn machine_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// CPU of the processes of interest at one instant.
#[derive(Clone)]
struct CpuMark {
    at: Instant,
    pids: Vec<(&'static str, Option<u32>, u64)>,
    machine: (u64, u64),
}

struct Procs {
    list: Vec<(&'static str, Option<u32>)>,
}

impl Procs {
    fn mark(&self) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            pids: self
                .list
                .iter()
                .map(|(n, p)| (*n, *p, p.and_then(proc_ticks).unwrap_or(0)))
                .collect(),
            machine: machine_ticks(),
        }
    }

    /// Cores used per process since `m`, and by the rest of the machine ("other").
    fn since(&self, m: &CpuMark) -> Cpu {
        let now = self.mark();
        let secs = now.at.duration_since(m.at).as_secs_f64().max(1e-3);
        let mut per = vec![];
        let mut ours = 0.0;
        for ((name, pid, t1), (_, _, t0)) in now.pids.iter().zip(&m.pids) {
            if pid.is_none() {
                continue;
            }
            let s = t1.saturating_sub(*t0) as f64 / TICKS_PER_SECOND;
            ours += s;
            per.push((*name, s));
        }
        let busy = now.machine.0.saturating_sub(m.machine.0) as f64 / TICKS_PER_SECOND;
        Cpu {
            secs,
            per,
            other: (busy - ours).max(0.0) / secs,
        }
    }
}

struct Cpu {
    secs: f64,
    /// CPU seconds per process.
    per: Vec<(&'static str, f64)>,
    /// Cores used by everything else on the machine.
    other: f64,
}

impl Cpu {
    fn cpu_s(&self, name: &str) -> f64 {
        self.per
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0.0, |(_, s)| *s)
    }
    fn line(&self) -> String {
        let mut parts: Vec<String> = self
            .per
            .iter()
            .map(|(n, s)| format!("{n} {:.3}", s / self.secs))
            .collect();
        parts.push(format!("other {:.2}", self.other));
        format!(
            "cores over {:.1} s: {} (load {})",
            self.secs,
            parts.join(", "),
            loadavg()
        )
    }
}

// ---- admin endpoints ----

/// The samples of a Prometheus text body (`name{labels}` → value).
async fn scrape(addr: SocketAddr) -> Result<HashMap<String, f64>> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .context("read timed out")??;
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}

fn val(m: &HashMap<String, f64>, k: &str) -> u64 {
    m.get(k).copied().unwrap_or(-1.0).max(0.0) as u64
}

const OP_ACTORS: &str = "ate_operator_cache_objects{kind=\"actors\"}";
const RT_ACTORS: &str = "substrate_router_table_objects{kind=\"actors\"}";

fn reconciles(m: &HashMap<String, f64>) -> u64 {
    m.iter()
        .filter(|(k, _)| k.starts_with("ate_operator_reconciles_total"))
        .map(|(_, v)| *v as u64)
        .sum()
}

// ---- watch of the bench atespace: waiters for a predicate on one actor ----

type Pred = Box<dyn Fn(&Actor) -> bool + Send + Sync>;
/// A predicate and whom to tell when an event first satisfies it.
type Waiter = (Pred, oneshot::Sender<Instant>);

#[derive(Default)]
struct Waiters {
    by_name: Mutex<HashMap<String, Vec<Waiter>>>,
}

impl Waiters {
    fn add(&self, name: &str, pred: Pred) -> oneshot::Receiver<Instant> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut m) = self.by_name.lock() {
            m.entry(name.to_string()).or_default().push((pred, tx));
        }
        rx
    }
    fn event(&self, a: &Actor) {
        let at = Instant::now();
        let Some(name) = a.metadata.name.as_deref() else {
            return;
        };
        let Ok(mut m) = self.by_name.lock() else {
            return;
        };
        if let Some(list) = m.get_mut(name) {
            let mut keep = vec![];
            for (p, tx) in list.drain(..) {
                if p(a) {
                    let _ = tx.send(at);
                } else {
                    keep.push((p, tx));
                }
            }
            *list = keep;
        }
    }
}

/// Watches the actors of `ns` from now on, feeding `waiters`, forever.
async fn watch_loop(api: Api<Actor>, waiters: Arc<Waiters>) {
    let mut rv = String::new();
    loop {
        if rv.is_empty() {
            match api.list_metadata(&ListParams::default().limit(1)).await {
                Ok(l) => rv = l.metadata.resource_version.unwrap_or_default(),
                Err(e) => {
                    eprintln!("watch: list failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let stream = match api.watch(&WatchParams::default().timeout(290), &rv).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("watch failed: {e}");
                rv.clear();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(WatchEvent::Added(a) | WatchEvent::Modified(a)) => {
                    if let Some(v) = &a.metadata.resource_version {
                        rv.clone_from(v);
                    }
                    waiters.event(&a);
                }
                Ok(WatchEvent::Deleted(_)) => {}
                Ok(WatchEvent::Bookmark(b)) => rv = b.metadata.resource_version,
                Ok(WatchEvent::Error(e)) => {
                    eprintln!("watch error event: {e}");
                    rv.clear();
                    break;
                }
                Err(e) => {
                    eprintln!("watch stream failed: {e}");
                    break;
                }
            }
        }
    }
}

// ---- statistics ----

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "n {} p50 {:.1} ms p90 {:.1} ms p99 {:.1} ms max {:.1} ms",
        v.len(),
        pct(&v, 0.5),
        pct(&v, 0.9),
        pct(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN)
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---- the benchmark ----

struct Bench {
    args: Args,
    client: kube::Client,
    procs: Procs,
    ns: String,
    waiters: Arc<Waiters>,
    /// Idle-set actors used for latency samples so far.
    next_reserved: AtomicU64,
}

fn actor_name(i: usize) -> String {
    format!("a-{i:06}")
}

fn actor(name: &str) -> Result<Actor> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": name, "labels": {"app": "obench", "tier": "t1"}},
        "spec": {"template": {"name": "bench"}, "activation": "Suspended", "idleTimeout": "5m"},
    }))?)
}

impl Bench {
    async fn op_metrics(&self) -> Result<HashMap<String, f64>> {
        scrape(self.args.operator_metrics).await
    }

    async fn router_metrics(&self) -> Option<HashMap<String, f64>> {
        scrape(self.args.router_metrics?).await.ok()
    }

    fn log_bytes(&self) -> u64 {
        self.args
            .operator_log
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len())
    }

    async fn ensure_atespace(&self, ns: &str) -> Result<()> {
        let ates: Api<Atespace> = Api::all(self.client.clone());
        let a: Atespace = serde_json::from_value(json!({
            "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace",
            "metadata": {"name": ns}, "spec": {}}))?;
        ates.create(&PostParams::default(), &a)
            .await
            .with_context(|| format!("creating atespace {ns}"))?;
        // A template whose pool has no worker: a resume is answered with Scheduled=False.
        let t: ActorTemplate = serde_json::from_value(json!({
            "apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
            "metadata": {"name": "bench"},
            "spec": {"containers": [{"name": "c", "image": "127.0.0.1:5000/obench:1"}],
                     "workerPoolRef": {"name": "obench-no-workers"}}}))?;
        Api::<ActorTemplate>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &t)
            .await
            .with_context(|| format!("creating template {ns}/bench"))?;
        Ok(())
    }

    /// Creates actors `names` in `ns`; prints rate and CPU.
    async fn create_actors(&self, what: &str, ns: &str, n: usize) -> Result<()> {
        let api: Api<Actor> = Api::namespaced(self.client.clone(), ns);
        let mark = self.procs.mark();
        let m0 = self.op_metrics().await?;
        let start = Instant::now();
        let errors = AtomicU64::new(0);
        let done = AtomicU64::new(0);
        let progress = async {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                eprintln!(
                    "  {what}: {} / {n} created ({:.0} s)",
                    done.load(Ordering::Relaxed),
                    start.elapsed().as_secs_f64()
                );
            }
        };
        let work = futures::stream::iter(0..n)
            .map(|i| {
                let api = api.clone();
                let (errors, done) = (&errors, &done);
                async move {
                    let name = actor_name(i);
                    let a = match actor(&name) {
                        Ok(a) => a,
                        Err(_) => return,
                    };
                    let mut tries = 0;
                    loop {
                        match api.create(&PostParams::default(), &a).await {
                            Ok(_) => break,
                            Err(kube::Error::Api(e)) if e.code == 409 => break,
                            Err(e) => {
                                tries += 1;
                                if tries == 1 {
                                    eprintln!("  create {name} failed (retrying): {e}");
                                }
                                errors.fetch_add(1, Ordering::Relaxed);
                                if tries > 5 {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
            .buffer_unordered(self.args.concurrency)
            .collect::<()>();
        tokio::select! {
            _ = work => {}
            _ = progress => {}
        }
        let secs = start.elapsed().as_secs_f64();
        let cpu = self.procs.since(&mark);
        let m1 = self.op_metrics().await?;
        let rec = reconciles(&m1).saturating_sub(reconciles(&m0));
        println!(
            "{what}: {n} actors in {secs:.1} s = {:.0}/s, {} failed attempts",
            n as f64 / secs,
            errors.load(Ordering::Relaxed)
        );
        println!("  {}", cpu.line());
        println!(
            "  operator: {:.2} CPU-s per 1,000 creates; {rec} reconciles ({:.2} per create); apiserver {:.2} CPU-s per 1,000",
            cpu.cpu_s("operator") / n as f64 * 1000.0,
            rec as f64 / n as f64,
            cpu.cpu_s("apiserver") / n as f64 * 1000.0,
        );
        Ok(())
    }

    /// Counts the apiserver's objects of every kind the caches hold (paginated LISTs).
    async fn apiserver_counts(&self) -> Result<Vec<(&'static str, usize)>> {
        async fn count<K>(api: Api<K>) -> Result<usize>
        where
            K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        {
            let mut n = 0;
            let mut lp = ListParams::default().limit(5000);
            loop {
                let l = api.list_metadata(&lp).await?;
                n += l.items.len();
                match l.metadata.continue_ {
                    Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
                    _ => return Ok(n),
                }
            }
        }
        let c = &self.client;
        Ok(vec![
            ("actors", count(Api::<Actor>::all(c.clone())).await?),
            ("workers", count(Api::<Worker>::all(c.clone())).await?),
            (
                "templates",
                count(Api::<ActorTemplate>::all(c.clone())).await?,
            ),
            ("pools", count(Api::<WorkerPool>::all(c.clone())).await?),
            ("atespaces", count(Api::<Atespace>::all(c.clone())).await?),
        ])
    }

    /// Waits until the operator's actor cache (and the router's table) hold `want` actors,
    /// or as many as a LIST of the apiserver returns (asked every 5 s after the first 5 s:
    /// the golden controller adds a golden actor per new template); returns how long that
    /// took.
    async fn converge(&self, mut want: usize) -> Result<Duration> {
        let start = Instant::now();
        let limit = Duration::from_secs(self.args.converge_timeout);
        let mut asked = Instant::now();
        loop {
            if asked.elapsed() > Duration::from_secs(5) {
                want = self.total_actors().await?;
                asked = Instant::now();
            }
            let op = val(&self.op_metrics().await?, OP_ACTORS);
            let rt = match self.router_metrics().await {
                Some(m) => val(&m, RT_ACTORS),
                None => want as u64,
            };
            if op == want as u64 && rt == want as u64 {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                bail!(
                    "caches did not converge to {want} actors in {limit:?}: operator {op}, router {rt}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn total_actors(&self) -> Result<usize> {
        Ok(self
            .apiserver_counts()
            .await?
            .into_iter()
            .find(|(k, _)| *k == "actors")
            .map_or(0, |(_, n)| n))
    }

    async fn phase_idle(&self) -> Result<()> {
        println!("\n== idle: {} suspended actors ==", self.args.actors);
        let before = self.total_actors().await?;
        let rss0 = rss_kib(self.args.operator_pid).unwrap_or(0);
        self.create_actors("create", &self.ns, self.args.actors)
            .await?;
        let lag = self.converge(before + self.args.actors).await?;
        println!(
            "  caches hold all {} actors {:.0} ms after the last create answered",
            before + self.args.actors,
            ms(lag)
        );
        let rss1 = rss_kib(self.args.operator_pid).unwrap_or(0);
        let m0 = self.op_metrics().await?;
        let mark = self.procs.mark();
        let secs = self.args.idle_seconds;
        let mut peak = rss1;
        for _ in 0..secs {
            tokio::time::sleep(Duration::from_secs(1)).await;
            peak = peak.max(rss_kib(self.args.operator_pid).unwrap_or(0));
        }
        let cpu = self.procs.since(&mark);
        let m1 = self.op_metrics().await?;
        let rec = reconciles(&m1).saturating_sub(reconciles(&m0));
        let rss2 = rss_kib(self.args.operator_pid).unwrap_or(0);
        println!("idle for {secs} s:");
        println!("  {}", cpu.line());
        println!(
            "  operator: {rec} reconciles ({:.1}/s; the resync safety net reconciles every actor per controller once per period), {:.3} ms CPU per reconcile",
            rec as f64 / cpu.secs,
            if rec > 0 {
                cpu.cpu_s("operator") * 1000.0 / rec as f64
            } else {
                0.0
            }
        );
        println!(
            "  operator RSS: {:.1} MiB before the actors, {:.1} MiB after creating them, {:.1} MiB at the end (peak {:.1}); {:.0} bytes per actor",
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0,
            rss2 as f64 / 1024.0,
            peak as f64 / 1024.0,
            (rss2 as f64 - rss0 as f64) * 1024.0 / self.args.actors as f64
        );
        Ok(())
    }

    fn reserved(&self) -> Result<String> {
        let i = self.next_reserved.fetch_add(1, Ordering::Relaxed) as usize;
        if i >= RESERVED || self.args.actors < 2 * RESERVED {
            bail!(
                "out of reserved actors for latency samples (or --actors < {})",
                2 * RESERVED
            );
        }
        Ok(actor_name(self.args.actors - 1 - i))
    }

    /// One sample of `kind`: (from the request, from its response) to the operator's write,
    /// and to the watch seeing the patch itself.
    async fn sample(&self, kind: &str, seq: usize) -> Result<(f64, f64, f64)> {
        let name = self.reserved()?;
        let api: Api<Actor> = Api::namespaced(self.client.clone(), &self.ns);
        let (patch, own, done): (
            Value,
            oneshot::Receiver<Instant>,
            oneshot::Receiver<Instant>,
        ) = match kind {
            "spec" => {
                let v = format!("{}m", 6 + seq % 50);
                let v2 = v.clone();
                let own = self.waiters.add(
                    &name,
                    Box::new(move |a| a.spec.idle_timeout.as_deref() == Some(v2.as_str())),
                );
                // Generation 2 at least after the change: the write of the operator that
                // records it is what is timed.
                let done = self.waiters.add(
                    &name,
                    Box::new(|a| {
                        let g = a.metadata.generation.unwrap_or(0);
                        g >= 2 && a.status.as_ref().and_then(|s| s.observed_generation) == Some(g)
                    }),
                );
                (json!({"spec": {"idleTimeout": v}}), own, done)
            }
            "always" => {
                let own = self.waiters.add(
                    &name,
                    Box::new(|a| a.spec.activation == crds::substrate::Activation::Always),
                );
                let done = self.waiters.add(
                    &name,
                    Box::new(|a| {
                        a.status.as_ref().is_some_and(|s| {
                            s.conditions.iter().any(|c| c.type_ == "Scheduled")
                                || matches!(s.phase, Some(crds::substrate::ActorPhase::Resuming))
                        })
                    }),
                );
                (json!({"spec": {"activation": "Always"}}), own, done)
            }
            other => bail!("unknown latency kind {other}"),
        };
        let t0 = Instant::now();
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("patching {name}"))?;
        let t1 = Instant::now();
        let limit = Duration::from_secs(60);
        let own = tokio::time::timeout(limit, own)
            .await
            .context("the watch did not see the patch in 60 s")??;
        let done = tokio::time::timeout(limit, done)
            .await
            .with_context(|| format!("no operator write for {kind} on {name} within 60 s"))??;
        if kind == "always" {
            // Back to Suspended (untimed), so the actor stays quiet.
            let _ = api
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"activation": "Suspended"}})),
                )
                .await;
        }
        Ok((
            ms(done.saturating_duration_since(t0)),
            ms(done.saturating_duration_since(t1)),
            ms(own.saturating_duration_since(t0)),
        ))
    }

    async fn latencies(&self, kind: &str, n: usize, gap: Duration) -> Result<()> {
        let (mut req, mut resp, mut own) = (vec![], vec![], vec![]);
        for i in 0..n {
            let (a, b, c) = self.sample(kind, i).await?;
            req.push(a);
            resp.push(b);
            own.push(c);
            tokio::time::sleep(gap).await;
        }
        println!("  {kind:6} from the patch request:  {}", summary(req));
        println!("  {kind:6} from the patch response: {}", summary(resp));
        println!("  own    (the watch sees the patch): {}", summary(own));
        Ok(())
    }

    async fn phase_latency(&self) -> Result<()> {
        println!(
            "\n== latency: spec change -> the operator's write, {} samples per kind, 100 ms apart ==",
            self.args.latency_samples
        );
        let mark = self.procs.mark();
        self.latencies(
            "spec",
            self.args.latency_samples,
            Duration::from_millis(100),
        )
        .await?;
        self.latencies(
            "always",
            self.args.latency_samples,
            Duration::from_millis(100),
        )
        .await?;
        println!("  {}", self.procs.since(&mark).line());
        Ok(())
    }

    async fn phase_churn(&self) -> Result<()> {
        let kinds = self.args.churn_kinds.clone();
        for kind in kinds {
            self.churn(&kind).await?;
        }
        Ok(())
    }

    async fn churn(&self, kind: &str) -> Result<()> {
        let rate = self.args.churn_rate.max(1);
        let secs = self.args.churn_seconds;
        println!("\n== churn: {kind} patches at {rate}/s for {secs} s ==");
        let pool = self.args.actors.saturating_sub(RESERVED).max(1);
        let api: Api<Actor> = Api::namespaced(self.client.clone(), &self.ns);
        let sem = Arc::new(tokio::sync::Semaphore::new(self.args.churn_in_flight));
        let lat = Arc::new(Mutex::new(Vec::<f64>::new()));
        let errors = Arc::new(AtomicU64::new(0));
        let mut behind = 0u64;
        let mut sent = 0u64;
        let m0 = self.op_metrics().await?;
        let log0 = self.log_bytes();
        let mark = self.procs.mark();
        let start = Instant::now();
        let end = start + Duration::from_secs(secs);
        let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
        // Latency samples meanwhile (every 2 s).
        let samples = async {
            let mut v = vec![];
            while Instant::now() + Duration::from_secs(2) < end {
                tokio::time::sleep(Duration::from_secs(2)).await;
                match self.sample("always", v.len()).await {
                    Ok((a, _, c)) => v.push((a, c)),
                    Err(e) => eprintln!("  latency sample failed: {e:#}"),
                }
            }
            v
        };
        let pacer = async {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut due = 0f64;
            let mut tasks = vec![];
            while Instant::now() < end {
                tick.tick().await;
                due += rate as f64 / 100.0;
                while due >= 1.0 {
                    due -= 1.0;
                    let Ok(permit) = sem.clone().try_acquire_owned() else {
                        behind += 1;
                        continue;
                    };
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let name = actor_name((rng % pool as u64) as usize);
                    sent += 1;
                    let patch = match kind {
                        "spec" => json!({"spec": {"idleTimeout": format!("{}m", 5 + sent % 2)}}),
                        _ => {
                            json!({"metadata": {"annotations": {"bench.substrate.ate.dev/seq": sent.to_string()}}})
                        }
                    };
                    let (api, lat, errors) = (api.clone(), lat.clone(), errors.clone());
                    tasks.push(tokio::spawn(async move {
                        let t = Instant::now();
                        match api
                            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                        {
                            Ok(_) => {
                                if let Ok(mut l) = lat.lock() {
                                    l.push(ms(t.elapsed()));
                                }
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        drop(permit);
                    }));
                }
            }
            for t in tasks {
                let _ = t.await;
            }
        };
        let ((), lsamples) = futures::join!(pacer, samples);
        let wall = start.elapsed().as_secs_f64();
        let cpu = self.procs.since(&mark);
        let m1 = self.op_metrics().await?;
        let rec = reconciles(&m1).saturating_sub(reconciles(&m0));
        let ok = lat.lock().map(|l| l.len()).unwrap_or(0);
        println!(
            "  patches: {ok} done in {wall:.1} s = {:.0}/s ({} errors, {behind} not sent: {} already in flight)",
            ok as f64 / wall,
            errors.load(Ordering::Relaxed),
            self.args.churn_in_flight
        );
        println!(
            "  patch latency: {}",
            summary(lat.lock().map(|l| l.clone()).unwrap_or_default())
        );
        println!("  {}", cpu.line());
        let per_k = cpu.cpu_s("operator") / ok.max(1) as f64 * 1000.0;
        println!(
            "  operator: {:.3} CPU-s per 1,000 changes (so {:.2} cores at 1,000 changes/s); {rec} reconciles ({:.2} per change); log +{} bytes",
            per_k,
            per_k,
            rec as f64 / ok.max(1) as f64,
            self.log_bytes().saturating_sub(log0)
        );
        println!(
            "  apiserver: {:.3} CPU-s per 1,000 changes",
            cpu.cpu_s("apiserver") / ok.max(1) as f64 * 1000.0
        );
        let (a, c): (Vec<f64>, Vec<f64>) = lsamples.into_iter().unzip();
        println!(
            "  always during the churn, from the patch request: {}",
            summary(a)
        );
        println!(
            "  own    during the churn:                         {}",
            summary(c)
        );
        Ok(())
    }

    async fn phase_cascade(&self) -> Result<()> {
        let m = self.args.cascade_actors;
        let ns = format!("{}-cascade", self.ns);
        println!("\n== cascade: {m} actors in {ns}, then delete the atespace ==");
        self.ensure_atespace(&ns).await?;
        let before = self.total_actors().await?;
        self.create_actors("create", &ns, m).await?;
        let lag = self.converge(before + m).await?;
        println!(
            "  caches hold all {} actors {:.0} ms after the last create answered",
            before + m,
            ms(lag)
        );
        let m0 = self.op_metrics().await?;
        let log0 = self.log_bytes();
        let mark = self.procs.mark();
        let ates: Api<Atespace> = Api::all(self.client.clone());
        let start = Instant::now();
        ates.delete(&ns, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting atespace {ns}"))?;
        // (t, operator actors, router actors)
        let mut series: Vec<(f64, u64, u64)> = vec![];
        let mut api_done: Option<f64> = None;
        let mut truth: Option<u64> = None;
        let limit = Duration::from_secs(self.args.converge_timeout);
        let mut last_print = Instant::now();
        loop {
            let t = start.elapsed().as_secs_f64();
            let op = val(&self.op_metrics().await?, OP_ACTORS);
            let rt = match self.router_metrics().await {
                Some(mm) => val(&mm, RT_ACTORS),
                None => u64::MAX,
            };
            series.push((t, op, rt));
            if api_done.is_none() && ates.get_opt(&ns).await?.is_none() {
                api_done = Some(start.elapsed().as_secs_f64());
                truth = Some(self.total_actors().await? as u64);
            }
            if last_print.elapsed() > Duration::from_secs(10) {
                eprintln!(
                    "  {t:.0} s: operator {op}, router {rt} actors; apiserver done: {api_done:?}"
                );
                last_print = Instant::now();
            }
            if let Some(tr) = truth
                && op == tr
                && (rt == tr || rt == u64::MAX)
            {
                break;
            }
            if start.elapsed() > limit {
                println!("  NOT CONVERGED within {limit:?}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let cpu = self.procs.since(&mark);
        let m1 = self.op_metrics().await?;
        let d = |k: &str| val(&m1, k).saturating_sub(val(&m0, k));
        let truth = truth.unwrap_or(u64::MAX);
        // The first time after which every sample equals the apiserver's count.
        let settled = |f: fn(&(f64, u64, u64)) -> u64| {
            let mut at = None;
            for s in &series {
                if f(s) == truth {
                    at.get_or_insert(s.0);
                } else {
                    at = None;
                }
            }
            at
        };
        let fmt = |x: Option<f64>| x.map_or("never".to_string(), |s| format!("{s:.1} s"));
        println!(
            "  apiserver: atespace and its {m} actors gone after {}; {truth} actors left in all",
            fmt(api_done)
        );
        println!(
            "  operator actor cache = apiserver after {} (samples every ~100 ms)",
            fmt(settled(|s| s.1))
        );
        if self.args.router_metrics.is_some() {
            println!(
                "  router table          = apiserver after {}",
                fmt(settled(|s| s.2))
            );
        }
        println!("  {}", cpu.line());
        println!(
            "  operator during the cascade: {} reconciles, {} found their object gone (404), {} failed; log +{} bytes",
            d("ate_operator_reconciles_total{controller=\"lifecycle\"}")
                + d("ate_operator_reconciles_total{controller=\"dead_worker\"}")
                + d("ate_operator_reconciles_total{controller=\"golden\"}")
                + d("ate_operator_reconciles_total{controller=\"pool\"}"),
            d("ate_operator_objects_gone_total{controller=\"lifecycle\"}")
                + d("ate_operator_objects_gone_total{controller=\"dead_worker\"}"),
            d("ate_operator_reconcile_errors_total{controller=\"lifecycle\"}")
                + d("ate_operator_reconcile_errors_total{controller=\"dead_worker\"}"),
            self.log_bytes().saturating_sub(log0),
        );
        Ok(())
    }

    async fn compare(&self) -> Result<()> {
        println!("\n== caches vs apiserver (a LIST of each kind) ==");
        let api = self.apiserver_counts().await?;
        let op = self.op_metrics().await?;
        let rt = self.router_metrics().await;
        for (kind, n) in api {
            let o = op
                .get(&format!("ate_operator_cache_objects{{kind=\"{kind}\"}}"))
                .map_or("-".to_string(), |v| format!("{v}"));
            let r = rt
                .as_ref()
                .and_then(|m| {
                    m.get(&format!(
                        "substrate_router_table_objects{{kind=\"{kind}\"}}"
                    ))
                })
                .map_or("-".to_string(), |v| format!("{v}"));
            println!("  {kind:10} apiserver {n:>7}  operator {o:>7}  router {r:>7}");
        }
        println!(
            "  operator RSS {:.1} MiB; {}",
            rss_kib(self.args.operator_pid).unwrap_or(0) as f64 / 1024.0,
            self.args
                .router_pid
                .and_then(rss_kib)
                .map_or(String::new(), |k| format!(
                    "router RSS {:.1} MiB",
                    k as f64 / 1024.0
                ))
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let id = format!(
        "{:06x}",
        std::process::id() ^ (jiff::Timestamp::now().as_second() as u32)
    );
    let ns = format!("obench-{}", &id[id.len() - 6..]);
    let procs = Procs {
        list: vec![
            ("operator", Some(args.operator_pid)),
            ("apiserver", args.apiserver_pid),
            ("router", args.router_pid),
            ("bench", Some(std::process::id())),
        ],
    };
    let bench = Bench {
        client: client.clone(),
        procs,
        ns: ns.clone(),
        waiters: Arc::default(),
        next_reserved: AtomicU64::new(0),
        args,
    };
    let m = bench
        .op_metrics()
        .await
        .context("scraping the operator's /metrics (is it running with --metrics-addr?)")?;
    if m.get("ate_operator_controllers_running") != Some(&1.0) {
        bail!(
            "the operator at {} does not run its controllers (a standby?)",
            bench.args.operator_metrics
        );
    }
    println!(
        "substrate-bench-operator: atespace {ns}, {} phases, load {}",
        bench.args.phases.join(","),
        loadavg()
    );
    bench.ensure_atespace(&ns).await?;
    let watch = tokio::spawn(watch_loop(
        Api::namespaced(client.clone(), &ns),
        bench.waiters.clone(),
    ));
    // Baseline: the operator with (almost) nothing to do.
    let mark = bench.procs.mark();
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!(
        "baseline (no actors of ours): {}; operator RSS {:.1} MiB",
        bench.procs.since(&mark).line(),
        rss_kib(bench.args.operator_pid).unwrap_or(0) as f64 / 1024.0
    );
    let phases = bench.args.phases.clone();
    let has = |p: &str| phases.iter().any(|x| x == p);
    if has("idle") {
        bench.phase_idle().await?;
    }
    if has("latency") {
        bench.phase_latency().await?;
    }
    if has("churn") {
        bench.phase_churn().await?;
    }
    if has("cascade") {
        bench.phase_cascade().await?;
    }
    bench.compare().await?;
    watch.abort();
    Ok(())
}
