//! Cluster mode end to end (issue 14): a real Kubernetes control plane (envtest: etcd,
//! kube-apiserver 1.25, kube-controller-manager) with Substrate's apiserver registered as its
//! APIService, and the operator, the node agent (real runsc sandboxes) and the router as host
//! processes, each with `--mode=cluster` and only its ServiceAccount's token and RBAC
//! (`config/rbac/`), reaching Substrate's apiserver directly (`--substrate-server`).
//!
//! - The WorkerPool and the ActorTemplate are CRD objects of kube-apiserver; the atespace and
//!   the actors are created through kube-apiserver (the aggregator). The operator makes the
//!   golden snapshot (the template's status in kube says `Ready`), a request through the router
//!   wakes the actor and reaches the counter demo.
//! - The operator's leader lease is in `substrate-system` of the cluster.
//! - Atespace ↔ Namespace: a pre-existing namespace is adopted (labelled, never deleted: its
//!   atespace's deletion only drops the label); a new atespace gets a namespace created (and
//!   deleted with it); deleting a labelled namespace deletes its atespace (and its actors),
//!   which is not recreated; `ate-golden` gets one, `default` is left alone.
//! - An `Authorized` atespace: the router's TokenReview and SubjectAccessReview go to
//!   kube-apiserver, with a RoleBinding in the atespace's namespace granting `actors/proxy`.
//!
//! Worker range 10.227.0.0/16, index base 2200. Skipped (with a message) without root, runsc
//! or `KUBEBUILDER_ASSETS`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use e2e::envtest::Identity;
use e2e::{Options, System, condition, eventually, eventually_within, first_int, phase};

const SUFFIX: &str = "actors.resources.substrate.ate.dev";
/// Generous bound for what Kubernetes' controllers do (namespace deletion waits for the
/// namespace controller's discovery of the aggregated API).
const CONTROLLER_DEADLINE: Duration = Duration::from_secs(150);

const LABEL: &str = "substrate.ate.dev/atespace";
const CREATED_BY: &str = "substrate.ate.dev/created-by";
const RECORD: &str = "substrate.ate.dev/namespace";

/// `GET /` through the router for `<actor>.<atespace>`: (status, body).
fn through_router(
    router: SocketAddr,
    actor: &str,
    atespace: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "60", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Host: {actor}.{atespace}.{SUFFIX}"));
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = c.arg(format!("http://{router}/")).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn namespace(admin: &Identity, name: &str) -> Option<Value> {
    let (code, body) = admin.request("GET", &format!("/api/v1/namespaces/{name}"), None);
    match code {
        200 => Some(body),
        404 => None,
        _ => panic!("GET namespace {name}: {code} {body}"),
    }
}

fn atespace(admin: &Identity, name: &str) -> Option<Value> {
    let (code, body) = admin.request(
        "GET",
        &format!("/apis/substrate.ate.dev/v1alpha1/atespaces/{name}"),
        None,
    );
    match code {
        200 => Some(body),
        404 => None,
        _ => panic!("GET atespace {name}: {code} {body}"),
    }
}

fn create_atespace(sys: &System, name: &str, spec: Value) {
    sys.kube.create(&json!({
        "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace",
        "metadata": {"name": name}, "spec": spec,
    }));
}

fn create_actor_in(sys: &System, atespace: &str, name: &str, activation: &str) {
    sys.kube.create(&json!({
        "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": name, "namespace": atespace},
        "spec": {"template": {"name": "counter", "namespace": "team-a"}, "activation": activation},
    }));
}

/// The namespace `name` as the operator keeps it for its atespace: labelled, and recorded on
/// the atespace (`<atespace uid>/<namespace uid>`).
fn wait_kept_namespace(admin: &Identity, name: &str) -> Value {
    eventually(&format!("namespace {name} kept for its atespace"), || {
        let ns = namespace(admin, name)?;
        let a = atespace(admin, name)?;
        let want = format!(
            "{}/{}",
            a["metadata"]["uid"].as_str()?,
            ns["metadata"]["uid"].as_str()?
        );
        (ns["metadata"]["labels"][LABEL] == name
            && a["metadata"]["annotations"][RECORD] == want.as_str())
        .then_some(ns)
    })
}

