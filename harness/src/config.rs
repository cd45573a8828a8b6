//! `[harness]` configuration: TOML raw structs that deny unknown keys,
//! converted into typed values; errors name the key.

use std::time::Duration;

use serde::Deserialize;
use settings::{BackoffPolicy, Jitter};

/// A configuration error naming the key at fault
/// (`harness.lease_ttl_seconds`).
pub type ConfigError = settings::InvalidKey;

fn invalid(key: &str, message: impl std::fmt::Display) -> ConfigError {
    settings::InvalidKey::new(key, message)
}

/// When the sandbox is provisioned relative to the first model call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisioningMode {
    /// On the first tool call that needs it.
    Lazy,
    /// In parallel with the first model call of a wake; tool calls wait for it.
    Speculative,
    /// Before the first model call (the baseline: the model waits).
    Eager,
}

impl std::str::FromStr for ProvisioningMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lazy" => Ok(Self::Lazy),
            "speculative" => Ok(Self::Speculative),
            "eager" => Ok(Self::Eager),
            other => Err(format!("{other:?} is not one of lazy, speculative, eager")),
        }
    }
}

/// Retry policy for model calls and transient hands failures.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all (first try included) before giving up.
    pub max_attempts: u32,
    /// The waits: the wait after the first failure (`base`) doubling to a
    /// cap (a longer `retry-after` still wins), each randomised within
    /// [50%, 100%] of its value ([`Jitter::Equal`]) unless jitter is off.
    pub backoff: BackoffPolicy,
}

impl RetryPolicy {
    /// The wait after `failures` consecutive failures (≥ 1): exponential from
    /// the first wait, capped, jittered, and never shorter than the
    /// provider's `retry-after`. `unit` is a number in [0, 1).
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
        let base = self.backoff.delay(failures.saturating_sub(1), unit);
        match retry_after {
            Some(r) if r > base => r,
            _ => base,
        }
    }
}

/// Limits that stop a runaway session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Successful model requests allowed per user turn (since the last
    /// `user.message`); 0 = unlimited.
    pub max_model_requests_per_turn: u32,
    /// Tokens (input + output + cache) allowed over the whole session;
    /// 0 = unlimited.
    pub max_session_tokens: u64,
}

/// Supervisor settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    /// How often to look for running sessions whose lease is free or expired.
    pub recovery_scan_interval: Duration,
    /// Wakes running at once in this process (each holds a permit for the
    /// whole wake: model requests and tool calls included).
    pub max_concurrent_wakes: usize,
    /// Wait between attempts when another harness holds a notified session.
    pub busy_retry_interval: Duration,
}

/// Validated harness configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct HarnessConfig {
    /// Lease holder name of this process (unique per replica).
    pub instance_id: String,
    /// Whether `instance_id` was set in the file (`[harness] instance_id`);
    /// `false`: generated, and `control-plane serve` replaces it with the
    /// stable id kept in its data dir.
    pub instance_id_configured: bool,
    /// Lease time-to-live.
    pub lease_ttl: Duration,
    /// How often a working harness renews its lease.
    pub lease_renew_interval: Duration,
    /// `max_tokens` of every model request.
    pub max_tokens: u32,
    /// When to provision.
    pub provisioning: ProvisioningMode,
    /// Retries of model calls and transient hands failures.
    pub retry: RetryPolicy,
    /// Budgets.
    pub budget: Budget,
    /// Supervisor.
    pub supervisor: SupervisorConfig,
}

impl Default for HarnessConfig {
    fn default() -> Self {
        // Cannot fail: the defaults are valid.
        Self::from_raw(RawHarnessConfig::default()).unwrap_or_else(|_| Self {
            instance_id: random_instance_id(),
            instance_id_configured: false,
            lease_ttl: Duration::from_secs_f64(DEFAULT_LEASE_TTL_SECONDS),
            lease_renew_interval: Duration::from_secs_f64(DEFAULT_LEASE_TTL_SECONDS / 3.0),
            max_tokens: 8192,
            provisioning: ProvisioningMode::Speculative,
            retry: RetryPolicy {
                max_attempts: 5,
                backoff: BackoffPolicy::new(
                    Duration::from_secs(1),
                    Duration::from_secs(30),
                    Jitter::Equal,
                ),
            },
            budget: Budget {
                max_model_requests_per_turn: 200,
                max_session_tokens: 0,
            },
            supervisor: SupervisorConfig {
                recovery_scan_interval: Duration::from_secs(5),
                max_concurrent_wakes: DEFAULT_MAX_CONCURRENT_WAKES,
                busy_retry_interval: Duration::from_millis(250),
            },
        })
    }
}

/// `[harness]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHarnessConfig {
    /// Lease holder name; default: `harness-` + a random suffix.
    pub instance_id: Option<String>,
    /// Default [`DEFAULT_LEASE_TTL_SECONDS`].
    pub lease_ttl_seconds: Option<f64>,
    /// Default min(10, TTL / 3); must be below `lease_ttl_seconds`.
    pub lease_renew_interval_seconds: Option<f64>,
    /// Default 8192.
    pub max_tokens: Option<u32>,
    /// `lazy`, `speculative` (default) or `eager`.
    pub provisioning: Option<String>,
    /// `[harness.retry]`.
    #[serde(default)]
    pub retry: RawRetry,
    /// `[harness.budget]`.
    #[serde(default)]
    pub budget: RawBudget,
    /// `[harness.supervisor]`.
    #[serde(default)]
    pub supervisor: RawSupervisor,
}

