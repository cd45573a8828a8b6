//! `vault-bridge`: parse arguments, load config, initialise tracing, run.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vault_bridge::backend::{self, file::FileBackend, BackendError};
use vault_bridge::config::{BackendConfig, Config};
use vault_bridge::secret::{Secret, SecretKey, SecretString};
use zeroize::Zeroizing;

/// Exit code for configuration errors, and for a backend that cannot be
/// opened as configured (wrong key, key file mode): restarting cannot help.
const EXIT_CONFIG: u8 = daemon::EXIT_CONFIG;

#[derive(Debug, Parser)]
#[command(name = "vault-bridge", version, about = "Airlock vault-bridge")]
struct Cli {
    #[command(flatten)]
    global: daemon::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the config file and exit.
    CheckConfig,
    /// Create the file backend's key (mode 0600) and an empty store.
    Init,
    /// Run the bridge until SIGTERM or SIGINT.
    Serve,
    /// Manage the secrets the bridge holds (values are never printed).
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// The egress CA (created on first use in the data dir).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Check what this bridge needs (backend reachable and unsealed, socket, upstreams) and say what to fix.
    Doctor(vault_bridge::doctor::DoctorArgs),
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Print the egress CA's certificate (PEM, public): what sandboxes trust.
    Print,
}

#[derive(Debug, Subcommand)]
enum CredentialsCommand {
    /// Set one secret field of a credential, read from a file or stdin.
    Set {
        /// The credential id (`vcrd_…`).
        credential_id: String,
        /// The vault id (`vlt_…`).
        #[arg(long)]
        vault: String,
        /// The secret field.
        #[arg(long, default_value = "token", value_parser = ["token", "access_token", "refresh_token", "client_secret", "secret_value"])]
        field: String,
        /// File holding the value (`-` for stdin); one trailing newline is dropped.
        #[arg(long)]
        from_file: PathBuf,
        /// Explicit KV path (the credential's `airlock.kv_path`), openbao only.
        #[arg(long)]
        kv_path: Option<String>,
    },
    /// Delete a credential's secret (all its fields).
    Delete {
        /// The credential id (`vcrd_…`).
        credential_id: String,
        /// The vault id (`vlt_…`).
        #[arg(long)]
        vault: String,
        /// Explicit KV path, openbao only.
        #[arg(long)]
        kv_path: Option<String>,
    },
    /// List stored credentials: vault id, credential id, field names.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.global.start(Config::load, Config::defaults) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command {
        Command::CheckConfig => {
            let backend = match &config.backend {
                BackendConfig::File(f) => format!("file {}", f.path.display()),
                BackendConfig::Openbao(o) => format!("openbao {}", o.address),
            };
            println!(
                "config ok: data_dir={} backend={backend}",
                config.bridge.data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Command::Init => match &config.backend {
            BackendConfig::File(f) => match FileBackend::init(f) {
                Ok(()) => {
                    println!("initialised {}", f.path.display());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::from(EXIT_CONFIG)
                }
            },
            BackendConfig::Openbao(_) => {
                eprintln!("error: `init` applies to backend.type = \"file\" only");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Serve => serve(config),
        Command::Doctor(args) => vault_bridge::doctor::run(&args, &config),
        Command::Credentials(c) => daemon::run_command(credentials(config, c)),
        Command::Ca(CaCommand::Print) => {
            let dir = vault_bridge::egress::ca_dir(&config.bridge.data_dir);
            match vault_bridge::egress::EgressCa::load_or_create(&dir) {
                Ok(ca) => {
                    print!("{}", ca.cert_pem());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("vault-bridge: egress ca in {}: {error}", dir.display());
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
    }
}

fn serve(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(vault_bridge::serve::run(
        config,
        vault_bridge::serve::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "vault-bridge serve failed");
            eprintln!("error: {error}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Errors of the `credentials` commands.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Key(#[from] vault_bridge::secret::KeyError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("cannot read the secret from {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the secret read from {0} is empty")]
    Empty(String),
    #[error("the secret read from {0} is not UTF-8 text")]
    NotText(String),
}

fn key(vault: &str, credential: &str, kv_path: Option<&str>) -> Result<SecretKey, CliError> {
    let k = SecretKey::new(vault, credential)?;
    Ok(match kv_path {
        Some(p) => k.with_kv_path(p)?,
        None => k,
    })
}

/// Read a secret value from `path` (`-` = stdin), dropping one trailing
/// newline.
fn read_value(path: &Path) -> Result<SecretString, CliError> {
    let shown = if path == Path::new("-") {
        "stdin".to_owned()
    } else {
        path.display().to_string()
    };
    let mut buf = Zeroizing::new(Vec::new());
    let read = if path == Path::new("-") {
        std::io::stdin().lock().read_to_end(&mut buf)
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut buf))
    };
    read.map_err(|source| CliError::Read {
        path: shown.clone(),
        source,
    })?;
    let text = std::str::from_utf8(&buf).map_err(|_| CliError::NotText(shown.clone()))?;
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text);
    if text.is_empty() {
        return Err(CliError::Empty(shown));
    }
    Ok(SecretString::from(text))
}

async fn credentials(config: Config, c: CredentialsCommand) -> Result<(), CliError> {
    match c {
        CredentialsCommand::Set {
            credential_id,
            vault,
            field,
            from_file,
            kv_path,
        } => {
            let key = key(&vault, &credential_id, kv_path.as_deref())?;
            let value = read_value(&from_file)?;
            let backend = backend::open(&config.backend).await?;
            let mut secret = match backend.get(&key).await {
                Ok(s) => s,
                Err(BackendError::NotFound { .. }) => Secret::new(),
                Err(e) => return Err(e.into()),
            };
            secret.insert(&field, value)?;
            backend.put(&key, &secret).await?;
            backend.close().await;
            println!("set {field} of {key}");
        }
        CredentialsCommand::Delete {
            credential_id,
            vault,
            kv_path,
        } => {
            let key = key(&vault, &credential_id, kv_path.as_deref())?;
            let backend = backend::open(&config.backend).await?;
            backend.delete(&key).await?;
            backend.close().await;
            println!("deleted {key}");
        }
        CredentialsCommand::List => {
            let backend = backend::open(&config.backend).await?;
            for (key, fields) in backend.list().await? {
                println!(
                    "{}\t{}\t{}",
                    key.vault_id(),
                    key.credential_id(),
                    fields.join(",")
                );
            }
            backend.close().await;
        }
    }
    Ok(())
}
