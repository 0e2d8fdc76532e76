//! The operator's lifecycle policies against a real apiserver and Valkey (no runsc needed:
//! the node agent's part is played by the test through the status subresource).

use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crds::ate::ActorTemplate;
use crds::substrate::{Actor, Worker};
use operator::{Operator, OperatorConfig};

mod common;

use common::{World, create, now_minus, world};

async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A pool `p` with template `t` in `team-a`, one worker heartbeating now or `stale_secs` ago.
async fn setup(w: &World, worker_heartbeat_age: i64) {
    let ates: Api<crds::substrate::Atespace> = Api::all(w.client.clone());
    create(&ates, json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace", "metadata": {"name": "team-a"}, "spec": {}})).await;
    let templates: Api<ActorTemplate> = Api::namespaced(w.client.clone(), "team-a");
    create(&templates, json!({"apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
        "metadata": {"name": "t"}, "spec": {"containers": [{"name": "c", "image": "127.0.0.1:5000/x:1"}],
        "workerPoolRef": {"name": "p"}}})).await;
    free_worker(w, "w0", "10.0.0.2", worker_heartbeat_age).await;
}

/// A `Free` worker of pool `p` on node `n`, its last heartbeat `heartbeat_age` seconds ago.
async fn free_worker(w: &World, name: &str, address: &str, heartbeat_age: i64) {
    let workers: Api<Worker> = Api::all(w.client.clone());
    create(
        &workers,
        json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Worker",
        "metadata": {"name": name}, "spec": {"pool": "p", "node": "n", "address": address}}),
    )
    .await;
    workers
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
            "phase": "Free", "lastHeartbeatTime": now_minus(heartbeat_age)}})),
        )
        .await
        .expect("heartbeat");
}

/// An actor already bound and running on `w0` (as the node agent leaves it).
async fn running_actor(w: &World, name: &str, spec: Value, last_active_age: i64) {
    let actors: Api<Actor> = Api::namespaced(w.client.clone(), "team-a");
    create(
        &actors,
        json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": name}, "spec": spec}),
    )
    .await;
    actors
        .patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": {
            "phase": "Running", "worker": {"name": "w0", "pool": "p", "node": "n", "address": "10.0.0.2"},
            "lastActiveTime": now_minus(last_active_age),
            "snapshot": {"uri": "file:///snap/1/manifest.json", "digest": "sha256:ab"}}})))
        .await
        .expect("status");
    let workers: Api<Worker> = Api::all(w.client.clone());
    workers
        .patch_status(
            "w0",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
            "phase": "Bound", "actor": {"namespace": "team-a", "name": name}}})),
        )
        .await
        .expect("bind worker");
}

fn start_operator(w: &World) -> tokio::task::JoinHandle<()> {
    let op = Operator::new(
        w.client.clone(),
        OperatorConfig {
            resync: Duration::from_millis(500),
            default_idle_timeout: Duration::from_secs(3600),
            ..OperatorConfig::default()
        },
    );
    tokio::spawn(op.run())
}

