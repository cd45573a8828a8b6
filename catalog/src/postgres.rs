//! The catalog on PostgreSQL, for several control-plane replicas sharing
//! one database.
//!
//! Every connection has `search_path` set to the catalog's schema (default
//! `public`), so SQL text is static and tests can use a schema each, and
//! the shared `idle_in_transaction_session_timeout`
//! ([`settings::backend::POSTGRES_SESSION_SETTINGS`]), so a replica frozen
//! inside a transaction does not hold its row locks for long. Writes
//! that read before they write lock the row (`FOR UPDATE`); environment name
//! uniqueness is a unique index, so two replicas racing on a name get one
//! success and one [`CatalogError::Conflict`]. Migrations run under a
//! transaction-scoped advisory lock, so replicas starting together apply
//! each step once.

use std::str::FromStr;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls, Row};

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

static MIGRATIONS: &[Step] = &[
    (
        1,
        "CREATE TABLE agents (
        position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        latest_version BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        archived_at BIGINT
    );
    CREATE INDEX agents_created_at ON agents (created_at);
    CREATE TABLE agent_versions (
        agent_id TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
        version BIGINT NOT NULL,
        body TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (agent_id, version)
    );
    CREATE TABLE environments (
        position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL UNIQUE,
        body TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        archived_at BIGINT
    );
    CREATE TABLE api_keys (
        position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        hint TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    );",
    ),
    (2, vaults::MIGRATION),
    (3, audit::MIGRATION),
    (4, console::MIGRATION),
    (5, identities::MIGRATION),
    (6, join_tokens::MIGRATION),
];

/// Settings of the PostgreSQL catalog.
#[derive(Debug, Clone)]
pub struct PgCatalogOptions {
    /// Schema holding the catalog's tables (created if missing).
    pub schema: String,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl Default for PgCatalogOptions {
    fn default() -> Self {
        PgCatalogOptions {
            schema: "public".to_owned(),
            max_connections: 8,
        }
    }
}

/// The PostgreSQL implementation of [`Catalog`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgCatalog {
    pool: Arc<Pool>,
}

struct Pool {
    config: Config,
    schema: String,
    idle: Mutex<Vec<Client>>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// A connection taken from the pool; returned on drop unless it broke.
struct Conn<'p> {
    pool: &'p Pool,
    client: Option<Client>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if !client.is_closed() {
                self.pool
                    .idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(client);
            }
        }
    }
}

impl Conn<'_> {
    fn client(&mut self) -> Result<&mut Client> {
        self.client
            .as_mut()
            .ok_or_else(|| CatalogError::unavailable("postgresql connection lost", None))
    }
}

/// Maps a PostgreSQL error: connection (08), resource (53: disk full, out
/// of memory), operator intervention (57), system (58: I/O) and transaction
/// rollback (40) classes are transient, as in the session store.
fn map_pg(context: &str, e: tokio_postgres::Error) -> CatalogError {
    if e.is_closed() {
        return CatalogError::unavailable(
            format!("{context}: connection closed"),
            Some(Box::new(e)),
        );
    }
    let Some(code) = e.code() else {
        return CatalogError::unavailable(format!("{context}: {e}"), Some(Box::new(e)));
    };
    let class = code.code().get(..2).unwrap_or("");
    if matches!(class, "08" | "53" | "57" | "58" | "40") {
        return CatalogError::unavailable(format!("{context}: {e}"), Some(Box::new(e)));
    }
    CatalogError::backend(context.to_owned(), e)
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn check_schema_name(schema: &str) -> Result<()> {
    settings::backend::check_schema_name(schema, crate::config::MAX_SCHEMA_LEN)
        .map_err(|reason| CatalogError::Invalid { reason })
}

impl Pool {
    async fn connect(&self) -> Result<Client> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(|e| {
            CatalogError::unavailable(format!("connecting to postgresql: {e}"), Some(Box::new(e)))
        })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "catalog postgresql connection ended");
            }
        });
        client
            .batch_execute(&format!(
                "{}; SET search_path TO \"{}\"",
                settings::backend::POSTGRES_SESSION_SETTINGS,
                self.schema
            ))
            .await
            .map_err(|e| map_pg("setting the connection's timeouts and search_path", e))?;
        Ok(client)
    }

    async fn get(&self) -> Result<Conn<'_>> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CatalogError::unavailable("the catalog pool is closed", None))?;
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let client = match idle {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(Conn {
            pool: self,
            client: Some(client),
            _permit: permit,
        })
    }
}

