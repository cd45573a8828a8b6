//! Reading the audit log as the commands need it: every record from a given
//! `seq` on, across rotated segments (`audit.<20-digit last seq>.jsonl`, then
//! the live `audit.jsonl`), and following the live file across rotation the
//! way `tail -F` does (the open descriptor of the old file is drained before
//! the new `audit.jsonl` is opened).
//!
//! Records are kept as their raw bytes (what the chain hashed, what `show`
//! prints and the shipper sends) plus the parsed JSON object for filters and
//! the OCSF mapping. Only complete lines (ending in `\n`) are returned: a
//! line being written is picked up on the next read.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::AuditCmdError;

/// Name of the live audit file in the audit dir.
pub const LIVE_FILE: &str = "audit.jsonl";

/// One audit record as read from a file.
#[derive(Debug, Clone)]
pub struct Record {
    /// The file it was read from.
    pub file: PathBuf,
    /// 1-based line number in that file.
    pub line: u64,
    /// The line's bytes without the trailing newline.
    pub raw: String,
    /// The line parsed.
    pub fields: Map<String, Value>,
    /// Its `seq`.
    pub seq: u64,
}

impl Record {
    /// Parse a raw line read from `file` at `line`.
    pub fn parse(file: &Path, line: u64, raw: String) -> Result<Self, AuditCmdError> {
        let malformed = |reason: String| AuditCmdError::Malformed {
            path: file.to_owned(),
            line,
            reason,
        };
        let fields = match serde_json::from_str::<Value>(&raw) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(malformed("not a JSON object".into())),
            Err(e) => return Err(malformed(e.to_string())),
        };
        let seq = fields
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or_else(|| malformed("no seq".into()))?;
        Ok(Self {
            file: file.to_owned(),
            line,
            raw,
            fields,
            seq,
        })
    }

    /// A top-level string field.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }

    /// The `call` (empty when missing).
    pub fn call(&self) -> &str {
        self.str("call").unwrap_or_default()
    }

    /// The `outcome` (empty when missing).
    pub fn outcome(&self) -> &str {
        self.str("outcome").unwrap_or_default()
    }

    /// The record's `hash` (empty when missing).
    pub fn hash(&self) -> &str {
        self.str("hash").unwrap_or_default()
    }

    /// The tool: `tool`, or the MCP tool name in `input.tool`.
    pub fn tool(&self) -> Option<&str> {
        self.str("tool").or_else(|| {
            self.fields
                .get("input")
                .and_then(|i| i.get("tool"))
                .and_then(Value::as_str)
        })
    }

    /// When it was written (`at`), when it parses as RFC 3339.
    pub fn at(&self) -> Option<OffsetDateTime> {
        self.str("at").and_then(|s| {
            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        })
    }
}

