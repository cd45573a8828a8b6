//! The `[session_store]` config section: the shared `sqlite | postgres`
//! keys ([`settings::backend`]: same checks and messages as `[catalog]`)
//! plus the store's own, in a raw serde struct that denies unknown keys,
//! converted into typed options with errors naming the key, and
//! [`open_store`] to build the configured store.
//!
//! ```toml
//! [session_store]
//! backend = "sqlite"                  # or "postgres"
//! sqlite_path = "/var/lib/airlock/sessions.sqlite3"
//! max_group_commit = 1024
//! busy_timeout_seconds = 5
//! postgres_url = "postgresql://airlock@127.0.0.1:5432/airlock"
//! postgres_schema = "airlock"
//! postgres_max_connections = 16
//! postgres_connect_timeout_seconds = 10
//! tail_poll_interval_seconds = 5
//! postgres_application_name = "airlock-session-store"
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::error::Result;
use crate::postgres::{PgOptions, PgStore};
use crate::sqlite::{SqliteOptions, SqliteStore, DB_FILE_NAME};
use crate::SessionStore;
use settings::{Backend, BackendRules};

/// `[session_store]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStoreConfig {
    /// `backend`, `sqlite_path` (default `<data_dir>/sessions.sqlite3`),
    /// `postgres_url`, `postgres_schema`, `postgres_max_connections`.
    #[serde(flatten)]
    pub shared: settings::RawBackend,
    /// Most writes committed together by the SQLite writer.
    pub max_group_commit: Option<usize>,
    /// How long SQLite waits for a lock held by another process.
    pub busy_timeout_seconds: Option<f64>,
    /// Connect timeout.
    pub postgres_connect_timeout_seconds: Option<f64>,
    /// Safety-net re-read interval of live tails on PostgreSQL.
    pub tail_poll_interval_seconds: Option<f64>,
    /// `application_name` of the store's PostgreSQL connections.
    pub postgres_application_name: Option<String>,
}

/// A config value that is not acceptable; `key` is the dotted key
/// (`session_store.backend`).
pub type StoreConfigError = settings::InvalidKey;

/// A PostgreSQL URL whose `Debug` hides the password.
pub type PgUrl = settings::SecretUrl;

const SECTION: &str = "session_store";

/// The longest schema name (the store derives its notification channel
/// names from it, within PostgreSQL's 63-byte identifier limit).
pub(crate) const MAX_SCHEMA_LEN: usize = 40;

/// The validated section.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// The embedded store.
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// Options (group commit size, busy timeout).
        options: SqliteOptions,
    },
    /// Shared PostgreSQL.
    Postgres {
        /// Where.
        url: PgUrl,
        /// Schema, pool, timeouts.
        options: PgOptions,
    },
}

fn seconds(key: &str, v: Option<f64>, default: Duration) -> Result<Duration, StoreConfigError> {
    settings::positive_seconds(&format!("{SECTION}.{key}"), v, default)
}

fn positive(key: &str, v: Option<usize>, default: usize) -> Result<usize, StoreConfigError> {
    settings::at_least_one(&format!("{SECTION}.{key}"), v, default)
}

