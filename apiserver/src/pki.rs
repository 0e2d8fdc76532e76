//! Standalone PKI: on first start the apiserver creates its certificate authorities and
//! certificates under `--pki-dir` and writes an admin kubeconfig.
//!
//! Files (PEM): `ca.crt`/`ca.key` (signs serving and client certificates), `serving.crt`/
//! `serving.key` (SANs: localhost, 127.0.0.1, ::1 and `--tls-san`), `admin.crt`/`admin.key`
//! (CN `substrate-admin`, O `system:masters`), `system.crt`/`system.key` (CN
//! `substrate-system`, O `substrate:system`: the identity of our own components),
//! `front-proxy-ca.crt`/`.key` and `front-proxy-client.crt`/`.key` (CN `front-proxy-client`:
//! what an aggregating kube-apiserver presents). Existing files are kept, so restarts and
//! re-runs of `hack/up.sh` keep every kubeconfig valid — until a leaf certificate is due for
//! renewal ([`due_for_renewal`]: a third of its 365 days left), when [`ensure`] issues it
//! again with a new key (the CAs, valid 10 years, are kept). The running apiserver checks
//! this periodically and serves a renewed certificate without a restart
//! ([`crate::serving_cert`]).

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Why the PKI could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("reading or writing {path}: {source}")]
    Io {
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

/// Paths of the generated files.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.path("ca.crt")
    }
    pub fn serving_cert(&self) -> PathBuf {
        self.path("serving.crt")
    }
    pub fn serving_key(&self) -> PathBuf {
        self.path("serving.key")
    }
    pub fn front_proxy_ca(&self) -> PathBuf {
        self.path("front-proxy-ca.crt")
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.into(),
        source,
    })
}

fn write(path: &Path, data: &str, private: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data).map_err(io)?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    fs::rename(&tmp, path).map_err(io)
}

fn gen_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Generate {
        what: what.to_string(),
        source,
    }
}

fn dn(cn: &str, orgs: &[&str]) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    for o in orgs {
        d.push(DnType::OrganizationName, *o);
    }
    d
}

fn validity(p: &mut CertificateParams, days: i64) {
    let now = time_now();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days);
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Loads `<name>.crt`/`<name>.key` as a CA issuer, creating a self-signed CA if absent.
fn ensure_ca(dir: &Path, name: &str, cn: &str) -> Result<(String, KeyPair), PkiError> {
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    if crt.exists() && key.exists() {
        let kp = KeyPair::from_pem(&read(&key)?).map_err(gen_err(name))?;
        return Ok((read(&crt)?, kp));
    }
    let kp = KeyPair::generate().map_err(gen_err(name))?;
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn, &[]);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p, 3650);
    let cert = p.self_signed(&kp).map_err(gen_err(name))?;
    write(&key, &kp.serialize_pem(), true)?;
    write(&crt, &cert.pem(), false)?;
    Ok((cert.pem(), kp))
}

/// `(not_before, not_after)` of a DER certificate.
fn validity_of(der: &[u8]) -> Option<(jiff::Timestamp, jiff::Timestamp)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let v = cert.validity();
    Some((
        jiff::Timestamp::from_second(v.not_before.timestamp()).ok()?,
        jiff::Timestamp::from_second(v.not_after.timestamp()).ok()?,
    ))
}

/// When a DER certificate expires.
pub fn not_after(der: &[u8]) -> Option<jiff::Timestamp> {
    validity_of(der).map(|(_, end)| end)
}

/// Whether the (first) certificate of `cert_pem` should be issued again at `now`: less than
/// a third of its lifetime is left (kubelet's and cert-manager's rule: a 365-day certificate
/// is renewed after ~243 days), or it cannot be read.
pub fn due_for_renewal(cert_pem: &str, now: jiff::Timestamp) -> bool {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else {
        return true;
    };
    let Some((start, end)) = validity_of(&pem.contents) else {
        return true;
    };
    let life = end.as_second() - start.as_second();
    end.as_second() - now.as_second() < life / 3
}

/// Issues `<name>.crt`/`<name>.key` signed by the CA unless they exist and are not due for
/// renewal.
fn ensure_leaf(
    dir: &Path,
    name: &str,
    ca: &(String, KeyPair),
    params: impl FnOnce() -> Result<CertificateParams, rcgen::Error>,
) -> Result<(), PkiError> {
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    if crt.exists() && key.exists() && !due_for_renewal(&read(&crt)?, jiff::Timestamp::now()) {
        return Ok(());
    }
    let (cert, kp) = issue(name, ca, params().map_err(gen_err(name))?)?;
    write(&key, &kp, true)?;
    write(&crt, &cert, false)?;
    tracing::info!(file = %crt.display(), "issued certificate");
    Ok(())
}

