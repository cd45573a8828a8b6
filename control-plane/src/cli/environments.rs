//! `control-plane environments list|create|show|archive`, through the
//! running control plane's public API.

use clap::{Args, Subcommand};
use serde_json::json;

use super::api::{list_pages, path_segment, ApiArgs, ApiClient, OperatorError};
use super::output::{print_fields, print_json, print_list, text};
use crate::config::Config;

/// `control-plane environments …`.
#[derive(Debug, Args)]
pub struct EnvironmentsArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: EnvironmentsCommand,
}

#[derive(Debug, Subcommand)]
enum EnvironmentsCommand {
    /// List environments (newest first).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Include archived environments.
        #[arg(long)]
        include_archived: bool,
    },
    /// Create a self-hosted environment (served by enrolled sandbox-agents).
    Create {
        /// Unique name.
        #[arg(long)]
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one environment.
    Show {
        /// Environment id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Archive an environment: it takes no new sessions.
    Archive {
        /// Environment id.
        id: String,
    },
}

/// Run an `environments` command.
pub async fn environments(args: EnvironmentsArgs, config: &Config) -> Result<(), OperatorError> {
    let api = ApiClient::new(&args.api, config)?;
    match args.command {
        EnvironmentsCommand::List {
            json,
            include_archived,
        } => {
            let (all, _) = list_pages(
                &api,
                "/v1/environments",
                &format!("&include_archived={include_archived}"),
                usize::MAX,
                100,
            )
            .await?;
            print_list(
                all,
                json,
                &[
                    ("ID", "/id", None),
                    ("NAME", "/name", None),
                    ("TYPE", "/config/type", None),
                    ("CREATED", "/created_at", None),
                    ("ARCHIVED", "/archived_at", None),
                ],
            )
        }
        EnvironmentsCommand::Create { name, json } => {
            let v = api
                .call(
                    "POST",
                    "/v1/environments",
                    Some(json!({"name": name, "config": {"type": "self_hosted"}})),
                )
                .await?;
            if json {
                return print_json(&v);
            }
            println!(
                "created environment {} ({})",
                text(&v["id"]),
                text(&v["name"])
            );
            Ok(())
        }
        EnvironmentsCommand::Show { id, json } => {
            let v = api
                .call(
                    "GET",
                    &format!("/v1/environments/{}", path_segment(&id)),
                    None,
                )
                .await?;
            if json {
                return print_json(&v);
            }
            print_fields(
                &v,
                &[
                    ("id", "/id"),
                    ("name", "/name"),
                    ("config_type", "/config/type"),
                    ("description", "/description"),
                    ("created_at", "/created_at"),
                    ("updated_at", "/updated_at"),
                    ("archived_at", "/archived_at"),
                ],
            )
        }
        EnvironmentsCommand::Archive { id } => {
            let v = api
                .call(
                    "POST",
                    &format!("/v1/environments/{}/archive", path_segment(&id)),
                    None,
                )
                .await?;
            println!(
                "archived environment {} ({})",
                text(&v["id"]),
                text(&v["name"])
            );
            Ok(())
        }
    }
}
