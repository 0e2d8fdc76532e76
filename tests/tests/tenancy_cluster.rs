//! Substrate as an aggregated API of a real Kubernetes control plane (envtest).

use e2e::envtest::Envtest;
use e2e::envtest::substrate::Substrate;

#[test]
fn smoke() {
    let Some(env) = Envtest::start() else { return };
    let sub = Substrate::start(&env);
    let (code, body) = env
        .admin
        .request("GET", "/apis/substrate.ate.dev/v1alpha1/actors", None);
    eprintln!("{code} {body}");
    drop(sub);
}
