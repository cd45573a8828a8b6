//! The bearer token of an MCP credential, and its refresh.
//!
//! Secrets are read through the relay's one secret source
//! ([`BridgeSecrets`]: revocations first, the credential's KV path when its
//! metadata names one): `token` of a `static_bearer`; `access_token`,
//! `refresh_token`, `client_secret` of an `mcp_oauth`.
//!
//! Refresh is single-flight per credential: an async mutex per credential
//! and a generation number. A caller that saw generation `g` and needs a new
//! token takes the mutex; if the generation moved on meanwhile it takes the
//! token the winner got, else it refreshes. A refresh that failed is not
//! repeated by the waiters of the same generation for [`FAILURE_HOLD`].
//! The new tokens are written back to the backend with the relay's
//! `put_credential` (a restart keeps them); the bridge's own expiry goes to
//! `<data_dir>/mcp-oauth-expiry.json` (no secret in it), tagged with the
//! `expires_at` the control plane sent, so a credential updated through the
//! API (new tag) wins over what the bridge refreshed.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::bridge::FromBridge;
use protocol::relay::{
    CredentialBinding, EgressCredential, OauthRefresh, PutCredential, WireSecret,
};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::http::AuditContext;
use super::oauth::{self, RawAnswer, RefreshError};
use super::target::{check_url, PlainHttp};
use crate::egress::{AuditOutcome, AuditSink, CredentialRef, SecretSource, SecretValue};
use crate::lock;
use crate::relay::{BridgeSecrets, Relay};

/// File of the bridge's own expiry times of refreshed tokens.
pub const EXPIRY_FILE: &str = "mcp-oauth-expiry.json";
/// How long a failed refresh answers the waiters of the same generation.
pub const FAILURE_HOLD: Duration = Duration::from_secs(5);

/// Why a credential's token could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Revoked, not held, backend down.
    #[error("{0}")]
    Unavailable(String),
    /// The refresh failed.
    #[error("credential {credential_id}: refresh failed: {source}")]
    Refresh {
        /// The credential.
        credential_id: String,
        /// Why.
        #[source]
        source: Arc<RefreshError>,
    },
}

/// A token to send and the generation it belongs to.
#[derive(Debug, Clone)]
pub struct Access {
    /// The bearer token.
    pub token: SecretValue,
    /// Refresh generation it came from (0: as relayed).
    pub generation: u64,
    /// When it expires, if known.
    pub expires_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ExpiryEntry {
    /// When the refreshed access token expires (RFC 3339).
    expires_at: Option<String>,
    /// The control plane's `expires_at` when the bridge refreshed.
    relayed_expires_at: Option<String>,
}

#[derive(Debug, Default)]
struct CredState {
    refresh: tokio::sync::Mutex<()>,
    inner: Mutex<CredInner>,
}

/// Tokens the bridge refreshed.
#[derive(Debug, Clone)]
struct Held {
    access: SecretValue,
    refresh: Option<SecretValue>,
    expires_at: Option<OffsetDateTime>,
    /// The control plane's `expires_at` when they were refreshed.
    tag: Option<String>,
}

#[derive(Debug, Default)]
struct CredInner {
    generation: u64,
    /// Tokens the bridge refreshed (used while the relayed tag is unchanged;
    /// they are also written back to the backend).
    refreshed: Option<Held>,
    last_failure: Option<(u64, Instant, Arc<RefreshError>)>,
}

/// The MCP credentials' tokens of one bridge.
#[derive(Debug)]
pub struct Tokens {
    relay: Arc<Relay>,
    secrets: BridgeSecrets,
    http: reqwest::Client,
    audit: Arc<dyn AuditSink>,
    expiry_file: Option<PathBuf>,
    plain_http: PlainHttp,
    margin: Duration,
    creds: Mutex<HashMap<String, Arc<CredState>>>,
    expiry: Mutex<BTreeMap<String, ExpiryEntry>>,
}

fn fmt_time(t: OffsetDateTime) -> Option<String> {
    t.format(&Rfc3339).ok()
}

fn relayed_expiry(c: &EgressCredential) -> Option<String> {
    match &c.binding {
        CredentialBinding::McpOauth { expires_at, .. } => expires_at.clone(),
        _ => None,
    }
}

/// The refresh settings of `c`, if it is an `mcp_oauth` with some.
pub fn refresh_settings(c: &EgressCredential) -> Option<&OauthRefresh> {
    match &c.binding {
        CredentialBinding::McpOauth { refresh, .. } => refresh.as_ref(),
        _ => None,
    }
}

/// The secret field holding `c`'s bearer token.
pub fn token_field(c: &EgressCredential) -> &'static str {
    match c.binding {
        CredentialBinding::McpOauth { .. } => "access_token",
        _ => "token",
    }
}

