//! The commands' view of the audit log, on top of [`crate::audit::Reader`]
//! (chain order across rotated segments and `audit.jsonl`, following the
//! live file across rotation, whole lines only, a failed write's cut-back
//! handled). Each record keeps its raw line (what the chain hashed, what
//! `show` prints and the shipper sends) and the line parsed as a JSON object
//! for the OCSF mapping. A strict reader (the shipper) also checks that seqs
//! follow one another and that each line's `prev` is the previous line's
//! hash, so nothing is shipped that does not chain to the cursor.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::AuditCmdError;
use crate::audit::{Filter, Reader};

/// One audit record as read.
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

/// Reads records from a given seq on; [`LogReader::next_record`] returns
/// `None` at the current end of the log (call again to follow it).
#[derive(Debug)]
pub struct LogReader {
    inner: Reader,
    /// Strict: the seq and `prev` the next record must have.
    expected: Option<(u64, Option<String>)>,
}

impl LogReader {
    /// The records of `dir` with `seq >= from` that `filter` selects.
    pub fn open(dir: &Path, from: u64, filter: Filter) -> Self {
        Self {
            inner: Reader::from_seq(dir, from.saturating_sub(1)).with_filter(filter),
            expected: None,
        }
    }

    /// Every record of `dir` from `from` on, which must be there and be
    /// followed by `from + 1`, … each chaining to the one before (after
    /// `prev_hash` for the first, when given).
    pub fn strict(dir: &Path, from: u64, prev_hash: Option<String>) -> Self {
        Self {
            inner: Reader::from_seq(dir, from.saturating_sub(1)),
            expected: Some((from, prev_hash)),
        }
    }

    /// The next record, or `None` at the current end of the log.
    pub fn next_record(&mut self) -> Result<Option<Record>, AuditCmdError> {
        let Some(r) = self.inner.next_record()? else {
            return Ok(None);
        };
        let rec = Record::parse(&r.file, r.line as u64, r.raw)?;
        if let Some((seq, prev)) = &self.expected {
            if rec.seq != *seq {
                return Err(AuditCmdError::Gap {
                    path: rec.file,
                    line: rec.line,
                    expected: *seq,
                    found: rec.seq,
                });
            }
            if let Some(prev) = prev {
                if rec.str("prev") != Some(prev.as_str()) {
                    return Err(AuditCmdError::Malformed {
                        path: rec.file,
                        line: rec.line,
                        reason: format!(
                            "seq {}: prev does not match the hash of seq {}",
                            rec.seq,
                            rec.seq.saturating_sub(1)
                        ),
                    });
                }
            }
            self.expected = Some((rec.seq + 1, Some(rec.hash().to_owned())));
        }
        Ok(Some(rec))
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
    use crate::audit::{AuditEvent, AuditLog, AuditSettings};

    #[test]
    fn strict_reader_follows_rotation_and_refuses_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = AuditSettings::defaults(dir.path());
        s.rotate_bytes = 4096;
        let log = AuditLog::open_with(&s, "agt_1").unwrap();
        let ev = |i: u64| AuditEvent {
            call: "execute".into(),
            tool: Some("bash".into()),
            outcome: "ok".into(),
            duration_ms: i,
            ..Default::default()
        };
        for i in 0..5 {
            log.try_record(ev(i)).unwrap();
        }
        let mut r = LogReader::strict(dir.path(), 2, None);
        let mut seqs = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            seqs.push(rec.seq);
        }
        assert_eq!(seqs, vec![2, 3, 4, 5]);
        for i in 0..60 {
            log.try_record(ev(i)).unwrap();
        }
        let mut n = 5;
        while let Some(rec) = r.next_record().unwrap() {
            n += 1;
            assert_eq!(rec.seq, n);
        }
        assert!(n > 60, "{n}");
        // From a seq the log does not start at: a gap.
        let mut r = LogReader::strict(dir.path(), 0, None);
        assert!(matches!(
            r.next_record(),
            Err(AuditCmdError::Gap { found: 1, .. })
        ));
        // A prev that is not the cursor's hash.
        let mut r = LogReader::strict(dir.path(), 3, Some("00".repeat(32)));
        assert!(matches!(
            r.next_record(),
            Err(AuditCmdError::Malformed { .. })
        ));
    }
}
