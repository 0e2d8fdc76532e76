//! Standalone RBAC through the real `kubectl`: a tenant (`alice`, group `team-a`) is
//! forbidden until the admin binds `substrate-actor-edit` in `team-a` with `kubectl create
//! rolebinding`, then allowed there and only there; escalation through roles and bindings is
//! refused with Kubernetes' message; aggregation carries Substrate's roles into `edit`; the
//! RBAC kinds are served to `kubectl get/describe/apply/delete` as kube-apiserver serves them.

mod support;

use support::{World, actor_yaml, assert_contains, atespace_yaml, eventually, path_str};

/// Runs kubectl as the user of `kubeconfig`.
fn as_user(w: &World, kubeconfig: &std::path::Path, args: &[&str]) -> support::Out {
    let mut all = vec!["--kubeconfig", path_str(kubeconfig)];
    all.extend_from_slice(args);
    w.kubectl(&all)
}

fn as_user_stdin(
    w: &World,
    kubeconfig: &std::path::Path,
    args: &[&str],
    stdin: &str,
) -> support::Out {
    let mut all = vec!["--kubeconfig", path_str(kubeconfig)];
    all.extend_from_slice(args);
    w.kubectl_with(&all, Some(stdin), &[])
}

/// Waits until the user's `args` succeed (RBAC changes reach the authorizer through the
/// watch caches, a moment after the write is acknowledged).
fn eventually_ok(w: &World, kubeconfig: &std::path::Path, args: &[&str]) -> String {
    eventually(&format!("kubectl {} to succeed", args.join(" ")), || {
        let out = as_user(w, kubeconfig, args);
        out.success().then_some(out.stdout)
    })
}

#[test]
fn a_tenant_is_forbidden_until_bound_and_then_only_in_its_atespace() {
    let Some(w) = support::world() else { return };
    for ns in ["team-a", "team-b"] {
        w.create(&atespace_yaml(ns));
    }
    w.create(&actor_yaml("team-b", "theirs", ""));
    let alice = w.issue_user("alice", &["team-a"]);

    let out = as_user(&w, &alice, &["get", "actors", "-n", "team-a"]);
    assert!(!out.success(), "{out}");
    assert_eq!(
        out.stderr.trim(),
        "Error from server (Forbidden): actors.substrate.ate.dev is forbidden: User \"alice\" cannot list resource \"actors\" in API group \"substrate.ate.dev\" in the namespace \"team-a\""
    );

    // The admin binds the shipped role with plain kubectl.
    let out = w.ok(&[
        "create",
        "rolebinding",
        "team-a-edit",
        "--clusterrole=substrate-actor-edit",
        "--group=team-a",
        "-n",
        "team-a",
    ]);
    assert_contains(
        &out,
        "rolebinding.rbac.authorization.k8s.io/team-a-edit created",
    );
    eventually_ok(&w, &alice, &["get", "actors", "-n", "team-a"]);
    let out = as_user_stdin(
        &w,
        &alice,
        &["create", "-f", "-"],
        &actor_yaml("team-a", "mine", ""),
    );
    assert!(out.success(), "{out}");
    let out = as_user(
        &w,
        &alice,
        &["get", "actor", "mine", "-n", "team-a", "-o", "name"],
    );
    assert_eq!(out.stdout.trim(), "actor.substrate.ate.dev/mine", "{out}");
    let out = as_user(
        &w,
        &alice,
        &["delete", "actor", "mine", "-n", "team-a", "--wait=false"],
    );
    assert!(out.success(), "{out}");

    // Another atespace, all atespaces, and what the role does not grant: forbidden.
    let out = as_user(&w, &alice, &["get", "actor", "theirs", "-n", "team-b"]);
    assert!(!out.success(), "{out}");
    assert_eq!(
        out.stderr.trim(),
        "Error from server (Forbidden): actors.substrate.ate.dev \"theirs\" is forbidden: User \"alice\" cannot get resource \"actors\" in API group \"substrate.ate.dev\" in the namespace \"team-b\""
    );
    let out = as_user(&w, &alice, &["get", "actors", "-A"]);
    assert!(!out.success(), "{out}");
    assert_eq!(
        out.stderr.trim(),
        "Error from server (Forbidden): actors.substrate.ate.dev is forbidden: User \"alice\" cannot list resource \"actors\" in API group \"substrate.ate.dev\" at the cluster scope"
    );
    let out = as_user(&w, &alice, &["get", "workers"]);
    assert!(!out.success(), "{out}");
    assert_contains(&out.stderr, "cannot list resource \"workers\"");
    let out = as_user(&w, &alice, &["get", "rolebindings", "-n", "team-a"]);
    assert!(!out.success(), "{out}");
    assert_contains(
        &out.stderr,
        "User \"alice\" cannot list resource \"rolebindings\" in API group \"rbac.authorization.k8s.io\" in the namespace \"team-a\"",
    );

    // Aggregation: Substrate's roles are part of the built-in `edit`.
    w.ok(&[
        "create",
        "rolebinding",
        "team-a-edit",
        "--clusterrole=edit",
        "--group=team-a",
        "-n",
        "team-b",
    ]);
    eventually_ok(&w, &alice, &["get", "actor", "theirs", "-n", "team-b"]);
    let out = as_user_stdin(
        &w,
        &alice,
        &["create", "-f", "-"],
        &actor_yaml("team-b", "from-alice", ""),
    );
    assert!(out.success(), "{out}");

    // Unbinding takes the grant away again.
    w.ok(&["delete", "rolebinding", "team-a-edit", "-n", "team-a"]);
    eventually("alice to be forbidden again", || {
        let out = as_user(&w, &alice, &["get", "actors", "-n", "team-a"]);
        (!out.success() && out.stderr.contains("Forbidden")).then_some(())
    });
}

