//! The Substrate aggregated API server: serves `substrate.ate.dev` (Atespace, Actor, Worker)
//! and `ate.dev` (WorkerPool, ActorTemplate) to `kubectl` over HTTPS, stored in Valkey.
//!
//! [`start`] prepares the PKI, connects the store (loading every watch cache), makes sure the
//! bootstrap atespaces exist, starts the atespace lifecycle controller and serves.

pub mod api;
pub mod apply;
pub mod auth;
pub mod authz;
pub mod config;
pub mod decode;
pub mod discovery;
pub mod fuzz;
pub mod lifecycle;
pub mod negotiate;
pub mod openapi;
pub mod pki;
pub mod registry;
pub mod request;
pub mod reviews;
pub mod scheduler;
pub mod selector;
pub mod server;
pub mod status;
pub mod storage;
pub mod table;
pub mod tenancy;
pub mod testing;
pub mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crds::resources::ALL;

use crate::config::{Args, LogFormat};
use crate::registry::{Registry, rkey};
use crate::storage::{Store, StoreOptions};

/// Why the apiserver could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("preparing the PKI: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up client authentication: {0}")]
    Auth(#[from] auth::AuthError),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error("connecting to Valkey at {url}: {source}")]
    Storage {
        url: String,
        #[source]
        source: storage::StorageError,
    },
    #[error("creating the bootstrap atespaces: {message}")]
    Bootstrap { message: String },
}

/// A serving apiserver.
pub struct Running {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// The registry (for in-process tests and tools).
    pub registry: Registry,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting connections, stops the background controllers and waits for the
    /// listener to close. Open watch streams end when their tasks notice (or with the runtime).
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        for b in &self.background {
            b.abort();
        }
        let _ = self.task.await;
        for b in self.background {
            let _ = b.await;
        }
    }

    /// Waits until the listener stops (it only stops through [`Running::stop`]).
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }
}

fn read(path: &Path) -> Result<String, RunError> {
    std::fs::read_to_string(path).map_err(|source| RunError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Starts the apiserver described by `args`; returns once it is listening and the kubeconfig
/// (if asked for) is written.
pub async fn start(args: &Args) -> Result<Running, RunError> {
    start_with(args, Vec::new()).await
}

/// [`start`] with more authorizers after the built-in ones (tests: a fixed policy such as
/// [`authz::FnAuthorizer`]).
pub async fn start_with(
    args: &Args,
    extra_authorizers: Vec<Arc<dyn authz::Authorizer>>,
) -> Result<Running, RunError> {
    let pki = pki::ensure(&args.pki_dir, &args.tls_sans)?;
    let client_ca = read(args.client_ca_file.as_deref().unwrap_or(&pki.ca_cert()))?;
    let front_proxy_ca = read(
        args.requestheader_client_ca_file
            .as_deref()
            .unwrap_or(&pki.front_proxy_ca()),
    )?;
    let authn = auth::Authenticator::new(
        &client_ca,
        Some(&front_proxy_ca),
        args.requestheader_allowed_names.clone(),
    )?;
    let verifier = auth::Authenticator::tls_verifier(&client_ca, Some(&front_proxy_ca))?;
    let cert = read(args.tls_cert_file.as_deref().unwrap_or(&pki.serving_cert()))?;
    let key = read(
        args.tls_private_key_file
            .as_deref()
            .unwrap_or(&pki.serving_key()),
    )?;
    let tls = server::tls_config(&cert, &key, verifier)?;

    let opts = StoreOptions {
        prefix: args.key_prefix.clone(),
        history: args.watch_history,
        log_max_len: args.watch_history,
    };
    let resources: Vec<_> = ALL.iter().map(|r| rkey(r)).collect();
    let store = Store::connect(&args.valkey_url, opts, &resources)
        .await
        .map_err(|source| RunError::Storage {
            url: args.valkey_url.clone(),
            source,
        })?;
    let registry = Registry::new(store);
    lifecycle::ensure_bootstrap(&registry)
        .await
        .map_err(|e| RunError::Bootstrap { message: e.message })?;

    let listener = server::bind(args.bind).await?;
    let addr = listener
        .local_addr()
        .map_err(|source| server::ServerError::Bind {
            addr: args.bind,
            source,
        })?;

    let scheduler = scheduler::Scheduler::new(registry.clone());
    let background = vec![
        tokio::spawn(lifecycle::run(registry.clone())),
        tokio::spawn(lifecycle::keep_bootstrap(registry.clone())),
        tokio::spawn(scheduler::run(scheduler.clone())),
    ];

    if let Some(out) = &args.kubeconfig_out {
        let server_url = args
            .kubeconfig_server
            .clone()
            .unwrap_or_else(|| format!("https://{addr}"));
        pki::write_kubeconfig(&pki, &server_url, "admin", out)?;
        tracing::info!(path = %out.display(), server = %server_url, "wrote admin kubeconfig");
    }

    let state = Arc::new(api::AppState {
        registry: registry.clone(),
        scheduler,
        auth: authn,
        authz: authz::Chain::new(
            authz::ALWAYS_ALLOW_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect(),
            std::iter::once(Arc::new(authz::SystemAuthorizer) as Arc<dyn authz::Authorizer>)
                .chain(extra_authorizers)
                .collect(),
        ),
        max_body: args.max_request_bytes,
    });
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(server::serve(listener, tls, state, async {
        let _ = rx.await;
    }));
    tracing::info!(%addr, valkey = %args.valkey_url, "apiserver serving");
    Ok(Running {
        addr,
        registry,
        shutdown: tx,
        task,
        background,
    })
}

/// Sets up `tracing` (RUST_LOG filter, default `info`).
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // No colour codes in log files.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
