//! Leader election: two operators against one apiserver, only the lease holder acts; when it
//! goes, the other takes over. Real apiserver (serving `coordination.k8s.io/v1` leases) and
//! Valkey.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;

use common::*;
use crds::substrate::Actor;
use operator::{LeaderConfig, Operator, OperatorConfig};

fn elected(w: &World, identity: &str) -> Arc<Operator> {
    elected_for(w, identity, Duration::from_secs(3))
}

fn elected_for(w: &World, identity: &str, lease_duration: Duration) -> Arc<Operator> {
    let mut lc = LeaderConfig::new("default", "substrate-operator", identity);
    lc.lease_duration = lease_duration;
    lc.renew_deadline = lease_duration * 2 / 3;
    lc.retry_period = Duration::from_millis(300);
    Operator::elected(
        w.client.clone(),
        OperatorConfig {
            resync: Duration::from_secs(60),
            default_idle_timeout: Duration::from_secs(3600),
            ..OperatorConfig::default()
        },
        lc,
    )
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("substrate-operator")
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

fn acted(op: &Operator) -> u64 {
    operator::metrics::CONTROLLERS
        .iter()
        .map(|c| op.metrics().counts(c).reconciles)
        .sum()
}

async fn always_actor(w: &World, name: &str) {
    let actors: Api<Actor> = Api::namespaced(w.client.clone(), "team-a");
    create(
        &actors,
        json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": name}, "spec": {"template": {"name": "t"}, "activation": "Always"}}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_acts_and_a_standby_takes_over_when_it_goes() {
    let w = world().await;
    atespace(&w, "team-a").await;
    template(&w, "team-a").await;
    for (i, n) in ["w0", "w1", "w2"].iter().enumerate() {
        free_worker(&w, n, &format!("10.0.0.{}", i + 2)).await;
    }
    let _beats = heartbeats(&w, &["w0", "w1", "w2"]);
    let leases: Api<Lease> = Api::namespaced(w.client.clone(), "default");

    let a = elected(&w, "op-a");
    let a_task = tokio::spawn(a.clone().run());
    eventually("op-a holds the lease", Duration::from_secs(30), || {
        let leases = leases.clone();
        async move { (holder(&leases).await.as_deref() == Some("op-a")).then_some(()) }
    })
    .await;
    let b = elected(&w, "op-b");
    let b_task = tokio::spawn(b.clone().run());

    always_actor(&w, "x1").await;
    until_phase(&w, "team-a", "x1", "Resuming", Duration::from_secs(30)).await;
    // Several renew periods: b stays a standby, with no caches and no reconcile.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(acted(&a) > 0);
    assert_eq!(acted(&b), 0, "the standby acted");
    assert!(b.cache_keys().is_none(), "the standby runs controllers");
    assert_eq!(holder(&leases).await.as_deref(), Some("op-a"));

    // The leader goes away without releasing the lease (its future dropped).
    a_task.abort();
    let _ = a_task.await;
    let t = Instant::now();
    eventually("op-b takes the lease over", Duration::from_secs(30), || {
        let leases = leases.clone();
        async move { (holder(&leases).await.as_deref() == Some("op-b")).then_some(()) }
    })
    .await;
    eprintln!(
        "op-b took over {:?} after op-a stopped (lease duration 3s)",
        t.elapsed()
    );
    let lease = leases.get("substrate-operator").await.expect("lease");
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));
    always_actor(&w, "x2").await;
    until_phase(&w, "team-a", "x2", "Resuming", Duration::from_secs(30)).await;
    assert!(acted(&b) > 0);
    b_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_shutting_down_releases_the_lease() {
    let w = world().await;
    let leases: Api<Lease> = Api::namespaced(w.client.clone(), "default");
    // A lease far longer than the test waits: only a release lets another replica take it.
    let a = elected_for(&w, "op-a", Duration::from_secs(120));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let a_task = tokio::spawn(a.clone().run_until(async {
        let _ = rx.await;
    }));
    eventually("op-a holds the lease", Duration::from_secs(30), || {
        let leases = leases.clone();
        async move { (holder(&leases).await.as_deref() == Some("op-a")).then_some(()) }
    })
    .await;
    let _ = tx.send(());
    a_task.await.expect("op-a stops");
    assert_eq!(holder(&leases).await, None, "the lease is released");
    // A standby takes a released lease at once, without waiting out its duration.
    let b = elected_for(&w, "op-b", Duration::from_secs(120));
    let b_task = tokio::spawn(b.clone().run());
    eventually(
        "op-b takes the released lease",
        Duration::from_secs(30),
        || {
            let leases = leases.clone();
            async move { (holder(&leases).await.as_deref() == Some("op-b")).then_some(()) }
        },
    )
    .await;
    b_task.abort();
}
