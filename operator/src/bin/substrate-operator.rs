//! `substrate-operator`: golden snapshots, actor lifecycle policy, dead-worker recovery (see
//! the `operator` crate).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use nodeagent::snapshots::{SnapshotConfig, SnapshotStore};
use operator::{LeaderConfig, Operator, OperatorConfig, SnapshotGcConfig};

/// Flags; each can also come from the environment.
#[derive(Debug, Parser)]
#[command(
    name = "substrate-operator",
    version,
    about = "Substrate operator: golden snapshots, idle suspension, Always actors, dead workers"
)]
struct Args {
    /// The apiservers: `--mode`, `--kubeconfig`, `--substrate-server`... (see the `clients`
    /// crate).
    #[command(flatten)]
    clients: clients::ClientArgs,
    /// Safety-net period, in seconds: an object without a deadline of its own is reconciled
    /// again after this long even without a watch event.
    #[arg(long, env = "SUBSTRATE_OPERATOR_RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,
    /// Idle timeout of OnDemand actors that set none (a duration such as `5m`).
    #[arg(long, env = "SUBSTRATE_DEFAULT_IDLE_TIMEOUT", default_value = "5m")]
    default_idle_timeout: String,
    /// A resume on a live worker that has not finished after this many seconds fails
    /// (`ResumeDeadlineExceeded`; retried like any failed resume).
    #[arg(long, env = "SUBSTRATE_RESUME_DEADLINE_SECONDS", default_value_t = crds::lifecycle::RESUME_DEADLINE.as_secs())]
    resume_deadline_seconds: u64,
    /// A suspend on a live worker that has not finished after this many seconds is reported
    /// `Stalled` (`SuspendDeadlineExceeded`; the node agent keeps retrying it).
    #[arg(long, env = "SUBSTRATE_SUSPEND_DEADLINE_SECONDS", default_value_t = crds::lifecycle::SUSPEND_DEADLINE.as_secs())]
    suspend_deadline_seconds: u64,
    /// A deleted actor whose live worker's node agent has not stopped its sandbox after this
    /// many seconds loses its finalizer anyway (`StopDeadlineExceeded`).
    #[arg(long, env = "SUBSTRATE_STOP_DEADLINE_SECONDS", default_value_t = crds::lifecycle::STOP_DEADLINE.as_secs())]
    stop_deadline_seconds: u64,
    /// Run the controllers only while holding the leader lease (several replicas: one acts).
    #[arg(long, env = "SUBSTRATE_OPERATOR_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the leader lease (default: `default` standalone, `substrate-system` in a
    /// cluster).
    #[arg(long, env = "SUBSTRATE_OPERATOR_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the leader lease.
    #[arg(
        long,
        env = "SUBSTRATE_OPERATOR_LEASE_NAME",
        default_value = "substrate-operator"
    )]
    lease_name: String,
    /// Cluster mode: the label selector of the node agents' pods; a deleted or failed one
    /// releases the actors of its node's workers at once. Empty: not watched.
    #[arg(long, env = "SUBSTRATE_AGENT_POD_SELECTOR", default_value = operator::agent_pods::DEFAULT_SELECTOR)]
    agent_pod_selector: String,
    /// Cluster mode: the namespace of the node agents' pods.
    #[arg(
        long,
        env = "SUBSTRATE_AGENT_POD_NAMESPACE",
        default_value = "substrate-system"
    )]
    agent_pod_namespace: String,
    /// Cluster mode: watch the cluster's Nodes and cordon the workers of a cordoned Node
    /// (`kubectl cordon`/`drain`, the cluster-autoscaler's scale-down taint), which moves
    /// their actors to other nodes. Needs `get/list/watch nodes`.
    #[arg(long, env = "SUBSTRATE_WATCH_NODES", default_value_t = true, action = clap::ArgAction::Set)]
    watch_nodes: bool,
    /// Actors of cordoned workers suspended at once at most (over all workers): each
    /// checkpoint is uploaded and each actor resumes elsewhere, so a drained node's actors
    /// move a few at a time.
    #[arg(long, env = "SUBSTRATE_DRAIN_IN_FLIGHT", default_value_t = operator::cordon::DEFAULT_DRAIN_IN_FLIGHT)]
    drain_in_flight: usize,
    /// This replica's identity in the lease (default: hostname, pid and a nonce).
    #[arg(long, env = "SUBSTRATE_OPERATOR_IDENTITY")]
    identity: Option<String>,
    /// Snapshot store the node agents write to (`file:///...`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix`; S3 settings from the `AWS_*` environment). Set, the operator
    /// garbage-collects it: snapshots of deleted actors, superseded ones of live actors.
    #[arg(long, env = "SUBSTRATE_SNAPSHOT_URL")]
    snapshot_url: Option<String>,
    /// Snapshot GC grace: a snapshot younger than this is kept unless its actor was seen
    /// deleted (its actor may not be in the operator's cache yet; a suspend may not have
    /// recorded it yet).
    #[arg(long, env = "SUBSTRATE_SNAPSHOT_GC_GRACE", default_value = "10m")]
    snapshot_gc_grace: String,
    /// Period of the snapshot GC's full sweep of the store (the safety net for deletions
    /// missed while no operator ran; deletions seen on the watch are swept at once).
    #[arg(long, env = "SUBSTRATE_SNAPSHOT_GC_INTERVAL", default_value = "5m")]
    snapshot_gc_interval: String,
    /// Address of the admin endpoint (`/metrics`, `/healthz`, `/livez`, `/readyz`), e.g.
    /// `127.0.0.1:9092`; none when unset.
    #[arg(long, env = "SUBSTRATE_OPERATOR_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

