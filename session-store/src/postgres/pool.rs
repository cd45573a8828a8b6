//! A small connection pool with a per-connection statement cache.
//!
//! Every connection has `search_path` set to the store's schema, so SQL text
//! is static. A connection dropped in the middle of a transaction (a
//! cancelled caller) or that reported a connection error is discarded, never
//! reused.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

use super::map_pg;
use crate::error::{Result, StoreError};

pub(crate) struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
    in_tx: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("in_tx", &self.in_tx)
            .finish_non_exhaustive()
    }
}

/// Opens one connection with `search_path` set to `schema` (already quoted).
pub(crate) async fn connect(config: &Config, quoted_schema: Option<&str>) -> Result<Client> {
    let (client, connection) = config.connect(NoTls).await.map_err(|e| {
        StoreError::unavailable(format!("connecting to postgresql: {e}"), Some(Box::new(e)))
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%e, "postgresql connection ended");
        }
    });
    // One round trip: the timeouts, and the schema when there is one.
    let setup = match quoted_schema {
        Some(schema) => format!("{}; SET search_path TO {schema}", super::SESSION_SETTINGS),
        None => super::SESSION_SETTINGS.to_owned(),
    };
    client
        .batch_execute(&setup)
        .await
        .map_err(|e| map_pg("setting the connection's timeouts and search_path", e))?;
    Ok(client)
}

impl Conn {
    async fn statement(&mut self, sql: &'static str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self
            .client
            .prepare(sql)
            .await
            .map_err(|e| map_pg("preparing a statement", e))?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    /// Runs a cached statement returning rows.
    pub(crate) async fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, PgError> {
        let stmt = self.statement(sql).await.map_err(PgError::Store)?;
        self.client.query(&stmt, params).await.map_err(PgError::Pg)
    }

    /// Runs a cached statement; returns the affected row count.
    pub(crate) async fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, PgError> {
        let stmt = self.statement(sql).await.map_err(PgError::Store)?;
        self.client
            .execute(&stmt, params)
            .await
            .map_err(PgError::Pg)
    }

    pub(crate) async fn begin(&mut self) -> Result<()> {
        self.in_tx = true;
        self.client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| map_pg("starting a transaction", e))
    }

    /// Commits if `result` is `Ok`, rolls back otherwise; returns `result`
    /// or the commit's error.
    pub(crate) async fn finish<T>(&mut self, result: Result<T>) -> Result<T> {
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = self.client.batch_execute(end).await;
        match (result, ended) {
            (Ok(v), Ok(())) => {
                self.in_tx = false;
                Ok(v)
            }
            (Ok(_), Err(e)) => Err(map_pg("committing a transaction", e)),
            (Err(e), Ok(())) => {
                self.in_tx = false;
                Err(e)
            }
            (Err(e), Err(rollback)) => {
                tracing::warn!(error = %rollback, "postgresql rollback failed; dropping the connection");
                Err(e)
            }
        }
    }
}

/// An error from a cached-statement call: either preparing failed (already
/// mapped) or the statement itself failed (the caller maps it, e.g. a unique
/// violation to a conflict).
#[derive(Debug)]
pub(crate) enum PgError {
    Store(StoreError),
    Pg(tokio_postgres::Error),
}

impl PgError {
    pub(crate) fn into_store(self, context: impl Into<String>) -> StoreError {
        match self {
            PgError::Store(e) => e,
            PgError::Pg(e) => map_pg(context, e),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Pool {
    config: Config,
    quoted_schema: String,
    idle: Mutex<Vec<Conn>>,
    permits: Semaphore,
}

pub(crate) struct Pooled<'a> {
    conn: Option<Conn>,
    pool: &'a Pool,
    _permit: SemaphorePermit<'a>,
}

impl Pool {
    pub(crate) fn new(config: Config, quoted_schema: String, max_connections: usize) -> Self {
        Pool {
            config,
            quoted_schema,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(max_connections.max(1)),
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) async fn get(&self) -> Result<Pooled<'_>> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::unavailable("the postgresql pool is closed", None))?;
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match idle {
                Some(conn) if conn.client.is_closed() => continue,
                Some(conn) => {
                    return Ok(Pooled {
                        conn: Some(conn),
                        pool: self,
                        _permit: permit,
                    })
                }
                None => break,
            }
        }
        let client = connect(&self.config, Some(&self.quoted_schema)).await?;
        Ok(Pooled {
            conn: Some(Conn {
                client,
                statements: HashMap::new(),
                in_tx: false,
            }),
            pool: self,
            _permit: permit,
        })
    }
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        // Present from construction until drop.
        #[allow(clippy::expect_used)]
        self.conn
            .as_ref()
            .expect("pooled connection is present until drop")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        // Present from construction until drop.
        #[allow(clippy::expect_used)]
        self.conn
            .as_mut()
            .expect("pooled connection is present until drop")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if !conn.in_tx && !conn.client.is_closed() {
                self.pool
                    .idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(conn);
            }
        }
    }
}
