//! The keys every `sqlite | postgres` storage section shares (`[catalog]`,
//! `[session_store]`): which backend, the SQLite file, and the PostgreSQL
//! URL, schema and pool size, checked the same way with the same messages.
//! A section with more keys flattens [`RawBackend`] into its own raw struct
//! and names its extra keys in [`BackendRules`].
//!
//! ```toml
//! backend = "sqlite"                  # or "postgres"
//! sqlite_path = "/var/lib/airlock/<section>.sqlite3"
//! postgres_url = "postgresql://airlock@127.0.0.1:5432/airlock"
//! postgres_schema = "airlock"
//! postgres_max_connections = 8
//! ```

use std::path::PathBuf;

use serde::Deserialize;

use crate::{InvalidKey, SecretUrl};

/// The shared keys as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// `sqlite` (default) or `postgres`.
    pub backend: Option<String>,
    /// SQLite file; default in the data dir.
    pub sqlite_path: Option<PathBuf>,
    /// PostgreSQL URL (required with `backend = "postgres"`).
    pub postgres_url: Option<String>,
    /// Schema of the section's tables.
    pub postgres_schema: Option<String>,
    /// Pool size per replica.
    pub postgres_max_connections: Option<usize>,
}

/// What a section adds to the shared keys: its defaults and its own keys
/// that only apply with one backend.
#[derive(Clone)]
pub struct BackendRules<'a> {
    /// The section (`catalog`), for dotted keys in errors.
    pub section: &'a str,
    /// The SQLite file when `sqlite_path` is not set.
    pub default_sqlite_path: PathBuf,
    /// The pool size when `postgres_max_connections` is not set.
    pub default_max_connections: usize,
    /// The longest `postgres_schema` the section accepts (its tables and
    /// channels derive longer names from it).
    pub max_schema_len: usize,
    /// The section's own keys that only apply with SQLite, and whether each
    /// is set.
    pub sqlite_keys: &'a [(&'a str, bool)],
    /// The section's own keys that only apply with PostgreSQL, and whether
    /// each is set.
    pub postgres_keys: &'a [(&'a str, bool)],
    /// The driver's check that `postgres_url` parses (its error is shown as
    /// `does not parse: <error>`).
    pub check_url: &'a dyn Fn(&str) -> Result<(), UrlError>,
}

/// Why the driver could not parse `postgres_url`.
pub type UrlError = Box<dyn std::error::Error + Send + Sync>;

impl std::fmt::Debug for BackendRules<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendRules")
            .field("section", &self.section)
            .field("default_sqlite_path", &self.default_sqlite_path)
            .field("default_max_connections", &self.default_max_connections)
            .field("max_schema_len", &self.max_schema_len)
            .field("sqlite_keys", &self.sqlite_keys)
            .field("postgres_keys", &self.postgres_keys)
            .finish_non_exhaustive()
    }
}

/// The chosen backend with the shared keys checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The embedded database.
    Sqlite {
        /// Its file.
        path: PathBuf,
    },
    /// Shared PostgreSQL.
    Postgres {
        /// Where (its `Debug` hides the password).
        url: SecretUrl,
        /// `postgres_schema` if set (checked with [`check_schema_name`]; the
        /// section supplies its default).
        schema: Option<String>,
        /// Pool size, at least 1.
        max_connections: usize,
    },
}

