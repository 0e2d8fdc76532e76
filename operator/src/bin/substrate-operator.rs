//! `substrate-operator`: golden snapshots, actor lifecycle policy, dead-worker recovery (see
//! the `operator` crate).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use operator::{LeaderConfig, Operator, OperatorConfig};

/// Flags; each can also come from the environment.
#[derive(Debug, Parser)]
#[command(
    name = "substrate-operator",
    version,
    about = "Substrate operator: golden snapshots, idle suspension, Always actors, dead workers"
)]
struct Args {
    /// Kubeconfig of the apiserver.
    #[arg(
        long,
        env = "SUBSTRATE_KUBECONFIG",
        default_value = ".substrate/kubeconfig"
    )]
    kubeconfig: PathBuf,
    /// Safety-net period, in seconds: an object without a deadline of its own is reconciled
    /// again after this long even without a watch event.
    #[arg(long, env = "SUBSTRATE_OPERATOR_RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,
    /// Idle timeout of OnDemand actors that set none (a duration such as `5m`).
    #[arg(long, env = "SUBSTRATE_DEFAULT_IDLE_TIMEOUT", default_value = "5m")]
    default_idle_timeout: String,
    /// Run the controllers only while holding the leader lease (several replicas: one acts).
    #[arg(long, env = "SUBSTRATE_OPERATOR_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Atespace of the leader lease.
    #[arg(
        long,
        env = "SUBSTRATE_OPERATOR_LEASE_NAMESPACE",
        default_value = "default"
    )]
    lease_namespace: String,
    /// Name of the leader lease.
    #[arg(
        long,
        env = "SUBSTRATE_OPERATOR_LEASE_NAME",
        default_value = "substrate-operator"
    )]
    lease_name: String,
    /// This replica's identity in the lease (default: hostname, pid and a nonce).
    #[arg(long, env = "SUBSTRATE_OPERATOR_IDENTITY")]
    identity: Option<String>,
    /// Address of the admin endpoint (`/metrics`, `/healthz`, `/livez`, `/readyz`), e.g.
    /// `127.0.0.1:9092`; none when unset.
    #[arg(long, env = "SUBSTRATE_OPERATOR_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
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
    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .context("loading the kubeconfig")?;
    let client = kube::Client::try_from(config).context("building the API client")?;
    let cfg = OperatorConfig {
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        default_idle_timeout: idle,
    };
    let op = if args.leader_elect {
        let identity = args
            .identity
            .clone()
            .unwrap_or_else(operator::leader::default_identity);
        tracing::info!(%identity, lease = %args.lease_name, atespace = %args.lease_namespace, "leader election on");
        Operator::elected(
            client,
            cfg,
            LeaderConfig::new(&args.lease_namespace, &args.lease_name, &identity),
        )
    } else {
        Operator::new(client, cfg)
    };
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
