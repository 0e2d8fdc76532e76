//! The HTTP proxy: accepts HTTP/1.1 (keep-alive, absolute-form proxy requests) and HTTP/2
//! (h2c, prior knowledge) from clients and forwards to the actor's worker over pooled HTTP/1.1
//! connections.
//!
//! Bodies stream both ways (hyper frames are passed through, nothing is buffered); hop-by-hop
//! headers (RFC 9110 §7.6.1) are removed; `X-Forwarded-For`, `Forwarded`, `X-Forwarded-Host`
//! and `X-Forwarded-Proto` are set; `Connection: upgrade` requests (WebSocket) are tunnelled
//! once both sides have switched protocols. There is no overall route timeout, only a connect
//! timeout, so long-lived responses are not cut.
//!
//! Error answers are plain text naming the actor and what happened (see [`error_response`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::activity::{Activity, Guard};
use crate::host::{self, ActorKey, Suffix};
use crate::metrics::Metrics;
use crate::resume::{WakeError, Waker};
use crate::table::Table;

/// Seconds a client is told to wait when no worker is free.
pub const RETRY_AFTER_SECS: u64 = 5;

/// Response body type of the proxy.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Everything a request needs.
pub struct Proxy {
    pub suffix: Suffix,
    pub table: Arc<Table>,
    pub waker: Arc<Waker>,
    pub activity: Arc<Activity>,
    pub metrics: Arc<Metrics>,
    pub client: Client<CountingConnector, Incoming>,
}

/// Builds the pooled upstream client.
pub fn upstream_client(
    connect_timeout: Duration,
    metrics: Arc<Metrics>,
) -> Client<CountingConnector, Incoming> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(true);
    // No cap on idle connections per worker: with many concurrent requests the pool opens a
    // connection whenever none is idle at checkout, and a cap closes the extras as they come
    // back — a connect/close churn that overflows the actor's listen backlog (SYN drops,
    // 1 s retransmits; seen at 256 concurrent connections). Idle ones close after 90 s.
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(CountingConnector { http, metrics })
}

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the obsolete `Proxy-Connection`).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether the request asks to switch protocols (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_tokens(headers).any(|t| t == "upgrade")
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers; with `keep_upgrade`, `Connection: upgrade` and `Upgrade` stay.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<String> = connection_tokens(headers).collect();
    let upgrade = headers.get(header::UPGRADE).cloned();
    for name in listed.iter().map(String::as_str).chain(HOP_BY_HOP) {
        headers.remove(name);
    }
    if keep_upgrade && let Some(u) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, u);
    }
}

fn forwarded_for(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

/// Sets the forwarding headers for a request from `peer` addressed to `host`.
pub fn add_forwarding(headers: &mut HeaderMap, peer: SocketAddr, host: &str) {
    let ip = peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    let quoted_host = host.replace('\\', "\\\\").replace('"', "\\\"");
    let this = format!(
        "for={};host=\"{quoted_host}\";proto=http",
        forwarded_for(peer.ip())
    );
    let fwd = match headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {this}"),
        _ => this,
    };
    let mut set = |name: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    set("x-forwarded-for", xff);
    set("forwarded", fwd);
    set("x-forwarded-host", host.to_string());
    set("x-forwarded-proto", "http".to_string());
}

