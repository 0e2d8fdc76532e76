//! `substrate-executor`: the executor of one worker. Parses flags (each also from the
//! environment), starts logging, runs [`executor::daemon::run`] until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use executor::daemon::{DaemonConfig, ShutdownPolicy};
use executor::net::AddrRange;
use executor::runsc::{Platform, RunscConfig};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "substrate-executor",
    version,
    about = "Runs, checkpoints and restores actors on one Substrate worker (gVisor runsc)"
)]
struct Args {
    /// Worker name (DNS-1123 subdomain); names its netns (substrate-<name>) and cgroup.
    #[arg(long, env = "SUBSTRATE_WORKER_NAME")]
    worker_name: String,
    /// Worker slot on this host, unique per host: selects the worker's /30 in --addr-range
    /// and names the host veth (sub<index>h).
    #[arg(long, env = "SUBSTRATE_WORKER_INDEX")]
    index: u32,
    /// gRPC unix socket [default: <state-dir>/executor.sock].
    #[arg(long, env = "SUBSTRATE_EXECUTOR_SOCKET")]
    socket: Option<PathBuf>,
    /// State directory (state file, bundles, container logs, runsc root)
    /// [default: /var/lib/substrate/executor/<worker-name>].
    #[arg(long, env = "SUBSTRATE_EXECUTOR_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// The runsc binary.
    #[arg(long, env = "SUBSTRATE_RUNSC_PATH", default_value = "/usr/bin/runsc")]
    runsc_path: PathBuf,
    /// runsc --root [default: <state-dir>/runsc].
    #[arg(long, env = "SUBSTRATE_RUNSC_ROOT")]
    runsc_root: Option<PathBuf>,
    /// gVisor platform: systrap (default) or ptrace (fallback), kvm.
    #[arg(long, env = "SUBSTRATE_RUNSC_PLATFORM", default_value = "systrap")]
    platform: Platform,
    /// Extra global runsc flag, repeatable (environment: space-separated).
    #[arg(
        long = "runsc-flag",
        env = "SUBSTRATE_RUNSC_FLAGS",
        value_delimiter = ' ',
        allow_hyphen_values = true
    )]
    runsc_flags: Vec<String>,
    /// Pass --net-disconnect-ok to runsc (checkpoints then succeed with open TCP
    /// connections; without it they fail and the sandbox dies).
    #[arg(long, env = "SUBSTRATE_RUNSC_NET_DISCONNECT_OK", default_value_t = true, action = clap::ArgAction::Set)]
    net_disconnect_ok: bool,
    /// Directory for runsc debug logs (turns on --debug).
    #[arg(long, env = "SUBSTRATE_RUNSC_DEBUG_LOG_DIR")]
    runsc_debug_log_dir: Option<PathBuf>,
    /// Worker address range (an `unreachable` route for all of it is added to the host).
    #[arg(long, env = "SUBSTRATE_ADDR_RANGE", default_value = executor::net::DEFAULT_RANGE)]
    addr_range: AddrRange,
    /// What to do with the sandbox on SIGTERM: leave it for the next executor to adopt,
    /// or kill it and remove the worker network.
    #[arg(long, env = "SUBSTRATE_EXECUTOR_ON_SHUTDOWN", value_enum, default_value_t = ShutdownPolicy::Leave)]
    on_shutdown: ShutdownPolicy,
    /// Seconds to wait at start for an operation that was in flight when the executor died.
    #[arg(
        long,
        env = "SUBSTRATE_EXECUTOR_RECOVERY_WAIT_SECONDS",
        default_value_t = 600
    )]
    recovery_wait_seconds: u64,
    /// The sandbox fence: stop the sandbox after this many seconds without a call from the
    /// node agent (it pings every few seconds), so that a dead agent never leaves a sandbox
    /// running past the point where the control plane releases its actor.
    #[arg(long, env = "SUBSTRATE_EXECUTOR_FENCE_AFTER_SECONDS", default_value_t = crds::liveness::SANDBOX_FENCE_AFTER.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    fence_after_seconds: u64,
    /// Limit for runsc run/restore, seconds.
    #[arg(
        long,
        env = "SUBSTRATE_RUNSC_BOOT_TIMEOUT_SECONDS",
        default_value_t = 120
    )]
    boot_timeout_seconds: u64,
    /// Limit for runsc checkpoint, seconds.
    #[arg(
        long,
        env = "SUBSTRATE_RUNSC_CHECKPOINT_TIMEOUT_SECONDS",
        default_value_t = 600
    )]
    checkpoint_timeout_seconds: u64,
    #[arg(
        long,
        env = "SUBSTRATE_LOG_FORMAT",
        value_enum,
        default_value = "plain"
    )]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match args.log_format {
        LogFormat::Plain => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }

    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/substrate/executor").join(&args.worker_name));
    let cfg = DaemonConfig {
        worker_name: args.worker_name.clone(),
        index: args.index,
        socket: args
            .socket
            .clone()
            .unwrap_or_else(|| state_dir.join("executor.sock")),
        range: args.addr_range,
        runsc: RunscConfig {
            path: args.runsc_path.clone(),
            root: args
                .runsc_root
                .clone()
                .unwrap_or_else(|| state_dir.join("runsc")),
            platform: args.platform,
            net_disconnect_ok: args.net_disconnect_ok,
            extra_flags: args
                .runsc_flags
                .iter()
                .filter(|f| !f.is_empty())
                .cloned()
                .collect(),
            debug_log_dir: args.runsc_debug_log_dir.clone(),
            boot_timeout: Duration::from_secs(args.boot_timeout_seconds),
            checkpoint_timeout: Duration::from_secs(args.checkpoint_timeout_seconds),
            ..RunscConfig::default()
        },
        state_dir,
        on_shutdown: args.on_shutdown,
        recovery_wait: Duration::from_secs(args.recovery_wait_seconds),
        fence_after: Duration::from_secs(args.fence_after_seconds),
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    };
    let result = executor::daemon::run(cfg, shutdown)
        .await
        .with_context(|| format!("executor for worker {} failed", args.worker_name));
    if let Err(e) = &result {
        // One line with the whole cause chain: the node agent reports it on the Worker.
        tracing::error!("{e:#}");
    }
    result
}
