//! Authentication (client certificates, front-proxy request headers, bearer tokens);
//! authorization is [`crate::authz`].
//!
//! The order is kube-apiserver's: a peer certificate signed by the request-header CA (and,
//! when allowed names are set, with one of those CNs) is an aggregating front proxy: the user
//! comes from the configured request headers (`X-Remote-User`, `X-Remote-Group`,
//! `X-Remote-Extra-*` by default). Any other certificate must chain to the client CA: the user
//! is its CN and the groups its O values. Request headers from anyone else are ignored.
//! Without a certificate user, an `Authorization: Bearer` token is reviewed by the cluster
//! ([`token`], cluster mode only). Nobody: 401 (health endpoints excepted).
//!
//! The CA bundles and header names can change while serving ([`Authenticator::reload`]; in
//! cluster mode [`cluster`] follows `kube-system/extension-apiserver-authentication`): the
//! TLS layer's verifier ([`verifier::DynamicVerifier`]) and each new connection's
//! classification use the bundles of the moment.

pub mod cluster;
pub mod headers;
pub mod token;
pub mod verifier;

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;

pub use headers::RequestHeader;

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
            groups: vec![crds::SYSTEM_GROUP.into(), "system:authenticated".into()],
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
    #[error(
        "reading ConfigMap {namespace}/{name} (needed for delegated authentication; \
         --authentication-tolerate-lookup-failure starts without it): {reason}"
    )]
    Lookup {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("ConfigMap {namespace}/{name}: key {key}: {reason}")]
    ConfigMap {
        namespace: String,
        name: String,
        key: String,
        reason: String,
    },
    #[error("building a Kubernetes client from {what}: {reason}")]
    Client { what: String, reason: String },
}

/// What client-certificate authentication trusts: PEM bundles (empty: none) and the
/// request-header settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundles {
    /// CAs of user certificates.
    pub client_ca: String,
    /// CAs of front-proxy certificates (empty: no front proxy accepted).
    pub request_header_ca: String,
    pub request_header: RequestHeader,
}

/// The bundles in force, with their verifiers built.
pub(crate) struct Active {
    client: Option<Arc<dyn ClientCertVerifier>>,
    front_proxy: Option<Arc<dyn ClientCertVerifier>>,
    /// Either CA (what the TLS layer accepts); `None`: no CA at all.
    pub(crate) tls: Option<Arc<dyn ClientCertVerifier>>,
    header: RequestHeader,
    bundles: Bundles,
}

impl Active {
    fn build(b: Bundles) -> Result<Self, AuthError> {
        let build = |pems: &[&str], what: &str| -> Result<_, AuthError> {
            let pems: Vec<&str> = pems
                .iter()
                .copied()
                .filter(|p| !p.trim().is_empty())
                .collect();
            if pems.is_empty() {
                return Ok(None);
            }
            Ok(Some(verifier(roots(&pems, what)?)?))
        };
        Ok(Self {
            client: build(&[&b.client_ca], "client CA")?,
            front_proxy: build(&[&b.request_header_ca], "request-header CA")?,
            tls: build(&[&b.client_ca, &b.request_header_ca], "client CAs")?,
            header: b.request_header.clone(),
            bundles: b,
        })
    }
}

/// Authenticates requests (see the module docs). Cheap to clone: clones share the bundles.
#[derive(Clone)]
pub struct Authenticator {
    active: Arc<ArcSwap<Active>>,
    tokens: Option<Arc<token::TokenAuthenticator>>,
}

fn roots(pems: &[&str], path: &str) -> Result<rustls::RootCertStore, AuthError> {
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
    WebPkiClientVerifier::builder_with_provider(
        Arc::new(store),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| AuthError::Verifier(e.to_string()))
}

