//! The `substrate.ate.dev/sandbox` finalizer and the transition deadlines, through the real
//! apiserver (and its scheduler) and Valkey; the node agent's part is played through the
//! status subresource, or deliberately not played (a wedged or dead agent).

mod common;

use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::{Value, json};

use common::*;
use crds::finalizers::SANDBOX;
use crds::substrate::{Actor, Worker};
use operator::{Deadlines, Operator, OperatorConfig};

const LIMIT: Duration = Duration::from_secs(30);

fn start_operator(w: &World, deadlines: Deadlines) -> tokio::task::JoinHandle<()> {
    let op = Operator::new(
        w.client.clone(),
        OperatorConfig {
            resync: Duration::from_secs(60),
            default_idle_timeout: Duration::from_secs(3600),
            deadlines,
            ..OperatorConfig::default()
        },
    );
    tokio::spawn(op.run())
}

async fn setup(w: &World) {
    atespace(w, "team-a").await;
    template(w, "team-a").await;
    free_worker(w, "w0", "10.0.0.2").await;
}

/// A running actor `a` on `w0` carrying the sandbox finalizer (as the scheduler binds it).
async fn running_with_finalizer(w: &World) -> Api<Actor> {
    running_actor(w, "team-a", "a", "w0", json!({"template": {"name": "t"}})).await;
    let actors: Api<Actor> = Api::namespaced(w.client.clone(), "team-a");
    actors
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": [SANDBOX]}})),
        )
        .await
        .expect("finalizer");
    actors
}

/// Waits for `a`'s DELETED event on `events`; the object it carries.
async fn deleted_version(events: impl futures::Stream<Item = WatchEvent<Actor>>) -> Actor {
    let mut events = std::pin::pin!(events);
    tokio::time::timeout(LIMIT, async {
        while let Some(e) = events.next().await {
            if let WatchEvent::Deleted(a) = e
                && a.metadata.name.as_deref() == Some("a")
            {
                return a;
            }
        }
        panic!("the watch ended");
    })
    .await
    .expect("a is deleted")
}

async fn watch_actors(actors: &Api<Actor>) -> impl futures::Stream<Item = WatchEvent<Actor>> {
    actors
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch")
        .map(|e| e.expect("watch event"))
}

fn ready_reason(a: &Actor) -> String {
    a.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_actor_goes_once_its_node_agent_has_unbound_it() {
    let w = world().await;
    setup(&w).await;
    let _beats = heartbeats(&w, &["w0"]);
    let actors = running_with_finalizer(&w).await;
    let op = start_operator(&w, Deadlines::default());
    actors
        .delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    // Held while bound.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a = actors.get("a").await.expect("a is held by its finalizer");
    assert!(a.metadata.deletion_timestamp.is_some());
    // The node agent's part: sandbox stopped, actor unbound.
    actors
        .patch_status(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Suspended", "worker": null}})),
        )
        .await
        .expect("unbind");
    eventually("a is deleted", LIMIT, || {
        let actors = actors.clone();
        async move { actors.get_opt("a").await.ok()?.is_none().then_some(()) }
    })
    .await;
    op.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_actor_on_a_dead_worker_goes_and_the_worker_is_marked_unhealthy() {
    let w = world().await;
    setup(&w).await;
    let actors = running_with_finalizer(&w).await;
    // The worker's node agent has been silent for two minutes: its sandbox fenced itself.
    let workers: Api<Worker> = Api::all(w.client.clone());
    workers
        .patch_status(
            "w0",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"lastHeartbeatTime": now_minus(120)}})),
        )
        .await
        .expect("old heartbeat");
    let events = watch_actors(&actors).await;
    let op = start_operator(&w, Deadlines::default());
    actors
        .delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let gone = deleted_version(events).await;
    assert_eq!(ready_reason(&gone), "WorkerLost", "{gone:?}");
    let wk = workers.get("w0").await.expect("w0");
    let st = wk.status.expect("status");
    assert_eq!(format!("{:?}", st.phase.unwrap()), "Unhealthy");
    assert!(st.actor.is_none());
    op.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_actor_whose_live_agent_does_nothing_goes_at_the_stop_deadline() {
    let w = world().await;
    setup(&w).await;
    let _beats = heartbeats(&w, &["w0"]);
    let actors = running_with_finalizer(&w).await;
    let events = watch_actors(&actors).await;
    let op = start_operator(
        &w,
        Deadlines {
            stop: Duration::from_secs(2),
            ..Deadlines::default()
        },
    );
    actors
        .delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let gone = deleted_version(events).await;
    assert_eq!(ready_reason(&gone), "StopDeadlineExceeded", "{gone:?}");
    // Still bound when it went: the worker is left to the scheduler's orphan rule.
    assert!(gone.status.unwrap().worker.is_some());
    op.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_past_its_deadline_fails_and_the_unbound_actor_loses_the_finalizer() {
    let w = world().await;
    setup(&w).await;
    let _beats = heartbeats(&w, &["w0"]);
    let actors: Api<Actor> = Api::namespaced(w.client.clone(), "team-a");
    create(
        &actors,
        json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": "a"}, "spec": {"template": {"name": "t"}}}),
    )
    .await;
    let bound: Value = actors
        .create_subresource("resume", "a", &PostParams::default(), &json!({}))
        .await
        .expect("resume");
    assert_eq!(bound["status"]["phase"], "Resuming");
    assert_eq!(bound["metadata"]["finalizers"], json!([SANDBOX]));
    let op = start_operator(
        &w,
        Deadlines {
            resume: Duration::from_secs(2),
            ..Deadlines::default()
        },
    );
    // Nobody resumes it (no node agent): it fails at the deadline, saying why...
    let a = eventually("the resume fails at its deadline", LIMIT, || {
        let actors = actors.clone();
        async move {
            let a = actors.get("a").await.ok()?;
            (phase(&a) == "Failed").then_some(a)
        }
    })
    .await;
    let st = a.status.clone().unwrap();
    assert!(st.worker.is_none());
    let stalled = st.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "ResumeDeadlineExceeded")
    );
    // ... and, unbound, loses the finalizer: deleting it needs no controller.
    eventually("the failed actor's finalizer is removed", LIMIT, || {
        let actors = actors.clone();
        async move {
            let a = actors.get("a").await.ok()?;
            a.metadata
                .finalizers
                .unwrap_or_default()
                .is_empty()
                .then_some(())
        }
    })
    .await;
    op.abort();
}
