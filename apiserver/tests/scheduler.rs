//! The scheduler through the real API: `POST .../actors/<name>/resume` and `/suspend`, worker
//! claims under contention, waiting for a free worker, and orphaned-worker release. The node
//! agent's part (status updates after a checkpoint) is played by the test over HTTP.

mod support;

use std::collections::BTreeSet;

use serde_json::{Value, json};

use support::{World, eventually};

const API: &str = "/apis/substrate.ate.dev/v1alpha1";

fn post_json(w: &World, path: &str, body: &Value) -> support::Http {
    w.http(
        "POST",
        path,
        Some(("application/json", body.to_string().as_bytes())),
    )
}

fn merge_status(w: &World, path: &str, status: &Value) {
    let r = w.http(
        "PATCH",
        &format!("{path}/status"),
        Some((
            "application/merge-patch+json",
            json!({"status": status}).to_string().as_bytes(),
        )),
    );
    assert_eq!(r.code, 200, "patching {path}/status: {}", r.body);
}

/// A pool `small` with a template `counter` in `team-a`, and `n` heartbeating free workers.
fn setup(w: &World, n: usize) {
    w.atespace("team-a");
    let r = post_json(
        w,
        "/apis/ate.dev/v1alpha1/namespaces/team-a/actortemplates",
        &json!({
            "apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
            "metadata": {"name": "counter"},
            "spec": {"containers": [{"name": "main", "image": "127.0.0.1:5000/counter:latest"}],
                     "workerPoolRef": {"name": "small"},
                     // Actors of other atespaces (team-c) use it too.
                     "sharing": {"atespaceSelector": {}}},
        }),
    );
    assert_eq!(r.code, 201, "{}", r.body);
    for i in 0..n {
        add_worker(w, &format!("w-{i}"), "small");
    }
}

fn add_worker(w: &World, name: &str, pool: &str) {
    let r = post_json(
        w,
        &format!("{API}/workers"),
        &json!({
            "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Worker",
            "metadata": {"name": name, "labels": {"size": "s"}},
            "spec": {"pool": pool, "node": "node-1", "address": format!("10.203.0.{}", 2 + name.len())},
        }),
    );
    assert_eq!(r.code, 201, "{}", r.body);
    heartbeat(w, name, "Free");
}

fn heartbeat(w: &World, name: &str, phase: &str) {
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    merge_status(
        w,
        &format!("{API}/workers/{name}"),
        &json!({"phase": phase, "lastHeartbeatTime": now}),
    );
}

fn actor(w: &World, name: &str) {
    let r = post_json(
        w,
        &format!("{API}/namespaces/team-a/actors"),
        &json!({
            "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
            "metadata": {"name": name},
            "spec": {"template": {"name": "counter"}},
        }),
    );
    assert_eq!(r.code, 201, "{}", r.body);
}

fn get(w: &World, path: &str) -> Value {
    let r = w.http("GET", path, None);
    assert_eq!(r.code, 200, "GET {path}: {}", r.body);
    r.json()
}

fn actor_path(name: &str) -> String {
    format!("{API}/namespaces/team-a/actors/{name}")
}

fn resume(w: &World, name: &str) -> support::Http {
    w.http("POST", &format!("{}/resume", actor_path(name)), None)
}

fn condition<'a>(obj: &'a Value, t: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
}

/// What the node agent does after a checkpoint: the actor goes `Suspended` without a worker,
/// then the worker is freed.
fn finish_suspend(w: &World, name: &str) {
    let a = get(w, &actor_path(name));
    let worker = a["status"]["worker"]["name"].as_str().unwrap().to_string();
    let r = w.http(
        "PATCH",
        &format!("{}/status", actor_path(name)),
        Some((
            "application/merge-patch+json",
            json!({"status": {"phase": "Suspended", "worker": null,
                   "snapshot": {"uri": "file:///tmp/snap/1"}}})
            .to_string()
            .as_bytes(),
        )),
    );
    assert_eq!(r.code, 200, "{}", r.body);
    let r = w.http(
        "PATCH",
        &format!("{API}/workers/{worker}/status"),
        Some((
            "application/merge-patch+json",
            json!({"status": {"phase": "Free", "actor": null}})
                .to_string()
                .as_bytes(),
        )),
    );
    assert_eq!(r.code, 200, "{}", r.body);
}

