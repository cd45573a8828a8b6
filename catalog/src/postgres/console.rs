//! [`ConsoleStore`] on PostgreSQL (migration 4): `api_keys.role` and
//! `console_sessions`, shared by every replica on the database.

use time::OffsetDateTime;
use tokio_postgres::Row;

use super::{is_unique_violation, key_record, map_pg, PgCatalog, KEY_COLUMNS};
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
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);";

#[async_trait::async_trait]
impl ConsoleStore for PgCatalog {
    async fn create_api_key_with_role(
        &self,
        new: NewApiKey,
        role: KeyRole,
    ) -> Result<ApiKeyRecord> {
        let mut conn = self.pool.get().await?;
        let sql = format!(
            "INSERT INTO api_keys (id, name, key_hash, hint, created_at, role) VALUES ($1, $2, $3, $4, $5, $6)
             RETURNING {KEY_COLUMNS}"
        );
        let row = conn
            .client()?
            .query_one(
                &sql,
                &[
                    &new.id,
                    &new.name,
                    &new.key_hash,
                    &new.hint,
                    &now_micros(),
                    &role.as_str(),
                ],
            )
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    CatalogError::conflict(ResourceKind::ApiKey, &new.id, "the id or key exists")
                } else {
                    map_pg("inserting an api key", e)
                }
            })?;
        key_record(&row)
    }

    async fn create_console_session(&self, new: NewConsoleSession) -> Result<()> {
        let mut conn = self.pool.get().await?;
        conn.client()?
            .execute(
                "INSERT INTO console_sessions (token_hash, key_id, role, csrf_token, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &new.token_hash,
                    &new.key_id,
                    &new.role.as_str(),
                    &new.csrf_token,
                    &to_micros(new.created_at),
                    &to_micros(new.expires_at),
                ],
            )
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    CatalogError::conflict(
                        ResourceKind::ApiKey,
                        &new.key_id,
                        "the console session token exists",
                    )
                } else {
                    map_pg("inserting a console session", e)
                }
            })?;
        Ok(())
    }

    async fn find_console_session(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Option<ConsoleSessionRecord>> {
        let mut conn = self.pool.get().await?;
        let row = conn
            .client()?
            .query_opt(
                "SELECT s.token_hash, s.key_id, k.name, s.role, s.csrf_token, s.created_at, s.expires_at
                 FROM console_sessions s JOIN api_keys k ON k.id = s.key_id
                 WHERE s.token_hash = $1 AND s.expires_at > $2 AND k.revoked_at IS NULL",
                &[&token_hash, &to_micros(now)],
            )
            .await
            .map_err(|e| map_pg("reading a console session", e))?;
        row.as_ref().map(session_record).transpose()
    }

    async fn delete_console_session(&self, token_hash: &str) -> Result<()> {
        let mut conn = self.pool.get().await?;
        conn.client()?
            .execute(
                "DELETE FROM console_sessions WHERE token_hash = $1",
                &[&token_hash],
            )
            .await
            .map_err(|e| map_pg("deleting a console session", e))?;
        Ok(())
    }

    async fn delete_expired_console_sessions(&self, now: OffsetDateTime) -> Result<u64> {
        let mut conn = self.pool.get().await?;
        conn.client()?
            .execute(
                "DELETE FROM console_sessions WHERE expires_at <= $1",
                &[&to_micros(now)],
            )
            .await
            .map_err(|e| map_pg("deleting expired console sessions", e))
    }
}

fn session_record(row: &Row) -> Result<ConsoleSessionRecord> {
    let role: String = row.get(3);
    Ok(ConsoleSessionRecord {
        token_hash: row.get(0),
        key_id: row.get(1),
        key_name: row.get(2),
        role: KeyRole::parse(&role)
            .ok_or_else(|| CatalogError::corrupt(format!("console session role {role:?}")))?,
        csrf_token: row.get(4),
        created_at: from_micros(row.get(5))?,
        expires_at: from_micros(row.get(6))?,
    })
}
