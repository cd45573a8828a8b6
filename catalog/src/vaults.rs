//! Vaults and their credentials: METADATA ONLY.
//!
//! A vault (`vlt_…`) groups credentials (`vcrd_…`). The catalog keeps what the
//! API publishes about them (display names, metadata, the non-secret part of
//! a credential's `auth`) as opaque JSON bodies, like agents and
//! environments. Secret values (tokens, client secrets, `secret_value`) are
//! never handed to the catalog: the API relays them to the customer's
//! vault-bridge and stores only what is left.
//!
//! Invariants every implementation keeps:
//! - a credential belongs to exactly one vault; deleting a vault deletes its
//!   credentials, archiving a vault archives its credentials (same instant);
//! - archived vaults and credentials refuse updates, and an archived vault
//!   refuses new credentials;
//! - among a vault's live (not archived) credentials the [`NewCredential::binding`]
//!   (the MCP server URL or the environment variable name a credential is
//!   for) is unique, and there are at most [`MAX_CREDENTIALS_PER_VAULT`];
//! - listings are ordered by creation (`position`), stable under inserts.

use serde_json::Value;
use time::OffsetDateTime;

use crate::error::Result;
use crate::types::{Order, Page};

/// Most live (not archived) credentials one vault holds.
pub const MAX_CREDENTIALS_PER_VAULT: usize = 20;

/// A new vault.
#[derive(Debug, Clone, PartialEq)]
pub struct NewVault {
    /// The id (`vlt_…`, chosen by the caller).
    pub id: String,
    /// The API's vault object (without the fields the catalog owns).
    pub body: Value,
}

/// A vault as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct VaultRecord {
    /// The id.
    pub id: String,
    /// The API's vault object.
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

/// A page request over vaults, or over one vault's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultQuery {
    /// Include archived items.
    pub include_archived: bool,
    /// Order by creation.
    pub order: Order,
    /// Start after this position (exclusive) in `order`.
    pub after_position: Option<i64>,
    /// Page size.
    pub limit: usize,
}

impl Default for VaultQuery {
    fn default() -> Self {
        VaultQuery {
            include_archived: false,
            order: Order::Descending,
            after_position: None,
            limit: 20,
        }
    }
}

/// A new credential: metadata only, never a secret value.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCredential {
    /// The id (`vcrd_…`, chosen by the caller).
    pub id: String,
    /// The vault it belongs to.
    pub vault_id: String,
    /// What the credential is for, unique among the vault's live
    /// credentials: the MCP server URL, or the environment variable name.
    pub binding: String,
    /// The API's credential object without secrets (and without the fields
    /// the catalog owns).
    pub body: Value,
}

/// A credential as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialRecord {
    /// The id.
    pub id: String,
    /// The vault it belongs to.
    pub vault_id: String,
    /// See [`NewCredential::binding`].
    pub binding: String,
    /// The API's credential object (no secrets).
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

/// Durable storage of vaults and credential metadata. Every
/// [`crate::Catalog`] is one.
#[async_trait::async_trait]
pub trait VaultStore: Send + Sync {
    /// Stores a new vault. [`crate::CatalogError::Conflict`] if the id exists.
    async fn create_vault(&self, new: NewVault) -> Result<VaultRecord>;

    /// The vault. [`crate::CatalogError::NotFound`] if it does not exist.
    async fn get_vault(&self, vault_id: &str) -> Result<VaultRecord>;

    /// Replaces the vault's body. [`crate::CatalogError::Archived`] if it is archived.
    async fn update_vault(&self, vault_id: &str, body: Value) -> Result<VaultRecord>;

    /// Marks the vault and its live credentials archived (archiving again
    /// is a no-op).
    async fn archive_vault(&self, vault_id: &str) -> Result<VaultRecord>;

    /// Deletes the vault and its credentials.
    async fn delete_vault(&self, vault_id: &str) -> Result<()>;

    /// A page of vaults.
    async fn list_vaults(&self, query: VaultQuery) -> Result<Page<VaultRecord>>;

    /// Stores a credential's metadata. [`crate::CatalogError::NotFound`] if
    /// the vault does not exist, [`crate::CatalogError::Archived`] if it is
    /// archived, [`crate::CatalogError::Conflict`] if the id exists or a live
    /// credential of the vault has the same binding,
    /// [`crate::CatalogError::Invalid`] if the vault holds
    /// [`MAX_CREDENTIALS_PER_VAULT`] live credentials.
    async fn create_credential(&self, new: NewCredential) -> Result<CredentialRecord>;

    /// The credential of `vault_id`. [`crate::CatalogError::NotFound`] if it
    /// does not exist in that vault.
    async fn get_credential(&self, vault_id: &str, credential_id: &str)
        -> Result<CredentialRecord>;

    /// Replaces the credential's body (its binding never changes).
    /// [`crate::CatalogError::Archived`] if it is archived.
    async fn update_credential(
        &self,
        vault_id: &str,
        credential_id: &str,
        body: Value,
    ) -> Result<CredentialRecord>;

    /// Marks the credential archived (archiving again is a no-op).
    async fn archive_credential(
        &self,
        vault_id: &str,
        credential_id: &str,
    ) -> Result<CredentialRecord>;

    /// Deletes the credential.
    async fn delete_credential(&self, vault_id: &str, credential_id: &str) -> Result<()>;

    /// A page of one vault's credentials; [`crate::CatalogError::NotFound`]
    /// if the vault does not exist.
    async fn list_credentials(
        &self,
        vault_id: &str,
        query: VaultQuery,
    ) -> Result<Page<CredentialRecord>>;
}
