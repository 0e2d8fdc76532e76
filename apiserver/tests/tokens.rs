//! Static bearer tokens (`--token-auth-file`) and `authentication.k8s.io/v1` `TokenReview`
//! against a standalone apiserver: the review names the file's user, an unknown token is not
//! authenticated, creating a review needs `create tokenreviews`, and `kubectl --token` works.

mod support;

use serde_json::{Value, json};
use support::*;

const TOKENS: &str = "alice-secret-token,alice,uid-alice,\"team-a,devs\"\n\
                      bob-secret-token,bob,uid-bob\n";

fn world_with_tokens() -> Option<(World, tempfile::TempDir)> {
    if !have_kubectl() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.csv");
    std::fs::write(&file, TOKENS).unwrap();
    let w = World::start_with_args(vec![format!("--token-auth-file={}", file.display())]);
    Some((w, dir))
}

fn token_review(w: &World, who: &Identity, headers: &[&str], token: &str) -> Http {
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token}});
    w.http_as(
        who,
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        Some(("application/json", body.to_string().as_bytes())),
        headers,
    )
}

/// kubectl with only a server, its CA and a bearer token (no client certificate).
fn kubectl_token(w: &World, token: &str, args: &[&str]) -> Out {
    let ca = w.pki_dir.join("ca.crt");
    let mut all = vec![
        "--kubeconfig=/dev/null".to_string(),
        format!("--server={}", w.base_url()),
        format!("--certificate-authority={}", ca.display()),
        format!("--token={token}"),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    w.kubectl(&all)
}

#[test]
fn token_reviews_answer_the_token_files_users() {
    let Some((w, _dir)) = world_with_tokens() else {
        return;
    };
    let admin = Identity::Cert("admin".into());
    let r = token_review(&w, &admin, &[], "alice-secret-token");
    assert_eq!(r.code, 201, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["kind"], "TokenReview");
    assert_eq!(v["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(
        v["status"],
        json!({"authenticated": true, "user": {"username": "alice", "uid": "uid-alice",
            "groups": ["team-a", "devs", "system:authenticated"]}})
    );
    let r = token_review(&w, &admin, &[], "not-a-token");
    assert_eq!(r.code, 201, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["status"], json!({"authenticated": false, "user": {}}));

    // Creating a review needs `create tokenreviews`: alice (by her token) may not.
    let r = token_review(
        &w,
        &Identity::Anonymous,
        &["Authorization: Bearer alice-secret-token"],
        "bob-secret-token",
    );
    assert_eq!(r.code, 403, "{}", r.body);
    assert_eq!(
        r.json()["message"],
        "tokenreviews.authentication.k8s.io is forbidden: User \"alice\" cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope"
    );
    // Bound to kube's system:auth-delegator, she may.
    w.ok(&[
        "create",
        "clusterrolebinding",
        "alice-delegator",
        "--clusterrole=system:auth-delegator",
        "--user=alice",
    ]);
    let v = eventually("alice may review tokens", || {
        let r = token_review(
            &w,
            &Identity::Anonymous,
            &["Authorization: Bearer alice-secret-token"],
            "bob-secret-token",
        );
        (r.code == 201).then(|| r.json())
    });
    assert_eq!(v["status"]["user"]["username"], "bob");
    assert_eq!(
        v["status"]["user"]["groups"],
        json!(["system:authenticated"])
    );

    // Discovery lists the group and its one resource.
    let out = w.ok(&[
        "api-resources",
        "--api-group=authentication.k8s.io",
        "-o",
        "name",
    ]);
    assert_eq!(out.trim(), "tokenreviews.authentication.k8s.io");
}

#[test]
fn kubectl_with_a_static_token_is_that_user() {
    let Some((w, _dir)) = world_with_tokens() else {
        return;
    };
    w.create(&atespace_yaml("team-a"));
    let out = kubectl_token(&w, "alice-secret-token", &["get", "actors", "-n", "team-a"]);
    assert!(!out.success(), "{out}");
    assert_eq!(
        out.stderr.trim(),
        "Error from server (Forbidden): actors.substrate.ate.dev is forbidden: User \"alice\" cannot list resource \"actors\" in API group \"substrate.ate.dev\" in the namespace \"team-a\""
    );
    // Her groups come from the file: a binding to `team-a` applies to her.
    w.ok(&[
        "create",
        "rolebinding",
        "team-a-edit",
        "--clusterrole=substrate-actor-edit",
        "--group=team-a",
        "-n",
        "team-a",
    ]);
    eventually("alice lists actors with her token", || {
        let out = kubectl_token(&w, "alice-secret-token", &["get", "actors", "-n", "team-a"]);
        out.success().then_some(())
    });
    let out = kubectl_token(
        &w,
        "alice-secret-token",
        &["auth", "can-i", "create", "actors", "-n", "team-a"],
    );
    assert_eq!(out.stdout.trim(), "yes", "{out}");
    // bob is authenticated, not authorized.
    let out = kubectl_token(&w, "bob-secret-token", &["get", "actors", "-n", "team-a"]);
    assert!(out.stderr.contains("User \"bob\" cannot list"), "{out}");
    // An unknown token is 401, not anonymous.
    let out = kubectl_token(&w, "wrong-token", &["get", "actors", "-n", "team-a"]);
    assert!(!out.success(), "{out}");
    assert_eq!(
        out.stderr.trim(),
        "error: You must be logged in to the server (Unauthorized)"
    );
}

#[test]
fn a_bad_token_file_stops_the_start_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.csv");
    std::fs::write(&file, "good,user,1\nbad,line\n").unwrap();
    let args = <apiserver::config::Args as clap::Parser>::try_parse_from([
        "substrate-apiserver".to_string(),
        "--standalone".into(),
        "--valkey-url=redis://127.0.0.1:1".into(),
        format!("--pki-dir={}", dir.path().join("pki").display()),
        format!("--token-auth-file={}", file.display()),
    ])
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = match rt.block_on(apiserver::start(&args)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("started with a bad token file"),
    };
    assert_eq!(
        err,
        format!(
            "token file {:?} must have at least 3 columns (token, user name, user uid), found 2 (line 2)",
            file.display().to_string()
        )
    );
}
