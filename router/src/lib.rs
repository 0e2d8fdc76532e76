//! `substrate-router`: how users reach their actors.
//!
//! `http://<actor>.<atespace>.actors.resources.substrate.ate.dev/` (as `Host`, `:authority`
//! or an absolute proxy URI) is forwarded to the worker running the actor. The actor → address
//! map is kept in memory from watches on the apiserver ([`table`]), so a request to a running
//! actor costs no control-plane call; a request to a suspended `OnDemand` actor resumes it once
//! for all concurrent requests and waits until it is ready ([`resume`]). Traffic is reported
//! as `status.lastActiveTime` in batches ([`activity`]) so idle suspension knows when an actor
//! was last used; a request whose actor's recorded activity is stale (the first one after a
//! router restart, or one close to the idle deadline) waits for that write, so no request
//! that reached the router is cut by an idle suspend. A DNS responder ([`dns`]) answers for the same names from the same table.
//!
//! The proxy runs like Envoy's workers: `--threads` threads (one per CPU by default), each
//! with its own single-threaded event loop, its own listener on the same address
//! (`SO_REUSEPORT`, the kernel spreads connections) and its own upstream connection pool
//! ([`upstream`]), so
//! a connection is served on one thread from accept to close without cross-thread wake-ups.
//! The watches, the wakes' control-plane calls, DNS and the admin endpoints run on the main
//! runtime; the routing table, activity and metrics are shared.
//!
//! Listeners: the proxy (`--listen`), the admin endpoints `/healthz`, `/livez`, `/readyz`,
//! `/metrics` (`--admin-listen`), DNS over UDP and TCP (`--dns-listen`).
//!
//! An atespace whose `spec.httpAccess.policy` is `Authorized` admits only requests with a
//! bearer token of a user allowed the request's verb on `actors/proxy` of the actor (a
//! `TokenReview` and a `SubjectAccessReview` on the apiserver, cached), checked before the
//! actor is looked up or woken; the `Authorization` header is not forwarded ([`access`],
//! docs/tenancy.md). `Open` atespaces (the default) are not checked.
//!
//! Workers are reached at their address, or (`--worker-network gateway|auto`) through the
//! worker gateway of the node agent hosting them, with an HTTP `CONNECT` authenticated by
//! `--gateway-token-file` ([`gateway`]): worker addresses are node-local in a cluster.
//!
//! Answers the router makes itself (plain text naming the actor and what happened):
//!
//! | status | when |
//! |---|---|
//! | 400 | the host is malformed, or missing |
//! | 401 | `Authorized` atespace: no `Authorization: Bearer` token, or the token review did not authenticate it (with `WWW-Authenticate: Bearer realm="substrate"`) |
//! | 403 | `Authorized` atespace: `User "x" cannot <verb> actors/proxy "<actor>" in atespace "<atespace>"` |
//! | 404 | the host is not `<actor>.<atespace>.<suffix>`; the atespace or the actor does not exist (different messages; a name the table lacks is checked with one GET on the apiserver first, so an actor created a moment ago is found and waited for) |
//! | 409 | `spec.activation: Suspended` (not woken by traffic) |
//! | 502 | the actor refused the connection / closed it before answering; the wake ended in phase `Failed` (with the `Ready` condition's message) |
//! | 503 | no free worker (`Scheduled=False/NoFreeWorker`, with `Retry-After`); the apiserver refused the resume or is unreachable; the apiserver has the actor but the watch did not deliver it within 10 s; `Authorized` atespace: the token or access review could not be made |
//! | 504 | the actor did not become ready within `--wake-timeout` |

pub mod access;
pub mod activity;
pub mod binding;
pub mod dns;
pub mod gateway;
pub mod host;
pub mod metrics;
pub mod proxy;
pub mod resume;
pub mod table;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::activity::{Activity, Reporter};
use crate::host::Suffix;
use crate::metrics::Metrics;
use crate::proxy::{Proxy, ProxyBody};
use crate::resume::Waker;
use crate::table::Table;

