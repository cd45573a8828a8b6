//! The durable session log: append-only events with gap-free per-session
//! sequence numbers, live tails, session records with a status, and session
//! leases whose epochs fence writes. One trait, [`SessionStore`], with two
//! implementations that pass one conformance suite: [`SqliteStore`] (the
//! embedded default: one file, WAL, `synchronous=FULL`, a single writer thread
//! with group commit) and [`PgStore`] (PostgreSQL, for several control-plane
//! replicas; LISTEN/NOTIFY carries appends between them).
//!
//! This crate owns storage and its invariants: ids, seqs, `processed_at`,
//! atomic batches, durability before acknowledgement, lease grants and
//! fencing, schema migrations, and the typed names the log speaks in
//! ([`names`]: event types, permission values, stop reasons, shared by the
//! API, the harness and the control plane). It does not interpret events
//! (bodies are opaque JSON objects with a `type`), does not decide when a
//! session should run (the harness does), and does not map errors to HTTP
//! (the API does).
//!
//! Invariants every implementation keeps:
//! - an append is one transaction, committed durably before it returns; its
//!   events get consecutive seqs after the session's last seq (the first is 1);
//! - a write fenced with [`Fence::Epoch`] is refused with
//!   [`StoreError::Fenced`] unless the epoch is the session's current one, and
//!   lease grants and fenced writes serialize on the session row;
//! - a lease grant always carries a higher epoch than every earlier grant;
//! - [`SessionStore::subscribe`] yields every event from `from_seq` on, in seq
//!   order, once.
#![forbid(unsafe_code)]

mod clock;
pub mod config;
mod error;
mod lease;
pub mod metered;
pub mod names;
pub mod postgres;
pub mod sqlite;
mod status;
mod tail;
mod types;

use std::time::Duration;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{open_store, RawStoreConfig, StoreConfig, StoreConfigError};
pub use error::{BoxError, Result, StoreError};
pub use metered::Metered;
pub use names::{
    ConfirmationResult, EvaluatedPermission, EventType, PermissionPolicy, RetryStatus,
    SessionErrorType, StopReasonType,
};
pub use postgres::{PgOptions, PgStore};

pub use sqlite::{SqliteOptions, SqliteStore};
pub use status::{check_transition, SessionStatus, UnknownStatus};
pub use tail::EventStream;
pub use types::{
    format_rfc3339, new_event_id, AppendBatch, BodyUpdate, EventPage, EventQuery, EventSelector,
    Fence, Lease, LeaseState, NewEvent, NewSession, Order, SessionPage, SessionQuery,
    SessionRecord, SessionUpdate, StoredEvent, TailItem, WakeCandidate,
};

