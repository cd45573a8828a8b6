//! The small pieces every Airlock config section is checked with: the error
//! for a value that parses but is not acceptable ([`InvalidKey`], which names
//! the dotted key), a connection URL whose `Debug` never shows its password
//! ([`SecretUrl`]), the range checks sections repeat
//! ([`seconds_between`], [`positive_seconds`], [`at_least_one`],
//! [`only_with`]), `host:port` ([`host_port`]), the keys of a
//! `sqlite | postgres` storage section ([`backend`]) and capped exponential
//! backoff with jitter ([`backoff`]). Sections stay in their own crates; only
//! these shapes are shared, so every config error in the product reads the
//! same way and every retry loop backs off the same way.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod backend;
pub mod backoff;
pub mod host_port;

use std::time::Duration;

pub use backend::{Backend, BackendRules, RawBackend};
pub use backoff::{BackoffPolicy, Jitter};
pub use host_port::{join_host_port, split_host_port, split_host_port_or};

/// A config value that parses but is not acceptable; `key` is the dotted
/// key path (`session_store.backend`, `tunnel.heartbeat_interval_seconds`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for `{key}`: {message}")]
pub struct InvalidKey {
    /// Dotted key path.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl InvalidKey {
    /// `message` about `key`.
    pub fn new(key: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self {
            key: key.into(),
            message: message.to_string(),
        }
    }

    /// `message` about `key` inside the section `section` (`section.key`).
    pub fn in_section(section: &str, key: &str, message: impl std::fmt::Display) -> Self {
        Self::new(format!("{section}.{key}"), message)
    }
}

/// A connection URL (PostgreSQL, Vault, ...) whose `Debug` hides the
/// password: `postgresql://user:secret@host/db` prints as
/// `postgresql://user:***@host/db`; a key=value connection string that
/// mentions a password prints as a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wrap a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL, password included (pass it to the driver only).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.0;
        match (s.find("://"), s.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let creds = &s[scheme + 3..at];
                match creds.find(':') {
                    Some(colon) => {
                        write!(f, "{}{}:***{}", &s[..scheme + 3], &creds[..colon], &s[at..])
                    }
                    None => f.write_str(s),
                }
            }
            _ if s.contains("password") => f.write_str("<connection string with a password>"),
            _ => f.write_str(s),
        }
    }
}

/// `v` seconds (or `default` when unset), which must lie in `min..=max`.
pub fn seconds_between(
    key: &str,
    v: Option<f64>,
    default: f64,
    min: f64,
    max: f64,
) -> Result<Duration, InvalidKey> {
    let v = v.unwrap_or(default);
    if !(min..=max).contains(&v) {
        return Err(InvalidKey::new(
            key,
            format!("must be between {min} and {max} seconds, got {v}"),
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// `v` seconds (or `default` when unset), which must be a positive, finite
/// number below 10^9.
pub fn positive_seconds(
    key: &str,
    v: Option<f64>,
    default: Duration,
) -> Result<Duration, InvalidKey> {
    match v {
        None => Ok(default),
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(InvalidKey::new(
            key,
            format!("{s} is not a positive number of seconds"),
        )),
    }
}

/// `v` (or `default` when unset), which must be at least 1.
pub fn at_least_one(key: &str, v: Option<usize>, default: usize) -> Result<usize, InvalidKey> {
    match v {
        None => Ok(default),
        Some(0) => Err(InvalidKey::new(key, "must be at least 1")),
        Some(n) => Ok(n),
    }
}

/// Refuse the first key of `keys` that is set: each `(key, is_set)` only
/// applies with `condition` (e.g. `backend = "postgres"`), which does not
/// hold. Keys are named `section.key`.
pub fn only_with(section: &str, condition: &str, keys: &[(&str, bool)]) -> Result<(), InvalidKey> {
    match keys.iter().find(|(_, set)| *set) {
        Some((key, _)) => Err(InvalidKey::in_section(
            section,
            key,
            format!("only applies with {condition}"),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_url_debug_hides_only_the_password() {
        let u = SecretUrl::new("postgresql://airlock:hunter2@db.internal:5432/airlock");
        let shown = format!("{u:?}");
        assert_eq!(shown, "postgresql://airlock:***@db.internal:5432/airlock");
        assert!(!shown.contains("hunter2"));
        assert_eq!(
            u.expose(),
            "postgresql://airlock:hunter2@db.internal:5432/airlock"
        );
        let kv = SecretUrl::new("host=db user=airlock password=hunter2");
        assert!(!format!("{kv:?}").contains("hunter2"));
        let plain = SecretUrl::new("postgresql://airlock@127.0.0.1/postgres");
        assert_eq!(
            format!("{plain:?}"),
            "postgresql://airlock@127.0.0.1/postgres"
        );
        // an '@' in the password: everything up to the last '@' is hidden
        let at = SecretUrl::new("postgres://u:p@ss@h/db");
        assert!(!format!("{at:?}").contains("p@ss"), "{at:?}");
    }

    #[test]
    fn errors_name_the_key_and_the_bound() {
        let e = seconds_between(
            "tunnel.heartbeat_interval_seconds",
            Some(0.0),
            5.0,
            0.1,
            60.0,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value for `tunnel.heartbeat_interval_seconds`: must be between 0.1 and 60 seconds, got 0"
        );
        assert_eq!(
            seconds_between("k", None, 5.0, 0.1, 60.0).unwrap(),
            Duration::from_secs(5)
        );
        assert!(positive_seconds("k", Some(f64::NAN), Duration::ZERO).is_err());
        assert!(positive_seconds("k", Some(-1.0), Duration::ZERO).is_err());
        assert_eq!(
            positive_seconds("k", Some(1.5), Duration::ZERO).unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(at_least_one("k", Some(0), 3).unwrap_err().key, "k");
        assert_eq!(at_least_one("k", None, 3).unwrap(), 3);
        let e = only_with(
            "catalog",
            "backend = \"postgres\"",
            &[("postgres_url", false), ("postgres_schema", true)],
        )
        .unwrap_err();
        assert_eq!(e.key, "catalog.postgres_schema");
        assert!(e.message.contains("backend = \"postgres\""));
        assert!(only_with("catalog", "x", &[("a", false)]).is_ok());
    }
}
