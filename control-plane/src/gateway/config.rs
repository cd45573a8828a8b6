//! `[tunnel]`: the gateway's settings. Raw values come from
//! [`crate::config::RawTunnel`]; [`GatewayConfig::from_raw`] checks them and
//! names the key on failure.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{ConfigError, RawTunnel};

/// Validated `[tunnel]`.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Heartbeat interval announced to agents (`tunnel.heartbeat_interval_seconds`).
    pub heartbeat_interval: Duration,
    /// Frame cap (`tunnel.max_frame_bytes`).
    pub max_frame_bytes: usize,
    /// How long in-flight calls get on shutdown (`tunnel.drain_deadline_seconds`).
    pub drain_deadline: Duration,
    /// Time from the start of a handshake (it got a slot) to the hello
    /// (`tunnel.handshake_timeout_seconds`).
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once (`tunnel.max_concurrent_handshakes`).
    pub max_concurrent_handshakes: usize,
    /// Per-call receive window (`tunnel.stream_window_bytes`).
    pub stream_window_bytes: u32,
    /// Per-connection receive window (`tunnel.connection_window_bytes`).
    pub connection_window_bytes: u32,
    /// QUIC path MTU discovery ceiling (`tunnel.quic_max_udp_payload_bytes`).
    pub quic_max_udp_payload_bytes: u16,
}

/// Defaults.
pub const DEFAULT_HEARTBEAT_INTERVAL_SECONDS: f64 = 5.0;
/// Default drain deadline.
pub const DEFAULT_DRAIN_DEADLINE_SECONDS: f64 = 10.0;
/// Default handshake timeout.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECONDS: f64 = 10.0;

/// Upper bound of `tunnel.max_concurrent_handshakes`.
pub const MAX_CONCURRENT_HANDSHAKES_LIMIT: u64 = 65_536;

impl GatewayConfig {
    /// Check `[tunnel]` (`tunnel.listen` is parsed by [`crate::config`]).
    pub fn from_raw(raw: &RawTunnel) -> Result<Self, ConfigError> {
        let max_frame_bytes = raw
            .max_frame_bytes
            .unwrap_or(protocol::frame::DEFAULT_MAX_FRAME_BYTES as u64);
        let lo = protocol::frame::MIN_MAX_FRAME_BYTES as u64;
        let hi = protocol::frame::DEFAULT_MAX_FRAME_BYTES as u64;
        if !(lo..=hi).contains(&max_frame_bytes) {
            return Err(ConfigError::invalid(
                "tunnel.max_frame_bytes",
                format!("must be between {lo} and {hi}"),
            ));
        }
        let window = |key: &str, v: Option<u64>, default: u32| -> Result<u32, ConfigError> {
            let v = v.unwrap_or(u64::from(default));
            if !(65_535..=(1u64 << 30)).contains(&v) {
                return Err(ConfigError::invalid(
                    key,
                    "must be between 65535 and 1073741824",
                ));
            }
            Ok(v as u32)
        };
        let max_concurrent_handshakes = raw
            .max_concurrent_handshakes
            .unwrap_or(tunnel::server::DEFAULT_MAX_CONCURRENT_HANDSHAKES as u64);
        if !(1..=MAX_CONCURRENT_HANDSHAKES_LIMIT).contains(&max_concurrent_handshakes) {
            return Err(ConfigError::invalid(
                "tunnel.max_concurrent_handshakes",
                format!("must be between 1 and {MAX_CONCURRENT_HANDSHAKES_LIMIT}"),
            ));
        }
        let defaults = tunnel::tuning::Tuning::default();
        let quic_max_udp_payload_bytes =
            tunnel::tuning::Tuning::max_udp_payload_bytes_key(raw.quic_max_udp_payload_bytes)?;
        Ok(Self {
            heartbeat_interval: settings::seconds_between(
                "tunnel.heartbeat_interval_seconds",
                raw.heartbeat_interval_seconds,
                DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
                0.1,
                300.0,
            )?,
            max_frame_bytes: max_frame_bytes as usize,
            drain_deadline: settings::seconds_between(
                "tunnel.drain_deadline_seconds",
                raw.drain_deadline_seconds,
                DEFAULT_DRAIN_DEADLINE_SECONDS,
                0.0,
                3600.0,
            )?,
            handshake_timeout: settings::seconds_between(
                "tunnel.handshake_timeout_seconds",
                raw.handshake_timeout_seconds,
                DEFAULT_HANDSHAKE_TIMEOUT_SECONDS,
                0.5,
                300.0,
            )?,
            max_concurrent_handshakes: max_concurrent_handshakes as usize,
            stream_window_bytes: window(
                "tunnel.stream_window_bytes",
                raw.stream_window_bytes,
                defaults.stream_window_bytes,
            )?,
            connection_window_bytes: window(
                "tunnel.connection_window_bytes",
                raw.connection_window_bytes,
                defaults.connection_window_bytes,
            )?,
            quic_max_udp_payload_bytes,
        })
    }

    /// The tunnel listener's settings, listening on `listen` (`tunnel.listen`).
    pub fn server_settings(&self, listen: SocketAddr) -> tunnel::ServerSettings {
        tunnel::ServerSettings {
            listen,
            heartbeat_interval: self.heartbeat_interval,
            heartbeat_misses: 3,
            max_frame_bytes: self.max_frame_bytes,
            handshake_timeout: self.handshake_timeout,
            max_concurrent_handshakes: self.max_concurrent_handshakes,
            software_version: env!("CARGO_PKG_VERSION").to_owned(),
            tuning: tunnel::tuning::Tuning {
                stream_window_bytes: self.stream_window_bytes,
                connection_window_bytes: self.connection_window_bytes,
                max_udp_payload_bytes: self.quic_max_udp_payload_bytes,
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn tunnel_config(body: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(&format!("[tunnel]\n{body}\n"), Path::new("cp.toml"))
    }

    #[test]
    fn max_concurrent_handshakes_default_value_and_bounds() {
        let c = tunnel_config("").unwrap();
        assert_eq!(
            c.tunnel.max_concurrent_handshakes,
            tunnel::server::DEFAULT_MAX_CONCURRENT_HANDSHAKES
        );
        let c = tunnel_config("max_concurrent_handshakes = 1").unwrap();
        assert_eq!(c.tunnel.max_concurrent_handshakes, 1);
        let settings = c.tunnel.server_settings(c.tunnel_listen);
        assert_eq!(settings.max_concurrent_handshakes, 1);
        for bad in ["0", "65537"] {
            let e = tunnel_config(&format!("max_concurrent_handshakes = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("tunnel.max_concurrent_handshakes"), "{e}");
            assert!(e.contains("between 1 and 65536"), "{e}");
        }
    }

    #[test]
    fn max_concurrent_handshakes_of_the_wrong_type_is_refused_with_its_name() {
        for bad in ["\"many\"", "-3", "2.5"] {
            let e = tunnel_config(&format!("max_concurrent_handshakes = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("max_concurrent_handshakes"), "{bad}: {e}");
        }
    }
}
