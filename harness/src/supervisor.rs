//! Runs wakes: on demand ([`Supervisor::notify`] when new user events
//! arrive), on start and periodically for sessions whose status is `running`
//! but whose lease is free or expired (a harness died, here or on another
//! replica), with a cap on concurrent wakes.
//!
//! At most one wake per session runs in this process; a notify that arrives
//! while one runs makes it run once more when it ends, so input appended
//! after its last read is never left waiting. When another harness holds the
//! lease, the notified wake is retried until it gets the lease or the holder
//! has had time to see the input itself (twice the lease TTL).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use session_store::StoreError;

use crate::wake::{Harness, HarnessError, WakeOutcome};

/// Most sessions fetched per recovery scan.
const SCAN_LIMIT: usize = 500;

#[derive(Debug)]
struct Inner {
    harness: Harness,
    /// Sessions with a wake task here; `true`: run again when it ends.
    sessions: Mutex<HashMap<String, bool>>,
    permits: Semaphore,
    tasks: Mutex<JoinSet<()>>,
}

/// The wake scheduler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
    scanner: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Supervisor {
    /// Start: scan for sessions to recover now and every
    /// `supervisor.recovery_scan_interval`.
    pub fn start(harness: Harness) -> Self {
        let permits = Semaphore::new(harness.config().supervisor.max_concurrent_wakes);
        let interval = harness.config().supervisor.recovery_scan_interval;
        let inner = Arc::new(Inner {
            harness,
            sessions: Mutex::new(HashMap::new()),
            permits,
            tasks: Mutex::new(JoinSet::new()),
        });
        let s = Self {
            inner,
            scanner: Arc::new(Mutex::new(None)),
        };
        let me = s.clone();
        let handle = tokio::spawn(async move {
            loop {
                me.recover_once().await;
                tokio::time::sleep(interval).await;
            }
        });
        if let Ok(mut g) = s.scanner.lock() {
            *g = Some(handle);
        }
        s
    }

    /// One recovery scan: wake every running session nobody holds. Returns
    /// how many were notified.
    pub async fn recover_once(&self) -> usize {
        match self
            .inner
            .harness
            .store()
            .sessions_needing_wake(SCAN_LIMIT)
            .await
        {
            Ok(ids) => {
                if !ids.is_empty() {
                    tracing::info!(sessions = ids.len(), "recovering running sessions");
                }
                for id in &ids {
                    self.notify(id);
                }
                ids.len()
            }
            Err(e) => {
                tracing::warn!(%e, "recovery scan failed");
                0
            }
        }
    }

    /// New input for `session_id`: make sure a wake runs after now.
    pub fn notify(&self, session_id: &str) {
        {
            let Ok(mut map) = self.inner.sessions.lock() else {
                return;
            };
            if let Some(again) = map.get_mut(session_id) {
                *again = true;
                return;
            }
            map.insert(session_id.to_owned(), false);
        }
        let inner = self.inner.clone();
        let sid = session_id.to_owned();
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            while tasks.try_join_next().is_some() {}
            tasks.spawn(async move { run_session(inner, sid).await });
        }
    }

    /// Sessions with a wake queued or running here.
    pub fn active(&self) -> usize {
        self.inner.sessions.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Stop scanning, let running wakes finish for up to `grace`, then abort
    /// the rest (an aborted wake is a crash the next start recovers from).
    /// Returns whether every wake finished in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        if let Ok(mut g) = self.scanner.lock() {
            if let Some(h) = g.take() {
                h.abort();
            }
        }
        let mut tasks = match self.inner.tasks.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => return false,
        };
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(Some(_)) => {}
                Ok(None) => return true,
                Err(_) => {
                    tracing::warn!(left = tasks.len(), "shutdown grace over; aborting wakes");
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    return false;
                }
            }
        }
    }
}

async fn run_session(inner: Arc<Inner>, sid: String) {
    let cfg = inner.harness.config().clone();
    let busy_give_up = cfg.lease_ttl * 2;
    let mut busy_since: Option<Instant> = None;
    let mut error_backoff = cfg.retry.initial_backoff.max(Duration::from_millis(50));
    let mut errors = 0u32;
    loop {
        let outcome = match inner.permits.acquire().await {
            Ok(_permit) => inner.harness.wake(&sid).await,
            Err(_) => return,
        };
        let retry_in = match outcome {
            Ok(WakeOutcome::Busy { .. }) => {
                let since = *busy_since.get_or_insert_with(Instant::now);
                (since.elapsed() < busy_give_up).then_some(cfg.supervisor.busy_retry_interval)
            }
            Ok(_) => None,
            Err(HarnessError::Store {
                source: StoreError::NotFound { .. },
                ..
            }) => None,
            Err(e) => {
                errors += 1;
                if errors >= cfg.retry.max_attempts {
                    // The recovery scan picks a running session up again later.
                    tracing::warn!(session_id = %sid, %e, errors, "wake failed; giving up for now");
                    None
                } else {
                    tracing::warn!(session_id = %sid, %e, errors, "wake failed; retrying");
                    let d = error_backoff;
                    error_backoff =
                        (error_backoff * 2).min(cfg.retry.max_backoff.max(Duration::from_secs(1)));
                    Some(d)
                }
            }
        };
        if let Some(d) = retry_in {
            tokio::time::sleep(d).await;
            continue;
        }
        busy_since = None;
        errors = 0;
        let Ok(mut map) = inner.sessions.lock() else {
            return;
        };
        match map.get_mut(&sid) {
            Some(again) if *again => *again = false,
            _ => {
                map.remove(&sid);
                return;
            }
        }
    }
}
