//! Where the proxy gets a credential's secret at the moment it injects it.
//! The bridge plugs its secret backend in behind [`SecretSource`]; tests use
//! [`MemorySecrets`]. A value is held in a [`SecretValue`], whose `Debug`
//! never shows it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use super::policy::CredentialRef;

/// A secret on its way into a request. `Debug` and `Display` are redacted.
#[derive(Clone)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wrap a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for building the header or body that carries it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// Why a secret could not be had. The message names the credential and the
/// cause, never the value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("secret for credential {credential_id} (field {field}) is unavailable: {cause}")]
pub struct SecretUnavailable {
    /// Which credential.
    pub credential_id: String,
    /// Which field.
    pub field: String,
    /// Why (not found, backend unreachable, sealed, timed out, ...).
    pub cause: String,
}

/// Gives the proxy a credential's secret. Implementations must answer within
/// their own deadline (fail closed, never hang).
#[async_trait]
pub trait SecretSource: Send + Sync + fmt::Debug {
    /// The secret field `credential.field` of `credential`.
    async fn secret(&self, credential: &CredentialRef) -> Result<SecretValue, SecretUnavailable>;
}

/// Secrets in memory, keyed by credential id and field.
#[derive(Debug, Default, Clone)]
pub struct MemorySecrets {
    map: Arc<RwLock<HashMap<(String, String), SecretValue>>>,
}

impl MemorySecrets {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set `credential_id`'s `field`.
    pub fn set(&self, credential_id: &str, field: &str, value: &str) {
        let mut g = match self.map.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.insert(
            (credential_id.to_owned(), field.to_owned()),
            SecretValue::new(value),
        );
    }

    /// Forget `credential_id`'s `field`.
    pub fn remove(&self, credential_id: &str, field: &str) {
        let mut g = match self.map.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.remove(&(credential_id.to_owned(), field.to_owned()));
    }
}

#[async_trait]
impl SecretSource for MemorySecrets {
    async fn secret(&self, c: &CredentialRef) -> Result<SecretValue, SecretUnavailable> {
        let g = match self.map.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.get(&(c.credential_id.clone(), c.field.clone()))
            .cloned()
            .ok_or_else(|| SecretUnavailable {
                credential_id: c.credential_id.clone(),
                field: c.field.clone(),
                cause: "not found".into(),
            })
    }
}

/// The bridge's [`SecretBackend`](crate::backend::SecretBackend) as the
/// proxy's secret source: `credential` → `SecretKey { vault_id, credential_id }`,
/// then its `field`.
#[derive(Debug, Clone)]
pub struct BackendSecrets(pub Arc<dyn crate::backend::SecretBackend>);

#[async_trait]
impl SecretSource for BackendSecrets {
    async fn secret(&self, c: &CredentialRef) -> Result<SecretValue, SecretUnavailable> {
        use crate::secret::ExposeSecret;
        let unavailable = |cause: String| SecretUnavailable {
            credential_id: c.credential_id.clone(),
            field: c.field.clone(),
            cause,
        };
        let vault = c.vault_id.as_deref().ok_or_else(|| {
            unavailable("it belongs to no vault, so the backend does not hold it".into())
        })?;
        let key = crate::secret::SecretKey::new(vault, &c.credential_id)
            .map_err(|e| unavailable(e.to_string()))?;
        let secret = self
            .0
            .get(&key)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let value = secret
            .get(&c.field)
            .ok_or_else(|| unavailable("the field is not stored".into()))?;
        Ok(SecretValue::new(value.expose_secret()))
    }
}
