//! The `[catalog]` config section: the shared `sqlite | postgres` keys
//! ([`settings::backend`]: same checks and messages as `[session_store]`),
//! converted into typed options with errors naming the key, and
//! [`open_catalog`] to build the configured catalog.
//!
//! ```toml
//! [catalog]
//! backend = "sqlite"                    # or "postgres"
//! sqlite_path = "/var/lib/airlock/catalog.sqlite3"
//! postgres_url = "postgresql://airlock@127.0.0.1:5432/airlock"
//! postgres_schema = "airlock_catalog"
//! postgres_max_connections = 8
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Result;
use crate::postgres::{PgCatalog, PgCatalogOptions};
use crate::sqlite::{SqliteCatalog, DB_FILE_NAME};
use crate::Catalog;
use settings::{Backend, BackendRules};

/// `[catalog]` as written: only the shared backend keys (SQLite file
/// default `<data_dir>/catalog.sqlite3`, schema default `public`).
pub type RawCatalogConfig = settings::RawBackend;

/// A bad `[catalog]` value; `key` is the dotted key (`catalog.backend`).
pub type CatalogConfigError = settings::InvalidKey;

/// A PostgreSQL URL whose `Debug` hides the password.
pub use settings::SecretUrl;

const SECTION: &str = "catalog";

/// The longest schema name (PostgreSQL's identifier limit).
pub(crate) const MAX_SCHEMA_LEN: usize = 63;

/// The validated section.
#[derive(Debug, Clone)]
pub enum CatalogConfig {
    /// The embedded catalog.
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
    /// Shared PostgreSQL.
    Postgres {
        /// Where.
        url: SecretUrl,
        /// Schema and pool.
        options: PgCatalogOptions,
    },
}

impl CatalogConfig {
    /// Converts the raw section; relative defaults live in `data_dir`.
    pub fn from_raw(raw: &RawCatalogConfig, data_dir: &Path) -> Result<Self, CatalogConfigError> {
        let defaults = PgCatalogOptions::default();
        let rules = BackendRules {
            section: SECTION,
            default_sqlite_path: data_dir.join(DB_FILE_NAME),
            default_max_connections: defaults.max_connections,
            max_schema_len: MAX_SCHEMA_LEN,
            sqlite_keys: &[],
            postgres_keys: &[],
            check_url: &|url| {
                url.parse::<tokio_postgres::Config>()
                    .map(drop)
                    .map_err(Into::into)
            },
        };
        match raw.check(&rules)? {
            Backend::Sqlite { path } => Ok(CatalogConfig::Sqlite { path }),
            Backend::Postgres {
                url,
                schema,
                max_connections,
            } => Ok(CatalogConfig::Postgres {
                url,
                options: PgCatalogOptions {
                    schema: schema.unwrap_or(defaults.schema),
                    max_connections,
                },
            }),
        }
    }
}

/// Opens (and migrates) the configured catalog.
pub async fn open_catalog(config: &CatalogConfig) -> Result<Arc<dyn Catalog>> {
    Ok(match config {
        CatalogConfig::Sqlite { path } => Arc::new(SqliteCatalog::open(path).await?),
        CatalogConfig::Postgres { url, options } => {
            Arc::new(PgCatalog::connect(url.expose(), options.clone()).await?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CatalogConfig, CatalogConfigError> {
        let raw: RawCatalogConfig = toml::from_str(text).unwrap();
        CatalogConfig::from_raw(&raw, Path::new("/data"))
    }

    #[test]
    fn defaults_to_sqlite_in_the_data_dir_and_errors_name_the_key() {
        match parse("").unwrap() {
            CatalogConfig::Sqlite { path } => assert_eq!(path, Path::new("/data/catalog.sqlite3")),
            other => panic!("{other:?}"),
        }
        let pg =
            parse("backend = \"postgres\"\npostgres_url = \"postgresql://u:secret@h/db\"").unwrap();
        assert!(!format!("{pg:?}").contains("secret"));
        assert!(parse("backend = \"postgres\"")
            .unwrap_err()
            .to_string()
            .contains("catalog.postgres_url"));
        assert!(parse("backend = \"mysql\"")
            .unwrap_err()
            .to_string()
            .contains("catalog.backend"));
        assert!(parse("postgres_url = \"x\"")
            .unwrap_err()
            .to_string()
            .contains("catalog.postgres_url"));
        assert!(toml::from_str::<RawCatalogConfig>("bakend = 1")
            .unwrap_err()
            .to_string()
            .contains("bakend"));
    }
}
