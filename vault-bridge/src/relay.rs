//! What the control plane relays to the bridge (through the agent), and the
//! one place the egress proxy gets a secret from.
//!
//! - `PutCredential` stores a vault credential's fields in the bridge's
//!   secret backend (the encrypted file or the customer's OpenBao/Vault).
//! - `ForgetCredential` deletes a relayed secret; when the credential was
//!   archived or deleted it is also *revoked*: recorded in
//!   `<data_dir>/revoked-credentials.json` (atomic writes, survives restarts)
//!   and refused on every later use, even when its secret lives at a
//!   customer `airlock.kv_path` that Airlock never deletes.
//! - `PutSessionToken` / `ForgetSessionToken` hold a `github_repository`
//!   resource's Git token for that session and resource only, sealed in
//!   their own encrypted store (`<data_dir>/session-tokens/`, the file
//!   backend's AEAD and atomic writes), so a bridge restart keeps them.
//!   A `ForgetSessionToken` without a resource ends the session: its id goes
//!   into `<data_dir>/ended-sessions.json` ([`EndedSessions`], atomic writes,
//!   the last [`MAX_ENDED_SESSIONS`]) and the agent channel cuts its
//!   sandboxes' egress (`agent_channel::end_session`).
//!
//! [`BridgeSecrets`] is the proxy's [`SecretSource`]: revocations first,
//! then the session-token store (a [`CredentialRef`] without a vault is a
//! repository token, its `credential_id` the resource id), then the backend
//! (with the credential's KV path when its metadata names one). Every
//! lookup is bounded by the backend's own deadline.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use protocol::bridge::{BridgeErrorCode, FromBridge};
use protocol::relay::{
    ForgetCredential, ForgetReason, ForgetSessionToken, PutCredential, PutSessionToken,
};
use secrecy::ExposeSecret;

use crate::backend::{BackendError, SecretBackend};
use crate::config::FileConfig;
use crate::egress::{CredentialRef, SecretSource, SecretUnavailable, SecretValue};
use crate::lock;
use crate::secret::{Secret, SecretKey};

/// File of revoked credential ids in the data dir.
pub const REVOKED_FILE: &str = "revoked-credentials.json";

/// How much longer than the backend's own request timeout a proxy lookup
/// may take before it is abandoned (fail closed).
const LOOKUP_MARGIN: Duration = Duration::from_secs(1);
/// Directory of the sealed session-token store in the data dir.
pub const SESSION_TOKENS_DIR: &str = "session-tokens";
/// The one field a session token has.
const TOKEN_FIELD: &str = "token";

/// Why the relay state could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayStoreError {
    /// The revocation file could not be read, parsed or written.
    #[error("revoked credentials file {path}: {cause}")]
    Revocations {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: String,
    },
    /// The ended-sessions file could not be read, parsed or written.
    #[error("ended sessions file {path}: {cause}")]
    EndedSessions {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: String,
    },
    /// The session-token store could not be opened.
    #[error("session token store: {0}")]
    SessionTokens(#[from] BackendError),
}

/// Credentials archived or deleted through the API: refused from now on.
#[derive(Debug)]
pub struct Revocations {
    path: PathBuf,
    revoked: Mutex<BTreeMap<String, ForgetReason>>,
}

impl Revocations {
    /// Load `<data_dir>/revoked-credentials.json` (empty when missing).
    pub fn open(data_dir: &Path) -> Result<Self, RelayStoreError> {
        let path = data_dir.join(REVOKED_FILE);
        let err = |cause: String| RelayStoreError::Revocations {
            path: path.clone(),
            cause,
        };
        let revoked = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(err(e.to_string())),
        };
        Ok(Self {
            path,
            revoked: Mutex::new(revoked),
        })
    }

    /// Why `credential_id` is revoked, if it is.
    pub fn reason(&self, credential_id: &str) -> Option<ForgetReason> {
        lock(&self.revoked).get(credential_id).copied()
    }

    /// Revoke `credential_id` and persist it (atomic write, mode 0600).
    pub fn revoke(&self, credential_id: &str, reason: ForgetReason) -> Result<(), RelayStoreError> {
        let mut g = lock(&self.revoked);
        g.insert(credential_id.to_owned(), reason);
        let bytes = serde_json::to_vec_pretty(&*g).map_err(|e| RelayStoreError::Revocations {
            path: self.path.clone(),
            cause: e.to_string(),
        })?;
        crate::backend::file::write_atomic(&self.path, &bytes).map_err(|(path, e)| {
            RelayStoreError::Revocations {
                path,
                cause: e.to_string(),
            }
        })
    }
}

