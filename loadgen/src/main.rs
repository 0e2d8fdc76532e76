//! `substrate-loadgen`: a small closed-loop HTTP/1.1 load generator for the router benchmark
//! (`hack/bench-router.sh`). For each concurrency level it opens that many keep-alive
//! connections to each target in turn and sends requests back to back for a fixed time,
//! then prints requests/s and latency percentiles per target, and each target's added
//! latency and throughput ratio against the first (the direct connection).
//!
//! With `--rounds N` each target's time is cut into N slices run in rotating order (a, b, c;
//! b, c, a; ...): on a machine whose speed drifts from one second to the next, every target
//! sees the same drift, and the ratios printed are the median of the rounds' ratios (with
//! their range).
//!
//! ```text
//! substrate-loadgen --target direct=10.203.0.6:8080 \
//!   --target router=127.0.0.1:8080@hello.demo.actors.resources.substrate.ate.dev \
//!   --connections 1,16,256 --duration 5s --rounds 5 --path /healthz
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
#[command(about = "Closed-loop HTTP/1.1 load: requests/s and latency per target")]
struct Args {
    /// `name=host:port[@Host-header]`; the first one is the baseline. Repeat.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Concurrency levels (connections), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    connections: Vec<usize>,
    /// How long each level runs per target (e.g. 5s), all rounds together.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Slices per level and target, run in rotating target order; ratios are the median of
    /// the rounds'.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Warm-up before each measurement (each slice).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Request path.
    #[arg(long, default_value = "/healthz")]
    path: String,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("bad duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    }
}

#[derive(Debug, Clone)]
struct Target {
    name: String,
    addr: SocketAddr,
    host: String,
}

fn parse_target(s: &str) -> Result<Target> {
    let (name, rest) = s
        .split_once('=')
        .with_context(|| format!("--target {s:?}: expected name=host:port[@Host]"))?;
    let (addr, host) = match rest.split_once('@') {
        Some((a, h)) => (a, h.to_string()),
        None => (rest, rest.to_string()),
    };
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("--target {s:?}: {addr:?} is not an IP:port"))?;
    Ok(Target {
        name: name.into(),
        addr,
        host,
    })
}

#[derive(Debug, Default, Clone)]
struct Outcome {
    ok: u64,
    errors: u64,
    latencies_us: Vec<u64>,
    elapsed: Duration,
}

impl Outcome {
    /// Adds another slice of the same target and level.
    fn absorb(&mut self, o: Outcome) {
        self.ok += o.ok;
        self.errors += o.errors;
        self.latencies_us.extend(o.latencies_us);
        self.elapsed += o.elapsed;
    }
    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64
    }
}

/// Longest a connect or an exchange may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection sending requests back to back until `until`; latencies recorded after
/// `measure_from`.
async fn connection(t: Target, path: String, measure_from: Instant, until: Instant) -> Outcome {
    let mut out = Outcome::default();
    'reconnect: while Instant::now() < until {
        let Ok(Ok(stream)) =
            tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(t.addr)).await
        else {
            out.errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            out.errors += 1;
            continue;
        };
        tokio::spawn(conn);
        while Instant::now() < until {
            let req = Request::get(path.as_str())
                .header(hyper::header::HOST, t.host.as_str())
                .body(Empty::<Bytes>::new())
                .expect("request");
            let start = Instant::now();
            // A lost request or a sandbox that went away must not hang the run: it
            // counts as an error and the connection is replaced.
            let exchange = async {
                let res = sender.send_request(req).await.ok()?;
                let ok = res.status().is_success();
                res.into_body().collect().await.ok()?;
                Some(ok)
            };
            let Ok(Some(ok)) = tokio::time::timeout(REQUEST_TIMEOUT, exchange).await else {
                out.errors += 1;
                continue 'reconnect;
            };
            if start >= measure_from {
                if ok {
                    out.ok += 1;
                    out.latencies_us.push(start.elapsed().as_micros() as u64);
                } else {
                    out.errors += 1;
                }
            }
        }
    }
    out
}