#[test]
fn resume_binds_a_free_worker_and_is_idempotent() {
    let Some(w) = support::world() else { return };
    setup(&w, 1);
    actor(&w, "a1");
    let r = resume(&w, "a1");
    assert_eq!(r.code, 200, "{}", r.body);
    let a = r.json();
    assert_eq!(a["status"]["phase"], "Resuming");
    assert_eq!(a["status"]["worker"]["name"], "w-0");
    assert_eq!(a["status"]["worker"]["pool"], "small");
    assert_eq!(a["status"]["worker"]["node"], "node-1");
    assert_eq!(condition(&a, "Scheduled").unwrap()["status"], "True");
    assert_eq!(condition(&a, "Ready").unwrap()["reason"], "Resuming");
    let wk = get(&w, &format!("{API}/workers/w-0"));
    assert_eq!(wk["status"]["phase"], "Bound");
    assert_eq!(wk["status"]["actor"]["name"], "a1");
    assert_eq!(wk["status"]["actor"]["uid"], a["metadata"]["uid"]);

    // Again: same answer, nothing written.
    let rv = a["metadata"]["resourceVersion"].clone();
    let again = resume(&w, "a1");
    assert_eq!(again.code, 200, "{}", again.body);
    assert_eq!(again.json()["metadata"]["resourceVersion"], rv);
    assert_eq!(again.json()["status"]["worker"]["name"], "w-0");

    // kubectl sees the worker column.
    let out = w.ok(&["get", "actor", "a1", "-n", "team-a", "--no-headers"]);
    assert!(out.contains("w-0") && out.contains("Resuming"), "{out}");
}

#[test]
fn resume_errors_are_clear_and_write_nothing() {
    let Some(w) = support::world() else { return };
    setup(&w, 1);
    let r = resume(&w, "missing");
    assert_eq!(r.code, 404, "{}", r.body);
    assert_eq!(
        r.message(),
        "actors.substrate.ate.dev \"missing\" not found"
    );

    // A template that does not exist yet.
    let r = post_json(
        &w,
        &format!("{API}/namespaces/team-a/actors"),
        &json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
                "metadata": {"name": "orphan"}, "spec": {"template": {"name": "nope"}}}),
    );
    assert_eq!(r.code, 201, "{}", r.body);
    let rv = w.actors_rv();
    let r = resume(&w, "orphan");
    assert_eq!(r.code, 409, "{}", r.body);
    assert!(
        r.message()
            .contains("actortemplates.ate.dev \"nope\" not found"),
        "{}",
        r.body
    );
    // activation: Suspended refuses.
    let r = post_json(
        &w,
        &format!("{API}/namespaces/team-a/actors"),
        &json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
                "metadata": {"name": "kept"},
                "spec": {"template": {"name": "counter"}, "activation": "Suspended"}}),
    );
    assert_eq!(r.code, 201, "{}", r.body);
    let rv2 = w.actors_rv();
    assert_ne!(rv, rv2);
    let r = resume(&w, "kept");
    assert_eq!(r.code, 409, "{}", r.body);
    assert!(
        r.message().contains("spec.activation=Suspended"),
        "{}",
        r.body
    );
    assert_eq!(w.actors_rv(), rv2, "refused resumes write nothing");
    assert_eq!(
        get(&w, &format!("{API}/workers/w-0"))["status"]["phase"],
        "Free"
    );
    // Only POST.
    let r = w.http("GET", &format!("{}/resume", actor_path("kept")), None);
    assert_eq!(r.code, 405, "{}", r.body);
    // Unknown subresource.
    let r = w.http("POST", &format!("{}/reboot", actor_path("kept")), None);
    assert_eq!(r.code, 404, "{}", r.body);
}

