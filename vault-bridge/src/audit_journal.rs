//! The bridge's journal of credential uses: every [`AuditEvent`] the egress
//! proxy reports gets the next sequence number and is appended, as a
//! [`CredentialUse`], to `<data_dir>/audit/credential-uses.jsonl` (mode
//! `0600`, one JSON object per line, never a secret value), then broadcast
//! to the agent-channel subscribers ([`crate::agent_channel_audit`]).
//!
//! The sequence survives restarts (the journal is read back on open) and the
//! journal is bounded: it keeps the last `max_records` uses in memory and on
//! disk (the file is rewritten to those, atomically, once it holds twice as
//! many). A subscriber that asks for uses older than that learns of the gap
//! (logged on both sides); the agent's hash-chained audit record is where
//! uses are kept for good.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use protocol::bridge::{CredentialUse, UseOutcome};
use tokio::sync::broadcast;

use crate::egress::{AuditEvent, AuditOutcome, AuditSink};

/// How many uses the journal keeps unless told otherwise.
pub const DEFAULT_MAX_RECORDS: usize = 10_000;
/// Capacity of the live broadcast (a slower subscriber resumes from the journal).
const BROADCAST_CAPACITY: usize = 1024;

/// Why the journal could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The journal file or its directory could not be read or written.
    #[error("credential-use journal {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The journal path under the bridge's data dir.
pub fn journal_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit").join("credential-uses.jsonl")
}

#[derive(Debug)]
struct State {
    file: File,
    next_seq: u64,
    held: VecDeque<CredentialUse>,
    lines_in_file: usize,
}

/// What a new subscriber gets: the held uses above its `after_seq`, the
/// live feed from there on, and how many it asked for that are gone.
#[derive(Debug)]
pub struct Subscription {
    /// Held uses with a sequence number above `after_seq`, in order.
    pub backlog: Vec<CredentialUse>,
    /// Uses recorded after the backlog was taken.
    pub live: broadcast::Receiver<CredentialUse>,
    /// Uses above `after_seq` that the journal's bound already dropped.
    pub dropped: u64,
}

/// The credential-use journal and its live feed. An [`AuditSink`].
#[derive(Debug)]
pub struct AuditJournal {
    path: PathBuf,
    max_records: usize,
    state: Mutex<State>,
    tx: broadcast::Sender<CredentialUse>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

fn open_append(path: &Path) -> Result<File, JournalError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))
}

