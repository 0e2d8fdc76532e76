//! Substrate's apiserver on its own, without a cluster (`--standalone`): in the test's
//! process, over its own Valkey, authenticating client certificates signed by its own CA and
//! authorizing with its own RBAC. What the tenant matrix ([`crate::tenancy`]) runs against to
//! compare the standalone RBAC with kube-apiserver's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::envtest::Identity;
use crate::envtest::pki::{CertFiles, Credential, write};

/// A running standalone apiserver. Stopped on drop.
pub struct Standalone {
    /// `127.0.0.1:<port>`.
    pub addr: SocketAddr,
    /// An identity in `system:masters`.
    pub admin: Identity,
    pki: apiserver::pki::Pki,
    ca_pem: String,
    home: PathBuf,
    running: Option<apiserver::Running>,
    rt: tokio::runtime::Runtime,
    _valkey: apiserver::testing::ValkeyServer,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Standalone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standalone")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Standalone {
    /// Starts Valkey and the apiserver (`--standalone`, its PKI in a temporary directory).
    pub fn start() -> Standalone {
        use clap::Parser as _;
        let dir = tempfile::Builder::new()
            .prefix("substrate-standalone-")
            .tempdir()
            .expect("tempdir");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let valkey = apiserver::testing::ValkeyServer::start();
        let pki_dir = dir.path().join("pki");
        let args = apiserver::config::Args::try_parse_from([
            "substrate-apiserver".to_string(),
            "--bind=127.0.0.1:0".into(),
            "--standalone".into(),
            format!("--valkey-url={}", valkey.url()),
            format!("--pki-dir={}", pki_dir.display()),
        ])
        .expect("apiserver arguments");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let running = rt
            .block_on(apiserver::start(&args))
            .expect("Substrate's standalone apiserver starts");
        let addr = running.addr;
        let pki = apiserver::pki::Pki { dir: pki_dir };
        let ca_pem = std::fs::read_to_string(pki.ca_cert()).expect("CA");
        let admin = identity(
            &pki,
            dir.path(),
            &ca_pem,
            &home,
            addr,
            "substrate-test-admin",
            &["system:masters"],
        );
        Standalone {
            addr,
            admin,
            pki,
            ca_pem,
            home,
            running: Some(running),
            rt,
            _valkey: valkey,
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `user` in `groups` (`system:authenticated` is added by the apiserver), with a client
    /// certificate signed by the apiserver's CA.
    pub fn user(&self, user: &str, groups: &[&str]) -> Identity {
        identity(
            &self.pki,
            self.dir(),
            &self.ca_pem,
            &self.home,
            self.addr,
            user,
            groups,
        )
    }
}

/// See [`Standalone::user`].
fn identity(
    pki: &apiserver::pki::Pki,
    dir: &Path,
    ca_pem: &str,
    home: &Path,
    addr: SocketAddr,
    user: &str,
    groups: &[&str],
) -> Identity {
    let (cert_pem, key_pem) =
        apiserver::pki::issue_client(pki, user, groups).expect("client certificate");
    let file: String = user
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let cert = dir.join(format!("{file}.crt"));
    let key = dir.join(format!("{file}.key"));
    write(&cert, &cert_pem, false).expect("certificate");
    write(&key, &key_pem, true).expect("key");
    Identity::for_server(
        dir,
        &format!("https://{addr}"),
        ca_pem,
        user,
        Credential::Cert(CertFiles {
            cert,
            key,
            cert_pem,
            key_pem,
        }),
        home,
    )
}

impl Drop for Standalone {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.stop());
        }
    }
}
