//! Where secrets live: the [`SecretBackend`] trait, the [`BackendError`]
//! every backend reports with (naming the credential and the cause, never a
//! value), and the two backends: [`file`] (an encrypted local file, the
//! quickstart's default) and [`openbao`] (OpenBao / HashiCorp Vault KV v2).
//! Every call has a deadline: a backend that does not answer in time fails
//! the call with [`BackendError::Timeout`] (fail closed, never hang).

pub mod file;
pub mod openbao;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::secret::{Secret, SecretKey};

/// What a backend call was about, for its error message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Subject {
    /// One credential's secret (boxed: keeps `BackendError` small).
    Credential(Box<SecretKey>),
    /// The backend's health check.
    Health,
    /// Listing the stored credentials.
    List,
    /// Opening the backend (reading its key, logging in).
    Open,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Credential(k) => k.fmt(f),
            Self::Health => f.write_str("health check"),
            Self::List => f.write_str("credential list"),
            Self::Open => f.write_str("opening the backend"),
        }
    }
}

impl From<&SecretKey> for Subject {
    fn from(k: &SecretKey) -> Self {
        Self::Credential(Box::new(k.clone()))
    }
}

/// Why a backend call failed. Each message names what the call was about
/// (the credential, the health check, ...) and the backend, and never holds
/// a secret value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// No secret is stored for the credential.
    #[error("{subject}: no secret stored in {backend}")]
    NotFound {
        /// What the call was about.
        subject: Subject,
        /// Which backend (`openbao at https://…`, `file store /var/lib/…`).
        backend: String,
    },
    /// The backend cannot be reached (connection refused, DNS, TLS).
    #[error("{subject}: {backend} is unreachable: {cause}")]
    Unreachable {
        /// What the call was about.
        subject: Subject,
        /// Which backend.
        backend: String,
        /// Why.
        cause: String,
    },
    /// The Vault/OpenBao server is sealed.
    #[error("{subject}: {backend} is sealed (unseal it, then retry)")]
    Sealed {
        /// What the call was about.
        subject: Subject,
        /// Which backend.
        backend: String,
    },
    /// The backend refused the bridge's identity (token expired or revoked,
    /// policy does not allow the path).
    #[error("{subject}: permission denied by {backend}: {cause}")]
    PermissionDenied {
        /// What the call was about.
        subject: Subject,
        /// Which backend.
        backend: String,
        /// What the backend said.
        cause: String,
    },
    /// The backend did not answer within the call's deadline.
    #[error("{subject}: {backend} did not answer within {after:?}")]
    Timeout {
        /// What the call was about.
        subject: Subject,
        /// Which backend.
        backend: String,
        /// The deadline.
        after: Duration,
    },
    /// The stored data cannot be read back (bad framing, failed
    /// authentication with the right key, not the expected shape).
    #[error("{subject}: {backend} holds corrupt data: {cause}")]
    Corrupt {
        /// What the call was about.
        subject: Subject,
        /// Which backend.
        backend: String,
        /// What is wrong.
        cause: String,
    },
    /// The file store was written with another key. Nothing is overwritten.
    #[error("{subject}: {backend} was written with another key (the store's key id is {stored}, the configured key's is {configured}); refusing to open it")]
    WrongKey {
        /// What the call was about.
        subject: Subject,
        /// Which backend.
        backend: String,
        /// Key id recorded in the store.
        stored: String,
        /// Key id of the configured key.
        configured: String,
    },
    /// A key, token or secret-id file is missing, unreadable, or readable by
    /// others than its owner.
    #[error("{subject}: {source}")]
    SecretFile {
        /// What the call was about.
        subject: Subject,
        /// The file problem.
        #[source]
        source: SecretFileError,
    },
    /// Any other failure the backend reported.
    #[error("{subject}: {backend} failed: {cause}")]
    Other {
        /// What the call was about.
        subject: Subject,
        /// Which backend.
        backend: String,
        /// What went wrong.
        cause: String,
    },
}

impl BackendError {
    /// Whether retrying later may succeed (backend down, sealed, slow).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::Sealed { .. } | Self::Timeout { .. }
        )
    }
}

/// A problem with a file that holds a key, token or secret id.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretFileError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is readable or writable by its group or others.
    #[error(
        "{path} has mode {mode:04o}; it must be readable by its owner only (chmod 600 {path})"
    )]
    Mode {
        /// The file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a regular file.
    #[error("{path} is not a regular file")]
    NotAFile {
        /// The path.
        path: std::path::PathBuf,
    },
    /// `$CREDENTIALS_DIRECTORY` is not set (the unit has no `LoadCredential=`).
    #[error("systemd credential `{name}` requested but $CREDENTIALS_DIRECTORY is not set (add LoadCredential={name}:… to the unit)")]
    NoCredentialsDirectory {
        /// The credential name.
        name: String,
    },
    /// The content is not what was expected (empty, bad encoding).
    #[error("{path}: {message}")]
    Content {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Stores and returns credential secrets. Every method answers within the
/// backend's deadline.
#[async_trait]
pub trait SecretBackend: Send + Sync + fmt::Debug {
    /// The secret stored under `key`.
    async fn get(&self, key: &SecretKey) -> Result<Secret, BackendError>;
    /// Store `secret` under `key`, replacing what was there.
    async fn put(&self, key: &SecretKey, secret: &Secret) -> Result<(), BackendError>;
    /// Remove the secret under `key`; [`BackendError::NotFound`] if none.
    async fn delete(&self, key: &SecretKey) -> Result<(), BackendError>;
    /// The stored credentials and their field names (never values).
    async fn list(&self) -> Result<Vec<(SecretKey, Vec<String>)>, BackendError>;
    /// Whether the backend can serve secrets now.
    async fn health(&self) -> Result<(), BackendError>;
    /// Stop background work (token renewal); later calls may fail.
    async fn close(&self) {}
}

/// Run `fut` with a deadline of `after`; past it, fail with
/// [`BackendError::Timeout`] naming `subject` and `backend`.
pub async fn with_deadline<T>(
    after: Duration,
    subject: impl FnOnce() -> Subject,
    backend: &str,
    fut: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(after, fut).await {
        Ok(r) => r,
        Err(_) => Err(BackendError::Timeout {
            subject: subject(),
            backend: backend.to_owned(),
            after,
        }),
    }
}

/// Open the backend the config names. The file backend creates its key and
/// store when `create_if_missing` is set and neither exists yet.
pub async fn open(
    config: &crate::config::BackendConfig,
) -> Result<Arc<dyn SecretBackend>, BackendError> {
    match config {
        crate::config::BackendConfig::File(c) => Ok(Arc::new(file::FileBackend::open(c).await?)),
        crate::config::BackendConfig::Openbao(c) => {
            Ok(Arc::new(openbao::OpenbaoBackend::open(c).await?))
        }
    }
}

pub use private_file::SecretSource;

mod private_file;
