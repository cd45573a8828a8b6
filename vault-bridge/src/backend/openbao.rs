//! OpenBao / HashiCorp Vault KV v2 through `vaultrs`. A credential's secret
//! is one KV entry at `<path_prefix>/<vault_id>/<credential_id>` under the
//! configured mount (or at the explicit `airlock.kv_path` of its metadata),
//! its fields the entry's keys. The bridge logs in with a token (file or
//! systemd credential) or AppRole, and a background task renews the token at
//! two thirds of its TTL (logging in again when it can no longer be renewed).
//! Every call runs under the configured deadline; the HTTP client's own
//! timeout is a second longer, so a slow server surfaces as
//! [`BackendError::Timeout`] naming the credential.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::RwLock;
use tokio::task::JoinHandle;
use vaultrs::client::{Client, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use super::private_file::read_private_text;
use super::{with_deadline, BackendError, SecretBackend, Subject};
use crate::config::{OpenbaoAuth, OpenbaoConfig};
use crate::secret::{check_field, Secret, SecretKey};

/// Shortest pause between two renewal attempts.
const MIN_RENEW_PAUSE: Duration = Duration::from_millis(500);
/// Pauses after failed renewals: 0.5 s doubling to 30 s.
const RETRY: settings::BackoffPolicy = settings::BackoffPolicy::new(
    MIN_RENEW_PAUSE,
    Duration::from_secs(30),
    settings::Jitter::None,
);

/// The OpenBao/Vault backend.
#[derive(Debug)]
pub struct OpenbaoBackend {
    inner: Arc<Inner>,
    renewer: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    client: RwLock<VaultClient>,
    config: OpenbaoConfig,
    name: String,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("backend", &self.name)
            .finish_non_exhaustive()
    }
}

/// A token's remaining life and whether it can be renewed.
#[derive(Debug, Clone, Copy)]
struct Lease {
    ttl: Duration,
    renewable: bool,
}

impl OpenbaoBackend {
    /// Build the client, log in, and start renewing the token.
    pub async fn open(config: &OpenbaoConfig) -> Result<Self, BackendError> {
        let name = format!("openbao at {}", config.address);
        // vaultrs's reqwest brings no crypto provider of its own: use ring,
        // like every other TLS client in the workspace. An error means one
        // is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut settings = VaultClientSettingsBuilder::default();
        settings
            .address(&config.address)
            // Set everything explicitly: the builder's defaults read VAULT_*.
            .token(String::new())
            .verify(true)
            .identity(None)
            .ca_certs(
                config
                    .ca_file
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect(),
            )
            .timeout(Some(config.request_timeout + Duration::from_secs(1)))
            .namespace(config.namespace.clone());
        let client = settings
            .build()
            .map_err(|e| BackendError::Other {
                subject: Subject::Open,
                backend: name.clone(),
                cause: format!("client settings: {e}"),
            })
            .and_then(|s| {
                VaultClient::new(s).map_err(|e| BackendError::Other {
                    subject: Subject::Open,
                    backend: name.clone(),
                    cause: format!("client: {}", cause_chain(&e)),
                })
            })?;
        let inner = Arc::new(Inner {
            client: RwLock::new(client),
            config: config.clone(),
            name,
        });
        let lease = inner.login().await?;
        let renewer = tokio::spawn(renew_loop(Arc::clone(&inner), lease));
        Ok(Self {
            inner,
            renewer: Mutex::new(Some(renewer)),
        })
    }

    /// The KV path (under the mount) of `key`.
    pub fn path_of(&self, key: &SecretKey) -> String {
        self.inner.path_of(key)
    }
}

impl Drop for OpenbaoBackend {
    fn drop(&mut self) {
        if let Ok(mut g) = self.renewer.lock() {
            if let Some(h) = g.take() {
                h.abort();
            }
        }
    }
}

impl Inner {
    fn path_of(&self, key: &SecretKey) -> String {
        match key.kv_path() {
            Some(p) => p.to_owned(),
            None => format!(
                "{}/{}/{}",
                self.config.path_prefix,
                key.vault_id(),
                key.credential_id()
            ),
        }
    }

    async fn deadline<T>(
        &self,
        subject: Subject,
        fut: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let s = subject.clone();
        with_deadline(self.config.request_timeout, move || s, &self.name, fut).await
    }

    /// Run `call`, and once more if it found the server unreachable: a
    /// pooled connection to a server that restarted fails once ("connection
    /// closed before message completed"); a server that is down fails again
    /// at once. Every call here is idempotent (KV v2 writes replace).
    async fn retried<T, F, Fut>(&self, call: F) -> Result<T, BackendError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, BackendError>>,
    {
        match call().await {
            Err(BackendError::Unreachable { .. }) => call().await,
            other => other,
        }
    }