/// The operator's default idle timeout (its `--default-idle-timeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Router settings (the binary's flags).
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// `None` disables the DNS responder.
    pub dns_listen: Option<SocketAddr>,
    /// Addresses DNS answers point at (this router).
    pub dns_addresses: Vec<IpAddr>,
    pub suffix: Suffix,
    pub wake_timeout: Duration,
    pub activity_interval: Duration,
    /// Idle timeout of `OnDemand` actors without `spec.idleTimeout`: the operator's
    /// `--default-idle-timeout` (both read `SUBSTRATE_DEFAULT_IDLE_TIMEOUT`). Activity is
    /// recorded early enough for this timeout ([`activity`]), so a longer value than the
    /// operator's weakens the guarantee; a shorter one only costs writes.
    pub default_idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// Proxy threads (0: one per CPU).
    pub threads: usize,
    /// How long `TokenReview` answers of `Authorized` atespaces' checks are cached.
    pub access_token_cache_ttl: Duration,
    /// How long `SubjectAccessReview` answers (allowed and denied) are cached.
    pub access_decision_cache_ttl: Duration,
    /// How workers are reached (`--worker-network`, `--node-name`).
    pub network: gateway::Network,
    /// The token sent to worker gateways (`--gateway-token-file`).
    pub gateway_token_file: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            dns_listen: Some(SocketAddr::from(([127, 0, 0, 1], 5353))),
            dns_addresses: vec![IpAddr::from([127, 0, 0, 1])],
            suffix: Suffix::default(),
            wake_timeout: Duration::from_secs(60),
            activity_interval: Duration::from_secs(10),
            default_idle_timeout: DEFAULT_IDLE_TIMEOUT,
            connect_timeout: Duration::from_secs(5),
            threads: 0,
            access_token_cache_ttl: access::DEFAULT_TTL,
            access_decision_cache_ttl: access::DEFAULT_TTL,
            network: gateway::Network::default(),
            gateway_token_file: None,
        }
    }
}

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding {what} on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting proxy thread {index}")]
    Thread {
        index: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the DNS responder")]
    Dns(#[from] dns::DnsError),
}

/// A running router.
pub struct Running {
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub dns_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    pub table: Arc<Table>,
    activity: Arc<Activity>,
    reporter: Arc<Reporter>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    dns: Option<dns::DnsServer>,
}

impl Running {
    /// Stops the listeners and background tasks (open connections end with their clients),
    /// then writes the activity not yet reported (bounded by
    /// [`activity::SHUTDOWN_FLUSH_TIMEOUT`]), so a graceful stop loses none.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(d) = self.dns.take() {
            d.stop().await;
        }
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        // Each proxy thread ends when its accept loop sees the shutdown; dropping its
        // runtime closes the connections it still had.
        for t in std::mem::take(&mut self.threads) {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        let last = self.reporter.flush(&self.activity, true);
        if tokio::time::timeout(activity::SHUTDOWN_FLUSH_TIMEOUT, last)
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?activity::SHUTDOWN_FLUSH_TIMEOUT, "the last activity report did not finish before shutdown");
        }
    }
}

/// Binds `addr` with `SO_REUSEPORT`, so each proxy thread can have its own listener.
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// The proxy listeners: the first on `addr` (port 0 picks one), the others on the address
/// the first got.
fn bind_proxy(addr: SocketAddr, n: usize) -> Result<Vec<std::net::TcpListener>, StartError> {
    let err = |source| StartError::Bind {
        what: "the proxy listener",
        addr,
        source,
    };
    // SO_REUSEPORT would also let this router share a port with another process of the
    // same user (a router left running): a plain bind first fails if anyone listens there.
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr).map_err(err)?);
    }
    let first = bind_reuseport(addr).map_err(err)?;
    let bound = first.local_addr().map_err(err)?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(bind_reuseport(bound).map_err(err)?);
    }
    Ok(all)
}

