//! Identity for Airlock: the control plane's internal CA, single-use join
//! tokens, certificate issuance from agent CSRs, renewal and revocation, and the
//! rustls configurations (mutual TLS, CA pinning by fingerprint) both sides use.
//!
//! This crate owns certificates, keys, tokens and the small identity database;
//! it owns no sockets and no async runtime (callers drive I/O). What a
//! connection carries belongs to `tunnel`/`protocol`; the enrollment HTTP
//! listener belongs to the control plane and only calls [`IdentityService`].
//!
//! Map of the API:
//! - control plane: [`IdentityService`] (CA + identity database + revocation
//!   set + server certificate), [`IdentityService::tunnel_server_config`] for
//!   the tunnel (client certificate required, verified against the CA, EKU
//!   `clientAuth`, revocation checked at handshake), [`peer_identity`] to read
//!   a verified peer's agent id, environment and expiry,
//!   [`IdentityService::renew`] to re-issue over a live connection;
//! - agent: [`agent::AgentCredentials`] (files on the host),
//!   [`agent::client_config`] (server verified against the pinned CA, EKU
//!   `serverAuth`, presents a swappable client certificate),
//!   [`agent::renewal_due`] for the renewal schedule;
//! - enrollment wire types: [`enroll`].
//!
//! Anything that weakens verification or bypasses normal issuance lives in
//! [`danger`].
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod agent;
pub mod audit_key;
pub mod ca;
pub mod csr;
pub mod danger;
pub mod enroll;
pub mod fingerprint;
pub mod identity;
pub mod revocation;
pub mod service;
pub mod store;
pub mod tls;
pub mod tokens;
mod util;

pub use ca::{CaError, CaSource, CertificateAuthority, IssuedCertificate, ServerIdentity};
pub use csr::{CsrError, ParsedCsr};
pub use fingerprint::{Fingerprint, FingerprintError};
pub use identity::{peer_identity, AgentId, EnvironmentId, IdentityError, PeerIdentity};
pub use revocation::RevocationSet;
/// rustls' certificate error kinds, as returned by the verifiers here.
pub use rustls::CertificateError;
pub use service::{
    EnrollError, IdentityService, IdentitySettings, PreparedEnrollment, RenewError,
    RevokeTokenError, RevokedToken, ServerFault, ServiceError,
};
pub use store::{StoreError, TokenRevocation};
pub use tls::{TlsError, ALPN_ENROLL};
pub use tokens::{JoinString, JoinToken, TokenError, TokenRecord, TokenState};

/// The one crypto provider every Airlock TLS config uses (ring).
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
