//! The operator CLI: every `control-plane` subcommand but `serve` and
//! `check-config`. Each is a client of something the server owns:
//!
//! - `tokens`, `ca`, `agents list --enrolled` and an offline `agents revoke`:
//!   the identity database in the data dir ([`identity`]);
//! - `agents list|revoke`: the admin socket ([`admin_client`], server in
//!   `crate::admin`);
//! - `api-keys`: the catalog ([`api_keys`]);
//! - `audit checkpoints|events`: the catalog ([`audit`]), read directly
//!   (works with or without a running server);
//! - `environments`, `sessions`: the public HTTP API ([`api`],
//!   [`environments`], [`sessions`], [`tail`]).
//!
//! Lists print as fixed-width tables ([`table`]) by default and JSON with
//! `--json`; errors print as `error: ...` with exit status 1.

pub mod admin_client;
pub mod api;
pub mod api_keys;
pub mod audit;
pub mod environments;
pub mod identity;
mod output;
pub mod sessions;
mod spinner;
pub mod table;
mod tail;

use std::process::ExitCode;

use clap::Subcommand;
use daemon::{report, run_command};

use crate::config::Config;

/// The operator subcommands (flattened into the binary's parser).
#[derive(Debug, Subcommand)]
pub enum Command {
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
    Environments(environments::EnvironmentsArgs),
    /// Sessions (list, show, tail events live, interrupt), through the running control plane's API.
    Sessions(sessions::SessionsArgs),
    /// The control plane's audit: agents' signed checkpoints, API and admin actions.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
}

#[derive(Debug, Subcommand)]
pub enum ApiKeysCommand {
    /// Create a key and print it (the only time it is shown).
    Create {
        /// A label for the key.
        #[arg(long)]
        name: String,
        /// `admin` (everything) or `read-only` (GET on the API, no console action).
        #[arg(long, default_value = "admin")]
        role: String,
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
pub enum TokensCommand {
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
pub enum AgentsCommand {
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
pub enum CaCommand {
    /// Print the CA fingerprint agents pin (creates the CA if needed).
    Fingerprint,
}

/// Run one operator command to completion; its exit code.
pub fn run(command: Command, config: &Config) -> ExitCode {
    match command {
        Command::Tokens(TokensCommand::Create {
            environment,
            ttl_seconds,
            enroll_address,
            json,
        }) => run_command(async {
            let warning = identity::environment_warning(config, &environment).await;
            if let Some(w) = warning {
                eprintln!("warning: {w}");
            }
            let created = identity::tokens_create(
                config,
                &environment,
                ttl_seconds,
                enroll_address.as_deref(),
                json,
            )
            .await;
            let mut ids = vec![environment.clone()];
            ids.extend(created.as_ref().ok().cloned());
            audit::record(config, "join_tokens.create", ids, created.is_ok()).await;
            created.map(|_| ())
        }),
        Command::Tokens(TokensCommand::List { all, json }) => {
            run_command(identity::tokens_list(config, all, json))
        }
        Command::Tokens(TokensCommand::Revoke { token_id, json }) => run_command(async {
            let r = identity::tokens_revoke(config, &token_id, json).await;
            audit::record(
                config,
                "join_tokens.revoke",
                vec![token_id.clone()],
                r.is_ok(),
            )
            .await;
            r
        }),
        Command::Agents(AgentsCommand::List { json, enrolled }) => {
            run_command(identity::agents_list(config, json, enrolled))
        }
        Command::Agents(AgentsCommand::Revoke { agent_id }) => {
            run_command(identity::agents_revoke(config, &agent_id))
        }
        Command::Ca(CaCommand::Fingerprint) => report(identity::ca_fingerprint(config)),
        Command::ApiKeys(command) => run_command(async {
            match command {
                ApiKeysCommand::Create { name, role, json } => {
                    let r = api_keys::create(config, &name, &role, json).await;
                    let ids = r.as_ref().ok().cloned().into_iter().collect();
                    audit::record(config, "api_keys.create", ids, r.is_ok()).await;
                    r.map(|_| ())
                }
                ApiKeysCommand::List { json } => api_keys::list(config, json).await,
                ApiKeysCommand::Revoke { key_id } => {
                    let r = api_keys::revoke(config, &key_id).await;
                    audit::record(config, "api_keys.revoke", vec![key_id.clone()], r.is_ok()).await;
                    r
                }
            }
        }),
        Command::Environments(args) => run_command(environments::environments(args, config)),
        Command::Sessions(args) => run_command(sessions::sessions(args, config)),
        Command::Audit(command) => run_command(audit::run(command, config)),
    }
}
