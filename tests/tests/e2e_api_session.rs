//! The whole first slice end to end, as an API client sees it: a real
//! `control-plane serve` (SQLite, harness, gateway, API), a real enrolled
//! `sandbox-agent run`, a real Docker sandbox, the scripted fake model.
//! Create an agent, an environment and a session through the HTTP API with
//! a key from `control-plane api-keys create`, send a `user.message`; the
//! model asks for `write` then `read` of a file; stream over SSE until the
//! session is idle with `end_turn`, then check the log, the model's record
//! and the file in the sandbox. This is what the Python SDK test does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;

use std::time::Duration;

use airlock_tests::deploy::tail;
use airlock_tests::fake_model::{FakeModel, Reply, RequestCtx, Turn};
use e2e_support::{
    check_seqs_and_ids, check_tool_pairs, content_text, results_by_use, runtime_toml, sandbox_file,
    Deployment, SandboxAgent,
};
use serde_json::json;

const CONTENT: &str = "hello from airlock\n";

fn script(req: &RequestCtx) -> Reply {
    match req.tool_uses_so_far() {
        0 => Turn::new()
            .text("Writing the file.")
            .tool_use(
                "toolu_w",
                "write",
                json!({"file_path": "notes.txt", "content": CONTENT}),
            )
            .into(),
        1 => Turn::new()
            .text("Reading it back.")
            .tool_use("toolu_r", "read", json!({"file_path": "notes.txt"}))
            .into(),
        _ => {
            let read: String = req
                .last_tool_results()
                .iter()
                .map(|r| e2e_support::content_text(r))
                .collect();
            Reply::text(format!("The file says: {read}"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_then_read_through_the_api_streams_until_end_turn() {
    let model = FakeModel::builder()
        .latency(Duration::from_millis(20))
        .start(script)
        .await
        .unwrap();
    let d = Deployment::start(runtime_toml(&model.base_url(), 5.0))
        .await
        .unwrap();
    let agent = SandboxAgent::start(&d.cp, &d.environment_id).unwrap();
    let api = &d.api;

    let agent_id = api.create_agent("writer").await.unwrap();
    let session_id = api
        .create_session(&agent_id, &d.environment_id)
        .await
        .unwrap();
    let mut stream = api.stream(&session_id).await.unwrap();
    api.user_message(&session_id, "Write notes.txt and read it back.")
        .await
        .unwrap();

    // Stream until idle with end_turn after the tools ran.
    let mut seen = Vec::new();
    let idle = loop {
        let ev = match stream.next(Duration::from_secs(60)).await {
            Ok(Some(ev)) => ev,
            other => panic!(
                "stream ended or stalled ({other:?}) after {seen:?}\ncontrol plane log:\n{}\nagent log:\n{}",
                tail(&d.cp.log(), 60),
                tail(&agent.agent.log(), 30)
            ),
        };
        if ev.event == "ping" {
            continue;
        }
        assert_eq!(
            ev.event,
            ev.data["type"].as_str().unwrap_or_default(),
            "SSE event name is the type"
        );
        seen.push(ev.event.clone());
        if ev.event == "session.status_idle" && seen.iter().any(|t| t == "agent.tool_result") {
            break ev.data;
        }
    };
    assert_eq!(idle["stop_reason"]["type"], "end_turn", "{idle}");

    // The log: gap-free, unique ids, each tool_use answered once, in order.
    let events = api.events(&session_id).await.unwrap();
    check_seqs_and_ids(&events);
    let uses = check_tool_pairs(&events);
    let names: Vec<&str> = uses.iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["write", "read"]);
    let results = results_by_use(&events);
    let write = &results[uses[0]["id"].as_str().unwrap()];
    let read = &results[uses[1]["id"].as_str().unwrap()];
    assert_eq!(write["is_error"], false, "{write}");
    assert_eq!(read["is_error"], false, "{read}");
    assert!(
        content_text(read).contains(CONTENT.trim()),
        "read returned {read}"
    );
    let last_message = events
        .iter()
        .rev()
        .find(|e| e["type"] == "agent.message")
        .unwrap();
    assert!(
        content_text(last_message).contains(CONTENT.trim()),
        "{last_message}"
    );
    let user = events.iter().find(|e| e["type"] == "user.message").unwrap();
    assert!(
        user["processed_at"].is_string(),
        "the user message was processed: {user}"
    );

    // The model saw exactly this conversation: three requests, the last one
    // carrying both results under the ids the log gave the tool uses.
    let requests = model.requests();
    assert_eq!(requests.len(), 3, "one request per step");
    let last = airlock_tests::fake_model::RequestCtx {
        n: 2,
        body: requests[2].body.clone(),
    };
    assert_eq!(last.tool_uses_so_far(), 2);
    let ids_seen: Vec<String> = last
        .messages()
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter(|b| b["type"] == "tool_use")
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    let ids_logged: Vec<String> = uses
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids_seen, ids_logged,
        "the model's tool_use ids are the log's event ids"
    );
    assert_eq!(requests[0].header("x-api-key"), Some("test-key"));

    // The session and the sandbox agree.
    let session = api
        .get(&format!("/v1/sessions/{session_id}"))
        .await
        .unwrap();
    assert_eq!(session["status"], "idle", "{session}");
    let sandboxes = agent.sandboxes();
    assert_eq!(
        sandboxes.len(),
        1,
        "one sandbox for the session: {sandboxes:?}"
    );
    assert_eq!(
        sandbox_file(&sandboxes[0], "/workspace/notes.txt").unwrap(),
        CONTENT
    );
    let record = agent.record();
    let started: Vec<&str> = record
        .iter()
        .filter(|l| l.t == "start")
        .map(|l| l.id.as_str())
        .collect();
    assert_eq!(
        started, ids_logged,
        "the agent ran each call once, under the log's id"
    );
}
