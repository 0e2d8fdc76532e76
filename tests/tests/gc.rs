//! Snapshot garbage collection end to end, all real (Valkey, the apiserver, the node agent
//! with runsc sandboxes, the operator, a `file://` object store): a tenant's memory images
//! do not outlive the tenant.
//!
//! Actors in two atespaces run and are suspended, so their snapshots are in the store (and in
//! the node's cache). `kubectl delete atespace` of one removes every object of its actors
//! from the store (at once: the operator sees the actors' deletions), then from the node's
//! snapshot cache and unpacked restore directories, while the other atespace's snapshots are
//! untouched. An actor deleted while no operator runs loses its snapshots to the operator's
//! first sweep once they are older than the grace (`--snapshot-gc-grace`), which also leaves
//! a live actor only the snapshot it resumes from; that actor then resumes with its state
//! (the counter continues). A deleted template's golden actor and snapshot go too.
//!
//! Needs root and runsc; skipped with a message otherwise, unless `SUBSTRATE_REQUIRE_RUNSC=1`.

use std::time::Duration;

use e2e::{Options, System, eventually, eventually_within, first_int, http, phase};
use serde_json::{Value, json};

/// Creates actor `ns/name` from the `counter` template of `team-a`.
fn create_actor(sys: &System, ns: &str, name: &str) -> String {
    sys.kube.create(&json!({
        "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"template": {"name": "counter", "namespace": "team-a"}},
    }));
    actor(sys, ns, name)["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string()
}

fn actor(sys: &System, ns: &str, name: &str) -> Value {
    sys.kube.get("actor", name, Some(ns))
}

/// Resumes `ns/name`, sends `requests` GETs (asserting the counter goes on from `from`),
/// suspends it and waits for its new snapshot. Returns the counter and the snapshot's URI.
fn run_and_suspend(sys: &System, ns: &str, name: &str, from: u64, requests: u64) -> (u64, String) {
    let path = e2e::actor_path(ns, name);
    let before = actor(sys, ns, name)["status"]["snapshot"]["uri"].clone();
    sys.kube.post(&format!("{path}/resume"));
    let running = eventually(&format!("{ns}/{name} Running"), || {
        let a = actor(sys, ns, name);
        assert_ne!(phase(&a), "Failed", "{a}\n{}", sys.log("nodeagent"));
        (phase(&a) == "Running").then_some(a)
    });
    let url = System::actor_url(&running);
    let mut n = from;
    for _ in 0..requests {
        let body = http("GET", &format!("{url}/"), None).expect("GET /");
        n += 1;
        assert_eq!(first_int(&body), n, "{ns}/{name} counts on: {body}");
    }
    sys.kube.post(&format!("{path}/suspend"));
    let uri = eventually(
        &format!("{ns}/{name} Suspended with a new snapshot"),
        || {
            let a = actor(sys, ns, name);
            let uri = &a["status"]["snapshot"]["uri"];
            (phase(&a) == "Suspended" && uri.is_string() && *uri != before)
                .then(|| uri.as_str().unwrap_or_default().to_string())
        },
    );
    (n, uri)
}

/// `<id>` of a snapshot URI `.../<atespace>/<actor>/<id>/manifest.json`.
fn id_of(uri: &str) -> String {
    uri.trim_end_matches("/manifest.json")
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn snapshots_do_not_outlive_their_actors() {
    let mut opts = Options::new("e2e-gc", "10.220.0.0/16", 1500);
    opts.workers = 2;
    let Some(mut sys) = System::start(opts) else {
        return;
    };
    sys.start_operator();
    eventually("the template's golden snapshot", || {
        let t = sys.kube.get("actortemplate", "counter", Some("team-a"));
        t["status"]["snapshot"]["uri"].as_str().map(str::to_string)
    });
    sys.wait_free_workers(2);
    for ns in ["gc-a", "gc-b"] {
        sys.kube.create(&json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace", "metadata": {"name": ns}}));
    }

    // Three actors of gc-a, run and suspended: snapshots in the store and the node's cache.
    let mut doomed = Vec::new();
    for name in ["a1", "a2", "a3"] {
        let uid = create_actor(&sys, "gc-a", name);
        let (_, uri) = run_and_suspend(&sys, "gc-a", name, 0, 2);
        let id = id_of(&uri);
        assert!(
            id.ends_with(&uid),
            "the snapshot id {id} names its actor {uid}"
        );
        assert_eq!(sys.stored_snapshot_ids("gc-a", name), vec![id]);
        doomed.push(uid);
    }
    assert!(!sys.cached_snapshot_files("gc-a").is_empty());
    // gc-b: b1 suspended twice (two snapshots), b2 once.
    create_actor(&sys, "gc-b", "b1");
    let (n, _) = run_and_suspend(&sys, "gc-b", "b1", 0, 3);
    let (n, b1_uri) = run_and_suspend(&sys, "gc-b", "b1", n, 2);
    create_actor(&sys, "gc-b", "b2");
    run_and_suspend(&sys, "gc-b", "b2", 0, 1);
    assert_eq!(sys.stored_snapshot_ids("gc-b", "b1").len(), 2);
    let kept = sys.stored_snapshot_files("gc-b");

    // Delete the tenant: every object of its actors leaves the store.
    sys.kube.ok(&["delete", "atespace", "gc-a"], None);
    eventually("no object of gc-a's actors in the store", || {
        sys.stored_snapshot_files("gc-a").is_empty().then_some(())
    });
    // ...then the node's cache and unpacked snapshots (swept every 30 s after a 60 s grace).
    eventually_within(
        Duration::from_secs(240),
        "no snapshot of gc-a's actors on the node",
        || {
            let restores: Vec<String> =
                doomed.iter().flat_map(|u| sys.restore_dirs_of(u)).collect();
            (sys.cached_snapshot_files("gc-a").is_empty() && restores.is_empty()).then_some(())
        },
    );
    // The other tenant's snapshots are untouched (young: within the default 10m grace).
    assert_eq!(sys.stored_snapshot_files("gc-b"), kept);
    let log = sys.log("operator");
    assert!(
        log.contains("snapshot garbage-collected"),
        "the operator logs each deletion"
    );

    // An actor deleted while no operator runs: the next operator's sweep removes its
    // snapshots once older than the grace, and leaves b1 only the snapshot it resumes from.
    sys.stop_operator();
    sys.kube.ok(&["delete", "actor", "b2", "-n", "gc-b"], None);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        sys.stored_snapshot_ids("gc-b", "b2").len(),
        1,
        "nothing collects without an operator"
    );
    sys.start_operator_with(&["--snapshot-gc-grace=3s"]);
    eventually("b2's snapshots collected, b1's superseded one too", || {
        let b2 = sys.stored_snapshot_files("gc-b");
        let b1 = sys.stored_snapshot_ids("gc-b", "b1");
        (!b2.iter().any(|f| f.starts_with("b2/")) && b1 == vec![id_of(&b1_uri)]).then_some(())
    });
    // The template's golden snapshot is still there (named by the template's status).
    let t = sys.kube.get("actortemplate", "counter", Some("team-a"));
    let golden = id_of(t["status"]["snapshot"]["uri"].as_str().unwrap());
    let golden_actor = sys.stored_snapshot_files("ate-golden");
    assert!(
        golden_actor
            .iter()
            .any(|f| f.ends_with(&format!("{golden}/manifest.json"))),
        "{golden_actor:?}"
    );
    // b1 resumes with its state.
    let (_, b1_last) = run_and_suspend(&sys, "gc-b", "b1", n, 1);

    // A deleted template takes its golden actor and the golden snapshot with it.
    sys.kube.ok(
        &["delete", "actortemplate", "counter", "-n", "team-a"],
        None,
    );
    eventually("the golden actor and its snapshot gone", || {
        let (ok, _, _) = sys.kube.run(
            &["get", "actor", "team-a-counter", "-n", "ate-golden"],
            None,
        );
        (!ok && sys.stored_snapshot_files("ate-golden").is_empty()).then_some(())
    });
    // b1 keeps the snapshot it resumes from; the one before goes once older than the grace.
    eventually("b1 left with its newest snapshot", || {
        (sys.stored_snapshot_ids("gc-b", "b1") == vec![id_of(&b1_last)]).then_some(())
    });
}
