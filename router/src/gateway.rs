//! How the router reaches a worker: directly at its address, or through the worker gateway
//! of the node agent hosting it (`nodeagent::gateway`).
//!
//! A worker's address is node-local (every node numbers its workers from the same range, and
//! the cluster does not route it), so a router on another node reaches it through that node's
//! agent: it opens a TCP connection to the gateway the actor's `status.worker.gateway`
//! advertises (`<ip>:<port>`, the node's address), sends
//!
//! ```text
//! CONNECT <worker address>:<port> HTTP/1.1
//! Host: <worker address>:<port>
//! Proxy-Authorization: Bearer <token of --gateway-token-file>
//! ```
//!
//! and, once the gateway answers `200`, speaks HTTP/1.1 to the actor over that connection as
//! it would over a direct one: the upstream pool files it under the actor's binding like any
//! other ([`crate::upstream`]). The cost is one more userspace hop (the agent copies the
//! bytes) and, for each new upstream connection, one more round trip.
//!
//! `--worker-network` ([`WorkerNetwork`]) picks the way, per actor ([`via`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `--worker-network`: how workers are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum WorkerNetwork {
    /// At their address (one machine; or a cluster whose nodes route the worker range).
    #[default]
    Direct,
    /// Through the gateway of the node agent hosting them, whenever it advertises one.
    Gateway,
    /// Through the gateway when the worker is on another node than this router
    /// (`--node-name`; unknown: another node), directly on the same node.
    Auto,
}

/// How long a token read from `--gateway-token-file` is used before the file is read again
/// (kubelet rotates projected tokens well before they expire).
pub const TOKEN_REREAD: Duration = Duration::from_secs(60);

/// The largest gateway answer head read.
const MAX_ANSWER: usize = 8 * 1024;

/// Where the router runs and how it reaches workers.
#[derive(Debug, Clone, Default)]
pub struct Network {
    pub mode: WorkerNetwork,
    /// The node this router runs on (`--node-name`).
    pub node: Option<String>,
}

impl Network {
    /// The gateway to reach a worker on `worker_node` through, given the gateway it
    /// advertises; `None`: directly.
    pub fn via(&self, worker_node: Option<&str>, gateway: Option<&str>) -> Option<SocketAddr> {
        via(self.mode, self.node.as_deref(), worker_node, gateway)
    }
}

/// The gateway to go through (`None`: directly). A worker that advertises no gateway (or one
/// that is not `<ip>:<port>`) is reached directly whatever the mode: there is no other way.
pub fn via(
    mode: WorkerNetwork,
    router_node: Option<&str>,
    worker_node: Option<&str>,
    gateway: Option<&str>,
) -> Option<SocketAddr> {
    let gateway = gateway?.parse::<SocketAddr>().ok()?;
    match mode {
        WorkerNetwork::Direct => None,
        WorkerNetwork::Gateway => Some(gateway),
        WorkerNetwork::Auto => {
            let same_node = matches!((router_node, worker_node), (Some(r), Some(w)) if r == w);
            (!same_node).then_some(gateway)
        }
    }
}

/// Why a tunnel through a gateway could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("reading the gateway token file {path}: {source}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to the worker gateway {gateway}: {source}")]
    Connect {
        gateway: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the worker gateway {gateway} answered CONNECT {target} with {status}: {message}")]
    Refused {
        gateway: SocketAddr,
        target: SocketAddr,
        status: u16,
        message: String,
    },
    #[error("the worker gateway {gateway} sent no valid answer to CONNECT {target}: {reason}")]
    BadAnswer {
        gateway: SocketAddr,
        target: SocketAddr,
        reason: String,
    },
}

/// The bearer token sent to gateways: the contents of `--gateway-token-file` (a projected
/// ServiceAccount token with the gateways' audience), read again every [`TOKEN_REREAD`].
#[derive(Debug)]
pub struct GatewayToken {
    path: Option<PathBuf>,
    cached: Mutex<Option<(String, Instant)>>,
}

impl GatewayToken {
    /// `None`: no token is sent (gateways answer `407`).
    pub fn new(path: Option<PathBuf>) -> Self {
        Self {
            path,
            cached: Mutex::new(None),
        }
    }

    /// The current token, if any.
    pub fn get(&self) -> Result<Option<String>, GatewayError> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let mut c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, at)) = c.as_ref()
            && at.elapsed() < TOKEN_REREAD
        {
            return Ok(Some(t.clone()));
        }
        let token = std::fs::read_to_string(path)
            .map_err(|source| GatewayError::Token {
                path: path.clone(),
                source,
            })?
            .trim()
            .to_string();
        *c = Some((token.clone(), Instant::now()));
        Ok(Some(token))
    }
}

