//! rustls configurations. Every config here is TLS 1.3 only (QUIC needs it,
//! and the TCP fallback uses the same), on the ring provider.
//!
//! - [`tunnel_server_config`]: the control plane's tunnel listener. Client
//!   certificate required; chain verified against the CA with expiry; EKU
//!   `clientAuth` required (so a server certificate cannot log in as an agent);
//!   the certificate must carry an agent identity; the agent must not be in the
//!   [`RevocationSet`]. A rejection is logged once here at WARN with the
//!   *claimed* agent id and the reason; callers should log the resulting
//!   handshake error at DEBUG inside a span that carries the remote address.
//! - [`enroll_server_config`]: server-auth-only TLS for the enrollment listener.
//! - [`PinnedCaVerifier`]: the agent's verifier during enrollment, when it
//!   knows only the CA fingerprint: the server must send the CA certificate in
//!   its chain; the one whose SHA-256 matches the pin becomes the sole root.
//! - The agent's tunnel client config is [`crate::agent::client_config`].

use std::sync::{Arc, Mutex, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::fingerprint::Fingerprint;
use crate::identity::peer_identity;
use crate::revocation::RevocationSet;
use crate::ServerIdentity;

/// ALPN protocol id of the enrollment listener.
pub const ALPN_ENROLL: &[u8] = b"http/1.1";

/// The handshake-signature half of a certificate verifier, the same for
/// every verifier here: the ring provider's algorithms (the ones the webpki
/// verifiers inside them were built with).
macro_rules! handshake_signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &SIGNATURE_ALGORITHMS)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &SIGNATURE_ALGORITHMS)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            SIGNATURE_ALGORITHMS.supported_schemes()
        }
    };
}

static SIGNATURE_ALGORITHMS: std::sync::LazyLock<rustls::crypto::WebPkiSupportedAlgorithms> =
    std::sync::LazyLock::new(|| crate::crypto_provider().signature_verification_algorithms);

/// A TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the configuration (a bug, or an unusable key).
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA certificate cannot be used as a trust anchor.
    #[error("ca certificate cannot be used as a trust root: {0}")]
    BadRoot(String),
    /// A verifier could not be built from the roots.
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The server certificate the control plane presents, swappable at run time
/// (the control plane re-issues it before it expires without a restart).
#[derive(Debug, Clone)]
pub struct SwappableServerCert {
    current: Arc<RwLock<Arc<CertifiedKey>>>,
}

impl SwappableServerCert {
    /// Start with `identity`.
    pub fn new(identity: &ServerIdentity) -> Self {
        Self {
            current: Arc::new(RwLock::new(identity.certified_key.clone())),
        }
    }

    /// Present `identity` on future handshakes.
    pub fn swap(&self, identity: &ServerIdentity) {
        match self.current.write() {
            Ok(mut g) => *g = identity.certified_key.clone(),
            Err(p) => *p.into_inner() = identity.certified_key.clone(),
        }
    }

    fn get(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

impl ResolvesServerCert for SwappableServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

fn root_store(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| TlsError::BadRoot(e.to_string()))?;
    Ok(Arc::new(roots))
}

/// Verifies agent client certificates for the tunnel.
#[derive(Debug, Clone)]
pub struct AgentCertVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revocations: RevocationSet,
    remote_addr: Option<std::net::SocketAddr>,
}

impl AgentCertVerifier {
    /// A verifier trusting only `ca`, refusing agents in `revocations`.
    pub fn new(ca: &CertificateDer<'static>, revocations: RevocationSet) -> Result<Self, TlsError> {
        let inner =
            WebPkiClientVerifier::builder_with_provider(root_store(ca)?, crate::crypto_provider())
                .build()?;
        Ok(Self {
            inner,
            revocations,
            remote_addr: None,
        })
    }

    /// The same verifier, naming `remote_addr` in its rejection log line.
    pub fn for_peer(&self, remote_addr: std::net::SocketAddr) -> Self {
        Self {
            remote_addr: Some(remote_addr),
            ..self.clone()
        }
    }

    /// Every check, without logging. `Ok` carries the verified identity.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<crate::PeerIdentity, rustls::Error> {
        // Chain to the CA, validity period, and EKU clientAuth-if-present.
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        // webpki accepts a certificate with no EKU at all; we require it.
        if !has_client_auth_eku(end_entity) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose,
            ));
        }
        let identity = peer_identity(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        })?;
        if self.revocations.is_revoked(&identity.agent_id) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(identity)
    }

    fn reject(&self, end_entity: &CertificateDer<'_>, error: rustls::Error) -> rustls::Error {
        let claimed = peer_identity(end_entity).ok();
        let remote_addr = self.remote_addr.map(|a| a.to_string());
        tracing::warn!(
            remote_addr = remote_addr.as_deref().unwrap_or("-"),
            claimed_agent_id = claimed.as_ref().map(|c| c.agent_id.as_str()).unwrap_or("-"),
            claimed_environment_id = claimed.as_ref().map(|c| c.environment_id.as_str()).unwrap_or("-"),
            %error,
            "client certificate rejected"
        );
        error
    }
}

