//! The agent's own tamper-evident audit record of every sandbox call, kept on
//! the customer's side: `audit.jsonl` in the data dir, one JSON object per
//! line, each carrying `seq`, the SHA-256 of the previous line (`prev`) and
//! its own hash (`hash` = SHA-256 of `prev` + "\n" + the line's JSON without
//! `hash`). Editing, removing or reordering a line breaks the chain, which
//! [`verify`] detects. Lines name the call, sandbox, session, tool_use_id,
//! tool, outcome and duration; never inputs, outputs, env values or secrets.
//!
//! Credential uses reported by the vault-bridge are lines of their own
//! (`call: "credential_use"`, the use's outcome, and a `credential_use`
//! object: the bridge's sequence number and time, credential and vault ids,
//! host, method, path, upstream status), chained like every other line; see
//! [`crate::sandbox::bridge_audit`]. A gap the bridge's journal bound caused
//! is a `credential_use_gap` line.
//!
//! MCP requests forwarded to the bridge are lines too (`call:
//! "mcp_call_tool"` etc., with an `mcp` object: server name, URL host,
//! credential id, failure code, `is_error`, size of the arguments); see
//! [`crate::mcp`]. Their arguments and results are never logged.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The hash `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An audit failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The audit file could not be read or written.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The chain is broken at a line (tampering or corruption).
    #[error("audit log {path} is broken at line {line}: {reason}")]
    Broken {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What does not match.
        reason: String,
    },
}

/// One call as audited (what the caller fills in).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    /// `provision`, `execute`, `destroy`, `list_sandboxes`, `reap`, `adopt`.
    pub call: String,
    /// Sandbox concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// Session concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Tool call id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_use_id: Option<String>,
    /// Tool name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// `ok`, `tool_error`, `replayed`, `unknown`, `refused`, `error`.
    pub outcome: String,
    /// Non-secret detail (a policy rule, an image name, a reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Wall time of the call.
    pub duration_ms: u64,
    /// For `credential_use` lines: what the bridge reported (never a value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_use: Option<CredentialUseDetail>,
    /// For MCP lines (`mcp_list_tools`, `mcp_call_tool`, `mcp_validate`):
    /// the server and what the call came to (never arguments or a value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpCallDetail>,
}

/// An MCP request as kept in the audit line (see [`crate::mcp`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct McpCallDetail {
    /// The server's name in the agent definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The host of its URL.
    pub host: String,
    /// The vault credential the bridge used (`vcrd_...`), when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
    /// The `McpFailure` code of a failed request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The server's `isError` of a called tool.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_error: bool,
    /// Size of the tool's arguments as JSON, in bytes (they are not logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments_bytes: Option<u64>,
}

/// The bridge's account of one credential use, as kept in the audit line.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CredentialUseDetail {
    /// The bridge's sequence number (dedupe and resume key).
    pub bridge_seq: u64,
    /// When the bridge saw the request (RFC 3339 UTC).
    pub bridge_at: String,
    /// `vcrd_...` or a repository resource's `sesrsc_...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
    /// `vlt_...` when the credential belongs to a vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_id: Option<String>,
    /// Upstream host.
    pub host: String,
    /// HTTP method.
    pub method: String,
    /// Request path without the query string.
    pub path: String,
    /// The upstream's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    seq: u64,
    at: String,
    #[serde(flatten)]
    event: AuditEvent,
    prev: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<String>,
}

fn hash_of(prev: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(body);
    hex::encode(h.finalize())
}

type ChainState = Arc<Mutex<(File, u64, String)>>;
type OpenLogs = std::collections::HashMap<PathBuf, std::sync::Weak<Mutex<(File, u64, String)>>>;

/// The logs open in this process, by absolute path (see [`AuditLog::open`]).
static OPEN_LOGS: std::sync::LazyLock<Mutex<OpenLogs>> = std::sync::LazyLock::new(Default::default);

/// Append handle on the audit log. Cheap to clone (clones share the file
/// and the chain state).
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
    state: ChainState,
}

