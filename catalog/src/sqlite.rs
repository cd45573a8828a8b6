//! The embedded catalog: one SQLite file (`catalog.sqlite3` in the data
//! directory, separate from the session log), WAL, `synchronous=FULL`.
//!
//! Catalog traffic is light (configuration changes and one key lookup per
//! API request), so one connection behind a mutex, used from tokio's
//! blocking threads, is enough; every write is one transaction.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row, Transaction};
use serde_json::Value;

use crate::error::{CatalogError, Result};
use crate::migrate::{pending, Step};
use crate::types::{
    decode_body, encode_body, from_micros, now_micros, to_micros, version_i64, version_u64,
    AgentQuery, AgentRecord, ApiKeyRecord, EnvironmentQuery, EnvironmentRecord, NewAgent,
    NewApiKey, NewEnvironment, Page, ResourceKind, VersionQuery,
};
use crate::{check_limit, Catalog};

mod audit;
mod console;
mod identities;
mod join_tokens;
mod vaults;

/// File name of the catalog inside a data directory.
pub const DB_FILE_NAME: &str = "catalog.sqlite3";

static MIGRATIONS: &[Step] = &[
    (
        1,
        "CREATE TABLE agents (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        latest_version INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        archived_at INTEGER
    );
    CREATE INDEX agents_created_at ON agents (created_at);
    CREATE TABLE agent_versions (
        agent_id TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        body TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (agent_id, version)
    ) WITHOUT ROWID;
    CREATE TABLE environments (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL UNIQUE,
        body TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        archived_at INTEGER
    );
    CREATE TABLE api_keys (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        hint TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );",
    ),
    (2, vaults::MIGRATION),
    (3, audit::MIGRATION),
    (4, console::MIGRATION),
    (5, identities::MIGRATION),
    (6, join_tokens::MIGRATION),
];

/// The SQLite implementation of [`Catalog`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteCatalog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    conn: Mutex<Connection>,
}

/// Every row of `sql` with `params`, mapped by `row`; errors name `what`.
fn query_rows<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    row: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    what: &str,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql).map_err(|e| map_sql(what, e))?;
    let rows = stmt.query_map(params, row).map_err(|e| map_sql(what, e))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(|e| map_sql(what, e))
}

/// Maps a rusqlite error the way the session store does: the storage not
/// taking writes right now (busy, locked, disk full, an I/O error, a file
/// that cannot be opened or is read-only, out of memory) is
/// [`CatalogError::Unavailable`] with the error kept as its source;
/// corruption is corrupt; constraint violations are conflicts (callers that
/// expect one check first); the rest is a bug ([`CatalogError::Backend`]).
fn map_sql(context: &str, e: rusqlite::Error) -> CatalogError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        match f.code {
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::ReadOnly
            | ErrorCode::OutOfMemory => {
                return CatalogError::unavailable(format!("{context}: {e}"), Some(Box::new(e)))
            }
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
                return CatalogError::corrupt(format!("{context}: {e}"))
            }
            _ => {}
        }
    }
    CatalogError::backend(context.to_owned(), e)
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation)
}

impl SqliteCatalog {
    /// Opens (creating and migrating) `catalog.sqlite3` in `data_dir`.
    pub async fn open_in_dir(data_dir: &Path) -> Result<Self> {
        Self::open(&data_dir.join(DB_FILE_NAME)).await
    }

    /// Opens (creating and migrating) the catalog at `path`.
    pub async fn open(path: &Path) -> Result<Self> {
        let path = path.to_owned();
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || open_conn(&p))
            .await
            .map_err(|e| CatalogError::backend("opening the catalog", e))??;
        Ok(SqliteCatalog {
            inner: Arc::new(Inner {
                path,
                conn: Mutex::new(conn),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn with<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner
                .conn
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| CatalogError::backend("running a catalog query", e))?
    }
}

fn open_conn(path: &Path) -> Result<Connection> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| {
                CatalogError::unavailable(
                    format!("creating directory {}: {e}", dir.display()),
                    Some(Box::new(e)),
                )
            })?;
        }
    }
    let mut conn =
        Connection::open(path).map_err(|e| map_sql(&format!("opening {}", path.display()), e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| map_sql("setting busy_timeout", e))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )
    .map_err(|e| map_sql("setting pragmas", e))?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS catalog_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .map_err(|e| map_sql("creating catalog_migrations", e))?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| map_sql("starting the migration", e))?;
    let found: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM catalog_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(|e| map_sql("reading the schema version", e))?;
    for (version, sql) in pending(found, MIGRATIONS)? {
        tx.execute_batch(sql)
            .map_err(|e| map_sql(&format!("applying catalog migration {version}"), e))?;
        tx.execute(
            "INSERT INTO catalog_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, now_micros()],
        )
        .map_err(|e| map_sql("recording a migration", e))?;
        tracing::info!(version, "catalog migration applied");
    }
    tx.commit()
        .map_err(|e| map_sql("committing the migration", e))
}

