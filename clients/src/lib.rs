//! The API clients of Substrate's components (operator, node agent, router): one set of flags
//! ([`ClientArgs`], flattened into each binary, as kubert's `ClientArgs`) and the two clients
//! built from them ([`Clients`]).
//!
//! Substrate runs in one of two modes ([`Mode`]):
//!
//! * **standalone** (one machine, `hack/up.sh`): Substrate's own apiserver serves every kind
//!   (actors, workers, atespaces, actor templates, worker pools, leases, TokenReview and
//!   SubjectAccessReview). `--kubeconfig` (default `.substrate/kubeconfig`) points at it and
//!   both clients are the same.
//! * **cluster** (Kubernetes): the `ate.dev` kinds (ActorTemplate, WorkerPool) are CRDs of
//!   kube-apiserver, and so are Leases, Namespaces, TokenReview and SubjectAccessReview: the
//!   [`Clients::cluster`] client talks to kube-apiserver (`--kubeconfig`, default the
//!   in-cluster configuration, [`kube::Config::infer`]). `substrate.ate.dev` (Actor, Worker,
//!   Atespace and the actor subresources) is served by Substrate's aggregated apiserver, which
//!   components reach **directly** at its Service (`--substrate-server`), not through
//!   kube-apiserver's aggregator proxy (which costs ~16 ms per request and caps throughput at
//!   its proxy rate: ~1.5k gets/s against ~10k direct). The [`Clients::substrate`] client is the
//!   cluster configuration with the same credentials (a ServiceAccount token, or a client
//!   certificate: Substrate's apiserver authenticates them itself, by TokenReview or the
//!   cluster's client CA) and only the server, its CA (`--substrate-ca-file`, default the
//!   cluster's) and the TLS name it must present (`--substrate-tls-server-name`, default the
//!   host of `--substrate-server`) replaced.
//!
//! `--mode auto` (the default) is cluster when running in a pod (the in-cluster configuration
//! loads: `KUBERNETES_SERVICE_HOST` and a mounted ServiceAccount), standalone otherwise.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use kube::config::{Kubeconfig, KubeconfigError};

/// Substrate's apiserver Service in a cluster (the `--substrate-server` default).
pub const DEFAULT_SUBSTRATE_SERVER: &str = "https://substrate-apiserver.substrate-system.svc:443";

/// Substrate's kubeconfig in standalone mode (the `--kubeconfig` default there).
pub const DEFAULT_STANDALONE_KUBECONFIG: &str = ".substrate/kubeconfig";

/// `--mode`: how to find the apiservers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ModeArg {
    /// Cluster when running in a pod (the in-cluster configuration loads), else standalone.
    #[default]
    Auto,
    /// Substrate's standalone apiserver serves everything.
    Standalone,
    /// kube-apiserver serves the `ate.dev` CRDs, leases, namespaces and reviews; Substrate's
    /// aggregated apiserver, reached directly, serves `substrate.ate.dev`.
    Cluster,
}

/// The mode a component runs in (see the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Standalone,
    Cluster,
}

impl Mode {
    /// The mode `--mode arg` selects, `in_cluster` saying whether the in-cluster configuration
    /// loads (running in a pod).
    pub fn resolve(arg: ModeArg, in_cluster: bool) -> Mode {
        match arg {
            ModeArg::Standalone => Mode::Standalone,
            ModeArg::Cluster => Mode::Cluster,
            ModeArg::Auto if in_cluster => Mode::Cluster,
            ModeArg::Auto => Mode::Standalone,
        }
    }

    pub fn is_cluster(self) -> bool {
        self == Mode::Cluster
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Standalone => "standalone",
            Mode::Cluster => "cluster",
        })
    }
}

/// The API client flags every component flattens (`#[command(flatten)]`); each can also come
/// from the environment.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientArgs {
    /// `standalone` (Substrate's apiserver serves everything), `cluster` (kube-apiserver plus
    /// Substrate's aggregated apiserver, reached directly), or `auto`: cluster when running in
    /// a pod.
    #[arg(long, env = "SUBSTRATE_MODE", value_enum, default_value_t = ModeArg::Auto)]
    pub mode: ModeArg,
    /// Standalone: Substrate's kubeconfig (default `.substrate/kubeconfig`). Cluster: the
    /// cluster's kubeconfig (default: `KUBECONFIG`, `~/.kube/config` or the in-cluster
    /// configuration).
    #[arg(long, env = "SUBSTRATE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Cluster mode: Substrate's apiserver, reached directly (not through kube-apiserver's
    /// aggregator) with the cluster credentials.
    #[arg(long, env = "SUBSTRATE_SERVER", default_value = DEFAULT_SUBSTRATE_SERVER)]
    pub substrate_server: String,
    /// Cluster mode: the CA (PEM) of Substrate's serving certificate (default: the cluster
    /// configuration's CA).
    #[arg(long, env = "SUBSTRATE_CA_FILE")]
    pub substrate_ca_file: Option<PathBuf>,
    /// Cluster mode: the name Substrate's serving certificate must carry (default: the host of
    /// `--substrate-server`), e.g. `substrate-apiserver.substrate-system.svc` when the server
    /// is given by address.
    #[arg(long, env = "SUBSTRATE_TLS_SERVER_NAME")]
    pub substrate_tls_server_name: Option<String>,
}

