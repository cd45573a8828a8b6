//! [`VaultStore`] on PostgreSQL (migration 2). Creating a credential locks
//! its vault row (`FOR UPDATE`), so the per-vault count check holds across
//! replicas; a partial unique index keeps a binding unique among a vault's
//! live credentials even when two replicas race.

use serde_json::Value;
use tokio_postgres::Row;

use super::{is_unique_violation, limit_i64, map_pg, page, PgCatalog};
use crate::check_limit;
use crate::error::{CatalogError, Result};
use crate::types::{decode_body, encode_body, from_micros, now_micros, Page, ResourceKind};
use crate::vaults::{
    CredentialRecord, NewCredential, NewVault, VaultQuery, VaultRecord, VaultStore,
    MAX_CREDENTIALS_PER_VAULT,
};

/// Migration 2: vaults and credential metadata.
pub(super) const MIGRATION: &str = "CREATE TABLE vaults (
        position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        body TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        archived_at BIGINT
    );
    CREATE TABLE vault_credentials (
        position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        vault_id TEXT NOT NULL REFERENCES vaults (id) ON DELETE CASCADE,
        binding TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        archived_at BIGINT
    );
    CREATE INDEX vault_credentials_by_vault ON vault_credentials (vault_id, position);
    CREATE UNIQUE INDEX vault_credentials_live_binding
        ON vault_credentials (vault_id, binding) WHERE archived_at IS NULL;";

const VAULT_COLUMNS: &str = "position, id, body, created_at, updated_at, archived_at";

fn vault_record(row: &Row) -> Result<VaultRecord> {
    let id: String = row.get(1);
    let body: String = row.get(2);
    Ok(VaultRecord {
        body: decode_body(&format!("vault {id}"), &body)?,
        position: row.get(0),
        created_at: from_micros(row.get(3))?,
        updated_at: from_micros(row.get(4))?,
        archived_at: row.get::<_, Option<i64>>(5).map(from_micros).transpose()?,
        id,
    })
}

const CRED_COLUMNS: &str =
    "position, id, vault_id, binding, body, created_at, updated_at, archived_at";

fn cred_record(row: &Row) -> Result<CredentialRecord> {
    let id: String = row.get(1);
    let body: String = row.get(4);
    Ok(CredentialRecord {
        body: decode_body(&format!("credential {id}"), &body)?,
        position: row.get(0),
        vault_id: row.get(2),
        binding: row.get(3),
        created_at: from_micros(row.get(5))?,
        updated_at: from_micros(row.get(6))?,
        archived_at: row.get::<_, Option<i64>>(7).map(from_micros).transpose()?,
        id,
    })
}

