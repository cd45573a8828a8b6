//! The bridge's TOML config: raw serde structs with `deny_unknown_fields`,
//! turned into typed values whose errors name the key. Sections:
//! `[bridge]` (data dir, the agent channel's socket and allowed peers,
//! shutdown grace), `[backend]` (`type = "file" | "openbao"`) with
//! `[backend.file]` or `[backend.openbao]` (+ `[backend.openbao.approle]`),
//! `[egress]` (per-sandbox socket dir, upstream trust roots, connect timeout),
//! `[mcp]` (the MCP client's request deadline, where plain http is allowed,
//! how early OAuth tokens are refreshed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use settings::InvalidKey;

pub use crate::backend::SecretSource;
pub use daemon::ConfigError;

/// Default data directory (the systemd unit's `StateDirectory=`).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/airlock-vault-bridge";
/// Default agent channel socket (the systemd unit's `RuntimeDirectory=`).
pub const DEFAULT_SOCKET_PATH: &str = "/run/airlock-vault-bridge/agent.sock";
/// Default deadline of one backend call.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The file as written, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[bridge]`.
    #[serde(default)]
    pub bridge: RawBridge,
    /// `[backend]`.
    #[serde(default)]
    pub backend: RawBackend,
    /// `[egress]`.
    #[serde(default)]
    pub egress: RawEgress,
    /// `[mcp]`.
    #[serde(default)]
    pub mcp: RawMcp,
    /// `[ops]`: the /metrics, /livez, /readyz listener (absent: off).
    #[serde(default)]
    pub ops: daemon::ops::RawOps,
}

/// `[mcp]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcp {
    /// Deadline of one MCP request (`tools/list`, `tools/call`).
    pub call_timeout_seconds: Option<f64>,
    /// Where `http://` MCP servers are allowed: `never`, `loopback` (default) or `any`.
    pub plain_http: Option<String>,
    /// Refresh an `mcp_oauth` access token this long before it expires.
    pub refresh_margin_seconds: Option<f64>,
}

/// `[egress]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEgress {
    /// Directory of the per-sandbox egress sockets (`<dir>/<sandbox_id>/egress.sock`).
    pub socket_dir: Option<PathBuf>,
    /// PEM files of the CAs upstream hosts' certificates chain to (default: Mozilla's roots).
    pub upstream_ca_files: Option<Vec<PathBuf>>,
    /// Deadline of an upstream TCP connect plus TLS handshake.
    pub connect_timeout_seconds: Option<f64>,
}

/// `[bridge]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBridge {
    /// State directory (file store, key, egress CA).
    pub data_dir: Option<PathBuf>,
    /// Unix socket the sandbox-agent talks to the bridge over.
    pub socket_path: Option<PathBuf>,
    /// Peer uids allowed on the socket besides the bridge's own.
    pub allowed_peer_uids: Option<Vec<u32>>,
    /// How long shutdown may take before the bridge exits anyway.
    pub shutdown_grace_seconds: Option<f64>,
}

/// `[backend]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// `file` (default) or `openbao`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `[backend.file]`.
    pub file: Option<RawFile>,
    /// `[backend.openbao]`.
    pub openbao: Option<RawOpenbao>,
}

/// `[backend.file]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    /// The encrypted store.
    pub path: Option<PathBuf>,
    /// The key file (mode 0600).
    pub key_file: Option<PathBuf>,
    /// Or a systemd credential holding the key.
    pub key_credential: Option<String>,
    /// Create the key and an empty store on first start (default true).
    pub create_if_missing: Option<bool>,
    /// Deadline of one call.
    pub request_timeout_seconds: Option<f64>,
}

/// `[backend.openbao]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOpenbao {
    /// `https://bao.internal:8200`.
    pub address: Option<String>,
    /// PEM bundle of the CA(s) the server's certificate chains to.
    pub ca_file: Option<PathBuf>,
    /// Namespace (`X-Vault-Namespace`).
    pub namespace: Option<String>,
    /// KV v2 mount (default `secret`).
    pub mount: Option<String>,
    /// Prefix under the mount (default `airlock`).
    pub path_prefix: Option<String>,
    /// `token` (default) or `approle`.
    pub auth: Option<String>,
    /// Token file (mode 0600), with `auth = "token"`.
    pub token_file: Option<PathBuf>,
    /// Or a systemd credential holding the token.
    pub token_credential: Option<String>,
    /// Deadline of one call.
    pub request_timeout_seconds: Option<f64>,
    /// `[backend.openbao.approle]`.
    pub approle: Option<RawApprole>,
}

