//! `audit verify`: the whole log of an audit dir checked offline with
//! [`crate::audit::verify_dir`] (chain, seq, hashes, every checkpoint
//! signature), optionally against the checkpoints the control plane holds
//! (`control-plane audit checkpoints --agent <id>` JSON lines, or the API's
//! `{"data":[…]}`), which shows a truncated or rolled-back log.

use std::path::Path;

use protocol::audit::AuditCheckpoint;
use serde_json::Value;

use super::{AuditCmdError, EXIT_CHECKPOINT_MISMATCH, EXIT_FAILURE, EXIT_TAMPERED};
use crate::audit::{verify_dir, AuditError, VerifyOptions, VerifyReport};

/// The name of the checkpoint signing key in the audit dir.
pub const KEY_FILE: &str = "audit-signing.key";

/// The log is not intact (or could not be read to the end).
#[derive(Debug, thiserror::Error)]
#[error("audit log NOT intact: {0}")]
pub struct VerifyFailure(#[source] pub AuditError);

impl VerifyFailure {
    /// [`EXIT_CHECKPOINT_MISMATCH`] for a truncated or rolled-back log,
    /// [`EXIT_TAMPERED`] for a broken chain or signature,
    /// [`EXIT_FAILURE`] when the log could not be read.
    pub fn exit_code(&self) -> u8 {
        match &self.0 {
            AuditError::Truncated { .. } | AuditError::RolledBack { .. } => {
                EXIT_CHECKPOINT_MISMATCH
            }
            AuditError::Broken { .. } => EXIT_TAMPERED,
            _ => EXIT_FAILURE,
        }
    }
}

/// Read a control-plane checkpoint export: JSON lines (one checkpoint per
/// line, extra keys such as `agent_id` and `received_at` ignored) or one
/// JSON document `{"data":[…]}` / `[…]`.
pub fn read_checkpoints(path: &Path) -> Result<Vec<AuditCheckpoint>, AuditCmdError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuditCmdError::Io {
        path: path.to_owned(),
        source,
    })?;
    let bad = |line: u64, e: serde_json::Error| AuditCmdError::Malformed {
        path: path.to_owned(),
        line,
        reason: format!("not a checkpoint: {e}"),
    };
    // One document?
    if let Ok(doc) = serde_json::from_str::<Value>(&text) {
        let list = match doc {
            Value::Object(mut m) if m.contains_key("data") => m.remove("data"),
            v @ Value::Array(_) => Some(v),
            _ => None,
        };
        if let Some(list) = list {
            return serde_json::from_value(list).map_err(|e| bad(1, e));
        }
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(line).map_err(|e| bad(i as u64 + 1, e))?);
    }
    Ok(out)
}

/// `verify`: check `dir`; the public key is `public_key`, else the local
/// signing key's when `audit-signing.key` exists (else each checkpoint is
/// checked against the key it carries). Returns the report and the key
/// used.
pub fn verify(
    dir: &Path,
    checkpoints: Option<&Path>,
    public_key: Option<String>,
) -> Result<(VerifyReport, Option<String>), AuditCmdError> {
    let public_key = match public_key {
        Some(k) => Some(k),
        None => {
            let key_file = dir.join(KEY_FILE);
            if key_file.exists() {
                Some(
                    pki::audit_key::AuditKey::load_or_generate(&key_file)?
                        .public_key_b64()
                        .to_owned(),
                )
            } else {
                None
            }
        }
    };
    let checkpoints = match checkpoints {
        Some(p) => read_checkpoints(p)?,
        None => Vec::new(),
    };
    let opts = VerifyOptions {
        public_key: public_key.clone(),
        checkpoints,
    };
    let report = verify_dir(dir, &opts).map_err(VerifyFailure)?;
    Ok((report, public_key))
}

/// The one-line summary of an intact log.
pub fn summary(dir: &Path, report: &VerifyReport, key: Option<&str>) -> String {
    let key = match key {
        Some(k) => format!(
            "key {}",
            pki::audit_key::key_id_of(&decode_b64(k).unwrap_or_default())
        ),
        None => "each checkpoint's own key (no --public-key, no local key)".to_owned(),
    };
    format!(
        "audit log intact: {dir}: {files} file(s), {lines} records, last seq {seq}, {cps} checkpoint(s) verified with {key}, {matched} control-plane checkpoint(s) matched, {tail} record(s) after the last checkpoint",
        dir = dir.display(),
        files = report.files.len(),
        lines = report.lines,
        seq = report.last_seq,
        cps = report.checkpoints,
        matched = report.matched_checkpoints,
        tail = report.unsigned_tail,
    )
}

fn decode_b64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
}

/// `public-key`: the base64 public key of `dir`'s signing key (made when
/// absent, 0600).
pub fn public_key(dir: &Path) -> Result<String, AuditCmdError> {
    let key = pki::audit_key::AuditKey::load_or_generate(&dir.join(KEY_FILE))?;
    Ok(key.public_key_b64().to_owned())
}
