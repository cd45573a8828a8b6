//! What `control-plane` and `sandbox-agent` share as programs: the config
//! error type whose every variant names the file or key at fault, reading a
//! TOML file into a daemon's raw config struct, the log set-up behind
//! `--log-format`, the exit code for a bad configuration, and the plumbing
//! of a binary's `main` (load the config named by `--config` through
//! [`DaemonConfig`], `check-config`, run a future on a runtime and turn the
//! outcome into an exit code). Each daemon keeps its own config sections and
//! typed values; only the plumbing is here.
#![forbid(unsafe_code)]

pub mod doctor;
pub mod ops;
pub mod telemetry;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit code for configuration errors (as sysexits' EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// A configuration error. Each variant names the key or path at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said (it names the key and line).
        message: String,
    },
    /// A key has a value that parses but is not acceptable.
    #[error("invalid value for `{key}`: {message}")]
    Invalid {
        /// Dotted key path, e.g. `tunnel.listen`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    /// Shorthand for [`ConfigError::Invalid`].
    pub fn invalid(key: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.to_string(),
        }
    }
}

impl From<settings::InvalidKey> for ConfigError {
    fn from(e: settings::InvalidKey) -> Self {
        Self::Invalid {
            key: e.key,
            message: e.message,
        }
    }
}

/// Read `path` and parse it as the raw (serde) config `R`.
pub fn read_toml<R: serde::de::DeserializeOwned>(path: &Path) -> Result<R, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_toml(&text, path)
}

/// Parse `text` as the raw config `R`; `origin` only names it in errors.
pub fn parse_toml<R: serde::de::DeserializeOwned>(
    text: &str,
    origin: &Path,
) -> Result<R, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: origin.to_owned(),
        message: e.to_string(),
    })
}

/// A daemon's validated config: built from its raw serde struct (which
/// denies unknown keys; its `Default` is "no file given").
pub trait DaemonConfig: Sized {
    /// The file as written, before validation.
    type Raw: serde::de::DeserializeOwned + Default;
    /// Convert raw values into typed ones, naming the key on failure.
    fn from_raw(raw: Self::Raw) -> Result<Self, ConfigError>;
    /// The data directory (what `check-config` reports).
    fn data_dir(&self) -> &Path;
}

/// Read and validate the config file at `path`.
pub fn load_config<C: DaemonConfig>(path: &Path) -> Result<C, ConfigError> {
    C::from_raw(read_toml(path)?)
}

/// Validate config text; `origin` only names it in errors.
pub fn parse_config<C: DaemonConfig>(text: &str, origin: &Path) -> Result<C, ConfigError> {
    C::from_raw(parse_toml(text, origin)?)
}

/// `check-config` once the config loaded: say so (with the data dir) and exit 0.
pub fn config_ok<C: DaemonConfig>(config: &C) -> ExitCode {
    println!("config ok: data_dir={}", config.data_dir().display());
    ExitCode::SUCCESS
}

/// The flags every subcommand of both binaries takes
/// (`#[command(flatten)]` into the binary's parser).
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Config file (TOML).
    #[arg(long, short, global = true, env = "AIRLOCK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "AIRLOCK_LOG_FORMAT"
    )]
    pub log_format: telemetry::LogFormat,
}

impl GlobalArgs {
    /// [`start`] with these flags.
    pub fn start<C>(
        &self,
        load: impl FnOnce(&Path) -> Result<C, ConfigError>,
        defaults: impl FnOnce() -> Result<C, ConfigError>,
    ) -> Result<C, ExitCode> {
        start(self.log_format, self.config.as_deref(), load, defaults)
    }

    /// [`start`] for a [`DaemonConfig`]: the file named by `--config`, or
    /// the defaults when none is named.
    pub fn load<C: DaemonConfig>(&self) -> Result<C, ExitCode> {
        self.start(load_config::<C>, || C::from_raw(C::Raw::default()))
    }
}

