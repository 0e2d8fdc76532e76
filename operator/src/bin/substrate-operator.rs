//! `substrate-operator`: golden snapshots, actor lifecycle policy, dead-worker recovery (see
//! the `operator` crate).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use operator::{Operator, OperatorConfig};

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
    /// Period of the full reconcile pass, in seconds.
    #[arg(long, env = "SUBSTRATE_OPERATOR_RESYNC_SECONDS", default_value_t = 2)]
    resync_seconds: u64,
    /// Idle timeout of OnDemand actors that set none (a duration such as `5m`).
    #[arg(long, env = "SUBSTRATE_DEFAULT_IDLE_TIMEOUT", default_value = "5m")]
    default_idle_timeout: String,
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
    let op = Operator::new(
        client,
        OperatorConfig {
            resync: Duration::from_secs(args.resync_seconds.max(1)),
            default_idle_timeout: idle,
        },
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tracing::info!("operator starting");
    tokio::select! {
        _ = op.run() => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = term.recv() => tracing::info!("terminated"),
    }
    Ok(())
}
