//! Substrate as an aggregated API of a real Kubernetes control plane (envtest: etcd,
//! kube-apiserver 1.25 and kube-controller-manager from `KUBEBUILDER_ASSETS`), issue 13:
//!
//! - Kubernetes' own controllers keep working with the APIService registered: deleting a
//!   namespace (empty, and one holding actors) completes and deletes its actors; the garbage
//!   collector collects a ConfigMap whose owner was deleted. Both need Substrate to answer the
//!   namespace controller and the garbage collector under their own identities.
//! - Tenants (client certificates, a ServiceAccount token) with kube RBAC: the table of
//!   `e2e::tenancy` through kube-apiserver with exact codes and 403 messages, the same
//!   decisions from SubjectAccessReviews and SelfSubjectAccessReviews, `kubectl get actors -A`
//!   forbidden until a ClusterRoleBinding allows it.
//!
//! Skipped (with a message) when `KUBEBUILDER_ASSETS` is unset; hack/test.sh sets it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use e2e::envtest::substrate::Substrate;
use e2e::envtest::{Envtest, Identity, Options};
use e2e::eventually_within;
use e2e::tenancy::{self, ALICE, BOB, NAMESPACES, ROWS};

/// Generous bound for what Kubernetes' controllers do in seconds (the garbage collector
/// notices a new API group on its 30 s discovery resync).
const CONTROLLER_DEADLINE: Duration = Duration::from_secs(150);

fn actor(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"template": {"name": "counter"}},
    })
}

fn atespace(name: &str) -> Value {
    json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace", "metadata": {"name": name}})
}

/// Creates the namespace in Kubernetes and the atespace in Substrate (through kube-apiserver).
fn tenant_namespace(env: &Envtest, ns: &str) {
    env.ensure_namespace(ns);
    let (code, body) = env.admin.request(
        "POST",
        "/apis/substrate.ate.dev/v1alpha1/atespaces",
        Some(&atespace(ns)),
    );
    assert_eq!(code, 201, "creating atespace {ns}: {body}");
}

fn create(who: &Identity, path: &str, obj: &Value) {
    let (code, body) = who.request("POST", path, Some(obj));
    assert_eq!(code, 201, "{} POST {path}: {body}", who.user);
}

/// Deletes the namespace and waits (polling) until it is gone.
fn delete_namespace_and_wait(env: &Envtest, ns: &str) {
    let (code, body) = env
        .admin
        .request("DELETE", &format!("/api/v1/namespaces/{ns}"), None);
    assert_eq!(code, 200, "deleting namespace {ns}: {body}");
    let t0 = Instant::now();
    let mut last = Value::Null;
    let gone = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually_within(
            CONTROLLER_DEADLINE,
            &format!("namespace {ns} is deleted"),
            || {
                let (code, body) =
                    env.admin
                        .request("GET", &format!("/api/v1/namespaces/{ns}"), None);
                last = body;
                (code == 404).then_some(())
            },
        )
    }));
    if gone.is_err() {
        panic!(
            "namespace {ns} still exists after {CONTROLLER_DEADLINE:?}: {}\n\
             kube-controller-manager (last lines):\n{}",
            serde_json::to_string_pretty(&last["status"]).unwrap_or_default(),
            env.controller_manager_log(30)
        );
    }
    eprintln!("namespace {ns} deleted in {:.1?}", t0.elapsed());
}

#[test]
fn namespace_deletion_completes_with_substrate_registered() {
    let Some(env) = Envtest::start() else { return };
    let _substrate = Substrate::start(&env);

    // An empty namespace: the namespace controller still lists and deletes every namespaced
    // resource of every API group, Substrate's included.
    env.ensure_namespace("empty");
    delete_namespace_and_wait(&env, "empty");

    // A namespace holding actors, created through kube-apiserver as admin.
    tenant_namespace(&env, "busy");
    for name in ["x1", "x2", "x3"] {
        create(
            &env.admin,
            "/apis/substrate.ate.dev/v1alpha1/namespaces/busy/actors",
            &actor("busy", name),
        );
    }
    let (code, list) = env.admin.request(
        "GET",
        "/apis/substrate.ate.dev/v1alpha1/namespaces/busy/actors",
        None,
    );
    assert_eq!(
        (code, list["items"].as_array().map(Vec::len)),
        (200, Some(3))
    );
    delete_namespace_and_wait(&env, "busy");
    let (code, list) = env.admin.request(
        "GET",
        "/apis/substrate.ate.dev/v1alpha1/namespaces/busy/actors",
        None,
    );
    assert_eq!(code, 200, "{list}");
    assert_eq!(
        list["items"],
        json!([]),
        "the namespace's actors are deleted with it"
    );
}

