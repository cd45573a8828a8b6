//! `control-plane`: parse arguments, load config, initialise tracing, run.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use control_plane::config::Config;
use daemon::{report, run_command};

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
    /// Join tokens for enrolling agents.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Enrolled and connected agents.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// The internal certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// API keys of the public API (stored hashed; shown once).
    #[command(subcommand, name = "api-keys")]
    ApiKeys(ApiKeysCommand),
    /// Environments, through the running control plane's API.
    Environments(control_plane::operator::EnvironmentsArgs),
    /// Sessions (list, show, tail events live, interrupt), through the running control plane's API.
    Sessions(control_plane::operator::SessionsArgs),
}

#[derive(Debug, Subcommand)]
enum ApiKeysCommand {
    /// Create a key and print it (the only time it is shown).
    Create {
        /// A label for the key.
        #[arg(long)]
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List keys (ids, names, hints; never the keys).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: it stops authenticating at once.
    Revoke {
        /// The key id (`key_...`).
        key_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Create a single-use join token (works without a running server).
    Create {
        /// Environment the enrolling agent joins.
        #[arg(long)]
        environment: String,
        /// How long the token stays valid.
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: u64,
        /// Enrollment address put in the join string (default: `enroll.advertise_address`).
        #[arg(long)]
        enroll_address: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List join tokens, newest first (ids and states; never the tokens).
    List {
        /// Also list expired, used and revoked tokens (default: active only).
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an unused join token so it can no longer enroll an agent.
    Revoke {
        /// The token id (`tok_...`, as printed by `tokens create` and `tokens list`).
        token_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AgentsCommand {
    /// List connected agents (from the running server).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// List every enrolled agent from the identity database instead.
        #[arg(long)]
        enrolled: bool,
    },
    /// Revoke an agent: refuse its reconnects and close its live connections.
    Revoke {
        /// The agent id (`agt_...`).
        agent_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Print the CA fingerprint agents pin (creates the CA if needed).
    Fingerprint,
}

fn serve(config: Config) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: cannot start runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
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
    let config = match cli
        .global
        .start(Config::load, || Config::from_raw(Default::default()))
    {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command {
        Command::CheckConfig => {
            println!("config ok: data_dir={}", config.data_dir.display());
            ExitCode::SUCCESS
        }
        Command::Serve => serve(config),
        Command::Tokens(TokensCommand::Create {
            environment,
            ttl_seconds,
            enroll_address,
            json,
        }) => run_command(async {
            let warning = control_plane::operator::environment_warning(&config, &environment).await;
            if let Some(w) = warning {
                eprintln!("warning: {w}");
            }
            control_plane::admin::commands::tokens_create(
                &config,
                &environment,
                ttl_seconds,
                enroll_address.as_deref(),
                json,
            )
        }),
        Command::Tokens(TokensCommand::List { all, json }) => report(
            control_plane::admin::commands::tokens_list(&config, all, json),
        ),
        Command::Tokens(TokensCommand::Revoke { token_id, json }) => report(
            control_plane::admin::commands::tokens_revoke(&config, &token_id, json),
        ),
        Command::Agents(AgentsCommand::List { json, enrolled }) => run_command(
            control_plane::admin::commands::agents_list(&config, json, enrolled),
        ),
        Command::Agents(AgentsCommand::Revoke { agent_id }) => run_command(
            control_plane::admin::commands::agents_revoke(&config, &agent_id),
        ),
        Command::Ca(CaCommand::Fingerprint) => {
            report(control_plane::admin::commands::ca_fingerprint(&config))
        }
        Command::ApiKeys(command) => run_command(async {
            match command {
                ApiKeysCommand::Create { name, json } => {
                    control_plane::api_keys::create(&config, &name, json).await
                }
                ApiKeysCommand::List { json } => control_plane::api_keys::list(&config, json).await,
                ApiKeysCommand::Revoke { key_id } => {
                    control_plane::api_keys::revoke(&config, &key_id).await
                }
            }
        }),
        Command::Environments(args) => {
            run_command(control_plane::operator::environments(args, &config))
        }
        Command::Sessions(args) => run_command(control_plane::operator::sessions(args, &config)),
    }
}
