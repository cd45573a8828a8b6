//! [`ConsoleStore`] on SQLite (migration 4): `api_keys.role` and
//! `console_sessions`.

use rusqlite::{params, OptionalExtension};
use time::OffsetDateTime;

use super::{
    commit, immediate, is_constraint, key_record, key_row, map_sql, SqliteCatalog, KEY_COLUMNS,
};
use crate::console::{ConsoleSessionRecord, ConsoleStore, KeyRole, NewConsoleSession};
use crate::error::{CatalogError, Result};
use crate::types::{from_micros, now_micros, to_micros, ApiKeyRecord, NewApiKey, ResourceKind};

/// Migration 4: key roles (existing keys are admins) and console sessions.
pub(super) const MIGRATION: &str =
    "ALTER TABLE api_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'admin';
    CREATE TABLE console_sessions (
        token_hash TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        role TEXT NOT NULL,
        csrf_token TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);";

type SessionRow = (String, String, String, String, String, i64, i64);

#[async_trait::async_trait]
impl ConsoleStore for SqliteCatalog {
    async fn create_api_key_with_role(
        &self,
        new: NewApiKey,
        role: KeyRole,
    ) -> Result<ApiKeyRecord> {
        self.with(move |conn| {
            let tx = immediate(conn)?;
            tx.execute(
                "INSERT INTO api_keys (id, name, key_hash, hint, created_at, role) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![new.id, new.name, new.key_hash, new.hint, now_micros(), role.as_str()],
            )
            .map_err(|e| {
                if is_constraint(&e) {
                    CatalogError::conflict(ResourceKind::ApiKey, &new.id, "the id or key exists")
                } else {
                    map_sql("inserting an api key", e)
                }
            })?;
            let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1");
            let row = tx
                .query_row(&sql, params![new.id], key_row)
                .map_err(|e| map_sql("reading an api key", e))?;
            commit(tx)?;
            key_record(row)
        })
        .await
    }

    async fn create_console_session(&self, new: NewConsoleSession) -> Result<()> {
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO console_sessions (token_hash, key_id, role, csrf_token, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    new.token_hash,
                    new.key_id,
                    new.role.as_str(),
                    new.csrf_token,
                    to_micros(new.created_at),
                    to_micros(new.expires_at)
                ],
            )
            .map_err(|e| {
                if is_constraint(&e) {
                    CatalogError::conflict(
                        ResourceKind::ApiKey,
                        &new.key_id,
                        "the console session token exists",
                    )
                } else {
                    map_sql("inserting a console session", e)
                }
            })?;
            Ok(())
        })
        .await
    }

    async fn find_console_session(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Option<ConsoleSessionRecord>> {
        let token_hash = token_hash.to_owned();
        let now = to_micros(now);
        self.with(move |conn| {
            let row: Option<SessionRow> = conn
                .query_row(
                    "SELECT s.token_hash, s.key_id, k.name, s.role, s.csrf_token, s.created_at, s.expires_at
                     FROM console_sessions s JOIN api_keys k ON k.id = s.key_id
                     WHERE s.token_hash = ?1 AND s.expires_at > ?2 AND k.revoked_at IS NULL",
                    params![token_hash, now],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
                )
                .optional()
                .map_err(|e| map_sql("reading a console session", e))?;
            row.map(session_record).transpose()
        })
        .await
    }

    async fn delete_console_session(&self, token_hash: &str) -> Result<()> {
        let token_hash = token_hash.to_owned();
        self.with(move |conn| {
            conn.execute(
                "DELETE FROM console_sessions WHERE token_hash = ?1",
                params![token_hash],
            )
            .map_err(|e| map_sql("deleting a console session", e))?;
            Ok(())
        })
        .await
    }

    async fn delete_expired_console_sessions(&self, now: OffsetDateTime) -> Result<u64> {
        let now = to_micros(now);
        self.with(move |conn| {
            let n = conn
                .execute(
                    "DELETE FROM console_sessions WHERE expires_at <= ?1",
                    params![now],
                )
                .map_err(|e| map_sql("deleting expired console sessions", e))?;
            Ok(n as u64)
        })
        .await
    }
}

fn session_record(row: SessionRow) -> Result<ConsoleSessionRecord> {
    let (token_hash, key_id, key_name, role, csrf_token, created, expires) = row;
    Ok(ConsoleSessionRecord {
        role: KeyRole::parse(&role)
            .ok_or_else(|| CatalogError::corrupt(format!("console session role {role:?}")))?,
        token_hash,
        key_id,
        key_name,
        csrf_token,
        created_at: from_micros(created)?,
        expires_at: from_micros(expires)?,
    })
}