/// Run a daemon's future to its exit code on `runtime` (built by the caller
/// for its needs); a runtime that could not be built is printed as
/// `error: cannot start runtime: ...` and exits 1.
pub fn block_on(
    runtime: std::io::Result<tokio::runtime::Runtime>,
    fut: impl std::future::Future<Output = ExitCode>,
) -> ExitCode {
    match runtime {
        Ok(rt) => rt.block_on(fut),
        Err(error) => {
            eprintln!("error: cannot start runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Run a one-shot command's future on a small single-threaded runtime; an
/// error is printed as `error: ...` and exits 1.
pub fn run_command<E: std::fmt::Display>(
    fut: impl std::future::Future<Output = Result<(), E>>,
) -> ExitCode {
    block_on(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        async { report(fut.await) },
    )
}

/// A command's result as its exit code: an error is printed as
/// `error: ...` and exits 1.
pub fn report<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A daemon's start: install logging in `format`, then load the config from
/// `path` with `load`, or build the defaults with `defaults` when no file is
/// named. A bad config is printed as `error: ...` and becomes
/// [`EXIT_CONFIG`].
pub fn start<C>(
    format: telemetry::LogFormat,
    path: Option<&Path>,
    load: impl FnOnce(&Path) -> Result<C, ConfigError>,
    defaults: impl FnOnce() -> Result<C, ConfigError>,
) -> Result<C, ExitCode> {
    telemetry::init(format);
    match path.map_or_else(defaults, load) {
        Ok(c) => Ok(c),
        Err(error) => {
            eprintln!("error: {error}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        listen: Option<String>,
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let origin = Path::new("/etc/airlock/x.toml");
        let e = parse_toml::<Raw>("listn = 1\n", origin).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("/etc/airlock/x.toml"), "{text}");
        assert!(text.contains("listn"), "{text}");
        let e = read_toml::<Raw>(Path::new("/nonexistent/airlock.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/airlock.toml"));
        assert_eq!(
            ConfigError::invalid("tunnel.listen", "no port").to_string(),
            "invalid value for `tunnel.listen`: no port"
        );
    }

    #[derive(Debug)]
    struct Typed {
        data_dir: PathBuf,
    }

    impl DaemonConfig for Typed {
        type Raw = Raw;
        fn from_raw(raw: Raw) -> Result<Self, ConfigError> {
            let listen = raw.listen.unwrap_or_else(|| "default".to_owned());
            if listen.is_empty() {
                return Err(ConfigError::invalid("listen", "empty"));
            }
            Ok(Self {
                data_dir: PathBuf::from(listen),
            })
        }
        fn data_dir(&self) -> &Path {
            &self.data_dir
        }
    }

    #[test]
    fn daemon_configs_load_parse_and_default() {
        let origin = Path::new("x.toml");
        let c: Typed = parse_config("listen = \"/srv\"\n", origin).unwrap();
        assert_eq!(c.data_dir(), Path::new("/srv"));
        let e = parse_config::<Typed>("listen = \"\"\n", origin).unwrap_err();
        assert_eq!(e.to_string(), "invalid value for `listen`: empty");
        assert!(parse_config::<Typed>("listn = 1\n", origin).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.toml");
        std::fs::write(&path, "listen = \"/var/x\"\n").unwrap();
        let c: Typed = load_config(&path).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/x"));
        let args = GlobalArgs {
            config: None,
            log_format: telemetry::LogFormat::Text,
        };
        assert_eq!(
            args.load::<Typed>().unwrap().data_dir,
            PathBuf::from("default")
        );
        let args = GlobalArgs {
            config: Some(dir.path().join("missing.toml")),
            log_format: telemetry::LogFormat::Text,
        };
        assert_eq!(
            args.load::<Typed>().unwrap_err(),
            ExitCode::from(EXIT_CONFIG)
        );
    }

    #[test]
    fn start_maps_a_bad_config_to_exit_config() {
        let r: Result<(), ExitCode> = start(
            telemetry::LogFormat::Text,
            Some(Path::new("/nonexistent/airlock.toml")),
            |p| read_toml::<Raw>(p).map(|_| ()),
            || Ok(()),
        );
        assert_eq!(r.unwrap_err(), ExitCode::from(EXIT_CONFIG));
        let r: Result<u8, ExitCode> = start(telemetry::LogFormat::Text, None, |_| Ok(1), || Ok(2));
        assert_eq!(r.unwrap(), 2);
    }
}