impl PgCatalog {
    /// Connects to `url` (a libpq-style URL or key=value string), creates
    /// the schema if needed and applies migrations.
    pub async fn connect(url: &str, options: PgCatalogOptions) -> Result<Self> {
        check_schema_name(&options.schema)?;
        let config = Config::from_str(url).map_err(|e| CatalogError::Invalid {
            reason: format!("postgresql url: {e}"),
        })?;
        let pool = Pool {
            config,
            schema: options.schema.clone(),
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(options.max_connections.max(1))),
        };
        let catalog = PgCatalog {
            pool: Arc::new(pool),
        };
        catalog.migrate().await?;
        Ok(catalog)
    }

    /// The schema in use.
    pub fn schema(&self) -> &str {
        &self.pool.schema
    }

    /// Drops the schema and everything in it (tests).
    pub async fn drop_schema(&self) -> Result<()> {
        let mut conn = self.pool.get().await?;
        conn.client()?
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                self.pool.schema
            ))
            .await
            .map_err(|e| map_pg("dropping the schema", e))
    }

    async fn migrate(&self) -> Result<()> {
        let schema = self.pool.schema.clone();
        let mut conn = self.pool.get().await?;
        let client = conn.client()?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| map_pg("starting the migration", e))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[&format!("airlock-catalog-{schema}")],
        )
        .await
        .map_err(|e| map_pg("locking for the migration", e))?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
             CREATE TABLE IF NOT EXISTS catalog_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)"
        ))
        .await
        .map_err(|e| map_pg("creating catalog_migrations", e))?;
        let found: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM catalog_migrations",
                &[],
            )
            .await
            .map_err(|e| map_pg("reading the schema version", e))?
            .get(0);
        for (version, sql) in pending(found, MIGRATIONS)? {
            tx.batch_execute(sql)
                .await
                .map_err(|e| map_pg(&format!("applying catalog migration {version}"), e))?;
            tx.execute(
                "INSERT INTO catalog_migrations (version, applied_at) VALUES ($1, $2)",
                &[version, &now_micros()],
            )
            .await
            .map_err(|e| map_pg("recording a migration", e))?;
            tracing::info!(version, schema = %schema, "catalog migration applied");
        }
        tx.commit()
            .await
            .map_err(|e| map_pg("committing the migration", e))
    }
}

const AGENT_COLUMNS: &str = "a.position, a.id, a.latest_version, a.created_at, a.archived_at, v.version, v.body, v.created_at";

fn agent_record(row: &Row) -> Result<AgentRecord> {
    let id: String = row.get(1);
    let version: i64 = row.get(5);
    let body: String = row.get(6);
    Ok(AgentRecord {
        body: decode_body(&format!("agent {id} version {version}"), &body)?,
        position: row.get(0),
        latest_version: version_u64(row.get(2))?,
        created_at: from_micros(row.get(3))?,
        archived_at: row.get::<_, Option<i64>>(4).map(from_micros).transpose()?,
        version: version_u64(version)?,
        updated_at: from_micros(row.get(7))?,
        id,
    })
}

const ENV_COLUMNS: &str = "position, id, name, body, created_at, updated_at, archived_at";

fn env_record(row: &Row) -> Result<EnvironmentRecord> {
    let id: String = row.get(1);
    let body: String = row.get(3);
    Ok(EnvironmentRecord {
        body: decode_body(&format!("environment {id}"), &body)?,
        position: row.get(0),
        name: row.get(2),
        created_at: from_micros(row.get(4))?,
        updated_at: from_micros(row.get(5))?,
        archived_at: row.get::<_, Option<i64>>(6).map(from_micros).transpose()?,
        id,
    })
}

const KEY_COLUMNS: &str = "id, name, hint, created_at, revoked_at, role";

fn key_record(row: &Row) -> Result<ApiKeyRecord> {
    let role: String = row.get(5);
    Ok(ApiKeyRecord {
        role: crate::KeyRole::parse(&role)
            .ok_or_else(|| CatalogError::corrupt(format!("api key has role {role:?}")))?,
        id: row.get(0),
        name: row.get(1),
        hint: row.get(2),
        created_at: from_micros(row.get(3))?,
        revoked_at: row.get::<_, Option<i64>>(4).map(from_micros).transpose()?,
    })
}

fn page<T>(mut items: Vec<T>, limit: usize) -> Page<T> {
    let has_more = items.len() > limit;
    items.truncate(limit);
    Page { items, has_more }
}

fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX)
}

