//! The `[audit]` section of the agent config (with `[audit.outputs]` and
//! `[audit.syslog]`): raw serde structs that deny unknown keys, converted
//! into typed settings whose errors name the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// Default `rotate_bytes`: 64 MiB.
pub const DEFAULT_ROTATE_BYTES: u64 = 64 * MIB;
/// Default `checkpoint_every_records`.
pub const DEFAULT_CHECKPOINT_EVERY_RECORDS: u64 = 1000;
/// Default `checkpoint_interval_seconds`.
pub const DEFAULT_CHECKPOINT_INTERVAL_SECONDS: u64 = 60;
/// Smallest `rotate_bytes` accepted (a few lines).
pub const MIN_ROTATE_BYTES: u64 = 4096;

/// `[audit]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Directory of the audit files (default: the data dir).
    pub dir: Option<PathBuf>,
    /// Rotate `audit.jsonl` when it grows past this size.
    pub rotate_bytes: Option<u64>,
    /// Make a checkpoint after this many records.
    pub checkpoint_every_records: Option<u64>,
    /// Make a checkpoint this often when there were new records.
    pub checkpoint_interval_seconds: Option<u64>,
    /// `full` or `outcomes`.
    pub detail: Option<String>,
    /// `[audit.outputs]`.
    #[serde(default)]
    pub outputs: RawOutputs,
    /// `[audit.syslog]` (absent: no shipping).
    #[serde(default)]
    pub syslog: Option<RawSyslog>,
}

/// `[audit.outputs]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutputs {
    /// Keep the scrubbed result content of every call.
    pub store: Option<bool>,
    /// Where (default `<audit dir>/outputs`).
    pub dir: Option<PathBuf>,
    /// Delete stored outputs older than this.
    pub max_age_days: Option<u64>,
    /// Keep the store under this size (oldest deleted first).
    pub max_bytes: Option<u64>,
}

/// `[audit.syslog]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSyslog {
    /// `host:port` of the syslog receiver (TCP + TLS).
    pub address: Option<String>,
    /// PEM CA bundle that signs the receiver's certificate.
    pub ca_file: Option<PathBuf>,
    /// Name checked in the receiver's certificate (default: the host of
    /// `address`).
    pub server_name: Option<String>,
    /// Client certificate (PEM) for mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    /// Its key (PEM).
    pub client_key_file: Option<PathBuf>,
    /// RFC 5424 APP-NAME (default `airlock-agent`).
    pub app_name: Option<String>,
    /// RFC 5424 HOSTNAME (default the system's).
    pub hostname: Option<String>,
    /// Whether `audit ship` runs (default true when the table exists).
    pub enabled: Option<bool>,
    /// RFC 5424 facility: `authpriv` (default), `auth`, `daemon`, `user`,
    /// `local0`…`local7`.
    pub facility: Option<String>,
    /// Who runs the shipper: `agent` (default: `sandbox-agent run` starts it
    /// as a child) or `unit` (the separate `airlock-sandbox-agent-audit-ship.service`).
    pub shipper: Option<String>,
}

/// Who runs `audit ship`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShipperMode {
    /// `sandbox-agent run` starts it as a child process.
    #[default]
    Agent,
    /// A separate service (`airlock-sandbox-agent-audit-ship.service`) runs it.
    Unit,
}

/// The facilities `[audit.syslog] facility` accepts.
pub const SYSLOG_FACILITIES: &[&str] = &[
    "authpriv", "auth", "daemon", "user", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// How much a line holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Detail {
    /// Format v2: inputs, decisions, output digests, checkpoints.
    #[default]
    Full,
    /// The pre-v2 lines: call, ids, outcome, duration; no input, output or
    /// checkpoint.
    Outcomes,
}

/// Typed `[audit.outputs]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputsSettings {
    /// Whether outputs are kept.
    pub store: bool,
    /// The store's directory.
    pub dir: PathBuf,
    /// Retention by age.
    pub max_age: Duration,
    /// Retention by total size.
    pub max_bytes: u64,
}