const AGENT_COLUMNS: &str = "a.position, a.id, a.latest_version, a.created_at, a.archived_at, v.version, v.body, v.created_at";

type AgentRow = (i64, String, i64, i64, Option<i64>, i64, String, i64);

fn agent_row(r: &Row<'_>) -> rusqlite::Result<AgentRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn agent_record(row: AgentRow) -> Result<AgentRecord> {
    let (position, id, latest, created, archived, version, body, updated) = row;
    Ok(AgentRecord {
        body: decode_body(&format!("agent {id} version {version}"), &body)?,
        id,
        version: version_u64(version)?,
        latest_version: version_u64(latest)?,
        created_at: from_micros(created)?,
        updated_at: from_micros(updated)?,
        archived_at: archived.map(from_micros).transpose()?,
        position,
    })
}

fn get_agent_tx(conn: &Connection, agent_id: &str, version: Option<u64>) -> Result<AgentRecord> {
    let sql = format!(
        "SELECT {AGENT_COLUMNS} FROM agents a JOIN agent_versions v ON v.agent_id = a.id
         WHERE a.id = ?1 AND v.version = COALESCE(?2, a.latest_version)"
    );
    let row = conn
        .query_row(&sql, params![agent_id, version.map(version_i64)], agent_row)
        .optional()
        .map_err(|e| map_sql("reading an agent", e))?;
    match row {
        Some(row) => agent_record(row),
        None => {
            let id = match version {
                Some(v) if agent_exists(conn, agent_id)? => format!("{agent_id} version {v}"),
                _ => agent_id.to_owned(),
            };
            Err(CatalogError::not_found(ResourceKind::Agent, id))
        }
    }
}

fn agent_exists(conn: &Connection, agent_id: &str) -> Result<bool> {
    conn.query_row(
        "SELECT 1 FROM agents WHERE id = ?1",
        params![agent_id],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
    .map_err(|e| map_sql("reading an agent", e))
}

const ENV_COLUMNS: &str = "position, id, name, body, created_at, updated_at, archived_at";

type EnvRow = (i64, String, String, String, i64, i64, Option<i64>);

fn env_row(r: &Row<'_>) -> rusqlite::Result<EnvRow> {
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

fn env_record(row: EnvRow) -> Result<EnvironmentRecord> {
    let (position, id, name, body, created, updated, archived) = row;
    Ok(EnvironmentRecord {
        body: decode_body(&format!("environment {id}"), &body)?,
        id,
        name,
        created_at: from_micros(created)?,
        updated_at: from_micros(updated)?,
        archived_at: archived.map(from_micros).transpose()?,
        position,
    })
}

fn get_env_tx(conn: &Connection, environment_id: &str) -> Result<EnvironmentRecord> {
    let sql = format!("SELECT {ENV_COLUMNS} FROM environments WHERE id = ?1");
    match conn
        .query_row(&sql, params![environment_id], env_row)
        .optional()
        .map_err(|e| map_sql("reading an environment", e))?
    {
        Some(row) => env_record(row),
        None => Err(CatalogError::not_found(
            ResourceKind::Environment,
            environment_id,
        )),
    }
}

fn name_taken(tx: &Transaction<'_>, name: &str, except_id: &str) -> Result<bool> {
    tx.query_row(
        "SELECT 1 FROM environments WHERE name = ?1 AND id <> ?2",
        params![name, except_id],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
    .map_err(|e| map_sql("checking an environment name", e))
}

const KEY_COLUMNS: &str = "id, name, hint, created_at, revoked_at, role";

type KeyRow = (String, String, String, i64, Option<i64>, String);

fn key_row(r: &Row<'_>) -> rusqlite::Result<KeyRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn key_record(row: KeyRow) -> Result<ApiKeyRecord> {
    let (id, name, hint, created, revoked, role) = row;
    Ok(ApiKeyRecord {
        role: crate::KeyRole::parse(&role)
            .ok_or_else(|| CatalogError::corrupt(format!("api key {id} has role {role:?}")))?,
        id,
        name,
        hint,
        created_at: from_micros(created)?,
        revoked_at: revoked.map(from_micros).transpose()?,
    })
}

fn page<T>(mut items: Vec<T>, limit: usize) -> Page<T> {
    let has_more = items.len() > limit;
    items.truncate(limit);
    Page { items, has_more }
}

fn immediate(conn: &mut Connection) -> Result<Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| map_sql("starting a transaction", e))
}

fn commit(tx: Transaction<'_>) -> Result<()> {
    tx.commit().map_err(|e| map_sql("committing", e))
}

fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX)
}

