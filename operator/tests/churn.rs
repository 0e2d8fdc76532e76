//! Issue 12: thousands of actors deleted at once (their atespace deleted) must not starve the
//! operator's real work, nor leave it acting on deleted objects. Real apiserver and Valkey;
//! the node agent's part is played through the status subresource.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

use common::*;
use crds::substrate::{Actor, Atespace};
use operator::{Operator, OperatorConfig};

const CHURN: usize = 3000;

fn config() -> OperatorConfig {
    OperatorConfig {
        resync: Duration::from_secs(60),
        default_idle_timeout: Duration::from_secs(3600),
        ..OperatorConfig::default()
    }
}

/// Every actor on the apiserver, as `namespace/name`.
async fn apiserver_actors(w: &World) -> Vec<String> {
    let api: Api<Actor> = Api::all(w.client.clone());
    let mut out: Vec<String> = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(|a| {
            format!(
                "{}/{}",
                a.metadata.namespace.as_deref().unwrap_or_default(),
                a.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_atespace_of_thousands_of_actors_does_not_starve_other_work() {
    let w = world().await;
    atespace(&w, "team-a").await;
    atespace(&w, "churn").await;
    template(&w, "team-a").await;
    // The churned actors live in another atespace: the template shares itself with it.
    Api::<crds::ate::ActorTemplate>::namespaced(w.client.clone(), "team-a")
        .patch(
            "t",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"sharing": {"atespaces": ["churn"]}}})),
        )
        .await
        .expect("share the template");
    free_worker(&w, "w0", "10.0.0.2").await;
    free_worker(&w, "w1", "10.0.0.3").await;
    // The template's golden actor takes one worker.
    free_worker(&w, "w2", "10.0.0.4").await;
    let _beats = heartbeats(&w, &["w0", "w1", "w2"]);
    running_actor(
        &w,
        "team-a",
        "runner",
        "w0",
        json!({"template": {"name": "t"}}),
    )
    .await;

    let op = Operator::new(w.client.clone(), config());
    let metrics = op.metrics();
    let task = tokio::spawn(op.clone().run());

    // Thousands of suspended actors in one atespace.
    let churn: Api<Actor> = Api::namespaced(w.client.clone(), "churn");
    futures::stream::iter(0..CHURN)
        .for_each_concurrent(32, |i| {
            let churn = churn.clone();
            async move {
                create(&churn, json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
                    "metadata": {"name": format!("a{i}")},
                    "spec": {"template": {"name": "t", "namespace": "team-a"}, "activation": "Suspended"}}))
                .await;
            }
        })
        .await;
    // The operator has seen them all (it records observedGeneration on each).
    eventually(
        "the operator caches every actor",
        Duration::from_secs(120),
        || {
            let keys = op.cache_keys();
            async move { (keys?.actors.len() > CHURN).then_some(()) }
        },
    )
    .await;

    // Delete the atespace: thousands of actors go at once.
    let ates: Api<Atespace> = Api::all(w.client.clone());
    ates.delete("churn", &Default::default())
        .await
        .expect("delete atespace");
    // Meanwhile: a running actor is told to suspend, and a new Always actor must be resumed.
    let t = Instant::now();
    let actors: Api<Actor> = Api::namespaced(w.client.clone(), "team-a");
    actors
        .patch(
            "runner",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"activation": "Suspended"}})),
        )
        .await
        .expect("spec change");
    create(&actors, json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": "always"}, "spec": {"template": {"name": "t"}, "activation": "Always"}})).await;
    let (suspended, resumed) = tokio::join!(
        until_phase(
            &w,
            "team-a",
            "runner",
            "Suspending",
            Duration::from_secs(30)
        ),
        until_phase(&w, "team-a", "always", "Resuming", Duration::from_secs(30)),
    );
    eprintln!(
        "during the churn: Suspended spec acted on after {suspended:?}, Always actor resumed after {resumed:?} (since the atespace delete began {:?} ago)",
        t.elapsed()
    );

    // The atespace and its actors are gone from the apiserver.
    eventually("the atespace is deleted", Duration::from_secs(120), || {
        let ates = ates.clone();
        async move { ates.get_opt("churn").await.ok()?.is_none().then_some(()) }
    })
    .await;
    // The operator's caches hold exactly the apiserver's objects.
    let want = apiserver_actors(&w).await;
    assert!(want.iter().all(|k| !k.starts_with("churn/")), "{want:?}");
    eventually(
        "the operator's actor cache matches the apiserver",
        Duration::from_secs(30),
        || {
            let keys = op.cache_keys();
            let want = want.clone();
            async move { (keys?.actors == want).then_some(()) }
        },
    )
    .await;
    let keys = op.cache_keys().expect("caches");
    let workers: BTreeSet<&str> = keys.workers.iter().map(String::as_str).collect();
    assert_eq!(workers, BTreeSet::from(["w0", "w1", "w2"]));
    assert_eq!(keys.templates, ["team-a/t"]);

    // Requests on deleted actors: at most one per actor (a reconcile in flight when it
    // went), and none later.
    let gone = |m: &operator::Metrics| {
        operator::metrics::CONTROLLERS
            .iter()
            .map(|c| m.counts(c).gone)
            .sum::<u64>()
    };
    let after = gone(&metrics);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        gone(&metrics),
        after,
        "the operator keeps acting on deleted actors"
    );
    assert!(after <= CHURN as u64, "{after} requests on deleted actors");
    let errors: u64 = operator::metrics::CONTROLLERS
        .iter()
        .map(|c| metrics.counts(c).errors)
        .sum();
    eprintln!("requests that found their actor deleted: {after}; reconcile errors: {errors}");
    eprintln!("{}", metrics.render());
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_is_acted_on_at_once() {
    let w = world().await;
    atespace(&w, "team-a").await;
    template(&w, "team-a").await;
    free_worker(&w, "w0", "10.0.0.2").await;
    free_worker(&w, "w1", "10.0.0.3").await;
    let _beats = heartbeats(&w, &["w0", "w1"]);
    let actors: Api<Actor> = Api::namespaced(w.client.clone(), "team-a");
    create(
        &actors,
        json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": "x"}, "spec": {"template": {"name": "t"}}}),
    )
    .await;
    // No periodic pass helps: the safety resync is an hour.
    let op = Operator::new(
        w.client.clone(),
        OperatorConfig {
            resync: Duration::from_secs(3600),
            default_idle_timeout: Duration::from_secs(3600),
            ..OperatorConfig::default()
        },
    );
    let task = tokio::spawn(op.clone().run());
    eventually(
        "the operator caches the actor",
        Duration::from_secs(30),
        || {
            let keys = op.cache_keys();
            async move { keys?.actors.contains(&"team-a/x".to_string()).then_some(()) }
        },
    )
    .await;
    // Let the first reconcile settle (observedGeneration).
    eventually(
        "observedGeneration is recorded",
        Duration::from_secs(30),
        || {
            let actors = actors.clone();
            async move {
                let a = actors.get("x").await.ok()?;
                (a.status?.observed_generation == Some(1)).then_some(())
            }
        },
    )
    .await;
    let t = Instant::now();
    actors
        .patch(
            "x",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"activation": "Always"}})),
        )
        .await
        .expect("spec change");
    until_phase(&w, "team-a", "x", "Resuming", Duration::from_secs(30)).await;
    eprintln!(
        "activation: Always acted on {:?} after the spec change",
        t.elapsed()
    );
    task.abort();
}
