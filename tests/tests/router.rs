//! The router and its DNS against real actors (real runsc sandboxes running the `counter`
//! demo, restored by the real node agent): cold requests wake suspended actors, concurrent
//! requests share one wake, WebSocket-style upgrades and large streamed bodies pass
//! through, and every error the router maps has its status code and body.
//!
//! Requests are written by hand on TCP sockets (HTTP/1.1, the proxy's absolute-form or a
//! Host header) so that nothing between the test and the router buffers or retries.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use e2e::{Options, System, eventually, first_int, phase};
use serde_json::json;

const SUFFIX: &str = "actors.resources.substrate.ate.dev";

fn host(actor: &str) -> String {
    format!("{actor}.team-a.{SUFFIX}")
}

/// A parsed response: status, headers (lower-case names), body.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn connect(router: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(router).expect("connect to the router");
    s.set_read_timeout(Some(Duration::from_secs(120))).ok();
    s
}

/// Reads a response head from `r`.
fn read_head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header line");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    (status, headers)
}

/// `GET path` with `Host: host` and `Connection: close`.
fn get(router: SocketAddr, host: &str, path: &str) -> Response {
    let mut s = connect(router);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: e2e\r\n\r\n"
    )
    .expect("request");
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let mut body = String::new();
    r.read_to_string(&mut body).ok();
    Response {
        status,
        headers,
        body,
    }
}

fn metric(router_admin: SocketAddr, name: &str) -> f64 {
    let m = get(router_admin, &router_admin.to_string(), "/metrics").body;
    m.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name || (k.ends_with(name) && k.ends_with("_total") == name.ends_with("_total")))
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0.0)
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

