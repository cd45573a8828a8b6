//! Where a credential's secret material goes: the [`SecretRelay`].
//!
//! The control plane stores credential metadata only. A secret sent through
//! the API (`token`, `access_token`, `refresh_token`, `client_secret`,
//! `secret_value`) is handed, in memory, to the relay, which delivers it to
//! the vault-bridge(s) of the environment the vault is pinned to (vault
//! metadata `airlock.environment_id`). When the relay cannot deliver it the
//! API refuses the request (503, `vault_bridge_unavailable`) and stores
//! nothing. [`NoBridgeRelay`] is the production relay until the tunnel
//! carries secrets: it never accepts one.
//!
//! The same relay takes the `authorization_token` of a session's
//! `github_repository` resource ([`SessionTokenTarget`]): the bridges of the
//! session's environment hold it for that session and resource only.
//!
//! It also carries `mcp_oauth_validate`: a bridge of the environment the
//! vault is pinned to probes the credential's MCP server with the secret it
//! holds ([`SecretRelay::validate_mcp`]); only the verdict, with scrubbed
//! response bodies, comes back.

use std::collections::BTreeMap;
use std::fmt;

use protocol::mcp::McpValidation;
use serde_json::Value;

/// One secret value. Its `Debug` never shows it; the bytes are overwritten
/// when it is dropped (best effort: copies made by the JSON parser before
/// it was taken out of the request are not).
pub struct SecretValue(String);

impl SecretValue {
    /// Wraps `value`.
    pub fn new(value: String) -> Self {
        SecretValue(value)
    }

    /// The value, for the relay to send on.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue([redacted])")
    }
}

impl Drop for SecretValue {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&bytes);
    }
}

/// The secret fields of one credential request, by field name (`token`,
/// `access_token`, `refresh_token`, `client_secret`, `secret_value`).
/// `Debug` lists the names only.
#[derive(Default)]
pub struct SecretFields(BTreeMap<&'static str, SecretValue>);

impl SecretFields {
    /// Adds `name` = `value`.
    pub(crate) fn insert(&mut self, name: &'static str, value: String) {
        self.0.insert(name, SecretValue::new(value));
    }

    /// Whether the request carried no secret.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The field names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.keys().copied().collect()
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&SecretValue> {
        self.0.get(name)
    }
}

impl fmt::Debug for SecretFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Which credential a secret belongs to and which bridges serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayTarget {
    /// The environment the vault is pinned to: its vault-bridges hold the secret.
    pub environment_id: String,
    /// The vault.
    pub vault_id: String,
    /// The credential.
    pub credential_id: String,
}

/// Which session resource a Git token belongs to: the bridges of
/// `environment_id` hold it for `session_id` and `resource_id` only, and add
/// it to requests to `url`'s host on the way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTokenTarget {
    /// The session's environment: its vault-bridges hold the token.
    pub environment_id: String,
    /// The session.
    pub session_id: String,
    /// The `github_repository` resource (`sesrsc_...`).
    pub resource_id: String,
    /// The repository URL (https, no userinfo).
    pub url: String,
}

/// Why a relay did not deliver.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// No vault-bridge of the environment is connected.
    #[error("no vault-bridge of environment {environment_id} is connected")]
    NoBridge {
        /// The environment.
        environment_id: String,
    },
    /// A bridge answered with a failure (its backend is sealed, unreachable...).
    #[error("the vault-bridge of environment {environment_id} refused: {reason}")]
    Refused {
        /// The environment.
        environment_id: String,
        /// What the bridge said (never a value).
        reason: String,
    },
}

/// Delivers secret material to the vault-bridges of an environment.
#[async_trait::async_trait]
pub trait SecretRelay: Send + Sync + fmt::Debug {
    /// Hands `fields` of `target` to the bridges. `Ok` means they hold them;
    /// only then does the API store the credential's metadata.
    async fn put(&self, target: &RelayTarget, fields: &SecretFields) -> Result<(), RelayError>;

    /// Tells the bridges to drop what was relayed for `target` (the
    /// credential was archived or deleted, or storing it failed). A secret
    /// the customer wrote into their own Vault (`airlock.kv_path`) is theirs
    /// and stays.
    async fn forget(&self, target: &RelayTarget) -> Result<(), RelayError>;

    /// Hands the Git `token` of a session resource to the bridges (at
    /// session create, or to rotate it). `Ok` means they hold it; only
    /// then does the API store the resource (or keep the session).
    async fn put_session_token(
        &self,
        target: &SessionTokenTarget,
        token: &SecretValue,
    ) -> Result<(), RelayError>;

    /// Tells the bridges to drop the token of a session resource (the
    /// resource or its session was deleted or archived, or storing the
    /// session failed). Idempotent: nothing held is not an error.
    async fn forget_session_token(&self, target: &SessionTokenTarget) -> Result<(), RelayError>;

    /// Tells the bridges of `environment_id` that `session_id` ended
    /// (archived or deleted): they drop its repository tokens and from then
    /// on refuse its sandboxes' egress, so no credential is used for it any
    /// more. Best effort and idempotent; the default does nothing.
    async fn end_session(&self, environment_id: &str, session_id: &str) -> Result<(), RelayError> {
        let _ = (environment_id, session_id);
        Ok(())
    }

    /// Asks one vault-bridge of `target`'s environment to probe the MCP
    /// server of the credential `target` (`mcp_oauth` or `static_bearer`)
    /// with the secret it holds, refreshing an `mcp_oauth` token on a 401,
    /// for `mcp_oauth_validate`. `stored` is the credential's stored body
    /// (`display_name`, `metadata`, `auth`: metadata only, never a secret).
    /// The default answers [`RelayError::NoBridge`].
    async fn validate_mcp(
        &self,
        target: &RelayTarget,
        stored: &Value,
    ) -> Result<McpValidation, RelayError> {
        let _ = stored;
        Err(RelayError::NoBridge {
            environment_id: target.environment_id.clone(),
        })
    }
}

/// The relay while no bridge can be reached: refuses every secret and
/// every validation, and has nothing to forget.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoBridgeRelay;

#[async_trait::async_trait]
impl SecretRelay for NoBridgeRelay {
    async fn put(&self, target: &RelayTarget, _fields: &SecretFields) -> Result<(), RelayError> {
        Err(RelayError::NoBridge {
            environment_id: target.environment_id.clone(),
        })
    }

    async fn forget(&self, _target: &RelayTarget) -> Result<(), RelayError> {
        Ok(())
    }

    async fn put_session_token(
        &self,
        target: &SessionTokenTarget,
        _token: &SecretValue,
    ) -> Result<(), RelayError> {
        Err(RelayError::NoBridge {
            environment_id: target.environment_id.clone(),
        })
    }

    async fn forget_session_token(&self, _target: &SessionTokenTarget) -> Result<(), RelayError> {
        Ok(())
    }

    async fn validate_mcp(
        &self,
        target: &RelayTarget,
        _stored: &Value,
    ) -> Result<McpValidation, RelayError> {
        Err(RelayError::NoBridge {
            environment_id: target.environment_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_value() {
        let mut f = SecretFields::default();
        f.insert("token", "canary-123".into());
        let shown = format!("{f:?} {:?}", f.get("token"));
        assert!(!shown.contains("canary"), "{shown}");
        assert!(shown.contains("token"), "{shown}");
        assert_eq!(f.get("token").map(SecretValue::expose), Some("canary-123"));
    }
}