/// A new key and `params` signed by `ca`: (certificate PEM, key PEM).
fn issue(
    what: &str,
    ca: &(String, KeyPair),
    params: CertificateParams,
) -> Result<(String, String), PkiError> {
    let issuer = Issuer::from_ca_cert_pem(&ca.0, &ca.1).map_err(gen_err(what))?;
    let kp = KeyPair::generate().map_err(gen_err(what))?;
    let cert = params.signed_by(&kp, &issuer).map_err(gen_err(what))?;
    Ok((cert.pem(), kp.serialize_pem()))
}

/// The serving certificate's parameters: SANs localhost, 127.0.0.1, ::1 and `sans`.
fn serving_params(sans: &[String]) -> Result<CertificateParams, rcgen::Error> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    names.extend(sans.iter().cloned());
    let mut p = CertificateParams::default();
    p.distinguished_name = dn("substrate-apiserver", &[]);
    p.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()?;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut p, 365);
    Ok(p)
}

/// A serving certificate for `sans` signed by the CA of `ca_cert_pem`/`ca_key_pem` (what
/// renews the certificate of `--pki-secret`): (certificate PEM, key PEM).
pub fn issue_serving(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    sans: &[String],
) -> Result<(String, String), PkiError> {
    let ca = (
        ca_cert_pem.to_string(),
        KeyPair::from_pem(ca_key_pem).map_err(gen_err("ca"))?,
    );
    issue(
        "serving",
        &ca,
        serving_params(sans).map_err(gen_err("serving"))?,
    )
}

fn client_params(cn: &str, orgs: &[&str]) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn, orgs);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut p, 365);
    p
}

/// Creates whatever is missing in `dir`. `sans` are extra DNS names or IPs for the serving cert.
pub fn ensure(dir: &Path, sans: &[String]) -> Result<Pki, PkiError> {
    fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.into(),
        source,
    })?;
    let ca = ensure_ca(dir, "ca", "substrate-ca")?;
    let fp = ensure_ca(dir, "front-proxy-ca", "substrate-front-proxy-ca")?;
    ensure_leaf(dir, "serving", &ca, || serving_params(sans))?;
    ensure_leaf(dir, "admin", &ca, || {
        Ok(client_params("substrate-admin", &["system:masters"]))
    })?;
    ensure_leaf(dir, "system", &ca, || {
        Ok(client_params("substrate-system", &[crds::SYSTEM_GROUP]))
    })?;
    ensure_leaf(dir, "front-proxy-client", &fp, || {
        Ok(client_params("front-proxy-client", &[]))
    })?;
    Ok(Pki {
        dir: dir.to_path_buf(),
    })
}