impl RawBackend {
    /// Check the shared keys under `rules`: an unknown backend, a key of the
    /// other backend, a missing or blank `postgres_url`, a schema name that
    /// cannot be used unquoted and a pool of 0 are errors naming the key.
    pub fn check(&self, rules: &BackendRules<'_>) -> Result<Backend, InvalidKey> {
        let section = rules.section;
        match self.backend.as_deref().unwrap_or("sqlite") {
            "sqlite" => {
                let postgres = "backend = \"postgres\"";
                crate::only_with(
                    section,
                    postgres,
                    &[
                        ("postgres_url", self.postgres_url.is_some()),
                        ("postgres_schema", self.postgres_schema.is_some()),
                        (
                            "postgres_max_connections",
                            self.postgres_max_connections.is_some(),
                        ),
                    ],
                )?;
                crate::only_with(section, postgres, rules.postgres_keys)?;
                Ok(Backend::Sqlite {
                    path: self
                        .sqlite_path
                        .clone()
                        .unwrap_or_else(|| rules.default_sqlite_path.clone()),
                })
            }
            "postgres" => {
                let sqlite = "backend = \"sqlite\"";
                crate::only_with(
                    section,
                    sqlite,
                    &[("sqlite_path", self.sqlite_path.is_some())],
                )?;
                crate::only_with(section, sqlite, rules.sqlite_keys)?;
                let url = self
                    .postgres_url
                    .clone()
                    .filter(|u| !u.trim().is_empty())
                    .ok_or_else(|| {
                        InvalidKey::in_section(
                            section,
                            "postgres_url",
                            "is required with backend = \"postgres\"",
                        )
                    })?;
                (rules.check_url)(&url).map_err(|e| {
                    InvalidKey::in_section(section, "postgres_url", format!("does not parse: {e}"))
                })?;
                if let Some(schema) = &self.postgres_schema {
                    check_schema_name(schema, rules.max_schema_len).map_err(|message| {
                        InvalidKey::in_section(section, "postgres_schema", message)
                    })?;
                }
                Ok(Backend::Postgres {
                    url: SecretUrl::new(url),
                    schema: self.postgres_schema.clone(),
                    max_connections: crate::at_least_one(
                        &format!("{section}.postgres_max_connections"),
                        self.postgres_max_connections,
                        rules.default_max_connections,
                    )?,
                })
            }
            other => Err(InvalidKey::in_section(
                section,
                "backend",
                format!("{other:?} is not \"sqlite\" or \"postgres\""),
            )),
        }
    }
}

/// Run on every PostgreSQL connection the catalog and the session store
/// open. A replica that stops in the middle of a transaction (frozen,
/// swapped out, its host stalled) keeps its connection open and its row
/// locks held; without a limit, another replica's writes to those rows (a
/// session's lease takeover, a catalog update) would wait until the frozen
/// one resumes. The server ends such a session after 10 s idle inside a
/// transaction (our transactions never wait on anything but the server),
/// releasing its locks; the frozen replica finds its connection gone when it
/// resumes.
pub const POSTGRES_SESSION_SETTINGS: &str = "SET idle_in_transaction_session_timeout = '10s'";