#[test]
fn escalation_through_roles_and_bindings_is_refused() {
    let Some(w) = support::world() else { return };
    w.create(&atespace_yaml("team-a"));
    let alice = w.issue_user("alice", &["team-a"]);
    // alice may manage roles and bindings in team-a, and use actors there.
    w.ok(&[
        "create",
        "role",
        "rbac-writer",
        "--verb=create,get,list,update,patch,delete",
        "--resource=roles.rbac.authorization.k8s.io,rolebindings.rbac.authorization.k8s.io",
        "-n",
        "team-a",
    ]);
    for (name, role) in [
        ("writer", "role=rbac-writer"),
        ("edit", "clusterrole=substrate-actor-edit"),
    ] {
        let flag = format!("--{role}");
        w.ok(&[
            "create",
            "rolebinding",
            name,
            &flag,
            "--user=alice",
            "-n",
            "team-a",
        ]);
    }
    eventually_ok(&w, &alice, &["get", "roles", "-n", "team-a"]);

    // A role with what alice holds: allowed; with more: refused, naming what she lacks.
    let out = as_user(
        &w,
        &alice,
        &[
            "create",
            "role",
            "reader",
            "--verb=get,list",
            "--resource=actors.substrate.ate.dev",
            "-n",
            "team-a",
        ],
    );
    assert!(out.success(), "{out}");
    let out = as_user(
        &w,
        &alice,
        &[
            "create",
            "role",
            "sneaky",
            "--verb=get,delete",
            "--resource=workers.substrate.ate.dev",
            "-n",
            "team-a",
        ],
    );
    assert!(!out.success(), "{out}");
    assert_eq!(
        out.stderr.trim(),
        "Error from server (Forbidden): roles.rbac.authorization.k8s.io \"sneaky\" is forbidden: user \"alice\" (groups=[\"team-a\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"substrate.ate.dev\"], Resources:[\"workers\"], Verbs:[\"get\" \"delete\"]}"
    );

    // Binding a role alice holds: allowed; binding cluster-admin: refused.
    let out = as_user(
        &w,
        &alice,
        &[
            "create",
            "rolebinding",
            "bob-view",
            "--clusterrole=substrate-actor-view",
            "--user=bob",
            "-n",
            "team-a",
        ],
    );
    assert!(out.success(), "{out}");
    let out = as_user(
        &w,
        &alice,
        &[
            "create",
            "rolebinding",
            "me-admin",
            "--clusterrole=cluster-admin",
            "--user=alice",
            "-n",
            "team-a",
        ],
    );
    assert!(!out.success(), "{out}");
    assert_contains(
        &out.stderr,
        "rolebindings.rbac.authorization.k8s.io \"me-admin\" is forbidden: user \"alice\" (groups=[\"team-a\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}\n{NonResourceURLs:[\"*\"], Verbs:[\"*\"]}",
    );
    // With `bind` on cluster-admin in team-a, she may.
    w.ok(&[
        "create",
        "role",
        "binder",
        "--verb=bind",
        "--resource=clusterroles.rbac.authorization.k8s.io",
        "--resource-name=cluster-admin",
        "-n",
        "team-a",
    ]);
    w.ok(&[
        "create",
        "rolebinding",
        "binder",
        "--role=binder",
        "--user=alice",
        "-n",
        "team-a",
    ]);
    eventually_ok(
        &w,
        &alice,
        &[
            "create",
            "rolebinding",
            "me-admin",
            "--clusterrole=cluster-admin",
            "--user=alice",
            "-n",
            "team-a",
        ],
    );
    // ... and now holds everything in team-a (not elsewhere): a role with any rule is hers.
    eventually_ok(
        &w,
        &alice,
        &[
            "create",
            "role",
            "sneaky",
            "--verb=get,delete",
            "--resource=workers.substrate.ate.dev",
            "-n",
            "team-a",
        ],
    );
    let out = as_user(&w, &alice, &["get", "workers"]);
    assert!(!out.success(), "{out}");

    // A binding's roleRef is immutable (422, Kubernetes' words).
    let yaml = "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: bob-view\n  namespace: team-a\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: substrate-actor-edit\nsubjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: User\n  name: bob\n";
    let out = w.stdin(yaml, &["apply", "--server-side", "--force-conflicts"]);
    assert!(!out.success(), "{out}");
    assert_contains(
        &out.stderr,
        "roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"substrate-actor-edit\"}: cannot change roleRef",
    );
}

