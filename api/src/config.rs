//! The `[api]` config section: a raw serde struct that denies unknown keys,
//! converted into typed values with errors naming the key.
//!
//! ```toml
//! [api]
//! listen = "127.0.0.1:8080"            # the public API (HTTP)
//! max_body_bytes = 16777216            # larger bodies get 413
//! sse_ping_interval_seconds = 15       # `ping` events on idle streams
//! rate_limit_per_second = 0            # per API key; 0 = unlimited
//! rate_limit_burst = 50
//! sse_buffer_events = 4096             # per session, for its live readers
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::ApiLimits;

/// Default listen address (loopback: put a TLS proxy in front to expose it).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default body limit: 16 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;
/// Default ping interval of SSE streams.
pub const DEFAULT_SSE_PING_INTERVAL_SECONDS: u64 = 15;
/// Default burst of the per-key rate limit.
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 50;
/// Default buffer of a session's shared tail.
pub const DEFAULT_SSE_BUFFER_EVENTS: usize = 4096;

/// `[api]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiConfig {
    /// Listen address.
    pub listen: Option<String>,
    /// Largest request body.
    pub max_body_bytes: Option<u64>,
    /// Ping interval of SSE streams.
    pub sse_ping_interval_seconds: Option<f64>,
    /// Requests per second per API key (0: unlimited).
    pub rate_limit_per_second: Option<f64>,
    /// Burst of the rate limit.
    pub rate_limit_burst: Option<u32>,
    /// Items a session's shared tail buffers for slow live readers.
    pub sse_buffer_events: Option<usize>,
}

/// A bad `[api]` value; `key` is the dotted key (`api.listen`).
pub type ApiConfigError = settings::InvalidKey;

fn invalid(key: &str, message: impl std::fmt::Display) -> ApiConfigError {
    settings::InvalidKey::in_section("api", key, message)
}

/// The validated section.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Where the API listens.
    pub listen: SocketAddr,
    /// Limits handed to the router.
    pub limits: ApiLimits,
}

impl ApiConfig {
    /// Converts the raw section, naming the key on failure.
    pub fn from_raw(raw: &RawApiConfig) -> Result<Self, ApiConfigError> {
        let listen = raw
            .listen
            .as_deref()
            .unwrap_or(DEFAULT_LISTEN)
            .parse()
            .map_err(|e| invalid("listen", e))?;
        let max_body_bytes = match raw.max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(n) if n >= 1024 => n,
            Some(n) => {
                return Err(invalid(
                    "max_body_bytes",
                    format!("{n} is below the minimum of 1024"),
                ))
            }
        };
        let sse_ping_interval = match raw.sse_ping_interval_seconds {
            None => Duration::from_secs(DEFAULT_SSE_PING_INTERVAL_SECONDS),
            Some(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => Duration::from_secs_f64(s),
            Some(s) => {
                return Err(invalid(
                    "sse_ping_interval_seconds",
                    format!("{s} is not within (0, 3600]"),
                ))
            }
        };
        let rate_limit_per_second = match raw.rate_limit_per_second {
            None => None,
            Some(0.0) => None,
            Some(r) if r.is_finite() && r > 0.0 => Some(r),
            Some(r) => {
                return Err(invalid(
                    "rate_limit_per_second",
                    format!("{r} is not a positive number or 0"),
                ))
            }
        };
        let rate_limit_burst = match raw.rate_limit_burst {
            None => DEFAULT_RATE_LIMIT_BURST,
            Some(0) => return Err(invalid("rate_limit_burst", "must be at least 1")),
            Some(n) => n,
        };
        let sse_buffer_events = match raw.sse_buffer_events {
            None => DEFAULT_SSE_BUFFER_EVENTS,
            Some(n) if (16..=1_000_000).contains(&n) => n,
            Some(n) => {
                return Err(invalid(
                    "sse_buffer_events",
                    format!("{n} is not within 16..=1000000"),
                ))
            }
        };
        Ok(ApiConfig {
            listen,
            limits: ApiLimits {
                max_body_bytes,
                sse_ping_interval,
                rate_limit_per_second,
                rate_limit_burst,
                sse_buffer_events,
            },
        })
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        // The default raw section is valid by construction.
        Self::from_raw(&RawApiConfig::default()).unwrap_or(ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            limits: ApiLimits::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_the_key() {
        let c = ApiConfig::from_raw(&RawApiConfig::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.limits.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert!(c.limits.rate_limit_per_second.is_none());
        let bad = |raw: RawApiConfig| ApiConfig::from_raw(&raw).unwrap_err().to_string();
        assert!(bad(RawApiConfig {
            listen: Some("nope".into()),
            ..Default::default()
        })
        .contains("api.listen"));
        assert!(bad(RawApiConfig {
            max_body_bytes: Some(10),
            ..Default::default()
        })
        .contains("api.max_body_bytes"));
        assert!(bad(RawApiConfig {
            sse_ping_interval_seconds: Some(0.0),
            ..Default::default()
        })
        .contains("api.sse_ping_interval_seconds"));
        assert!(bad(RawApiConfig {
            rate_limit_per_second: Some(-1.0),
            ..Default::default()
        })
        .contains("api.rate_limit_per_second"));
        assert!(bad(RawApiConfig {
            rate_limit_burst: Some(0),
            ..Default::default()
        })
        .contains("api.rate_limit_burst"));
        let raw: RawApiConfig =
            toml::from_str("listen = \"127.0.0.1:0\"\nrate_limit_per_second = 5").unwrap();
        assert_eq!(
            ApiConfig::from_raw(&raw)
                .unwrap()
                .limits
                .rate_limit_per_second,
            Some(5.0)
        );
        assert!(toml::from_str::<RawApiConfig>("lisen = 1")
            .unwrap_err()
            .to_string()
            .contains("lisen"));
    }
}
