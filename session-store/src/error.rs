//! The one error type of the session store.
//!
//! Variants separate "the caller misused the API" ([`StoreError::NotFound`],
//! [`StoreError::Invalid`], [`StoreError::Conflict`]), "someone else owns the
//! session now" ([`StoreError::Fenced`], [`StoreError::LeaseHeld`]), "transient,
//! retry" ([`StoreError::Unavailable`]) and "the stored data or the binary is
//! wrong" ([`StoreError::Corrupt`], [`StoreError::SchemaTooNew`],
//! [`StoreError::Backend`]). Mapping these to the HTTP wire is the API's job
//! (one function there), not the store's.

use time::OffsetDateTime;

/// A boxed error from a backend library (rusqlite, tokio-postgres, io).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything a [`crate::SessionStore`] operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The session does not exist (never created, or deleted).
    #[error("session {session_id} not found")]
    NotFound {
        /// The session that was asked for.
        session_id: String,
    },
    /// An event named by seq or id does not exist in the session.
    #[error("event {event} not found in session {session_id}")]
    EventNotFound {
        /// The session that was searched.
        session_id: String,
        /// The seq or id that was asked for, as text.
        event: String,
    },
    /// The caller's lease epoch is not the session's current epoch: another
    /// harness took the session over (or the lease was never granted). The
    /// write was refused and nothing was changed.
    #[error("session {session_id} is fenced: lease epoch {presented_epoch} is stale, the current epoch is {current_epoch}")]
    Fenced {
        /// The session whose write was refused.
        session_id: String,
        /// The epoch the caller presented.
        presented_epoch: u64,
        /// The session's current lease epoch.
        current_epoch: u64,
    },
    /// The lease is held by someone else and has not expired.
    #[error(
        "lease on session {session_id} is held by {holder} (epoch {epoch}) until {expires_at}"
    )]
    LeaseHeld {
        /// The session whose lease was asked for.
        session_id: String,
        /// Who holds the lease now.
        holder: String,
        /// The epoch of the current grant.
        epoch: u64,
        /// When the current grant expires unless renewed.
        expires_at: OffsetDateTime,
    },
    /// The request conflicts with the stored state: the session already
    /// exists, an event id is already taken, a version precondition failed, or
    /// a status change is not allowed (terminated is final).
    #[error("conflict on session {session_id}: {reason}")]
    Conflict {
        /// The session at fault.
        session_id: String,
        /// What conflicted.
        reason: String,
    },
    /// The request itself is malformed (an event that is not a JSON object or
    /// has no string `type`, an empty id, a zero limit...).
    #[error("invalid request for session {session_id}: {reason}")]
    Invalid {
        /// The session the request was about.
        session_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Transient: the database is unreachable, busy, or the writer is gone.
    /// Retrying later may succeed; nothing was acknowledged.
    #[error("session store unavailable: {reason}")]
    Unavailable {
        /// What failed, in words.
        reason: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// Stored data does not decode or breaks an invariant (a seq gap, a body
    /// that is not JSON). Needs an operator.
    #[error("session store data is corrupt: {detail}")]
    Corrupt {
        /// What is wrong and where (session id, seq).
        detail: String,
    },
    /// The database was migrated by a newer binary than this one.
    #[error("database schema version {found} is newer than this binary supports ({supported}); upgrade the binary")]
    SchemaTooNew {
        /// The highest migration recorded in the database.
        found: i64,
        /// The highest migration this binary knows.
        supported: i64,
    },
    /// An unexpected backend error (a bug here or in the database setup).
    #[error("session store backend error while {context}")]
    Backend {
        /// What the store was doing.
        context: String,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// True when retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// The session id the error is about, when it names one.
    pub fn session_id(&self) -> Option<&str> {
        match self {
            StoreError::NotFound { session_id }
            | StoreError::EventNotFound { session_id, .. }
            | StoreError::Fenced { session_id, .. }
            | StoreError::LeaseHeld { session_id, .. }
            | StoreError::Conflict { session_id, .. }
            | StoreError::Invalid { session_id, .. } => Some(session_id),
            _ => None,
        }
    }

    pub(crate) fn not_found(session_id: &str) -> Self {
        StoreError::NotFound {
            session_id: session_id.to_owned(),
        }
    }

    pub(crate) fn invalid(session_id: &str, reason: impl Into<String>) -> Self {
        StoreError::Invalid {
            session_id: session_id.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn conflict(session_id: &str, reason: impl Into<String>) -> Self {
        StoreError::Conflict {
            session_id: session_id.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(detail: impl Into<String>) -> Self {
        StoreError::Corrupt {
            detail: detail.into(),
        }
    }

    pub(crate) fn unavailable(reason: impl Into<String>, source: Option<BoxError>) -> Self {
        StoreError::Unavailable {
            reason: reason.into(),
            source,
        }
    }

    pub(crate) fn backend(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StoreError::Backend {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Result alias used across the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