/// Why the clients could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientsError {
    #[error("reading kubeconfig {path}: {source}")]
    ReadKubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error("loading kubeconfig {path}: {source}")]
    LoadKubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error(
        "cluster mode: no cluster configuration (give --kubeconfig, set KUBECONFIG, or run in a pod): {0}"
    )]
    Infer(#[source] kube::config::InferConfigError),
    #[error("--substrate-server {url:?}: {source}")]
    ServerUrl {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("--substrate-server {url:?}: not an https:// URL with a host")]
    ServerNotHttps { url: String },
    #[error("reading --substrate-ca-file {path}: {source}")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--substrate-ca-file {path}: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("building the {which} API client: {source}")]
    Client {
        which: &'static str,
        #[source]
        source: kube::Error,
    },
}

/// The API clients of a component.
#[derive(Clone)]
pub struct Clients {
    /// `substrate.ate.dev`: actors (and their subresources), workers, atespaces.
    pub substrate: kube::Client,
    /// `ate.dev` (actor templates, worker pools), leases, namespaces, TokenReview and
    /// SubjectAccessReview. The same client as [`Clients::substrate`] in standalone mode.
    pub cluster: kube::Client,
    pub mode: Mode,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").field("mode", &self.mode).finish()
    }
}

impl Clients {
    /// Standalone: one apiserver serves everything.
    pub fn standalone(client: kube::Client) -> Clients {
        Clients {
            substrate: client.clone(),
            cluster: client,
            mode: Mode::Standalone,
        }
    }

    /// Cluster mode with the given clients (tests; binaries use [`ClientArgs::clients`]).
    pub fn cluster(substrate: kube::Client, cluster: kube::Client) -> Clients {
        Clients {
            substrate,
            cluster,
            mode: Mode::Cluster,
        }
    }
}

/// A single client is standalone mode (what tests and embedders built before cluster mode
/// pass).
impl From<kube::Client> for Clients {
    fn from(client: kube::Client) -> Clients {
        Clients::standalone(client)
    }
}

/// The two configurations, before clients are made of them.
#[derive(Debug, Clone)]
pub struct Configs {
    pub mode: Mode,
    pub substrate: kube::Config,
    pub cluster: kube::Config,
}

impl ClientArgs {
    /// The mode, the configurations and the clients (see the crate docs).
    pub async fn clients(&self) -> Result<Clients, ClientsError> {
        let in_cluster = self.mode == ModeArg::Auto && kube::Config::incluster().is_ok();
        let c = self.configs(in_cluster).await?;
        tracing::info!(mode = %c.mode, substrate = %c.substrate.cluster_url,
            cluster = %c.cluster.cluster_url, "API clients");
        let client = |which, config| {
            kube::Client::try_from(config).map_err(|source| ClientsError::Client { which, source })
        };
        Ok(match c.mode {
            Mode::Standalone => Clients::standalone(client("Substrate", c.substrate)?),
            Mode::Cluster => Clients::cluster(
                client("Substrate", c.substrate)?,
                client("cluster", c.cluster)?,
            ),
        })
    }

