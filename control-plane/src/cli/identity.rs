//! The operator commands behind `control-plane tokens|agents|ca ...`. Each
//! prints its result to stdout. `tokens create|list|revoke`, `ca fingerprint`
//! and `agents list --enrolled` work on the data directory directly (the
//! server need not run), the token commands with the shared catalog too
//! (a token made at one replica enrolls at any); `agents list` and `agents revoke` use the admin socket,
//! and `agents revoke` falls back to recording the revocation in the
//! database when the server is not running.

use std::time::Duration;

use pki::{AgentId, EnvironmentId, IdentityService, JoinString, TokenRecord, TokenState};

use super::admin_client::{self as client, ClientError};
use crate::config::Config;
use crate::enroll::config::{join_host_port, split_host_port};
use crate::gateway::AgentInfo;
use crate::rfc3339;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// A bad argument (names the flag).
    #[error("invalid {flag}: {message}")]
    Usage {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The identity service failed.
    #[error(transparent)]
    Identity(#[from] pki::ServiceError),
    /// The CA could not be loaded.
    #[error(transparent)]
    Ca(#[from] pki::CaError),
    /// The admin socket failed.
    #[error(transparent)]
    Admin(#[from] ClientError),
    /// A join token could not be revoked (unknown id, already used).
    #[error(transparent)]
    TokenRevoke(#[from] pki::RevokeTokenError),
    /// The shared catalog did not take a token change.
    #[error("{0}")]
    SharedTokens(String),
    /// The blocking task that used the identity database panicked or was cancelled.
    #[error("identity database task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn time(unix: i64) -> String {
    rfc3339::display(pki::store::time_of(unix))
}

/// A token as `tokens list --json` prints it: times as RFC 3339, the
/// state as `state` plus `used_by`/`used_at` or `revoked_at`.
fn token_json(t: &TokenRecord) -> serde_json::Value {
    let mut v = serde_json::json!({
        "token_id": t.token_id,
        "environment_id": t.environment_id.as_str(),
        "state": t.state.name(),
        "created_at": time(t.created_at),
        "expires_at": time(t.expires_at),
    });
    match &t.state {
        TokenState::Used { used_by, used_at } => {
            v["used_by"] = used_by.as_str().into();
            v["used_at"] = time(*used_at).into();
        }
        TokenState::Revoked { revoked_at } => {
            v["revoked_at"] = time(*revoked_at).into();
        }
        TokenState::Active | TokenState::Expired => {}
    }
    v
}

/// The STATE cell of `tokens list`.
fn token_state_cell(state: &TokenState) -> String {
    match state {
        TokenState::Used { used_by, .. } => format!("used by {used_by}"),
        TokenState::Revoked { revoked_at } => format!("revoked at {}", time(*revoked_at)),
        other => other.name().to_owned(),
    }
}

/// Render tokens as a fixed-width table (the default output of `tokens list`).
pub fn tokens_table(tokens: &[TokenRecord], all: bool) -> String {
    let headers = ["TOKEN ID", "ENVIRONMENT", "STATE", "CREATED", "EXPIRES"];
    let rows: Vec<[String; 5]> = tokens
        .iter()
        .map(|t| {
            [
                t.token_id.clone(),
                t.environment_id.to_string(),
                token_state_cell(&t.state),
                time(t.created_at),
                time(t.expires_at),
            ]
        })
        .collect();
    let mut out = super::table::render(&headers, &rows);
    if rows.is_empty() {
        out.push_str(if all {
            "(no join tokens)\n"
        } else {
            "(no active join tokens; --all also lists expired, used and revoked ones)\n"
        });
    }
    out
}

/// The shared catalog of `config`, for the token commands (`None`, with a
/// warning on stderr naming `what` is affected, when it cannot be opened).
async fn shared_catalog(
    config: &Config,
    what: &str,
) -> Option<std::sync::Arc<dyn catalog::Catalog>> {
    let open = tokio::time::timeout(
        Duration::from_secs(10),
        catalog::open_catalog(&config.catalog),
    );
    match open.await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            eprintln!("warning: the shared catalog cannot be opened ({e}): {what}");
            None
        }
        Err(_) => {
            eprintln!("warning: the shared catalog did not answer in 10 s: {what}");
            None
        }
    }
}

/// A token as the shared catalog holds it, as listed; `None` for a row
/// that does not parse (said on stderr).
fn from_catalog(t: catalog::SharedJoinToken, now: i64) -> Option<TokenRecord> {
    let token_id = t.token_id.clone();
    crate::gateway::identities::token_from_catalog(t, now)
        .inspect_err(|e| {
            eprintln!("warning: join token {token_id} in the shared catalog skipped: {e}")
        })
        .ok()
}

/// This replica's tokens merged with the shared catalog's (which also
/// holds the other replicas' tokens, and knows when a token was used or
/// revoked anywhere: its state wins), newest first; tokens made in the same
/// second keep this replica's order (the order they were made in).
fn merge_tokens(local: Vec<TokenRecord>, shared: Vec<TokenRecord>) -> Vec<TokenRecord> {
    let mut shared: std::collections::HashMap<String, TokenRecord> = shared
        .into_iter()
        .map(|t| (t.token_id.clone(), t))
        .collect();
    let mut all: Vec<TokenRecord> = local
        .into_iter()
        .map(|t| shared.remove(&t.token_id).unwrap_or(t))
        .collect();
    let mut others: Vec<TokenRecord> = shared.into_values().collect();
    others.sort_by(|a, b| a.token_id.cmp(&b.token_id));
    all.extend(others);
    // Stable: ties keep the order above.
    all.sort_by_key(|t| std::cmp::Reverse(t.created_at));
    all
}

/// `tokens list`: active join tokens (every token with `all`), newest
/// first: this replica's and, through the shared catalog, every other
/// replica's. Never prints a token or its hash.
pub async fn tokens_list(config: &Config, all: bool, json: bool) -> Result<(), CommandError> {
    let settings = config.pki.identity_settings(&config.data_dir);
    let local = tokio::task::spawn_blocking(move || IdentityService::open(settings)?.tokens(true))
        .await??;
    let now = pki::store::unix_seconds(std::time::SystemTime::now());
    let shared = match shared_catalog(config, "listing this replica's tokens only").await {
        Some(c) => match c.list_join_tokens().await {
            Ok(rows) => rows
                .into_iter()
                .filter_map(|t| from_catalog(t, now))
                .collect(),
            Err(e) => {
                eprintln!("warning: the shared catalog's tokens cannot be read ({e}): listing this replica's tokens only");
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    let mut tokens = merge_tokens(local, shared);
    if !all {
        tokens.retain(|t| t.state.is_active());
    }
    if json {
        let list: Vec<serde_json::Value> = tokens.iter().map(token_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
    } else {
        print!("{}", tokens_table(&tokens, all));
    }
    Ok(())
}

/// `tokens revoke <id>`: an unused token stops working at once, at every
/// replica (enrollment claims tokens in the shared catalog, where it is
/// revoked too; this replica's database also refuses it). A token made at
/// another replica is revoked in the catalog. Revoking a revoked token
/// succeeds and says so; a used token is an error naming the agent it
/// enrolled; a revocation the catalog did not take is an error.
pub async fn tokens_revoke(
    config: &Config,
    token_id: &str,
    json: bool,
) -> Result<(), CommandError> {
    let settings = config.pki.identity_settings(&config.data_dir);
    let id = token_id.to_owned();
    let local = tokio::task::spawn_blocking(move || {
        IdentityService::open(settings).map(|identity| identity.revoke_token(&id))
    })
    .await??;
    let local = match local {
        Ok(r) => Some(r),
        Err(pki::RevokeTokenError::Unknown { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let only_here = if local.is_some() {
        "; revoked at this replica only, retry"
    } else {
        ""
    };
    let now = pki::store::unix_seconds(std::time::SystemTime::now());
    let shared = match shared_catalog(config, "the token is not revoked at the other replicas")
        .await
    {
        Some(c) => c
            .revoke_join_token(token_id, now)
            .await
            .map_err(|e| e.to_string()),
        None => Err("the shared catalog cannot be opened".to_owned()),
    }
    .map_err(|e| CommandError::SharedTokens(format!("join token {token_id}: {e}{only_here}")))?;
    let (revoked_at, newly_revoked) = match (shared, &local) {
        (catalog::TokenRevocation::AlreadyUsed { used_by, used_at }, _) => {
            return Err(match AgentId::parse(&used_by) {
                Ok(used_by) => pki::RevokeTokenError::AlreadyUsed {
                    token_id: token_id.to_owned(),
                    used_by,
                    used_at,
                }
                .into(),
                Err(_) => CommandError::SharedTokens(format!(
                    "join token {token_id} was already used (by {used_by})"
                )),
            })
        }
        (catalog::TokenRevocation::Unknown, None) => {
            return Err(pki::RevokeTokenError::Unknown {
                token_id: token_id.to_owned(),
            }
            .into())
        }
        (catalog::TokenRevocation::Revoked { revoked_at }, l) => {
            (l.as_ref().map_or(revoked_at, |l| l.revoked_at), true)
        }
        (catalog::TokenRevocation::AlreadyRevoked { revoked_at }, l) => (
            l.as_ref().map_or(revoked_at, |l| l.revoked_at),
            l.as_ref().is_some_and(|l| l.newly_revoked),
        ),
        // Made here before tokens were shared, and not shared yet: this
        // replica is the only one that knows it.
        (catalog::TokenRevocation::Unknown, Some(l)) => (l.revoked_at, l.newly_revoked),
    };
    if json {
        let v = serde_json::json!({
            "token_id": token_id,
            "revoked_at": time(revoked_at),
            "newly_revoked": newly_revoked,
        });
        println!("{v}");
    } else if newly_revoked {
        println!("join token {token_id} revoked; it can no longer enroll an agent");
    } else {
        println!(
            "join token {token_id} was already revoked (at {}); nothing changed",
            time(revoked_at)
        );
    }
    Ok(())
}

/// `tokens create`: make a join token and print it with a join string;
/// returns the token id (for the audit).
pub async fn tokens_create(
    config: &Config,
    environment: &str,
    ttl_seconds: u64,
    enroll_address: Option<&str>,
    json: bool,
) -> Result<String, CommandError> {
    let environment_id = EnvironmentId::parse(environment).map_err(|e| CommandError::Usage {
        flag: "--environment",
        message: e.to_string(),
    })?;
    let enroll_address = enroll_address
        .unwrap_or(&config.enroll.advertise_address)
        .to_owned();
    let (host, _) = split_host_port(&enroll_address).ok_or_else(|| CommandError::Usage {
        flag: "--enroll-address",
        message: format!("`{enroll_address}` is not host:port"),
    })?;
    let tunnel_address = join_host_port(host, config.tunnel_listen.port());
    let identity = IdentityService::open(config.pki.identity_settings(&config.data_dir))?;
    let created = identity
        .create_token(&environment_id, Duration::from_secs(ttl_seconds))
        .map_err(|e| match e {
            pki::ServiceError::BadTtl => CommandError::Usage {
                flag: "--ttl-seconds",
                message: e.to_string(),
            },
            other => other.into(),
        })?;
    share_token(config, &identity, &created.token_id).await;
    let join = JoinString::new(
        &created.token,
        enroll_address.clone(),
        identity.ca_fingerprint(),
        Some(tunnel_address.clone()),
    )
    .encode();
    if json {
        let v = serde_json::json!({
            "token": created.token.expose(),
            "token_id": created.token_id,
            "environment_id": created.environment_id.as_str(),
            "expires_at": rfc3339::display(created.expires_at),
            "enroll_address": enroll_address,
            "tunnel_address": tunnel_address,
            "ca_fingerprint": identity.ca_fingerprint().to_string(),
            "join_string": join,
        });
        println!("{v}");
    } else {
        println!("token id:        {}", created.token_id);
        println!("environment:     {}", created.environment_id);
        println!("expires at:      {}", rfc3339::display(created.expires_at));
        println!("enroll address:  {enroll_address}");
        println!("tunnel address:  {tunnel_address}");
        println!("ca fingerprint:  {}", identity.ca_fingerprint());
        println!("token:           {}", created.token.expose());
        println!();
        println!("The token is shown once and works once. On the agent host run:");
        println!();
        println!("  sandbox-agent enroll --join '{join}'");
    }
    Ok(created.token_id)
}

/// Record the new token `token_id` in the shared catalog, so that every
/// replica enrolls with it. On failure the token still works here (the
/// replica shares it when its server next starts, or when the token is
/// presented here); said on stderr.
async fn share_token(config: &Config, identity: &IdentityService, token_id: &str) {
    const LOCAL: &str = "the token works at this replica only, until its server next starts";
    let Some(catalog) = shared_catalog(config, LOCAL).await else {
        return;
    };
    let stored = identity
        .tokens_with_hashes()
        .map(|all| all.into_iter().find(|(_, t)| t.token_id == token_id));
    let (hash, token) = match stored {
        Ok(Some(found)) => found,
        Ok(None) => return,
        Err(e) => {
            eprintln!("warning: the token cannot be read back ({e}): {LOCAL}");
            return;
        }
    };
    let row = crate::gateway::identities::token_to_catalog(&token);
    if let Err(e) = catalog.record_join_token(&hash, row).await {
        eprintln!("warning: the token is not in the shared catalog ({e}): {LOCAL}");
    }
}

/// For `tokens create`: why an agent enrolled into `environment` would serve
/// no sessions (it is not in the catalog, or archived), to print as a
/// warning. `None` when it exists or the catalog cannot be read (the token
/// is still made: environments may be created after their agents enroll).
pub async fn environment_warning(config: &Config, environment: &str) -> Option<String> {
    let look = async {
        let catalog = catalog::open_catalog(&config.catalog).await.ok()?;
        match catalog.get_environment(environment).await {
            Ok(e) if e.archived_at.is_some() => Some(format!(
                "environment {environment} is archived: an agent enrolled into it gets no new sessions"
            )),
            Ok(_) => None,
            Err(catalog::CatalogError::NotFound { .. }) => Some(format!(
                "environment {environment} does not exist: an agent enrolled into it gets no sessions \
                 until it is created (see `control-plane environments list`)"
            )),
            Err(_) => None,
        }
    };
    tokio::time::timeout(Duration::from_secs(5), look)
        .await
        .ok()
        .flatten()
}

/// `ca fingerprint`: print the CA fingerprint (creating the CA if needed).
pub fn ca_fingerprint(config: &Config) -> Result<(), CommandError> {
    let ca = pki::CertificateAuthority::load_or_create(&config.pki.ca)?;
    println!("{}", ca.fingerprint());
    Ok(())
}

/// `agents list`: connected agents from the running server, or every
/// enrolled agent from the database with `enrolled`.
pub async fn agents_list(config: &Config, json: bool, enrolled: bool) -> Result<(), CommandError> {
    if enrolled {
        let settings = config.pki.identity_settings(&config.data_dir);
        let agents = tokio::task::spawn_blocking(move || IdentityService::open(settings)?.agents())
            .await??;
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&agents).unwrap_or_default()
            );
        } else {
            println!(
                "{:<26}  {:<20}  {:<20}  {:<20}  STATUS",
                "AGENT", "ENVIRONMENT", "ENROLLED", "CERT EXPIRES"
            );
            for a in &agents {
                println!(
                    "{:<26}  {:<20}  {:<20}  {:<20}  {}",
                    a.agent_id.as_str(),
                    a.environment_id.as_str(),
                    rfc3339::display(pki::store::time_of(a.enrolled_at)),
                    rfc3339::display(pki::store::time_of(a.cert_not_after)),
                    if a.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    }
                );
            }
        }
        return Ok(());
    }
    let agents = client::list_agents(&config.admin.socket).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&agents).unwrap_or_default()
        );
    } else {
        print!("{}", agents_table(&agents));
    }
    Ok(())
}

/// `agents revoke <id>`.
pub async fn agents_revoke(config: &Config, agent_id: &str) -> Result<(), CommandError> {
    let agent_id = AgentId::parse(agent_id).map_err(|e| CommandError::Usage {
        flag: "agent id",
        message: e.to_string(),
    })?;
    match client::revoke(&config.admin.socket, &agent_id).await {
        Ok(r) => {
            println!(
                "agent {} revoked{}; {} live connection(s) closed",
                r.agent_id,
                if r.newly_revoked {
                    ""
                } else {
                    " (already revoked)"
                },
                r.connections_closed
            );
            Ok(())
        }
        Err(ClientError::Unreachable { .. }) => {
            let settings = config.pki.identity_settings(&config.data_dir);
            let id = agent_id.clone();
            let newly =
                tokio::task::spawn_blocking(move || IdentityService::open(settings)?.revoke(&id))
                    .await??;
            super::audit::record(config, "agents.revoke", vec![agent_id.to_string()], true).await;
            println!(
                "agent {agent_id} revoked{} in {}; the control plane is not running, so it takes effect when it starts",
                if newly { "" } else { " (already revoked)" },
                config.data_dir.display()
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Render agents as a fixed-width table (the CLI's default output).
pub fn agents_table(agents: &[AgentInfo]) -> String {
    let headers = [
        "AGENT",
        "ENVIRONMENT",
        "VERSION",
        "TRANSPORT",
        "CONNECTED SINCE",
        "LAST HEARTBEAT",
        "CERT EXPIRES",
        "REMOTE",
        "AUDIT",
        "LAST CHECKPOINT",
    ];
    let rows: Vec<[String; 10]> = agents
        .iter()
        .map(|a| {
            [
                a.agent_id.clone(),
                a.environment_id.clone(),
                a.version.clone(),
                a.transport.to_string(),
                crate::rfc3339::display(a.connected_since),
                crate::rfc3339::display(a.last_heartbeat),
                crate::rfc3339::display(a.cert_not_after),
                a.remote_addr.clone(),
                match &a.audit {
                    None => "-".to_owned(),
                    Some(x) if x.healthy => "healthy".to_owned(),
                    Some(x) => format!("UNHEALTHY: {}", x.problem.as_deref().unwrap_or("?")),
                },
                a.audit
                    .as_ref()
                    .and_then(|x| x.last_checkpoint_seq)
                    .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            ]
        })
        .collect();
    let mut out = super::table::render(&headers, &rows);
    if rows.is_empty() {
        out.push_str("(no agents connected)\n");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_table_and_json_show_each_state() {
        let t = 1_700_000_000;
        let rec = |id: &str, state: TokenState| TokenRecord {
            token_id: id.into(),
            environment_id: EnvironmentId::parse("prod").unwrap(),
            created_at: t,
            expires_at: t + 3600,
            state,
        };
        let agent = AgentId::generate();
        let tokens = [
            rec("tok_a", TokenState::Active),
            rec("tok_e", TokenState::Expired),
            rec(
                "tok_u",
                TokenState::Used {
                    used_by: agent.clone(),
                    used_at: t + 5,
                },
            ),
            rec("tok_r", TokenState::Revoked { revoked_at: t + 9 }),
        ];
        let table = tokens_table(&tokens, true);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("TOKEN ID  ENVIRONMENT  STATE"),
            "{table}"
        );
        assert!(
            lines[1].contains("tok_a") && lines[1].contains(" active "),
            "{table}"
        );
        assert!(lines[2].contains(" expired "), "{table}");
        assert!(lines[3].contains(&format!("used by {agent}")), "{table}");
        assert!(
            lines[4].contains("revoked at 2023-11-14T22:13:29Z"),
            "{table}"
        );
        assert!(
            lines[1].contains("2023-11-14T22:13:20Z  2023-11-14T23:13:20Z"),
            "{table}"
        );
        assert!(tokens_table(&[], false).contains("no active join tokens"));

        let v = token_json(&tokens[2]);
        assert_eq!(v["state"], "used");
        assert_eq!(v["used_by"], agent.as_str());
        assert_eq!(v["used_at"], "2023-11-14T22:13:25Z");
        assert_eq!(v["created_at"], "2023-11-14T22:13:20Z");
        assert!(v.get("revoked_at").is_none());
    }

    #[test]
    fn table_and_json_shapes() {
        use std::time::SystemTime;

        use crate::gateway::Transport;

        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let a = AgentInfo {
            agent_id: "agt_01".into(),
            environment_id: "prod".into(),
            version: "0.1.0".into(),
            transport: Transport::Quic,
            connected_since: t,
            last_heartbeat: t,
            cert_not_after: t,
            remote_addr: "127.0.0.1:5000".into(),
            audit: None,
        };
        let table = agents_table(std::slice::from_ref(&a));
        let mut sick = a.clone();
        sick.audit = Some(crate::gateway::AgentAudit {
            healthy: false,
            problem: Some("disk full".into()),
            last_checkpoint_seq: Some(42),
        });
        let t2 = agents_table(std::slice::from_ref(&sick));
        assert!(
            t2.lines()
                .next()
                .unwrap()
                .ends_with("AUDIT                 LAST CHECKPOINT"),
            "{t2}"
        );
        assert!(t2.contains("UNHEALTHY: disk full  42"), "{t2}");
        let v = serde_json::to_value(&sick).unwrap();
        assert_eq!(v["audit"]["last_checkpoint_seq"], 42);
        assert!(table.starts_with("AGENT"), "{table}");
        assert!(
            table.contains("agt_01") && table.contains("2023-11-14T22:13:20Z"),
            "{table}"
        );
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["transport"], "quic");
        assert_eq!(v["connected_since"], "2023-11-14T22:13:20Z");
        let back: AgentInfo = serde_json::from_value(v).unwrap();
        assert_eq!(back, a);
        assert!(agents_table(&[]).contains("no agents connected"));
    }
}
