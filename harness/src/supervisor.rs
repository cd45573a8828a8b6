//! Runs wakes: on demand ([`Supervisor::notify`] when new user events
//! arrive), on start and periodically for sessions whose lease is free or
//! expired and that are `running` (a harness died, here or on another
//! replica) or hold queued input (the control plane died between appending
//! a user event and waking the session), with a cap on concurrent wakes.
//!
//! Queued input may legitimately wait (a message sent while a tool call
//! waits for the client), so the scan would find such a session every
//! time. The supervisor remembers, per session, the last seq at which a wake
//! here ended cleanly (`Idle` or `NothingToDo`) and skips the session in
//! later scans while its last seq is unchanged; a wake that failed is not
//! remembered. The memo is in memory and bounded: losing it costs one wake.
//!
//! On start, before its first scan, the supervisor takes back the leases
//! its instance id still holds ([`SessionStore::reclaim_leases`]: a
//! restarted process that kept its id, e.g. from the control plane's data
//! dir): each gets a new grant with a higher epoch, so anything left of the
//! previous process is fenced, and those sessions are woken at once with it
//! instead of after the lease TTL. A failed reclaim is tried again before
//! each scan until it succeeds (the leases lapse meanwhile, and the scan
//! finds them then).
//!
//! At most one wake per session runs in this process; a notify that arrives
//! while one runs makes it run once more when it ends, so input appended
//! after its last read is never left waiting. When another harness holds the
//! lease, the notified wake is retried until it gets the lease or the holder
//! has had time to see the input itself (twice the lease TTL).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use session_store::{Lease, StoreError};
use settings::{BackoffPolicy, Jitter};

use crate::wake::{Harness, HarnessError, WakeOutcome};

/// Most sessions fetched per page of a recovery scan.
const SCAN_LIMIT: usize = 500;

/// Most sessions remembered as settled (beyond it, new ones are not
/// remembered and may be woken once per scan).
const SETTLED_MAX: usize = 100_000;

#[derive(Debug)]
struct Inner {
    harness: Harness,
    /// Sessions with a wake task here; `true`: run again when it ends.
    sessions: Mutex<HashMap<String, bool>>,
    /// Sessions whose last wake here ended with nothing more to do, with the
    /// last seq that wake saw: the recovery scan skips them until it changes.
    settled: Mutex<HashMap<String, u64>>,
    permits: Semaphore,
    tasks: Mutex<JoinSet<()>>,
    /// Leases taken back at start, waiting for their session's wake.
    reclaimed: Mutex<HashMap<String, Lease>>,
}

