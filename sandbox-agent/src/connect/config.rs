//! `[tunnel]` of the agent: how it dials (transports, proxy, timeouts,
//! backoff). Where it dials and who it is come from `[control_plane]` and the
//! enrolled identity.

use std::time::Duration;

use serde::Deserialize;
use tunnel::backoff::{BackoffPolicy, Jitter};
use tunnel::proxy::ProxyConfig;
use tunnel::TransportMode;

use crate::config::ConfigError;

/// `[tunnel]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTunnel {
    /// `auto` (QUIC, TCP fallback; default), `quic` or `tcp`.
    pub transport: Option<String>,
    /// HTTP CONNECT proxy for the TCP transport, `http://[user:pass@]host:port`;
    /// default: `HTTPS_PROXY`/`https_proxy` from the environment.
    pub proxy_url: Option<String>,
    /// Hosts that bypass `proxy_url` (comma-separated); default `NO_PROXY`/`no_proxy`.
    pub no_proxy: Option<String>,
    /// How long QUIC may take before falling back to TCP.
    pub quic_connect_timeout_seconds: Option<f64>,
    /// While on TCP, how often to retry QUIC.
    pub quic_retry_interval_seconds: Option<f64>,
    /// Limit for one TCP dial (proxy, TLS, hello).
    pub connect_timeout_seconds: Option<f64>,
    /// Ceiling of the first reconnect delay (full jitter below it).
    pub reconnect_base_seconds: Option<f64>,
    /// Largest reconnect delay ceiling.
    pub reconnect_cap_seconds: Option<f64>,
    /// Missed heartbeat intervals before the link counts as dead.
    pub heartbeat_misses: Option<u32>,
    /// Frame cap in bytes.
    pub max_frame_bytes: Option<u64>,
    /// How long in-flight calls get on shutdown or when leaving a TCP link.
    pub drain_deadline_seconds: Option<f64>,
    /// Ceiling of QUIC path MTU discovery, in bytes of UDP payload.
    pub quic_max_udp_payload_bytes: Option<u32>,
}

/// Validated `[tunnel]`.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// Transport mode.
    pub transport: TransportMode,
    /// Proxy (from config or environment).
    pub proxy: Option<ProxyConfig>,
    /// QUIC connect timeout.
    pub quic_connect_timeout: Duration,
    /// QUIC retry interval while on TCP.
    pub quic_retry_interval: Duration,
    /// TCP dial limit.
    pub connect_timeout: Duration,
    /// Reconnect backoff.
    pub backoff: BackoffPolicy,
    /// Missed heartbeats before redial.
    pub heartbeat_misses: u32,
    /// Frame cap.
    pub max_frame_bytes: usize,
    /// Drain deadline.
    pub drain_deadline: Duration,
    /// QUIC path MTU discovery ceiling.
    pub quic_max_udp_payload_bytes: u16,
}

