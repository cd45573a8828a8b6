//! `[enroll]` and `[pki]` configuration: raw serde structs (unknown keys
//! refused) and their typed forms. Errors name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// Default enrollment listen address.
pub const DEFAULT_ENROLL_LISTEN: &str = "0.0.0.0:7444";
/// Default per-request deadline on the enrollment listener.
pub const DEFAULT_ENROLL_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `[enroll]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnroll {
    /// HTTPS listen address for enrollment.
    pub listen: Option<String>,
    /// `host:port` agents use to reach the enrollment listener (put in join strings).
    pub advertise_address: Option<String>,
    /// Deadline for a whole enrollment connection (handshake, request, response).
    pub request_timeout_seconds: Option<u64>,
    /// Most enrollment connections served at once.
    pub max_connections: Option<usize>,
}

/// Validated `[enroll]`.
#[derive(Debug, Clone)]
pub struct EnrollConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Address advertised in join strings, `host:port`.
    pub advertise_address: String,
    /// Connection deadline.
    pub request_timeout: Duration,
    /// Concurrency cap.
    pub max_connections: usize,
}

/// `[pki]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPki {
    /// Operator-provided CA certificate (PEM). Requires `ca_key_file`.
    pub ca_cert_file: Option<PathBuf>,
    /// Operator-provided CA key (PEM, mode 0600). Requires `ca_cert_file`.
    pub ca_key_file: Option<PathBuf>,
    /// Names (DNS or IP) put in the control plane's server certificate.
    pub server_names: Option<Vec<String>>,
    /// Lifetime of issued agent certificates.
    pub agent_cert_lifetime_seconds: Option<u64>,
    /// Lifetime of the control plane's server certificate (re-issued at 2/3).
    pub server_cert_lifetime_seconds: Option<u64>,
}

/// Validated `[pki]`.
#[derive(Debug, Clone)]
pub struct PkiConfig {
    /// Where the CA comes from.
    pub ca: pki::CaSource,
    /// Server certificate SANs.
    pub server_names: Vec<String>,
    /// Agent certificate lifetime.
    pub agent_cert_lifetime: Duration,
    /// Server certificate lifetime.
    pub server_cert_lifetime: Duration,
}

impl PkiConfig {
    /// Settings for [`pki::IdentityService::open`].
    pub fn identity_settings(&self, data_dir: &Path) -> pki::IdentitySettings {
        pki::IdentitySettings {
            data_dir: data_dir.to_owned(),
            ca: self.ca.clone(),
            server_names: self.server_names.clone(),
            agent_cert_lifetime: self.agent_cert_lifetime,
            server_cert_lifetime: self.server_cert_lifetime,
        }
    }
}

/// This host's name, if the kernel reports one.
pub fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_owned();
    (!name.is_empty()).then_some(name)
}

fn valid_server_name(name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl PkiConfig {
    /// Convert, with `data_dir` for the managed CA location.
    pub fn from_raw(raw: RawPki, data_dir: &Path) -> Result<Self, ConfigError> {
        let ca = match (raw.ca_cert_file, raw.ca_key_file) {
            (None, None) => pki::CaSource::Managed {
                dir: data_dir.join("pki"),
            },
            (Some(cert_file), Some(key_file)) => pki::CaSource::Provided {
                cert_file,
                key_file,
            },
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "pki.ca_key_file",
                    "required when pki.ca_cert_file is set",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "pki.ca_cert_file",
                    "required when pki.ca_key_file is set",
                ))
            }
        };
        let server_names = match raw.server_names {
            Some(names) => {
                if names.is_empty() {
                    return Err(ConfigError::invalid(
                        "pki.server_names",
                        "must name at least one host",
                    ));
                }
                names
            }
            None => {
                let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
                if let Some(h) = host_name().filter(|h| valid_server_name(h) && h != "localhost") {
                    names.push(h);
                }
                names
            }
        };
        if let Some(bad) = server_names.iter().find(|n| !valid_server_name(n)) {
            return Err(ConfigError::invalid(
                "pki.server_names",
                format!("`{bad}` is not a dns name or ip address"),
            ));
        }
        let secs = |key: &str,
                    v: Option<u64>,
                    default: Duration,
                    min: u64|
         -> Result<Duration, ConfigError> {
            match v {
                None => Ok(default),
                Some(s) if s < min => {
                    Err(ConfigError::invalid(key, format!("must be at least {min}")))
                }
                Some(s) if s > 10 * 365 * 86_400 => {
                    Err(ConfigError::invalid(key, "must be at most ten years"))
                }
                Some(s) => Ok(Duration::from_secs(s)),
            }
        };
        Ok(Self {
            ca,
            server_names,
            agent_cert_lifetime: secs(
                "pki.agent_cert_lifetime_seconds",
                raw.agent_cert_lifetime_seconds,
                pki::service::DEFAULT_AGENT_CERT_LIFETIME,
                2,
            )?,
            server_cert_lifetime: secs(
                "pki.server_cert_lifetime_seconds",
                raw.server_cert_lifetime_seconds,
                pki::service::DEFAULT_SERVER_CERT_LIFETIME,
                60,
            )?,
        })
    }
}

