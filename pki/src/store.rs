//! The identity database (`<data_dir>/identity.db`, SQLite, mode 0600): join
//! tokens (hashed), enrolled agents, revocations.
//!
//! Tables:
//! - `join_tokens(token_hash PK, token_id, environment_id, created_at,
//!   expires_at, used_at, used_by, revoked_at)`: `used_at` is set exactly
//!   once, in the same transaction that registers the agent, so a token cannot
//!   enroll two agents; `revoked_at` non-null means an operator revoked the
//!   unused token (a token is never both used and revoked).
//! - `agents(agent_id PK, environment_id, enrolled_at, enrolled_from,
//!   cert_serial, cert_not_after, revoked_at)`: `revoked_at` non-null means
//!   revoked, forever.
//!
//! Times are Unix seconds. Several processes may open the database at once
//! (the server and a CLI): WAL mode and a busy timeout make that safe.
//!
//! Schema changes: [`SCHEMA`] is the original schema and is never edited;
//! later changes are appended to [`MIGRATIONS`] and applied in order when the
//! database is opened, `PRAGMA user_version` counting those applied. So a
//! database written by an older build opens and is upgraded in place. The
//! upgrade runs in one `BEGIN IMMEDIATE` transaction, so two processes
//! opening the same old database at once apply it exactly once.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::identity::{AgentId, EnvironmentId};
use crate::tokens::{TokenError, TokenRecord, TokenState};
use crate::util::from_unix_seconds;
pub use crate::util::unix_seconds;

