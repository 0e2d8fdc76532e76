//! `substrate-bench-aggregator`: what kube-apiserver's aggregator costs Substrate's API (issue
//! 14), in one run so the figures compare on this noisy machine. Run it through
//! `hack/bench-aggregator.sh`; results in `docs/benchmarks.md`.
//!
//! A real kube-apiserver (envtest: etcd + kube-apiserver from `KUBEBUILDER_ASSETS`) with
//! Substrate's apiserver registered as the `v1alpha1.substrate.ate.dev` APIService, delegating
//! authentication and authorization to it (as installed). The same admin identity then talks
//! to Substrate two ways: **through the aggregator** (kube-apiserver authenticates, proxies
//! with front-proxy headers) and **directly** (Substrate's Service; its client certificate
//! checked against the cluster's client CA). Phases: `GET` of one actor and `POST` of new
//! actors, `--concurrency` clients (kube-rs) for `--seconds`, alternating aggregator and direct
//! over `--rounds`; per request latency, p50/p99, throughput, and the median ratios.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::json;

use e2e::bench::{median, percentile};
use e2e::envtest::Envtest;
use e2e::envtest::substrate::Substrate;

#[derive(Debug, Parser)]
#[command(name = "substrate-bench-aggregator")]
struct Args {
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Duration of each measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Rounds (each: aggregator, then direct, for gets and for creates).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    Create,
}

/// One measurement: requests per second and the latency percentiles.
#[derive(Debug, Clone, Copy)]
struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

fn actors(client: kube::Client) -> kube::Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("substrate.ate.dev", "v1alpha1", "Actor");
    kube::Api::namespaced_with(
        client,
        "bench",
        &ApiResource::from_gvk_with_plural(&gvk, "actors"),
    )
}

fn actor(name: &str) -> anyhow::Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {"template": {"name": "counter"}, "activation": "Suspended"},
    }))?)
}

async fn measure(
    api: kube::Api<DynamicObject>,
    op: Op,
    tag: &str,
    args: &Args,
) -> anyhow::Result<Figures> {
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let start = Instant::now();
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|c| {
            let (api, errors, tag) = (api.clone(), errors.clone(), tag.to_string());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while Instant::now() < until {
                    let t0 = Instant::now();
                    let ok = match op {
                        Op::Get => api.get("a1").await.is_ok(),
                        Op::Create => {
                            i += 1;
                            let name = format!("{tag}-{c}-{i}");
                            match actor(&name) {
                                Ok(a) => api.create(&PostParams::default(), &a).await.is_ok(),
                                Err(_) => false,
                            }
                        }
                    };
                    if ok {
                        lat.push(t0.elapsed());
                    } else {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("a client task")?);
    }
    let elapsed = start.elapsed();
    let errors = errors.load(std::sync::atomic::Ordering::Relaxed);
    if errors > 0 {
        bail!("{errors} requests of {tag} failed");
    }
    if all.is_empty() {
        bail!("no request of {tag} completed");
    }
    all.sort();
    Ok(Figures {
        per_second: all.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let Some(env) = Envtest::start() else {
        bail!("no envtest binaries: set KUBEBUILDER_ASSETS (hack/bench-aggregator.sh does)");
    };
    let substrate = Substrate::start(&env);
    let direct = substrate.direct(&env, &env.admin);
    env.ensure_namespace("bench");
    for (path, obj) in [
        (
            "/apis/substrate.ate.dev/v1alpha1/atespaces".to_string(),
            json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace", "metadata": {"name": "bench"}}),
        ),
        (
            "/apis/substrate.ate.dev/v1alpha1/namespaces/bench/actors".to_string(),
            serde_json::to_value(actor("a1")?)?,
        ),
    ] {
        let (code, body) = env.admin.request("POST", &path, Some(&obj));
        if code != 201 {
            bail!("POST {path}: {code} {body}");
        }
    }
    let rt = tokio::runtime::Runtime::new()?;
    let rounds = rt.block_on(async {
        let client = |path| async move {
            apiserver::cluster_client(Some(path), false, "bench")
                .await
                .context("a client")?
                .context("no client")
        };
        let via = actors(client(&env.admin.kubeconfig).await?);
        let to = actors(client(&direct.kubeconfig).await?);
        // Warm both paths (connections, caches).
        via.get("a1").await.context("GET through the aggregator")?;
        to.get("a1").await.context("GET directly")?;
        let mut rounds = Vec::new();
        for r in 0..args.rounds {
            let mut row = Vec::new();
            for op in [Op::Get, Op::Create] {
                let a = measure(via.clone(), op, &format!("agg{r}"), &args).await?;
                let d = measure(to.clone(), op, &format!("dir{r}"), &args).await?;
                row.push((op, a, d));
            }
            rounds.push(row);
        }
        anyhow::Ok(rounds)
    })?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (i, row) in rounds.iter().enumerate() {
        for (op, a, d) in row {
            println!(
                "round {} {op:?}, {} clients, {} s: aggregator {:.0}/s p50 {:.2} ms p99 {:.2} ms | direct {:.0}/s p50 {:.2} ms p99 {:.2} ms | direct/aggregator throughput {:.2}, p50 +{:.2} ms through the aggregator",
                i + 1,
                args.concurrency,
                args.seconds,
                a.per_second,
                ms(a.p50),
                ms(a.p99),
                d.per_second,
                ms(d.p50),
                ms(d.p99),
                d.per_second / a.per_second,
                ms(a.p50) - ms(d.p50),
            );
        }
    }
    for op in [Op::Get, Op::Create] {
        let pick = |f: &dyn Fn(&Figures, &Figures) -> f64| {
            median(
                rounds
                    .iter()
                    .flat_map(|row| row.iter().filter(|(o, _, _)| *o == op))
                    .map(|(_, a, d)| f(a, d))
                    .collect(),
            )
        };
        println!(
            "{op:?}, median of {} rounds: aggregator {:.0}/s, direct {:.0}/s (x{:.2}); p50 aggregator {:.2} ms, direct {:.2} ms; p99 aggregator {:.2} ms, direct {:.2} ms",
            rounds.len(),
            pick(&|a, _| a.per_second),
            pick(&|_, d| d.per_second),
            pick(&|a, d| d.per_second / a.per_second),
            pick(&|a, _| ms(a.p50)),
            pick(&|_, d| ms(d.p50)),
            pick(&|a, _| ms(a.p99)),
            pick(&|_, d| ms(d.p99)),
        );
    }
    drop(substrate);
    Ok(())
}
