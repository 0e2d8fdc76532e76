//! Authentication (client certificates, front-proxy request headers); authorization is
//! [`crate::authz`].
//!
//! A peer certificate signed by the request-header CA (and, when `--requestheader-allowed-names`
//! is set, with one of those CNs) is an aggregating front proxy: the user comes from
//! `X-Remote-User`, `X-Remote-Group` and `X-Remote-Extra-*`. Any other certificate must chain to
//! the client CA: the user is its CN and the groups its O values. Request headers from anyone
//! else are ignored. No certificate: 401 (health endpoints excepted).

use std::collections::BTreeMap;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
    /// The apiserver itself (background controllers).
    pub fn system() -> Self {
        Self {
            name: "system:apiserver".into(),
            groups: vec![
                crds::SYSTEM_GROUP.into(),
                crate::authz::PRIVILEGED_GROUP.into(),
                "system:authenticated".into(),
            ],
            extra: BTreeMap::new(),
        }
    }
}

/// Why the TLS or auth set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading CA bundle {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("building client certificate verifier: {0}")]
    Verifier(String),
}

/// Verifies client certificates for both roles.
pub struct Authenticator {
    client: Arc<dyn ClientCertVerifier>,
    front_proxy: Option<Arc<dyn ClientCertVerifier>>,
    allowed_names: Vec<String>,
}

fn roots(pems: &[String], path: &str) -> Result<rustls::RootCertStore, AuthError> {
    use rustls::pki_types::pem::PemObject;
    let mut store = rustls::RootCertStore::empty();
    for pem in pems {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| AuthError::Ca {
                path: path.into(),
                reason: e.to_string(),
            })?;
            store.add(cert).map_err(|e| AuthError::Ca {
                path: path.into(),
                reason: e.to_string(),
            })?;
        }
    }
    if store.is_empty() {
        return Err(AuthError::Ca {
            path: path.into(),
            reason: "no certificates".into(),
        });
    }
    Ok(store)
}

fn verifier(store: rustls::RootCertStore) -> Result<Arc<dyn ClientCertVerifier>, AuthError> {
    WebPkiClientVerifier::builder(Arc::new(store))
        .allow_unauthenticated()
        .build()
        .map_err(|e| AuthError::Verifier(e.to_string()))
}

impl Authenticator {
    /// `client_ca`: PEM bundle for user certificates; `front_proxy_ca`: PEM bundle for the
    /// request-header authenticator (optional).
    pub fn new(
        client_ca: &str,
        front_proxy_ca: Option<&str>,
        allowed_names: Vec<String>,
    ) -> Result<Self, AuthError> {
        Ok(Self {
            client: verifier(roots(&[client_ca.to_string()], "client CA")?)?,
            front_proxy: front_proxy_ca
                .map(|p| roots(&[p.to_string()], "request-header CA").and_then(verifier))
                .transpose()?,
            allowed_names,
        })
    }

    /// The verifier the TLS layer uses: accepts a certificate from either CA, or none.
    pub fn tls_verifier(
        client_ca: &str,
        front_proxy_ca: Option<&str>,
    ) -> Result<Arc<dyn ClientCertVerifier>, AuthError> {
        let mut pems = vec![client_ca.to_string()];
        pems.extend(front_proxy_ca.map(str::to_string));
        verifier(roots(&pems, "client CAs")?)
    }

    fn verified(v: &dyn ClientCertVerifier, chain: &[CertificateDer<'static>]) -> bool {
        let Some((leaf, rest)) = chain.split_first() else {
            return false;
        };
        v.verify_client_cert(leaf, rest, UnixTime::now()).is_ok()
    }

    /// Authenticates a request from its peer chain and headers. `None`: anonymous.
    pub fn authenticate(
        &self,
        chain: Option<&[CertificateDer<'static>]>,
        headers: &http::HeaderMap,
    ) -> Option<UserInfo> {
        Self::user(&self.peer(chain), headers)
    }

    /// Classifies a connection's peer from its certificate chain: done once per connection
    /// (verifying a chain costs a signature check), not per request.
    pub fn peer(&self, chain: Option<&[CertificateDer<'static>]>) -> Peer {
        let Some(chain) = chain else {
            return Peer::Anonymous;
        };
        let Some((cn, orgs)) = chain.first().and_then(subject) else {
            return Peer::Anonymous;
        };
        if let Some(fp) = &self.front_proxy
            && Self::verified(fp.as_ref(), chain)
            && (self.allowed_names.is_empty() || self.allowed_names.contains(&cn))
        {
            return Peer::FrontProxy;
        }
        if Self::verified(self.client.as_ref(), chain) {
            let mut groups = orgs;
            groups.push("system:authenticated".into());
            return Peer::User(UserInfo {
                name: cn,
                groups,
                extra: BTreeMap::new(),
            });
        }
        Peer::Anonymous
    }

    /// The user of one request on a connection from `peer`. `None`: anonymous.
    pub fn user(peer: &Peer, headers: &http::HeaderMap) -> Option<UserInfo> {
        match peer {
            Peer::Anonymous => None,
            Peer::FrontProxy => from_headers(headers),
            Peer::User(u) => Some(u.clone()),
        }
    }
}

/// Who is at the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// No certificate, or one no configured CA vouches for.
    Anonymous,
    /// An aggregating front proxy: the user comes from each request's `X-Remote-*` headers.
    FrontProxy,
    /// A user authenticated by a client certificate.
    User(UserInfo),
}

fn subject(cert: &CertificateDer<'_>) -> Option<(String, Vec<String>)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let cn = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let orgs = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some((cn, orgs))
}

fn from_headers(headers: &http::HeaderMap) -> Option<UserInfo> {
    let user = headers
        .get("x-remote-user")?
        .to_str()
        .ok()?
        .trim()
        .to_string();
    if user.is_empty() {
        return None;
    }
    let mut groups: Vec<String> = headers
        .get_all("x-remote-group")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|g| g.trim().to_string()))
        .filter(|g| !g.is_empty())
        .collect();
    if !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".into());
    }
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix("x-remote-extra-")
            && let Ok(v) = value.to_str()
        {
            let key = percent_decode(key).to_lowercase();
            extra.entry(key).or_default().push(v.to_string());
        }
    }
    Some(UserInfo {
        name: user,
        groups,
        extra,
    })
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("k={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}
