//! [`AuditStore`] on SQLite (migration 3): `audit_checkpoints`,
//! `audit_agents` (pinned key, health, last checkpoint) and `audit_events`.
//! A checkpoint is classified and stored in one IMMEDIATE transaction.

use rusqlite::{params, Connection, OptionalExtension, Row};
use time::OffsetDateTime;

use super::{commit, immediate, limit_i64, map_sql, page, query_rows, SqliteCatalog};
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
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        agent_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        head TEXT NOT NULL,
        at TEXT NOT NULL,
        key_id TEXT NOT NULL,
        public_key TEXT NOT NULL,
        signature TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        key_changed INTEGER NOT NULL,
        rollback INTEGER NOT NULL
    );
    CREATE INDEX audit_checkpoints_by_agent ON audit_checkpoints (agent_id, position);
    CREATE INDEX audit_checkpoints_by_key ON audit_checkpoints (agent_id, public_key, seq);
    CREATE TABLE audit_agents (
        agent_id TEXT PRIMARY KEY,
        pinned_public_key TEXT,
        healthy INTEGER NOT NULL,
        problem TEXT,
        health_at INTEGER NOT NULL,
        last_seq INTEGER,
        last_checkpoint_at INTEGER
    );
    CREATE TABLE audit_events (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        at INTEGER NOT NULL,
        api_key_id TEXT,
        admin INTEGER NOT NULL,
        admin_uid INTEGER,
        remote_addr TEXT,
        action TEXT NOT NULL,
        resource_ids TEXT NOT NULL,
        status INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        request_id TEXT
    );
    CREATE INDEX audit_events_by_at ON audit_events (at);
    CREATE INDEX audit_events_by_action ON audit_events (action, position);
    CREATE INDEX audit_events_by_key ON audit_events (api_key_id, position);";

const CHECKPOINT_COLUMNS: &str = "position, id, agent_id, seq, head, at, key_id, public_key, signature, received_at, key_changed, rollback";

fn checkpoint_record(r: &Row<'_>) -> rusqlite::Result<(CheckpointRecord, i64, i64)> {
    Ok((
        CheckpointRecord {
            position: r.get(0)?,
            id: r.get(1)?,
            agent_id: r.get(2)?,
            seq: 0,
            head: r.get(4)?,
            at: r.get(5)?,
            key_id: r.get(6)?,
            public_key: r.get(7)?,
            signature: r.get(8)?,
            received_at: OffsetDateTime::UNIX_EPOCH,
            key_changed: r.get(10)?,
            rollback: r.get(11)?,
        },
        r.get(3)?,
        r.get(9)?,
    ))
}

fn finish_checkpoint(
    (mut c, seq, received): (CheckpointRecord, i64, i64),
) -> Result<CheckpointRecord> {
    c.seq = version_u64(seq)?;
    c.received_at = from_micros(received)?;
    Ok(c)
}

const STATE_COLUMNS: &str =
    "agent_id, healthy, problem, health_at, pinned_public_key, last_seq, last_checkpoint_at";

type StateRow = (
    String,
    bool,
    Option<String>,
    i64,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

fn state_row(r: &Row<'_>) -> rusqlite::Result<StateRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn state_record(row: StateRow) -> Result<AgentAuditState> {
    let (agent_id, healthy, problem, health_at, pinned_public_key, last_seq, last_at) = row;
    Ok(AgentAuditState {
        agent_id,
        healthy,
        problem,
        health_at: from_micros(health_at)?,
        pinned_public_key,
        last_seq: last_seq.map(version_u64).transpose()?,
        last_checkpoint_at: last_at.map(from_micros).transpose()?,
    })
}

const EVENT_COLUMNS: &str = "position, id, at, api_key_id, admin, admin_uid, remote_addr, action, resource_ids, status, outcome, request_id";

type EventRow = (
    i64,
    String,
    i64,
    Option<String>,
    bool,
    Option<i64>,
    Option<String>,
    String,
    String,
    i64,
    String,
    Option<String>,
);

fn event_row(r: &Row<'_>) -> rusqlite::Result<EventRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
    ))
}

