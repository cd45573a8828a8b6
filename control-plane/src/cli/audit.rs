//! `control-plane audit checkpoints|events`: the control plane's audit,
//! read directly from the catalog (with or without a running server), and
//! the recording of the CLI's own admin actions (`tokens create|revoke`,
//! `api-keys create|revoke`, an offline `agents revoke`).
//!
//! - `audit checkpoints --agent ID` prints every checkpoint stored for the
//!   agent as JSON lines, in the order received: the file `sandbox-agent
//!   audit verify --checkpoints FILE` reads;
//! - `audit events [filters]` prints API and admin audit events as a table,
//!   or JSON lines with `--json`.

use std::sync::Arc;

use catalog::audit::{AuditEventQuery, CheckpointQuery, Outcome};
use catalog::Catalog;
use clap::{Args, Subcommand};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::Config;

/// Page size used to walk the catalog.
const PAGE: usize = 500;

/// `control-plane audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Every checkpoint the control plane holds for an agent, as JSON lines
    /// (the input of `sandbox-agent audit verify --checkpoints`).
    Checkpoints {
        /// The agent id (`agt_...`).
        #[arg(long)]
        agent: String,
    },
    /// API and admin actions, oldest first.
    Events(EventsArgs),
}

/// Filters of `audit events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this action (`sessions.create`, `agents.revoke`, ...).
    #[arg(long)]
    pub action: Option<String>,
    /// Only events naming this resource id.
    #[arg(long)]
    pub resource_id: Option<String>,
    /// Only requests made with this API key id.
    #[arg(long)]
    pub api_key_id: Option<String>,
    /// Only `ok` or `error`.
    #[arg(long)]
    pub outcome: Option<String>,
    /// At or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// Start after this event id.
    #[arg(long)]
    pub after_id: Option<String>,
    /// Print at most this many events (default: all).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Newest first.
    #[arg(long)]
    pub newest_first: bool,
    /// JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Why an `audit` command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditCommandError {
    /// A bad argument (names the flag).
    #[error("invalid {flag}: {message}")]
    Usage {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The catalog failed.
    #[error("catalog: {0}")]
    Catalog(#[from] catalog::CatalogError),
}

async fn open(config: &Config) -> Result<Arc<dyn Catalog>, AuditCommandError> {
    Ok(catalog::open_catalog(&config.catalog).await?)
}

fn time_arg(
    flag: &'static str,
    v: Option<&str>,
) -> Result<Option<OffsetDateTime>, AuditCommandError> {
    v.map(|s| {
        OffsetDateTime::parse(s, &Rfc3339).map_err(|e| AuditCommandError::Usage {
            flag,
            message: format!("`{s}` is not RFC 3339: {e}"),
        })
    })
    .transpose()
}

/// Run one `audit` command.
pub async fn run(command: AuditCommand, config: &Config) -> Result<(), AuditCommandError> {
    match command {
        AuditCommand::Checkpoints { agent } => checkpoints(config, &agent).await,
        AuditCommand::Events(args) => events(config, args).await,
    }
}

async fn checkpoints(config: &Config, agent: &str) -> Result<(), AuditCommandError> {
    pki::AgentId::parse(agent).map_err(|e| AuditCommandError::Usage {
        flag: "--agent",
        message: e.to_string(),
    })?;
    let catalog = open(config).await?;
    let mut after = None;
    loop {
        let page = catalog
            .list_checkpoints(
                agent,
                CheckpointQuery {
                    after_id: after,
                    limit: PAGE,
                },
            )
            .await?;
        for c in &page.items {
            println!("{}", c.to_json());
        }
        after = page.items.last().map(|c| c.id.clone());
        if !page.has_more || after.is_none() {
            return Ok(());
        }
    }
}

async fn events(config: &Config, a: EventsArgs) -> Result<(), AuditCommandError> {
    let outcome = a
        .outcome
        .as_deref()
        .map(|o| {
            Outcome::parse(o).ok_or_else(|| AuditCommandError::Usage {
                flag: "--outcome",
                message: format!("`{o}` is not ok or error"),
            })
        })
        .transpose()?;
    let mut query = AuditEventQuery {
        after_id: a.after_id.clone(),
        descending: a.newest_first,
        action: a.action.clone(),
        resource_id: a.resource_id.clone(),
        api_key_id: a.api_key_id.clone(),
        outcome,
        since: time_arg("--since", a.since.as_deref())?,
        until: time_arg("--until", a.until.as_deref())?,
        limit: PAGE,
    };
    let catalog = open(config).await?;
    let mut left = a.limit.unwrap_or(usize::MAX);
    let mut rows: Vec<[String; 7]> = Vec::new();
    while left > 0 {
        query.limit = PAGE.min(left);
        let page = catalog.list_audit_events(query.clone()).await?;
        for r in &page.items {
            if a.json {
                println!("{}", r.to_json());
            } else {
                let e = &r.event;
                let actor = match &e.actor {
                    catalog::audit::Actor::ApiKey(k) => k.clone(),
                    catalog::audit::Actor::Admin { uid: Some(u) } => format!("admin (uid {u})"),
                    catalog::audit::Actor::Admin { uid: None } => "admin".to_owned(),
                };
                rows.push([
                    catalog::audit::rfc3339(e.at),
                    e.action.clone(),
                    actor,
                    e.resource_ids.join(","),
                    format!("{} {}", e.status, e.outcome.as_str()),
                    e.remote_addr.clone().unwrap_or_else(|| "-".to_owned()),
                    e.id.clone(),
                ]);
            }
        }
        left = left.saturating_sub(page.items.len());
        query.after_id = page.items.last().map(|r| r.event.id.clone());
        if !page.has_more || query.after_id.is_none() {
            break;
        }
    }
    if !a.json {
        print!(
            "{}",
            super::table::render(
                &[
                    "AT",
                    "ACTION",
                    "ACTOR",
                    "RESOURCES",
                    "OUTCOME",
                    "REMOTE",
                    "ID"
                ],
                &rows
            )
        );
        if rows.is_empty() {
            println!("(no audit events)");
        }
    }
    Ok(())
}

/// Record an admin action done by this CLI process (actor `admin`, this
/// process's uid). A catalog that cannot be opened or written is reported
/// on stderr as a warning; the command's result is unchanged.
pub async fn record(config: &Config, action: &str, resource_ids: Vec<String>, ok: bool) {
    match catalog::open_catalog(&config.catalog).await {
        Ok(catalog) => {
            crate::audit::record_admin_action(
                catalog.as_ref(),
                crate::audit::own_uid(),
                action,
                resource_ids,
                ok,
            )
            .await
        }
        Err(error) => {
            eprintln!("warning: {action} not recorded in the audit: catalog: {error}");
        }
    }
}