/// `[harness.retry]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Default 5.
    pub max_attempts: Option<u32>,
    /// Default 1.
    pub initial_backoff_seconds: Option<f64>,
    /// Default 30.
    pub max_backoff_seconds: Option<f64>,
    /// Default true.
    pub jitter: Option<bool>,
}

/// `[harness.budget]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    /// Default 200; 0 = unlimited.
    pub max_model_requests_per_turn: Option<u32>,
    /// Default 0 (unlimited).
    pub max_session_tokens: Option<u64>,
}

/// `[harness.supervisor]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSupervisor {
    /// Default 5.
    pub recovery_scan_interval_seconds: Option<f64>,
    /// Default [`DEFAULT_MAX_CONCURRENT_WAKES`].
    pub max_concurrent_wakes: Option<usize>,
    /// Default 0.25.
    pub busy_retry_interval_seconds: Option<f64>,
}

/// The default lease TTL: how long a dead replica's sessions wait before
/// another replica takes them over (a restart with the same instance id does
/// not wait: it reclaims its leases). Renewed every min(10 s, TTL / 3), so
/// 3.3 s by default: a renewal may be late by two intervals (6.7 s) before
/// the lease can be lost; a harness that does lose it is fenced by the
/// epoch and stops (docs/operations.md, "Lease TTL"). Was 30 s; lowered on
/// the renewal costs bench-recovery measured on PostgreSQL.
pub const DEFAULT_LEASE_TTL_SECONDS: f64 = 10.0;

/// The default `[harness.supervisor] max_concurrent_wakes`. A wake holds
/// its permit while it waits on the model and on tool calls, so the limit
/// is on sessions *running* at once, not on CPU work: with 64 (the old
/// default) and a model answering in 1.5 s, 1,000 sessions messaged at once
/// waited 23.5 s (p50) for their idle, 6.4 s with 256 and 5.2 s with 1,000
/// (bench-sessions, docs/scale.md). What it bounds is memory: each running
/// wake holds its session's events and its next model request (a few MB for
/// a session near the model's context limit).
pub const DEFAULT_MAX_CONCURRENT_WAKES: usize = 256;

fn seconds(key: &str, v: Option<f64>, default: f64, min: f64) -> Result<Duration, ConfigError> {
    let s = v.unwrap_or(default);
    if !s.is_finite() || s < min || s > 86_400.0 {
        return Err(invalid(
            key,
            format!("{s} is not a number of seconds in [{min}, 86400]"),
        ));
    }
    Ok(Duration::from_secs_f64(s))
}

fn random_instance_id() -> String {
    format!("harness-{}", uuid::Uuid::new_v4().simple())
}

