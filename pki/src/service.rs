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
use crate::store::{AgentRecord, IdentityStore, RedeemError, StoreError, TokenRevocation};
use crate::tls::{SwappableServerCert, TlsError};
use crate::tokens::{CreatedToken, JoinToken, TokenError, TokenRecord};
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
    /// The token is malformed, unknown, expired, used or revoked (peer's fault).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The CSR is unacceptable (peer's fault).
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// Our side failed (not the peer's fault; retry may work).
    #[error("enrollment failed on the server: {0}")]
    Internal(ServerFault),
}

/// What failed on our side while enrolling or renewing an agent (not the
/// peer's fault; a retry may work).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerFault {
    /// The identity database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The CA could not issue the certificate.
    #[error(transparent)]
    Issue(#[from] CaError),
    /// The issuing callback ran, yet left no certificate (a bug).
    #[error("certificate missing after issuance")]
    MissingCertificate,
    /// The caller's task running the operation did not finish (it panicked
    /// or was cancelled).
    #[error("{what} task failed: {source}")]
    Task {
        /// Which operation (`enroll`).
        what: &'static str,
        /// Why the task ended.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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
    Internal(ServerFault),
}

/// Why a join token could not be revoked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevokeTokenError {
    /// No token has this id.
    #[error(
        "no join token with id {token_id} (`control-plane tokens list --all` lists every token)"
    )]
    Unknown {
        /// The id asked for.
        token_id: String,
    },
    /// The token already enrolled an agent: revoking the token would change
    /// nothing; the agent's identity is what must be revoked.
    #[error("join token {token_id} was already used by agent {used_by}; revoke the agent instead (`control-plane agents revoke {used_by}`)")]
    AlreadyUsed {
        /// The token.
        token_id: String,
        /// The agent it enrolled.
        used_by: AgentId,
        /// When, Unix seconds.
        used_at: i64,
    },
    /// The identity database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A revoked join token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RevokedToken {
    /// The token.
    pub token_id: String,
    /// When it was revoked, Unix seconds (the first revocation's time when
    /// it was already revoked).
    pub revoked_at: i64,
    /// False if it had already been revoked (revoking is idempotent).
    pub newly_revoked: bool,
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

/// An enrollment request that passed the checks that need no database:
/// the token is shaped like one, the CSR is valid, and the agent id the
/// enrollment will have is chosen (so a shared catalog can be asked to
/// claim the token for it first).
#[derive(Debug)]
pub struct PreparedEnrollment {
    token_hash: String,
    agent_id: AgentId,
    csr: ParsedCsr,
}

impl PreparedEnrollment {
    /// Check `token` and `csr_pem`. The CSR is checked before anything
    /// touches the token, so a bad CSR never burns one.
    pub fn new(token: &str, csr_pem: &str) -> Result<Self, EnrollError> {
        let token = JoinToken::parse(token)?;
        let csr = ParsedCsr::from_pem(csr_pem)?;
        Ok(Self {
            token_hash: token.hash(),
            agent_id: AgentId::generate(),
            csr,
        })
    }

    /// The token's hash (what the databases hold).
    pub fn token_hash(&self) -> &str {
        &self.token_hash
    }

    /// The id the agent gets if this enrollment succeeds.
    pub fn agent_id(&self) -> &AgentId {
        &self.agent_id
    }
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

    /// Join tokens, newest first, with their state now: only the active ones
    /// (usable for enrollment), or every token ever created with
    /// `include_finished` (expired, used and revoked ones too). Never the
    /// secret or its hash.
    pub fn tokens(&self, include_finished: bool) -> Result<Vec<TokenRecord>, ServiceError> {
        let mut tokens = self.store().tokens(SystemTime::now())?;
        if !include_finished {
            tokens.retain(|t| t.state.is_active());
        }
        Ok(tokens)
    }

