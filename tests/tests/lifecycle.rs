//! An actor's lifecycle end to end (real Valkey, apiserver, registry, node agent, executors,
//! runsc, operator), issue 12:
//!
//! * deleting a running actor stops its sandbox and frees its worker before the object goes
//!   (the `substrate.ate.dev/sandbox` finalizer), so with a pool of one worker the next actor
//!   runs at once instead of after the scheduler's orphan grace;
//! * a transition stuck on a live worker meets its deadline: a suspend whose upload keeps
//!   failing is reported `Stalled` (and completes, state intact, once the store is back), a
//!   resume whose image pull hangs fails with a condition saying why.
//!
//! Address ranges: 10.219.0.0/16 (index base 1400) and 10.225.0.0/16 (index base 2000).

use std::net::TcpListener;
use std::time::{Duration, Instant};

use e2e::{Options, System, condition, eventually, first_int, http, phase};
use serde_json::{Value, json};

const SANDBOX_FINALIZER: &str = "substrate.ate.dev/sandbox";

/// Waits for the template's golden snapshot (the operator boots it on a worker first).
fn wait_golden(sys: &System, template: &str) {
    eventually(
        &format!("template {template} has its golden snapshot"),
        || {
            let t = sys.kube.get("actortemplate", template, Some("team-a"));
            (condition(&t, "Ready") == Some("True")).then_some(())
        },
    );
}

/// The condition `type_` of `obj` (the whole object).
fn cond<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