#[test]
fn concurrent_resumes_never_share_a_worker_and_the_rest_wait() {
    let Some(w) = support::world() else { return };
    setup(&w, 3);
    let names: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
    for n in &names {
        actor(&w, n);
    }
    let codes: Vec<(String, u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|n| {
                let w = &w;
                s.spawn(move || {
                    let r = resume(w, n);
                    let j = r.json();
                    (n.clone(), r.code, j)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let bound: Vec<_> = codes.iter().filter(|(_, c, _)| *c == 200).collect();
    let waiting: Vec<_> = codes.iter().filter(|(_, c, _)| *c == 202).collect();
    assert_eq!(bound.len(), 3, "{codes:#?}");
    assert_eq!(waiting.len(), 5, "{codes:#?}");
    let workers: BTreeSet<&str> = bound
        .iter()
        .map(|(_, _, a)| a["status"]["worker"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(workers.len(), 3, "three distinct workers: {workers:?}");
    for (_, _, a) in &waiting {
        let c = condition(a, "Scheduled").expect("Scheduled condition");
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], "NoFreeWorker");
        assert!(
            c["message"]
                .as_str()
                .unwrap()
                .contains("no free worker in pool \"small\""),
            "{c}"
        );
        // Said where everyone reads it: not ready, in progress (kstatus, Argo CD).
        for t in ["Ready", "Reconciling"] {
            assert_eq!(condition(a, t).unwrap()["reason"], "NoFreeWorker", "{a}");
        }
        assert_eq!(condition(a, "Reconciling").unwrap()["status"], "True");
    }
    // Every worker names the actor that names it.
    for (n, _, a) in &bound {
        let wk = get(
            &w,
            &format!(
                "{API}/workers/{}",
                a["status"]["worker"]["name"].as_str().unwrap()
            ),
        );
        assert_eq!(wk["status"]["actor"]["name"], n.as_str());
    }

    // Suspend one bound actor; when the node agent reports the checkpoint done and frees
    // the worker, the oldest waiting actor gets it.
    let (first, _, _) = bound[0];
    let r = w.http("POST", &format!("{}/suspend", actor_path(first)), None);
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.json()["status"]["phase"], "Suspending");
    finish_suspend(&w, first);
    let newly = eventually("a waiting actor is bound to the freed worker", || {
        waiting
            .iter()
            .map(|(n, _, _)| get(&w, &actor_path(n)))
            .find(|a| a["status"]["phase"] == "Resuming")
    });
    assert_eq!(condition(&newly, "Scheduled").unwrap()["status"], "True");
    let still_waiting = waiting
        .iter()
        .filter(|(n, _, _)| get(&w, &actor_path(n))["status"]["phase"] != "Resuming")
        .count();
    assert_eq!(still_waiting, 4);

    // Suspending a waiting actor cancels its wait.
    let (n, _, _) = waiting
        .iter()
        .find(|(n, _, _)| get(&w, &actor_path(n))["status"]["phase"] != "Resuming")
        .unwrap();
    let r = w.http("POST", &format!("{}/suspend", actor_path(n)), None);
    assert_eq!(r.code, 200, "{}", r.body);
    assert!(condition(&r.json(), "Scheduled").is_none(), "{}", r.body);
    // Back at rest.
    for t in ["Ready", "Reconciling"] {
        let c = condition(&r.json(), t).cloned().unwrap();
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some("False"), Some("Suspended"))
        );
    }
}

#[test]
fn stale_or_unhealthy_workers_are_not_used_and_orphans_are_released() {
    let Some(w) = support::world() else { return };
    setup(&w, 0);
    // A worker that never heartbeated is not free.
    let r = post_json(
        &w,
        &format!("{API}/workers"),
        &json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Worker",
                "metadata": {"name": "silent"}, "spec": {"pool": "small"}}),
    );
    assert_eq!(r.code, 201, "{}", r.body);
    actor(&w, "a1");
    let r = resume(&w, "a1");
    assert_eq!(r.code, 202, "{}", r.body);
    // A worker in another pool is not used either; one in the right pool is, by the
    // background pass (no second resume call).
    add_worker(&w, "other", "large");
    add_worker(&w, "good", "small");
    let a = eventually("the waiting actor is bound by the scheduler loop", || {
        let a = get(&w, &actor_path("a1"));
        (a["status"]["phase"] == "Resuming").then_some(a)
    });
    assert_eq!(a["status"]["worker"]["name"], "good");

    // A worker bound to an actor that does not reference it (a crash between claim and
    // bind) is marked, then released.
    let r = w.http(
        "PATCH",
        &format!("{API}/workers/other/status"),
        Some((
            "application/merge-patch+json",
            json!({"status": {"phase": "Bound", "actor": {"namespace": "team-a", "name": "ghost", "uid": "x"}}})
                .to_string()
                .as_bytes(),
        )),
    );
    assert_eq!(r.code, 200, "{}", r.body);
    let marked = eventually("the orphaned worker is marked", || {
        let wk = get(&w, &format!("{API}/workers/other"));
        condition(&wk, "Orphaned").cloned()
    });
    assert_eq!(marked["reason"], "ActorNotBound");
    // The bound worker of a1 points back: it is never marked.
    assert!(condition(&get(&w, &format!("{API}/workers/good")), "Orphaned").is_none());
}

