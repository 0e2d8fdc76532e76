//! The worker gateway in cluster mode (issue 14): a router on another node reaches a worker
//! through the node agent's gateway (`nodeagent::gateway`, `router::gateway`).
//!
//! The control plane is envtest's (as `cluster.rs`), the operator, the node agent (real runsc
//! sandboxes) and the router are host processes with their ServiceAccount tokens and RBAC
//! (`config/rbac/`): the agent's `TokenReview`s go to kube-apiserver. The router runs with
//! `--worker-network=auto` and a `--node-name` other than the agent's, so it must go through
//! the gateway (on loopback here; the node's address in a cluster), authenticated by a
//! ServiceAccount token of audience `substrate-gateway` (the projected token of its pod).
//!
//! - The agent advertises the gateway on its Workers and on the actor it runs; a request
//!   through the router wakes the actor and gets its answer through the gateway (the router's
//!   `gateway_tunnels` counter moves).
//! - `CONNECT` without a token: 407; with the router's token of kube-apiserver's own audience:
//!   407; with a token of another ServiceAccount (right audience): 403; to an address that is
//!   not one of the agent's workers: 403 and nothing is connected there; the router's token to
//!   the worker: 200 and the actor answers over the tunnel.
//! - Latency through the router, gateway against direct (printed, not asserted).
//!
//! Worker range 10.229.0.0/16, index base 2400. Skipped (with a message) without root, runsc
//! or `KUBEBUILDER_ASSETS`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use e2e::{Options, System, condition, eventually, first_int, free_port, phase};

const SUFFIX: &str = "actors.resources.substrate.ate.dev";
const AUDIENCE: &str = nodeagent::gateway::DEFAULT_AUDIENCE;

