//! The serving certificate, replaced while the server runs (kube-apiserver's dynamic serving
//! content): new TLS handshakes get the new certificate, open connections keep theirs.
//!
//! [`keep_fresh`] checks every `--cert-check-interval`:
//! - with `--pki-secret`, renews the Secret's certificate when it is due
//!   ([`crate::pki::due_for_renewal`]; one replica wins the write, the others use its result)
//!   and writes the Secret's files;
//! - with the PKI directory of one machine, renews the directory's certificates when due;
//! - with `--tls-cert-file` (cert-manager, or files a kubelet updates from a Secret), only
//!   reads the files;
//!
//! and then loads the serving files when their content changed. A pair that does not load (a
//! half-written update, a key that does not match) is logged and the current one kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::server::ServerError;

/// The certificate and key the server presents; see the module docs.
#[derive(Debug)]
pub struct ServingCert {
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The PEM text `current` was loaded from, to notice changes.
    loaded: Mutex<(String, String)>,
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> ServerError {
    ServerError::Tls {
        path: what.into(),
        reason: e.to_string(),
    }
}

fn certified(
    provider: &CryptoProvider,
    cert_pem: &str,
    key_pem: &str,
) -> Result<CertifiedKey, ServerError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err("serving certificate", e))?;
    if certs.is_empty() {
        return Err(tls_err("serving certificate", "no certificate in the PEM"));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls_err("serving key", e))?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| tls_err("serving key", e))
}

impl ServingCert {
    /// Loads the PEM certificate chain and key (the key must match the certificate).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, ServerError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let ck = certified(&provider, cert_pem, key_pem)?;
        Ok(ServingCert {
            provider,
            current: RwLock::new(Arc::new(ck)),
            loaded: Mutex::new((cert_pem.to_string(), key_pem.to_string())),
        })
    }

    /// Serves this pair from the next handshake on. Returns false (and changes nothing) when
    /// it is the pair already served.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<bool, ServerError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if loaded.0 == cert_pem && loaded.1 == key_pem {
            return Ok(false);
        }
        let ck = certified(&self.provider, cert_pem, key_pem)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ck);
        *loaded = (cert_pem.to_string(), key_pem.to_string());
        Ok(true)
    }

    /// The leaf certificate served now (DER).
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .cert[0]
            .clone()
    }

    /// Loads the files when their content differs from what is served.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<bool, ServerError> {
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(|e| tls_err(&p.display().to_string(), e));
        self.replace(&read(cert)?, &read(key)?)
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// Where the serving pair comes from and how it is renewed.
pub enum Source {
    /// A PKI directory of one machine: renewed in place when due.
    Dir {
        pki: crate::pki::Pki,
        sans: Vec<String>,
    },
    /// The `--pki-secret` Secret, mirrored into the PKI directory.
    Secret {
        client: kube::Client,
        namespace: String,
        name: String,
        pki: crate::pki::Pki,
        sans: Vec<String>,
    },
    /// Files someone else keeps up to date (`--tls-cert-file`, `--tls-private-key-file`).
    Files { cert: PathBuf, key: PathBuf },
}

impl Source {
    fn files(&self) -> (PathBuf, PathBuf) {
        match self {
            Source::Dir { pki, .. } | Source::Secret { pki, .. } => {
                (pki.serving_cert(), pki.serving_key())
            }
            Source::Files { cert, key } => (cert.clone(), key.clone()),
        }
    }

    /// Renews what is due; errors are logged (the next check retries).
    async fn renew(&self) {
        match self {
            Source::Dir { pki, sans } => {
                let (dir, sans) = (pki.dir.clone(), sans.clone());
                match tokio::task::spawn_blocking(move || crate::pki::ensure(&dir, &sans)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the PKI directory"),
                    Err(e) => tracing::warn!(error = %e, "PKI renewal task failed"),
                }
            }
            Source::Secret {
                client,
                namespace,
                name,
                pki,
                sans,
            } => {
                if let Err(e) =
                    crate::bootstrap::renew_pki_secret(client, namespace, name, &pki.dir, sans)
                        .await
                {
                    tracing::warn!(namespace, name, error = %e, "cannot renew the serving certificate of the PKI Secret");
                }
            }
            Source::Files { .. } => {}
        }
    }
}

/// Renews (per [`Source`]) and reloads the serving certificate every `every`; see the
/// module docs.
pub async fn keep_fresh(cert: Arc<ServingCert>, source: Source, every: Duration) {
    let (cert_file, key_file) = source.files();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        source.renew().await;
        match cert.reload(&cert_file, &key_file) {
            Ok(true) => {
                let expires = crate::pki::not_after(&cert.leaf())
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                tracing::info!(file = %cert_file.display(), expires, "serving certificate reloaded")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(file = %cert_file.display(), error = %e, "serving certificate not reloaded; keeping the current one")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(cn: &str) -> (String, String) {
        let kp = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, cn.to_string());
        let c = p.self_signed(&kp).unwrap();
        (c.pem(), kp.serialize_pem())
    }

    #[test]
    fn a_new_pair_is_served_and_the_same_pair_is_not_reloaded() {
        let (c1, k1) = pair("one");
        let (c2, k2) = pair("two");
        let s = ServingCert::from_pem(&c1, &k1).unwrap();
        let first = s.leaf();
        assert!(!s.replace(&c1, &k1).unwrap());
        assert!(s.replace(&c2, &k2).unwrap());
        assert_ne!(s.leaf(), first);
        assert_eq!(
            s.leaf().as_ref(),
            CertificateDer::from_pem_slice(c2.as_bytes())
                .unwrap()
                .as_ref()
        );
    }

    #[test]
    fn a_mismatched_or_broken_pair_is_refused_and_the_current_one_kept() {
        let (c1, k1) = pair("one");
        let (c2, _) = pair("two");
        let (_, k3) = pair("three");
        let s = ServingCert::from_pem(&c1, &k1).unwrap();
        let first = s.leaf();
        let err = s.replace(&c2, &k3).unwrap_err();
        assert!(err.to_string().contains("serving key"), "{err}");
        assert!(s.replace("not a pem", &k1).is_err());
        assert!(s.replace(&c2[..c2.len() / 2], &k1).is_err());
        assert_eq!(s.leaf(), first);
    }

    #[test]
    fn reload_reads_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = pair("one");
        let (c2, k2) = pair("two");
        let (cf, kf) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cf, &c1).unwrap();
        std::fs::write(&kf, &k1).unwrap();
        let s = ServingCert::from_pem(&c1, &k1).unwrap();
        assert!(!s.reload(&cf, &kf).unwrap());
        std::fs::write(&cf, &c2).unwrap();
        // Half an update (the key not yet written): refused, the old pair stays.
        assert!(s.reload(&cf, &kf).is_err());
        std::fs::write(&kf, &k2).unwrap();
        assert!(s.reload(&cf, &kf).unwrap());
        assert!(std::fs::remove_file(&cf).is_ok());
        assert!(s.reload(&cf, &kf).is_err(), "a missing file is an error");
    }
}
