//! [`Metered`]: a [`SessionStore`] that times every operation into
//! `airlock_store_operation_duration_seconds{op}` and counts appended events
//! into `airlock_events_appended_total`, then delegates (including the
//! provided methods, so the inner store's indexed overrides are kept).
//! [`crate::open_store`] wraps what it opens; the `metrics` calls are no-ops
//! until a daemon installs a recorder.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::{
    AppendBatch, EventPage, EventQuery, EventSelector, EventStream, Fence, Lease, NewEvent,
    NewSession, Result, SessionPage, SessionQuery, SessionRecord, SessionStatus, SessionStore,
    SessionUpdate, StoredEvent, WakeCandidate,
};

/// Times the operations of the store it wraps.
#[derive(Debug)]
pub struct Metered<S>(pub S);

async fn timed<T>(op: &'static str, fut: impl Future<Output = Result<T>>) -> Result<T> {
    let started = Instant::now();
    let r = fut.await;
    metrics::histogram!("airlock_store_operation_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    r
}

fn appended<T>(r: Result<Vec<T>>) -> Result<Vec<T>> {
    if let Ok(events) = &r {
        metrics::counter!("airlock_events_appended_total").increment(events.len() as u64);
    }
    r
}

#[async_trait::async_trait]
impl<S: SessionStore> SessionStore for Metered<S> {
    async fn create_session(&self, new: NewSession) -> Result<(SessionRecord, Vec<StoredEvent>)> {
        let r = timed("create_session", self.0.create_session(new)).await;
        if let Ok((_, events)) = &r {
            metrics::counter!("airlock_events_appended_total").increment(events.len() as u64);
        }
        r
    }

    async fn get_session(&self, session_id: &str) -> Result<SessionRecord> {
        timed("get_session", self.0.get_session(session_id)).await
    }

    async fn update_session(
        &self,
        session_id: &str,
        update: SessionUpdate,
    ) -> Result<SessionRecord> {
        timed("update_session", self.0.update_session(session_id, update)).await
    }

    async fn list_sessions(&self, query: SessionQuery) -> Result<SessionPage> {
        timed("list_sessions", self.0.list_sessions(query)).await
    }

    async fn delete_session(&self, session_id: &str) -> Result<()> {
        timed("delete_session", self.0.delete_session(session_id)).await
    }

    async fn append_batch(&self, session_id: &str, batch: AppendBatch) -> Result<Vec<StoredEvent>> {
        appended(timed("append", self.0.append_batch(session_id, batch)).await)
    }

    async fn append(
        &self,
        session_id: &str,
        events: Vec<NewEvent>,
        fence: Fence,
    ) -> Result<Vec<StoredEvent>> {
        appended(timed("append", self.0.append(session_id, events, fence)).await)
    }

    async fn mark_processed(
        &self,
        session_id: &str,
        events: EventSelector,
        fence: Fence,
    ) -> Result<Vec<StoredEvent>> {
        timed(
            "mark_processed",
            self.0.mark_processed(session_id, events, fence),
        )
        .await
    }

    async fn read(
        &self,
        session_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        timed("read", self.0.read(session_id, from_seq, limit)).await
    }

    async fn list_events(&self, session_id: &str, query: EventQuery) -> Result<EventPage> {
        timed("list_events", self.0.list_events(session_id, query)).await
    }

    async fn get_events(
        &self,
        session_id: &str,
        events: EventSelector,
    ) -> Result<Vec<StoredEvent>> {
        timed("get_events", self.0.get_events(session_id, events)).await
    }

    async fn subscribe(&self, session_id: &str, from_seq: u64) -> Result<EventStream> {
        timed("subscribe", self.0.subscribe(session_id, from_seq)).await
    }

    async fn acquire_lease(&self, session_id: &str, holder: &str, ttl: Duration) -> Result<Lease> {
        timed("lease", self.0.acquire_lease(session_id, holder, ttl)).await
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        timed("lease", self.0.renew_lease(lease, ttl)).await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        timed("lease", self.0.release_lease(lease)).await
    }

    async fn reclaim_leases(&self, holder: &str, ttl: Duration) -> Result<Vec<Lease>> {
        timed("lease", self.0.reclaim_leases(holder, ttl)).await
    }

    async fn sessions_needing_wake(&self, after: i64, limit: usize) -> Result<Vec<WakeCandidate>> {
        timed(
            "sessions_needing_wake",
            self.0.sessions_needing_wake(after, limit),
        )
        .await
    }

    async fn count_sessions_by_status(&self) -> Result<Vec<(SessionStatus, u64)>> {
        timed("count_sessions", self.0.count_sessions_by_status()).await
    }
}