/// Where the leader lease lives when `--lease-namespace` is not given: standalone, the
/// apiserver's `default`; in a cluster, the operator's own namespace.
fn default_lease_namespace(mode: operator::Mode) -> &'static str {
    match mode {
        operator::Mode::Standalone => "default",
        operator::Mode::Cluster => "substrate-system",
    }
}

fn duration_arg(flag: &str, v: &str) -> anyhow::Result<Duration> {
    crds::duration::parse(v).map_err(|e| anyhow::anyhow!("--{flag} {v:?}: {e}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let idle = crds::duration::parse(&args.default_idle_timeout).map_err(|e| {
        anyhow::anyhow!(
            "--default-idle-timeout {:?}: {e}",
            args.default_idle_timeout
        )
    })?;
    let clients = args
        .clients
        .clients()
        .await
        .context("building the API clients")?;
    let lease_namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| default_lease_namespace(clients.mode).to_string());
    let cfg = OperatorConfig {
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        default_idle_timeout: idle,
        deadlines: operator::Deadlines {
            resume: Duration::from_secs(args.resume_deadline_seconds.max(1)),
            suspend: Duration::from_secs(args.suspend_deadline_seconds.max(1)),
            stop: Duration::from_secs(args.stop_deadline_seconds.max(1)),
        },
        agent_pods: (clients.mode.is_cluster() && !args.agent_pod_selector.is_empty()).then(|| {
            operator::agent_pods::AgentPods {
                namespace: args.agent_pod_namespace.clone(),
                selector: args.agent_pod_selector.clone(),
            }
        }),
        watch_nodes: args.watch_nodes,
        drain_in_flight: args.drain_in_flight.max(1),
    };
    let op = if args.leader_elect {
        let identity = args
            .identity
            .clone()
            .unwrap_or_else(operator::leader::default_identity);
        tracing::info!(%identity, lease = %args.lease_name, namespace = %lease_namespace, "leader election on");
        Operator::elected(
            clients,
            cfg,
            LeaderConfig::new(&lease_namespace, &args.lease_name, &identity),
        )
    } else {
        Operator::new(clients, cfg)
    };
    if let Some(url) = &args.snapshot_url {
        let grace = duration_arg("snapshot-gc-grace", &args.snapshot_gc_grace)?;
        let interval = duration_arg("snapshot-gc-interval", &args.snapshot_gc_interval)?;
        // The GC needs no node-local cache (0 bytes: none is created).
        let mut sc = SnapshotConfig::new(url.clone(), std::env::temp_dir());
        sc.cache_max_bytes = 0;
        let store =
            SnapshotStore::new(sc).with_context(|| format!("opening the snapshot store {url}"))?;
        let mut gc = SnapshotGcConfig::new(Arc::new(store));
        gc.grace = grace;
        gc.interval = interval.max(Duration::from_secs(1));
        op.enable_snapshot_gc(gc);
    } else {
        tracing::info!("no --snapshot-url: snapshots are not garbage-collected");
    }
    if let Some(addr) = args.metrics_addr {
        let admin = operator::metrics::bind(addr, op.metrics())
            .await
            .context("starting the metrics endpoint")?;
        tracing::info!(addr = %admin.local_addr().unwrap_or(addr), "metrics endpoint listening");
        tokio::spawn(admin.run());
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tracing::info!("operator starting");
    // On a signal the controllers stop and the lease is released.
    op.run_until(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
            _ = term.recv() => tracing::info!("terminated"),
        }
    })
    .await;
    Ok(())
}