/// File of ended session ids in the data dir.
pub const ENDED_SESSIONS_FILE: &str = "ended-sessions.json";
/// How many ended sessions are remembered (the oldest are forgotten first).
pub const MAX_ENDED_SESSIONS: usize = 10_000;

/// Sessions archived or deleted through the API: their sandboxes get no
/// egress from now on, restarts included (a sandbox outlives its session
/// until the agent reaps it, and the agent re-sends `open_egress` to a
/// restarted bridge). Bounded to the last [`MAX_ENDED_SESSIONS`].
#[derive(Debug)]
pub struct EndedSessions {
    path: PathBuf,
    ended: Mutex<Vec<String>>,
}

impl EndedSessions {
    /// Load `<data_dir>/ended-sessions.json` (empty when missing).
    pub fn open(data_dir: &Path) -> Result<Self, RelayStoreError> {
        let path = data_dir.join(ENDED_SESSIONS_FILE);
        let ended = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| RelayStoreError::EndedSessions {
                    path: path.clone(),
                    cause: e.to_string(),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(RelayStoreError::EndedSessions {
                    path,
                    cause: e.to_string(),
                })
            }
        };
        Ok(Self {
            path,
            ended: Mutex::new(ended),
        })
    }

    /// Whether `session_id` ended.
    pub fn contains(&self, session_id: &str) -> bool {
        lock(&self.ended).iter().any(|s| s == session_id)
    }

    /// Record `session_id` as ended and persist it (atomic write, mode 0600).
    pub fn end(&self, session_id: &str) -> Result<(), RelayStoreError> {
        let mut g = lock(&self.ended);
        if g.iter().any(|s| s == session_id) {
            return Ok(());
        }
        g.push(session_id.to_owned());
        let over = g.len().saturating_sub(MAX_ENDED_SESSIONS);
        g.drain(..over);
        let bytes = serde_json::to_vec(&*g).map_err(|e| RelayStoreError::EndedSessions {
            path: self.path.clone(),
            cause: e.to_string(),
        })?;
        crate::backend::file::write_atomic(&self.path, &bytes).map_err(|(path, e)| {
            RelayStoreError::EndedSessions {
                path,
                cause: e.to_string(),
            }
        })
    }
}

/// The key a session token is sealed under: the session as the "vault", the
/// resource as the "credential".
fn token_key(session_id: &str, resource_id: &str) -> Result<SecretKey, String> {
    SecretKey::new(&format!("vlt_{session_id}"), &format!("vcrd_{resource_id}"))
        .map_err(|e| format!("session {session_id} resource {resource_id}: {e}"))
}

/// Everything the relay needs, shared by the agent channel and the proxy.
#[derive(Debug)]
pub struct Relay {
    backend: Arc<dyn SecretBackend>,
    tokens: Arc<dyn SecretBackend>,
    revocations: Revocations,
    ended_sessions: EndedSessions,
    /// resource id → session id of the tokens held (rebuilt from the store).
    token_sessions: Mutex<HashMap<String, String>>,
    /// credential id → KV path named by the control plane's metadata.
    kv_paths: Mutex<HashMap<String, String>>,
    /// (credential id, field) → the value last served to the proxy, so the
    /// audit scrubber knows values at customer KV paths it cannot list.
    served: Mutex<HashMap<(String, String), secrecy::SecretString>>,
    /// Outer bound of one proxy lookup (the backends' own deadline plus a
    /// margin): a lookup that overruns it fails closed.
    lookup_deadline: Duration,
}