/// A rotated segment and the seq of its last line (from its name).
fn rotated_seq(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("audit.")?.strip_suffix(".jsonl")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The rotated segments in `dir`, oldest first, with their last seq.
pub fn rotated_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditCmdError> {
    let io = |source| AuditCmdError::Io {
        path: dir.to_owned(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io)?;
        if let Some(seq) = entry.file_name().to_str().and_then(rotated_seq) {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// An open file being read line by line.
#[derive(Debug)]
struct Open {
    path: PathBuf,
    reader: BufReader<File>,
    line: u64,
    /// A line read without its newline yet (being written).
    partial: String,
    /// (dev, inode) of the live file when this is it.
    live_id: Option<(u64, u64)>,
}

impl Open {
    fn open(path: PathBuf, live: bool) -> Result<Option<Self>, AuditCmdError> {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(AuditCmdError::Io { path, source }),
        };
        let live_id = if live {
            let meta = file.metadata().map_err(|source| AuditCmdError::Io {
                path: path.clone(),
                source,
            })?;
            Some((meta.dev(), meta.ino()))
        } else {
            None
        };
        Ok(Some(Self {
            path,
            reader: BufReader::new(file),
            line: 0,
            partial: String::new(),
            live_id,
        }))
    }

    /// The next complete line, or None at the current end of the file.
    fn next_line(&mut self) -> Result<Option<(u64, String)>, AuditCmdError> {
        let n = self
            .reader
            .read_line(&mut self.partial)
            .map_err(|source| AuditCmdError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 || !self.partial.ends_with('\n') {
            return Ok(None);
        }
        let mut raw = std::mem::take(&mut self.partial);
        raw.pop();
        if raw.ends_with('\r') {
            raw.pop();
        }
        self.line += 1;
        Ok(Some((self.line, raw)))
    }
}

/// Reads records in seq order from `from` on, across segments; see the
/// module docs. [`LogReader::next_record`] returns `None` at the current end
/// of the log; call it again later to follow.
#[derive(Debug)]
pub struct LogReader {
    dir: PathBuf,
    from: u64,
    /// The seq the next record must have, once known.
    expected: Option<u64>,
    pending: VecDeque<PathBuf>,
    current: Option<Open>,
    /// Whether the live file has been reached.
    at_live: bool,
    /// Re-listed segments once for the current gap.
    relisted: bool,
}

impl LogReader {
    /// A reader of `dir` starting at the first record with `seq >= from`.
    /// With `strict`, the first record returned must be `from` itself (the
    /// shipper resuming after its cursor): anything else is a gap.
    pub fn open(dir: &Path, from: u64, strict: bool) -> Result<Self, AuditCmdError> {
        let mut r = Self {
            dir: dir.to_owned(),
            from,
            expected: strict.then_some(from),
            pending: VecDeque::new(),
            current: None,
            at_live: false,
            relisted: false,
        };
        r.list(from)?;
        Ok(r)
    }

    /// The audit dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn list(&mut self, from: u64) -> Result<(), AuditCmdError> {
        self.pending = rotated_segments(&self.dir)?
            .into_iter()
            .filter(|(last, _)| *last >= from)
            .map(|(_, p)| p)
            .collect();
        self.current = None;
        self.at_live = false;
        Ok(())
    }

    fn advance_file(&mut self) -> Result<bool, AuditCmdError> {
        if let Some(next) = self.pending.pop_front() {
            self.current = Open::open(next, false)?;
            return Ok(true);
        }
        self.at_live = true;
        self.current = Open::open(self.dir.join(LIVE_FILE), true)?;
        Ok(self.current.is_some())
    }

    /// Whether the live file was replaced (rotated) since it was opened.
    fn live_rotated(&self, open: &Open) -> Result<bool, AuditCmdError> {
        let Some(id) = open.live_id else {
            return Ok(false);
        };
        let path = self.dir.join(LIVE_FILE);
        match std::fs::metadata(&path) {
            Ok(m) => Ok((m.dev(), m.ino()) != id),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(AuditCmdError::Io { path, source }),
        }
    }

    /// The next record, or `None` at the current end of the log.
    pub fn next_record(&mut self) -> Result<Option<Record>, AuditCmdError> {
        loop {
            if self.current.is_none() && !self.advance_file()? {
                // No live file yet.
                return Ok(None);
            }
            let Some(open) = self.current.as_mut() else {
                return Ok(None);
            };
            match open.next_line()? {
                Some((line, raw)) => {
                    let path = open.path.clone();
                    if raw.trim().is_empty() {
                        continue;
                    }
                    let rec = Record::parse(&path, line, raw)?;
                    if rec.seq < self.from {
                        continue;
                    }
                    if let Some(expected) = self.expected {
                        if rec.seq > expected && !self.relisted {
                            // A rotation between listing and opening: list again.
                            self.relisted = true;
                            self.list(expected)?;
                            self.from = expected;
                            continue;
                        }
                        if rec.seq != expected {
                            return Err(AuditCmdError::Gap {
                                path,
                                line,
                                expected,
                                found: rec.seq,
                            });
                        }
                    }
                    self.relisted = false;
                    self.expected = Some(rec.seq + 1);
                    self.from = rec.seq + 1;
                    return Ok(Some(rec));
                }
                None => {
                    if !self.at_live {
                        self.current = None;
                        continue;
                    }
                    let rotated = match self.current.as_ref() {
                        Some(open) => self.live_rotated(open)?,
                        None => false,
                    };
                    if !rotated {
                        return Ok(None);
                    }
                    // Drain what the old file got before the rename, then open the new one.
                    if let Some(open) = self.current.as_mut() {
                        if let Some((line, raw)) = open.next_line()? {
                            let path = open.path.clone();
                            let rec = Record::parse(&path, line, raw)?;
                            if rec.seq >= self.from {
                                self.expected = Some(rec.seq + 1);
                                self.from = rec.seq + 1;
                                return Ok(Some(rec));
                            }
                            continue;
                        }
                    }
                    self.current = Open::open(self.dir.join(LIVE_FILE), true)?;
                    if self.current.is_none() {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

/// Which records a command selects (all given conditions must hold).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `session_id` equals.
    pub session: Option<String>,
    /// `sandbox_id` equals.
    pub sandbox: Option<String>,
    /// `tool` (or the MCP tool name) equals.
    pub tool: Option<String>,
    /// `outcome` equals.
    pub outcome: Option<String>,
    /// `call` equals.
    pub call: Option<String>,
    /// Written at or after.
    pub since: Option<OffsetDateTime>,
    /// Written before.
    pub until: Option<OffsetDateTime>,
}

impl Filter {
    /// Whether `rec` is selected.
    pub fn matches(&self, rec: &Record) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        if !(eq(&self.session, rec.str("session_id"))
            && eq(&self.sandbox, rec.str("sandbox_id"))
            && eq(&self.tool, rec.tool())
            && eq(&self.outcome, rec.str("outcome"))
            && eq(&self.call, rec.str("call")))
        {
            return false;
        }
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        let Some(at) = rec.at() else {
            return false;
        };
        self.since.is_none_or(|s| at >= s) && self.until.is_none_or(|u| at < u)
    }
}

/// Parse an RFC 3339 time given to `--<flag>`.
pub fn parse_time(flag: &'static str, value: &str) -> Result<OffsetDateTime, AuditCmdError> {
    OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).map_err(|e| {
        AuditCmdError::Usage {
            flag,
            value: value.to_owned(),
            reason: format!("not an RFC 3339 time: {e}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn line(seq: u64, call: &str) -> String {
        format!("{{\"seq\":{seq},\"at\":\"2026-12-06T20:00:{:02}Z\",\"call\":\"{call}\",\"outcome\":\"ok\",\"prev\":\"p\",\"hash\":\"h{seq}\"}}\n", seq % 60)
    }

    #[test]
    fn reads_across_segments_and_follows_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join(format!("audit.{:020}.jsonl", 2));
        std::fs::write(&seg, format!("{}{}", line(1, "a"), line(2, "b"))).unwrap();
        let live = dir.path().join(LIVE_FILE);
        let mut f = std::fs::File::create(&live).unwrap();
        f.write_all(line(3, "c").as_bytes()).unwrap();
        f.write_all(b"{\"seq\":4").unwrap(); // being written
        let mut r = LogReader::open(dir.path(), 2, true).unwrap();
        assert_eq!(r.next_record().unwrap().unwrap().seq, 2);
        assert_eq!(r.next_record().unwrap().unwrap().seq, 3);
        assert!(r.next_record().unwrap().is_none());
        f.write_all(&line(4, "d").as_bytes()[8..]).unwrap();
        f.write_all(line(5, "e").as_bytes()).unwrap();
        // rotate: rename, new live file
        std::fs::rename(&live, dir.path().join(format!("audit.{:020}.jsonl", 5))).unwrap();
        std::fs::write(&live, line(6, "f")).unwrap();
        let seqs: Vec<u64> = std::iter::from_fn(|| r.next_record().unwrap())
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, vec![4, 5, 6]);
        // a strict reader from a seq that is not there is a gap
        let mut r = LogReader::open(dir.path(), 0, true).unwrap();
        assert!(matches!(
            r.next_record(),
            Err(AuditCmdError::Gap { found: 1, .. })
        ));
    }

    #[test]
    fn filters_select() {
        let rec = Record::parse(Path::new("x"), 1, line(7, "execute").trim().into()).unwrap();
        let mut f = Filter {
            call: Some("execute".into()),
            ..Default::default()
        };
        assert!(f.matches(&rec));
        f.since = Some(parse_time("since", "2026-12-06T20:00:08Z").unwrap());
        assert!(!f.matches(&rec));
        f.since = Some(parse_time("since", "2026-12-06T20:00:07Z").unwrap());
        f.until = Some(parse_time("until", "2026-12-06T20:00:08Z").unwrap());
        assert!(f.matches(&rec));
        f.session = Some("sesn_1".into());
        assert!(!f.matches(&rec));
        assert!(parse_time("since", "yesterday").is_err());
    }
}