#[async_trait::async_trait]
impl Catalog for SqliteCatalog {
    async fn create_agent(&self, new: NewAgent) -> Result<AgentRecord> {
        self.with(move |conn| {
            let tx = immediate(conn)?;
            if agent_exists(&tx, &new.id)? {
                return Err(CatalogError::conflict(ResourceKind::Agent, &new.id, "the id exists"));
            }
            let now = now_micros();
            tx.execute(
                "INSERT INTO agents (id, latest_version, created_at) VALUES (?1, 1, ?2)",
                params![new.id, now],
            )
            .map_err(|e| map_sql("inserting an agent", e))?;
            tx.execute(
                "INSERT INTO agent_versions (agent_id, version, body, created_at) VALUES (?1, 1, ?2, ?3)",
                params![new.id, encode_body(&new.body), now],
            )
            .map_err(|e| map_sql("inserting an agent version", e))?;
            let record = get_agent_tx(&tx, &new.id, None)?;
            commit(tx)?;
            Ok(record)
        })
        .await
    }

    async fn get_agent(&self, agent_id: &str, version: Option<u64>) -> Result<AgentRecord> {
        let agent_id = agent_id.to_owned();
        self.with(move |conn| get_agent_tx(conn, &agent_id, version))
            .await
    }

    async fn update_agent(
        &self,
        agent_id: &str,
        based_on: u64,
        body: Value,
    ) -> Result<AgentRecord> {
        let agent_id = agent_id.to_owned();
        self.with(move |conn| {
            let tx = immediate(conn)?;
            let current = get_agent_tx(&tx, &agent_id, None)?;
            if current.archived_at.is_some() {
                return Err(CatalogError::Archived {
                    kind: ResourceKind::Agent,
                    id: agent_id,
                });
            }
            if current.version != based_on {
                return Err(CatalogError::conflict(
                    ResourceKind::Agent,
                    &agent_id,
                    format!("the latest version is {}, not {based_on}", current.version),
                ));
            }
            let next = version_i64(based_on + 1);
            tx.execute(
                "INSERT INTO agent_versions (agent_id, version, body, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![agent_id, next, encode_body(&body), now_micros()],
            )
            .map_err(|e| map_sql("inserting an agent version", e))?;
            tx.execute(
                "UPDATE agents SET latest_version = ?2 WHERE id = ?1",
                params![agent_id, next],
            )
            .map_err(|e| map_sql("updating an agent", e))?;
            let record = get_agent_tx(&tx, &agent_id, None)?;
            commit(tx)?;
            Ok(record)
        })
        .await
    }

    async fn archive_agent(&self, agent_id: &str) -> Result<AgentRecord> {
        let agent_id = agent_id.to_owned();
        self.with(move |conn| {
            let tx = immediate(conn)?;
            tx.execute(
                "UPDATE agents SET archived_at = ?2 WHERE id = ?1 AND archived_at IS NULL",
                params![agent_id, now_micros()],
            )
            .map_err(|e| map_sql("archiving an agent", e))?;
            let record = get_agent_tx(&tx, &agent_id, None)?;
            commit(tx)?;
            Ok(record)
        })
        .await
    }

