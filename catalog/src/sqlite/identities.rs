//! [`EnrolledAgents`] on SQLite (migration 5): `enrolled_agents`.

use rusqlite::{params, OptionalExtension, Row};

use super::{commit, immediate, map_sql, SqliteCatalog};
use crate::error::Result;
use crate::identities::{EnrolledAgent, EnrolledAgents, Revocation};

/// Migration 5: enrolled agents shared by every replica.
pub(super) const MIGRATION: &str = "CREATE TABLE enrolled_agents (
        agent_id TEXT PRIMARY KEY,
        environment_id TEXT NOT NULL,
        enrolled_at INTEGER NOT NULL,
        enrolled_from TEXT,
        cert_serial TEXT NOT NULL,
        cert_not_after INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX enrolled_agents_revoked ON enrolled_agents (agent_id) WHERE revoked_at IS NOT NULL;";

const COLUMNS: &str =
    "agent_id, environment_id, enrolled_at, enrolled_from, cert_serial, cert_not_after, revoked_at";

fn row(r: &Row<'_>) -> rusqlite::Result<EnrolledAgent> {
    Ok(EnrolledAgent {
        agent_id: r.get(0)?,
        environment_id: r.get(1)?,
        enrolled_at: r.get(2)?,
        enrolled_from: r.get(3)?,
        cert_serial: r.get(4)?,
        cert_not_after: r.get(5)?,
        revoked_at: r.get(6)?,
    })
}

#[async_trait::async_trait]
impl EnrolledAgents for SqliteCatalog {
    async fn record_enrolled_agent(&self, a: EnrolledAgent) -> Result<()> {
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO enrolled_agents (agent_id, environment_id, enrolled_at, enrolled_from, cert_serial, cert_not_after, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (agent_id) DO UPDATE SET cert_serial = excluded.cert_serial, cert_not_after = excluded.cert_not_after,
                   revoked_at = COALESCE(enrolled_agents.revoked_at, excluded.revoked_at)",
                params![a.agent_id, a.environment_id, a.enrolled_at, a.enrolled_from, a.cert_serial, a.cert_not_after, a.revoked_at],
            )
            .map_err(|e| map_sql("recording an enrolled agent", e))?;
            Ok(())
        })
        .await
    }

    async fn enrolled_agent(&self, agent_id: &str) -> Result<Option<EnrolledAgent>> {
        let id = agent_id.to_owned();
        self.with(move |conn| {
            conn.query_row(
                &format!("SELECT {COLUMNS} FROM enrolled_agents WHERE agent_id = ?1"),
                params![id],
                row,
            )
            .optional()
            .map_err(|e| map_sql("reading an enrolled agent", e))
        })
        .await
    }

    async fn list_enrolled_agents(&self) -> Result<Vec<EnrolledAgent>> {
        self.with(move |conn| {
            let mut st = conn
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM enrolled_agents ORDER BY enrolled_at, agent_id"
                ))
                .map_err(|e| map_sql("listing enrolled agents", e))?;
            let rows = st
                .query_map([], row)
                .map_err(|e| map_sql("listing enrolled agents", e))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|e| map_sql("listing enrolled agents", e))
        })
        .await
    }

    async fn revoke_enrolled_agent(&self, agent_id: &str, at: i64) -> Result<Revocation> {
        let id = agent_id.to_owned();
        self.with(move |conn| {
            let tx = immediate(conn)?;
            let found: Option<Option<i64>> = tx
                .query_row(
                    "SELECT revoked_at FROM enrolled_agents WHERE agent_id = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| map_sql("reading a revocation", e))?;
            let outcome = match found {
                None => Revocation::Unknown,
                Some(Some(revoked_at)) => Revocation::AlreadyRevoked { revoked_at },
                Some(None) => {
                    tx.execute(
                        "UPDATE enrolled_agents SET revoked_at = ?2 WHERE agent_id = ?1",
                        params![id, at],
                    )
                    .map_err(|e| map_sql("revoking an enrolled agent", e))?;
                    Revocation::Revoked { revoked_at: at }
                }
            };
            commit(tx)?;
            Ok(outcome)
        })
        .await
    }

    async fn revoked_agent_ids(&self) -> Result<Vec<String>> {
        self.with(move |conn| {
            let mut st = conn
                .prepare(
                    "SELECT agent_id FROM enrolled_agents WHERE revoked_at IS NOT NULL ORDER BY agent_id",
                )
                .map_err(|e| map_sql("listing revoked agents", e))?;
            let rows = st
                .query_map([], |r| r.get(0))
                .map_err(|e| map_sql("listing revoked agents", e))?;
            rows.collect::<rusqlite::Result<Vec<String>>>()
                .map_err(|e| map_sql("listing revoked agents", e))
        })
        .await
    }
}
