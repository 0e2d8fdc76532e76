//! `substrate-nodeagent`: runs this node's workers and converges the actors bound to them
//! (see `nodeagent::agent`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use nodeagent::agent::{Agent, AgentConfig};
use nodeagent::images::{ImageCache, ImageConfig};
use nodeagent::snapshots::{SnapshotConfig, SnapshotStore};

/// Flags; each can also come from the environment.
#[derive(Debug, Parser)]
#[command(
    name = "substrate-nodeagent",
    version,
    about = "Substrate node agent: local workers, image and snapshot caches, actor resume/suspend"
)]
struct Args {
    /// The apiservers: `--mode`, `--kubeconfig`, `--substrate-server`... (see the `clients`
    /// crate).
    #[command(flatten)]
    clients: clients::ClientArgs,
    /// This node's name.
    #[arg(long, env = "SUBSTRATE_NODE_NAME", default_value = "node-1")]
    node: String,
    /// Namespace (atespace) of the WorkerPools this node hosts.
    #[arg(long, env = "SUBSTRATE_POOL_NAMESPACE", default_value = "default")]
    pool_namespace: String,
    /// WorkerPools to host (comma-separated; empty: all of the namespace).
    #[arg(long, env = "SUBSTRATE_POOLS", value_delimiter = ',')]
    pools: Vec<String>,
    /// State directory (executor sockets and state, caches, checkpoint scratch space).
    #[arg(
        long,
        env = "SUBSTRATE_NODE_STATE_DIR",
        default_value = ".substrate/node"
    )]
    state_dir: PathBuf,
    /// Snapshot store URL (`file:///...`, `s3://bucket/prefix`, `gs://bucket/prefix`).
    #[arg(long, env = "SUBSTRATE_SNAPSHOT_URL")]
    snapshot_url: Option<String>,
    /// Registries reached over plain HTTP (`host:port`, comma-separated).
    #[arg(long, env = "SUBSTRATE_INSECURE_REGISTRIES", value_delimiter = ',')]
    insecure_registries: Vec<String>,
    /// Registry credentials: a Docker `config.json` (or the `.dockerconfigjson` of a
    /// Kubernetes pull secret) with `auths` per registry.
    #[arg(long, env = "SUBSTRATE_REGISTRY_AUTH_FILE")]
    registry_auth_file: Option<PathBuf>,
    /// The executor binary.
    #[arg(
        long,
        env = "SUBSTRATE_EXECUTOR_BIN",
        default_value = "substrate-executor"
    )]
    executor_bin: PathBuf,
    /// runsc platform (passed to executors, recorded in snapshots).
    #[arg(long, env = "SUBSTRATE_RUNSC_PLATFORM", default_value = "systrap")]
    platform: String,
    /// Extra executor argument (repeatable), e.g. `--executor-arg=--addr-range=10.203.0.0/16`.
    #[arg(long = "executor-arg", allow_hyphen_values = true)]
    executor_args: Vec<String>,
    /// First worker index on this host (indexes pick the host-side veth name and the
    /// address block; agents sharing a host need disjoint ranges).
    #[arg(long, env = "SUBSTRATE_WORKER_INDEX_BASE", default_value_t = 1)]
    worker_index_base: u32,
    /// Heartbeat, executor ping and resync period in seconds (at most the default: the
    /// executors' fence and the operator's dead-worker rule count on it).
    #[arg(long, env = "SUBSTRATE_HEARTBEAT_SECONDS", default_value_t = crds::liveness::HEARTBEAT_INTERVAL.as_secs(), value_parser = clap::value_parser!(u64).range(1..=crds::liveness::HEARTBEAT_INTERVAL.as_secs()))]
    heartbeat_seconds: u64,
    /// Serve the worker gateway on this address (`<ip>:<port>`; off when not given): HTTP
    /// `CONNECT` to this node's workers for routers on other nodes, for authenticated and
    /// allowed callers only (see `nodeagent::gateway`).
    #[arg(long, env = "SUBSTRATE_GATEWAY_LISTEN")]
    gateway_listen: Option<SocketAddr>,
    /// The gateway's address as routers reach it (`<ip>:<port>`), written on this node's
    /// Workers and actors (default: `--gateway-listen`, which must then name an address,
    /// not 0.0.0.0).
    #[arg(long, env = "SUBSTRATE_GATEWAY_ADVERTISE")]
    gateway_advertise: Option<SocketAddr>,
    /// Users allowed to open tunnels (comma-separated), as the TokenReview names them.
    #[arg(long, env = "SUBSTRATE_GATEWAY_ALLOWED_USERS", value_delimiter = ',', default_value = nodeagent::gateway::DEFAULT_ALLOWED_USER)]
    gateway_allowed_users: Vec<String>,
    /// The audience the callers' tokens must be issued for (the TokenReview's
    /// `spec.audiences`; empty: the apiserver's own).
    #[arg(long, env = "SUBSTRATE_GATEWAY_TOKEN_AUDIENCE", default_value = nodeagent::gateway::DEFAULT_AUDIENCE)]
    gateway_token_audience: String,
    /// How long a TokenReview's answer is cached (e.g. 1m).
    #[arg(long, env = "SUBSTRATE_GATEWAY_TOKEN_CACHE_TTL", default_value = "1m")]
    gateway_token_cache_ttl: String,
}

