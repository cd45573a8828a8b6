//! Verification of the chain on the raw bytes: for every line, the hash
//! suffix is cut off and SHA-256(prev + "\n" + the rest) compared with it;
//! seq must follow, `prev` must be the previous line's hash (across files),
//! every checkpoint line must sign the line before it with a valid
//! signature, and every checkpoint the control plane holds must match the
//! line it names and be followed by that same checkpoint line.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use protocol::audit::AuditCheckpoint;

use super::chain::{self, hash_raw, split_hash, ChainFields};
use super::{AuditError, CALL_CHECKPOINT, GENESIS};

/// What to check beyond the chain itself.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The trusted checkpoint public key (base64): every checkpoint line
    /// must be signed by it. Without it, each checkpoint is checked against
    /// the key it carries (integrity, not origin).
    pub public_key: Option<String>,
    /// The checkpoints the control plane holds for this agent: each one's
    /// (seq, head) must match the line with that seq, the next line must be
    /// that checkpoint, and the log must not end before it.
    pub checkpoints: Vec<AuditCheckpoint>,
}

/// What an intact log came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// The files checked, in chain order.
    pub files: Vec<PathBuf>,
    /// Lines checked.
    pub lines: u64,
    /// The seq of the last line (0: empty log).
    pub last_seq: u64,
    /// The hash of the last line ([`GENESIS`] for an empty log).
    pub head: String,
    /// Checkpoint lines whose signature verified.
    pub checkpoints: u64,
    /// The last checkpoint line's checkpoint.
    pub last_checkpoint: Option<AuditCheckpoint>,
    /// The agent id the checkpoints were signed for.
    pub agent_id: Option<String>,
    /// Control-plane checkpoints matched.
    pub matched_checkpoints: usize,
    /// Lines after the last checkpoint (not covered by any signature).
    pub unsigned_tail: u64,
}

/// Where the writer resumes.
#[derive(Debug)]
pub(crate) struct TailState {
    /// (offset, length) of a partial last line of `audit.jsonl` (a write
    /// cut short by a crash), to be cut and recorded by the writer.
    pub torn: Option<(u64, u64)>,
    pub seq: u64,
    pub hash: String,
    pub since_checkpoint: u64,
    pub last_checkpoint: Option<AuditCheckpoint>,
    pub last_is_checkpoint: bool,
}

struct Verifier<'a> {
    trusted: Option<&'a str>,
    check_signatures: bool,
    /// Control-plane checkpoints by the seq they sign.
    at_seq: HashMap<u64, Vec<&'a AuditCheckpoint>>,
    /// ... and by the seq of the checkpoint line that must follow.
    line_after: HashMap<u64, Vec<&'a AuditCheckpoint>>,
    seq: u64,
    prev: String,
    report: VerifyReport,
    last_is_checkpoint: bool,
    /// Lines after the last checkpoint line.
    since_checkpoint: u64,
    /// Accept a last line without its newline (the writer's open after a
    /// crash) instead of failing; it is reported in `torn`.
    allow_torn_tail: bool,
    /// (offset, length) of such a torn last line.
    torn: Option<(u64, u64)>,
}

impl<'a> Verifier<'a> {
    fn new(opts: &'a VerifyOptions, seq: u64, prev: String) -> Self {
        let mut at_seq: HashMap<u64, Vec<&AuditCheckpoint>> = HashMap::new();
        let mut line_after: HashMap<u64, Vec<&AuditCheckpoint>> = HashMap::new();
        for cp in &opts.checkpoints {
            at_seq.entry(cp.seq).or_default().push(cp);
            line_after.entry(cp.seq + 1).or_default().push(cp);
        }
        Self {
            trusted: opts.public_key.as_deref().map(str::trim),
            check_signatures: true,
            at_seq,
            line_after,
            seq,
            report: VerifyReport {
                head: prev.clone(),
                last_seq: seq,
                ..Default::default()
            },
            prev,
            last_is_checkpoint: false,
            since_checkpoint: 0,
            allow_torn_tail: false,
            torn: None,
        }
    }