async fn get_vault_in(
    client: &impl tokio_postgres::GenericClient,
    vault_id: &str,
    lock: bool,
) -> Result<VaultRecord> {
    let sql = format!(
        "SELECT {VAULT_COLUMNS} FROM vaults WHERE id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    match client
        .query_opt(&sql, &[&vault_id])
        .await
        .map_err(|e| map_pg("reading a vault", e))?
    {
        Some(row) => vault_record(&row),
        None => Err(CatalogError::not_found(ResourceKind::Vault, vault_id)),
    }
}

async fn get_cred_in(
    client: &impl tokio_postgres::GenericClient,
    vault_id: &str,
    credential_id: &str,
    lock: bool,
) -> Result<CredentialRecord> {
    let sql = format!(
        "SELECT {CRED_COLUMNS} FROM vault_credentials WHERE id = $1 AND vault_id = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    match client
        .query_opt(&sql, &[&credential_id, &vault_id])
        .await
        .map_err(|e| map_pg("reading a credential", e))?
    {
        Some(row) => cred_record(&row),
        None => Err(CatalogError::not_found(
            ResourceKind::Credential,
            credential_id,
        )),
    }
}

#[async_trait::async_trait]
impl VaultStore for PgCatalog {
    async fn create_vault(&self, new: NewVault) -> Result<VaultRecord> {
        let mut conn = self.pool.get().await?;
        let sql = format!(
            "INSERT INTO vaults (id, body, created_at, updated_at) VALUES ($1, $2, $3, $3)
             RETURNING {VAULT_COLUMNS}"
        );
        let row = conn
            .client()?
            .query_one(&sql, &[&new.id, &encode_body(&new.body), &now_micros()])
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    CatalogError::conflict(ResourceKind::Vault, &new.id, "the id exists")
                } else {
                    map_pg("inserting a vault", e)
                }
            })?;
        vault_record(&row)
    }

    async fn get_vault(&self, vault_id: &str) -> Result<VaultRecord> {
        let mut conn = self.pool.get().await?;
        get_vault_in(&*conn.client()?, vault_id, false).await
    }

    async fn update_vault(&self, vault_id: &str, body: Value) -> Result<VaultRecord> {
        let mut conn = self.pool.get().await?;
        let tx = conn
            .client()?
            .transaction()
            .await
            .map_err(|e| map_pg("starting a transaction", e))?;
        if get_vault_in(&tx, vault_id, true)
            .await?
            .archived_at
            .is_some()
        {
            return Err(CatalogError::Archived {
                kind: ResourceKind::Vault,
                id: vault_id.to_owned(),
            });
        }
        let sql = format!(
            "UPDATE vaults SET body = $2, updated_at = $3 WHERE id = $1 RETURNING {VAULT_COLUMNS}"
        );
        let row = tx
            .query_one(&sql, &[&vault_id, &encode_body(&body), &now_micros()])
            .await
            .map_err(|e| map_pg("updating a vault", e))?;
        let record = vault_record(&row)?;
        tx.commit().await.map_err(|e| map_pg("committing", e))?;
        Ok(record)
    }

    async fn archive_vault(&self, vault_id: &str) -> Result<VaultRecord> {
        let mut conn = self.pool.get().await?;
        let tx = conn
            .client()?
            .transaction()
            .await
            .map_err(|e| map_pg("starting a transaction", e))?;
        let now = now_micros();
        let n = tx
            .execute(
                "UPDATE vaults SET archived_at = $2, updated_at = $2 WHERE id = $1 AND archived_at IS NULL",
                &[&vault_id, &now],
            )
            .await
            .map_err(|e| map_pg("archiving a vault", e))?;
        if n > 0 {
            tx.execute(
                "UPDATE vault_credentials SET archived_at = $2, updated_at = $2
                 WHERE vault_id = $1 AND archived_at IS NULL",
                &[&vault_id, &now],
            )
            .await
            .map_err(|e| map_pg("archiving a vault's credentials", e))?;
        }
        let record = get_vault_in(&tx, vault_id, false).await?;
        tx.commit().await.map_err(|e| map_pg("committing", e))?;
        Ok(record)
    }

    async fn delete_vault(&self, vault_id: &str) -> Result<()> {
        let mut conn = self.pool.get().await?;
        let n = conn
            .client()?
            .execute("DELETE FROM vaults WHERE id = $1", &[&vault_id])
            .await
            .map_err(|e| map_pg("deleting a vault", e))?;
        if n == 0 {
            return Err(CatalogError::not_found(ResourceKind::Vault, vault_id));
        }
        Ok(())
    }

    async fn list_vaults(&self, q: VaultQuery) -> Result<Page<VaultRecord>> {
        check_limit(q.limit)?;
        let (cmp, dir) = q.order.keyset_sql();
        let sql = format!(
            "SELECT {VAULT_COLUMNS} FROM vaults
             WHERE ($1::BOOLEAN OR archived_at IS NULL) AND ($2::BIGINT IS NULL OR position {cmp} $2)
             ORDER BY position {dir} LIMIT $3"
        );
        let mut conn = self.pool.get().await?;
        let rows = conn
            .client()?
            .query(
                &sql,
                &[&q.include_archived, &q.after_position, &limit_i64(q.limit)],
            )
            .await
            .map_err(|e| map_pg("listing vaults", e))?;
        let items = rows.iter().map(vault_record).collect::<Result<Vec<_>>>()?;
        Ok(page(items, q.limit))
    }

    async fn create_credential(&self, new: NewCredential) -> Result<CredentialRecord> {
        let mut conn = self.pool.get().await?;
        let tx = conn
            .client()?
            .transaction()
            .await
            .map_err(|e| map_pg("starting a transaction", e))?;
        let vault = get_vault_in(&tx, &new.vault_id, true).await?;
        if vault.archived_at.is_some() {
            return Err(CatalogError::Archived {
                kind: ResourceKind::Vault,
                id: new.vault_id,
            });
        }
        let binding_taken = || {
            CatalogError::conflict(
                ResourceKind::Credential,
                &new.binding,
                format!(
                    "vault {} already has a live credential for it",
                    new.vault_id
                ),
            )
        };
        let live: i64 = tx
            .query_one(
                "SELECT COUNT(*)::BIGINT FROM vault_credentials WHERE vault_id = $1 AND archived_at IS NULL",
                &[&new.vault_id],
            )
            .await
            .map_err(|e| map_pg("counting a vault's credentials", e))?
            .get(0);
        let taken = tx
            .query_opt(
                "SELECT 1 FROM vault_credentials WHERE vault_id = $1 AND binding = $2 AND archived_at IS NULL",
                &[&new.vault_id, &new.binding],
            )
            .await
            .map_err(|e| map_pg("checking a credential binding", e))?
            .is_some();
        if taken {
            return Err(binding_taken());
        }
        if usize::try_from(live).unwrap_or(usize::MAX) >= MAX_CREDENTIALS_PER_VAULT {
            return Err(CatalogError::Invalid {
                reason: format!(
                    "vault {} already holds {MAX_CREDENTIALS_PER_VAULT} live credentials, the most allowed",
                    new.vault_id
                ),
            });
        }
        let sql = format!(
            "INSERT INTO vault_credentials (id, vault_id, binding, body, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $5) RETURNING {CRED_COLUMNS}"
        );
        let row = tx
            .query_one(
                &sql,
                &[
                    &new.id,
                    &new.vault_id,
                    &new.binding,
                    &encode_body(&new.body),
                    &now_micros(),
                ],
            )
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    let on_binding = e
                        .as_db_error()
                        .and_then(|d| d.constraint())
                        .is_some_and(|c| c.contains("binding"));
                    if on_binding {
                        binding_taken()
                    } else {
                        CatalogError::conflict(ResourceKind::Credential, &new.id, "the id exists")
                    }
                } else {
                    map_pg("inserting a credential", e)
                }
            })?;
        let record = cred_record(&row)?;
        tx.commit().await.map_err(|e| map_pg("committing", e))?;
        Ok(record)
    }

    async fn get_credential(
        &self,
        vault_id: &str,
        credential_id: &str,
    ) -> Result<CredentialRecord> {
        let mut conn = self.pool.get().await?;
        get_cred_in(&*conn.client()?, vault_id, credential_id, false).await
    }

    async fn update_credential(
        &self,
        vault_id: &str,
        credential_id: &str,
        body: Value,
    ) -> Result<CredentialRecord> {
        let mut conn = self.pool.get().await?;
        let tx = conn
            .client()?
            .transaction()
            .await
            .map_err(|e| map_pg("starting a transaction", e))?;
        let current = get_cred_in(&tx, vault_id, credential_id, true).await?;
        if current.archived_at.is_some() {
            return Err(CatalogError::Archived {
                kind: ResourceKind::Credential,
                id: credential_id.to_owned(),
            });
        }
        let sql = format!(
            "UPDATE vault_credentials SET body = $2, updated_at = $3 WHERE id = $1 RETURNING {CRED_COLUMNS}"
        );
        let row = tx
            .query_one(&sql, &[&credential_id, &encode_body(&body), &now_micros()])
            .await
            .map_err(|e| map_pg("updating a credential", e))?;
        let record = cred_record(&row)?;
        tx.commit().await.map_err(|e| map_pg("committing", e))?;
        Ok(record)
    }

    async fn archive_credential(
        &self,
        vault_id: &str,
        credential_id: &str,
    ) -> Result<CredentialRecord> {
        let mut conn = self.pool.get().await?;
        let client = conn.client()?;
        client
            .execute(
                "UPDATE vault_credentials SET archived_at = $3, updated_at = $3
                 WHERE id = $1 AND vault_id = $2 AND archived_at IS NULL",
                &[&credential_id, &vault_id, &now_micros()],
            )
            .await
            .map_err(|e| map_pg("archiving a credential", e))?;
        get_cred_in(&*client, vault_id, credential_id, false).await
    }

    async fn delete_credential(&self, vault_id: &str, credential_id: &str) -> Result<()> {
        let mut conn = self.pool.get().await?;
        let n = conn
            .client()?
            .execute(
                "DELETE FROM vault_credentials WHERE id = $1 AND vault_id = $2",
                &[&credential_id, &vault_id],
            )
            .await
            .map_err(|e| map_pg("deleting a credential", e))?;
        if n == 0 {
            return Err(CatalogError::not_found(
                ResourceKind::Credential,
                credential_id,
            ));
        }
        Ok(())
    }

    async fn list_credentials(
        &self,
        vault_id: &str,
        q: VaultQuery,
    ) -> Result<Page<CredentialRecord>> {
        check_limit(q.limit)?;
        let (cmp, dir) = q.order.keyset_sql();
        let sql = format!(
            "SELECT {CRED_COLUMNS} FROM vault_credentials
             WHERE vault_id = $1 AND ($2::BOOLEAN OR archived_at IS NULL)
               AND ($3::BIGINT IS NULL OR position {cmp} $3)
             ORDER BY position {dir} LIMIT $4"
        );
        let mut conn = self.pool.get().await?;
        let client = conn.client()?;
        get_vault_in(&*client, vault_id, false).await?;
        let rows = client
            .query(
                &sql,
                &[
                    &vault_id,
                    &q.include_archived,
                    &q.after_position,
                    &limit_i64(q.limit),
                ],
            )
            .await
            .map_err(|e| map_pg("listing credentials", e))?;
        let items = rows.iter().map(cred_record).collect::<Result<Vec<_>>>()?;
        Ok(page(items, q.limit))
    }
}
