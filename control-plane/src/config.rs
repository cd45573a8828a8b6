//! Control-plane configuration: TOML parsed into raw serde structs that deny
//! unknown keys, then converted into typed values. Every error names the key
//! (or file) that was wrong.
//!
//! Sections are owned by the module they configure; each module exposes a
//! `Raw*` struct (serde) and a typed struct with a `from_raw` conversion, and
//! this file only composes them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A configuration error naming the file or key at fault (shared by both
/// daemons).
pub use daemon::ConfigError;

/// The file as written, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Directory for the CA, the SQLite log and runtime files.
    pub data_dir: Option<PathBuf>,
    /// `[tunnel]`: where sandbox-agents connect.
    #[serde(default)]
    pub tunnel: RawTunnel,
    /// `[enroll]`: the enrollment HTTPS listener (see `enroll::config`).
    #[serde(default)]
    pub enroll: crate::enroll::config::RawEnroll,
    /// `[pki]`: the internal CA and certificate lifetimes (see `enroll::config`).
    #[serde(default)]
    pub pki: crate::enroll::config::RawPki,
    /// `[admin]`: the admin Unix socket (see `admin`).
    #[serde(default)]
    pub admin: crate::admin::RawAdmin,
    /// How long `serve` waits for work to drain on shutdown.
    pub shutdown_grace_seconds: Option<u64>,
    /// `[api]`: the public HTTP API (see `api::config`).
    #[serde(default)]
    pub api: api::RawApiConfig,
    /// `[catalog]`: agents, environments, API keys (see `catalog::config`).
    #[serde(default)]
    pub catalog: catalog::RawCatalogConfig,
    /// `[session_store]`: the session log (see `session_store::config`).
    #[serde(default)]
    pub session_store: session_store::RawStoreConfig,
    /// `[model]`: the model provider (see `runtime`).
    #[serde(default)]
    pub model: crate::runtime::RawModelConfig,
    /// `[harness]`: leases, retries, budgets, provisioning (see `harness::config`).
    #[serde(default)]
    pub harness: harness::RawHarnessConfig,
    /// `[ops]`: the /metrics, /livez, /readyz listener (absent: off).
    #[serde(default)]
    pub ops: daemon::ops::RawOps,
    /// `[console]`: the web console under `/console` on the API listener.
    #[serde(default)]
    pub console: console::RawConsoleConfig,
}

/// `[tunnel]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTunnel {
    /// UDP (QUIC) and TCP (TLS fallback) listen address; same port number for both.
    pub listen: Option<String>,
    /// Heartbeat interval announced to agents (see `gateway::config`).
    pub heartbeat_interval_seconds: Option<f64>,
    /// Frame cap in bytes.
    pub max_frame_bytes: Option<u64>,
    /// How long in-flight calls get when the gateway drains.
    pub drain_deadline_seconds: Option<f64>,
    /// Time allowed for a handshake, from when it gets a slot to a complete hello.
    pub handshake_timeout_seconds: Option<f64>,
    /// Handshakes in progress at once (see `gateway::config`).
    pub max_concurrent_handshakes: Option<u64>,
    /// Per-call receive window in bytes.
    pub stream_window_bytes: Option<u64>,
    /// Per-connection receive window in bytes.
    pub connection_window_bytes: Option<u64>,
    /// Ceiling of QUIC path MTU discovery, in bytes of UDP payload.
    pub quic_max_udp_payload_bytes: Option<u32>,
}

/// Validated control-plane configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory for the CA, the SQLite log and runtime files.
    pub data_dir: PathBuf,
    /// Tunnel listen address (UDP for QUIC and TCP for the fallback).
    pub tunnel_listen: SocketAddr,
    /// The rest of `[tunnel]` (heartbeats, frame cap, drain, windows).
    pub tunnel: crate::gateway::GatewayConfig,
    /// `[enroll]`.
    pub enroll: crate::enroll::config::EnrollConfig,
    /// `[pki]`.
    pub pki: crate::enroll::config::PkiConfig,
    /// `[admin]`.
    pub admin: crate::admin::AdminConfig,
    /// Drain deadline on shutdown.
    pub shutdown_grace: std::time::Duration,
    /// `[api]`.
    pub api: api::ApiConfig,
    /// `[catalog]`.
    pub catalog: catalog::CatalogConfig,
    /// `[session_store]`.
    pub session_store: session_store::StoreConfig,
    /// `[model]`.
    pub model: crate::runtime::ModelConfig,
    /// `[harness]` (its `instance_id` defaults to host name, pid and a random suffix).
    pub harness: harness::HarnessConfig,
    /// `[ops]`.
    pub ops: daemon::ops::OpsConfig,
    /// `[console]` (checked against `[api]`: TLS or loopback).
    pub console: console::ConsoleConfig,
}

/// Default drain deadline on shutdown.
pub const DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = 10;

/// Default data directory when neither the file nor the flag names one.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/airlock";
/// Default tunnel port.
pub const DEFAULT_TUNNEL_LISTEN: &str = "0.0.0.0:7443";

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        daemon::load_config(path)
    }

    /// Validate config text; `origin` is only used in error messages.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        daemon::parse_config(text, origin)
    }
}

impl daemon::DaemonConfig for Config {
    type Raw = RawConfig;

    fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Convert raw values into typed ones, naming the key on failure.
    fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        let data_dir = raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let tunnel = crate::gateway::GatewayConfig::from_raw(&raw.tunnel)?;
        let listen = raw
            .tunnel
            .listen
            .unwrap_or_else(|| DEFAULT_TUNNEL_LISTEN.to_owned());
        let tunnel_listen = listen
            .parse()
            .map_err(|e| ConfigError::invalid("tunnel.listen", e))?;
        let pki = crate::enroll::config::PkiConfig::from_raw(raw.pki, &data_dir)?;
        let enroll = crate::enroll::config::EnrollConfig::from_raw(raw.enroll, &pki)?;
        let admin = crate::admin::AdminConfig::from_raw(raw.admin, &data_dir)?;
        let shutdown_grace = std::time::Duration::from_secs(
            raw.shutdown_grace_seconds
                .unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECONDS),
        );
        let api = api::ApiConfig::from_raw(&raw.api)?;
        let catalog = catalog::CatalogConfig::from_raw(&raw.catalog, &data_dir)?;
        let session_store = session_store::StoreConfig::from_raw(&raw.session_store, &data_dir)?;
        let model = crate::runtime::ModelConfig::from_raw(raw.model)?;
        let harness = crate::runtime::harness_config(raw.harness)?;
        let ops = daemon::ops::OpsConfig::from_raw(&raw.ops)?;
        let console =
            console::ConsoleConfig::from_raw(&raw.console, api.listen, api.tls.is_some())?;
        Ok(Self {
            console,
            ops,
            model,
            harness,
            api,
            catalog,
            session_store,
            data_dir,
            tunnel_listen,
            tunnel,
            enroll,
            pki,
            admin,
            shutdown_grace,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("nope = 1", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn bad_listen_names_key() {
        let err =
            Config::parse("[tunnel]\nlisten = \"not an addr\"", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("tunnel.listen"), "{err}");
    }
}