#[test]
fn router_wakes_real_actors_and_maps_every_failure() {
    let Some(mut sys) = System::start(Options::new("e2e-router", "10.208.0.0/16", 400)) else {
        return;
    };
    let r = sys.start_router(&[
        "--wake-timeout=20s",
        "--activity-interval=1s",
        "--connect-timeout=2s",
    ]);
    let router_pid = sys.router_pid().expect("router pid");

    // A cold request to a suspended (never started) actor returns the actor's answer.
    sys.create_actor("one", json!({}));
    let resp = get(r.http, &host("one"), "/");
    assert_eq!(resp.status, 200, "{resp:?}\n{}", sys.log("router"));
    assert_eq!(first_int(&resp.body), 1, "{resp:?}");
    assert_eq!(phase(&sys.actor("one")), "Running");

    // 100 concurrent requests to one suspended actor: one wake, one restore, all answered,
    // each counted exactly once by the actor.
    sys.create_actor("many", json!({}));
    let resumes_before = metric(r.admin, "router_resumes_total");
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let h = host("many");
            std::thread::spawn(move || get(r.http, &h, "/"))
        })
        .collect();
    let mut counts: Vec<u64> = threads
        .into_iter()
        .map(|t| {
            let resp = t.join().expect("request thread");
            assert_eq!(resp.status, 200, "{resp:?}");
            first_int(&resp.body)
        })
        .collect();
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=100).collect::<Vec<u64>>(),
        "each request served once"
    );
    assert_eq!(
        metric(r.admin, "router_resumes_total") - resumes_before,
        1.0,
        "one resume for 100 concurrent requests"
    );
    let restores = sys
        .log("nodeagent")
        .lines()
        .filter(|l| l.contains("actor running") && l.contains("actor=many"))
        .count();
    assert_eq!(restores, 1, "one restore for 100 concurrent requests");

    // Activity is reported: lastActiveTime moves forward after traffic.
    let before = sys.actor("many")["status"]["lastActiveTime"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(get(r.http, &host("many"), "/healthz").status, 200);
    eventually("lastActiveTime advances after a request", || {
        let now = sys.actor("many")["status"]["lastActiveTime"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (now > before).then_some(())
    });

    // An upgraded connection (WebSocket handshake) is tunnelled both ways.
    {
        let mut s = connect(r.http);
        write!(
            s,
            "GET /echo HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            host("many")
        )
        .unwrap();
        let mut rd = BufReader::new(s.try_clone().unwrap());
        let (status, headers) = read_head(&mut rd);
        assert_eq!(status, 101, "{headers:?}");
        let accept = headers
            .iter()
            .find(|(k, _)| k == "sec-websocket-accept")
            .map(|(_, v)| v.as_str());
        assert_eq!(accept, Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        for msg in [&b"hello through the router"[..], &[0u8, 1, 2, 255, 254][..]] {
            s.write_all(msg).unwrap();
            let mut back = vec![0u8; msg.len()];
            rd.read_exact(&mut back).unwrap();
            assert_eq!(back, msg, "echoed verbatim");
        }
    }

    // 100 MiB down and up, streamed: the router's peak memory does not grow with it.
    const BIG: u64 = 100 << 20;
    let peak_before = peak_rss(router_pid);
    {
        let mut s = connect(r.http);
        write!(
            s,
            "GET /bytes/{BIG} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            host("many")
        )
        .unwrap();
        let mut rd = BufReader::with_capacity(1 << 16, s);
        let (status, headers) = read_head(&mut rd);
        assert_eq!(status, 200, "{headers:?}");
        let mut want = counter::Fnv1a64::new();
        counter::write_pattern(&mut want, 0, BIG).unwrap();
        let mut got = counter::Fnv1a64::new();
        std::io::copy(&mut rd, &mut got).unwrap();
        assert_eq!(got.bytes(), BIG, "the whole body arrived");
        assert_eq!(got.hash(), want.hash(), "intact");
    }
    {
        let mut s = connect(r.http);
        write!(
            s,
            "POST /sink HTTP/1.1\r\nHost: {}\r\nContent-Length: {BIG}\r\nConnection: close\r\n\r\n",
            host("many")
        )
        .unwrap();
        let mut want = counter::Fnv1a64::new();
        counter::write_pattern(&mut want, 0, BIG).unwrap();
        counter::write_pattern(&mut s, 0, BIG).unwrap();
        let mut rd = BufReader::new(s);
        let (status, _) = read_head(&mut rd);
        let mut body = String::new();
        rd.read_to_string(&mut body).unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, want.summary(), "the actor received every byte intact");
    }
    let growth = peak_rss(router_pid).saturating_sub(peak_before);
    assert!(
        growth < 32 << 20,
        "router peak RSS grew by {} MiB while 200 MiB passed through",
        growth >> 20
    );

    // Errors, each with its code and a body that says what happened.
    let bad = get(r.http, "not a host", "/");
    assert_eq!(bad.status, 400, "{bad:?}");
    let elsewhere = get(r.http, "example.com", "/");
    assert_eq!(elsewhere.status, 404, "{elsewhere:?}");
    assert!(elsewhere.body.contains(SUFFIX), "{elsewhere:?}");
    let no_ates = get(r.http, &format!("one.nowhere.{SUFFIX}"), "/");
    assert_eq!(no_ates.status, 404, "{no_ates:?}");
    assert!(no_ates.body.contains("nowhere"), "{no_ates:?}");
    let no_actor = get(r.http, &host("ghost"), "/");
    assert_eq!(no_actor.status, 404, "{no_actor:?}");
    assert!(no_actor.body.contains("ghost"), "{no_actor:?}");
    sys.create_actor("parked", json!({"activation": "Suspended"}));
    let parked = eventually("the router knows the parked actor", || {
        let resp = get(r.http, &host("parked"), "/");
        (resp.status != 404).then_some(resp)
    });
    assert_eq!(parked.status, 409, "{parked:?}");
    assert!(parked.body.contains("activation"), "{parked:?}");
    let parked = sys.actor("parked");
    assert!(
        matches!(phase(&parked), "" | "Suspended") && parked["status"]["worker"].is_null(),
        "not woken: {parked}"
    );

    // Free one worker: `one` is suspended.
    sys.action("one", "suspend");
    sys.wait_phase("one", "Suspended");

    // The actor refuses the connection (its template names a port nothing listens on): 502.
    sys.kube.create(&json!({
        "apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
        "metadata": {"name": "wrong-port", "namespace": "team-a"},
        "spec": {
            "containers": [{"name": "counter", "image": sys.image, "ports": [{"containerPort": 9999}]}],
            "workerPoolRef": {"name": sys.pool},
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
        },
    }));
    sys.kube.create(&json!({
        "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": "refuses", "namespace": "team-a"},
        "spec": {"template": {"name": "wrong-port"}},
    }));
    let refused = eventually("the router knows the refusing actor", || {
        let resp = get(r.http, &host("refuses"), "/");
        (resp.status != 404).then_some(resp)
    });
    assert_eq!(refused.status, 502, "{refused:?}");
    assert!(refused.body.contains("refuses"), "{refused:?}");

    // Both workers busy (`many` and `refuses`): a third actor gets 503 with Retry-After.
    sys.create_actor("third", json!({}));
    let busy = eventually("the router knows the third actor", || {
        let resp = get(r.http, &host("third"), "/");
        (resp.status != 404).then_some(resp)
    });
    assert_eq!(busy.status, 503, "{busy:?}");
    assert!(busy.header("retry-after").is_some(), "{busy:?}");
    assert!(busy.body.to_lowercase().contains("worker"), "{busy:?}");

    // An actor that never gets ready (its probe path does not exist): 504 after the wake
    // timeout. Free a worker for it first.
    sys.kube.ok(
        &[
            "patch",
            "actor",
            "third",
            "-n",
            "team-a",
            "--type=merge",
            "-p",
            r#"{"spec":{"activation":"Suspended"}}"#,
        ],
        None,
    );
    sys.action("refuses", "suspend");
    sys.wait_phase("refuses", "Suspended");
    sys.kube.create(&json!({
        "apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
        "metadata": {"name": "never-ready", "namespace": "team-a"},
        "spec": {
            "containers": [{"name": "counter", "image": sys.image, "ports": [{"containerPort": 8080}]}],
            "workerPoolRef": {"name": sys.pool},
            "readinessProbe": {"httpGet": {"path": "/not-there", "port": 8080}, "periodSeconds": 1},
        },
    }));
    sys.kube.create(&json!({
        "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": "slow", "namespace": "team-a"},
        "spec": {"template": {"name": "never-ready"}},
    }));
    let t = Instant::now();
    let slow = eventually("the router knows the slow actor", || {
        let resp = get(r.http, &host("slow"), "/");
        (resp.status != 404).then_some(resp)
    });
    assert_eq!(slow.status, 504, "{slow:?}");
    assert!(slow.body.contains("slow"), "{slow:?}");
    assert!(
        t.elapsed() >= Duration::from_secs(15),
        "waited {:?}",
        t.elapsed()
    );
}

