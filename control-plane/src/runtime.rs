//! The agent runtime of `serve`: the model provider (`[model]`), the hands
//! over the gateway ([`crate::hands`]), the harness (`[harness]`) and the
//! supervisor that runs its wakes. [`crate::app::App::start`] builds it with
//! [`start_supervisor`] once every listener is bound; the supervisor
//! recovers running sessions at once and then on its scan interval, and the
//! API tells it about new user events.
//!
//! `[model]` keys (all optional):
//!
//! ```toml
//! [model]
//! base_url = "https://api.anthropic.com"   # else ANTHROPIC_BASE_URL, else this
//! api_key_env = "ANTHROPIC_API_KEY"        # the variable holding the key (default)
//! # api_key = "sk-..."                     # or the key itself (prefer the environment)
//! anthropic_version = "2023-06-01"
//! anthropic_beta = []
//! request_timeout_seconds = 60
//! stream_idle_timeout_seconds = 90
//! max_event_bytes = 16777216
//! ```
//!
//! Without a key the control plane still serves (API, gateway, catalog);
//! every model request then fails with an error naming the missing setting,
//! which the session shows as `session.error`. The key is never logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use harness::{Harness, HarnessConfig, Supervisor};
use model::{
    AnthropicConfig, AnthropicProvider, MessagesRequest, ModelError, ModelStream, Provider,
    RawAnthropicConfig,
};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::config::ConfigError;
use crate::gateway::GatewayHandle;
use crate::hands::GatewayHands;

/// `[model]` as written (its keys are the model crate's).
pub type RawModelConfig = RawAnthropicConfig;

/// Validated `[model]`.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The provider settings, or why there are none (no key anywhere).
    pub anthropic: Result<AnthropicConfig, String>,
}

impl ModelConfig {
    /// Validate, reading the key and base URL from the process environment
    /// when the file does not give them.
    pub fn from_raw(raw: RawModelConfig) -> Result<Self, ConfigError> {
        Self::from_raw_with_env(raw, |k| std::env::var(k).ok())
    }

    /// Validate with an explicit environment lookup (for tests).
    pub fn from_raw_with_env(
        raw: RawModelConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        match AnthropicConfig::from_raw_with_env(raw, env) {
            Ok(c) => Ok(Self { anthropic: Ok(c) }),
            Err(model::anthropic::ConfigError::Missing { env: key_env, .. }) => Ok(Self {
                anthropic: Err(format!(
                    "no model API key is configured: set the {key_env} environment variable (or model.api_key_env / model.api_key in the config file) and restart the control plane"
                )),
            }),
            Err(model::anthropic::ConfigError::Invalid { key, message }) => Err(ConfigError::invalid(key, message)),
            Err(other) => Err(ConfigError::invalid("model", other)),
        }
    }
}

/// The model provider for `config`: the Anthropic client, or (without a
/// key) one that fails every request saying what to configure.
pub fn provider(config: &ModelConfig) -> Result<Arc<dyn Provider>, ModelError> {
    match &config.anthropic {
        Ok(c) => {
            tracing::info!(model_base_url = %c.base_url, "model provider: anthropic");
            Ok(Arc::new(AnthropicProvider::new(c.clone())?))
        }
        Err(reason) => {
            tracing::warn!(reason = %reason, "no model API key; sessions will end with a session.error until one is configured");
            Ok(Arc::new(Unconfigured {
                reason: reason.clone(),
            }))
        }
    }
}

/// A provider that fails every request (no key configured).
#[derive(Debug)]
struct Unconfigured {
    reason: String,
}

#[async_trait::async_trait]
impl Provider for Unconfigured {
    fn name(&self) -> &str {
        model::anthropic::PROVIDER
    }

    async fn stream(&self, _request: &MessagesRequest) -> Result<ModelStream, ModelError> {
        Err(ModelError::InvalidRequest {
            message: self.reason.clone(),
        })
    }
}

/// The file under the data dir holding the control plane's stable
/// instance id (the harness's lease holder name), created once with mode
/// 0600. It is also the lock that keeps a second `serve` off the data dir.
pub const INSTANCE_ID_FILE: &str = "instance_id";

