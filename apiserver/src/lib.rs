//! The Substrate aggregated API server: serves `substrate.ate.dev` (Atespace, Actor, Worker)
//! and `ate.dev` (WorkerPool, ActorTemplate) to `kubectl` over HTTPS, stored in Valkey.
//!
//! [`start`] prepares the PKI, connects the store (loading every watch cache), makes sure the
//! bootstrap atespaces exist, starts the atespace lifecycle controller and serves.

pub mod api;
pub mod apply;
pub mod auth;
pub mod authz;
pub mod bootstrap;
pub mod config;
pub mod decode;
pub mod discovery;
pub mod fuzz;
pub mod lifecycle;
pub mod negotiate;
pub mod openapi;
pub mod openapi_proto;
pub mod pki;
pub mod protobuf;
pub mod registry;
pub mod request;
pub mod reviews;
pub mod scheduler;
pub mod scheduler_queue;
pub mod selector;
pub mod server;
pub mod serving_cert;
pub mod status;
pub mod storage;
pub mod strategic;
pub mod table;
pub mod templates;
pub mod tenancy;
pub mod testing;
pub mod watch;
pub mod webhook_retry;

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
    TokenFile(#[from] auth::token_file::TokenFileError),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error("connecting to Valkey at {url}: {source}")]
    Storage {
        /// Redacted (no userinfo).
        url: String,
        #[source]
        source: storage::StorageError,
    },
    #[error("valkey at {url} refused authentication: {reason}")]
    ValkeyAuth {
        /// Redacted (no userinfo).
        url: String,
        reason: String,
    },
    #[error(transparent)]
    ValkeyEndpoint(#[from] storage::EndpointError),
    #[error("creating the bootstrap atespaces and RBAC policy: {message}")]
    Bootstrap { message: String },
    #[error(
        "{flag} needs a cluster: run in a pod, or give --kubeconfig or --authorization-kubeconfig"
    )]
    NeedsCluster { flag: &'static str },
    #[error("cluster bootstrap: {0}")]
    Cluster(#[from] bootstrap::BootstrapError),
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
    let cluster = cluster_client(
        args.kubeconfig
            .as_deref()
            .or(args.authorization_kubeconfig.as_deref()),
        args.standalone,
        "--kubeconfig",
    )
    .await?;
    let boot = Bootstrap::new(args, cluster.clone())?;
    boot.pki(args).await?;
    let pki = pki::ensure(&args.pki_dir, &args.tls_sans)?;
    let (authn, mut background) = authentication(args, &pki).await?;
    background.extend(boot.publish_ca(args, &pki).await?);
    let verifier = authn.client_verifier();
    let cert = read(args.tls_cert_file.as_deref().unwrap_or(&pki.serving_cert()))?;
    let key = read(
        args.tls_private_key_file
            .as_deref()
            .unwrap_or(&pki.serving_key()),
    )?;
    let serving = Arc::new(serving_cert::ServingCert::from_pem(&cert, &key)?);
    let tls = server::tls_config(serving.clone(), verifier)?;
    background.push(tokio::spawn(serving_cert::keep_fresh(
        serving,
        boot.serving_source(args, &pki),
        args.cert_check_interval,
    )));

    let opts = StoreOptions {
        prefix: args.key_prefix.clone(),
        history: args.watch_history,
        log_max_len: args.watch_history,
    };
    let resources: Vec<_> = ALL.iter().map(|r| rkey(r)).collect();
    let valkey = storage::Endpoint::from_flags(
        &args.valkey_url,
        args.valkey_username.as_deref(),
        args.valkey_password_file.as_deref(),
        args.valkey_tls_ca_file.as_deref(),
    )?;
    let valkey = boot.valkey_password(args, valkey).await?;
    let store =
        Store::connect_to(&valkey, opts, &resources)
            .await
            .map_err(|source| match source {
                storage::StorageError::Unauthenticated { reason } => RunError::ValkeyAuth {
                    url: valkey.redacted(),
                    reason,
                },
                source => RunError::Storage {
                    url: valkey.redacted(),
                    source,
                },
            })?;
    // Standalone RBAC: the authorizer answers from the policy it keeps; the registry refuses
    // RBAC writes that would escalate privileges (asking the whole chain about `bind` and
    // `escalate`). In cluster mode the chain asks the cluster instead (SubjectAccessReview
    // behind a decision cache); the local policy is still kept for the RBAC objects served.
    let rbac = authz::rbac::RbacAuthorizer::default();
    let mut standalone: Vec<Arc<dyn authz::Authorizer>> = vec![Arc::new(rbac.clone())];
    standalone.extend(extra_authorizers);
    let chain = authorization(args, standalone).await?;
    let templates = match cluster {
        Some(client) => {
            let (t, task) = templates::ClusterTemplates::start(client);
            background.push(task);
            tracing::info!("actortemplates.ate.dev are read from the cluster's CRDs");
            templates::Templates::Cluster(t)
        }
        None => templates::Templates::Local,
    };
    let registry = Registry::new(store)
        .with_check(authz::rbac::escalation::check(rbac.clone(), chain.clone()))
        .with_templates(templates);
    lifecycle::ensure_bootstrap(&registry)
        .await
        .map_err(|e| RunError::Bootstrap { message: e.message })?;
    authz::rbac::bootstrap::ensure_policy(&registry)
        .await
        .map_err(|e| RunError::Bootstrap { message: e.message })?;
    // Serve decisions from a policy that holds the bootstrap objects just written.
    for r in authz::rbac::RESOURCES {
        let rv = registry
            .current_rv(r)
            .await
            .map_err(|e| RunError::Bootstrap { message: e.message })?;
        registry
            .store
            .cache(rkey(r))
            .wait_for_rv(rv, std::time::Duration::from_secs(10))
            .await
            .map_err(|e| RunError::Bootstrap {
                message: e.to_string(),
            })?;
    }
    rbac.refresh(&registry.store);

    let listener = server::bind(args.bind).await?;
    let addr = listener
        .local_addr()
        .map_err(|source| server::ServerError::Bind {
            addr: args.bind,
            source,
        })?;

    let scheduler = scheduler::Scheduler::new(registry.clone());
    background.extend([
        tokio::spawn(lifecycle::run(registry.clone())),
        tokio::spawn(lifecycle::keep_bootstrap(registry.clone())),
        tokio::spawn(scheduler::run(scheduler.clone())),
        tokio::spawn(rbac.clone().run(registry.store.clone())),
        tokio::spawn(authz::rbac::aggregation::run(registry.clone())),
    ]);

    if let Some(out) = &args.kubeconfig_out {
        let server_url = args
            .kubeconfig_server
            .clone()
            .unwrap_or_else(|| format!("https://{addr}"));
        pki::write_kubeconfig(&pki, &server_url, "admin", "default", out)?;
        tracing::info!(path = %out.display(), server = %server_url, "wrote admin kubeconfig");
    }

    let state = Arc::new(api::AppState {
        registry: registry.clone(),
        scheduler,
        auth: authn,
        authz: chain,
        max_body: args.max_request_bytes,
    });
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(server::serve(listener, tls, state, async {
        let _ = rx.await;
    }));
    tracing::info!(%addr, valkey = %valkey.redacted(), "apiserver serving");
    Ok(Running {
        addr,
        registry,
        shutdown: tx,
        task,
        background,
    })
}

/// The cluster-mode bootstrap steps the flags ask for ([`bootstrap`]).
struct Bootstrap {
    client: Option<kube::Client>,
    namespace: String,
}

impl Bootstrap {
    fn new(args: &Args, client: Option<kube::Client>) -> Result<Self, RunError> {
        let asked = [
            ("--pki-secret", args.pki_secret.is_some()),
            ("--ca-configmap", args.ca_configmap.is_some()),
            ("--apiservice", args.apiservice.is_some()),
            (
                "--valkey-password-secret",
                args.valkey_password_secret.is_some(),
            ),
        ];
        if client.is_none()
            && let Some((flag, _)) = asked.iter().find(|(_, on)| *on)
        {
            return Err(RunError::NeedsCluster { flag });
        }
        Ok(Self {
            client,
            namespace: bootstrap::namespace(args.namespace.as_deref()),
        })
    }

    /// `--pki-secret`: the serving CA and certificate from (or into) the Secret.
    async fn pki(&self, args: &Args) -> Result<(), RunError> {
        let (Some(client), Some(name)) = (&self.client, &args.pki_secret) else {
            return Ok(());
        };
        let mut sans = bootstrap::service_names(&args.service_name, &self.namespace);
        sans.extend(args.tls_sans.iter().cloned());
        bootstrap::pki_from_secret(client, &self.namespace, name, &args.pki_dir, &sans).await?;
        // Renewed now when due, so the local PKI check that follows finds it fresh (and
        // does not issue a certificate of its own).
        bootstrap::renew_pki_secret(client, &self.namespace, name, &args.pki_dir, &sans).await?;
        Ok(())
    }

    /// Where the serving certificate is renewed and reloaded from ([`serving_cert`]).
    fn serving_source(&self, args: &Args, pki: &pki::Pki) -> serving_cert::Source {
        if let Some(cert) = &args.tls_cert_file {
            return serving_cert::Source::Files {
                cert: cert.clone(),
                key: args
                    .tls_private_key_file
                    .clone()
                    .unwrap_or_else(|| pki.serving_key()),
            };
        }
        match (&self.client, &args.pki_secret) {
            (Some(client), Some(name)) => {
                let mut sans = bootstrap::service_names(&args.service_name, &self.namespace);
                sans.extend(args.tls_sans.iter().cloned());
                serving_cert::Source::Secret {
                    client: client.clone(),
                    namespace: self.namespace.clone(),
                    name: name.clone(),
                    pki: pki.clone(),
                    sans,
                }
            }
            _ => serving_cert::Source::Dir {
                pki: pki.clone(),
                sans: args.tls_sans.clone(),
            },
        }
    }

    /// `--ca-configmap` and `--apiservice`: publish the serving CA; the task that sets and
    /// keeps the APIService's `caBundle` (the APIService may not exist yet).
    async fn publish_ca(
        &self,
        args: &Args,
        pki: &pki::Pki,
    ) -> Result<Option<JoinHandle<()>>, RunError> {
        let Some(client) = &self.client else {
            return Ok(None);
        };
        let args_cm = args.ca_configmap.as_deref();
        let args_svc = args.apiservice.as_deref();
        if args_cm.is_none() && args_svc.is_none() {
            return Ok(None);
        }
        let ca = read(&pki.ca_cert())?;
        if let Some(cm) = args_cm {
            bootstrap::publish_ca(client, &self.namespace, cm, &ca)
                .await
                .map_err(RunError::from)?;
        }
        let Some(svc) = args_svc else {
            return Ok(None);
        };
        Ok(Some(tokio::spawn(bootstrap::keep_apiservice_ca(
            client.clone(),
            svc.to_string(),
            ca,
        ))))
    }

    /// Valkey's endpoint with the password of `--valkey-password-secret` (which wins over
    /// `--valkey-password-file` and the URL's).
    async fn valkey_password(
        &self,
        args: &Args,
        valkey: storage::Endpoint,
    ) -> Result<storage::Endpoint, RunError> {
        let (Some(client), Some(name)) = (&self.client, &args.valkey_password_secret) else {
            return Ok(valkey);
        };
        let password = bootstrap::valkey_password(client, &self.namespace, name).await?;
        Ok(valkey.with_password(password))
    }
}

/// A client of the cluster to delegate to: from `kubeconfig`, else the in-cluster
/// configuration when running in a pod (unless `--standalone`), else `None` (standalone).
pub async fn cluster_client(
    kubeconfig: Option<&Path>,
    standalone: bool,
    what: &str,
) -> Result<Option<kube::Client>, auth::AuthError> {
    let err = |reason: String| auth::AuthError::Client {
        what: what.to_string(),
        reason,
    };
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| err(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| err(format!("{}: {e}", path.display())))?
        }
        None if standalone => return Ok(None),
        None => match kube::Config::incluster() {
            Ok(c) => c,
            Err(_) => return Ok(None),
        },
    };
    kube::Client::try_from(config)
        .map(Some)
        .map_err(|e| err(e.to_string()))
}