/// The `CONNECT` request for `target`.
pub fn connect_request(target: SocketAddr, token: Option<&str>) -> String {
    let auth = token
        .map(|t| format!("Proxy-Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n")
}

/// The status code of a gateway's answer head, and its body if it carried one in `rest`.
pub fn answer_status(head: &[u8]) -> Result<u16, String> {
    let text = std::str::from_utf8(head).map_err(|_| "not UTF-8".to_string())?;
    let line = text.split("\r\n").next().unwrap_or_default();
    let mut parts = line.splitn(3, ' ');
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .map_err(|_| format!("status line {line:?}")),
        _ => Err(format!("status line {line:?}")),
    }
}

/// Opens a tunnel to `target` through `gateway`: the connection, ready for the bytes of the
/// target's protocol. Bounded by the caller's connect timeout.
pub async fn tunnel(
    gateway: SocketAddr,
    target: SocketAddr,
    token: Option<&str>,
) -> Result<TcpStream, GatewayError> {
    let connect_err = |source| GatewayError::Connect { gateway, source };
    let bad = |reason: String| GatewayError::BadAnswer {
        gateway,
        target,
        reason,
    };
    let mut s = TcpStream::connect(gateway).await.map_err(connect_err)?;
    let _ = s.set_nodelay(true);
    s.write_all(connect_request(target, token).as_bytes())
        .await
        .map_err(connect_err)?;
    // Read byte by byte up to the blank line: nothing of the actor's answers may be
    // consumed here (the gateway sends nothing after its 200 before the actor does, but a
    // refusal's body follows its head).
    let mut head = Vec::with_capacity(64);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_ANSWER {
            return Err(bad(format!("an answer head over {MAX_ANSWER} bytes")));
        }
        match s.read(&mut byte).await {
            Ok(0) => return Err(bad("the connection closed".into())),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(bad(e.to_string())),
        }
    }
    let status = answer_status(&head).map_err(bad)?;
    if status == 200 {
        return Ok(s);
    }
    // A refusal closes the connection after a short plain-text body: it says why.
    let mut body = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_millis(500),
        (&mut s).take(1024).read_to_end(&mut body),
    )
    .await;
    Err(GatewayError::Refused {
        gateway,
        target,
        status,
        message: String::from_utf8_lossy(&body).trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: &str = "192.0.2.10:7090";

    #[test]
    fn the_way_to_a_worker() {
        let gw: SocketAddr = GW.parse().expect("addr");
        use WorkerNetwork::*;
        // Direct: never the gateway.
        assert_eq!(via(Direct, Some("a"), Some("b"), Some(GW)), None);
        // Gateway: whenever one is advertised, same node or not.
        assert_eq!(via(Gateway, Some("a"), Some("a"), Some(GW)), Some(gw));
        assert_eq!(via(Gateway, None, Some("b"), Some(GW)), Some(gw));
        // Auto: another node, or a node we cannot tell, goes through the gateway.
        assert_eq!(via(Auto, Some("a"), Some("b"), Some(GW)), Some(gw));
        assert_eq!(via(Auto, Some("a"), Some("a"), Some(GW)), None);
        assert_eq!(via(Auto, None, Some("a"), Some(GW)), Some(gw));
        assert_eq!(via(Auto, Some("a"), None, Some(GW)), Some(gw));
        // No gateway advertised (or not <ip>:<port>): directly, whatever the mode.
        for mode in [Direct, Gateway, Auto] {
            assert_eq!(via(mode, Some("a"), Some("b"), None), None);
            assert_eq!(via(mode, Some("a"), Some("b"), Some("node-b:7090")), None);
        }
    }

    #[test]
    fn connect_request_and_answer() {
        let target: SocketAddr = "10.203.0.6:8080".parse().expect("addr");
        assert_eq!(
            connect_request(target, Some("t0k")),
            "CONNECT 10.203.0.6:8080 HTTP/1.1\r\nHost: 10.203.0.6:8080\r\nProxy-Authorization: Bearer t0k\r\n\r\n"
        );
        assert_eq!(
            connect_request(target, None),
            "CONNECT 10.203.0.6:8080 HTTP/1.1\r\nHost: 10.203.0.6:8080\r\n\r\n"
        );
        assert_eq!(
            answer_status(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Ok(200)
        );
        assert_eq!(
            answer_status(b"HTTP/1.0 407 Proxy Auth\r\nX: y\r\n\r\n"),
            Ok(407)
        );
        assert!(answer_status(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(answer_status(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }

    #[test]
    fn token_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "abc.def\n").expect("write");
        let t = GatewayToken::new(Some(path.clone()));
        assert_eq!(t.get().expect("token").as_deref(), Some("abc.def"));
        // Cached: a rotation is picked up at the next re-read, not at once.
        std::fs::write(&path, "rotated").expect("write");
        assert_eq!(t.get().expect("token").as_deref(), Some("abc.def"));
        assert!(GatewayToken::new(None).get().expect("no token").is_none());
        assert!(
            GatewayToken::new(Some(dir.path().join("missing")))
                .get()
                .is_err()
        );
    }
}
