//! The agent's audit signing key: an ed25519 key generated on the host
//! (PKCS#8 in a 0600 file beside the audit log) that signs the audit chain's
//! checkpoints ([`protocol::audit::AuditCheckpoint`]), and the verification
//! of a checkpoint by anyone holding its public key (the `audit verify`
//! command, the control plane on receipt).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use protocol::audit::{checkpoint_message, AuditCheckpoint};
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use sha2::{Digest, Sha256};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A signing-key or signature failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditKeyError {
    /// The key file could not be read or written.
    #[error("audit signing key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file does not hold an ed25519 PKCS#8 key.
    #[error("audit signing key {path} is not an ed25519 PKCS#8 key")]
    Malformed {
        /// The key file.
        path: PathBuf,
    },
    /// The key file can be read by others than its owner.
    #[error("audit signing key {path} has mode {mode:o}; it must be 0600 or stricter")]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// Key generation failed (no randomness).
    #[error("could not generate an audit signing key")]
    Generate,
    /// A checkpoint does not verify.
    #[error("checkpoint at seq {seq}: {reason}")]
    BadCheckpoint {
        /// The checkpoint's seq.
        seq: u64,
        /// What does not match.
        reason: String,
    },
}

/// The key pair that signs checkpoints.
pub struct AuditKey {
    pair: Ed25519KeyPair,
    public_b64: String,
    key_id: String,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// First 16 hex digits of the SHA-256 of a raw public key.
pub fn key_id_of(public_key: &[u8]) -> String {
    let digest = Sha256::digest(public_key);
    hex::encode(&digest[..8])
}

impl AuditKey {
    /// Load the key at `path`, generating it (0600, written atomically) when
    /// there is no file. A file readable by group or others is refused.
    pub fn load_or_generate(path: &Path) -> Result<Self, AuditKeyError> {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let io = |source| AuditKeyError::Io {
            path: path.to_owned(),
            source,
        };
        match std::fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(AuditKeyError::Permissions {
                        path: path.to_owned(),
                        mode,
                    });
                }
                let bytes = std::fs::read(path).map_err(io)?;
                Self::from_pkcs8(&bytes).ok_or_else(|| AuditKeyError::Malformed {
                    path: path.to_owned(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = ring::rand::SystemRandom::new();
                let doc =
                    Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| AuditKeyError::Generate)?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let tmp = path.with_extension("tmp");
                {
                    use std::io::Write as _;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&tmp)
                        .map_err(io)?;
                    f.write_all(doc.as_ref()).map_err(io)?;
                    f.sync_all().map_err(io)?;
                }
                std::fs::rename(&tmp, path).map_err(io)?;
                Self::from_pkcs8(doc.as_ref()).ok_or_else(|| AuditKeyError::Malformed {
                    path: path.to_owned(),
                })
            }
            Err(e) => Err(io(e)),
        }
    }

    fn from_pkcs8(bytes: &[u8]) -> Option<Self> {
        let pair = Ed25519KeyPair::from_pkcs8(bytes).ok()?;
        let public = pair.public_key().as_ref().to_vec();
        Some(Self {
            public_b64: B64.encode(&public),
            key_id: key_id_of(&public),
            pair,
        })
    }

    /// The public key, base64 (what `sandbox-agent audit public-key` prints).
    pub fn public_key_b64(&self) -> &str {
        &self.public_b64
    }

    /// The key id (first 16 hex digits of the public key's SHA-256).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Sign a checkpoint of `agent_id`'s chain at (`seq`, `head`), made at `at`.
    pub fn checkpoint(&self, agent_id: &str, seq: u64, head: &str, at: &str) -> AuditCheckpoint {
        let sig = self.pair.sign(&checkpoint_message(agent_id, seq, head, at));
        AuditCheckpoint {
            seq,
            head: head.to_owned(),
            at: at.to_owned(),
            key_id: self.key_id.clone(),
            public_key: self.public_b64.clone(),
            signature: B64.encode(sig.as_ref()),
        }
    }
}

/// Verify a checkpoint's signature for `agent_id`. With `trusted_public_key`
/// (base64), the checkpoint must also be signed by that key; without it, by
/// the key it carries (which only proves integrity, not origin).
pub fn verify_checkpoint(
    agent_id: &str,
    checkpoint: &AuditCheckpoint,
    trusted_public_key: Option<&str>,
) -> Result<(), AuditKeyError> {
    let bad = |reason: &str| AuditKeyError::BadCheckpoint {
        seq: checkpoint.seq,
        reason: reason.to_owned(),
    };
    if let Some(trusted) = trusted_public_key {
        if trusted.trim() != checkpoint.public_key {
            return Err(bad("signed by another key than the trusted one"));
        }
    }
    let public = B64
        .decode(&checkpoint.public_key)
        .map_err(|_| bad("public key is not base64"))?;
    if key_id_of(&public) != checkpoint.key_id {
        return Err(bad("key_id does not match the public key"));
    }
    let sig = B64
        .decode(&checkpoint.signature)
        .map_err(|_| bad("signature is not base64"))?;
    UnparsedPublicKey::new(&ED25519, &public)
        .verify(
            &checkpoint_message(agent_id, checkpoint.seq, &checkpoint.head, &checkpoint.at),
            &sig,
        )
        .map_err(|_| bad("signature does not verify"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn generated_key_signs_and_verifies_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit-signing.key");
        let key = AuditKey::load_or_generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let cp = key.checkpoint("agt_1", 5, "ab", "2026-12-06T00:00:00Z");
        verify_checkpoint("agt_1", &cp, None).unwrap();
        verify_checkpoint("agt_1", &cp, Some(key.public_key_b64())).unwrap();
        // another agent id, another head: refused
        assert!(verify_checkpoint("agt_2", &cp, None).is_err());
        let mut forged = cp.clone();
        forged.head = "ac".into();
        assert!(verify_checkpoint("agt_1", &forged, None).is_err());
        // a different key is not the trusted one
        let other = AuditKey::load_or_generate(&dir.path().join("other.key")).unwrap();
        let cp2 = other.checkpoint("agt_1", 5, "ab", "2026-12-06T00:00:00Z");
        verify_checkpoint("agt_1", &cp2, None).unwrap();
        assert!(verify_checkpoint("agt_1", &cp2, Some(key.public_key_b64())).is_err());
        // reload gives the same key
        let again = AuditKey::load_or_generate(&path).unwrap();
        assert_eq!(again.public_key_b64(), key.public_key_b64());
        // loose permissions refused
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            AuditKey::load_or_generate(&path),
            Err(AuditKeyError::Permissions { .. })
        ));
    }
}
