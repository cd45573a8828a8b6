//! The PostgreSQL store, for several control-plane replicas sharing one
//! database.
//!
//! Same layout as the SQLite store (`sessions` with status, body, last seq
//! and lease columns; `events` keyed by `(session_id, seq)`), in a schema of
//! its own (`airlock` unless configured), with bodies kept as JSON text.
//!
//! Concurrency: every write that depends on a session's state (append,
//! mark_processed, status and body updates, delete) first locks the session
//! row (`SELECT ... FOR UPDATE`), so seqs are assigned from `last_seq` with no
//! race and no gap across replicas, and a fenced write cannot interleave with
//! a lease takeover. Lease grants, renewals and releases are single
//! conditional `UPDATE`s evaluated against the database clock, so replicas
//! with skewed clocks agree on expiry. After a write that changes events
//! commits, the store `pg_notify`s its channel (see `PgStore::announce` for
//! why not inside the transaction); each store's listener ([`listener`])
//! wakes its local tails, which also re-read every `tail_poll_interval`.

mod listener;
mod pool;
mod schema;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Config, Row};

use crate::error::{Result, StoreError};
use crate::lease::check_fence;
use crate::status::{check_transition, stored_status};
use crate::tail::{tail, EventStream, Hub};
use crate::types::{
    check_session_id, decode_body, from_micros, merge_patch, micros_bounds, to_micros, AppendBatch,
    BodyUpdate, EventPage, EventQuery, EventSelector, Fence, Lease, LeaseState, NewSession, Order,
    PreparedEvent, SessionPage, SessionQuery, SessionRecord, SessionUpdate, StoredEvent,
    WakeCandidate,
};
use crate::{check_limit, ttl_micros, SessionStatus, SessionStore};

use listener::quote_ident;
use pool::{Conn, Pool};

/// The database clock in unix microseconds, as SQL.
macro_rules! now_us {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000000)::bigint"
    };
}

/// Options of the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Schema holding the tables (created if missing). Letters, digits and
    /// `_`, at most 40 bytes; also names the notification channel.
    pub schema: String,
    /// Most connections the pool opens (the listener has one more).
    pub max_connections: usize,
    /// How long to wait for a connection to the server.
    pub connect_timeout: Duration,
    /// Tails re-read at least this often even without a notification.
    pub tail_poll_interval: Duration,
    /// `application_name` of the store's connections (shows in `pg_stat_activity`).
    pub application_name: String,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            schema: "airlock".into(),
            max_connections: 16,
            connect_timeout: Duration::from_secs(10),
            tail_poll_interval: Duration::from_secs(5),
            application_name: "airlock-session-store".into(),
        }
    }
}

/// Run on every connection the store opens (see
/// [`settings::backend::POSTGRES_SESSION_SETTINGS`]): a replica frozen inside
/// a transaction must not hold a session's row lock past a lease takeover.
pub const SESSION_SETTINGS: &str = settings::backend::POSTGRES_SESSION_SETTINGS;

/// The PostgreSQL implementation of [`SessionStore`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    channel: String,
    hub: Arc<Hub>,
    listener: JoinHandle<()>,
    queues: combine::Queues,
    options: PgOptions,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Maps a tokio-postgres error: connection loss (08), resources (53: disk
/// full, out of memory), operator intervention (57), system I/O errors (58),
/// serialization failures and deadlocks (40) are transient; data corruption
/// is corrupt.
pub(crate) fn map_pg(context: impl Into<String>, e: tokio_postgres::Error) -> StoreError {
    let context = context.into();
    if e.is_closed() {
        return StoreError::unavailable(format!("{context}: connection closed"), Some(Box::new(e)));
    }
    let Some(code) = e.code() else {
        // No SQLSTATE: an I/O or protocol error on the connection.
        return StoreError::unavailable(format!("{context}: {e}"), Some(Box::new(e)));
    };
    let class = &code.code()[..2.min(code.code().len())];
    if matches!(class, "08" | "53" | "57" | "58" | "40") {
        return StoreError::unavailable(format!("{context}: {e}"), Some(Box::new(e)));
    }
    if *code == SqlState::DATA_CORRUPTED || *code == SqlState::INDEX_CORRUPTED {
        return StoreError::corrupt(format!("{context}: {e}"));
    }
    StoreError::backend(context, e)
}

fn is_unique_violation(e: &pool::PgError) -> bool {
    matches!(e, pool::PgError::Pg(pg) if pg.code() == Some(&SqlState::UNIQUE_VIOLATION))
}

pub(crate) fn check_schema_name(schema: &str) -> Result<()> {
    settings::backend::check_schema_name(schema, crate::config::MAX_SCHEMA_LEN)
        .map_err(|message| StoreError::invalid("*", message))
}

fn to_u64(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::corrupt(format!("{what} is negative ({v})")))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn col<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, idx: usize) -> Result<T> {
    row.try_get(idx)
        .map_err(|e| StoreError::corrupt(format!("decoding column {idx}: {e}")))
}

