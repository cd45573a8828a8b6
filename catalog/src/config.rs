//! The `[catalog]` config section: a raw serde struct that denies unknown
//! keys, converted into typed options with errors naming the key, and
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

use serde::Deserialize;

use crate::error::Result;
use crate::postgres::{PgCatalog, PgCatalogOptions};
use crate::sqlite::{SqliteCatalog, DB_FILE_NAME};
use crate::Catalog;

/// `[catalog]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCatalogConfig {
    /// `sqlite` (default) or `postgres`.
    pub backend: Option<String>,
    /// SQLite file; default `<data_dir>/catalog.sqlite3`.
    pub sqlite_path: Option<PathBuf>,
    /// PostgreSQL URL (required with `backend = "postgres"`).
    pub postgres_url: Option<String>,
    /// Schema of the catalog's tables (default `public`).
    pub postgres_schema: Option<String>,
    /// Pool size per replica.
    pub postgres_max_connections: Option<usize>,
}

/// A bad `[catalog]` value; `key` is the dotted key (`catalog.backend`).
pub type CatalogConfigError = settings::InvalidKey;

/// A PostgreSQL URL whose `Debug` hides the password.
pub use settings::SecretUrl;

const SECTION: &str = "catalog";

fn invalid(key: &str, message: impl std::fmt::Display) -> CatalogConfigError {
    settings::InvalidKey::in_section(SECTION, key, message)
}

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
        match raw.backend.as_deref().unwrap_or("sqlite") {
            "sqlite" => {
                settings::only_with(
                    SECTION,
                    "backend = \"postgres\"",
                    &[
                        ("postgres_url", raw.postgres_url.is_some()),
                        ("postgres_schema", raw.postgres_schema.is_some()),
                        (
                            "postgres_max_connections",
                            raw.postgres_max_connections.is_some(),
                        ),
                    ],
                )?;
                Ok(CatalogConfig::Sqlite {
                    path: raw
                        .sqlite_path
                        .clone()
                        .unwrap_or_else(|| data_dir.join(DB_FILE_NAME)),
                })
            }
            "postgres" => {
                settings::only_with(
                    SECTION,
                    "backend = \"sqlite\"",
                    &[("sqlite_path", raw.sqlite_path.is_some())],
                )?;
                let url = raw
                    .postgres_url
                    .clone()
                    .filter(|u| !u.trim().is_empty())
                    .ok_or_else(|| {
                        invalid("postgres_url", "required with backend = \"postgres\"")
                    })?;
                let mut options = PgCatalogOptions::default();
                if let Some(schema) = &raw.postgres_schema {
                    options.schema = schema.clone();
                }
                options.max_connections = settings::at_least_one(
                    "catalog.postgres_max_connections",
                    raw.postgres_max_connections,
                    options.max_connections,
                )?;
                Ok(CatalogConfig::Postgres {
                    url: SecretUrl::new(url),
                    options,
                })
            }
            other => Err(invalid(
                "backend",
                format!("unknown backend {other:?}; expected sqlite or postgres"),
            )),
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
