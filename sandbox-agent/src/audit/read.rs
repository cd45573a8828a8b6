//! Reading the audit log: records in chain order across the rotated
//! segments and `audit.jsonl`, optionally filtered, and following the log
//! as it grows (`tail -f`, the syslog shipper).
//!
//! ```no_run
//! # fn main() -> Result<(), sandbox_agent::audit::AuditError> {
//! use sandbox_agent::audit::{Filter, Reader};
//! let dir = std::path::Path::new("/var/lib/airlock-agent");
//! let filter = Filter { tool: Some("bash".into()), ..Filter::default() };
//! // every record after seq 1000, then whatever is appended later
//! let mut reader = Reader::from_seq(dir, 1000).with_filter(filter);
//! loop {
//!     while let Some(record) = reader.next_record()? {
//!         println!("{} {}", record.seq, record.raw);
//!     }
//!     // nothing more for now: `reader.position()` is the resume cursor
//!     std::thread::sleep(std::time::Duration::from_millis(200));
//! }
//! # }
//! ```
//!
//! The reader does not verify the chain (use [`super::verify_dir`]); it
//! yields only whole lines (a line being written is picked up once its
//! newline is there) and never a line twice: it moves by seq, so a
//! rotation between two polls is followed without a gap or a duplicate.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::chain::segments;
use super::{AuditError, AuditEvent, CURRENT_FILE};

/// One audit line as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Position in the chain (1-based, continuous across files).
    pub seq: u64,
    /// When the line was written (RFC 3339 UTC, as in the line).
    pub at: String,
    /// What the line records (`event.v` is `Some(2)` for v2 lines).
    pub event: AuditEvent,
    /// The previous line's hash.
    pub prev: String,
    /// This line's hash.
    pub hash: String,
    /// The line exactly as in the file, without its newline.
    pub raw: String,
    /// The file it was read from.
    pub file: PathBuf,
    /// Its 1-based line number in that file.
    pub line: usize,
}

impl Record {
    /// `at` parsed, when it is valid RFC 3339.
    pub fn time(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(&self.at, &Rfc3339).ok()
    }
}

#[derive(Deserialize)]
struct LineIn {
    seq: u64,
    at: String,
    #[serde(flatten)]
    event: AuditEvent,
    prev: String,
    hash: String,
}

/// Which records to yield; every field set must match (`None`: any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `session_id` equals.
    pub session: Option<String>,
    /// `sandbox_id` equals.
    pub sandbox: Option<String>,
    /// `tool` equals.
    pub tool: Option<String>,
    /// `outcome` equals.
    pub outcome: Option<String>,
    /// `call` equals.
    pub call: Option<String>,
    /// `at` is at or after this.
    pub since: Option<OffsetDateTime>,
    /// `at` is at or before this.
    pub until: Option<OffsetDateTime>,
}

impl Filter {
    /// Parse an RFC 3339 time for `since`/`until`; `what` names the option
    /// in the error.
    pub fn parse_time(what: &str, value: &str) -> Result<OffsetDateTime, AuditError> {
        OffsetDateTime::parse(value, &Rfc3339).map_err(|e| AuditError::Invalid {
            what: what.to_owned(),
            reason: format!("`{value}` is not an RFC 3339 time: {e}"),
        })
    }

    /// Whether `record` passes. A record whose `at` does not parse fails a
    /// time bound.
    pub fn matches(&self, record: &Record) -> bool {
        fn eq(want: &Option<String>, have: &Option<String>) -> bool {
            want.as_ref()
                .is_none_or(|w| have.as_deref() == Some(w.as_str()))
        }
        let e = &record.event;
        if !eq(&self.session, &e.session_id)
            || !eq(&self.sandbox, &e.sandbox_id)
            || !eq(&self.tool, &e.tool)
            || self.outcome.as_ref().is_some_and(|o| *o != e.outcome)
            || self.call.as_ref().is_some_and(|c| *c != e.call)
        {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(at) = record.time() else {
                return false;
            };
            if self.since.is_some_and(|s| at < s) || self.until.is_some_and(|u| at > u) {
                return false;
            }
        }
        true
    }
}

/// An open file being read.
struct Cursor {
    path: PathBuf,
    reader: BufReader<File>,
    /// Bytes of whole lines consumed.
    offset: u64,
    line: usize,
    /// Bytes of a line not yet ended by a newline.
    partial: Vec<u8>,
    /// `Some(seq)` for a rotated segment (complete), `None` for
    /// `audit.jsonl`.
    segment: Option<u64>,
}

/// Times one [`Reader::next_line`] call may look for the file again.
const MAX_RELOCATIONS: u32 = 4;

/// Reads records in chain order across files; see the module docs.
pub struct Reader {
    dir: PathBuf,
    after: u64,
    filter: Filter,
    cur: Option<Cursor>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("dir", &self.dir)
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// Read the log of `dir` from its first record.
    pub fn open(dir: &Path) -> Self {
        Self::from_seq(dir, 0)
    }

