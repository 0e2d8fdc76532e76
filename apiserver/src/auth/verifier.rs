//! The TLS layer's client-certificate verifier when the CAs can change while serving: each
//! handshake verifies against the bundles of the moment (client CA or request-header CA),
//! read through an `ArcSwap`, so a rotated CA is accepted without a restart. No certificate
//! is accepted too (tokens, health checks); which CA vouched for a certificate is decided
//! after the handshake ([`super::Authenticator::peer`]).
//!
//! The CertificateRequest carries no CA names (they could change under a borrowed slice):
//! clients then offer their certificate whatever their issuer, as Go's and rustls's do.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::Active;

/// See the module docs.
pub struct DynamicVerifier {
    active: Arc<ArcSwap<Active>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl DynamicVerifier {
    pub(crate) fn new(active: Arc<ArcSwap<Active>>) -> Self {
        let provider: CryptoProvider = rustls::crypto::aws_lc_rs::default_provider();
        Self {
            active,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl std::fmt::Debug for DynamicVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamicVerifier").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for DynamicVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match &self.active.load().tls {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
