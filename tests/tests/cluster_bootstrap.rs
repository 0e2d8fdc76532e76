//! Cluster mode: an installed apiserver bootstraps what `config/` leaves out — its serving CA
//! and certificate in a Secret shared by every replica (`--pki-secret`), the CA published for
//! the components (`--ca-configmap`), and the APIService's `caBundle` (`--apiservice`), so
//! kube-apiserver verifies the aggregated server without cert-manager or generated files.
//! Real kube-apiserver 1.25 + etcd (envtest).

use std::path::Path;

use base64::Engine as _;
use serde_json::Value;

use e2e::envtest::{Envtest, SUBSTRATE_NAMESPACE};

const APISERVICE: &str = "v1alpha1.substrate.ate.dev";
const PKI_SECRET: &str = "substrate-apiserver-pki";
const CA_CONFIGMAP: &str = "substrate-apiserver-ca";

fn args(env: &Envtest, valkey_url: &str, dir: &Path) -> apiserver::config::Args {
    use clap::Parser as _;
    let delegation = env.delegation_kubeconfig();
    let p = |f: &Path| f.display().to_string();
    apiserver::config::Args::try_parse_from([
        "substrate-apiserver".to_string(),
        "--bind=127.0.0.1:0".into(),
        format!("--valkey-url={valkey_url}"),
        format!("--pki-dir={}", dir.join("pki").display()),
        format!("--authentication-kubeconfig={}", p(&delegation)),
        format!("--authorization-kubeconfig={}", p(&delegation)),
        // Secrets, the ConfigMap and the APIService are written with the admin's identity
        // here; config/rbac grants the apiserver's ServiceAccount exactly these.
        format!("--kubeconfig={}", p(&env.admin.kubeconfig)),
        format!("--namespace={SUBSTRATE_NAMESPACE}"),
        format!("--pki-secret={PKI_SECRET}"),
        format!("--ca-configmap={CA_CONFIGMAP}"),
        format!("--apiservice={APISERVICE}"),
    ])
    .expect("apiserver arguments")
}

fn secret_key(env: &Envtest, key: &str) -> String {
    let (code, s) = env.admin.request(
        "GET",
        &format!("/api/v1/namespaces/{SUBSTRATE_NAMESPACE}/secrets/{PKI_SECRET}"),
        None,
    );
    assert_eq!(code, 200, "{s}");
    let b = base64::engine::general_purpose::STANDARD
        .decode(s["data"][key].as_str().expect("key in the Secret"))
        .expect("base64");
    String::from_utf8(b).expect("PEM")
}

#[test]
fn replicas_share_a_generated_pki_and_publish_its_ca() {
    let Some(env) = Envtest::start() else { return };
    env.ensure_namespace(SUBSTRATE_NAMESPACE);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let valkey = apiserver::testing::ValkeyServer::start();

    let dir_a = env.dir().join("replica-a");
    let a = rt
        .block_on(apiserver::start(&args(&env, &valkey.url(), &dir_a)))
        .expect("replica a starts");
    // The APIService is created after the apiserver started, without a caBundle (as
    // `kubectl apply -k config/default` may order it): kube-apiserver can verify the
    // aggregated server only once the apiserver filled the caBundle in.
    env.register_substrate_with(a.addr, None);
    let ca = secret_key(&env, "ca.crt");
    // Filled in by the apiserver's retry (every 2 s while the APIService is missing).
    let bundle = e2e::eventually("the apiserver sets the APIService's caBundle", || {
        let (code, apiservice) = env.admin.request(
            "GET",
            &format!("/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE}"),
            None,
        );
        assert_eq!(code, 200);
        apiservice["spec"]["caBundle"].as_str().map(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .expect("base64")
        })
    });
    assert_eq!(String::from_utf8(bundle).unwrap(), ca);
    // Through the aggregator: kube-apiserver verified our certificate.
    let (code, body) = env
        .admin
        .request("GET", "/apis/substrate.ate.dev/v1alpha1/atespaces", None);
    assert_eq!(code, 200, "{body}");

    // The CA for the components, and the serving certificate names the Service.
    let (code, cm) = env.admin.request(
        "GET",
        &format!("/api/v1/namespaces/{SUBSTRATE_NAMESPACE}/configmaps/{CA_CONFIGMAP}"),
        None,
    );
    assert_eq!(code, 200, "{cm}");
    assert_eq!(cm["data"]["ca.crt"], Value::String(ca.clone()));
    let tls = secret_key(&env, "tls.crt");
    let pem = x509_parser::pem::parse_x509_pem(tls.as_bytes())
        .expect("PEM")
        .1;
    let cert = pem.parse_x509().expect("certificate");
    let names: Vec<String> = cert
        .subject_alternative_name()
        .expect("SAN")
        .expect("SAN present")
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    for want in [
        "DNSName(substrate-apiserver.substrate-system.svc)",
        "DNSName(substrate-apiserver.substrate-system.svc.cluster.local)",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }

    // A second replica (its own empty state) serves the same certificate: it found the Secret.
    let dir_b = env.dir().join("replica-b");
    let b = rt
        .block_on(apiserver::start(&args(&env, &valkey.url(), &dir_b)))
        .expect("replica b starts");
    let served_b = std::fs::read_to_string(dir_b.join("pki/serving.crt")).expect("b's cert");
    assert_eq!(served_b, tls);
    assert_eq!(
        std::fs::read_to_string(dir_a.join("pki/serving.crt")).expect("a's cert"),
        tls
    );
    // The CA key stays private on disk.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir_b.join("pki/ca.key"))
        .expect("ca.key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "ca.key mode {mode:o}");

    rt.block_on(async {
        a.stop().await;
        b.stop().await;
    });
}

