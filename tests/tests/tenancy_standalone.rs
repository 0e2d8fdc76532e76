//! Substrate's standalone RBAC decides as Kubernetes does (issue 13): the tenant matrix of
//! `e2e::tenancy` against Substrate's apiserver on its own (`--standalone`, its own CA, its
//! own `rbac.authorization.k8s.io/v1` objects) and against a real kube-apiserver (envtest)
//! holding the same RBAC objects, row by row:
//!
//! - the SubjectAccessReview decisions of both are the same (and the table's);
//! - each tenant's SelfSubjectAccessReview (`kubectl auth can-i`) says the same;
//! - every row sent as its tenant gets the allowed code or kube's exact 403 message;
//! - `kubectl create rolebinding` and the built-in `view` role work unchanged, the latter
//!   through the aggregated `substrate-actor-view` ClusterRole.
//!
//! The kube-apiserver half is skipped (with a message) when `KUBEBUILDER_ASSETS` is unset;
//! hack/test.sh sets it. The standalone half always runs.

use serde_json::{Value, json};

use e2e::envtest::Identity;
use e2e::standalone::Standalone;
use e2e::tenancy::{self, ALICE, BOB, NAMESPACES, ROBOT, ROWS};

fn create(who: &Identity, path: &str, obj: &Value) {
    let (code, body) = who.request("POST", path, Some(obj));
    assert_eq!(code, 201, "{} POST {path}: {body}", who.user);
}

/// Atespaces, templates and actors of the matrix, and its RBAC objects.
fn setup(s: &Standalone) {
    for (ns, actor) in NAMESPACES {
        create(
            &s.admin,
            "/apis/substrate.ate.dev/v1alpha1/atespaces",
            &json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace",
                    "metadata": {"name": ns}}),
        );
        create(
            &s.admin,
            &format!("/apis/ate.dev/v1alpha1/namespaces/{ns}/actortemplates"),
            &tenancy::template(ns),
        );
        create(
            &s.admin,
            &format!("/apis/substrate.ate.dev/v1alpha1/namespaces/{ns}/actors"),
            &json!({
                "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
                "metadata": {"name": actor, "namespace": ns},
                "spec": {"template": {"name": "counter"}},
            }),
        );
    }
    // kubectl apply of a List of Roles and RoleBindings, as against kube-apiserver.
    tenancy::apply_rbac(&s.admin);
}

#[test]
fn standalone_rbac_decides_as_kube_apiserver() {
    // The reference first (its control plane is stopped before Substrate starts).
    let kube = tenancy::kube_decisions(ROWS);
    if kube.is_none() {
        eprintln!("KUBEBUILDER_ASSETS unset: comparing with the table only, not kube-apiserver");
    }

    let s = Standalone::start();
    setup(&s);
    let alice = s.user(ALICE.user, &ALICE.groups[..1]);
    let bob = s.user(BOB.user, &BOB.groups[..1]);
    let robot = s.user(ROBOT.user, &ROBOT.groups[..2]);
    let who = |user: &str| match user {
        "alice" => alice.clone(),
        "bob" => bob.clone(),
        u if u == ROBOT.user => robot.clone(),
        u => panic!("no identity for {u}"),
    };

    let ours = tenancy::subject_access_reviews(&s.admin, ROWS);
    let mut wrong: Vec<String> = ROWS
        .iter()
        .zip(&ours)
        .filter(|(r, d)| r.allowed != d.allowed || d.denied)
        .map(|(r, d)| format!("SubjectAccessReview vs the table: {r:?}: {d:?}"))
        .collect();
    if let Some(kube) = &kube {
        wrong.extend(
            tenancy::differences(ROWS, kube, &ours)
                .into_iter()
                .map(|d| format!("kube-apiserver vs standalone: {d}")),
        );
    }
    for r in ROWS {
        let d = tenancy::self_subject_access_review(&who(r.user), r);
        if d.allowed != r.allowed {
            wrong.push(format!("SelfSubjectAccessReview: {r:?}: {d:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Allowed rows' reasons name the binding, as kube's RBAC authorizer words them.
    let first = ROWS.iter().position(|r| r.allowed).unwrap();
    assert_eq!(
        ours[first].reason,
        "RBAC: allowed by RoleBinding \"team-a-edit/team-a\" of Role \"actors-edit\" to Group \"team-a\""
    );

    // Every row as its tenant: the allowed code, or kube's exact 403.
    let wrong = tenancy::check_requests(&who, ROWS, "standalone");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // kubectl auth can-i (a SelfSubjectAccessReview in protobuf) and --list (rules review).
    let (ok, out, _) = alice.kubectl(&[
        "auth",
        "can-i",
        "create",
        "actors",
        "--subresource=resume",
        "-n",
        "team-a",
    ]);
    assert!(ok && out.trim() == "yes", "{out}");
    let (ok, out, _) = alice.kubectl(&["auth", "can-i", "delete", "actors", "-n", "team-a"]);
    assert!(!ok && out.trim() == "no", "{out}");
    let (ok, list, err) = alice.kubectl(&["auth", "can-i", "--list", "-n", "team-a"]);
    assert!(ok, "{err}");
    let line = list
        .lines()
        .find(|l| l.starts_with("actors.substrate.ate.dev "))
        .unwrap_or_else(|| panic!("no actors rule in:\n{list}"));
    assert!(
        line.ends_with("[get list watch create patch]"),
        "actors rule: {line}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("actors.substrate.ate.dev/resume ") && l.ends_with("[create]")),
        "{list}"
    );

    // `kubectl create rolebinding` unchanged: bob gets Substrate's view role in team-a...
    let (ok, b1, _) = bob.kubectl(&["get", "actor", "a1", "-n", "team-a", "-o", "name"]);
    assert!(!ok, "bob reads team-a before any binding: {b1}");
    s.admin.kubectl.ok(
        &[
            "create",
            "rolebinding",
            "bob-actor-view",
            "--clusterrole=substrate-actor-view",
            "--user=bob",
            "-n",
            "team-a",
        ],
        None,
    );
    e2e::eventually("bob may read team-a", || {
        let (ok, out, _) = bob.kubectl(&["get", "actor", "a1", "-n", "team-a", "-o", "name"]);
        (ok && out.trim() == "actor.substrate.ate.dev/a1").then_some(())
    });
    // ...and alice the built-in `view` in team-b: actors come with it (aggregation).
    s.admin.kubectl.ok(
        &[
            "create",
            "rolebinding",
            "alice-view",
            "--clusterrole=view",
            "--user=alice",
            "-n",
            "team-b",
        ],
        None,
    );
    e2e::eventually("alice may read team-b through view", || {
        let (ok, out, _) = alice.kubectl(&["get", "actors", "-n", "team-b", "-o", "name"]);
        (ok && out.trim() == "actor.substrate.ate.dev/b1").then_some(())
    });
    // view is read-only.
    let (ok, _, err) = alice.kubectl(&["delete", "actor", "b1", "-n", "team-b"]);
    assert!(!ok);
    assert_eq!(
        err.trim(),
        "Error from server (Forbidden): actors.substrate.ate.dev \"b1\" is forbidden: User \
         \"alice\" cannot delete resource \"actors\" in API group \"substrate.ate.dev\" in the \
         namespace \"team-b\""
    );
}