fn phase(a: &Actor) -> String {
    a.status
        .as_ref()
        .and_then(|s| s.phase)
        .map(|p| format!("{p:?}"))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_on_demand_actors_are_suspended_and_busy_ones_are_not() {
    let w = world().await;
    setup(&w, 0).await;
    running_actor(
        &w,
        "idle",
        json!({"template": {"name": "t"}, "idleTimeout": "2s"}),
        60,
    )
    .await;
    let op = start_operator(&w);
    let actors: Api<Actor> = Api::namespaced(w.client.clone(), "team-a");
    let a = eventually("the idle actor is asked to suspend", || {
        let actors = actors.clone();
        async move {
            let a = actors.get("idle").await.ok()?;
            (phase(&a) == "Suspending").then_some(a)
        }
    })
    .await;
    assert_eq!(
        a.status.unwrap().worker.unwrap().name,
        "w0",
        "the worker stays until the checkpoint is done"
    );
    op.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recently_active_actors_keep_running() {
    let w = world().await;
    setup(&w, 0).await;
    running_actor(
        &w,
        "busy",
        json!({"template": {"name": "t"}, "idleTimeout": "1h"}),
        5,
    )
    .await;
    let op = start_operator(&w);
    // Several passes (500 ms each) must leave it alone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let actors: Api<Actor> = Api::namespaced(w.client.clone(), "team-a");
    assert_eq!(phase(&actors.get("busy").await.unwrap()), "Running");
    op.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_of_a_dead_worker_return_to_their_last_snapshot() {
    let w = world().await;
    setup(&w, 120).await; // the worker last heartbeated two minutes ago
    running_actor(&w, "orphan", json!({"template": {"name": "t"}}), 0).await;
    let op = start_operator(&w);
    let actors: Api<Actor> = Api::namespaced(w.client.clone(), "team-a");
    let a = eventually("the actor is back to Suspended", || {
        let actors = actors.clone();
        async move {
            let a = actors.get("orphan").await.ok()?;
            (phase(&a) == "Suspended").then_some(a)
        }
    })
    .await;
    let st = a.status.unwrap();
    assert!(st.worker.is_none());
    assert_eq!(
        st.snapshot.unwrap().uri,
        "file:///snap/1/manifest.json",
        "the last good snapshot is kept"
    );
    let ready = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.reason, "WorkerLost");
    let workers: Api<Worker> = Api::all(w.client.clone());
    let wk = eventually("the worker is marked Unhealthy", || {
        let workers = workers.clone();
        async move {
            let wk = workers.get("w0").await.ok()?;
            let p = wk
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .map(|p| format!("{p:?}"));
            (p.as_deref() == Some("Unhealthy")).then_some(wk)
        }
    })
    .await;
    assert!(wk.status.unwrap().actor.is_none());
    op.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_actors_are_resumed() {
    let w = world().await;
    setup(&w, 0).await;
    // A second worker: the template's golden actor (never booted here) may take either.
    free_worker(&w, "w1", "10.0.0.3", 0).await;
    let actors: Api<Actor> = Api::namespaced(w.client.clone(), "team-a");
    create(&actors, json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": "always"}, "spec": {"template": {"name": "t"}, "activation": "Always"}})).await;
    let op = start_operator(&w);
    let a = eventually("the Always actor is bound", || {
        let actors = actors.clone();
        async move {
            let a = actors.get("always").await.ok()?;
            (phase(&a) == "Resuming").then_some(a)
        }
    })
    .await;
    let worker = a.status.unwrap().worker.unwrap().name;
    assert!(worker == "w0" || worker == "w1", "{worker}");
    op.abort();
}

/// Plays the node agent giving up a resume: the actor is `Failed` and its worker free.
async fn fail_resume(w: &World, name: &str) {
    let actors: Api<Actor> = Api::namespaced(w.client.clone(), "team-a");
    let worker = actors
        .get(name)
        .await
        .expect("actor")
        .status
        .and_then(|s| s.worker)
        .expect("bound")
        .name;
    actors
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
            "phase": "Failed", "worker": null,
            "conditions": [{"type": "Ready", "status": "False", "reason": "ResumeFailed",
                "message": "image not found", "lastTransitionTime": now_minus(0)}]}})),
        )
        .await
        .expect("status");
    let workers: Api<Worker> = Api::all(w.client.clone());
    workers
        .patch_status(
            &worker,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Free", "actor": null,
                "lastHeartbeatTime": now_minus(0)}})),
        )
        .await
        .expect("worker freed");
}

