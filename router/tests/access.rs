//! An atespace's HTTP access policy through the real router, against a real apiserver (with
//! static tokens) + Valkey: `Authorized` refuses requests without a token (401), with an
//! unknown token (401), of a user without `actors/proxy` (403), none of which wakes the actor;
//! after a RoleBinding the request reaches the actor without its `Authorization` header; back
//! to `Open`, nothing is checked and the header is forwarded; a review the router cannot make,
//! 503.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crds::substrate::{ActorPhase, Atespace};
use support::{ATESPACE, create, eventually, host, metric, send, world_with_tokens};

const WAKE: Duration = Duration::from_secs(20);
const TOKENS: &str =
    "alice-token,alice,uid-a,team-a\nbob-token,bob,uid-b\ncarol-token,carol,uid-c\n";

fn with_token(method: &str, path: &str, actor: &str, token: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host(actor));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

async fn set_policy(client: &kube::Client, policy: &str) {
    Api::<Atespace>::all(client.clone())
        .patch(
            ATESPACE,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"httpAccess": {"policy": policy}}})),
        )
        .await
        .expect("patch the atespace's policy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorized_atespaces_check_tokens_and_rbac_before_waking() {
    let w = world_with_tokens(Some(TOKENS)).await;
    w.actor("web", "t", "OnDemand").await;
    let r = w.router(WAKE).await;
    set_policy(&w.client, "Authorized").await;
    // The router's table follows the atespace: no token is refused from then on. (Polled
    // with an actor that does not exist: while the atespace is still Open, a request for
    // `web` would wake it.)
    eventually("the router applies the policy", || async {
        let (s, _, _) = send(r.http_addr, with_token("GET", "/", "ghost", None))
            .await
            .ok()?;
        (s == 401).then_some(())
    })
    .await;
    let (s, headers, body) = send(r.http_addr, with_token("GET", "/echo", "web", None))
        .await
        .unwrap();
    assert_eq!(s, 401, "{body}");
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"substrate\"");
    assert_eq!(
        body,
        format!(
            "actor {ATESPACE}/web: atespace \"{ATESPACE}\" requires an Authorization: Bearer token\n"
        )
    );
    // A token the apiserver does not know.
    let (s, h, body) = send(r.http_addr, with_token("GET", "/echo", "web", Some("nope")))
        .await
        .unwrap();
    assert_eq!(s, 401, "{body}");
    assert_eq!(h["www-authenticate"], "Bearer realm=\"substrate\"");
    // bob is authenticated, not allowed.
    let (s, _, body) = send(
        r.http_addr,
        with_token("GET", "/echo", "web", Some("bob-token")),
    )
    .await
    .unwrap();
    assert_eq!(s, 403, "{body}");
    assert_eq!(
        body,
        format!("User \"bob\" cannot get actors/proxy \"web\" in atespace \"{ATESPACE}\"\n")
    );
    // Nobody was let through: the actor was not woken, nor even looked up for a wake.
    assert_eq!(w.restores.load(Ordering::SeqCst), 0);
    assert_eq!(
        metric(r.admin_addr, "substrate_router_resumes_total").await,
        0.0
    );
    let phase = w.get_actor("web").await.status.and_then(|s| s.phase);
    assert!(
        !matches!(phase, Some(ActorPhase::Resuming | ActorPhase::Running)),
        "{phase:?}"
    );
    // An actor that does not exist: the same 401, nothing learned without a token.
    let (s, _, _) = send(r.http_addr, with_token("GET", "/", "ghost", None))
        .await
        .unwrap();
    assert_eq!(s, 401);

    // bob gets the shipped edit role in the atespace (the router's decision cache may hold
    // the denial for its TTL).
    create(
        &w.client,
        &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ATESPACE}/rolebindings"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "bob-edit"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "substrate-actor-edit"},
               "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bob"}]}),
    )
    .await;
    let body = eventually("bob is let through", || async {
        let (s, _, b) = send(
            r.http_addr,
            with_token("GET", "/echo", "web", Some("bob-token")),
        )
        .await
        .ok()?;
        (s == 200).then_some(b)
    })
    .await;
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert!(
        seen["headers"].get("authorization").is_none(),
        "the actor saw the caller's credentials: {seen}"
    );
    assert_eq!(seen["headers"]["host"], host("web"));
    assert_eq!(w.restores.load(Ordering::SeqCst), 1);
    // Edit has every proxy verb: POST is `create`.
    let (s, _, body) = send(
        r.http_addr,
        with_token("POST", "/echo", "web", Some("bob-token")),
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{body}");
    // On a kept-alive connection (a cached route), each request is still checked.
    {
        let stream = tokio::net::TcpStream::connect(r.http_addr).await.unwrap();
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        for (token, want) in [
            (Some("bob-token"), 200),
            (Some("bob-token"), 200),
            (None, 401),
            (Some("carol-token"), 403),
            (Some("bob-token"), 200),
        ] {
            // The previous exchange may still be settling on the connection.
            tx.ready()
                .await
                .expect("the kept-alive connection stays open");
            let resp = tx
                .send_request(with_token("GET", "/echo", "web", token))
                .await
                .unwrap();
            assert_eq!(resp.status(), want, "{token:?}");
            let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
        }
    }
    for (reason, at_least) in [
        ("no_token", 3.0),
        ("unauthenticated", 1.0),
        ("forbidden", 2.0),
    ] {
        let n = metric(
            r.admin_addr,
            &format!("substrate_router_access_denials_total{{reason=\"{reason}\"}}"),
        )
        .await;
        assert!(n >= at_least, "{reason}: {n}");
    }

    // Back to Open: nothing is checked, the header goes through as before.
    set_policy(&w.client, "Open").await;
    let body = eventually("the router opens the atespace", || async {
        let (s, _, b) = send(
            r.http_addr,
            with_token("GET", "/echo", "web", Some("anything")),
        )
        .await
        .ok()?;
        (s == 200).then_some(b)
    })
    .await;
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["headers"]["authorization"], "Bearer anything");
    r.stop().await;
}

