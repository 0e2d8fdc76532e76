//! Activity recording (`router::activity`) against a real apiserver + Valkey, with the node
//! agent's part played by the test (see `support`): the first request through a router that
//! does not know its actor's activity is recorded before it is forwarded, an open request
//! keeps an actor with a short idle timeout recorded, and a graceful stop writes what was
//! not reported yet.
//!
//! Each router here flushes once an hour (`--activity-interval=1h`), so every write the
//! tests see comes from the rule under test, not from a periodic flush.

mod support;

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crds::substrate::Actor;
use support::{ATESPACE, eventually, get, host, metric, send, world};

const HOUR: Duration = Duration::from_secs(3600);

async fn router(w: &support::World, interval: Duration) -> router::Running {
    let config = router::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        dns_listen: None,
        activity_interval: interval,
        threads: 2,
        ..router::Config::default()
    };
    let r = router::start(config, w.client.clone())
        .await
        .expect("router starts");
    let admin = r.admin_addr;
    eventually("the router is ready", || async move {
        let (s, _, _) = send(admin, get("/readyz", "admin")).await.ok()?;
        (s == 200).then_some(())
    })
    .await;
    r
}

async fn create_actor(w: &support::World, name: &str, idle_timeout: Option<&str>) {
    let mut spec = json!({"template": {"name": "t"}, "activation": "OnDemand"});
    if let Some(t) = idle_timeout {
        spec["idleTimeout"] = json!(t);
    }
    let a: Actor = serde_json::from_value(json!({
        "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    Api::<Actor>::namespaced(w.client.clone(), ATESPACE)
        .create(&PostParams::default(), &a)
        .await
        .expect("create actor");
}

async fn last_active(w: &support::World, name: &str) -> jiff::Timestamp {
    w.get_actor(name)
        .await
        .status
        .and_then(|s| s.last_active_time)
        .map(|t| t.0)
        .expect("lastActiveTime")
}

/// Records `t` as the actor's last activity (what a router that died would have left).
async fn set_last_active(w: &support::World, name: &str, t: jiff::Timestamp) {
    let text = t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    Api::<Actor>::namespaced(w.client.clone(), ATESPACE)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"lastActiveTime": text}})),
        )
        .await
        .expect("patch lastActiveTime");
}

/// Now, in whole seconds (the resolution of `lastActiveTime`).
fn now_secs() -> jiff::Timestamp {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_through_a_new_router_is_recorded_before_it_is_forwarded() {
    let w = world().await;
    create_actor(&w, "first", None).await;
    // A first router wakes the actor, then goes away with what it knew.
    let r1 = router(&w, HOUR).await;
    assert_eq!(
        send(r1.http_addr, get("/", &host("first")))
            .await
            .unwrap()
            .0,
        200
    );
    r1.stop().await;
    // Its last write is 3 of the 5 idle minutes old: the operator would suspend the actor
    // in 2 minutes, before a new router's first periodic flush of an hour.
    let old = now_secs() - Duration::from_secs(180);
    set_last_active(&w, "first", old).await;
    let r2 = router(&w, HOUR).await;
    let before = now_secs();
    let (status, _, body) = send(r2.http_addr, get("/", &host("first"))).await.unwrap();
    assert_eq!(status, 200, "{body}");
    // Recorded by the time the request was answered.
    assert!(last_active(&w, "first").await >= before);
    assert_eq!(
        metric(
            r2.admin_addr,
            "substrate_router_activity_sync_reports_total"
        )
        .await,
        1.0
    );
    // The record is fresh now: the next requests are forwarded without a write.
    for _ in 0..10 {
        assert_eq!(
            send(r2.http_addr, get("/", &host("first")))
                .await
                .unwrap()
                .0,
            200
        );
    }
    assert_eq!(
        metric(r2.admin_addr, "substrate_router_activity_patches_total").await,
        1.0,
        "one write for 11 requests"
    );
    r2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_share_one_write() {
    let w = world().await;
    create_actor(&w, "burst", None).await;
    let r1 = router(&w, HOUR).await;
    assert_eq!(
        send(r1.http_addr, get("/", &host("burst")))
            .await
            .unwrap()
            .0,
        200
    );
    r1.stop().await;
    set_last_active(&w, "burst", now_secs() - Duration::from_secs(200)).await;
    let r2 = router(&w, HOUR).await;
    let all =
        futures::future::join_all((0..20).map(|_| send(r2.http_addr, get("/", &host("burst")))))
            .await;
    for r in all {
        assert_eq!(r.unwrap().0, 200);
    }
    assert_eq!(
        metric(
            r2.admin_addr,
            "substrate_router_activity_sync_reports_total"
        )
        .await,
        1.0,
        "20 concurrent first requests, one write"
    );
    r2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tunnel_keeps_an_actor_with_a_short_idle_timeout_recorded() {
    let w = world().await;
    create_actor(&w, "long", Some("3s")).await;
    let r = router(&w, HOUR).await;
    let mut s = tokio::net::TcpStream::connect(r.http_addr).await.unwrap();
    s.write_all(
        format!(
            "GET /chat HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            host("long")
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    // For twice the idle timeout with no byte through the tunnel, the recorded activity
    // never gets as old as the idle timeout: the operator never finds the actor idle.
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut samples = 0;
    while tokio::time::Instant::now() < until {
        let age = jiff::Timestamp::now() - last_active(&w, "long").await;
        let age = age.total(jiff::Unit::Millisecond).unwrap();
        assert!(
            age < 3000.0,
            "recorded activity {age} ms old with a tunnel open"
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(samples > 10);
    // Still open and echoing.
    s.write_all(b"still").await.unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_writes_the_activity_not_yet_reported() {
    let w = world().await;
    create_actor(&w, "bye", None).await;
    let r = router(&w, HOUR).await;
    assert_eq!(
        send(r.http_addr, get("/", &host("bye"))).await.unwrap().0,
        200
    );
    // Recorded 10 s ago: fresh, so the next requests are not written before an hour.
    let recorded = now_secs() - Duration::from_secs(10);
    set_last_active(&w, "bye", recorded).await;
    for _ in 0..3 {
        assert_eq!(
            send(r.http_addr, get("/", &host("bye"))).await.unwrap().0,
            200
        );
    }
    assert_eq!(last_active(&w, "bye").await, recorded);
    let before = now_secs();
    r.stop().await;
    let after = last_active(&w, "bye").await;
    assert!(
        after >= before,
        "the stop wrote the last requests: {after} < {before}"
    );
}