impl Relay {
    /// Open the relay state in `data_dir`: the revocation file and the
    /// sealed session-token store (created on first use).
    pub async fn open(
        data_dir: &Path,
        backend: Arc<dyn SecretBackend>,
        request_timeout: Duration,
    ) -> Result<Self, RelayStoreError> {
        let revocations = Revocations::open(data_dir)?;
        let ended_sessions = EndedSessions::open(data_dir)?;
        let dir = data_dir.join(SESSION_TOKENS_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| {
            RelayStoreError::SessionTokens(BackendError::Other {
                subject: crate::backend::Subject::Open,
                backend: format!("session token store {}", dir.display()),
                cause: e.to_string(),
            })
        })?;
        let config = FileConfig {
            path: dir.join("tokens.sealed"),
            key: crate::backend::SecretSource::File(dir.join("tokens.key")),
            create_if_missing: true,
            request_timeout,
        };
        let tokens: Arc<dyn SecretBackend> =
            Arc::new(crate::backend::file::FileBackend::open(&config).await?);
        let mut token_sessions = HashMap::new();
        for (key, _) in tokens.list().await? {
            if let (Some(s), Some(r)) = (
                key.vault_id().strip_prefix("vlt_"),
                key.credential_id().strip_prefix("vcrd_"),
            ) {
                token_sessions.insert(r.to_owned(), s.to_owned());
            }
        }
        Ok(Self {
            backend,
            tokens,
            revocations,
            ended_sessions,
            token_sessions: Mutex::new(token_sessions),
            kv_paths: Mutex::new(HashMap::new()),
            served: Mutex::new(HashMap::new()),
            lookup_deadline: request_timeout + LOOKUP_MARGIN,
        })
    }

    /// Whether the bridge holds a token of `resource_id` for `session_id`.
    pub fn holds_token(&self, session_id: &str, resource_id: &str) -> bool {
        lock(&self.token_sessions)
            .get(resource_id)
            .is_some_and(|s| s == session_id)
    }

    /// Remember where the customer's Vault holds `credential_id`.
    pub fn set_kv_path(&self, credential_id: &str, kv_path: Option<&str>) {
        let mut g = lock(&self.kv_paths);
        match kv_path {
            Some(p) => g.insert(credential_id.to_owned(), p.to_owned()),
            None => g.remove(credential_id),
        };
    }

    /// The values the audit scrubber must know besides the backend's own
    /// list ([`crate::scrub`]): every session Git token held (labelled with
    /// its `sesrsc_…` resource id) and every value served to the proxy
    /// since start (labelled with its credential id). Never logged.
    pub async fn known_values(&self) -> Result<Vec<(String, secrecy::SecretString)>, BackendError> {
        let mut out: Vec<(String, secrecy::SecretString)> = lock(&self.served)
            .iter()
            .map(|((id, _), v)| (id.clone(), v.clone()))
            .collect();
        for (id, v) in crate::scrub::backend_values(&*self.tokens).await? {
            let label = id.strip_prefix("vcrd_").unwrap_or(&id).to_owned();
            out.push((label, v));
        }
        Ok(out)
    }

    /// Whether `session_id` ended (its sandboxes get no egress).
    pub fn session_ended(&self, session_id: &str) -> bool {
        self.ended_sessions.contains(session_id)
    }

    /// Record that `session_id` ended (archived or deleted through the API),
    /// persisted before it returns.
    pub fn end_session(&self, session_id: &str) -> Result<(), RelayStoreError> {
        self.ended_sessions.end(session_id)?;
        tracing::info!(%session_id, "session ended: its sandboxes get no egress from now on");
        Ok(())
    }

    /// Whether `credential_id` was archived or deleted.
    pub fn is_revoked(&self, credential_id: &str) -> bool {
        self.revocations.reason(credential_id).is_some()
    }