/// Issue 12: an actor deleted from a worker, then another resumed onto the same worker (the
/// same address): the router's upstream pool held kept-alive connections to the first
/// sandbox, and requests for the second went out on them and failed (502, "closed the
/// connection before answering") until each stale connection had been used once. Pooled
/// connections now belong to the actor's binding, not to the address.
#[test]
fn a_new_actor_on_a_reused_worker_gets_none_of_the_old_ones_connections() {
    let mut opts = Options::new("e2e-reuse", "10.216.0.0/16", 1100);
    // One worker: the second actor must land where the first ran.
    opts.workers = 1;
    let Some(mut sys) = System::start(opts) else {
        return;
    };
    let r = sys.start_router(&["--wake-timeout=60s", "--connect-timeout=2s"]);

    // Actor A serves bursts of concurrent requests: every proxy thread's pool keeps several
    // kept-alive connections to A's address.
    sys.create_actor("reuse-a", json!({}));
    let first = get(r.http, &host("reuse-a"), "/");
    assert_eq!(first.status, 200, "{first:?}\n{}", sys.log("router"));
    for _ in 0..3 {
        let burst: Vec<_> = (0..16)
            .map(|_| {
                let h = host("reuse-a");
                std::thread::spawn(move || get(r.http, &h, "/"))
            })
            .collect();
        for t in burst {
            let resp = t.join().expect("request thread");
            assert_eq!(resp.status, 200, "{resp:?}");
        }
    }
    let a = sys.actor("reuse-a");
    let address = a["status"]["worker"]["address"].clone();
    assert!(address.is_string(), "{a}");
    assert!(
        metric(r.admin, "router_upstream_open_connections") >= 1.0,
        "the pool keeps connections to A"
    );

    // A is deleted; B is resumed onto the same (only) worker. (The operator removes a
    // deleted actor's sandbox finalizer once its node agent has stopped the sandbox.)
    sys.start_operator();
    sys.kube
        .ok(&["delete", "actor", "reuse-a", "-n", "team-a"], None);
    eventually("actor A is gone", || {
        let (ok, _, _) = sys
            .kube
            .run(&["get", "actor", "reuse-a", "-n", "team-a"], None);
        (!ok).then_some(())
    });
    sys.wait_free_workers(1);
    sys.create_actor("reuse-b", json!({}));
    sys.action("reuse-b", "resume");
    let b = sys.wait_phase("reuse-b", "Running");
    assert_eq!(
        b["status"]["worker"]["address"], address,
        "B runs at A's address: {b}"
    );

    // 50 sequential requests for B through the router: every one answered by B (its own
    // counter, from 1), none a 502 from a connection to A's sandbox.
    let answers: Vec<Response> = (0..50)
        .map(|_| get(r.http, &host("reuse-b"), "/"))
        .collect();
    let failed: Vec<&Response> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of 50 requests failed, first: {:?}",
        failed.len(),
        failed[0]
    );
    let counts: Vec<u64> = answers.iter().map(|a| first_int(&a.body)).collect();
    assert_eq!(counts, (1..=50).collect::<Vec<u64>>(), "each answer from B");
}