/// Typed `[audit.syslog]`, used by `sandbox-agent audit ship`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogSettings {
    /// `host:port` as written.
    pub address: String,
    /// The host part of `address`.
    pub host: String,
    /// The port part of `address`.
    pub port: u16,
    /// CA bundle for the receiver (`None`: the built-in web PKI roots).
    pub ca_file: Option<PathBuf>,
    /// TLS server name.
    pub server_name: String,
    /// Client certificate and key for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// RFC 5424 APP-NAME.
    pub app_name: String,
    /// RFC 5424 HOSTNAME.
    pub hostname: String,
    /// Whether shipping is on.
    pub enabled: bool,
    /// RFC 5424 facility name (one of [`SYSLOG_FACILITIES`]).
    pub facility: String,
    /// Who runs the shipper.
    pub shipper: ShipperMode,
}

/// Typed `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// Directory of the audit files.
    pub dir: PathBuf,
    /// Rotation size of `audit.jsonl`.
    pub rotate_bytes: u64,
    /// Checkpoint after this many records.
    pub checkpoint_every_records: u64,
    /// Checkpoint this often when there were new records.
    pub checkpoint_interval: Duration,
    /// What a line holds.
    pub detail: Detail,
    /// `[audit.outputs]`.
    pub outputs: OutputsSettings,
    /// `[audit.syslog]`, when present.
    pub syslog: Option<SyslogSettings>,
}

impl AuditSettings {
    /// The defaults for an audit dir (what an absent `[audit]` gives with
    /// `data_dir = dir`).
    pub fn defaults(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            rotate_bytes: DEFAULT_ROTATE_BYTES,
            checkpoint_every_records: DEFAULT_CHECKPOINT_EVERY_RECORDS,
            checkpoint_interval: Duration::from_secs(DEFAULT_CHECKPOINT_INTERVAL_SECONDS),
            detail: Detail::Full,
            outputs: OutputsSettings {
                store: false,
                dir: dir.join("outputs"),
                max_age: Duration::from_secs(30 * 86_400),
                max_bytes: GIB,
            },
            syslog: None,
        }
    }

    /// Convert `[audit]`, naming the key on failure; `data_dir` is the
    /// default `dir`.
    pub fn from_raw(raw: RawAudit, data_dir: &Path) -> Result<Self, ConfigError> {
        let dir = match raw.dir {
            None => data_dir.to_owned(),
            Some(p) if p.as_os_str().is_empty() => {
                return Err(ConfigError::invalid("audit.dir", "must not be empty"))
            }
            Some(p) => p,
        };
        let mut s = Self::defaults(&dir);
        if let Some(v) = raw.rotate_bytes {
            if v < MIN_ROTATE_BYTES {
                return Err(ConfigError::invalid(
                    "audit.rotate_bytes",
                    format!("must be at least {MIN_ROTATE_BYTES}"),
                ));
            }
            s.rotate_bytes = v;
        }
        if let Some(v) = raw.checkpoint_every_records {
            if v == 0 {
                return Err(ConfigError::invalid(
                    "audit.checkpoint_every_records",
                    "must be greater than 0",
                ));
            }
            s.checkpoint_every_records = v;
        }
        if let Some(v) = raw.checkpoint_interval_seconds {
            if v == 0 {
                return Err(ConfigError::invalid(
                    "audit.checkpoint_interval_seconds",
                    "must be greater than 0",
                ));
            }
            s.checkpoint_interval = Duration::from_secs(v);
        }
        s.detail = match raw.detail.as_deref() {
            None | Some("full") => Detail::Full,
            Some("outcomes") => Detail::Outcomes,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "audit.detail",
                    format!("`{other}` is not one of full, outcomes"),
                ))
            }
        };
        let o = raw.outputs;
        if let Some(store) = o.store {
            s.outputs.store = store;
        }
        if let Some(p) = o.dir {
            if p.as_os_str().is_empty() {
                return Err(ConfigError::invalid(
                    "audit.outputs.dir",
                    "must not be empty",
                ));
            }
            s.outputs.dir = p;
        }
        if let Some(days) = o.max_age_days {
            if days == 0 {
                return Err(ConfigError::invalid(
                    "audit.outputs.max_age_days",
                    "must be greater than 0",
                ));
            }
            s.outputs.max_age = Duration::from_secs(days.saturating_mul(86_400));
        }
        if let Some(b) = o.max_bytes {
            if b == 0 {
                return Err(ConfigError::invalid(
                    "audit.outputs.max_bytes",
                    "must be greater than 0",
                ));
            }
            s.outputs.max_bytes = b;
        }
        s.syslog = raw.syslog.map(SyslogSettings::from_raw).transpose()?;
        Ok(s)
    }
}

