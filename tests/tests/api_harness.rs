//! The public API and the harness together (in process, real sockets, real
//! SQLite, the fake Messages server, tools in a memory double): a user
//! message runs a turn with tool calls, `always_ask` waits for a
//! confirmation (allow runs the tool, deny never does), a custom tool goes
//! idle with `requires_action` until its result arrives, and a stream
//! dropped mid-run resumes with no event missing and none twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use airlock_tests::api_stack::{ApiStack, MemoryHands, SseClient, SseEvent};
use airlock_tests::fake_model::{tool_loop, Reply, RequestCtx, Script, Turn};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn user(text: &str) -> Value {
    json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": text}]}]})
}

/// Reads until a `session.status_idle`; returns its stop reason.
async fn until_idle(stream: &mut SseClient, seen: &mut Vec<SseEvent>) -> Value {
    loop {
        let e = stream
            .next_event(WAIT)
            .await
            .unwrap()
            .expect("stream ended before idle");
        seen.push(e.clone());
        if e.event == "session.status_idle" {
            return e.data["stop_reason"].clone();
        }
    }
}

/// A new session with `tools`, its event stream, and `text` sent to it as a
/// user message; returns the session id, the stream and the API's answer.
async fn start_turn(stack: &ApiStack, tools: Value, text: &str) -> (String, SseClient, Value) {
    let sid = stack.session(tools).await.unwrap();
    let stream = stack.stream(&sid, None).await.unwrap();
    let sent = stack.post_events(&sid, user(text)).await.unwrap();
    (sid, stream, sent)
}

