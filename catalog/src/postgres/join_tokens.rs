//! [`JoinTokens`] on PostgreSQL (migration 6): `join_tokens`, shared by
//! every replica. A claim is one conditional `UPDATE … RETURNING`, so of
//! two replicas redeeming the same token at once exactly one gets it; a
//! revocation is one conditional `UPDATE` as well.

use tokio_postgres::Row;

use super::{map_pg, PgCatalog};
use crate::error::Result;
use crate::join_tokens::{
    unclaimable, unrevocable, JoinTokens, SharedJoinToken, TokenClaim, TokenRevocation, COLUMNS,
};

/// Migration 6: join tokens shared by every replica.
pub(super) const MIGRATION: &str = "CREATE TABLE join_tokens (
        token_hash TEXT PRIMARY KEY,
        token_id TEXT NOT NULL UNIQUE,
        environment_id TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT,
        used_by TEXT,
        revoked_at BIGINT
    );";

fn row(r: &Row) -> SharedJoinToken {
    SharedJoinToken {
        token_id: r.get(0),
        environment_id: r.get(1),
        created_at: r.get(2),
        expires_at: r.get(3),
        used_at: r.get(4),
        used_by: r.get(5),
        revoked_at: r.get(6),
    }
}

/// A claim or revocation whose conditional `UPDATE` took nothing although
/// the row then reads as claimable (a released claim raced it) is tried
/// again, this many times.
const CLAIM_TRIES: usize = 3;

fn raced(context: &str) -> crate::CatalogError {
    crate::CatalogError::unavailable(
        format!("{context}: claims on it were made and released repeatedly meanwhile; retry"),
        None,
    )
}

#[async_trait::async_trait]
impl JoinTokens for PgCatalog {
    async fn record_join_token(&self, token_hash: &str, t: SharedJoinToken) -> Result<()> {
        let mut conn = self.pool.get().await?;
        conn.client()?
            .execute(
                "INSERT INTO join_tokens (token_hash, token_id, environment_id, created_at, expires_at, used_at, used_by, revoked_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                &[&token_hash, &t.token_id, &t.environment_id, &t.created_at, &t.expires_at, &t.used_at, &t.used_by, &t.revoked_at],
            )
            .await
            .map_err(|e| map_pg("recording a join token", e))?;
        Ok(())
    }

    async fn claim_join_token(
        &self,
        token_hash: &str,
        agent_id: &str,
        now: i64,
    ) -> Result<TokenClaim> {
        let mut conn = self.pool.get().await?;
        let client = conn.client()?;
        for _ in 0..CLAIM_TRIES {
            let claimed = client
                .query_opt(
                    &format!(
                        "UPDATE join_tokens SET used_at = $3, used_by = $2
                         WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $3
                         RETURNING {COLUMNS}"
                    ),
                    &[&token_hash, &agent_id, &now],
                )
                .await
                .map_err(|e| map_pg("claiming a join token", e))?;
            if let Some(r) = claimed {
                return Ok(TokenClaim::Claimed(row(&r)));
            }
            let found = client
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM join_tokens WHERE token_hash = $1"),
                    &[&token_hash],
                )
                .await
                .map_err(|e| map_pg("reading a join token", e))?;
            let Some(r) = found else {
                return Ok(TokenClaim::Unknown);
            };
            if let Some(refused) = unclaimable(&row(&r), now) {
                return Ok(refused);
            }
        }
        Err(raced("claiming a join token"))
    }

    async fn release_join_token(&self, token_hash: &str, agent_id: &str) -> Result<bool> {
        let mut conn = self.pool.get().await?;
        let n = conn
            .client()?
            .execute(
                "UPDATE join_tokens SET used_at = NULL, used_by = NULL WHERE token_hash = $1 AND used_by = $2",
                &[&token_hash, &agent_id],
            )
            .await
            .map_err(|e| map_pg("releasing a join token", e))?;
        Ok(n == 1)
    }

    async fn revoke_join_token(&self, token_id: &str, now: i64) -> Result<TokenRevocation> {
        let mut conn = self.pool.get().await?;
        let client = conn.client()?;
        for _ in 0..CLAIM_TRIES {
            let updated = client
                .execute(
                    "UPDATE join_tokens SET revoked_at = $2 WHERE token_id = $1 AND used_at IS NULL AND revoked_at IS NULL",
                    &[&token_id, &now],
                )
                .await
                .map_err(|e| map_pg("revoking a join token", e))?;
            if updated == 1 {
                return Ok(TokenRevocation::Revoked { revoked_at: now });
            }
            let found = client
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM join_tokens WHERE token_id = $1"),
                    &[&token_id],
                )
                .await
                .map_err(|e| map_pg("reading a join token", e))?;
            let Some(r) = found else {
                return Ok(TokenRevocation::Unknown);
            };
            if let Some(kept) = unrevocable(row(&r)) {
                return Ok(kept);
            }
        }
        Err(raced("revoking a join token"))
    }

    async fn list_join_tokens(&self) -> Result<Vec<SharedJoinToken>> {
        let mut conn = self.pool.get().await?;
        let rows = conn
            .client()?
            .query(
                &format!("SELECT {COLUMNS} FROM join_tokens ORDER BY created_at DESC, token_id"),
                &[],
            )
            .await
            .map_err(|e| map_pg("listing join tokens", e))?;
        Ok(rows.iter().map(row).collect())
    }
}