    /// Check one file, continuing the chain.
    fn file(&mut self, path: &Path, segment_seq: Option<u64>) -> Result<(), AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut buf = Vec::with_capacity(4096);
        let mut line_no = 0usize;
        let mut offset = 0u64;
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            if self.allow_torn_tail && segment_seq.is_none() && !buf.ends_with(b"\n") {
                self.torn = Some((offset, n as u64));
                break;
            }
            offset += n as u64;
            line_no += 1;
            let broken = |seq: u64, reason: String| AuditError::Broken {
                path: path.to_owned(),
                line: line_no,
                seq,
                reason,
            };
            let expected = self.seq + 1;
            let Some(raw) = buf.strip_suffix(b"\n") else {
                return Err(broken(
                    expected,
                    "truncated mid-line (no newline at the end of the file)".into(),
                ));
            };
            let Some((body, hash)) = split_hash(raw) else {
                return Err(broken(
                    expected,
                    "does not end in a \"hash\" key with 64 hex digits".into(),
                ));
            };
            let fields: ChainFields<'_> = serde_json::from_slice(raw)
                .map_err(|e| broken(expected, format!("not an audit line: {e}")))?;
            let seq = fields.seq;
            if fields.hash.as_bytes() != hash {
                return Err(broken(seq, "the \"hash\" key is not the last one".into()));
            }
            if seq != expected {
                return Err(broken(
                    seq,
                    format!(
                        "seq gap: seq {seq} follows seq {} (expected {expected})",
                        self.seq
                    ),
                ));
            }
            if fields.prev != self.prev {
                return Err(broken(
                    seq,
                    format!(
                        "prev mismatch: prev is {}, the previous line's hash is {}",
                        fields.prev, self.prev
                    ),
                ));
            }
            let computed = hex::encode(hash_raw(&self.prev, body));
            if computed.as_bytes() != hash {
                return Err(broken(
                    seq,
                    format!(
                        "broken hash: the line's content hashes to {computed}, the line says {}",
                        String::from_utf8_lossy(hash)
                    ),
                ));
            }
            // The control plane's checkpoints of this line.
            if let Some(cps) = self.at_seq.get(&seq) {
                for cp in cps {
                    if cp.head != computed {
                        return Err(AuditError::RolledBack {
                            path: path.to_owned(),
                            line: line_no,
                            seq,
                            found: computed,
                            expected: cp.head.clone(),
                        });
                    }
                }
            }
            let is_checkpoint = fields.call.as_deref() == Some(CALL_CHECKPOINT);
            if let Some(cps) = self.line_after.get(&seq) {
                for cp in cps {
                    if fields.checkpoint.as_ref() != Some(*cp) {
                        return Err(broken(
                            seq,
                            format!(
                                "rolled back or replaced: the control plane holds a checkpoint of seq {} made at {}, but this line is not that checkpoint",
                                cp.seq, cp.at
                            ),
                        ));
                    }
                }
            }
            if is_checkpoint {
                let Some(cp) = fields.checkpoint.as_ref() else {
                    return Err(broken(seq, "checkpoint line without a checkpoint".into()));
                };
                if cp.seq != self.seq || cp.head != self.prev {
                    return Err(broken(
                        seq,
                        format!(
                            "checkpoint signs seq {} head {}, but line {} has hash {}",
                            cp.seq, cp.head, self.seq, self.prev
                        ),
                    ));
                }
                let Some(agent_id) = fields.agent_id.as_deref() else {
                    return Err(broken(seq, "checkpoint line without agent_id".into()));
                };
                if self.check_signatures {
                    pki::audit_key::verify_checkpoint(agent_id, cp, self.trusted)
                        .map_err(|e| broken(seq, format!("bad checkpoint signature: {e}")))?;
                }
                self.report.checkpoints += 1;
                self.report.last_checkpoint = Some(cp.clone());
                self.report.agent_id = Some(agent_id.to_owned());
                self.since_checkpoint = 0;
            } else {
                self.since_checkpoint += 1;
            }
            if self.line_after.contains_key(&seq) {
                self.report.matched_checkpoints += self.line_after.get(&seq).map_or(0, Vec::len);
            }
            self.last_is_checkpoint = is_checkpoint;
            self.seq = seq;
            self.prev = computed;
            self.report.lines += 1;
        }
        if let Some(named) = segment_seq {
            if line_no == 0 {
                return Err(AuditError::Broken {
                    path: path.to_owned(),
                    line: 1,
                    seq: self.seq + 1,
                    reason: format!("the segment (named for seq {named}) is empty"),
                });
            }
            if named != self.seq {
                return Err(AuditError::Broken {
                    path: path.to_owned(),
                    line: line_no,
                    seq: self.seq,
                    reason: format!(
                        "the segment is named for seq {named} but its last line is seq {}",
                        self.seq
                    ),
                });
            }
        }
        self.report.files.push(path.to_owned());
        // A checkpoint line covers the lines before it, not itself.
        self.report.unsigned_tail = if self.report.last_checkpoint.is_some() {
            self.since_checkpoint + 1
        } else {
            self.report.lines
        };
        self.report.last_seq = self.seq;
        self.report.head = self.prev.clone();
        Ok(())
    }

    /// The log must not end before a control-plane checkpoint's line.
    fn finish(self, last_file: PathBuf) -> Result<VerifyReport, AuditError> {
        if let Some(highest) = self.at_seq.keys().max() {
            if self.seq <= *highest {
                return Err(AuditError::Truncated {
                    path: last_file,
                    last_seq: self.seq,
                    checkpoint_seq: *highest,
                });
            }
        }
        Ok(self.report)
    }
}