    /// The configurations; `in_cluster` says whether the in-cluster configuration loads
    /// (only asked in `--mode auto`).
    pub async fn configs(&self, in_cluster: bool) -> Result<Configs, ClientsError> {
        let mode = Mode::resolve(self.mode, in_cluster);
        match mode {
            Mode::Standalone => {
                let path = self
                    .kubeconfig
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_STANDALONE_KUBECONFIG));
                let config = from_kubeconfig(&path).await?;
                Ok(Configs {
                    mode,
                    substrate: config.clone(),
                    cluster: config,
                })
            }
            Mode::Cluster => {
                let cluster = match &self.kubeconfig {
                    Some(path) => from_kubeconfig(path).await?,
                    None => kube::Config::infer().await.map_err(ClientsError::Infer)?,
                };
                let substrate = self.substrate_config(&cluster)?;
                Ok(Configs {
                    mode,
                    substrate,
                    cluster,
                })
            }
        }
    }

    /// Cluster mode: the configuration of Substrate's apiserver made from the cluster's: the
    /// same credentials, timeouts and headers; `--substrate-server`; the CA of
    /// `--substrate-ca-file` (else the cluster's); TLS name `--substrate-tls-server-name`
    /// (else the host of the URL).
    pub fn substrate_config(&self, cluster: &kube::Config) -> Result<kube::Config, ClientsError> {
        let url_err = |source| ClientsError::ServerUrl {
            url: self.substrate_server.clone(),
            source,
        };
        let url: http::Uri = self.substrate_server.parse().map_err(url_err)?;
        if url.scheme_str() != Some("https") || url.host().is_none_or(str::is_empty) {
            return Err(ClientsError::ServerNotHttps {
                url: self.substrate_server.clone(),
            });
        }
        let mut c = cluster.clone();
        c.cluster_url = url;
        // The cluster's TLS name is kube-apiserver's, not Substrate's.
        c.tls_server_name = self.substrate_tls_server_name.clone();
        if let Some(path) = &self.substrate_ca_file {
            c.root_cert = Some(read_ca(path)?);
            // kube re-reads a CA file (rotation) and prefers it over `root_cert`.
            c.root_cert_file = Some(path.clone());
            c.accept_invalid_certs = false;
        }
        Ok(c)
    }
}

async fn from_kubeconfig(path: &Path) -> Result<kube::Config, ClientsError> {
    let kubeconfig =
        Kubeconfig::read_from(path).map_err(|source| ClientsError::ReadKubeconfig {
            path: path.to_path_buf(),
            source,
        })?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|source| ClientsError::LoadKubeconfig {
            path: path.to_path_buf(),
            source,
        })
}

