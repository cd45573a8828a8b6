//! The `[sandbox]`, `[policy]` and `[pool]` sections of the agent config:
//! raw serde structs that deny unknown keys, converted into typed settings
//! whose errors name the key.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

const GIB: u64 = 1024 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;

/// The agent's tool names (`agent_toolset_20260401` minus the server-side web tools).
pub const TOOL_NAMES: [&str; 6] = ["bash", "read", "write", "edit", "glob", "grep"];

/// `[sandbox]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSandbox {
    /// Docker Engine address (`unix:///var/run/docker.sock`).
    pub docker_host: Option<String>,
    /// Host path of the static executor binary, bind-mounted read-only.
    pub executor_path: Option<PathBuf>,
    /// Image used when a provision request names none.
    pub default_image: Option<String>,
    /// CPU cores when the request gives none.
    pub default_cpu: Option<f64>,
    /// Memory limit when the request gives none.
    pub default_memory_bytes: Option<u64>,
    /// Process limit when the request gives none.
    pub default_pids: Option<u64>,
    /// Size of the writable workspace (tmpfs) when the request gives none.
    pub default_disk_bytes: Option<u64>,
    /// Size of the tmpfs mounted on /tmp.
    pub tmp_bytes: Option<u64>,
    /// Working directory (and writable workspace mount point).
    pub workdir: Option<String>,
    /// `uid:gid` the sandbox runs as; never root.
    pub user: Option<String>,
    /// Alternative OCI runtime (e.g. `runsc`), used when Docker has it installed.
    pub runtime: Option<String>,
    /// Time to live when the request gives none (0: no TTL).
    pub default_ttl_seconds: Option<u64>,
    /// Idle time after which a sandbox is reaped (0: never).
    pub idle_timeout_seconds: Option<u64>,
    /// How often the reaper looks.
    pub reap_interval_seconds: Option<u64>,
    /// What to do with live owned sandboxes found at start: `adopt` or `reap`.
    pub on_restart: Option<String>,
    /// How long to wait for a new executor's `Ready`.
    pub executor_ready_timeout_seconds: Option<u64>,
    /// Extra time the agent waits beyond a tool's own timeout before it gives up.
    pub call_grace_seconds: Option<u64>,
    /// How long execution records (for `tool_use_id` replay) are kept.
    pub record_retention_seconds: Option<u64>,
    /// Bash output kept per call (the last bytes).
    pub bash_output_max_bytes: Option<u64>,
    /// Bash timeout when the call gives none.
    pub bash_default_timeout_seconds: Option<u64>,
    /// Largest bash timeout a call may ask for.
    pub bash_max_timeout_seconds: Option<u64>,
    /// Largest file `read`/`edit` accept.
    pub file_max_bytes: Option<u64>,
    /// Most paths `glob` returns.
    pub glob_max_results: Option<u64>,
    /// Most bytes `grep` returns.
    pub grep_max_bytes: Option<u64>,
}

/// What to do with live owned sandboxes found when the agent starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRestart {
    /// Re-attach to their executors and keep serving them.
    Adopt,
    /// Remove them.
    Reap,
}

/// Typed `[sandbox]`.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// Docker Engine address; `None` means the local default socket.
    pub docker_host: Option<String>,
    /// Host path of the static executor binary.
    pub executor_path: PathBuf,
    /// Default image.
    pub default_image: String,
    /// Default CPU cores.
    pub default_cpu: f64,
    /// Default memory limit.
    pub default_memory_bytes: u64,
    /// Default process limit.
    pub default_pids: u64,
    /// Default workspace size.
    pub default_disk_bytes: u64,
    /// Size of /tmp.
    pub tmp_bytes: u64,
    /// Working directory.
    pub workdir: String,
    /// `uid:gid`.
    pub user: String,
    /// Alternative OCI runtime.
    pub runtime: Option<String>,
    /// Default TTL (`None`: none).
    pub default_ttl: Option<Duration>,
    /// Idle reaping (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Reaper period.
    pub reap_interval: Duration,
    /// Restart behaviour.
    pub on_restart: OnRestart,
    /// Executor start-up deadline.
    pub executor_ready_timeout: Duration,
    /// Agent-side grace beyond a tool's timeout.
    pub call_grace: Duration,
    /// Execution record retention.
    pub record_retention: Duration,
    /// Executor limits.
    pub executor: protocol::executor::ExecutorSettings,
    /// `[bridge]` (set by the agent config, not by `[sandbox]`): the egress
    /// channel; `None`: sandboxes have no way out.
    pub bridge: Option<BridgeSettings>,
}

