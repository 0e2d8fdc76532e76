//! `substrate-supervise`: restarts a component whenever it exits, forwards SIGTERM/SIGINT/
//! SIGHUP to it and then exits without restarting it (see `nodeagent::supervise`).
//!
//! ```text
//! substrate-supervise --name nodeagent --child-pidfile run/nodeagent.child.pid -- \
//!     substrate-nodeagent --kubeconfig ...
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use nodeagent::supervise::{self, SuperviseConfig};

#[derive(Debug, Parser)]
#[command(
    name = "substrate-supervise",
    version,
    about = "Keeps a command running: restarts it when it exits (with backoff), forwards stop signals"
)]
struct Args {
    /// Name of the component in log lines [default: the command's file name].
    #[arg(long, env = "SUBSTRATE_SUPERVISE_NAME")]
    name: Option<String>,
    /// Write the current child's pid here (removed when the supervisor exits).
    #[arg(long)]
    child_pidfile: Option<PathBuf>,
    /// First restart delay, milliseconds (doubled after each run shorter than
    /// --stable-seconds).
    #[arg(long, default_value_t = 500)]
    min_backoff_ms: u64,
    /// Longest restart delay, seconds.
    #[arg(long, default_value_t = 30)]
    max_backoff_seconds: u64,
    /// A run at least this long resets the restart delay, seconds.
    #[arg(long, default_value_t = 10)]
    stable_seconds: u64,
    /// If the first run ends within this many seconds, exit with its status instead of
    /// restarting it (a start-up error); 0: always restart.
    #[arg(long, default_value_t = 0)]
    fail_fast_seconds: u64,
    /// After forwarding a stop signal, SIGKILL the child after this many seconds; 0: wait.
    #[arg(long, default_value_t = 0)]
    stop_timeout_seconds: u64,
    /// The command and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let name = args.name.clone().unwrap_or_else(|| {
        args.command
            .first()
            .and_then(|c| std::path::Path::new(c).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let mut cfg = SuperviseConfig::new(name, args.command.clone());
    cfg.child_pidfile = args.child_pidfile.clone();
    cfg.min_backoff = Duration::from_millis(args.min_backoff_ms);
    cfg.max_backoff = Duration::from_secs(args.max_backoff_seconds).max(cfg.min_backoff);
    cfg.stable_after = Duration::from_secs(args.stable_seconds);
    cfg.fail_fast = Duration::from_secs(args.fail_fast_seconds);
    cfg.stop_timeout =
        (args.stop_timeout_seconds > 0).then(|| Duration::from_secs(args.stop_timeout_seconds));
    match supervise::run(cfg).await {
        Ok(supervise::Outcome::Stopped(_)) => Ok(()),
        Err(supervise::SuperviseError::FailedAtStart { command, status }) => {
            tracing::error!(%command, %status, "exited during start-up; not restarting it");
            std::process::exit(status.code().unwrap_or(1));
        }
        Err(e) => Err(e.into()),
    }
}