async fn run_level(t: &Target, conns: usize, duration: Duration, args: &Args) -> Outcome {
    let measure_from = Instant::now() + args.warmup;
    let until = measure_from + duration;
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            tokio::spawn(connection(
                t.clone(),
                args.path.clone(),
                measure_from,
                until,
            ))
        })
        .collect();
    let mut total = Outcome {
        elapsed: duration,
        ..Default::default()
    };
    for task in tasks {
        if let Ok(o) = task.await {
            total.absorb(o);
        }
    }
    total.latencies_us.sort_unstable();
    total
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let targets: Vec<Target> = args
        .targets
        .iter()
        .map(|s| parse_target(s))
        .collect::<Result<_>>()?;
    if args.connections.is_empty() || args.connections.contains(&0) {
        bail!("--connections must list positive numbers");
    }
    let slice = args.duration / args.rounds;
    let mut rows = Vec::new();
    for &c in &args.connections {
        let mut merged: Vec<Outcome> = vec![Outcome::default(); targets.len()];
        // Per round and target: requests/s and p50.
        let mut rounds: Vec<Vec<(f64, f64)>> = Vec::new();
        for r in 0..args.rounds as usize {
            let mut this = vec![(f64::NAN, f64::NAN); targets.len()];
            for k in 0..targets.len() {
                let i = (r + k) % targets.len();
                let o = run_level(&targets[i], c, slice, &args).await;
                this[i] = (o.rps(), o.pct(0.5));
                merged[i].absorb(o);
            }
            rounds.push(this);
        }
        let mut level = Vec::new();
        for (i, (t, mut o)) in targets.iter().zip(merged).enumerate() {
            o.latencies_us.sort_unstable();
            if !args.json {
                println!(
                    "{:>5} conns  {:<8} {:>9.0} req/s  p50 {:>8.0} µs  p99 {:>8.0} µs  errors {}",
                    c,
                    t.name,
                    o.rps(),
                    o.pct(0.50),
                    o.pct(0.99),
                    o.errors
                );
            }
            let vs_base = (i > 0).then(|| Versus {
                ratios: rounds.iter().map(|r| r[i].0 / r[0].0).collect(),
                added_p50: rounds.iter().map(|r| r[i].1 - r[0].1).collect(),
            });
            level.push((t.name.clone(), o, vs_base));
        }
        if !args.json {
            let base = &level[0].1;
            for (name, o, vs) in &level[1..] {
                let Some(vs) = vs else { continue };
                let spread = if args.rounds > 1 {
                    format!(
                        " (median of {} rounds, {:.0}–{:.0} %)",
                        args.rounds,
                        100.0 * vs.ratio_min(),
                        100.0 * vs.ratio_max()
                    )
                } else {
                    String::new()
                };
                println!(
                    "{:>5} conns  {name} vs {}: added p50 {:+.0} µs, added p99 {:+.0} µs, throughput {:.0} %{spread}",
                    c,
                    targets[0].name,
                    median(&vs.added_p50),
                    o.pct(0.99) - base.pct(0.99),
                    100.0 * median(&vs.ratios),
                );
            }
        }
        rows.push((c, level));
    }
    if args.json {
        let doc: Vec<serde_json::Value> = rows
            .iter()
            .flat_map(|(c, level)| {
                level.iter().map(move |(name, o, vs)| {
                    serde_json::json!({
                        "connections": c, "target": name, "rps": o.rps(),
                        "p50_us": o.pct(0.5), "p99_us": o.pct(0.99), "errors": o.errors,
                        "throughput_ratio_median": vs.as_ref().map(|v| median(&v.ratios)),
                        "throughput_ratio_rounds": vs.as_ref().map(|v| v.ratios.clone()),
                        "added_p50_median_us": vs.as_ref().map(|v| median(&v.added_p50)),
                    })
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(())
}

/// A target against the baseline, round by round.
struct Versus {
    ratios: Vec<f64>,
    added_p50: Vec<f64>,
}

impl Versus {
    fn ratio_min(&self) -> f64 {
        self.ratios.iter().copied().fold(f64::INFINITY, f64::min)
    }
    fn ratio_max(&self) -> f64 {
        self.ratios
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// The median (the mean of the middle two for an even count); NaN for none.
fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
    }

    #[test]
    fn targets_parse_and_bad_ones_are_named() {
        let t = parse_target("router=127.0.0.1:8080@a.b.example").unwrap();
        assert_eq!(
            (t.name.as_str(), t.host.as_str()),
            ("router", "a.b.example")
        );
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        let e = parse_target("direct=nowhere").unwrap_err().to_string();
        assert!(e.contains("\"nowhere\" is not an IP:port"), "{e}");
        assert!(parse_target("nothing").is_err());
    }
}
