//! Shared setup of the operator's integration tests: a real Valkey and apiserver.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crds::substrate::{Actor, Worker};

pub struct World {
    pub client: kube::Client,
    _running: apiserver::Running,
    _valkey: apiserver::testing::ValkeyServer,
    _dir: tempfile::TempDir,
}

pub async fn world() -> World {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let valkey = apiserver::testing::ValkeyServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (args, kubeconfig) = apiserver::testing::apiserver_args(&valkey, dir.path());
    let running = apiserver::start(&args).await.expect("apiserver starts");
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    let client = kube::Client::try_from(config).expect("client");
    World {
        client,
        _running: running,
        _valkey: valkey,
        _dir: dir,
    }
}

pub fn now_minus(secs: i64) -> String {
    (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(secs))
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub async fn create<K>(api: &Api<K>, v: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v).expect("object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create")
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn atespace(w: &World, name: &str) {
    let ates: Api<crds::substrate::Atespace> = Api::all(w.client.clone());
    create(&ates, json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace", "metadata": {"name": name}, "spec": {}})).await;
}

/// Template `t` of pool `p` in `ns`.
pub async fn template(w: &World, ns: &str) {
    let templates: Api<crds::ate::ActorTemplate> = Api::namespaced(w.client.clone(), ns);
    create(&templates, json!({"apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
        "metadata": {"name": "t"}, "spec": {"containers": [{"name": "c", "image": "127.0.0.1:5000/x:1"}],
        "workerPoolRef": {"name": "p"}}})).await;
}

/// A `Free` worker of pool `p` on node `n`, heartbeating now.
pub async fn free_worker(w: &World, name: &str, address: &str) {
    let workers: Api<Worker> = Api::all(w.client.clone());
    create(
        &workers,
        json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Worker",
        "metadata": {"name": name}, "spec": {"pool": "p", "node": "n", "address": address}}),
    )
    .await;
    heartbeat(w, name, Some("Free")).await;
}

/// Plays the node agent's heartbeat of `name` (and sets its phase when given).
pub async fn heartbeat(w: &World, name: &str, phase: Option<&str>) {
    let workers: Api<Worker> = Api::all(w.client.clone());
    let mut st = json!({"lastHeartbeatTime": now_minus(0)});
    if let Some(p) = phase {
        st["phase"] = json!(p);
    }
    workers
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": st })),
        )
        .await
        .expect("heartbeat");
}

/// Heartbeats `workers` every second until dropped (the node agent's part).
pub fn heartbeats(w: &World, workers: &[&str]) -> tokio::task::JoinHandle<()> {
    let client = w.client.clone();
    let names: Vec<String> = workers.iter().map(|s| s.to_string()).collect();
    tokio::spawn(async move {
        let api: Api<Worker> = Api::all(client);
        loop {
            for n in &names {
                let _ = api
                    .patch_status(
                        n,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"lastHeartbeatTime": now_minus(0)}})),
                    )
                    .await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// An actor in `ns` already bound and running on `worker` (as the node agent leaves it).
pub async fn running_actor(w: &World, ns: &str, name: &str, worker: &str, spec: Value) {
    let actors: Api<Actor> = Api::namespaced(w.client.clone(), ns);
    create(
        &actors,
        json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": name}, "spec": spec}),
    )
    .await;
    actors
        .patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": {
            "phase": "Running", "worker": {"name": worker, "pool": "p", "node": "n", "address": "10.0.0.2"},
            "lastActiveTime": now_minus(0),
            "snapshot": {"uri": "file:///snap/1/manifest.json", "digest": "sha256:ab"}}})))
        .await
        .expect("status");
    let workers: Api<Worker> = Api::all(w.client.clone());
    workers
        .patch_status(
            worker,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
            "phase": "Bound", "actor": {"namespace": ns, "name": name}}})),
        )
        .await
        .expect("bind worker");
}

pub fn phase(a: &Actor) -> String {
    a.status
        .as_ref()
        .and_then(|s| s.phase)
        .map(|p| format!("{p:?}"))
        .unwrap_or_default()
}

/// Waits until actor `ns/name` is in `want` phase; returns how long it took.
pub async fn until_phase(w: &World, ns: &str, name: &str, want: &str, limit: Duration) -> Duration {
    let actors: Api<Actor> = Api::namespaced(w.client.clone(), ns);
    let t = Instant::now();
    eventually(&format!("{ns}/{name} is {want}"), limit, || {
        let actors = actors.clone();
        async move {
            let a = actors.get(name).await.ok()?;
            (phase(&a) == want).then_some(())
        }
    })
    .await;
    t.elapsed()
}
