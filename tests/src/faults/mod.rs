//! The fault suite (issue 12): the whole system — Valkey, the apiserver (a process of its
//! own), the node agent under `substrate-supervise` with real runsc workers, the operator and
//! the router — driven through a random but reproducible sequence of user operations (create,
//! request through the router, suspend, resume, delete, change activation, create and delete
//! atespaces) while faults are injected: `kill -9` of each component — node agent, an
//! executor, a sandbox (`runsc kill`), operator, router, apiserver, Valkey — often in the
//! middle of a suspend or resume (the node agent is restarted by its supervisor, executors by
//! the node agent, the others by the suite as a supervisor would; Valkey keeps every write in
//! its AOF), the object store unavailable for a few steps (its directory replaced by a file),
//! the node's snapshot cache on a full disk for a few steps (a 256 MiB tmpfs, filled).
//!
//! Budget: the default 60 steps take about 1.5–2 minutes here (the system's start and the
//! final checks included); 150 steps about 3 minutes.
//!
//! Every step is drawn from a seeded generator ([`rng`]): the seed is printed at the start
//! and, with the steps taken, on failure; `SUBSTRATE_FAULT_SEED=<n>` replays it (timing
//! still varies: a replay takes the same decisions, not necessarily the same interleaving).
//! `SUBSTRATE_FAULT_STEPS` sets the number of steps.
//!
//! What is checked ([`invariants`]), at quiescent points during the run and at its end:
//! every actor settles `Running` or `Suspended` (or `Failed` with a reason) as its activation
//! asks; every answer of the `counter` continues the actor's memory ([`model`]: an actor may
//! go back to its last snapshot only when a condition announced it); no worker bound to a
//! missing actor; no sandbox (runsc, or an address answering) without a Running actor bound
//! to its worker; every actor's snapshot is in the object store, and none of a deleted actor
//! stays there ([`invariants::SNAPSHOT_GC_ENFORCED`]); the operator's and router's views are
//! current (checked by behaviour: neither exposes its caches); the logs stay bounded.

pub mod env;
pub mod invariants;
pub mod model;
pub mod rng;
pub mod watch;
pub mod world;

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::time::Instant;

use world::{History, ROUTER_FLAGS, World};

use crate::{Options, System, condition, eventually};

/// Steps when `SUBSTRATE_FAULT_STEPS` is not set.
pub const DEFAULT_STEPS: usize = 60;

/// A quiescent check (settle, workers and sandboxes) after every this many steps.
pub const CHECK_EVERY: usize = 15;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub seed: u64,
    pub steps: usize,
}

impl Params {
    /// `SUBSTRATE_FAULT_SEED` (else a seed from the clock) and `SUBSTRATE_FAULT_STEPS`.
    pub fn from_env() -> Self {
        let seed = std::env::var("SUBSTRATE_FAULT_SEED")
            .ok()
            .map(|s| {
                s.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("SUBSTRATE_FAULT_SEED={s:?} is not a number"))
            })
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64 % 1_000_000_000)
                    .unwrap_or(1)
            });
        let steps = std::env::var("SUBSTRATE_FAULT_STEPS")
            .ok()
            .map(|s| {
                s.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("SUBSTRATE_FAULT_STEPS={s:?} is not a number"))
            })
            .unwrap_or(DEFAULT_STEPS);
        Params { seed, steps }
    }
}

/// Runs the suite on the system `opts` describes (its node name, address range and index
/// base; the rest is set here). Panics with the seed and the steps taken when an invariant
/// does not hold.
pub fn run(p: Params, opts: Options) {
    let replay = format!(
        "SUBSTRATE_FAULT_SEED={} SUBSTRATE_FAULT_STEPS={}",
        p.seed, p.steps
    );
    eprintln!(
        "fault suite: seed {} ({} steps); replay with {replay}",
        p.seed, p.steps
    );
    let history: History = Rc::new(RefCell::new(Vec::new()));
    let started = Instant::now();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| drive(p, opts, history.clone())));
    match result {
        Ok(summary) => eprintln!(
            "fault suite passed: seed {} ({} steps) in {:.0}s; {summary}",
            p.seed,
            p.steps,
            started.elapsed().as_secs_f64()
        ),
        Err(e) => {
            eprintln!(
                "\nFAULT SUITE FAILED after {:.0}s: seed {}; replay with {replay}\nsteps taken:\n  {}",
                started.elapsed().as_secs_f64(),
                p.seed,
                history.borrow().join("\n  ")
            );
            std::panic::resume_unwind(e);
        }
    }
}

/// The operator's admin port (`/metrics` reports the sizes of its watch caches), one per
/// test process and kept across the operator's restarts.
pub fn operator_metrics_addr() -> std::net::SocketAddr {
    static ADDR: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();
    *ADDR.get_or_init(|| std::net::SocketAddr::from(([127, 0, 0, 1], crate::free_port())))
}

/// Starts the operator with a short snapshot GC grace (snapshots of actors deleted while it
/// was down are collected within the run), the suite's default idle timeout and its metrics
/// on [`operator_metrics_addr`].
pub fn start_operator(sys: &mut System) {
    let metrics = format!("--metrics-addr={}", operator_metrics_addr());
    sys.start_operator_with(&[
        "--snapshot-gc-grace=20s",
        &metrics,
        world::DEFAULT_IDLE_TIMEOUT_FLAG,
    ]);
}

fn drive(p: Params, mut opts: Options, history: History) -> String {
    opts.workers = 3;
    opts.supervised_agent = true;
    opts.apiserver_process = true;
    let Some(mut sys) = System::start(opts) else {
        return "skipped (prerequisites missing)".into();
    };
    start_operator(&mut sys);
    let router = sys.start_router(&ROUTER_FLAGS);
    eventually("the counter template's golden snapshot", || {
        let t = sys.kube.get("actortemplate", "counter", Some(world::HOME));
        (condition(&t, "Ready") == Some("True")).then_some(())
    });
    let mut w = World::new(sys, router, p.seed, history);
    w.note(format!(
        "system up in {:.1}s",
        w.started.elapsed().as_secs_f64()
    ));
    for i in 0..p.steps {
        w.step(i);
        if (i + 1) % CHECK_EVERY == 0 && i + 1 < p.steps {
            w.quiesce(&format!("after step {}", i + 1));
            w.check_workers_and_sandboxes(&format!("after step {}", i + 1));
        }
    }
    let actors = w.quiesce("end of the run");
    w.check_workers_and_sandboxes("end of the run");
    w.check_memories(&actors);
    w.check_snapshots();
    w.check_views();
    w.check_workers_and_sandboxes("after the final probes");
    w.check_logs(p.steps);
    let lenient: Vec<String> = w
        .models
        .values()
        .flat_map(|m| {
            m.lenient
                .iter()
                .map(move |l| format!("{}/{}: {l}", m.namespace, m.name))
        })
        .collect();
    let rollbacks: usize = w.models.values().map(|m| m.rollbacks.len()).sum();
    format!(
        "{:?}; rollbacks announced {rollbacks}; answers accepted after a watch gap {lenient:?}",
        w.stats
    )
}
