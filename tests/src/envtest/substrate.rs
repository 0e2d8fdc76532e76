//! Substrate's apiserver (in the test's process, over its own Valkey) as an aggregated API
//! server of an [`Envtest`] control plane: served with a certificate for
//! `substrate-apiserver.substrate-system.svc` signed by the cluster CA, delegating
//! authentication and authorization to kube-apiserver (`--authentication-kubeconfig`,
//! `--authorization-kubeconfig` with [`Envtest::delegation_kubeconfig`]; the CAs it trusts
//! come from the cluster's `extension-apiserver-authentication` ConfigMap), as it is deployed
//! in a cluster.

use std::net::SocketAddr;
use std::path::Path;

use super::Envtest;
use super::identity::Identity;

/// A running Substrate apiserver registered with an envtest. Stopped on drop.
pub struct Substrate {
    /// `127.0.0.1:<port>`.
    pub addr: SocketAddr,
    running: Option<apiserver::Running>,
    rt: tokio::runtime::Runtime,
    _valkey: apiserver::testing::ValkeyServer,
}

impl std::fmt::Debug for Substrate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Substrate")
            .field("addr", &self.addr)
            .finish()
    }
}

/// The apiserver's arguments as in a cluster: the serving certificate kube-apiserver verifies
/// and the delegation kubeconfigs; no CA files (they come from the cluster's
/// `extension-apiserver-authentication` ConfigMap).
fn args(env: &Envtest, valkey_url: &str, dir: &Path) -> apiserver::config::Args {
    use clap::Parser as _;
    let serving = env.substrate_serving_cert();
    let kubeconfig = env.delegation_kubeconfig();
    let p = |f: &Path| f.display().to_string();
    apiserver::config::Args::try_parse_from([
        "substrate-apiserver".to_string(),
        "--bind=127.0.0.1:0".into(),
        format!("--valkey-url={valkey_url}"),
        format!("--pki-dir={}", dir.join("pki").display()),
        format!("--tls-cert-file={}", p(&serving.cert)),
        format!("--tls-private-key-file={}", p(&serving.key)),
        format!("--authentication-kubeconfig={}", p(&kubeconfig)),
        format!("--authorization-kubeconfig={}", p(&kubeconfig)),
    ])
    .expect("apiserver arguments")
}

impl Substrate {
    /// Starts Valkey and the apiserver, installs the `ate.dev` CRDs and registers the
    /// APIService (waits until it is Available).
    pub fn start(env: &Envtest) -> Substrate {
        let dir = env.dir().join("substrate");
        std::fs::create_dir_all(&dir).expect("substrate dir");
        let valkey = apiserver::testing::ValkeyServer::start();
        let args = args(env, &valkey.url(), &dir);
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let running = rt
            .block_on(apiserver::start(&args))
            .expect("Substrate's apiserver starts");
        let addr = running.addr;
        env.install_crds();
        env.register_substrate(addr, &env.pki.ca.files.cert_pem);
        Substrate {
            addr,
            running: Some(running),
            rt,
            _valkey: valkey,
        }
    }

    /// `identity` talking to Substrate's apiserver directly (not through kube-apiserver).
    pub fn direct(&self, env: &Envtest, identity: &Identity) -> Identity {
        identity.at(
            &format!("https://{}", self.addr),
            &env.pki.ca.files.cert_pem,
            env.dir(),
        )
    }
}

impl Drop for Substrate {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.stop());
        }
    }
}