impl Authenticator {
    /// `client_ca`: PEM bundle for user certificates; `front_proxy_ca`: PEM bundle for the
    /// request-header authenticator (optional); default header names.
    pub fn new(
        client_ca: &str,
        front_proxy_ca: Option<&str>,
        allowed_names: Vec<String>,
    ) -> Result<Self, AuthError> {
        Self::from_bundles(Bundles {
            client_ca: client_ca.into(),
            request_header_ca: front_proxy_ca.unwrap_or_default().into(),
            request_header: RequestHeader {
                allowed_names,
                ..RequestHeader::default()
            },
        })
    }

    pub fn from_bundles(b: Bundles) -> Result<Self, AuthError> {
        Ok(Self {
            active: Arc::new(ArcSwap::from_pointee(Active::build(b)?)),
            tokens: None,
        })
    }

    /// Bearer tokens are reviewed by `tokens` (cluster mode).
    pub fn with_tokens(mut self, tokens: Arc<token::TokenAuthenticator>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Replaces the bundles: new TLS handshakes and new connections use them at once.
    /// An invalid bundle leaves the current ones in force.
    pub fn reload(&self, b: Bundles) -> Result<(), AuthError> {
        if self.active.load().bundles == b {
            return Ok(());
        }
        self.active.store(Arc::new(Active::build(b)?));
        Ok(())
    }

    /// The bundles in force.
    pub fn bundles(&self) -> Bundles {
        self.active.load().bundles.clone()
    }

    /// The verifier the TLS layer uses: accepts a certificate from either CA of the moment,
    /// or none.
    pub fn client_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::new(verifier::DynamicVerifier::new(self.active.clone()))
    }

    /// A fixed verifier for either CA (kept for callers building their own TLS config).
    pub fn tls_verifier(
        client_ca: &str,
        front_proxy_ca: Option<&str>,
    ) -> Result<Arc<dyn ClientCertVerifier>, AuthError> {
        let mut pems = vec![client_ca];
        pems.extend(front_proxy_ca);
        verifier(roots(&pems, "client CAs")?)
    }

    fn verified(v: &dyn ClientCertVerifier, chain: &[CertificateDer<'static>]) -> bool {
        let Some((leaf, rest)) = chain.split_first() else {
            return false;
        };
        v.verify_client_cert(leaf, rest, UnixTime::now()).is_ok()
    }

    /// Authenticates a request from its peer chain and headers (certificates only). `None`:
    /// anonymous.
    pub fn authenticate(
        &self,
        chain: Option<&[CertificateDer<'static>]>,
        headers: &http::HeaderMap,
    ) -> Option<UserInfo> {
        self.user(&self.peer(chain), headers)
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
        let active = self.active.load();
        if let Some(fp) = &active.front_proxy
            && Self::verified(fp.as_ref(), chain)
            && (active.header.allowed_names.is_empty() || active.header.allowed_names.contains(&cn))
        {
            return Peer::FrontProxy;
        }
        if let Some(client) = &active.client
            && Self::verified(client.as_ref(), chain)
        {
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

    /// The user of one request on a connection from `peer` by its certificate (or, from a
    /// front proxy, its request headers). `None`: anonymous.
    pub fn user(&self, peer: &Peer, headers: &http::HeaderMap) -> Option<UserInfo> {
        match peer {
            Peer::Anonymous => None,
            Peer::FrontProxy => self.active.load().header.user(headers),
            Peer::User(u) => Some(u.clone()),
        }
    }

    /// The user of one request: certificate or front proxy first, then a bearer token
    /// (reviewed by the cluster, cached). `Ok(None)`: anonymous; `Err`: a token was
    /// presented and refused, or could not be reviewed (both 401, as kube answers).
    pub async fn authenticate_request(
        &self,
        peer: &Peer,
        headers: &http::HeaderMap,
    ) -> Result<Option<UserInfo>, token::TokenError> {
        if let Some(u) = self.user(peer, headers) {
            return Ok(Some(u));
        }
        let (Some(tokens), Some(bearer)) = (&self.tokens, token::bearer(headers)) else {
            return Ok(None);
        };
        tokens.authenticate(bearer).await.map(Some)
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