macro_rules! session_cols {
    () => {
        "id, position, status, body, version, last_seq, lease_epoch, lease_holder, lease_expires_at_us, \
         created_at_us, updated_at_us"
    };
}
macro_rules! event_cols {
    () => {
        "session_id, seq, id, type, processed_at_us, created_at_us, body"
    };
}

mod combine;

fn session_from_row(row: &Row) -> Result<SessionRecord> {
    let id: String = col(row, 0)?;
    let status: String = col(row, 2)?;
    let body: String = col(row, 3)?;
    let expires: Option<i64> = col(row, 8)?;
    Ok(SessionRecord {
        position: col(row, 1)?,
        status: stored_status(&id, &status)?,
        body: serde_json::from_str(&body)
            .map_err(|e| StoreError::corrupt(format!("session {id} body is not json: {e}")))?,
        version: to_u64(col(row, 4)?, "version")?,
        last_seq: to_u64(col(row, 5)?, "last_seq")?,
        lease: LeaseState {
            epoch: to_u64(col(row, 6)?, "lease_epoch")?,
            holder: col(row, 7)?,
            expires_at: expires.map(from_micros).transpose()?,
        },
        created_at: from_micros(col(row, 9)?)?,
        updated_at: from_micros(col(row, 10)?)?,
        id,
    })
}

fn event_from_row(row: &Row) -> Result<StoredEvent> {
    let session_id: String = col(row, 0)?;
    let seq = to_u64(col(row, 1)?, "seq")?;
    let processed: Option<i64> = col(row, 4)?;
    let body: String = col(row, 6)?;
    Ok(StoredEvent {
        seq,
        id: col(row, 2)?,
        event_type: col(row, 3)?,
        processed_at: processed.map(from_micros).transpose()?,
        created_at: from_micros(col(row, 5)?)?,
        body: decode_body(&session_id, seq, &body)?,
        session_id,
    })
}

/// Locks and loads a session inside the caller's transaction.
async fn lock_session(conn: &mut Conn, session_id: &str) -> Result<SessionRecord> {
    let rows = conn
        .query(
            concat!(
                "SELECT ",
                session_cols!(),
                " FROM sessions WHERE id = $1 FOR UPDATE"
            ),
            &[&session_id],
        )
        .await
        .map_err(|e| e.into_store(format!("locking session {session_id}")))?;
    match rows.first() {
        Some(row) => session_from_row(row),
        None => Err(StoreError::not_found(session_id)),
    }
}

async fn load_session(conn: &mut Conn, session_id: &str) -> Result<Option<SessionRecord>> {
    let rows = conn
        .query(
            concat!("SELECT ", session_cols!(), " FROM sessions WHERE id = $1"),
            &[&session_id],
        )
        .await
        .map_err(|e| e.into_store(format!("reading session {session_id}")))?;
    rows.first().map(session_from_row).transpose()
}