#[test]
fn garbage_collector_collects_orphans_with_substrate_registered() {
    // kube-controller-manager starts once the APIService is Available, so the garbage
    // collector's first sync covers Substrate's resources: it must be able to list and watch
    // them (as PartialObjectMetadata) under its own identity, else it never starts collecting
    // (a collector already running stalls the same way on its next discovery resync, 30 s).
    let Some(mut env) = Envtest::start_with(Options {
        controller_manager: false,
    }) else {
        return;
    };
    let _substrate = Substrate::start(&env);
    env.start_controller_manager();
    env.ensure_namespace("gc");
    let cms = "/api/v1/namespaces/gc/configmaps";
    let (code, owner) = env.admin.request(
        "POST",
        cms,
        Some(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}})),
    );
    assert_eq!(code, 201, "{owner}");
    let uid = owner["metadata"]["uid"].as_str().expect("uid");
    create(
        &env.admin,
        cms,
        &json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "dependent", "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid},
            ]},
        }),
    );
    // Background propagation: the owner goes at once, the garbage collector deletes the
    // dependent — once its graph of every resource in the cluster, Substrate's included, is
    // synced.
    let (code, body) = env.admin.request(
        "DELETE",
        &format!("{cms}/owner"),
        Some(&json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})),
    );
    assert_eq!(code, 200, "{body}");
    let t0 = Instant::now();
    let collected = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually_within(
            CONTROLLER_DEADLINE,
            "the garbage collector deletes the orphaned ConfigMap",
            || {
                let (code, _) = env.admin.request("GET", &format!("{cms}/dependent"), None);
                (code == 404).then_some(())
            },
        )
    }));
    if collected.is_err() {
        panic!(
            "the dependent ConfigMap still exists after {CONTROLLER_DEADLINE:?}; \
             kube-controller-manager (last lines):\n{}",
            env.controller_manager_log(30)
        );
    }
    eprintln!(
        "the orphaned ConfigMap was collected {:.1?} after its owner's deletion",
        t0.elapsed()
    );
}

#[test]
fn garbage_collector_deletes_actors_whose_owner_is_gone() {
    // Substrate installed into a running cluster: the garbage collector notices the new API
    // on its discovery resync (every 30 s), must then sync its graph of actors, and deletes
    // an actor whose owner (a ConfigMap) was deleted — through Substrate, as itself.
    let Some(env) = Envtest::start() else { return };
    let _substrate = Substrate::start(&env);
    tenant_namespace(&env, "owned");
    let (code, owner) = env.admin.request(
        "POST",
        "/api/v1/namespaces/owned/configmaps",
        Some(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}})),
    );
    assert_eq!(code, 201, "{owner}");
    let mut owned = actor("owned", "dependent");
    owned["metadata"]["ownerReferences"] = json!([
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]},
    ]);
    create(
        &env.admin,
        "/apis/substrate.ate.dev/v1alpha1/namespaces/owned/actors",
        &owned,
    );
    create(
        &env.admin,
        "/apis/substrate.ate.dev/v1alpha1/namespaces/owned/actors",
        &actor("owned", "unowned"),
    );
    let (code, body) =
        env.admin
            .request("DELETE", "/api/v1/namespaces/owned/configmaps/owner", None);
    assert_eq!(code, 200, "{body}");
    let t0 = Instant::now();
    let path = "/apis/substrate.ate.dev/v1alpha1/namespaces/owned/actors";
    let collected = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually_within(
            CONTROLLER_DEADLINE,
            "the garbage collector deletes the actor whose owner is gone",
            || {
                let (code, _) = env.admin.request("GET", &format!("{path}/dependent"), None);
                (code == 404).then_some(())
            },
        )
    }));
    if collected.is_err() {
        panic!(
            "the owned actor still exists after {CONTROLLER_DEADLINE:?}; \
             kube-controller-manager (last lines):\n{}",
            env.controller_manager_log(30)
        );
    }
    eprintln!(
        "the owned actor was collected {:.1?} after its owner's deletion",
        t0.elapsed()
    );
    let (code, _) = env.admin.request("GET", &format!("{path}/unowned"), None);
    assert_eq!(code, 200, "an actor without owner stays");
}

