//! Sign-in: the cookie, the server-side session, CSRF and the login rate
//! limit.
//!
//! The cookie `airlock_console` holds 32 random bytes (base64url); the
//! catalog keeps only their SHA-256 ([`token_hash`]), with the API key id,
//! the role, the CSRF token and the expiry. The API key itself is hashed
//! for the catalog lookup (as the API's edge does) and never stored or
//! logged. CSRF tokens are compared in constant time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use base64::Engine;
use catalog::{ConsoleSessionRecord, KeyRole};
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ConsoleError;
use crate::AppState;

/// The cookie's name.
pub const COOKIE: &str = "airlock_console";
/// Failed-or-not sign-in attempts allowed at once per client address.
pub const LOGIN_BURST: f64 = 10.0;
/// Attempts regained per second (one every six seconds).
pub const LOGIN_REFILL_PER_SECOND: f64 = 1.0 / 6.0;

/// 32 random bytes, base64url without padding.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Lowercase hex SHA-256 of a cookie token (what the catalog stores).
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The value of our cookie in `headers`, if any.
pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value that signs in with `token` for `max_age`.
pub fn set_cookie(token: &str, max_age: Duration, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let v = format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/console; Max-Age={}{secure}",
        max_age.as_secs()
    );
    HeaderValue::from_str(&v)
        .unwrap_or_else(|_| HeaderValue::from_static("airlock_console=; Path=/console; Max-Age=0"))
}

/// The `Set-Cookie` value that clears the cookie.
pub fn clear_cookie(secure: bool) -> HeaderValue {
    if secure {
        HeaderValue::from_static(
            "airlock_console=; HttpOnly; SameSite=Strict; Path=/console; Max-Age=0; Secure",
        )
    } else {
        HeaderValue::from_static(
            "airlock_console=; HttpOnly; SameSite=Strict; Path=/console; Max-Age=0",
        )
    }
}

/// A signed-in request: the session and its key.
#[derive(Clone)]
pub struct SignedIn {
    /// The session as stored.
    pub session: ConsoleSessionRecord,
}

impl std::fmt::Debug for SignedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedIn")
            .field("key_id", &self.session.key_id)
            .field("role", &self.session.role)
            .finish_non_exhaustive()
    }
}

impl SignedIn {
    /// The key's id.
    pub fn key_id(&self) -> &str {
        &self.session.key_id
    }

    /// The role.
    pub fn role(&self) -> KeyRole {
        self.session.role
    }

    /// The CSRF token forms carry.
    pub fn csrf(&self) -> &str {
        &self.session.csrf_token
    }

    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn check_csrf(&self, presented: Option<&str>) -> Result<(), ConsoleError> {
        let Some(p) = presented else {
            return Err(ConsoleError::Csrf);
        };
        let expected = self.session.csrf_token.as_bytes();
        if p.len() == expected.len() && bool::from(p.as_bytes().ct_eq(expected)) {
            Ok(())
        } else {
            Err(ConsoleError::Csrf)
        }
    }

    /// `Ok` for a role that may change things; 403 otherwise.
    pub fn require_admin(&self) -> Result<(), ConsoleError> {
        if self.role().can_write() {
            Ok(())
        } else {
            Err(ConsoleError::ReadOnly { role: self.role() })
        }
    }
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ConsoleError> {
        let Some(token) = cookie_token(&parts.headers) else {
            return Err(ConsoleError::NotSignedIn);
        };
        let session = s
            .state
            .api
            .state()
            .catalog
            .find_console_session(&token_hash(&token), time::OffsetDateTime::now_utc())
            .await?
            .ok_or(ConsoleError::NotSignedIn)?;
        Ok(SignedIn { session })
    }
}

/// Token buckets of sign-in attempts per client address.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl LoginLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one attempt for `client` at `now`, or says when one is allowed.
    pub fn check(&self, client: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            buckets.clear();
        }
        let (tokens, last) = buckets
            .entry(client.to_owned())
            .or_insert((LOGIN_BURST, now));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * LOGIN_REFILL_PER_SECOND;
        *tokens = (*tokens + refill).min(LOGIN_BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - *tokens) / LOGIN_REFILL_PER_SECOND,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_found_among_others_and_flags_follow_tls() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; airlock_console=tok; b=2"),
        );
        assert_eq!(cookie_token(&h).as_deref(), Some("tok"));
        let plain = set_cookie("t", Duration::from_secs(60), false);
        let plain = plain.to_str().unwrap();
        assert!(
            plain.contains("HttpOnly")
                && plain.contains("SameSite=Strict")
                && plain.contains("Path=/console")
        );
        assert!(!plain.contains("Secure"));
        assert!(set_cookie("t", Duration::from_secs(60), true)
            .to_str()
            .unwrap()
            .ends_with("; Secure"));
    }

    #[test]
    fn login_attempts_are_limited_per_client() {
        let l = LoginLimiter::new();
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(l.check("1.2.3.4", t0).is_ok());
        }
        assert!(l.check("1.2.3.4", t0).is_err());
        assert!(l.check("5.6.7.8", t0).is_ok());
        assert!(l.check("1.2.3.4", t0 + Duration::from_secs(6)).is_ok());
    }
}
