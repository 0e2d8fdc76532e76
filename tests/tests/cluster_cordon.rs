//! Cluster mode: `kubectl cordon` of a Node cordons its Workers (`spec.unschedulable`,
//! annotated as the operator's), and so does the cluster-autoscaler's scale-down taint; the
//! running actor of a cordoned worker is asked to suspend (drained); `kubectl uncordon` (the
//! taint removed) uncordons only the workers the operator cordoned — one cordoned by hand
//! stays cordoned. Real kube-apiserver 1.25 + etcd (envtest, no kubelet: the test creates the
//! Node objects), Substrate's apiserver registered as an APIService, and the operator binary
//! with `--mode=cluster` and only its ServiceAccount's RBAC (`config/rbac/operator.yaml`). No
//! sandbox runs: the node agent's part (heartbeats, Running) is played by the test.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use e2e::envtest::identity::Identity;
use e2e::envtest::substrate::Substrate;
use e2e::envtest::{self, Envtest};
use e2e::{KillOnDrop, SUBSTRATE_TLS_NAME, eventually, workspace_bin};

const SUBSTRATE: &str = "/apis/substrate.ate.dev/v1alpha1";
const BY_NODE: &str = "substrate.ate.dev/cordoned-by-node";

fn call(who: &Identity, method: &str, path: &str, body: Option<&Value>) -> Value {
    let (code, out) = who.request(method, path, body);
    assert!(
        (200..300).contains(&code),
        "{} {method} {path}: {code} {out}",
        who.user
    );
    out
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A Worker of pool `small` on `node`, free and heartbeating (as its node agent would).
fn worker(admin: &Identity, name: &str, node: &str, unschedulable: bool) {
    call(
        admin,
        "POST",
        &format!("{SUBSTRATE}/workers"),
        Some(&json!({
            "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Worker",
            "metadata": {"name": name},
            "spec": {"pool": "small", "node": node, "address": "10.230.0.2",
                     "unschedulable": unschedulable},
        })),
    );
    heartbeat(admin, name);
}

fn heartbeat(admin: &Identity, name: &str) {
    call(
        admin,
        "PATCH",
        &format!("{SUBSTRATE}/workers/{name}/status"),
        Some(&json!({"status": {"phase": "Free", "lastHeartbeatTime": now()}})),
    );
}

/// (spec.unschedulable, the operator's annotation) of a worker.
fn cordoned(admin: &Identity, name: &str) -> (bool, Option<String>) {
    let w = call(admin, "GET", &format!("{SUBSTRATE}/workers/{name}"), None);
    (
        w["spec"]["unschedulable"] == true,
        w["metadata"]["annotations"][BY_NODE]
            .as_str()
            .map(str::to_string),
    )
}

fn wait_cordoned(admin: &Identity, name: &str, want: (bool, Option<&str>)) -> Duration {
    let t0 = Instant::now();
    eventually(&format!("worker {name} cordoned: {want:?}"), || {
        let (u, by) = cordoned(admin, name);
        (u == want.0 && by.as_deref() == want.1).then_some(t0.elapsed())
    })
}

fn kubectl(admin: &Identity, args: &[&str]) {
    let (ok, out, err) = admin.kubectl(args);
    assert!(ok, "kubectl {args:?}: {out}\n{err}");
}

#[test]
fn a_cordoned_node_cordons_its_workers_and_drains_them() {
    let Some(env) = Envtest::start_with(envtest::Options {
        controller_manager: false,
    }) else {
        return;
    };
    let substrate = Substrate::start(&env);
    let admin = env.admin.clone();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    env.kubectl().ok(
        &[
            "apply",
            "-f",
            &root.join("config/rbac/operator.yaml").display().to_string(),
        ],
        None,
    );
    let sa = env.service_account_identity(envtest::SUBSTRATE_NAMESPACE, "substrate-operator");

    for n in ["node-a", "node-b"] {
        call(
            &admin,
            "POST",
            "/api/v1/nodes",
            Some(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}})),
        );
    }
    worker(&admin, "w-a1", "node-a", false);
    worker(&admin, "w-a2", "node-a", false);
    worker(&admin, "w-b1", "node-b", false);
    // Cordoned by hand (`kubectl patch worker`): the node's uncordon must leave it.
    worker(&admin, "w-b2", "node-b", true);

    // An actor running on w-a1 (bound by the scheduler; "Running" reported as its node
    // agent would).
    env.ensure_namespace("team-a");
    call(
        &admin,
        "POST",
        &format!("{SUBSTRATE}/atespaces"),
        Some(
            &json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace", "metadata": {"name": "team-a"}}),
        ),
    );
    call(
        &admin,
        "POST",
        "/apis/ate.dev/v1alpha1/namespaces/team-a/actortemplates",
        Some(&json!({
            "apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
            "metadata": {"name": "counter", "namespace": "team-a"},
            "spec": {"containers": [{"name": "main", "image": "127.0.0.1:5000/counter:latest"}],
                     "workerPoolRef": {"name": "small"}},
        })),
    );
    let actor = format!("{SUBSTRATE}/namespaces/team-a/actors/a1");
    call(
        &admin,
        "POST",
        &format!("{SUBSTRATE}/namespaces/team-a/actors"),
        Some(&json!({
            "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
            "metadata": {"name": "a1", "namespace": "team-a"},
            "spec": {"template": {"name": "counter"}},
        })),
    );
    // Only w-a1 free: the others are heartbeated again below.
    for w in ["w-a2", "w-b1"] {
        call(
            &admin,
            "PATCH",
            &format!("{SUBSTRATE}/workers/{w}/status"),
            Some(&json!({"status": {"phase": "Unhealthy"}})),
        );
    }
    let bound = call(&admin, "POST", &format!("{actor}/resume"), Some(&json!({})));
    assert_eq!(bound["status"]["worker"]["name"], "w-a1", "{bound}");
    call(
        &admin,
        "PATCH",
        &format!("{actor}/status"),
        Some(&json!({"status": {"phase": "Running"}})),
    );
    for w in ["w-a2", "w-b1"] {
        heartbeat(&admin, w);
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("operator.log");
    let file = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log")
    };
    let _operator = KillOnDrop(
        Command::new(workspace_bin("substrate-operator"))
            .args([
                "--mode=cluster".to_string(),
                format!("--kubeconfig={}", sa.kubeconfig.display()),
                format!("--substrate-server=https://{}", substrate.addr),
                format!("--substrate-tls-server-name={SUBSTRATE_TLS_NAME}"),
                "--resync-seconds=1".into(),
            ])
            .stdout(file())
            .stderr(file())
            .spawn()
            .expect("operator starts"),
    );
    let operator_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // Not cordoned yet: nothing changes (a few resyncs).
    std::thread::sleep(Duration::from_secs(3));
    for w in ["w-a1", "w-a2", "w-b1"] {
        assert_eq!(
            cordoned(&admin, w),
            (false, None),
            "{w}\n{}",
            operator_log()
        );
    }

    // `kubectl cordon node-a`: its workers are cordoned, the actor on w-a1 asked to suspend.
    kubectl(&admin, &["cordon", "node-a"]);
    let took = wait_cordoned(&admin, "w-a1", (true, Some("node-a")));
    eprintln!("kubectl cordon -> worker cordoned in {took:.1?}");
    wait_cordoned(&admin, "w-a2", (true, Some("node-a")));
    let a = eventually("the actor on the cordoned node is suspending", || {
        let a = call(&admin, "GET", &actor, None);
        (a["status"]["phase"] == "Suspending").then_some(a)
    });
    assert_eq!(a["status"]["worker"]["name"], "w-a1", "{a}");
    let w = call(&admin, "GET", &format!("{SUBSTRATE}/workers/w-a1"), None);
    let cond = w["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Schedulable")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&cond["status"], &cond["reason"]),
        (&json!("False"), &json!("Draining")),
        "{w}"
    );
    assert!(
        cond["message"]
            .as_str()
            .is_some_and(|m| m.contains("node node-a") && m.contains("team-a/a1")),
        "{cond}"
    );
    assert_eq!(cordoned(&admin, "w-b1"), (false, None));

    // The cluster-autoscaler's scale-down taint on node-b: w-b1 is cordoned; w-b2 (by hand)
    // is left as it is, not annotated.
    call(
        &admin,
        "PATCH",
        "/api/v1/nodes/node-b",
        Some(
            &json!({"spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler",
            "value": "1700000000", "effect": "NoSchedule"}]}}),
        ),
    );
    wait_cordoned(&admin, "w-b1", (true, Some("node-b")));
    assert_eq!(cordoned(&admin, "w-b2"), (true, None));

    // `kubectl uncordon node-a`; the taint removed from node-b.
    kubectl(&admin, &["uncordon", "node-a"]);
    let took = wait_cordoned(&admin, "w-a1", (false, None));
    eprintln!("kubectl uncordon -> worker uncordoned in {took:.1?}");
    wait_cordoned(&admin, "w-a2", (false, None));
    call(
        &admin,
        "PATCH",
        "/api/v1/nodes/node-b",
        Some(&json!({"spec": {"taints": null}})),
    );
    wait_cordoned(&admin, "w-b1", (false, None));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        cordoned(&admin, "w-b2"),
        (true, None),
        "a worker cordoned by hand stays cordoned\n{}",
        operator_log()
    );
    assert!(
        operator_log().contains("node cordoned: worker cordoned"),
        "{}",
        operator_log()
    );
}
