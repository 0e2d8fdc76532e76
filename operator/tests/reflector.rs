//! The operator's caches (kube-runtime reflectors over `Api::<Actor>::all`, default watcher
//! configuration) against a real apiserver and Valkey: a reflector that falls behind the
//! apiserver's watch history while thousands of actors are created and deleted converges to
//! exactly the apiserver's objects once it is polled again (issue 12: it used to keep deleted
//! actors forever).
//!
//! The apiserver keeps a small watch history so the reflector's watch expires (410) within
//! seconds, and the reflector is polled slowly while its relist pages through a namespace
//! that is being deleted, as the operator does during a long pass.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;

use crds::substrate::{Actor, Atespace};

/// Actors created and deleted.
const ACTORS: usize = 3000;
/// Watch events the apiserver keeps (far fewer than the writes, so watches expire).
const HISTORY: usize = 200;
/// Creates in flight at once.
const CONCURRENCY: usize = 32;
/// Bytes of padding per actor (an annotation), so that the events the reflector does not read
/// are more than the loopback socket buffers hold and its watch really falls behind.
const PADDING: usize = 8 * 1024;

struct World {
    client: kube::Client,
    _running: apiserver::Running,
    _valkey: apiserver::testing::ValkeyServer,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let valkey = apiserver::testing::ValkeyServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut args, kubeconfig) = apiserver::testing::apiserver_args(&valkey, dir.path());
    args.watch_history = HISTORY;
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

/// `namespace/name` of every actor the apiserver has (a consistent, unpaginated list).
async fn apiserver_actors(api: &Api<Actor>) -> BTreeSet<String> {
    api.list(&ListParams::default())
        .await
        .expect("list actors")
        .items
        .iter()
        .map(key)
        .collect()
}

fn key(a: &Actor) -> String {
    format!(
        "{}/{}",
        a.metadata.namespace.as_deref().unwrap_or_default(),
        a.metadata.name.as_deref().unwrap_or_default()
    )
}

fn store_keys(store: &reflector::Store<Actor>) -> BTreeSet<String> {
    store.state().iter().map(|a| key(a)).collect()
}

/// How the reflector is polled: `PAUSED` not at all, otherwise a pause of that many
/// microseconds after each event (0: as fast as it comes).
const PAUSED: u64 = u64::MAX;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reflector_that_fell_behind_converges_to_the_apiserver() {
    let w = world().await;
    let all: Api<Actor> = Api::all(w.client.clone());
    let atespaces: Api<Atespace> = Api::all(w.client.clone());
    let ates: Atespace = serde_json::from_value(json!({"apiVersion": "substrate.ate.dev/v1alpha1",
        "kind": "Atespace", "metadata": {"name": "bulk"}, "spec": {}}))
    .expect("atespace");
    atespaces
        .create(&PostParams::default(), &ates)
        .await
        .expect("create atespace");

    // The operator's reflector, polled by a task whose pace the test sets.
    let (store, writer) = reflector::store::<Actor>();
    let pace = Arc::new(AtomicU64::new(0));
    let relists = Arc::new(AtomicU64::new(0));
    let poller = {
        let pace = pace.clone();
        let relists = relists.clone();
        let mut events = watcher(all.clone(), watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .boxed();
        tokio::spawn(async move {
            loop {
                match pace.load(Ordering::Relaxed) {
                    PAUSED => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    0 => {}
                    micros => tokio::time::sleep(Duration::from_micros(micros)).await,
                }
                match events.next().await {
                    Some(Ok(watcher::Event::Init)) => {
                        relists.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(_) => {}
                    None => return,
                }
            }
        })
    };
    store.wait_until_ready().await.expect("reflector synced");

    // Not polled while thousands of actors are created: its watch falls behind the history.
    pace.store(PAUSED, Ordering::Relaxed);
    let ns: Api<Actor> = Api::namespaced(w.client.clone(), "bulk");
    let pad = "x".repeat(PADDING);
    let created = futures::stream::iter(0..ACTORS)
        .map(|i| {
            let ns = ns.clone();
            let pad = pad.clone();
            async move {
                let a: Actor =
                    serde_json::from_value(json!({"apiVersion": "substrate.ate.dev/v1alpha1",
                    "kind": "Actor", "metadata": {"name": format!("a{i:05}"),
                        "annotations": {"test.substrate.ate.dev/padding": pad}},
                    "spec": {"template": {"name": "t"}}}))
                    .expect("actor");
                ns.create(&PostParams::default(), &a).await.map(|_| ())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .filter(|r| futures::future::ready(r.is_ok()))
        .count()
        .await;
    assert_eq!(created, ACTORS, "every actor was created");

    // The atespace goes (its actors are deleted by the apiserver) while the reflector is
    // polled slowly, as during the operator's long passes: it relists page by page while the
    // deletions go on.
    atespaces
        .delete("bulk", &DeleteParams::default())
        .await
        .expect("delete atespace");
    pace.store(300, Ordering::Relaxed);
    let start = Instant::now();
    while !apiserver_actors(&all).await.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the apiserver deletes the atespace's actors"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Polled normally again: the store must converge to exactly the apiserver's objects.
    pace.store(0, Ordering::Relaxed);
    let start = Instant::now();
    loop {
        let want = apiserver_actors(&all).await;
        let have = store_keys(&store);
        if have == want {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the reflector kept {} objects the apiserver does not have (e.g. {:?}) and lacks {} \
             after {} relists",
            have.difference(&want).count(),
            have.difference(&want).next(),
            want.difference(&have).count(),
            relists.load(Ordering::Relaxed),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        relists.load(Ordering::Relaxed) >= 2,
        "the reflector's watch expired and it relisted (the scenario under test)"
    );
    poller.abort();
}