async fn get_agent_in(
    client: &impl tokio_postgres::GenericClient,
    agent_id: &str,
    version: Option<u64>,
    lock: bool,
) -> Result<AgentRecord> {
    if lock {
        // Lock the agent row on its own first. `FOR UPDATE OF a` on the join
        // would, under READ COMMITTED, re-check a concurrently updated row
        // against the stale joined version row and return nothing, which
        // reads as "not found" to the loser of a race. The join below is a
        // new statement, so it sees what the lock holder committed.
        client
            .query_opt(
                "SELECT 1 FROM agents WHERE id = $1 FOR UPDATE",
                &[&agent_id],
            )
            .await
            .map_err(|e| map_pg("locking an agent", e))?;
    }
    let sql = format!(
        "SELECT {AGENT_COLUMNS} FROM agents a JOIN agent_versions v ON v.agent_id = a.id
         WHERE a.id = $1 AND v.version = COALESCE($2::BIGINT, a.latest_version)"
    );
    let row = client
        .query_opt(&sql, &[&agent_id, &version.map(version_i64)])
        .await
        .map_err(|e| map_pg("reading an agent", e))?;
    match row {
        Some(row) => agent_record(&row),
        None => {
            let exists = client
                .query_opt("SELECT 1 FROM agents WHERE id = $1", &[&agent_id])
                .await
                .map_err(|e| map_pg("reading an agent", e))?
                .is_some();
            let id = match version {
                Some(v) if exists => format!("{agent_id} version {v}"),
                _ => agent_id.to_owned(),
            };
            Err(CatalogError::not_found(ResourceKind::Agent, id))
        }
    }
}