/// The authenticator: standalone (the generated CAs, or the flags' files), or delegated to
/// the cluster (its authentication ConfigMap, followed by a background task, plus the flags'
/// files, and bearer tokens through `TokenReview`).
async fn authentication(
    args: &Args,
    pki: &pki::Pki,
) -> Result<(auth::Authenticator, Vec<JoinHandle<()>>), RunError> {
    let client = cluster_client(
        args.authentication_kubeconfig.as_deref(),
        args.standalone,
        "--authentication-kubeconfig",
    )
    .await?;
    let file =
        |flag: &Option<std::path::PathBuf>, generated: std::path::PathBuf| match (flag, &client) {
            (Some(p), _) => read(p),
            (None, None) => read(&generated),
            (None, Some(_)) => Ok(String::new()),
        };
    let local = auth::Bundles {
        client_ca: file(&args.client_ca_file, pki.ca_cert())?,
        request_header_ca: file(&args.requestheader_client_ca_file, pki.front_proxy_ca())?,
        request_header: auth::RequestHeader::new(
            &args.requestheader_username_headers,
            &args.requestheader_group_headers,
            &args.requestheader_extra_headers_prefix,
            &args.requestheader_allowed_names,
        ),
    };
    let static_tokens = match &args.token_auth_file {
        Some(path) => {
            let t = auth::token_file::StaticTokens::read(path)?;
            tracing::info!(path = %path.display(), tokens = t.len(), "read the token file");
            Some(Arc::new(t))
        }
        None => None,
    };
    let with_static = |a: auth::Authenticator| match &static_tokens {
        Some(t) => a.with_static_tokens(t.clone()),
        None => a,
    };
    let Some(client) = client else {
        return Ok((
            with_static(auth::Authenticator::from_bundles(local)?),
            Vec::new(),
        ));
    };
    let bundles = match auth::cluster::load(&client, &local).await {
        Ok(b) => b,
        Err(e) if args.authentication_tolerate_lookup_failure => {
            tracing::warn!(error = %e, "starting without the cluster's authentication ConfigMap (tolerated)");
            local.clone()
        }
        Err(e) => return Err(e.into()),
    };
    let tokens = auth::token::TokenAuthenticator::new(
        Arc::new(auth::token::KubeTokenReviewer::new(client.clone())),
        args.authentication_token_webhook_cache_ttl,
        auth::token::DEFAULT_CAPACITY,
    );
    let authn = with_static(auth::Authenticator::from_bundles(bundles)?)
        .with_tokens(Arc::new(tokens))
        .with_anonymous();
    let follow = tokio::spawn(auth::cluster::follow(client, authn.clone(), local));
    tracing::info!(
        namespace = auth::cluster::NAMESPACE,
        name = auth::cluster::NAME,
        "authentication delegated to the cluster"
    );
    Ok((authn, vec![follow]))
}