impl AuditJournal {
    /// Open (creating) the journal at `path`, keeping at most `max_records`
    /// uses (at least one). A line that does not parse (a torn last write)
    /// is skipped with a warning.
    pub fn open(path: &Path, max_records: usize) -> Result<Self, JournalError> {
        let max_records = max_records.max(1);
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(path))?;
        }
        let mut held = VecDeque::new();
        let mut last_seq = 0u64;
        let mut lines_in_file = 0usize;
        match File::open(path) {
            Ok(f) => {
                for (i, line) in BufReader::new(f).lines().enumerate() {
                    let line = line.map_err(io_err(path))?;
                    lines_in_file += 1;
                    match serde_json::from_str::<CredentialUse>(&line) {
                        Ok(u) if u.seq > last_seq => {
                            last_seq = u.seq;
                            held.push_back(u);
                            if held.len() > max_records {
                                held.pop_front();
                            }
                        }
                        Ok(u) => tracing::warn!(
                            path = %path.display(), line = i + 1, seq = u.seq,
                            "credential-use journal: sequence out of order; line skipped"
                        ),
                        Err(error) => tracing::warn!(
                            path = %path.display(), line = i + 1, %error,
                            "credential-use journal: unreadable line skipped"
                        ),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(path)(e)),
        }
        let file = open_append(path)?;
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        let journal = Self {
            path: path.to_owned(),
            max_records,
            state: Mutex::new(State {
                file,
                next_seq: last_seq + 1,
                held,
                lines_in_file,
            }),
            tx,
        };
        tracing::info!(path = %path.display(), last_seq, max_records, "credential-use journal open");
        Ok(journal)
    }

    /// The journal's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last sequence number given out (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record one use: next sequence number, appended, broadcast. Returns it.
    pub fn append(&self, event: AuditEvent) -> CredentialUse {
        let (outcome, status) = map_outcome(&event.outcome);
        let (policy, reason) = match &event.outcome {
            AuditOutcome::HostRefused { policy, message } => {
                (Some(policy.key().to_owned()), Some(message.clone()))
            }
            _ => (None, None),
        };
        let mut st = self.lock();
        let use_ = CredentialUse {
            seq: st.next_seq,
            at: rfc3339_now(),
            sandbox_id: event.sandbox_id,
            session_id: event.session_id,
            credential_id: event.credential_id,
            vault_id: event.vault_id,
            host: event.host,
            method: event.method,
            path: event.path,
            outcome,
            status,
            policy,
            reason,
        };
        st.next_seq += 1;
        match serde_json::to_vec(&use_) {
            Ok(mut line) => {
                line.push(b'\n');
                if let Err(error) = st.file.write_all(&line) {
                    tracing::error!(path = %self.path.display(), %error, seq = use_.seq,
                        "credential-use journal write failed; the use is still sent to subscribers");
                } else {
                    st.lines_in_file += 1;
                }
            }
            Err(error) => tracing::error!(%error, "credential use not serializable"),
        }
        st.held.push_back(use_.clone());
        while st.held.len() > self.max_records {
            st.held.pop_front();
        }
        if st.lines_in_file >= self.max_records.saturating_mul(2) {
            if let Err(error) = self.compact(&mut st) {
                tracing::warn!(%error, "credential-use journal compaction failed");
            }
        }
        // Sent under the lock, so a subscriber's backlog and feed never overlap or miss.
        let _ = self.tx.send(use_.clone());
        drop(st);
        use_
    }

    /// Rewrite the file to the held uses (write a temporary file, rename).
    fn compact(&self, st: &mut State) -> Result<(), JournalError> {
        let tmp = self.path.with_extension("jsonl.tmp");
        {
            let mut f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            let mut out = Vec::new();
            for u in &st.held {
                if let Ok(line) = serde_json::to_vec(u) {
                    out.extend_from_slice(&line);
                    out.push(b'\n');
                }
            }
            f.write_all(&out).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io_err(&self.path))?;
        st.file = open_append(&self.path)?;
        st.lines_in_file = st.held.len();
        Ok(())
    }

    /// Held uses above `after_seq` plus the live feed after them.
    pub fn subscribe(&self, after_seq: u64) -> Subscription {
        let st = self.lock();
        let live = self.tx.subscribe();
        let backlog: Vec<CredentialUse> = st
            .held
            .iter()
            .filter(|u| u.seq > after_seq)
            .cloned()
            .collect();
        let first_held = st.held.front().map_or(st.next_seq, |u| u.seq);
        let dropped = first_held.saturating_sub(after_seq + 1);
        Subscription {
            backlog,
            live,
            dropped,
        }
    }

    /// Held uses above `after_seq` (a lagging subscriber's catch-up).
    pub fn held_after(&self, after_seq: u64) -> Vec<CredentialUse> {
        self.lock()
            .held
            .iter()
            .filter(|u| u.seq > after_seq)
            .cloned()
            .collect()
    }
}

impl AuditSink for AuditJournal {
    fn record(&self, event: AuditEvent) {
        let u = self.append(event);
        tracing::info!(
            target: "airlock::egress::audit",
            seq = u.seq,
            credential_id = u.credential_id.as_deref().unwrap_or("-"),
            vault_id = u.vault_id.as_deref().unwrap_or("-"),
            host = %u.host,
            method = %u.method,
            path = %u.path,
            sandbox_id = %u.sandbox_id,
            session_id = %u.session_id,
            outcome = %u.outcome,
            status = u.status.unwrap_or(0),
            "credential use"
        );
    }
}

/// The wire outcome and upstream status of an [`AuditOutcome`].
pub fn map_outcome(o: &AuditOutcome) -> (UseOutcome, Option<u16>) {
    match o {
        AuditOutcome::Injected { status } => (UseOutcome::Injected, Some(*status)),
        AuditOutcome::UpstreamFailed => (UseOutcome::UpstreamFailed, None),
        AuditOutcome::SecretUnavailable => (UseOutcome::SecretUnavailable, None),
        AuditOutcome::PlaceholderRefused => (UseOutcome::PlaceholderRefused, None),
        AuditOutcome::HostRefused { .. } => (UseOutcome::HostRefused, None),
    }
}

/// Now as RFC 3339 UTC with microseconds (`2026-12-06T15:08:32.123456Z`).
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_micros())
}