/// Inserts prepared events after `last_seq` with one statement.
async fn insert_events(
    conn: &mut Conn,
    session_id: &str,
    last_seq: u64,
    events: Vec<PreparedEvent>,
    now_us: i64,
) -> Result<Vec<StoredEvent>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let n = events.len();
    let mut seqs = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut processed = Vec::with_capacity(n);
    let mut bodies = Vec::with_capacity(n);
    for (i, e) in events.iter().enumerate() {
        seqs.push(to_i64(last_seq + 1 + i as u64));
        ids.push(e.id.as_str());
        types.push(e.event_type.as_str());
        processed.push((!e.queued).then_some(now_us));
        bodies.push(e.body_text.as_str());
    }
    conn.execute(
        concat!(
            "INSERT INTO events (",
            event_cols!(),
            ") SELECT $1::text, s, i, t, p, $6::bigint, b \
             FROM unnest($2::bigint[], $3::text[], $4::text[], $5::bigint[], $7::text[]) AS u(s, i, t, p, b)"
        ),
        &[&session_id, &seqs, &ids, &types, &processed, &now_us, &bodies],
    )
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::conflict(session_id, "an event id of the batch is already taken")
        } else {
            e.into_store(format!("inserting events into session {session_id}"))
        }
    })?;
    let now = from_micros(now_us)?;
    Ok(events
        .into_iter()
        .enumerate()
        .map(|(i, e)| StoredEvent {
            session_id: session_id.to_owned(),
            seq: last_seq + 1 + i as u64,
            id: e.id,
            event_type: e.event_type,
            processed_at: (!e.queued).then_some(now),
            created_at: now,
            body: e.body,
        })
        .collect())
}

async fn select_events(
    conn: &mut Conn,
    session_id: &str,
    selector: &EventSelector,
) -> Result<Vec<StoredEvent>> {
    let (rows, wanted): (Vec<Row>, Vec<String>) = match selector {
        EventSelector::Seqs(seqs) => {
            let keys: Vec<i64> = seqs.iter().map(|s| to_i64(*s)).collect();
            let rows = conn
                .query(
                    concat!(
                        "SELECT ",
                        event_cols!(),
                        " FROM events WHERE session_id = $1 AND seq = ANY($2) ORDER BY seq"
                    ),
                    &[&session_id, &keys],
                )
                .await
                .map_err(|e| e.into_store(format!("reading events of session {session_id}")))?;
            (rows, seqs.iter().map(|s| format!("seq {s}")).collect())
        }
        EventSelector::Ids(ids) => {
            let rows = conn
                .query(
                    concat!(
                        "SELECT ",
                        event_cols!(),
                        " FROM events WHERE session_id = $1 AND id = ANY($2) ORDER BY seq"
                    ),
                    &[&session_id, ids],
                )
                .await
                .map_err(|e| e.into_store(format!("reading events of session {session_id}")))?;
            (rows, ids.clone())
        }
    };
    let events = rows
        .iter()
        .map(event_from_row)
        .collect::<Result<Vec<_>>>()?;
    for key in wanted {
        let present = match selector {
            EventSelector::Seqs(_) => events.iter().any(|e| format!("seq {}", e.seq) == key),
            EventSelector::Ids(_) => events.iter().any(|e| e.id == key),
        };
        if !present {
            return Err(StoreError::EventNotFound {
                session_id: session_id.to_owned(),
                event: key,
            });
        }
    }
    Ok(events)
}