async fn get_env_in(
    client: &impl tokio_postgres::GenericClient,
    environment_id: &str,
    lock: bool,
) -> Result<EnvironmentRecord> {
    let sql = format!(
        "SELECT {ENV_COLUMNS} FROM environments WHERE id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    match client
        .query_opt(&sql, &[&environment_id])
        .await
        .map_err(|e| map_pg("reading an environment", e))?
    {
        Some(row) => env_record(&row),
        None => Err(CatalogError::not_found(
            ResourceKind::Environment,
            environment_id,
        )),
    }
}

fn micros(t: Option<OffsetDateTime>) -> Option<i64> {
    t.map(to_micros)
}

#[async_trait::async_trait]
impl Catalog for PgCatalog {
    async fn create_agent(&self, new: NewAgent) -> Result<AgentRecord> {
        let mut conn = self.pool.get().await?;
        let tx = conn
            .client()?
            .transaction()
            .await
            .map_err(|e| map_pg("starting a transaction", e))?;
        let now = now_micros();
        tx.execute(
            "INSERT INTO agents (id, latest_version, created_at) VALUES ($1, 1, $2)",
            &[&new.id, &now],
        )
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                CatalogError::conflict(ResourceKind::Agent, &new.id, "the id exists")
            } else {
                map_pg("inserting an agent", e)
            }
        })?;
        tx.execute(
            "INSERT INTO agent_versions (agent_id, version, body, created_at) VALUES ($1, 1, $2, $3)",
            &[&new.id, &encode_body(&new.body), &now],
        )
        .await
        .map_err(|e| map_pg("inserting an agent version", e))?;
        let record = get_agent_in(&tx, &new.id, None, false).await?;
        tx.commit().await.map_err(|e| map_pg("committing", e))?;
        Ok(record)
    }

    async fn get_agent(&self, agent_id: &str, version: Option<u64>) -> Result<AgentRecord> {
        let mut conn = self.pool.get().await?;
        get_agent_in(&*conn.client()?, agent_id, version, false).await
    }

    async fn update_agent(
        &self,
        agent_id: &str,
        based_on: u64,
        body: Value,
    ) -> Result<AgentRecord> {
        let mut conn = self.pool.get().await?;
        let tx = conn
            .client()?
            .transaction()
            .await
            .map_err(|e| map_pg("starting a transaction", e))?;
        let current = get_agent_in(&tx, agent_id, None, true).await?;
        if current.archived_at.is_some() {
            return Err(CatalogError::Archived {
                kind: ResourceKind::Agent,
                id: agent_id.to_owned(),
            });
        }
        if current.version != based_on {
            return Err(CatalogError::conflict(
                ResourceKind::Agent,
                agent_id,
                format!("the latest version is {}, not {based_on}", current.version),
            ));
        }
        let next = version_i64(based_on + 1);
        tx.execute(
            "INSERT INTO agent_versions (agent_id, version, body, created_at) VALUES ($1, $2, $3, $4)",
            &[&agent_id, &next, &encode_body(&body), &now_micros()],
        )
        .await
        .map_err(|e| map_pg("inserting an agent version", e))?;
        tx.execute(
            "UPDATE agents SET latest_version = $2 WHERE id = $1",
            &[&agent_id, &next],
        )
        .await
        .map_err(|e| map_pg("updating an agent", e))?;
        let record = get_agent_in(&tx, agent_id, None, false).await?;
        tx.commit().await.map_err(|e| map_pg("committing", e))?;
        Ok(record)
    }

    async fn archive_agent(&self, agent_id: &str) -> Result<AgentRecord> {
        let mut conn = self.pool.get().await?;
        let client = conn.client()?;
        client
            .execute(
                "UPDATE agents SET archived_at = $2 WHERE id = $1 AND archived_at IS NULL",
                &[&agent_id, &now_micros()],
            )
            .await
            .map_err(|e| map_pg("archiving an agent", e))?;
        get_agent_in(&*client, agent_id, None, false).await
    }

    async fn list_agents(&self, q: AgentQuery) -> Result<Page<AgentRecord>> {
        check_limit(q.limit)?;
        let (cmp, dir) = q.order.keyset_sql();
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM agents a JOIN agent_versions v
               ON v.agent_id = a.id AND v.version = a.latest_version
             WHERE ($1::BOOLEAN OR a.archived_at IS NULL)
               AND ($2::BIGINT IS NULL OR a.created_at >= $2)
               AND ($3::BIGINT IS NULL OR a.created_at <= $3)
               AND ($4::BIGINT IS NULL OR a.position {cmp} $4)
             ORDER BY a.position {dir} LIMIT $5"
        );
        let mut conn = self.pool.get().await?;
        let rows = conn
            .client()?
            .query(
                &sql,
                &[
                    &q.include_archived,
                    &micros(q.created_at_gte),
                    &micros(q.created_at_lte),
                    &q.after_position,
                    &limit_i64(q.limit),
                ],
            )
            .await
            .map_err(|e| map_pg("listing agents", e))?;
        let items = rows.iter().map(agent_record).collect::<Result<Vec<_>>>()?;
        Ok(page(items, q.limit))
    }

    async fn list_agent_versions(
        &self,
        agent_id: &str,
        q: VersionQuery,
    ) -> Result<Page<AgentRecord>> {
        check_limit(q.limit)?;
        let (cmp, dir) = q.order.keyset_sql();
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM agents a JOIN agent_versions v ON v.agent_id = a.id
             WHERE a.id = $1 AND ($2::BIGINT IS NULL OR v.version {cmp} $2)
             ORDER BY v.version {dir} LIMIT $3"
        );
        let mut conn = self.pool.get().await?;
        let client = conn.client()?;
        let exists = client
            .query_opt("SELECT 1 FROM agents WHERE id = $1", &[&agent_id])
            .await
            .map_err(|e| map_pg("reading an agent", e))?
            .is_some();
        if !exists {
            return Err(CatalogError::not_found(ResourceKind::Agent, agent_id));
        }
        let rows = client
            .query(
                &sql,
                &[
                    &agent_id,
                    &q.after_version.map(version_i64),
                    &limit_i64(q.limit),
                ],
            )
            .await
            .map_err(|e| map_pg("listing agent versions", e))?;
        let items = rows.iter().map(agent_record).collect::<Result<Vec<_>>>()?;
        Ok(page(items, q.limit))
    }

    async fn create_environment(&self, new: NewEnvironment) -> Result<EnvironmentRecord> {
        let mut conn = self.pool.get().await?;
        let client = conn.client()?;
        let now = now_micros();
        let sql = format!(
            "INSERT INTO environments (id, name, body, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)
             RETURNING {ENV_COLUMNS}"
        );
        let row = client
            .query_one(&sql, &[&new.id, &new.name, &encode_body(&new.body), &now])
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    let name_clash = e
                        .as_db_error()
                        .and_then(|d| d.constraint())
                        .is_some_and(|c| c.contains("name"));
                    if name_clash {
                        CatalogError::conflict(
                            ResourceKind::Environment,
                            &new.name,
                            "an environment with this name exists",
                        )
                    } else {
                        CatalogError::conflict(ResourceKind::Environment, &new.id, "the id exists")
                    }
                } else {
                    map_pg("inserting an environment", e)
                }
            })?;
        env_record(&row)
    }

    async fn get_environment(&self, environment_id: &str) -> Result<EnvironmentRecord> {
        let mut conn = self.pool.get().await?;
        get_env_in(&*conn.client()?, environment_id, false).await
    }

    async fn update_environment(
        &self,
        environment_id: &str,
        name: &str,
        body: Value,
    ) -> Result<EnvironmentRecord> {
        let mut conn = self.pool.get().await?;
        let tx = conn
            .client()?
            .transaction()
            .await
            .map_err(|e| map_pg("starting a transaction", e))?;
        let current = get_env_in(&tx, environment_id, true).await?;
        if current.archived_at.is_some() {
            return Err(CatalogError::Archived {
                kind: ResourceKind::Environment,
                id: environment_id.to_owned(),
            });
        }
        let sql = format!(
            "UPDATE environments SET name = $2, body = $3, updated_at = $4 WHERE id = $1 RETURNING {ENV_COLUMNS}"
        );
        let row = tx
            .query_one(
                &sql,
                &[&environment_id, &name, &encode_body(&body), &now_micros()],
            )
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    CatalogError::conflict(
                        ResourceKind::Environment,
                        name,
                        "an environment with this name exists",
                    )
                } else {
                    map_pg("updating an environment", e)
                }
            })?;
        let record = env_record(&row)?;
        tx.commit().await.map_err(|e| map_pg("committing", e))?;
        Ok(record)
    }

    async fn archive_environment(&self, environment_id: &str) -> Result<EnvironmentRecord> {
        let mut conn = self.pool.get().await?;
        let client = conn.client()?;
        client
            .execute(
                "UPDATE environments SET archived_at = $2, updated_at = $2 WHERE id = $1 AND archived_at IS NULL",
                &[&environment_id, &now_micros()],
            )
            .await
            .map_err(|e| map_pg("archiving an environment", e))?;
        get_env_in(&*client, environment_id, false).await
    }

    async fn delete_environment(&self, environment_id: &str) -> Result<()> {
        let mut conn = self.pool.get().await?;
        let n = conn
            .client()?
            .execute("DELETE FROM environments WHERE id = $1", &[&environment_id])
            .await
            .map_err(|e| map_pg("deleting an environment", e))?;
        if n == 0 {
            return Err(CatalogError::not_found(
                ResourceKind::Environment,
                environment_id,
            ));
        }
        Ok(())
    }

    async fn list_environments(&self, q: EnvironmentQuery) -> Result<Page<EnvironmentRecord>> {
        check_limit(q.limit)?;
        let (cmp, dir) = q.order.keyset_sql();
        let sql = format!(
            "SELECT {ENV_COLUMNS} FROM environments
             WHERE ($1::BOOLEAN OR archived_at IS NULL) AND ($2::BIGINT IS NULL OR position {cmp} $2)
             ORDER BY position {dir} LIMIT $3"
        );
        let mut conn = self.pool.get().await?;
        let rows = conn
            .client()?
            .query(
                &sql,
                &[&q.include_archived, &q.after_position, &limit_i64(q.limit)],
            )
            .await
            .map_err(|e| map_pg("listing environments", e))?;
        let items = rows.iter().map(env_record).collect::<Result<Vec<_>>>()?;
        Ok(page(items, q.limit))
    }

    async fn create_api_key(&self, new: NewApiKey) -> Result<ApiKeyRecord> {
        crate::ConsoleStore::create_api_key_with_role(self, new, crate::KeyRole::Admin).await
    }

    async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>> {
        let mut conn = self.pool.get().await?;
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1");
        conn.client()?
            .query_opt(&sql, &[&key_hash])
            .await
            .map_err(|e| map_pg("reading an api key", e))?
            .map(|r| key_record(&r))
            .transpose()
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        let mut conn = self.pool.get().await?;
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY position");
        let rows = conn
            .client()?
            .query(&sql, &[])
            .await
            .map_err(|e| map_pg("listing api keys", e))?;
        rows.iter().map(key_record).collect()
    }

    async fn revoke_api_key(&self, key_id: &str) -> Result<ApiKeyRecord> {
        let mut conn = self.pool.get().await?;
        let client = conn.client()?;
        client
            .execute(
                "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&key_id, &now_micros()],
            )
            .await
            .map_err(|e| map_pg("revoking an api key", e))?;
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
        match client
            .query_opt(&sql, &[&key_id])
            .await
            .map_err(|e| map_pg("reading an api key", e))?
        {
            Some(row) => key_record(&row),
            None => Err(CatalogError::not_found(ResourceKind::ApiKey, key_id)),
        }
    }
}
