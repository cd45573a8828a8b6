//! The agent's audit chain as the control plane sees it: signed checkpoints
//! of the chain head, sent on the control stream
//! ([`crate::ControlMessage::AuditStatus`]) and kept by the control plane so
//! that a log cut back, or replaced by an older copy, no longer matches what
//! the control plane holds. See docs/audit.md.
//!
//! The signature is ed25519 over [`checkpoint_message`]; signing and
//! verification live in `pki::audit_key` (this crate holds wire types only).

use serde::{Deserialize, Serialize};

/// Domain separation tag of the signed checkpoint message.
pub const CHECKPOINT_TAG: &str = "airlock-audit-checkpoint/v1";

/// A signed statement "the agent's audit chain had `seq` lines and its last
/// line's hash was `head` at `at`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    /// The `seq` of the last line covered (lines `1..=seq`).
    pub seq: u64,
    /// The hash (hex SHA-256) of line `seq`.
    pub head: String,
    /// When the checkpoint was made (RFC 3339 UTC).
    pub at: String,
    /// First 16 hex digits of the SHA-256 of the public key.
    pub key_id: String,
    /// The ed25519 public key (32 bytes), base64 (standard, padded).
    pub public_key: String,
    /// The ed25519 signature of [`checkpoint_message`], base64.
    pub signature: String,
}

/// The bytes a checkpoint signs: the tag, the agent id, `seq`, `head` and
/// `at`, one per line, each line ending in `\n`.
pub fn checkpoint_message(agent_id: &str, seq: u64, head: &str, at: &str) -> Vec<u8> {
    format!("{CHECKPOINT_TAG}\n{agent_id}\n{seq}\n{head}\n{at}\n").into_bytes()
}

/// The agent's audit condition, sent when it changes and with every new
/// checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditStatus {
    /// False while records cannot be written (calls are refused meanwhile).
    pub healthy: bool,
    /// What is wrong, when not healthy (no secrets: an I/O error and a path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The latest checkpoint, if any was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<AuditCheckpoint>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_is_stable() {
        assert_eq!(
            checkpoint_message("agt_1", 7, "ab", "2026-12-06T00:00:00Z"),
            b"airlock-audit-checkpoint/v1\nagt_1\n7\nab\n2026-12-06T00:00:00Z\n".to_vec()
        );
    }
}