/// RFC 5424 PRINTUSASCII without spaces, at most `max` characters.
fn printusascii(key: &str, v: &str, max: usize) -> Result<(), ConfigError> {
    if v.is_empty() || v.len() > max || !v.bytes().all(|b| (33..=126).contains(&b)) {
        return Err(ConfigError::invalid(
            key,
            format!("must be 1 to {max} printable ASCII characters without spaces"),
        ));
    }
    Ok(())
}

/// The system's host name (`localhost` when it cannot be read).
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl SyslogSettings {
    /// Convert `[audit.syslog]`, naming the key on failure.
    pub fn from_raw(raw: RawSyslog) -> Result<Self, ConfigError> {
        let address = raw.address.ok_or_else(|| {
            ConfigError::invalid("audit.syslog.address", "is required in [audit.syslog]")
        })?;
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| ConfigError::invalid("audit.syslog.address", "must be host:port"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(ConfigError::invalid(
                "audit.syslog.address",
                "must be host:port",
            ));
        }
        let port: u16 =
            port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                ConfigError::invalid("audit.syslog.address", "port must be 1-65535")
            })?;
        let client_cert = match (raw.client_cert_file, raw.client_key_file) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "audit.syslog.client_key_file",
                    "is required with client_cert_file",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "audit.syslog.client_cert_file",
                    "is required with client_key_file",
                ))
            }
        };
        let server_name = raw.server_name.unwrap_or_else(|| host.clone());
        if server_name.is_empty() {
            return Err(ConfigError::invalid(
                "audit.syslog.server_name",
                "must not be empty",
            ));
        }
        let app_name = raw.app_name.unwrap_or_else(|| "airlock-agent".to_owned());
        printusascii("audit.syslog.app_name", &app_name, 48)?;
        let hostname = raw.hostname.unwrap_or_else(system_hostname);
        printusascii("audit.syslog.hostname", &hostname, 255)?;
        let facility = raw.facility.unwrap_or_else(|| "authpriv".to_owned());
        if !SYSLOG_FACILITIES.contains(&facility.as_str()) {
            return Err(ConfigError::invalid(
                "audit.syslog.facility",
                format!("must be one of {}", SYSLOG_FACILITIES.join(", ")),
            ));
        }
        let shipper = match raw.shipper.as_deref() {
            None | Some("agent") => ShipperMode::Agent,
            Some("unit") => ShipperMode::Unit,
            Some(_) => {
                return Err(ConfigError::invalid(
                    "audit.syslog.shipper",
                    "must be \"agent\" or \"unit\"",
                ))
            }
        };
        Ok(Self {
            address,
            host,
            port,
            ca_file: raw.ca_file,
            server_name,
            client_cert,
            app_name,
            hostname,
            enabled: raw.enabled.unwrap_or(true),
            facility,
            shipper,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AuditSettings, ConfigError> {
        let raw: RawAudit = toml_like(text);
        AuditSettings::from_raw(raw, Path::new("/var/lib/airlock-agent"))
    }

    // The agent's config parser is the daemon crate's; tests go through it
    // with a whole config to stay honest.
    fn toml_like(text: &str) -> RawAudit {
        let cfg = format!("[audit]\n{text}");
        let raw: crate::config::RawConfig =
            daemon::parse_toml(&cfg, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
        raw.audit
    }

    #[test]
    fn defaults_and_errors_name_the_key() {
        let s = parse("").unwrap();
        assert_eq!(
            s,
            AuditSettings::defaults(Path::new("/var/lib/airlock-agent"))
        );
        assert_eq!(s.rotate_bytes, 64 * MIB);
        assert_eq!(s.outputs.dir, Path::new("/var/lib/airlock-agent/outputs"));
        let s = parse(
            "dir = \"/srv/audit\"\nrotate_bytes = 8192\ndetail = \"outcomes\"\n[audit.outputs]\nstore = true\nmax_age_days = 2\n",
        )
        .unwrap();
        assert_eq!(s.detail, Detail::Outcomes);
        assert_eq!(s.outputs.dir, Path::new("/srv/audit/outputs"));
        assert_eq!(s.outputs.max_age, Duration::from_secs(2 * 86_400));
        for (text, key) in [
            ("rotate_bytes = 10", "audit.rotate_bytes"),
            (
                "checkpoint_every_records = 0",
                "audit.checkpoint_every_records",
            ),
            (
                "checkpoint_interval_seconds = 0",
                "audit.checkpoint_interval_seconds",
            ),
            ("detail = \"all\"", "audit.detail"),
            ("[audit.outputs]\nmax_bytes = 0", "audit.outputs.max_bytes"),
            ("[audit.syslog]\nca_file = \"/x\"", "audit.syslog.address"),
            ("[audit.syslog]\naddress = \"siem\"", "audit.syslog.address"),
            (
                "[audit.syslog]\naddress = \"siem:6514\"\nclient_cert_file = \"/c\"",
                "audit.syslog.client_key_file",
            ),
            (
                "[audit.syslog]\naddress = \"siem:6514\"\napp_name = \"a b\"",
                "audit.syslog.app_name",
            ),
            (
                "[audit.syslog]\naddress = \"siem:6514\"\nfacility = \"kern\"",
                "audit.syslog.facility",
            ),
            (
                "[audit.syslog]\naddress = \"siem:6514\"\nshipper = \"cron\"",
                "audit.syslog.shipper",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let s =
            parse("[audit.syslog]\naddress = \"siem.example.com:6514\"\nca_file = \"/etc/ca.pem\"")
                .unwrap();
        let sys = s.syslog.unwrap();
        assert_eq!((sys.host.as_str(), sys.port), ("siem.example.com", 6514));
        assert_eq!(sys.server_name, "siem.example.com");
        assert_eq!(sys.app_name, "airlock-agent");
        assert!(sys.enabled);
        assert!(!sys.hostname.is_empty());
        assert_eq!(sys.facility, "authpriv");
        assert_eq!(sys.shipper, ShipperMode::Agent);
        let sys = parse(
            "[audit.syslog]\naddress = \"siem:6514\"\nfacility = \"local3\"\nshipper = \"unit\"",
        )
        .unwrap()
        .syslog
        .unwrap();
        assert_eq!(
            (sys.facility.as_str(), sys.shipper),
            ("local3", ShipperMode::Unit)
        );
    }

    #[test]
    fn the_commented_example_parses_when_uncommented() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/examples/sandbox-agent.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text.find("# [audit]").expect("a commented [audit] example");
        let uncommented: String = text[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.trim_start_matches('#').trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        let raw: crate::config::RawConfig =
            daemon::parse_toml(&uncommented, &path).unwrap_or_else(|e| panic!("{e}"));
        let s = AuditSettings::from_raw(raw.audit, Path::new("/var/lib/airlock-agent")).unwrap();
        assert_eq!(s.rotate_bytes, DEFAULT_ROTATE_BYTES);
        assert!(!s.outputs.store);
        let sys = s.syslog.expect("[audit.syslog] in the example");
        assert_eq!(sys.port, 6514);
        assert!(sys.client_cert.is_some());
        assert_eq!(sys.shipper, ShipperMode::Agent);
    }
}