impl PgStore {
    /// Connects to `url` (a libpq-style URL or key=value string), creates the
    /// schema and applies migrations, and starts the notification listener.
    pub async fn connect(url: &str, options: PgOptions) -> Result<Self> {
        check_schema_name(&options.schema)?;
        let mut config: Config = url
            .parse()
            .map_err(|e| StoreError::invalid("*", format!("postgresql url does not parse: {e}")))?;
        config.connect_timeout(options.connect_timeout);
        config.application_name(&options.application_name);
        let quoted = quote_ident(&options.schema);
        let mut admin = pool::connect(&config, None).await?;
        schema::migrate(
            &mut admin,
            &options.schema,
            &quoted,
            to_micros(time::OffsetDateTime::now_utc()),
        )
        .await?;
        drop(admin);
        let hub = Arc::new(Hub::default());
        let channel = format!("airlock_events_{}", options.schema);
        let (ready_tx, ready_rx) = oneshot::channel();
        let listener = tokio::spawn(listener::run(
            config.clone(),
            channel.clone(),
            hub.clone(),
            ready_tx,
        ));
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(StoreError::unavailable(
                    "the listener stopped before LISTEN",
                    None,
                ))
            }
        }
        tracing::info!(schema = %options.schema, "session store connected (postgresql)");
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool: Pool::new(config, quoted, options.max_connections),
                channel,
                hub,
                listener,
                queues: combine::Queues::default(),
                options,
            }),
        })
    }

    /// Drops the store's schema and everything in it (tests, teardown).
    /// Other stores on the same schema fail afterwards.
    pub async fn drop_schema(&self) -> Result<()> {
        let client = pool::connect(self.inner.pool.config(), None).await?;
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                quote_ident(&self.inner.options.schema)
            ))
            .await
            .map_err(|e| map_pg(format!("dropping schema {}", self.inner.options.schema), e))
    }

    /// After a commit: wakes local tails, and tails on other replicas via
    /// `pg_notify` in its own tiny transaction. Sent after the commit rather
    /// than inside it because a NOTIFY inside a writing transaction holds a
    /// cluster-wide lock through that transaction's commit fsync, which
    /// serializes every append of every replica. If this notification is
    /// lost (a crash right after the commit, a connection error), remote
    /// tails catch up at their next `tail_poll_interval` re-read.
    async fn announce(&self, conn: &mut Conn, session_id: &str) {
        self.inner.hub.notify(session_id);
        if let Err(e) = conn
            .execute(
                "SELECT pg_notify($1, $2)",
                &[&self.inner.channel, &session_id],
            )
            .await
        {
            let e = e.into_store(format!("notifying about session {session_id}"));
            tracing::warn!(%e, session_id, "session store notification not sent; remote tails will catch up by polling");
        }
    }

    /// Appends one batch in its own transaction (the path a group falls
    /// back to when its combined insert hit a taken event id).
    async fn append_alone(
        &self,
        session_id: &str,
        prepared: Vec<PreparedEvent>,
        batch: AppendBatch,
    ) -> Result<Vec<StoredEvent>> {
        let mut c = self.inner.pool.get().await?;
        c.begin().await?;
        let r = self.append_tx(&mut c, session_id, prepared, batch).await;
        let stored = c.finish(r).await?;
        self.announce(&mut c, session_id).await;
        Ok(stored)
    }

    async fn append_tx(
        &self,
        conn: &mut Conn,
        session_id: &str,
        prepared: Vec<PreparedEvent>,
        batch: AppendBatch,
    ) -> Result<Vec<StoredEvent>> {
        let count = to_i64(prepared.len() as u64);
        let now_us = to_micros(time::OffsetDateTime::now_utc());
        // Lock the row and reserve the seqs in one statement (READ COMMITTED
        // re-evaluates the WHERE on the newest row version after waiting for
        // the lock). A refused batch rolls the reservation back. The fence,
        // then the status rule ([`check_transition`], shared with SQLite and
        // the group path) decide on the locked row.
        let rows = conn
            .query(
                "UPDATE sessions SET last_seq = last_seq + $2 WHERE id = $1 \
                 RETURNING last_seq - $2, lease_epoch, status",
                &[&session_id, &count],
            )
            .await
            .map_err(|e| e.into_store(format!("locking session {session_id}")))?;
        let Some(row) = rows.first() else {
            return Err(StoreError::not_found(session_id));
        };
        let last_seq = to_u64(col(row, 0)?, "last_seq")?;
        check_fence(
            session_id,
            batch.fence,
            to_u64(col(row, 1)?, "lease_epoch")?,
        )?;
        if let Some(next) = batch.set_status {
            let current: String = col(row, 2)?;
            check_transition(session_id, stored_status(session_id, &current)?, next)?;
            conn.execute(
                "UPDATE sessions SET status = $2, version = version + 1, updated_at_us = $3 WHERE id = $1",
                &[&session_id, &next.as_str(), &now_us],
            )
            .await
            .map_err(|e| e.into_store(format!("updating session {session_id}")))?;
        }
        insert_events(conn, session_id, last_seq, prepared, now_us).await
    }
}

