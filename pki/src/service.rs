//! The control plane's identity service: the CA, the identity database, the
//! revocation set and the server certificate, behind one `Send + Sync` type.
//!
//! Methods do blocking work (SQLite, signing; a few milliseconds): call them
//! from `tokio::task::spawn_blocking` in async code. The TLS configs it hands
//! out share its revocation set and server certificate, so a revocation or a
//! server-certificate rotation applies to the next handshake of every config.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;

use crate::ca::{CaError, CaSource, CertificateAuthority, IssuedCertificate};
use crate::csr::{CsrError, ParsedCsr};
use crate::fingerprint::Fingerprint;
use crate::identity::{AgentId, EnvironmentId, PeerIdentity};
use crate::revocation::RevocationSet;
use crate::store::{AgentRecord, IdentityStore, RedeemError, StoreError};
use crate::tls::{SwappableServerCert, TlsError};
use crate::tokens::{CreatedToken, JoinToken, TokenError};
use crate::util::{create_private_dir, unix_seconds};

/// Longest TTL a join token may have.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default agent certificate lifetime.
pub const DEFAULT_AGENT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Default server certificate lifetime (re-issued at two thirds by the app).
pub const DEFAULT_SERVER_CERT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// Inputs to [`IdentityService::open`].
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    /// Control-plane data directory; the database is `<data_dir>/identity.db`.
    pub data_dir: PathBuf,
    /// Where the CA comes from.
    pub ca: CaSource,
    /// DNS names / IP addresses for the server certificate's SANs.
    pub server_names: Vec<String>,
    /// Lifetime of agent certificates.
    pub agent_cert_lifetime: Duration,
    /// Lifetime of the server certificate.
    pub server_cert_lifetime: Duration,
}

impl IdentitySettings {
    /// Defaults for `data_dir`: managed CA in `<data_dir>/pki`, server names
    /// `localhost` and `127.0.0.1`, default lifetimes.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            ca: CaSource::Managed {
                dir: data_dir.join("pki"),
            },
            data_dir,
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            agent_cert_lifetime: DEFAULT_AGENT_CERT_LIFETIME,
            server_cert_lifetime: DEFAULT_SERVER_CERT_LIFETIME,
        }
    }
}

/// Failures of the service itself (not the peer's fault).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The CA could not be loaded, created or used.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The identity database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A TLS config could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A token TTL of zero or above [`MAX_TOKEN_TTL`].
    #[error("token ttl must be between 1 second and {} seconds", MAX_TOKEN_TTL.as_secs())]
    BadTtl,
}

/// Why an enrollment was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The token is malformed, unknown, expired or used (peer's fault).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The CSR is unacceptable (peer's fault).
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// Our side failed (not the peer's fault; retry may work).
    #[error("enrollment failed on the server: {0}")]
    Internal(String),
}

/// Why a renewal was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenewError {
    /// The agent is revoked (its connection should be closed).
    #[error("agent {0} is revoked")]
    Revoked(AgentId),
    /// The agent id was never enrolled here.
    #[error("agent {0} is not enrolled")]
    UnknownAgent(AgentId),
    /// The CSR is unacceptable (peer's fault).
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// Our side failed.
    #[error("renewal failed on the server: {0}")]
    Internal(String),
}

/// A successful enrollment.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// The new agent.
    pub agent_id: AgentId,
    /// Its environment.
    pub environment_id: EnvironmentId,
    /// Public id of the token used.
    pub token_id: String,
    /// Its certificate chain.
    pub certificate: IssuedCertificate,
}

/// The identity service. See the module docs.
#[derive(Debug)]
pub struct IdentityService {
    ca: CertificateAuthority,
    store: Mutex<IdentityStore>,
    revocations: RevocationSet,
    server_cert: SwappableServerCert,
    server_not_after: Mutex<SystemTime>,
    settings: IdentitySettings,
}

