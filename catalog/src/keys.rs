//! API keys: generation and hashing.
//!
//! A key is [`API_KEY_PREFIX`] followed by 32 random bytes in URL-safe
//! base64 (256 bits of entropy), so a single unsalted SHA-256 is enough to
//! store it: there is nothing to guess. Only the hash and the first
//! characters (a hint for operators) are stored.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Every Airlock API key starts with this.
pub const API_KEY_PREFIX: &str = "sk-airlock-";

/// Characters of the key kept as a hint (the prefix plus four).
const HINT_LEN: usize = API_KEY_PREFIX.len() + 4;

/// A freshly generated key. The plaintext is shown once and never stored.
#[derive(Clone)]
pub struct GeneratedKey {
    /// The key to hand to the caller.
    pub plaintext: String,
    /// What the catalog stores.
    pub key_hash: String,
    /// The first characters, for listings.
    pub hint: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

impl GeneratedKey {
    /// A new random key (from the OS generator).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let plaintext = format!(
            "{API_KEY_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        let hint = plaintext.chars().take(HINT_LEN).collect();
        GeneratedKey {
            key_hash: hash_api_key(&plaintext),
            hint,
            plaintext,
        }
    }
}

/// Lowercase hex SHA-256 of a presented key.
pub fn hash_api_key(plaintext: &str) -> String {
    hex::encode(Sha256::digest(plaintext.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_prefixed_and_hash_stably() {
        let a = GeneratedKey::generate();
        let b = GeneratedKey::generate();
        assert_ne!(a.plaintext, b.plaintext);
        assert!(a.plaintext.starts_with(API_KEY_PREFIX));
        assert_eq!(a.plaintext.len(), API_KEY_PREFIX.len() + 43);
        assert_eq!(a.key_hash, hash_api_key(&a.plaintext));
        assert_eq!(a.key_hash.len(), 64);
        assert!(a.plaintext.starts_with(&a.hint));
        assert!(!format!("{a:?}").contains(&a.plaintext));
    }
}
