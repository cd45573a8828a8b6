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

use std::sync::Arc;

use harness::{Harness, HarnessConfig, Supervisor};
use model::{
    AnthropicConfig, AnthropicProvider, MessagesRequest, ModelError, ModelStream, Provider,
    RawAnthropicConfig,
};

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

/// The harness's default lease holder name: host name, process id and a
/// random suffix, so every process (and every restart) is a distinct holder.
pub fn default_instance_id() -> String {
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
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..8])
}

/// `[harness]` into the typed config, defaulting `instance_id` to
/// [`default_instance_id`].
pub fn harness_config(mut raw: harness::RawHarnessConfig) -> Result<HarnessConfig, ConfigError> {
    if raw.instance_id.is_none() {
        raw.instance_id = Some(default_instance_id());
    }
    Ok(HarnessConfig::from_raw(raw)?)
}

/// Build the harness over `store`, the model `provider` (see [`provider`])
/// and the gateway's hands, and start its supervisor (which scans for
/// sessions to recover at once).
pub fn start_supervisor(
    store: Arc<dyn session_store::SessionStore>,
    provider: Arc<dyn Provider>,
    harness: &HarnessConfig,
    gateway: GatewayHandle,
    catalog: Arc<dyn catalog::Catalog>,
) -> Supervisor {
    let hands = Arc::new(GatewayHands::new(gateway).with_catalog(catalog));
    tracing::info!(
        instance_id = %harness.instance_id,
        lease_ttl_seconds = harness.lease_ttl.as_secs_f64(),
        provisioning = ?harness.provisioning,
        "harness started"
    );
    Supervisor::start(Harness::new(store, provider, hands, harness.clone()))
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
        let raw: harness::RawHarnessConfig = toml::from_str("provisioning = \"never\"").unwrap();
        let e = harness_config(raw).unwrap_err();
        assert!(e.to_string().contains("harness.provisioning"), "{e}");
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
        assert_eq!(c.harness.lease_ttl, std::time::Duration::from_secs(30));
        assert_eq!(
            c.harness.provisioning,
            harness::ProvisioningMode::Speculative
        );
        assert_eq!(c.harness.supervisor.max_concurrent_wakes, 64);
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
