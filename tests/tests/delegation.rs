//! Delegated authentication and authorization against a real kube-apiserver (envtest,
//! Kubernetes 1.25 from `KUBEBUILDER_ASSETS`; skipped with a message when it is unset).
//!
//! Substrate's apiserver is started here with only `--authentication-kubeconfig` and
//! `--authorization-kubeconfig` (no CA files): every CA it trusts comes from the cluster's
//! `kube-system/extension-apiserver-authentication` ConfigMap. Then:
//! - kube-apiserver's front-proxy requests are accepted (the APIService turns Available, the
//!   admin creates atespaces through the aggregator);
//! - alice, whom a RoleBinding allows, gets 200 through the aggregator and directly (her
//!   client certificate, signed by the cluster's client CA); bob gets the exact 403 from
//!   Substrate (a SubjectAccessReview said no) and the same one from kube-apiserver;
//! - a ServiceAccount token from the TokenRequest API sent straight to Substrate is
//!   authenticated by a TokenReview; a made-up token is 401; no credential is
//!   `system:anonymous`, denied by the cluster's RBAC (403);
//! - a RoleBinding removed is a 403 once the decision cache's TTL has passed;
//! - a client CA added to the ConfigMap is trusted without a restart.
//!
//! And a start whose identity may not read the ConfigMap fails with a clear error, unless
//! `--authentication-tolerate-lookup-failure`; the bindings shipped in
//! `config/rbac/apiserver.yaml` are all a ServiceAccount needs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use e2e::envtest::pki::{Credential, Pki};
use e2e::envtest::{Envtest, Identity, Options};
use e2e::eventually_within;

const GROUP: &str = "substrate.ate.dev";
const ACTORS_A: &str = "/apis/substrate.ate.dev/v1alpha1/namespaces/team-a/actors";

/// Substrate's apiserver in this process with its own Valkey. Stopped on drop.
struct Delegated {
    addr: std::net::SocketAddr,
    running: Option<apiserver::Running>,
    rt: tokio::runtime::Runtime,
    _valkey: apiserver::testing::ValkeyServer,
}

impl Drop for Delegated {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.stop());
        }
    }
}

