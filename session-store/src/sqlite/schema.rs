//! Versioned schema of the SQLite store.
//!
//! `schema_migrations` records every applied migration. Migrations are applied
//! in order, each in its own immediate transaction; a database that records a
//! version newer than [`MIGRATIONS`] knows is refused with
//! [`StoreError::SchemaTooNew`]. Never edit a released migration: add one.

use rusqlite::{Connection, OptionalExtension};

use super::map_err;
use crate::error::{Result, StoreError};

/// `(version, name, sql)`, in order, versions consecutive from 1.
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "sessions, events, leases",
        "
    CREATE TABLE sessions (
        position            INTEGER PRIMARY KEY AUTOINCREMENT,
        id                  TEXT    NOT NULL UNIQUE,
        status              TEXT    NOT NULL,
        body                TEXT    NOT NULL,
        version             INTEGER NOT NULL,
        last_seq            INTEGER NOT NULL DEFAULT 0,
        lease_epoch         INTEGER NOT NULL DEFAULT 0,
        lease_holder        TEXT,
        lease_expires_at_us INTEGER,
        created_at_us       INTEGER NOT NULL,
        updated_at_us       INTEGER NOT NULL
    );
    CREATE INDEX sessions_by_status ON sessions (status, position);
    CREATE TABLE events (
        session_id       TEXT    NOT NULL,
        seq              INTEGER NOT NULL,
        id               TEXT    NOT NULL,
        type             TEXT    NOT NULL,
        processed_at_us  INTEGER,
        created_at_us    INTEGER NOT NULL,
        body             TEXT    NOT NULL,
        PRIMARY KEY (session_id, seq)
    ) WITHOUT ROWID;
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

/// Brings the database to the newest schema, or refuses a newer one.
pub(crate) fn migrate(conn: &Connection, now_us: i64) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version       INTEGER PRIMARY KEY,
            name          TEXT    NOT NULL,
            applied_at_us INTEGER NOT NULL
        )",
    )
    .map_err(|e| map_err("creating the migrations table", e))?;
    for (version, name, sql) in MIGRATIONS {
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| map_err("starting a migration", e))?;
        let result = (|| -> Result<()> {
            let found: Option<i64> = conn
                .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(|e| map_err("reading the schema version", e))?
                .flatten();
            let found = found.unwrap_or(0);
            if found > latest() {
                return Err(StoreError::SchemaTooNew {
                    found,
                    supported: latest(),
                });
            }
            if found >= *version {
                return Ok(());
            }
            conn.execute_batch(sql)
                .map_err(|e| map_err(format!("applying migration {version} ({name})"), e))?;
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at_us) VALUES (?1, ?2, ?3)",
                rusqlite::params![version, name, now_us],
            )
            .map_err(|e| map_err(format!("recording migration {version}"), e))?;
            tracing::info!(version, name, "applied session store migration");
            Ok(())
        })();
        match result {
            Ok(()) => conn
                .execute_batch("COMMIT")
                .map_err(|e| map_err("committing a migration", e))?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
    if MIGRATIONS.is_empty() {
        return Ok(());
    }
    // A database with no migrations to apply may still be newer than us.
    let found: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(|e| map_err("reading the schema version", e))?;
    if found > latest() {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: latest(),
        });
    }
    Ok(())
}