    /// Store a relayed credential.
    pub async fn put_credential(&self, p: &PutCredential) -> FromBridge {
        let key = match SecretKey::new(&p.vault_id, &p.credential_id) {
            Ok(k) => k,
            Err(e) => return FromBridge::error(BridgeErrorCode::InvalidRelay, e.to_string()),
        };
        if let Some(reason) = self.revocations.reason(&p.credential_id) {
            return FromBridge::error(
                BridgeErrorCode::InvalidRelay,
                format!(
                    "credential {} was {} and cannot be used again",
                    p.credential_id,
                    reason_word(reason)
                ),
            );
        }
        let mut secret = Secret::new();
        for (field, value) in &p.fields {
            if let Err(e) = secret.insert(field, value.expose().to_owned().into()) {
                return FromBridge::error(
                    BridgeErrorCode::InvalidRelay,
                    format!("credential {}: {e}", p.credential_id),
                );
            }
        }
        match self.backend.put(&key, &secret).await {
            Ok(()) => {
                tracing::info!(vault_id = %p.vault_id, credential_id = %p.credential_id, fields = ?secret.field_names().collect::<Vec<_>>(), "relayed credential stored");
                FromBridge::Relayed { held: true }
            }
            Err(e) => {
                tracing::warn!(credential_id = %p.credential_id, error = %e, "relayed credential not stored");
                FromBridge::error(BridgeErrorCode::Backend, e.to_string())
            }
        }
    }

    /// Forget (and, archived or deleted, revoke) a credential.
    pub async fn forget_credential(&self, f: &ForgetCredential) -> FromBridge {
        let key = match SecretKey::new(&f.vault_id, &f.credential_id) {
            Ok(k) => k,
            Err(e) => return FromBridge::error(BridgeErrorCode::InvalidRelay, e.to_string()),
        };
        if f.reason != ForgetReason::RolledBack {
            if let Err(e) = self.revocations.revoke(&f.credential_id, f.reason) {
                tracing::error!(credential_id = %f.credential_id, error = %e, "cannot record the revocation");
                return FromBridge::error(BridgeErrorCode::Io, e.to_string());
            }
        }
        let held = match self.backend.get(&key).await {
            Ok(_) => match self.backend.delete(&key).await {
                Ok(()) => true,
                Err(e) => return FromBridge::error(BridgeErrorCode::Backend, e.to_string()),
            },
            Err(BackendError::NotFound { .. }) => false,
            Err(e) => return FromBridge::error(BridgeErrorCode::Backend, e.to_string()),
        };
        tracing::info!(vault_id = %f.vault_id, credential_id = %f.credential_id, reason = ?f.reason, held, "credential forgotten");
        FromBridge::Relayed { held }
    }

    /// Hold a session's repository token.
    pub async fn put_session_token(&self, p: &PutSessionToken) -> FromBridge {
        let key = match token_key(&p.session_id, &p.resource_id) {
            Ok(k) => k,
            Err(e) => return FromBridge::error(BridgeErrorCode::InvalidRelay, e),
        };
        if let Some(other) = lock(&self.token_sessions).get(&p.resource_id) {
            if other != &p.session_id {
                return FromBridge::error(
                    BridgeErrorCode::InvalidRelay,
                    format!("resource {} belongs to another session", p.resource_id),
                );
            }
        }
        let mut secret = Secret::new();
        if let Err(e) = secret.insert(TOKEN_FIELD, p.token.expose().to_owned().into()) {
            return FromBridge::error(BridgeErrorCode::InvalidRelay, e.to_string());
        }
        match self.tokens.put(&key, &secret).await {
            Ok(()) => {
                lock(&self.token_sessions).insert(p.resource_id.clone(), p.session_id.clone());
                tracing::info!(session_id = %p.session_id, resource_id = %p.resource_id, "repository token held");
                FromBridge::Relayed { held: true }
            }
            Err(e) => FromBridge::error(BridgeErrorCode::Backend, e.to_string()),
        }
    }

    /// Drop one or all of a session's repository tokens.
    pub async fn forget_session_token(&self, f: &ForgetSessionToken) -> FromBridge {
        let resources: Vec<String> = {
            let g = lock(&self.token_sessions);
            g.iter()
                .filter(|(r, s)| {
                    *s == &f.session_id && f.resource_id.as_ref().is_none_or(|want| want == *r)
                })
                .map(|(r, _)| r.clone())
                .collect()
        };
        let mut held = false;
        for r in resources {
            let key = match token_key(&f.session_id, &r) {
                Ok(k) => k,
                Err(e) => return FromBridge::error(BridgeErrorCode::InvalidRelay, e),
            };
            match self.tokens.delete(&key).await {
                Ok(()) | Err(BackendError::NotFound { .. }) => {}
                Err(e) => return FromBridge::error(BridgeErrorCode::Backend, e.to_string()),
            }
            lock(&self.token_sessions).remove(&r);
            held = true;
        }
        tracing::info!(session_id = %f.session_id, resource_id = ?f.resource_id, held, "repository token(s) forgotten");
        FromBridge::Relayed { held }
    }
}

