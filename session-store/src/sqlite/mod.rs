//! The embedded store: one SQLite file, WAL, `synchronous=FULL`.
//!
//! Layout: `sessions` holds one row per session with its status, body, last
//! seq and lease columns; `events` is keyed by `(session_id, seq)` (clustered,
//! so reading a session back is one range scan) with a unique index on the
//! event id. All writes go through the writer thread ([`writer`]) and are
//! acknowledged only after their group's `COMMIT` returned, which with
//! `synchronous=FULL` in WAL mode means the WAL was fsynced. Reads run on a
//! small pool of separate connections on tokio's blocking threads and never
//! wait for the writer (WAL readers see the last committed state).

mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use tokio::sync::mpsc;

use crate::clock::{Clock, SystemClock};
use crate::error::{Result, StoreError};
use crate::lease::{check_fence, LeaseError, LeaseRow};
use crate::status::{check_transition, stored_status};
use crate::tail::{tail, EventStream, Hub};
use crate::types::{
    check_session_id, decode_body, from_micros, merge_patch, micros_bounds, to_micros, AppendBatch,
    BodyUpdate, EventPage, EventQuery, EventSelector, Fence, Lease, LeaseState, NewSession, Order,
    PreparedEvent, SessionPage, SessionQuery, SessionRecord, SessionUpdate, StoredEvent,
    WakeCandidate,
};
use crate::{check_limit, ttl_micros, SessionStatus, SessionStore};

use writer::{Job, WriteJob};

/// File name of the store inside a data directory.
pub const DB_FILE_NAME: &str = "sessions.sqlite3";

/// Tuning of the SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Time source for `created_at`, `processed_at` and leases.
    pub clock: Arc<dyn Clock>,
    /// Most write requests committed together in one transaction.
    pub max_group_commit: usize,
    /// How long a connection waits for a lock held by another process.
    pub busy_timeout: Duration,
    /// Idle read connections kept open.
    pub max_idle_readers: usize,
    /// Write requests that may wait for the writer before callers wait to send.
    pub write_queue_depth: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            clock: Arc::new(SystemClock),
            max_group_commit: 1024,
            busy_timeout: Duration::from_secs(5),
            max_idle_readers: 4,
            write_queue_depth: 8192,
        }
    }
}

/// The SQLite implementation of [`SessionStore`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    writer: mpsc::Sender<Box<dyn WriteJob>>,
    readers: Mutex<Vec<Connection>>,
    hub: Arc<Hub>,
    options: SqliteOptions,
}

/// Maps a rusqlite error: busy/locked/io/full/read-only are transient, corruption is
/// [`StoreError::Corrupt`], the rest is a backend error.
pub(crate) fn map_err(context: impl Into<String>, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    let context = context.into();
    match e.sqlite_error_code() {
        Some(
            C::DatabaseBusy
            | C::DatabaseLocked
            | C::SystemIoFailure
            | C::DiskFull
            | C::CannotOpen
            | C::ReadOnly
            | C::OutOfMemory,
        ) => StoreError::unavailable(format!("{context}: {e}"), Some(Box::new(e))),
        Some(C::DatabaseCorrupt | C::NotADatabase) => {
            StoreError::corrupt(format!("{context}: {e}"))
        }
        _ => StoreError::backend(context, e),
    }
}