/// Why the instance id could not be claimed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstanceIdError {
    /// The file could not be created, locked, read or written.
    #[error("instance id file {}: {source}", path.display())]
    Io {
        /// `<data_dir>/instance_id`.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another live process holds the lock: two processes must never share
    /// an instance id (each would take the other's leases).
    #[error(
        "another control plane is running on data dir {} (it holds the lock on {}); \
         stop it first, or give this one a data dir of its own",
        data_dir.display(),
        path.display()
    )]
    InUse {
        /// The data dir.
        data_dir: PathBuf,
        /// `<data_dir>/instance_id`.
        path: PathBuf,
    },
    /// The file does not hold a usable id.
    #[error(
        "instance id file {}: {reason}; fix or delete it (a new id is then generated, \
         and sessions this data dir's control plane held wait out their lease TTL once)",
        path.display()
    )]
    Invalid {
        /// `<data_dir>/instance_id`.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Where the instance id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceIdSource {
    /// `[harness] instance_id`.
    Configured,
    /// `<data_dir>/instance_id`, read.
    DataDir,
    /// `<data_dir>/instance_id`, created now.
    Created,
}

/// The lease holder name of this `serve` process, and the lock on
/// `<data_dir>/instance_id` that makes it this process's alone: held until
/// the value is dropped (the kernel drops it when the process dies, SIGKILL
/// included), so a second process on the same data dir fails to start
/// instead of taking the first one's leases.
#[derive(Debug)]
pub struct InstanceIdentity {
    id: String,
    source: InstanceIdSource,
    _lock: Flock<std::fs::File>,
}

impl InstanceIdentity {
    /// Lock `<data_dir>/instance_id` (creating it, 0600, with a new id if
    /// missing) and return the id to use: `[harness] instance_id` when
    /// configured, else the file's. Blocking file I/O (a few syscalls).
    pub fn claim(data_dir: &Path, harness: &HarnessConfig) -> Result<Self, InstanceIdError> {
        use std::io::{Read, Seek, Write};
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = data_dir.join(INSTANCE_ID_FILE);
        let io = |source| InstanceIdError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(InstanceIdError::InUse {
                    data_dir: data_dir.to_owned(),
                    path,
                })
            }
            Err((_, e)) => return Err(io(std::io::Error::from(e))),
        };
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io)?;
        let stored = text.trim();
        let (file_id, created) = if stored.is_empty() {
            let id = new_stable_instance_id();
            file.set_len(0).map_err(io)?;
            file.rewind().map_err(io)?;
            file.write_all(format!("{id}\n").as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            (id, true)
        } else {
            if let Err(reason) = check_instance_id(stored) {
                return Err(InstanceIdError::Invalid { path, reason });
            }
            (stored.to_owned(), false)
        };
        // Created 0600; an existing file keeps nothing wider.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let (id, source) = if harness.instance_id_configured {
            (harness.instance_id.clone(), InstanceIdSource::Configured)
        } else if created {
            (file_id, InstanceIdSource::Created)
        } else {
            (file_id, InstanceIdSource::DataDir)
        };
        Ok(Self {
            id,
            source,
            _lock: file,
        })
    }

    /// The lease holder name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where it came from.
    pub fn source(&self) -> InstanceIdSource {
        self.source
    }
}

/// What an instance id file may hold: 1 to 200 bytes of printable ASCII.
fn check_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 200 {
        return Err(format!("the id is {} bytes, not 1 to 200", id.len()));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the id holds characters other than printable ASCII".to_owned());
    }
    Ok(())
}

/// A new stable id: host name and a random suffix (no pid: the id outlives
/// the process).
fn new_stable_instance_id() -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", host_name(), &suffix[..12])
}

/// The host name, sanitised for a holder name.
fn host_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "control-plane".to_owned());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    host
}

/// A per-process lease holder name: host name, process id and a random
/// suffix, so every process (and every restart) is a distinct holder. What
/// `[harness]` gets when `instance_id` is unset; `serve` replaces it with
/// the data dir's stable id ([`InstanceIdentity::claim`]).
pub fn default_instance_id() -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}-{}", host_name(), std::process::id(), &suffix[..8])
}