/// Starts proxy thread `index`: a single-threaded runtime serving `listener` with its own
/// upstream pool.
fn proxy_thread(
    index: usize,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> Result<std::thread::JoinHandle<()>, StartError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| StartError::Thread { index, source })?;
    std::thread::Builder::new()
        .name(format!("proxy-{index}"))
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(thread = index, error = %e, "proxy listener unusable");
                        return;
                    }
                };
                let bindings = shared.table.bindings().clone();
                let pool = upstream::Pool::new(
                    shared.connect_timeout,
                    &shared.metrics,
                    bindings.clone(),
                    shared.gateway_token.clone(),
                );
                let reaper = {
                    let pool = pool.clone();
                    tokio::spawn(async move {
                        let mut tick = tokio::time::interval(upstream::IDLE_TIMEOUT / 3);
                        let mut ended = bindings.subscribe();
                        let mut watching = true;
                        loop {
                            tokio::select! {
                                _ = tick.tick() => pool.reap(),
                                r = ended.changed(), if watching => match r {
                                    Ok(()) => pool.drop_ended(),
                                    Err(_) => watching = false,
                                },
                            }
                        }
                    })
                };
                let proxy = Arc::new(Proxy {
                    suffix: shared.suffix.clone(),
                    table: shared.table.clone(),
                    waker: shared.waker.clone(),
                    activity: shared.activity.clone(),
                    reporter: shared.reporter.clone(),
                    metrics: shared.metrics.clone(),
                    upstream: pool,
                    access: shared.access.clone(),
                });
                let _ = serve(listener, shutdown, move |peer| {
                    let (p, conn) = (proxy.clone(), proxy::Conn::new(peer));
                    move |req| p.clone().handle(req, conn.clone())
                })
                .await;
                reaper.abort();
            })
        })
        .map_err(|source| StartError::Thread { index, source })
}