/// The DER certificates of a PEM file (at least one).
fn read_ca(path: &Path) -> Result<Vec<Vec<u8>>, ClientsError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let pem = std::fs::read(path).map_err(|source| ClientsError::ReadCa {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| ClientsError::BadCa {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        clients: ClientArgs,
    }

    fn parse(args: &[&str]) -> ClientArgs {
        Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
            .expect("arguments parse")
            .clients
    }

    /// A self-signed certificate in PEM.
    fn ca_pem() -> String {
        rcgen::generate_simple_self_signed(vec!["test-ca".to_string()])
            .expect("certificate")
            .cert
            .pem()
    }

    fn write_kubeconfig(dir: &Path, name: &str, server: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: {server}
    tls-server-name: kubernetes.default.svc
contexts:
- name: c
  context: {{cluster: c, user: u}}
current-context: c
users:
- name: u
  user:
    token: the-token
"
            ),
        )
        .expect("kubeconfig");
        path
    }

    #[test]
    fn auto_is_cluster_only_in_a_pod() {
        assert_eq!(Mode::resolve(ModeArg::Auto, true), Mode::Cluster);
        assert_eq!(Mode::resolve(ModeArg::Auto, false), Mode::Standalone);
        assert_eq!(Mode::resolve(ModeArg::Standalone, true), Mode::Standalone);
        assert_eq!(Mode::resolve(ModeArg::Cluster, false), Mode::Cluster);
    }

    #[test]
    fn defaults() {
        let a = parse(&[]);
        assert_eq!(a.mode, ModeArg::Auto);
        assert_eq!(a.kubeconfig, None);
        assert_eq!(a.substrate_server, DEFAULT_SUBSTRATE_SERVER);
        assert_eq!(a.substrate_ca_file, None);
        assert_eq!(a.substrate_tls_server_name, None);
        let a = parse(&[
            "--mode=cluster",
            "--kubeconfig=/k",
            "--substrate-server=https://127.0.0.1:7443",
            "--substrate-ca-file=/ca.pem",
            "--substrate-tls-server-name=substrate-apiserver.substrate-system.svc",
        ]);
        assert_eq!(a.mode, ModeArg::Cluster);
        assert_eq!(a.kubeconfig.as_deref(), Some(Path::new("/k")));
        assert_eq!(a.substrate_server, "https://127.0.0.1:7443");
        assert_eq!(a.substrate_ca_file.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(
            a.substrate_tls_server_name.as_deref(),
            Some("substrate-apiserver.substrate-system.svc")
        );
        assert!(
            Cli::try_parse_from(["test", "--mode=both"]).is_err(),
            "an unknown mode is refused"
        );
    }

    #[tokio::test]
    async fn standalone_uses_one_kubeconfig_for_both() {
        let dir = tempfile::tempdir().unwrap();
        let k = write_kubeconfig(dir.path(), "substrate", "https://127.0.0.1:6443");
        let a = parse(&[
            "--mode=standalone",
            &format!("--kubeconfig={}", k.display()),
            // Ignored in standalone mode.
            "--substrate-server=https://elsewhere:1",
        ]);
        let c = a.configs(true).await.unwrap();
        assert_eq!(c.mode, Mode::Standalone);
        assert_eq!(c.substrate.cluster_url, "https://127.0.0.1:6443/");
        assert_eq!(c.cluster.cluster_url, "https://127.0.0.1:6443/");
        assert_eq!(
            c.substrate.tls_server_name.as_deref(),
            Some("kubernetes.default.svc"),
            "standalone keeps the kubeconfig as it is"
        );
    }

    #[tokio::test]
    async fn standalone_defaults_to_substrates_kubeconfig() {
        let a = parse(&["--mode=standalone"]);
        match a.configs(false).await {
            Err(ClientsError::ReadKubeconfig { path, .. }) => {
                assert_eq!(path, Path::new(DEFAULT_STANDALONE_KUBECONFIG))
            }
            other => panic!("expected the default kubeconfig to be read: {other:?}"),
        }
    }

    #[tokio::test]
    async fn cluster_reaches_substrate_directly_with_the_cluster_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let k = write_kubeconfig(dir.path(), "cluster", "https://127.0.0.1:6443");
        let a = parse(&["--mode=cluster", &format!("--kubeconfig={}", k.display())]);
        let c = a.configs(false).await.unwrap();
        assert_eq!(c.mode, Mode::Cluster);
        assert_eq!(c.cluster.cluster_url, "https://127.0.0.1:6443/");
        assert_eq!(
            c.cluster.tls_server_name.as_deref(),
            Some("kubernetes.default.svc")
        );
        assert_eq!(
            c.substrate.cluster_url,
            "https://substrate-apiserver.substrate-system.svc:443/"
        );
        assert_eq!(
            c.substrate.tls_server_name, None,
            "the host of the URL, not kube-apiserver's name"
        );
        assert_eq!(auth(&c.substrate), auth(&c.cluster), "same credentials");
        assert_eq!(auth(&c.substrate)["token"], "the-token");
        assert_eq!(
            c.substrate.root_cert, c.cluster.root_cert,
            "the cluster's CA"
        );
    }

    #[tokio::test]
    async fn cluster_with_an_address_a_ca_and_a_tls_name() {
        let dir = tempfile::tempdir().unwrap();
        let k = write_kubeconfig(dir.path(), "cluster", "https://127.0.0.1:6443");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem()).unwrap();
        let a = parse(&[
            "--mode=cluster",
            &format!("--kubeconfig={}", k.display()),
            "--substrate-server=https://127.0.0.1:7443",
            &format!("--substrate-ca-file={}", ca.display()),
            "--substrate-tls-server-name=substrate-apiserver.substrate-system.svc",
        ]);
        let c = a.configs(false).await.unwrap();
        assert_eq!(c.substrate.cluster_url, "https://127.0.0.1:7443/");
        assert_eq!(
            c.substrate.tls_server_name.as_deref(),
            Some("substrate-apiserver.substrate-system.svc")
        );
        let certs = c
            .substrate
            .root_cert
            .as_ref()
            .expect("the CA file's certificate");
        assert_eq!(certs.len(), 1);
        assert_eq!(c.substrate.root_cert_file.as_deref(), Some(ca.as_path()));
        assert_eq!(
            c.cluster.root_cert_file, None,
            "the cluster's CA is untouched"
        );
        assert_eq!(auth(&c.substrate)["token"], "the-token");
    }

    /// The credentials of a configuration (the token in clear).
    fn auth(c: &kube::Config) -> serde_json::Value {
        serde_json::to_value(&c.auth_info).expect("auth info as JSON")
    }

    #[tokio::test]
    async fn bad_flags_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let k = write_kubeconfig(dir.path(), "cluster", "https://127.0.0.1:6443");
        let kc = format!("--kubeconfig={}", k.display());
        async fn err(args: &[&str]) -> ClientsError {
            parse(args).configs(false).await.unwrap_err()
        }
        assert!(matches!(
            err(&["--mode=cluster", &kc, "--substrate-server=http://plain:80"]).await,
            ClientsError::ServerNotHttps { .. }
        ));
        assert!(matches!(
            err(&["--mode=cluster", &kc, "--substrate-server=https://bad host"]).await,
            ClientsError::ServerUrl { .. }
        ));
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            err(&[
                "--mode=cluster",
                &kc,
                &format!("--substrate-ca-file={}", missing.display())
            ])
            .await,
            ClientsError::ReadCa { .. }
        ));
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let e = err(&[
            "--mode=cluster",
            &kc,
            &format!("--substrate-ca-file={}", not_pem.display()),
        ])
        .await;
        assert!(matches!(e, ClientsError::BadCa { .. }), "{e}");
        assert!(e.to_string().contains("--substrate-ca-file"), "{e}");
    }
}