fn open_connection(path: &Path, options: &SqliteOptions) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| map_err(format!("opening {}", path.display()), e))?;
    conn.busy_timeout(options.busy_timeout)
        .map_err(|e| map_err("setting busy_timeout", e))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(|e| map_err(format!("enabling WAL on {}", path.display()), e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::unavailable(
            format!(
                "{} refused WAL mode (journal_mode is {mode})",
                path.display()
            ),
            None,
        ));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| map_err("setting synchronous=FULL", e))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(|e| map_err("enabling foreign keys", e))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir/sessions.sqlite3`.
    pub async fn open_in_dir(data_dir: &Path, options: SqliteOptions) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::unavailable(
                format!("creating data dir {}: {e}", data_dir.display()),
                Some(Box::new(e)),
            )
        })?;
        Self::open(&data_dir.join(DB_FILE_NAME), options).await
    }

    /// Opens (creating if needed) the store file at `path`, applies
    /// migrations and starts the writer thread.
    pub async fn open(path: &Path, options: SqliteOptions) -> Result<Self> {
        let path = path.to_path_buf();
        let opened = {
            let file = path.clone();
            let options = options.clone();
            tokio::task::spawn_blocking(move || -> Result<Connection> {
                let conn = open_connection(&file, &options)?;
                schema::migrate(&conn, to_micros(options.clock.now()))?;
                Ok(conn)
            })
            .await
            .map_err(|e| {
                StoreError::unavailable(format!("opening {}: {e}", path.display()), None)
            })??
        };
        let (tx, rx) = mpsc::channel(options.write_queue_depth.max(1));
        let clock = options.clock.clone();
        let max_group = options.max_group_commit.max(1);
        std::thread::Builder::new()
            .name("session-store-writer".into())
            .spawn(move || writer::run(opened, rx, clock, max_group))
            .map_err(|e| {
                StoreError::unavailable(
                    format!("starting the writer thread: {e}"),
                    Some(Box::new(e)),
                )
            })?;
        tracing::info!(path = %path.display(), "session store opened (sqlite)");
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                writer: tx,
                readers: Mutex::new(Vec::new()),
                hub: Arc::new(Hub::default()),
                options,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `work` on the writer thread inside the group's transaction.
    async fn write<T, F>(&self, notify: Option<&str>, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, i64) -> Result<T> + Send + 'static,
    {
        let notify = notify.map(|s| (self.inner.hub.clone(), s.to_owned()));
        let (job, rx) = Job::boxed(Box::new(work), notify);
        self.inner
            .writer
            .send(job)
            .await
            .map_err(|_| StoreError::unavailable("the session store writer has stopped", None))?;
        rx.await.map_err(|_| {
            StoreError::unavailable("the session store writer stopped before answering", None)
        })?
    }

    /// Runs `work` on a pooled read connection on a blocking thread.
    async fn read_with<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner
                .readers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => {
                    let c = open_connection(&inner.path, &inner.options)?;
                    c.pragma_update(None, "query_only", "ON")
                        .map_err(|e| map_err("setting query_only", e))?;
                    c
                }
            };
            let result = work(&mut conn);
            if !conn.is_autocommit() {
                // A failed read left its transaction open: do not pool it.
                return result;
            }
            let mut pool = inner
                .readers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if pool.len() < inner.options.max_idle_readers {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::unavailable(format!("a read task failed: {e}"), None))?
    }
}

const SESSION_COLS: &str =
    "id, position, status, body, version, last_seq, lease_epoch, lease_holder, \
                            lease_expires_at_us, created_at_us, updated_at_us";
const EVENT_COLS: &str = "session_id, seq, id, type, processed_at_us, created_at_us, body";

fn to_u64(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::corrupt(format!("{what} is negative ({v})")))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn session_from_row(row: &Row<'_>) -> Result<SessionRecord> {
    let get = |e: rusqlite::Error| map_err("decoding a session row", e);
    let id: String = row.get(0).map_err(get)?;
    let status: String = row.get(2).map_err(get)?;
    let body: String = row.get(3).map_err(get)?;
    let expires: Option<i64> = row.get(8).map_err(get)?;
    Ok(SessionRecord {
        position: row.get(1).map_err(get)?,
        status: stored_status(&id, &status)?,
        body: serde_json::from_str(&body)
            .map_err(|e| StoreError::corrupt(format!("session {id} body is not json: {e}")))?,
        version: to_u64(row.get(4).map_err(get)?, "version")?,
        last_seq: to_u64(row.get(5).map_err(get)?, "last_seq")?,
        lease: LeaseState {
            epoch: to_u64(row.get(6).map_err(get)?, "lease_epoch")?,
            holder: row.get(7).map_err(get)?,
            expires_at: expires.map(from_micros).transpose()?,
        },
        created_at: from_micros(row.get(9).map_err(get)?)?,
        updated_at: from_micros(row.get(10).map_err(get)?)?,
        id,
    })
}

fn event_from_row(row: &Row<'_>) -> Result<StoredEvent> {
    let get = |e: rusqlite::Error| map_err("decoding an event row", e);
    let session_id: String = row.get(0).map_err(get)?;
    let seq = to_u64(row.get(1).map_err(get)?, "seq")?;
    let processed: Option<i64> = row.get(4).map_err(get)?;
    let body: String = row.get(6).map_err(get)?;
    Ok(StoredEvent {
        seq,
        id: row.get(2).map_err(get)?,
        event_type: row.get(3).map_err(get)?,
        processed_at: processed.map(from_micros).transpose()?,
        created_at: from_micros(row.get(5).map_err(get)?)?,
        body: decode_body(&session_id, seq, &body)?,
        session_id,
    })
}

fn load_session(conn: &Connection, session_id: &str) -> Result<Option<SessionRecord>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {SESSION_COLS} FROM sessions WHERE id = ?1"
        ))
        .map_err(|e| map_err("preparing a session read", e))?;
    let mut rows = stmt
        .query(params![session_id])
        .map_err(|e| map_err(format!("reading session {session_id}"), e))?;
    match rows
        .next()
        .map_err(|e| map_err(format!("reading session {session_id}"), e))?
    {
        Some(row) => Ok(Some(session_from_row(row)?)),
        None => Ok(None),
    }
}

fn require_session(conn: &Connection, session_id: &str) -> Result<SessionRecord> {
    load_session(conn, session_id)?.ok_or_else(|| StoreError::not_found(session_id))
}

fn lease_row(record: &SessionRecord) -> LeaseRow {
    LeaseRow {
        epoch: record.lease.epoch,
        holder: record.lease.holder.clone(),
        expires_at_us: record.lease.expires_at.map(to_micros),
    }
}

/// Inserts prepared events after `last_seq`; returns them as stored.
fn insert_events(
    conn: &Connection,
    session_id: &str,
    last_seq: u64,
    events: Vec<PreparedEvent>,
    now_us: i64,
) -> Result<Vec<StoredEvent>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "INSERT INTO events ({EVENT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
        ))
        .map_err(|e| map_err("preparing an event insert", e))?;
    let now = from_micros(now_us)?;
    let mut stored = Vec::with_capacity(events.len());
    for (i, event) in events.into_iter().enumerate() {
        let seq = last_seq + 1 + i as u64;
        let processed_us = (!event.queued).then_some(now_us);
        stmt.execute(params![
            session_id,
            to_i64(seq),
            event.id,
            event.event_type,
            processed_us,
            now_us,
            event.body_text
        ])
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::ConstraintViolation) => StoreError::conflict(
                session_id,
                format!("event id {} is already taken", event.id),
            ),
            _ => map_err(
                format!("inserting event seq {seq} of session {session_id}"),
                e,
            ),
        })?;
        stored.push(StoredEvent {
            session_id: session_id.to_owned(),
            seq,
            id: event.id,
            event_type: event.event_type,
            processed_at: (!event.queued).then_some(now),
            created_at: now,
            body: event.body,
        });
    }
    Ok(stored)
}

fn append_tx(
    conn: &Connection,
    session_id: &str,
    batch: AppendBatch,
    now_us: i64,
) -> Result<Vec<StoredEvent>> {
    let prepared = PreparedEvent::prepare_all(session_id, batch.events)?;
    let mut stmt = conn
        .prepare_cached("SELECT last_seq, lease_epoch, status FROM sessions WHERE id = ?1")
        .map_err(|e| map_err("preparing a session lookup", e))?;
    let (last_seq, epoch, status): (i64, i64, String) = stmt
        .query_row(params![session_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()
        .map_err(|e| map_err(format!("reading session {session_id}"), e))?
        .ok_or_else(|| StoreError::not_found(session_id))?;
    check_fence(session_id, batch.fence, to_u64(epoch, "lease_epoch")?)?;
    if let Some(next) = batch.set_status {
        check_transition(session_id, stored_status(session_id, &status)?, next)?;
    }
    let last_seq = to_u64(last_seq, "last_seq")?;
    let count = prepared.len() as u64;
    let stored = insert_events(conn, session_id, last_seq, prepared, now_us)?;
    match batch.set_status {
        Some(next) => {
            conn.prepare_cached(
                "UPDATE sessions SET last_seq = ?2, status = ?3, version = version + 1, updated_at_us = ?4 \
                 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![session_id, to_i64(last_seq + count), next.as_str(), now_us]))
            .map_err(|e| map_err(format!("updating session {session_id}"), e))?;
        }
        None => {
            conn.prepare_cached("UPDATE sessions SET last_seq = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![session_id, to_i64(last_seq + count)]))
                .map_err(|e| map_err(format!("updating session {session_id}"), e))?;
        }
    }
    Ok(stored)
}

fn select_events(
    conn: &Connection,
    session_id: &str,
    selector: &EventSelector,
) -> Result<Vec<StoredEvent>> {
    let mut found = Vec::new();
    match selector {
        EventSelector::Seqs(seqs) => {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLS} FROM events WHERE session_id = ?1 AND seq = ?2"
                ))
                .map_err(|e| map_err("preparing an event lookup", e))?;
            for seq in seqs {
                let mut rows = stmt
                    .query(params![session_id, to_i64(*seq)])
                    .map_err(|e| map_err(format!("reading session {session_id} seq {seq}"), e))?;
                match rows.next().map_err(|e| map_err("reading an event", e))? {
                    Some(row) => found.push(event_from_row(row)?),
                    None => {
                        return Err(StoreError::EventNotFound {
                            session_id: session_id.to_owned(),
                            event: format!("seq {seq}"),
                        })
                    }
                }
            }
        }
        EventSelector::Ids(ids) => {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLS} FROM events WHERE session_id = ?1 AND id = ?2"
                ))
                .map_err(|e| map_err("preparing an event lookup", e))?;
            for id in ids {
                let mut rows = stmt
                    .query(params![session_id, id])
                    .map_err(|e| map_err(format!("reading session {session_id} event {id}"), e))?;
                match rows.next().map_err(|e| map_err("reading an event", e))? {
                    Some(row) => found.push(event_from_row(row)?),
                    None => {
                        return Err(StoreError::EventNotFound {
                            session_id: session_id.to_owned(),
                            event: id.clone(),
                        })
                    }
                }
            }
        }
    }
    found.sort_by_key(|e| e.seq);
    found.dedup_by_key(|e| e.seq);
    Ok(found)
}

fn set_lease(conn: &Connection, session_id: &str, row: &LeaseRow) -> Result<()> {
    conn.prepare_cached(
        "UPDATE sessions SET lease_epoch = ?2, lease_holder = ?3, lease_expires_at_us = ?4 WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![session_id, to_i64(row.epoch), row.holder, row.expires_at_us]))
    .map_err(|e| map_err(format!("updating the lease of session {session_id}"), e))?;
    Ok(())
}

fn lease_error(session_id: &str, presented_epoch: u64, e: LeaseError) -> StoreError {
    match e {
        LeaseError::Held {
            holder,
            epoch,
            expires_at_us,
        } => StoreError::LeaseHeld {
            session_id: session_id.to_owned(),
            holder,
            epoch,
            expires_at: from_micros(expires_at_us).unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        },
        LeaseError::Fenced { current_epoch } => StoreError::Fenced {
            session_id: session_id.to_owned(),
            presented_epoch,
            current_epoch,
        },
    }
}

/// Runs `f` in a deferred read transaction (one snapshot for all its queries).
fn in_read_tx<T>(conn: &mut Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    let tx = conn
        .transaction()
        .map_err(|e| map_err("starting a read transaction", e))?;
    let out = f(&tx)?;
    tx.finish()
        .map_err(|e| map_err("ending a read transaction", e))?;
    Ok(out)
}

#[async_trait::async_trait]
impl SessionStore for SqliteStore {
    async fn create_session(&self, new: NewSession) -> Result<(SessionRecord, Vec<StoredEvent>)> {
        check_session_id(&new.id)?;
        let id = new.id.clone();
        self.write(Some(&id), move |conn, now_us| {
            let body = serde_json::to_string(&new.body)
                .map_err(|e| StoreError::invalid(&new.id, format!("body does not serialize: {e}")))?;
            let prepared = if new.initial_events.is_empty() {
                Vec::new()
            } else {
                PreparedEvent::prepare_all(&new.id, new.initial_events)?
            };
            let count = prepared.len() as u64;
            conn.prepare_cached(
                "INSERT INTO sessions (id, status, body, version, last_seq, created_at_us, updated_at_us) \
                 VALUES (?1, ?2, ?3, 1, ?4, ?5, ?5)",
            )
            .and_then(|mut s| s.execute(params![new.id, new.status.as_str(), body, to_i64(count), now_us]))
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::ConstraintViolation) => {
                    StoreError::conflict(&new.id, "a session with this id already exists")
                }
                _ => map_err(format!("creating session {}", new.id), e),
            })?;
            let events = insert_events(conn, &new.id, 0, prepared, now_us)?;
            Ok((require_session(conn, &new.id)?, events))
        })
        .await
    }

    async fn get_session(&self, session_id: &str) -> Result<SessionRecord> {
        let id = session_id.to_owned();
        self.read_with(move |conn| require_session(conn, &id)).await
    }

    async fn update_session(
        &self,
        session_id: &str,
        update: SessionUpdate,
    ) -> Result<SessionRecord> {
        let id = session_id.to_owned();
        self.write(Some(session_id), move |conn, now_us| {
            let mut record = require_session(conn, &id)?;
            if let Some(expected) = update.if_version {
                if record.version != expected {
                    return Err(StoreError::conflict(
                        &id,
                        format!("version is {}, the update expected {expected}", record.version),
                    ));
                }
            }
            if let Some(next) = update.status {
                check_transition(&id, record.status, next)?;
                record.status = next;
            }
            match update.body {
                Some(BodyUpdate::MergePatch(patch)) => merge_patch(&mut record.body, &patch),
                Some(BodyUpdate::Replace(body)) => record.body = body,
                None => {}
            }
            let body = serde_json::to_string(&record.body)
                .map_err(|e| StoreError::invalid(&id, format!("body does not serialize: {e}")))?;
            conn.prepare_cached(
                "UPDATE sessions SET status = ?2, body = ?3, version = version + 1, updated_at_us = ?4 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, record.status.as_str(), body, now_us]))
            .map_err(|e| map_err(format!("updating session {id}"), e))?;
            require_session(conn, &id)
        })
        .await
    }

    async fn count_sessions_by_status(&self) -> Result<Vec<(SessionStatus, u64)>> {
        self.read_with(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT status, count(*) FROM sessions GROUP BY status")
                .map_err(|e| map_err("preparing a session count", e))?;
            let mut rows = stmt
                .query([])
                .map_err(|e| map_err("counting sessions", e))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(|e| map_err("counting sessions", e))? {
                let status: String = row.get(0).map_err(|e| map_err("counting sessions", e))?;
                let n: i64 = row.get(1).map_err(|e| map_err("counting sessions", e))?;
                out.push((stored_status("*", &status)?, u64::try_from(n).unwrap_or(0)));
            }
            Ok(out)
        })
        .await
    }

    async fn list_sessions(&self, query: SessionQuery) -> Result<SessionPage> {
        check_limit("*", query.limit)?;
        self.read_with(move |conn| {
            let sql = match query.order {
                Order::Ascending => format!(
                    "SELECT {SESSION_COLS} FROM sessions WHERE (?1 IS NULL OR status = ?1) AND position > ?2 \
                     ORDER BY position ASC LIMIT ?3"
                ),
                Order::Descending => format!(
                    "SELECT {SESSION_COLS} FROM sessions WHERE (?1 IS NULL OR status = ?1) AND position < ?2 \
                     ORDER BY position DESC LIMIT ?3"
                ),
            };
            let after = query.after_position.unwrap_or(match query.order {
                Order::Ascending => i64::MIN,
                Order::Descending => i64::MAX,
            });
            let mut stmt = conn.prepare_cached(&sql).map_err(|e| map_err("preparing a session list", e))?;
            let mut rows = stmt
                .query(params![query.status.map(|s| s.as_str()), after, to_i64(query.limit as u64 + 1)])
                .map_err(|e| map_err("listing sessions", e))?;
            let mut sessions = Vec::new();
            while let Some(row) = rows.next().map_err(|e| map_err("listing sessions", e))? {
                sessions.push(session_from_row(row)?);
            }
            let has_more = sessions.len() > query.limit;
            sessions.truncate(query.limit);
            Ok(SessionPage { sessions, has_more })
        })
        .await
    }

    async fn delete_session(&self, session_id: &str) -> Result<()> {
        let id = session_id.to_owned();
        self.write(Some(session_id), move |conn, _now| {
            let deleted = conn
                .prepare_cached("DELETE FROM sessions WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id]))
                .map_err(|e| map_err(format!("deleting session {id}"), e))?;
            if deleted == 0 {
                return Err(StoreError::not_found(&id));
            }
            conn.prepare_cached("DELETE FROM events WHERE session_id = ?1")
                .and_then(|mut s| s.execute(params![id]))
                .map_err(|e| map_err(format!("deleting the events of session {id}"), e))?;
            Ok(())
        })
        .await
    }

    async fn append_batch(&self, session_id: &str, batch: AppendBatch) -> Result<Vec<StoredEvent>> {
        let id = session_id.to_owned();
        self.write(Some(session_id), move |conn, now_us| {
            append_tx(conn, &id, batch, now_us)
        })
        .await
    }

    async fn mark_processed(
        &self,
        session_id: &str,
        events: EventSelector,
        fence: Fence,
    ) -> Result<Vec<StoredEvent>> {
        let id = session_id.to_owned();
        self.write(Some(session_id), move |conn, now_us| {
            let record = require_session(conn, &id)?;
            check_fence(&id, fence, record.lease.epoch)?;
            let selected = select_events(conn, &id, &events)?;
            let now = from_micros(now_us)?;
            let mut stmt = conn
                .prepare_cached(
                    "UPDATE events SET processed_at_us = ?3 WHERE session_id = ?1 AND seq = ?2 \
                     AND processed_at_us IS NULL",
                )
                .map_err(|e| map_err("preparing mark_processed", e))?;
            let mut changed = Vec::new();
            for mut event in selected {
                if event.processed_at.is_none() {
                    stmt.execute(params![id, to_i64(event.seq), now_us])
                        .map_err(|e| {
                            map_err(
                                format!("marking session {id} seq {} processed", event.seq),
                                e,
                            )
                        })?;
                    event.processed_at = Some(now);
                    changed.push(event);
                }
            }
            Ok(changed)
        })
        .await
    }

    async fn read(
        &self,
        session_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        check_limit(session_id, limit)?;
        let id = session_id.to_owned();
        self.read_with(move |conn| {
            in_read_tx(conn, |tx| {
                let mut stmt = tx
                    .prepare_cached(&format!(
                        "SELECT {EVENT_COLS} FROM events WHERE session_id = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3"
                    ))
                    .map_err(|e| map_err("preparing an event read", e))?;
                let mut rows = stmt
                    .query(params![id, to_i64(from_seq), to_i64(limit as u64)])
                    .map_err(|e| map_err(format!("reading session {id}"), e))?;
                let mut events = Vec::new();
                while let Some(row) = rows.next().map_err(|e| map_err(format!("reading session {id}"), e))? {
                    events.push(event_from_row(row)?);
                }
                if events.is_empty() && load_session(tx, &id)?.is_none() {
                    return Err(StoreError::not_found(&id));
                }
                Ok(events)
            })
        })
        .await
    }

    async fn list_events(&self, session_id: &str, query: EventQuery) -> Result<EventPage> {
        check_limit(session_id, query.limit)?;
        let id = session_id.to_owned();
        let timed = !matches!(
            (query.processed_from, query.processed_to),
            (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded)
        );
        let (lo, hi) = micros_bounds(query.processed_from, query.processed_to);
        let types = match &query.types {
            Some(t) if !t.is_empty() => Some(
                serde_json::to_string(t)
                    .map_err(|e| StoreError::invalid(session_id, format!("types: {e}")))?,
            ),
            _ => None,
        };
        self.read_with(move |conn| {
            in_read_tx(conn, |tx| {
                let sql = match query.order {
                    Order::Ascending => concat!(
                        "SELECT session_id, seq, id, type, processed_at_us, created_at_us, body FROM events ",
                        "WHERE session_id = ?1 AND seq > ?2 ",
                        "AND (?3 = 0 OR (processed_at_us IS NOT NULL AND processed_at_us BETWEEN ?4 AND ?5)) ",
                        "AND (?6 IS NULL OR type IN (SELECT value FROM json_each(?6))) ",
                        "ORDER BY seq ASC LIMIT ?7"
                    ),
                    Order::Descending => concat!(
                        "SELECT session_id, seq, id, type, processed_at_us, created_at_us, body FROM events ",
                        "WHERE session_id = ?1 AND seq < ?2 ",
                        "AND (?3 = 0 OR (processed_at_us IS NOT NULL AND processed_at_us BETWEEN ?4 AND ?5)) ",
                        "AND (?6 IS NULL OR type IN (SELECT value FROM json_each(?6))) ",
                        "ORDER BY seq DESC LIMIT ?7"
                    ),
                };
                let after = match (query.order, query.after_seq) {
                    (_, Some(seq)) => to_i64(seq),
                    (Order::Ascending, None) => 0,
                    (Order::Descending, None) => i64::MAX,
                };
                let mut stmt = tx.prepare_cached(sql).map_err(|e| map_err("preparing an event list", e))?;
                let mut rows = stmt
                    .query(params![id, after, i64::from(timed), lo, hi, types, to_i64(query.limit as u64 + 1)])
                    .map_err(|e| map_err(format!("listing events of session {id}"), e))?;
                let mut events = Vec::new();
                while let Some(row) = rows.next().map_err(|e| map_err(format!("listing events of session {id}"), e))? {
                    events.push(event_from_row(row)?);
                }
                if events.is_empty() && load_session(tx, &id)?.is_none() {
                    return Err(StoreError::not_found(&id));
                }
                let has_more = events.len() > query.limit;
                events.truncate(query.limit);
                Ok(EventPage { events, has_more })
            })
        })
        .await
    }

    async fn get_events(
        &self,
        session_id: &str,
        events: EventSelector,
    ) -> Result<Vec<StoredEvent>> {
        let id = session_id.to_owned();
        self.read_with(move |conn| {
            in_read_tx(conn, |tx| {
                if load_session(tx, &id)?.is_none() {
                    return Err(StoreError::not_found(&id));
                }
                select_events(tx, &id, &events)
            })
        })
        .await
    }

    async fn subscribe(&self, session_id: &str, from_seq: u64) -> Result<EventStream> {
        let rx = self.inner.hub.watch(session_id);
        // Fail early for a session that does not exist.
        self.get_session(session_id).await?;
        Ok(tail(
            self.clone(),
            rx,
            session_id.to_owned(),
            from_seq,
            None,
        ))
    }

    async fn acquire_lease(&self, session_id: &str, holder: &str, ttl: Duration) -> Result<Lease> {
        let id = session_id.to_owned();
        let holder = holder.to_owned();
        self.write(None, move |conn, now_us| {
            let record = require_session(conn, &id)?;
            let next = lease_row(&record)
                .acquire(&holder, now_us, ttl_micros(ttl))
                .map_err(|e| lease_error(&id, 0, e))?;
            set_lease(conn, &id, &next)?;
            Ok(Lease {
                session_id: id,
                holder,
                epoch: next.epoch,
                expires_at: from_micros(next.expires_at_us.unwrap_or(now_us))?,
            })
        })
        .await
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        let lease = lease.clone();
        self.write(None, move |conn, now_us| {
            let record = require_session(conn, &lease.session_id)?;
            let next = lease_row(&record)
                .renew(lease.epoch, &lease.holder, now_us, ttl_micros(ttl))
                .map_err(|e| lease_error(&lease.session_id, lease.epoch, e))?;
            set_lease(conn, &lease.session_id, &next)?;
            Ok(Lease {
                expires_at: from_micros(next.expires_at_us.unwrap_or(now_us))?,
                ..lease
            })
        })
        .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let lease = lease.clone();
        self.write(None, move |conn, _now| {
            let record = require_session(conn, &lease.session_id)?;
            let next = lease_row(&record)
                .release(lease.epoch, &lease.holder)
                .map_err(|e| lease_error(&lease.session_id, lease.epoch, e))?;
            set_lease(conn, &lease.session_id, &next)
        })
        .await
    }

    async fn reclaim_leases(&self, holder: &str, ttl: Duration) -> Result<Vec<Lease>> {
        let holder = holder.to_owned();
        // One write transaction: the rows are read and re-granted (by the
        // lease state machine) with no other write in between.
        self.write(None, move |conn, now_us| {
            let held: Vec<(String, i64, Option<i64>)> = conn
                .prepare_cached(
                    "SELECT id, lease_epoch, lease_expires_at_us FROM sessions WHERE lease_holder = ?1",
                )
                .and_then(|mut stmt| {
                    stmt.query_map(params![holder], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect::<std::result::Result<Vec<_>, _>>()
                })
                .map_err(|e| map_err(format!("reading the leases of {holder}"), e))?;
            let mut out = Vec::with_capacity(held.len());
            for (id, epoch, expires_at_us) in held {
                let row = LeaseRow {
                    epoch: to_u64(epoch, "lease_epoch")?,
                    holder: Some(holder.clone()),
                    expires_at_us,
                };
                let Some(next) = row.reclaim(&holder, now_us, ttl_micros(ttl)) else {
                    continue;
                };
                set_lease(conn, &id, &next)?;
                out.push(Lease {
                    session_id: id,
                    holder: holder.clone(),
                    epoch: next.epoch,
                    expires_at: from_micros(next.expires_at_us.unwrap_or(now_us))?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn sessions_needing_wake(&self, after: i64, limit: usize) -> Result<Vec<WakeCandidate>> {
        check_limit("*", limit)?;
        let now_us = to_micros(self.inner.options.clock.now());
        self.read_with(move |conn| {
            // Queued events come from the partial index of migration 2
            // (`events_queued`), which holds only unprocessed events.
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, position, last_seq FROM sessions \
                     WHERE position > ?3 AND status <> 'terminated' \
                     AND (lease_holder IS NULL OR lease_expires_at_us IS NULL OR lease_expires_at_us <= ?1) \
                     AND (status = 'running' OR id IN \
                          (SELECT session_id FROM events INDEXED BY events_queued WHERE processed_at_us IS NULL)) \
                     ORDER BY position LIMIT ?2",
                )
                .map_err(|e| map_err("preparing the wake scan", e))?;
            let rows = stmt
                .query_map(params![now_us, to_i64(limit as u64), after], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                })
                .and_then(|rows| rows.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| map_err("scanning sessions to wake", e))?;
            rows.into_iter()
                .map(|(session_id, position, last_seq)| {
                    Ok(WakeCandidate {
                        session_id,
                        position,
                        last_seq: to_u64(last_seq, "last_seq")?,
                    })
                })
                .collect()
        })
        .await
    }
}