#[async_trait::async_trait]
impl SessionStore for PgStore {
    async fn create_session(&self, new: NewSession) -> Result<(SessionRecord, Vec<StoredEvent>)> {
        check_session_id(&new.id)?;
        let body = serde_json::to_string(&new.body)
            .map_err(|e| StoreError::invalid(&new.id, format!("body does not serialize: {e}")))?;
        let prepared = if new.initial_events.is_empty() {
            Vec::new()
        } else {
            PreparedEvent::prepare_all(&new.id, new.initial_events)?
        };
        let now_us = to_micros(time::OffsetDateTime::now_utc());
        let mut c = self.inner.pool.get().await?;
        c.begin().await?;
        let r = async {
            let count = to_i64(prepared.len() as u64);
            let rows = c
                .query(
                    concat!(
                        "INSERT INTO sessions (id, status, body, version, last_seq, created_at_us, updated_at_us) \
                         VALUES ($1, $2, $3, 1, $4, $5, $5) RETURNING ",
                        session_cols!()
                    ),
                    &[&new.id, &new.status.as_str(), &body, &count, &now_us],
                )
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::conflict(&new.id, "a session with this id already exists")
                    } else {
                        e.into_store(format!("creating session {}", new.id))
                    }
                })?;
            let record = session_from_row(rows.first().ok_or_else(|| StoreError::not_found(&new.id))?)?;
            let events = insert_events(&mut c, &new.id, 0, prepared, now_us).await?;
            Ok((record, events))
        }
        .await;
        c.finish(r).await
    }

    async fn get_session(&self, session_id: &str) -> Result<SessionRecord> {
        let mut c = self.inner.pool.get().await?;
        load_session(&mut c, session_id)
            .await?
            .ok_or_else(|| StoreError::not_found(session_id))
    }

    async fn update_session(
        &self,
        session_id: &str,
        update: SessionUpdate,
    ) -> Result<SessionRecord> {
        let mut c = self.inner.pool.get().await?;
        c.begin().await?;
        let r = async {
            let mut record = lock_session(&mut c, session_id).await?;
            if let Some(expected) = update.if_version {
                if record.version != expected {
                    return Err(StoreError::conflict(
                        session_id,
                        format!("version is {}, the update expected {expected}", record.version),
                    ));
                }
            }
            if let Some(next) = update.status {
                check_transition(session_id, record.status, next)?;
                record.status = next;
            }
            match update.body {
                Some(BodyUpdate::MergePatch(patch)) => merge_patch(&mut record.body, &patch),
                Some(BodyUpdate::Replace(body)) => record.body = body,
                None => {}
            }
            let body = serde_json::to_string(&record.body)
                .map_err(|e| StoreError::invalid(session_id, format!("body does not serialize: {e}")))?;
            let now_us = to_micros(time::OffsetDateTime::now_utc()).max(to_micros(record.updated_at));
            let rows = c
                .query(
                    concat!(
                        "UPDATE sessions SET status = $2, body = $3, version = version + 1, updated_at_us = $4 \
                         WHERE id = $1 RETURNING ",
                        session_cols!()
                    ),
                    &[&session_id, &record.status.as_str(), &body, &now_us],
                )
                .await
                .map_err(|e| e.into_store(format!("updating session {session_id}")))?;
            session_from_row(rows.first().ok_or_else(|| StoreError::not_found(session_id))?)
        }
        .await;
        c.finish(r).await
    }

    async fn count_sessions_by_status(&self) -> Result<Vec<(SessionStatus, u64)>> {
        let mut c = self.inner.pool.get().await?;
        let rows = c
            .query("SELECT status, count(*) FROM sessions GROUP BY status", &[])
            .await
            .map_err(|e| e.into_store("counting sessions"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let status: String = row.get(0);
            let n: i64 = row.get(1);
            out.push((stored_status("*", &status)?, u64::try_from(n).unwrap_or(0)));
        }
        Ok(out)
    }

    async fn list_sessions(&self, query: SessionQuery) -> Result<SessionPage> {
        check_limit("*", query.limit)?;
        let after = query.after_position.unwrap_or(match query.order {
            Order::Ascending => i64::MIN,
            Order::Descending => i64::MAX,
        });
        let status = query.status.map(|s| s.as_str());
        let limit = to_i64(query.limit as u64 + 1);
        let mut c = self.inner.pool.get().await?;
        let rows = match query.order {
            Order::Ascending => {
                c.query(
                    concat!(
                        "SELECT ",
                        session_cols!(),
                        " FROM sessions WHERE ($1::text IS NULL OR status = $1) AND position > $2 \
                         ORDER BY position ASC LIMIT $3"
                    ),
                    &[&status, &after, &limit],
                )
                .await
            }
            Order::Descending => {
                c.query(
                    concat!(
                        "SELECT ",
                        session_cols!(),
                        " FROM sessions WHERE ($1::text IS NULL OR status = $1) AND position < $2 \
                         ORDER BY position DESC LIMIT $3"
                    ),
                    &[&status, &after, &limit],
                )
                .await
            }
        }
        .map_err(|e| e.into_store("listing sessions"))?;
        let mut sessions = rows
            .iter()
            .map(session_from_row)
            .collect::<Result<Vec<_>>>()?;
        let has_more = sessions.len() > query.limit;
        sessions.truncate(query.limit);
        Ok(SessionPage { sessions, has_more })
    }

    async fn delete_session(&self, session_id: &str) -> Result<()> {
        let mut c = self.inner.pool.get().await?;
        c.begin().await?;
        let r = async {
            let deleted = c
                .execute("DELETE FROM sessions WHERE id = $1", &[&session_id])
                .await
                .map_err(|e| e.into_store(format!("deleting session {session_id}")))?;
            if deleted == 0 {
                return Err(StoreError::not_found(session_id));
            }
            c.execute("DELETE FROM events WHERE session_id = $1", &[&session_id])
                .await
                .map_err(|e| {
                    e.into_store(format!("deleting the events of session {session_id}"))
                })?;
            Ok(())
        }
        .await;
        c.finish(r).await?;
        self.announce(&mut c, session_id).await;
        Ok(())
    }

    async fn append_batch(&self, session_id: &str, batch: AppendBatch) -> Result<Vec<StoredEvent>> {
        let AppendBatch {
            events,
            fence,
            set_status,
        } = batch;
        let prepared = PreparedEvent::prepare_all(session_id, events)?;
        let rest = AppendBatch {
            events: Vec::new(),
            fence,
            set_status,
        };
        self.append_combined(session_id, prepared, rest).await
    }

    async fn mark_processed(
        &self,
        session_id: &str,
        events: EventSelector,
        fence: Fence,
    ) -> Result<Vec<StoredEvent>> {
        let now_us = to_micros(time::OffsetDateTime::now_utc());
        let mut c = self.inner.pool.get().await?;
        c.begin().await?;
        let r = async {
            let rows = c
                .query(
                    "SELECT lease_epoch FROM sessions WHERE id = $1 FOR UPDATE",
                    &[&session_id],
                )
                .await
                .map_err(|e| e.into_store(format!("locking session {session_id}")))?;
            let row = rows
                .first()
                .ok_or_else(|| StoreError::not_found(session_id))?;
            check_fence(session_id, fence, to_u64(col(row, 0)?, "lease_epoch")?)?;
            let selected = select_events(&mut c, session_id, &events).await?;
            let seqs: Vec<i64> = selected
                .iter()
                .filter(|e| e.processed_at.is_none())
                .map(|e| to_i64(e.seq))
                .collect();
            if seqs.is_empty() {
                return Ok(Vec::new());
            }
            c.execute(
                "UPDATE events SET processed_at_us = $3 WHERE session_id = $1 AND seq = ANY($2) \
                 AND processed_at_us IS NULL",
                &[&session_id, &seqs, &now_us],
            )
            .await
            .map_err(|e| {
                e.into_store(format!("marking events of session {session_id} processed"))
            })?;
            let now = from_micros(now_us)?;
            Ok(selected
                .into_iter()
                .filter(|e| e.processed_at.is_none())
                .map(|mut e| {
                    e.processed_at = Some(now);
                    e
                })
                .collect())
        }
        .await;
        let changed = c.finish(r).await?;
        if !changed.is_empty() {
            self.announce(&mut c, session_id).await;
        }
        Ok(changed)
    }

    async fn read(
        &self,
        session_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        check_limit(session_id, limit)?;
        let mut c = self.inner.pool.get().await?;
        let rows = c
            .query(
                concat!(
                    "SELECT ",
                    event_cols!(),
                    " FROM events WHERE session_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3"
                ),
                &[&session_id, &to_i64(from_seq), &to_i64(limit as u64)],
            )
            .await
            .map_err(|e| e.into_store(format!("reading session {session_id}")))?;
        let events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>>>()?;
        if events.is_empty() && load_session(&mut c, session_id).await?.is_none() {
            return Err(StoreError::not_found(session_id));
        }
        Ok(events)
    }

    async fn list_events(&self, session_id: &str, query: EventQuery) -> Result<EventPage> {
        check_limit(session_id, query.limit)?;
        let timed = !matches!(
            (query.processed_from, query.processed_to),
            (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded)
        );
        let (lo, hi) = micros_bounds(query.processed_from, query.processed_to);
        let types: Option<Vec<String>> = query.types.clone().filter(|t| !t.is_empty());
        let after = match (query.order, query.after_seq) {
            (_, Some(seq)) => to_i64(seq),
            (Order::Ascending, None) => 0,
            (Order::Descending, None) => i64::MAX,
        };
        let limit = to_i64(query.limit as u64 + 1);
        let mut c = self.inner.pool.get().await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
            [&session_id, &after, &timed, &lo, &hi, &types, &limit];
        let rows = match query.order {
            Order::Ascending => {
                c.query(
                    concat!(
                        "SELECT ",
                        event_cols!(),
                        " FROM events WHERE session_id = $1 AND seq > $2 \
                         AND (NOT $3 OR (processed_at_us IS NOT NULL AND processed_at_us BETWEEN $4 AND $5)) \
                         AND ($6::text[] IS NULL OR type = ANY($6)) ORDER BY seq ASC LIMIT $7"
                    ),
                    &params,
                )
                .await
            }
            Order::Descending => {
                c.query(
                    concat!(
                        "SELECT ",
                        event_cols!(),
                        " FROM events WHERE session_id = $1 AND seq < $2 \
                         AND (NOT $3 OR (processed_at_us IS NOT NULL AND processed_at_us BETWEEN $4 AND $5)) \
                         AND ($6::text[] IS NULL OR type = ANY($6)) ORDER BY seq DESC LIMIT $7"
                    ),
                    &params,
                )
                .await
            }
        }
        .map_err(|e| e.into_store(format!("listing events of session {session_id}")))?;
        let mut events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>>>()?;
        if events.is_empty() && load_session(&mut c, session_id).await?.is_none() {
            return Err(StoreError::not_found(session_id));
        }
        let has_more = events.len() > query.limit;
        events.truncate(query.limit);
        Ok(EventPage { events, has_more })
    }

    async fn get_events(
        &self,
        session_id: &str,
        events: EventSelector,
    ) -> Result<Vec<StoredEvent>> {
        let mut c = self.inner.pool.get().await?;
        if load_session(&mut c, session_id).await?.is_none() {
            return Err(StoreError::not_found(session_id));
        }
        select_events(&mut c, session_id, &events).await
    }

    async fn subscribe(&self, session_id: &str, from_seq: u64) -> Result<EventStream> {
        let rx = self.inner.hub.watch(session_id);
        self.get_session(session_id).await?;
        Ok(tail(
            self.clone(),
            rx,
            session_id.to_owned(),
            from_seq,
            Some(self.inner.options.tail_poll_interval),
        ))
    }

    async fn acquire_lease(&self, session_id: &str, holder: &str, ttl: Duration) -> Result<Lease> {
        let ttl_us = ttl_micros(ttl);
        let mut c = self.inner.pool.get().await?;
        let rows = c
            .query(
                concat!(
                    "UPDATE sessions SET lease_epoch = lease_epoch + 1, lease_holder = $2, \
                     lease_expires_at_us = ",
                    now_us!(),
                    " + $3 WHERE id = $1 AND (lease_holder IS NULL OR lease_expires_at_us IS NULL \
                     OR lease_expires_at_us <= ",
                    now_us!(),
                    ") RETURNING lease_epoch, lease_expires_at_us"
                ),
                &[&session_id, &holder, &ttl_us],
            )
            .await
            .map_err(|e| e.into_store(format!("acquiring the lease of session {session_id}")))?;
        if let Some(row) = rows.first() {
            return Ok(Lease {
                session_id: session_id.to_owned(),
                holder: holder.to_owned(),
                epoch: to_u64(col(row, 0)?, "lease_epoch")?,
                expires_at: from_micros(col(row, 1)?)?,
            });
        }
        let record = load_session(&mut c, session_id)
            .await?
            .ok_or_else(|| StoreError::not_found(session_id))?;
        Err(StoreError::LeaseHeld {
            session_id: session_id.to_owned(),
            holder: record.lease.holder.unwrap_or_default(),
            epoch: record.lease.epoch,
            expires_at: record
                .lease
                .expires_at
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        })
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        let ttl_us = ttl_micros(ttl);
        let epoch = to_i64(lease.epoch);
        let mut c = self.inner.pool.get().await?;
        let rows = c
            .query(
                concat!(
                    "UPDATE sessions SET lease_expires_at_us = ",
                    now_us!(),
                    " + $4 WHERE id = $1 AND lease_epoch = $2 AND lease_holder = $3 RETURNING lease_expires_at_us"
                ),
                &[&lease.session_id, &epoch, &lease.holder, &ttl_us],
            )
            .await
            .map_err(|e| e.into_store(format!("renewing the lease of session {}", lease.session_id)))?;
        if let Some(row) = rows.first() {
            return Ok(Lease {
                expires_at: from_micros(col(row, 0)?)?,
                ..lease.clone()
            });
        }
        let record = load_session(&mut c, &lease.session_id)
            .await?
            .ok_or_else(|| StoreError::not_found(&lease.session_id))?;
        Err(StoreError::Fenced {
            session_id: lease.session_id.clone(),
            presented_epoch: lease.epoch,
            current_epoch: record.lease.epoch,
        })
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let epoch = to_i64(lease.epoch);
        let mut c = self.inner.pool.get().await?;
        let n = c
            .execute(
                "UPDATE sessions SET lease_holder = NULL, lease_expires_at_us = NULL \
                 WHERE id = $1 AND lease_epoch = $2 AND lease_holder = $3",
                &[&lease.session_id, &epoch, &lease.holder],
            )
            .await
            .map_err(|e| {
                e.into_store(format!(
                    "releasing the lease of session {}",
                    lease.session_id
                ))
            })?;
        if n == 1 {
            return Ok(());
        }
        let record = load_session(&mut c, &lease.session_id)
            .await?
            .ok_or_else(|| StoreError::not_found(&lease.session_id))?;
        Err(StoreError::Fenced {
            session_id: lease.session_id.clone(),
            presented_epoch: lease.epoch,
            current_epoch: record.lease.epoch,
        })
    }

    async fn reclaim_leases(&self, holder: &str, ttl: Duration) -> Result<Vec<Lease>> {
        let ttl_us = ttl_micros(ttl);
        let mut c = self.inner.pool.get().await?;
        // One statement: each row is locked by the UPDATE, so a fenced write
        // under the old epoch either committed before or is refused after.
        let rows = c
            .query(
                concat!(
                    "UPDATE sessions SET lease_epoch = lease_epoch + 1, lease_expires_at_us = ",
                    now_us!(),
                    " + $2 WHERE lease_holder = $1 RETURNING id, lease_epoch, lease_expires_at_us"
                ),
                &[&holder, &ttl_us],
            )
            .await
            .map_err(|e| e.into_store(format!("reclaiming the leases of {holder}")))?;
        rows.iter()
            .map(|r| {
                Ok(Lease {
                    session_id: col(r, 0)?,
                    holder: holder.to_owned(),
                    epoch: to_u64(col(r, 1)?, "lease_epoch")?,
                    expires_at: from_micros(col(r, 2)?)?,
                })
            })
            .collect()
    }

    async fn sessions_needing_wake(&self, after: i64, limit: usize) -> Result<Vec<WakeCandidate>> {
        check_limit("*", limit)?;
        let mut c = self.inner.pool.get().await?;
        // The subquery reads the partial index of migration 2
        // (`events_queued`), which holds only unprocessed events.
        let rows = c
            .query(
                concat!(
                    "SELECT id, position, last_seq FROM sessions \
                     WHERE position > $2 AND status <> 'terminated' \
                     AND (lease_holder IS NULL OR lease_expires_at_us IS NULL OR lease_expires_at_us <= ",
                    now_us!(),
                    ") AND (status = 'running' OR id IN \
                     (SELECT session_id FROM events WHERE processed_at_us IS NULL)) \
                     ORDER BY position LIMIT $1"
                ),
                &[&to_i64(limit as u64), &after],
            )
            .await
            .map_err(|e| e.into_store("scanning sessions to wake"))?;
        rows.iter()
            .map(|r| {
                Ok(WakeCandidate {
                    session_id: col(r, 0)?,
                    position: col(r, 1)?,
                    last_seq: to_u64(col(r, 2)?, "last_seq")?,
                })
            })
            .collect()
    }
}