impl TunnelConfig {
    /// Convert, naming the key on failure. Reads `HTTPS_PROXY`/`NO_PROXY`
    /// when `proxy_url` is not set.
    pub fn from_raw(raw: RawTunnel) -> Result<Self, ConfigError> {
        let transport = match raw.transport.as_deref().unwrap_or("auto") {
            "auto" => TransportMode::Auto,
            "quic" => TransportMode::QuicOnly,
            "tcp" => TransportMode::TcpOnly,
            other => {
                return Err(ConfigError::invalid(
                    "tunnel.transport",
                    format!("`{other}` is not auto, quic or tcp"),
                ))
            }
        };
        let proxy = match raw.proxy_url.as_deref() {
            Some("") => None,
            Some(url) => {
                let p = ProxyConfig::parse(url, "tunnel.proxy_url")
                    .map_err(|e| ConfigError::invalid("tunnel.proxy_url", e))?;
                let no_proxy = raw
                    .no_proxy
                    .clone()
                    .or_else(|| std::env::var("NO_PROXY").ok())
                    .or_else(|| std::env::var("no_proxy").ok())
                    .unwrap_or_default();
                Some(p.with_no_proxy(&no_proxy))
            }
            None => {
                let p =
                    ProxyConfig::from_env().map_err(|e| ConfigError::invalid("HTTPS_PROXY", e))?;
                match (p, &raw.no_proxy) {
                    (Some(p), Some(np)) => Some(p.with_no_proxy(np)),
                    (p, _) => p,
                }
            }
        };
        let max_frame_bytes = raw
            .max_frame_bytes
            .unwrap_or(protocol::frame::DEFAULT_MAX_FRAME_BYTES as u64);
        let (lo, hi) = (
            protocol::frame::MIN_MAX_FRAME_BYTES as u64,
            protocol::frame::DEFAULT_MAX_FRAME_BYTES as u64,
        );
        if !(lo..=hi).contains(&max_frame_bytes) {
            return Err(ConfigError::invalid(
                "tunnel.max_frame_bytes",
                format!("must be between {lo} and {hi}"),
            ));
        }
        let heartbeat_misses = raw.heartbeat_misses.unwrap_or(3);
        if !(1..=20).contains(&heartbeat_misses) {
            return Err(ConfigError::invalid(
                "tunnel.heartbeat_misses",
                "must be between 1 and 20",
            ));
        }
        let base = settings::seconds_between(
            "tunnel.reconnect_base_seconds",
            raw.reconnect_base_seconds,
            1.0,
            0.01,
            600.0,
        )?;
        let cap = settings::seconds_between(
            "tunnel.reconnect_cap_seconds",
            raw.reconnect_cap_seconds,
            30.0,
            0.01,
            3600.0,
        )?;
        if cap < base {
            return Err(ConfigError::invalid(
                "tunnel.reconnect_cap_seconds",
                "must not be below tunnel.reconnect_base_seconds",
            ));
        }
        let quic_max_udp_payload_bytes =
            tunnel::tuning::Tuning::max_udp_payload_bytes_key(raw.quic_max_udp_payload_bytes)?;
        Ok(Self {
            quic_max_udp_payload_bytes,
            transport,
            proxy,
            quic_connect_timeout: settings::seconds_between(
                "tunnel.quic_connect_timeout_seconds",
                raw.quic_connect_timeout_seconds,
                3.0,
                0.1,
                120.0,
            )?,
            quic_retry_interval: settings::seconds_between(
                "tunnel.quic_retry_interval_seconds",
                raw.quic_retry_interval_seconds,
                60.0,
                0.5,
                86400.0,
            )?,
            connect_timeout: settings::seconds_between(
                "tunnel.connect_timeout_seconds",
                raw.connect_timeout_seconds,
                10.0,
                0.5,
                300.0,
            )?,
            backoff: BackoffPolicy::new(base, cap, Jitter::Full),
            heartbeat_misses,
            max_frame_bytes: max_frame_bytes as usize,
            drain_deadline: settings::seconds_between(
                "tunnel.drain_deadline_seconds",
                raw.drain_deadline_seconds,
                10.0,
                0.0,
                3600.0,
            )?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_named_and_password_hidden() {
        let e = TunnelConfig::from_raw(RawTunnel {
            transport: Some("udp".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("tunnel.transport"), "{e}");
        let e = TunnelConfig::from_raw(RawTunnel {
            proxy_url: Some("socks5://u:hunter2@h:1".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("tunnel.proxy_url") && !e.to_string().contains("hunter2"),
            "{e}"
        );
        let c = TunnelConfig::from_raw(RawTunnel {
            proxy_url: Some("http://u:hunter2@127.0.0.1:3128".into()),
            no_proxy: Some("example.com".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let e = TunnelConfig::from_raw(RawTunnel {
            reconnect_base_seconds: Some(5.0),
            reconnect_cap_seconds: Some(1.0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("tunnel.reconnect_cap_seconds"),
            "{e}"
        );
    }
}