    async fn list_agents(&self, q: AgentQuery) -> Result<Page<AgentRecord>> {
        check_limit(q.limit)?;
        self.with(move |conn| {
            let (cmp, dir) = q.order.keyset_sql();
            let sql = format!(
                "SELECT {AGENT_COLUMNS} FROM agents a JOIN agent_versions v
                   ON v.agent_id = a.id AND v.version = a.latest_version
                 WHERE (?1 OR a.archived_at IS NULL)
                   AND (?2 IS NULL OR a.created_at >= ?2)
                   AND (?3 IS NULL OR a.created_at <= ?3)
                   AND (?4 IS NULL OR a.position {cmp} ?4)
                 ORDER BY a.position {dir} LIMIT ?5"
            );
            let rows = query_rows(
                conn,
                &sql,
                params![
                    q.include_archived,
                    q.created_at_gte.map(to_micros),
                    q.created_at_lte.map(to_micros),
                    q.after_position,
                    limit_i64(q.limit)
                ],
                agent_row,
                "listing agents",
            )?;
            let items = rows
                .into_iter()
                .map(agent_record)
                .collect::<Result<Vec<_>>>()?;
            Ok(page(items, q.limit))
        })
        .await
    }

    async fn list_agent_versions(
        &self,
        agent_id: &str,
        q: VersionQuery,
    ) -> Result<Page<AgentRecord>> {
        check_limit(q.limit)?;
        let agent_id = agent_id.to_owned();
        self.with(move |conn| {
            if !agent_exists(conn, &agent_id)? {
                return Err(CatalogError::not_found(ResourceKind::Agent, agent_id));
            }
            let (cmp, dir) = q.order.keyset_sql();
            let sql = format!(
                "SELECT {AGENT_COLUMNS} FROM agents a JOIN agent_versions v ON v.agent_id = a.id
                 WHERE a.id = ?1 AND (?2 IS NULL OR v.version {cmp} ?2)
                 ORDER BY v.version {dir} LIMIT ?3"
            );
            let rows = query_rows(
                conn,
                &sql,
                params![
                    agent_id,
                    q.after_version.map(version_i64),
                    limit_i64(q.limit)
                ],
                agent_row,
                "listing agent versions",
            )?;
            let items = rows
                .into_iter()
                .map(agent_record)
                .collect::<Result<Vec<_>>>()?;
            Ok(page(items, q.limit))
        })
        .await
    }

    async fn create_environment(&self, new: NewEnvironment) -> Result<EnvironmentRecord> {
        self.with(move |conn| {
            let tx = immediate(conn)?;
            if name_taken(&tx, &new.name, "")? {
                return Err(CatalogError::conflict(
                    ResourceKind::Environment,
                    &new.name,
                    "an environment with this name exists",
                ));
            }
            let now = now_micros();
            tx.execute(
                "INSERT INTO environments (id, name, body, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                params![new.id, new.name, encode_body(&new.body), now],
            )
            .map_err(|e| {
                if is_constraint(&e) {
                    CatalogError::conflict(ResourceKind::Environment, &new.id, "the id exists")
                } else {
                    map_sql("inserting an environment", e)
                }
            })?;
            let record = get_env_tx(&tx, &new.id)?;
            commit(tx)?;
            Ok(record)
        })
        .await
    }

    async fn get_environment(&self, environment_id: &str) -> Result<EnvironmentRecord> {
        let id = environment_id.to_owned();
        self.with(move |conn| get_env_tx(conn, &id)).await
    }

    async fn update_environment(
        &self,
        environment_id: &str,
        name: &str,
        body: Value,
    ) -> Result<EnvironmentRecord> {
        let id = environment_id.to_owned();
        let name = name.to_owned();
        self.with(move |conn| {
            let tx = immediate(conn)?;
            let current = get_env_tx(&tx, &id)?;
            if current.archived_at.is_some() {
                return Err(CatalogError::Archived {
                    kind: ResourceKind::Environment,
                    id,
                });
            }
            if name_taken(&tx, &name, &id)? {
                return Err(CatalogError::conflict(
                    ResourceKind::Environment,
                    &name,
                    "an environment with this name exists",
                ));
            }
            tx.execute(
                "UPDATE environments SET name = ?2, body = ?3, updated_at = ?4 WHERE id = ?1",
                params![id, name, encode_body(&body), now_micros()],
            )
            .map_err(|e| map_sql("updating an environment", e))?;
            let record = get_env_tx(&tx, &id)?;
            commit(tx)?;
            Ok(record)
        })
        .await
    }

    async fn archive_environment(&self, environment_id: &str) -> Result<EnvironmentRecord> {
        let id = environment_id.to_owned();
        self.with(move |conn| {
            let tx = immediate(conn)?;
            let now = now_micros();
            tx.execute(
                "UPDATE environments SET archived_at = ?2, updated_at = ?2 WHERE id = ?1 AND archived_at IS NULL",
                params![id, now],
            )
            .map_err(|e| map_sql("archiving an environment", e))?;
            let record = get_env_tx(&tx, &id)?;
            commit(tx)?;
            Ok(record)
        })
        .await
    }