#[tokio::test]
async fn failed_always_actors_are_retried_with_backoff() {
    let w = world().await;
    setup(&w, 0).await;
    // A second worker: the template's golden actor (never booted here) holds one.
    free_worker(&w, "w1", "10.0.0.3", 0).await;
    let actors: Api<Actor> = Api::namespaced(w.client.clone(), "team-a");
    create(&actors, json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": "flaky"}, "spec": {"template": {"name": "t"}, "activation": "Always"}})).await;
    let op = start_operator(&w);
    let resumed = || {
        let actors = actors.clone();
        async move {
            let a = actors.get("flaky").await.ok()?;
            (phase(&a) == "Resuming").then_some(())
        }
    };
    eventually("the Always actor is bound", resumed).await;

    // First failure: retried at once.
    fail_resume(&w, "flaky").await;
    let t = Instant::now();
    eventually("the first retry", resumed).await;
    let first = t.elapsed();

    // Second failure in a row: not before the base delay.
    fail_resume(&w, "flaky").await;
    let t = Instant::now();
    eventually("the second retry", resumed).await;
    let second = t.elapsed();
    assert!(
        second >= operator::RETRY_BASE - Duration::from_millis(1500),
        "the second retry waited {second:?}, the first {first:?}; backoff base {:?}",
        operator::RETRY_BASE
    );
    assert!(first < second, "first retry {first:?}, second {second:?}");
    op.abort();
}

#[tokio::test]
async fn observed_generation_follows_the_spec_of_settled_actors() {
    let w = world().await;
    setup(&w, 0).await;
    let actors: Api<Actor> = Api::namespaced(w.client.clone(), "team-a");
    create(&actors, json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": "gen"}, "spec": {"template": {"name": "t"}, "activation": "Suspended"}})).await;
    actors
        .patch(
            "gen",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"idleTimeout": "1m"}})),
        )
        .await
        .expect("spec change");
    let op = start_operator(&w);
    let a = eventually("observedGeneration catches up with generation 2", || {
        let actors = actors.clone();
        async move {
            let a = actors.get("gen").await.ok()?;
            let observed = a.status.as_ref()?.observed_generation;
            (observed == Some(2)).then_some(a)
        }
    })
    .await;
    assert_eq!(a.metadata.generation, Some(2));
    op.abort();
}

/// kstatus' generic rules (sigs.k8s.io/cli-utils `checkGenericProperties`), as Flux applies
/// them: `true` when the actor is `Current`.
fn kstatus_current(a: &Actor) -> bool {
    let Some(st) = a.status.as_ref() else {
        return true;
    };
    let behind = st
        .observed_generation
        .is_some_and(|o| Some(o) != a.metadata.generation);
    let on = |t: &str| cond(&st.conditions, t).is_some_and(|c| c.status == "True");
    !behind && !on("Reconciling") && !on("Stalled")
}

/// The operator with a resync far away: only watch events trigger it.
fn start_operator_no_resync(w: &World) -> tokio::task::JoinHandle<()> {
    let op = Operator::new(
        w.client.clone(),
        OperatorConfig {
            resync: Duration::from_secs(3600),
            default_idle_timeout: Duration::from_secs(3600),
            ..OperatorConfig::default()
        },
    );
    tokio::spawn(op.run())
}

