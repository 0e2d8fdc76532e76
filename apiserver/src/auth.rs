//! Authentication (client certificates, front-proxy request headers, bearer tokens);
//! authorization is [`crate::authz`].
//!
//! The order is kube-apiserver's: a peer certificate signed by the request-header CA (and,
//! when allowed names are set, with one of those CNs) is an aggregating front proxy: the user
//! comes from the configured request headers (`X-Remote-User`, `X-Remote-Group`,
//! `X-Remote-Extra-*` by default). Any other certificate must chain to the client CA: the user
//! is its CN and the groups its O values. Request headers from anyone else are ignored.
//! Without a certificate user, an `Authorization: Bearer` token is looked up in the
//! `--token-auth-file` ([`token_file`], either mode), else reviewed by the cluster ([`token`],
//! cluster mode only). Nobody: 401 (health endpoints excepted), or in cluster
//! mode `system:anonymous` for the cluster's authorizer to judge, as kube's delegating
//! authenticator does. A refused token is 401 either way.
//!
//! The CA bundles and header names can change while serving ([`Authenticator::reload`]; in
//! cluster mode [`cluster`] follows `kube-system/extension-apiserver-authentication`): the
//! TLS layer's verifier ([`verifier::DynamicVerifier`]) uses the bundles of the moment, and
//! each connection's classification (made once, at the handshake) is made again after a
//! change ([`Authenticator::connection_peer`]).

pub mod cluster;
pub mod headers;
pub mod token;
pub mod token_file;
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
    /// `name` in `groups`, no extra (tests, benchmarks, fixed identities).
    pub fn new(name: &str, groups: &[&str]) -> Self {
        Self {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            extra: BTreeMap::new(),
        }
    }
    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
    /// Whoever sent no credential (kube's anonymous user).
    pub fn anonymous() -> Self {
        Self {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            extra: BTreeMap::new(),
        }
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
    /// Which reload made these (connections classified under another are classified again).
    generation: u64,
    client: Option<Arc<dyn ClientCertVerifier>>,
    front_proxy: Option<Arc<dyn ClientCertVerifier>>,
    /// Either CA (what the TLS layer accepts); `None`: no CA at all.
    pub(crate) tls: Option<Arc<dyn ClientCertVerifier>>,
    header: RequestHeader,
    bundles: Bundles,
}

