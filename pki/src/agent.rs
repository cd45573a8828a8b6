//! The agent's side of identity: its credential files, the client TLS config
//! for the tunnel, the certificate swap used by renewal, and the renewal
//! schedule.
//!
//! Files, all in one directory (default `<agent data_dir>/identity`, 0700):
//! - `agent.pem` (0600): the private key followed by the certificate chain.
//!   One file, replaced atomically, so key and certificate never disagree.
//!   The key is generated on the host and never leaves it.
//! - `ca.crt`: the control plane's CA, as matched against the pinned fingerprint.
//! - `identity.json`: agent id, environment, CA fingerprint, addresses, expiry.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ca::{der_to_pem, pem_to_certs};
use crate::fingerprint::Fingerprint;
use crate::identity::{peer_identity, PeerIdentity};
use crate::tls::{ControlPlaneVerifier, TlsError};
use crate::util::{create_private_dir, write_atomic};

/// Errors reading, writing or checking the agent's credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentIdentityError {
    /// A file could not be read or written.
    #[error("identity file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The agent has not enrolled yet (no `agent.pem`).
    #[error("agent is not enrolled: {0} does not exist (run `sandbox-agent enroll`)")]
    NotEnrolled(PathBuf),
    /// A file does not contain what it should.
    #[error("identity file {path} is invalid: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The stored CA does not match the pinned fingerprint.
    #[error("stored ca {path} has fingerprint {actual}, but {expected} is pinned")]
    CaMismatch {
        /// The CA file.
        path: PathBuf,
        /// Pinned fingerprint.
        expected: Fingerprint,
        /// Fingerprint of the stored file.
        actual: Fingerprint,
    },
    /// A certificate chain from the control plane is unacceptable.
    #[error("issued certificate rejected: {0}")]
    BadIssuedCertificate(String),
    /// Key generation failed.
    #[error("key generation failed: {0}")]
    KeyGen(#[source] rcgen::Error),
    /// The generated CSR did not convert from PEM to DER (a bug).
    #[error("key generation failed: the csr does not convert to der: {0}")]
    CsrEncoding(#[source] rustls_pki_types::pem::Error),
    /// TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// What `identity.json` records.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdentityRecord {
    /// The agent id assigned at enrollment.
    pub agent_id: crate::AgentId,
    /// The environment it belongs to.
    pub environment_id: crate::EnvironmentId,
    /// The pinned CA fingerprint.
    pub ca_fingerprint: Fingerprint,
    /// Tunnel address (host:port) learned at enrollment, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_address: Option<String>,
    /// Enrollment address (host:port) used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enroll_address: Option<String>,
    /// TLS server name the control plane's certificate is checked against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// Paths of the agent's identity files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFiles {
    dir: PathBuf,
}

impl AgentFiles {
    /// Files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Private key + certificate chain (0600).
    pub fn credentials_file(&self) -> PathBuf {
        self.dir.join("agent.pem")
    }

    /// The pinned CA certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The identity record.
    pub fn record_file(&self) -> PathBuf {
        self.dir.join("identity.json")
    }

    /// Whether enrollment has happened (the credentials file exists).
    pub fn is_enrolled(&self) -> bool {
        self.credentials_file().exists()
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AgentIdentityError {
        let path = path.to_owned();
        move |source| AgentIdentityError::Io { path, source }
    }

    /// Read `identity.json`.
    pub fn read_record(&self) -> Result<IdentityRecord, AgentIdentityError> {
        let path = self.record_file();
        if !path.exists() {
            return Err(AgentIdentityError::NotEnrolled(path));
        }
        let text = std::fs::read_to_string(&path).map_err(Self::io(&path))?;
        serde_json::from_str(&text).map_err(|e| AgentIdentityError::Invalid {
            path,
            message: e.to_string(),
        })
    }

    /// Store the outcome of an enrollment: key + chain, CA, record.
    pub fn save_enrollment(
        &self,
        key: &PendingKey,
        chain: &[CertificateDer<'static>],
        ca: &CertificateDer<'static>,
        record: &IdentityRecord,
    ) -> Result<AgentCredentials, AgentIdentityError> {
        create_private_dir(&self.dir).map_err(Self::io(&self.dir))?;
        let creds = AgentCredentials::assemble(key, chain.to_vec(), ca, record.ca_fingerprint)?;
        let ca_path = self.ca_file();
        write_atomic(&ca_path, der_to_pem(ca).as_bytes(), 0o644).map_err(Self::io(&ca_path))?;
        self.write_credentials(key, &creds)?;
        let rec_path = self.record_file();
        let json = serde_json::to_vec_pretty(record).map_err(|e| AgentIdentityError::Invalid {
            path: rec_path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&rec_path, &json, 0o644).map_err(Self::io(&rec_path))?;
        Ok(creds)
    }

    fn write_credentials(
        &self,
        key: &PendingKey,
        creds: &AgentCredentials,
    ) -> Result<(), AgentIdentityError> {
        let path = self.credentials_file();
        let mut pem = key.key_pem.clone();
        for c in &creds.chain {
            pem.push_str(&der_to_pem(c));
        }
        write_atomic(&path, pem.as_bytes(), 0o600).map_err(Self::io(&path))
    }

    /// Load the credentials, checking the stored CA against `pin` (the
    /// fingerprint from config, or from `identity.json` when config has none).
    pub fn load(&self, pin: Option<Fingerprint>) -> Result<AgentCredentials, AgentIdentityError> {
        let cred_path = self.credentials_file();
        if !cred_path.exists() {
            return Err(AgentIdentityError::NotEnrolled(cred_path));
        }
        let pin = match pin {
            Some(p) => p,
            None => self.read_record()?.ca_fingerprint,
        };
        let ca_path = self.ca_file();
        let ca_pem = std::fs::read_to_string(&ca_path).map_err(Self::io(&ca_path))?;
        let ca = pem_to_certs(&ca_pem)
            .map_err(|e| AgentIdentityError::Invalid {
                path: ca_path.clone(),
                message: e.to_string(),
            })?
            .swap_remove(0);
        let actual = Fingerprint::of_der(&ca);
        if actual != pin {
            return Err(AgentIdentityError::CaMismatch {
                path: ca_path,
                expected: pin,
                actual,
            });
        }
        let text = std::fs::read_to_string(&cred_path).map_err(Self::io(&cred_path))?;
        let invalid = |message: String| AgentIdentityError::Invalid {
            path: cred_path.clone(),
            message,
        };
        let key_der =
            PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| invalid(e.to_string()))?;
        let chain = pem_to_certs(&text).map_err(|e| invalid(e.to_string()))?;
        let certified = CertifiedKey::from_der(chain.clone(), key_der, &crate::crypto_provider())
            .map_err(|e| invalid(format!("key does not match certificate: {e}")))?;
        let identity = peer_identity(&chain[0]).map_err(|e| invalid(e.to_string()))?;
        Ok(AgentCredentials {
            chain,
            ca,
            identity,
            certified_key: Arc::new(certified),
        })
    }

    /// Replace the credentials after a renewal. The new chain must certify
    /// `key`, chain to the same CA and name the same agent.
    pub fn save_renewal(
        &self,
        current: &AgentCredentials,
        key: &PendingKey,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<AgentCredentials, AgentIdentityError> {
        let creds =
            AgentCredentials::assemble(key, chain, &current.ca, Fingerprint::of_der(&current.ca))?;
        if creds.identity.agent_id != current.identity.agent_id
            || creds.identity.environment_id != current.identity.environment_id
        {
            return Err(AgentIdentityError::BadIssuedCertificate(format!(
                "renewed certificate names {}/{} instead of {}/{}",
                creds.identity.environment_id,
                creds.identity.agent_id,
                current.identity.environment_id,
                current.identity.agent_id
            )));
        }
        self.write_credentials(key, &creds)?;
        Ok(creds)
    }
}

/// A freshly generated key pair and its CSR, before the certificate arrives.
pub struct PendingKey {
    key_pem: String,
    key_der: Vec<u8>,
    /// The CSR (PEM) to send.
    pub csr_pem: String,
    /// The CSR (DER) to send.
    pub csr_der: Vec<u8>,
}

impl fmt::Debug for PendingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingKey")
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl PendingKey {
    /// Generate an ECDSA P-256 key and a CSR for it, in memory.
    pub fn generate() -> Result<Self, AgentIdentityError> {
        let (key, csr_pem) =
            crate::csr::generate_key_and_csr().map_err(AgentIdentityError::KeyGen)?;
        let csr_der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
                .map_err(AgentIdentityError::CsrEncoding)?
                .as_ref()
                .to_vec();
        Ok(Self {
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
            csr_pem,
            csr_der,
        })
    }
}

/// Loaded, consistent credentials: key + chain + CA + what the chain says.
#[derive(Clone)]
pub struct AgentCredentials {
    /// `[leaf, ca]` as issued.
    pub chain: Vec<CertificateDer<'static>>,
    /// The pinned CA.
    pub ca: CertificateDer<'static>,
    /// Agent id, environment, expiry, serial of the leaf.
    pub identity: PeerIdentity,
    certified_key: Arc<CertifiedKey>,
}

impl fmt::Debug for AgentCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentCredentials")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl AgentCredentials {
    fn assemble(
        key: &PendingKey,
        chain: Vec<CertificateDer<'static>>,
        ca: &CertificateDer<'static>,
        pin: Fingerprint,
    ) -> Result<Self, AgentIdentityError> {
        let bad = |m: String| AgentIdentityError::BadIssuedCertificate(m);
        if Fingerprint::of_der(ca) != pin {
            return Err(bad("ca does not match the pinned fingerprint".into()));
        }
        let leaf = chain
            .first()
            .ok_or_else(|| bad("empty certificate chain".into()))?;
        // The chain must verify against the CA as a client certificate.
        crate::tls::AgentCertVerifier::new(ca, crate::RevocationSet::new())?
            .check(leaf, &chain[1..], rustls_pki_types::UnixTime::now())
            .map_err(|e| bad(e.to_string()))?;
        let key_der =
            PrivateKeyDer::try_from(key.key_der.clone()).map_err(|e| bad(e.to_string()))?;
        let certified = CertifiedKey::from_der(chain.clone(), key_der, &crate::crypto_provider())
            .map_err(|e| bad(format!("certificate does not certify our key: {e}")))?;
        certified
            .keys_match()
            .map_err(|e| bad(format!("certificate does not certify our key: {e}")))?;
        let identity = peer_identity(leaf).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            chain,
            ca: ca.clone(),
            identity,
            certified_key: Arc::new(certified),
        })
    }

    /// The same, ready for rustls.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified_key.clone()
    }
}