/// `[backend.openbao.approle]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprole {
    /// AppRole auth mount (default `approle`).
    pub mount: Option<String>,
    /// The role id.
    pub role_id: Option<String>,
    /// Secret id file (mode 0600).
    pub secret_id_file: Option<PathBuf>,
    /// Or a systemd credential holding the secret id.
    pub secret_id_credential: Option<String>,
}

/// Validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[bridge]`.
    pub bridge: BridgeConfig,
    /// `[backend]`.
    pub backend: BackendConfig,
    /// `[egress]`.
    pub egress: EgressConfig,
    /// `[mcp]`.
    pub mcp: McpSettings,
    /// `[ops]`.
    pub ops: daemon::ops::OpsConfig,
}

/// `[mcp]`.
#[derive(Debug, Clone)]
pub struct McpSettings {
    /// Deadline of one MCP request.
    pub call_timeout: Duration,
    /// Where `http://` MCP servers are allowed.
    pub plain_http: crate::mcp::PlainHttp,
    /// How long before expiry an access token is refreshed.
    pub refresh_margin: Duration,
}

impl McpSettings {
    fn from_raw(raw: RawMcp) -> Result<Self, InvalidKey> {
        let call_timeout = settings::seconds_between(
            "mcp.call_timeout_seconds",
            raw.call_timeout_seconds,
            crate::mcp::DEFAULT_CALL_TIMEOUT.as_secs_f64(),
            0.1,
            3600.0,
        )?;
        let plain_http = match raw.plain_http.as_deref() {
            None | Some("loopback") => crate::mcp::PlainHttp::Loopback,
            Some("never") => crate::mcp::PlainHttp::Never,
            Some("any") => crate::mcp::PlainHttp::Any,
            Some(other) => {
                return Err(InvalidKey::new(
                    "mcp.plain_http",
                    format!("{other:?} is not one of never, loopback, any"),
                ))
            }
        };
        let refresh_margin = settings::seconds_between(
            "mcp.refresh_margin_seconds",
            raw.refresh_margin_seconds,
            crate::mcp::DEFAULT_REFRESH_MARGIN.as_secs_f64(),
            0.0,
            3600.0,
        )?;
        Ok(Self {
            call_timeout,
            plain_http,
            refresh_margin,
        })
    }
}

/// Default directory of the per-sandbox egress sockets.
pub const DEFAULT_EGRESS_SOCKET_DIR: &str = "/run/airlock-vault-bridge/egress";

/// `[egress]`.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// Directory of the per-sandbox egress sockets.
    pub socket_dir: PathBuf,
    /// CA files for upstream certificates; empty means Mozilla's roots.
    pub upstream_ca_files: Vec<PathBuf>,
    /// Upstream connect + handshake deadline.
    pub connect_timeout: Duration,
}

impl EgressConfig {
    fn from_raw(raw: RawEgress) -> Result<Self, InvalidKey> {
        let socket_dir = raw
            .socket_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_EGRESS_SOCKET_DIR));
        absolute("egress.socket_dir", &socket_dir)?;
        let upstream_ca_files = raw.upstream_ca_files.unwrap_or_default();
        for f in &upstream_ca_files {
            absolute("egress.upstream_ca_files", f)?;
        }
        let connect_timeout = settings::seconds_between(
            "egress.connect_timeout_seconds",
            raw.connect_timeout_seconds,
            10.0,
            0.1,
            300.0,
        )?;
        Ok(Self {
            socket_dir,
            upstream_ca_files,
            connect_timeout,
        })
    }
}

