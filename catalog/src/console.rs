//! API key roles and the web console's server-side sessions (migration 4).
//!
//! An API key has a [`KeyRole`]: `admin` (every key created before roles
//! existed) or `read_only` (the public API refuses its non-GET requests; the
//! console shows it no action). A console sign-in is a row keyed by the
//! SHA-256 of the random cookie token (the token itself is never stored),
//! with the key id, its role, the CSRF token and the expiry; every replica
//! on one database accepts it, and [`ConsoleStore::find_console_session`]
//! returns nothing once the key is revoked or the session expired.

use std::fmt;

use time::OffsetDateTime;

use crate::error::Result;
use crate::types::{ApiKeyRecord, NewApiKey};

/// What an API key may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum KeyRole {
    /// Everything (the default).
    #[default]
    Admin,
    /// Reads only: `GET` on the API, no console action.
    ReadOnly,
}

impl KeyRole {
    /// `admin` or `read_only` (as stored and shown).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Admin => "admin",
            KeyRole::ReadOnly => "read_only",
        }
    }

    /// Parses `admin`, `read_only` (or `read-only`, the CLI spelling).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(KeyRole::Admin),
            "read_only" | "read-only" => Some(KeyRole::ReadOnly),
            _ => None,
        }
    }

    /// Whether it may change anything.
    pub fn can_write(self) -> bool {
        self == KeyRole::Admin
    }
}

impl fmt::Display for KeyRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A console sign-in to store.
#[derive(Clone, PartialEq, Eq)]
pub struct NewConsoleSession {
    /// Lowercase hex SHA-256 of the cookie token.
    pub token_hash: String,
    /// The API key signed in with.
    pub key_id: String,
    /// Its role at sign-in.
    pub role: KeyRole,
    /// The CSRF token every form of this session carries.
    pub csrf_token: String,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// When it stops being accepted.
    pub expires_at: OffsetDateTime,
}

impl fmt::Debug for NewConsoleSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewConsoleSession")
            .field("key_id", &self.key_id)
            .field("role", &self.role)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A live console session, with its key's name.
#[derive(Clone, PartialEq, Eq)]
pub struct ConsoleSessionRecord {
    /// Lowercase hex SHA-256 of the cookie token.
    pub token_hash: String,
    /// The API key signed in with.
    pub key_id: String,
    /// That key's name.
    pub key_name: String,
    /// The role the session has.
    pub role: KeyRole,
    /// The CSRF token.
    pub csrf_token: String,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// When it stops being accepted.
    pub expires_at: OffsetDateTime,
}

impl fmt::Debug for ConsoleSessionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsoleSessionRecord")
            .field("key_id", &self.key_id)
            .field("key_name", &self.key_name)
            .field("role", &self.role)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Key roles and console sessions. Every [`crate::Catalog`] is one.
#[async_trait::async_trait]
pub trait ConsoleStore: Send + Sync {
    /// Stores a key's hash with `role` (what `Catalog::create_api_key` does
    /// with [`KeyRole::Admin`]). [`crate::CatalogError::Conflict`] if the id
    /// or hash exists.
    async fn create_api_key_with_role(&self, new: NewApiKey, role: KeyRole)
        -> Result<ApiKeyRecord>;

    /// Stores a console session. [`crate::CatalogError::Conflict`] if the
    /// token hash exists.
    async fn create_console_session(&self, new: NewConsoleSession) -> Result<()>;

    /// The session whose token hashes to `token_hash`, if it exists, has not
    /// expired at `now` and its key is not revoked.
    async fn find_console_session(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Option<ConsoleSessionRecord>>;

    /// Deletes the session (deleting an unknown one is a no-op).
    async fn delete_console_session(&self, token_hash: &str) -> Result<()>;

    /// Deletes the sessions expired at `now`; returns how many.
    async fn delete_expired_console_sessions(&self, now: OffsetDateTime) -> Result<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_both_spellings_and_print_one() {
        assert_eq!(KeyRole::parse("read-only"), Some(KeyRole::ReadOnly));
        assert_eq!(KeyRole::parse("read_only"), Some(KeyRole::ReadOnly));
        assert_eq!(KeyRole::parse("admin"), Some(KeyRole::Admin));
        assert_eq!(KeyRole::parse("root"), None);
        assert_eq!(KeyRole::ReadOnly.to_string(), "read_only");
        assert!(KeyRole::Admin.can_write() && !KeyRole::ReadOnly.can_write());
    }
}
