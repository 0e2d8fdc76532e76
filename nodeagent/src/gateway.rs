//! The worker gateway: how a router on another node reaches this node's workers.
//!
//! A worker's address comes from a node-local range (`10.203.0.0/16` by default, picked by the
//! worker index), so the same address can exist on every node and the cluster does not route
//! it. The node agent (a `hostNetwork` pod: its listener is on the node's address) serves
//! `--gateway-listen` and the router tunnels through it:
//!
//! ```text
//! router                                  node agent (gateway)           worker sandbox
//!   CONNECT 10.203.0.6:8080 HTTP/1.1  -->
//!   Proxy-Authorization: Bearer <token>    TokenReview (cached)
//!                                          user allowed? address one of
//!                                          this node's workers?
//!                                          connect 10.203.0.6:8080  ----> accept
//!   <-- HTTP/1.1 200 Connection established
//!   HTTP/1.1 to the actor, as direct  <==== bytes copied both ways ====>
//! ```
//!
//! The wire format is HTTP/1.1 `CONNECT` (RFC 9110 §9.3.6) with the target in authority form,
//! which must be `<ip>:<port>` (`[v6]:port`): no names are resolved. The checks, in order, each
//! with its answer (a refused request is answered and the connection closed; nothing is
//! dialled):
//!
//! 1. the head is read within [`HEAD_TIMEOUT`], at most [`MAX_HEAD`] bytes (`408`, `431`),
//!    parses (`400`) and is a `CONNECT` (`405`);
//! 2. `Proxy-Authorization: Bearer <token>` is present (`407` with
//!    `Proxy-Authenticate: Bearer realm="substrate-gateway"`), and a `TokenReview` (with the
//!    gateway's audiences, `--gateway-token-audience`) authenticates it (`407`; a review that
//!    could not be made: `503`);
//! 3. the user is one of `--gateway-allowed-users` (`403`);
//! 4. the target is `<ip>:<port>` (`400`) and the IP is the address of a worker this agent
//!    hosts (`403`): the gateway is never an open proxy, not even to the node itself;
//! 5. the worker accepts the connection within [`DIAL_TIMEOUT`] (`502`, `504`).
//!
//! Then `200 Connection established` and the bytes are copied both ways until either side
//! closes. Token reviews are cached by the token's SHA-256 (never stored or logged) for
//! `--gateway-token-cache-ttl`, refusals too; a review that failed is not cached.
//!
//! The tunnel is plain TCP: what the router sends through it (and its token) crosses the
//! node network unencrypted, as direct traffic to a worker would. A dedicated audience
//! (`substrate-gateway`, a projected ServiceAccount token in the router's pod) keeps that
//! token useless against kube-apiserver and any other audience.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1 as authnv1;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use ttl_cache::TtlCache;

/// The audience the router's gateway token is issued for (its projected ServiceAccount
/// token), and the one the gateway's `TokenReview`s ask for by default.
pub const DEFAULT_AUDIENCE: &str = "substrate-gateway";
/// The user allowed by default: the router's ServiceAccount.
pub const DEFAULT_ALLOWED_USER: &str = "system:serviceaccount:substrate-system:substrate-router";
/// The `Proxy-Authenticate` challenge of a `407`.
pub const CHALLENGE: &str = "Bearer realm=\"substrate-gateway\"";
/// The largest request head read.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a `TokenReview` may take.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the worker has to accept the connection.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the token cache.
pub const CACHE_CAPACITY: usize = 10_000;

/// The gateway's settings (the node agent's `--gateway-*` flags).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The `TokenReview`'s `spec.audiences` (empty: the apiserver's own audiences).
    pub audiences: Vec<String>,
    /// Users (as the review names them) allowed to open tunnels.
    pub allowed_users: Vec<String>,
    /// How long a review's answer is cached.
    pub cache_ttl: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            audiences: vec![DEFAULT_AUDIENCE.into()],
            allowed_users: vec![DEFAULT_ALLOWED_USER.into()],
            cache_ttl: Duration::from_secs(60),
        }
    }
}

