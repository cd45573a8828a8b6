//! `vault-bridge`: parse arguments, load config, initialise tracing, run.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vault_bridge::config::Config;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _config = match cli.global.start(Config::load, || Ok(Config::default())) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command {
        Command::CheckConfig => {
            println!("config ok");
            ExitCode::SUCCESS
        }
    }
}
