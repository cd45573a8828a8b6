//! The `[console]` config section of the control plane.
//!
//! ```toml
//! [console]
//! enabled = true              # default: on when [api] listens on loopback or has [api.tls]
//! session_ttl_minutes = 480   # how long a sign-in lasts (1..=10080)
//! ```
//!
//! The console is served under `/console` on the API's listener, with the
//! API's TLS. Turning it on over plain HTTP on a non-loopback address is an
//! error naming `console.enabled`: its cookie would cross the network in
//! clear.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use settings::InvalidKey;

/// Default lifetime of a sign-in.
pub const DEFAULT_SESSION_TTL_MINUTES: u64 = 480;
/// Longest sign-in allowed (a week).
pub const MAX_SESSION_TTL_MINUTES: u64 = 7 * 24 * 60;

/// `[console]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsoleConfig {
    /// Serve the console (default: loopback or TLS).
    pub enabled: Option<bool>,
    /// Lifetime of a sign-in, in minutes.
    pub session_ttl_minutes: Option<u64>,
}

/// The validated `[console]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// Whether `/console` is served.
    pub enabled: bool,
    /// Lifetime of a sign-in.
    pub session_ttl: Duration,
    /// The cookie gets `Secure` (the API listener speaks TLS).
    pub secure_cookies: bool,
}

impl ConsoleConfig {
    /// Checks `raw` against the API listener: `api_listen` and whether it has
    /// `[api.tls]`. Errors name the key.
    pub fn from_raw(
        raw: &RawConsoleConfig,
        api_listen: SocketAddr,
        api_tls: bool,
    ) -> Result<Self, InvalidKey> {
        let safe = api_tls || api_listen.ip().is_loopback();
        let enabled = match raw.enabled {
            Some(true) if !safe => {
                return Err(InvalidKey::new(
                    "console.enabled",
                    format!(
                        "the console needs [api.tls] when the API listens on a non-loopback address ({api_listen}): its sign-in cookie would cross the network in clear"
                    ),
                ))
            }
            Some(e) => e,
            None => safe,
        };
        let minutes = raw
            .session_ttl_minutes
            .unwrap_or(DEFAULT_SESSION_TTL_MINUTES);
        if minutes == 0 || minutes > MAX_SESSION_TTL_MINUTES {
            return Err(InvalidKey::new(
                "console.session_ttl_minutes",
                format!("must be within 1..={MAX_SESSION_TTL_MINUTES}, got {minutes}"),
            ));
        }
        Ok(ConsoleConfig {
            enabled,
            session_ttl: Duration::from_secs(minutes * 60),
            secure_cookies: api_tls,
        })
    }

    /// A config for tests and embedding: enabled, default lifetime.
    pub fn enabled(secure_cookies: bool) -> Self {
        ConsoleConfig {
            enabled: true,
            session_ttl: Duration::from_secs(DEFAULT_SESSION_TTL_MINUTES * 60),
            secure_cookies,
        }
    }
}