/// Whether the certificate has an EKU extension listing `clientAuth`.
fn has_client_auth_eku(end_entity: &CertificateDer<'_>) -> bool {
    let Ok((_, x509)) = X509Certificate::from_der(end_entity.as_ref()) else {
        return false;
    };
    matches!(x509.extended_key_usage(), Ok(Some(eku)) if eku.value.client_auth)
}

impl ClientCertVerifier for AgentCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.check(end_entity, intermediates, now) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(e) => Err(self.reject(end_entity, e)),
        }
    }

    handshake_signature_checks!();
}

/// The tunnel's server config: mutual TLS as described in the module docs,
/// TLS 1.3 only, with the given ALPN protocols (e.g. `[b"airlock/1"]`).
/// Usable for the TCP listener as is and for quinn via
/// `quinn::crypto::rustls::QuicServerConfig::try_from(config)`.
pub fn tunnel_server_config(
    ca: &CertificateDer<'static>,
    server_cert: &SwappableServerCert,
    revocations: RevocationSet,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let verifier = AgentCertVerifier::new(ca, revocations)?;
    tunnel_server_config_with(verifier, server_cert, alpn)
}

/// As [`tunnel_server_config`] with a prepared verifier (for example one
/// made with [`AgentCertVerifier::for_peer`] so that a rejection is logged
/// with the remote address).
pub fn tunnel_server_config_with(
    verifier: AgentCertVerifier,
    server_cert: &SwappableServerCert,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let verifier = Arc::new(verifier);
    let mut config = rustls::ServerConfig::builder_with_provider(crate::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(server_cert.clone()));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The enrollment listener's server config: server authentication only.
pub fn enroll_server_config(
    server_cert: &SwappableServerCert,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(crate::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(server_cert.clone()));
    config.alpn_protocols = vec![ALPN_ENROLL.to_vec()];
    Ok(config)
}

/// Agent-side verifier for enrollment, when only the CA fingerprint is known.
/// The server's chain must contain a certificate whose SHA-256 equals the pin;
/// the leaf must chain to it, be valid now, name the server and have EKU
/// `serverAuth`. The matched CA certificate is remembered ([`Self::pinned_ca`])
/// so the agent can store it for later connections.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
    seen_ca: Mutex<Option<CertificateDer<'static>>>,
}

impl PinnedCaVerifier {
    /// Pin `fingerprint`.
    pub fn new(pin: Fingerprint) -> Self {
        Self {
            pin,
            provider: crate::crypto_provider(),
            seen_ca: Mutex::new(None),
        }
    }

    /// The CA certificate that matched the pin during the last successful handshake.
    pub fn pinned_ca(&self) -> Option<CertificateDer<'static>> {
        match self.seen_ca.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// A client config using this verifier (no client certificate).
    pub fn client_config(self: &Arc<Self>) -> Result<rustls::ClientConfig, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(crate::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous() // the custom verifier below is stricter than the default, not weaker
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN_ENROLL.to_vec()];
        Ok(config)
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| Fingerprint::of_der(c.as_ref()) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "server did not present a ca certificate matching the pinned fingerprint {}",
                    self.pin
                ))
            })?
            .clone()
            .into_owned();
        let roots = root_store(&ca).map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner = WebPkiServerVerifier::builder_with_provider(roots, self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| c.as_ref() != ca.as_ref())
            .cloned()
            .collect();
        inner.verify_server_cert(end_entity, &others, server_name, ocsp_response, now)?;
        require_server_auth_eku(end_entity)?;
        match self.seen_ca.lock() {
            Ok(mut g) => *g = Some(ca),
            Err(p) => *p.into_inner() = Some(ca),
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signature_checks!();
}

/// webpki accepts a certificate without any EKU; we require `serverAuth`
/// explicitly so that only certificates issued as server certificates pass.
fn require_server_auth_eku(end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
    let ok = X509Certificate::from_der(end_entity.as_ref())
        .ok()
        .is_some_and(
            |(_, x509)| matches!(x509.extended_key_usage(), Ok(Some(eku)) if eku.value.server_auth),
        );
    if ok {
        Ok(())
    } else {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::InvalidPurpose,
        ))
    }
}

/// Agent-side verifier for the tunnel: the server must chain to the stored
/// CA (the only root; no system roots), be valid now, match the server name,
/// and carry EKU `serverAuth` (so an agent's client certificate cannot pose
/// as the control plane).
#[derive(Debug)]
pub struct ControlPlaneVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ControlPlaneVerifier {
    /// Trust only `ca`.
    pub fn new(ca: &CertificateDer<'static>) -> Result<Self, TlsError> {
        let inner =
            WebPkiServerVerifier::builder_with_provider(root_store(ca)?, crate::crypto_provider())
                .build()
                .map_err(|e| TlsError::BadRoot(e.to_string()))?;
        Ok(Self { inner })
    }
}

impl ServerCertVerifier for ControlPlaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        require_server_auth_eku(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signature_checks!();
}
