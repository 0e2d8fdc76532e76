//! Command-line and environment configuration of the apiserver.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// `substrate-apiserver` flags; every flag can also come from the environment.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "substrate-apiserver",
    version,
    about = "Substrate aggregated API server (Atespaces, Actors, Workers) backed by Valkey"
)]
pub struct Args {
    /// Address to serve HTTPS on.
    #[arg(
        long,
        env = "SUBSTRATE_APISERVER_BIND",
        default_value = "127.0.0.1:6443"
    )]
    pub bind: SocketAddr,
    /// Valkey (or Redis) URL.
    #[arg(
        long,
        env = "SUBSTRATE_VALKEY_URL",
        default_value = "redis://127.0.0.1:6390"
    )]
    pub valkey_url: String,
    /// Prefix of every Valkey key.
    #[arg(long, env = "SUBSTRATE_KEY_PREFIX", default_value = "substrate")]
    pub key_prefix: String,
    /// Directory of the standalone PKI (created on first start).
    #[arg(long, env = "SUBSTRATE_PKI_DIR", default_value = ".substrate/pki")]
    pub pki_dir: PathBuf,
    /// Extra DNS names or IPs for the serving certificate.
    #[arg(long = "tls-san", env = "SUBSTRATE_TLS_SANS", value_delimiter = ',')]
    pub tls_sans: Vec<String>,
    /// Serving certificate (PEM); defaults to the generated one.
    #[arg(
        long,
        env = "SUBSTRATE_TLS_CERT_FILE",
        requires = "tls_private_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// Serving key (PEM).
    #[arg(
        long,
        env = "SUBSTRATE_TLS_PRIVATE_KEY_FILE",
        requires = "tls_cert_file"
    )]
    pub tls_private_key_file: Option<PathBuf>,
    /// CA bundle for client certificates; defaults to the generated CA.
    #[arg(long, env = "SUBSTRATE_CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,
    /// CA bundle of the front proxy (aggregating kube-apiserver); defaults to the generated one.
    #[arg(long, env = "SUBSTRATE_REQUESTHEADER_CLIENT_CA_FILE")]
    pub requestheader_client_ca_file: Option<PathBuf>,
    /// Common names a front-proxy certificate may have (empty: any).
    #[arg(
        long,
        env = "SUBSTRATE_REQUESTHEADER_ALLOWED_NAMES",
        value_delimiter = ','
    )]
    pub requestheader_allowed_names: Vec<String>,
    /// Write an admin kubeconfig here once serving.
    #[arg(long, env = "SUBSTRATE_KUBECONFIG_OUT")]
    pub kubeconfig_out: Option<PathBuf>,
    /// Server URL written into the kubeconfig (default: https://<bind>).
    #[arg(long, env = "SUBSTRATE_KUBECONFIG_SERVER")]
    pub kubeconfig_server: Option<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "SUBSTRATE_MAX_REQUEST_BYTES", default_value_t = 3 * 1024 * 1024)]
    pub max_request_bytes: usize,
    /// Watch events kept in memory per resource (how far back a watch can resume).
    #[arg(long, env = "SUBSTRATE_WATCH_HISTORY", default_value_t = 10_000)]
    pub watch_history: usize,
    /// Log format.
    #[arg(
        long,
        env = "SUBSTRATE_LOG_FORMAT",
        value_enum,
        default_value = "plain"
    )]
    pub log_format: LogFormat,
}
