//! The single writer thread and its group commit.
//!
//! Every write of the SQLite store is a job sent to one thread that owns the
//! only writing connection. The thread takes the first queued job, then every
//! job already queued behind it (up to a cap), and runs them all in one
//! `BEGIN IMMEDIATE` transaction, each inside its own savepoint so a refused
//! job (fenced, conflict) leaves no trace and does not spoil the others. One
//! `COMMIT` (one WAL fsync with `synchronous=FULL`) then makes the whole group
//! durable, and only after it returns is each caller answered and are tails
//! woken. If the commit fails, every job of the group gets the error and none
//! of them took effect.

use std::sync::Arc;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::map_err;
use crate::clock::Clock;
use crate::error::{Result, StoreError};
use crate::tail::Hub;
use crate::types::to_micros;

/// A write waiting for the writer thread.
pub(crate) trait WriteJob: Send {
    /// Runs the job inside the open transaction; `true` if it succeeded.
    fn run(&mut self, conn: &Connection, now_us: i64) -> bool;
    /// Answers the caller once the group's fate is known.
    fn finish(self: Box<Self>, committed: Result<()>);
}

type JobFn<T> = Box<dyn FnOnce(&Connection, i64) -> Result<T> + Send>;

/// A job returning `T` to an async caller.
pub(crate) struct Job<T> {
    work: Option<JobFn<T>>,
    outcome: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
    notify: Option<(Arc<Hub>, String)>,
}

impl<T: Send + 'static> Job<T> {
    pub(crate) fn boxed(
        work: JobFn<T>,
        notify: Option<(Arc<Hub>, String)>,
    ) -> (Box<dyn WriteJob>, oneshot::Receiver<Result<T>>) {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            work: Some(work),
            outcome: None,
            reply,
            notify,
        };
        (Box::new(job), rx)
    }
}

impl<T: Send + 'static> WriteJob for Job<T> {
    fn run(&mut self, conn: &Connection, now_us: i64) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let outcome = work(conn, now_us);
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<()>) {
        let answer = match (self.outcome, committed) {
            // A job that was refused had no effect whatever the commit did.
            (Some(Err(refused)), _) => Err(refused),
            (Some(Ok(value)), Ok(())) => {
                if let Some((hub, session_id)) = &self.notify {
                    hub.notify(session_id);
                }
                Ok(value)
            }
            (_, Err(e)) => Err(e),
            (None, Ok(())) => Err(StoreError::backend(
                "running a write",
                "the write panicked and was rolled back (a bug in the session store)",
            )),
        };
        // The caller may have gone away (cancelled); the write stands anyway.
        let _ = self.reply.send(answer);
    }
}

/// Runs the writer loop until every sender is dropped.
pub(crate) fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<Box<dyn WriteJob>>,
    clock: Arc<dyn Clock>,
    max_group: usize,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < max_group {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let committed = commit_group(&conn, &mut jobs, to_micros(clock.now()));
        if let Err(e) = &committed {
            tracing::warn!(%e, jobs = jobs.len(), "session store group commit failed");
        }
        for job in jobs {
            job.finish(clone_err(&committed));
        }
    }
    tracing::debug!("session store writer stopped");
}

fn commit_group(conn: &Connection, jobs: &mut [Box<dyn WriteJob>], now_us: i64) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| map_err("starting a write transaction", e))?;
    let result = (|| -> Result<()> {
        for job in jobs.iter_mut() {
            conn.execute_batch("SAVEPOINT job")
                .map_err(|e| map_err("opening a savepoint", e))?;
            // A panicking job (a bug) must not take the writer thread, and
            // with it every later write, down: it counts as a refused job.
            let ran =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run(conn, now_us)));
            if ran.is_err() {
                tracing::error!("a session store write panicked; it was rolled back");
            }
            if ran.unwrap_or(false) {
                conn.execute_batch("RELEASE job")
                    .map_err(|e| map_err("releasing a savepoint", e))?;
            } else {
                conn.execute_batch("ROLLBACK TO job; RELEASE job")
                    .map_err(|e| map_err("rolling back a savepoint", e))?;
            }
        }
        conn.execute_batch("COMMIT")
            .map_err(|e| map_err("committing a write transaction", e))
    })();
    if result.is_err() && !conn.is_autocommit() {
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::error!(%e, "session store rollback after a failed group failed");
        }
    }
    result
}

/// The group's outcome for one job (errors are not `Clone`).
fn clone_err(r: &Result<()>) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(StoreError::Corrupt { detail }) => Err(StoreError::corrupt(detail.clone())),
        Err(e) => Err(StoreError::unavailable(
            format!("the write was not committed: {e}"),
            None,
        )),
    }
}
