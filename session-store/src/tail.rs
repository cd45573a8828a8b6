//! Live tails: replay from a seq, then follow, without gaps or duplicates.
//!
//! A tail never trusts notifications for content. Notifications (a local
//! append, or a PostgreSQL NOTIFY from another replica) only bump a per-session
//! [`tokio::sync::watch`] counter; the tail then reads the store from the next
//! seq it expects. The receiver is registered and marked seen *before* each
//! read, so an append that commits after the read started always bumps the
//! counter again, and an append that committed before is in the read: no
//! hand-over between replay and follow can lose or repeat an event.
//!
//! A transient read error (`StoreError::Unavailable`) does not end a tail: it
//! retries with backoff from where it was. Any other error ends it after
//! being yielded (`NotFound` once the session is deleted).
//!
//! Queued events (`processed_at = null`) that were delivered are remembered;
//! after each wake-up the tail re-reads them and emits
//! [`TailItem::Processed`] for those processed since.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::watch;

use crate::error::{Result, StoreError};
use crate::types::{EventSelector, TailItem};
use crate::SessionStore;

/// Events read per round trip while replaying.
const TAIL_READ_BATCH: usize = 500;

/// The stream returned by [`SessionStore::subscribe`].
pub type EventStream = BoxStream<'static, Result<TailItem>>;

/// Per-session change counters shared by a store's tails.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    sessions: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A receiver that changes whenever `session_id` is notified.
    pub(crate) fn watch(&self, session_id: &str) -> watch::Receiver<u64> {
        let mut map = self.lock();
        if map.len() > 1024 {
            map.retain(|_, tx| tx.receiver_count() > 0);
        }
        map.entry(session_id.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes the tails of `session_id`.
    pub(crate) fn notify(&self, session_id: &str) {
        let mut map = self.lock();
        if let Some(tx) = map.get(session_id) {
            if tx.receiver_count() == 0 {
                map.remove(session_id);
            } else {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// Wakes every tail (after a lost notification connection).
    pub(crate) fn notify_all(&self) {
        let mut map = self.lock();
        map.retain(|_, tx| tx.receiver_count() > 0);
        for tx in map.values() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

struct TailState<S> {
    store: S,
    rx: watch::Receiver<u64>,
    session_id: String,
    next_seq: u64,
    pending: BTreeSet<u64>,
    buffer: VecDeque<TailItem>,
    /// Re-read at least this often even without a notification (a safety net
    /// for backends whose notifications can be lost).
    poll: Option<Duration>,
    backoff: Duration,
    done: bool,
}

const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Builds the tail of `session_id` from `from_seq` over `store`. `rx` must
/// have been taken from the store's hub before this call.
pub(crate) fn tail<S>(
    store: S,
    rx: watch::Receiver<u64>,
    session_id: String,
    from_seq: u64,
    poll: Option<Duration>,
) -> EventStream
where
    S: SessionStore + 'static,
{
    let state = TailState {
        store,
        rx,
        session_id,
        next_seq: from_seq.max(1),
        pending: BTreeSet::new(),
        buffer: VecDeque::new(),
        poll,
        backoff: INITIAL_BACKOFF,
        done: false,
    };
    stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.buffer.pop_front() {
                return Some((Ok(item), st));
            }
            if st.done {
                return None;
            }
            match st.fill().await {
                Ok(()) => st.backoff = INITIAL_BACKOFF,
                Err(e) if e.is_transient() => {
                    // The database is briefly unreachable: keep the tail
                    // (and its position) and try again.
                    tracing::warn!(%e, session_id = %st.session_id, "live tail read failed; retrying");
                    tokio::time::sleep(st.backoff).await;
                    st.backoff = (st.backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                Err(e) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
            }
            if !st.buffer.is_empty() {
                continue;
            }
            // Nothing new since the mark: wait for a change.
            let changed = match st.poll {
                Some(every) => match tokio::time::timeout(every, st.rx.changed()).await {
                    Ok(r) => r,
                    Err(_elapsed) => Ok(()),
                },
                None => st.rx.changed().await,
            };
            if changed.is_err() {
                st.done = true;
                return Some((
                    Err(StoreError::unavailable(
                        format!("the store behind the tail of session {} was closed", st.session_id),
                        None,
                    )),
                    st,
                ));
            }
        }
    })
    .boxed()
}

impl<S: SessionStore> TailState<S> {
    /// Marks the counter seen, then reads what is new into `buffer`.
    async fn fill(&mut self) -> Result<()> {
        self.rx.borrow_and_update();
        let events = self
            .store
            .read(&self.session_id, self.next_seq, TAIL_READ_BATCH)
            .await?;
        let full = events.len() == TAIL_READ_BATCH;
        for event in events {
            if event.seq != self.next_seq {
                return Err(StoreError::corrupt(format!(
                    "session {} skipped from seq {} to {}",
                    self.session_id, self.next_seq, event.seq
                )));
            }
            self.next_seq += 1;
            if event.processed_at.is_none() {
                self.pending.insert(event.seq);
            }
            self.buffer.push_back(TailItem::Appended(event));
        }
        if full || self.pending.is_empty() {
            return Ok(());
        }
        // Queued events delivered earlier, or just now: emit the processed
        // state of those processed since (after their Appended item).
        let seqs: Vec<u64> = self.pending.iter().copied().collect();
        let current = self
            .store
            .get_events(&self.session_id, EventSelector::Seqs(seqs))
            .await?;
        for event in current {
            if event.processed_at.is_some() && self.pending.remove(&event.seq) {
                self.buffer.push_back(TailItem::Processed(event));
            }
        }
        Ok(())
    }
}
