//! [`JoinTokens`] on SQLite (migration 6): `join_tokens`. Claims and
//! revocations run in one `BEGIN IMMEDIATE` transaction each.

use rusqlite::{params, OptionalExtension, Row};

use super::{commit, immediate, map_sql, SqliteCatalog};
use crate::error::Result;
use crate::join_tokens::{
    unclaimable, unrevocable, JoinTokens, SharedJoinToken, TokenClaim, TokenRevocation, COLUMNS,
};

/// Migration 6: join tokens shared by every replica.
pub(super) const MIGRATION: &str = "CREATE TABLE join_tokens (
        token_hash TEXT PRIMARY KEY,
        token_id TEXT NOT NULL UNIQUE,
        environment_id TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER,
        used_by TEXT,
        revoked_at INTEGER
    );";

fn row(r: &Row<'_>) -> rusqlite::Result<SharedJoinToken> {
    Ok(SharedJoinToken {
        token_id: r.get(0)?,
        environment_id: r.get(1)?,
        created_at: r.get(2)?,
        expires_at: r.get(3)?,
        used_at: r.get(4)?,
        used_by: r.get(5)?,
        revoked_at: r.get(6)?,
    })
}

#[async_trait::async_trait]
impl JoinTokens for SqliteCatalog {
    async fn record_join_token(&self, token_hash: &str, t: SharedJoinToken) -> Result<()> {
        let hash = token_hash.to_owned();
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO join_tokens (token_hash, token_id, environment_id, created_at, expires_at, used_at, used_by, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
                params![hash, t.token_id, t.environment_id, t.created_at, t.expires_at, t.used_at, t.used_by, t.revoked_at],
            )
            .map_err(|e| map_sql("recording a join token", e))?;
            Ok(())
        })
        .await
    }

    async fn claim_join_token(
        &self,
        token_hash: &str,
        agent_id: &str,
        now: i64,
    ) -> Result<TokenClaim> {
        let (hash, agent) = (token_hash.to_owned(), agent_id.to_owned());
        self.with(move |conn| {
            let tx = immediate(conn)?;
            let found = tx
                .query_row(
                    &format!("SELECT {COLUMNS} FROM join_tokens WHERE token_hash = ?1"),
                    params![hash],
                    row,
                )
                .optional()
                .map_err(|e| map_sql("reading a join token", e))?;
            let Some(mut token) = found else {
                return Ok(TokenClaim::Unknown);
            };
            if let Some(refused) = unclaimable(&token, now) {
                return Ok(refused);
            }
            tx.execute(
                "UPDATE join_tokens SET used_at = ?2, used_by = ?3 WHERE token_hash = ?1",
                params![hash, now, agent],
            )
            .map_err(|e| map_sql("claiming a join token", e))?;
            commit(tx)?;
            token.used_at = Some(now);
            token.used_by = Some(agent);
            Ok(TokenClaim::Claimed(token))
        })
        .await
    }

    async fn release_join_token(&self, token_hash: &str, agent_id: &str) -> Result<bool> {
        let (hash, agent) = (token_hash.to_owned(), agent_id.to_owned());
        self.with(move |conn| {
            let n = conn
                .execute(
                    "UPDATE join_tokens SET used_at = NULL, used_by = NULL WHERE token_hash = ?1 AND used_by = ?2",
                    params![hash, agent],
                )
                .map_err(|e| map_sql("releasing a join token", e))?;
            Ok(n == 1)
        })
        .await
    }

    async fn revoke_join_token(&self, token_id: &str, now: i64) -> Result<TokenRevocation> {
        let id = token_id.to_owned();
        self.with(move |conn| {
            let tx = immediate(conn)?;
            let found = tx
                .query_row(
                    &format!("SELECT {COLUMNS} FROM join_tokens WHERE token_id = ?1"),
                    params![id],
                    row,
                )
                .optional()
                .map_err(|e| map_sql("reading a join token", e))?;
            let Some(token) = found else {
                return Ok(TokenRevocation::Unknown);
            };
            if let Some(kept) = unrevocable(token) {
                return Ok(kept);
            }
            tx.execute(
                "UPDATE join_tokens SET revoked_at = ?2 WHERE token_id = ?1",
                params![id, now],
            )
            .map_err(|e| map_sql("revoking a join token", e))?;
            commit(tx)?;
            Ok(TokenRevocation::Revoked { revoked_at: now })
        })
        .await
    }

    async fn list_join_tokens(&self) -> Result<Vec<SharedJoinToken>> {
        self.with(move |conn| {
            let mut st = conn
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM join_tokens ORDER BY created_at DESC, token_id"
                ))
                .map_err(|e| map_sql("listing join tokens", e))?;
            let rows = st
                .query_map([], row)
                .map_err(|e| map_sql("listing join tokens", e))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|e| map_sql("listing join tokens", e))
        })
        .await
    }
}
