//! `control-plane sessions list|show|tail|interrupt`, through the running
//! control plane's public API (`tail` lives in `super::tail`).

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;
use session_store::EventType;

use super::api::{list_pages, path_segment, ApiArgs, ApiClient, OperatorError};
use super::output::{print_fields, print_json, print_list, text};
use crate::config::Config;

/// `control-plane sessions …`.
#[derive(Debug, Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: SessionsCommand,
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// List sessions (newest first), following the API's pages.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Only sessions with this status (`running`, `idle`, `rescheduling`,
        /// `terminated`); repeat for several.
        #[arg(long)]
        status: Vec<String>,
        /// Only sessions of this agent (`agent_…`).
        #[arg(long)]
        agent: Option<String>,
        /// Only sessions created at or after this time (RFC 3339).
        #[arg(long)]
        created_after: Option<String>,
        /// Only sessions created before this time (RFC 3339).
        #[arg(long)]
        created_before: Option<String>,
        /// Include archived sessions.
        #[arg(long)]
        include_archived: bool,
        /// At most this many sessions (pages are followed until it is reached).
        #[arg(long, default_value_t = 100, conflicts_with = "all",
              value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// Every matching session (follow all pages; no limit).
        #[arg(long)]
        all: bool,
        /// Sessions per API request (1–1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        page_size: u32,
    },
    /// Show one session.
    Show {
        /// Session id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow a session's events live until Ctrl-C or the stream ends.
    Tail {
        /// Session id.
        id: String,
        /// Start after this seq (0: from the beginning; default: only new events).
        #[arg(long)]
        after: Option<u64>,
        /// Print each event's JSON on its own line.
        #[arg(long)]
        json: bool,
        /// If the stream drops, keep trying to resume it (with `Last-Event-ID`)
        /// for this long; 0: end when the stream ends.
        #[arg(long, default_value_t = 60)]
        reconnect_seconds: u64,
    },
    /// Interrupt a session (sends `user.interrupt`).
    Interrupt {
        /// Session id.
        id: String,
    },
}

/// Run a `sessions` command.
pub async fn sessions(args: SessionsArgs, config: &Config) -> Result<(), OperatorError> {
    let api = ApiClient::new(&args.api, config)?;
    match args.command {
        SessionsCommand::List {
            json,
            status,
            agent,
            created_after,
            created_before,
            include_archived,
            limit,
            all,
            page_size,
        } => {
            let mut filters = String::new();
            for s in &status {
                filters.push_str(&format!("&statuses[]={}", path_segment(s)));
            }
            if let Some(a) = &agent {
                filters.push_str(&format!("&agent_id={}", path_segment(a)));
            }
            if let Some(t) = &created_after {
                filters.push_str(&format!("&created_at[gte]={}", path_segment(t)));
            }
            if let Some(t) = &created_before {
                filters.push_str(&format!("&created_at[lt]={}", path_segment(t)));
            }
            if include_archived {
                filters.push_str("&include_archived=true");
            }
            let max = if all { usize::MAX } else { limit as usize };
            let (data, more) = list_pages(&api, "/v1/sessions", &filters, max, page_size).await?;
            if more && !json {
                eprintln!(
                    "showing the first {} sessions; more match (raise --limit or pass --all)",
                    data.len()
                );
            }
            print_list(
                data,
                json,
                &[
                    ("ID", "/id", None),
                    ("STATUS", "/status", None),
                    ("AGENT", "/agent/id", None),
                    ("ENVIRONMENT", "/environment_id", None),
                    ("CREATED", "/created_at", None),
                    ("TITLE", "/title", Some(40)),
                ],
            )
        }
        SessionsCommand::Show { id, json } => {
            let v = api
                .call("GET", &format!("/v1/sessions/{}", path_segment(&id)), None)
                .await?;
            if json {
                return print_json(&v);
            }
            let mut shown = v.clone();
            shown["agent"] = json!(format!(
                "{} (version {})",
                text(&v["agent"]["id"]),
                text(&v["agent"]["version"])
            ));
            print_fields(
                &shown,
                &[
                    ("id", "/id"),
                    ("title", "/title"),
                    ("status", "/status"),
                    ("stop_reason", "/stop_reason/type"),
                    ("agent", "/agent"),
                    ("environment_id", "/environment_id"),
                    ("created_at", "/created_at"),
                    ("updated_at", "/updated_at"),
                    ("archived_at", "/archived_at"),
                    ("metadata", "/metadata"),
                ],
            )
        }
        SessionsCommand::Interrupt { id } => {
            api.call(
                "POST",
                &format!("/v1/sessions/{}/events", path_segment(&id)),
                Some(json!({"events": [{"type": EventType::UserInterrupt}]})),
            )
            .await?;
            println!("interrupt sent to session {id}");
            Ok(())
        }
        SessionsCommand::Tail {
            id,
            after,
            json,
            reconnect_seconds,
        } => {
            super::tail::tail(
                &api,
                &id,
                after,
                json,
                Duration::from_secs(reconnect_seconds),
            )
            .await
        }
    }
}