impl IdentityService {
    /// Load or create the CA, open the database, load the revocation set and
    /// issue a fresh server certificate.
    pub fn open(settings: IdentitySettings) -> Result<Self, ServiceError> {
        create_private_dir(&settings.data_dir).map_err(|source| ServiceError::DataDir {
            path: settings.data_dir.clone(),
            source,
        })?;
        let ca = CertificateAuthority::load_or_create(&settings.ca)?;
        let store = IdentityStore::open(&settings.data_dir.join("identity.db"))?;
        let revocations = RevocationSet::from_ids(store.revoked_agents()?);
        let server = ca.issue_server(&settings.server_names, settings.server_cert_lifetime)?;
        Ok(Self {
            server_cert: SwappableServerCert::new(&server),
            server_not_after: Mutex::new(server.not_after),
            ca,
            store: Mutex::new(store),
            revocations,
            settings,
        })
    }

    fn store(&self) -> std::sync::MutexGuard<'_, IdentityStore> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (transactions roll back on drop): keep going.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The settings this service was opened with.
    pub fn settings(&self) -> &IdentitySettings {
        &self.settings
    }

    /// The CA.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// `sha256:<hex>` of the CA certificate: what agents pin.
    pub fn ca_fingerprint(&self) -> Fingerprint {
        self.ca.fingerprint()
    }