/// Default host path of the executor (where the package installs it).
pub const DEFAULT_EXECUTOR_PATH: &str = "/usr/lib/airlock/airlock-executor";
/// Default sandbox image (built by `packaging/images/build-sandbox-image.sh`).
pub const DEFAULT_IMAGE: &str = "airlock-sandbox:latest";

fn positive(key: &str, v: Option<u64>, default: u64) -> Result<u64, ConfigError> {
    match v {
        None => Ok(default),
        Some(0) => Err(ConfigError::invalid(key, "must be greater than 0")),
        Some(v) => Ok(v),
    }
}

fn optional_duration(v: Option<u64>, default: u64) -> Option<Duration> {
    match v.unwrap_or(default) {
        0 => None,
        s => Some(Duration::from_secs(s)),
    }
}

/// Parse `uid:gid` (numeric), refusing root.
pub fn parse_user(key: &str, user: &str) -> Result<String, ConfigError> {
    let mut parts = user.split(':');
    let uid = parts.next().unwrap_or_default();
    let gid = parts.next();
    let ok_num = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !ok_num(uid) || gid.is_some_and(|g| !ok_num(g)) || parts.next().is_some() {
        return Err(ConfigError::invalid(key, "expected numeric `uid:gid`"));
    }
    if uid.parse::<u64>().ok() == Some(0) {
        return Err(ConfigError::invalid(
            key,
            "sandboxes never run as root (uid 0)",
        ));
    }
    Ok(user.to_owned())
}

impl SandboxSettings {
    /// Convert `[sandbox]`.
    pub fn from_raw(raw: RawSandbox) -> Result<Self, ConfigError> {
        let workdir = raw.workdir.unwrap_or_else(|| "/workspace".into());
        if !workdir.starts_with('/') || workdir == "/" {
            return Err(ConfigError::invalid(
                "sandbox.workdir",
                "must be an absolute path other than /",
            ));
        }
        let default_cpu = raw.default_cpu.unwrap_or(1.0);
        if !(default_cpu > 0.0 && default_cpu.is_finite()) {
            return Err(ConfigError::invalid(
                "sandbox.default_cpu",
                "must be a positive number of cores",
            ));
        }
        let on_restart = match raw.on_restart.as_deref().unwrap_or("adopt") {
            "adopt" => OnRestart::Adopt,
            "reap" => OnRestart::Reap,
            other => {
                return Err(ConfigError::invalid(
                    "sandbox.on_restart",
                    format!("expected `adopt` or `reap`, got `{other}`"),
                ))
            }
        };
        let default_timeout_s = positive(
            "sandbox.bash_default_timeout_seconds",
            raw.bash_default_timeout_seconds,
            120,
        )?;
        let max_timeout_s = positive(
            "sandbox.bash_max_timeout_seconds",
            raw.bash_max_timeout_seconds,
            600,
        )?;
        if default_timeout_s > max_timeout_s {
            return Err(ConfigError::invalid(
                "sandbox.bash_default_timeout_seconds",
                "must not exceed sandbox.bash_max_timeout_seconds",
            ));
        }
        let file_max_bytes = positive("sandbox.file_max_bytes", raw.file_max_bytes, 256 * 1024)?;
        let executor = protocol::executor::ExecutorSettings {
            workdir: workdir.clone(),
            bash_output_max_bytes: positive(
                "sandbox.bash_output_max_bytes",
                raw.bash_output_max_bytes,
                100 * 1024,
            )?,
            bash_default_timeout_ms: default_timeout_s * 1000,
            bash_max_timeout_ms: max_timeout_s * 1000,
            file_max_bytes,
            glob_max_results: positive("sandbox.glob_max_results", raw.glob_max_results, 200)?,
            grep_max_bytes: positive("sandbox.grep_max_bytes", raw.grep_max_bytes, 100 * 1024)?,
            ..Default::default()
        };
        let user = parse_user("sandbox.user", raw.user.as_deref().unwrap_or("1000:1000"))?;
        if let Some(r) = &raw.runtime {
            if r.is_empty()
                || !r
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(ConfigError::invalid(
                    "sandbox.runtime",
                    "expected a runtime name such as `runsc`",
                ));
            }
        }
        Ok(Self {
            docker_host: raw.docker_host.filter(|h| !h.is_empty()),
            executor_path: raw
                .executor_path
                .unwrap_or_else(|| PathBuf::from(DEFAULT_EXECUTOR_PATH)),
            default_image: raw.default_image.unwrap_or_else(|| DEFAULT_IMAGE.into()),
            default_cpu,
            default_memory_bytes: positive(
                "sandbox.default_memory_bytes",
                raw.default_memory_bytes,
                GIB,
            )?,
            default_pids: positive("sandbox.default_pids", raw.default_pids, 256)?,
            default_disk_bytes: positive(
                "sandbox.default_disk_bytes",
                raw.default_disk_bytes,
                GIB,
            )?,
            tmp_bytes: positive("sandbox.tmp_bytes", raw.tmp_bytes, 256 * MIB)?,
            workdir,
            user,
            runtime: raw.runtime,
            default_ttl: optional_duration(raw.default_ttl_seconds, 4 * 3600),
            idle_timeout: optional_duration(raw.idle_timeout_seconds, 1800),
            reap_interval: Duration::from_secs(positive(
                "sandbox.reap_interval_seconds",
                raw.reap_interval_seconds,
                10,
            )?),
            on_restart,
            executor_ready_timeout: Duration::from_secs(positive(
                "sandbox.executor_ready_timeout_seconds",
                raw.executor_ready_timeout_seconds,
                30,
            )?),
            call_grace: Duration::from_secs(raw.call_grace_seconds.unwrap_or(30)),
            record_retention: Duration::from_secs(positive(
                "sandbox.record_retention_seconds",
                raw.record_retention_seconds,
                7 * 24 * 3600,
            )?),
            executor,
            bridge: None,
        })
    }
}