/// Issues a client certificate for `user` in `groups` signed by the cluster CA, for tests and
/// for `hack/` scripts that need a non-admin identity. Returns (cert PEM, key PEM).
pub fn issue_client(pki: &Pki, user: &str, groups: &[&str]) -> Result<(String, String), PkiError> {
    let ca_pem = read(&pki.ca_cert())?;
    let ca_key = KeyPair::from_pem(&read(&pki.path("ca.key"))?).map_err(gen_err("ca"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key).map_err(gen_err(user))?;
    let kp = KeyPair::generate().map_err(gen_err(user))?;
    let cert = client_params(user, groups)
        .signed_by(&kp, &issuer)
        .map_err(gen_err(user))?;
    Ok((cert.pem(), kp.serialize_pem()))
}

/// A kubeconfig for `user` in `groups` at `server`, its context in `namespace`: issues a
/// client certificate signed by the cluster CA, stores it as `<user>.crt`/`<user>.key` in
/// the PKI directory (so raw clients such as curl can present it too) and writes the
/// kubeconfig to `out`. For tests and demo tenants (`substrate-kubeconfig`).
pub fn user_kubeconfig(
    pki: &Pki,
    server: &str,
    user: &str,
    groups: &[&str],
    namespace: &str,
    out: &Path,
) -> Result<(), PkiError> {
    let (crt, key) = issue_client(pki, user, groups)?;
    write(&pki.path(&format!("{user}.crt")), &crt, false)?;
    write(&pki.path(&format!("{user}.key")), &key, true)?;
    write_kubeconfig(pki, server, user, namespace, out)
}

/// Writes a kubeconfig for `server` authenticating with `<client>.crt`/`.key` from the PKI,
/// its context in `namespace`.
pub fn write_kubeconfig(
    pki: &Pki,
    server: &str,
    client: &str,
    namespace: &str,
    out: &Path,
) -> Result<(), PkiError> {
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let ca = b64(read(&pki.ca_cert())?);
    let crt = b64(read(&pki.path(&format!("{client}.crt")))?);
    let key = b64(read(&pki.path(&format!("{client}.key")))?);
    let doc = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: substrate\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {client}\n  user:\n    client-certificate-data: {crt}\n    client-key-data: {key}\ncontexts:\n- name: substrate\n  context:\n    cluster: substrate\n    user: {client}\n    namespace: {namespace}\ncurrent-context: substrate\n"
    );
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent).map_err(|source| PkiError::Io {
            path: parent.into(),
            source,
        })?;
    }
    write(out, &doc, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_valid(from_days: i64, to_days: i64) -> String {
        let kp = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let now = time_now();
        p.not_before = now + time::Duration::days(from_days);
        p.not_after = now + time::Duration::days(to_days);
        p.self_signed(&kp).unwrap().pem()
    }

    #[test]
    fn a_certificate_is_due_when_a_third_of_its_life_is_left() {
        let now = jiff::Timestamp::now();
        assert!(!due_for_renewal(&cert_valid(0, 365), now));
        assert!(
            !due_for_renewal(&cert_valid(-200, 165), now),
            "165 of 365 days left"
        );
        assert!(
            due_for_renewal(&cert_valid(-250, 115), now),
            "115 of 365 days left"
        );
        assert!(due_for_renewal(&cert_valid(-30, -1), now), "expired");
        assert!(due_for_renewal("not a certificate", now));
        assert!(due_for_renewal("", now));
    }

    #[test]
    fn ensure_keeps_fresh_files_and_renews_due_leaves_with_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ensure(dir.path(), &["substrate.example".into()]).unwrap();
        let read = |f: &str| std::fs::read_to_string(pki.path(f)).unwrap();
        let (ca, serving, admin) = (read("ca.crt"), read("serving.crt"), read("admin.crt"));
        ensure(dir.path(), &[]).unwrap();
        assert_eq!(read("serving.crt"), serving, "a fresh certificate is kept");

        // The serving certificate is due: issued again (new key), by the same CA, with the
        // SANs asked for now; the CA and the fresh admin certificate stay.
        let old_key = read("serving.key");
        std::fs::write(pki.serving_cert(), cert_valid(-300, 65)).unwrap();
        ensure(dir.path(), &["substrate.example".into()]).unwrap();
        let renewed = read("serving.crt");
        assert_ne!(renewed, serving);
        assert_ne!(read("serving.key"), old_key);
        assert!(!due_for_renewal(&renewed, jiff::Timestamp::now()));
        assert_eq!(read("ca.crt"), ca);
        assert_eq!(read("admin.crt"), admin);
        let (_, pem) = x509_parser::pem::parse_x509_pem(renewed.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca.as_bytes()).unwrap();
        let ca_cert = ca_pem.parse_x509().unwrap();
        assert_eq!(
            cert.issuer(),
            ca_cert.subject(),
            "issued by the existing CA"
        );
        let sans = format!(
            "{:?}",
            cert.subject_alternative_name().unwrap().unwrap().value
        );
        assert!(sans.contains("substrate.example"), "{sans}");
    }

    #[test]
    fn issue_serving_signs_with_the_given_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ensure(dir.path(), &[]).unwrap();
        let ca = std::fs::read_to_string(pki.ca_cert()).unwrap();
        let ca_key = std::fs::read_to_string(pki.path("ca.key")).unwrap();
        let (crt, key) = issue_serving(&ca, &ca_key, &["svc.ns.svc".into()]).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let (_, pem) = x509_parser::pem::parse_x509_pem(crt.as_bytes()).unwrap();
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca.as_bytes()).unwrap();
        assert_eq!(
            pem.parse_x509().unwrap().issuer(),
            ca_pem.parse_x509().unwrap().subject()
        );
        assert!(issue_serving(&ca, "not a key", &[]).is_err());
    }
}