/// The session log. Cheap to clone handles implement it; share one per process
/// (`Arc<dyn SessionStore>` works too).
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + std::fmt::Debug {
    /// Creates a session, with its `initial_events` appended in the same
    /// transaction. [`StoreError::Conflict`] if the id exists.
    async fn create_session(&self, new: NewSession) -> Result<(SessionRecord, Vec<StoredEvent>)>;

    /// The session. [`StoreError::NotFound`] if it does not exist.
    async fn get_session(&self, session_id: &str) -> Result<SessionRecord>;

    /// Changes status and/or body. Moving a terminated session to another
    /// status, or a failed `if_version`, is [`StoreError::Conflict`].
    async fn update_session(
        &self,
        session_id: &str,
        update: SessionUpdate,
    ) -> Result<SessionRecord>;

    /// A page of sessions in creation order.
    async fn list_sessions(&self, query: SessionQuery) -> Result<SessionPage>;

    /// Deletes the session, its events and its lease. Live tails of it end
    /// with [`StoreError::NotFound`].
    async fn delete_session(&self, session_id: &str) -> Result<()>;

    /// Appends a batch atomically and durably, optionally changing the status
    /// in the same transaction. Returns the stored events in order.
    async fn append_batch(&self, session_id: &str, batch: AppendBatch) -> Result<Vec<StoredEvent>>;

    /// Appends `events` under `fence` (see [`SessionStore::append_batch`]).
    async fn append(
        &self,
        session_id: &str,
        events: Vec<NewEvent>,
        fence: Fence,
    ) -> Result<Vec<StoredEvent>> {
        self.append_batch(
            session_id,
            AppendBatch {
                events,
                fence,
                set_status: None,
            },
        )
        .await
    }

    /// Sets `processed_at` on the selected queued events (those already
    /// processed keep their time). Returns the events that changed.
    /// [`StoreError::EventNotFound`] if any selected event does not exist.
    async fn mark_processed(
        &self,
        session_id: &str,
        events: EventSelector,
        fence: Fence,
    ) -> Result<Vec<StoredEvent>>;

    /// Up to `limit` events with `seq >= from_seq`, in seq order.
    async fn read(&self, session_id: &str, from_seq: u64, limit: usize)
        -> Result<Vec<StoredEvent>>;

    /// A filtered page of events in either order (the API's event list).
    /// A processed-time bound never matches a queued event.
    ///
    /// The provided body is correct but scans the whole session through
    /// [`SessionStore::read`]; both stores override it with one indexed
    /// query, and wrappers should delegate to their inner store.
    async fn list_events(&self, session_id: &str, query: EventQuery) -> Result<EventPage> {
        check_limit(session_id, query.limit)?;
        let mut all = Vec::new();
        let mut from = 1;
        loop {
            let page = self.read(session_id, from, 10_000).await?;
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            all.extend(page);
        }
        Ok(types::page_events(all, &query))
    }

    /// The selected events in seq order. [`StoreError::EventNotFound`] if any
    /// does not exist.
    async fn get_events(&self, session_id: &str, events: EventSelector)
        -> Result<Vec<StoredEvent>>;

    /// A live tail: every event from `from_seq` on (1 = from the start), then
    /// new ones as they are appended (by any replica), plus
    /// [`TailItem::Processed`] when a delivered queued event is processed.
    async fn subscribe(&self, session_id: &str, from_seq: u64) -> Result<EventStream>;

    /// Grants the lease to `holder` for `ttl` if it is free or expired, with
    /// an epoch higher than any before. [`StoreError::LeaseHeld`] otherwise.
    async fn acquire_lease(&self, session_id: &str, holder: &str, ttl: Duration) -> Result<Lease>;

    /// Extends `lease` by `ttl` from now. [`StoreError::Fenced`] if it was
    /// taken over or released.
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease>;

    /// Frees `lease` (the epoch stays). [`StoreError::Fenced`] if it was taken
    /// over or released already.
    async fn release_lease(&self, lease: &Lease) -> Result<()>;

    /// Takes back every lease `holder` still holds, expired or not: each
    /// gets a new grant to `holder`, for `ttl` from now, with a higher epoch,
    /// so writes, renewals and releases under the earlier grants are refused
    /// ([`StoreError::Fenced`]). For a restarted process that kept its
    /// instance id: its previous incarnation's wakes are fenced, and it
    /// wakes those sessions at once instead of waiting out the TTL. Never
    /// touches a lease held by another holder or a free one. Two processes
    /// must not share a holder name at once (each would fence the other).
    ///
    /// The provided body pages through [`SessionStore::list_sessions`] and
    /// releases then re-acquires each lease (not atomic: another holder may
    /// take one in between, and then it is not returned); both stores
    /// override it with one statement.
    async fn reclaim_leases(&self, holder: &str, ttl: Duration) -> Result<Vec<Lease>> {
        let mut held = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .list_sessions(SessionQuery {
                    after_position: after,
                    limit: 1000,
                    ..SessionQuery::default()
                })
                .await?;
            for s in &page.sessions {
                if s.lease.holder.as_deref() == Some(holder) {
                    held.push(Lease {
                        session_id: s.id.clone(),
                        holder: holder.to_owned(),
                        epoch: s.lease.epoch,
                        expires_at: s
                            .lease
                            .expires_at
                            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                    });
                }
            }
            after = page.sessions.last().map(|s| s.position);
            if !page.has_more || after.is_none() {
                break;
            }
        }
        let mut out = Vec::with_capacity(held.len());
        for old in held {
            match self.release_lease(&old).await {
                Ok(()) => {}
                Err(StoreError::Fenced { .. } | StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            }
            match self.acquire_lease(&old.session_id, holder, ttl).await {
                Ok(lease) => out.push(lease),
                Err(StoreError::LeaseHeld { .. } | StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// What a recovery scan should wake: sessions whose lease is free or
    /// expired and that either have status `running` (their harness died) or
    /// are not `terminated` and hold a queued event (`processed_at` unset:
    /// client input appended before a wake could start, e.g. the control
    /// plane died between the append and the wake). In creation order, with
    /// a `position` greater than `after` (0: from the start), at most
    /// `limit`; page on with the last candidate's `position`.
    ///
    /// A queued event may legitimately wait (a message sent while a tool call
    /// waits for the client), so a session can be returned scan after scan:
    /// each candidate carries its `last_seq` so the caller can skip one it
    /// already woke at that seq with nothing to do.
    async fn sessions_needing_wake(&self, after: i64, limit: usize) -> Result<Vec<WakeCandidate>>;

    /// How many sessions have each status (for the `airlock_sessions`
    /// gauge). The default pages through [`SessionStore::list_sessions`];
    /// the SQL stores answer with one `GROUP BY`.
    async fn count_sessions_by_status(&self) -> Result<Vec<(SessionStatus, u64)>> {
        let mut out = Vec::with_capacity(SessionStatus::ALL.len());
        for status in SessionStatus::ALL {
            let mut n = 0u64;
            let mut after = None;
            loop {
                let page = self
                    .list_sessions(SessionQuery {
                        status: Some(status),
                        after_position: after,
                        limit: 1000,
                        ..SessionQuery::default()
                    })
                    .await?;
                n += page.sessions.len() as u64;
                after = page.sessions.last().map(|s| s.position);
                if !page.has_more || after.is_none() {
                    break;
                }
            }
            out.push((status, n));
        }
        Ok(out)
    }
}

/// Ttl in microseconds, saturating.
pub(crate) fn ttl_micros(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX)
}

/// Checks a page size or read limit.
pub(crate) fn check_limit(session_id: &str, limit: usize) -> Result<()> {
    if limit == 0 || limit > 100_000 {
        return Err(StoreError::invalid(
            session_id,
            format!("limit {limit} is not within 1..=100000"),
        ));
    }
    Ok(())
}