#[test]
fn bootstrap_flags_without_a_cluster_are_refused() {
    use clap::Parser as _;
    let dir = tempfile::tempdir().expect("dir");
    let args = apiserver::config::Args::try_parse_from([
        "substrate-apiserver".to_string(),
        "--bind=127.0.0.1:0".into(),
        "--valkey-url=redis://127.0.0.1:1".into(),
        format!("--pki-dir={}", dir.path().display()),
        "--pki-secret=substrate-apiserver-pki".into(),
    ])
    .expect("arguments");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let err = rt
        .block_on(apiserver::start(&args))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains(
            "--pki-secret needs a cluster: run in a pod, or give --kubeconfig or --authorization-kubeconfig"
        ),
        "{err}"
    );
}

/// The leaf certificate `addr` presents, verified against `ca_file` (PEM; panics when the
/// chain does not verify).
fn served_certificate(addr: std::net::SocketAddr, ca_file: &Path) -> String {
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .arg("-CAfile")
        .arg(ca_file)
        .arg("-verify_return_error")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Verify return code: 0 (ok)"),
        "TLS handshake with {addr} did not verify against {}:\n{text}\n{}",
        ca_file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = text.find("-----END CERTIFICATE-----").expect("its end") + 25;
    text[start..end].to_string()
}

fn der_of(pem: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .expect("PEM")
        .1
        .contents
}

#[test]
fn a_due_serving_certificate_is_renewed_once_and_served_by_every_replica_without_a_restart() {
    let Some(env) = Envtest::start() else { return };
    env.ensure_namespace(SUBSTRATE_NAMESPACE);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let valkey = apiserver::testing::ValkeyServer::start();

    // An installed PKI Secret whose serving certificate becomes due for renewal (a third of
    // its lifetime left) ~4 s after the replicas start.
    let seed = env.dir().join("seed");
    let pki = apiserver::pki::ensure(&seed, &[]).expect("pki");
    let read = |f: &str| std::fs::read_to_string(pki.path(f)).expect("pki file");
    let ca_key = rcgen::KeyPair::from_pem(&read("ca.key")).expect("CA key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read("ca.crt"), ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("params");
    let day = std::time::Duration::from_secs(86_400);
    let secs = std::time::Duration::from_secs;
    p.not_before = (std::time::SystemTime::now() - 2 * day).into();
    p.not_after = (std::time::SystemTime::now() + day + secs(6)).into();
    let old = p.signed_by(&key, &issuer).expect("old certificate").pem();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let (code, body) = env.admin.request(
        "POST",
        &format!("/api/v1/namespaces/{SUBSTRATE_NAMESPACE}/secrets"),
        Some(&serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": PKI_SECRET},
            "data": {"ca.crt": b64(&read("ca.crt")), "ca.key": b64(&read("ca.key")),
                     "tls.crt": b64(&old), "tls.key": b64(&key.serialize_pem())},
        })),
    );
    assert_eq!(code, 201, "{body}");

    let start = |name: &str| {
        let mut a = args(&env, &valkey.url(), &env.dir().join(name));
        a.cert_check_interval = std::time::Duration::from_millis(500);
        rt.block_on(apiserver::start(&a)).expect("replica starts")
    };
    let (a, b) = (start("replica-a"), start("replica-b"));
    let ca_file = pki.ca_cert();
    for r in [&a, &b] {
        assert_eq!(der_of(&served_certificate(r.addr, &ca_file)), der_of(&old));
    }
    let renewed = e2e::eventually("the Secret's serving certificate is renewed", || {
        let tls = secret_key(&env, "tls.crt");
        (tls != old).then_some(tls)
    });
    assert!(
        !apiserver::pki::due_for_renewal(&renewed, jiff::Timestamp::now()),
        "renewed for a full term"
    );
    assert_eq!(secret_key(&env, "ca.crt"), read("ca.crt"), "the CA is kept");
    assert_ne!(
        secret_key(&env, "tls.key"),
        key.serialize_pem(),
        "a new key"
    );
    // Both replicas serve the renewed certificate on their running listeners, verified by
    // the CA the components and kube-apiserver already trust.
    for (name, r) in [("a", &a), ("b", &b)] {
        e2e::eventually(
            &format!("replica {name} serves the renewed certificate"),
            || (der_of(&served_certificate(r.addr, &ca_file)) == der_of(&renewed)).then_some(()),
        );
    }
    // One renewal: the replicas agreed on one certificate (the loser of the write took the
    // winner's) and it stays.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(secret_key(&env, "tls.crt"), renewed);
    rt.block_on(async {
        a.stop().await;
        b.stop().await;
    });
}