impl Default for SandboxSettings {
    fn default() -> Self {
        // The defaults are valid by construction (covered by a unit test).
        Self::from_raw(RawSandbox::default())
            .unwrap_or_else(|e| unreachable!("default [sandbox] is valid: {e}"))
    }
}

/// `[policy]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Images the control plane may ask for (exact, or a prefix ending in `*`).
    pub allowed_images: Option<Vec<String>>,
    /// Most CPU cores per sandbox.
    pub max_cpu: Option<f64>,
    /// Most memory per sandbox.
    pub max_memory_bytes: Option<u64>,
    /// Most processes per sandbox.
    pub max_pids: Option<u64>,
    /// Largest workspace per sandbox.
    pub max_disk_bytes: Option<u64>,
    /// Longest TTL per sandbox.
    pub max_ttl_seconds: Option<u64>,
    /// Most sandboxes alive at once (warm pool not counted).
    pub max_sandboxes: Option<u64>,
    /// Tools that may run.
    pub allowed_tools: Option<Vec<String>>,
    /// Docker networks a sandbox may join (none by default: no network).
    pub allowed_networks: Option<Vec<String>>,
    /// Hosts of the MCP servers the vault-bridge may call for this agent's
    /// sessions (`mcp.internal`, or `*.corp` for any name under `corp`).
    /// Absent: any host; present: only these (an empty list: none).
    pub mcp_hosts: Option<Vec<String>>,
    /// Hosts this agent's sandboxes may reach through the vault-bridge, of
    /// those their session allows (`git.internal`, `*.corp`, either with
    /// `:port`). Absent: no limit beyond the session's; present: only these
    /// (an empty list: none).
    pub egress_hosts: Option<Vec<String>>,
}

