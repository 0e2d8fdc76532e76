//! The HTTP proxy: accepts HTTP/1.1 (keep-alive, absolute-form proxy requests) and HTTP/2
//! (h2c, prior knowledge) from clients and forwards to the actor's worker over HTTP/1.1
//! connections from the proxy thread's pool ([`crate::upstream`]).
//!
//! Bodies stream both ways (hyper frames are passed through, nothing is buffered); hop-by-hop
//! headers (RFC 9110 §7.6.1) are removed; `X-Forwarded-For`, `Forwarded`, `X-Forwarded-Host`
//! and `X-Forwarded-Proto` are set; `Connection: upgrade` requests (WebSocket) are tunnelled
//! once both sides have switched protocols, and so are WebSockets over HTTP/2 (RFC 8441
//! extended `CONNECT`, translated to the HTTP/1.1 handshake towards the actor). There is no
//! overall route timeout, only a connect timeout, so long-lived responses are not cut.
//!
//! Error answers are plain text naming the actor and what happened (see [`error_response`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::access::Access;
use crate::activity::{self, Activity, Counters, Ensured, Guard, Reporter};
use crate::binding::Binding;
use crate::host::{self, ActorKey, Suffix};
use crate::metrics::Metrics;
use crate::resume::{WATCH_CATCH_UP, WakeError, Waker};
use crate::table::{Table, Target};
use crate::upstream::{Pool, PooledBody};

/// Seconds a client is told to wait when no worker is free.
pub const RETRY_AFTER_SECS: u64 = 5;

/// Response body of the proxy: a whole answer of its own, or the actor's, streamed (not
/// boxed: one allocation less per request).
pub enum ProxyBody {
    Full(Option<Bytes>),
    Upstream {
        inner: PooledBody,
        /// Keeps the actor active and the exchange counted until the body is sent or dropped
        /// (a tunnel's task holds them instead).
        _open: Option<(Guard, OpenExchange)>,
    },
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Some(bytes.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut *self {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Upstream { inner, .. } => Pin::new(inner).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_none(),
            Self::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

/// Everything a request needs.
pub struct Proxy {
    pub suffix: Suffix,
    pub table: Arc<Table>,
    pub waker: Arc<Waker>,
    pub activity: Arc<Activity>,
    pub reporter: Arc<Reporter>,
    pub metrics: Arc<Metrics>,
    pub upstream: Arc<Pool>,
    /// The checks of atespaces whose HTTP access policy is `Authorized`.
    pub access: Arc<Access>,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the obsolete `Proxy-Connection`).
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether the request is a WebSocket bootstrapped over HTTP/2 (RFC 8441): an extended
/// `CONNECT` with `:protocol = websocket`.
pub fn is_websocket_over_h2(req: &Request<Incoming>) -> bool {
    req.method() == http::Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// Turns an RFC 8441 extended `CONNECT` into the HTTP/1.1 opening handshake the actor
/// understands (RFC 6455 §4.1): `GET` with `Connection: Upgrade`, `Upgrade: websocket` and a
/// fresh `Sec-WebSocket-Key`; `Sec-WebSocket-Version`, `-Protocol` and `-Extensions` stay.
fn websocket_h2_to_h1(parts: &mut http::request::Parts) {
    use base64::Engine as _;
    parts.method = http::Method::GET;
    parts.extensions.remove::<hyper::ext::Protocol>();
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let nonce: [u8; 16] = rand::random();
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    if let Ok(v) = HeaderValue::from_str(&key) {
        parts.headers.insert(header::SEC_WEBSOCKET_KEY, v);
    }
    if !parts.headers.contains_key(header::SEC_WEBSOCKET_VERSION) {
        parts.headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
    }
}

/// Whether the request asks to switch protocols (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers; with `keep_upgrade`, `Connection: upgrade` and `Upgrade` stay.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names (standard names compare as tags) finds the hop-by-hop ones
    // present, usually none or `Connection: keep-alive`; only those are looked up again.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    let upgrade = if keep_upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    // Headers the `Connection` header names (RFC 9110 §7.6.1), beyond the usual options.
    let listed: Vec<String> = connection_tokens(headers)
        .filter(|t| {
            !["keep-alive", "close", "upgrade"]
                .iter()
                .any(|o| t.eq_ignore_ascii_case(o))
        })
        .map(str::to_ascii_lowercase)
        .collect();
    for name in &listed {
        headers.remove(name.as_str());
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if let Some(u) = upgrade {
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

/// `Forwarded` element for a request from `peer` addressed to `host`.
fn forwarded_element(peer: SocketAddr, host: &str) -> String {
    let quoted_host = host.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "for={};host=\"{quoted_host}\";proto=http",
        forwarded_for(peer.ip())
    )
}

/// Sets the forwarding headers for a request from `peer` addressed to `host`.
pub fn add_forwarding(headers: &mut HeaderMap, peer: SocketAddr, host: &str) {
    let ip = peer.ip().to_string();
    let xff = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    let this = forwarded_element(peer, host);
    let fwd = match headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {this}"),
        _ => this,
    };
    let mut set = |name: HeaderName, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(name, v);
        }
    };
    set(X_FORWARDED_FOR, xff);
    set(header::FORWARDED, fwd);
    set(X_FORWARDED_HOST, host.to_string());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// One client connection: its peer, and the route of its last request, reused while the
/// routing table is unchanged and requests name the same authority (keep-alive clients
/// mostly do), so a warm request does no parsing, lookup or header formatting.
pub struct Conn {
    peer: SocketAddr,
    last: std::sync::Mutex<Option<Arc<Route>>>,
}

impl Conn {
    pub fn new(peer: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            peer,
            last: std::sync::Mutex::new(None),
        })
    }

    fn cached(&self, authority: &str, generation: u64) -> Option<Arc<Route>> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|r| r.generation == generation && r.authority == authority)
            .cloned()
    }

    fn remember(&self, route: Arc<Route>) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(route);
    }
}

