//! `substrate-router`: the HTTP router and DNS responder for actors (see the `router` crate).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

/// Flags; each can also come from the environment.
#[derive(Debug, Parser)]
#[command(
    name = "substrate-router",
    version,
    about = "Substrate router: <actor>.<atespace>.<suffix> to the actor's worker, waking it on demand; DNS for the zone"
)]
struct Args {
    /// The apiservers: `--mode`, `--kubeconfig`, `--substrate-server`... (see the `clients`
    /// crate).
    #[command(flatten)]
    clients: clients::ClientArgs,
    /// Address of the HTTP proxy listener.
    #[arg(
        long,
        env = "SUBSTRATE_ROUTER_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    listen: SocketAddr,
    /// Address of the admin listener (/healthz, /livez, /readyz, /metrics).
    #[arg(
        long,
        env = "SUBSTRATE_ROUTER_ADMIN_LISTEN",
        default_value = "127.0.0.1:9091"
    )]
    admin_listen: SocketAddr,
    /// Address of the DNS responder (UDP and TCP); `off` disables it.
    #[arg(
        long,
        env = "SUBSTRATE_ROUTER_DNS_LISTEN",
        default_value = "127.0.0.1:5353"
    )]
    dns_listen: String,
    /// Address DNS answers for actors point at (this router); repeatable; IPv4 gives A,
    /// IPv6 gives AAAA records.
    #[arg(
        long,
        env = "SUBSTRATE_ROUTER_DNS_ADDRESS",
        value_delimiter = ',',
        default_value = "127.0.0.1"
    )]
    dns_address: Vec<IpAddr>,
    /// The zone actors are named in: <actor>.<atespace>.<suffix>.
    #[arg(long, env = "SUBSTRATE_ROUTER_SUFFIX", default_value = router::host::DEFAULT_SUFFIX)]
    suffix: String,
    /// How long a request waits for a woken actor to become ready (e.g. 60s, 2m).
    #[arg(long, env = "SUBSTRATE_ROUTER_WAKE_TIMEOUT", default_value = "60s")]
    wake_timeout: String,
    /// How often activity (status.lastActiveTime) is reported (e.g. 10s).
    #[arg(
        long,
        env = "SUBSTRATE_ROUTER_ACTIVITY_INTERVAL",
        default_value = "10s"
    )]
    activity_interval: String,
    /// Idle timeout of OnDemand actors without spec.idleTimeout: the operator's
    /// --default-idle-timeout (the same variable sets both).
    #[arg(long, env = "SUBSTRATE_DEFAULT_IDLE_TIMEOUT", default_value = "5m")]
    default_idle_timeout: String,
    /// Timeout of a TCP connect to an actor (e.g. 5s).
    #[arg(long, env = "SUBSTRATE_ROUTER_CONNECT_TIMEOUT", default_value = "5s")]
    connect_timeout: String,
    /// Proxy threads, each with its own event loop, listener (SO_REUSEPORT) and upstream
    /// pool; 0 means one per CPU.
    #[arg(long, env = "SUBSTRATE_ROUTER_THREADS", default_value_t = 0)]
    threads: usize,
    /// How long the TokenReview answers of `Authorized` atespaces' checks are cached (e.g. 10s).
    #[arg(
        long,
        env = "SUBSTRATE_ROUTER_ACCESS_TOKEN_CACHE_TTL",
        default_value = "10s"
    )]
    access_token_cache_ttl: String,
    /// How long their SubjectAccessReview answers (allowed and denied) are cached (e.g. 10s).
    #[arg(
        long,
        env = "SUBSTRATE_ROUTER_ACCESS_DECISION_CACHE_TTL",
        default_value = "10s"
    )]
    access_decision_cache_ttl: String,
    /// How workers are reached: `direct` (at their address), `gateway` (through the worker
    /// gateway of the node agent hosting them, when it advertises one) or `auto` (the
    /// gateway for workers on other nodes than `--node-name`).
    #[arg(
        long,
        env = "SUBSTRATE_ROUTER_WORKER_NETWORK",
        value_enum,
        default_value = "direct"
    )]
    worker_network: router::gateway::WorkerNetwork,
    /// The node this router runs on (`--worker-network auto`).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// A bearer token for the worker gateways (a projected ServiceAccount token with their
    /// audience, `substrate-gateway`), read again every minute.
    #[arg(long, env = "SUBSTRATE_ROUTER_GATEWAY_TOKEN_FILE")]
    gateway_token_file: Option<std::path::PathBuf>,
    /// Log format.
    #[arg(
        long,
        env = "SUBSTRATE_LOG_FORMAT",
        value_enum,
        default_value = "plain"
    )]
    log_format: LogFormat,
}

fn duration(flag: &str, v: &str) -> anyhow::Result<Duration> {
    crds::duration::parse(v).map_err(|e| anyhow::anyhow!("--{flag} {v:?}: {e}"))
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The control plane (watches, wakes, DNS, admin) is light; requests are served on the
    // proxy threads `router::start` creates.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("control")
        .enable_all()
        .build()
        .context("building the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    init_tracing(args.log_format);
    let dns_listen = match args.dns_listen.as_str() {
        "off" | "" => None,
        s => Some(
            s.parse::<SocketAddr>()
                .with_context(|| format!("--dns-listen {s:?}"))?,
        ),
    };
    let config = router::Config {
        listen: args.listen,
        admin_listen: args.admin_listen,
        dns_listen,
        dns_addresses: args.dns_address,
        suffix: router::host::Suffix::new(&args.suffix)
            .map_err(|e| anyhow::anyhow!("--suffix: {e}"))?,
        wake_timeout: duration("wake-timeout", &args.wake_timeout)?,
        activity_interval: duration("activity-interval", &args.activity_interval)?,
        default_idle_timeout: duration("default-idle-timeout", &args.default_idle_timeout)?,
        connect_timeout: duration("connect-timeout", &args.connect_timeout)?,
        threads: args.threads,
        access_token_cache_ttl: duration("access-token-cache-ttl", &args.access_token_cache_ttl)?,
        access_decision_cache_ttl: duration(
            "access-decision-cache-ttl",
            &args.access_decision_cache_ttl,
        )?,
        network: router::gateway::Network {
            mode: args.worker_network,
            node: args.node_name.filter(|n| !n.is_empty()),
        },
        gateway_token_file: args.gateway_token_file,
    };
    let clients = args
        .clients
        .clients()
        .await
        .context("building the API clients")?;
    let running = router::start(config, clients)
        .await
        .context("starting the router")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = term.recv() => tracing::info!("terminated"),
    }
    running.stop().await;
    Ok(())
}