/// The addresses of the workers this agent hosts (kept by the agent's worker sync): the only
/// places the gateway connects to.
#[derive(Debug, Default)]
pub struct Targets {
    by_worker: RwLock<BTreeMap<String, IpAddr>>,
}

impl Targets {
    /// Worker `name` is at `ip`.
    pub fn set(&self, name: &str, ip: IpAddr) {
        let mut m = self.by_worker.write().unwrap_or_else(|e| e.into_inner());
        if m.get(name) != Some(&ip) {
            m.insert(name.to_string(), ip);
        }
    }

    /// Forgets the workers `keep` says no to (retired).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut m = self.by_worker.write().unwrap_or_else(|e| e.into_inner());
        m.retain(|name, _| keep(name));
    }

    /// The worker at `ip`, if it is one of ours.
    pub fn worker_at(&self, ip: IpAddr) -> Option<String> {
        let m = self.by_worker.read().unwrap_or_else(|e| e.into_inner());
        m.iter().find(|(_, a)| **a == ip).map(|(n, _)| n.clone())
    }
}

/// A parsed `CONNECT` request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The request target (authority form), unparsed.
    pub target: String,
    /// The token of `Proxy-Authorization: Bearer <token>`.
    pub token: Option<String>,
}

/// Why a tunnel was not opened; each is one HTTP answer ([`Refusal::response`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the request head did not arrive within {HEAD_TIMEOUT:?}")]
    HeadTimeout,
    #[error("the request head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("the worker gateway serves CONNECT only, not {0}")]
    Method(String),
    #[error("no Proxy-Authorization: Bearer token")]
    NoToken,
    #[error("the bearer token is not valid (Unauthorized)")]
    Unauthenticated,
    #[error("user {0:?} may not use the worker gateway")]
    Forbidden(String),
    #[error("CONNECT target {0:?} is not <ip>:<port>")]
    Target(String),
    #[error("{0} is not the address of a worker of this node")]
    NotAWorker(IpAddr),
    #[error("the caller could not be authenticated: TokenReview failed ({0})")]
    Unavailable(String),
    #[error("worker {worker} at {addr}: {error}")]
    Dial {
        worker: String,
        addr: SocketAddr,
        error: String,
    },
    #[error("worker {worker} at {addr} did not accept the connection within {DIAL_TIMEOUT:?}")]
    DialTimeout { worker: String, addr: SocketAddr },
}