#[test]
fn deleting_a_running_actor_frees_its_only_worker_at_once() {
    let mut opts = Options::new("e2e-fin", "10.219.0.0/16", 1400);
    opts.workers = 1;
    let Some(mut sys) = System::start(opts) else {
        return;
    };
    sys.start_operator();
    wait_golden(&sys, "counter");
    let worker = sys.wait_free_workers(1).remove(0);

    sys.create_actor("a", json!({}));
    sys.action("a", "resume");
    let a = sys.wait_phase("a", "Running");
    assert_eq!(a["metadata"]["finalizers"], json!([SANDBOX_FINALIZER]));
    let reply = http("GET", &System::actor_url(&a), None).expect("a answers");
    assert_eq!(first_int(&reply), 1, "{reply}");
    assert!(
        sys.runsc_containers(&worker)
            .contains(&"team-a_a".to_string()),
        "a's sandbox runs on {worker}"
    );

    // Record every version of the workers and actors from now on.
    let workers = sys.watch(&["workers"]);
    let actors = sys.watch(&["actors", "-n", "team-a"]);
    eventually("the watches list what exists", || {
        (!workers.events().is_empty() && !actors.events().is_empty()).then_some(())
    });

    // `kubectl delete` waits until the object is gone: the finalizer held it while the
    // node agent stopped the sandbox and freed the worker.
    let t = Instant::now();
    sys.kube.ok(&["delete", "actor", "a", "-n", "team-a"], None);
    let deleted = t.elapsed();
    sys.create_actor("b", json!({}));
    sys.action("b", "resume");
    let b = sys.wait_phase("b", "Running");
    let running = t.elapsed();
    assert_eq!(b["status"]["worker"]["name"], worker.as_str());
    let reply = http("GET", &System::actor_url(&b), None).expect("b answers");
    assert_eq!(first_int(&reply), 1, "{reply}");
    eprintln!(
        "delete of a running actor took {deleted:?}; the next actor ran on its worker {running:?} after the delete started"
    );

    // a's last version, the one deleted, is unbound: its node agent stopped the sandbox and
    // said so (not the stop deadline, not a lost worker).
    let events = actors.events();
    let last_a = events
        .iter()
        .rfind(|e| e["object"]["metadata"]["name"] == "a")
        .expect("events of a");
    assert_eq!(last_a["type"], "DELETED", "{last_a}");
    let gone = &last_a["object"];
    assert!(gone["status"]["worker"].is_null(), "{gone}");
    let ready = cond(gone, "Ready").expect("Ready");
    assert_eq!(ready["reason"], "Deleted", "{gone}");
    assert!(gone["metadata"]["deletionTimestamp"].is_string(), "{gone}");

    // The worker went Bound (a) → Free → Bound (b), released by the node agent, not by the
    // scheduler's orphan rule: that rule frees a worker 15 s after marking it `Orphaned`
    // (the mark may appear in the instant between the agent's unbinding of a and its
    // freeing of the worker), and b was bound well before any such mark could have ripened.
    let versions: Vec<Value> = workers
        .events()
        .into_iter()
        .map(|e| e["object"].clone())
        .filter(|w| w["metadata"]["name"] == worker.as_str())
        .collect();
    let states: Vec<(String, String)> = versions
        .iter()
        .map(|w| {
            (
                w["status"]["phase"].as_str().unwrap_or("").to_string(),
                w["status"]["actor"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    let pos = |p: &str, actor: &str| {
        states
            .iter()
            .position(|(ph, ac)| ph == p && ac == actor)
            .unwrap_or_else(|| panic!("no {p} {actor:?} in {states:?}"))
    };
    let (bound_a, free, bound_b) = (pos("Bound", "a"), pos("Free", ""), pos("Bound", "b"));
    assert!(bound_a < free && free < bound_b, "{states:?}");
    let time = |v: &Value| -> jiff::Timestamp {
        v.as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("a time: {v}"))
    };
    let b_bound = time(&cond(&b, "Scheduled").expect("Scheduled")["lastTransitionTime"]);
    for v in &versions[..free] {
        if let Some(o) = cond(v, "Orphaned") {
            let ripe = time(&o["lastTransitionTime"]) + Duration::from_secs(15);
            assert!(
                b_bound < ripe,
                "b was bound at {b_bound}, after the orphan rule could have freed the worker ({ripe}): {v}"
            );
        }
    }
    assert!(
        cond(&versions[free], "Orphaned").is_none(),
        "a free worker carries no Orphaned mark: {}",
        versions[free]
    );

    // a's sandbox is gone, b's runs.
    let containers = sys.runsc_containers(&worker);
    assert!(
        !containers.contains(&"team-a_a".to_string()),
        "{containers:?}"
    );
    assert!(
        containers.contains(&"team-a_b".to_string()),
        "{containers:?}"
    );
    let log = sys.log("nodeagent");
    let stopped = log
        .lines()
        .find(|l| l.contains("deleted actor's sandbox stopped; worker freed"))
        .expect("the node agent stopped a's sandbox");
    eprintln!("node agent: {stopped}");

    // A suspended actor has no sandbox and loses the finalizer: deleting it is immediate.
    sys.action("b", "suspend");
    sys.wait_phase("b", "Suspended");
    eventually("b's finalizer is removed once it is unbound", || {
        sys.actor("b")["metadata"]["finalizers"]
            .is_null()
            .then_some(())
    });
    sys.kube.ok(
        &["delete", "actor", "b", "-n", "team-a", "--wait=false"],
        None,
    );
    let (found, _, _) = sys.kube.run(&["get", "actor", "b", "-n", "team-a"], None);
    assert!(!found, "b is gone at once");

    // With the operator down, a deleted running actor waits (deletionTimestamp set, as in
    // Kubernetes) — its node agent still stops the sandbox and frees the worker — and is
    // finished when the operator is back.
    sys.create_actor("c", json!({}));
    sys.action("c", "resume");
    sys.wait_phase("c", "Running");
    sys.stop_operator();
    sys.kube.ok(
        &["delete", "actor", "c", "-n", "team-a", "--wait=false"],
        None,
    );
    let c = eventually("c's sandbox is stopped while the operator is down", || {
        let c = sys.actor("c");
        (c["status"]["worker"].is_null()).then_some(c)
    });
    assert!(c["metadata"]["deletionTimestamp"].is_string(), "{c}");
    assert_eq!(
        c["metadata"]["finalizers"],
        json!([SANDBOX_FINALIZER]),
        "{c}"
    );
    assert_eq!(cond(&c, "Ready").unwrap()["reason"], "Deleted", "{c}");
    sys.wait_free_workers(1);
    assert!(
        !sys.runsc_containers(&worker)
            .contains(&"team-a_c".to_string())
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(sys.actor("c")["metadata"]["deletionTimestamp"].is_string());
    sys.start_operator();
    eventually("c is deleted once the operator is back", || {
        let (found, _, _) = sys.kube.run(&["get", "actor", "c", "-n", "team-a"], None);
        (!found).then_some(())
    });

    // Deleting an atespace whose actor runs completes too: the cascade marks the actor
    // deleted, its sandbox is stopped and its worker freed, then both go.
    sys.kube.create(
        &json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace",
        "metadata": {"name": "team-z"}}),
    );
    sys.kube.create(
        &json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": "z", "namespace": "team-z"},
        "spec": {"template": {"name": "counter", "namespace": "team-a"}}}),
    );
    sys.kube
        .post(&format!("{}/resume", e2e::actor_path("team-z", "z")));
    eventually("z runs", || {
        let z = sys.kube.get("actor", "z", Some("team-z"));
        (phase(&z) == "Running").then_some(())
    });
    assert!(
        sys.runsc_containers(&worker)
            .contains(&"team-z_z".to_string())
    );
    sys.kube.ok(&["delete", "atespace", "team-z"], None);
    let (found, _, _) = sys.kube.run(&["get", "atespace", "team-z"], None);
    assert!(!found, "the atespace is gone");
    assert!(
        !sys.runsc_containers(&worker)
            .contains(&"team-z_z".to_string())
    );
    sys.assert_no_worker_leak(1);
}

