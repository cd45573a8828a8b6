//! Versioned schema of the PostgreSQL store.
//!
//! All migrations run in one transaction holding a transaction-scoped
//! advisory lock keyed by the schema name, so replicas starting together
//! migrate once. `schema_migrations` records each applied version; a version
//! newer than [`MIGRATIONS`] knows is refused with
//! [`StoreError::SchemaTooNew`]. Never edit a released migration: add one.

use tokio_postgres::Client;

use super::map_pg;
use crate::error::{Result, StoreError};

/// `(version, name, sql)`, in order, versions consecutive from 1.
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "sessions, events, leases",
        "
    CREATE TABLE sessions (
        position            BIGSERIAL PRIMARY KEY,
        id                  TEXT   NOT NULL UNIQUE,
        status              TEXT   NOT NULL,
        body                TEXT   NOT NULL,
        version             BIGINT NOT NULL,
        last_seq            BIGINT NOT NULL DEFAULT 0,
        lease_epoch         BIGINT NOT NULL DEFAULT 0,
        lease_holder        TEXT,
        lease_expires_at_us BIGINT,
        created_at_us       BIGINT NOT NULL,
        updated_at_us       BIGINT NOT NULL
    );
    CREATE INDEX sessions_by_status ON sessions (status, position);
    CREATE TABLE events (
        session_id       TEXT   NOT NULL,
        seq              BIGINT NOT NULL,
        id               TEXT   NOT NULL,
        type             TEXT   NOT NULL,
        processed_at_us  BIGINT,
        created_at_us    BIGINT NOT NULL,
        body             TEXT   NOT NULL,
        PRIMARY KEY (session_id, seq)
    );
    CREATE UNIQUE INDEX events_by_id ON events (id);
    ",
    ),
    (
        2,
        "index of queued events",
        "
    CREATE INDEX events_queued ON events (session_id) WHERE processed_at_us IS NULL;
    ",
    ),
];

/// The newest schema version this binary knows.
pub(crate) fn latest() -> i64 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

/// Creates the schema if needed and brings it to the newest version.
pub(crate) async fn migrate(
    client: &mut Client,
    schema: &str,
    quoted_schema: &str,
    now_us: i64,
) -> Result<()> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| map_pg("starting the migration transaction", e))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[&format!("airlock-session-store:{schema}")],
    )
    .await
    .map_err(|e| map_pg("taking the migration lock", e))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {quoted_schema};
         SET LOCAL search_path TO {quoted_schema};
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version       BIGINT PRIMARY KEY,
             name          TEXT   NOT NULL,
             applied_at_us BIGINT NOT NULL
         );"
    ))
    .await
    .map_err(|e| map_pg(format!("creating schema {schema}"), e))?;
    let found: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| map_pg("reading the schema version", e))?;
    if found > latest() {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: latest(),
        });
    }
    for (version, name, sql) in MIGRATIONS {
        if *version <= found {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(|e| map_pg(format!("applying migration {version} ({name})"), e))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at_us) VALUES ($1, $2, $3)",
            &[version, name, &now_us],
        )
        .await
        .map_err(|e| map_pg(format!("recording migration {version}"), e))?;
        tracing::info!(version, name, schema, "applied session store migration");
    }
    tx.commit()
        .await
        .map_err(|e| map_pg("committing migrations", e))
}