impl Refusal {
    /// The HTTP status code and reason phrase.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Self::HeadTimeout => (408, "Request Timeout"),
            Self::HeadTooLarge => (431, "Request Header Fields Too Large"),
            Self::Malformed(_) | Self::Target(_) => (400, "Bad Request"),
            Self::Method(_) => (405, "Method Not Allowed"),
            Self::NoToken | Self::Unauthenticated => (407, "Proxy Authentication Required"),
            Self::Forbidden(_) | Self::NotAWorker(_) => (403, "Forbidden"),
            Self::Unavailable(_) => (503, "Service Unavailable"),
            Self::Dial { .. } => (502, "Bad Gateway"),
            Self::DialTimeout { .. } => (504, "Gateway Timeout"),
        }
    }

    /// A short label for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::HeadTimeout => "head_timeout",
            Self::HeadTooLarge => "head_too_large",
            Self::Malformed(_) => "malformed",
            Self::Method(_) => "method",
            Self::NoToken => "no_token",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::Target(_) => "bad_target",
            Self::NotAWorker(_) => "not_a_worker",
            Self::Unavailable(_) => "unavailable",
            Self::Dial { .. } => "dial_failed",
            Self::DialTimeout { .. } => "dial_timeout",
        }
    }

    /// The whole answer (the connection is closed after it).
    pub fn response(&self) -> Vec<u8> {
        let (code, phrase) = self.status();
        let body = format!("{self}\n");
        let challenge = if code == 407 {
            format!("Proxy-Authenticate: {CHALLENGE}\r\n")
        } else {
            String::new()
        };
        format!(
            "HTTP/1.1 {code} {phrase}\r\n{challenge}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// The answer that opens a tunnel.
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// Where the request head ends (the index just past its blank line), once it has.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses a request head (through its blank line): a `CONNECT` with its target and token.
pub fn parse_head(head: &[u8]) -> Result<Connect, Refusal> {
    let text = std::str::from_utf8(head)
        .map_err(|_| Refusal::Malformed("the request head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Malformed(format!("request line {line:?}")));
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(Refusal::Malformed(format!("HTTP version {version:?}")));
    }
    if method.is_empty() || target.is_empty() {
        return Err(Refusal::Malformed(format!("request line {line:?}")));
    }
    let mut token = None;
    for h in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = h.split_once(':') else {
            return Err(Refusal::Malformed(format!("header line {h:?}")));
        };
        if name.is_empty() || name.ends_with(char::is_whitespace) {
            return Err(Refusal::Malformed(format!("header name {name:?}")));
        }
        if name.eq_ignore_ascii_case("proxy-authorization") {
            token = bearer(value).map(str::to_string);
        }
    }
    if method != "CONNECT" {
        return Err(Refusal::Method(method.to_string()));
    }
    Ok(Connect {
        target: target.to_string(),
        token,
    })
}

/// The token of a `Bearer <token>` credential (the scheme case-insensitive, as kube's
/// bearer token authenticator reads `Authorization`).
pub fn bearer(value: &str) -> Option<&str> {
    let mut parts = value.trim().splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A `CONNECT` target: an IP literal and a port (`10.203.0.6:8080`, `[fd00::6]:8080`); names
/// are refused (nothing is resolved).
pub fn parse_target(target: &str) -> Result<SocketAddr, Refusal> {
    target
        .parse::<SocketAddr>()
        .ok()
        .filter(|a| a.port() != 0)
        .ok_or_else(|| Refusal::Target(target.to_string()))
}

/// Whether `user` may open tunnels.
pub fn admit(user: &str, allowed: &[String]) -> Result<(), Refusal> {
    if allowed.iter().any(|a| a == user) {
        Ok(())
    } else {
        Err(Refusal::Forbidden(user.to_string()))
    }
}

/// Authenticates bearer tokens (a trait so tests run without an apiserver).
pub trait TokenReviewer: Send + Sync {
    /// The user the token authenticates as; `Ok(None)` when it does not.
    fn review(&self, token: &str) -> BoxFuture<'_, Result<Option<String>, String>>;
}

/// A [`TokenReviewer`] that creates `TokenReview`s (`authentication.k8s.io/v1`).
pub struct KubeTokenReviewer {
    api: kube::Api<authnv1::TokenReview>,
    audiences: Vec<String>,
}

impl KubeTokenReviewer {
    pub fn new(client: kube::Client, audiences: Vec<String>) -> Self {
        Self {
            api: kube::Api::all(client),
            audiences,
        }
    }
}

impl TokenReviewer for KubeTokenReviewer {
    fn review(&self, token: &str) -> BoxFuture<'_, Result<Option<String>, String>> {
        let review = authnv1::TokenReview {
            metadata: Default::default(),
            spec: authnv1::TokenReviewSpec {
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
                token: Some(token.to_string()),
            },
            status: None,
        };
        Box::pin(async move {
            let created = self
                .api
                .create(&Default::default(), &review)
                .await
                .map_err(|e| e.to_string())?;
            let st = created.status.unwrap_or_default();
            if st.authenticated != Some(true) {
                return Ok(None);
            }
            Ok(st.user.and_then(|u| u.username).filter(|u| !u.is_empty()))
        })
    }
}

/// Counters of the gateway (logged; read by tests).
#[derive(Debug, Default)]
pub struct Stats {
    pub tunnels: AtomicU64,
    pub refused: AtomicU64,
}

/// The worker gateway (see the module docs).
pub struct Gateway {
    cfg: GatewayConfig,
    targets: Arc<Targets>,
    reviewer: Arc<dyn TokenReviewer>,
    tokens: TtlCache<[u8; 32], Option<String>, String>,
    pub stats: Stats,
}

impl Gateway {
    pub fn new(
        cfg: GatewayConfig,
        targets: Arc<Targets>,
        reviewer: Arc<dyn TokenReviewer>,
    ) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            targets,
            reviewer,
            tokens: TtlCache::new(CACHE_CAPACITY),
            stats: Stats::default(),
        })
    }

    /// Serves `listener` until the future is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(self.clone().connection(stream, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "worker gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn connection(self: Arc<Self>, mut client: TcpStream, peer: SocketAddr) {
        let mut buf = Vec::with_capacity(1024);
        let opened = match self.open(&mut client, &mut buf).await {
            Ok(o) => o,
            Err(refusal) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%peer, reason = refusal.reason(), error = %refusal, "worker gateway refused a tunnel");
                let _ = client.write_all(&refusal.response()).await;
                let _ = client.shutdown().await;
                return;
            }
        };
        let Opened {
            mut upstream,
            worker,
            addr,
            user,
            rest,
        } = opened;
        if client.write_all(ESTABLISHED).await.is_err()
            || (!rest.is_empty() && upstream.write_all(&rest).await.is_err())
        {
            return;
        }
        self.stats.tunnels.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, %worker, %addr, %user, "worker gateway tunnel opened");
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => {
                tracing::debug!(%peer, %worker, %addr, bytes_up = up, bytes_down = down, "worker gateway tunnel closed")
            }
            Err(e) => {
                tracing::debug!(%peer, %worker, %addr, error = %e, "worker gateway tunnel ended with an error")
            }
        }
    }

    /// Reads and checks the head and connects to the worker.
    async fn open(&self, client: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Opened, Refusal> {
        let end = tokio::time::timeout(HEAD_TIMEOUT, read_head(client, buf))
            .await
            .map_err(|_| Refusal::HeadTimeout)??;
        let connect = parse_head(&buf[..end])?;
        let rest = buf[end..].to_vec();
        let token = connect.token.as_deref().ok_or(Refusal::NoToken)?;
        let user = self.authenticate(token).await?;
        admit(&user, &self.cfg.allowed_users)?;
        let addr = parse_target(&connect.target)?;
        let worker = self
            .targets
            .worker_at(addr.ip())
            .ok_or(Refusal::NotAWorker(addr.ip()))?;
        let upstream = match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(Refusal::Dial {
                    worker,
                    addr,
                    error: e.to_string(),
                });
            }
            Err(_) => return Err(Refusal::DialTimeout { worker, addr }),
        };
        let _ = upstream.set_nodelay(true);
        Ok(Opened {
            upstream,
            worker,
            addr,
            user,
            rest,
        })
    }

    /// The user `token` authenticates as (cached).
    async fn authenticate(&self, token: &str) -> Result<String, Refusal> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let ttl = self.cfg.cache_ttl;
        let user = self
            .tokens
            .get_or_fetch(
                &digest,
                |_| ttl,
                || async {
                    tokio::time::timeout(REVIEW_TIMEOUT, self.reviewer.review(token))
                        .await
                        .map_err(|_| format!("no answer within {REVIEW_TIMEOUT:?}"))?
                },
            )
            .await
            .map_err(Refusal::Unavailable)?;
        user.ok_or(Refusal::Unauthenticated)
    }
}