/// Verify the whole log of an audit dir: the rotated segments in order,
/// then `audit.jsonl`, as one chain from the first line (seq 1, prev
/// [`GENESIS`]), with every checkpoint signature and, when given, the
/// control plane's checkpoints. The first problem found is the error: it
/// names the file, line, seq and what is wrong.
pub fn verify_dir(dir: &Path, opts: &VerifyOptions) -> Result<VerifyReport, AuditError> {
    let mut v = Verifier::new(opts, 0, GENESIS.to_owned());
    let segments = chain::segments(dir)?;
    let current = dir.join(super::CURRENT_FILE);
    for (named, path) in &segments {
        v.file(path, Some(*named))?;
    }
    if current.exists() {
        v.file(&current, None)?;
    }
    let last = v
        .report
        .files
        .last()
        .cloned()
        .unwrap_or_else(|| current.clone());
    v.finish(last)
}

/// Verify the chain of one audit file that starts the chain (seq 1); returns
/// the last `seq` and hash. Checkpoint signatures are checked against the
/// key each carries. For a rotated log use [`verify_dir`].
pub fn verify(path: &Path) -> Result<(u64, String), AuditError> {
    let opts = VerifyOptions::default();
    let mut v = Verifier::new(&opts, 0, GENESIS.to_owned());
    v.file(path, None)?;
    Ok((v.seq, v.prev))
}

/// Where the writer resumes: the last segment's head (from its last line,
/// whose own hash is checked), then the whole current file verified from
/// there.
pub(crate) fn tail_state(dir: &Path) -> Result<TailState, AuditError> {
    let (mut seq, mut hash) = (0, GENESIS.to_owned());
    let mut last_checkpoint = None;
    let mut last_is_checkpoint = false;
    if let Some((named, path)) = chain::segments(dir)?.pop() {
        let broken = |reason: String| AuditError::Broken {
            path: path.clone(),
            line: 0,
            seq: named,
            reason,
        };
        let raw = chain::last_line(&path)?.ok_or_else(|| broken("empty segment".into()))?;
        let (body, h) = split_hash(&raw).ok_or_else(|| broken("last line has no hash".into()))?;
        let fields: ChainFields<'_> = serde_json::from_slice(&raw)
            .map_err(|e| broken(format!("last line is not an audit line: {e}")))?;
        if fields.seq != named {
            return Err(broken(format!(
                "the segment is named for seq {named} but its last line is seq {}",
                fields.seq
            )));
        }
        if hash_raw(&fields.prev, body) != *hex_array(h).as_ref().unwrap_or(&[0; 32]) {
            return Err(broken("last line's hash does not match its content".into()));
        }
        seq = fields.seq;
        hash = String::from_utf8_lossy(h).into_owned();
        if fields.call.as_deref() == Some(CALL_CHECKPOINT) {
            last_is_checkpoint = true;
            last_checkpoint = fields.checkpoint;
        }
    }
    let current = dir.join(super::CURRENT_FILE);
    let opts = VerifyOptions::default();
    let mut v = Verifier::new(&opts, seq, hash);
    v.last_is_checkpoint = last_is_checkpoint;
    v.allow_torn_tail = true;
    if current.exists() {
        v.file(&current, None)?;
    }
    Ok(TailState {
        torn: v.torn,
        seq: v.seq,
        hash: v.prev,
        since_checkpoint: v.since_checkpoint,
        last_checkpoint: v.report.last_checkpoint.or(last_checkpoint),
        last_is_checkpoint: v.last_is_checkpoint,
    })
}

fn hex_array(h: &[u8]) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(h, &mut out).ok()?;
    Some(out)
}

/// The highest bridge sequence number among the `credential_use` lines of
/// the log whose current file is `path` (0 when there is none): where the
/// agent resumes its subscription after a restart. Reads `path`, then the
/// rotated segments beside it, newest first, until one has such a line.
pub fn last_credential_seq(path: &Path) -> Result<u64, AuditError> {
    let last = last_credential_seq_in(path)?;
    if last > 0 {
        return Ok(last);
    }
    let Some(dir) = path.parent() else {
        return Ok(0);
    };
    for (_, segment) in chain::segments(dir)?.into_iter().rev() {
        let last = last_credential_seq_in(&segment)?;
        if last > 0 {
            return Ok(last);
        }
    }
    Ok(0)
}

fn last_credential_seq_in(path: &Path) -> Result<u64, AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(e)),
    };
    let mut last = 0;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(io)? == 0 {
            break;
        }
        if let Ok(line) = serde_json::from_slice::<ChainFields<'_>>(&buf) {
            if let Some(u) = line.credential_use {
                last = last.max(u.bridge_seq);
            }
        }
    }
    Ok(last)
}