/// Where requests for one authority from one peer go, with the headers each gets.
pub struct Route {
    /// The request authority (`Host`) this was computed for.
    authority: String,
    /// [`Table::generation`] it was looked up at.
    generation: u64,
    key: Arc<ActorKey>,
    /// The actor's activity counters (held: no lookup per request).
    activity: Arc<Counters>,
    addr: SocketAddr,
    /// The worker gateway to reach `addr` through (`None`: directly).
    gateway: Option<SocketAddr>,
    /// The binding the actor was routable by: its pooled connections only.
    binding: Binding,
    host: Option<HeaderValue>,
    /// The atespace's HTTP access policy is `Authorized`: every request is checked.
    authorized: bool,
    /// `X-Forwarded-For` and `Forwarded` for a request that brought neither.
    xff: HeaderValue,
    forwarded: Option<HeaderValue>,
}

impl Route {
    fn new(
        authority: &str,
        generation: u64,
        key: ActorKey,
        activity: Arc<Counters>,
        target: Target,
        peer: SocketAddr,
        authorized: bool,
    ) -> Result<Self, String> {
        Ok(Self {
            authority: authority.to_string(),
            authorized,
            generation,
            host: HeaderValue::from_str(authority).ok(),
            xff: HeaderValue::from_str(&peer.ip().to_string())
                .map_err(|e| format!("client address {peer} as a header: {e}"))?,
            forwarded: HeaderValue::from_str(&forwarded_element(peer, authority)).ok(),
            key: Arc::new(key),
            activity,
            addr: target.addr,
            gateway: target.gateway,
            binding: target.binding,
        })
    }

    /// Sets the forwarding headers, from the precomputed values when the request brought
    /// none of its own.
    fn add_forwarding(&self, headers: &mut HeaderMap, peer: SocketAddr) {
        let fresh =
            !headers.contains_key(X_FORWARDED_FOR) && !headers.contains_key(header::FORWARDED);
        match (&self.host, &self.forwarded) {
            (Some(host), Some(fwd)) if fresh => {
                headers.insert(X_FORWARDED_FOR, self.xff.clone());
                headers.insert(header::FORWARDED, fwd.clone());
                headers.insert(X_FORWARDED_HOST, host.clone());
                headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
            }
            _ => add_forwarding(headers, peer, &self.authority),
        }
    }
}