/// `[bridge]`.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// State directory.
    pub data_dir: PathBuf,
    /// The agent channel's Unix socket.
    pub socket_path: PathBuf,
    /// Peer uids allowed on the socket besides the bridge's own.
    pub allowed_peer_uids: Vec<u32>,
    /// Shutdown deadline.
    pub shutdown_grace: Duration,
}

/// `[backend]`: which backend, with its settings.
#[derive(Debug, Clone)]
pub enum BackendConfig {
    /// `type = "file"`.
    File(FileConfig),
    /// `type = "openbao"`.
    Openbao(OpenbaoConfig),
}

/// `[backend.file]`.
#[derive(Debug, Clone)]
pub struct FileConfig {
    /// The encrypted store.
    pub path: PathBuf,
    /// Where the key comes from.
    pub key: SecretSource,
    /// Create key and store when neither exists.
    pub create_if_missing: bool,
    /// Deadline of one call.
    pub request_timeout: Duration,
}

/// `[backend.openbao]`.
#[derive(Debug, Clone)]
pub struct OpenbaoConfig {
    /// Server address (`http` or `https` URL, no path).
    pub address: String,
    /// Extra CA bundle.
    pub ca_file: Option<PathBuf>,
    /// Namespace.
    pub namespace: Option<String>,
    /// KV v2 mount.
    pub mount: String,
    /// Prefix under the mount; secrets live at `<prefix>/<vault>/<credential>`.
    pub path_prefix: String,
    /// How the bridge logs in.
    pub auth: OpenbaoAuth,
    /// Deadline of one call.
    pub request_timeout: Duration,
}

/// How the bridge authenticates to OpenBao/Vault.
#[derive(Debug, Clone)]
pub enum OpenbaoAuth {
    /// A token read from a file or systemd credential.
    Token(SecretSource),
    /// AppRole login.
    Approle {
        /// Auth mount.
        mount: String,
        /// Role id.
        role_id: String,
        /// Where the secret id comes from.
        secret_id: SecretSource,
    },
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_raw(daemon::read_toml(path)?)
    }

    /// Validate config text; `origin` only names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        Self::from_raw(daemon::parse_toml(text, origin)?)
    }

    /// The defaults (no config file): file backend under the default data dir.
    pub fn defaults() -> Result<Self, ConfigError> {
        Self::from_raw(RawConfig::default())
    }

    /// Convert raw values into typed ones, naming the key on failure.
    pub fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        let bridge = BridgeConfig::from_raw(raw.bridge)?;
        let backend = BackendConfig::from_raw(raw.backend, &bridge.data_dir)?;
        let egress = EgressConfig::from_raw(raw.egress)?;
        let mcp = McpSettings::from_raw(raw.mcp)?;
        let ops = daemon::ops::OpsConfig::from_raw(&raw.ops)?;
        Ok(Self {
            ops,
            bridge,
            backend,
            egress,
            mcp,
        })
    }
}

impl BridgeConfig {
    fn from_raw(raw: RawBridge) -> Result<Self, InvalidKey> {
        let data_dir = raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        absolute("bridge.data_dir", &data_dir)?;
        let socket_path = raw
            .socket_path
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH));
        absolute("bridge.socket_path", &socket_path)?;
        let shutdown_grace = settings::seconds_between(
            "bridge.shutdown_grace_seconds",
            raw.shutdown_grace_seconds,
            10.0,
            0.1,
            300.0,
        )?;
        Ok(Self {
            data_dir,
            socket_path,
            allowed_peer_uids: raw.allowed_peer_uids.unwrap_or_default(),
            shutdown_grace,
        })
    }
}

impl BackendConfig {
    fn from_raw(raw: RawBackend, data_dir: &Path) -> Result<Self, InvalidKey> {
        match raw.kind.as_deref().unwrap_or("file") {
            "file" => {
                if raw.openbao.is_some() {
                    return Err(InvalidKey::new(
                        "backend.openbao",
                        "only applies with backend.type = \"openbao\"",
                    ));
                }
                Ok(Self::File(FileConfig::from_raw(
                    raw.file.unwrap_or_default(),
                    data_dir,
                )?))
            }
            "openbao" | "vault" => {
                if raw.file.is_some() {
                    return Err(InvalidKey::new(
                        "backend.file",
                        "only applies with backend.type = \"file\"",
                    ));
                }
                let Some(o) = raw.openbao else {
                    return Err(InvalidKey::new(
                        "backend.openbao",
                        "is required with backend.type = \"openbao\"",
                    ));
                };
                Ok(Self::Openbao(OpenbaoConfig::from_raw(o)?))
            }
            other => Err(InvalidKey::new(
                "backend.type",
                format!("expected \"file\" or \"openbao\", got {other:?}"),
            )),
        }
    }
}