impl StoreConfig {
    /// Validates `raw`; relative defaults live under `data_dir`.
    pub fn from_raw(raw: &RawStoreConfig, data_dir: &Path) -> Result<Self, StoreConfigError> {
        let sqlite = SqliteOptions::default();
        let postgres = PgOptions::default();
        let rules = BackendRules {
            section: SECTION,
            default_sqlite_path: data_dir.join(DB_FILE_NAME),
            default_max_connections: postgres.max_connections,
            max_schema_len: MAX_SCHEMA_LEN,
            sqlite_keys: &[
                ("max_group_commit", raw.max_group_commit.is_some()),
                ("busy_timeout_seconds", raw.busy_timeout_seconds.is_some()),
            ],
            postgres_keys: &[
                (
                    "postgres_connect_timeout_seconds",
                    raw.postgres_connect_timeout_seconds.is_some(),
                ),
                (
                    "tail_poll_interval_seconds",
                    raw.tail_poll_interval_seconds.is_some(),
                ),
                (
                    "postgres_application_name",
                    raw.postgres_application_name.is_some(),
                ),
            ],
            check_url: &|url| {
                url.parse::<tokio_postgres::Config>()
                    .map(drop)
                    .map_err(Into::into)
            },
        };
        match raw.shared.check(&rules)? {
            Backend::Sqlite { path } => Ok(StoreConfig::Sqlite {
                path,
                options: SqliteOptions {
                    max_group_commit: positive(
                        "max_group_commit",
                        raw.max_group_commit,
                        sqlite.max_group_commit,
                    )?,
                    busy_timeout: seconds(
                        "busy_timeout_seconds",
                        raw.busy_timeout_seconds,
                        sqlite.busy_timeout,
                    )?,
                    ..sqlite
                },
            }),
            Backend::Postgres {
                url,
                schema,
                max_connections,
            } => Ok(StoreConfig::Postgres {
                url,
                options: PgOptions {
                    schema: schema.unwrap_or(postgres.schema),
                    max_connections,
                    connect_timeout: seconds(
                        "postgres_connect_timeout_seconds",
                        raw.postgres_connect_timeout_seconds,
                        postgres.connect_timeout,
                    )?,
                    tail_poll_interval: seconds(
                        "tail_poll_interval_seconds",
                        raw.tail_poll_interval_seconds,
                        postgres.tail_poll_interval,
                    )?,
                    application_name: raw
                        .postgres_application_name
                        .clone()
                        .unwrap_or(postgres.application_name),
                },
            }),
        }
    }
}

/// Opens the configured store.
pub async fn open_store(config: &StoreConfig) -> Result<Arc<dyn SessionStore>> {
    Ok(match config {
        StoreConfig::Sqlite { path, options } => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    crate::StoreError::unavailable(
                        format!("creating {}: {e}", dir.display()),
                        Some(Box::new(e)),
                    )
                })?;
            }
            Arc::new(crate::Metered(
                SqliteStore::open(path, options.clone()).await?,
            ))
        }
        StoreConfig::Postgres { url, options } => Arc::new(crate::Metered(
            PgStore::connect(url.expose(), options.clone()).await?,
        )),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Parses a `[session_store]` table written as JSON (same serde rules
    /// as TOML; the control plane's config tests parse the real TOML files).
    fn parse(json: serde_json::Value) -> Result<StoreConfig, StoreConfigError> {
        let raw: RawStoreConfig = serde_json::from_value(json).unwrap();
        StoreConfig::from_raw(&raw, Path::new("/data"))
    }

    #[test]
    fn defaults_to_sqlite_in_the_data_dir() {
        match parse(json!({})).unwrap() {
            StoreConfig::Sqlite { path, options } => {
                assert_eq!(path, Path::new("/data/sessions.sqlite3"));
                assert_eq!(options.max_group_commit, 1024);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse(json!({"backend": "mysql"})).unwrap_err();
        assert!(e.to_string().contains("session_store.backend"), "{e}");
        let e = parse(json!({"backend": "postgres"})).unwrap_err();
        assert!(e.to_string().contains("session_store.postgres_url"), "{e}");
        let e = parse(json!({"busy_timeout_seconds": -1.0})).unwrap_err();
        assert!(
            e.to_string().contains("session_store.busy_timeout_seconds"),
            "{e}"
        );
        let e = parse(json!({"postgres_schema": "x"})).unwrap_err();
        assert!(
            e.to_string().contains("session_store.postgres_schema"),
            "{e}"
        );
        let e = parse(json!({"backend": "postgres", "postgres_url": "postgresql://a@h/d", "postgres_schema": "bad-name"}))
            .unwrap_err();
        assert!(
            e.to_string().contains("session_store.postgres_schema"),
            "{e}"
        );
        let unknown: Result<RawStoreConfig, _> = serde_json::from_value(json!({"nope": 1}));
        assert!(unknown.unwrap_err().to_string().contains("nope"));
    }

    #[test]
    fn postgres_url_password_is_redacted_in_debug() {
        let c = parse(json!({"backend": "postgres", "postgres_url": "postgresql://airlock:s3cret@127.0.0.1:5432/db"}))
            .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("airlock:***@127.0.0.1"), "{shown}");
    }
}
