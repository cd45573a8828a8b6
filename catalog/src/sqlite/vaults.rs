//! [`VaultStore`] on SQLite: two tables, `vaults` and `vault_credentials`
//! (migration 2). A partial unique index keeps a binding unique among a
//! vault's live credentials; every write is one IMMEDIATE transaction, so
//! the per-vault count check cannot race.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::Value;

use super::{
    commit, immediate, is_constraint, limit_i64, map_sql, page, query_rows, SqliteCatalog,
};
use crate::check_limit;
use crate::error::{CatalogError, Result};
use crate::types::{decode_body, encode_body, from_micros, now_micros, Page, ResourceKind};
use crate::vaults::{
    CredentialRecord, NewCredential, NewVault, VaultQuery, VaultRecord, VaultStore,
    MAX_CREDENTIALS_PER_VAULT,
};

/// Migration 2: vaults and credential metadata.
pub(super) const MIGRATION: &str = "CREATE TABLE vaults (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        body TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        archived_at INTEGER
    );
    CREATE TABLE vault_credentials (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        vault_id TEXT NOT NULL REFERENCES vaults (id) ON DELETE CASCADE,
        binding TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        archived_at INTEGER
    );
    CREATE INDEX vault_credentials_by_vault ON vault_credentials (vault_id, position);
    CREATE UNIQUE INDEX vault_credentials_live_binding
        ON vault_credentials (vault_id, binding) WHERE archived_at IS NULL;";

const VAULT_COLUMNS: &str = "position, id, body, created_at, updated_at, archived_at";

type VaultRow = (i64, String, String, i64, i64, Option<i64>);

fn vault_row(r: &Row<'_>) -> rusqlite::Result<VaultRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn vault_record(row: VaultRow) -> Result<VaultRecord> {
    let (position, id, body, created, updated, archived) = row;
    Ok(VaultRecord {
        body: decode_body(&format!("vault {id}"), &body)?,
        id,
        created_at: from_micros(created)?,
        updated_at: from_micros(updated)?,
        archived_at: archived.map(from_micros).transpose()?,
        position,
    })
}

fn get_vault_tx(conn: &Connection, vault_id: &str) -> Result<VaultRecord> {
    let sql = format!("SELECT {VAULT_COLUMNS} FROM vaults WHERE id = ?1");
    match conn
        .query_row(&sql, params![vault_id], vault_row)
        .optional()
        .map_err(|e| map_sql("reading a vault", e))?
    {
        Some(row) => vault_record(row),
        None => Err(CatalogError::not_found(ResourceKind::Vault, vault_id)),
    }
}

const CRED_COLUMNS: &str =
    "position, id, vault_id, binding, body, created_at, updated_at, archived_at";

type CredRow = (i64, String, String, String, String, i64, i64, Option<i64>);

fn cred_row(r: &Row<'_>) -> rusqlite::Result<CredRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn cred_record(row: CredRow) -> Result<CredentialRecord> {
    let (position, id, vault_id, binding, body, created, updated, archived) = row;
    Ok(CredentialRecord {
        body: decode_body(&format!("credential {id}"), &body)?,
        id,
        vault_id,
        binding,
        created_at: from_micros(created)?,
        updated_at: from_micros(updated)?,
        archived_at: archived.map(from_micros).transpose()?,
        position,
    })
}

fn get_cred_tx(conn: &Connection, vault_id: &str, credential_id: &str) -> Result<CredentialRecord> {
    let sql =
        format!("SELECT {CRED_COLUMNS} FROM vault_credentials WHERE id = ?1 AND vault_id = ?2");
    match conn
        .query_row(&sql, params![credential_id, vault_id], cred_row)
        .optional()
        .map_err(|e| map_sql("reading a credential", e))?
    {
        Some(row) => cred_record(row),
        None => Err(CatalogError::not_found(
            ResourceKind::Credential,
            credential_id,
        )),
    }
}

#[async_trait::async_trait]
impl VaultStore for SqliteCatalog {
    async fn create_vault(&self, new: NewVault) -> Result<VaultRecord> {
        self.with(move |conn| {
            let tx = immediate(conn)?;
            tx.execute(
                "INSERT INTO vaults (id, body, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                params![new.id, encode_body(&new.body), now_micros()],
            )
            .map_err(|e| {
                if is_constraint(&e) {
                    CatalogError::conflict(ResourceKind::Vault, &new.id, "the id exists")
                } else {
                    map_sql("inserting a vault", e)
                }
            })?;
            let record = get_vault_tx(&tx, &new.id)?;
            commit(tx)?;
            Ok(record)
        })
        .await
    }