impl EnrollConfig {
    /// Convert; `server_names` supplies the default advertised host.
    pub fn from_raw(raw: RawEnroll, pki: &PkiConfig) -> Result<Self, ConfigError> {
        let listen: SocketAddr = raw
            .listen
            .as_deref()
            .unwrap_or(DEFAULT_ENROLL_LISTEN)
            .parse()
            .map_err(|e| ConfigError::invalid("enroll.listen", e))?;
        let advertise_address = match raw.advertise_address {
            Some(a) => {
                if split_host_port(&a).is_none() {
                    return Err(ConfigError::invalid(
                        "enroll.advertise_address",
                        "expected host:port",
                    ));
                }
                a
            }
            None => {
                let host = pki
                    .server_names
                    .first()
                    .map(String::as_str)
                    .unwrap_or("localhost");
                join_host_port(host, listen.port())
            }
        };
        let request_timeout = match raw.request_timeout_seconds {
            None => DEFAULT_ENROLL_REQUEST_TIMEOUT,
            Some(0) => {
                return Err(ConfigError::invalid(
                    "enroll.request_timeout_seconds",
                    "must be at least 1",
                ))
            }
            Some(s) => Duration::from_secs(s),
        };
        let max_connections = match raw.max_connections {
            None => 256,
            Some(0) => {
                return Err(ConfigError::invalid(
                    "enroll.max_connections",
                    "must be at least 1",
                ))
            }
            Some(n) => n,
        };
        Ok(Self {
            listen,
            advertise_address,
            request_timeout,
            max_connections,
        })
    }
}

/// `host:port` as every address key reads it (IPv6 hosts in brackets).
pub use settings::{join_host_port, split_host_port};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let pki = PkiConfig::from_raw(RawPki::default(), Path::new("/d")).unwrap();
        assert_eq!(
            pki.ca,
            pki::CaSource::Managed {
                dir: "/d/pki".into()
            }
        );
        assert_eq!(pki.server_names[..2], ["localhost", "127.0.0.1"]);
        let e = EnrollConfig::from_raw(RawEnroll::default(), &pki).unwrap();
        assert_eq!(e.listen.port(), 7444);
        assert_eq!(e.advertise_address, "localhost:7444");
    }

    #[test]
    fn errors_name_keys() {
        let raw = RawPki {
            ca_cert_file: Some("/x".into()),
            ..Default::default()
        };
        let err = PkiConfig::from_raw(raw, Path::new("/d")).unwrap_err();
        assert!(err.to_string().contains("pki.ca_key_file"), "{err}");
        let raw = RawPki {
            server_names: Some(vec!["bad name".into()]),
            ..Default::default()
        };
        let err = PkiConfig::from_raw(raw, Path::new("/d")).unwrap_err();
        assert!(err.to_string().contains("pki.server_names"), "{err}");
        let raw = RawPki {
            agent_cert_lifetime_seconds: Some(1),
            ..Default::default()
        };
        let err = PkiConfig::from_raw(raw, Path::new("/d")).unwrap_err();
        assert!(
            err.to_string().contains("pki.agent_cert_lifetime_seconds"),
            "{err}"
        );
    }

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("a:1"), Some(("a", 1)));
        assert_eq!(split_host_port("[::1]:7444"), Some(("::1", 7444)));
        assert_eq!(split_host_port("nope"), None);
        assert_eq!(join_host_port("::1", 5), "[::1]:5");
    }
}