impl AuditLog {
    /// Open (creating) `dir/audit.jsonl`, verifying the existing chain first.
    ///
    /// Within one process a log already open is shared, not reopened: two
    /// writers with their own chain state would fork the chain (the sandbox
    /// service and the MCP dispatcher both write this file).
    pub fn open(dir: &Path) -> Result<Self, AuditError> {
        let path = dir.join("audit.jsonl");
        let key = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
        let mut open = OPEN_LOGS.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, w| w.strong_count() > 0);
        if let Some(state) = open.get(&key).and_then(std::sync::Weak::upgrade) {
            return Ok(Self { path, state });
        }
        let log = Self::open_file(dir, path)?;
        open.insert(key, Arc::downgrade(&log.state));
        Ok(log)
    }

    fn open_file(dir: &Path, path: PathBuf) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let (seq, prev) = if path.exists() {
            verify(&path)?
        } else {
            (0, GENESIS.to_owned())
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        Ok(Self {
            path,
            state: Arc::new(Mutex::new((file, seq, prev))),
        })
    }

    /// Path of the log.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one event. Failures are logged, not propagated: an audit
    /// problem must not turn a tool call into an RPC error, but it is loud.
    pub fn record(&self, event: AuditEvent) {
        if let Err(error) = self.try_record(event) {
            tracing::error!(%error, "audit record failed");
        }
    }

    fn try_record(&self, event: AuditEvent) -> Result<(), AuditError> {
        let at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        // Poisoning cannot leave the chain state half-updated (updated after the write).
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (file, seq, prev) = &mut *st;
        let mut line = Line {
            seq: *seq + 1,
            at,
            event,
            prev: prev.clone(),
            hash: None,
        };
        let body = serde_json::to_vec(&line).map_err(|e| AuditError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        let hash = hash_of(prev, &body);
        line.hash = Some(hash.clone());
        let mut full = serde_json::to_vec(&line).map_err(|e| AuditError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        full.push(b'\n');
        file.write_all(&full).map_err(|source| AuditError::Io {
            path: self.path.clone(),
            source,
        })?;
        *seq += 1;
        *prev = hash;
        Ok(())
    }
}

/// The highest bridge sequence number among the `credential_use` lines of
/// an audit file (0 when there is none or no file): where the agent resumes
/// its subscription after a restart.
pub fn last_credential_seq(path: &Path) -> Result<u64, AuditError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(AuditError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let mut last = 0;
    for raw in BufReader::new(file).lines() {
        let raw = raw.map_err(|source| AuditError::Io {
            path: path.to_owned(),
            source,
        })?;
        if let Ok(line) = serde_json::from_str::<Line>(&raw) {
            if let Some(u) = line.event.credential_use {
                last = last.max(u.bridge_seq);
            }
        }
    }
    Ok(last)
}

/// Verify the chain of an audit file; returns the last `seq` and hash.
pub fn verify(path: &Path) -> Result<(u64, String), AuditError> {
    let file = File::open(path).map_err(|source| AuditError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut prev = GENESIS.to_owned();
    let mut seq = 0;
    for (i, raw) in BufReader::new(file).lines().enumerate() {
        let broken = |reason: String| AuditError::Broken {
            path: path.to_owned(),
            line: i + 1,
            reason,
        };
        let raw = raw.map_err(|source| AuditError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut line: Line =
            serde_json::from_str(&raw).map_err(|e| broken(format!("not an audit line: {e}")))?;
        let Some(hash) = line.hash.take() else {
            return Err(broken("missing hash".into()));
        };
        if line.prev != prev {
            return Err(broken(
                "prev does not match the previous line's hash".into(),
            ));
        }
        if line.seq != seq + 1 {
            return Err(broken(format!("seq {} follows {seq}", line.seq)));
        }
        let body = serde_json::to_vec(&line).map_err(|e| broken(e.to_string()))?;
        if hash_of(&prev, &body) != hash {
            return Err(broken("hash does not match the line's content".into()));
        }
        prev = hash;
        seq = line.seq;
    }
    Ok((seq, prev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_verifies_and_detects_tampering() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = AuditLog::open(dir.path()).unwrap();
            for i in 0..3 {
                log.record(AuditEvent {
                    call: "execute".into(),
                    tool: Some("bash".into()),
                    outcome: "ok".into(),
                    duration_ms: i,
                    ..Default::default()
                });
            }
        }
        // reopen continues the chain
        let log = AuditLog::open(dir.path()).unwrap();
        log.record(AuditEvent {
            call: "destroy".into(),
            outcome: "ok".into(),
            ..Default::default()
        });
        let path = log.path().to_owned();
        assert_eq!(verify(&path).unwrap().0, 4);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replacen("\"duration_ms\":1", "\"duration_ms\":9", 1),
        )
        .unwrap();
        let err = verify(&path).unwrap_err();
        assert!(matches!(err, AuditError::Broken { line: 2, .. }), "{err}");
        // dropping a line breaks it too
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        assert!(matches!(
            verify(&path),
            Err(AuditError::Broken { line: 2, .. })
        ));
    }

    #[test]
    fn credential_use_lines_chain_and_give_the_resume_seq() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        assert_eq!(last_credential_seq(log.path()).unwrap(), 0);
        let shared = log.clone();
        for seq in [4, 7] {
            shared.record(AuditEvent {
                call: "credential_use".into(),
                sandbox_id: Some("sbx_1".into()),
                session_id: Some("sesn_1".into()),
                tool_use_id: Some("toolu_1".into()),
                outcome: "injected".into(),
                credential_use: Some(CredentialUseDetail {
                    bridge_seq: seq,
                    bridge_at: "2026-12-06T15:00:00.000000Z".into(),
                    credential_id: Some("vcrd_1".into()),
                    vault_id: Some("vlt_1".into()),
                    host: "git.example.com".into(),
                    method: "GET".into(),
                    path: "/repo.git/info/refs".into(),
                    status: Some(200),
                }),
                ..Default::default()
            });
        }
        log.record(AuditEvent {
            call: "execute".into(),
            outcome: "ok".into(),
            ..Default::default()
        });
        assert_eq!(verify(log.path()).unwrap().0, 3);
        assert_eq!(last_credential_seq(log.path()).unwrap(), 7);
        let text = std::fs::read_to_string(log.path()).unwrap();
        std::fs::write(
            log.path(),
            text.replacen("\"status\":200", "\"status\":201", 1),
        )
        .unwrap();
        assert!(matches!(
            verify(log.path()),
            Err(AuditError::Broken { line: 1, .. })
        ));
    }
}