/// `GET path` with `Host: host`, `Connection: close` and, when given, a bearer token.
fn get_with_token(router: SocketAddr, host: &str, path: &str, token: Option<&str>) -> Response {
    let mut s = connect(router);
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{auth}User-Agent: e2e\r\n\r\n"
    )
    .expect("request");
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let mut body = String::new();
    r.read_to_string(&mut body).ok();
    Response {
        status,
        headers,
        body,
    }
}

/// An atespace with `spec.httpAccess.policy: Authorized` in front of a real actor: no token
/// and a user without a binding are refused without waking it; after a RoleBinding to
/// `substrate-actor-edit` the counter answers. (That the actor does not receive the
/// `Authorization` header is checked in `router/tests/access.rs`, whose stand-in actor
/// echoes its request headers; the counter does not.)
#[test]
fn authorized_atespaces_refuse_without_waking_and_admit_bound_users() {
    let tokens = tempfile::tempdir().expect("tempdir");
    let file = tokens.path().join("tokens.csv");
    std::fs::write(
        &file,
        "alice-e2e-token,alice,uid-alice,team-a-devs\nbob-e2e-token,bob,uid-bob\n",
    )
    .expect("token file");
    let mut opts = Options::new("e2e-access", "10.226.0.0/16", 2100);
    opts.token_auth_file = Some(file);
    let Some(mut sys) = System::start(opts) else {
        return;
    };
    let r = sys.start_router(&[
        "--wake-timeout=30s",
        "--activity-interval=1s",
        "--access-decision-cache-ttl=1s",
    ]);
    // Open (the default): unchanged, a token is neither needed nor checked.
    sys.create_actor("open", json!({}));
    let resp = get_with_token(r.http, &host("open"), "/", Some("whatever"));
    assert_eq!(resp.status, 200, "{resp:?}\n{}", sys.log("router"));
    assert_eq!(first_int(&resp.body), 1);

    sys.create_actor("guarded", json!({}));
    sys.kube.ok(
        &[
            "patch",
            "atespace",
            "team-a",
            "--type=merge",
            "-p",
            r#"{"spec":{"httpAccess":{"policy":"Authorized"}}}"#,
        ],
        None,
    );
    let resumes = metric(r.admin, "router_resumes_total");
    // Polled with an actor that does not exist: while the atespace is still Open, a
    // request for `guarded` would wake it.
    eventually("the router applies the policy", || {
        let resp = get_with_token(r.http, &host("ghost"), "/", None);
        (resp.status == 401).then_some(())
    });
    let resp = get_with_token(r.http, &host("guarded"), "/", None);
    assert_eq!(resp.status, 401, "{resp:?}");
    assert_eq!(
        resp.header("www-authenticate"),
        Some("Bearer realm=\"substrate\"")
    );
    assert_eq!(
        resp.body,
        "actor team-a/guarded: atespace \"team-a\" requires an Authorization: Bearer token\n"
    );
    let resp = get_with_token(r.http, &host("guarded"), "/", Some("not-a-token"));
    assert_eq!(resp.status, 401, "{resp:?}");
    let resp = get_with_token(r.http, &host("guarded"), "/", Some("bob-e2e-token"));
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(
        resp.body,
        "User \"bob\" cannot get actors/proxy \"guarded\" in atespace \"team-a\"\n"
    );
    // Not woken: no resume was sent and the actor never ran.
    assert_eq!(metric(r.admin, "router_resumes_total"), resumes);
    assert_ne!(phase(&sys.actor("guarded")), "Running");
    assert_ne!(phase(&sys.actor("guarded")), "Resuming");
    assert!(
        !sys.log("nodeagent")
            .lines()
            .any(|l| l.contains("actor running") && l.contains("actor=guarded")),
        "the guarded actor was started"
    );
    for (reason, n) in [
        ("no_token", 1.0),
        ("unauthenticated", 1.0),
        ("forbidden", 1.0),
    ] {
        let key = format!("substrate_router_access_denials_total{{reason=\"{reason}\"}}");
        assert!(metric(r.admin, &key) >= n, "{key}");
    }

    // bob is bound to the shipped edit role in team-a (the router's decision cache holds
    // the denial for up to its TTL).
    sys.kube.ok(
        &[
            "create",
            "rolebinding",
            "bob-edit",
            "--clusterrole=substrate-actor-edit",
            "--user=bob",
            "-n",
            "team-a",
        ],
        None,
    );
    let resp = eventually("bob reaches the actor", || {
        let resp = get_with_token(r.http, &host("guarded"), "/", Some("bob-e2e-token"));
        (resp.status != 403).then_some(resp)
    });
    assert_eq!(resp.status, 200, "{resp:?}\n{}", sys.log("router"));
    assert_eq!(first_int(&resp.body), 1, "{resp:?}");
    assert_eq!(phase(&sys.actor("guarded")), "Running");
    // alice's group has no binding: still refused, and the token alone is not enough.
    let resp = get_with_token(r.http, &host("guarded"), "/", Some("alice-e2e-token"));
    assert_eq!(resp.status, 403, "{resp:?}");
}