fn event_record(row: EventRow) -> Result<AuditEventRecord> {
    let (position, id, at, key, admin, uid, remote_addr, action, ids, status, outcome, request_id) =
        row;
    crate::audit::decode_event(crate::audit::EventParts {
        position,
        id,
        at,
        api_key_id: key,
        admin,
        admin_uid: uid,
        remote_addr,
        action,
        resource_ids: ids,
        status,
        outcome,
        request_id,
    })
}

fn prior(conn: &Connection, new: &NewCheckpoint) -> Result<PriorCheckpoints> {
    let pinned_key: Option<String> = conn
        .query_row(
            "SELECT pinned_public_key FROM audit_agents WHERE agent_id = ?1",
            params![new.agent_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| map_sql("reading the pinned audit key", e))?
        .flatten();
    let max: Option<i64> = conn
        .query_row(
            "SELECT MAX(seq) FROM audit_checkpoints WHERE agent_id = ?1 AND public_key = ?2",
            params![new.agent_id, new.public_key],
            |r| r.get(0),
        )
        .map_err(|e| map_sql("reading the last checkpoint", e))?;
    let heads = query_rows(
        conn,
        "SELECT head FROM audit_checkpoints WHERE agent_id = ?1 AND public_key = ?2 AND seq = ?3",
        params![new.agent_id, new.public_key, version_i64(new.seq)],
        |r| r.get(0),
        "reading checkpoints at a seq",
    )?;
    Ok(PriorCheckpoints {
        pinned_key,
        max_seq_for_key: max.map(version_u64).transpose()?,
        heads_at_seq: heads,
    })
}

fn position_of(conn: &Connection, table: &str, id: &str, what: &str) -> Result<i64> {
    conn.query_row(
        &format!("SELECT position FROM {table} WHERE id = ?1"),
        params![id],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| map_sql(what, e))?
    .ok_or_else(|| CatalogError::Invalid {
        reason: format!("after_id {id} is not a stored {what}"),
    })
}

#[async_trait::async_trait]
impl AuditStore for SqliteCatalog {
    async fn record_checkpoint(&self, new: NewCheckpoint) -> Result<CheckpointOutcome> {
        self.with(move |conn| {
            let tx = immediate(conn)?;
            let prior = prior(&tx, &new)?;
            let Verdict::Store {
                key_changed,
                rollback,
            } = classify(&prior, &new.public_key, new.seq, &new.head)
            else {
                return Ok(CheckpointOutcome::Duplicate);
            };
            let received = to_micros(new.received_at);
            tx.execute(
                "INSERT INTO audit_checkpoints (id, agent_id, seq, head, at, key_id, public_key, signature, received_at, key_changed, rollback)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![new.id, new.agent_id, version_i64(new.seq), new.head, new.at, new.key_id,
                        new.public_key, new.signature, received, key_changed, rollback],
            )
            .map_err(|e| map_sql("storing a checkpoint", e))?;
            let position = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO audit_agents (agent_id, pinned_public_key, healthy, problem, health_at, last_seq, last_checkpoint_at)
                 VALUES (?1, ?2, 1, NULL, ?3, ?4, ?3)
                 ON CONFLICT (agent_id) DO UPDATE SET
                   pinned_public_key = COALESCE(audit_agents.pinned_public_key, excluded.pinned_public_key),
                   last_seq = excluded.last_seq, last_checkpoint_at = excluded.last_checkpoint_at",
                params![new.agent_id, new.public_key, received, version_i64(new.seq)],
            )
            .map_err(|e| map_sql("updating the agent's audit state", e))?;
            commit(tx)?;
            Ok(CheckpointOutcome::Stored(Box::new(CheckpointRecord {
                id: new.id,
                agent_id: new.agent_id,
                seq: new.seq,
                head: new.head,
                at: new.at,
                key_id: new.key_id,
                public_key: new.public_key,
                signature: new.signature,
                received_at: from_micros(received)?,
                key_changed,
                rollback,
                position,
            })))
        })
        .await
    }

    async fn record_audit_health(
        &self,
        agent_id: &str,
        healthy: bool,
        problem: Option<String>,
        at: OffsetDateTime,
    ) -> Result<()> {
        let agent_id = agent_id.to_owned();
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO audit_agents (agent_id, healthy, problem, health_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (agent_id) DO UPDATE SET healthy = excluded.healthy,
                   problem = excluded.problem, health_at = excluded.health_at",
                params![agent_id, healthy, problem, to_micros(at)],
            )
            .map_err(|e| map_sql("recording audit health", e))?;
            Ok(())
        })
        .await
    }

    async fn audit_state(&self, agent_id: &str) -> Result<Option<AgentAuditState>> {
        let agent_id = agent_id.to_owned();
        self.with(move |conn| {
            let row = conn
                .query_row(
                    &format!("SELECT {STATE_COLUMNS} FROM audit_agents WHERE agent_id = ?1"),
                    params![agent_id],
                    state_row,
                )
                .optional()
                .map_err(|e| map_sql("reading an agent's audit state", e))?;
            row.map(state_record).transpose()
        })
        .await
    }

    async fn audit_states(&self) -> Result<Vec<AgentAuditState>> {
        self.with(move |conn| {
            query_rows(
                conn,
                &format!("SELECT {STATE_COLUMNS} FROM audit_agents ORDER BY agent_id"),
                [],
                state_row,
                "listing audit states",
            )?
            .into_iter()
            .map(state_record)
            .collect()
        })
        .await
    }

    async fn list_checkpoints(
        &self,
        agent_id: &str,
        q: CheckpointQuery,
    ) -> Result<Page<CheckpointRecord>> {
        check_limit(q.limit)?;
        let agent_id = agent_id.to_owned();
        self.with(move |conn| {
            let after = match &q.after_id {
                Some(id) => Some(position_of(conn, "audit_checkpoints", id, "checkpoint")?),
                None => None,
            };
            let rows = query_rows(
                conn,
                &format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints
                     WHERE agent_id = ?1 AND (?2 IS NULL OR position > ?2)
                     ORDER BY position ASC LIMIT ?3"
                ),
                params![agent_id, after, limit_i64(q.limit)],
                checkpoint_record,
                "listing checkpoints",
            )?;
            let items = rows
                .into_iter()
                .map(finish_checkpoint)
                .collect::<Result<Vec<_>>>()?;
            Ok(page(items, q.limit))
        })
        .await
    }

    async fn record_audit_event(&self, event: NewAuditEvent) -> Result<()> {
        self.with(move |conn| {
            let (key, admin, uid) = match &event.actor {
                Actor::ApiKey(k) => (Some(k.clone()), false, None),
                Actor::Admin { uid } => (None, true, uid.map(i64::from)),
            };
            let ids = crate::audit::encode_ids(&event.resource_ids);
            conn.execute(
                "INSERT INTO audit_events (id, at, api_key_id, admin, admin_uid, remote_addr, action, resource_ids, status, outcome, request_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![event.id, to_micros(event.at), key, admin, uid, event.remote_addr, event.action,
                        ids, i64::from(event.status), event.outcome.as_str(), event.request_id],
            )
            .map_err(|e| map_sql("recording an audit event", e))?;
            Ok(())
        })
        .await
    }

    async fn list_audit_events(&self, q: AuditEventQuery) -> Result<Page<AuditEventRecord>> {
        check_limit(q.limit)?;
        self.with(move |conn| {
            let after = match &q.after_id {
                Some(id) => Some(position_of(conn, "audit_events", id, "audit event")?),
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
                 WHERE (?1 IS NULL OR position {cmp} ?1)
                   AND (?2 IS NULL OR action = ?2)
                   AND (?3 IS NULL OR instr(resource_ids, ?3) > 0)
                   AND (?4 IS NULL OR api_key_id = ?4)
                   AND (?5 IS NULL OR outcome = ?5)
                   AND (?6 IS NULL OR at >= ?6)
                   AND (?7 IS NULL OR at < ?7)
                 ORDER BY position {dir} LIMIT ?8"
            );
            let rows = query_rows(
                conn,
                &sql,
                params![
                    after,
                    q.action,
                    needle,
                    q.api_key_id,
                    q.outcome.map(Outcome::as_str),
                    q.since.map(to_micros),
                    q.until.map(to_micros),
                    limit_i64(q.limit)
                ],
                event_row,
                "listing audit events",
            )?;
            let items = rows
                .into_iter()
                .map(event_record)
                .collect::<Result<Vec<_>>>()?;
            Ok(page(items, q.limit))
        })
        .await
    }
}
