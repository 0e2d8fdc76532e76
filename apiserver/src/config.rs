//! Command-line and environment configuration of the apiserver.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Valkey ACL user to log in as (default: the URL's user, else `default`).
    #[arg(long, env = "SUBSTRATE_VALKEY_USERNAME")]
    pub valkey_username: Option<String>,
    /// File whose first line is the Valkey password (read at start; wins over a password in
    /// --valkey-url).
    #[arg(long, env = "SUBSTRATE_VALKEY_PASSWORD_FILE")]
    pub valkey_password_file: Option<PathBuf>,
    /// CA bundle (PEM) that signs Valkey's certificate, for a `rediss://` --valkey-url
    /// (default: the system's roots).
    #[arg(long, env = "SUBSTRATE_VALKEY_TLS_CA_FILE")]
    pub valkey_tls_ca_file: Option<PathBuf>,
    /// Prefix of every Valkey key.
    #[arg(long, env = "SUBSTRATE_KEY_PREFIX", default_value = "substrate")]
    pub key_prefix: String,
    /// Directory of the standalone PKI (created on first start).
    #[arg(long, env = "SUBSTRATE_PKI_DIR", default_value = ".substrate/pki")]
    pub pki_dir: PathBuf,
    /// How often the serving certificate is checked: renewed when a third of its lifetime is
    /// left (the PKI directory's, or `--pki-secret`'s), and reloaded when its files changed
    /// (also `--tls-cert-file`'s, e.g. renewed by cert-manager), without a restart.
    #[arg(long, env = "SUBSTRATE_CERT_CHECK_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub cert_check_interval: Duration,
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
    /// Header names carrying the user name from a front proxy, in order of preference (used
    /// when the cluster's authentication ConfigMap gives none).
    #[arg(
        long,
        env = "SUBSTRATE_REQUESTHEADER_USERNAME_HEADERS",
        value_delimiter = ',',
        default_value = "X-Remote-User"
    )]
    pub requestheader_username_headers: Vec<String>,
    /// Header names carrying groups from a front proxy.
    #[arg(
        long,
        env = "SUBSTRATE_REQUESTHEADER_GROUP_HEADERS",
        value_delimiter = ',',
        default_value = "X-Remote-Group"
    )]
    pub requestheader_group_headers: Vec<String>,
    /// Prefixes of header names carrying extra user attributes from a front proxy.
    #[arg(
        long,
        env = "SUBSTRATE_REQUESTHEADER_EXTRA_HEADERS_PREFIX",
        value_delimiter = ',',
        default_value = "X-Remote-Extra-"
    )]
    pub requestheader_extra_headers_prefix: Vec<String>,
    /// Kubeconfig of the kube-apiserver that authenticates requests (its
    /// `kube-system/extension-apiserver-authentication` ConfigMap, `TokenReview`). Unset: the
    /// in-cluster configuration when running in a pod, else standalone authentication.
    #[arg(long, env = "SUBSTRATE_AUTHENTICATION_KUBECONFIG")]
    pub authentication_kubeconfig: Option<PathBuf>,
    /// Kubeconfig of the kube-apiserver that authorizes requests (`SubjectAccessReview`).
    /// Unset: the in-cluster configuration when running in a pod, else standalone
    /// authorization.
    #[arg(long, env = "SUBSTRATE_AUTHORIZATION_KUBECONFIG")]
    pub authorization_kubeconfig: Option<PathBuf>,
    /// Kubeconfig of the cluster whose `ate.dev` CustomResourceDefinitions (ActorTemplate,
    /// WorkerPool) are the templates and pools (cluster mode: read through a watch; this
    /// apiserver then does not serve `ate.dev`). Unset: `--authorization-kubeconfig`, else the
    /// in-cluster configuration in a pod, else standalone (`ate.dev` served from Valkey).
    #[arg(long, env = "SUBSTRATE_CLUSTER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Cluster mode: the namespace the apiserver's Secrets and ConfigMap live in (default: its
    /// pod's namespace, else `substrate-system`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Cluster mode: the name of the apiserver's Service (the serving certificate of
    /// `--pki-secret` names `<service>.<namespace>.svc` and its other forms).
    #[arg(
        long,
        env = "SUBSTRATE_SERVICE_NAME",
        default_value = "substrate-apiserver"
    )]
    pub service_name: String,
    /// Cluster mode: keep the serving CA and certificate in this Secret (created by the first
    /// replica to start, used by every other), instead of `--tls-cert-file`.
    #[arg(long, env = "SUBSTRATE_PKI_SECRET", conflicts_with_all = ["tls_cert_file", "tls_private_key_file"])]
    pub pki_secret: Option<String>,
    /// Cluster mode: publish the serving CA in this ConfigMap (key `ca.crt`) for the components
    /// that talk to the apiserver's Service directly.
    #[arg(long, env = "SUBSTRATE_CA_CONFIGMAP", conflicts_with = "tls_cert_file")]
    pub ca_configmap: Option<String>,
    /// Cluster mode: keep this APIService's `spec.caBundle` equal to the serving CA.
    #[arg(long, env = "SUBSTRATE_APISERVICE", conflicts_with = "tls_cert_file")]
    pub apiservice: Option<String>,
    /// Cluster mode: Valkey's password from this Secret (key `password`; created with a random
    /// password when absent).
    #[arg(long, env = "SUBSTRATE_VALKEY_PASSWORD_SECRET")]
    pub valkey_password_secret: Option<String>,
    /// Never delegate to a cluster, not even with the in-cluster configuration of a pod
    /// (tests and demos running inside a Kubernetes pod).
    #[arg(
        long,
        env = "SUBSTRATE_STANDALONE",
        conflicts_with_all = ["authentication_kubeconfig", "authorization_kubeconfig", "kubeconfig", "pki_secret", "ca_configmap", "apiservice", "valkey_password_secret"]
    )]
    pub standalone: bool,
    /// Static bearer tokens (kube's `--token-auth-file`): CSV `token,user,uid,"group1,group2"`,
    /// read at start. Its users authenticate with `Authorization: Bearer <token>` (kubectl
    /// `--token`) and are in `system:authenticated`; `TokenReview` answers for them.
    #[arg(long, env = "SUBSTRATE_TOKEN_AUTH_FILE")]
    pub token_auth_file: Option<PathBuf>,
    /// How long token reviews are cached (Go duration: 10s, 1m, 1m30s, 500ms).
    #[arg(long, env = "SUBSTRATE_AUTHENTICATION_TOKEN_WEBHOOK_CACHE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub authentication_token_webhook_cache_ttl: Duration,
    /// How long allowed authorization decisions are cached.
    #[arg(long, env = "SUBSTRATE_AUTHORIZATION_WEBHOOK_CACHE_AUTHORIZED_TTL", default_value = "10s", value_parser = parse_duration)]
    pub authorization_webhook_cache_authorized_ttl: Duration,
    /// How long denied authorization decisions are cached.
    #[arg(long, env = "SUBSTRATE_AUTHORIZATION_WEBHOOK_CACHE_UNAUTHORIZED_TTL", default_value = "10s", value_parser = parse_duration)]
    pub authorization_webhook_cache_unauthorized_ttl: Duration,
    /// Paths answered without authorization (`prefix*` matches a prefix).
    #[arg(
        long,
        env = "SUBSTRATE_AUTHORIZATION_ALWAYS_ALLOW_PATHS",
        value_delimiter = ',',
        default_value = "/healthz,/readyz,/livez"
    )]
    pub authorization_always_allow_paths: Vec<String>,
    /// Start even when the cluster's authentication ConfigMap cannot be read (then only the
    /// CA files given by flags are trusted until it can).
    #[arg(long, env = "SUBSTRATE_AUTHENTICATION_TOLERATE_LOOKUP_FAILURE")]
    pub authentication_tolerate_lookup_failure: bool,
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

