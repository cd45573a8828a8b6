//! [`EnrolledAgents`] on PostgreSQL (migration 5): `enrolled_agents`,
//! shared by every replica. A revocation is one conditional `UPDATE`, so
//! two replicas revoking the same agent at once keep the first time.

use tokio_postgres::Row;

use super::{map_pg, PgCatalog};
use crate::error::Result;
use crate::identities::{EnrolledAgent, EnrolledAgents, Revocation};

/// Migration 5: enrolled agents shared by every replica.
pub(super) const MIGRATION: &str = "CREATE TABLE enrolled_agents (
        agent_id TEXT PRIMARY KEY,
        environment_id TEXT NOT NULL,
        enrolled_at BIGINT NOT NULL,
        enrolled_from TEXT,
        cert_serial TEXT NOT NULL,
        cert_not_after BIGINT NOT NULL,
        revoked_at BIGINT
    );
    CREATE INDEX enrolled_agents_revoked ON enrolled_agents (agent_id) WHERE revoked_at IS NOT NULL;";

const COLUMNS: &str =
    "agent_id, environment_id, enrolled_at, enrolled_from, cert_serial, cert_not_after, revoked_at";

fn row(r: &Row) -> EnrolledAgent {
    EnrolledAgent {
        agent_id: r.get(0),
        environment_id: r.get(1),
        enrolled_at: r.get(2),
        enrolled_from: r.get(3),
        cert_serial: r.get(4),
        cert_not_after: r.get(5),
        revoked_at: r.get(6),
    }
}

#[async_trait::async_trait]
impl EnrolledAgents for PgCatalog {
    async fn record_enrolled_agent(&self, a: EnrolledAgent) -> Result<()> {
        let mut conn = self.pool.get().await?;
        conn.client()?
            .execute(
                "INSERT INTO enrolled_agents (agent_id, environment_id, enrolled_at, enrolled_from, cert_serial, cert_not_after, revoked_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (agent_id) DO UPDATE SET cert_serial = EXCLUDED.cert_serial, cert_not_after = EXCLUDED.cert_not_after,
                   revoked_at = COALESCE(enrolled_agents.revoked_at, EXCLUDED.revoked_at)",
                &[&a.agent_id, &a.environment_id, &a.enrolled_at, &a.enrolled_from, &a.cert_serial, &a.cert_not_after, &a.revoked_at],
            )
            .await
            .map_err(|e| map_pg("recording an enrolled agent", e))?;
        Ok(())
    }

    async fn enrolled_agent(&self, agent_id: &str) -> Result<Option<EnrolledAgent>> {
        let mut conn = self.pool.get().await?;
        let r = conn
            .client()?
            .query_opt(
                &format!("SELECT {COLUMNS} FROM enrolled_agents WHERE agent_id = $1"),
                &[&agent_id],
            )
            .await
            .map_err(|e| map_pg("reading an enrolled agent", e))?;
        Ok(r.as_ref().map(row))
    }

    async fn list_enrolled_agents(&self) -> Result<Vec<EnrolledAgent>> {
        let mut conn = self.pool.get().await?;
        let rows = conn
            .client()?
            .query(
                &format!("SELECT {COLUMNS} FROM enrolled_agents ORDER BY enrolled_at, agent_id"),
                &[],
            )
            .await
            .map_err(|e| map_pg("listing enrolled agents", e))?;
        Ok(rows.iter().map(row).collect())
    }

    async fn revoke_enrolled_agent(&self, agent_id: &str, at: i64) -> Result<Revocation> {
        let mut conn = self.pool.get().await?;
        let client = conn.client()?;
        let updated = client
            .execute(
                "UPDATE enrolled_agents SET revoked_at = $2 WHERE agent_id = $1 AND revoked_at IS NULL",
                &[&agent_id, &at],
            )
            .await
            .map_err(|e| map_pg("revoking an enrolled agent", e))?;
        if updated == 1 {
            return Ok(Revocation::Revoked { revoked_at: at });
        }
        let found: Option<Option<i64>> = client
            .query_opt(
                "SELECT revoked_at FROM enrolled_agents WHERE agent_id = $1",
                &[&agent_id],
            )
            .await
            .map_err(|e| map_pg("reading a revocation", e))?
            .map(|r| r.get(0));
        Ok(match found {
            None => Revocation::Unknown,
            Some(Some(revoked_at)) => Revocation::AlreadyRevoked { revoked_at },
            // Not possible after the UPDATE above; answered as revoked now.
            Some(None) => Revocation::Revoked { revoked_at: at },
        })
    }

    async fn revoked_agent_ids(&self) -> Result<Vec<String>> {
        let mut conn = self.pool.get().await?;
        let rows = conn
            .client()?
            .query(
                "SELECT agent_id FROM enrolled_agents WHERE revoked_at IS NOT NULL ORDER BY agent_id",
                &[],
            )
            .await
            .map_err(|e| map_pg("listing revoked agents", e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
