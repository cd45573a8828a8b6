//! The shipper's cursor: the last record the receiver's socket accepted
//! (`seq` and its `hash`), in `audit-ship.cursor` in the audit dir, replaced
//! atomically (write a temporary file, fsync, rename, fsync the dir) after
//! every batch. A restart resumes at `seq + 1`, after checking that the
//! record at `seq` still has that hash (a log replaced under the shipper is
//! refused, not shipped again or skipped).
//!
//! One shipper at a time: [`ShipLock`] holds an exclusive `flock` on
//! `audit-ship.lock` for the shipper's life, so a shipper still finishing
//! its batch (its agent was killed) and the next agent's shipper never ship
//! at once. The kernel drops the lock when the holder dies.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::AuditCmdError;

/// The cursor file's name in the audit dir.
pub const CURSOR_FILE: &str = "audit-ship.cursor";
/// The lock file's name in the audit dir.
pub const LOCK_FILE: &str = "audit-ship.lock";

/// Where shipping stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The last record shipped (0: none).
    pub seq: u64,
    /// Its hash (empty when `seq` is 0).
    pub hash: String,
    /// When the cursor was written (RFC 3339 UTC).
    #[serde(default)]
    pub at: String,
}

impl Cursor {
    /// Nothing shipped yet.
    pub fn start() -> Self {
        Self {
            seq: 0,
            hash: String::new(),
            at: String::new(),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditCmdError + '_ {
    move |source| AuditCmdError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Read the cursor of `dir` ([`Cursor::start`] when there is none).
pub fn load(dir: &Path) -> Result<Cursor, AuditCmdError> {
    let path = dir.join(CURSOR_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| AuditCmdError::Malformed {
            path,
            line: 1,
            reason: format!("not a shipper cursor: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cursor::start()),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Replace the cursor of `dir` atomically and durably.
pub fn store(dir: &Path, cursor: &Cursor) -> Result<(), AuditCmdError> {
    let path = dir.join(CURSOR_FILE);
    let tmp = dir.join(format!("{CURSOR_FILE}.tmp"));
    let mut text = serde_json::to_vec(cursor).map_err(|e| AuditCmdError::Io {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    text.push(b'\n');
    {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&text).map_err(io(&tmp))?;
        f.sync_data().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// The exclusive lock of one shipper on an audit dir (released on drop or
/// when the process dies).
#[derive(Debug)]
pub struct ShipLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl ShipLock {
    /// Take the lock, or `None` when another process holds it.
    pub fn try_acquire(dir: &Path) -> Result<Option<Self>, AuditCmdError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(Self { _lock: lock, path })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(AuditCmdError::Io {
                path,
                source: std::io::Error::from(errno),
            }),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), Cursor::start());
        let c = Cursor {
            seq: 42,
            hash: "ab".into(),
            at: "2026-12-06T20:00:00Z".into(),
        };
        store(dir.path(), &c).unwrap();
        assert_eq!(load(dir.path()).unwrap(), c);
        let held = ShipLock::try_acquire(dir.path()).unwrap().unwrap();
        assert!(ShipLock::try_acquire(dir.path()).unwrap().is_none());
        drop(held);
        assert!(ShipLock::try_acquire(dir.path()).unwrap().is_some());
    }
}
