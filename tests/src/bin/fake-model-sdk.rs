//! fake-model-sdk: the scripted fake Messages server (`airlock_tests::fake_model`)
//! as a process, with the scenarios of the Python SDK acceptance tests
//! (tests/python). The reply is chosen from the first user message of the
//! conversation, so one server serves every test and a replayed request
//! gets the same answer:
//!
//! - contains `write` and `read back`: `write` notes.txt, then `read` it,
//!   then a text quoting what was read;
//! - contains `lookup`: the custom tool `lookup {"word": "airlock"}`, then a
//!   text quoting the result;
//! - contains `bash`: `bash {"command": "echo hi"}`, then a text quoting the
//!   result (or the denial);
//! - contains `steps N`: N `write` calls, then `done after N tool calls`;
//! - anything else: `ok`.
//!
//! Prints `base_url=http://127.0.0.1:PORT` on stdout, serves until
//! SIGTERM/SIGINT or until stdin closes (a test that dies leaves nothing).
//!
//! Run: `cargo run -p airlock-tests --bin fake-model-sdk [-- --latency-ms N]`

use std::time::Duration;

use airlock_tests::fake_model::{serve_until_stopped, FakeModel, Reply, RequestCtx, Turn};
use anyhow::Result;
use serde_json::json;

fn reply(req: &RequestCtx) -> Reply {
    let prompt = req.first_user_text();
    let k = req.tool_uses_so_far();
    if prompt.contains("write") && prompt.contains("read back") {
        return match k {
            0 => Turn::new()
                .text("Writing the file.")
                .tool_use(
                    "toolu_write",
                    "write",
                    json!({"file_path": "notes.txt", "content": "hello from airlock"}),
                )
                .into(),
            1 => Turn::new()
                .text("Reading it back.")
                .tool_use("toolu_read", "read", json!({"file_path": "notes.txt"}))
                .into(),
            _ => Reply::text(format!("The file says: {}", req.last_result_text())),
        };
    }
    // One call of the tool the prompt names, then a text quoting its result.
    let one_call = [
        ("lookup", "toolu_lookup", json!({"word": "airlock"})),
        ("bash", "toolu_bash", json!({"command": "echo hi"})),
    ];
    for (tool, id, input) in one_call {
        if prompt.contains(tool) {
            return match k {
                0 => Turn::new().tool_use(id, tool, input).into(),
                _ => Reply::text(format!("{tool} said: {}", req.last_result_text())),
            };
        }
    }
    let steps = prompt
        .split_whitespace()
        .skip_while(|w| *w != "steps")
        .nth(1)
        .and_then(|n| n.parse::<usize>().ok());
    if let Some(n) = steps {
        return if k < n {
            Turn::new()
                .text(format!("step {k}"))
                .tool_use(
                    format!("toolu_{k:04}"),
                    "write",
                    json!({"file_path": format!("f{k}.txt"), "content": "x"}),
                )
                .into()
        } else {
            Reply::text(format!("done after {n} tool calls"))
        };
    }
    Reply::text("ok")
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let latency = args
        .iter()
        .position(|a| a == "--latency-ms")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_millis);
    let fake = FakeModel::builder().latency(latency).start(reply).await?;
    serve_until_stopped(&fake, "fake-model-sdk").await?;
    // The stdin reader is a blocking thread the runtime would wait for.
    std::process::exit(0)
}
