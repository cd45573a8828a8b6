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
    /// Tunnel address, `host:port` (QUIC on UDP, TLS fallback on TCP): the
    /// same as `addresses` with one entry.
    pub address: Option<String>,
    /// Tunnel addresses, `host:port` each: one link to every control-plane
    /// replica (a name resolving to several IP addresses gives one link per
    /// address). Not together with `address`.
    pub addresses: Option<Vec<String>>,
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
    /// The first tunnel address (of `address` or `addresses`).
    pub address: Option<String>,
    /// Every tunnel address, in order (`address` is a list of one; empty:
    /// none configured, the identity record's is used).
    pub addresses: Vec<String>,
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
        let addresses = match (raw.address, raw.addresses) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "control_plane.addresses",
                    "set either control_plane.address or control_plane.addresses, not both",
                ))
            }
            (Some(a), None) => {
                vec![check_addr("control_plane.address", Some(a))?.unwrap_or_default()]
            }
            (None, Some(list)) => {
                if list.is_empty() {
                    return Err(ConfigError::invalid(
                        "control_plane.addresses",
                        "must name at least one host:port",
                    ));
                }
                let mut seen = std::collections::HashSet::new();
                for a in &list {
                    check_addr("control_plane.addresses", Some(a.clone()))?;
                    if !seen.insert(a.to_ascii_lowercase()) {
                        return Err(ConfigError::invalid(
                            "control_plane.addresses",
                            format!("`{a}` is listed twice"),
                        ));
                    }
                }
                list
            }
            (None, None) => Vec::new(),
        };
        Ok(Self {
            address: addresses.first().cloned(),
            addresses,
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

    #[test]
    fn addresses_is_a_list_and_address_a_list_of_one() {
        let one = ControlPlaneConfig::from_raw(RawControlPlane {
            address: Some("cp:7443".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(one.addresses, ["cp:7443"]);
        assert_eq!(one.address.as_deref(), Some("cp:7443"));
        let two = ControlPlaneConfig::from_raw(RawControlPlane {
            addresses: Some(vec!["cp-a:7443".into(), "cp-b:7443".into()]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(two.addresses, ["cp-a:7443", "cp-b:7443"]);
        assert_eq!(two.address.as_deref(), Some("cp-a:7443"));
        for (raw, want) in [
            (
                RawControlPlane {
                    address: Some("cp:7443".into()),
                    addresses: Some(vec!["cp-b:7443".into()]),
                    ..Default::default()
                },
                "not both",
            ),
            (
                RawControlPlane {
                    addresses: Some(vec![]),
                    ..Default::default()
                },
                "at least one",
            ),
            (
                RawControlPlane {
                    addresses: Some(vec!["cp-a:7443".into(), "nope".into()]),
                    ..Default::default()
                },
                "`nope` is not host:port",
            ),
            (
                RawControlPlane {
                    addresses: Some(vec!["cp-a:7443".into(), "CP-A:7443".into()]),
                    ..Default::default()
                },
                "listed twice",
            ),
        ] {
            let e = ControlPlaneConfig::from_raw(raw).unwrap_err().to_string();
            assert!(
                e.contains("control_plane.addresses") && e.contains(want),
                "{e}"
            );
        }
    }
}