    /// Revoke the join token `token_id` so it can no longer enroll an agent
    /// (enrollment then fails with [`TokenError::Revoked`]). Unused tokens,
    /// active or expired, can be revoked; revoking a revoked token succeeds
    /// again and changes nothing (`newly_revoked` false); a used token is
    /// refused with [`RevokeTokenError::AlreadyUsed`].
    pub fn revoke_token(&self, token_id: &str) -> Result<RevokedToken, RevokeTokenError> {
        let outcome = self.store().revoke_token(token_id, SystemTime::now())?;
        let (revoked_at, newly_revoked) = match outcome {
            TokenRevocation::Revoked { revoked_at } => (revoked_at, true),
            TokenRevocation::AlreadyRevoked { revoked_at } => (revoked_at, false),
            TokenRevocation::AlreadyUsed { used_by, used_at } => {
                return Err(RevokeTokenError::AlreadyUsed {
                    token_id: token_id.to_owned(),
                    used_by,
                    used_at,
                })
            }
            TokenRevocation::Unknown => {
                return Err(RevokeTokenError::Unknown {
                    token_id: token_id.to_owned(),
                })
            }
        };
        if newly_revoked {
            tracing::info!(token_id, "join token revoked");
        }
        Ok(RevokedToken {
            token_id: token_id.to_owned(),
            revoked_at,
            newly_revoked,
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
        self.enroll_prepared(PreparedEnrollment::new(token, csr_pem)?, peer, None)
    }

    /// Enroll as [`IdentityService::enroll`] does, from a checked request.
    /// `shared`: the token as the shared catalog holds it, already claimed
    /// there for `prepared.agent_id()` by the caller; it is taken into this
    /// replica's database first when it was made at another replica. Its
    /// state is not taken in: the local checks still apply (a token revoked
    /// here is refused here).
    pub fn enroll_prepared(
        &self,
        prepared: PreparedEnrollment,
        peer: Option<&str>,
        shared: Option<&TokenRecord>,
    ) -> Result<Enrollment, EnrollError> {
        let PreparedEnrollment {
            token_hash,
            agent_id,
            csr,
        } = prepared;
        let now = SystemTime::now();
        let lifetime = self.settings.agent_cert_lifetime;
        let mut issued = None;
        let mut token_id = String::new();
        let mut store = self.store();
        if let Some(t) = shared {
            store
                .import_token(
                    &token_hash,
                    &t.token_id,
                    &t.environment_id,
                    t.created_at,
                    t.expires_at,
                )
                .map_err(|e| EnrollError::Internal(e.into()))?;
        }
        let result = store
            .redeem_token(&token_hash, now, |redeemed| {
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
            .map_err(|e| EnrollError::Internal(e.into()))?;
        match result {
            Ok(record) => {
                let certificate =
                    issued.ok_or(EnrollError::Internal(ServerFault::MissingCertificate))?;
                Ok(Enrollment {
                    agent_id: record.agent_id,
                    environment_id: record.environment_id,
                    token_id,
                    certificate,
                })
            }
            Err(RedeemError::Token(e)) => Err(EnrollError::Token(e)),
            Err(RedeemError::Register(e)) => Err(EnrollError::Internal(e.into())),
        }
    }

    /// Every join token made or taken in here, with its hash (to share with
    /// the other replicas; the hash, never the token).
    pub fn tokens_with_hashes(&self) -> Result<Vec<(String, TokenRecord)>, ServiceError> {
        Ok(self.store().tokens_with_hashes(SystemTime::now())?)
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
            .map_err(|e| RenewError::Internal(e.into()))?
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
            .map_err(|e| RenewError::Internal(e.into()))?;
        store
            .record_certificate(&record.agent_id, &cert.serial, cert.not_after)
            .map_err(|e| RenewError::Internal(e.into()))?;
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

    /// The agent as this replica's identity database knows it.
    pub fn agent(&self, agent_id: &AgentId) -> Result<Option<AgentRecord>, ServiceError> {
        Ok(self.store().agent(agent_id)?)
    }

    /// Take in an agent enrolled, renewed or revoked at another replica
    /// (read from the shared catalog): stored locally so that this replica
    /// renews it; a revoked one joins the revocation set at once.
    pub fn import_agent(&self, agent: &AgentRecord) -> Result<(), ServiceError> {
        self.store().import_agent(agent)?;
        if agent.revoked_at.is_some() {
            self.revocations.insert(agent.agent_id.clone());
        }
        Ok(())
    }

    /// Every enrolled agent.
    pub fn agents(&self) -> Result<Vec<AgentRecord>, ServiceError> {
        Ok(self.store().agents()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::TokenState;

    fn service(dir: &std::path::Path) -> IdentityService {
        IdentityService::open(IdentitySettings::new(dir)).unwrap()
    }

    fn env(name: &str) -> EnvironmentId {
        EnvironmentId::parse(name).unwrap()
    }

    fn csr() -> String {
        crate::agent::PendingKey::generate().unwrap().csr_pem
    }

    #[test]
    fn list_shows_active_tokens_newest_first_and_all_with_include_finished() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        assert!(svc.tokens(true).unwrap().is_empty());
        let a = svc
            .create_token(&env("env_a"), Duration::from_secs(600))
            .unwrap();
        let b = svc
            .create_token(&env("env_b"), Duration::from_secs(600))
            .unwrap();
        let c = svc
            .create_token(&env("env_c"), Duration::from_secs(600))
            .unwrap();

        let listed = svc.tokens(false).unwrap();
        let ids: Vec<&str> = listed.iter().map(|t| t.token_id.as_str()).collect();
        assert_eq!(ids, [&c.token_id, &b.token_id, &a.token_id]);
        assert!(listed.iter().all(|t| t.state == TokenState::Active));
        assert_eq!(listed[2].environment_id, env("env_a"));
        assert!(listed[0].expires_at > listed[0].created_at);

        // Use one, revoke one: the default list shows only the third.
        let enrolled = svc.enroll(a.token.expose(), &csr(), None).unwrap();
        let revoked = svc.revoke_token(&b.token_id).unwrap();
        assert!(revoked.newly_revoked);
        let active = svc.tokens(false).unwrap();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].token_id, c.token_id);

        let all = svc.tokens(true).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(
            all[1].state,
            TokenState::Revoked {
                revoked_at: revoked.revoked_at
            }
        );
        assert!(
            matches!(&all[2].state, TokenState::Used { used_by, .. } if *used_by == enrolled.agent_id),
            "{:?}",
            all[2]
        );

        // Nothing listed reveals a secret or its hash.
        let dump = format!("{all:?}{}", serde_json::to_string(&all).unwrap());
        for t in [&a, &b, &c] {
            assert!(!dump.contains(t.token.expose()), "plaintext leaked");
            assert!(!dump.contains(&t.token.hash()), "hash leaked");
        }
        // The JSON shape: a flat object with a `state` tag.
        let v = serde_json::to_value(&all[1]).unwrap();
        assert_eq!(v["state"], "revoked");
        assert_eq!(v["revoked_at"], revoked.revoked_at);
        assert_eq!(v["environment_id"], "env_b");
    }

    #[test]
    fn a_revoked_token_cannot_enroll() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let t = svc
            .create_token(&env("env_r"), Duration::from_secs(600))
            .unwrap();
        svc.revoke_token(&t.token_id).unwrap();
        let err = svc.enroll(t.token.expose(), &csr(), None).unwrap_err();
        assert!(
            matches!(&err, EnrollError::Token(TokenError::Revoked { token_id }) if *token_id == t.token_id),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("join token {} was revoked", t.token_id)
        );
        assert!(svc.agents().unwrap().is_empty(), "no agent registered");
        // Still revoked (not used) afterwards.
        assert!(matches!(
            svc.tokens(true).unwrap()[0].state,
            TokenState::Revoked { .. }
        ));
    }

    #[test]
    fn revoke_errors_and_idempotence() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());

        let err = svc.revoke_token("tok_0123456789abcdef").unwrap_err();
        assert!(
            matches!(&err, RevokeTokenError::Unknown { token_id } if token_id == "tok_0123456789abcdef"),
            "{err:?}"
        );
        assert!(err.to_string().contains("tok_0123456789abcdef"), "{err}");

        let used = svc
            .create_token(&env("env_e"), Duration::from_secs(600))
            .unwrap();
        let agent = svc
            .enroll(used.token.expose(), &csr(), None)
            .unwrap()
            .agent_id;
        let err = svc.revoke_token(&used.token_id).unwrap_err();
        assert!(
            matches!(&err, RevokeTokenError::AlreadyUsed { token_id, used_by, .. } if *token_id == used.token_id && *used_by == agent),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(agent.as_str()) && msg.contains("agents revoke"),
            "{msg}"
        );
        // The used token is still recorded as used.
        assert!(matches!(
            svc.tokens(true).unwrap()[0].state,
            TokenState::Used { .. }
        ));

        let t = svc
            .create_token(&env("env_e"), Duration::from_secs(600))
            .unwrap();
        let first = svc.revoke_token(&t.token_id).unwrap();
        let second = svc.revoke_token(&t.token_id).unwrap();
        assert!(first.newly_revoked);
        assert!(!second.newly_revoked);
        assert_eq!(
            first.revoked_at, second.revoked_at,
            "first revocation time kept"
        );
    }
}