/// Replaces `dir` by a file of the same name (writes under it fail, even as root); undone
/// by [`unblock`].
fn block(dir: &std::path::Path) {
    std::fs::rename(dir, dir.with_extension("away")).expect("move the store away");
    std::fs::write(dir, b"not a directory").expect("blocker file");
}

fn unblock(dir: &std::path::Path) {
    std::fs::remove_file(dir).expect("remove the blocker");
    std::fs::rename(dir.with_extension("away"), dir).expect("move the store back");
}

#[test]
fn transitions_stuck_past_their_deadline_say_why() {
    let store = tempfile::tempdir().expect("store dir");
    let snaps = store.path().join("snaps");
    std::fs::create_dir_all(&snaps).expect("snapshot dir");
    let mut opts = Options::new("e2e-deadline", "10.225.0.0/16", 2000);
    opts.snapshot_url = Some(format!("file://{}", snaps.display()));
    let Some(mut sys) = System::start(opts) else {
        return;
    };
    sys.start_operator_with(&[
        "--resume-deadline-seconds=4",
        "--suspend-deadline-seconds=3",
    ]);
    wait_golden(&sys, "counter");
    sys.wait_free_workers(2);

    // A suspend whose upload keeps failing (the object store is unwritable).
    sys.create_actor("s", json!({}));
    sys.action("s", "resume");
    let a = sys.wait_phase("s", "Running");
    let url = System::actor_url(&a);
    assert_eq!(first_int(&http("GET", &url, None).expect("s answers")), 1);
    block(&snaps);
    sys.action("s", "suspend");
    let stalled = eventually("the suspend is reported stalled at its deadline", || {
        let a = sys.actor("s");
        cond(&a, "Stalled")
            .filter(|c| c["status"] == "True")
            .map(|c| (a.clone(), c.clone()))
    });
    let (a, c) = stalled;
    assert_eq!(c["reason"], "SuspendDeadlineExceeded", "{a}");
    assert!(
        c["message"].as_str().unwrap_or("").contains("within 3s"),
        "{c}"
    );
    // Still suspending on its worker: the node agent keeps retrying.
    assert_eq!(phase(&a), "Suspending", "{a}");
    assert!(a["status"]["worker"]["name"].is_string(), "{a}");
    // The store is back: the retried suspend completes with the checkpoint it took, so the
    // actor's memory is intact.
    unblock(&snaps);
    let a = sys.wait_phase("s", "Suspended");
    assert!(a["status"]["snapshot"]["uri"].is_string(), "{a}");
    assert_eq!(cond(&a, "Stalled").unwrap()["status"], "False", "{a}");
    sys.action("s", "resume");
    let a = sys.wait_phase("s", "Running");
    let reply = http("GET", &System::actor_url(&a), None).expect("s answers again");
    assert_eq!(first_int(&reply), 2, "the counter continues: {reply}");
    sys.action("s", "suspend");
    sys.wait_phase("s", "Suspended");

    // A resume whose image pull hangs (a "registry" that accepts connections and never
    // answers; the node agent's read timeout is 60 s).
    let tarpit = TcpListener::bind("127.0.0.1:0").expect("tarpit");
    let port = tarpit.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in tarpit.incoming().flatten() {
            held.push(c);
        }
    });
    sys.kube.create(&json!({
        "apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
        "metadata": {"name": "hangs", "namespace": "team-a"},
        "spec": {"containers": [{"name": "c", "image": format!("127.0.0.1:{port}/hangs/image:1")}],
                 "workerPoolRef": {"name": sys.pool}},
    }));
    sys.kube.create(&json!({
        "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": "h", "namespace": "team-a"},
        "spec": {"template": {"name": "hangs"}},
    }));
    let started = Instant::now();
    sys.action("h", "resume");
    let a = eventually("the hung resume fails at its deadline", || {
        let a = sys.actor("h");
        (phase(&a) == "Failed").then_some(a)
    });
    let failed_after = started.elapsed();
    let stalled = cond(&a, "Stalled").expect("Stalled");
    assert_eq!(stalled["status"], "True", "{a}");
    assert_eq!(stalled["reason"], "ResumeDeadlineExceeded", "{a}");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap_or("")
            .contains("within 4s"),
        "{a}"
    );
    assert_eq!(
        cond(&a, "Ready").unwrap()["reason"],
        "ResumeDeadlineExceeded"
    );
    assert!(a["status"]["worker"].is_null(), "{a}");
    // (The reason is the operator's: the node agent's own failure would say ResumeFailed,
    // after its 60 s read timeout.)
    eprintln!("the hung resume failed {failed_after:?} after it was asked for");
    // The node agent abandons the hung pull and frees the worker itself (not 15 s later by
    // the scheduler's orphan rule).
    eventually("the node agent abandons the hung resume", || {
        sys.log("nodeagent")
            .lines()
            .any(|l| l.contains("resume overtaken") && l.contains("actor=team-a/h"))
            .then_some(())
    });
}
