//! Upstream HTTP/1.1 connections to actors: one pool per proxy thread, built on hyper's
//! connection API (`hyper::client::conn::http1`).
//!
//! A proxy thread is a single-threaded runtime, so its pool is touched by one thread only
//! (its mutex is never contended) and each connection's task runs on the thread that uses
//! it. Connections belong to a binding ([`crate::binding`]: one actor's run on one worker),
//! not to an address: idle connections are filed under the binding they were opened for, a
//! request takes one of its own route's binding only, and a binding that ends (the actor
//! suspended, deleted or moved) takes its idle connections with it; a connection busy at that
//! moment is closed when its exchange ends instead of coming back. So a sandbox that answers
//! on an address after another never receives the other's kept-alive connections.
//!
//! A request takes the most recently returned idle connection of its binding (LIFO: the
//! fewest connections stay warm), or opens one; the connection comes back when the response
//! body has been read to its end. A request that a reused connection could not even send
//! (the actor closed it while idle) is retried once on a new connection; so is one whose
//! reused connection failed after sending it but before any answer, when sending it twice is
//! safe: an idempotent method (RFC 9110 §9.2.2) and no body, on a connection idle for
//! [`REPLAY_AFTER_IDLE`] or more (only those can have been closed by the actor's keep-alive
//! timeout as the request went out; only for those is the request's head kept, so a
//! connection in steady use copies nothing). Anything else that fails stays a 502. A
//! connection still busy [`READY_WAIT`] after it came back (its answer arrived before its
//! client's upload was all sent) is passed over. Idle connections close after
//! [`IDLE_TIMEOUT`]; there is no cap per address (a cap closes the extra connections opened
//! under load as they come back, and that connect/close churn overflows an actor's listen
//! backlog).
//!
//! Compared with `hyper_util`'s pooled client this does no pool-key hashing of URI
//! authorities, boxes no response future, and spawns no task per request to return a
//! connection once it is ready again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::binding::{Binding, Bindings};
use crate::gateway::{GatewayError, GatewayToken};
use crate::metrics::Metrics;

/// An idle connection older than this is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a request waits for an idle connection to become ready before it takes another.
pub const READY_WAIT: Duration = Duration::from_millis(500);

/// A request sent on a connection idle at least this long keeps its head, so that it can be
/// sent again if the connection turns out closed ([`Pool::send`]).
pub const REPLAY_AFTER_IDLE: Duration = Duration::from_millis(250);

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {addr} timed out after {after:?}")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {addr} through its node's worker gateway timed out after {after:?}")]
    GatewayTimeout { addr: SocketAddr, after: Duration },
    #[error("{source}")]
    Gateway {
        #[source]
        source: GatewayError,
    },
    #[error("HTTP/1.1 handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("{source}")]
    Exchange {
        #[source]
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// Whether no connection could be made (the actor refused it or is unreachable).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Self::ConnectTimeout { .. }
                | Self::Connect { .. }
                | Self::GatewayTimeout { .. }
                | Self::Gateway { .. }
        )
    }
}

/// A request body towards an actor: the client's, or none (a request sent again).
pub enum RequestBody {
    Client(Incoming),
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Client(b) => Pin::new(b).poll_frame(cx),
            Self::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Client(b) => b.is_end_stream(),
            Self::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Client(b) => b.size_hint(),
            Self::Empty => SizeHint::with_exact(0),
        }
    }
}

/// What it takes to send a request again: its head (it has no body).
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    /// A copy of `req` when sending it twice is safe: an idempotent method (RFC 9110
    /// §9.2.2) and no body (nothing of it can have been consumed).
    fn of(req: &Request<RequestBody>) -> Option<Self> {
        let idempotent = matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        (idempotent && req.body().is_end_stream()).then(|| Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        })
    }

    fn request(self) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::Empty);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }
}

/// Whether a failed exchange got no answer at all: the connection closed or broke (rather
/// than the actor answering something unparsable, or our own side failing).
fn unanswered(e: &hyper::Error) -> bool {
    !(e.is_parse() || e.is_parse_status() || e.is_user() || e.is_timeout())
}

struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

impl Idle {
    /// Not closed by the actor and not idle for longer than [`IDLE_TIMEOUT`].
    fn usable(&self, idle_for: Duration) -> bool {
        !self.sender.is_closed() && idle_for <= IDLE_TIMEOUT
    }
}

/// The upstream connections of one proxy thread.
pub struct Pool {
    /// Idle connections by binding number (from our own table, not from clients: a fast
    /// hash).
    idle: Mutex<HashMap<u64, Vec<Idle>, foldhash::fast::RandomState>>,
    bindings: Arc<Bindings>,
    connect_timeout: Duration,
    open: Gauge,
    retries: Counter,
    gateway_token: Arc<GatewayToken>,
    gateway_tunnels: Counter,
    gateway_failures: Counter,
}

impl Pool {
    pub fn new(
        connect_timeout: Duration,
        metrics: &Metrics,
        bindings: Arc<Bindings>,
        gateway_token: Arc<GatewayToken>,
    ) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(HashMap::default()),
            bindings,
            connect_timeout,
            open: metrics.upstream_connections.clone(),
            retries: metrics.upstream_retries.clone(),
            gateway_token,
            gateway_tunnels: metrics.gateway_tunnels.clone(),
            gateway_failures: metrics.gateway_failures.clone(),
        })
    }

    /// Sends `req`, routed by `binding`, to `addr` (through worker gateway `gateway`, when
    /// given); the response's body hands the connection back to the pool once it has been
    /// read to the end (a `101` answer keeps it: it becomes the tunnel).
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        gateway: Option<SocketAddr>,
        binding: Binding,
        req: Request<Incoming>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let mut req = req.map(RequestBody::Client);
        if let Some((mut sender, idle_for)) = self.take_idle(addr, binding.id).await {
            // The actor may have closed a connection idle this long as the request goes out.
            let replay = if idle_for >= REPLAY_AFTER_IDLE {
                Replay::of(&req)
            } else {
                None
            };
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.lease(addr, binding, sender, resp)),
                Err(mut e) => match (e.take_message(), replay) {
                    // Not sent: the connection was closed while idle. A new one gets it.
                    (Some(back), _) => {
                        tracing::debug!(%addr, error = %e.error(), "idle upstream connection unusable, reconnecting");
                        req = back;
                    }
                    // Sent, and no answer came: the actor had closed the connection.
                    (None, Some(replay)) if unanswered(e.error()) => {
                        tracing::debug!(%addr, error = %e.error(), idle_ms = idle_for.as_millis() as u64, "pooled upstream connection failed before answering, sending the request again");
                        req = replay.request();
                    }
                    (None, _) => {
                        return Err(UpstreamError::Exchange {
                            source: e.into_error(),
                        });
                    }
                },
            }
            self.retries.inc();
        }
        let mut sender = self.connect(addr, gateway).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| UpstreamError::Exchange { source })?;
        Ok(self.lease(addr, binding, sender, resp))
    }

    fn lease(
        self: &Arc<Self>,
        addr: SocketAddr,
        binding: Binding,
        sender: http1::SendRequest<RequestBody>,
        resp: Response<Incoming>,
    ) -> Response<PooledBody> {
        // After a `101` the connection is the tunnel's: it is kept open by the body, never
        // given back.
        let reusable = resp.status() != http::StatusCode::SWITCHING_PROTOCOLS;
        resp.map(|inner| PooledBody {
            inner,
            lease: Some(Lease {
                pool: self.clone(),
                addr,
                binding,
                sender,
                reusable,
            }),
        })
    }

    /// The most recently returned usable idle connection of binding `id`, and how long it
    /// was idle.
    async fn take_idle(
        &self,
        addr: SocketAddr,
        id: u64,
    ) -> Option<(http1::SendRequest<RequestBody>, Duration)> {
        if id == Binding::NONE.id {
            return None;
        }
        loop {
            let idle = {
                let mut all = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                // An emptied list stays (until the reaper): putting back allocates nothing.
                all.get_mut(&id)?.pop()?
            };
            let idle_for = idle.since.elapsed();
            if !idle.usable(idle_for) {
                continue;
            }
            let mut sender = idle.sender;
            if sender.is_ready() {
                return Some((sender, idle_for));
            }
            // Returned at the end of its response body, its connection task may not have run
            // since: wait for it to take the next request (or to report it closed). Bounded,
            // because a connection whose answer came before its request body was all sent
            // (the client stalled) stays busy as long as that client does.
            match tokio::time::timeout(READY_WAIT, sender.ready()).await {
                Ok(Ok(())) => return Some((sender, idle_for)),
                Ok(Err(_)) => {}
                Err(_) => {
                    tracing::debug!(%addr, "idle upstream connection still busy, not reused");
                }
            }
        }
    }

    fn put_back(
        &self,
        addr: SocketAddr,
        binding: Binding,
        sender: http1::SendRequest<RequestBody>,
    ) {
        if sender.is_closed() || binding.id == Binding::NONE.id {
            return;
        }
        // A binding live when the request was routed is live until the epoch moves.
        if self.bindings.epoch() != binding.epoch && !self.bindings.is_live(binding.id) {
            tracing::debug!(%addr, "the binding of an upstream connection ended while it was busy, closing it");
            return;
        }
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(binding.id)
            .or_default()
            .push(Idle {
                sender,
                since: Instant::now(),
            });
    }

    /// Drops idle connections older than [`IDLE_TIMEOUT`] or closed by the actor.
    pub fn reap(&self) {
        let mut all = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|_, list| {
            list.retain(|i| i.usable(i.since.elapsed()));
            !list.is_empty()
        });
    }

    /// Closes the idle connections of bindings that ended (run when [`Bindings::epoch`]
    /// moves).
    pub fn drop_ended(&self) {
        let mut all = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|id, list| {
            let live = self.bindings.is_live(*id);
            if !live && !list.is_empty() {
                tracing::debug!(
                    binding = id,
                    connections = list.len(),
                    "binding ended, its idle upstream connections closed"
                );
            }
            live
        });
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        gateway: Option<SocketAddr>,
    ) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
        let after = self.connect_timeout;
        let stream = match gateway {
            None => tokio::time::timeout(after, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| UpstreamError::ConnectTimeout { addr, after })?
                .map_err(|source| UpstreamError::Connect { addr, source })?,
            Some(gw) => match self.tunnel(gw, addr).await {
                Ok(s) => {
                    self.gateway_tunnels.inc();
                    s
                }
                Err(e) => {
                    self.gateway_failures.inc();
                    tracing::info!(%addr, gateway = %gw, error = %e, "worker gateway tunnel failed");
                    return Err(e);
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        let open = self.open.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
            }
            open.dec();
        });
        Ok(sender)
    }
}

impl Pool {
    /// A connection to `addr` through worker gateway `gw` ([`crate::gateway::tunnel`]).
    async fn tunnel(
        &self,
        gw: SocketAddr,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpStream, UpstreamError> {
        let token = self
            .gateway_token
            .get()
            .map_err(|source| UpstreamError::Gateway { source })?;
        let after = self.connect_timeout;
        tokio::time::timeout(after, crate::gateway::tunnel(gw, addr, token.as_deref()))
            .await
            .map_err(|_| UpstreamError::GatewayTimeout { addr, after })?
            .map_err(|source| UpstreamError::Gateway { source })
    }
}

/// A connection on loan to one exchange.
struct Lease {
    pool: Arc<Pool>,
    addr: SocketAddr,
    binding: Binding,
    sender: http1::SendRequest<RequestBody>,
    reusable: bool,
}

/// A response body from the pool: when read to its end, its connection goes back to the
/// pool; dropped before, the connection closes (hyper cannot reuse it mid-body).
pub struct PooledBody {
    inner: Incoming,
    lease: Option<Lease>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some(l) = self.lease.take_if(|l| l.reusable) {
            l.pool.put_back(l.addr, l.binding, l.sender);
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.give_back();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