#[test]
fn reset_forgets_a_suspended_actors_snapshot_and_refuses_a_running_one() {
    let Some(w) = support::world() else { return };
    setup(&w, 1);
    actor(&w, "old");
    let r = resume(&w, "old");
    assert_eq!(r.code, 200, "{}", r.body);
    merge_status(
        &w,
        &actor_path("old"),
        &json!({"phase": "Running", "image": "127.0.0.1:5000/counter@sha256:01"}),
    );
    // Running: refused, with what to do, and nothing written.
    let rv = w.actors_rv();
    let r = w.http("POST", &format!("{}/reset", actor_path("old")), None);
    assert_eq!(r.code, 409, "{}", r.body);
    assert!(
        r.message()
            .contains("the actor is Running: suspend it first"),
        "{}",
        r.body
    );
    assert_eq!(w.actors_rv(), rv, "a refused reset writes nothing");
    // Suspended with a snapshot: the snapshot and the image it ran are forgotten.
    let r = w.http("POST", &format!("{}/suspend", actor_path("old")), None);
    assert_eq!(r.code, 200, "{}", r.body);
    finish_suspend(&w, "old");
    let before = get(&w, &actor_path("old"));
    assert_eq!(before["status"]["snapshot"]["uri"], "file:///tmp/snap/1");
    let r = w.http("POST", &format!("{}/reset", actor_path("old")), None);
    assert_eq!(r.code, 200, "{}", r.body);
    let after = r.json();
    assert!(after["status"].get("snapshot").is_none(), "{}", r.body);
    assert!(after["status"].get("image").is_none(), "{}", r.body);
    assert_eq!(after["status"]["phase"], "Suspended");
    assert_eq!(after["spec"], before["spec"], "the spec stays");
    assert_eq!(get(&w, &actor_path("old"))["status"], after["status"]);
    // Again: nothing left to forget, nothing written.
    let rv = w.actors_rv();
    let r = w.http("POST", &format!("{}/reset", actor_path("old")), None);
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(w.actors_rv(), rv);
    // Only POST; unknown actors 404.
    let r = w.http("GET", &format!("{}/reset", actor_path("old")), None);
    assert_eq!(r.code, 405, "{}", r.body);
    let r = w.http("POST", &format!("{}/reset", actor_path("ghost")), None);
    assert_eq!(r.code, 404, "{}", r.body);
}

