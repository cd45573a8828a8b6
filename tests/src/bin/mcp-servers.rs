//! mcp-servers: the real MCP test servers of `tests/mcp/servers.py`
//! (`airlock_tests::mcp`, official `mcp` Python SDK, Streamable HTTP over
//! HTTPS with a fresh test CA) as a process, for tests/python: `tickets`
//! (static bearer token) and the OAuth authorization server with the
//! `oauth-notes` MCP server (access tokens living `MCP_ACCESS_TTL` seconds,
//! default 3; client `client-basic`). Prints, one `key=value` per line:
//!
//! - `ca_file=…` (the test CA, for the bridge's `[egress] upstream_ca_files`)
//! - `tickets_url=…`, `tickets_token=…`
//! - `oauth_url=…`, `oauth_token_endpoint=…`, `oauth_client_id=…`,
//!   `oauth_client_secret=…`
//! - `secrets=[…]` (JSON: every secret value of both servers, for canaries)
//!
//! then `ready`. Then it answers commands, one per stdin line, with one
//! `key=<JSON>` line on stdout:
//!
//! - `grant` → `grant={access_token, refresh_token, expires_in, scope}`: a
//!   fresh consent of `client-basic`;
//! - `calls` → `calls={"tickets": [..], "oauth": [..]}`: every `tools/call`
//!   each server received (`{tool, arguments, rpc_id}`), in order;
//! - `stats` → `stats={..}`: the OAuth server's `/stats` (refresh counts).
//!
//! A failed command answers `error=<JSON string>`. Serves until
//! SIGTERM/SIGINT or until stdin closes (the servers are killed on exit).
//!
//! Run: `cargo run -p airlock-tests --bin mcp-servers`

use std::io::BufRead;
use std::sync::Arc;

use airlock_tests::git_server::TestCa;
use airlock_tests::mcp::{McpTestServer, OAuthClient};
use anyhow::{Context, Result};
use serde_json::{json, Value};

struct Servers {
    tickets: McpTestServer,
    oauth: McpTestServer,
}

impl Servers {
    fn calls(server: &McpTestServer) -> Result<Value> {
        Ok(server
            .calls()?
            .into_iter()
            .map(|c| json!({"tool": c.tool, "arguments": c.arguments, "rpc_id": c.rpc_id, "path": c.path}))
            .collect())
    }

    fn answer(&self, command: &str) -> Result<(&'static str, Value)> {
        match command {
            "grant" => {
                let t = self.oauth.grant(OAuthClient::Basic, None, None)?;
                Ok((
                    "grant",
                    json!({"access_token": t.access_token, "refresh_token": t.refresh_token,
                        "expires_in": t.expires_in, "scope": t.scope}),
                ))
            }
            "calls" => Ok((
                "calls",
                json!({"tickets": Self::calls(&self.tickets)?, "oauth": Self::calls(&self.oauth)?}),
            )),
            "stats" => Ok(("stats", self.oauth.stats()?)),
            other => anyhow::bail!("unknown command {other:?} (grant, calls, stats)"),
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("airlock-mcp-servers-")
        .tempdir()?;
    let ca = TestCa::new("mcp-servers fixture ca")?;
    let ca_file = dir.path().join("ca.pem");
    ca.write_cert(&ca_file)?;
    let ttl: f64 = match std::env::var("MCP_ACCESS_TTL") {
        Ok(v) => v.parse().context("MCP_ACCESS_TTL is not a number")?,
        Err(_) => 3.0,
    };
    let tickets = McpTestServer::tickets(Some(&ca))?;
    let oauth = McpTestServer::oauth(Some(&ca), ttl)?;
    let client = OAuthClient::Basic;
    let mut secrets = tickets.secrets();
    secrets.extend(oauth.secrets());
    println!("ca_file={}", ca_file.display());
    println!("tickets_url={}", tickets.url());
    println!("tickets_token={}", tickets.token());
    println!("oauth_url={}", oauth.url());
    println!("oauth_token_endpoint={}", oauth.token_endpoint());
    println!("oauth_client_id={}", client.client_id());
    println!(
        "oauth_client_secret={}",
        oauth
            .client_secret(client)
            .context("client-basic has a secret")?
    );
    println!("secrets={}", Value::from(secrets));
    println!("ready");
    let servers = Arc::new(Servers { tickets, oauth });

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            line = rx.recv() => {
                let Some(line) = line else { break };
                let command = line.trim().to_owned();
                if command.is_empty() {
                    continue;
                }
                let s = servers.clone();
                let out = tokio::task::spawn_blocking(move || s.answer(&command)).await?;
                match out {
                    Ok((key, value)) => println!("{key}={value}"),
                    Err(e) => println!("error={}", Value::from(format!("{e:#}"))),
                }
            }
        }
    }
    drop(servers);
    drop(dir);
    Ok(())
}