impl FileConfig {
    fn from_raw(raw: RawFile, data_dir: &Path) -> Result<Self, InvalidKey> {
        let path = raw.path.unwrap_or_else(|| data_dir.join("credentials.enc"));
        absolute("backend.file.path", &path)?;
        let key = source(
            "backend.file",
            ("key_file", raw.key_file),
            ("key_credential", raw.key_credential),
        )?
        .unwrap_or_else(|| SecretSource::File(data_dir.join("credentials.key")));
        if let SecretSource::File(k) = &key {
            absolute("backend.file.key_file", k)?;
            if *k == path {
                return Err(InvalidKey::new(
                    "backend.file.key_file",
                    "must differ from backend.file.path",
                ));
            }
        }
        Ok(Self {
            path,
            key,
            create_if_missing: raw.create_if_missing.unwrap_or(true),
            request_timeout: settings::seconds_between(
                "backend.file.request_timeout_seconds",
                raw.request_timeout_seconds,
                DEFAULT_REQUEST_TIMEOUT.as_secs_f64(),
                0.1,
                300.0,
            )?,
        })
    }
}

impl OpenbaoConfig {
    fn from_raw(raw: RawOpenbao) -> Result<Self, InvalidKey> {
        const S: &str = "backend.openbao";
        let address = raw
            .address
            .ok_or_else(|| InvalidKey::in_section(S, "address", "is required"))?;
        let url = url::Url::parse(&address)
            .map_err(|e| InvalidKey::in_section(S, "address", format!("{address:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https")
            || url.host_str().is_none()
            || !url.path().trim_matches('/').is_empty()
            || url.query().is_some()
            || !url.username().is_empty()
        {
            return Err(InvalidKey::in_section(
                S,
                "address",
                format!("{address:?}: expected http(s)://host[:port] with no path, query or user"),
            ));
        }
        if let Some(ca) = &raw.ca_file {
            absolute("backend.openbao.ca_file", ca)?;
            if url.scheme() == "http" {
                return Err(InvalidKey::in_section(
                    S,
                    "ca_file",
                    "only applies to an https address",
                ));
            }
        }
        let mount = segments(S, "mount", raw.mount.as_deref().unwrap_or("secret"))?;
        let path_prefix = segments(
            S,
            "path_prefix",
            raw.path_prefix.as_deref().unwrap_or("airlock"),
        )?;
        let namespace = match raw.namespace {
            Some(n) => Some(segments(S, "namespace", &n)?),
            None => None,
        };
        let token = source(
            S,
            ("token_file", raw.token_file),
            ("token_credential", raw.token_credential),
        )?;
        let auth = match raw.auth.as_deref().unwrap_or("token") {
            "token" => {
                if raw.approle.is_some() {
                    return Err(InvalidKey::in_section(
                        S,
                        "approle",
                        "only applies with backend.openbao.auth = \"approle\"",
                    ));
                }
                OpenbaoAuth::Token(token.ok_or_else(|| {
                    InvalidKey::in_section(
                        S,
                        "token_file",
                        "token_file or token_credential is required with auth = \"token\"",
                    )
                })?)
            }
            "approle" => {
                if token.is_some() {
                    return Err(InvalidKey::in_section(
                        S,
                        "token_file",
                        "only applies with backend.openbao.auth = \"token\"",
                    ));
                }
                let a = raw.approle.ok_or_else(|| {
                    InvalidKey::in_section(S, "approle", "is required with auth = \"approle\"")
                })?;
                const A: &str = "backend.openbao.approle";
                let role_id = a
                    .role_id
                    .filter(|r| !r.trim().is_empty())
                    .ok_or_else(|| InvalidKey::in_section(A, "role_id", "is required"))?;
                let secret_id = source(
                    A,
                    ("secret_id_file", a.secret_id_file),
                    ("secret_id_credential", a.secret_id_credential),
                )?
                .ok_or_else(|| {
                    InvalidKey::in_section(
                        A,
                        "secret_id_file",
                        "secret_id_file or secret_id_credential is required",
                    )
                })?;
                OpenbaoAuth::Approle {
                    mount: segments(A, "mount", a.mount.as_deref().unwrap_or("approle"))?,
                    role_id,
                    secret_id,
                }
            }
            other => {
                return Err(InvalidKey::in_section(
                    S,
                    "auth",
                    format!("expected \"token\" or \"approle\", got {other:?}"),
                ))
            }
        };
        Ok(Self {
            address: url.as_str().trim_end_matches('/').to_owned(),
            ca_file: raw.ca_file,
            namespace,
            mount,
            path_prefix,
            auth,
            request_timeout: settings::seconds_between(
                "backend.openbao.request_timeout_seconds",
                raw.request_timeout_seconds,
                DEFAULT_REQUEST_TIMEOUT.as_secs_f64(),
                0.1,
                300.0,
            )?,
        })
    }
}

fn absolute(key: &str, p: &Path) -> Result<(), InvalidKey> {
    if p.is_absolute() {
        Ok(())
    } else {
        Err(InvalidKey::new(
            key,
            format!("{} is not an absolute path", p.display()),
        ))
    }
}

/// `a/b/c` with segments of `[A-Za-z0-9_.-]`, no `.` or `..`; surrounding
/// slashes dropped.
fn segments(section: &str, key: &str, v: &str) -> Result<String, InvalidKey> {
    let t = v.trim_matches('/');
    let ok = !t.is_empty()
        && t.split('/').all(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        });
    if ok {
        Ok(t.to_owned())
    } else {
        Err(InvalidKey::in_section(
            section,
            key,
            format!("{v:?}: expected path segments of [A-Za-z0-9_.-]"),
        ))
    }
}

/// A secret given as `<x>_file` (absolute path) or `<x>_credential` (systemd
/// credential name), at most one of them.
fn source(
    section: &str,
    file: (&str, Option<PathBuf>),
    credential: (&str, Option<String>),
) -> Result<Option<SecretSource>, InvalidKey> {
    match (file.1, credential.1) {
        (Some(_), Some(_)) => Err(InvalidKey::in_section(
            section,
            credential.0,
            format!("set either {} or {}, not both", file.0, credential.0),
        )),
        (Some(p), None) => {
            absolute(&format!("{section}.{}", file.0), &p)?;
            Ok(Some(SecretSource::File(p)))
        }
        (None, Some(name)) => {
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                && name != "."
                && name != "..";
            if !ok {
                return Err(InvalidKey::in_section(
                    section,
                    credential.0,
                    format!("{name:?} is not a systemd credential name"),
                ));
            }
            Ok(Some(SecretSource::SystemdCredential(name)))
        }
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_a_file_backend_under_the_data_dir() {
        let c = Config::defaults().unwrap();
        let BackendConfig::File(f) = c.backend else {
            panic!("file backend expected")
        };
        assert_eq!(
            f.path,
            Path::new("/var/lib/airlock-vault-bridge/credentials.enc")
        );
        assert_eq!(
            f.key,
            SecretSource::File("/var/lib/airlock-vault-bridge/credentials.key".into())
        );
        assert!(f.create_if_missing);
        assert_eq!(f.request_timeout, DEFAULT_REQUEST_TIMEOUT);
    }

    #[test]
    fn openbao_with_approle() {
        let c = parse(
            r#"
[backend]
type = "openbao"
[backend.openbao]
address = "https://bao.internal:8200/"
ca_file = "/etc/airlock/bao-ca.pem"
namespace = "team-a"
mount = "kv"
path_prefix = "/airlock/prod/"
auth = "approle"
request_timeout_seconds = 2.5
[backend.openbao.approle]
role_id = "role-1"
secret_id_credential = "bao-secret-id"
"#,
        )
        .unwrap();
        let BackendConfig::Openbao(o) = c.backend else {
            panic!("openbao expected")
        };
        assert_eq!(o.address, "https://bao.internal:8200");
        assert_eq!(o.path_prefix, "airlock/prod");
        assert_eq!(o.namespace.as_deref(), Some("team-a"));
        assert_eq!(o.request_timeout, Duration::from_millis(2500));
        let OpenbaoAuth::Approle {
            mount,
            role_id,
            secret_id,
        } = o.auth
        else {
            panic!("approle expected")
        };
        assert_eq!((mount.as_str(), role_id.as_str()), ("approle", "role-1"));
        assert_eq!(
            secret_id,
            SecretSource::SystemdCredential("bao-secret-id".into())
        );
    }

    #[test]
    fn mcp_settings_have_defaults_and_bounds() {
        let c = Config::defaults().unwrap();
        assert_eq!(c.mcp.call_timeout, crate::mcp::DEFAULT_CALL_TIMEOUT);
        assert_eq!(c.mcp.plain_http, crate::mcp::PlainHttp::Loopback);
        let c = parse("[mcp]\ncall_timeout_seconds = 2.5\nplain_http = \"never\"\nrefresh_margin_seconds = 0\n").unwrap();
        assert_eq!(c.mcp.call_timeout, Duration::from_millis(2500));
        assert_eq!(c.mcp.plain_http, crate::mcp::PlainHttp::Never);
        assert_eq!(c.mcp.refresh_margin, Duration::ZERO);
        for (text, key) in [
            ("[mcp]\nplain_http = \"sometimes\"\n", "mcp.plain_http"),
            (
                "[mcp]\ncall_timeout_seconds = 0\n",
                "mcp.call_timeout_seconds",
            ),
            ("[mcp]\ntimeout = 1\n", "timeout"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[bridge]\ndata_dirr = \"/x\"\n", "data_dirr"),
            ("[bridge]\ndata_dir = \"rel\"\n", "bridge.data_dir"),
            ("[backend]\ntype = \"s3\"\n", "backend.type"),
            (
                "[backend.file]\nkey_file = \"/k\"\nkey_credential = \"k\"\n",
                "backend.file.key_credential",
            ),
            (
                "[backend.file]\nkey_file = \"/k\"\npath = \"/k\"\n",
                "backend.file.key_file",
            ),
            ("[backend]\ntype = \"openbao\"\n", "backend.openbao"),
            (
                "[backend]\ntype = \"openbao\"\n[backend.openbao]\ntoken_file = \"/t\"\n",
                "backend.openbao.address",
            ),
            (
                "[backend]\ntype = \"openbao\"\n[backend.openbao]\naddress = \"ftp://x\"\ntoken_file = \"/t\"\n",
                "backend.openbao.address",
            ),
            (
                "[backend]\ntype = \"openbao\"\n[backend.openbao]\naddress = \"http://x:1\"\n",
                "backend.openbao.token_file",
            ),
            (
                "[backend]\ntype = \"openbao\"\n[backend.openbao]\naddress = \"http://x:1\"\ntoken_file = \"/t\"\nmount = \"a/../b\"\n",
                "backend.openbao.mount",
            ),
            (
                "[backend]\ntype = \"openbao\"\n[backend.openbao]\naddress = \"http://x:1\"\nauth = \"approle\"\n[backend.openbao.approle]\nsecret_id_file = \"/s\"\n",
                "backend.openbao.approle.role_id",
            ),
            (
                "[backend]\ntype = \"openbao\"\n[backend.openbao]\naddress = \"http://x:1\"\ntoken_file = \"/t\"\nrequest_timeout_seconds = 0\n",
                "backend.openbao.request_timeout_seconds",
            ),
            (
                "[backend.openbao]\naddress = \"http://x:1\"\n",
                "backend.openbao",
            ),
        ];
        for (text, key) in cases {
            let e = parse(text).expect_err(text);
            assert!(e.contains(key), "{text:?}: {e}");
        }
    }
}