    /// Log in (AppRole) or take the configured token and look it up.
    async fn login(&self) -> Result<Lease, BackendError> {
        let subject = Subject::Open;
        let file_err = |source| BackendError::SecretFile {
            subject: Subject::Open,
            source,
        };
        match &self.config.auth {
            OpenbaoAuth::Token(source) => {
                let token = read_private_text(source).map_err(file_err)?;
                self.client.write().await.set_token(token.expose_secret());
                self.deadline(
                    subject.clone(),
                    self.retried(|| async {
                        let c = self.client.read().await;
                        let info = vaultrs::token::lookup_self(&*c)
                            .await
                            .map_err(|e| self.map_err(subject.clone(), e))?;
                        Ok(Lease {
                            ttl: Duration::from_secs(info.ttl),
                            renewable: info.renewable.unwrap_or(false),
                        })
                    }),
                )
                .await
            }
            OpenbaoAuth::Approle {
                mount,
                role_id,
                secret_id,
            } => {
                let secret_id = read_private_text(secret_id).map_err(file_err)?;
                let auth = self
                    .deadline(subject.clone(), async {
                        let c = self.client.read().await;
                        vaultrs::auth::approle::login(
                            &*c,
                            mount,
                            role_id,
                            secret_id.expose_secret(),
                        )
                        .await
                        .map_err(|e| self.map_err(subject.clone(), e))
                    })
                    .await?;
                let token = SecretString::from(auth.client_token);
                self.client.write().await.set_token(token.expose_secret());
                Ok(Lease {
                    ttl: Duration::from_secs(auth.lease_duration),
                    renewable: auth.renewable,
                })
            }
        }
    }

    /// Renew the token, or log in again when it cannot be renewed (or the
    /// renewal was capped by its max TTL).
    async fn refresh(&self, lease: Lease) -> Result<Lease, BackendError> {
        if lease.renewable {
            let subject = Subject::Open;
            let renewed = self
                .deadline(subject.clone(), async {
                    let c = self.client.read().await;
                    vaultrs::token::renew_self(&*c, None)
                        .await
                        .map_err(|e| self.map_err(subject.clone(), e))
                })
                .await;
            match renewed {
                Ok(auth) if Duration::from_secs(auth.lease_duration) >= lease.ttl / 2 => {
                    return Ok(Lease {
                        ttl: Duration::from_secs(auth.lease_duration),
                        renewable: auth.renewable,
                    })
                }
                Ok(_) => {
                    tracing::info!(backend = %self.name, "token near its max TTL; logging in again")
                }
                Err(error) => {
                    tracing::warn!(backend = %self.name, %error, "token renewal failed; logging in again")
                }
            }
        }
        self.login().await
    }

    /// One place that turns a vaultrs error into a [`BackendError`]. Causes
    /// come from the server's error list or the transport, never from a
    /// response body (which may hold a secret).
    fn map_err(&self, subject: Subject, e: ClientError) -> BackendError {
        let backend = self.name.clone();
        match e {
            ClientError::APIError { code: 404, .. } => BackendError::NotFound { subject, backend },
            ClientError::APIError { code: 503, errors }
                if errors.iter().any(|m| m.contains("sealed")) =>
            {
                BackendError::Sealed { subject, backend }
            }
            ClientError::APIError {
                code: 401 | 403,
                errors,
            } => BackendError::PermissionDenied {
                subject,
                backend,
                cause: errors.join("; "),
            },
            ClientError::APIError { code, errors } => BackendError::Other {
                subject,
                backend,
                cause: format!("status {code}: {}", errors.join("; ")),
            },
            ClientError::RestClientError { source } => {
                use rustify::errors::ClientError as R;
                match source {
                    R::ServerResponseError { code: 503, .. } => {
                        BackendError::Sealed { subject, backend }
                    }
                    R::ServerResponseError { code: 404, .. } => {
                        BackendError::NotFound { subject, backend }
                    }
                    R::ServerResponseError { code, .. } => BackendError::Other {
                        subject,
                        backend,
                        cause: format!("status {code}"),
                    },
                    R::RequestError { source, .. } => BackendError::Unreachable {
                        subject,
                        backend,
                        cause: format!("{source:#}"),
                    },
                    R::ResponseParseError { .. } | R::ResponseConversionError { .. } => {
                        BackendError::Corrupt {
                            subject,
                            backend,
                            cause: "unexpected response".into(),
                        }
                    }
                    other => BackendError::Other {
                        subject,
                        backend,
                        cause: other.to_string(),
                    },
                }
            }
            ClientError::JsonParseError { .. } => BackendError::Corrupt {
                subject,
                backend,
                cause: "the entry is not a map of fields".into(),
            },
            other => BackendError::Other {
                subject,
                backend,
                cause: other.to_string(),
            },
        }
    }