fn reason_word(r: ForgetReason) -> &'static str {
    match r {
        ForgetReason::Archived => "archived",
        ForgetReason::Deleted => "deleted",
        ForgetReason::RolledBack => "rolled back",
    }
}

/// The proxy's secret source: revocations, session tokens, then the backend.
#[derive(Debug, Clone)]
pub struct BridgeSecrets(pub Arc<Relay>);

#[async_trait]
impl SecretSource for BridgeSecrets {
    async fn secret(&self, c: &CredentialRef) -> Result<SecretValue, SecretUnavailable> {
        let relay = &self.0;
        let unavailable = |cause: String| SecretUnavailable {
            credential_id: c.credential_id.clone(),
            field: c.field.clone(),
            cause,
        };
        if let Some(reason) = relay.revocations.reason(&c.credential_id) {
            return Err(unavailable(format!(
                "the credential was {}",
                reason_word(reason)
            )));
        }
        let (store, key) = match &c.vault_id {
            None => {
                let session = lock(&relay.token_sessions)
                    .get(&c.credential_id)
                    .cloned()
                    .ok_or_else(|| {
                        unavailable("the bridge holds no token for this repository resource".into())
                    })?;
                (
                    &relay.tokens,
                    token_key(&session, &c.credential_id).map_err(unavailable)?,
                )
            }
            Some(vault) => {
                let mut key = SecretKey::new(vault, &c.credential_id)
                    .map_err(|e| unavailable(e.to_string()))?;
                if let Some(p) = lock(&relay.kv_paths).get(&c.credential_id).cloned() {
                    key = key
                        .with_kv_path(&p)
                        .map_err(|e| unavailable(e.to_string()))?;
                }
                (&relay.backend, key)
            }
        };
        let secret = tokio::time::timeout(relay.lookup_deadline, store.get(&key))
            .await
            .map_err(|_| {
                unavailable(format!(
                    "the secret backend did not answer within {:?}",
                    relay.lookup_deadline
                ))
            })?
            .map_err(|e| unavailable(e.to_string()))?;
        let value = secret
            .get(&c.field)
            .ok_or_else(|| unavailable("the field is not stored".into()))?;
        lock(&relay.served).insert((c.credential_id.clone(), c.field.clone()), value.clone());
        Ok(SecretValue::new(value.expose_secret()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::relay::WireSecret;

    async fn relay(dir: &Path) -> Relay {
        let config = crate::config::Config::parse(
            &format!("[bridge]\ndata_dir = \"{}\"\n", dir.display()),
            Path::new("test.toml"),
        )
        .unwrap();
        let backend = crate::backend::open(&config.backend).await.unwrap();
        Relay::open(dir, backend, Duration::from_secs(5))
            .await
            .unwrap()
    }

    fn cref(vault: Option<&str>, id: &str, field: &str) -> CredentialRef {
        CredentialRef {
            vault_id: vault.map(str::to_owned),
            credential_id: id.into(),
            field: field.into(),
        }
    }

    /// A backend that never answers (a hung OpenBao behind a dead socket).
    #[derive(Debug)]
    struct Hung;

    #[async_trait]
    impl SecretBackend for Hung {
        async fn get(&self, _: &SecretKey) -> Result<Secret, BackendError> {
            std::future::pending().await
        }
        async fn put(&self, _: &SecretKey, _: &Secret) -> Result<(), BackendError> {
            std::future::pending().await
        }
        async fn delete(&self, _: &SecretKey) -> Result<(), BackendError> {
            std::future::pending().await
        }
        async fn list(&self) -> Result<Vec<(SecretKey, Vec<String>)>, BackendError> {
            Ok(Vec::new())
        }
        async fn health(&self) -> Result<(), BackendError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn ended_sessions_are_kept_across_a_restart_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let r = relay(dir.path()).await;
        assert!(!r.session_ended("sesn_a"));
        r.end_session("sesn_a").unwrap();
        r.end_session("sesn_a").unwrap();
        assert!(r.session_ended("sesn_a") && !r.session_ended("sesn_b"));
        let path = dir.path().join(ENDED_SESSIONS_FILE);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        drop(r);
        let r = relay(dir.path()).await;
        assert!(r.session_ended("sesn_a"), "kept across a restart");
        let ended = EndedSessions::open(dir.path()).unwrap();
        for i in 0..MAX_ENDED_SESSIONS {
            lock(&ended.ended).push(format!("sesn_fill{i}"));
        }
        ended.end("sesn_last").unwrap();
        let g = lock(&ended.ended);
        assert_eq!(g.len(), MAX_ENDED_SESSIONS);
        assert_eq!(
            g.first().map(String::as_str),
            Some("sesn_fill1"),
            "the oldest go first"
        );
        drop(g);
        std::fs::write(&path, b"not json").unwrap();
        let e = EndedSessions::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains(ENDED_SESSIONS_FILE), "{e}");
    }

    #[tokio::test]
    async fn a_hung_backend_fails_the_lookup_closed_within_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let r = Relay::open(dir.path(), Arc::new(Hung), Duration::from_millis(200))
            .await
            .unwrap();
        let src = BridgeSecrets(Arc::new(r));
        let started = std::time::Instant::now();
        let e = src
            .secret(&cref(Some("vlt_1"), "vcrd_hung", "token"))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "lookup hung");
        assert_eq!(e.credential_id, "vcrd_hung");
        assert!(e.to_string().contains("did not answer"), "{e}");
    }

