//! [`AuditStore`] on PostgreSQL (migration 3). Recording a checkpoint
//! takes a transaction-scoped advisory lock on the agent id, so two
//! replicas (or two connections of one agent) classify its checkpoints one
//! at a time.

use time::OffsetDateTime;
use tokio_postgres::Row;

use super::{limit_i64, map_pg, page, PgCatalog};
use crate::audit::{
    classify, Actor, AgentAuditState, AuditEventQuery, AuditEventRecord, AuditStore,
    CheckpointOutcome, CheckpointQuery, CheckpointRecord, NewAuditEvent, NewCheckpoint, Outcome,
    PriorCheckpoints, Verdict,
};
use crate::check_limit;
use crate::error::{CatalogError, Result};
use crate::types::{from_micros, to_micros, version_i64, version_u64, Page};

/// Migration 3: audit checkpoints, agents' audit state, audit events.
pub(super) const MIGRATION: &str = "CREATE TABLE audit_checkpoints (
        position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        agent_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        head TEXT NOT NULL,
        at TEXT NOT NULL,
        key_id TEXT NOT NULL,
        public_key TEXT NOT NULL,
        signature TEXT NOT NULL,
        received_at BIGINT NOT NULL,
        key_changed BOOLEAN NOT NULL,
        rollback BOOLEAN NOT NULL
    );
    CREATE INDEX audit_checkpoints_by_agent ON audit_checkpoints (agent_id, position);
    CREATE INDEX audit_checkpoints_by_key ON audit_checkpoints (agent_id, public_key, seq);
    CREATE TABLE audit_agents (
        agent_id TEXT PRIMARY KEY,
        pinned_public_key TEXT,
        healthy BOOLEAN NOT NULL,
        problem TEXT,
        health_at BIGINT NOT NULL,
        last_seq BIGINT,
        last_checkpoint_at BIGINT
    );
    CREATE TABLE audit_events (
        position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        at BIGINT NOT NULL,
        api_key_id TEXT,
        admin BOOLEAN NOT NULL,
        admin_uid BIGINT,
        remote_addr TEXT,
        action TEXT NOT NULL,
        resource_ids TEXT NOT NULL,
        status BIGINT NOT NULL,
        outcome TEXT NOT NULL,
        request_id TEXT
    );
    CREATE INDEX audit_events_by_at ON audit_events (at);
    CREATE INDEX audit_events_by_action ON audit_events (action, position);
    CREATE INDEX audit_events_by_key ON audit_events (api_key_id, position);";

const CHECKPOINT_COLUMNS: &str = "position, id, agent_id, seq, head, at, key_id, public_key, signature, received_at, key_changed, rollback";

fn checkpoint_record(r: &Row) -> Result<CheckpointRecord> {
    Ok(CheckpointRecord {
        position: r.get(0),
        id: r.get(1),
        agent_id: r.get(2),
        seq: version_u64(r.get(3))?,
        head: r.get(4),
        at: r.get(5),
        key_id: r.get(6),
        public_key: r.get(7),
        signature: r.get(8),
        received_at: from_micros(r.get(9))?,
        key_changed: r.get(10),
        rollback: r.get(11),
    })
}

const STATE_COLUMNS: &str =
    "agent_id, healthy, problem, health_at, pinned_public_key, last_seq, last_checkpoint_at";

fn state_record(r: &Row) -> Result<AgentAuditState> {
    Ok(AgentAuditState {
        agent_id: r.get(0),
        healthy: r.get(1),
        problem: r.get(2),
        health_at: from_micros(r.get(3))?,
        pinned_public_key: r.get(4),
        last_seq: r.get::<_, Option<i64>>(5).map(version_u64).transpose()?,
        last_checkpoint_at: r.get::<_, Option<i64>>(6).map(from_micros).transpose()?,
    })
}

const EVENT_COLUMNS: &str = "position, id, at, api_key_id, admin, admin_uid, remote_addr, action, resource_ids, status, outcome, request_id";

fn event_record(r: &Row) -> Result<AuditEventRecord> {
    crate::audit::decode_event(crate::audit::EventParts {
        position: r.get(0),
        id: r.get(1),
        at: r.get(2),
        api_key_id: r.get(3),
        admin: r.get(4),
        admin_uid: r.get(5),
        remote_addr: r.get(6),
        action: r.get(7),
        resource_ids: r.get(8),
        status: r.get(9),
        outcome: r.get(10),
        request_id: r.get(11),
    })
}