/// The wake scheduler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
    scanner: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Supervisor {
    /// Start: take back this instance's leases
    /// ([`Supervisor::reclaim_own_leases`]), then scan for sessions to
    /// recover now and every `supervisor.recovery_scan_interval`.
    pub fn start(harness: Harness) -> Self {
        let interval = harness.config().supervisor.recovery_scan_interval;
        let s = Self::manual(harness);
        let me = s.clone();
        let handle = tokio::spawn(async move {
            let mut reclaimed = false;
            loop {
                if !reclaimed {
                    reclaimed = me.reclaim_own_leases().await.is_ok();
                }
                me.recover_once().await;
                tokio::time::sleep(interval).await;
            }
        });
        if let Ok(mut g) = s.scanner.lock() {
            *g = Some(handle);
        }
        s
    }

    /// A supervisor without the periodic scan: it wakes on
    /// [`Supervisor::notify`] and scans only when [`Supervisor::recover_once`]
    /// is called (tests, tools).
    pub fn manual(harness: Harness) -> Self {
        let permits = Semaphore::new(harness.config().supervisor.max_concurrent_wakes);
        let inner = Arc::new(Inner {
            harness,
            sessions: Mutex::new(HashMap::new()),
            settled: Mutex::new(HashMap::new()),
            permits,
            tasks: Mutex::new(JoinSet::new()),
            reclaimed: Mutex::new(HashMap::new()),
        });
        Self {
            inner,
            scanner: Arc::new(Mutex::new(None)),
        }
    }

    /// Take back every lease this instance id still holds (a previous
    /// process with the same id died holding them), each with a new, higher
    /// epoch, and wake those sessions now with it. Returns how many.
    /// [`Supervisor::start`] calls it before its first scan.
    pub async fn reclaim_own_leases(&self) -> Result<usize, StoreError> {
        let cfg = self.inner.harness.config();
        let started = Instant::now();
        let leases = match self
            .inner
            .harness
            .store()
            .reclaim_leases(&cfg.instance_id, cfg.lease_ttl)
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%e, instance_id = %cfg.instance_id, "reclaiming this instance's leases failed; retrying before the next scan");
                return Err(e);
            }
        };
        let n = leases.len();
        let ids: Vec<String> = leases.iter().map(|l| l.session_id.clone()).collect();
        if let Ok(mut m) = self.inner.reclaimed.lock() {
            for l in leases {
                m.insert(l.session_id.clone(), l);
            }
        }
        for id in &ids {
            self.notify(id);
        }
        if n > 0 {
            tracing::info!(
                sessions = n,
                instance_id = %cfg.instance_id,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "reclaimed this instance's leases; resuming those sessions"
            );
        }
        Ok(n)
    }

    /// One recovery scan: wake every session nobody holds that is running
    /// or has queued input, except those a wake here left settled at the
    /// same last seq. Returns how many were notified.
    pub async fn recover_once(&self) -> usize {
        let mut after = 0;
        let mut seen = HashSet::new();
        let mut notified = 0;
        loop {
            let page = match self
                .inner
                .harness
                .store()
                .sessions_needing_wake(after, SCAN_LIMIT)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(%e, "recovery scan failed");
                    return notified;
                }
            };
            for c in &page {
                seen.insert(c.session_id.clone());
                let settled = self
                    .inner
                    .settled
                    .lock()
                    .map(|m| m.get(&c.session_id) == Some(&c.last_seq))
                    .unwrap_or(false);
                if settled {
                    continue;
                }
                tracing::debug!(session_id = %c.session_id, last_seq = c.last_seq, "recovering session");
                self.notify(&c.session_id);
                notified += 1;
            }
            match page.last() {
                Some(last) if page.len() == SCAN_LIMIT => after = last.position,
                _ => break,
            }
        }
        // Forget sessions that no longer need a wake.
        if let Ok(mut m) = self.inner.settled.lock() {
            m.retain(|id, _| seen.contains(id));
        }
        if notified > 0 {
            tracing::info!(sessions = notified, "recovering sessions");
        }
        notified
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
    /// the rest (an aborted wake is a crash the next start recovers from)
    /// and release their leases, so another replica can wake those sessions
    /// at once instead of after the lease TTL.
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
                Ok(None) => {
                    self.release_unused_reclaimed().await;
                    return true;
                }
                Err(_) => {
                    tracing::warn!(left = tasks.len(), "shutdown grace over; aborting wakes");
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    // The aborted wakes' leases would block their sessions
                    // on every other replica until they expire.
                    self.inner.harness.release_abandoned_leases().await;
                    self.release_unused_reclaimed().await;
                    return false;
                }
            }
        }
    }

    /// Release reclaimed leases no wake used (shutdown came first).
    async fn release_unused_reclaimed(&self) {
        let left: Vec<Lease> = match self.inner.reclaimed.lock() {
            Ok(mut m) => m.drain().map(|(_, l)| l).collect(),
            Err(_) => return,
        };
        for lease in left {
            let _ = self.inner.harness.store().release_lease(&lease).await;
        }
    }
}

async fn run_session(inner: Arc<Inner>, sid: String) {
    let cfg = inner.harness.config().clone();
    let busy_give_up = cfg.lease_ttl * 2;
    let mut busy_since: Option<Instant> = None;
    // Wake retries after errors: the retry policy's first wait (at least
    // 50 ms) doubling to its cap (at least 1 s), not jittered.
    let error_backoff = BackoffPolicy::new(
        cfg.retry.backoff.base.max(Duration::from_millis(50)),
        cfg.retry.backoff.cap.max(Duration::from_secs(1)),
        Jitter::None,
    );
    let mut errors = 0u32;
    loop {
        let outcome = match inner.permits.acquire().await {
            Ok(_permit) => {
                let held = inner.reclaimed.lock().ok().and_then(|mut m| m.remove(&sid));
                inner.harness.wake_with_lease(&sid, held).await
            }
            Err(_) => return,
        };
        if let Ok(mut m) = inner.settled.lock() {
            match &outcome {
                Ok((WakeOutcome::Idle(_) | WakeOutcome::NothingToDo, seq)) => {
                    if m.len() < SETTLED_MAX || m.contains_key(&sid) {
                        m.insert(sid.clone(), *seq);
                    }
                }
                _ => {
                    m.remove(&sid);
                }
            }
        }
        let retry_in = match outcome {
            Ok((WakeOutcome::Busy { .. }, _)) => {
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
                    // The recovery scan picks the session up again later.
                    tracing::warn!(session_id = %sid, %e, errors, "wake failed; giving up for now");
                    None
                } else {
                    tracing::warn!(session_id = %sid, %e, errors, "wake failed; retrying");
                    Some(error_backoff.delay(errors - 1, 0.0))
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
