//! Group commit for appends to one session within a replica.
//!
//! Appends to a session serialize on its row lock, held through each
//! commit's fsync, so concurrent appends to one session would otherwise run
//! one per fsync. Instead, each session with appends in flight has one worker
//! task; callers queue their (already validated) batch and wait. The worker
//! takes everything queued, locks the row once, decides each batch in order
//! exactly as a lone append would (fence against the locked epoch; status
//! change allowed by the status left by the batches before it), stores all
//! accepted events with one statement that also updates the session row,
//! commits once, and answers every caller. A refused batch (fenced, status
//! conflict) consumes no seq. If the combined insert hits a taken event id,
//! the group is rolled back and every batch is retried in a transaction of
//! its own, so the offending batch alone gets the conflict.
//!
//! The worker runs in its own task, so a caller that gives up waiting does
//! not strand the others; a guard removes the session's queue and fails what
//! is left if the worker dies.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::{check_fence, col, is_unique_violation, to_i64, to_u64, PgStore};
use crate::error::{Result, StoreError};
use crate::status::{stored_status, StatusMachine};
use crate::types::{from_micros, to_micros, AppendBatch, PreparedEvent, StoredEvent};

/// Most batches one transaction takes.
const MAX_GROUP: usize = 256;

pub(crate) struct Request {
    pub events: Vec<PreparedEvent>,
    pub batch: AppendBatch,
    pub reply: oneshot::Sender<Result<Vec<StoredEvent>>>,
}

/// Queued appends per session; a key is present while its worker runs.
#[derive(Default)]
pub(crate) struct Queues {
    map: Mutex<HashMap<String, VecDeque<Request>>>,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues").finish_non_exhaustive()
    }
}

impl Queues {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Request>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `request`; true if the caller must start the session's worker.
    fn push(&self, session_id: &str, request: Request) -> bool {
        let mut map = self.lock();
        match map.get_mut(session_id) {
            Some(queue) => {
                queue.push_back(request);
                false
            }
            None => {
                map.insert(session_id.to_owned(), VecDeque::from([request]));
                true
            }
        }
    }

    /// The next group, or `None` (and the worker's entry removed) when empty.
    fn take(&self, session_id: &str) -> Option<Vec<Request>> {
        let mut map = self.lock();
        let queue = map.get_mut(session_id)?;
        if queue.is_empty() {
            map.remove(session_id);
            return None;
        }
        let n = queue.len().min(MAX_GROUP);
        Some(queue.drain(..n).collect())
    }
}

/// Removes the session's queue if its worker ends without draining it (a
/// panic). Disarmed on a normal end, where `Queues::take` already removed the
/// entry and a new worker may own a new one.
struct WorkerGuard<'a> {
    store: &'a PgStore,
    session_id: &'a str,
    armed: bool,
}

impl Drop for WorkerGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let left = self.store.inner.queues.lock().remove(self.session_id);
        for request in left.into_iter().flatten() {
            let _ = request.reply.send(Err(StoreError::unavailable(
                format!("the append worker of session {} stopped", self.session_id),
                None,
            )));
        }
    }
}

impl PgStore {
    /// Queues a validated batch and waits for its group's commit.
    pub(crate) async fn append_combined(
        &self,
        session_id: &str,
        events: Vec<PreparedEvent>,
        batch: AppendBatch,
    ) -> Result<Vec<StoredEvent>> {
        let (reply, answer) = oneshot::channel();
        if self.inner.queues.push(
            session_id,
            Request {
                events,
                batch,
                reply,
            },
        ) {
            let store = self.clone();
            let session_id = session_id.to_owned();
            tokio::spawn(async move { store.append_worker(&session_id).await });
        }
        answer.await.map_err(|_| {
            StoreError::unavailable(
                format!("the append worker of session {session_id} stopped"),
                None,
            )
        })?
    }

    async fn append_worker(&self, session_id: &str) {
        let mut guard = WorkerGuard {
            store: self,
            session_id,
            armed: true,
        };
        while let Some(group) = self.inner.queues.take(session_id) {
            self.commit_group(session_id, group).await;
        }
        guard.armed = false;
    }

    async fn commit_group(&self, session_id: &str, group: Vec<Request>) {
        let mut c = match self.inner.pool.get().await {
            Ok(c) => c,
            Err(e) => return fail_all(group, &e),
        };
        if let Err(e) = c.begin().await {
            return fail_all(group, &e);
        }
        let decided = self.decide(&mut c, session_id, group).await;
        let (accepted, last_seq, status) = match decided {
            Ok(d) => d,
            Err((group, e)) => {
                let _ = c
                    .finish::<()>(Err(StoreError::corrupt("rolled back")))
                    .await;
                return fail_all(group, &e);
            }
        };
        if accepted.is_empty() {
            let _ = c.finish(Ok(())).await;
            return;
        }
        let now_us = to_micros(time::OffsetDateTime::now_utc());
        let inserted = self
            .insert_group(&mut c, session_id, &accepted, last_seq, status, now_us)
            .await;
        let committed = c.finish(inserted).await;
        match committed {
            Ok(()) => {
                drop(c);
                self.answer(session_id, accepted, now_us);
                let mut c = match self.inner.pool.get().await {
                    Ok(c) => c,
                    Err(_) => {
                        self.inner.hub.notify(session_id);
                        return;
                    }
                };
                self.announce(&mut c, session_id).await;
            }
            Err(StoreError::Conflict { .. }) => {
                // A taken event id somewhere in the group: retry each batch
                // alone so only the offending one is refused.
                drop(c);
                for (request, _) in accepted {
                    let result = self
                        .append_alone(session_id, request.events, request.batch)
                        .await;
                    let _ = request.reply.send(result);
                }
            }
            Err(e) => fail_all(accepted.into_iter().map(|(r, _)| r).collect(), &e),
        }
    }

