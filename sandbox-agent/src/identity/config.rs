//! `[control_plane]` and `[identity]` configuration of the agent.
//!
//! Every `[control_plane]` key is optional: `sandbox-agent enroll` records
//! what it learned (from a join string or flags) in `identity.json`, and
//! values set here override it.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use settings::split_host_port;

use crate::config::ConfigError;

/// Default tunnel port, used when only a host is known.
pub const DEFAULT_TUNNEL_PORT: u16 = 7443;

/// `[control_plane]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControlPlane {
    /// Tunnel address, `host:port` (QUIC on UDP, TLS fallback on TCP).
    pub address: Option<String>,
    /// Enrollment address, `host:port`.
    pub enroll_address: Option<String>,
    /// Pinned CA fingerprint, `sha256:<hex>`.
    pub ca_fingerprint: Option<String>,
    /// Name the control plane's certificate must carry (default: the host of `address`).
    pub server_name: Option<String>,
}

/// Validated `[control_plane]`.
#[derive(Debug, Clone, Default)]
pub struct ControlPlaneConfig {
    /// Tunnel address.
    pub address: Option<String>,
    /// Enrollment address.
    pub enroll_address: Option<String>,
    /// Pinned CA fingerprint.
    pub ca_fingerprint: Option<pki::Fingerprint>,
    /// TLS server name.
    pub server_name: Option<String>,
}

/// `[identity]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// Directory of the key, certificate, CA and identity record (default `<data_dir>/identity`).
    pub dir: Option<PathBuf>,
}

/// Validated `[identity]`.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Identity directory.
    pub dir: PathBuf,
}

fn check_addr(key: &str, v: Option<String>) -> Result<Option<String>, ConfigError> {
    match v {
        Some(a) if split_host_port(&a).is_none() => {
            Err(ConfigError::invalid(key, format!("`{a}` is not host:port")))
        }
        other => Ok(other),
    }
}

impl ControlPlaneConfig {
    /// Convert, naming the key on failure.
    pub fn from_raw(raw: RawControlPlane) -> Result<Self, ConfigError> {
        Ok(Self {
            address: check_addr("control_plane.address", raw.address)?,
            enroll_address: check_addr("control_plane.enroll_address", raw.enroll_address)?,
            ca_fingerprint: raw
                .ca_fingerprint
                .map(|f| {
                    f.parse()
                        .map_err(|e| ConfigError::invalid("control_plane.ca_fingerprint", e))
                })
                .transpose()?,
            server_name: raw.server_name,
        })
    }
}

impl IdentityConfig {
    /// Convert.
    pub fn from_raw(raw: RawIdentity, data_dir: &Path) -> Self {
        Self {
            dir: raw.dir.unwrap_or_else(|| data_dir.join("identity")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_named() {
        let err = ControlPlaneConfig::from_raw(RawControlPlane {
            address: Some("nope".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("control_plane.address"), "{err}");
        let err = ControlPlaneConfig::from_raw(RawControlPlane {
            ca_fingerprint: Some("md5:1".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("control_plane.ca_fingerprint"),
            "{err}"
        );
        assert_eq!(split_host_port("[::1]:7443"), Some(("::1", 7443)));
    }
}
