//! HTTPS listener: rustls with optional client certificates, HTTP/1.1 and HTTP/2 (ALPN), one
//! task per connection, graceful stop on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::api::{self, AppState};

/// Largest HTTP/2 header list accepted (bytes, as HPACK-decoded).
const MAX_HEADER_LIST: u32 = 1 << 20;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("loading TLS material {path}: {reason}")]
    Tls { path: String, reason: String },
}

/// A rustls server config presenting `cert` (replaceable while serving) that asks for (but
/// does not require) a client certificate.
pub fn tls_config(
    cert: Arc<crate::serving_cert::ServingCert>,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
) -> Result<ServerConfig, ServerError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls {
            path: "protocol versions".into(),
            reason: e.to_string(),
        })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: ServerConfig,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => {
                tracing::info!("shutting down listener");
                return;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let chain = Arc::new(state.auth.connection(tls.get_ref().1.peer_certificates()));
            let svc = service_fn(move |req| api::handle(state.clone(), chain.clone(), req));
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // Header lists up to 1 MiB over HTTP/2 (Go's default, so kube-apiserver's): with
            // h2's 16 KiB default a long URL is a connection error (too many CONTINUATION
            // frames) instead of an answer; `api::handle` answers URIs over its limit 414.
            builder
                .http2()
                .max_concurrent_streams(1000)
                .max_header_list_size(MAX_HEADER_LIST);
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), svc).await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with error");
            }
        });
    }
}