/// The client certificate the agent presents, swappable: renewal installs the
/// new certificate and every later handshake (a redial, a QUIC retry) uses it.
/// Established connections are unaffected.
#[derive(Clone)]
pub struct SwappableClientCert {
    current: Arc<RwLock<Arc<CertifiedKey>>>,
}

impl fmt::Debug for SwappableClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SwappableClientCert")
    }
}

impl SwappableClientCert {
    /// Start with `creds`.
    pub fn new(creds: &AgentCredentials) -> Self {
        Self {
            current: Arc::new(RwLock::new(creds.certified_key())),
        }
    }

    /// Present `creds` from now on.
    pub fn swap(&self, creds: &AgentCredentials) {
        match self.current.write() {
            Ok(mut g) => *g = creds.certified_key(),
            Err(p) => *p.into_inner() = creds.certified_key(),
        }
    }

    fn get(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

impl ResolvesClientCert for SwappableClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The agent's tunnel client config: verifies the control plane against `ca`
/// only ([`ControlPlaneVerifier`]), presents `client_cert`, TLS 1.3, with the
/// given ALPN list. For quinn: `QuicClientConfig::try_from(config)`.
pub fn client_config(
    ca: &CertificateDer<'static>,
    client_cert: &SwappableClientCert,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let verifier = Arc::new(ControlPlaneVerifier::new(ca)?);
    let mut config = rustls::ClientConfig::builder_with_provider(crate::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous() // custom verifier: webpki against the pinned CA plus an EKU check; stricter, not weaker
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(client_cert.clone()));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// When to renew a certificate received at `received_at` that expires at
/// `not_after`: two thirds of the way through its remaining life. Never before
/// `received_at`.
pub fn renewal_due(received_at: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after
        .duration_since(received_at)
        .unwrap_or(Duration::ZERO);
    received_at + life * 2 / 3
}

/// When to renew `identity`'s certificate: two thirds into its life, counted
/// from its issue time (its `not_before` plus the issuer's clock-skew
/// allowance).
pub fn renewal_due_for(identity: &PeerIdentity) -> SystemTime {
    let issued = (identity.not_before + crate::ca::CLOCK_SKEW_ALLOWANCE).min(identity.not_after);
    renewal_due(issued, identity.not_after)
}

/// Renewal retries: 1 s doubling to 60 s, no jitter (each agent's schedule
/// already follows its own certificate's life).
const RENEWAL_RETRY: settings::BackoffPolicy = settings::BackoffPolicy::new(
    Duration::from_secs(1),
    Duration::from_secs(60),
    settings::Jitter::None,
);

/// Delay before the next renewal attempt after `failures` consecutive
/// failures: 1 s doubling to at most 60 s, but never past a tenth of the time
/// left before expiry (so a short-lived certificate is retried often).
pub fn renewal_retry_delay(failures: u32, now: SystemTime, not_after: SystemTime) -> Duration {
    let exp = RENEWAL_RETRY.delay(failures, 0.0);
    let left = not_after.duration_since(now).unwrap_or(Duration::ZERO);
    exp.min(left / 10).max(Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_two_thirds() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(
            renewal_due(t0, t0 + Duration::from_secs(300)),
            t0 + Duration::from_secs(200)
        );
        assert_eq!(renewal_due(t0, t0 - Duration::from_secs(5)), t0);
        let day = Duration::from_secs(86_400);
        assert_eq!(renewal_due(t0, t0 + day), t0 + day * 2 / 3);
    }

    #[test]
    fn retry_delay_is_bounded() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let far = now + Duration::from_secs(86_400);
        assert_eq!(renewal_retry_delay(0, now, far), Duration::from_secs(1));
        assert_eq!(renewal_retry_delay(3, now, far), Duration::from_secs(8));
        assert_eq!(renewal_retry_delay(30, now, far), Duration::from_secs(60));
        let near = now + Duration::from_secs(5);
        assert_eq!(
            renewal_retry_delay(5, now, near),
            Duration::from_millis(500)
        );
        assert_eq!(renewal_retry_delay(5, now, now), Duration::from_millis(100));
    }
}
