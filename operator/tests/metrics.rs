//! The operator's admin endpoint (`operator::metrics::bind`) against a real apiserver and
//! Valkey: `/metrics` reports the sizes of the watch caches, equal to the apiserver's objects
//! once they are synced, and follows a delete; the health paths answer 200; a standby (no
//! controllers running) reports no caches.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use kube::api::{Api, DeleteParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{atespace, create, eventually, template, world};
use crds::substrate::Actor;
use operator::{Operator, OperatorConfig};

/// `GET path` over HTTP/1.1 (connection closed after): status and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// The value of the sample `name` (with its labels) in a Prometheus text body.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_cache_sizes_equal_to_the_apiservers_objects() {
    let w = world().await;
    atespace(&w, "team-a").await;
    template(&w, "team-a").await;
    let actors: Api<Actor> = Api::namespaced(w.client.clone(), "team-a");
    for i in 0..5 {
        create(
            &actors,
            json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
                "metadata": {"name": format!("a{i}")},
                "spec": {"template": {"name": "t"}, "activation": "Suspended"}}),
        )
        .await;
    }
    let op = Operator::new(w.client.clone(), OperatorConfig::default());
    let admin = operator::metrics::bind("127.0.0.1:0".parse().unwrap(), op.metrics())
        .await
        .expect("bind");
    let addr = admin.local_addr().expect("addr");
    let _serve = tokio::spawn(admin.run());
    for path in ["/healthz", "/livez", "/readyz"] {
        assert_eq!(get(addr, path).await, (200, "ok\n".to_string()), "{path}");
    }
    assert_eq!(get(addr, "/nope").await.0, 404);
    // Not running yet: no caches to report.
    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(&text, "ate_operator_controllers_running"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "ate_operator_cache_objects{kind=\"actors\"}"),
        None
    );

    let task = tokio::spawn(op.clone().run());
    // The golden controller adds a golden actor for the template: compare with whatever
    // the apiserver holds, not a constant.
    let all: Api<Actor> = Api::all(w.client.clone());
    let n = eventually(
        "the cache sizes equal the apiserver's counts",
        Duration::from_secs(30),
        || {
            let all = all.clone();
            async move {
                let want = all.list(&Default::default()).await.ok()?.items.len();
                let (_, text) = get(addr, "/metrics").await;
                let got = sample(&text, "ate_operator_cache_objects{kind=\"actors\"}")?;
                let templates = sample(&text, "ate_operator_cache_objects{kind=\"templates\"}")?;
                (sample(&text, "ate_operator_controllers_running") == Some(1.0)
                    && got == want as f64
                    && templates == 1.0)
                    .then_some(want)
            }
        },
    )
    .await;
    assert!(n >= 5, "{n}");
    assert_eq!(
        op.cache_keys().map(|k| k.actors.len()),
        Some(n),
        "the gauge counts the same store as cache_keys"
    );

    actors
        .delete("a0", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(
        "the deleted actor leaves the cache size",
        Duration::from_secs(30),
        || async move {
            let (_, text) = get(addr, "/metrics").await;
            let got = sample(&text, "ate_operator_cache_objects{kind=\"actors\"}")?;
            (got == (n - 1) as f64).then_some(())
        },
    )
    .await;
    let (_, text) = get(addr, "/metrics").await;
    assert!(
        sample(
            &text,
            "ate_operator_reconciles_total{controller=\"lifecycle\"}"
        )
        .is_some_and(|v| v >= 5.0),
        "{text}"
    );

    task.abort();
    let _ = task.await;
    // The controllers stopped: their caches are no longer reported.
    let (_, text) = get(addr, "/metrics").await;
    assert_eq!(
        sample(&text, "ate_operator_controllers_running"),
        Some(0.0),
        "{text}"
    );
}