    async fn get_vault(&self, vault_id: &str) -> Result<VaultRecord> {
        let id = vault_id.to_owned();
        self.with(move |conn| get_vault_tx(conn, &id)).await
    }

    async fn update_vault(&self, vault_id: &str, body: Value) -> Result<VaultRecord> {
        let id = vault_id.to_owned();
        self.with(move |conn| {
            let tx = immediate(conn)?;
            if get_vault_tx(&tx, &id)?.archived_at.is_some() {
                return Err(CatalogError::Archived {
                    kind: ResourceKind::Vault,
                    id,
                });
            }
            tx.execute(
                "UPDATE vaults SET body = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, encode_body(&body), now_micros()],
            )
            .map_err(|e| map_sql("updating a vault", e))?;
            let record = get_vault_tx(&tx, &id)?;
            commit(tx)?;
            Ok(record)
        })
        .await
    }

    async fn archive_vault(&self, vault_id: &str) -> Result<VaultRecord> {
        let id = vault_id.to_owned();
        self.with(move |conn| {
            let tx = immediate(conn)?;
            let now = now_micros();
            let n = tx
                .execute(
                    "UPDATE vaults SET archived_at = ?2, updated_at = ?2 WHERE id = ?1 AND archived_at IS NULL",
                    params![id, now],
                )
                .map_err(|e| map_sql("archiving a vault", e))?;
            if n > 0 {
                tx.execute(
                    "UPDATE vault_credentials SET archived_at = ?2, updated_at = ?2
                     WHERE vault_id = ?1 AND archived_at IS NULL",
                    params![id, now],
                )
                .map_err(|e| map_sql("archiving a vault's credentials", e))?;
            }
            let record = get_vault_tx(&tx, &id)?;
            commit(tx)?;
            Ok(record)
        })
        .await
    }

    async fn delete_vault(&self, vault_id: &str) -> Result<()> {
        let id = vault_id.to_owned();
        self.with(move |conn| {
            let n = conn
                .execute("DELETE FROM vaults WHERE id = ?1", params![id])
                .map_err(|e| map_sql("deleting a vault", e))?;
            if n == 0 {
                return Err(CatalogError::not_found(ResourceKind::Vault, id));
            }
            Ok(())
        })
        .await
    }

    async fn list_vaults(&self, q: VaultQuery) -> Result<Page<VaultRecord>> {
        check_limit(q.limit)?;
        self.with(move |conn| {
            let (cmp, dir) = q.order.keyset_sql();
            let sql = format!(
                "SELECT {VAULT_COLUMNS} FROM vaults
                 WHERE (?1 OR archived_at IS NULL) AND (?2 IS NULL OR position {cmp} ?2)
                 ORDER BY position {dir} LIMIT ?3"
            );
            let rows = query_rows(
                conn,
                &sql,
                params![q.include_archived, q.after_position, limit_i64(q.limit)],
                vault_row,
                "listing vaults",
            )?;
            let items = rows
                .into_iter()
                .map(vault_record)
                .collect::<Result<Vec<_>>>()?;
            Ok(page(items, q.limit))
        })
        .await
    }

