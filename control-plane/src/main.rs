//! `control-plane`: parse arguments, load config, initialise tracing, run.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use control_plane::config::Config;

#[derive(Debug, Parser)]
#[command(name = "control-plane", version, about = "Airlock control plane")]
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
    /// Run the control plane until SIGINT/SIGTERM, then drain.
    Serve,
    #[command(flatten)]
    Cli(control_plane::cli::Command),
}

fn serve(config: Config) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    daemon::block_on(runtime, async move {
        let grace = config.shutdown_grace;
        let app = match control_plane::app::App::new(config) {
            Ok(app) => app,
            Err(error) => {
                tracing::error!(%error, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        let mut running = match app.start().await {
            Ok(r) => r,
            Err(error) => {
                tracing::error!(%error, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        // Machine-readable start-up facts on stdout (tests and scripts read them).
        println!("ca_fingerprint={}", running.identity().ca_fingerprint());
        println!("enroll_addr={}", running.enroll_addr());
        println!("admin_socket={}", running.admin_socket().display());
        println!("tunnel_addr={}", running.tunnel_addr());
        println!("api_addr={}", running.api_addr());
        if let Some(addr) = running.ops_addr() {
            println!("ops_addr={addr}");
        }
        let failed = tokio::select! {
            _ = control_plane::app::shutdown_signal() => None,
            name = running.service_exited() => Some(name),
        };
        if let Some(name) = failed {
            tracing::error!(
                service = name,
                "service stopped unexpectedly; shutting down"
            );
        }
        let report = running.shutdown(grace).await;
        if report.graceful && failed.is_none() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config: Config = match cli.global.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command {
        Command::CheckConfig => daemon::config_ok(&config),
        Command::Serve => serve(config),
        Command::Cli(command) => control_plane::cli::run(command, &config),
    }
}
