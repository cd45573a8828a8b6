//! Join tokens: single-use, expiring secrets an operator hands to one agent
//! host. Only the SHA-256 of a token is stored; the plaintext is shown once,
//! when created. A *join string* bundles a token with the enrollment address
//! and the CA fingerprint so the operator can paste one value.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::fingerprint::Fingerprint;

const TOKEN_PREFIX: &str = "ajt_";
const JOIN_PREFIX: &str = "airlock-join-v1.";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a join token was refused. Every variant is the presenter's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not shaped like a join token at all.
    #[error("join token is malformed")]
    Malformed,
    /// No such token was ever issued (or it was issued by another control plane).
    #[error("join token is unknown")]
    Unknown,
    /// The token's TTL has passed.
    #[error("join token {token_id} expired")]
    Expired {
        /// Public id of the token (safe to log).
        token_id: String,
    },
    /// The token was already used to enroll an agent.
    #[error("join token {token_id} was already used (by agent {used_by})")]
    AlreadyUsed {
        /// Public id of the token (safe to log).
        token_id: String,
        /// The agent that used it.
        used_by: String,
    },
    /// An operator revoked the token before it was used.
    #[error("join token {token_id} was revoked")]
    Revoked {
        /// Public id of the token (safe to log).
        token_id: String,
    },
}

/// A join token's plaintext. `Debug` and `Display` do not reveal it; use
/// [`JoinToken::expose`] to print it once to the operator.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken(String);

impl JoinToken {
    /// A fresh token: `ajt_` and 43 base64url characters (256 bits).
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Self(format!("{TOKEN_PREFIX}{}", B64.encode(b)))
    }

    /// Check the shape of a presented token (not whether it is valid).
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        let rest = s.strip_prefix(TOKEN_PREFIX).ok_or(TokenError::Malformed)?;
        match B64.decode(rest) {
            Ok(b) if b.len() == 32 => Ok(Self(s.to_owned())),
            _ => Err(TokenError::Malformed),
        }
    }

    /// Hex SHA-256 of the token: what the database stores.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }

    /// The plaintext, for showing to the operator once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinToken([redacted])")
    }
}

/// A freshly created token, as returned to the operator.
#[derive(Debug, Clone)]
pub struct CreatedToken {
    /// The secret (shown once).
    pub token: JoinToken,
    /// Public id, safe to log and to show in listings.
    pub token_id: String,
    /// The environment an agent enrolling with it joins.
    pub environment_id: crate::EnvironmentId,
    /// When it stops working.
    pub expires_at: SystemTime,
}

/// Where a join token is in its life, as of the moment it was read.
/// Precedence when several apply: used, then revoked, then expired (a used
/// token cannot be revoked; a revoked token that has since passed its expiry
/// stays `revoked`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum TokenState {
    /// Unused, unrevoked and not yet expired: it can enroll one agent.
    Active,
    /// Its TTL passed before anyone used it.
    Expired,
    /// It enrolled an agent.
    Used {
        /// The agent it enrolled.
        used_by: crate::AgentId,
        /// When, Unix seconds.
        used_at: i64,
    },
    /// An operator revoked it before it was used.
    Revoked {
        /// When, Unix seconds.
        revoked_at: i64,
    },
}

impl TokenState {
    /// `active`, `expired`, `used` or `revoked`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Used { .. } => "used",
            Self::Revoked { .. } => "revoked",
        }
    }

    /// Whether the token can still enroll an agent.
    pub fn is_active(&self) -> bool {
        matches!(self, Self::Active)
    }

    /// The state of a token with these stored columns at `now` (Unix
    /// seconds), e.g. a row of the shared catalog; the error names what is
    /// inconsistent.
    pub fn at(
        expires_at: i64,
        used_at: Option<i64>,
        used_by: Option<String>,
        revoked_at: Option<i64>,
        now: i64,
    ) -> Result<Self, String> {
        crate::store::token_state(expires_at, used_at, used_by, revoked_at, now)
    }
}

/// A join token as listed to the operator: public fields only, never the
/// secret or its hash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenRecord {
    /// Public id (`tok_...`).
    pub token_id: String,
    /// The environment an agent enrolling with it joins.
    pub environment_id: crate::EnvironmentId,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
    /// State when read.
    #[serde(flatten)]
    pub state: TokenState,
}

/// Everything an agent needs to enroll, as one copy-pasteable string:
/// `airlock-join-v1.<base64url(json)>`.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JoinString {
    /// The join token.
    #[serde(rename = "t")]
    token: String,
    /// Enrollment address, `host:port`.
    #[serde(rename = "e")]
    pub enroll_address: String,
    /// Pinned CA fingerprint.
    #[serde(rename = "f")]
    pub ca_fingerprint: Fingerprint,
    /// Tunnel address, `host:port`, if the control plane advertised one.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub tunnel_address: Option<String>,
}

impl fmt::Debug for JoinString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinString")
            .field("token", &"[redacted]")
            .field("enroll_address", &self.enroll_address)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("tunnel_address", &self.tunnel_address)
            .finish()
    }
}

/// A join string that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("join string is malformed (expected `{JOIN_PREFIX}...` as printed by `control-plane tokens create`)")]
pub struct JoinStringError;

impl JoinString {
    /// Bundle a token with where and whom to enroll with.
    pub fn new(
        token: &JoinToken,
        enroll_address: String,
        ca_fingerprint: Fingerprint,
        tunnel_address: Option<String>,
    ) -> Self {
        Self {
            token: token.expose().to_owned(),
            enroll_address,
            ca_fingerprint,
            tunnel_address,
        }
    }

    /// The token inside.
    pub fn token(&self) -> Result<JoinToken, TokenError> {
        JoinToken::parse(&self.token)
    }

    /// Encode (this contains the secret: show it to the operator only).
    pub fn encode(&self) -> String {
        // Serialising a struct of strings cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{JOIN_PREFIX}{}", B64.encode(json))
    }
}

impl FromStr for JoinString {
    type Err = JoinStringError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.trim().strip_prefix(JOIN_PREFIX).ok_or(JoinStringError)?;
        let json = B64.decode(rest).map_err(|_| JoinStringError)?;
        let js: JoinString = serde_json::from_slice(&json).map_err(|_| JoinStringError)?;
        js.token().map_err(|_| JoinStringError)?;
        Ok(js)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shape_and_redaction() {
        let t = JoinToken::generate();
        assert_eq!(JoinToken::parse(t.expose()).unwrap(), t);
        assert!(!format!("{t:?}").contains(&t.expose()[4..]));
        assert_eq!(t.hash().len(), 64);
        assert_eq!(JoinToken::parse("ajt_short"), Err(TokenError::Malformed));
        assert_eq!(JoinToken::parse("nope"), Err(TokenError::Malformed));
    }

    #[test]
    fn join_string_round_trip() {
        let t = JoinToken::generate();
        let fp = Fingerprint::of_der(b"ca");
        let js = JoinString::new(
            &t,
            "127.0.0.1:7444".into(),
            fp,
            Some("127.0.0.1:7443".into()),
        );
        let s = js.encode();
        let back: JoinString = s.parse().unwrap();
        assert_eq!(back, js);
        assert_eq!(back.token().unwrap(), t);
        assert!("airlock-join-v1.zzz".parse::<JoinString>().is_err());
        assert!(!format!("{js:?}").contains(&t.expose()[4..]));
    }
}