    #[tokio::test]
    async fn relayed_credentials_are_served_until_revoked_and_stay_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let r = Arc::new(relay(dir.path()).await);
        let put = PutCredential {
            vault_id: "vlt_1".into(),
            credential_id: "vcrd_1".into(),
            fields: [("token".to_owned(), WireSecret::new("canary-relay"))].into(),
        };
        assert_eq!(
            r.put_credential(&put).await,
            FromBridge::Relayed { held: true }
        );
        let src = BridgeSecrets(r.clone());
        let c = cref(Some("vlt_1"), "vcrd_1", "token");
        assert_eq!(src.secret(&c).await.unwrap().expose(), "canary-relay");
        let forget = ForgetCredential {
            vault_id: "vlt_1".into(),
            credential_id: "vcrd_1".into(),
            reason: ForgetReason::Archived,
        };
        assert_eq!(
            r.forget_credential(&forget).await,
            FromBridge::Relayed { held: true }
        );
        let e = src.secret(&c).await.unwrap_err();
        assert!(e.to_string().contains("archived"), "{e}");
        assert!(!e.to_string().contains("canary"), "{e}");
        // A put after the revocation is refused; a restart keeps the revocation.
        assert!(matches!(
            r.put_credential(&put).await,
            FromBridge::Error {
                code: BridgeErrorCode::InvalidRelay,
                ..
            }
        ));
        drop(src);
        drop(r);
        let r2 = relay(dir.path()).await;
        assert!(r2.is_revoked("vcrd_1"));
        let bytes = std::fs::read(dir.path().join(REVOKED_FILE)).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("canary"));
    }

    #[tokio::test]
    async fn a_deleted_credential_is_refused_even_where_its_secret_remains() {
        // The secret lives at a customer KV path Airlock never deletes:
        // written straight into the backend, not relayed.
        let dir = tempfile::tempdir().unwrap();
        let r = Arc::new(relay(dir.path()).await);
        let key = SecretKey::new("vlt_kv", "vcrd_kv")
            .unwrap()
            .with_kv_path("team/api")
            .unwrap();
        let mut secret = Secret::new();
        secret
            .insert("token", "canary-kv".to_owned().into())
            .unwrap();
        r.backend.put(&key, &secret).await.unwrap();
        r.set_kv_path("vcrd_kv", Some("team/api"));
        let src = BridgeSecrets(r.clone());
        let c = cref(Some("vlt_kv"), "vcrd_kv", "token");
        assert_eq!(src.secret(&c).await.unwrap().expose(), "canary-kv");
        let f = ForgetCredential {
            vault_id: "vlt_kv".into(),
            credential_id: "vcrd_kv".into(),
            reason: ForgetReason::Deleted,
        };
        r.forget_credential(&f).await;
        // Put back behind the relay's back: still refused, revocation first.
        r.backend.put(&key, &secret).await.unwrap();
        let e = src.secret(&c).await.unwrap_err();
        assert!(e.to_string().contains("deleted"), "{e}");
        assert!(!e.to_string().contains("canary"), "{e}");
    }

    #[tokio::test]
    async fn a_rolled_back_credential_is_dropped_not_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let r = relay(dir.path()).await;
        let put = PutCredential {
            vault_id: "vlt_1".into(),
            credential_id: "vcrd_2".into(),
            fields: [("secret_value".to_owned(), WireSecret::new("v"))].into(),
        };
        r.put_credential(&put).await;
        let f = ForgetCredential {
            vault_id: "vlt_1".into(),
            credential_id: "vcrd_2".into(),
            reason: ForgetReason::RolledBack,
        };
        assert_eq!(
            r.forget_credential(&f).await,
            FromBridge::Relayed { held: true }
        );
        assert!(!r.is_revoked("vcrd_2"));
        assert_eq!(
            r.forget_credential(&f).await,
            FromBridge::Relayed { held: false }
        );
    }

    #[tokio::test]
    async fn session_tokens_are_per_session_sealed_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let r = relay(dir.path()).await;
        let put = |s: &str, res: &str| PutSessionToken {
            session_id: s.into(),
            resource_id: res.into(),
            url: "https://git.example.com/a/b.git".into(),
            token: WireSecret::new("canary-token-77"),
        };
        assert_eq!(
            r.put_session_token(&put("sesn_1", "sesrsc_1")).await,
            FromBridge::Relayed { held: true }
        );
        // Another session cannot take over the resource.
        assert!(matches!(
            r.put_session_token(&put("sesn_2", "sesrsc_1")).await,
            FromBridge::Error {
                code: BridgeErrorCode::InvalidRelay,
                ..
            }
        ));
        r.put_session_token(&put("sesn_1", "sesrsc_2")).await;
        assert!(r.holds_token("sesn_1", "sesrsc_1"));
        assert!(!r.holds_token("sesn_2", "sesrsc_1"));
        // Sealed on disk.
        for entry in std::fs::read_dir(dir.path().join(SESSION_TOKENS_DIR)).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(!String::from_utf8_lossy(&bytes).contains("canary-token-77"));
        }
        drop(r);
        let r = Arc::new(relay(dir.path()).await);
        assert!(r.holds_token("sesn_1", "sesrsc_2"));
        let src = BridgeSecrets(r.clone());
        let c = cref(None, "sesrsc_1", "token");
        assert_eq!(src.secret(&c).await.unwrap().expose(), "canary-token-77");
        // Ending the session drops all of its tokens.
        let all = ForgetSessionToken {
            session_id: "sesn_1".into(),
            resource_id: None,
        };
        assert_eq!(
            r.forget_session_token(&all).await,
            FromBridge::Relayed { held: true }
        );
        let e = src.secret(&c).await.unwrap_err();
        assert!(e.to_string().contains("no token"), "{e}");
        assert!(!r.holds_token("sesn_1", "sesrsc_2"));
        assert_eq!(
            r.forget_session_token(&all).await,
            FromBridge::Relayed { held: false }
        );
    }

    #[tokio::test]
    async fn bad_ids_are_typed_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let r = relay(dir.path()).await;
        let put = PutCredential {
            vault_id: "../etc".into(),
            credential_id: "vcrd_1".into(),
            fields: BTreeMap::new(),
        };
        assert!(matches!(
            r.put_credential(&put).await,
            FromBridge::Error {
                code: BridgeErrorCode::InvalidRelay,
                ..
            }
        ));
        let put = PutCredential {
            vault_id: "vlt_1".into(),
            credential_id: "vcrd_1".into(),
            fields: [("password".to_owned(), WireSecret::new("x"))].into(),
        };
        match r.put_credential(&put).await {
            FromBridge::Error { code, message } => {
                assert_eq!(code, BridgeErrorCode::InvalidRelay);
                assert!(message.contains("password"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