#[test]
fn quota_controller_counts_actors_with_substrate_registered() {
    // The resource quota controller lists and watches every quotable resource, Substrate's
    // actors included (`count/actors.substrate.ate.dev`), under its own identity.
    let Some(mut env) = Envtest::start_with(Options {
        controller_manager: false,
    }) else {
        return;
    };
    let _substrate = Substrate::start(&env);
    env.start_controller_manager();
    tenant_namespace(&env, "quota");
    for name in ["q1", "q2"] {
        create(
            &env.admin,
            "/apis/substrate.ate.dev/v1alpha1/namespaces/quota/actors",
            &actor("quota", name),
        );
    }
    create(
        &env.admin,
        "/api/v1/namespaces/quota/resourcequotas",
        &json!({
            "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "actors"},
            "spec": {"hard": {"count/actors.substrate.ate.dev": "5"}},
        }),
    );
    let t0 = Instant::now();
    let mut last = Value::Null;
    let counted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually_within(
            CONTROLLER_DEADLINE,
            "the quota controller counts the namespace's actors",
            || {
                let (_, q) = env.admin.request(
                    "GET",
                    "/api/v1/namespaces/quota/resourcequotas/actors",
                    None,
                );
                last = q["status"].clone();
                (q["status"]["used"]["count/actors.substrate.ate.dev"] == "2").then_some(())
            },
        )
    }));
    if counted.is_err() {
        panic!(
            "quota status after {CONTROLLER_DEADLINE:?}: {last}; kube-controller-manager (last lines):\n{}",
            env.controller_manager_log(30)
        );
    }
    eprintln!(
        "the quota controller counted the actors in {:.1?}",
        t0.elapsed()
    );
}

/// Namespaces, atespaces, the actors of the matrix and its RBAC objects; the actors' template
/// a CRD object of kube-apiserver, where Substrate's scheduler reads it when an actor resumes.
fn matrix_setup(env: &Envtest) {
    for (ns, actor_name) in NAMESPACES {
        tenant_namespace(env, ns);
        create(
            &env.admin,
            &format!("/apis/ate.dev/v1alpha1/namespaces/{ns}/actortemplates"),
            &tenancy::template(ns),
        );
        create(
            &env.admin,
            &format!("/apis/substrate.ate.dev/v1alpha1/namespaces/{ns}/actors"),
            &actor(ns, actor_name),
        );
    }
    env.service_account("team-a", "robot");
    tenancy::apply_rbac(&env.admin);
}