/// Stops the gateway's task with the agent.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
    let state_dir = std::path::absolute(&args.state_dir).context("resolving --state-dir")?;
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let clients = args
        .clients
        .clients()
        .await
        .context("building the API clients")?;

    let mut images = ImageConfig::new(state_dir.join("images"));
    images.insecure_registries = args.insecure_registries.clone();
    if let Some(path) = &args.registry_auth_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --registry-auth-file {}", path.display()))?;
        images.auth =
            nodeagent::images::credentials_from_docker_config(&path.display().to_string(), &text)?;
        tracing::info!(registries = ?images.auth.keys().collect::<Vec<_>>(), "registry credentials loaded");
    }
    let images = ImageCache::new(images).context("opening the image cache")?;
    let url = args
        .snapshot_url
        .clone()
        .unwrap_or_else(|| format!("file://{}", state_dir.join("snapshots").display()));
    let snapshots = SnapshotStore::new(SnapshotConfig::new(
        url.clone(),
        state_dir.join("snapshot-cache"),
    ))
    .with_context(|| format!("opening the snapshot store {url}"))?;
    let mut executor_args = vec!["--platform".to_string(), args.platform.clone()];
    executor_args.extend(args.executor_args.iter().cloned());
    let mut cfg = AgentConfig {
        node: args.node.clone(),
        pool_namespace: args.pool_namespace.clone(),
        pools: args.pools.clone(),
        state_dir,
        executor_bin: args.executor_bin.clone(),
        executor_args,
        heartbeat: Duration::from_secs(args.heartbeat_seconds),
        platform: args.platform.clone(),
        index_base: args.worker_index_base,
        gateway: None,
    };
    let gateway = match args.gateway_listen {
        None => None,
        Some(listen) => {
            let advertise = args.gateway_advertise.unwrap_or(listen);
            anyhow::ensure!(
                !advertise.ip().is_unspecified() && advertise.port() != 0,
                "--gateway-advertise {advertise}: give the address routers reach the gateway at (--gateway-listen {listen} names none)"
            );
            let ttl = crds::duration::parse(&args.gateway_token_cache_ttl).map_err(|e| {
                anyhow::anyhow!(
                    "--gateway-token-cache-ttl {:?}: {e}",
                    args.gateway_token_cache_ttl
                )
            })?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding the worker gateway on {listen}"))?;
            let audiences: Vec<String> = Some(args.gateway_token_audience.clone())
                .filter(|a| !a.is_empty())
                .into_iter()
                .collect();
            let gw_cfg = nodeagent::gateway::GatewayConfig {
                audiences: audiences.clone(),
                allowed_users: args.gateway_allowed_users.clone(),
                cache_ttl: ttl,
            };
            tracing::info!(%listen, %advertise, allowed_users = ?gw_cfg.allowed_users, ?audiences, "worker gateway listening");
            Some((listener, advertise, gw_cfg))
        }
    };
    cfg.gateway = gateway.as_ref().map(|(_, a, _)| a.to_string());
    tracing::info!(node = %cfg.node, snapshots = %url, "node agent starting");
    let cluster = clients.cluster.clone();
    let agent = Agent::new(clients, cfg, images, snapshots);
    let _gateway = gateway.map(|(listener, _, gw_cfg)| {
        let reviewer = Arc::new(nodeagent::gateway::KubeTokenReviewer::new(
            cluster,
            gw_cfg.audiences.clone(),
        ));
        let gw = nodeagent::gateway::Gateway::new(gw_cfg, agent.gateway_targets(), reviewer);
        AbortOnDrop(tokio::spawn(gw.serve(listener)))
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = agent.clone().run() => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = term.recv() => tracing::info!("terminated"),
    }
    agent.shutdown().await;
    Ok(())
}
