//! Upstream HTTP/1.1 connections to actors: one pool per proxy thread, built on hyper's
//! connection API (`hyper::client::conn::http1`).
//!
//! A proxy thread is a single-threaded runtime, so its pool is touched by one thread only
//! (its mutex is never contended) and each connection's task runs on the thread that uses
//! it. A request takes the most recently returned idle connection to its actor's address
//! (LIFO: the fewest connections stay warm), or opens one; the connection comes back when
//! the response body has been read to its end. A request that a reused connection could not
//! even send (the actor closed it while idle) is retried once on a new connection; a
//! connection still busy [`READY_WAIT`] after it came back (its answer arrived before its
//! client's upload was all sent) is passed over. Idle
//! connections close after [`IDLE_TIMEOUT`]; there is no cap per address (a cap closes the
//! extra connections opened under load as they come back, and that connect/close churn
//! overflows an actor's listen backlog).
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
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Metrics;

/// An idle connection older than this is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a request waits for an idle connection to become ready before it takes another.
pub const READY_WAIT: Duration = Duration::from_millis(500);

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
        matches!(self, Self::ConnectTimeout { .. } | Self::Connect { .. })
    }
}

struct Idle {
    sender: http1::SendRequest<Incoming>,
    since: Instant,
}

impl Idle {
    /// Not closed by the actor and not idle for longer than [`IDLE_TIMEOUT`].
    fn usable(&self) -> bool {
        !self.sender.is_closed() && self.since.elapsed() <= IDLE_TIMEOUT
    }
}

/// The upstream connections of one proxy thread.
pub struct Pool {
    /// Keyed by worker address (from our own table, not from clients: a fast hash).
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>>,
    connect_timeout: Duration,
    open: Gauge,
}

impl Pool {
    pub fn new(connect_timeout: Duration, metrics: &Metrics) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(HashMap::default()),
            connect_timeout,
            open: metrics.upstream_connections.clone(),
        })
    }

    /// Sends `req` to `addr`; the response's body hands the connection back to the pool
    /// once it has been read to the end (a `101` answer keeps it: it becomes the tunnel).
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<Incoming>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        if let Some(mut sender) = self.take_idle(addr).await {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.lease(addr, sender, resp)),
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection was closed while idle. A new one gets it.
                    Some(back) => {
                        tracing::debug!(%addr, error = %e.error(), "idle upstream connection unusable, reconnecting");
                        req = back;
                    }
                    None => {
                        return Err(UpstreamError::Exchange {
                            source: e.into_error(),
                        });
                    }
                },
            }
        }
        let mut sender = self.connect(addr).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| UpstreamError::Exchange { source })?;
        Ok(self.lease(addr, sender, resp))
    }

    fn lease(
        self: &Arc<Self>,
        addr: SocketAddr,
        sender: http1::SendRequest<Incoming>,
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
                sender,
                reusable,
            }),
        })
    }

    /// The most recently returned usable idle connection to `addr`.
    async fn take_idle(&self, addr: SocketAddr) -> Option<http1::SendRequest<Incoming>> {
        loop {
            let idle = {
                let mut all = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                let list = all.get_mut(&addr)?;
                let idle = list.pop();
                if list.is_empty() {
                    all.remove(&addr);
                }
                idle?
            };
            if !idle.usable() {
                continue;
            }
            let mut sender = idle.sender;
            if sender.is_ready() {
                return Some(sender);
            }
            // Returned at the end of its response body, its connection task may not have run
            // since: wait for it to take the next request (or to report it closed). Bounded,
            // because a connection whose answer came before its request body was all sent
            // (the client stalled) stays busy as long as that client does.
            match tokio::time::timeout(READY_WAIT, sender.ready()).await {
                Ok(Ok(())) => return Some(sender),
                Ok(Err(_)) => {}
                Err(_) => {
                    tracing::debug!(%addr, "idle upstream connection still busy, not reused");
                }
            }
        }
    }

    fn put_back(&self, addr: SocketAddr, sender: http1::SendRequest<Incoming>) {
        if sender.is_closed() {
            return;
        }
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(addr)
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
            list.retain(Idle::usable);
            !list.is_empty()
        });
    }

    async fn connect(
        &self,
        addr: SocketAddr,
    ) -> Result<http1::SendRequest<Incoming>, UpstreamError> {
        let stream =
            tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| UpstreamError::ConnectTimeout {
                    addr,
                    after: self.connect_timeout,
                })?
                .map_err(|source| UpstreamError::Connect { addr, source })?;
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

/// A connection on loan to one exchange.
struct Lease {
    pool: Arc<Pool>,
    addr: SocketAddr,
    sender: http1::SendRequest<Incoming>,
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
            l.pool.put_back(l.addr, l.sender);
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