/// Typed `[policy]`: what the control plane may ask of this agent.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Allowed image patterns.
    pub allowed_images: Vec<String>,
    /// CPU ceiling.
    pub max_cpu: f64,
    /// Memory ceiling.
    pub max_memory_bytes: u64,
    /// Process ceiling.
    pub max_pids: u64,
    /// Workspace ceiling.
    pub max_disk_bytes: u64,
    /// TTL ceiling.
    pub max_ttl: Duration,
    /// Concurrent sandbox ceiling.
    pub max_sandboxes: usize,
    /// Allowed tools.
    pub allowed_tools: Vec<String>,
    /// Allowed networks.
    pub allowed_networks: Vec<String>,
    /// Allowed MCP server host patterns (lowercase); `None`: any host.
    pub mcp_hosts: Option<Vec<String>>,
    /// The egress hosts sandboxes may reach, of their session's; `None`: no
    /// extra limit. Enforced by the vault-bridge (sent in `open_egress`).
    pub egress_hosts: Option<Vec<EgressHost>>,
}

impl Policy {
    /// Convert `[policy]`; `default_image` is allowed when `allowed_images` is absent.
    pub fn from_raw(raw: RawPolicy, default_image: &str) -> Result<Self, ConfigError> {
        let max_cpu = raw.max_cpu.unwrap_or(4.0);
        if !(max_cpu > 0.0 && max_cpu.is_finite()) {
            return Err(ConfigError::invalid(
                "policy.max_cpu",
                "must be a positive number of cores",
            ));
        }
        let allowed_tools = raw
            .allowed_tools
            .unwrap_or_else(|| TOOL_NAMES.iter().map(|s| s.to_string()).collect());
        for t in &allowed_tools {
            if !TOOL_NAMES.contains(&t.as_str()) {
                return Err(ConfigError::invalid(
                    "policy.allowed_tools",
                    format!("unknown tool `{t}` (known: {})", TOOL_NAMES.join(", ")),
                ));
            }
        }
        let allowed_images = raw
            .allowed_images
            .unwrap_or_else(|| vec![default_image.to_owned()]);
        if allowed_images.iter().any(|i| i.is_empty() || i == "*") {
            return Err(ConfigError::invalid(
                "policy.allowed_images",
                "patterns must be non-empty and narrower than `*`",
            ));
        }
        Ok(Self {
            allowed_images,
            max_cpu,
            max_memory_bytes: positive("policy.max_memory_bytes", raw.max_memory_bytes, 8 * GIB)?,
            max_pids: positive("policy.max_pids", raw.max_pids, 4096)?,
            max_disk_bytes: positive("policy.max_disk_bytes", raw.max_disk_bytes, 16 * GIB)?,
            max_ttl: Duration::from_secs(positive(
                "policy.max_ttl_seconds",
                raw.max_ttl_seconds,
                24 * 3600,
            )?),
            max_sandboxes: positive("policy.max_sandboxes", raw.max_sandboxes, 32)? as usize,
            allowed_tools,
            allowed_networks: raw.allowed_networks.unwrap_or_default(),
            mcp_hosts: raw
                .mcp_hosts
                .map(|hosts| hosts.iter().map(|h| mcp_host_pattern(h)).collect())
                .transpose()?,
            egress_hosts: raw
                .egress_hosts
                .map(|hosts| hosts.iter().map(|h| EgressHost::parse(h)).collect())
                .transpose()?,
        })
    }

    /// Whether the agent's egress policy lets a sandbox reach `host:port`
    /// (`true` without one). The bridge enforces it; the agent uses this to
    /// explain a refusal (a repository that did not clone).
    pub fn egress_allows(&self, host: &str, port: u16) -> bool {
        self.egress_hosts
            .as_ref()
            .is_none_or(|hosts| hosts.iter().any(|h| h.matches(host, port)))
    }

    /// `policy.egress_hosts` as sent to the bridge.
    pub fn egress_hosts_wire(&self) -> Option<Vec<String>> {
        self.egress_hosts
            .as_ref()
            .map(|hosts| hosts.iter().map(EgressHost::to_string).collect())
    }
}

/// One `policy.egress_hosts` entry: a host name or IPv4 address, or `*.`
/// followed by a domain (any name under it, not the domain itself),
/// optionally with `:port` (without: any port the session allows for it).
/// The same rules as the bridge's host patterns, so an entry the agent
/// accepts is one the bridge accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressHost {
    /// Lowercase, without a trailing dot; may start with `*.`.
    host: String,
    port: Option<u16>,
}

