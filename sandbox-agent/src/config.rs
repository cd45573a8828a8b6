//! Agent configuration: TOML parsed into raw serde structs that deny unknown
//! keys, then converted into typed values. Every error names the key (or file)
//! that was wrong. Sections are owned by the module they configure; this file
//! composes them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A configuration error naming the file or key at fault (shared by both
/// daemons).
pub use daemon::ConfigError;

/// The file as written, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Directory for the agent's key, certificate, state and audit log.
    pub data_dir: Option<PathBuf>,
    /// `[sandbox]`: the Docker backend and executor limits.
    #[serde(default)]
    pub sandbox: crate::sandbox::config::RawSandbox,
    /// `[policy]`: what the control plane may ask of this agent.
    #[serde(default)]
    pub policy: crate::sandbox::config::RawPolicy,
    /// `[pool]`: warm containers.
    #[serde(default)]
    pub pool: crate::sandbox::config::RawPool,
    /// `[control_plane]`: where to enroll and connect, and the pinned CA.
    #[serde(default)]
    pub control_plane: crate::identity::config::RawControlPlane,
    /// `[identity]`: where the key and certificate live.
    #[serde(default)]
    pub identity: crate::identity::config::RawIdentity,
    /// `[tunnel]`: how the agent dials (transports, proxy, backoff).
    #[serde(default)]
    pub tunnel: crate::connect::config::RawTunnel,
    /// `[bridge]`: the local vault-bridge's egress channel (absent: none).
    #[serde(default)]
    pub bridge: Option<crate::sandbox::config::RawBridge>,
    /// `[audit]`: the audit record (dir, rotation, checkpoints, detail,
    /// outputs store, syslog shipping).
    #[serde(default)]
    pub audit: crate::audit::config::RawAudit,
    /// `[ops]`: the /metrics, /livez, /readyz listener (absent: off).
    #[serde(default)]
    pub ops: daemon::ops::RawOps,
}

/// Validated agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory for the agent's key, certificate, state and audit log.
    pub data_dir: PathBuf,
    /// `[sandbox]`.
    pub sandbox: crate::sandbox::config::SandboxSettings,
    /// `[policy]`.
    pub policy: crate::sandbox::config::Policy,
    /// `[pool]`.
    pub pool: crate::sandbox::config::PoolSettings,
    /// `[control_plane]`.
    pub control_plane: crate::identity::config::ControlPlaneConfig,
    /// `[identity]`.
    pub identity: crate::identity::config::IdentityConfig,
    /// `[tunnel]`.
    pub tunnel: crate::connect::config::TunnelConfig,
    /// `[audit]`.
    pub audit: crate::audit::AuditSettings,
    /// `[ops]`.
    pub ops: daemon::ops::OpsConfig,
}

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/airlock-agent";

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
        let mut sandbox = crate::sandbox::config::SandboxSettings::from_raw(raw.sandbox)?;
        // `[bridge]` lives with the sandbox settings: containers are built from them.
        sandbox.bridge = crate::sandbox::config::BridgeSettings::from_raw(raw.bridge)?;
        let policy = crate::sandbox::config::Policy::from_raw(raw.policy, &sandbox.default_image)?;
        let pool =
            crate::sandbox::config::PoolSettings::from_raw(raw.pool, &sandbox.default_image)?;
        let data_dir = raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let control_plane =
            crate::identity::config::ControlPlaneConfig::from_raw(raw.control_plane)?;
        let identity = crate::identity::config::IdentityConfig::from_raw(raw.identity, &data_dir);
        let tunnel = crate::connect::config::TunnelConfig::from_raw(raw.tunnel)?;
        let audit = crate::audit::AuditSettings::from_raw(raw.audit, &data_dir)?;
        let ops = daemon::ops::OpsConfig::from_raw(&raw.ops)?;
        Ok(Self {
            ops,
            data_dir,
            control_plane,
            identity,
            tunnel,
            sandbox,
            policy,
            pool,
            audit,
        })
    }
}
