//! fake-model-mcp: the scripted fake Messages server
//! (`airlock_tests::fake_model`) as a process whose turns are written in the
//! first user message: each line starting with `> ` is a JSON array of tool
//! calls `[{"name": "mcp__tickets__search", "input": {..}}, ..]`, made
//! together in one assistant turn (tool_use ids `toolu_mcp_<turn>_<i>`).
//! After the last listed turn it ends with the text `done:` followed by the
//! text of every tool result of the last message, so a test can see what
//! reached the model. A prompt without such lines gets `ok`.
//!
//! Prints `base_url=http://127.0.0.1:PORT` on stdout, serves until
//! SIGTERM/SIGINT or until stdin closes.
//!
//! Run: `cargo run -p airlock-tests --bin fake-model-mcp`

use airlock_tests::fake_model::{
    content_text, serve_until_stopped, FakeModel, Reply, RequestCtx, Turn,
};
use anyhow::Result;
use serde_json::Value;

fn reply(req: &RequestCtx) -> Reply {
    let prompt = req.first_user_text();
    let turns: Vec<Vec<Value>> = prompt
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("> "))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let k = req
        .messages()
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .count();
    match turns.get(k) {
        Some(calls) => {
            let mut turn = Turn::new().text(format!("Turn {}.", k + 1));
            for (i, c) in calls.iter().enumerate() {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("missing");
                let input = c
                    .get("input")
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!({}));
                turn = turn.tool_use(format!("toolu_mcp_{k}_{i}"), name, input);
            }
            turn.into()
        }
        None if turns.is_empty() => Reply::text("ok"),
        None => {
            let results: Vec<String> = req
                .last_tool_results()
                .iter()
                .map(|r| r.get("content").map(content_text).unwrap_or_default())
                .collect();
            Reply::text(format!("done: {}", results.join(" | ")))
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let fake = FakeModel::builder().start(reply).await?;
    serve_until_stopped(&fake, "fake-model-mcp").await?;
    Ok(())
}
