//! The PKI of an [`Envtest`](super::Envtest) control plane, made with rcgen in its state
//! directory: the cluster CA (signs serving and client certificates), the front-proxy CA and
//! its `front-proxy-client` certificate (what kube-apiserver presents to aggregated servers),
//! kube-apiserver's serving certificate, the ServiceAccount signing key pair, and client
//! certificates (admin in `system:masters`, `system:kube-controller-manager`, and any
//! user/groups a test asks for), each with a kubeconfig.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Why a certificate or a file could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
}

/// A certificate and its key, both PEM, and where they are written.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority: its files and the issuer that signs with it.
pub struct Ca {
    pub files: CertFiles,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("files", &self.files).finish()
    }
}

/// Every file of the control plane's PKI.
#[derive(Debug)]
pub struct Pki {
    pub dir: PathBuf,
    /// Signs kube-apiserver's serving certificate and every client certificate
    /// (`--client-ca-file`).
    pub ca: Ca,
    /// Signs `front-proxy-client` (`--requestheader-client-ca-file`).
    pub front_proxy_ca: Ca,
    pub front_proxy_client: CertFiles,
    /// kube-apiserver's serving certificate (localhost, 127.0.0.1).
    pub serving: CertFiles,
    /// ServiceAccount token signing key (`--service-account-signing-key-file`) and its public
    /// key (`--service-account-key-file`).
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

fn gen_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Generate {
        what: what.to_string(),
        source,
    }
}

/// Writes `data` to `path` (mode 0600 when `private`).
pub fn write(path: &Path, data: &str, private: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Write {
        path: path.into(),
        source,
    };
    fs::write(path, data).map_err(io)?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}

fn dn(cn: &str, orgs: &[&str]) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    for o in orgs {
        d.push(DnType::OrganizationName, *o);
    }
    d
}

fn sans(names: &[&str]) -> Result<Vec<SanType>, rcgen::Error> {
    names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n.to_string().try_into().map(SanType::DnsName),
        })
        .collect()
}

fn save(dir: &Path, name: &str, cert_pem: String, key_pem: String) -> Result<CertFiles, PkiError> {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    write(&cert, &cert_pem, false)?;
    write(&key, &key_pem, true)?;
    Ok(CertFiles {
        cert,
        key,
        cert_pem,
        key_pem,
    })
}

impl Ca {
    /// A new self-signed CA written to `dir/<name>.crt|key`.
    fn new(dir: &Path, name: &str, cn: &str) -> Result<Ca, PkiError> {
        let kp = KeyPair::generate().map_err(gen_err(name))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(cn, &[]);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&kp).map_err(gen_err(name))?;
        let files = save(dir, name, cert.pem(), kp.serialize_pem())?;
        let issuer = Issuer::new(p, kp);
        Ok(Ca { files, issuer })
    }

    /// A client certificate (`CN=user`, `O=group` for each group) written to `dir/<name>.*`.
    pub fn client(
        &self,
        dir: &Path,
        name: &str,
        user: &str,
        groups: &[&str],
    ) -> Result<CertFiles, PkiError> {
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(user, groups);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(dir, name, p)
    }

    /// A serving certificate for `names` (DNS names or IPs) written to `dir/<name>.*`.
    pub fn serving(&self, dir: &Path, name: &str, names: &[&str]) -> Result<CertFiles, PkiError> {
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(names.first().copied().unwrap_or(name), &[]);
        p.subject_alt_names = sans(names).map_err(gen_err(name))?;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(dir, name, p)
    }

    fn sign(&self, dir: &Path, name: &str, p: CertificateParams) -> Result<CertFiles, PkiError> {
        let kp = KeyPair::generate().map_err(gen_err(name))?;
        let cert = p.signed_by(&kp, &self.issuer).map_err(gen_err(name))?;
        save(dir, name, cert.pem(), kp.serialize_pem())
    }
}

impl Pki {
    /// Makes every CA, certificate and key in `dir` (created).
    pub fn new(dir: &Path) -> Result<Pki, PkiError> {
        fs::create_dir_all(dir).map_err(|source| PkiError::Write {
            path: dir.into(),
            source,
        })?;
        let ca = Ca::new(dir, "ca", "envtest-ca")?;
        let front_proxy_ca = Ca::new(dir, "front-proxy-ca", "envtest-front-proxy-ca")?;
        let front_proxy_client =
            front_proxy_ca.client(dir, "front-proxy-client", "front-proxy-client", &[])?;
        let serving = ca.serving(
            dir,
            "kube-apiserver",
            &[
                "localhost",
                "127.0.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
            ],
        )?;
        let sa = KeyPair::generate().map_err(gen_err("service-account key"))?;
        let sa_key = dir.join("sa.key");
        let sa_pub = dir.join("sa.pub");
        write(&sa_key, &sa.serialize_pem(), true)?;
        write(&sa_pub, &sa.public_key_pem(), false)?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            ca,
            front_proxy_ca,
            front_proxy_client,
            serving,
            sa_key,
            sa_pub,
        })
    }
}

/// How a kubeconfig's user authenticates.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A client certificate (PEM files).
    Cert(CertFiles),
    /// A bearer token (a ServiceAccount token, say).
    Token(String),
}

/// Writes a kubeconfig for `server` (CA `ca_pem`, embedded) with `cred` (embedded) to `out`.
pub fn write_kubeconfig(
    out: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    cred: &Credential,
) -> Result<(), PkiError> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let user_fields = match cred {
        Credential::Cert(c) => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&c.cert_pem),
            b64(&c.key_pem)
        ),
        Credential::Token(t) => format!("    token: {t}\n"),
    };
    let doc = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n{user_fields}contexts:\n- name: envtest\n  context:\n    cluster: envtest\n    user: {user}\n    namespace: default\ncurrent-context: envtest\n",
        ca = b64(ca_pem),
    );
    write(out, &doc, true)
}
