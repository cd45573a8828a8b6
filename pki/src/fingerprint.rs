//! CA fingerprints: `sha256:<64 lowercase hex>` of the CA certificate's DER.
//! This is what an operator copies from the control plane to an agent, and
//! what the agent pins.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// SHA-256 of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

/// A fingerprint string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FingerprintError {
    /// The string does not start with `sha256:`.
    #[error("fingerprint `{0}` must start with `sha256:`")]
    MissingPrefix(String),
    /// The part after the prefix is not 32 bytes of hex.
    #[error("fingerprint `{0}` must be `sha256:` followed by 64 hex digits")]
    BadHex(String),
}

impl Fingerprint {
    /// Fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    /// Accepts `sha256:` followed by 64 hex digits, in either case, with or
    /// without `:` between byte pairs (as `openssl x509 -fingerprint` prints).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let rest = t
            .strip_prefix("sha256:")
            .or_else(|| t.strip_prefix("SHA256:"))
            .ok_or_else(|| FingerprintError::MissingPrefix(s.to_owned()))?;
        let digits: String = rest.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(digits).map_err(|_| FingerprintError::BadHex(s.to_owned()))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| FingerprintError::BadHex(s.to_owned()))?;
        Ok(Self(arr))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_openssl_style() {
        let f = Fingerprint::of_der(b"hello");
        let s = f.to_string();
        assert!(s.starts_with("sha256:") && s.len() == 7 + 64);
        assert_eq!(s.parse::<Fingerprint>().unwrap(), f);
        let openssl = format!(
            "SHA256:{}",
            hex::encode_upper(f.as_bytes())
                .as_bytes()
                .chunks(2)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join(":")
        );
        assert_eq!(openssl.parse::<Fingerprint>().unwrap(), f);
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            "abc".parse::<Fingerprint>(),
            Err(FingerprintError::MissingPrefix(_))
        ));
        assert!(matches!(
            "sha256:abcd".parse::<Fingerprint>(),
            Err(FingerprintError::BadHex(_))
        ));
    }
}