async fn position_of(
    client: &impl tokio_postgres::GenericClient,
    table: &str,
    id: &str,
    what: &str,
) -> Result<i64> {
    client
        .query_opt(
            &format!("SELECT position FROM {table} WHERE id = $1"),
            &[&id],
        )
        .await
        .map_err(|e| map_pg(what, e))?
        .map(|r| r.get(0))
        .ok_or_else(|| CatalogError::Invalid {
            reason: format!("after_id {id} is not a stored {what}"),
        })
}

#[async_trait::async_trait]
impl AuditStore for PgCatalog {
    async fn record_checkpoint(&self, new: NewCheckpoint) -> Result<CheckpointOutcome> {
        let mut conn = self.pool.get().await?;
        let tx = conn
            .client()?
            .transaction()
            .await
            .map_err(|e| map_pg("starting a transaction", e))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[&format!("airlock-audit-{}", new.agent_id)],
        )
        .await
        .map_err(|e| map_pg("locking the agent's checkpoints", e))?;
        let pinned_key: Option<String> = tx
            .query_opt(
                "SELECT pinned_public_key FROM audit_agents WHERE agent_id = $1",
                &[&new.agent_id],
            )
            .await
            .map_err(|e| map_pg("reading the pinned audit key", e))?
            .and_then(|r| r.get(0));
        let max: Option<i64> = tx
            .query_one(
                "SELECT MAX(seq) FROM audit_checkpoints WHERE agent_id = $1 AND public_key = $2",
                &[&new.agent_id, &new.public_key],
            )
            .await
            .map_err(|e| map_pg("reading the last checkpoint", e))?
            .get(0);
        let seq = version_i64(new.seq);
        let heads = tx
            .query(
                "SELECT head FROM audit_checkpoints WHERE agent_id = $1 AND public_key = $2 AND seq = $3",
                &[&new.agent_id, &new.public_key, &seq],
            )
            .await
            .map_err(|e| map_pg("reading checkpoints at a seq", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let prior = PriorCheckpoints {
            pinned_key,
            max_seq_for_key: max.map(version_u64).transpose()?,
            heads_at_seq: heads,
        };
        let Verdict::Store {
            key_changed,
            rollback,
        } = classify(&prior, &new.public_key, new.seq, &new.head)
        else {
            return Ok(CheckpointOutcome::Duplicate);
        };
        let received = to_micros(new.received_at);
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO audit_checkpoints (id, agent_id, seq, head, at, key_id, public_key, signature, received_at, key_changed, rollback)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {CHECKPOINT_COLUMNS}"
                ),
                &[&new.id, &new.agent_id, &seq, &new.head, &new.at, &new.key_id, &new.public_key,
                  &new.signature, &received, &key_changed, &rollback],
            )
            .await
            .map_err(|e| map_pg("storing a checkpoint", e))?;
        tx.execute(
            "INSERT INTO audit_agents (agent_id, pinned_public_key, healthy, problem, health_at, last_seq, last_checkpoint_at)
             VALUES ($1, $2, TRUE, NULL, $3, $4, $3)
             ON CONFLICT (agent_id) DO UPDATE SET
               pinned_public_key = COALESCE(audit_agents.pinned_public_key, excluded.pinned_public_key),
               last_seq = excluded.last_seq, last_checkpoint_at = excluded.last_checkpoint_at",
            &[&new.agent_id, &new.public_key, &received, &seq],
        )
        .await
        .map_err(|e| map_pg("updating the agent's audit state", e))?;
        let record = checkpoint_record(&row)?;
        tx.commit()
            .await
            .map_err(|e| map_pg("committing a checkpoint", e))?;
        Ok(CheckpointOutcome::Stored(Box::new(record)))
    }

    async fn record_audit_health(
        &self,
        agent_id: &str,
        healthy: bool,
        problem: Option<String>,
        at: OffsetDateTime,
    ) -> Result<()> {
        let mut conn = self.pool.get().await?;
        conn.client()?
            .execute(
                "INSERT INTO audit_agents (agent_id, healthy, problem, health_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (agent_id) DO UPDATE SET healthy = excluded.healthy,
                   problem = excluded.problem, health_at = excluded.health_at",
                &[&agent_id, &healthy, &problem, &to_micros(at)],
            )
            .await
            .map_err(|e| map_pg("recording audit health", e))?;
        Ok(())
    }

    async fn audit_state(&self, agent_id: &str) -> Result<Option<AgentAuditState>> {
        let mut conn = self.pool.get().await?;
        let row = conn
            .client()?
            .query_opt(
                &format!("SELECT {STATE_COLUMNS} FROM audit_agents WHERE agent_id = $1"),
                &[&agent_id],
            )
            .await
            .map_err(|e| map_pg("reading an agent's audit state", e))?;
        row.as_ref().map(state_record).transpose()
    }

    async fn audit_states(&self) -> Result<Vec<AgentAuditState>> {
        let mut conn = self.pool.get().await?;
        let rows = conn
            .client()?
            .query(
                &format!("SELECT {STATE_COLUMNS} FROM audit_agents ORDER BY agent_id"),
                &[],
            )
            .await
            .map_err(|e| map_pg("listing audit states", e))?;
        rows.iter().map(state_record).collect()
    }

    async fn list_checkpoints(
        &self,
        agent_id: &str,
        q: CheckpointQuery,
    ) -> Result<Page<CheckpointRecord>> {
        check_limit(q.limit)?;
        let mut conn = self.pool.get().await?;
        let client = conn.client()?;
        let after = match &q.after_id {
            Some(id) => Some(position_of(&*client, "audit_checkpoints", id, "checkpoint").await?),
            None => None,
        };
        let rows = client
            .query(
                &format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints
                     WHERE agent_id = $1 AND ($2::BIGINT IS NULL OR position > $2)
                     ORDER BY position ASC LIMIT $3"
                ),
                &[&agent_id, &after, &limit_i64(q.limit)],
            )
            .await
            .map_err(|e| map_pg("listing checkpoints", e))?;
        let items = rows
            .iter()
            .map(checkpoint_record)
            .collect::<Result<Vec<_>>>()?;
        Ok(page(items, q.limit))
    }

    async fn record_audit_event(&self, event: NewAuditEvent) -> Result<()> {
        let (key, admin, uid) = match &event.actor {
            Actor::ApiKey(k) => (Some(k.clone()), false, None),
            Actor::Admin { uid } => (None, true, uid.map(i64::from)),
        };
        let ids = crate::audit::encode_ids(&event.resource_ids);
        let mut conn = self.pool.get().await?;
        conn.client()?
            .execute(
                "INSERT INTO audit_events (id, at, api_key_id, admin, admin_uid, remote_addr, action, resource_ids, status, outcome, request_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[&event.id, &to_micros(event.at), &key, &admin, &uid, &event.remote_addr,
                  &event.action, &ids, &i64::from(event.status), &event.outcome.as_str(), &event.request_id],
            )
            .await
            .map_err(|e| map_pg("recording an audit event", e))?;
        Ok(())
    }

    async fn list_audit_events(&self, q: AuditEventQuery) -> Result<Page<AuditEventRecord>> {
        check_limit(q.limit)?;
        let mut conn = self.pool.get().await?;
        let client = conn.client()?;
        let after = match &q.after_id {
            Some(id) => Some(position_of(&*client, "audit_events", id, "audit event").await?),
            None => None,
        };
        let (cmp, dir) = if q.descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        let needle = q.resource_id.as_ref().map(|r| format!("\"{r}\""));
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events
             WHERE ($1::BIGINT IS NULL OR position {cmp} $1)
               AND ($2::TEXT IS NULL OR action = $2)
               AND ($3::TEXT IS NULL OR strpos(resource_ids, $3) > 0)
               AND ($4::TEXT IS NULL OR api_key_id = $4)
               AND ($5::TEXT IS NULL OR outcome = $5)
               AND ($6::BIGINT IS NULL OR at >= $6)
               AND ($7::BIGINT IS NULL OR at < $7)
             ORDER BY position {dir} LIMIT $8"
        );
        let outcome = q.outcome.map(Outcome::as_str);
        let rows = client
            .query(
                &sql,
                &[
                    &after,
                    &q.action,
                    &needle,
                    &q.api_key_id,
                    &outcome,
                    &q.since.map(to_micros),
                    &q.until.map(to_micros),
                    &limit_i64(q.limit),
                ],
            )
            .await
            .map_err(|e| map_pg("listing audit events", e))?;
        let items = rows.iter().map(event_record).collect::<Result<Vec<_>>>()?;
        Ok(page(items, q.limit))
    }
}