#[test]
fn tenant_matrix_through_kube_apiserver() {
    let Some(env) = Envtest::start_with(Options {
        controller_manager: false,
    }) else {
        return;
    };
    let _substrate = Substrate::start(&env);
    matrix_setup(&env);
    let alice = env.user(ALICE.user, &ALICE.groups[..1]);
    let bob = env.user(BOB.user, &BOB.groups[..1]);
    let robot = env.service_account_identity("team-a", "robot");
    let who = |user: &str| match user {
        "alice" => alice.clone(),
        "bob" => bob.clone(),
        u if u == robot.user => robot.clone(),
        u => panic!("no identity for {u}"),
    };

    // kube-apiserver's RBAC agrees with the table, asked for someone else and by oneself.
    let sar = tenancy::subject_access_reviews(&env.admin, ROWS);
    assert!(sar.iter().all(|d| !d.denied), "RBAC has no explicit deny");
    let mut wrong: Vec<String> = ROWS
        .iter()
        .zip(&sar)
        .filter(|(r, d)| r.allowed != d.allowed)
        .map(|(r, d)| format!("SubjectAccessReview: {r:?}: {d:?}"))
        .collect();
    for r in ROWS {
        let d = tenancy::self_subject_access_review(&who(r.user), r);
        if d.allowed != r.allowed {
            wrong.push(format!("SelfSubjectAccessReview: {r:?}: {d:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Every row through kube-apiserver: kube's RBAC refuses the forbidden ones with its own
    // 403; the allowed ones reach Substrate, which must allow them too (it asks kube).
    let wrong = tenancy::check_requests(&who, ROWS, "through kube-apiserver");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // kubectl: alice may not list actors in every namespace...
    let (ok, _, err) = alice.kubectl(&["get", "actors", "-A"]);
    assert!(!ok);
    assert_eq!(
        err.trim(),
        "Error from server (Forbidden): actors.substrate.ate.dev is forbidden: User \"alice\" \
         cannot list resource \"actors\" in API group \"substrate.ate.dev\" at the cluster scope"
    );
    // ...until a ClusterRoleBinding says so; then she sees both namespaces' actors.
    env.admin.apply(&json!({
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": "actors-reader"},
             "rules": [{"apiGroups": ["substrate.ate.dev"], "resources": ["actors"], "verbs": ["get", "list", "watch"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "alice-actors-reader"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "actors-reader"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]},
        ],
    }));
    let names = alice.kubectl.ok(
        &[
            "get",
            "actors",
            "-A",
            "-o",
            "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name} {end}",
        ],
        None,
    );
    let mut names: Vec<&str> = names.split_whitespace().collect();
    names.sort_unstable();
    assert_eq!(names, ["team-a/a1", "team-a/alice-new", "team-b/b1"]);

    // The ServiceAccount's token works with kubectl as well.
    let got = robot.kubectl.ok(
        &[
            "get",
            "actor",
            "a1",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.metadata.name}",
        ],
        None,
    );
    assert_eq!(got, "a1");
}

#[test]
fn tenant_matrix_directly_against_substrate() {
    // The same table straight to Substrate's port (no kube-apiserver in front): Substrate
    // authenticates the client certificates against the cluster's client CA and the token
    // with a TokenReview, and authorizes every row with a SubjectAccessReview — same
    // decisions, same 403 messages as kube-apiserver's.
    let Some(env) = Envtest::start_with(Options {
        controller_manager: false,
    }) else {
        return;
    };
    let substrate = Substrate::start(&env);
    matrix_setup(&env);
    let alice = substrate.direct(&env, &env.user(ALICE.user, &ALICE.groups[..1]));
    let bob = substrate.direct(&env, &env.user(BOB.user, &BOB.groups[..1]));
    let robot = substrate.direct(&env, &env.service_account_identity("team-a", "robot"));
    let who = |user: &str| match user {
        "alice" => alice.clone(),
        "bob" => bob.clone(),
        u if u == robot.user => robot.clone(),
        u => panic!("no identity for {u}"),
    };
    let wrong = tenancy::check_requests(&who, ROWS, "directly to Substrate");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn namespace_admins_and_viewers_use_actors_through_the_shipped_aggregated_roles() {
    // config/rbac/substrate-actor-roles.yaml in a cluster: kube-controller-manager's
    // ClusterRole aggregation puts Substrate's rules into the built-in admin/edit/view, so a
    // binding to `admin` or `view` (nothing Substrate-specific) is all a tenant needs.
    let Some(env) = Envtest::start() else { return };
    let _substrate = Substrate::start(&env);
    let roles = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/rbac/substrate-actor-roles.yaml"
    );
    env.admin.kubectl.ok(&["apply", "-f", roles], None);
    let ns = "team-x";
    tenant_namespace(&env, ns);
    create(
        &env.admin,
        &format!("/apis/ate.dev/v1alpha1/namespaces/{ns}/actortemplates"),
        &tenancy::template(ns),
    );
    create(
        &env.admin,
        &format!("/apis/substrate.ate.dev/v1alpha1/namespaces/{ns}/actors"),
        &actor(ns, "x1"),
    );
    for (user, role) in [("carol", "admin"), ("dave", "view")] {
        env.admin.kubectl.ok(
            &[
                "create",
                "rolebinding",
                &format!("{user}-{role}"),
                &format!("--clusterrole={role}"),
                &format!("--user={user}"),
                "-n",
                ns,
            ],
            None,
        );
    }
    let carol = env.user("carol", &[]);
    let dave = env.user("dave", &[]);

    // The aggregation controller fills admin and view within seconds.
    let can = |who: &Identity, verb: &str, sub: &str| {
        let (ok, out, _) = who.kubectl(&[
            "auth",
            "can-i",
            verb,
            "actors",
            &format!("--subresource={sub}"),
            "-n",
            ns,
        ]);
        ok && out.trim() == "yes"
    };
    eventually_within(
        CONTROLLER_DEADLINE,
        "admin and view hold Substrate's rules",
        || (can(&carol, "create", "resume") && can(&dave, "get", "")).then_some(()),
    );
    assert!(!can(&dave, "create", ""), "view may not create actors");
    assert!(
        !can(&dave, "create", "resume"),
        "view may not resume actors"
    );

    // Through kube-apiserver, as each of them.
    let actors = format!("/apis/substrate.ate.dev/v1alpha1/namespaces/{ns}/actors");
    create(&carol, &actors, &actor(ns, "by-carol"));
    let (code, body) = carol.request("POST", &format!("{actors}/x1/resume"), Some(&json!({})));
    assert_eq!(code, 202, "carol resumes x1: {body}");
    let (code, body) = dave.request("GET", &format!("{actors}/by-carol"), None);
    assert_eq!(code, 200, "dave reads: {body}");
    let (code, body) = dave.request("POST", &actors, Some(&actor(ns, "by-dave")));
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body["message"],
        "actors.substrate.ate.dev is forbidden: User \"dave\" cannot create resource \"actors\" \
         in API group \"substrate.ate.dev\" in the namespace \"team-x\""
    );
    let (code, body) = dave.request("POST", &format!("{actors}/x1/suspend"), Some(&json!({})));
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body["message"],
        "actors.substrate.ate.dev \"x1\" is forbidden: User \"dave\" cannot create resource \
         \"actors/suspend\" in API group \"substrate.ate.dev\" in the namespace \"team-x\""
    );
}
