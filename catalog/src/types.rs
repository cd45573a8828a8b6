//! Values that cross the [`crate::Catalog`] interface.

use std::fmt;

use serde_json::Value;
use time::OffsetDateTime;

use crate::error::{CatalogError, Result};

/// Which kind of resource an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    /// An agent (or one of its versions).
    Agent,
    /// An environment.
    Environment,
    /// An API key.
    ApiKey,
    /// A vault.
    Vault,
    /// A vault credential.
    Credential,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceKind::Agent => "agent",
            ResourceKind::Environment => "environment",
            ResourceKind::ApiKey => "api key",
            ResourceKind::Vault => "vault",
            ResourceKind::Credential => "credential",
        })
    }
}

/// Sort order of a listing (by creation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// Oldest first.
    Ascending,
    /// Newest first.
    #[default]
    Descending,
}

impl Order {
    /// The keyset comparison and `ORDER BY` direction of this order, for
    /// `WHERE position {cmp} cursor ORDER BY position {dir}` (both backends).
    pub(crate) fn keyset_sql(self) -> (&'static str, &'static str) {
        match self {
            Order::Ascending => (">", "ASC"),
            Order::Descending => ("<", "DESC"),
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items, in the requested order.
    pub items: Vec<T>,
    /// Whether more items follow the last one.
    pub has_more: bool,
}

/// A new agent (version 1).
#[derive(Debug, Clone, PartialEq)]
pub struct NewAgent {
    /// The id (`agent_…`, chosen by the caller).
    pub id: String,
    /// The API's agent object for version 1 (without the fields the catalog owns).
    pub body: Value,
}

/// One version of an agent as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    /// The agent id.
    pub id: String,
    /// This version (1, 2, ...).
    pub version: u64,
    /// The latest version of the agent when this was read.
    pub latest_version: u64,
    /// The API's agent object of this version.
    pub body: Value,
    /// When the agent (version 1) was created.
    pub created_at: OffsetDateTime,
    /// When this version was created.
    pub updated_at: OffsetDateTime,
    /// When the agent was archived.
    pub archived_at: Option<OffsetDateTime>,
    /// Creation order of the agent (the listing key).
    pub position: i64,
}

/// A page request over agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentQuery {
    /// Include archived agents.
    pub include_archived: bool,
    /// Only agents created at or after this time.
    pub created_at_gte: Option<OffsetDateTime>,
    /// Only agents created at or before this time.
    pub created_at_lte: Option<OffsetDateTime>,
    /// Order by creation.
    pub order: Order,
    /// Start after this [`AgentRecord::position`] (exclusive) in `order`.
    pub after_position: Option<i64>,
    /// Page size.
    pub limit: usize,
}

impl Default for AgentQuery {
    fn default() -> Self {
        AgentQuery {
            include_archived: false,
            created_at_gte: None,
            created_at_lte: None,
            order: Order::Descending,
            after_position: None,
            limit: 20,
        }
    }
}

/// A page request over one agent's versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionQuery {
    /// Order by version.
    pub order: Order,
    /// Start after this version (exclusive) in `order`.
    pub after_version: Option<u64>,
    /// Page size.
    pub limit: usize,
}

impl Default for VersionQuery {
    fn default() -> Self {
        VersionQuery {
            order: Order::Descending,
            after_version: None,
            limit: 20,
        }
    }
}

/// A new environment.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEnvironment {
    /// The id (`env_…`, chosen by the caller).
    pub id: String,
    /// The unique name.
    pub name: String,
    /// The API's environment object (without the fields the catalog owns).
    pub body: Value,
}

/// An environment as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentRecord {
    /// The id.
    pub id: String,
    /// The unique name.
    pub name: String,
    /// The API's environment object.
    pub body: Value,
    /// When created.
    pub created_at: OffsetDateTime,
    /// When last changed.
    pub updated_at: OffsetDateTime,
    /// When archived.
    pub archived_at: Option<OffsetDateTime>,
    /// Creation order (the listing key).
    pub position: i64,
}

/// A page request over environments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentQuery {
    /// Include archived environments.
    pub include_archived: bool,
    /// Order by creation.
    pub order: Order,
    /// Start after this position (exclusive) in `order`.
    pub after_position: Option<i64>,
    /// Page size.
    pub limit: usize,
}

impl Default for EnvironmentQuery {
    fn default() -> Self {
        EnvironmentQuery {
            include_archived: false,
            order: Order::Descending,
            after_position: None,
            limit: 20,
        }
    }
}

/// A new API key: its hash only.
#[derive(Clone, PartialEq, Eq)]
pub struct NewApiKey {
    /// The id (`key_…`), not secret.
    pub id: String,
    /// A label for operators.
    pub name: String,
    /// Lowercase hex SHA-256 of the plaintext key ([`crate::hash_api_key`]).
    pub key_hash: String,
    /// The first characters of the key, for operators to recognise it.
    pub hint: String,
}

impl fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewApiKey")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

/// An API key as stored (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// The id (`key_…`).
    pub id: String,
    /// The label.
    pub name: String,
    /// The first characters of the key.
    pub hint: String,
    /// When created.
    pub created_at: OffsetDateTime,
    /// When revoked; a revoked key authenticates nothing.
    pub revoked_at: Option<OffsetDateTime>,
    /// What it may do (`admin` unless created `read_only`).
    pub role: crate::console::KeyRole,
}

/// Unix microseconds of `t`.
pub(crate) fn to_micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// A UTC time from unix microseconds.
pub(crate) fn from_micros(us: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .map_err(|e| CatalogError::corrupt(format!("timestamp {us} out of range: {e}")))
}

/// Now, truncated to microseconds (what the databases keep).
pub(crate) fn now_micros() -> i64 {
    to_micros(OffsetDateTime::now_utc())
}

/// Decodes a stored JSON body.
pub(crate) fn decode_body(what: &str, text: &str) -> Result<Value> {
    serde_json::from_str(text)
        .map_err(|e| CatalogError::corrupt(format!("body of {what} is not json: {e}")))
}

/// Encodes a body for storage.
pub(crate) fn encode_body(body: &Value) -> String {
    // Serializing a `Value` cannot fail: its map keys are strings.
    serde_json::to_string(body).unwrap_or_else(|_| "null".to_owned())
}

/// A version number as the databases store it.
pub(crate) fn version_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored version number.
pub(crate) fn version_u64(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| CatalogError::corrupt(format!("negative version {v}")))
}