/// Arguments: the serving certificate kube-apiserver verifies, the delegation kubeconfigs,
/// no CA files.
fn args(env: &Envtest, valkey: &str, dir: &Path, kubeconfig: &Path, extra: &[&str]) -> Vec<String> {
    let serving = env.substrate_serving_cert();
    let mut a = vec![
        "substrate-apiserver".to_string(),
        "--bind=127.0.0.1:0".into(),
        format!("--valkey-url={valkey}"),
        format!("--pki-dir={}", dir.join("pki").display()),
        format!("--tls-cert-file={}", serving.cert.display()),
        format!("--tls-private-key-file={}", serving.key.display()),
        format!("--authentication-kubeconfig={}", kubeconfig.display()),
        format!("--authorization-kubeconfig={}", kubeconfig.display()),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn start(
    env: &Envtest,
    kubeconfig: &Path,
    extra: &[&str],
) -> Result<Delegated, apiserver::RunError> {
    use clap::Parser as _;
    let valkey = apiserver::testing::ValkeyServer::start();
    let dir = tempfile::Builder::new()
        .prefix("substrate-deleg-")
        .tempdir_in(env.dir())
        .expect("tempdir")
        .keep();
    let argv = args(env, &valkey.url(), &dir, kubeconfig, extra);
    let parsed = apiserver::config::Args::try_parse_from(&argv).expect("apiserver arguments");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let running = rt.block_on(apiserver::start(&parsed))?;
    Ok(Delegated {
        addr: running.addr,
        running: Some(running),
        rt,
        _valkey: valkey,
    })
}

impl Delegated {
    fn direct(&self, env: &Envtest, who: &Identity) -> Identity {
        who.at(
            &format!("https://{}", self.addr),
            &env.pki.ca.files.cert_pem,
            env.dir(),
        )
    }
}

fn control_plane() -> Option<Envtest> {
    Envtest::start_with(Options {
        controller_manager: false,
    })
}

fn forbidden(user: &str, verb: &str, name: Option<&str>) -> String {
    let subject = match name {
        Some(n) => format!("actors.{GROUP} {n:?}"),
        None => format!("actors.{GROUP}"),
    };
    format!(
        "{subject} is forbidden: User {user:?} cannot {verb} resource \"actors\" in API group \
         {GROUP:?} in the namespace \"team-a\""
    )
}

fn actor(name: &str) -> Value {
    json!({
        "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": {"template": {"name": "counter"}, "activation": "Suspended"},
    })
}

/// A Role in team-a for actors and a RoleBinding of it to `subject` (a JSON subject).
fn bind_actor_role(env: &Envtest, binding: &str, subject: Value) {
    env.admin.apply(&json!({
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": "actor-user", "namespace": "team-a"},
             "rules": [{"apiGroups": [GROUP], "resources": ["actors"],
                        "verbs": ["get", "list", "watch", "create"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": binding, "namespace": "team-a"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "actor-user"},
             "subjects": [subject]},
        ],
    }));
}

fn user_subject(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name})
}

#[test]
fn start_fails_clearly_when_the_authentication_configmap_cannot_be_read() {
    let Some(env) = control_plane() else { return };
    // A user with no RoleBinding in kube-system may not read the ConfigMap.
    let nobody: PathBuf = env.user("nobody", &[]).kubeconfig;
    let err = match start(&env, &nobody, &[]) {
        Ok(_) => panic!("Substrate started without reading the authentication ConfigMap"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("kube-system/extension-apiserver-authentication")
            && err.contains("forbidden")
            && err.contains("--authentication-tolerate-lookup-failure"),
        "{err}"
    );
    // Tolerated: it starts, trusting only what flags give (nothing here), and answers health.
    let s = start(&env, &nobody, &["--authentication-tolerate-lookup-failure"])
        .expect("starts when the lookup failure is tolerated");
    let anonymous = s.direct(&env, &env.user("x", &[]));
    let (code, _) = anonymous.request_raw("GET", "/healthz", None);
    // The certificate's CA is not trusted (the handshake fails) or the user is anonymous.
    assert!(code == 0 || code == 401, "{code}");
}

#[test]
fn the_shipped_delegation_rbac_is_enough_for_a_service_account() {
    // config/rbac/apiserver.yaml applied, Substrate started with a token of its
    // ServiceAccount (what the in-cluster configuration gives a pod): it reads the
    // ConfigMap, reviews tokens and asks for SubjectAccessReviews.
    let Some(env) = control_plane() else { return };
    env.ensure_namespace("substrate-system");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/rbac/apiserver.yaml");
    env.kubectl()
        .ok(&["apply", "-f", &manifest.display().to_string()], None);
    let sa = env.service_account_identity("substrate-system", "substrate-apiserver");
    let s = start(&env, &sa.kubeconfig, &[]).expect("Substrate starts as its ServiceAccount");
    env.ensure_namespace("team-a");
    let robot = env.service_account_identity("team-a", "robot");
    bind_actor_role(
        &env,
        "robot-actors",
        json!({"kind": "ServiceAccount", "name": "robot", "namespace": "team-a"}),
    );
    let (code, body) = s.direct(&env, &robot).request("GET", ACTORS_A, None);
    assert_eq!(
        code, 200,
        "TokenReview and SubjectAccessReview as the ServiceAccount: {body}"
    );
    let (code, body) = s
        .direct(&env, &env.user("bob", &[]))
        .request("GET", ACTORS_A, None);
    assert_eq!(
        (code, body["message"].clone()),
        (403, json!(forbidden("bob", "list", None)))
    );
}

#[test]
fn substrate_delegates_authentication_and_authorization_to_kube_apiserver() {
    let Some(env) = control_plane() else { return };
    let kubeconfig = env.delegation_kubeconfig();
    let s = start(
        &env,
        &kubeconfig,
        &[
            "--authorization-webhook-cache-authorized-ttl=2s",
            "--authorization-webhook-cache-unauthorized-ttl=2s",
            "--authentication-token-webhook-cache-ttl=2s",
        ],
    )
    .expect("Substrate starts with delegation");
    // Available means kube-apiserver's front-proxy requests were authenticated: the
    // request-header CA came from the ConfigMap only.
    env.register_substrate(s.addr, &env.pki.ca.files.cert_pem);

    for ns in ["team-a", "team-b"] {
        env.ensure_namespace(ns);
        let (code, body) = env.admin.request(
            "POST",
            "/apis/substrate.ate.dev/v1alpha1/atespaces",
            Some(&json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace", "metadata": {"name": ns}})),
        );
        assert_eq!(
            code, 201,
            "admin (system:masters via the front proxy) creates {ns}: {body}"
        );
    }
    bind_actor_role(&env, "alice-actors", user_subject("alice"));

    // alice through kube-apiserver: kube allows, Substrate asks kube (SubjectAccessReview)
    // and allows too.
    let alice = env.user("alice", &["team-a"]);
    let (code, body) = alice.request("POST", ACTORS_A, Some(&actor("a1")));
    assert_eq!(
        code, 201,
        "alice creates an actor through the aggregator: {body}"
    );
    let (code, body) = alice.request("GET", ACTORS_A, None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["items"][0]["metadata"]["name"], "a1");
    // Directly: her certificate is signed by the ConfigMap's client CA.
    let alice_direct = s.direct(&env, &alice);
    let (code, body) = alice_direct.request("GET", &format!("{ACTORS_A}/a1"), None);
    assert_eq!(code, 200, "{body}");
    // Discovery (a non-resource SubjectAccessReview: system:discovery allows it).
    let (code, body) = alice_direct.request("GET", "/apis/substrate.ate.dev/v1alpha1", None);
    assert_eq!(code, 200, "{body}");

    // bob: Substrate's own 403, worded as kube's, for a get and a list...
    let bob = env.user("bob", &["team-b"]);
    let bob_direct = s.direct(&env, &bob);
    let (code, body) = bob_direct.request("GET", &format!("{ACTORS_A}/a1"), None);
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["message"], forbidden("bob", "get", Some("a1")));
    assert_eq!(body["reason"], "Forbidden");
    let (code, body) = bob_direct.request("GET", ACTORS_A, None);
    assert_eq!(
        (code, body["message"].clone()),
        (403, json!(forbidden("bob", "list", None)))
    );
    // ...and kube-apiserver's, the same words.
    let (code, body) = bob.request("GET", &format!("{ACTORS_A}/a1"), None);
    assert_eq!(
        (code, body["message"].clone()),
        (403, json!(forbidden("bob", "get", Some("a1"))))
    );

    // A ServiceAccount token (TokenRequest API) straight to Substrate: TokenReview.
    let robot = env.service_account_identity("team-a", "robot");
    bind_actor_role(
        &env,
        "robot-actors",
        json!({"kind": "ServiceAccount", "name": "robot", "namespace": "team-a"}),
    );
    let robot_direct = s.direct(&env, &robot);
    let (code, body) = robot_direct.request("GET", &format!("{ACTORS_A}/a1"), None);
    assert_eq!(code, 200, "{body}");
    // Its RBAC is its own: nothing in team-b.
    let (code, body) = robot_direct.request(
        "GET",
        "/apis/substrate.ate.dev/v1alpha1/namespaces/team-b/actors",
        None,
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body["message"],
        "actors.substrate.ate.dev is forbidden: User \"system:serviceaccount:team-a:robot\" \
         cannot list resource \"actors\" in API group \"substrate.ate.dev\" in the namespace \"team-b\""
    );
    // A token the cluster does not know, and no credential at all: 401.
    let mut forged = robot_direct.clone();
    forged.credential = Credential::Token("not-a-token".into());
    let (code, body) = forged.request("GET", ACTORS_A, None);
    assert_eq!(
        (code, body["reason"].clone()),
        (401, json!("Unauthorized")),
        "{body}"
    );
    // No credential: system:anonymous, whom the cluster's RBAC denies (kube's 403).
    let (code, body) = no_credential(&s, &env).request("GET", ACTORS_A, None);
    assert_eq!(
        (code, body["message"].clone()),
        (403, json!(forbidden("system:anonymous", "list", None))),
        "{body}"
    );
    // Health is always allowed, credential or not.
    let (code, text) = no_credential(&s, &env).request_raw("GET", "/healthz", None);
    assert_eq!((code, text.as_str()), (200, "ok"));

    // alice's RoleBinding removed: denied once the cached allow (2 s) has expired.
    env.kubectl().ok(
        &["delete", "rolebinding", "alice-actors", "-n", "team-a"],
        None,
    );
    let message = eventually_within(
        Duration::from_secs(30),
        "alice is denied after her RoleBinding is deleted",
        || {
            let (code, body) = alice_direct.request("GET", &format!("{ACTORS_A}/a1"), None);
            (code == 403).then(|| body["message"].clone())
        },
    );
    assert_eq!(message, json!(forbidden("alice", "get", Some("a1"))));

    // A new client CA added to the ConfigMap is trusted without a restart.
    let rotated = Pki::new(&env.dir().join("rotated-pki")).expect("second PKI");
    let carol_cert = rotated
        .ca
        .client(&rotated.dir, "carol", "carol", &["team-a"])
        .expect("carol's certificate");
    bind_actor_role(&env, "carol-actors", user_subject("carol"));
    let mut carol = alice_direct.clone();
    carol.user = "carol".into();
    carol.credential = Credential::Cert(carol_cert);
    let (code, _) = carol.request_raw("GET", &format!("{ACTORS_A}/a1"), None);
    assert_eq!(
        code, 0,
        "a certificate of an unknown CA fails the TLS handshake"
    );
    let (code, cm) = env.admin.request(
        "GET",
        "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication",
        None,
    );
    assert_eq!(code, 200, "{cm}");
    let bundle = format!(
        "{}\n{}",
        cm["data"]["client-ca-file"]
            .as_str()
            .expect("client-ca-file")
            .trim_end(),
        rotated.ca.files.cert_pem
    );
    let (code, body) = env.admin.request(
        "PATCH",
        "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication",
        Some(&json!({"data": {"client-ca-file": bundle}})),
    );
    assert_eq!(code, 200, "{body}");
    let body = eventually_within(
        Duration::from_secs(30),
        "carol's certificate (the new CA) is accepted",
        || {
            let (code, body) = carol.request("GET", &format!("{ACTORS_A}/a1"), None);
            (code == 200).then_some(body)
        },
    );
    assert_eq!(body["metadata"]["name"], "a1");
    // The old CA is still trusted (it is still in the bundle).
    let (code, _) = bob_direct.request("GET", &format!("{ACTORS_A}/a1"), None);
    assert_eq!(code, 403);
}

/// An identity without a client certificate or token, straight to Substrate.
fn no_credential(s: &Delegated, env: &Envtest) -> Identity {
    let mut who = s.direct(env, &env.user("nobody-at-all", &[]));
    who.credential = Credential::Token(String::new());
    who
}

/// Prints what authorization costs per request with the decision cache warm (no network
/// call) and cold (one SubjectAccessReview round trip to kube-apiserver). Asserts only the
/// decisions, never the times.
#[test]
fn decision_cache_cost_against_kube_apiserver() {
    use apiserver::authz::cache::{CachedAuthorizer, DEFAULT_CAPACITY, Ttls};
    use apiserver::authz::webhook::{KubeReviewer, WebhookAuthorizer};
    use apiserver::authz::{Attributes, Authorizer};
    use std::sync::Arc;
    use std::time::Instant;

    let Some(env) = control_plane() else { return };
    let kubeconfig = env.delegation_kubeconfig();
    env.ensure_namespace("team-a");
    bind_actor_role(&env, "alice-actors", user_subject("alice"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt
        .block_on(apiserver::cluster_client(Some(&kubeconfig), false, "test"))
        .expect("client")
        .expect("a kubeconfig was given");
    let cached = CachedAuthorizer::new(
        Arc::new(WebhookAuthorizer::new(Arc::new(KubeReviewer::new(client)))),
        Ttls {
            authorized: Duration::from_secs(300),
            unauthorized: Duration::from_secs(300),
        },
        DEFAULT_CAPACITY,
    );
    let alice = apiserver::auth::UserInfo {
        name: "alice".into(),
        groups: vec!["team-a".into(), "system:authenticated".into()],
        extra: Default::default(),
    };
    let attrs: Vec<Attributes> = (0..200)
        .map(|i| {
            Attributes::resource(
                &alice,
                "get",
                GROUP,
                "v1alpha1",
                "actors",
                None,
                Some("team-a"),
                Some(&format!("a{i}")),
            )
        })
        .collect();
    rt.block_on(async {
        let mut cold = Vec::new();
        for a in &attrs {
            let t = Instant::now();
            let answer = cached.authorize(a).await.expect("review");
            cold.push(t.elapsed());
            assert!(answer.allowed(), "{answer:?}");
        }
        cold.sort();
        let rounds = 100_000;
        let t = Instant::now();
        for i in 0..rounds {
            let answer = cached.authorize(&attrs[i % attrs.len()]).await.expect("cached");
            assert!(answer.allowed());
        }
        let warm = t.elapsed() / rounds as u32;
        let stats = cached.stats();
        assert_eq!(stats.misses, attrs.len() as u64, "every warm call was a hit");
        eprintln!(
            "authorization: cold (one SubjectAccessReview) p50 {:?} p99 {:?}; warm (cache hit) {:?} per request; {stats:?}",
            cold[cold.len() / 2],
            cold[cold.len() * 99 / 100],
            warm,
        );
    });
}