/// `[harness]` into the typed config, defaulting `instance_id` to
/// [`default_instance_id`].
/// A defaulted id is not a configured one: `serve` replaces it with the data
/// dir's stable id ([`InstanceIdentity::claim`] looks at
/// `instance_id_configured`).
pub fn harness_config(raw: harness::RawHarnessConfig) -> Result<HarnessConfig, ConfigError> {
    let mut config = HarnessConfig::from_raw(raw)?;
    if !config.instance_id_configured {
        config.instance_id = default_instance_id();
    }
    Ok(config)
}

/// Build the harness over `store`, the model `provider` (see [`provider`])
/// and the gateway's hands, with `instance`'s id as its lease holder name,
/// and start its supervisor (which takes back the leases that id still
/// holds, then scans for sessions to recover, at once).
pub fn start_supervisor(
    store: Arc<dyn session_store::SessionStore>,
    provider: Arc<dyn Provider>,
    harness: &HarnessConfig,
    instance: &InstanceIdentity,
    gateway: GatewayHandle,
    catalog: Arc<dyn catalog::Catalog>,
) -> Supervisor {
    let hands = Arc::new(GatewayHands::new(gateway).with_catalog(catalog));
    let mut harness = harness.clone();
    harness.instance_id = instance.id().to_owned();
    tracing::info!(
        instance_id = %harness.instance_id,
        instance_id_source = ?instance.source(),
        lease_ttl_seconds = harness.lease_ttl.as_secs_f64(),
        lease_renew_interval_seconds = harness.lease_renew_interval.as_secs_f64(),
        provisioning = ?harness.provisioning,
        "harness started"
    );
    Supervisor::start(Harness::new(store, provider, hands, harness))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(toml_text: &str, env: &[(&str, &str)]) -> Result<ModelConfig, ConfigError> {
        let raw: RawModelConfig =
            toml::from_str(toml_text).map_err(|e| ConfigError::invalid("model", e))?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ModelConfig::from_raw_with_env(raw, move |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn key_from_the_default_variable_a_named_one_or_the_file() {
        let c = parse(
            "",
            &[
                ("ANTHROPIC_API_KEY", "k1"),
                ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9"),
            ],
        )
        .unwrap();
        let a = c.anthropic.unwrap();
        assert_eq!(a.api_key, model::ApiKey::new("k1"));
        assert_eq!(a.base_url, "http://127.0.0.1:9");
        let c = parse(
            "api_key_env = \"MY_KEY\"",
            &[("ANTHROPIC_API_KEY", "k1"), ("MY_KEY", "k2")],
        )
        .unwrap();
        assert_eq!(c.anthropic.unwrap().api_key, model::ApiKey::new("k2"));
        let c = parse(
            "api_key = \"k3\"\nbase_url = \"http://127.0.0.1:8\"",
            &[("ANTHROPIC_BASE_URL", "http://x:1")],
        )
        .unwrap();
        let a = c.anthropic.unwrap();
        assert_eq!(a.api_key, model::ApiKey::new("k3"));
        assert_eq!(a.base_url, "http://127.0.0.1:8");
    }

    #[test]
    fn a_missing_key_is_not_a_config_error_but_says_what_to_set() {
        let c = parse(
            "api_key_env = \"MY_KEY\"",
            &[("ANTHROPIC_API_KEY", "not this one")],
        )
        .unwrap();
        let why = c.anthropic.unwrap_err();
        assert!(why.contains("MY_KEY"), "{why}");
        let c = parse("", &[]).unwrap();
        assert!(c.anthropic.unwrap_err().contains("ANTHROPIC_API_KEY"));
    }

    #[test]
    fn bad_values_name_the_key_and_the_key_is_never_shown() {
        let e = parse("api_key = \"a\"\napi_key_env = \"B\"", &[]).unwrap_err();
        assert!(e.to_string().contains("model.api_key_env"), "{e}");
        let e = parse("base_url = \"ftp://x\"", &[("ANTHROPIC_API_KEY", "k")]).unwrap_err();
        assert!(e.to_string().contains("model.base_url"), "{e}");
        let e = parse(
            "request_timeout_seconds = -1",
            &[("ANTHROPIC_API_KEY", "k")],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("model.request_timeout_seconds"),
            "{e}"
        );
        assert!(parse("bogus = 1", &[]).is_err());
        let c = parse("api_key = \"sk-very-secret\"", &[]).unwrap();
        assert!(!format!("{c:?}").contains("sk-very-secret"));
    }

    #[test]
    fn instance_ids_are_distinct_and_harness_keys_are_named() {
        let a = default_instance_id();
        let b = default_instance_id();
        assert_ne!(a, b);
        assert!(a.contains(&format!("-{}-", std::process::id())), "{a}");
        let c = harness_config(harness::RawHarnessConfig::default()).unwrap();
        assert!(c.instance_id.contains(&std::process::id().to_string()));
        assert!(
            !c.instance_id_configured,
            "a defaulted id is not a configured one"
        );
        let raw: harness::RawHarnessConfig = toml::from_str("provisioning = \"never\"").unwrap();
        let e = harness_config(raw).unwrap_err();
        assert!(e.to_string().contains("harness.provisioning"), "{e}");
    }

    #[test]
    fn the_instance_id_is_created_once_kept_and_locked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let generated = harness_config(harness::RawHarnessConfig::default()).unwrap();
        let a = InstanceIdentity::claim(&data, &generated).unwrap();
        assert_eq!(a.source(), InstanceIdSource::Created);
        let path = data.join(INSTANCE_ID_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), a.id());
        assert!(!a.id().contains(&format!("-{}-", std::process::id())));
        // A second claim while the first is held fails, naming the data dir.
        let e = InstanceIdentity::claim(&data, &generated).unwrap_err();
        assert!(matches!(e, InstanceIdError::InUse { .. }), "{e}");
        assert!(e.to_string().contains(&data.display().to_string()), "{e}");
        let first = a.id().to_owned();
        drop(a);
        // After the holder is gone: the same id again, from the file.
        let b = InstanceIdentity::claim(&data, &generated).unwrap();
        assert_eq!(
            (b.id(), b.source()),
            (first.as_str(), InstanceIdSource::DataDir)
        );
        drop(b);
        // `[harness] instance_id` wins, and still locks the data dir.
        let raw: harness::RawHarnessConfig = toml::from_str("instance_id = \"cp-1\"").unwrap();
        let configured = harness_config(raw).unwrap();
        let c = InstanceIdentity::claim(&data, &configured).unwrap();
        assert_eq!((c.id(), c.source()), ("cp-1", InstanceIdSource::Configured));
        assert!(InstanceIdentity::claim(&data, &generated).is_err());
        drop(c);
        // A file that does not hold an id is refused, naming the file.
        std::fs::write(&path, "two words\n").unwrap();
        let e = InstanceIdentity::claim(&data, &generated).unwrap_err();
        assert!(matches!(e, InstanceIdError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains(INSTANCE_ID_FILE), "{e}");
    }

    #[test]
    fn the_documented_example_config_parses() {
        let doc = include_str!("../../docs/operations.md");
        let start = doc
            .find("```toml\n")
            .expect("a toml example in docs/operations.md")
            + 8;
        let end = start + doc[start..].find("```").unwrap();
        let c = crate::config::Config::parse(
            &doc[start..end],
            std::path::Path::new("docs/operations.md"),
        )
        .unwrap();
        assert_eq!(c.harness.lease_ttl, std::time::Duration::from_secs(10));
        assert_eq!(
            c.harness.provisioning,
            harness::ProvisioningMode::Speculative
        );
        assert_eq!(c.harness.supervisor.max_concurrent_wakes, 256);
        let e = crate::config::Config::parse(
            "[harness]\nlease_ttl_seconds = 0",
            std::path::Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("harness.lease_ttl_seconds"), "{e}");
        let e = crate::config::Config::parse("[model]\nbogus = 1", std::path::Path::new("x.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[tokio::test]
    async fn the_unconfigured_provider_fails_without_retry() {
        let c = parse("", &[]).unwrap();
        let p = provider(&c).unwrap();
        let req = MessagesRequest {
            model: "m".into(),
            max_tokens: 1,
            system: vec![],
            messages: vec![],
            tools: vec![],
            tool_choice: None,
            temperature: None,
            metadata: None,
        };
        let e = p.stream(&req).await.err().unwrap();
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("ANTHROPIC_API_KEY"), "{e}");
    }
}
