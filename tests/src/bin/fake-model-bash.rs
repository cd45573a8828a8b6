//! fake-model-bash: the scripted fake Messages server
//! (`airlock_tests::fake_model`) as a process that runs the shell commands
//! the first user message lists, one `bash` tool call per line starting with
//! `$ `, in order, then ends the turn with a text quoting the last result.
//! A prompt without such lines gets `ok`. Used by tests/python whose
//! scenario is a list of commands (test_git_repository.py).
//!
//! Prints `base_url=http://127.0.0.1:PORT` on stdout, serves until
//! SIGTERM/SIGINT or until stdin closes (a test that dies leaves nothing).
//!
//! Run: `cargo run -p airlock-tests --bin fake-model-bash`

use airlock_tests::fake_model::{serve_until_stopped, FakeModel, Reply, RequestCtx, Turn};
use anyhow::Result;
use serde_json::json;

fn reply(req: &RequestCtx) -> Reply {
    let prompt = req.first_user_text();
    let commands: Vec<&str> = prompt
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("$ "))
        .collect();
    let k = req.tool_uses_so_far();
    match commands.get(k) {
        Some(cmd) => Turn::new()
            .text(format!("Running step {}.", k + 1))
            .tool_use(format!("toolu_bash_{k}"), "bash", json!({"command": cmd}))
            .into(),
        None if k == 0 => Reply::text("ok"),
        None => Reply::text(format!("done: {}", req.last_result_text())),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let fake = FakeModel::builder().start(reply).await?;
    serve_until_stopped(&fake, "fake-model-bash").await?;
    Ok(())
}