impl EgressHost {
    /// Parse an entry; errors name `policy.egress_hosts` and the entry.
    pub fn parse(entry: &str) -> Result<Self, ConfigError> {
        let bad =
            |why: &str| ConfigError::invalid("policy.egress_hosts", format!("`{entry}`: {why}"));
        if entry.contains("://") || entry.contains('/') || entry.contains('@') {
            return Err(bad(
                "a host name, not a URL (e.g. `git.internal`, `*.corp` or `git.internal:8443`)",
            ));
        }
        if entry.contains('[') || entry.matches(':').count() > 1 {
            return Err(bad("IPv6 addresses are not supported (the bridge reaches hosts by name or IPv4 address)"));
        }
        let (host, port) = match entry.split_once(':') {
            Some((host, port)) => match port.parse::<u16>() {
                Ok(p) if p != 0 => (host, Some(p)),
                _ => return Err(bad("the port must be a number from 1 to 65535")),
            },
            None => (entry, None),
        };
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let body = host.strip_prefix("*.").unwrap_or(&host);
        if body.is_empty() {
            return Err(bad("empty host"));
        }
        if body.contains('*') {
            return Err(bad("`*` is allowed only as a leading `*.`"));
        }
        let ok = body.len() <= 253
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            && !body.starts_with('.')
            && !body.contains("..");
        if !ok {
            return Err(bad("not a host name"));
        }
        Ok(Self { host, port })
    }

    /// Whether `host:port` is in this entry (`host` compared case-insensitively).
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let host_ok = match self.host.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
            None => host == self.host,
        };
        host_ok && self.port.is_none_or(|p| p == port)
    }
}

impl std::fmt::Display for EgressHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// One `policy.mcp_hosts` entry, lowercased: a host name or address, or
/// `*.` followed by a domain (any name under it, not the domain itself).
fn mcp_host_pattern(entry: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| ConfigError::invalid("policy.mcp_hosts", format!("`{entry}`: {why}"));
    let host = entry.strip_prefix("*.").unwrap_or(entry);
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    if host.contains("://") || host.contains('/') || host.contains('@') {
        return Err(bad(
            "a host name, not a URL (e.g. `mcp.internal` or `*.corp`)",
        ));
    }
    if host.contains('*') {
        return Err(bad("`*` is allowed only as a leading `*.`"));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']'))
    {
        return Err(bad("not a host name"));
    }
    Ok(entry.to_ascii_lowercase())
}

/// `[pool]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// Warm containers kept per image (with the default resources).
    pub size: Option<u64>,
    /// Images kept warm (default: the default image).
    pub images: Option<Vec<String>>,
    /// Containers created in parallel while refilling.
    pub refill_concurrency: Option<u64>,
}

/// Typed `[pool]`.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Warm containers per image (0 disables the pool).
    pub size: usize,
    /// Images kept warm.
    pub images: Vec<String>,
    /// Parallel creations while refilling.
    pub refill_concurrency: usize,
}

impl PoolSettings {
    /// Convert `[pool]`.
    pub fn from_raw(raw: RawPool, default_image: &str) -> Result<Self, ConfigError> {
        let size = raw.size.unwrap_or(0);
        if size > 64 {
            return Err(ConfigError::invalid(
                "pool.size",
                "at most 64 warm containers per image",
            ));
        }
        Ok(Self {
            size: size as usize,
            images: raw.images.unwrap_or_else(|| vec![default_image.to_owned()]),
            refill_concurrency: positive("pool.refill_concurrency", raw.refill_concurrency, 2)?
                as usize,
        })
    }
}

/// `[bridge]` as written: the local vault-bridge sandboxes reach the network
/// through. Absent: no egress channel (sandboxes have no way out at all).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBridge {
    /// The bridge's agent channel (its `bridge.socket_path`).
    pub socket_path: Option<PathBuf>,
    /// The bridge's per-sandbox socket directory (its `egress.socket_dir`).
    pub egress_dir: Option<PathBuf>,
    /// The bridge's egress CA certificate (public part, PEM), trusted inside sandboxes.
    pub ca_cert_file: Option<PathBuf>,
    /// Deadline of each call on the agent channel.
    pub call_timeout_seconds: Option<u64>,
}

/// Typed `[bridge]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSettings {
    /// The bridge's agent channel socket.
    pub socket_path: PathBuf,
    /// Host directory holding one `<sandbox_id>` directory per sandbox.
    pub egress_dir: PathBuf,
    /// The egress CA certificate (PEM) mounted into sandboxes.
    pub ca_cert_file: PathBuf,
    /// Deadline of each agent-channel call (connect, hello and request together).
    pub call_timeout: Duration,
}

