//! One store tail per session for every live SSE reader of it.
//!
//! Without this, each open stream runs its own tail, and every append makes
//! every reader re-read the store: N readers cost N reads per event. A
//! [`Hub`] holds one tail per session (started at the session's next seq
//! when its first live reader arrives) and broadcasts its items; readers
//! subscribe to the broadcast *before* they take their own start seq from
//! the store, then drop items below it, so a reader sees exactly what was
//! appended after it opened, as a tail of its own would. A reader that
//! falls more than `api.sse_buffer_events` items behind continues on a tail
//! of its own from its last delivered seq (gap-free, as a resume is). The
//! hub ends with its last reader.
//!
//! Streams that resume (`after`, `Last-Event-ID`) use a tail of their own:
//! they replay history the hub never saw.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use session_store::{SessionStore, StoreError, TailItem};
use tokio::sync::broadcast;

/// What the hub forwards: a tail item, or the error that ended the tail.
#[derive(Debug, Clone)]
pub(crate) enum HubItem {
    /// An item of the shared tail.
    Item(TailItem),
    /// The tail failed; `deleted` when the session is gone.
    Failed {
        deleted: bool,
        transient: bool,
        message: String,
    },
}

/// The shared tail of one session.
#[derive(Debug)]
pub(crate) struct SessionHub {
    tx: broadcast::Sender<Arc<HubItem>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SessionHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SessionHub {
    /// A receiver of everything forwarded from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<HubItem>> {
        self.tx.subscribe()
    }
}

/// The hubs of the process, by session.
#[derive(Debug)]
pub(crate) struct Hubs {
    hubs: Mutex<HashMap<String, Weak<SessionHub>>>,
    capacity: usize,
}

impl Hubs {
    pub(crate) fn new(capacity: usize) -> Self {
        Hubs {
            hubs: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The hub of `session_id`, started at the session's next seq if none
    /// runs. The caller keeps the `Arc` while it reads.
    pub(crate) async fn get(
        &self,
        store: &Arc<dyn SessionStore>,
        session_id: &str,
    ) -> Result<Arc<SessionHub>, StoreError> {
        if let Some(hub) = self.lock().get(session_id).and_then(Weak::upgrade) {
            return Ok(hub);
        }
        let from = store.get_session(session_id).await?.last_seq + 1;
        let mut tail = store.subscribe(session_id, from).await?;
        let (tx, _) = broadcast::channel(self.capacity);
        let forward = tx.clone();
        let sid = session_id.to_owned();
        let task = tokio::spawn(async move {
            use futures::StreamExt;
            while let Some(item) = tail.next().await {
                let (msg, end) = match item {
                    Ok(i) => (HubItem::Item(i), false),
                    Err(e) => (
                        HubItem::Failed {
                            deleted: matches!(e, StoreError::NotFound { .. }),
                            transient: e.is_transient(),
                            message: e.to_string(),
                        },
                        true,
                    ),
                };
                // No receiver: the last reader is gone and the hub is about
                // to be dropped (which aborts this task).
                let _ = forward.send(Arc::new(msg));
                if end {
                    tracing::debug!(session_id = %sid, "shared tail ended");
                    return;
                }
            }
        });
        let hub = Arc::new(SessionHub { tx, task });
        let mut hubs = self.lock();
        // Another reader may have started one meanwhile: use the first.
        if let Some(existing) = hubs.get(session_id).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        hubs.retain(|_, w| w.strong_count() > 0);
        hubs.insert(session_id.to_owned(), Arc::downgrade(&hub));
        Ok(hub)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<SessionHub>>> {
        self.hubs.lock().unwrap_or_else(|p| p.into_inner())
    }
}