/// A plain-text answer.
pub fn text(status: u16, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(
        http_body_util::Full::new(Bytes::from(body + "\n"))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The answer for a failed wake.
pub fn error_response(e: &WakeError) -> Response<ProxyBody> {
    let mut r = text(e.status(), e.to_string());
    if matches!(e, WakeError::NoFreeWorker { .. }) {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    r
}

impl Proxy {
    /// Serves one request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let start = Instant::now();
        let resp = self.route(req, peer).await;
        self.metrics.request(resp.status().as_u16());
        self.metrics
            .request_latency
            .observe(start.elapsed().as_secs_f64());
        Ok(resp)
    }

    async fn route(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let key = match host::actor_of(&req, &self.suffix) {
            Ok(k) => k,
            Err(e) => return text(e.status(), e.to_string()),
        };
        let actor = match WakeError::find(&self.table, &key) {
            Ok(a) => a,
            Err(e) => return error_response(&e),
        };
        if let Some(addr) = self.table.route(&actor) {
            let guard = self.activity.begin(&key);
            return self.forward(req, peer, &key, addr, guard).await;
        }
        if actor.spec.activation == crds::substrate::Activation::Suspended {
            return error_response(&WakeError::Suspended { key });
        }
        match self.waker.wake(&key).await {
            Ok(addr) => {
                let guard = self.activity.begin(&key);
                self.forward(req, peer, &key, addr, guard).await
            }
            Err(e) => error_response(&e),
        }
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        key: &ActorKey,
        addr: SocketAddr,
        guard: Guard,
    ) -> Response<ProxyBody> {
        let upgrade = is_upgrade(req.headers());
        let host = host::request_authority(&req)
            .unwrap_or_default()
            .to_string();
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        parts.uri = match Uri::try_from(format!("http://{addr}{pq}")) {
            Ok(u) => u,
            Err(e) => return text(400, format!("invalid request target {pq:?}: {e}")),
        };
        parts.version = http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers, upgrade);
        if let Ok(h) = HeaderValue::from_str(&host) {
            parts.headers.insert(header::HOST, h);
        }
        add_forwarding(&mut parts.headers, peer, &host);
        let open = OpenExchange::new(&self.metrics);
        let resp = match self.client.request(Request::from_parts(parts, body)).await {
            Ok(r) => r,
            Err(e) => {
                let what = if e.is_connect() {
                    "refused the connection or could not be reached"
                } else {
                    "closed the connection before answering"
                };
                let cause = std::error::Error::source(&e)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                tracing::info!(atespace = %key.atespace, actor = %key.name, %addr, error = %e, "upstream failed");
                return text(502, format!("actor {key} at {addr} {what} ({e}{cause})"));
            }
        };
        let mut resp = resp;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream = hyper::upgrade::on(&mut resp);
            let k = key.clone();
            tokio::spawn(async move {
                let _guard = guard;
                let _open = open;
                match futures::future::try_join(client_upgrade, upstream).await {
                    Ok((c, u)) => {
                        let mut c = TokioIo::new(c);
                        let mut u = TokioIo::new(u);
                        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                            tracing::debug!(atespace = %k.atespace, actor = %k.name, error = %e, "tunnel closed");
                        }
                    }
                    Err(e) => {
                        tracing::info!(atespace = %k.atespace, actor = %k.name, error = %e, "upgrade failed")
                    }
                }
            });
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, true);
            return Response::from_parts(parts, body.boxed());
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        Response::from_parts(
            parts,
            Guarded {
                inner: body,
                _guard: (guard, open),
            }
            .boxed(),
        )
    }
}

/// Counts an exchange (request in flight or tunnel) in the gauge while held.
struct OpenExchange(prometheus_client::metrics::gauge::Gauge);

impl OpenExchange {
    fn new(m: &Metrics) -> Self {
        m.open_exchanges.inc();
        Self(m.open_exchanges.clone())
    }
}

impl Drop for OpenExchange {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A response body that keeps its actor active until it is fully sent (or dropped).
struct Guarded {
    inner: Incoming,
    _guard: (Guard, OpenExchange),
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `HttpConnector` that counts open upstream connections in a gauge.
#[derive(Clone)]
pub struct CountingConnector {
    http: HttpConnector,
    metrics: Arc<Metrics>,
}

impl tower_service::Service<Uri> for CountingConnector {
    type Response = Counted;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Counted, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let fut = self.http.call(dst);
        let gauge = self.metrics.upstream_connections.clone();
        Box::pin(async move {
            let io = fut.await?;
            gauge.inc();
            Ok(Counted { io, gauge })
        })
    }
}

/// An upstream connection counted in the gauge until dropped.
pub struct Counted {
    io: TokioIo<TcpStream>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl hyper::rt::Read for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Custom"),
        );
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("trailer", HeaderValue::from_static("x"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-end-to-end"], "kept");
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(!h.contains_key("keep-alive"));
    }

    #[test]
    fn forwarding_headers_append() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarding(&mut h, "127.0.0.1:5555".parse().unwrap(), "a.b.z:80");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["forwarded"], "for=127.0.0.1;host=\"a.b.z:80\";proto=http");
        assert_eq!(h["x-forwarded-host"], "a.b.z:80");
        assert_eq!(h["x-forwarded-proto"], "http");
        let mut h = HeaderMap::new();
        add_forwarding(&mut h, "[::1]:5555".parse().unwrap(), "a.b.z");
        assert_eq!(h["forwarded"], "for=\"[::1]\";host=\"a.b.z\";proto=http");
    }

    #[test]
    fn wake_errors_map_to_statuses() {
        let k = ActorKey::new("s", "a");
        let r = error_response(&WakeError::NoFreeWorker {
            key: k.clone(),
            message: "pool p has no workers".into(),
        });
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "5");
        assert_eq!(
            error_response(&WakeError::Suspended { key: k.clone() }).status(),
            409
        );
        let t = WakeError::Timeout {
            key: k,
            after: Duration::from_secs(1),
            phase: "Resuming".into(),
        };
        assert_eq!(error_response(&t).status(), 504);
    }
}
