//! The envtest harness itself (`e2e::envtest`): what it starts is a working control plane
//! with the identities it promises, and nothing of it outlives the harness.

use std::process::Command;

use e2e::envtest::Envtest;

fn group_alive(pgid: u32) -> bool {
    Command::new("kill")
        .args(["-0", "--", &format!("-{pgid}")])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn control_plane_identities_and_cleanup() {
    let Some(env) = Envtest::start() else { return };

    // The admin (system:masters) may do anything; a fresh user is authenticated by its
    // client certificate and refused by RBAC with kube's own message.
    let (code, _) = env
        .admin
        .request("GET", "/api/v1/namespaces/kube-system", None);
    assert_eq!(code, 200);
    let carol = env.user("carol", &["team-c"]);
    let (code, body) = carol.request("GET", "/api/v1/namespaces/kube-system/secrets", None);
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "secrets is forbidden: User \"carol\" cannot list resource \"secrets\" in API group \"\" in the namespace \"kube-system\""
    );
    // kubectl sees the same identity.
    let (ok, out, _) = carol.kubectl(&["auth", "can-i", "list", "secrets", "-n", "kube-system"]);
    assert!(!ok);
    assert_eq!(out.trim(), "no");

    // A ServiceAccount token from the TokenRequest API authenticates as the ServiceAccount.
    let robot = env.service_account_identity("default", "robot");
    let (code, body) = robot.request("GET", "/api/v1/namespaces/default/pods", None);
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "pods is forbidden: User \"system:serviceaccount:default:robot\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
    );

    // kube-controller-manager runs its controllers under their own ServiceAccounts (it
    // creates them as each controller starts).
    e2e::eventually(
        "kube-controller-manager's garbage collector ServiceAccount",
        || {
            let (code, _) = env.admin.request(
                "GET",
                "/api/v1/namespaces/kube-system/serviceaccounts/generic-garbage-collector",
                None,
            );
            (code == 200).then_some(())
        },
    );

    // Every process group goes with the harness.
    let groups = env.process_groups();
    assert_eq!(groups.len(), 3);
    assert!(groups.iter().all(|g| group_alive(*g)));
    drop(env);
    let alive: Vec<u32> = groups.into_iter().filter(|g| group_alive(*g)).collect();
    assert!(alive.is_empty(), "process groups still alive: {alive:?}");
}

#[test]
fn kube_decisions_are_the_tables() {
    // The reference the standalone RBAC is compared with: kube-apiserver's answers for the
    // table's RBAC objects are the table's `allowed` column.
    let Some(kube) = e2e::tenancy::kube_decisions(e2e::tenancy::ROWS) else {
        return;
    };
    let table: Vec<e2e::tenancy::Decision> = e2e::tenancy::ROWS
        .iter()
        .map(|r| e2e::tenancy::Decision {
            allowed: r.allowed,
            denied: false,
            reason: String::new(),
        })
        .collect();
    let diff = e2e::tenancy::differences(e2e::tenancy::ROWS, &kube, &table);
    assert!(diff.is_empty(), "{}", diff.join("\n"));
}