fn absolute(key: &str, v: Option<PathBuf>) -> Result<PathBuf, ConfigError> {
    match v {
        None => Err(ConfigError::invalid(key, "is required in [bridge]")),
        Some(p) if !p.is_absolute() => Err(ConfigError::invalid(key, "must be an absolute path")),
        Some(p) => Ok(p),
    }
}

impl BridgeSettings {
    /// Convert `[bridge]`; `None` when the section is absent.
    pub fn from_raw(raw: Option<RawBridge>) -> Result<Option<Self>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        Ok(Some(Self {
            socket_path: absolute("bridge.socket_path", raw.socket_path)?,
            egress_dir: absolute("bridge.egress_dir", raw.egress_dir)?,
            ca_cert_file: absolute("bridge.ca_cert_file", raw.ca_cert_file)?,
            call_timeout: Duration::from_secs(positive(
                "bridge.call_timeout_seconds",
                raw.call_timeout_seconds,
                10,
            )?),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_sane() {
        let s = SandboxSettings::default();
        assert_eq!(s.workdir, "/workspace");
        assert_eq!(s.user, "1000:1000");
        assert_eq!(s.on_restart, OnRestart::Adopt);
        let p = Policy::from_raw(RawPolicy::default(), &s.default_image).unwrap();
        assert_eq!(p.allowed_images, vec![DEFAULT_IMAGE.to_string()]);
        assert_eq!(p.allowed_tools.len(), 6);
    }

    #[test]
    fn the_documented_example_config_parses() {
        let doc = include_str!("../../../docs/sandboxes.md");
        let start = doc
            .find("```toml\n")
            .expect("a toml example in docs/sandboxes.md")
            + 8;
        let end = start + doc[start..].find("```").unwrap();
        let cfg = crate::config::Config::parse(
            &doc[start..end],
            std::path::Path::new("docs/sandboxes.md"),
        )
        .unwrap();
        assert_eq!(cfg.pool.size, 2);
        assert_eq!(cfg.policy.max_sandboxes, 16);
        assert!(crate::sandbox::policy::image_allowed(
            &cfg.policy.allowed_images,
            "airlock-sandbox:abc"
        ));
        let bad = "[sandbox]\nno_such_key = 1\n";
        let e = crate::config::Config::parse(bad, std::path::Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("no_such_key"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = SandboxSettings::from_raw(RawSandbox {
            user: Some("0:0".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("sandbox.user"), "{e}");
        let e = Policy::from_raw(
            RawPolicy {
                allowed_tools: Some(vec!["web_fetch".into()]),
                ..Default::default()
            },
            "x",
        )
        .unwrap_err();
        assert!(e.to_string().contains("policy.allowed_tools"), "{e}");
        let e = SandboxSettings::from_raw(RawSandbox {
            on_restart: Some("keep".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("sandbox.on_restart"), "{e}");
    }

    fn egress_policy(toml_text: &str) -> Result<Policy, ConfigError> {
        crate::config::Config::parse(toml_text, std::path::Path::new("agent.toml"))
            .map(|c| c.policy)
    }

    #[test]
    fn egress_hosts_parse_match_and_go_on_the_wire() {
        let p = egress_policy("").unwrap();
        assert_eq!(p.egress_hosts, None);
        assert_eq!(p.egress_hosts_wire(), None);
        assert!(p.egress_allows("anything.example", 443));
        let p = egress_policy(
            "[policy]\negress_hosts = [\"Git.Internal.\", \"*.corp:8443\", \"10.0.0.7\"]\n",
        )
        .unwrap();
        assert_eq!(
            p.egress_hosts_wire().unwrap(),
            vec!["git.internal", "*.corp:8443", "10.0.0.7"]
        );
        assert!(p.egress_allows("git.internal", 443));
        assert!(p.egress_allows("GIT.internal", 9443));
        assert!(p.egress_allows("a.b.corp", 8443));
        assert!(!p.egress_allows("a.b.corp", 443));
        assert!(!p.egress_allows("corp", 8443));
        assert!(!p.egress_allows("xcorp", 8443));
        assert!(p.egress_allows("10.0.0.7", 443));
        assert!(!p.egress_allows("10.0.0.8", 443));
        assert!(!p.egress_allows("evil-git.internal", 443));
        // An empty list: nothing.
        let p = egress_policy("[policy]\negress_hosts = []\n").unwrap();
        assert_eq!(p.egress_hosts_wire(), Some(vec![]));
        assert!(!p.egress_allows("git.internal", 443));
        for bad in [
            "https://git.internal",
            "git.internal/x",
            "user@git.internal",
            "git.internal:0",
            "git.internal:http",
            "git.internal:70000",
            "[::1]",
            "::1",
            "*",
            "*.",
            "a.*.corp",
            "git internal",
            "",
            ":443",
            ".corp",
            "a..corp",
        ] {
            let toml = format!("[policy]\negress_hosts = [\"ok.example\", {bad:?}]\n");
            let e = egress_policy(&toml).unwrap_err().to_string();
            assert!(
                e.contains("policy.egress_hosts") && e.contains(&format!("`{bad}`")),
                "{bad}: {e}"
            );
        }
    }

    fn bridge(toml_text: &str) -> Result<Option<BridgeSettings>, ConfigError> {
        crate::config::Config::parse(toml_text, std::path::Path::new("agent.toml"))
            .map(|c| c.sandbox.bridge)
    }

    #[test]
    fn no_bridge_section_means_no_egress_channel() {
        assert_eq!(bridge("").unwrap(), None);
    }

    #[test]
    fn a_full_bridge_section_parses_with_a_default_deadline() {
        let b = bridge(
            r#"[bridge]
socket_path = "/run/airlock-vault-bridge/agent.sock"
egress_dir = "/run/airlock-vault-bridge/egress"
ca_cert_file = "/etc/airlock-vault-bridge/egress-ca.pem"
"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            b.socket_path,
            PathBuf::from("/run/airlock-vault-bridge/agent.sock")
        );
        assert_eq!(
            b.egress_dir,
            PathBuf::from("/run/airlock-vault-bridge/egress")
        );
        assert_eq!(
            b.ca_cert_file,
            PathBuf::from("/etc/airlock-vault-bridge/egress-ca.pem")
        );
        assert_eq!(b.call_timeout, Duration::from_secs(10));
    }

    #[test]
    fn bad_bridge_sections_name_their_key() {
        let full = "socket_path = \"/a.sock\"\negress_dir = \"/e\"\nca_cert_file = \"/ca.pem\"\n";
        for (text, key) in [
            ("[bridge]\negress_dir = \"/e\"\nca_cert_file = \"/c\"\n".to_owned(), "bridge.socket_path"),
            ("[bridge]\nsocket_path = \"/s\"\nca_cert_file = \"/c\"\n".to_owned(), "bridge.egress_dir"),
            ("[bridge]\nsocket_path = \"/s\"\negress_dir = \"/e\"\n".to_owned(), "bridge.ca_cert_file"),
            ("[bridge]\nsocket_path = \"rel.sock\"\negress_dir = \"/e\"\nca_cert_file = \"/c\"\n".to_owned(), "bridge.socket_path"),
            (format!("[bridge]\n{full}call_timeout_seconds = 0\n"), "bridge.call_timeout_seconds"),
            (format!("[bridge]\n{full}socket = \"/x\"\n"), "socket"),
        ] {
            let e = bridge(&text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn the_commented_egress_hosts_example_parses_when_uncommented() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../packaging/examples/sandbox-agent.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("# egress_hosts = "))
            .expect("a commented egress_hosts example");
        let p = egress_policy(&format!("[policy]\negress_hosts = {line}\n")).unwrap();
        assert!(!p.egress_hosts_wire().unwrap().is_empty());
    }

    #[test]
    fn the_commented_bridge_example_parses_when_uncommented() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../packaging/examples/sandbox-agent.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text
            .find("# [bridge]")
            .expect("a commented [bridge] example");
        let uncommented: String = text[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.trim_start_matches('#').trim_start())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        let b = bridge(&uncommented).unwrap().expect("[bridge] set");
        assert_eq!(
            b.egress_dir,
            PathBuf::from("/run/airlock-vault-bridge/egress")
        );
    }
}