/// A cordoned worker (`spec.unschedulable`, as `kubectl patch worker` sets it) is never given
/// a new actor: a resume goes to another worker, or waits (`NoFreeWorker`, saying some are
/// cordoned) when only cordoned ones are free; uncordoned, it takes the waiting actor.
#[test]
fn a_cordoned_worker_takes_no_new_actor_until_uncordoned() {
    let Some(w) = support::world() else { return };
    setup(&w, 2);
    let cordon = |name: &str, on: bool| {
        let r = patch(
            &w,
            &format!("{API}/workers/{name}"),
            "application/merge-patch+json",
            &json!({"spec": {"unschedulable": on}}),
        );
        assert_eq!(r.code, 200, "{}", r.body);
        // The scheduler decides from its watch cache: wait until it holds the change.
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    cordon("w-0", true);
    for i in 0..5 {
        let name = format!("a{i}");
        actor(&w, &name);
        let r = resume(&w, &name);
        if i == 0 {
            assert_eq!(r.code, 200, "{}", r.body);
            assert_eq!(r.json()["status"]["worker"]["name"], "w-1", "{}", r.body);
        } else {
            // w-1 is taken, w-0 is cordoned: waiting.
            assert_eq!(r.code, 202, "{}", r.body);
            let c = condition(&r.json(), "Scheduled").cloned().unwrap();
            assert_eq!(c["reason"], "NoFreeWorker");
            assert!(c["message"].as_str().unwrap().contains("1 cordoned"), "{c}");
        }
    }
    assert_eq!(
        get(&w, &format!("{API}/workers/w-0"))["status"]["phase"],
        "Free"
    );
    // Uncordoned: the scheduler loop gives it the oldest waiting actor.
    cordon("w-0", false);
    let a = eventually(
        "the waiting actor is bound to the uncordoned worker",
        || {
            let a = get(&w, &actor_path("a1"));
            (a["status"]["phase"] == "Resuming").then_some(a)
        },
    );
    assert_eq!(a["status"]["worker"]["name"], "w-0");
}

fn patch(w: &World, path: &str, kind: &str, body: &Value) -> support::Http {
    w.http("PATCH", path, Some((kind, body.to_string().as_bytes())))
}

/// Issue 12: a bound actor carries the `substrate.ate.dev/sandbox` finalizer (added by the
/// bind itself), so deleting it leaves it in place, `deletionTimestamp` set, until the
/// finalizer goes (Kubernetes' finalizer semantics); an actor never bound goes at once.
#[test]
fn a_bound_actor_carries_the_sandbox_finalizer_and_its_delete_waits_for_it() {
    let Some(w) = support::world() else { return };
    setup(&w, 1);
    actor(&w, "never");
    actor(&w, "a");

    // Never bound: no finalizer, deleted at once.
    assert!(get(&w, &actor_path("never"))["metadata"]["finalizers"].is_null());
    let r = w.http("DELETE", &actor_path("never"), None);
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(w.http("GET", &actor_path("never"), None).code, 404);

    // Bound: the bind added the finalizer in the same write.
    let r = resume(&w, "a");
    assert_eq!(r.code, 200, "{}", r.body);
    let bound = r.json();
    assert_eq!(bound["status"]["phase"], "Resuming");
    assert_eq!(
        bound["metadata"]["finalizers"],
        json!([crds::finalizers::SANDBOX])
    );

    // Delete: the object stays, marked.
    let r = w.http("DELETE", &actor_path("a"), None);
    assert_eq!(r.code, 200, "{}", r.body);
    let a = get(&w, &actor_path("a"));
    assert!(a["metadata"]["deletionTimestamp"].is_string(), "{a}");
    assert_eq!(a["status"]["phase"], "Resuming");
    // It cannot be resumed again, nor get another finalizer.
    let r = resume(&w, "a");
    assert_eq!(r.code, 409, "{}", r.body);
    assert!(r.message().contains("being deleted"), "{}", r.body);
    let r = patch(
        &w,
        &actor_path("a"),
        "application/json-patch+json",
        &json!([{"op": "add", "path": "/metadata/finalizers/-", "value": "example.com/more"}]),
    );
    assert_eq!(r.code, 422, "{}", r.body);
    // The node agent's status writes (sandbox stopped, actor unbound, worker freed) land;
    // the object still stays: the finalizer is there.
    finish_suspend(&w, "a");
    let a = get(&w, &actor_path("a"));
    assert_eq!(a["status"]["phase"], "Suspended");
    assert_eq!(
        a["metadata"]["finalizers"],
        json!([crds::finalizers::SANDBOX])
    );

    // The operator removes the finalizer with the resourceVersion it looked at: a stale one
    // is refused, the current one deletes the object.
    let rv = a["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let stale = (rv.parse::<u64>().unwrap() - 1).to_string();
    let body = |rv: &str| json!({"metadata": {"resourceVersion": rv, "finalizers": []}});
    let r = patch(
        &w,
        &actor_path("a"),
        "application/merge-patch+json",
        &body(&stale),
    );
    assert_eq!(r.code, 409, "{}", r.body);
    assert_eq!(w.http("GET", &actor_path("a"), None).code, 200);
    let r = patch(
        &w,
        &actor_path("a"),
        "application/merge-patch+json",
        &body(&rv),
    );
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(w.http("GET", &actor_path("a"), None).code, 404);
    // The worker is free for the next actor.
    actor(&w, "b");
    assert_eq!(resume(&w, "b").code, 200);
}

/// Deleting an atespace whose actor is bound waits for the actor's finalizer, then completes.
#[test]
fn an_atespace_delete_completes_once_its_bound_actors_are_finalized() {
    let Some(w) = support::world() else { return };
    setup(&w, 1);
    w.atespace("team-c");
    let r = post_json(
        &w,
        &format!("{API}/namespaces/team-c/actors"),
        &json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
            "metadata": {"name": "c"},
            "spec": {"template": {"name": "counter", "namespace": "team-a"}}}),
    );
    assert_eq!(r.code, 201, "{}", r.body);
    let path = format!("{API}/namespaces/team-c/actors/c");
    let r = w.http("POST", &format!("{path}/resume"), None);
    assert_eq!(r.code, 200, "{}", r.body);
    let r = w.http("DELETE", &format!("{API}/atespaces/team-c"), None);
    assert_eq!(r.code, 200, "{}", r.body);
    // The cascade marks the actor deleted; the finalizer holds it and the atespace.
    let a = eventually("the atespace's delete reaches its actor", || {
        let a = get(&w, &path);
        a["metadata"]["deletionTimestamp"].is_string().then_some(a)
    });
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert_eq!(w.http("GET", &path, None).code, 200);
    assert_eq!(
        w.http("GET", &format!("{API}/atespaces/team-c"), None).code,
        200
    );
    let rv = a["metadata"]["resourceVersion"].as_str().unwrap();
    let r = patch(
        &w,
        &path,
        "application/merge-patch+json",
        &json!({"metadata": {"resourceVersion": rv, "finalizers": null}}),
    );
    assert_eq!(r.code, 200, "{}", r.body);
    eventually("the atespace is deleted", || {
        (w.http("GET", &format!("{API}/atespaces/team-c"), None).code == 404).then_some(())
    });
}