    async fn read_secret(&self, key: &SecretKey) -> Result<Secret, BackendError> {
        let subject = Subject::from(key);
        let path = self.path_of(key);
        let data: BTreeMap<String, serde_json::Value> = {
            let c = self.client.read().await;
            vaultrs::kv2::read(&*c, &self.config.mount, &path)
                .await
                .map_err(|e| self.map_err(subject.clone(), e))?
        };
        let mut secret = Secret::new();
        for (field, value) in data {
            if let (Ok(()), serde_json::Value::String(v)) = (check_field(&field), value) {
                secret.insert(&field, SecretString::from(v)).map_err(|e| {
                    BackendError::Corrupt {
                        subject: subject.clone(),
                        backend: self.name.clone(),
                        cause: e.to_string(),
                    }
                })?;
            }
        }
        if secret.is_empty() {
            return Err(BackendError::Corrupt {
                subject,
                backend: self.name.clone(),
                cause: format!(
                    "kv entry {}/{path} has no string field named token, access_token, refresh_token, client_secret or secret_value",
                    self.config.mount
                ),
            });
        }
        Ok(secret)
    }
}

/// Renew at two thirds of the TTL; retry failures with a growing pause.
/// A TTL of zero (a root or non-expiring token) needs no renewal.
async fn renew_loop(inner: Arc<Inner>, mut lease: Lease) {
    let mut failures = 0u32;
    loop {
        if lease.ttl.is_zero() {
            tracing::debug!(backend = %inner.name, "token does not expire; no renewal");
            return;
        }
        let pause = if failures == 0 {
            (lease.ttl * 2 / 3).max(MIN_RENEW_PAUSE)
        } else {
            RETRY.delay(failures - 1, 0.0)
        };
        tokio::time::sleep(pause).await;
        match inner.refresh(lease).await {
            Ok(l) => {
                tracing::debug!(backend = %inner.name, ttl_seconds = l.ttl.as_secs(), "token renewed");
                lease = l;
                failures = 0;
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(backend = %inner.name, %error, failures, "token renewal failed");
            }
        }
    }
}

fn cause_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[async_trait]
impl SecretBackend for OpenbaoBackend {
    async fn get(&self, key: &SecretKey) -> Result<Secret, BackendError> {
        let i = &self.inner;
        i.deadline(key.into(), i.retried(|| i.read_secret(key)))
            .await
    }

    async fn put(&self, key: &SecretKey, secret: &Secret) -> Result<(), BackendError> {
        let i = &self.inner;
        let subject = Subject::from(key);
        let data: BTreeMap<&str, &str> =
            secret.iter().map(|(k, v)| (k, v.expose_secret())).collect();
        i.deadline(
            subject.clone(),
            i.retried(|| async {
                let c = i.client.read().await;
                vaultrs::kv2::set(&*c, &i.config.mount, &i.path_of(key), &data)
                    .await
                    .map(|_| ())
                    .map_err(|e| i.map_err(subject.clone(), e))
            }),
        )
        .await
    }

    async fn delete(&self, key: &SecretKey) -> Result<(), BackendError> {
        let i = &self.inner;
        let subject = Subject::from(key);
        let path = i.path_of(key);
        i.deadline(
            subject.clone(),
            i.retried(|| async {
                let c = i.client.read().await;
                vaultrs::kv2::read_metadata(&*c, &i.config.mount, &path)
                    .await
                    .map_err(|e| i.map_err(subject.clone(), e))?;
                vaultrs::kv2::delete_metadata(&*c, &i.config.mount, &path)
                    .await
                    .map_err(|e| i.map_err(subject.clone(), e))
            }),
        )
        .await
    }

    async fn list(&self) -> Result<Vec<(SecretKey, Vec<String>)>, BackendError> {
        let i = &self.inner;
        i.deadline(Subject::List, async {
            let mount = &i.config.mount;
            let prefix = &i.config.path_prefix;
            let list = |path: String| async move {
                i.retried(|| async {
                    let c = i.client.read().await;
                    match vaultrs::kv2::list(&*c, mount, &path).await {
                        Ok(keys) => Ok(keys),
                        Err(ClientError::APIError { code: 404, .. }) => Ok(Vec::new()),
                        Err(e) => Err(i.map_err(Subject::List, e)),
                    }
                })
                .await
            };
            let mut out = Vec::new();
            for vault in list(prefix.clone()).await? {
                let Some(vault_id) = vault.strip_suffix('/') else {
                    continue;
                };
                for cred in list(format!("{prefix}/{vault_id}")).await? {
                    // Entries with other names are not the bridge's; skip them.
                    let Ok(key) = SecretKey::new(vault_id, &cred) else {
                        continue;
                    };
                    let secret = i.read_secret(&key).await?;
                    out.push((key, secret.field_names().map(str::to_owned).collect()));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn health(&self) -> Result<(), BackendError> {
        // A token lookup answers all three questions: reachable, unsealed
        // (a sealed server answers 503 "Vault is sealed"), and the token
        // still good. (vaultrs's sys::health expects fields OpenBao does
        // not send.)
        let i = &self.inner;
        i.deadline(Subject::Health, async {
            i.retried(|| async {
                let c = i.client.read().await;
                vaultrs::token::lookup_self(&*c)
                    .await
                    .map(|_| ())
                    .map_err(|e| i.map_err(Subject::Health, e))
            })
            .await
        })
        .await
    }

    async fn close(&self) {
        if let Ok(mut g) = self.renewer.lock() {
            if let Some(h) = g.take() {
                h.abort();
            }
        }
    }
}
