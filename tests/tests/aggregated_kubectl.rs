//! `kubectl` against kube-apiserver with Substrate registered as an aggregated API (issue 14):
//! what a cluster user does — discovery, `kubectl explain` (the aggregated OpenAPI),
//! create/get/list/watch/patch/delete of actors, server-side apply, `kubectl wait`, and the
//! atespace cascade — all through kube-apiserver's aggregator. Real kube-apiserver 1.25 + etcd
//! (envtest) and kubectl 1.32.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::envtest::Envtest;
use e2e::envtest::substrate::Substrate;

const ACTOR: &str = r#"
apiVersion: substrate.ate.dev/v1alpha1
kind: Actor
metadata:
  name: hello
  namespace: team-k
  labels: {app: hello}
spec:
  template: {name: counter}
  activation: Suspended
"#;

#[test]
fn kubectl_uses_actors_through_the_aggregator() {
    let Some(env) = Envtest::start() else { return };
    let _substrate = Substrate::start(&env);
    let k = env.kubectl();
    env.ensure_namespace("team-k");

    // Discovery: the aggregated group with its kinds, short names and categories.
    let out = k.ok(
        &[
            "api-resources",
            "--api-group=substrate.ate.dev",
            "-o",
            "wide",
        ],
        None,
    );
    for want in ["actors", "atespaces", "workers", "act", "ates"] {
        assert!(out.contains(want), "{want} not in:\n{out}");
    }
    // The ate.dev CRDs are kube-apiserver's own.
    let out = k.ok(&["api-resources", "--api-group=ate.dev"], None);
    assert!(
        out.contains("actortemplates") && out.contains("workerpools"),
        "{out}"
    );

    // kubectl explain reads the OpenAPI kube-apiserver aggregated from Substrate.
    // (kube-apiserver downloads it asynchronously after the APIService became Available.)
    e2e::eventually("kube-apiserver aggregated Substrate's OpenAPI v3", || {
        let (code, v3) = env.admin.request("GET", "/openapi/v3", None);
        (code == 200 && !v3["paths"]["apis/substrate.ate.dev/v1alpha1"].is_null()).then_some(())
    });
    let out = k.ok(&["explain", "actors.spec.activation"], None);
    assert!(out.contains("KIND:") && out.contains("Actor"), "{out}");
    assert!(out.contains("activation"), "{out}");

    k.ok(&["create", "-f", "-"], Some(&atespace("team-k")));
    k.ok(&["create", "-f", "-"], Some(ACTOR));
    let got = k.get("actors", "hello", Some("team-k"));
    assert_eq!(got["spec"]["activation"], "Suspended", "{got}");
    let out = k.ok(&["get", "actors", "-n", "team-k", "-l", "app=hello"], None);
    assert!(out.contains("hello"), "{out}");

    // A watch through the aggregator sees a change made meanwhile.
    let mut watch = Command::new("kubectl")
        .args([
            "get",
            "actors",
            "-n",
            "team-k",
            "--watch",
            "--output-watch-events",
            "-o",
            "jsonpath={.type} {.object.metadata.labels.stage}{\"\\n\"}",
            "--request-timeout=60s",
        ])
        .env("KUBECONFIG", &k.kubeconfig)
        .env("HOME", &k.home)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get --watch");
    let stdout = watch.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The initial ADDED event first, then the patch.
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("initial event");
    assert!(first.starts_with("ADDED"), "{first}");
    k.ok(
        &[
            "patch",
            "actor",
            "hello",
            "-n",
            "team-k",
            "--type=merge",
            "-p",
            r#"{"metadata":{"labels":{"stage":"patched"}}}"#,
        ],
        None,
    );
    let modified = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("MODIFIED event of the patch");
    assert_eq!(modified.trim(), "MODIFIED patched");
    let _ = watch.kill();
    let _ = watch.wait();

    // Server-side apply through the aggregator: a second manager owning one field, and a
    // conflict on a field the first owns.
    let applied = k.ok(
        &[
            "apply",
            "--server-side",
            "--field-manager=gitops",
            "-o",
            "json",
            "-f",
            "-",
        ],
        Some(
            "apiVersion: substrate.ate.dev/v1alpha1\nkind: Actor\nmetadata:\n  name: hello\n  namespace: team-k\n  labels: {owner: gitops}\nspec:\n  template: {name: counter}\n  idleTimeout: 10m\n",
        ),
    );
    let applied: serde_json::Value = serde_json::from_str(&applied).expect("JSON");
    assert_eq!(applied["spec"]["idleTimeout"], "10m", "{applied}");
    assert_eq!(applied["metadata"]["labels"]["owner"], "gitops");
    let (ok, _, err) = k.run(
        &["apply", "--server-side", "--field-manager=other", "-f", "-"],
        Some(
            "apiVersion: substrate.ate.dev/v1alpha1\nkind: Actor\nmetadata:\n  name: hello\n  namespace: team-k\nspec:\n  template: {name: counter}\n  idleTimeout: 1m\n",
        ),
    );
    assert!(!ok, "a conflicting apply must fail");
    assert!(err.contains("conflict"), "{err}");

    // kubectl wait on a condition (the atespace's kstatus Ready).
    k.ok(
        &[
            "wait",
            "--for=condition=Ready",
            "atespace/team-k",
            "--timeout=30s",
        ],
        None,
    );

    // Deleting the atespace deletes its actors (cascade), seen through the aggregator.
    k.ok(
        &[
            "delete",
            "atespace",
            "team-k",
            "--wait=true",
            "--timeout=60s",
        ],
        None,
    );
    let (ok, _, err) = k.run(&["get", "actor", "hello", "-n", "team-k"], None);
    assert!(!ok && err.contains("NotFound"), "{err}");
}

fn atespace(name: &str) -> String {
    format!("apiVersion: substrate.ate.dev/v1alpha1\nkind: Atespace\nmetadata:\n  name: {name}\n")
}
