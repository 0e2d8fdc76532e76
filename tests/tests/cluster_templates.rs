//! Cluster mode: `ate.dev` kinds are CustomResourceDefinitions of kube-apiserver, and Substrate's
//! scheduler reads templates from there (a watch), not from its own store — the template a
//! user created with `kubectl apply` in the cluster is the one a resume uses. Real
//! kube-apiserver 1.25 + etcd (envtest), Substrate's apiserver registered as an APIService.

use serde_json::{Value, json};

use e2e::envtest::Envtest;
use e2e::envtest::identity::Identity;
use e2e::envtest::substrate::Substrate;

const SUBSTRATE: &str = "/apis/substrate.ate.dev/v1alpha1";

fn create(who: &Identity, path: &str, obj: &Value) -> Value {
    let (code, body) = who.request("POST", path, Some(obj));
    assert_eq!(code, 201, "{} POST {path}: {body}", who.user);
    body
}

fn template(ns: &str, name: &str, sharing: Option<Value>) -> Value {
    let mut t = json!({
        "apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"containers": [{"name": "main", "image": "127.0.0.1:5000/counter:latest"}],
                 "workerPoolRef": {"name": "small"}},
    });
    if let Some(s) = sharing {
        t["spec"]["sharing"] = s;
    }
    t
}

fn actor(ns: &str, name: &str, tns: &str, tname: &str) -> Value {
    json!({
        "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"template": {"name": tname, "namespace": tns}},
    })
}

fn tenant(env: &Envtest, ns: &str) {
    env.ensure_namespace(ns);
    create(
        &env.admin,
        &format!("{SUBSTRATE}/atespaces"),
        &json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace",
                "metadata": {"name": ns}}),
    );
}

/// A free, heartbeating worker of pool `small` (no executor behind it: the scheduler only
/// binds; nothing here runs a sandbox).
fn free_worker(env: &Envtest, name: &str) {
    create(
        &env.admin,
        &format!("{SUBSTRATE}/workers"),
        &json!({
            "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Worker",
            "metadata": {"name": name},
            "spec": {"pool": "small", "node": "node-1", "address": "10.203.0.2"},
        }),
    );
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let (code, body) = env.admin.request(
        "PATCH",
        &format!("{SUBSTRATE}/workers/{name}/status"),
        Some(&json!({"status": {"phase": "Free", "lastHeartbeatTime": now}})),
    );
    assert_eq!(code, 200, "worker status: {body}");
}

#[test]
fn resume_uses_the_clusters_template_crds() {
    let Some(env) = Envtest::start() else { return };
    let substrate = Substrate::start(&env);
    let direct = substrate.direct(&env, &env.admin);

    tenant(&env, "team-t");
    tenant(&env, "team-u");
    // The template is a CRD object of kube-apiserver: Substrate does not serve `ate.dev` in
    // cluster mode (one source of truth), and says where it lives.
    create(
        &env.admin,
        "/apis/ate.dev/v1alpha1/namespaces/team-t/actortemplates",
        &template("team-t", "counter", None),
    );
    let (code, body) = direct.request(
        "POST",
        "/apis/ate.dev/v1alpha1/namespaces/team-t/actortemplates",
        Some(&template("team-t", "other", None)),
    );
    assert_eq!(code, 404, "{body}");
    assert_eq!(
        body["message"],
        "actortemplates.ate.dev are CustomResourceDefinitions of the cluster in cluster mode: use kube-apiserver"
    );

    free_worker(&env, "w-1");
    create(
        &env.admin,
        &format!("{SUBSTRATE}/namespaces/team-t/actors"),
        &actor("team-t", "a1", "team-t", "counter"),
    );
    let (code, body) = env.admin.request(
        "POST",
        &format!("{SUBSTRATE}/namespaces/team-t/actors/a1/resume"),
        Some(&json!({})),
    );
    assert!(
        code == 200 || code == 201,
        "resume through kube-apiserver: {code} {body}"
    );
    let (_, a1) = env.admin.request(
        "GET",
        &format!("{SUBSTRATE}/namespaces/team-t/actors/a1"),
        None,
    );
    assert_eq!(a1["status"]["worker"]["name"], "w-1", "{a1}");
    assert_eq!(a1["status"]["phase"], "Resuming", "{a1}");

    // A template the cluster does not have: the resume says so.
    create(
        &env.admin,
        &format!("{SUBSTRATE}/namespaces/team-t/actors"),
        &actor("team-t", "a2", "team-t", "missing"),
    );
    let (code, body) = env.admin.request(
        "POST",
        &format!("{SUBSTRATE}/namespaces/team-t/actors/a2/resume"),
        Some(&json!({})),
    );
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        body["message"],
        "actor team-t/a2 cannot resume: actortemplates.ate.dev \"missing\" not found in atespace team-t"
    );

    // Sharing is read from the cluster's object too: team-u may not use team-t's template
    // until the template (edited in kube-apiserver) shares itself with team-u.
    let (code, body) = env.admin.request(
        "POST",
        &format!("{SUBSTRATE}/namespaces/team-u/actors"),
        Some(&actor("team-u", "b1", "team-t", "counter")),
    );
    assert_eq!(code, 422, "{body}");
    let (code, body) = env.admin.request(
        "PATCH",
        "/apis/ate.dev/v1alpha1/namespaces/team-t/actortemplates/counter",
        Some(&json!({"spec": {"sharing": {"atespaces": ["team-u"]}}})),
    );
    assert_eq!(code, 200, "{body}");
    e2e::eventually("team-u may use the shared template", || {
        let (code, _) = env.admin.request(
            "POST",
            &format!("{SUBSTRATE}/namespaces/team-u/actors"),
            Some(&actor("team-u", "b1", "team-t", "counter")),
        );
        (code == 201).then_some(())
    });
}