    /// Locks the session row and decides each request in order (its fence,
    /// then its status change against the status the earlier accepted ones
    /// left). Returns the accepted requests with their first seq, the new
    /// last seq and the status machine.
    #[allow(clippy::type_complexity)]
    async fn decide(
        &self,
        c: &mut super::pool::Conn,
        session_id: &str,
        group: Vec<Request>,
    ) -> std::result::Result<(Vec<(Request, u64)>, u64, StatusMachine), (Vec<Request>, StoreError)>
    {
        let rows = match c
            .query(
                "SELECT last_seq, lease_epoch, status FROM sessions WHERE id = $1 FOR UPDATE",
                &[&session_id],
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) => return Err((group, e.into_store(format!("locking session {session_id}")))),
        };
        let Some(row) = rows.first() else {
            return Err((group, StoreError::not_found(session_id)));
        };
        let parsed = (|| -> Result<(u64, u64, StatusMachine)> {
            let last_seq = to_u64(col(row, 0)?, "last_seq")?;
            let epoch = to_u64(col(row, 1)?, "lease_epoch")?;
            let status: String = col(row, 2)?;
            let status = StatusMachine::new(stored_status(session_id, &status)?);
            Ok((last_seq, epoch, status))
        })();
        let (mut last_seq, epoch, mut status) = match parsed {
            Ok(v) => v,
            Err(e) => return Err((group, e)),
        };
        let mut accepted = Vec::with_capacity(group.len());
        for request in group {
            if let Err(e) = check_fence(session_id, request.batch.fence, epoch) {
                let _ = request.reply.send(Err(e));
                continue;
            }
            if let Err(e) = status.apply(session_id, request.batch.set_status) {
                let _ = request.reply.send(Err(e));
                continue;
            }
            let first = last_seq + 1;
            last_seq += request.events.len() as u64;
            accepted.push((request, first));
        }
        Ok((accepted, last_seq, status))
    }

    async fn insert_group(
        &self,
        c: &mut super::pool::Conn,
        session_id: &str,
        accepted: &[(Request, u64)],
        last_seq: u64,
        status: StatusMachine,
        now_us: i64,
    ) -> Result<()> {
        let n: usize = accepted.iter().map(|(r, _)| r.events.len()).sum();
        let mut seqs = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut processed = Vec::with_capacity(n);
        let mut bodies = Vec::with_capacity(n);
        for (request, first) in accepted {
            for (i, e) in request.events.iter().enumerate() {
                seqs.push(to_i64(first + i as u64));
                ids.push(e.id.as_str());
                types.push(e.event_type.as_str());
                processed.push((!e.queued).then_some(now_us));
                bodies.push(e.body_text.as_str());
            }
        }
        let changes = to_i64(status.changes() as u64);
        c.execute(
            concat!(
                "WITH ins AS (INSERT INTO events (",
                event_cols!(),
                ") SELECT $1::text, s, i, t, p, $6::bigint, b \
                 FROM unnest($2::bigint[], $3::text[], $4::text[], $5::bigint[], $7::text[]) AS u(s, i, t, p, b)) \
                 UPDATE sessions SET last_seq = $8, status = $9, version = version + $10, \
                 updated_at_us = CASE WHEN $10 > 0 THEN $6::bigint ELSE updated_at_us END WHERE id = $1"
            ),
            &[&session_id, &seqs, &ids, &types, &processed, &now_us, &bodies, &to_i64(last_seq), &status.status().as_str(), &changes],
        )
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::conflict(session_id, "an event id of the batch is already taken")
            } else {
                e.into_store(format!("appending to session {session_id}"))
            }
        })?;
        Ok(())
    }

    fn answer(&self, session_id: &str, accepted: Vec<(Request, u64)>, now_us: i64) {
        let now = match from_micros(now_us) {
            Ok(t) => t,
            Err(e) => return fail_all(accepted.into_iter().map(|(r, _)| r).collect(), &e),
        };
        for (request, first) in accepted {
            let stored = request
                .events
                .into_iter()
                .enumerate()
                .map(|(i, e)| StoredEvent {
                    session_id: session_id.to_owned(),
                    seq: first + i as u64,
                    id: e.id,
                    event_type: e.event_type,
                    processed_at: (!e.queued).then_some(now),
                    created_at: now,
                    body: e.body,
                })
                .collect();
            let _ = request.reply.send(Ok(stored));
        }
    }
}

/// Answers every request of a failed group (nothing of it was stored).
fn fail_all(group: Vec<Request>, e: &StoreError) {
    for request in group {
        let _ = request.reply.send(Err(same_error(e)));
    }
}

/// A copy of `e` for one more caller (errors are not `Clone`).
fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::NotFound { session_id } => StoreError::not_found(session_id),
        StoreError::Corrupt { detail } => StoreError::corrupt(detail.clone()),
        other if other.is_transient() => StoreError::unavailable(other.to_string(), None),
        other => StoreError::backend("appending", other.to_string()),
    }
}