    /// The CA certificate (DER).
    pub fn ca_cert_der(&self) -> &CertificateDer<'static> {
        self.ca.cert_der()
    }

    /// The shared revocation set (what the tunnel verifier consults).
    pub fn revocations(&self) -> RevocationSet {
        self.revocations.clone()
    }

    /// The server certificate the TLS configs present.
    pub fn server_cert(&self) -> SwappableServerCert {
        self.server_cert.clone()
    }

    /// Expiry of the current server certificate.
    pub fn server_cert_not_after(&self) -> SystemTime {
        *self
            .server_not_after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Issue a new server certificate and present it on future handshakes.
    pub fn rotate_server_cert(&self) -> Result<SystemTime, ServiceError> {
        let server = self.ca.issue_server(
            &self.settings.server_names,
            self.settings.server_cert_lifetime,
        )?;
        self.server_cert.swap(&server);
        *self
            .server_not_after
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = server.not_after;
        Ok(server.not_after)
    }

    /// The tunnel's server config (see [`crate::tls::tunnel_server_config`]).
    pub fn tunnel_server_config(&self, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
        crate::tls::tunnel_server_config(
            self.ca.cert_der(),
            &self.server_cert,
            self.revocations.clone(),
            alpn,
        )
    }

    /// The tunnel's server config for one incoming connection from
    /// `remote_addr`: identical checks, but a rejected client certificate is
    /// logged (once, at WARN) with the remote address as well as the claimed
    /// identity. Cheap enough to build per connection (quinn:
    /// `Incoming::accept_with`; TCP: a `TlsAcceptor` per connection).
    pub fn tunnel_server_config_for_peer(
        &self,
        alpn: &[&[u8]],
        remote_addr: std::net::SocketAddr,
    ) -> Result<rustls::ServerConfig, TlsError> {
        let verifier =
            crate::tls::AgentCertVerifier::new(self.ca.cert_der(), self.revocations.clone())?
                .for_peer(remote_addr);
        crate::tls::tunnel_server_config_with(verifier, &self.server_cert, alpn)
    }

    /// The enrollment listener's server config.
    pub fn enroll_server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        crate::tls::enroll_server_config(&self.server_cert)
    }

    /// Create a join token for `environment_id`, valid for `ttl`.
    pub fn create_token(
        &self,
        environment_id: &EnvironmentId,
        ttl: Duration,
    ) -> Result<CreatedToken, ServiceError> {
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(ServiceError::BadTtl);
        }
        let token = JoinToken::generate();
        let hash = token.hash();
        let token_id = format!("tok_{}", &hash[..16]);
        let now = SystemTime::now();
        let expires_at = now + ttl;
        self.store()
            .insert_token(&hash, &token_id, environment_id, now, expires_at)?;
        tracing::info!(token_id, environment_id = %environment_id, ttl_seconds = ttl.as_secs(), "join token created");
        Ok(CreatedToken {
            token,
            token_id,
            environment_id: environment_id.clone(),
            expires_at,
        })
    }

    /// Enroll a new agent: check the CSR, redeem the token (single use),
    /// assign an agent id, issue its certificate. `peer` is recorded.
    /// Nothing is logged here; the caller logs the outcome once.
    pub fn enroll(
        &self,
        token: &str,
        csr_pem: &str,
        peer: Option<&str>,
    ) -> Result<Enrollment, EnrollError> {
        let token = JoinToken::parse(token)?;
        // CSR first: a bad CSR must not burn the token.
        let csr = ParsedCsr::from_pem(csr_pem)?;
        let now = SystemTime::now();
        let agent_id = AgentId::generate();
        let lifetime = self.settings.agent_cert_lifetime;
        let mut issued = None;
        let mut token_id = String::new();
        let result = self
            .store()
            .redeem_token(&token.hash(), now, |redeemed| {
                let cert =
                    self.ca
                        .issue_agent(&agent_id, &redeemed.environment_id, &csr, lifetime)?;
                token_id = redeemed.token_id.clone();
                let record = AgentRecord {
                    agent_id: agent_id.clone(),
                    environment_id: redeemed.environment_id.clone(),
                    enrolled_at: unix_seconds(now),
                    enrolled_from: peer.map(str::to_owned),
                    cert_serial: cert.serial.clone(),
                    cert_not_after: unix_seconds(cert.not_after),
                    revoked_at: None,
                };
                issued = Some(cert);
                Ok::<_, CaError>(record)
            })
            .map_err(|e| EnrollError::Internal(e.to_string()))?;
        match result {
            Ok(record) => {
                let certificate = issued.ok_or_else(|| {
                    EnrollError::Internal("certificate missing after issuance".into())
                })?;
                Ok(Enrollment {
                    agent_id: record.agent_id,
                    environment_id: record.environment_id,
                    token_id,
                    certificate,
                })
            }
            Err(RedeemError::Token(e)) => Err(EnrollError::Token(e)),
            Err(RedeemError::Register(e)) => Err(EnrollError::Internal(e.to_string())),
        }
    }

    /// Re-issue a certificate for a connected agent, for the key in `csr_der`
    /// (DER PKCS#10). `peer` must come from the verified peer certificate of
    /// the live connection ([`crate::peer_identity`]); the new certificate
    /// names the same agent and environment, with a full lifetime.
    pub fn renew(
        &self,
        peer: &PeerIdentity,
        csr_der: &[u8],
    ) -> Result<IssuedCertificate, RenewError> {
        if self.revocations.is_revoked(&peer.agent_id) {
            return Err(RenewError::Revoked(peer.agent_id.clone()));
        }
        let csr = ParsedCsr::from_der(csr_der)?;
        let store = self.store();
        let record = store
            .agent(&peer.agent_id)
            .map_err(|e| RenewError::Internal(e.to_string()))?
            .ok_or_else(|| RenewError::UnknownAgent(peer.agent_id.clone()))?;
        if record.revoked_at.is_some() {
            return Err(RenewError::Revoked(peer.agent_id.clone()));
        }
        let cert = self
            .ca
            .issue_agent(
                &record.agent_id,
                &record.environment_id,
                &csr,
                self.settings.agent_cert_lifetime,
            )
            .map_err(|e| RenewError::Internal(e.to_string()))?;
        store
            .record_certificate(&record.agent_id, &cert.serial, cert.not_after)
            .map_err(|e| RenewError::Internal(e.to_string()))?;
        Ok(cert)
    }

    /// Revoke an agent: persisted first, then added to the revocation set (so
    /// the next handshake is refused). Closing its live connections is the
    /// caller's job (the gateway). Returns false if it was already revoked.
    pub fn revoke(&self, agent_id: &AgentId) -> Result<bool, ServiceError> {
        let newly = self.store().revoke(agent_id, SystemTime::now())?;
        self.revocations.insert(agent_id.clone());
        Ok(newly)
    }

    /// Every enrolled agent.
    pub fn agents(&self) -> Result<Vec<AgentRecord>, ServiceError> {
        Ok(self.store().agents()?)
    }
}