/// `GET /` through the router for `<actor>.team-a`: (status, body).
fn through_router(router: SocketAddr, actor: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Host: {actor}.team-a.{SUFFIX}"))
        .arg(format!("http://{router}/"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A counter of the router's `/metrics`.
fn metric(admin: SocketAddr, name: &str) -> f64 {
    let m = e2e::http("GET", &format!("http://{admin}/metrics"), None).unwrap_or_default();
    m.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0.0)
}

/// Reads one HTTP/1.1 response (head and a `Content-Length` body): (status, body).
fn read_response(r: &mut BufReader<TcpStream>) -> (u16, String) {
    let mut status = String::new();
    r.read_line(&mut status).expect("status line");
    let code = status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line {status:?}"));
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("header line");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().expect("content-length");
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).expect("body");
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// Sends `CONNECT target` to the gateway: its answer (status, body) and, on 200, the tunnel.
fn connect(
    gateway: SocketAddr,
    target: &str,
    token: Option<&str>,
) -> (u16, String, BufReader<TcpStream>) {
    let mut s = TcpStream::connect(gateway).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let auth = token
        .map(|t| format!("Proxy-Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n"
    )
    .expect("write");
    let mut r = BufReader::new(s);
    let (code, body) = read_response(&mut r);
    (code, body, r)
}

/// Mean latency of `n` sequential `GET /healthz` of the actor through the router on one
/// kept-alive connection.
fn mean_latency(router: SocketAddr, actor: &str, n: u32) -> Duration {
    let s = TcpStream::connect(router).expect("connect to the router");
    s.set_nodelay(true).expect("nodelay");
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {actor}.team-a.{SUFFIX}\r\n\r\n");
    let start = Instant::now();
    for _ in 0..n {
        w.write_all(req.as_bytes()).expect("write");
        let (code, body) = read_response(&mut r);
        assert_eq!(code, 200, "{body}");
    }
    start.elapsed() / n
}

#[test]
fn router_reaches_workers_of_other_nodes_through_the_gateway() {
    let gw_port = free_port();
    let gateway = SocketAddr::from(([127, 0, 0, 1], gw_port));
    let mut opts = Options::new("e2e-gateway", "10.229.0.0/16", 2400);
    opts.agent_args = vec![format!("--gateway-listen={gateway}")];
    let Some(mut sys) = System::start_cluster(opts) else {
        return;
    };
    let env = &sys.cluster().env;
    let router_token = env.service_account_token_for(
        e2e::envtest::SUBSTRATE_NAMESPACE,
        "substrate-router",
        &[AUDIENCE],
    );
    let router_api_token =
        env.service_account_token(e2e::envtest::SUBSTRATE_NAMESPACE, "substrate-router");
    env.service_account("team-a", "app");
    let tenant_token = env.service_account_token_for("team-a", "app", &[AUDIENCE]);
    let token_file = sys.dir().join("gateway-token");
    std::fs::write(&token_file, format!("{router_token}\n")).expect("token file");

    // The agent advertises its gateway on its Workers.
    eventually("the workers advertise the gateway", || {
        let ws = sys.workers();
        (!ws.is_empty()
            && ws
                .iter()
                .all(|w| w["status"]["gateway"] == gateway.to_string().as_str()))
        .then_some(())
    });

    sys.start_operator();
    eventually("the template's golden snapshot is Ready (in kube)", || {
        let t = sys
            .kube
            .get("actortemplates.ate.dev", "counter", Some("team-a"));
        (condition(&t, "Ready") == Some("True")).then_some(t)
    });

    // The router believes it runs on another node: the worker is reached through the gateway.
    let r = sys.start_router(&[
        "--wake-timeout=60s",
        "--worker-network=auto",
        "--node-name=another-node",
        &format!("--gateway-token-file={}", token_file.display()),
    ]);
    sys.create_actor("hello", json!({}));
    let (code, body) = through_router(r.http, "hello");
    assert_eq!(
        code,
        200,
        "{body}\n--- router\n{}\n--- node agent\n{}",
        sys.log("router"),
        sys.log("nodeagent")
    );
    assert_eq!(first_int(&body), 1, "{body}");
    let (code, body) = through_router(r.http, "hello");
    assert_eq!((code, first_int(&body)), (200, 2), "{body}");
    let hello = sys.actor("hello");
    assert_eq!(phase(&hello), "Running", "{hello}");
    assert_eq!(
        hello["status"]["worker"]["gateway"],
        gateway.to_string().as_str(),
        "{hello}"
    );
    assert_eq!(hello["status"]["worker"]["node"], "e2e-gateway", "{hello}");
    let tunnels = metric(r.admin, "substrate_router_gateway_tunnels_total");
    assert!(tunnels >= 1.0, "no tunnel through the gateway: {tunnels}");
    assert_eq!(
        metric(r.admin, "substrate_router_gateway_failures_total"),
        0.0
    );

    // The gateway itself. The actor's address, as the router would CONNECT to it.
    let worker = format!(
        "{}:8080",
        hello["status"]["worker"]["address"]
            .as_str()
            .expect("address")
    );
    let (code, body, _) = connect(gateway, &worker, None);
    assert_eq!(code, 407, "no token: {body}");
    let (code, body, _) = connect(gateway, &worker, Some(&router_api_token));
    assert_eq!(code, 407, "a token of kube-apiserver's audience: {body}");
    let (code, body, _) = connect(gateway, &worker, Some(&tenant_token));
    assert_eq!(code, 403, "a user not allowed: {body}");
    assert!(body.contains("system:serviceaccount:team-a:app"), "{body}");
    // Not one of the agent's workers: refused, nothing connected.
    let stranger = TcpListener::bind("127.0.0.1:0").expect("bind");
    stranger.set_nonblocking(true).expect("nonblocking");
    let target = stranger.local_addr().expect("addr").to_string();
    let (code, body, _) = connect(gateway, &target, Some(&router_token));
    assert_eq!(code, 403, "not a worker: {body}");
    assert!(
        matches!(stranger.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the gateway connected to {target}"
    );
    let (code, body, _) = connect(gateway, "localhost:8080", Some(&router_token));
    assert_eq!(code, 400, "a name, not an address: {body}");
    // The router's identity, to the worker: a tunnel to the actor.
    let (code, body, mut tunnel) = connect(gateway, &worker, Some(&router_token));
    assert_eq!(code, 200, "{body}");
    write!(
        tunnel.get_mut(),
        "GET / HTTP/1.1\r\nHost: hello.team-a.{SUFFIX}\r\n\r\n"
    )
    .expect("write");
    let (code, body) = read_response(&mut tunnel);
    assert_eq!((code, first_int(&body)), (200, 3), "{body}");

    // Latency through the router: gateway (this router), then direct (a router on the
    // agent's node). Printed for the record, not asserted (a shared machine).
    let n = 300;
    mean_latency(r.http, "hello", 20);
    let via_gateway = mean_latency(r.http, "hello", n);
    sys.kill9_router();
    let r = sys.start_router(&["--worker-network=auto", "--node-name=e2e-gateway"]);
    mean_latency(r.http, "hello", 20);
    let direct = mean_latency(r.http, "hello", n);
    assert_eq!(
        metric(r.admin, "substrate_router_gateway_tunnels_total"),
        0.0,
        "the same node goes direct"
    );
    eprintln!(
        "GET /healthz through the router, {n} on one kept-alive connection: direct {direct:?}, through the worker gateway {via_gateway:?} per request"
    );
}