#[test]
fn an_idle_suspend_loses_to_activity_recorded_after_its_decision() {
    let Some(w) = support::world() else { return };
    setup(&w, 1);
    actor(&w, "idle");
    assert_eq!(resume(&w, "idle").code, 200);
    let path = actor_path("idle");
    merge_status(
        &w,
        &path,
        &json!({"phase": "Running", "lastActiveTime": "2026-01-01T00:00:10Z"}),
    );
    let suspend = |body: &Value| post_json(&w, &format!("{path}/suspend"), body);
    // The operator judged the actor idle at 00:00:05; a router recorded 00:00:10 since.
    let r = suspend(&json!({"preconditions": {"lastActiveTime": "2026-01-01T00:00:05Z"}}));
    assert_eq!(r.code, 409, "{}", r.body);
    assert!(r.body.contains("2026-01-01T00:00:10Z"), "{}", r.body);
    assert_eq!(get(&w, &path)["status"]["phase"], "Running");
    // Options that cannot be read suspend nothing.
    for bad in [
        json!({"preconditions": {"lastActiveTime": "soon"}}),
        json!({"preconditions": {"uid": "x"}}),
        json!([]),
    ] {
        let r = suspend(&bad);
        assert_eq!(r.code, 400, "{bad}: {}", r.body);
    }
    assert_eq!(get(&w, &path)["status"]["phase"], "Running");
    // The activity it judged is the latest: suspended.
    let r = suspend(&json!({"preconditions": {"lastActiveTime": "2026-01-01T00:00:10Z"}}));
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.json()["status"]["phase"], "Suspending");
}

#[test]
fn a_new_binding_does_not_inherit_an_orphan_mark_of_an_earlier_one() {
    let Some(w) = support::world() else { return };
    setup(&w, 1);
    // w-0 was bound before, marked orphaned a minute ago, then released by a status patch
    // that kept the mark (as the operator's release of a lost worker does) and heartbeats
    // again: free, with a stale `Orphaned` condition.
    let minute_ago = (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60))
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    merge_status(
        &w,
        &format!("{API}/workers/w-0"),
        &json!({"conditions": [{"type": "Orphaned", "status": "True", "reason": "ActorNotBound",
                                "message": "the bound actor does not reference this worker",
                                "lastTransitionTime": minute_ago}]}),
    );
    heartbeat(&w, "w-0", "Free");
    actor(&w, "a1");
    let r = resume(&w, "a1");
    assert_eq!(r.code, 200, "{}", r.body);
    // The claim starts the orphan clock afresh: a pass between the claim and the bind (the
    // claim's write wakes the scheduler before the bind reaches its cache) may mark the
    // worker again, but not with the old time, so it does not free the worker under its
    // new actor; once the bind is seen the mark goes.
    let claimed = get(&w, &format!("{API}/workers/w-0"));
    if let Some(c) = condition(&claimed, "Orphaned") {
        assert_ne!(c["lastTransitionTime"], minute_ago, "{claimed}");
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    let wk = get(&w, &format!("{API}/workers/w-0"));
    assert_eq!(wk["status"]["phase"], "Bound", "{wk}");
    assert_eq!(wk["status"]["actor"]["name"], "a1", "{wk}");
    assert!(condition(&wk, "Orphaned").is_none(), "{wk}");
    // Nor is the worker marked and unmarked meanwhile (the pass its claim woke runs before
    // the bind is in the cache): the claim was its last write.
    assert_eq!(
        wk["metadata"]["resourceVersion"], claimed["metadata"]["resourceVersion"],
        "{claimed}\n{wk}"
    );
    actor(&w, "a2");
    let r = resume(&w, "a2");
    assert_eq!(r.code, 202, "the only worker is a1's: {}", r.body);
}