    /// Read the records with seq greater than `after` (the resume cursor of
    /// a previous reader: [`Reader::position`]).
    pub fn from_seq(dir: &Path, after: u64) -> Self {
        Self {
            dir: dir.to_owned(),
            after,
            filter: Filter::default(),
            cur: None,
        }
    }

    /// Yield only the records `filter` matches (the others still move the
    /// position).
    pub fn with_filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// The seq of the last line read (matched or not): resume with
    /// [`Reader::from_seq`] on it.
    pub fn position(&self) -> u64 {
        self.after
    }

    /// The next matching record, or `None` when there is none for now (the
    /// log may grow: call again to follow it, across rotations).
    pub fn next_record(&mut self) -> Result<Option<Record>, AuditError> {
        while let Some((raw, file, line)) = self.next_line()? {
            let parsed: LineIn = serde_json::from_slice(&raw).map_err(|e| AuditError::Broken {
                path: file.clone(),
                line,
                seq: self.after + 1,
                reason: format!("not an audit line: {e}"),
            })?;
            if parsed.seq <= self.after {
                continue;
            }
            self.after = parsed.seq;
            let record = Record {
                seq: parsed.seq,
                at: parsed.at,
                event: parsed.event,
                prev: parsed.prev,
                hash: parsed.hash,
                raw: String::from_utf8_lossy(&raw).into_owned(),
                file,
                line,
            };
            if self.filter.matches(&record) {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// Open the file that holds seq `after + 1`: the first segment whose
    /// last seq is beyond `after`, else `audit.jsonl`.
    fn locate(&self) -> Result<Option<Cursor>, AuditError> {
        let (path, segment) = match segments(&self.dir)?
            .into_iter()
            .find(|(last, _)| *last > self.after)
        {
            Some((last, path)) => (path, Some(last)),
            None => (self.dir.join(CURRENT_FILE), None),
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(AuditError::Io { path, source }),
        };
        Ok(Some(Cursor {
            path,
            reader: BufReader::with_capacity(1 << 16, file),
            offset: 0,
            line: 0,
            partial: Vec::new(),
            segment,
        }))
    }

    /// The next whole line with a seq that may be beyond `after` (lines at
    /// or before it are skipped by the caller).
    fn next_line(&mut self) -> Result<Option<(Vec<u8>, PathBuf, usize)>, AuditError> {
        // Each look again (a file rotated away between listing and opening,
        // or while we read it) is bounded, so a log whose records are
        // genuinely missing cannot loop here. A rotation between two looks
        // can happen more than once in one call (a segment ends, the next
        // listing misses the newest segment because it was being renamed):
        // a single look again skipped its records.
        let mut relocations = 0u32;
        loop {
            if self.cur.is_none() {
                self.cur = self.locate()?;
            }
            let Some(cur) = self.cur.as_mut() else {
                return Ok(None);
            };
            let io = |source| AuditError::Io {
                path: cur.path.clone(),
                source,
            };
            cur.reader.read_until(b'\n', &mut cur.partial).map_err(io)?;
            if cur.partial.ends_with(b"\n") {
                let mut raw = std::mem::take(&mut cur.partial);
                cur.offset += raw.len() as u64;
                raw.pop();
                cur.line += 1;
                // A first line beyond `after + 1` in `audit.jsonl`: it was
                // rotated between listing and opening; look again.
                if cur.segment.is_none() && cur.line == 1 && relocations < MAX_RELOCATIONS {
                    if let Some(seq) = peek_seq(&raw) {
                        if seq > self.after + 1 {
                            relocations += 1;
                            self.cur = None;
                            continue;
                        }
                    }
                }
                return Ok(Some((raw, cur.path.clone(), cur.line)));
            }
            // End of the file for now.
            if cur.segment.is_some() {
                // A segment is complete: go on with the next file.
                self.cur = None;
                if relocations >= MAX_RELOCATIONS {
                    return Ok(None);
                }
                relocations += 1;
                continue;
            }
            if !cur.partial.is_empty() {
                // A failed write may have been cut back: do not glue what we
                // read of it to the line written in its place.
                let len = cur.reader.get_ref().metadata().map_err(io)?.len();
                if len < cur.offset + cur.partial.len() as u64 {
                    cur.partial.clear();
                    cur.reader.seek(SeekFrom::Start(cur.offset)).map_err(io)?;
                }
                return Ok(None);
            }
            // Was the file we hold rotated away? Then what follows is in the
            // next file: look again (from `after`, so lines written to ours
            // after we reached its end are read from its segment). Only when
            // ours is no longer `audit.jsonl`: once a segment named by our
            // last seq existed, the old check held for the new file too and
            // spent the looks while it was still empty, and a first line
            // beyond `after + 1` then went through unchecked.
            if relocations < MAX_RELOCATIONS && held_file_rotated(&self.dir, cur).map_err(io)? {
                relocations += 1;
                self.cur = None;
                continue;
            }
            return Ok(None);
        }
    }
}

/// Whether the file `cur` reads is no longer the log's `audit.jsonl` (it
/// was renamed to a segment; the name may not be taken again yet).
fn held_file_rotated(dir: &Path, cur: &Cursor) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let ours = cur.reader.get_ref().metadata()?;
    match std::fs::metadata(dir.join(CURRENT_FILE)) {
        Ok(now) => Ok(now.ino() != ours.ino() || now.dev() != ours.dev()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

impl Iterator for Reader {
    type Item = Result<Record, AuditError>;

    /// The records there are now (ends at the current end of the log).
    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

/// The `seq` of a raw line without parsing the rest.
fn peek_seq(raw: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Seq {
        seq: u64,
    }
    serde_json::from_slice::<Seq>(raw).ok().map(|s| s.seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, AuditSettings};

    fn ev(i: u64, session: &str) -> AuditEvent {
        AuditEvent {
            call: "execute".into(),
            session_id: Some(session.into()),
            tool: Some(if i % 2 == 0 { "bash" } else { "read" }.into()),
            outcome: "ok".into(),
            duration_ms: i,
            input: Some(serde_json::json!({"command": format!("echo {i} {}", "x".repeat(200))})),
            ..Default::default()
        }
    }

    #[test]
    fn reads_across_rotation_filters_and_follows() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = AuditSettings::defaults(tmp.path());
        s.rotate_bytes = 4096;
        s.checkpoint_every_records = 5;
        let log = AuditLog::open_with(&s, "agt_test").unwrap();
        for i in 0..40 {
            log.try_record(ev(i, if i < 20 { "sesn_a" } else { "sesn_b" }))
                .unwrap();
        }
        assert!(segments(tmp.path()).unwrap().len() >= 3);
        let all: Vec<Record> = Reader::open(tmp.path()).collect::<Result<_, _>>().unwrap();
        let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        assert_eq!(all.iter().filter(|r| r.event.call == "execute").count(), 40);
        assert!(all.iter().any(|r| r.event.checkpoint.is_some()));
        assert!(all
            .iter()
            .all(|r| r.raw.ends_with(&format!("\"hash\":\"{}\"}}", r.hash))));
        // filters
        let f = Filter {
            session: Some("sesn_b".into()),
            tool: Some("bash".into()),
            ..Filter::default()
        };
        let b: Vec<Record> = Reader::open(tmp.path())
            .with_filter(f)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(b.len(), 10);
        let first = all[0].time().unwrap();
        let none = Filter {
            until: Some(first - time::Duration::seconds(1)),
            ..Filter::default()
        };
        assert_eq!(Reader::open(tmp.path()).with_filter(none).count(), 0);
        assert!(Filter::parse_time("since", "yesterday").is_err());
        // follow from a seq: new lines and a rotation between polls
        let mid = all[all.len() / 2].seq;
        let mut r = Reader::from_seq(tmp.path(), mid);
        let mut got: Vec<u64> = std::iter::from_fn(|| r.next_record().unwrap())
            .map(|x| x.seq)
            .collect();
        assert_eq!(got.first(), Some(&(mid + 1)));
        for i in 40..80 {
            log.try_record(ev(i, "sesn_c")).unwrap();
            if i % 7 == 0 {
                got.extend(std::iter::from_fn(|| r.next_record().unwrap()).map(|x| x.seq));
            }
        }
        got.extend(std::iter::from_fn(|| r.next_record().unwrap()).map(|x| x.seq));
        let last = crate::audit::verify_dir(tmp.path(), &Default::default())
            .unwrap()
            .last_seq;
        assert_eq!(got, (mid + 1..=last).collect::<Vec<_>>());
        assert_eq!(r.position(), last);
    }

    /// A follower polling while another thread writes and rotates: every
    /// seq exactly once, in order.
    #[test]
    fn a_follower_sees_every_line_once_while_the_writer_rotates() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = AuditSettings::defaults(tmp.path());
        s.rotate_bytes = 8192;
        s.checkpoint_every_records = 25;
        let log = AuditLog::open_with(&s, "agt_follow").unwrap();
        let writer = {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..1500 {
                    log.try_record(ev(i, "sesn_f")).unwrap();
                    if i % 50 == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        };
        let mut r = Reader::open(tmp.path());
        let mut seqs = Vec::new();
        let mut done = false;
        loop {
            while let Some(rec) = r.next_record().unwrap() {
                seqs.push(rec.seq);
            }
            if done {
                break;
            }
            done = writer.is_finished();
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        writer.join().unwrap();
        let last = crate::audit::verify_dir(tmp.path(), &Default::default())
            .unwrap()
            .last_seq;
        assert!(segments(tmp.path()).unwrap().len() > 20);
        assert_eq!(seqs, (1..=last).collect::<Vec<_>>());
    }
}