impl Active {
    fn build(b: Bundles, generation: u64) -> Result<Self, AuthError> {
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
            generation,
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
    generations: Arc<std::sync::atomic::AtomicU64>,
    tokens: Option<Arc<token::TokenAuthenticator>>,
    /// `--token-auth-file`'s tokens, asked before [`Authenticator::tokens`].
    static_tokens: Option<Arc<token_file::StaticTokens>>,
    /// Requests without any credential are `system:anonymous` (cluster mode, as kube's
    /// delegating authenticator) instead of refused.
    anonymous: bool,
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
            active: Arc::new(ArcSwap::from_pointee(Active::build(b, 0)?)),
            generations: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            tokens: None,
            static_tokens: None,
            anonymous: false,
        })
    }

    /// Bearer tokens are reviewed by `tokens` (cluster mode).
    pub fn with_tokens(mut self, tokens: Arc<token::TokenAuthenticator>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Bearer tokens found in `tokens` (`--token-auth-file`) are their users; others go to
    /// the cluster's review when there is one.
    pub fn with_static_tokens(mut self, tokens: Arc<token_file::StaticTokens>) -> Self {
        self.static_tokens = Some(tokens);
        self
    }

    /// Whether any bearer-token authenticator is configured.
    pub fn authenticates_tokens(&self) -> bool {
        self.tokens.is_some() || self.static_tokens.is_some()
    }

    /// The user `token` names: the token file first, then the cluster's `TokenReview` (kube's
    /// union of token authenticators). Refused when nobody knows it; `Failed` when the review
    /// could not be made. The uid is known for static tokens only.
    pub async fn authenticate_token(
        &self,
        token: &str,
    ) -> Result<token_file::TokenUser, token::TokenError> {
        if let Some(u) = self.static_tokens.as_ref().and_then(|s| s.get(token)) {
            return Ok(u.clone());
        }
        match &self.tokens {
            Some(tokens) => tokens
                .authenticate(token)
                .await
                .map(|user| token_file::TokenUser {
                    user,
                    uid: String::new(),
                }),
            None => Err(token::TokenError::Refused(String::new())),
        }
    }

    /// Requests without any credential are the user `system:anonymous` in the group
    /// `system:unauthenticated`, for the authorizer to judge (kube's delegating
    /// authenticator; its SubjectAccessReviews usually deny them: 403, not 401).
    pub fn with_anonymous(mut self) -> Self {
        self.anonymous = true;
        self
    }

    /// Replaces the bundles: new TLS handshakes and new connections use them at once.
    /// An invalid bundle leaves the current ones in force.
    pub fn reload(&self, b: Bundles) -> Result<(), AuthError> {
        if self.active.load().bundles == b {
            return Ok(());
        }
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        self.active.store(Arc::new(Active::build(b, generation)?));
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

    /// A new connection: its peer classified now, and again whenever the bundles change
    /// ([`Authenticator::connection_peer`]), so a CA removed from the bundles stops vouching
    /// for open connections too.
    pub fn connection(&self, chain: Option<&[CertificateDer<'static>]>) -> Connection {
        let generation = self.active.load().generation;
        Connection {
            classified: ArcSwap::from_pointee((generation, self.peer(chain))),
            chain: chain.map(<[_]>::to_vec),
        }
    }

    /// The peer of `conn` under the bundles in force (classified again after a reload).
    pub fn connection_peer(&self, conn: &Connection) -> Arc<(u64, Peer)> {
        let current = self.active.load().generation;
        let classified = conn.classified.load_full();
        if classified.0 == current {
            return classified;
        }
        let fresh = Arc::new((current, self.peer(conn.chain.as_deref())));
        conn.classified.store(fresh.clone());
        fresh
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
    /// (the token file's, else reviewed by the cluster, cached), then `system:anonymous` when allowed
    /// ([`Authenticator::with_anonymous`]). `Ok(None)`: nobody (401); `Err`: a token was
    /// presented and refused, or could not be reviewed (both 401, as kube answers).
    pub async fn authenticate_request(
        &self,
        peer: &Peer,
        headers: &http::HeaderMap,
    ) -> Result<Option<UserInfo>, token::TokenError> {
        if let Some(u) = self.user(peer, headers) {
            return Ok(Some(u));
        }
        if self.authenticates_tokens()
            && let Some(bearer) = token::bearer(headers)
        {
            return self.authenticate_token(bearer).await.map(|u| Some(u.user));
        }
        Ok(self.anonymous.then(UserInfo::anonymous))
    }
}

/// A connection's certificate chain and its classification (see
/// [`Authenticator::connection`]).
pub struct Connection {
    chain: Option<Vec<CertificateDer<'static>>>,
    /// The bundles' generation it was classified under, and the peer.
    classified: ArcSwap<(u64, Peer)>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;
    use std::sync::Mutex;
    use token::{Reviewed, TokenAuthenticator, TokenError, TokenReviewer};

    /// Two independent generated PKIs (CA, front-proxy CA, admin and front-proxy-client
    /// certificates each).
    fn pkis() -> (tempfile::TempDir, crate::pki::Pki, crate::pki::Pki) {
        let dir = tempfile::tempdir().unwrap();
        let a = crate::pki::ensure(&dir.path().join("a"), &[]).unwrap();
        let b = crate::pki::ensure(&dir.path().join("b"), &[]).unwrap();
        (dir, a, b)
    }

    fn pem(p: &crate::pki::Pki, file: &str) -> String {
        std::fs::read_to_string(p.path(file)).unwrap()
    }

    fn chain(p: &crate::pki::Pki, file: &str) -> Vec<CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::pem_slice_iter(pem(p, file).as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn bundles(p: &crate::pki::Pki) -> Bundles {
        Bundles {
            client_ca: pem(p, "ca.crt"),
            request_header_ca: pem(p, "front-proxy-ca.crt"),
            request_header: RequestHeader {
                allowed_names: vec!["front-proxy-client".into()],
                ..RequestHeader::default()
            },
        }
    }

    fn tls_accepts(authn: &Authenticator, c: &[CertificateDer<'static>]) -> bool {
        authn
            .client_verifier()
            .verify_client_cert(&c[0], &c[1..], UnixTime::now())
            .is_ok()
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_reloaded_ca_is_trusted_by_the_tls_verifier_and_new_connections() {
        let (_dir, a, b) = pkis();
        let authn = Authenticator::from_bundles(bundles(&a)).unwrap();
        let admin_a = chain(&a, "admin.crt");
        let admin_b = chain(&b, "admin.crt");
        assert!(tls_accepts(&authn, &admin_a));
        assert!(!tls_accepts(&authn, &admin_b));
        assert_eq!(
            authn.peer(Some(&admin_a)),
            Peer::User(UserInfo {
                name: "substrate-admin".into(),
                groups: vec!["system:masters".into(), "system:authenticated".into()],
                extra: BTreeMap::new(),
            })
        );
        assert_eq!(authn.peer(Some(&admin_b)), Peer::Anonymous);
        assert_eq!(
            authn.peer(Some(&chain(&a, "front-proxy-client.crt"))),
            Peer::FrontProxy
        );

        // b's client CA added (a verifier made before the change sees it too).
        let verifier = authn.client_verifier();
        let mut both = bundles(&a);
        both.client_ca = format!("{}{}", pem(&a, "ca.crt"), pem(&b, "ca.crt"));
        authn.reload(both).unwrap();
        assert!(
            verifier
                .verify_client_cert(&admin_b[0], &admin_b[1..], UnixTime::now())
                .is_ok()
        );
        assert!(matches!(authn.peer(Some(&admin_b)), Peer::User(u) if u.name == "substrate-admin"));

        // a's CAs replaced by b's: a's certificates are refused from now on.
        authn.reload(bundles(&b)).unwrap();
        assert!(!tls_accepts(&authn, &admin_a));
        assert_eq!(authn.peer(Some(&admin_a)), Peer::Anonymous);
        assert_eq!(
            authn.peer(Some(&chain(&a, "front-proxy-client.crt"))),
            Peer::Anonymous
        );
        // An invalid bundle leaves the one in force.
        let mut bad = bundles(&a);
        bad.client_ca =
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".into();
        assert!(authn.reload(bad).is_err());
        assert!(tls_accepts(&authn, &admin_b));
    }

    #[test]
    fn open_connections_are_classified_again_after_a_reload() {
        let (_dir, a, b) = pkis();
        let authn = Authenticator::from_bundles(bundles(&a)).unwrap();
        let admin = authn.connection(Some(&chain(&a, "admin.crt")));
        let proxy = authn.connection(Some(&chain(&a, "front-proxy-client.crt")));
        assert!(matches!(&authn.connection_peer(&admin).1, Peer::User(_)));
        assert_eq!(authn.connection_peer(&proxy).1, Peer::FrontProxy);
        // The same bundles again: nothing changes, no new generation.
        authn.reload(bundles(&a)).unwrap();
        assert_eq!(authn.connection_peer(&admin).0, 0);
        authn.reload(bundles(&b)).unwrap();
        assert_eq!(authn.connection_peer(&admin).1, Peer::Anonymous);
        assert_eq!(authn.connection_peer(&proxy).1, Peer::Anonymous);
        authn.reload(bundles(&a)).unwrap();
        assert_eq!(authn.connection_peer(&proxy).1, Peer::FrontProxy);
        let none = authn.connection(None);
        assert_eq!(authn.connection_peer(&none).1, Peer::Anonymous);
    }

    #[test]
    fn front_proxy_header_names_and_allowed_names_follow_a_reload() {
        let (_dir, a, _b) = pkis();
        let authn = Authenticator::from_bundles(bundles(&a)).unwrap();
        let proxy = chain(&a, "front-proxy-client.crt");
        let h = headers(&[("X-Remote-User", "alice"), ("X-Forwarded-User", "carol")]);
        let peer = authn.peer(Some(&proxy));
        assert_eq!(authn.user(&peer, &h).unwrap().name, "alice");
        let mut b = bundles(&a);
        b.request_header = RequestHeader::new(
            &["X-Forwarded-User".into()],
            &[],
            &[],
            &["front-proxy-client".into()],
        );
        authn.reload(b.clone()).unwrap();
        assert_eq!(authn.user(&peer, &h).unwrap().name, "carol");
        // Another allowed name: the proxy's certificate is no longer a front proxy.
        b.request_header.allowed_names = vec!["aggregator".into()];
        authn.reload(b).unwrap();
        assert_eq!(authn.peer(Some(&proxy)), Peer::Anonymous);
        // No CA at all: every certificate is refused at the handshake.
        authn.reload(Bundles::default()).unwrap();
        assert!(!tls_accepts(&authn, &chain(&a, "admin.crt")));
    }

    struct FakeReviewer {
        calls: Mutex<u32>,
    }

    impl TokenReviewer for FakeReviewer {
        fn review(&self, token: &str) -> BoxFuture<'_, Result<Reviewed, String>> {
            *self.calls.lock().unwrap() += 1;
            let r = match token {
                "good" => Ok(Reviewed::User(UserInfo {
                    name: "system:serviceaccount:team-a:robot".into(),
                    groups: vec!["system:authenticated".into()],
                    extra: BTreeMap::new(),
                })),
                "down" => Err("connection refused".into()),
                _ => Ok(Reviewed::Refused(String::new())),
            };
            Box::pin(async move { r })
        }
    }

    #[tokio::test]
    async fn certificates_and_front_proxy_come_before_tokens() {
        let (_dir, a, _b) = pkis();
        let reviewer = Arc::new(FakeReviewer {
            calls: Mutex::new(0),
        });
        let authn = Authenticator::from_bundles(bundles(&a))
            .unwrap()
            .with_tokens(Arc::new(TokenAuthenticator::new(
                reviewer.clone(),
                std::time::Duration::from_secs(10),
                10,
            )));
        let bearer = |t: &str| headers(&[("Authorization", &format!("Bearer {t}"))]);
        // A certificate user wins; the token is not even reviewed.
        let admin = authn.peer(Some(&chain(&a, "admin.crt")));
        let u = authn.authenticate_request(&admin, &bearer("bad")).await;
        assert_eq!(u.unwrap().unwrap().name, "substrate-admin");
        assert_eq!(*reviewer.calls.lock().unwrap(), 0);
        // Anonymous with a token: the token's user; refused and failed reviews are errors.
        let anon = Peer::Anonymous;
        let u = authn.authenticate_request(&anon, &bearer("good")).await;
        assert_eq!(
            u.unwrap().unwrap().name,
            "system:serviceaccount:team-a:robot"
        );
        assert!(matches!(
            authn.authenticate_request(&anon, &bearer("bad")).await,
            Err(TokenError::Refused(_))
        ));
        assert!(matches!(
            authn.authenticate_request(&anon, &bearer("down")).await,
            Err(TokenError::Failed(_))
        ));
        assert_eq!(
            authn.authenticate_request(&anon, &headers(&[])).await,
            Ok(None)
        );
        // The front proxy without a user header falls through to the token.
        let u = authn
            .authenticate_request(&Peer::FrontProxy, &bearer("good"))
            .await;
        assert_eq!(
            u.unwrap().unwrap().name,
            "system:serviceaccount:team-a:robot"
        );
        // The token file comes first; tokens it lacks go to the cluster.
        let file =
            token_file::StaticTokens::parse("t.csv", "good,from-file,7,g\nfile-only,carol,8\n")
                .unwrap();
        let both = authn.clone().with_static_tokens(Arc::new(file.clone()));
        let calls = *reviewer.calls.lock().unwrap();
        let u = both.authenticate_token("good").await.unwrap();
        assert_eq!((u.user.name.as_str(), u.uid.as_str()), ("from-file", "7"));
        assert_eq!(*reviewer.calls.lock().unwrap(), calls);
        assert!(matches!(
            both.authenticate_request(&anon, &bearer("not-in-file"))
                .await,
            Err(TokenError::Refused(_))
        ));
        assert_eq!(*reviewer.calls.lock().unwrap(), calls + 1);
        // Standalone with a token file: its tokens are users, others are refused (401).
        let standalone = Authenticator::from_bundles(bundles(&a))
            .unwrap()
            .with_static_tokens(Arc::new(file));
        let u = standalone
            .authenticate_request(&anon, &bearer("file-only"))
            .await;
        assert_eq!(
            u.unwrap().unwrap().groups,
            vec!["system:authenticated".to_string()]
        );
        assert!(matches!(
            standalone
                .authenticate_request(&anon, &bearer("good-elsewhere"))
                .await,
            Err(TokenError::Refused(_))
        ));
        assert_eq!(
            standalone.authenticate_request(&anon, &headers(&[])).await,
            Ok(None)
        );
        // Standalone (no token authenticator): a token is nobody.
        let standalone = Authenticator::from_bundles(bundles(&a)).unwrap();
        assert_eq!(
            standalone
                .authenticate_request(&anon, &bearer("good"))
                .await,
            Ok(None)
        );
    }
}
