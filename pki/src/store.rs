//! The identity database (`<data_dir>/identity.db`, SQLite, mode 0600): join
//! tokens (hashed), enrolled agents, revocations.
//!
//! Tables:
//! - `join_tokens(token_hash PK, token_id, environment_id, created_at,
//!   expires_at, used_at, used_by)`: `used_at` is set exactly once, in the same
//!   transaction that registers the agent, so a token cannot enroll two agents.
//! - `agents(agent_id PK, environment_id, enrolled_at, enrolled_from,
//!   cert_serial, cert_not_after, revoked_at)`: `revoked_at` non-null means
//!   revoked, forever.
//!
//! Times are Unix seconds. Several processes may open the database at once
//! (the server and a CLI): WAL mode and a busy timeout make that safe.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::identity::{AgentId, EnvironmentId};
use crate::tokens::TokenError;
use crate::util::{from_unix_seconds, unix_seconds};

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

impl IdentityStore {
    /// Open (creating if needed) the database at `path`, mode 0600.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let err = |source| StoreError::Sqlite {
            path: path.to_owned(),
            source,
        };
        // Create the file ourselves so it is never world-readable, even briefly.
        if !path.exists() {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path);
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
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
        self.conn
            .execute(
                "INSERT INTO join_tokens (token_hash, token_id, environment_id, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    token_hash,
                    token_id,
                    environment_id.as_str(),
                    unix_seconds(created_at),
                    crate::util::unix_seconds_ceil(expires_at)
                ],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Atomically: check the token (known, unexpired, unused), run `register`
    /// (which issues the certificate and returns the agent row), mark the
    /// token used by that agent, insert the agent. If anything fails, nothing
    /// is written and the token stays usable.
    pub fn redeem_token<E>(
        &mut self,
        token_hash: &str,
        now: SystemTime,
        register: impl FnOnce(&RedeemedToken) -> Result<AgentRecord, E>,
    ) -> Result<Result<AgentRecord, RedeemError<E>>, StoreError> {
        let path = self.path.clone();
        let err = move |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let row: Option<(String, String, i64, Option<String>)> = tx
            .query_row(
                "SELECT token_id, environment_id, expires_at, used_by FROM join_tokens WHERE token_hash = ?1",
                params![token_hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(&err)?;
        let Some((token_id, env, expires_at, used_by)) = row else {
            return Ok(Err(RedeemError::Token(TokenError::Unknown)));
        };
        if let Some(used_by) = used_by {
            return Ok(Err(RedeemError::Token(TokenError::AlreadyUsed {
                token_id,
                used_by,
            })));
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
