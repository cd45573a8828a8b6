//! The one error type of the catalog.
//!
//! Variants separate "the caller misused the API" ([`CatalogError::NotFound`],
//! [`CatalogError::Conflict`], [`CatalogError::Archived`],
//! [`CatalogError::Invalid`]), "transient, retry"
//! ([`CatalogError::Unavailable`]) and "the stored data or the binary is
//! wrong" ([`CatalogError::Corrupt`], [`CatalogError::SchemaTooNew`],
//! [`CatalogError::Backend`]). Mapping them to HTTP is the API's job.

use crate::types::ResourceKind;

/// A boxed error from a backend library (rusqlite, tokio-postgres, io).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything a [`crate::Catalog`] operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The resource (or the requested agent version) does not exist.
    #[error("{kind} {id} not found")]
    NotFound {
        /// What was asked for.
        kind: ResourceKind,
        /// Its id (`agent_…@3` for a version).
        id: String,
    },
    /// The write conflicts with the stored state: the id or a unique name is
    /// taken, or the agent changed since the version the update was based on.
    #[error("conflict on {kind} {id}: {reason}")]
    Conflict {
        /// The resource at fault.
        kind: ResourceKind,
        /// Its id (or the name that is taken).
        id: String,
        /// What conflicted.
        reason: String,
    },
    /// The resource is archived and refuses changes.
    #[error("{kind} {id} is archived")]
    Archived {
        /// The resource.
        kind: ResourceKind,
        /// Its id.
        id: String,
    },
    /// The request itself is malformed (a zero page size...).
    #[error("invalid catalog request: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// Transient: the database is unreachable or busy. Retrying may succeed;
    /// nothing was changed.
    #[error("catalog unavailable: {reason}")]
    Unavailable {
        /// What failed.
        reason: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// Stored data does not decode (a body that is not JSON...). Needs an operator.
    #[error("catalog data is corrupt: {detail}")]
    Corrupt {
        /// What and where.
        detail: String,
    },
    /// The database was migrated by a newer binary.
    #[error("catalog schema version {found} is newer than this binary supports ({supported}); upgrade the binary")]
    SchemaTooNew {
        /// Highest migration recorded in the database.
        found: i64,
        /// Highest migration this binary knows.
        supported: i64,
    },
    /// An unexpected backend error (a bug here or in the database setup).
    #[error("catalog backend error while {context}")]
    Backend {
        /// What the catalog was doing.
        context: String,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
}

impl CatalogError {
    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, CatalogError::Unavailable { .. })
    }

    pub(crate) fn not_found(kind: ResourceKind, id: impl Into<String>) -> Self {
        CatalogError::NotFound {
            kind,
            id: id.into(),
        }
    }

    pub(crate) fn conflict(
        kind: ResourceKind,
        id: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        CatalogError::Conflict {
            kind,
            id: id.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(detail: impl Into<String>) -> Self {
        CatalogError::Corrupt {
            detail: detail.into(),
        }
    }

    pub(crate) fn backend(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        CatalogError::Backend {
            context: context.into(),
            source: source.into(),
        }
    }

    pub(crate) fn unavailable(reason: impl Into<String>, source: Option<BoxError>) -> Self {
        CatalogError::Unavailable {
            reason: reason.into(),
            source,
        }
    }
}

/// Result alias used across the crate.
pub type Result<T, E = CatalogError> = std::result::Result<T, E>;
