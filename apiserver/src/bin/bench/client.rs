//! The benchmark's HTTPS client: credentials from an admin kubeconfig or a PKI directory,
//! rustls (aws-lc-rs, ALPN `h2` only) and a few HTTP/2 connections, each multiplexing many
//! concurrent streams. Requests go round-robin over the connections.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long establishing one connection (TCP + TLS + HTTP/2) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and as whom to connect (PEM material).
pub struct Credentials {
    pub server: String,
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
    #[serde(default)]
    contexts: Vec<Named<KubeContext>>,
    #[serde(rename = "current-context", default)]
    current_context: Option<String>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: T,
}

#[derive(Deserialize)]
struct Cluster {
    server: String,
    #[serde(rename = "certificate-authority-data")]
    ca_data: Option<String>,
}

#[derive(Deserialize)]
struct User {
    #[serde(rename = "client-certificate-data")]
    cert_data: Option<String>,
    #[serde(rename = "client-key-data")]
    key_data: Option<String>,
}

#[derive(Deserialize)]
struct KubeContext {
    cluster: String,
    user: String,
}

fn pick<'a, T>(items: &'a [Named<T>], name: Option<&str>, what: &str) -> anyhow::Result<&'a T> {
    let found = match name {
        Some(n) => items.iter().find(|i| i.name == n),
        None => items.first(),
    };
    found
        .map(|i| &i.value)
        .with_context(|| format!("kubeconfig has no {what} {}", name.unwrap_or("(any)")))
}

fn b64(field: &str, v: Option<&String>) -> anyhow::Result<Vec<u8>> {
    let v =
        v.with_context(|| format!("kubeconfig lacks {field} (only inline *-data is supported)"))?;
    base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .with_context(|| format!("kubeconfig {field} is not base64"))
}

impl Credentials {
    /// Reads an admin kubeconfig with inline (base64) certificate data, as written by
    /// `substrate-apiserver --kubeconfig-out`.
    pub fn from_kubeconfig(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading kubeconfig {}", path.display()))?;
        let kc: Kubeconfig = serde_saphyr::from_str(&text)
            .with_context(|| format!("parsing kubeconfig {}", path.display()))?;
        let (cluster, user) = match kc.current_context.as_deref() {
            Some(cur) => {
                let ctx = pick(&kc.contexts, Some(cur), "context")?;
                (
                    pick(&kc.clusters, Some(&ctx.cluster), "cluster")?,
                    pick(&kc.users, Some(&ctx.user), "user")?,
                )
            }
            None => (
                pick(&kc.clusters, None, "cluster")?,
                pick(&kc.users, None, "user")?,
            ),
        };
        Ok(Self {
            server: cluster.server.clone(),
            ca_pem: b64("certificate-authority-data", cluster.ca_data.as_ref())?,
            cert_pem: b64("client-certificate-data", user.cert_data.as_ref())?,
            key_pem: b64("client-key-data", user.key_data.as_ref())?,
        })
    }

    /// Reads `ca.crt`, `admin.crt` and `admin.key` from the apiserver's PKI directory.
    pub fn from_pki_dir(dir: &Path, server: String) -> anyhow::Result<Self> {
        let read = |f: &str| {
            let p = dir.join(f);
            std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
        };
        Ok(Self {
            server,
            ca_pem: read("ca.crt")?,
            cert_pem: read("admin.crt")?,
            key_pem: read("admin.key")?,
        })
    }

    fn tls_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.ca_pem) {
            roots
                .add(cert.context("CA certificate PEM")?)
                .context("adding the CA certificate")?;
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .context("client certificate PEM")?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).context("client key PEM")?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("client certificate")?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }
}

/// A response with its whole body.
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

/// A pool of HTTP/2 connections to the apiserver.
pub struct Client {
    senders: Vec<SendRequest<Full<Bytes>>>,
    next: AtomicUsize,
    /// `https://host:port`, prefixed to every path.
    base: String,
}

impl Client {
    /// Opens `connections` HTTP/2 connections to `creds.server`.
    pub async fn connect(creds: &Credentials, connections: usize) -> anyhow::Result<Self> {
        let uri: Uri = creds
            .server
            .parse()
            .with_context(|| format!("server URL {:?}", creds.server))?;
        if uri.scheme_str() != Some("https") {
            bail!("server URL {:?} is not https://", creds.server);
        }
        let host = uri
            .host()
            .with_context(|| format!("server URL {:?} has no host", creds.server))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone())
            .with_context(|| format!("{host:?} is not a valid TLS server name"))?;
        let connector = TlsConnector::from(Arc::new(creds.tls_config()?));
        let mut senders = Vec::with_capacity(connections);
        for i in 0..connections.max(1) {
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, async {
                let tcp = TcpStream::connect((host.as_str(), port))
                    .await
                    .with_context(|| format!("connecting to {host}:{port}"))?;
                tcp.set_nodelay(true)?;
                connector
                    .connect(server_name.clone(), tcp)
                    .await
                    .with_context(|| format!("TLS handshake with {host}:{port}"))
            })
            .await
            .with_context(|| format!("connection {i} to {host}:{port} timed out"))??;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                bail!("the server did not negotiate HTTP/2 (ALPN h2)");
            }
            let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                // Big windows: a list of 1,000 actors is ~1 MB; the default 64 KiB stream
                // window would make the server wait for WINDOW_UPDATEs.
                .initial_stream_window_size(8 << 20)
                .initial_connection_window_size(64 << 20)
                .max_frame_size(1 << 20)
                .handshake(TokioIo::new(tls))
                .await
                .context("HTTP/2 handshake")?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    eprintln!("substrate-bench: HTTP/2 connection {i} ended: {e}");
                }
            });
            senders.push(sender);
        }
        Ok(Self {
            senders,
            next: AtomicUsize::new(0),
            base: format!("https://{}", uri.authority().map_or("", |a| a.as_str())),
        })
    }

    fn sender(&self) -> SendRequest<Full<Bytes>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        self.senders[i].clone()
    }

    fn build(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&'static str>,
        body: Bytes,
    ) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::ACCEPT, "application/json");
        if let Some(ct) = content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        Ok(b.body(Full::new(body))?)
    }

    /// Sends one request and reads the whole response body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&'static str>,
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        let req = self.build(method, path, content_type, body)?;
        let resp = self.sender().send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply { status, body })
    }

    /// `GET path` returning the response as soon as its headers arrived (watches).
    pub async fn stream(&self, path: &str) -> anyhow::Result<Response<Incoming>> {
        let req = self.build(Method::GET, path, None, Bytes::new())?;
        Ok(self.sender().send_request(req).await?)
    }

    /// `https://host:port` of the server.
    pub fn base(&self) -> &str {
        &self.base
    }
}