/// A database failure (not the caller's fault; may be transient).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed.
    #[error("identity database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// A stored value does not parse (the file was edited or corrupted).
    #[error("identity database {path}: corrupt row: {message}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What.
        message: String,
    },
    /// Revoking or renewing an agent id that was never enrolled.
    #[error("unknown agent {0}")]
    UnknownAgent(String),
    /// The database file could not be created (with mode 0600).
    #[error("identity database {path}: cannot create it: {source}")]
    Create {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database file's mode could not be set to 0600: it holds token
    /// hashes and agent records, so it is not used readable by others.
    #[error("identity database {path}: cannot restrict its mode to 0600: {source}")]
    Permissions {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What [`IdentityStore::revoke_token`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenRevocation {
    /// The token was active or expired and is now revoked.
    Revoked {
        /// Revocation time, Unix seconds.
        revoked_at: i64,
    },
    /// It had been revoked before; nothing changed.
    AlreadyRevoked {
        /// The original revocation time, Unix seconds.
        revoked_at: i64,
    },
    /// It had already enrolled an agent; nothing changed.
    AlreadyUsed {
        /// The agent it enrolled.
        used_by: AgentId,
        /// When, Unix seconds.
        used_at: i64,
    },
    /// No token has that id.
    Unknown,
}

/// An enrolled agent, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentRecord {
    /// Agent id.
    pub agent_id: AgentId,
    /// Environment id.
    pub environment_id: EnvironmentId,
    /// Enrollment time, Unix seconds.
    pub enrolled_at: i64,
    /// Address it enrolled from, if known.
    pub enrolled_from: Option<String>,
    /// Serial (hex) of the latest certificate issued to it.
    pub cert_serial: String,
    /// Expiry of the latest certificate issued to it, Unix seconds.
    pub cert_not_after: i64,
    /// Revocation time, Unix seconds, if revoked.
    pub revoked_at: Option<i64>,
}

/// What a token redemption found.
#[derive(Debug, Clone)]
pub struct RedeemedToken {
    /// Public id of the token.
    pub token_id: String,
    /// Environment the token was created for.
    pub environment_id: EnvironmentId,
}

/// An open identity database.
#[derive(Debug)]
pub struct IdentityStore {
    conn: Connection,
    path: PathBuf,
}

/// The original schema (version 0). Never edit it: append to [`MIGRATIONS`].
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS join_tokens (
    token_hash     TEXT PRIMARY KEY,
    token_id       TEXT NOT NULL UNIQUE,
    environment_id TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    used_at        INTEGER,
    used_by        TEXT
);
CREATE TABLE IF NOT EXISTS agents (
    agent_id       TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL,
    enrolled_at    INTEGER NOT NULL,
    enrolled_from  TEXT,
    cert_serial    TEXT NOT NULL,
    cert_not_after INTEGER NOT NULL,
    revoked_at     INTEGER
);
";

/// Schema changes after [`SCHEMA`], in order; entry `i` takes the database
/// from `user_version` `i` to `i + 1`. Only append.
const MIGRATIONS: &[&str] = &[
    // 1: join tokens can be revoked before use.
    "ALTER TABLE join_tokens ADD COLUMN revoked_at INTEGER;",
];

/// Bring a database at any earlier `user_version` up to date, atomically.
/// A database from a newer build (higher version) is left as it is.
/// How long opening the database waits for other processes' locks.
const OPEN_BUSY_BUDGET: Duration = Duration::from_secs(5);

/// WAL mode, the original schema, the migrations (each idempotent).
fn prepare(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch(SCHEMA)?;
    migrate(conn)
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let applied = usize::try_from(version).unwrap_or(0);
    if applied >= MIGRATIONS.len() {
        return Ok(());
    }
    for sql in &MIGRATIONS[applied..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
    tx.commit()
}

/// `token_id, environment_id, expires_at, used_by, revoked_at` of a token.
type RedeemRow = (String, String, i64, Option<String>, Option<i64>);
/// `expires_at, used_at, used_by, revoked_at` of a token.
type RevokeRow = (i64, Option<i64>, Option<String>, Option<i64>);

/// The state of a token row (`used_at`, `used_by`, `revoked_at`) at `now`.
pub(crate) fn token_state(
    expires_at: i64,
    used_at: Option<i64>,
    used_by: Option<String>,
    revoked_at: Option<i64>,
    now: i64,
) -> Result<TokenState, String> {
    match (used_at, used_by) {
        (Some(used_at), Some(used_by)) => {
            let used_by = AgentId::parse(&used_by).map_err(|e| e.to_string())?;
            return Ok(TokenState::Used { used_by, used_at });
        }
        (None, None) => {}
        _ => return Err("join token has only one of used_at and used_by".to_owned()),
    }
    Ok(match revoked_at {
        Some(revoked_at) => TokenState::Revoked { revoked_at },
        None if now >= expires_at => TokenState::Expired,
        None => TokenState::Active,
    })
}

/// Set `path` to mode 0600 (a database created before, or by SQLite itself).
fn restrict_mode(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        StoreError::Permissions {
            path: path.to_owned(),
            source,
        }
    })
}

impl IdentityStore {
    /// Open (creating if needed) the database at `path`, mode 0600.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| StoreError::Sqlite {
            path: path.to_owned(),
            source,
        };
        // Create the file ourselves so it is never world-readable, even briefly.
        if !path.exists() {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => {}
                // another process (server or CLI) created it first
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(StoreError::Create {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        }
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(OPEN_BUSY_BUDGET).map_err(err)?;
        // Processes opening one database at once (a server and a CLI; the
        // first open of an old database switches it to WAL) can be told
        // SQLITE_BUSY where SQLite does not wait on its own (taking the
        // exclusive lock for the switch, upgrading a read lock): every step
        // here is idempotent, so try again within the same budget.
        let deadline = std::time::Instant::now() + OPEN_BUSY_BUDGET;
        let mut pause = Duration::from_millis(5);
        loop {
            match prepare(&mut conn) {
                Ok(()) => break,
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(e) => return Err(err(e)),
            }
        }
        restrict_mode(path)?;
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Record a new token by its hash.
    pub fn insert_token(
        &self,
        token_hash: &str,
        token_id: &str,
        environment_id: &EnvironmentId,
        created_at: SystemTime,
        expires_at: SystemTime,
    ) -> Result<(), StoreError> {
        self.write_token(
            "",
            [token_hash, token_id, environment_id.as_str()],
            unix_seconds(created_at),
            crate::util::unix_seconds_ceil(expires_at),
        )
    }

    /// Take in a token made at another replica (read from the shared
    /// catalog) so that it is redeemed here; a token known here is kept as
    /// it is.
    pub fn import_token(
        &self,
        token_hash: &str,
        token_id: &str,
        environment_id: &EnvironmentId,
        created_at: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.write_token(
            " ON CONFLICT DO NOTHING",
            [token_hash, token_id, environment_id.as_str()],
            created_at,
            expires_at,
        )
    }

    /// Insert an unused token row (`[hash, id, environment]`), with `conflict`
    /// appended to the statement.
    fn write_token(
        &self,
        conflict: &str,
        [hash, id, environment]: [&str; 3],
        created_at: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                &format!(
                    "INSERT INTO join_tokens (token_hash, token_id, environment_id, created_at, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5){conflict}"
                ),
                params![hash, id, environment, created_at, expires_at],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Atomically: check the token (known, unused, unrevoked, unexpired), run `register`
    /// (which issues the certificate and returns the agent row), mark the
    /// token used by that agent, insert the agent. If anything fails, nothing
    /// is written and the token stays usable.
    pub fn redeem_token<E>(
        &mut self,
        token_hash: &str,
        now: SystemTime,
        register: impl FnOnce(&RedeemedToken) -> Result<AgentRecord, E>,
    ) -> Result<Result<AgentRecord, RedeemError<E>>, StoreError> {
        let (tx, err) = write_transaction(&mut self.conn, &self.path)?;
        let row: Option<RedeemRow> = tx
            .query_row(
                "SELECT token_id, environment_id, expires_at, used_by, revoked_at FROM join_tokens WHERE token_hash = ?1",
                params![token_hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(&err)?;
        let Some((token_id, env, expires_at, used_by, revoked_at)) = row else {
            return Ok(Err(RedeemError::Token(TokenError::Unknown)));
        };
        if let Some(used_by) = used_by {
            return Ok(Err(RedeemError::Token(TokenError::AlreadyUsed {
                token_id,
                used_by,
            })));
        }
        if revoked_at.is_some() {
            return Ok(Err(RedeemError::Token(TokenError::Revoked { token_id })));
        }
        if unix_seconds(now) >= expires_at {
            return Ok(Err(RedeemError::Token(TokenError::Expired { token_id })));
        }
        let environment_id = EnvironmentId::parse(&env).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let redeemed = RedeemedToken {
            token_id,
            environment_id,
        };
        let agent = match register(&redeemed) {
            Ok(a) => a,
            Err(e) => return Ok(Err(RedeemError::Register(e))),
        };
        tx.execute(
            "UPDATE join_tokens SET used_at = ?1, used_by = ?2 WHERE token_hash = ?3 AND used_at IS NULL",
            params![unix_seconds(now), agent.agent_id.as_str(), token_hash],
        )
        .map_err(&err)?;
        tx.execute(
            "INSERT INTO agents (agent_id, environment_id, enrolled_at, enrolled_from, cert_serial, cert_not_after)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                agent.agent_id.as_str(),
                agent.environment_id.as_str(),
                agent.enrolled_at,
                agent.enrolled_from,
                agent.cert_serial,
                agent.cert_not_after
            ],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(Ok(agent))
    }

    /// Every join token with its state at `now`, newest first. Never returns
    /// the token hash.
    pub fn tokens(&self, now: SystemTime) -> Result<Vec<TokenRecord>, StoreError> {
        Ok(self
            .tokens_with_hashes(now)?
            .into_iter()
            .map(|(_, t)| t)
            .collect())
    }

    /// Every join token with its hash and state at `now`, newest first: what
    /// a replica shares with the others (the hash, never the token).
    pub fn tokens_with_hashes(
        &self,
        now: SystemTime,
    ) -> Result<Vec<(String, TokenRecord)>, StoreError> {
        let now = unix_seconds(now);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT token_id, environment_id, created_at, expires_at, used_at, used_by, revoked_at, token_hash
                 FROM join_tokens ORDER BY created_at DESC, rowid DESC",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                let token_id: String = r.get(0)?;
                let env: String = r.get(1)?;
                let created_at: i64 = r.get(2)?;
                let expires_at: i64 = r.get(3)?;
                let used_at: Option<i64> = r.get(4)?;
                let used_by: Option<String> = r.get(5)?;
                let revoked_at: Option<i64> = r.get(6)?;
                let hash: String = r.get(7)?;
                Ok((|| {
                    Ok(TokenRecord {
                        environment_id: EnvironmentId::parse(&env).map_err(|e| e.to_string())?,
                        created_at,
                        expires_at,
                        state: token_state(expires_at, used_at, used_by, revoked_at, now)?,
                        token_id: token_id.clone(),
                    })
                })()
                .map(|t| (hash, t))
                .map_err(|message: String| format!("join token {token_id}: {message}")))
            })
            .map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            match row.map_err(self.err())? {
                Ok(t) => out.push(t),
                Err(message) => {
                    return Err(StoreError::Corrupt {
                        path: self.path.clone(),
                        message,
                    })
                }
            }
        }
        Ok(out)
    }

    /// Revoke the unused token `token_id` at `now`, atomically with respect
    /// to a concurrent redemption (both take the write lock first): a token
    /// is either used or revoked, never both.
    pub fn revoke_token(
        &mut self,
        token_id: &str,
        now: SystemTime,
    ) -> Result<TokenRevocation, StoreError> {
        let (tx, err) = write_transaction(&mut self.conn, &self.path)?;
        let row: Option<RevokeRow> = tx
            .query_row(
                "SELECT expires_at, used_at, used_by, revoked_at FROM join_tokens WHERE token_id = ?1",
                params![token_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(&err)?;
        let Some((expires_at, used_at, used_by, revoked_at)) = row else {
            return Ok(TokenRevocation::Unknown);
        };
        let now = unix_seconds(now);
        let state =
            token_state(expires_at, used_at, used_by, revoked_at, now).map_err(|message| {
                StoreError::Corrupt {
                    path: self.path.clone(),
                    message: format!("join token {token_id}: {message}"),
                }
            })?;
        match state {
            TokenState::Used { used_by, used_at } => {
                Ok(TokenRevocation::AlreadyUsed { used_by, used_at })
            }
            TokenState::Revoked { revoked_at } => {
                Ok(TokenRevocation::AlreadyRevoked { revoked_at })
            }
            TokenState::Active | TokenState::Expired => {
                tx.execute(
                    "UPDATE join_tokens SET revoked_at = ?1
                     WHERE token_id = ?2 AND used_at IS NULL AND revoked_at IS NULL",
                    params![now, token_id],
                )
                .map_err(&err)?;
                tx.commit().map_err(&err)?;
                Ok(TokenRevocation::Revoked { revoked_at: now })
            }
        }
    }

    fn row_to_agent(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<AgentRecord, String>> {
        let agent_id: String = r.get(0)?;
        let env: String = r.get(1)?;
        let rec = (|| {
            Ok(AgentRecord {
                agent_id: AgentId::parse(&agent_id).map_err(|e| e.to_string())?,
                environment_id: EnvironmentId::parse(&env).map_err(|e| e.to_string())?,
                enrolled_at: r.get(2).map_err(|e| e.to_string())?,
                enrolled_from: r.get(3).map_err(|e| e.to_string())?,
                cert_serial: r.get(4).map_err(|e| e.to_string())?,
                cert_not_after: r.get(5).map_err(|e| e.to_string())?,
                revoked_at: r.get(6).map_err(|e| e.to_string())?,
            })
        })();
        Ok(rec)
    }

    /// One agent.
    pub fn agent(&self, agent_id: &AgentId) -> Result<Option<AgentRecord>, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT agent_id, environment_id, enrolled_at, enrolled_from, cert_serial, cert_not_after, revoked_at
                 FROM agents WHERE agent_id = ?1",
                params![agent_id.as_str()],
                |r| self.row_to_agent(r),
            )
            .optional()
            .map_err(self.err())?;
        match row {
            None => Ok(None),
            Some(Ok(a)) => Ok(Some(a)),
            Some(Err(message)) => Err(StoreError::Corrupt {
                path: self.path.clone(),
                message,
            }),
        }
    }

    /// All enrolled agents, oldest first.
    pub fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT agent_id, environment_id, enrolled_at, enrolled_from, cert_serial, cert_not_after, revoked_at
                 FROM agents ORDER BY enrolled_at, agent_id",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| self.row_to_agent(r))
            .map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            match row.map_err(self.err())? {
                Ok(a) => out.push(a),
                Err(message) => {
                    return Err(StoreError::Corrupt {
                        path: self.path.clone(),
                        message,
                    })
                }
            }
        }
        Ok(out)
    }

    /// Record a renewed certificate.
    pub fn record_certificate(
        &self,
        agent_id: &AgentId,
        serial: &str,
        not_after: SystemTime,
    ) -> Result<(), StoreError> {
        let n = self
            .conn
            .execute(
                "UPDATE agents SET cert_serial = ?1, cert_not_after = ?2 WHERE agent_id = ?3",
                params![serial, unix_seconds(not_after), agent_id.as_str()],
            )
            .map_err(self.err())?;
        if n == 0 {
            return Err(StoreError::UnknownAgent(agent_id.to_string()));
        }
        Ok(())
    }

    /// Record an agent enrolled at another replica (from the shared
    /// catalog): inserted when unknown here, else its certificate serial
    /// and expiry follow and a revocation is kept (never undone).
    pub fn import_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO agents (agent_id, environment_id, enrolled_at, enrolled_from, cert_serial, cert_not_after, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (agent_id) DO UPDATE SET cert_serial = excluded.cert_serial, cert_not_after = excluded.cert_not_after,
                   revoked_at = COALESCE(agents.revoked_at, excluded.revoked_at)",
                params![
                    agent.agent_id.as_str(),
                    agent.environment_id.as_str(),
                    agent.enrolled_at,
                    agent.enrolled_from,
                    agent.cert_serial,
                    agent.cert_not_after,
                    agent.revoked_at
                ],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Mark an agent revoked. Returns false if it already was.
    pub fn revoke(&self, agent_id: &AgentId, now: SystemTime) -> Result<bool, StoreError> {
        let existing = self.agent(agent_id)?;
        match existing {
            None => Err(StoreError::UnknownAgent(agent_id.to_string())),
            Some(a) if a.revoked_at.is_some() => Ok(false),
            Some(_) => {
                self.conn
                    .execute(
                        "UPDATE agents SET revoked_at = ?1 WHERE agent_id = ?2 AND revoked_at IS NULL",
                        params![unix_seconds(now), agent_id.as_str()],
                    )
                    .map_err(self.err())?;
                Ok(true)
            }
        }
    }

    /// Ids of every revoked agent.
    pub fn revoked_agents(&self) -> Result<Vec<AgentId>, StoreError> {
        Ok(self
            .agents()?
            .into_iter()
            .filter(|a| a.revoked_at.is_some())
            .map(|a| a.agent_id)
            .collect())
    }
}

/// Why a redemption did not register an agent.
#[derive(Debug)]
pub enum RedeemError<E> {
    /// The token is not usable.
    Token(TokenError),
    /// `register` failed.
    Register(E),
}

/// Convert a stored time.
pub fn time_of(unix: i64) -> SystemTime {
    from_unix_seconds(unix)
}

/// An IMMEDIATE transaction on `conn` (the write lock taken at once, so two
/// processes serialize here) and the error mapper naming the file `path`.
fn write_transaction<'c>(
    conn: &'c mut Connection,
    path: &Path,
) -> Result<
    (
        rusqlite::Transaction<'c>,
        impl Fn(rusqlite::Error) -> StoreError + 'static,
    ),
    StoreError,
> {
    let path = path.to_owned();
    let err = move |source| StoreError::Sqlite {
        path: path.clone(),
        source,
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(&err)?;
    Ok((tx, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> EnvironmentId {
        EnvironmentId::parse("env_store").unwrap()
    }

    fn user_version(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn fresh_database_has_the_latest_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.db");
        let mut store = IdentityStore::open(&path).unwrap();
        assert_eq!(user_version(&path), MIGRATIONS.len() as i64);
        let now = SystemTime::now();
        store
            .insert_token("h1", "tok_1", &env(), now, now + Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            store.revoke_token("tok_1", now).unwrap(),
            TokenRevocation::Revoked {
                revoked_at: unix_seconds(now)
            }
        );
        // Reopening applies nothing twice.
        drop(store);
        IdentityStore::open(&path).unwrap();
        assert_eq!(user_version(&path), MIGRATIONS.len() as i64);
    }

    /// A database written by a build from before token revocation (the
    /// original schema, `user_version` 0, no `revoked_at` on `join_tokens`)
    /// opens, keeps its rows and gains revocation.
    #[test]
    fn database_with_the_original_schema_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.db");
        let now = unix_seconds(SystemTime::now());
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(SCHEMA).unwrap();
            old.execute(
                "INSERT INTO join_tokens (token_hash, token_id, environment_id, created_at, expires_at)
                 VALUES ('h_active', 'tok_active', 'env_store', ?1, ?2)",
                params![now - 10, now + 600],
            )
            .unwrap();
            old.execute(
                "INSERT INTO join_tokens (token_hash, token_id, environment_id, created_at, expires_at, used_at, used_by)
                 VALUES ('h_used', 'tok_used', 'env_store', ?1, ?2, ?3, 'agt_01hzz0000000000000000000')",
                params![now - 20, now + 600, now - 5],
            )
            .unwrap();
            let cols: Vec<String> = old
                .prepare("SELECT name FROM pragma_table_info('join_tokens')")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert!(!cols.iter().any(|c| c == "revoked_at"), "{cols:?}");
        }
        assert_eq!(user_version(&path), 0);

        let mut store = IdentityStore::open(&path).unwrap();
        assert_eq!(user_version(&path), MIGRATIONS.len() as i64);
        let tokens = store.tokens(SystemTime::now()).unwrap();
        let ids: Vec<&str> = tokens.iter().map(|t| t.token_id.as_str()).collect();
        assert_eq!(ids, ["tok_active", "tok_used"], "newest first");
        assert_eq!(tokens[0].state, TokenState::Active);
        assert!(
            matches!(&tokens[1].state, TokenState::Used { used_by, used_at }
            if used_by.as_str() == "agt_01hzz0000000000000000000" && *used_at == now - 5)
        );
        assert!(matches!(
            store.revoke_token("tok_active", SystemTime::now()).unwrap(),
            TokenRevocation::Revoked { .. }
        ));
        // The revoked token no longer redeems.
        let r = store
            .redeem_token(
                "h_active",
                SystemTime::now(),
                |_| -> Result<AgentRecord, ()> {
                    panic!("register must not run for a revoked token")
                },
            )
            .unwrap();
        assert!(
            matches!(r, Err(RedeemError::Token(TokenError::Revoked { ref token_id })) if token_id == "tok_active"),
            "{r:?}"
        );
    }

    /// Two processes opening the same old database at once: the migration is
    /// applied once and both opens succeed.
    #[test]
    fn concurrent_opens_of_an_old_database_migrate_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(SCHEMA)
            .unwrap();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || IdentityStore::open(&p).map(drop))
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
        assert_eq!(user_version(&path), MIGRATIONS.len() as i64);
    }

    #[test]
    fn the_database_is_0600_and_failures_to_make_it_so_name_the_path() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let fresh = dir.path().join("fresh.db");
        IdentityStore::open(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o600);
        // a file made readable by others is restricted again on open
        let loose = dir.path().join("loose.db");
        std::fs::write(&loose, b"").unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        IdentityStore::open(&loose).unwrap();
        assert_eq!(mode(&loose), 0o600);
        // the directory is missing: the file cannot be created
        let nowhere = dir.path().join("missing").join("identity.db");
        let e = IdentityStore::open(&nowhere).unwrap_err();
        assert!(matches!(e, StoreError::Create { .. }), "{e:?}");
        assert!(
            e.to_string().contains(&nowhere.display().to_string()),
            "{e}"
        );
        // chmod fails (here: the file is gone): an error, not ignored
        let e = restrict_mode(&nowhere).unwrap_err();
        assert!(matches!(e, StoreError::Permissions { .. }), "{e:?}");
        assert!(
            e.to_string().contains(&format!(
                "{}: cannot restrict its mode to 0600",
                nowhere.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn token_states_at_a_given_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = IdentityStore::open(&dir.path().join("identity.db")).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        store
            .insert_token("h", "tok_x", &env(), t0, t0 + Duration::from_secs(60))
            .unwrap();
        let state =
            |store: &IdentityStore, at: SystemTime| store.tokens(at).unwrap()[0].state.clone();
        assert_eq!(state(&store, t0), TokenState::Active);
        assert_eq!(
            state(&store, t0 + Duration::from_secs(60)),
            TokenState::Expired
        );
        // An expired token can still be revoked; it then shows as revoked.
        let later = t0 + Duration::from_secs(120);
        assert_eq!(
            store.revoke_token("tok_x", later).unwrap(),
            TokenRevocation::Revoked {
                revoked_at: unix_seconds(later)
            }
        );
        assert_eq!(
            state(&store, t0 + Duration::from_secs(500)),
            TokenState::Revoked {
                revoked_at: unix_seconds(later)
            }
        );
        assert_eq!(
            store
                .revoke_token("tok_x", t0 + Duration::from_secs(900))
                .unwrap(),
            TokenRevocation::AlreadyRevoked {
                revoked_at: unix_seconds(later)
            }
        );
        assert_eq!(
            store.revoke_token("tok_nope", later).unwrap(),
            TokenRevocation::Unknown
        );
    }
}