fn rfc3339(secs: u64, micros: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(path: &str) -> AuditEvent {
        AuditEvent {
            credential_id: Some("vcrd_1".into()),
            vault_id: Some("vlt_1".into()),
            host: "git.example.com".into(),
            method: "GET".into(),
            path: path.into(),
            sandbox_id: "sbx_1".into(),
            session_id: "sesn_1".into(),
            outcome: AuditOutcome::Injected { status: 200 },
        }
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(rfc3339(1_796_483_312, 0), "2026-12-05T15:08:32.000000Z");
    }

    #[test]
    fn outcomes_map_to_the_wire() {
        assert_eq!(
            map_outcome(&AuditOutcome::Injected { status: 404 }),
            (UseOutcome::Injected, Some(404))
        );
        assert_eq!(
            map_outcome(&AuditOutcome::PlaceholderRefused),
            (UseOutcome::PlaceholderRefused, None)
        );
        assert_eq!(
            map_outcome(&AuditOutcome::SecretUnavailable),
            (UseOutcome::SecretUnavailable, None)
        );
        assert_eq!(
            map_outcome(&AuditOutcome::UpstreamFailed),
            (UseOutcome::UpstreamFailed, None)
        );
    }

    #[test]
    fn a_host_refusal_names_its_policy_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let j = AuditJournal::open(&journal_path(dir.path()), 100).unwrap();
        let mut e = event("");
        e.credential_id = None;
        e.vault_id = None;
        e.method = "CONNECT".into();
        e.outcome = AuditOutcome::HostRefused {
            policy: crate::egress::PolicyName::AgentPolicy,
            message: "host b.test port 443 is in the session's allowed hosts but not in this agent's policy.egress_hosts".into(),
        };
        let u = j.append(e);
        assert_eq!(u.outcome, UseOutcome::HostRefused);
        assert_eq!(u.policy.as_deref(), Some("policy.egress_hosts"));
        assert!(u.reason.as_deref().unwrap().contains("b.test port 443"));
        assert_eq!((u.credential_id, u.status), (None, None));
        // Other outcomes carry neither.
        let u = j.append(event("/x"));
        assert_eq!((u.policy, u.reason), (None, None));
    }

    #[test]
    fn seq_survives_a_restart_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(dir.path());
        {
            let j = AuditJournal::open(&path, 100).unwrap();
            assert_eq!(j.append(event("/a")).seq, 1);
            assert_eq!(j.append(event("/b")).seq, 2);
        }
        let j = AuditJournal::open(&path, 100).unwrap();
        assert_eq!(j.last_seq(), 2);
        let u = j.append(event("/c"));
        assert_eq!(u.seq, 3);
        assert_eq!(u.status, Some(200));
        let held: Vec<String> = j.held_after(0).into_iter().map(|u| u.path).collect();
        assert_eq!(held, ["/a", "/b", "/c"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(dir.path());
        {
            let j = AuditJournal::open(&path, 100).unwrap();
            j.append(event("/a"));
        }
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":2,\"at\":\"x").unwrap();
        drop(f);
        let j = AuditJournal::open(&path, 100).unwrap();
        assert_eq!(j.last_seq(), 1);
    }

    #[test]
    fn the_journal_is_bounded_and_keeps_its_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(dir.path());
        {
            let j = AuditJournal::open(&path, 3).unwrap();
            for i in 0..10 {
                j.append(event(&format!("/{i}")));
            }
            let lines = std::fs::read_to_string(&path).unwrap().lines().count();
            assert!(lines < 6, "file holds {lines} lines, bound 3 (x2)");
        }
        let j = AuditJournal::open(&path, 3).unwrap();
        assert_eq!(j.last_seq(), 10);
        let seqs: Vec<u64> = j.held_after(0).iter().map(|u| u.seq).collect();
        assert_eq!(seqs, [8, 9, 10]);
        let sub = j.subscribe(2);
        assert_eq!(sub.dropped, 5, "3..=7 are gone");
        assert_eq!(sub.backlog.len(), 3);
        assert_eq!(j.subscribe(7).dropped, 0);
        assert_eq!(j.subscribe(10).dropped, 0);
        assert_eq!(j.append(event("/x")).seq, 11);
    }

    #[tokio::test]
    async fn subscribe_replays_after_seq_then_streams_live() {
        let dir = tempfile::tempdir().unwrap();
        let j = AuditJournal::open(&journal_path(dir.path()), 100).unwrap();
        for p in ["/a", "/b", "/c"] {
            j.append(event(p));
        }
        let mut sub = j.subscribe(1);
        let backlog: Vec<u64> = sub.backlog.iter().map(|u| u.seq).collect();
        assert_eq!(backlog, [2, 3]);
        assert_eq!(sub.dropped, 0);
        j.append(event("/d"));
        let live = sub.live.recv().await.unwrap();
        assert_eq!((live.seq, live.path.as_str()), (4, "/d"));
    }
}