/// Parses a Go duration (`10s`, `1m30s`, `500ms`, `1h`, `0`), as kube's flags take them.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {s:?}"))?;
        let (num, tail) = rest.split_at(digits);
        let value: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("unknown unit {unit:?} in duration {s:?}")),
        };
        total += Duration::from_secs_f64(value * scale);
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn valkey_login_flags() {
        let a = Args::try_parse_from(["substrate-apiserver"]).unwrap();
        assert_eq!(a.valkey_url, "redis://127.0.0.1:6390");
        assert_eq!(
            (
                a.valkey_username,
                a.valkey_password_file,
                a.valkey_tls_ca_file
            ),
            (None, None, None)
        );
        let a = Args::try_parse_from([
            "substrate-apiserver",
            "--valkey-url=rediss://valkey:6379",
            "--valkey-username=substrate-apiserver",
            "--valkey-password-file=/secrets/valkey/password",
            "--valkey-tls-ca-file=/secrets/valkey/ca.crt",
        ])
        .unwrap();
        assert_eq!(a.valkey_username.as_deref(), Some("substrate-apiserver"));
        assert_eq!(
            a.valkey_password_file,
            Some(PathBuf::from("/secrets/valkey/password"))
        );
        assert_eq!(
            a.valkey_tls_ca_file,
            Some(PathBuf::from("/secrets/valkey/ca.crt"))
        );
    }

    #[test]
    fn delegation_flags_have_kubes_defaults() {
        let a = Args::try_parse_from(["substrate-apiserver"]).unwrap();
        assert_eq!(a.authentication_kubeconfig, None);
        assert_eq!(a.authorization_kubeconfig, None);
        assert_eq!(
            a.authentication_token_webhook_cache_ttl,
            Duration::from_secs(10)
        );
        assert_eq!(
            a.authorization_webhook_cache_authorized_ttl,
            Duration::from_secs(10)
        );
        assert_eq!(
            a.authorization_webhook_cache_unauthorized_ttl,
            Duration::from_secs(10)
        );
        assert_eq!(
            a.authorization_always_allow_paths,
            vec!["/healthz", "/readyz", "/livez"]
        );
        assert!(!a.authentication_tolerate_lookup_failure);
        assert_eq!(a.requestheader_username_headers, vec!["X-Remote-User"]);
        let a = Args::try_parse_from([
            "substrate-apiserver",
            "--authentication-kubeconfig=/k",
            "--authorization-webhook-cache-unauthorized-ttl=30s",
            "--authentication-tolerate-lookup-failure",
        ])
        .unwrap();
        assert_eq!(a.authentication_kubeconfig, Some(PathBuf::from("/k")));
        assert_eq!(
            a.authorization_webhook_cache_unauthorized_ttl,
            Duration::from_secs(30)
        );
        assert!(a.authentication_tolerate_lookup_failure);
        assert!(
            Args::try_parse_from([
                "substrate-apiserver",
                "--standalone",
                "--authorization-kubeconfig=/k"
            ])
            .is_err()
        );
    }
}