fn wait_gone(admin: &Identity, what: &str, path: &str) {
    eventually_within(CONTROLLER_DEADLINE, &format!("{what} is gone"), || {
        let (code, _) = admin.request("GET", path, None);
        (code == 404).then_some(())
    });
}

/// A ServiceAccount of `ns` allowed (or not) to reach the actors of atespace `ns` through the
/// router (`get` on `actors/proxy`); its token.
fn tenant_token(sys: &System, ns: &str, name: &str, allowed: bool) -> String {
    let env = &sys.cluster().env;
    env.service_account(ns, name);
    if allowed {
        env.admin.apply(&json!({
            "apiVersion": "v1", "kind": "List", "items": [
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                    "metadata": {"name": "actor-proxy", "namespace": ns},
                    "rules": [{"apiGroups": ["substrate.ate.dev"], "resources": ["actors/proxy"], "verbs": ["get"]}],
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": format!("actor-proxy-{name}"), "namespace": ns},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "actor-proxy"},
                    "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
                },
            ],
        }));
    }
    env.service_account_token(ns, name)
}

#[test]
fn cluster_mode_end_to_end() {
    let Some(mut sys) = System::start_cluster(Options::new("e2e-cluster", "10.227.0.0/16", 2200))
    else {
        return;
    };
    let admin = sys.cluster().env.admin.clone();

    // The node agent, as substrate-system/substrate-nodeagent, registered its workers with
    // Substrate (listed through the aggregator by start_cluster) from the pool CRD object.
    sys.start_operator();

    // The golden snapshot: the operator (reading the template from kube-apiserver, booting
    // the golden actor through Substrate) records it in the CRD object's status.
    let template = eventually("the template's golden snapshot is Ready (in kube)", || {
        let t = sys
            .kube
            .get("actortemplates.ate.dev", "counter", Some("team-a"));
        (condition(&t, "Ready") == Some("True")).then_some(t)
    });
    assert!(
        template["status"]["snapshot"]["uri"].is_string(),
        "{template}"
    );

    // A change of the template in kube-apiserver (a new generation) regenerates its golden
    // snapshot: the operator and node agent see the CRD object change by watch.
    let first = template["status"]["snapshot"]["uri"].clone();
    sys.kube.ok(
        &[
            "patch",
            "actortemplates.ate.dev",
            "counter",
            "-n",
            "team-a",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/spec/containers/0/env","value":[{"name":"GENERATION","value":"2"}]}]"#,
        ],
        None,
    );
    let template = eventually(
        "the changed template's new golden snapshot is Ready",
        || {
            let t = sys
                .kube
                .get("actortemplates.ate.dev", "counter", Some("team-a"));
            (t["metadata"]["generation"] == 2
                && condition(&t, "Ready") == Some("True")
                && t["status"]["snapshot"]["uri"] != first)
                .then_some(t)
        },
    );
    assert!(
        template["status"]["snapshot"]["uri"].is_string(),
        "{template}"
    );

    // Leader election in the cluster's substrate-system (the default in cluster mode).
    let (code, lease) = admin.request(
        "GET",
        "/apis/coordination.k8s.io/v1/namespaces/substrate-system/leases/substrate-operator",
        None,
    );
    assert_eq!(code, 200, "{lease}");
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .is_some_and(|h| !h.is_empty()),
        "{lease}"
    );

    // Namespaces: team-a existed before its atespace (adopted: labelled, not ours);
    // ate-golden was created; default is Kubernetes' own.
    let team_a = wait_kept_namespace(&admin, "team-a");
    assert!(
        team_a["metadata"]["annotations"][CREATED_BY].is_null(),
        "adopted, not created: {team_a}"
    );
    let golden = wait_kept_namespace(&admin, "ate-golden");
    assert_eq!(
        golden["metadata"]["annotations"][CREATED_BY], "substrate-operator",
        "{golden}"
    );
    let default = namespace(&admin, "default").expect("default namespace");
    assert!(default["metadata"]["labels"][LABEL].is_null(), "{default}");

    // A request through the router (its ServiceAccount; actors and the resume from
    // Substrate, the template from kube) wakes the actor created through kube-apiserver.
    let r = sys.start_router(&["--wake-timeout=60s", "--activity-interval=1s"]);
    sys.create_actor("hello", json!({}));
    let (code, body) = through_router(r.http, "hello", "team-a", None);
    assert_eq!(code, 200, "{body}\n{}", sys.log("router"));
    assert_eq!(first_int(&body), 1, "{body}");
    let (code, body) = through_router(r.http, "hello", "team-a", None);
    assert_eq!((code, first_int(&body)), (200, 2), "{body}\n{}", logs(&sys));
    let hello = sys.actor("hello");
    assert_eq!(phase(&hello), "Running", "{hello}");
    assert!(
        hello["status"]["lastActiveTime"].is_string(),
        "the router recorded activity: {hello}"
    );

    // The node agent's pod (what the DaemonSet runs; here the agent is a host process and
    // no kubelet runs, so the test plays the kubelet) is deleted: the kubelet stops its
    // containers (the agent, its executors and sandboxes: here a clean stop of the agent),
    // reports them terminated, then deletes the object. The operator releases the actor at
    // once from the pod watch (the heartbeat timeout would take 30 s); the next request
    // resumes it from its last good snapshot once an agent is back.
    let node = hello["status"]["worker"]["node"]
        .as_str()
        .expect("bound to a node")
        .to_string();
    let pod = "substrate-nodeagent-e2e";
    let pods = "/api/v1/namespaces/substrate-system/pods";
    let (code, body) = admin.request(
        "POST",
        pods,
        Some(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "labels": {"app.kubernetes.io/name": "substrate-nodeagent"}},
            "spec": {"nodeName": node, "serviceAccountName": "substrate-nodeagent",
                     "automountServiceAccountToken": false,
                     "containers": [{"name": "nodeagent", "image": "ghcr.io/ate-dev/substrate:v0.1.0"}]},
        })),
    );
    assert_eq!(code, 201, "{body}");
    let container_status = |state: Value| {
        json!({"status": {"phase": "Running", "containerStatuses": [{
            "name": "nodeagent", "image": "ghcr.io/ate-dev/substrate:v0.1.0", "imageID": "",
            "ready": state["running"].is_object(), "restartCount": 0, "state": state}]}})
    };
    let (code, body) = admin.request(
        "PATCH",
        &format!("{pods}/{pod}/status"),
        Some(&container_status(
            json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}}),
        )),
    );
    assert_eq!(code, 200, "{body}");
    sys.stop_agent();
    let (code, body) = admin.request(
        "PATCH",
        &format!("{pods}/{pod}/status"),
        Some(&container_status(
            json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
        )),
    );
    assert_eq!(code, 200, "{body}");
    let t0 = std::time::Instant::now();
    let (code, body) = admin.request(
        "DELETE",
        &format!("{pods}/{pod}"),
        Some(&json!({"gracePeriodSeconds": 0})),
    );
    assert_eq!(code, 200, "{body}");
    let released = eventually_within(
        Duration::from_secs(10),
        "the actor released after its node agent pod was deleted",
        || {
            let a = sys.actor("hello");
            (phase(&a) == "Suspended" && a["status"]["worker"].is_null()).then_some(a)
        },
    );
    eprintln!(
        "actor released {:.0?} after its node agent pod was deleted",
        t0.elapsed()
    );
    let ready = released["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap_or_default();
    assert_eq!(ready["reason"], "WorkerLost", "{released}");
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.contains("node agent pod") && m.contains("deleted or failed")),
        "{released}"
    );
    sys.start_agent();
    let (code, body) = eventually("the released actor answers again", || {
        let (code, body) = through_router(r.http, "hello", "team-a", None);
        (code == 200).then_some((code, body))
    });
    assert_eq!(code, 200, "{body}");

    // A new atespace gets a namespace of its own, where RoleBindings live; with
    // `Authorized` HTTP access the router asks kube-apiserver (TokenReview,
    // SubjectAccessReview) who may reach its actors.
    create_atespace(
        &sys,
        "team-s",
        json!({"httpAccess": {"policy": "Authorized"}}),
    );
    let team_s = wait_kept_namespace(&admin, "team-s");
    assert_eq!(
        team_s["metadata"]["annotations"][CREATED_BY], "substrate-operator",
        "{team_s}"
    );
    create_actor_in(&sys, "team-s", "secret", "OnDemand");
    let reader = tenant_token(&sys, "team-s", "reader", true);
    let nobody = tenant_token(&sys, "team-s", "nobody", false);
    let (code, body) = through_router(r.http, "secret", "team-s", None);
    assert_eq!(code, 401, "{body}");
    let (code, body) = through_router(r.http, "secret", "team-s", Some("not-a-token"));
    assert_eq!(code, 401, "{body}");
    let (code, body) = through_router(r.http, "secret", "team-s", Some(&nobody));
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("system:serviceaccount:team-s:nobody") && body.contains("actors/proxy"),
        "{body}"
    );
    let (code, body) = through_router(r.http, "secret", "team-s", Some(&reader));
    assert_eq!(code, 200, "{body}\n{}", logs(&sys));
    assert_eq!(first_int(&body), 1, "{body}");

    // Deleting an atespace deletes the namespace the operator created for it.
    create_atespace(&sys, "team-n", json!({}));
    wait_kept_namespace(&admin, "team-n");
    sys.kube
        .ok(&["delete", "atespace", "team-n", "--wait=false"], None);
    wait_gone(&admin, "namespace team-n", "/api/v1/namespaces/team-n");

    // Deleting a labelled namespace: Kubernetes deletes the actors in it, the operator
    // deletes the atespace, and neither comes back.
    create_atespace(&sys, "team-d", json!({}));
    wait_kept_namespace(&admin, "team-d");
    create_actor_in(&sys, "team-d", "doomed", "Suspended");
    let (code, body) = admin.request("DELETE", "/api/v1/namespaces/team-d", None);
    assert_eq!(code, 200, "{body}");
    wait_gone(
        &admin,
        "atespace team-d",
        "/apis/substrate.ate.dev/v1alpha1/atespaces/team-d",
    );
    wait_gone(
        &admin,
        "actor team-d/doomed",
        "/apis/substrate.ate.dev/v1alpha1/namespaces/team-d/actors/doomed",
    );
    wait_gone(&admin, "namespace team-d", "/api/v1/namespaces/team-d");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        namespace(&admin, "team-d").is_none() && atespace(&admin, "team-d").is_none(),
        "the deleted tenant is not recreated\n{}",
        sys.log("operator")
    );

    // Deleting the atespace of an adopted namespace leaves the namespace (and the template
    // in it), without the operator's label.
    sys.kube
        .ok(&["delete", "atespace", "team-a", "--wait=false"], None);
    wait_gone(
        &admin,
        "atespace team-a",
        "/apis/substrate.ate.dev/v1alpha1/atespaces/team-a",
    );
    let kept = eventually("namespace team-a released", || {
        let ns = namespace(&admin, "team-a").expect("the adopted namespace stays");
        ns["metadata"]["labels"][LABEL].is_null().then_some(ns)
    });
    assert!(kept["metadata"]["deletionTimestamp"].is_null(), "{kept}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        namespace(&admin, "team-a").is_some_and(|n| n["metadata"]["deletionTimestamp"].is_null()),
        "an adopted namespace is never deleted by the operator"
    );
    let t = sys
        .kube
        .get("actortemplates.ate.dev", "counter", Some("team-a"));
    assert_eq!(condition(&t, "Ready"), Some("True"), "{t}");
}

/// The components' logs, for a failure's message.
fn logs(sys: &System) -> String {
    ["router", "nodeagent", "operator", "apiserver"]
        .iter()
        .map(|c| format!("--- {c}\n{}", sys.log(c)))
        .collect::<Vec<_>>()
        .join("\n")
}
