//! `substrate-bench --target both` (what `hack/bench.sh --compare-kube` runs) works end to
//! end with tiny counts: every phase runs on Substrate's standalone apiserver and on a real
//! kube-apiserver + etcd (envtest, the CRD `actors.benchmark.ate.dev` installed by the
//! benchmark), without an error, and the comparison has a row per operation with the CPU of
//! both servers. A check of the harness, not a benchmark: the figures are not asserted.
//!
//! Skipped (with a message) when `KUBEBUILDER_ASSETS` is unset; hack/test.sh sets it.

use std::process::Command;

use serde_json::Value;

use e2e::envtest::{Envtest, Options};
use e2e::standalone::Standalone;

#[test]
fn substrate_bench_compares_substrate_with_kube_apiserver() {
    let Some(env) = Envtest::start_with(Options {
        controller_manager: false,
    }) else {
        return;
    };
    let substrate = Standalone::start();
    let out = Command::new(e2e::workspace_bin("substrate-bench"))
        .args(["--target", "both", "--json"])
        .arg("--kubeconfig")
        .arg(&substrate.admin.kubeconfig)
        .arg("--kube-kubeconfig")
        .arg(&env.admin.kubeconfig)
        .args([
            "--kube-apiserver-pid",
            &env.kube_apiserver_pid().to_string(),
        ])
        .args(["--etcd-pid", &env.etcd_pid().to_string()])
        .args(["--apiserver-pid", &std::process::id().to_string()])
        // No Valkey statistics: the standalone apiserver's Valkey is the harness's.
        .args(["--valkey-url", "redis://127.0.0.1:1"])
        .args(["--phases", "create,get,list,update,patch,apply,watch"])
        .args(["--connections", "2", "--concurrency", "4"])
        .args(["--creates", "20", "--gets", "40", "--updates", "20"])
        .args(["--patches", "20", "--applies", "10"])
        .args([
            "--list-objects",
            "12",
            "--lists",
            "3",
            "--list-page-size",
            "5",
        ])
        .args([
            "--watchers",
            "3",
            "--watch-writes",
            "4",
            "--watch-interval-ms",
            "1",
        ])
        .output()
        .expect("running substrate-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "substrate-bench failed:\n{stderr}");
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("JSON on stdout: {e}\n{stderr}"));
    assert_eq!(doc["target"], "both");

    let phases = |side: &str| -> Vec<String> {
        doc[side]["phases"]
            .as_array()
            .unwrap_or_else(|| panic!("{side} has no phases: {doc}"))
            .iter()
            .map(|p| {
                assert_eq!(p["ok"], p["ops"], "{side} {}: {p}", p["name"]);
                p["name"].as_str().unwrap_or_default().to_string()
            })
            .collect()
    };
    let want = [
        "create",
        "get",
        "list (12 objects)",
        "update",
        "merge patch",
        "apply (server-side)",
        "watch patch (3 w.)",
        "watch from send",
        "watch from response",
    ];
    assert_eq!(phases("kube-apiserver"), want, "{stderr}");
    assert_eq!(phases("substrate"), want, "{stderr}");
    assert_eq!(
        doc["kube-apiserver"]["details"]["watch"]["all_delivered"], true,
        "{doc}"
    );

    let rows = doc["comparison"].as_array().expect("comparison");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, want);
    for r in rows {
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["ratio"].as_f64().is_some_and(|x| x > 0.0), "{r}");
        assert!(
            r["kube_ops_per_sec"].as_f64().is_some_and(|x| x > 0.0),
            "{r}"
        );
    }
    // kube-apiserver's and etcd's CPU were measured (their pids were given).
    let create = &rows[0];
    assert!(create["kube_server_cores"].as_f64().is_some(), "{create}");
    let targets: Vec<&str> = doc["comparison_targets"]
        .as_array()
        .expect("comparison targets")
        .iter()
        .filter_map(|t| t["what"].as_str())
        .collect();
    assert_eq!(
        targets,
        [
            "create vs kube-apiserver",
            "get vs kube-apiserver",
            "list vs kube-apiserver",
            "update vs kube-apiserver"
        ]
    );
    drop(substrate);
}
