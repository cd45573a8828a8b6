//! `sandbox-agent`: parse arguments, load config, initialise tracing, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sandbox_agent::config::Config;
use sandbox_agent::telemetry::{self, LogFormat};

/// Exit code for configuration errors (EX_CONFIG-style, as sysexits' EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "sandbox-agent", version, about = "Airlock sandbox-agent")]
struct Cli {
    /// Config file (TOML).
    #[arg(long, short, global = true, env = "AIRLOCK_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t, env = "AIRLOCK_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the config file and exit.
    CheckConfig,
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, sandbox_agent::config::ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Config::from_raw(Default::default()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let config = match load_config(cli.config.as_ref()) {
        Ok(c) => c,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command {
        Command::CheckConfig => {
            println!("config ok: data_dir={}", config.data_dir.display());
            ExitCode::SUCCESS
        }
    }
}