struct Opened {
    upstream: TcpStream,
    worker: String,
    addr: SocketAddr,
    user: String,
    /// Bytes the client sent after its head (for the worker).
    rest: Vec<u8>,
}

/// Reads into `buf` until it holds a whole head; the head's length.
async fn read_head(client: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, Refusal> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(buf) {
            return Ok(end);
        }
        if buf.len() >= MAX_HEAD {
            return Err(Refusal::HeadTooLarge);
        }
        let n = client
            .read(&mut chunk)
            .await
            .map_err(|e| Refusal::Malformed(format!("reading the request: {e}")))?;
        if n == 0 {
            return Err(Refusal::Malformed(
                "the connection closed before the request head ended".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_connect() {
        let c = parse_head(
            b"CONNECT 10.203.0.6:8080 HTTP/1.1\r\nHost: 10.203.0.6:8080\r\nproxy-authorization: bearer abc.def\r\n\r\n",
        )
        .expect("parses");
        assert_eq!(c.target, "10.203.0.6:8080");
        assert_eq!(c.token.as_deref(), Some("abc.def"));
        let c = parse_head(b"CONNECT [fd00::6]:80 HTTP/1.0\r\n\r\n").expect("parses");
        assert_eq!(c.token, None);
        assert_eq!(
            parse_target(&c.target),
            Ok("[fd00::6]:80".parse().expect("addr"))
        );
    }

    #[test]
    fn refuses_what_is_not_a_connect() {
        assert_eq!(
            parse_head(b"GET http://10.203.0.6:8080/ HTTP/1.1\r\n\r\n"),
            Err(Refusal::Method("GET".into()))
        );
        for bad in [
            &b"CONNECT 10.203.0.6:8080\r\n\r\n"[..],
            b"CONNECT  10.203.0.6:8080 HTTP/1.1\r\n\r\n",
            b"CONNECT 10.203.0.6:8080 HTTP/2\r\n\r\n",
            b"CONNECT 10.203.0.6:8080 HTTP/1.1\r\nno colon\r\n\r\n",
            b"CONNECT 10.203.0.6:8080 HTTP/1.1\r\nName : v\r\n\r\n",
            b"CONNECT \xff:1 HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(bad), Err(Refusal::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A token with another scheme is no token.
        let c =
            parse_head(b"CONNECT 1.2.3.4:5 HTTP/1.1\r\nProxy-Authorization: Basic eA==\r\n\r\n")
                .expect("parses");
        assert_eq!(c.token, None);
    }

    #[test]
    fn targets_are_ip_literals_with_a_port() {
        assert_eq!(
            parse_target("10.203.0.6:8080"),
            Ok(SocketAddr::from(([10, 203, 0, 6], 8080)))
        );
        for bad in [
            "localhost:8080",
            "10.203.0.6",
            "10.203.0.6:0",
            "10.203.0.6:99999",
            "fd00::6:80",
            "worker.example:80",
            "",
        ] {
            assert_eq!(parse_target(bad), Err(Refusal::Target(bad.into())), "{bad}");
        }
    }

    #[test]
    fn only_allowed_users_and_own_workers() {
        let allowed = vec![DEFAULT_ALLOWED_USER.to_string()];
        assert_eq!(admit(DEFAULT_ALLOWED_USER, &allowed), Ok(()));
        assert_eq!(
            admit("system:serviceaccount:team-a:app", &allowed),
            Err(Refusal::Forbidden(
                "system:serviceaccount:team-a:app".into()
            ))
        );
        let t = Targets::default();
        let ip: IpAddr = "10.203.0.6".parse().expect("ip");
        assert_eq!(t.worker_at(ip), None);
        t.set("n1-pool-0", ip);
        t.set("n1-pool-1", "10.203.0.10".parse().expect("ip"));
        assert_eq!(t.worker_at(ip).as_deref(), Some("n1-pool-0"));
        assert_eq!(t.worker_at("127.0.0.1".parse().expect("ip")), None);
        t.retain(|n| n != "n1-pool-0");
        assert_eq!(t.worker_at(ip), None);
    }

    #[test]
    fn answers_map_to_statuses() {
        let cases = [
            (Refusal::NoToken, 407),
            (Refusal::Unauthenticated, 407),
            (Refusal::Forbidden("u".into()), 403),
            (Refusal::NotAWorker("127.0.0.1".parse().expect("ip")), 403),
            (Refusal::Method("GET".into()), 405),
            (Refusal::Target("x".into()), 400),
            (Refusal::HeadTooLarge, 431),
            (Refusal::Unavailable("down".into()), 503),
        ];
        for (r, code) in cases {
            assert_eq!(r.status().0, code, "{r}");
            let text = String::from_utf8(r.response()).expect("utf-8");
            assert!(text.starts_with(&format!("HTTP/1.1 {code} ")), "{text}");
            assert_eq!(
                text.contains(&format!("Proxy-Authenticate: {CHALLENGE}\r\n")),
                code == 407,
                "{text}"
            );
            let (head, body) = text.split_once("\r\n\r\n").expect("head");
            assert!(
                head.contains(&format!("Content-Length: {}\r\n", body.len())),
                "{text}"
            );
        }
        assert_eq!(head_end(b"CONNECT a:1 HTTP/1.1\r\n\r\nxy"), Some(24));
        assert_eq!(head_end(b"CONNECT a:1 HTTP/1.1\r\n"), None);
    }

    /// Users by token; counts the reviews.
    struct Fake {
        reviews: AtomicU64,
    }

    impl TokenReviewer for Fake {
        fn review(&self, token: &str) -> BoxFuture<'_, Result<Option<String>, String>> {
            self.reviews.fetch_add(1, Ordering::Relaxed);
            let user = match token {
                "router" => Some(DEFAULT_ALLOWED_USER.to_string()),
                "tenant" => Some("system:serviceaccount:team-a:app".to_string()),
                _ => None,
            };
            Box::pin(async move { Ok(user) })
        }
    }

    async fn exchange(gw: SocketAddr, request: &str) -> (String, TcpStream) {
        let mut s = TcpStream::connect(gw).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        read_head(&mut s, &mut buf).await.expect("answer head");
        (String::from_utf8_lossy(&buf).into_owned(), s)
    }

    /// The whole gateway on loopback: a "worker" listener on 127.0.0.1 that this agent hosts
    /// (registered in the targets), and one it does not.
    #[tokio::test]
    async fn tunnels_only_for_allowed_users_to_own_workers() {
        let worker = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let worker_addr = worker.local_addr().expect("addr");
        let stranger = TcpListener::bind("127.0.0.2:0").await.expect("bind");
        let stranger_addr = stranger.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = worker.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 5];
                    if s.read_exact(&mut b).await.is_ok() {
                        let _ = s.write_all(&b.to_ascii_uppercase()).await;
                    }
                });
            }
        });
        let targets = Arc::new(Targets::default());
        targets.set("w-0", worker_addr.ip());
        let fake = Arc::new(Fake {
            reviews: AtomicU64::new(0),
        });
        let gw = Gateway::new(GatewayConfig::default(), targets, fake.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let gw_addr = listener.local_addr().expect("addr");
        tokio::spawn(gw.clone().serve(listener));

        // Allowed, to a worker: 200, then bytes both ways (one sent with the head).
        let (head, mut s) = exchange(
            gw_addr,
            &format!(
                "CONNECT {worker_addr} HTTP/1.1\r\nProxy-Authorization: Bearer router\r\n\r\nhel"
            ),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        s.write_all(b"lo").await.expect("write");
        let mut b = [0u8; 5];
        s.read_exact(&mut b).await.expect("echo");
        assert_eq!(&b, b"HELLO");

        let cases = [
            (format!("CONNECT {worker_addr} HTTP/1.1\r\n\r\n"), 407),
            (
                format!(
                    "CONNECT {worker_addr} HTTP/1.1\r\nProxy-Authorization: Bearer nobody\r\n\r\n"
                ),
                407,
            ),
            (
                format!(
                    "CONNECT {worker_addr} HTTP/1.1\r\nProxy-Authorization: Bearer tenant\r\n\r\n"
                ),
                403,
            ),
            (
                format!(
                    "CONNECT {stranger_addr} HTTP/1.1\r\nProxy-Authorization: Bearer router\r\n\r\n"
                ),
                403,
            ),
            (
                "CONNECT localhost:80 HTTP/1.1\r\nProxy-Authorization: Bearer router\r\n\r\n"
                    .into(),
                400,
            ),
            (
                format!(
                    "GET http://{worker_addr}/ HTTP/1.1\r\nProxy-Authorization: Bearer router\r\n\r\n"
                ),
                405,
            ),
        ];
        for (req, code) in cases {
            let (head, _) = exchange(gw_addr, &req).await;
            assert!(
                head.starts_with(&format!("HTTP/1.1 {code} ")),
                "{req:?}: {head}"
            );
        }
        // Nothing reached the stranger.
        let accepted = tokio::time::timeout(Duration::from_millis(200), stranger.accept()).await;
        assert!(accepted.is_err(), "the gateway connected to a non-worker");
        assert_eq!(gw.stats.tunnels.load(Ordering::Relaxed), 1);
        assert_eq!(gw.stats.refused.load(Ordering::Relaxed), 6);
        // One review per distinct token (refusals cached too).
        assert_eq!(fake.reviews.load(Ordering::Relaxed), 3);
    }
}