impl Tokens {
    /// Tokens read through `relay`, refreshed with `http`, expiry kept in
    /// `state_dir` (memory only without one).
    pub fn new(
        relay: Arc<Relay>,
        http: reqwest::Client,
        audit: Arc<dyn AuditSink>,
        state_dir: Option<PathBuf>,
        plain_http: PlainHttp,
        margin: Duration,
    ) -> Self {
        let expiry_file = state_dir.map(|d| d.join(EXPIRY_FILE));
        let expiry = expiry_file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            secrets: BridgeSecrets(relay.clone()),
            relay,
            http,
            audit,
            expiry_file,
            plain_http,
            margin,
            creds: Mutex::new(HashMap::new()),
            expiry: Mutex::new(expiry),
        }
    }

    fn state(&self, id: &str) -> Arc<CredState> {
        lock(&self.creds).entry(id.to_owned()).or_default().clone()
    }

    /// The tokens this bridge refreshed and holds in memory, labelled with
    /// their credential ids, for the audit scrubber ([`crate::scrub`]).
    pub fn held_values(&self) -> Vec<(String, secrecy::SecretString)> {
        let creds: Vec<(String, Arc<CredState>)> = lock(&self.creds)
            .iter()
            .map(|(id, st)| (id.clone(), st.clone()))
            .collect();
        let mut out = Vec::new();
        for (id, st) in creds {
            if let Some(held) = &lock(&st.inner).refreshed {
                out.push((id.clone(), held.access.expose().into()));
                if let Some(r) = &held.refresh {
                    out.push((id.clone(), r.expose().into()));
                }
            }
        }
        out
    }

    /// A secret field of `c` through the relay (revocations, KV path).
    pub async fn field(
        &self,
        c: &EgressCredential,
        field: &str,
    ) -> Result<SecretValue, TokenError> {
        self.relay
            .set_kv_path(&c.credential_id, c.kv_path.as_deref());
        self.secrets
            .secret(&CredentialRef {
                vault_id: Some(c.vault_id.clone()),
                credential_id: c.credential_id.clone(),
                field: field.to_owned(),
            })
            .await
            .map_err(|e| TokenError::Unavailable(e.to_string()))
    }

    /// Whether `c` has a refresh token stored (and refresh settings).
    pub async fn has_refresh_token(&self, c: &EgressCredential) -> bool {
        if refresh_settings(c).is_none() {
            return false;
        }
        let st = self.state(&c.credential_id);
        if lock(&st.inner)
            .refreshed
            .as_ref()
            .is_some_and(|r| r.refresh.is_some())
        {
            return true;
        }
        self.field(c, "refresh_token").await.is_ok()
    }

    /// The token to send now, as stored (no refresh).
    pub async fn current(&self, c: &EgressCredential) -> Result<Access, TokenError> {
        if self.relay.is_revoked(&c.credential_id) {
            return Err(TokenError::Unavailable(format!(
                "credential {} was archived or deleted and cannot be used",
                c.credential_id
            )));
        }
        let st = self.state(&c.credential_id);
        let tag = relayed_expiry(c);
        {
            let g = lock(&st.inner);
            if let Some(h) = g.refreshed.as_ref().filter(|h| h.tag == tag) {
                return Ok(Access {
                    token: h.access.clone(),
                    generation: g.generation,
                    expires_at: h.expires_at,
                });
            }
        }
        let token = self.field(c, token_field(c)).await?;
        let generation = lock(&st.inner).generation;
        let expires_at = {
            let e = lock(&self.expiry);
            match e.get(&c.credential_id) {
                Some(entry) if entry.relayed_expires_at == tag => entry.expires_at.clone(),
                _ => tag,
            }
        }
        .and_then(|s| OffsetDateTime::parse(&s, &Rfc3339).ok());
        Ok(Access {
            token,
            generation,
            expires_at,
        })
    }

    /// The token to send, refreshed first when it expires within the margin
    /// and the credential can be refreshed.
    pub async fn access(&self, c: &EgressCredential) -> Result<Access, TokenError> {
        let a = self.current(c).await?;
        let soon = a
            .expires_at
            .is_some_and(|t| t - OffsetDateTime::now_utc() < self.margin);
        if soon && refresh_settings(c).is_some() {
            tracing::info!(credential_id = %c.credential_id, "mcp oauth token expires soon; refreshing");
            return match self.refresh_after(c, a.generation).await {
                Ok((fresh, _)) => Ok(fresh),
                // Not expired yet: the old token still serves this request.
                Err(e) if a.expires_at.is_some_and(|t| t > OffsetDateTime::now_utc()) => {
                    tracing::warn!(credential_id = %c.credential_id, error = %e, "mcp oauth refresh before expiry failed; using the current token");
                    Ok(a)
                }
                Err(e) => Err(e),
            };
        }
        Ok(a)
    }

    /// A new token for `c` after the one of generation `seen` failed (or
    /// expires): refresh unless another caller already did.
    pub async fn refresh_after(
        &self,
        c: &EgressCredential,
        seen: u64,
    ) -> Result<(Access, Option<RawAnswer>), TokenError> {
        let settings = refresh_settings(c).ok_or_else(|| TokenError::Refresh {
            credential_id: c.credential_id.clone(),
            source: Arc::new(RefreshError::NotRefreshable),
        })?;
        let st = self.state(&c.credential_id);
        let _one = st.refresh.lock().await;
        let (moved_on, held_failure) = {
            let g = lock(&st.inner);
            let held = g.last_failure.as_ref().and_then(|(generation, at, e)| {
                (*generation == seen && at.elapsed() < FAILURE_HOLD).then(|| e.clone())
            });
            (g.generation != seen, held)
        };
        if moved_on {
            return self.current(c).await.map(|a| (a, None));
        }
        if let Some(e) = held_failure {
            return Err(TokenError::Refresh {
                credential_id: c.credential_id.clone(),
                source: e,
            });
        }
        match self.refresh_now(c, settings, &st).await {
            Ok(r) => Ok(r),
            Err(e) => {
                let e = Arc::new(e);
                lock(&st.inner).last_failure = Some((seen, Instant::now(), e.clone()));
                tracing::warn!(credential_id = %c.credential_id, error = %e, "mcp oauth refresh failed");
                metrics::counter!("airlock_bridge_refresh_failures_total").increment(1);
                Err(TokenError::Refresh {
                    credential_id: c.credential_id.clone(),
                    source: e,
                })
            }
        }
    }

    async fn refresh_now(
        &self,
        c: &EgressCredential,
        settings: &OauthRefresh,
        st: &CredState,
    ) -> Result<(Access, Option<RawAnswer>), RefreshError> {
        let tag = relayed_expiry(c);
        let cached_refresh = {
            let g = lock(&st.inner);
            g.refreshed
                .as_ref()
                .filter(|h| h.tag == tag)
                .and_then(|h| h.refresh.clone())
        };
        let refresh_token = match cached_refresh {
            Some(r) => r,
            None => self
                .field(c, "refresh_token")
                .await
                .map_err(|_| RefreshError::NotRefreshable)?,
        };
        let client_secret = self.field(c, "client_secret").await.ok();
        let endpoint = check_url(&settings.token_endpoint, self.plain_http).map_err(|reason| {
            RefreshError::BadEndpoint {
                url: settings.token_endpoint.clone(),
                reason,
            }
        })?;
        let audit = AuditContext {
            sink: self.audit.clone(),
            session_id: String::new(),
            credential_id: Some(c.credential_id.clone()),
            vault_id: Some(c.vault_id.clone()),
            host: endpoint.host_str().unwrap_or_default().to_owned(),
            path: endpoint.path().to_owned(),
        };
        let result = oauth::refresh(
            &self.http,
            endpoint,
            settings,
            &refresh_token,
            client_secret.as_ref(),
            Duration::from_secs(30),
        )
        .await;
        audit.record(
            "POST",
            match &result {
                Ok((_, a)) => AuditOutcome::Injected { status: a.status },
                Err(RefreshError::Rejected { status, .. }) => {
                    AuditOutcome::Injected { status: *status }
                }
                Err(_) => AuditOutcome::UpstreamFailed,
            },
        );
        let (new, answer) = result?;
        let expires_at = new
            .expires_in
            .and_then(|d| time::Duration::try_from(d).ok())
            .map(|d| OffsetDateTime::now_utc() + d);
        let refresh_token = new.refresh_token.unwrap_or(refresh_token);
        // Write back so a restart keeps them (not for a KV-path credential:
        // the customer's Vault owns that path; kept in memory).
        if c.kv_path.is_none() {
            let mut fields = BTreeMap::new();
            fields.insert(
                "access_token".to_owned(),
                WireSecret::new(new.access_token.expose()),
            );
            fields.insert(
                "refresh_token".to_owned(),
                WireSecret::new(refresh_token.expose()),
            );
            if let Some(s) = &client_secret {
                fields.insert("client_secret".to_owned(), WireSecret::new(s.expose()));
            }
            let put = PutCredential {
                vault_id: c.vault_id.clone(),
                credential_id: c.credential_id.clone(),
                fields,
            };
            match self.relay.put_credential(&put).await {
                FromBridge::Relayed { held: true } => {}
                other => {
                    let why = match other {
                        FromBridge::Error { message, .. } => message,
                        _ => "unexpected answer".into(),
                    };
                    tracing::warn!(credential_id = %c.credential_id, error = %why, "refreshed mcp oauth tokens not written back; kept in memory");
                }
            }
        }
        self.save_expiry(&c.credential_id, expires_at, tag.clone());
        let generation = {
            let mut g = lock(&st.inner);
            g.generation += 1;
            g.refreshed = Some(Held {
                access: new.access_token.clone(),
                refresh: Some(refresh_token),
                expires_at,
                tag,
            });
            g.last_failure = None;
            g.generation
        };
        tracing::info!(credential_id = %c.credential_id, generation, expires_at = ?expires_at.and_then(fmt_time), "mcp oauth token refreshed");
        Ok((
            Access {
                token: new.access_token,
                generation,
                expires_at,
            },
            Some(answer),
        ))
    }

    fn save_expiry(&self, id: &str, at: Option<OffsetDateTime>, tag: Option<String>) {
        let mut e = lock(&self.expiry);
        e.insert(
            id.to_owned(),
            ExpiryEntry {
                expires_at: at.and_then(fmt_time),
                relayed_expires_at: tag,
            },
        );
        if let Some(f) = &self.expiry_file {
            let bytes = serde_json::to_vec_pretty(&*e).unwrap_or_default();
            if let Err((path, error)) = crate::backend::file::write_atomic(f, &bytes) {
                tracing::warn!(path = %path.display(), %error, "cannot write the mcp token expiry file");
            }
        }
    }
}
