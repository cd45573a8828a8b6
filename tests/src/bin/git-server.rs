//! git-server: the real test Git server (`airlock_tests::git_server`:
//! `git http-backend` behind nginx + fcgiwrap, HTTPS with a fresh test CA,
//! basic auth with the vault-bridge's Git username and a random token) as a
//! process, for tests/python. Creates the repository `app` (one seed commit)
//! and prints, one `key=value` per line:
//!
//! - `url=https://localhost:PORT/app.git`
//! - `ca_file=…` (the test CA's certificate, for the bridge's
//!   `[egress] upstream_ca_files`)
//! - `bare=…` (the bare repository on the server, to check a push)
//! - `user=…` (the basic-auth user-id the server requires)
//! - `token=…` (the token the server requires)
//!
//! then `ready`, and serves until SIGTERM/SIGINT or until stdin closes.
//! `--user NAME` makes the server require NAME instead of the bridge's
//! default Git username (`x-access-token`), e.g. `oauth2` as GitLab does.
//!
//! Run: `cargo run -p airlock-tests --bin git-server [-- --user NAME]`

use airlock_tests::fake_model::stdin_closed;
use airlock_tests::git_server::{random_bytes, GitServer, TestCa};
use anyhow::Result;

#[tokio::main]
async fn main() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("airlock-git-server-")
        .tempdir()?;
    let ca = TestCa::new("git-server fixture ca")?;
    let ca_file = dir.path().join("ca.pem");
    ca.write_cert(&ca_file)?;
    let hex: String = random_bytes(12)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let token = format!("canary-git-{hex}");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let user = match args.as_slice() {
        [] => vault_bridge::agent_channel_egress::GIT_TOKEN_USERNAME.to_owned(),
        [flag, name] if flag == "--user" && !name.is_empty() => name.clone(),
        other => anyhow::bail!("usage: git-server [--user NAME] (got {other:?})"),
    };
    let server = GitServer::start(&ca, "localhost", &user, &token)?;
    server.create_random_repo("app", 1, 1024)?;
    println!("url={}", server.localhost_url("app"));
    println!("ca_file={}", ca_file.display());
    println!("bare={}", server.bare_path("app").display());
    println!("user={user}");
    println!("token={token}");
    println!("ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = stdin_closed() => {}
    }
    drop(server);
    Ok(())
}
