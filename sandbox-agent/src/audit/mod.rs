//! The agent's own tamper-evident audit record of every sandbox call, kept on
//! the customer's side (see docs/audit.md).
//!
//! # Files
//!
//! The audit dir (`[audit] dir`, default the agent's data dir) holds
//! `audit.jsonl` (the current file), rotated segments
//! `audit.<20-digit zero-padded seq of its last line>.jsonl`, the checkpoint
//! signing key `audit-signing.key` (ed25519, 0600) and, when enabled, the
//! outputs store ([`store`]). Audit files are never deleted by the agent.
//!
//! # Lines
//!
//! One JSON object per line: `seq`, `at`, the [`AuditEvent`] fields, `prev`
//! (the previous line's hash) and `hash` last:
//! `hash` = SHA-256(`prev` + "\n" + the line's bytes without the trailing
//! `,"hash":"<64 hex>"`). The chain continues across files. Format v2 lines
//! carry `"v":2`, the scrubbed tool input, the policy decision, exit code and
//! output digest; v1 lines (no `v`) stay valid. Lines never hold env values
//! or secrets: inputs go through the [`Scrubber`] first.
//!
//! Credential uses reported by the vault-bridge are lines of their own
//! (`call: "credential_use"`, see [`crate::sandbox::bridge_audit`]); MCP
//! requests are `mcp_*` lines (see [`crate::mcp`]).
//!
//! # Checkpoints
//!
//! A `checkpoint` line signs (agent id, seq, hash) of the line before it
//! with the host key; the same [`protocol::audit::AuditCheckpoint`] goes to
//! the control plane ([`AuditLog::watch_status`]) which keeps it, so a log
//! cut back or replaced by an older copy no longer matches ([`verify_dir`]).
//!
//! # Failing closed
//!
//! [`AuditLog::try_record`] either writes a whole line or none (a failed
//! write is truncated back) and reports the failure; the log is then
//! unhealthy ([`AuditLog::status`]) until a write succeeds again. Callers
//! refuse to run a call whose `start` line could not be written.

mod chain;
pub mod config;
mod log;
pub mod read;
pub mod scrub;
pub mod store;
mod verify;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use config::{AuditSettings, Detail, OutputsSettings, SyslogSettings};
pub use log::AuditLog;
pub use read::{Filter, Reader, Record};
pub use scrub::Scrubber;
pub use store::OutputStore;
pub use verify::{last_credential_seq, verify, verify_dir, VerifyOptions, VerifyReport};

/// The hash `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The current line format version (`"v":2`).
pub const FORMAT_VERSION: u32 = 2;

/// Name of the current audit file in the audit dir.
pub const CURRENT_FILE: &str = "audit.jsonl";

/// Name of the checkpoint signing key in the audit dir.
pub const KEY_FILE: &str = "audit-signing.key";

/// `phase` of the line written before a call runs.
pub const PHASE_START: &str = "start";

/// `phase` of the line written when a call has finished.
pub const PHASE_END: &str = "end";

/// `call` of a checkpoint line.
pub const CALL_CHECKPOINT: &str = "checkpoint";

/// An audit failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// An audit file could not be read or written.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The chain is broken at a line (tampering or corruption).
    #[error("audit log {path} is broken at line {line} (seq {seq}): {reason}")]
    Broken {
        /// The file.
        path: PathBuf,
        /// 1-based line number in that file.
        line: usize,
        /// The line's seq (or the seq expected there when it has none).
        seq: u64,
        /// What does not match.
        reason: String,
    },
    /// The log ends before a checkpoint the control plane holds.
    #[error("audit log {path} is truncated: the control plane holds a checkpoint at seq {checkpoint_seq} but the log ends at seq {last_seq}")]
    Truncated {
        /// The last file of the log.
        path: PathBuf,
        /// The seq of the log's last line.
        last_seq: u64,
        /// The highest checkpoint seq the control plane holds.
        checkpoint_seq: u64,
    },
    /// A line does not match the control plane's checkpoint.
    #[error("audit log {path} was rolled back or replaced at line {line}: line {seq} has hash {found}, the control plane's checkpoint says {expected}")]
    RolledBack {
        /// The file.
        path: PathBuf,
        /// 1-based line number in that file.
        line: usize,
        /// The seq of the line.
        seq: u64,
        /// What the line holds (its hash, or a description).
        found: String,
        /// What the control plane's checkpoint says.
        expected: String,
    },
    /// The checkpoint signing key could not be loaded or made.
    #[error(transparent)]
    Key(#[from] pki::audit_key::AuditKeyError),
    /// A line could not be encoded (a bug).
    #[error("audit line could not be encoded: {0}")]
    Encode(#[source] serde_json::Error),
    /// A filter or option given by the caller is not valid.
    #[error("invalid audit {what}: {reason}")]
    Invalid {
        /// The option (e.g. `since`).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The policy decision on a call, as recorded.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Decision {
    /// Whether the call was allowed to run.
    pub allowed: bool,
    /// The policy key that refused it (e.g. `tools.deny`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why it was refused (non-secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A call's result, by digest (the content itself is not in the line).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutputDigest {
    /// Hex SHA-256 of the result content JSON as returned.
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// The sha256 of the scrubbed copy in the outputs store, when kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<String>,
}

impl OutputDigest {
    /// The digest of `content` (not stored).
    pub fn of(content: &[u8]) -> Self {
        use sha2::Digest as _;
        Self {
            sha256: hex::encode(sha2::Sha256::digest(content)),
            bytes: content.len() as u64,
            stored: None,
        }
    }
}

/// One call as audited (what the caller fills in). Every field added in
/// format v2 is optional and left out of the line when `None`, so v1 lines
/// read back and re-encode byte for byte.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    /// Line format version: set by the writer (`Some(2)` with
    /// `detail = "full"`); absent on v1 lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u32>,
    /// `provision`, `execute`, `destroy`, `list_sandboxes`, `reap`, `adopt`,
    /// `credential_use`, `mcp_call_tool`, `checkpoint`, ….
    pub call: String,
    /// [`PHASE_START`] or [`PHASE_END`] for two-line calls; absent on
    /// one-line calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Sandbox concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// Session concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Tool call id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_use_id: Option<String>,
    /// Tool name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The tool input as the sandbox received it, scrubbed (the writer runs
    /// the [`Scrubber`]'s token patterns over it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// The policy decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// `started`, `ok`, `tool_error`, `replayed`, `unknown`, `refused`,
    /// `error`, `signed` (checkpoints), ….
    pub outcome: String,
    /// Non-secret detail (a policy rule, an image name, a reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Exit status of a command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Digest of the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputDigest>,
    /// Wall time of the call.
    #[serde(default)]
    pub duration_ms: u64,
    /// How many secrets were replaced in `input` (and the stored output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redactions: Option<u32>,
    /// For `credential_use` lines: what the bridge reported (never a value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_use: Option<CredentialUseDetail>,
    /// For MCP lines (`mcp_list_tools`, `mcp_call_tool`, `mcp_validate`):
    /// the server and what the call came to (never a value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpCallDetail>,
    /// For `checkpoint` lines: the agent whose chain is signed (part of the
    /// signed message). Set by the writer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// For `checkpoint` lines: the signed head of the line before. Set by
    /// the writer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<protocol::audit::AuditCheckpoint>,
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
    /// Size of the tool's arguments as JSON, in bytes.
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

#[cfg(test)]
mod tests;