#[tokio::test]
async fn a_created_actor_is_in_progress_until_the_operator_settles_it() {
    let w = world().await;
    setup(&w, 0).await;
    let actors: Api<Actor> = Api::namespaced(w.client.clone(), "team-a");
    // Without an operator, a fresh actor is not Current: Flux and `kubectl wait` wait.
    let a = create(
        &actors,
        json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": "fresh"}, "spec": {"template": {"name": "t"}}}),
    )
    .await;
    let st = a.status.as_ref().expect("initial status");
    let reconciling = cond(&st.conditions, "Reconciling").expect("Reconciling");
    assert_eq!(
        (reconciling.status.as_str(), reconciling.reason.as_str()),
        ("True", "Created")
    );
    assert!(!kstatus_current(&a));
    // An actor whose template does not exist (yet) is created all the same.
    let orphan = create(&actors, json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": "early"}, "spec": {"template": {"name": "later"}, "activation": "Suspended"}})).await;
    create(&actors, json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": "early-always"}, "spec": {"template": {"name": "later"}, "activation": "Always"}})).await;
    let ready = cond(&orphan.status.as_ref().unwrap().conditions, "Ready")
        .unwrap()
        .clone();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "TemplateNotFound")
    );

    let op = start_operator_no_resync(&w);
    let start = Instant::now();
    let a = eventually("the operator settles the fresh actor", || {
        let actors = actors.clone();
        async move {
            let a = actors.get("fresh").await.ok()?;
            kstatus_current(&a).then_some(a)
        }
    })
    .await;
    let settled_in = start.elapsed();
    let st = a.status.as_ref().unwrap();
    assert_eq!(st.observed_generation, a.metadata.generation);
    let ready = cond(&st.conditions, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "Suspended")
    );
    let reconciling = cond(&st.conditions, "Reconciling").unwrap();
    assert_eq!(
        (reconciling.status.as_str(), reconciling.reason.as_str()),
        ("False", "Suspended")
    );
    eprintln!("fresh actor settled {settled_in:?} after the operator started");

    // The one without a template waits for it (InProgress), observed all the same...
    let early = eventually("the operator looks at the early actor", || {
        let actors = actors.clone();
        async move {
            let a = actors.get("early").await.ok()?;
            (a.status.as_ref()?.observed_generation == Some(1)).then_some(a)
        }
    })
    .await;
    assert!(!kstatus_current(&early));
    let reconciling = cond(&early.status.as_ref().unwrap().conditions, "Reconciling").unwrap();
    assert_eq!(
        (reconciling.status.as_str(), reconciling.reason.as_str()),
        ("True", "TemplateNotFound")
    );
    // An Always actor is not resumed before its template exists (it waits, saying why).
    let always = eventually("the operator looks at the early Always actor", || {
        let actors = actors.clone();
        async move {
            let a = actors.get("early-always").await.ok()?;
            (a.status.as_ref()?.observed_generation == Some(1)).then_some(a)
        }
    })
    .await;
    assert_eq!(common::phase(&always), "Suspended");
    let ready = cond(&always.status.as_ref().unwrap().conditions, "Ready").unwrap();
    assert_eq!(ready.reason, "TemplateNotFound");
    // ... and settles as soon as the template appears (its watch event, not a resync). A
    // second worker: the template's golden actor takes one.
    free_worker(&w, "w1", "10.0.0.3", 0).await;
    // Transition times have a resolution of a second: the resume's must be newer than the
    // create's.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let templates: Api<ActorTemplate> = Api::namespaced(w.client.clone(), "team-a");
    create(&templates, json!({"apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
        "metadata": {"name": "later"}, "spec": {"containers": [{"name": "c", "image": "127.0.0.1:5000/x:1"}],
        "workerPoolRef": {"name": "p"}}})).await;
    let start = Instant::now();
    let early = eventually("the early actor settles once its template exists", || {
        let actors = actors.clone();
        async move {
            let a = actors.get("early").await.ok()?;
            kstatus_current(&a).then_some(a)
        }
    })
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let ready = cond(&early.status.as_ref().unwrap().conditions, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "Suspended")
    );
    // ... and the Always one is resumed then.
    let always = eventually(
        "the early Always actor resumes once its template exists",
        || {
            let actors = actors.clone();
            async move {
                let a = actors.get("early-always").await.ok()?;
                (common::phase(&a) == "Resuming").then_some(a)
            }
        },
    )
    .await;
    let reconciling = cond(&always.status.as_ref().unwrap().conditions, "Reconciling").unwrap();
    assert_eq!(
        (reconciling.status.as_str(), reconciling.reason.as_str()),
        ("True", "Resuming")
    );
    // The resume deadline runs from the bind, not from the create's Reconciling=True.
    let created = always.metadata.creation_timestamp.clone().unwrap();
    assert!(
        reconciling.last_transition_time.0 > created.0,
        "{reconciling:?} created {created:?}"
    );
    op.abort();
}

fn cond<'a>(
    conds: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conds.iter().find(|c| c.type_ == t)
}

#[tokio::test]
async fn worker_pools_report_ready_replicas_for_kstatus() {
    let w = world().await;
    setup(&w, 0).await; // worker w0 of pool p, heartbeating, Free
    let pools: Api<crds::ate::WorkerPool> = Api::namespaced(w.client.clone(), "default");
    create(
        &pools,
        json!({"apiVersion": "ate.dev/v1alpha1", "kind": "WorkerPool",
        "metadata": {"name": "p", "namespace": "default"}, "spec": {"replicas": 2}}),
    )
    .await;
    let op = start_operator(&w);
    let p = eventually("the pool reports 1 of 2 ready", || {
        let pools = pools.clone();
        async move {
            let p = pools.get("p").await.ok()?;
            (p.status.as_ref()?.ready_replicas == Some(1)).then_some(p)
        }
    })
    .await;
    let st = p.status.unwrap();
    assert_eq!(st.replicas, Some(2));
    assert_eq!(st.observed_generation, p.metadata.generation);
    assert_eq!(cond(&st.conditions, "Ready").unwrap().status, "False");
    assert_eq!(cond(&st.conditions, "Reconciling").unwrap().status, "True");

    free_worker(&w, "w1", "10.0.0.3", 0).await;
    let p = eventually("the pool reports 2 of 2 ready", || {
        let pools = pools.clone();
        async move {
            let p = pools.get("p").await.ok()?;
            (p.status.as_ref()?.ready_replicas == Some(2)).then_some(p)
        }
    })
    .await;
    let st = p.status.unwrap();
    assert_eq!(cond(&st.conditions, "Ready").unwrap().status, "True");
    assert_eq!(cond(&st.conditions, "Reconciling").unwrap().status, "False");
    op.abort();
}