/// A script of one tool call (`first`), then a text that `answer` makes of
/// the first block of the call's results.
fn one_call_then(first: Turn, answer: fn(Option<&Value>) -> String) -> impl Script {
    move |req: &RequestCtx| -> Reply {
        if req.tool_uses_so_far() == 0 {
            first.clone().into()
        } else {
            Reply::text(answer(req.last_tool_results().first().copied()))
        }
    }
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

async fn all_events(stack: &ApiStack, sid: &str) -> Vec<Value> {
    stack
        .get(&format!("/v1/sessions/{sid}/events"))
        .await
        .unwrap()["data"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_writes_a_file_reads_it_back_and_ends() {
    let script = |req: &RequestCtx| -> Reply {
        match req.tool_uses_so_far() {
            0 => Turn::new()
                .tool_use(
                    "toolu_w",
                    "write",
                    json!({"file_path": "notes.txt", "content": "hello airlock"}),
                )
                .into(),
            1 => Turn::new()
                .tool_use("toolu_r", "read", json!({"file_path": "notes.txt"}))
                .into(),
            _ => Reply::text("The file says hello airlock."),
        }
    };
    let hands = Arc::new(MemoryHands::default());
    let stack = ApiStack::start(script, hands.clone()).await.unwrap();
    let (sid, mut stream, sent) = start_turn(
        &stack,
        json!([{"type": "agent_toolset_20260401"}]),
        "write and read back",
    )
    .await;
    let mut seen = Vec::new();
    let reason = until_idle(&mut stream, &mut seen).await;
    assert_eq!(reason, json!({"type": "end_turn"}));
    // the user message was echoed queued, then again processed
    let msg_id = &sent["data"][0]["id"];
    let echoes: Vec<_> = seen.iter().filter(|e| &e.data["id"] == msg_id).collect();
    assert_eq!(echoes.len(), 2, "{seen:?}");
    assert!(echoes[0].data["processed_at"].is_null() && echoes[0].id.is_some());
    assert!(echoes[1].data["processed_at"].is_string() && echoes[1].id.is_none());
    // every tool_use has its tool_result, in order; the read saw the write
    let events = all_events(&stack, &sid).await;
    let uses = of_type(&events, "agent.tool_use");
    let results = of_type(&events, "agent.tool_result");
    assert_eq!(uses.len(), 2);
    assert_eq!(results.len(), 2);
    for (u, r) in uses.iter().zip(&results) {
        assert_eq!(r["tool_use_id"], u["id"]);
        assert_eq!(u["evaluated_permission"], json!("allow"));
    }
    assert_eq!(results[1]["content"][0]["text"], json!("hello airlock"));
    let s = stack.get(&format!("/v1/sessions/{sid}")).await.unwrap();
    assert_eq!(s["status"], json!("idle"));
    assert_eq!(hands.executed().len(), 2);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_ask_waits_then_allow_runs_and_deny_never_does() {
    let script = one_call_then(
        Turn::new().tool_use("toolu_b", "bash", json!({"command": "rm -rf build"})),
        |r| {
            format!(
                "tool said: {}",
                r.map(|b| b.to_string()).unwrap_or_default()
            )
        },
    );
    let hands = Arc::new(MemoryHands::default());
    let stack = ApiStack::start(script, hands.clone()).await.unwrap();
    let tools = json!([{"type": "agent_toolset_20260401", "configs": [{"name": "bash", "permission_policy": {"type": "always_ask"}}]}]);
    for (result, runs) in [("allow", true), ("deny", false)] {
        let before = hands.executed().len();
        let (sid, mut stream, _) = start_turn(&stack, tools.clone(), "clean the build").await;
        let mut seen = Vec::new();
        let reason = until_idle(&mut stream, &mut seen).await;
        assert_eq!(reason["type"], json!("requires_action"), "{result}");
        let tool_use = seen
            .iter()
            .find(|e| e.event == "agent.tool_use")
            .expect("tool_use streamed")
            .clone();
        assert_eq!(tool_use.data["evaluated_permission"], json!("ask"));
        assert_eq!(reason["event_ids"], json!([tool_use.data["id"]]));
        assert_eq!(
            hands.executed().len(),
            before,
            "nothing runs before the confirmation"
        );
        let mut confirm = json!({"type": "user.tool_confirmation", "tool_use_id": tool_use.data["id"], "result": result});
        if result == "deny" {
            confirm["deny_message"] = json!("not on a friday");
        }
        stack
            .post_events(&sid, json!({"events": [confirm]}))
            .await
            .unwrap();
        let reason = until_idle(&mut stream, &mut seen).await;
        assert_eq!(reason, json!({"type": "end_turn"}), "{result}");
        let events = all_events(&stack, &sid).await;
        let res = of_type(&events, "agent.tool_result");
        // what the model was told about the call
        let told = stack.fake.requests().last().unwrap().body["messages"].to_string();
        if runs {
            assert_eq!(res.len(), 1, "{events:#?}");
            assert_eq!(res[0]["tool_use_id"], tool_use.data["id"]);
            assert_eq!(res[0]["is_error"], json!(false));
            assert_eq!(hands.executed().len(), before + 1);
            assert!(told.contains("ran: rm -rf build"), "{told}");
        } else {
            assert_eq!(hands.executed().len(), before, "a denied call never runs");
            assert!(res.iter().all(|r| r["is_error"] == json!(true)), "{res:?}");
            assert!(
                told.contains("not on a friday") && told.contains(r#""is_error":true"#),
                "{told}"
            );
        }
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_tool_goes_idle_until_its_result_arrives() {
    let script = one_call_then(
        Turn::new().tool_use("toolu_c", "lookup", json!({"word": "airlock"})),
        |r| {
            let found = r.map(|b| b["content"].to_string());
            format!("looked up: {}", found.unwrap_or_default())
        },
    );
    let stack = ApiStack::start(script, Arc::new(MemoryHands::default()))
        .await
        .unwrap();
    let tools = json!([{"type": "custom", "name": "lookup", "description": "Look a word up.",
        "input_schema": {"type": "object", "properties": {"word": {"type": "string"}}}}]);
    let (sid, mut stream, _) = start_turn(&stack, tools, "what is an airlock?").await;
    let mut seen = Vec::new();
    let reason = until_idle(&mut stream, &mut seen).await;
    let call = seen
        .iter()
        .find(|e| e.event == "agent.custom_tool_use")
        .expect("custom tool use streamed")
        .clone();
    assert_eq!(call.data["input"], json!({"word": "airlock"}));
    assert_eq!(
        reason,
        json!({"type": "requires_action", "event_ids": [call.data["id"]]})
    );
    let s = stack.get(&format!("/v1/sessions/{sid}")).await.unwrap();
    assert_eq!(s["status"], json!("idle"));
    stack
        .post_events(&sid, json!({"events": [{"type": "user.custom_tool_result",
            "custom_tool_use_id": call.data["id"], "content": [{"type": "text", "text": "a chamber between two doors"}]}]}))
        .await
        .unwrap();
    assert_eq!(
        until_idle(&mut stream, &mut seen).await,
        json!({"type": "end_turn"})
    );
    let last = stack.fake.requests().last().unwrap().body.to_string();
    assert!(
        last.contains("a chamber between two doors"),
        "the model got the result: {last}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_mid_run_resumes_with_nothing_missing_or_repeated() {
    let stack = ApiStack::start(
        tool_loop(8, |k| {
            (
                "write".to_owned(),
                json!({"file_path": format!("f{k}"), "content": "x"}),
            )
        }),
        Arc::new(MemoryHands::default()),
    )
    .await
    .unwrap();
    let (sid, mut stream, _) = start_turn(
        &stack,
        json!([{"type": "agent_toolset_20260401"}]),
        "write eight files",
    )
    .await;
    let mut delivered: Vec<u64> = Vec::new();
    let mut drops = 0;
    let mut done = false;
    while !done {
        // read a few events, then drop the connection and resume from the last id
        for _ in 0..5 {
            let e = stream.next_event(WAIT).await.unwrap().expect("stream open");
            if let Some(id) = e.id {
                delivered.push(id);
            }
            if e.event == "session.status_idle" && e.data["stop_reason"]["type"] == "end_turn" {
                done = true;
                break;
            }
        }
        if !done {
            drops += 1;
            drop(stream);
            stream = stack.stream(&sid, delivered.last().copied()).await.unwrap();
        }
    }
    assert!(drops >= 3, "the run spans several reconnections ({drops})");
    let unique: HashSet<_> = delivered.iter().collect();
    assert_eq!(
        unique.len(),
        delivered.len(),
        "no event twice: {delivered:?}"
    );
    let listed: Vec<u64> = all_events(&stack, &sid)
        .await
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(delivered, listed, "every event, in order");
    stack.stop().await;
}