/// The authorization chain: always-allowed paths (`--authorization-always-allow-paths`),
/// `system:masters`, then `standalone` when no cluster is configured, else the cluster's
/// `SubjectAccessReview` behind a decision cache (`--authorization-kubeconfig`, or in a pod).
pub async fn authorization(
    args: &Args,
    standalone: Vec<Arc<dyn authz::Authorizer>>,
) -> Result<authz::Chain, RunError> {
    let client = cluster_client(
        args.authorization_kubeconfig.as_deref(),
        args.standalone,
        "--authorization-kubeconfig",
    )
    .await?;
    let authorizers: Vec<Arc<dyn authz::Authorizer>> = match client {
        None => standalone,
        Some(client) => {
            tracing::info!("authorization delegated to the cluster (SubjectAccessReview)");
            let webhook = authz::webhook::WebhookAuthorizer::new(Arc::new(
                authz::webhook::KubeReviewer::new(client),
            ));
            vec![Arc::new(authz::cache::CachedAuthorizer::new(
                Arc::new(webhook),
                authz::cache::Ttls {
                    authorized: args.authorization_webhook_cache_authorized_ttl,
                    unauthorized: args.authorization_webhook_cache_unauthorized_ttl,
                },
                authz::cache::DEFAULT_CAPACITY,
            ))]
        }
    };
    Ok(authz::Chain::new(
        args.authorization_always_allow_paths.clone(),
        authorizers,
    ))
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
