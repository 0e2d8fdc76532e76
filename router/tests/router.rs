//! The router through real HTTP against a real apiserver + Valkey, with the node agent's part
//! played by the test (see `support`).

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::{ATESPACE, eventually, get, host, metric, send, world};

const WAKE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_request_wakes_a_suspended_actor() {
    let w = world().await;
    w.actor("web", "t", "OnDemand").await;
    w.actor("always", "t", "Always").await;
    let r = w.router(WAKE).await;
    // An Always actor that is not running (no operator here) is woken too.
    let (status, _, body) = send(r.http_addr, get("/", &host("always"))).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = send(r.http_addr, get("/", &host("web"))).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, format!("hello from {}", host("web")));
    assert_eq!(w.restores.load(Ordering::SeqCst), 2);
    assert_eq!(
        metric(r.admin_addr, "substrate_router_resumes_total").await,
        2.0
    );
    // Warm now: no further resume.
    let (status, _, _) = send(r.http_addr, get("/", &host("web"))).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        metric(r.admin_addr, "substrate_router_resumes_total").await,
        2.0
    );
    let text = send(r.admin_addr, get("/metrics", "admin"))
        .await
        .unwrap()
        .2;
    for name in [
        "substrate_router_requests_total{code=\"200\"} 3",
        "substrate_router_wake_duration_seconds_count 2",
        "substrate_router_request_duration_seconds_count 3",
        "substrate_router_upstream_open_connections",
    ] {
        assert!(text.contains(name), "{name} missing in:\n{text}");
    }
    for path in ["/healthz", "/livez", "/readyz"] {
        assert_eq!(send(r.admin_addr, get(path, "a")).await.unwrap().0, 200);
    }
    // The table's sizes: the two actors, the world's five templates, its atespace and the two
    // the apiserver bootstraps (`default`, `ate-golden`).
    for (kind, n) in [("actors", 2.0), ("atespaces", 3.0), ("templates", 5.0)] {
        let name = format!("substrate_router_table_objects{{kind=\"{kind}\"}}");
        assert_eq!(metric(r.admin_addr, &name).await, n, "{name}");
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_resume() {
    let w = world().await;
    w.actor("busy", "t", "OnDemand").await;
    let r = w.router(WAKE).await;
    let addr = r.http_addr;
    let reqs =
        (0..100).map(|i| async move { send(addr, get(&format!("/n/{i}"), &host("busy"))).await });
    let results = futures::future::join_all(reqs).await;
    for res in results {
        let (status, _, body) = res.expect("request");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, format!("hello from {}", host("busy")));
    }
    assert_eq!(
        metric(r.admin_addr, "substrate_router_resumes_total").await,
        1.0
    );
    assert_eq!(w.restores.load(Ordering::SeqCst), 1, "exactly one restore");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_requests_need_no_apiserver() {
    let mut w = world().await;
    w.actor("warm", "t", "OnDemand").await;
    let r = w.router(WAKE).await;
    assert_eq!(
        send(r.http_addr, get("/", &host("warm"))).await.unwrap().0,
        200
    );
    w.apiserver.take().unwrap().stop().await;
    w.valkey.stop();
    for _ in 0..5 {
        let (status, _, body) = send(r.http_addr, get("/", &host("warm"))).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        metric(r.admin_addr, "substrate_router_resumes_total").await,
        1.0
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_has_its_status_and_a_body_that_says_why() {
    let w = world().await;
    w.actor("asleep", "t", "Suspended").await;
    w.actor("nofree", "none", "OnDemand").await;
    w.actor("stuck", "stuck", "OnDemand").await;
    w.actor("refuses", "dead", "OnDemand").await;
    w.actor("broken", "broken", "OnDemand").await;
    let r = w.router(Duration::from_secs(2)).await;
    let a = r.http_addr;

    let (s, _, b) = send(a, get("/", "bad host!")).await.unwrap();
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("malformed host"), "{b}");

    let (s, _, b) = send(a, get("/", "example.com")).await.unwrap();
    assert_eq!(s, 404, "{b}");
    assert!(
        b.contains("<actor>.<atespace>.actors.resources.substrate.ate.dev"),
        "{b}"
    );

    let (s, _, b) = send(a, get("/", &format!("x.nowhere.{}", support::SUFFIX)))
        .await
        .unwrap();
    assert_eq!(s, 404, "{b}");
    assert!(b.contains("atespace \"nowhere\" does not exist"), "{b}");

    let (s, _, b) = send(a, get("/", &host("ghost"))).await.unwrap();
    assert_eq!(s, 404, "{b}");
    assert!(
        b.contains(&format!(
            "actor \"ghost\" not found in atespace \"{ATESPACE}\""
        )),
        "{b}"
    );

    let (s, _, b) = send(a, get("/", &host("asleep"))).await.unwrap();
    assert_eq!(s, 409, "{b}");
    assert!(
        b.contains("actor team-a/asleep is suspended by its activation policy")
            && b.contains("set spec.activation to OnDemand"),
        "{b}"
    );

    let (s, h, b) = send(a, get("/", &host("nofree"))).await.unwrap();
    assert_eq!(s, 503, "{b}");
    assert_eq!(h["retry-after"], "5");
    assert!(
        b.contains("team-a/nofree") && b.contains("no free worker"),
        "{b}"
    );
    assert!(b.contains("\"empty\""), "names the pool: {b}");

    let (s, _, b) = send(a, get("/", &host("stuck"))).await.unwrap();
    assert_eq!(s, 504, "{b}");
    assert!(
        b.contains("team-a/stuck did not become ready within 2s") && b.contains("Resuming"),
        "{b}"
    );

    let (s, _, b) = send(a, get("/", &host("refuses"))).await.unwrap();
    assert_eq!(s, 502, "{b}");
    assert!(
        b.contains("team-a/refuses")
            && b.contains(&format!("127.0.0.1:{}", w.dead_port))
            && b.contains("refused the connection"),
        "{b}"
    );
    let (s, _, b) = send(a, get("/", &host("broken"))).await.unwrap();
    assert_eq!(s, 502, "{b}");
    assert!(
        b.contains("actor team-a/broken failed to start")
            && b.contains("pulling image 127.0.0.1:5000/x:1: manifest unknown"),
        "the condition's message is passed on: {b}"
    );
    // The next request tries again (the scheduler rebinds a Failed actor); its worker may
    // take a moment to show as free in the scheduler's cache (503 meanwhile).
    eventually(
        "a second wake of the failed actor fails the same way",
        || async {
            let (s, _, b) = send(a, get("/", &host("broken"))).await.unwrap();
            assert!(s == 502 || s == 503, "{s} {b}");
            (s == 502 && b.contains("manifest unknown")).then_some(())
        },
    )
    .await;

    let text = send(r.admin_addr, get("/metrics", "a")).await.unwrap().2;
    for l in [
        "reason=\"failed\"",
        "reason=\"no_free_worker\"",
        "reason=\"timeout\"",
        "code=\"502\"",
    ] {
        assert!(text.contains(l), "{l} missing in:\n{text}");
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_proxy_form_and_forwarding_headers() {
    let w = world().await;
    w.actor("h", "t", "OnDemand").await;
    let r = w.router(WAKE).await;

    // HTTP/1.1: hop-by-hop headers go, forwarding headers come; two requests on one
    // keep-alive connection.
    let stream = tokio::net::TcpStream::connect(r.http_addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    // The third request reuses the connection's cached route with its precomputed
    // forwarding headers (it brings none of its own).
    for i in 0..3 {
        let mut req = Request::get("/echo?q=1")
            .header("host", host("h"))
            .header("connection", "keep-alive, x-private")
            .header("x-private", "secret")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("proxy-connection", "keep-alive")
            .header("x-end-to-end", "kept")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let before = if i < 2 {
            req.headers_mut()
                .insert("x-forwarded-for", "10.1.1.1".parse().unwrap());
            "10.1.1.1, "
        } else {
            ""
        };
        // The previous exchange must be finished before the connection takes another.
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        let h = &v["headers"];
        for gone in ["x-private", "keep-alive", "te", "proxy-connection"] {
            assert!(h.get(gone).is_none(), "{gone} reached the actor: {v}");
        }
        assert_eq!(h["x-end-to-end"], "kept");
        assert_eq!(h["host"], host("h"));
        assert_eq!(h["x-forwarded-for"], format!("{before}127.0.0.1"));
        assert_eq!(
            h["forwarded"],
            format!("for=127.0.0.1;host=\"{}\";proto=http", host("h"))
        );
        assert_eq!(h["x-forwarded-host"], host("h"));
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(v["path"], "/echo?q=1");
    }

    // HTTP/2 with prior knowledge (h2c): :authority names the actor.
    let mut h2 = h2c(r.http_addr).await;
    let req = Request::get(format!("http://{}/echo", host("h")))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        v["version"], "HTTP/1.1",
        "the actor is spoken to in HTTP/1.1"
    );
    assert_eq!(v["headers"]["host"], host("h"));

    // Proxy mode: absolute-form URI, Host naming the router.
    let mut s = tokio::net::TcpStream::connect(r.http_addr).await.unwrap();
    s.write_all(
        format!(
            "GET http://{}/echo HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            host("h"),
            r.http_addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"path\":\"/echo\""), "{out}");

    // Chunked request body streams through.
    let mut s = tokio::net::TcpStream::connect(r.http_addr).await.unwrap();
    s.write_all(
        format!(
            "POST /upload HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            host("h")
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("\r\n\r\n11"), "{out}");
    r.stop().await;
}

/// An HTTP/2 (prior knowledge) connection to `addr`.
async fn h2c(addr: std::net::SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (h2, conn) =
        hyper::client::conn::http2::handshake(support::executor(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    h2
}

async fn last_active(w: &support::World, name: &str) -> jiff::Timestamp {
    let a = w.get_actor(name).await;
    a.status
        .and_then(|s| s.last_active_time)
        .map(|t| t.0)
        .expect("lastActiveTime")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_tunnelled_and_keep_the_actor_active() {
    let w = world().await;
    w.actor("ws", "t", "OnDemand").await;
    let r = w.router(WAKE).await;
    let mut s = tokio::net::TcpStream::connect(r.http_addr).await.unwrap();
    s.write_all(
        format!(
            "GET /chat HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            host("ws")
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Read the 101 head.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in ["ping", "a longer message through the tunnel"] {
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    // The open tunnel alone keeps lastActiveTime moving (flushes every second).
    let t1 = eventually("activity is reported", || async {
        let t = last_active(&w, "ws").await;
        (t.as_second() > 1_600_000_000).then_some(t)
    })
    .await;
    let t2 = eventually(
        "lastActiveTime advances with only the tunnel open",
        || async {
            let t = last_active(&w, "ws").await;
            (t > t1).then_some(t)
        },
    )
    .await;
    assert!(t2 > t1);
    // Still echoing.
    s.write_all(b"again").await.unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"again");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_over_http2_are_tunnelled() {
    let w = world().await;
    w.actor("ws2", "t", "OnDemand").await;
    let r = w.router(WAKE).await;
    let mut h2 = h2c(r.http_addr).await;
    // A first request wakes the actor and makes sure the server's SETTINGS (with
    // ENABLE_CONNECT_PROTOCOL) have arrived before the extended CONNECT.
    let warm = Request::get(format!("http://{}/", host("ws2")))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(h2.send_request(warm).await.unwrap().status(), 200);

    // RFC 8441: CONNECT with :protocol = websocket.
    let req = Request::connect(format!("http://{}/chat", host("ws2")))
        .version(http::Version::HTTP_2)
        .header("sec-websocket-version", "13")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    // The actor saw an HTTP/1.1 opening handshake with a fresh 16-byte key...
    assert_eq!(resp.headers()["x-seen-method"], "GET");
    let key = resp.headers()["x-seen-key"].to_str().unwrap().to_string();
    assert_eq!(key.len(), 24, "base64 of 16 bytes: {key:?}");
    // ...and its HTTP/1.1-only answer headers do not reach the HTTP/2 client.
    for h in ["sec-websocket-accept", "upgrade", "connection"] {
        assert!(
            !resp.headers().contains_key(h),
            "{h} in {:?}",
            resp.headers()
        );
    }
    let up = hyper::upgrade::on(&mut resp).await.expect("tunnel");
    let mut io = TokioIo::new(up);
    for msg in ["over h2", "a second frame through the same stream"] {
        io.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    // Each tunnel gets its own key.
    let req = Request::connect(format!("http://{}/chat", host("ws2")))
        .version(http::Version::HTTP_2)
        .header("sec-websocket-version", "13")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_ne!(resp.headers()["x-seen-key"].to_str().unwrap(), key);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_is_reported_in_batches() {
    let w = world().await;
    w.actor("act", "t", "OnDemand").await;
    let r = w.router(WAKE).await;
    for _ in 0..20 {
        assert_eq!(
            send(r.http_addr, get("/", &host("act"))).await.unwrap().0,
            200
        );
    }
    // The fake agent set 2020-01-01; the flush moves it to now.
    let t = eventually("lastActiveTime advances after traffic", || async {
        let t = last_active(&w, "act").await;
        (t.as_second() > 1_600_000_000).then_some(t)
    })
    .await;
    assert!((jiff::Timestamp::now() - t).get_seconds().abs() < 60);
    let patches = metric(r.admin_addr, "substrate_router_activity_patches_total").await;
    assert!(
        (1.0..=5.0).contains(&patches),
        "20 requests within a few flushes give a few writes, not one per request: {patches}"
    );
    r.stop().await;
}

/// A keep-alive connection reuses its last route only while nothing changed: requests for
/// two actors alternate on one connection, and once one of them is suspended the next
/// request on the same connection wakes it instead of going to its old address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_follows_its_actors() {
    let w = world().await;
    w.actor("one", "t", "OnDemand").await;
    w.actor("two", "t", "OnDemand").await;
    let r = w.router(WAKE).await;
    let stream = tokio::net::TcpStream::connect(r.http_addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut ask = async |actor: &str| {
        // The previous exchange must be finished before the connection takes another.
        sender.ready().await.unwrap();
        let resp = sender.send_request(get("/", &host(actor))).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, 200, "{body:?}");
        assert_eq!(body, format!("hello from {}", host(actor)));
    };
    for actor in ["one", "two", "two", "one", "one"] {
        ask(actor).await;
    }
    assert_eq!(w.restores.load(Ordering::SeqCst), 2);

    // "one" is suspended (as the node agent reports it); the router's table sees it.
    let api: kube::Api<crds::substrate::Actor> = kube::Api::namespaced(w.client.clone(), ATESPACE);
    api.patch_status(
        "one",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"status": {
            "phase": "Suspended", "worker": null,
            "conditions": [{"type": "Ready", "status": "False", "reason": "Suspended",
                            "message": "suspended", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})),
    )
    .await
    .unwrap();
    let key = router::host::ActorKey::new(ATESPACE, "one");
    eventually("the router sees the actor suspended", || async {
        let a = r.table.actor(&key)?;
        (r.table.route(&a).is_none()).then_some(())
    })
    .await;
    ask("one").await;
    assert_eq!(
        w.restores.load(Ordering::SeqCst),
        3,
        "the request on the kept-alive connection woke the actor again"
    );
    ask("two").await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_right_after_the_create_finds_the_new_actor() {
    let w = world().await;
    // The router's watch runs 300 ms behind the apiserver, so the table cannot know an actor
    // created just before the request: only asking the apiserver finds it.
    let r = w.lagging_router(Duration::from_millis(300), WAKE).await;
    w.actor("fresh", "t", "OnDemand").await;
    let (status, _, body) = send(r.http_addr, get("/", &host("fresh"))).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        metric(r.admin_addr, "substrate_router_fresh_lookups_total").await,
        1.0
    );
    // Names the apiserver does not have still get their 404s, each saying what is missing.
    let (status, _, body) = send(r.http_addr, get("/", &host("ghost"))).await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("actor \"ghost\" not found"), "{body}");
    let (status, _, body) = send(
        r.http_addr,
        get("/", &format!("a.nowhere.{}", support::SUFFIX)),
    )
    .await
    .unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("atespace \"nowhere\" does not exist"),
        "{body}"
    );
    assert_eq!(
        metric(r.admin_addr, "substrate_router_fresh_lookups_total").await,
        1.0
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_right_after_the_create_shares_one_lookup() {
    let w = world().await;
    let r = w.lagging_router(Duration::from_millis(300), WAKE).await;
    w.actor("burst", "t", "OnDemand").await;
    // More requests than lookups may be in flight: they share one GET, so none is refused.
    let n = router::resume::MAX_CONFIRMS * 2 + 8;
    let reqs = (0..n).map(|_| send(r.http_addr, get("/", &host("burst"))));
    for res in futures::future::join_all(reqs).await {
        let (status, _, body) = res.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_sent_before_the_create_is_not_trusted_by_a_request_after_it() {
    let w = world().await;
    let r = w.lagging_router(Duration::from_millis(300), WAKE).await;
    // A first lookup opens the router's connection for GETs (its TLS handshake through the
    // relay takes several delayed round trips); the next GET goes out at once on it.
    let (status, _, _) = send(r.http_addr, get("/", &host("ghost"))).await.unwrap();
    assert_eq!(status, 404);
    // A request for a name that does not exist yet: its GET is answered "not found" at once,
    // and the answer reaches the router 300 ms later.
    let early = tokio::spawn(send(r.http_addr, get("/", &host("late"))));
    tokio::time::sleep(Duration::from_millis(100)).await;
    w.actor("late", "t", "OnDemand").await;
    // This request comes after the create; the GET in flight predates it.
    let (status, _, body) = send(r.http_addr, get("/", &host("late"))).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = early.await.unwrap().unwrap();
    assert_eq!(status, 404, "asked before the create: {body}");
    r.stop().await;
}

/// Template `raw`: actors served by the raw-TCP actor on `port`.
async fn raw_template(w: &support::World, port: u16) {
    support::create(
        &w.client,
        &format!("/apis/ate.dev/v1alpha1/namespaces/{ATESPACE}/actortemplates"),
        serde_json::json!({"apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
               "metadata": {"name": "raw"},
               "spec": {"containers": [{"name": "main", "image": "127.0.0.1:5000/x:1",
                                        "ports": [{"containerPort": port}]}],
                        "workerPoolRef": {"name": "p"}}}),
    )
    .await;
}

/// A bare HTTP/1.1 actor on raw TCP: every answer's body is the index of the connection it
/// came on; `/close-soon` answers, then closes that connection 50 ms later (as an actor with
/// a short keep-alive timeout would). Returns its address and its accept count.
async fn counting_actor() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let index = n.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end + 4);
                    let body = index.to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    if head.starts_with("GET /close-soon ") {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_and_replaced_when_the_actor_closes_them() {
    let w = world().await;
    let (actor_addr, accepted) = counting_actor().await;
    raw_template(&w, actor_addr.port()).await;
    w.actor("raw", "raw", "OnDemand").await;
    let r = w.router(WAKE).await;
    let stream = tokio::net::TcpStream::connect(r.http_addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut ask = async |path: &str| {
        sender.ready().await.unwrap();
        let resp = sender.send_request(get(path, &host("raw"))).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, 200, "{body:?}");
        String::from_utf8_lossy(&body).into_owned()
    };
    // The wake probes the actor with a connection of its own (index 0); the requests then
    // share one upstream connection.
    let first = ask("/").await;
    for _ in 0..5 {
        assert_eq!(
            ask("/").await,
            first,
            "one upstream connection for a keep-alive client"
        );
    }
    let before = accepted.load(Ordering::SeqCst);
    assert_eq!(
        metric(r.admin_addr, "substrate_router_upstream_open_connections").await,
        1.0
    );
    // The actor closes that connection while it is idle in the pool: the next request goes
    // on a new one, and the closed one is no longer counted.
    assert_eq!(ask("/close-soon").await, first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let next = ask("/").await;
    assert_ne!(next, first, "a closed connection is not reused");
    assert_eq!(accepted.load(Ordering::SeqCst), before + 1);
    assert_eq!(ask("/").await, next);
    assert_eq!(
        metric(r.admin_addr, "substrate_router_upstream_open_connections").await,
        1.0
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_still_sending_a_stalled_upload_is_not_waited_for() {
    let w = world().await;
    let (actor_addr, _) = counting_actor().await;
    raw_template(&w, actor_addr.port()).await;
    w.actor("early", "raw", "OnDemand").await;
    // One proxy thread: one upstream pool for every client.
    let r = w.router_with(w.client.clone(), WAKE, 1).await;
    let (status, _, body) = send(r.http_addr, get("/", &host("early"))).await.unwrap();
    assert_eq!(status, 200, "{body}");

    // Client A uploads 1 MB but sends 10 bytes and stalls; the actor answers at once. A's
    // upstream connection is back in the pool, still waiting for the rest of the upload.
    let mut a = tokio::net::TcpStream::connect(r.http_addr).await.unwrap();
    a.write_all(
        format!(
            "POST /early HTTP/1.1\r\nHost: {}\r\nContent-Length: 1000000\r\n\r\n0123456789",
            host("early")
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), a.read(&mut head))
        .await
        .expect("A's answer")
        .unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );

    // Client B is not held behind A's stalled upload: it gets another connection.
    let (status, _, body) = tokio::time::timeout(
        Duration::from_secs(5),
        send(r.http_addr, get("/", &host("early"))),
    )
    .await
    .expect("B waited for A's busy upstream connection")
    .unwrap();
    assert_eq!(status, 200, "{body}");
    drop(a);
    r.stop().await;
}