    async fn delete_environment(&self, environment_id: &str) -> Result<()> {
        let id = environment_id.to_owned();
        self.with(move |conn| {
            let n = conn
                .execute("DELETE FROM environments WHERE id = ?1", params![id])
                .map_err(|e| map_sql("deleting an environment", e))?;
            if n == 0 {
                return Err(CatalogError::not_found(ResourceKind::Environment, id));
            }
            Ok(())
        })
        .await
    }

    async fn list_environments(&self, q: EnvironmentQuery) -> Result<Page<EnvironmentRecord>> {
        check_limit(q.limit)?;
        self.with(move |conn| {
            let (cmp, dir) = q.order.keyset_sql();
            let sql = format!(
                "SELECT {ENV_COLUMNS} FROM environments
                 WHERE (?1 OR archived_at IS NULL) AND (?2 IS NULL OR position {cmp} ?2)
                 ORDER BY position {dir} LIMIT ?3"
            );
            let rows = query_rows(
                conn,
                &sql,
                params![q.include_archived, q.after_position, limit_i64(q.limit)],
                env_row,
                "listing environments",
            )?;
            let items = rows
                .into_iter()
                .map(env_record)
                .collect::<Result<Vec<_>>>()?;
            Ok(page(items, q.limit))
        })
        .await
    }

    async fn create_api_key(&self, new: NewApiKey) -> Result<ApiKeyRecord> {
        crate::ConsoleStore::create_api_key_with_role(self, new, crate::KeyRole::Admin).await
    }

    async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>> {
        let key_hash = key_hash.to_owned();
        self.with(move |conn| {
            let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ?1");
            let mut stmt = conn
                .prepare_cached(&sql)
                .map_err(|e| map_sql("reading an api key", e))?;
            stmt.query_row(params![key_hash], key_row)
                .optional()
                .map_err(|e| map_sql("reading an api key", e))?
                .map(key_record)
                .transpose()
        })
        .await
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        self.with(move |conn| {
            let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY position");
            let rows = query_rows(conn, &sql, [], key_row, "listing api keys")?;
            rows.into_iter().map(key_record).collect()
        })
        .await
    }

    async fn revoke_api_key(&self, key_id: &str) -> Result<ApiKeyRecord> {
        let key_id = key_id.to_owned();
        self.with(move |conn| {
            let tx = immediate(conn)?;
            tx.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![key_id, now_micros()],
            )
            .map_err(|e| map_sql("revoking an api key", e))?;
            let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1");
            let row = tx
                .query_row(&sql, params![key_id], key_row)
                .optional()
                .map_err(|e| map_sql("reading an api key", e))?;
            commit(tx)?;
            match row {
                Some(row) => key_record(row),
                None => Err(CatalogError::not_found(ResourceKind::ApiKey, key_id)),
            }
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod map_sql_tests {
    use super::*;
    use rusqlite::ffi;

    fn failure(code: std::os::raw::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), None)
    }

    #[test]
    fn storage_that_cannot_take_writes_is_unavailable_and_names_the_cause() {
        for code in [
            ffi::SQLITE_FULL,
            ffi::SQLITE_IOERR,
            ffi::SQLITE_READONLY,
            ffi::SQLITE_CANTOPEN,
            ffi::SQLITE_BUSY,
            ffi::SQLITE_LOCKED,
            ffi::SQLITE_NOMEM,
        ] {
            let e = map_sql("committing", failure(code));
            assert!(e.is_transient(), "{code}: {e:?}");
            let source = std::error::Error::source(&e).map(ToString::to_string);
            assert!(source.is_some(), "{code}: the cause is kept as the source");
            assert!(
                e.to_string()
                    .starts_with("catalog unavailable: committing: "),
                "{e}"
            );
        }
        let full = map_sql("committing", failure(ffi::SQLITE_FULL));
        assert!(full.to_string().contains("full"), "{full}");
        assert!(matches!(
            map_sql("reading", failure(ffi::SQLITE_CORRUPT)),
            CatalogError::Corrupt { .. }
        ));
        let bug = map_sql("preparing", failure(ffi::SQLITE_MISUSE));
        assert!(matches!(bug, CatalogError::Backend { .. }), "{bug:?}");
        assert!(std::error::Error::source(&bug).is_some());
    }
}