#[test]
fn rbac_objects_are_served_to_kubectl_as_kubernetes_serves_them() {
    let Some(w) = support::world() else { return };
    w.create(&atespace_yaml("team-a"));
    // Bootstrap policy, with kube's tables.
    let out = w.ok(&[
        "get",
        "clusterroles",
        "cluster-admin",
        "view",
        "substrate-actor-edit",
    ]);
    let header = out.lines().next().unwrap_or_default();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["NAME", "CREATED", "AT"],
        "{out}"
    );
    let out = w.ok(&[
        "get",
        "clusterrolebindings",
        "substrate:system",
        "-o",
        "wide",
    ]);
    let mut lines = out.lines();
    assert_eq!(
        lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"],
        "{out}"
    );
    assert_contains(
        lines.next().unwrap_or_default(),
        "ClusterRole/cluster-admin",
    );
    // `view` aggregates Substrate's view role.
    eventually("view to aggregate substrate-actor-view", || {
        let rules = w.jsonpath("clusterrole", "view", "", "{.rules[*].resources}");
        rules.contains("actors/status").then_some(())
    });

    let out = w.ok(&["explain", "rolebinding.roleRef"]);
    assert_contains(&out, "RoleRef can reference a Role");
    let out = w.ok(&["api-resources", "--api-group=rbac.authorization.k8s.io"]);
    for r in [
        "clusterrolebindings",
        "clusterroles",
        "rolebindings",
        "roles",
    ] {
        assert_contains(&out, r);
    }

    // A new aggregated ClusterRole follows the roles its selector picks, as they change.
    w.ok(&["create", "clusterrole", "agg", "--aggregation-rule=pick=me"]);
    w.ok(&[
        "create",
        "clusterrole",
        "src",
        "--verb=get",
        "--resource=actors.substrate.ate.dev",
    ]);
    let out = w.ok(&["describe", "clusterrole", "agg"]);
    assert_contains(&out, "agg");
    w.ok(&["label", "clusterrole", "src", "pick=me"]);
    eventually("agg to aggregate src", || {
        let rules = w.jsonpath("clusterrole", "agg", "", "{.rules[*].resources}");
        rules.contains("actors").then_some(())
    });
    w.ok(&["label", "clusterrole", "src", "pick-"]);
    eventually("agg to drop src's rules", || {
        let rules = w.jsonpath("clusterrole", "agg", "", "{.rules}");
        (!rules.contains("actors")).then_some(())
    });

    // The shipped YAML applies (client-side and server-side) over the bootstrap copies.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(crds::rbac::ACTOR_ROLES_PATH);
    let out = w.ok(&["apply", "-f", path_str(&path)]);
    assert_contains(
        &out,
        "clusterrole.rbac.authorization.k8s.io/substrate-actor-view",
    );
    w.ok(&["apply", "--server-side", "-f", path_str(&path)]);

    // Create, describe, list, delete a Role and a RoleBinding.
    w.ok(&[
        "create",
        "role",
        "r",
        "--verb=get",
        "--resource=actors.substrate.ate.dev",
        "-n",
        "team-a",
    ]);
    w.ok(&[
        "create",
        "rolebinding",
        "rb",
        "--role=r",
        "--user=alice",
        "--serviceaccount=team-a:bot",
        "-n",
        "team-a",
    ]);
    let out = w.ok(&["get", "rolebindings", "-n", "team-a"]);
    let mut lines = out.lines();
    assert_eq!(
        lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["NAME", "ROLE", "AGE"],
        "{out}"
    );
    assert_contains(lines.next().unwrap_or_default(), "Role/r");
    let out = w.ok(&["describe", "rolebinding", "rb", "-n", "team-a"]);
    assert_contains(&out, "alice");
    assert_contains(&out, "bot");
    let out = w.ok(&["describe", "role", "r", "-n", "team-a"]);
    assert_contains(&out, "actors.substrate.ate.dev");
    let role = w.get_json("role", "r", "team-a").expect("role r");
    assert!(role["metadata"].get("generation").is_none(), "{role}");
    assert_eq!(role["rules"][0]["verbs"], serde_json::json!(["get"]));
    // Invalid objects: Kubernetes' validation.
    let bad = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: bad\n  namespace: team-a\nrules:\n- nonResourceURLs: [\"/x\"]\n  verbs: [get]\n";
    let out = w.stdin(bad, &["create"]);
    assert!(!out.success(), "{out}");
    assert_contains(
        &out.stderr,
        "rules[0].nonResourceURLs: Invalid value: []string{\"/x\"}: namespaced rules cannot apply to non-resource URLs",
    );
    w.ok(&["delete", "rolebinding", "rb", "-n", "team-a"]);
    w.ok(&["delete", "role", "r", "-n", "team-a"]);
    assert!(w.names("roles", "team-a").is_empty());
}