#[test]
fn a_wake_resumes_again_when_its_actor_is_released_mid_resume() {
    let mut opts = Options::new("e2e-rewake", "10.231.0.0/16", 2600);
    opts.workers = 1;
    let Some(mut sys) = System::start(opts) else {
        return;
    };
    let r = sys.start_router(&["--wake-timeout=40s", "--connect-timeout=2s"]);
    sys.create_actor("rewake", json!({}));
    // No node agent: the router's resume binds the actor, and nothing boots it.
    sys.stop_agent();
    let request = std::thread::spawn(move || get(r.http, &host("rewake"), "/"));
    let bound = eventually("the router's resume binds the actor", || {
        let a = sys.actor("rewake");
        (a["status"]["phase"] == "Resuming").then_some(a)
    });
    let worker = bound["status"]["worker"]["name"]
        .as_str()
        .expect("a worker")
        .to_string();
    // The worker is lost mid-resume and the actor released to its last good snapshot (what
    // the operator does when the node agent's pod is deleted): back to Suspended, unbound.
    sys.kube.ok(
        &[
            "patch",
            "actor",
            "rewake",
            "-n",
            "team-a",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Suspended","worker":null}}"#,
        ],
        None,
    );
    sys.kube.ok(
        &[
            "patch",
            "worker",
            &worker,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Free","actor":null}}"#,
        ],
        None,
    );
    sys.start_agent();
    // The waiting request is answered: the router resumed the released actor again instead
    // of waiting out its 40 s for a resume nobody was doing.
    let resp = request.join().expect("request thread");
    assert_eq!(resp.status, 200, "{resp:?}\n{}", sys.log("router"));
    assert_eq!(first_int(&resp.body), 1, "{resp:?}");
    assert!(
        sys.log("router")
            .contains("actor released during its wake; resuming it again"),
        "{}",
        sys.log("router")
    );
}
