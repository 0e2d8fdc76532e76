//! Cordon and drain of a worker, standalone, all real (Valkey, the apiserver, the node agent
//! with two executors and gVisor sandboxes, the operator): `kubectl patch worker` with
//! `spec.unschedulable=true` moves the actor running there — the operator suspends it (a
//! checkpoint) and its next resume lands on the other worker, memory intact — and no new
//! actor lands on the cordoned worker until it is uncordoned. An `Always` actor on a
//! cordoned worker is suspended and resumed elsewhere with nobody asking.
//!
//! Worker range 10.230.0.0/16, index base 2500. Needs root and runsc (skipped with a message
//! otherwise, unless `SUBSTRATE_REQUIRE_RUNSC=1`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use e2e::{Options, System, eventually, first_int, http, phase};

fn worker_of(a: &Value) -> String {
    a["status"]["worker"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("not bound: {a}"))
        .to_string()
}

fn cordon(sys: &System, worker: &str, on: bool) {
    sys.kube.ok(
        &[
            "patch",
            "worker",
            worker,
            "--type=merge",
            "-p",
            &json!({"spec": {"unschedulable": on}}).to_string(),
        ],
        None,
    );
}

/// The `Schedulable` condition of a worker: (status, reason).
fn schedulable(sys: &System, worker: &str) -> Option<(String, String)> {
    let w = sys.kube.get("worker", worker, None);
    let c = w["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Schedulable")?
        .clone();
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
    ))
}

/// GETs the counter of a running actor `n` times; its last answer.
fn count(a: &Value, n: usize) -> u64 {
    let url = System::actor_url(a);
    let mut last = 0;
    for _ in 0..n {
        last = first_int(&http("GET", &format!("{url}/"), None).expect("GET /"));
    }
    last
}

#[test]
fn a_cordoned_worker_is_drained_and_takes_no_new_actors_until_uncordoned() {
    let Some(mut sys) = System::start(Options::new("e2e-cordon", "10.230.0.0/16", 2500)) else {
        return;
    };
    sys.start_operator();
    // The golden snapshot first (its golden actor holds a worker while it boots).
    eventually("the template's golden snapshot", || {
        let t = sys.kube.get("actortemplate", "counter", Some("team-a"));
        let ready = t["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        ready.then_some(())
    });
    sys.wait_free_workers(2);

    // An actor runs on worker A.
    sys.create_actor("web", json!({}));
    sys.action("web", "resume");
    let running = sys.wait_phase("web", "Running");
    let a = worker_of(&running);
    assert_eq!(count(&running, 3), 3);

    // Cordon A: the operator suspends the actor (a checkpoint), and A is free, cordoned.
    let t0 = Instant::now();
    cordon(&sys, &a, true);
    let suspending = eventually(
        "the actor on the cordoned worker is asked to suspend",
        || {
            let s = sys.actor("web");
            (phase(&s) != "Running").then_some(t0.elapsed())
        },
    );
    let drained = eventually("the drained actor is suspended", || {
        let s = sys.actor("web");
        (phase(&s) == "Suspended" && s["status"]["worker"].is_null()).then_some(t0.elapsed())
    });
    eprintln!(
        "cordon -> suspend requested in {suspending:.1?}, checkpointed and suspended in {drained:.1?}"
    );
    let w = eventually("the cordoned worker is free and says Cordoned", || {
        let w = sys.kube.get("worker", &a, None);
        (w["status"]["phase"] == "Free"
            && schedulable(&sys, &a) == Some(("False".into(), "Cordoned".into())))
        .then_some(w)
    });
    assert_eq!(w["spec"]["unschedulable"], true, "{w}");
    let wide = sys.kube.ok(&["get", "worker", &a, "-o", "wide"], None);
    assert!(
        wide.lines()
            .next()
            .unwrap_or_default()
            .contains("UNSCHEDULABLE")
            && wide.lines().nth(1).unwrap_or_default().contains("true"),
        "{wide}"
    );

    // Its next resume lands on the other worker B, from the drain's checkpoint.
    let bound = sys.action("web", "resume");
    let b = worker_of(&bound);
    assert_ne!(b, a, "resumed on the cordoned worker: {bound}");
    let running = sys.wait_phase("web", "Running");
    assert_eq!(count(&running, 1), 4, "the counter continued on {b}");

    // A new actor never lands on A: B is taken, so it waits.
    sys.create_actor("next", json!({}));
    let waiting = sys.action("next", "resume");
    assert!(
        waiting["status"]["worker"].is_null(),
        "not bound: {waiting}"
    );
    let scheduled = waiting["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Scheduled")
        .cloned()
        .unwrap_or_default();
    assert_eq!(scheduled["status"], "False", "{waiting}");
    assert!(
        scheduled["message"]
            .as_str()
            .is_some_and(|m| m.contains("1 cordoned")),
        "{waiting}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let still = sys.actor("next");
    assert!(still["status"]["worker"].is_null(), "{still}");
    assert_eq!(sys.kube.get("worker", &a, None)["status"]["phase"], "Free");

    // Uncordon A: the waiting actor gets it, and A says Schedulable again.
    cordon(&sys, &a, false);
    let next = sys.wait_phase("next", "Running");
    assert_eq!(worker_of(&next), a, "{next}");
    assert_eq!(count(&next, 1), 1);
    assert_eq!(
        schedulable(&sys, &a),
        Some(("True".into(), "Schedulable".into()))
    );

    // An Always actor on a cordoned worker: suspended, then resumed on the other worker at
    // once by the operator, nobody asking. B is freed for it first.
    sys.action("web", "suspend");
    eventually("web suspended", || {
        (phase(&sys.actor("web")) == "Suspended").then_some(())
    });
    sys.kube.ok(
        &[
            "patch",
            "actor",
            "next",
            "-n",
            "team-a",
            "--type=merge",
            "-p",
            r#"{"spec":{"activation":"Always"}}"#,
        ],
        None,
    );
    let t0 = Instant::now();
    cordon(&sys, &a, true);
    let moved = eventually("the Always actor runs on the other worker", || {
        let n = sys.actor("next");
        (phase(&n) == "Running" && n["status"]["worker"]["name"] == b.as_str()).then_some(n)
    });
    eprintln!(
        "Always actor moved off the cordoned worker in {:.1?}",
        t0.elapsed()
    );
    assert_eq!(count(&moved, 1), 2, "the counter continued on {b}");
    assert!(
        sys.log("operator")
            .contains("worker cordoned: suspending its actor to move it"),
        "the operator drained it"
    );
}
