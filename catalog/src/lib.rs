//! The catalog: the durable, slowly changing configuration the public API
//! serves besides sessions: agents (every update is a new immutable version),
//! environments (unique names) and API keys (stored as SHA-256 hashes of
//! high-entropy keys; the plaintext exists only in the creation response).
//! One trait, [`Catalog`], with two implementations that pass one
//! conformance suite: [`SqliteCatalog`] (the embedded default: its own file,
//! `catalog.sqlite3`, in the data directory) and [`PgCatalog`] (PostgreSQL,
//! for several control-plane replicas). Both apply versioned migrations.
//!
//! The catalog stores the API's resource objects as opaque JSON bodies next
//! to the columns it indexes or enforces (ids, names, versions, timestamps,
//! archival). It does not validate those bodies (the `api` crate does), does
//! not store sessions or events (the `session-store` crate does) and does not
//! map errors to HTTP (the API does, in one function).
//!
//! Invariants every implementation keeps:
//! - an agent's versions start at 1 and increase by one per update; a stored
//!   version never changes; an update carries the version it was computed
//!   from and is refused with [`CatalogError::Conflict`] if another update
//!   got there first; archived agents and environments refuse updates;
//! - environment names are unique among existing (not deleted) environments;
//! - listings are ordered by creation (`position`), stable under inserts.
//!
//! Vaults and credentials ([`vaults`]) are metadata only: no secret value
//! ever reaches the catalog.
//!
//! The control plane's audit ([`audit`]) lives here too: the agents' signed
//! audit checkpoints and audit health, and one row per state-changing API
//! request or admin action.
//!
//! API keys have a role, and the web console keeps its server-side sessions
//! here ([`console`]): only a hash of the cookie token, so every replica on
//! one database accepts a sign-in and revoking the key ends it.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod audit;
pub mod config;
pub mod console;
mod error;
pub mod identities;
pub mod join_tokens;
pub mod keys;
mod migrate;
pub mod postgres;
pub mod sqlite;
mod types;
pub mod vaults;

pub use audit::AuditStore;
pub use config::{open_catalog, CatalogConfig, CatalogConfigError, RawCatalogConfig};
pub use console::{ConsoleSessionRecord, ConsoleStore, KeyRole, NewConsoleSession};
pub use error::{CatalogError, Result};
pub use identities::{EnrolledAgent, EnrolledAgents};
pub use join_tokens::{JoinTokens, SharedJoinToken, TokenClaim, TokenRevocation};
pub use keys::{hash_api_key, GeneratedKey, API_KEY_PREFIX};
pub use postgres::{PgCatalog, PgCatalogOptions};
pub use sqlite::SqliteCatalog;
pub use types::{
    AgentQuery, AgentRecord, ApiKeyRecord, EnvironmentQuery, EnvironmentRecord, NewAgent,
    NewApiKey, NewEnvironment, Order, Page, ResourceKind, VersionQuery,
};
pub use vaults::{
    CredentialRecord, NewCredential, NewVault, VaultQuery, VaultRecord, VaultStore,
    MAX_CREDENTIALS_PER_VAULT,
};

/// Durable storage of agents, environments, API keys and (through
/// [`VaultStore`]) vault and credential metadata. Share one per process
/// (`Arc<dyn Catalog>`).
#[async_trait::async_trait]
pub trait Catalog:
    VaultStore
    + audit::AuditStore
    + console::ConsoleStore
    + identities::EnrolledAgents
    + join_tokens::JoinTokens
    + Send
    + Sync
    + std::fmt::Debug
{
    /// Stores version 1 of a new agent. [`CatalogError::Conflict`] if the id exists.
    async fn create_agent(&self, new: NewAgent) -> Result<AgentRecord>;

    /// The agent at `version` (`None`: the latest). [`CatalogError::NotFound`]
    /// if the agent or that version does not exist.
    async fn get_agent(&self, agent_id: &str, version: Option<u64>) -> Result<AgentRecord>;

    /// Stores `body` as version `based_on + 1`. [`CatalogError::Conflict`]
    /// unless `based_on` is the latest version; [`CatalogError::Archived`] if
    /// the agent is archived.
    async fn update_agent(
        &self,
        agent_id: &str,
        based_on: u64,
        body: serde_json::Value,
    ) -> Result<AgentRecord>;

    /// Marks the agent archived (terminal; archiving again is a no-op).
    /// Returns the latest version.
    async fn archive_agent(&self, agent_id: &str) -> Result<AgentRecord>;

    /// A page of agents (their latest versions).
    async fn list_agents(&self, query: AgentQuery) -> Result<Page<AgentRecord>>;

    /// A page of one agent's versions; [`CatalogError::NotFound`] if the agent
    /// does not exist.
    async fn list_agent_versions(
        &self,
        agent_id: &str,
        query: VersionQuery,
    ) -> Result<Page<AgentRecord>>;

    /// Stores a new environment. [`CatalogError::Conflict`] if the id or the
    /// name is taken.
    async fn create_environment(&self, new: NewEnvironment) -> Result<EnvironmentRecord>;

    /// The environment. [`CatalogError::NotFound`] if it does not exist.
    async fn get_environment(&self, environment_id: &str) -> Result<EnvironmentRecord>;

    /// Replaces the environment's name and body. [`CatalogError::Conflict`]
    /// if the name is taken by another one, [`CatalogError::Archived`] if it
    /// is archived.
    async fn update_environment(
        &self,
        environment_id: &str,
        name: &str,
        body: serde_json::Value,
    ) -> Result<EnvironmentRecord>;

    /// Marks the environment archived (archiving again is a no-op).
    async fn archive_environment(&self, environment_id: &str) -> Result<EnvironmentRecord>;

    /// Deletes the environment; its name becomes free.
    async fn delete_environment(&self, environment_id: &str) -> Result<()>;

    /// A page of environments.
    async fn list_environments(&self, query: EnvironmentQuery) -> Result<Page<EnvironmentRecord>>;

    /// Stores a key's hash. [`CatalogError::Conflict`] if the id or hash exists.
    async fn create_api_key(&self, new: NewApiKey) -> Result<ApiKeyRecord>;

    /// The key whose hash is `key_hash` (revoked keys included: the caller
    /// checks [`ApiKeyRecord::revoked_at`]). `None` if no key has it.
    async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>>;

    /// Every key, oldest first.
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>>;

    /// Revokes the key (revoking again is a no-op). [`CatalogError::NotFound`]
    /// if it does not exist.
    async fn revoke_api_key(&self, key_id: &str) -> Result<ApiKeyRecord>;
}

/// Checks a page size.
pub(crate) fn check_limit(limit: usize) -> Result<()> {
    if limit == 0 || limit > 10_000 {
        return Err(CatalogError::Invalid {
            reason: format!("limit {limit} is not within 1..=10000"),
        });
    }
    Ok(())
}