/// A router whose identity may do everything a router does but review tokens: every check of
/// an `Authorized` atespace fails, `503`, and nothing is woken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_the_router_cannot_make_is_503_and_wakes_nothing() {
    let w = world_with_tokens(Some(TOKENS)).await;
    w.actor("web", "t", "OnDemand").await;
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| json!({"apiGroups": groups, "resources": resources, "verbs": verbs});
    create(
        &w.client,
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": "router-without-reviews"},
               "rules": [
                   rule(&["substrate.ate.dev"], &["actors", "atespaces", "workers"], &["get", "list", "watch"]),
                   rule(&["substrate.ate.dev"], &["actors/status"], &["patch", "update"]),
                   rule(&["substrate.ate.dev"], &["actors/resume"], &["create"]),
                   rule(&["ate.dev"], &["actortemplates"], &["get", "list", "watch"]),
               ]}),
    )
    .await;
    create(
        &w.client,
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "router-without-reviews"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "router-without-reviews"},
               "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "limited-router"}]}),
    )
    .await;
    let dir = w.kubeconfig.parent().unwrap().to_path_buf();
    let server = format!("https://{}", w.apiserver.as_ref().unwrap().addr);
    let kc = dir.join("kubeconfig-limited-router");
    apiserver::pki::user_kubeconfig(
        &apiserver::pki::Pki {
            dir: dir.join("pki"),
        },
        &server,
        "limited-router",
        &[],
        "default",
        &kc,
    )
    .unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kc).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let r = w
        .router_via(kube::Client::try_from(config).unwrap(), WAKE)
        .await;
    set_policy(&w.client, "Authorized").await;
    eventually("the router applies the policy", || async {
        let (s, _, _) = send(r.http_addr, with_token("GET", "/", "web", None))
            .await
            .ok()?;
        (s == 401).then_some(())
    })
    .await;
    let (s, _, body) = send(
        r.http_addr,
        with_token("GET", "/", "web", Some("alice-token")),
    )
    .await
    .unwrap();
    assert_eq!(s, 503, "{body}");
    assert!(
        body.starts_with(&format!(
            "actor {ATESPACE}/web: the request could not be authorized: TokenReview failed ("
        )) && body.contains("cannot create resource \"tokenreviews\""),
        "{body}"
    );
    assert_eq!(w.restores.load(Ordering::SeqCst), 0);
    assert_eq!(
        metric(
            r.admin_addr,
            "substrate_router_access_denials_total{reason=\"unavailable\"}"
        )
        .await,
        1.0
    );
    // The same router serves an Open atespace as before.
    set_policy(&w.client, "Open").await;
    eventually("the router opens the atespace", || async {
        let (s, _, _) = send(r.http_addr, with_token("GET", "/", "web", None))
            .await
            .ok()?;
        (s == 200).then_some(())
    })
    .await;
    r.stop().await;
}
