//! The `[api]` config section: a raw serde struct that denies unknown keys,
//! converted into typed values with errors naming the key.
//!
//! ```toml
//! [api]
//! listen = "127.0.0.1:8080"            # the public API
//! allow_plain_http = false             # plain HTTP off loopback (behind a TLS proxy)
//! max_body_bytes = 16777216            # larger bodies get 413
//! sse_ping_interval_seconds = 15       # `ping` events on idle streams
//! rate_limit_per_second = 0            # per API key; 0 = unlimited
//! rate_limit_burst = 50
//! sse_buffer_events = 4096             # per session, for its live readers
//!
//! [api.tls]                            # HTTPS; reloaded on SIGHUP
//! cert_file = "/etc/airlock/api.crt"   # PEM chain, leaf first
//! key_file = "/etc/airlock/api.key"    # PEM key, not readable by others
//! ```
//!
//! Without `[api.tls]` the API speaks plain HTTP, which is allowed only on a
//! loopback `listen` unless `allow_plain_http = true` (then a warning is
//! logged at start): anything else is an error naming `api.listen`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::ApiLimits;

/// Default listen address (loopback: configure `[api.tls]` to expose it).
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
    /// Serve plain HTTP on a non-loopback address (a TLS proxy in front).
    pub allow_plain_http: Option<bool>,
    /// `[api.tls]`: serve HTTPS.
    pub tls: Option<RawTlsConfig>,
}

/// `[api.tls]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsConfig {
    /// Certificate chain (PEM, leaf first).
    pub cert_file: Option<std::path::PathBuf>,
    /// Private key (PEM).
    pub key_file: Option<std::path::PathBuf>,
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
    /// HTTPS certificate and key (`None`: plain HTTP).
    pub tls: Option<crate::tls::TlsFiles>,
    /// Plain HTTP was explicitly allowed off loopback.
    pub allow_plain_http: bool,
}

impl ApiConfig {
    /// Converts the raw section, naming the key on failure.
    pub fn from_raw(raw: &RawApiConfig) -> Result<Self, ApiConfigError> {
        let listen: SocketAddr = raw
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
        let tls = match &raw.tls {
            None => None,
            Some(t) => match (&t.cert_file, &t.key_file) {
                (Some(c), Some(k)) => {
                    for (key, path) in [("tls.cert_file", c), ("tls.key_file", k)] {
                        if !path.is_absolute() {
                            return Err(invalid(
                                key,
                                format!("{} is not an absolute path", path.display()),
                            ));
                        }
                    }
                    Some(crate::tls::TlsFiles {
                        cert_file: c.clone(),
                        key_file: k.clone(),
                        section: "api.tls".into(),
                    })
                }
                (None, _) => return Err(invalid("tls.cert_file", "required in [api.tls]")),
                (_, None) => return Err(invalid("tls.key_file", "required in [api.tls]")),
            },
        };
        let allow_plain_http = raw.allow_plain_http.unwrap_or(false);
        if tls.is_none() && !allow_plain_http && !listen.ip().is_loopback() {
            return Err(invalid(
                "listen",
                format!(
                    "{listen} is not a loopback address: plain HTTP would expose API keys on the \
                     network; configure [api.tls] cert_file and key_file, or set \
                     api.allow_plain_http = true if a TLS proxy terminates in front"
                ),
            ));
        }
        Ok(ApiConfig {
            listen,
            tls,
            allow_plain_http,
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
            tls: None,
            allow_plain_http: false,
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
        let policy = |t: &str| {
            ApiConfig::from_raw(&toml::from_str::<RawApiConfig>(t).unwrap())
                .map(|c| c.tls.is_some())
                .map_err(|e| e.to_string())
        };
        // plain HTTP: loopback only, unless allowed explicitly
        assert_eq!(policy("listen = \"127.0.0.1:1\""), Ok(false));
        assert_eq!(policy("listen = \"[::1]:1\""), Ok(false));
        let e = policy("listen = \"0.0.0.0:8080\"").unwrap_err();
        assert!(e.contains("api.listen") && e.contains("api.tls"), "{e}");
        assert!(policy("listen = \"10.1.2.3:8080\"").is_err());
        assert_eq!(
            policy("listen = \"0.0.0.0:8080\"\nallow_plain_http = true"),
            Ok(false)
        );
        let tls = "listen = \"0.0.0.0:8443\"\n[tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"";
        assert_eq!(policy(tls), Ok(true));
        let e = policy("[tls]\ncert_file = \"/c.pem\"").unwrap_err();
        assert!(e.contains("api.tls.key_file"), "{e}");
        let e = policy("[tls]\ncert_file = \"c.pem\"\nkey_file = \"/k.pem\"").unwrap_err();
        assert!(
            e.contains("api.tls.cert_file") && e.contains("absolute"),
            "{e}"
        );
        assert!(toml::from_str::<RawApiConfig>("[tls]\ncert = 1")
            .unwrap_err()
            .to_string()
            .contains("cert"));
        assert!(toml::from_str::<RawApiConfig>("lisen = 1")
            .unwrap_err()
            .to_string()
            .contains("lisen"));
    }
}