impl HarnessConfig {
    /// Validate.
    pub fn from_raw(raw: RawHarnessConfig) -> Result<Self, ConfigError> {
        let instance_id_configured = raw.instance_id.is_some();
        let instance_id = match raw.instance_id {
            Some(s) if s.is_empty() || s.len() > 200 => {
                return Err(invalid("harness.instance_id", "must be 1 to 200 bytes"))
            }
            Some(s) => s,
            None => random_instance_id(),
        };
        let lease_ttl = seconds(
            "harness.lease_ttl_seconds",
            raw.lease_ttl_seconds,
            DEFAULT_LEASE_TTL_SECONDS,
            0.05,
        )?;
        let lease_renew_interval = seconds(
            "harness.lease_renew_interval_seconds",
            raw.lease_renew_interval_seconds,
            10.0_f64.min(lease_ttl.as_secs_f64() / 3.0),
            0.01,
        )?;
        if lease_renew_interval >= lease_ttl {
            return Err(invalid(
                "harness.lease_renew_interval_seconds",
                "must be shorter than harness.lease_ttl_seconds",
            ));
        }
        let max_tokens = raw.max_tokens.unwrap_or(8192);
        if max_tokens == 0 {
            return Err(invalid("harness.max_tokens", "must be at least 1"));
        }
        let provisioning = match raw.provisioning {
            None => ProvisioningMode::Speculative,
            Some(s) => s.parse().map_err(|e| invalid("harness.provisioning", e))?,
        };
        let max_attempts = raw.retry.max_attempts.unwrap_or(5);
        if max_attempts == 0 {
            return Err(invalid("harness.retry.max_attempts", "must be at least 1"));
        }
        let initial_backoff = seconds(
            "harness.retry.initial_backoff_seconds",
            raw.retry.initial_backoff_seconds,
            1.0,
            0.0,
        )?;
        let max_backoff = seconds(
            "harness.retry.max_backoff_seconds",
            raw.retry.max_backoff_seconds,
            30.0,
            0.0,
        )?;
        if max_backoff < initial_backoff {
            return Err(invalid(
                "harness.retry.max_backoff_seconds",
                "must not be below harness.retry.initial_backoff_seconds",
            ));
        }
        let max_concurrent_wakes = raw
            .supervisor
            .max_concurrent_wakes
            .unwrap_or(DEFAULT_MAX_CONCURRENT_WAKES);
        if max_concurrent_wakes == 0 {
            return Err(invalid(
                "harness.supervisor.max_concurrent_wakes",
                "must be at least 1",
            ));
        }
        Ok(Self {
            instance_id,
            instance_id_configured,
            lease_ttl,
            lease_renew_interval,
            max_tokens,
            provisioning,
            retry: RetryPolicy {
                max_attempts,
                backoff: BackoffPolicy::new(
                    initial_backoff,
                    max_backoff,
                    if raw.retry.jitter.unwrap_or(true) {
                        Jitter::Equal
                    } else {
                        Jitter::None
                    },
                ),
            },
            budget: Budget {
                max_model_requests_per_turn: raw.budget.max_model_requests_per_turn.unwrap_or(200),
                max_session_tokens: raw.budget.max_session_tokens.unwrap_or(0),
            },
            supervisor: SupervisorConfig {
                recovery_scan_interval: seconds(
                    "harness.supervisor.recovery_scan_interval_seconds",
                    raw.supervisor.recovery_scan_interval_seconds,
                    5.0,
                    0.01,
                )?,
                max_concurrent_wakes,
                busy_retry_interval: seconds(
                    "harness.supervisor.busy_retry_interval_seconds",
                    raw.supervisor.busy_retry_interval_seconds,
                    0.25,
                    0.001,
                )?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_keys() {
        let c = HarnessConfig::from_raw(RawHarnessConfig::default()).unwrap();
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        assert_eq!(c.lease_renew_interval, Duration::from_secs_f64(10.0 / 3.0));
        // A longer TTL renews every 10 s at most.
        let raw: RawHarnessConfig = toml::from_str("lease_ttl_seconds = 60").unwrap();
        let c = HarnessConfig::from_raw(raw).unwrap();
        assert_eq!(c.lease_renew_interval, Duration::from_secs(10));
        assert_eq!(c.provisioning, ProvisioningMode::Speculative);
        assert_eq!(c.supervisor.max_concurrent_wakes, 256);
        assert_eq!(
            HarnessConfig::default().supervisor.max_concurrent_wakes,
            256
        );
        assert_eq!(HarnessConfig::default().lease_ttl, Duration::from_secs(10));
        assert!(c.instance_id.starts_with("harness-"));
        assert!(!c.instance_id_configured);
        let raw: RawHarnessConfig = toml::from_str(
            "instance_id = \"cp-1\"\nprovisioning = \"lazy\"\nlease_ttl_seconds = 3\n[retry]\nmax_attempts = 2\n[budget]\nmax_session_tokens = 1000\n[supervisor]\nmax_concurrent_wakes = 4",
        )
        .unwrap();
        let c = HarnessConfig::from_raw(raw).unwrap();
        assert_eq!(c.instance_id, "cp-1");
        assert!(c.instance_id_configured);
        assert_eq!(c.provisioning, ProvisioningMode::Lazy);
        assert_eq!(c.lease_renew_interval, Duration::from_secs(1));
        assert_eq!(c.retry.max_attempts, 2);
        assert_eq!(c.budget.max_session_tokens, 1000);
        assert_eq!(c.supervisor.max_concurrent_wakes, 4);
        let raw: RawHarnessConfig = toml::from_str("provisioning = \"sometimes\"").unwrap();
        assert_eq!(
            HarnessConfig::from_raw(raw).unwrap_err().key,
            "harness.provisioning"
        );
        let raw: RawHarnessConfig =
            toml::from_str("lease_ttl_seconds = 5\nlease_renew_interval_seconds = 6").unwrap();
        assert_eq!(
            HarnessConfig::from_raw(raw).unwrap_err().key,
            "harness.lease_renew_interval_seconds"
        );
        assert!(toml::from_str::<RawHarnessConfig>("[retry]\nbogus = 1").is_err());
    }

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let p = RetryPolicy {
            max_attempts: 5,
            backoff: BackoffPolicy::new(
                Duration::from_millis(100),
                Duration::from_millis(350),
                Jitter::None,
            ),
        };
        assert_eq!(p.delay(1, None, 0.0), Duration::from_millis(100));
        assert_eq!(p.delay(2, None, 0.0), Duration::from_millis(200));
        assert_eq!(p.delay(3, None, 0.0), Duration::from_millis(350));
        assert_eq!(p.delay(40, None, 0.0), Duration::from_millis(350));
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(2)), 0.0),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.delay(3, Some(Duration::from_millis(10)), 0.0),
            Duration::from_millis(350)
        );
        let j = RetryPolicy {
            backoff: BackoffPolicy {
                jitter: Jitter::Equal,
                ..p.backoff
            },
            ..p
        };
        assert_eq!(j.delay(1, None, 0.0), Duration::from_millis(50));
        assert!(j.delay(1, None, 0.999) <= Duration::from_millis(100));
    }
}