    async fn create_credential(&self, new: NewCredential) -> Result<CredentialRecord> {
        self.with(move |conn| {
            let tx = immediate(conn)?;
            let vault = get_vault_tx(&tx, &new.vault_id)?;
            if vault.archived_at.is_some() {
                return Err(CatalogError::Archived {
                    kind: ResourceKind::Vault,
                    id: new.vault_id,
                });
            }
            let taken = tx
                .query_row(
                    "SELECT 1 FROM vault_credentials WHERE vault_id = ?1 AND binding = ?2 AND archived_at IS NULL",
                    params![new.vault_id, new.binding],
                    |_| Ok(()),
                )
                .optional()
                .map_err(|e| map_sql("checking a credential binding", e))?
                .is_some();
            if taken {
                return Err(CatalogError::conflict(
                    ResourceKind::Credential,
                    &new.binding,
                    format!("vault {} already has a live credential for it", new.vault_id),
                ));
            }
            let live: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM vault_credentials WHERE vault_id = ?1 AND archived_at IS NULL",
                    params![new.vault_id],
                    |r| r.get(0),
                )
                .map_err(|e| map_sql("counting a vault's credentials", e))?;
            if usize::try_from(live).unwrap_or(usize::MAX) >= MAX_CREDENTIALS_PER_VAULT {
                return Err(CatalogError::Invalid {
                    reason: format!(
                        "vault {} already holds {MAX_CREDENTIALS_PER_VAULT} live credentials, the most allowed",
                        new.vault_id
                    ),
                });
            }
            tx.execute(
                "INSERT INTO vault_credentials (id, vault_id, binding, body, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![new.id, new.vault_id, new.binding, encode_body(&new.body), now_micros()],
            )
            .map_err(|e| {
                if is_constraint(&e) {
                    CatalogError::conflict(ResourceKind::Credential, &new.id, "the id exists")
                } else {
                    map_sql("inserting a credential", e)
                }
            })?;
            let record = get_cred_tx(&tx, &new.vault_id, &new.id)?;
            commit(tx)?;
            Ok(record)
        })
        .await
    }

    async fn get_credential(
        &self,
        vault_id: &str,
        credential_id: &str,
    ) -> Result<CredentialRecord> {
        let (vault_id, id) = (vault_id.to_owned(), credential_id.to_owned());
        self.with(move |conn| get_cred_tx(conn, &vault_id, &id))
            .await
    }

    async fn update_credential(
        &self,
        vault_id: &str,
        credential_id: &str,
        body: Value,
    ) -> Result<CredentialRecord> {
        let (vault_id, id) = (vault_id.to_owned(), credential_id.to_owned());
        self.with(move |conn| {
            let tx = immediate(conn)?;
            if get_cred_tx(&tx, &vault_id, &id)?.archived_at.is_some() {
                return Err(CatalogError::Archived {
                    kind: ResourceKind::Credential,
                    id,
                });
            }
            tx.execute(
                "UPDATE vault_credentials SET body = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, encode_body(&body), now_micros()],
            )
            .map_err(|e| map_sql("updating a credential", e))?;
            let record = get_cred_tx(&tx, &vault_id, &id)?;
            commit(tx)?;
            Ok(record)
        })
        .await
    }

    async fn archive_credential(
        &self,
        vault_id: &str,
        credential_id: &str,
    ) -> Result<CredentialRecord> {
        let (vault_id, id) = (vault_id.to_owned(), credential_id.to_owned());
        self.with(move |conn| {
            let tx = immediate(conn)?;
            tx.execute(
                "UPDATE vault_credentials SET archived_at = ?3, updated_at = ?3
                 WHERE id = ?1 AND vault_id = ?2 AND archived_at IS NULL",
                params![id, vault_id, now_micros()],
            )
            .map_err(|e| map_sql("archiving a credential", e))?;
            let record = get_cred_tx(&tx, &vault_id, &id)?;
            commit(tx)?;
            Ok(record)
        })
        .await
    }

    async fn delete_credential(&self, vault_id: &str, credential_id: &str) -> Result<()> {
        let (vault_id, id) = (vault_id.to_owned(), credential_id.to_owned());
        self.with(move |conn| {
            let n = conn
                .execute(
                    "DELETE FROM vault_credentials WHERE id = ?1 AND vault_id = ?2",
                    params![id, vault_id],
                )
                .map_err(|e| map_sql("deleting a credential", e))?;
            if n == 0 {
                return Err(CatalogError::not_found(ResourceKind::Credential, id));
            }
            Ok(())
        })
        .await
    }

    async fn list_credentials(
        &self,
        vault_id: &str,
        q: VaultQuery,
    ) -> Result<Page<CredentialRecord>> {
        check_limit(q.limit)?;
        let vault_id = vault_id.to_owned();
        self.with(move |conn| {
            get_vault_tx(conn, &vault_id)?;
            let (cmp, dir) = q.order.keyset_sql();
            let sql = format!(
                "SELECT {CRED_COLUMNS} FROM vault_credentials
                 WHERE vault_id = ?1 AND (?2 OR archived_at IS NULL) AND (?3 IS NULL OR position {cmp} ?3)
                 ORDER BY position {dir} LIMIT ?4"
            );
            let rows = query_rows(
                conn,
                &sql,
                params![vault_id, q.include_archived, q.after_position, limit_i64(q.limit)],
                cred_row,
                "listing credentials",
            )?;
            let items = rows
                .into_iter()
                .map(cred_record)
                .collect::<Result<Vec<_>>>()?;
            Ok(page(items, q.limit))
        })
        .await
    }
}