#[tokio::test]
async fn a_failed_golden_boot_stalls_the_template() {
    let w = world().await;
    setup(&w, 0).await;
    let templates: Api<ActorTemplate> = Api::namespaced(w.client.clone(), "team-a");
    let op = start_operator(&w);
    // The golden actor is created and the template says it is reconciling.
    let t = eventually("the template is Reconciling", || {
        let templates = templates.clone();
        async move {
            let t = templates.get("t").await.ok()?;
            let st = t.status.clone()?;
            (cond(&st.conditions, "Reconciling")?.status == "True").then_some(t)
        }
    })
    .await;
    assert_eq!(t.status.unwrap().observed_generation, t.metadata.generation);
    let golden: Api<Actor> = Api::namespaced(w.client.clone(), crds::GOLDEN_ATESPACE);
    eventually("the golden actor is bound", || {
        let golden = golden.clone();
        async move {
            let a = golden.get("team-a-t").await.ok()?;
            (phase(&a) == "Resuming").then_some(())
        }
    })
    .await;
    // The node agent gives up: image not found.
    golden
        .patch_status("team-a-t", &PatchParams::default(), &Patch::Merge(json!({"status": {
            "phase": "Failed", "worker": null,
            "conditions": [{"type": "Ready", "status": "False", "reason": "ResumeFailed",
                "message": "image 127.0.0.1:5000/x:1 not found", "lastTransitionTime": now_minus(0)}]}})))
        .await
        .expect("status");
    let t = eventually("the template is Stalled", || {
        let templates = templates.clone();
        async move {
            let t = templates.get("t").await.ok()?;
            let st = t.status.clone()?;
            (cond(&st.conditions, "Stalled")?.status == "True").then_some(st)
        }
    })
    .await;
    let ready = cond(&t.conditions, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "GoldenBootFailed")
    );
    assert!(ready.message.contains("not found"), "{}", ready.message);
    assert_eq!(cond(&t.conditions, "Reconciling").unwrap().status, "False");
    op.abort();
}

#[tokio::test]
async fn a_new_template_generation_boots_a_new_golden_actor() {
    let w = world().await;
    setup(&w, 0).await;
    let templates: Api<ActorTemplate> = Api::namespaced(w.client.clone(), "team-a");
    // Generation 1 already has its golden snapshot.
    templates
        .patch_status(
            "t",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
            "observedGeneration": 1,
            "snapshot": {"uri": "file:///snap/golden-1/manifest.json"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "GoldenSnapshotReady",
                "message": "m", "lastTransitionTime": now_minus(0), "observedGeneration": 1}]}})),
        )
        .await
        .expect("status");
    templates
        .patch(
            "t",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"containers": [{"name": "c", "image": "127.0.0.1:5000/x:2"}]}}),
            ),
        )
        .await
        .expect("new generation");
    let op = start_operator(&w);
    let golden: Api<Actor> = Api::namespaced(w.client.clone(), crds::GOLDEN_ATESPACE);
    // A golden actor for generation 2 is booted, even after the template says Reconciling
    // at generation 2 (the old snapshot is still recorded meanwhile).
    let a = eventually("a golden actor for generation 2 is bound", || {
        let golden = golden.clone();
        async move {
            let a = golden.get("team-a-t").await.ok()?;
            let generation = a
                .metadata
                .annotations
                .as_ref()?
                .get(operator::GOLDEN_GENERATION)?;
            (generation == "2" && phase(&a) == "Resuming").then_some(a)
        }
    })
    .await;
    assert_eq!(a.spec.template.name, "t");
    let t = templates.get("t").await.unwrap().status.unwrap();
    assert_eq!(cond(&t.conditions, "Reconciling").unwrap().status, "True");
    assert_eq!(t.observed_generation, Some(2));
    op.abort();
}