/// What every proxy thread shares.
struct Shared {
    suffix: Suffix,
    table: Arc<Table>,
    waker: Arc<Waker>,
    activity: Arc<Activity>,
    reporter: Arc<Reporter>,
    metrics: Arc<Metrics>,
    connect_timeout: Duration,
    access: Arc<access::Access>,
    gateway_token: Arc<gateway::GatewayToken>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Accepts connections on `listener` and serves them (HTTP/1.1 and h2c); `per_conn` makes
/// each connection's request handler from its peer address.
fn serve<C, H, Fut>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    per_conn: C,
) -> JoinHandle<()>
where
    C: Fn(SocketAddr) -> H + Send + Sync + 'static,
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>>
        + Send
        + 'static,
{
    tokio::spawn(async move {
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // WebSockets over HTTP/2 (RFC 8441): advertise SETTINGS_ENABLE_CONNECT_PROTOCOL.
        builder.http2().enable_connect_protocol();
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let _ = stream.set_nodelay(true);
            let handle = per_conn(peer);
            let builder = builder.clone();
            tokio::spawn(async move {
                let svc = service_fn(handle);
                if let Err(e) = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    })
}

fn admin_text(status: u16, body: String, content_type: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// Starts the router with its API clients (a single `kube::Client` is standalone mode);
/// returns once every listener is bound. Actors and atespaces (watches, resumes, activity) are
/// Substrate's; templates, TokenReviews and SubjectAccessReviews the cluster's.
pub async fn start(
    config: Config,
    clients: impl Into<clients::Clients>,
) -> Result<Running, StartError> {
    let clients = clients.into();
    let client = clients.substrate.clone();
    let metrics = Arc::new(Metrics::default());
    tracing::info!(worker_network = ?config.network.mode, node = ?config.network.node, gateway_token_file = ?config.gateway_token_file, "worker network");
    let (table, table_task) = Table::start(&clients, config.network.clone());
    let activity = Arc::new(Activity::default());
    let reporter = Reporter::new(
        client.clone(),
        metrics.clone(),
        config.activity_interval,
        config.default_idle_timeout,
    );
    let waker = Waker::new(
        client.clone(),
        table.clone(),
        metrics.clone(),
        config.wake_timeout,
        config.connect_timeout,
    );
    let shared = Arc::new(Shared {
        suffix: config.suffix.clone(),
        table: table.clone(),
        waker,
        activity: activity.clone(),
        reporter: reporter.clone(),
        metrics: metrics.clone(),
        connect_timeout: config.connect_timeout,
        gateway_token: Arc::new(gateway::GatewayToken::new(
            config.gateway_token_file.clone(),
        )),
        access: Arc::new(access::Access::new(
            Arc::new(access::KubeReviewer::new(clients.cluster.clone())),
            config.access_token_cache_ttl,
            config.access_decision_cache_ttl,
            access::DEFAULT_CAPACITY,
        )),
    });
    let (shutdown, rx) = watch::channel(false);

    let n = match config.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let listeners = bind_proxy(config.listen, n)?;
    let http_addr = listeners[0]
        .local_addr()
        .map_err(|source| StartError::Bind {
            what: "the proxy listener",
            addr: config.listen,
            source,
        })?;
    let admin = bind("the admin listener", config.admin_listen).await?;
    let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
        what: "the admin listener",
        addr: config.admin_listen,
        source,
    })?;
    let dns = match config.dns_listen {
        Some(addr) => {
            let responder =
                dns::Responder::new(table.clone(), config.suffix.clone(), config.dns_addresses)?;
            Some(dns::serve(responder, addr).await?)
        }
        None => None,
    };
    let dns_addr = dns.as_ref().map(|d| d.addr);

    let mut threads = Vec::with_capacity(n);
    for (index, listener) in listeners.into_iter().enumerate() {
        match proxy_thread(index, listener, shared.clone(), rx.clone()) {
            Ok(t) => threads.push(t),
            Err(e) => {
                let _ = shutdown.send(true);
                return Err(e);
            }
        }
    }
    let (m, t) = (metrics.clone(), table.clone());
    let admin_task = serve(admin, rx, move |_peer| {
        let (m, t) = (m.clone(), t.clone());
        move |req: Request<Incoming>| {
            let (m, t) = (m.clone(), t.clone());
            async move {
                Ok(match req.uri().path() {
                    "/healthz" | "/livez" => admin_text(200, "ok\n".into(), "text/plain"),
                    "/readyz" if t.ready() => admin_text(200, "ok\n".into(), "text/plain"),
                    "/readyz" => admin_text(
                        503,
                        "the routing table has not synced with the apiserver yet\n".into(),
                        "text/plain",
                    ),
                    "/metrics" => admin_text(
                        200,
                        {
                            m.set_table_sizes(&t.sizes());
                            m.encode()
                        },
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                    _ => admin_text(404, "not found\n".into(), "text/plain"),
                })
            }
        }
    });
    let flush = tokio::spawn(activity::flush_loop(activity.clone(), reporter.clone()));
    tracing::info!(http = %http_addr, threads = n, admin = %admin_addr, dns = ?dns_addr, suffix = %config.suffix, "router listening");
    Ok(Running {
        http_addr,
        admin_addr,
        dns_addr,
        metrics,
        table,
        activity,
        reporter,
        shutdown,
        tasks: vec![admin_task, flush, table_task],
        threads,
        dns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_threads_share_one_port_and_a_port_in_use_is_refused() {
        let all = bind_proxy("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = all[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert!(all.iter().all(|l| l.local_addr().unwrap().port() == port));
        // Another router (listening with SO_REUSEPORT too) already serves that port.
        let taken = all[0].local_addr().unwrap();
        match bind_proxy(taken, 2) {
            Err(e @ StartError::Bind { .. }) => {
                assert!(e.to_string().contains(&taken.to_string()), "{e}")
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a second router shares {taken}"),
        }
    }
}