/// A plain-text answer.
pub fn text(status: u16, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body + "\n"));
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
    /// Serves one request of connection `conn`.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<Conn>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let start = Instant::now();
        let resp = self.route(req, &conn).await;
        self.metrics.request(resp.status().as_u16());
        self.metrics
            .request_latency
            .observe(start.elapsed().as_secs_f64());
        Ok(resp)
    }

    /// An `Authorized` atespace's checks ([`crate::access`]): `Err` is the refusal to answer;
    /// admitted, the request loses the `Authorization` header the router consumed.
    async fn admit(
        &self,
        req: &mut Request<Incoming>,
        key: &ActorKey,
    ) -> Result<(), Response<ProxyBody>> {
        match self.access.check(key, req.method(), req.headers()).await {
            Ok(_) => {
                req.headers_mut().remove(header::AUTHORIZATION);
                Ok(())
            }
            Err(d) => {
                self.metrics.access_denial(d.reason());
                tracing::debug!(atespace = %key.atespace, actor = %key.name, reason = d.reason(), "request refused by the atespace's HTTP access policy");
                Err(d.response(key))
            }
        }
    }

    async fn route(&self, mut req: Request<Incoming>, conn: &Conn) -> Response<ProxyBody> {
        // Read before the lookups: a change after it makes the cached route stale.
        let generation = self.table.generation();
        if let Some(route) = host::request_authority(&req).and_then(|a| conn.cached(a, generation))
            && !route.activity.stale(activity::now_ms())
        {
            if route.authorized
                && let Err(refused) = self.admit(&mut req, &route.key).await
            {
                return refused;
            }
            let guard = route.activity.begin();
            return self.forward(req, conn.peer, &route, guard).await;
        }
        let key = match host::actor_of(&req, &self.suffix) {
            Ok(k) => k,
            Err(e) => return text(e.status(), e.to_string()),
        };
        // Before anything else: a refused request learns nothing of the actor and wakes
        // nothing.
        let authorized =
            self.table.http_access(&key.atespace) == crds::substrate::HttpAccessPolicy::Authorized;
        if authorized && let Err(refused) = self.admit(&mut req, &key).await {
            return refused;
        }
        // Once: after a write that found the actor no longer running, the route is looked
        // up again from a table that shows that write.
        let mut looked_again = false;
        loop {
            let actor = match WakeError::find(&self.table, &key) {
                Ok(a) => a,
                Err(miss) => match self.waker.find_fresh(&key, miss).await {
                    Ok(a) => a,
                    Err(e) => return error_response(&e),
                },
            };
            let counters = self.activity.counters(&key);
            counters.learn(&actor, self.reporter.default_idle);
            // Open from here: every report while the request waits or runs includes it.
            let guard = counters.begin();
            let (target, warm) = match self.table.route(&actor) {
                Some(target) => (target, true),
                None if actor.spec.activation == crds::substrate::Activation::Suspended => {
                    return error_response(&WakeError::Suspended { key });
                }
                None => match self.waker.wake(&key).await {
                    Ok(target) => {
                        // The resume recorded activity of its own.
                        if let Some(a) = self.table.actor(&key) {
                            counters.learn(&a, self.reporter.default_idle);
                        }
                        (target, false)
                    }
                    Err(e) => return error_response(&e),
                },
            };
            // Rule 1 of [`activity`]: recorded before forwarded, when the record is stale.
            if let Ensured::NotRunning { resource_version } =
                self.reporter.ensure(&key, &counters).await
                && !looked_again
            {
                looked_again = true;
                drop(guard);
                if let Some(rv) = resource_version {
                    self.table.catch_up(&key, rv, WATCH_CATCH_UP).await;
                }
                continue;
            }
            let authority = host::request_authority(&req).unwrap_or_default();
            let route = match Route::new(
                authority, generation, key, counters, target, conn.peer, authorized,
            ) {
                Ok(r) => Arc::new(r),
                Err(message) => return text(502, message),
            };
            if warm {
                conn.remember(route.clone());
            }
            return self.forward(req, conn.peer, &route, guard).await;
        }
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        route: &Route,
        guard: Guard,
    ) -> Response<ProxyBody> {
        let (key, addr) = (&*route.key, route.addr);
        let websocket_over_h2 = is_websocket_over_h2(&req);
        let upgrade = websocket_over_h2 || is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // Origin form (`/path?query`) towards the actor, whatever form the client used.
        parts.uri = match parts.uri.path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') => {
                if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
                    Uri::from(pq.clone())
                } else {
                    std::mem::take(&mut parts.uri)
                }
            }
            _ => Uri::from_static("/"),
        };
        parts.version = http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers, upgrade && !websocket_over_h2);
        if websocket_over_h2 {
            websocket_h2_to_h1(&mut parts);
        }
        // The request's own authority; the worker's address only if that is no header value.
        let host = route
            .host
            .clone()
            .or_else(|| HeaderValue::from_str(&addr.to_string()).ok());
        if let Some(h) = host {
            parts.headers.insert(header::HOST, h);
        }
        route.add_forwarding(&mut parts.headers, peer);
        let open = OpenExchange::new(&self.metrics);
        let resp = match self
            .upstream
            .send(
                addr,
                route.gateway,
                route.binding,
                Request::from_parts(parts, body),
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                let what = if e.is_connect() {
                    "refused the connection or could not be reached"
                } else {
                    "closed the connection before answering"
                };
                tracing::info!(atespace = %key.atespace, actor = %key.name, %addr, error = %e, "upstream failed");
                return text(502, format!("actor {key} at {addr} {what} ({e})"));
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
            if websocket_over_h2 {
                // RFC 8441 §5: the HTTP/2 side's answer is a 200 to the CONNECT, with no
                // HTTP/1.1 handshake headers.
                parts.status = StatusCode::OK;
                strip_hop_by_hop(&mut parts.headers, false);
                parts.headers.remove(header::SEC_WEBSOCKET_ACCEPT);
            } else {
                strip_hop_by_hop(&mut parts.headers, true);
            }
            return Response::from_parts(
                parts,
                ProxyBody::Upstream {
                    inner: body,
                    _open: None,
                },
            );
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        Response::from_parts(
            parts,
            ProxyBody::Upstream {
                inner: body,
                _open: Some((guard, open)),
            },
        )
    }
}

/// Counts an exchange (request in flight or tunnel) in the gauge while held.
pub struct OpenExchange(prometheus_client::metrics::gauge::Gauge);

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