/// A PostgreSQL schema name usable unquoted: 1 to `max_len` ASCII letters,
/// digits or `_`, not starting with a digit.
pub fn check_schema_name(schema: &str, max_len: usize) -> Result<(), String> {
    let ok = !schema.is_empty()
        && schema.len() <= max_len
        && schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "postgresql schema name {schema:?} must be 1 to {max_len} ascii letters, digits or _ and not start with a digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A section with one key of its own per backend, as a crate writes it.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawSection {
        #[serde(flatten)]
        shared: RawBackend,
        max_group_commit: Option<usize>,
        tail_poll_interval_seconds: Option<f64>,
    }

    fn check(text: &str) -> Result<Backend, InvalidKey> {
        let raw: RawSection = toml::from_str(text).map_err(|e| InvalidKey::new("toml", e))?;
        raw.shared.check(&BackendRules {
            section: "store",
            default_sqlite_path: PathBuf::from("/data/store.sqlite3"),
            default_max_connections: 8,
            max_schema_len: 40,
            check_url: &|url| {
                if url.starts_with("postgresql://") || url == "u" {
                    Ok(())
                } else {
                    Err(format!("{url:?} is not a postgresql:// url").into())
                }
            },
            sqlite_keys: &[("max_group_commit", raw.max_group_commit.is_some())],
            postgres_keys: &[(
                "tail_poll_interval_seconds",
                raw.tail_poll_interval_seconds.is_some(),
            )],
        })
    }

    fn key_of(text: &str) -> String {
        check(text).unwrap_err().key
    }

    #[test]
    fn defaults_to_sqlite_and_reads_postgres() {
        assert_eq!(
            check("max_group_commit = 3").unwrap(),
            Backend::Sqlite {
                path: PathBuf::from("/data/store.sqlite3")
            }
        );
        assert_eq!(
            check("sqlite_path = \"/x.db\"").unwrap(),
            Backend::Sqlite {
                path: PathBuf::from("/x.db")
            }
        );
        let pg = check(
            "backend = \"postgres\"\npostgres_url = \"postgresql://u:secret@h/db\"\npostgres_schema = \"s\"\ntail_poll_interval_seconds = 1",
        )
        .unwrap();
        assert!(!format!("{pg:?}").contains("secret"), "{pg:?}");
        match pg {
            Backend::Postgres {
                url,
                schema,
                max_connections,
            } => {
                assert_eq!(url.expose(), "postgresql://u:secret@h/db");
                assert_eq!(schema.as_deref(), Some("s"));
                assert_eq!(max_connections, 8);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(key_of("backend = \"mysql\""), "store.backend");
        let e = check("backend = \"mysql\"").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value for `store.backend`: \"mysql\" is not \"sqlite\" or \"postgres\""
        );
        assert_eq!(key_of("backend = \"postgres\""), "store.postgres_url");
        assert_eq!(
            key_of("backend = \"postgres\"\npostgres_url = \" \""),
            "store.postgres_url"
        );
        let e = check("backend = \"postgres\"").unwrap_err();
        assert_eq!(e.message, "is required with backend = \"postgres\"", "{e}");
        assert_eq!(key_of("postgres_url = \"x\""), "store.postgres_url");
        let e = check("backend = \"postgres\"\npostgres_url = \"mysql://h\"").unwrap_err();
        assert_eq!(e.key, "store.postgres_url");
        assert_eq!(
            e.message,
            "does not parse: \"mysql://h\" is not a postgresql:// url"
        );
        assert_eq!(key_of("postgres_schema = \"x\""), "store.postgres_schema");
        assert_eq!(
            key_of("tail_poll_interval_seconds = 1"),
            "store.tail_poll_interval_seconds"
        );
        let e = check("tail_poll_interval_seconds = 1").unwrap_err();
        assert_eq!(e.message, "only applies with backend = \"postgres\"");
        assert_eq!(
            key_of("backend = \"postgres\"\npostgres_url = \"u\"\nsqlite_path = \"/x\""),
            "store.sqlite_path"
        );
        assert_eq!(
            key_of("backend = \"postgres\"\npostgres_url = \"u\"\nmax_group_commit = 1"),
            "store.max_group_commit"
        );
        assert_eq!(
            key_of("backend = \"postgres\"\npostgres_url = \"u\"\npostgres_max_connections = 0"),
            "store.postgres_max_connections"
        );
        for bad in ["bad-name", "9lives", "", &"s".repeat(41)] {
            let e = check(&format!(
                "backend = \"postgres\"\npostgres_url = \"u\"\npostgres_schema = \"{bad}\""
            ))
            .unwrap_err();
            assert_eq!(e.key, "store.postgres_schema", "{bad}");
            assert!(e.message.contains("1 to 40"), "{e}");
        }
        assert!(check_schema_name("airlock_2", 40).is_ok());
        assert!(check_schema_name(&"s".repeat(63), 63).is_ok());
    }

    #[test]
    fn unknown_keys_are_refused_through_the_flattened_keys() {
        let e = toml::from_str::<RawSection>("bakend = \"sqlite\"").unwrap_err();
        assert!(e.to_string().contains("bakend"), "{e}");
        assert!(toml::from_str::<RawBackend>("nope = 1").is_err());
        // numbers keep their types through the flattened keys
        let raw: RawSection =
            toml::from_str("postgres_max_connections = 4\ntail_poll_interval_seconds = 2").unwrap();
        assert_eq!(raw.shared.postgres_max_connections, Some(4));
        assert_eq!(raw.tail_poll_interval_seconds, Some(2.0));
    }
}
