//! MCP tools in the harness loop over real parts: the SQLite store, the
//! production model client over loopback to the scripted fake Messages
//! server, and the in-process hands double with scripted MCP servers behind
//! an at-most-once record by `tool_use_id` (as the sandbox-agent keeps).
//! The path to real MCP servers (tunnel, agent, vault-bridge) is tested
//! elsewhere; here: what the harness offers, records and tells the model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;
mod harness_support;

use std::collections::HashSet;
use std::time::Duration;

use airlock_tests::fake_model::{sequence, FakeModel, Reply, RequestCtx, Turn};
use harness::mcp::{hashed_tool_name, is_valid_tool_name};
use harness::{HandsError, McpFailure, McpFailureKind, StopReason, WakeOutcome};
use harness_support::*;
use serde_json::{json, Value};
use session_store::StoredEvent;

/// An agent with the sandbox toolset and the MCP servers `servers` (name,
/// toolset JSON without `type`/`mcp_server_name`).
fn session_body(servers: &[(&str, Value)], extra_tools: Vec<Value>) -> (Value, Value) {
    let mcp_servers: Vec<Value> = servers
        .iter()
        .map(|(name, _)| {
            json!({"type": "url", "name": name, "url": format!("https://{name}.internal/mcp")})
        })
        .collect();
    let mut tools = toolset().as_array().unwrap().clone();
    tools.extend(extra_tools);
    for (name, cfg) in servers {
        let mut t = cfg.clone();
        t["type"] = json!("mcp_toolset");
        t["mcp_server_name"] = json!(name);
        tools.push(t);
    }
    (json!(mcp_servers), json!(tools))
}

fn allow_all() -> Value {
    json!({"default_config": {"enabled": true, "permission_policy": {"type": "always_allow"}}})
}

/// A rig whose session `s` has these MCP servers, served by the double with
/// `search`, `image` and `fail`.
async fn mcp_rig(
    script: impl airlock_tests::fake_model::Script,
    servers: &[(&str, Value)],
    extra_tools: Vec<Value>,
    first: &str,
) -> Rig {
    let (fx, store) = sqlite_store().await;
    let fake = FakeModel::start(script).await.unwrap();
    let hands = RecordingHands::new();
    for (name, _) in servers {
        hands.mcp_server(
            name,
            vec![
                mcp_tool("search", &format!("Search {name}.")),
                mcp_tool("image", "An image."),
                mcp_tool("fail", "Always fails on the server."),
            ],
        );
    }
    let h = harness(store.clone(), &fake, hands.clone(), config("h1"));
    let (mcp_servers, tools) = session_body(servers, extra_tools);
    let mut body = agent_body(tools);
    body["agent"]["mcp_servers"] = mcp_servers;
    body["vault_ids"] = json!(["vlt_1"]);
    store
        .create_session(session_store::NewSession {
            id: "s".into(),
            status: session_store::SessionStatus::Idle,
            body,
            initial_events: vec![user_message(first)],
        })
        .await
        .unwrap();
    (fx, store, fake, hands, h)
}

fn tool_names(req: &Value) -> Vec<String> {
    req["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

fn result_block<'a>(req: &'a Value, tool_use_id: &str) -> &'a Value {
    req["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["content"].as_array().unwrap())
        .find(|b| b["type"] == json!("tool_result") && b["tool_use_id"] == json!(tool_use_id))
        .unwrap_or_else(|| panic!("no tool_result for {tool_use_id} in {req:#}"))
}

fn mcp_result<'a>(events: &'a [StoredEvent], id: &str) -> &'a StoredEvent {
    events
        .iter()
        .find(|e| e.event_type == "agent.mcp_tool_result" && e.body["mcp_tool_use_id"] == json!(id))
        .unwrap_or_else(|| panic!("no agent.mcp_tool_result for {id}"))
}

fn text_of(e: &StoredEvent) -> String {
    e.body["content"][0]["text"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

fn failure(kind: McpFailureKind, message: &str) -> McpFailure {
    McpFailure {
        kind,
        message: message.to_owned(),
        replayed: false,
    }
}

#[tokio::test]
async fn an_mcp_tool_and_a_sandbox_tool_run_in_one_turn() {
    let script = sequence(vec![
        Turn::new()
            .text("looking")
            .tool_use("t1", "bash", json!({"command": "ls"}))
            .tool_use("t2", "mcp__wiki__search", json!({"q": "onboarding"}))
            .tool_use("t3", "mcp__time__image", json!({}))
            .into(),
        Reply::text("found it"),
        Turn::new()
            .tool_use("t4", "mcp__wiki__search", json!({"q": "again"}))
            .into(),
        Reply::text("again"),
    ]);
    let (_fx, store, fake, hands, h) = mcp_rig(
        script,
        &[("wiki", allow_all()), ("time", allow_all())],
        vec![],
        "find the onboarding page",
    )
    .await;
    wake_idle(&h, "s", StopReason::EndTurn).await;
    let events = complete_log(&*store, "s").await;

    // Offered with names, descriptions and schemas.
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    let names = tool_names(&reqs[0].body);
    for n in [
        "bash",
        "mcp__wiki__search",
        "mcp__wiki__image",
        "mcp__wiki__fail",
        "mcp__time__search",
    ] {
        assert!(names.contains(&n.to_owned()), "{n} not offered: {names:?}");
    }
    let search = reqs[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == json!("mcp__wiki__search"))
        .unwrap();
    assert_eq!(search["description"], json!("Search wiki."));
    assert_eq!(
        search["input_schema"]["properties"]["q"]["type"],
        json!("string")
    );

    // The events.
    let uses = of_type(&events, "agent.mcp_tool_use");
    assert_eq!(uses.len(), 2);
    let wiki = uses[0];
    assert_eq!(wiki.body["mcp_server_name"], json!("wiki"));
    assert_eq!(wiki.body["name"], json!("search"));
    assert_eq!(wiki.body["input"], json!({"q": "onboarding"}));
    assert_eq!(wiki.body["evaluated_permission"], json!("allow"));
    assert_eq!(wiki.body["evaluation"], json!({"type": "always_allow"}));
    assert_eq!(uses[1].body["mcp_server_name"], json!("time"));
    let r = mcp_result(&events, &wiki.id);
    assert_eq!(r.body["is_error"], json!(false));
    assert!(
        text_of(r).contains("wiki/search said") && text_of(r).contains("onboarding"),
        "{}",
        text_of(r)
    );
    let img = mcp_result(&events, &uses[1].id);
    assert_eq!(img.body["content"][0]["type"], json!("image"));
    assert_eq!(of_type(&events, "agent.tool_use").len(), 1);
    assert_eq!(of_type(&events, "agent.tool_result").len(), 1);
    assert!(of_type(&events, "session.error").is_empty());

    // The id is the idempotency key all the way down; each ran once.
    let ran = hands.mcp_executions();
    assert_eq!(ran.len(), 2);
    assert_eq!(ran[0].tool_use_id, wiki.id);
    assert_eq!(ran[0].url, "https://wiki.internal/mcp");
    assert_eq!(ran[0].arguments, json!({"q": "onboarding"}));
    assert_eq!(hands.executions().len(), 1);
    for scope in hands.mcp_scopes() {
        assert_eq!(scope.session_id, "s");
        assert_eq!(scope.environment_id.as_deref(), Some("env_test"));
        assert_eq!(scope.vault_ids, vec!["vlt_1".to_owned()]);
    }

    // The model saw normal tool results, and its calls under its names.
    let second = &reqs[1].body;
    let b = result_block(second, &wiki.id);
    assert!(b["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("onboarding"));
    assert_eq!(
        result_block(second, &uses[1].id)["content"][0]["type"],
        json!("image")
    );
    let assistant = second["messages"][1]["content"].as_array().unwrap();
    let called: Vec<_> = assistant
        .iter()
        .filter(|b| b["type"] == json!("tool_use"))
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(called, ["bash", "mcp__wiki__search", "mcp__time__image"]);

    // Lists are cached per session: one listing per server for two requests.
    let listings = hands.mcp_listings();
    assert_eq!(listings.len(), 2, "{listings:?}");

    // A second turn reuses the cache and runs once more.
    queue(
        &*store,
        "s",
        json!({"type": "user.message", "content": [{"type": "text", "text": "again"}]}),
    )
    .await;
    wake_idle(&h, "s", StopReason::EndTurn).await;
    assert_eq!(hands.mcp_listings().len(), 2);
    assert_eq!(hands.mcp_executions().len(), 3);
    complete_log(&*store, "s").await;
}

#[tokio::test]
async fn a_server_that_says_its_tools_changed_is_listed_again_before_the_next_model_call() {
    let script = sequence(vec![
        Turn::new()
            .tool_use("t1", "mcp__wiki__search", json!({"q": "a"}))
            .into(),
        Turn::new()
            .tool_use("t2", "mcp__wiki__grow", json!({}))
            .into(),
        Turn::new()
            .tool_use("t3", "mcp__wiki__extra", json!({}))
            .into(),
        Reply::text("done"),
    ]);
    let (_fx, store, fake, hands, h) =
        mcp_rig(script, &[("wiki", allow_all())], vec![], "grow the wiki").await;
    hands.mcp_server(
        "wiki",
        vec![
            mcp_tool("search", "Search wiki."),
            mcp_tool("grow", "Adds a tool."),
        ],
    );
    wake_idle(&h, "s", StopReason::EndTurn).await;
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 4);
    // Cached after the first listing: a call that changes nothing does not
    // list again; the one whose reply says the list changed does.
    assert!(!tool_names(&reqs[1].body).contains(&"mcp__wiki__extra".to_owned()));
    assert!(
        tool_names(&reqs[2].body).contains(&"mcp__wiki__extra".to_owned()),
        "{:?}",
        tool_names(&reqs[2].body)
    );
    let listings = hands.mcp_listings();
    assert_eq!(
        listings,
        vec!["wiki".to_owned(), "wiki".to_owned()],
        "{listings:?}"
    );
    let events = complete_log(&*store, "s").await;
    let uses = of_type(&events, "agent.mcp_tool_use");
    assert_eq!(uses.len(), 3);
    let extra = mcp_result(&events, &uses[2].id);
    assert_eq!(extra.body["is_error"], json!(false), "{}", text_of(extra));
}

#[tokio::test]
async fn always_ask_waits_for_confirmation_and_a_denial_is_told_to_the_model() {
    let script = sequence(vec![
        Turn::new()
            .tool_use("t1", "mcp__wiki__search", json!({"q": "a"}))
            .tool_use("t2", "mcp__wiki__fail", json!({"q": "b"}))
            .tool_use("t3", "mcp__wiki__image", json!({}))
            .into(),
        Reply::text("done"),
    ]);
    // No default policy: MCP toolsets default to always_ask; one override.
    let cfg =
        json!({"configs": [{"name": "image", "permission_policy": {"type": "always_allow"}}]});
    let (_fx, store, fake, hands, h) = mcp_rig(script, &[("wiki", cfg)], vec![], "go").await;
    let out = h.wake("s").await.unwrap();
    let events = log(&*store, "s").await;
    check_log(&events);
    let uses = of_type(&events, "agent.mcp_tool_use");
    let (search, fail, image) = (uses[0].clone(), uses[1].clone(), uses[2].clone());
    assert_eq!(search.body["evaluated_permission"], json!("ask"));
    assert_eq!(search.body["evaluation"], json!({"type": "always_ask"}));
    assert_eq!(image.body["evaluated_permission"], json!("allow"));
    // The allowed one ran; the session waits on the other two.
    assert_eq!(
        out,
        WakeOutcome::Idle(StopReason::RequiresAction(vec![
            search.id.clone(),
            fail.id.clone()
        ]))
    );
    let ran: Vec<_> = hands
        .mcp_executions()
        .into_iter()
        .map(|e| e.tool_use_id)
        .collect();
    assert_eq!(ran, vec![image.id.clone()]);
    let idle = of_type(&events, "session.status_idle");
    assert_eq!(
        idle.last().unwrap().body["stop_reason"],
        json!({"type": "requires_action", "event_ids": [search.id, fail.id]})
    );
    // A wake without an answer changes nothing.
    assert_eq!(h.wake("s").await.unwrap(), out);

    // Allow search: it runs, still waiting on fail.
    confirm(&*store, "s", &search.id, "allow").await;
    assert_eq!(
        h.wake("s").await.unwrap(),
        WakeOutcome::Idle(StopReason::RequiresAction(vec![fail.id.clone()]))
    );
    assert_eq!(hands.mcp_executions().len(), 2);

    // Deny fail with a message: never runs; the model is told.
    queue(
        &*store,
        "s",
        json!({"type": "user.tool_confirmation", "tool_use_id": fail.id,
        "result": "deny", "deny_message": "not on prod"}),
    )
    .await;
    wake_idle(&h, "s", StopReason::EndTurn).await;
    assert_eq!(hands.mcp_executions().len(), 2, "the denied call never ran");
    let events = complete_log(&*store, "s").await;
    let denied = mcp_result(&events, &fail.id);
    assert_eq!(denied.body["is_error"], json!(true));
    let text = text_of(denied);
    assert!(
        text.contains("denied")
            && text.contains("`fail`")
            && text.contains("`wiki`")
            && text.contains("not on prod"),
        "{text}"
    );
    assert_eq!(
        of_type(&events, "agent.mcp_tool_result").len(),
        3,
        "one result per call"
    );
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    let b = result_block(&reqs[1].body, &fail.id);
    assert_eq!(b["is_error"], json!(true));
    assert!(b["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("not on prod"));
    assert!(
        result_block(&reqs[1].body, &search.id)["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("wiki/search said")
    );
}

#[tokio::test]
async fn an_unreachable_server_is_retried_then_reported_and_the_model_goes_on() {
    // max_attempts = 4 (harness_support::config).
    let script = sequence(vec![
        Reply::tool_use("t1", "mcp__wiki__search", json!({"q": "a"})),
        Reply::tool_use("t2", "mcp__wiki__search", json!({"q": "b"})),
        Reply::text("done"),
    ]);
    let (_fx, store, fake, hands, h) =
        mcp_rig(script, &[("wiki", allow_all())], vec![], "go").await;
    for _ in 0..4 {
        hands.fail_next_mcp_call(failure(
            McpFailureKind::ConnectionFailed,
            "connect to wiki.internal:443: connection refused",
        ));
    }
    // The second call fails twice, then the server is back.
    wake_idle(&h, "s", StopReason::EndTurn).await;
    let events = complete_log(&*store, "s").await;
    let uses = of_type(&events, "agent.mcp_tool_use");
    assert_eq!(uses.len(), 2);
    let errors = of_type(&events, "session.error");
    assert_eq!(errors.len(), 4, "{errors:#?}");
    let statuses: Vec<_> = errors
        .iter()
        .map(|e| e.body["error"]["retry_status"]["type"].clone())
        .collect();
    assert_eq!(
        statuses,
        [
            json!("retrying"),
            json!("retrying"),
            json!("retrying"),
            json!("exhausted")
        ]
    );
    for e in &errors {
        assert_eq!(
            e.body["error"]["type"],
            json!("mcp_connection_failed_error")
        );
        assert_eq!(e.body["error"]["mcp_server_name"], json!("wiki"));
        assert!(e.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("connection refused"));
    }
    let r = mcp_result(&events, &uses[0].id);
    assert_eq!(r.body["is_error"], json!(true));
    assert!(
        text_of(r).contains("could not be reached"),
        "{}",
        text_of(r)
    );
    // The same id was sent each time; nothing reached the server.
    let calls = hands.mcp_calls();
    assert_eq!(
        calls.iter().filter(|c| **c == uses[0].id).count(),
        4,
        "{calls:?}"
    );
    // The model was told and went on; its next call ran once.
    let reqs = fake.requests();
    assert_eq!(
        result_block(&reqs[1].body, &uses[0].id)["is_error"],
        json!(true)
    );
    let ran = hands.mcp_executions();
    assert_eq!(ran.len(), 1);
    assert_eq!(ran[0].tool_use_id, uses[1].id);
    assert_eq!(
        mcp_result(&events, &uses[1].id).body["is_error"],
        json!(false)
    );
    // The failure dropped the cached list: listed again for the next request.
    assert_eq!(hands.mcp_listings().len(), 2);
}

#[tokio::test]
async fn a_failure_the_agent_answers_from_its_record_ends_the_retries() {
    let script = sequence(vec![
        Reply::tool_use("t1", "mcp__wiki__search", json!({"q": "a"})),
        Reply::text("done"),
    ]);
    let (_fx, store, _fake, hands, h) =
        mcp_rig(script, &[("wiki", allow_all())], vec![], "go").await;
    hands.record_mcp_failures();
    hands.fail_next_mcp_call(failure(McpFailureKind::ConnectionFailed, "HTTP 502"));
    wake_idle(&h, "s", StopReason::EndTurn).await;
    let events = complete_log(&*store, "s").await;
    let u = of_type(&events, "agent.mcp_tool_use")[0];
    // Sent twice with one id; the second answer came from the record, so
    // the harness stopped: retrying, then exhausted.
    assert_eq!(hands.mcp_calls(), vec![u.id.clone(), u.id.clone()]);
    let statuses: Vec<_> = of_type(&events, "session.error")
        .iter()
        .map(|e| e.body["error"]["retry_status"]["type"].clone())
        .collect();
    assert_eq!(statuses, [json!("retrying"), json!("exhausted")]);
    assert_eq!(mcp_result(&events, &u.id).body["is_error"], json!(true));
    assert!(hands.mcp_executions().is_empty());
}

#[tokio::test]
async fn each_failure_is_a_clear_tool_error_and_auth_is_also_a_session_error() {
    let cases = [
        (
            McpFailureKind::AuthenticationFailed,
            "401 after refresh",
            "refused the session's credential",
        ),
        (
            McpFailureKind::Timeout,
            "no answer in 30 s",
            "may or may not have run",
        ),
        (
            McpFailureKind::InvalidResponse,
            "not JSON-RPC",
            "invalid response",
        ),
        (McpFailureKind::TooLarge, "52428800 bytes", "too large"),
        (
            McpFailureKind::PolicyDenied,
            "host not allowed",
            "policy does not allow",
        ),
        (
            McpFailureKind::OutcomeUnknown,
            "started before a restart",
            "may or may not have run",
        ),
        (
            McpFailureKind::NoBridge,
            "no [bridge] configured",
            "no vault-bridge",
        ),
        (
            McpFailureKind::Other("quota".into()),
            "over quota",
            "(quota)",
        ),
    ];
    let n = cases.len();
    let script = move |req: &RequestCtx| {
        let k = req.tool_uses_so_far();
        if k < n {
            Reply::tool_use(format!("t{k}"), "mcp__wiki__search", json!({"k": k}))
        } else {
            Reply::text("done")
        }
    };
    let (_fx, store, fake, hands, h) =
        mcp_rig(script, &[("wiki", allow_all())], vec![], "go").await;
    for (kind, message, _) in &cases {
        hands.fail_next_mcp_call(failure(kind.clone(), message));
    }
    wake_idle(&h, "s", StopReason::EndTurn).await;
    let events = complete_log(&*store, "s").await;
    let uses = of_type(&events, "agent.mcp_tool_use");
    assert_eq!(uses.len(), n);
    for (u, (kind, message, says)) in uses.iter().zip(&cases) {
        let r = mcp_result(&events, &u.id);
        assert_eq!(r.body["is_error"], json!(true), "{kind:?}");
        let text = text_of(r);
        assert!(
            text.contains(says) && text.contains(message) && text.contains("`wiki`"),
            "{kind:?}: {text}"
        );
    }
    // Only the authentication failure is a session error, naming the server.
    let errors = of_type(&events, "session.error");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        errors[0].body["error"]["type"],
        json!("mcp_authentication_failed_error")
    );
    assert_eq!(errors[0].body["error"]["mcp_server_name"], json!("wiki"));
    assert!(hands.mcp_executions().is_empty());
    assert_eq!(fake.requests().len(), n + 1);
    // A server-side tool error is an is_error result, not a failure.
    let script = sequence(vec![
        Reply::tool_use("t1", "mcp__wiki__fail", json!({})),
        Reply::text("ok"),
    ]);
    let (_fx, store, _fake, hands, h) =
        mcp_rig(script, &[("wiki", allow_all())], vec![], "go").await;
    wake_idle(&h, "s", StopReason::EndTurn).await;
    let events = complete_log(&*store, "s").await;
    let u = of_type(&events, "agent.mcp_tool_use")[0];
    assert_eq!(mcp_result(&events, &u.id).body["is_error"], json!(true));
    assert!(of_type(&events, "session.error").is_empty());
    assert_eq!(hands.mcp_executions().len(), 1);
}

#[tokio::test]
async fn a_server_that_cannot_be_listed_is_left_out_and_reported() {
    let script = sequence(vec![
        Reply::tool_use("t1", "mcp__wiki__search", json!({"q": "a"})),
        Reply::text("done"),
        Reply::text("second turn"),
    ]);
    let (_fx, store, fake, hands, h) = mcp_rig(
        script,
        &[
            ("wiki", allow_all()),
            ("down", allow_all()),
            ("locked", allow_all()),
        ],
        vec![],
        "go",
    )
    .await;
    for _ in 0..2 {
        hands.fail_next_mcp_list(
            "down",
            failure(McpFailureKind::ConnectionFailed, "connection refused"),
        );
        hands.fail_next_mcp_list(
            "locked",
            failure(McpFailureKind::AuthenticationFailed, "401 Unauthorized"),
        );
    }
    wake_idle(&h, "s", StopReason::EndTurn).await;
    let events = complete_log(&*store, "s").await;
    let reqs = fake.requests();
    for r in &reqs {
        let names = tool_names(&r.body);
        assert!(names.contains(&"mcp__wiki__search".to_owned()));
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("mcp__down") || n.starts_with("mcp__locked")),
            "{names:?}"
        );
    }
    // Reported once per wake, though listed again before each request.
    let errors = of_type(&events, "session.error");
    assert_eq!(errors.len(), 2, "{errors:#?}");
    let by_server = |s: &str| {
        errors
            .iter()
            .find(|e| e.body["error"]["mcp_server_name"] == json!(s))
            .unwrap()
    };
    assert_eq!(
        by_server("down").body["error"]["type"],
        json!("mcp_connection_failed_error")
    );
    assert_eq!(
        by_server("locked").body["error"]["type"],
        json!("mcp_authentication_failed_error")
    );
    assert_eq!(
        by_server("locked").body["error"]["retry_status"]["type"],
        json!("retrying")
    );
    assert!(by_server("locked").body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("401"));
    let listed = |s: &str| hands.mcp_listings().iter().filter(|l| *l == s).count();
    assert_eq!(listed("down"), 2);
    assert_eq!(listed("wiki"), 1, "a good list is cached");
    // The servers are back: the next turn offers their tools.
    queue(
        &*store,
        "s",
        json!({"type": "user.message", "content": [{"type": "text", "text": "again"}]}),
    )
    .await;
    wake_idle(&h, "s", StopReason::EndTurn).await;
    let names = tool_names(&fake.requests().last().unwrap().body);
    assert!(names.contains(&"mcp__down__search".to_owned()), "{names:?}");
    assert!(
        names.contains(&"mcp__locked__search".to_owned()),
        "{names:?}"
    );
    complete_log(&*store, "s").await;
}

#[tokio::test]
async fn hands_that_cannot_reach_an_agent_are_a_session_error_at_listing() {
    let script = sequence(vec![Reply::text("no tools")]);
    let (_fx, store, fake, hands, h) =
        mcp_rig(script, &[("wiki", allow_all())], vec![], "go").await;
    hands.fail_next_mcp_request(HandsError::Refused {
        session_id: "s".into(),
        message: "the session has no environment_id".into(),
    });
    wake_idle(&h, "s", StopReason::EndTurn).await;
    let events = complete_log(&*store, "s").await;
    let errors = of_type(&events, "session.error");
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].body["error"]["type"],
        json!("mcp_connection_failed_error")
    );
    assert!(errors[0].body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no environment_id"));
    assert!(!tool_names(&fake.requests()[0].body)
        .iter()
        .any(|n| n.starts_with("mcp__")));
}

#[tokio::test]
async fn names_are_sanitised_collisions_avoided_and_mapped_back() {
    let custom = json!({"type": "custom", "name": "mcp__wiki__search", "description": "mine",
        "input_schema": {"type": "object"}});
    let hashed_search = hashed_tool_name("wiki", "search");
    let dotted = hashed_tool_name("wiki", "get.page");
    let (h1, h2) = (hashed_search.clone(), dotted.clone());
    let script = move |req: &RequestCtx| {
        if req.tool_uses_so_far() == 0 {
            Turn::new()
                .tool_use("t1", h1.clone(), json!({"q": "x"}))
                .tool_use("t2", h2.clone(), json!({"q": "y"}))
                .into()
        } else {
            Reply::text("done")
        }
    };
    let (_fx, store, fake, hands, h) =
        mcp_rig(script, &[("wiki", allow_all())], vec![custom], "go").await;
    hands.mcp_server(
        "wiki",
        vec![
            mcp_tool("search", "Search."),
            mcp_tool("get.page", "Get a page."),
            mcp_tool("get/page", "Another."),
            mcp_tool("search", "Listed twice."),
        ],
    );
    wake_idle(&h, "s", StopReason::EndTurn).await;
    let reqs = fake.requests();
    let names = tool_names(&reqs[0].body);
    let unique: HashSet<_> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "{names:?}");
    for n in &names {
        assert!(is_valid_tool_name(n), "{n}");
    }
    let mcp: Vec<_> = names
        .iter()
        .filter(|n| n.starts_with("mcp__wiki"))
        .collect();
    // search (hashed: the custom tool has the plain name), get.page, get/page.
    assert_eq!(mcp.len(), 4, "{names:?}");
    assert!(names.contains(&hashed_search));
    assert!(names.contains(&dotted));
    assert!(names.contains(&hashed_tool_name("wiki", "get/page")));
    let events = complete_log(&*store, "s").await;
    let uses = of_type(&events, "agent.mcp_tool_use");
    assert_eq!(uses[0].body["name"], json!("search"));
    assert_eq!(uses[1].body["name"], json!("get.page"));
    let ran: Vec<_> = hands.mcp_executions().into_iter().map(|e| e.tool).collect();
    assert_eq!(ran, ["search", "get.page"]);
    assert!(of_type(&events, "agent.custom_tool_use").is_empty());
    // History carries the names the model used.
    let assistant = reqs[1].body["messages"][1]["content"].as_array().unwrap();
    let called: Vec<_> = assistant
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(called, [hashed_search, dotted]);
}

/// Crash harness A at every crash point of an MCP session (writes and the
/// MCP call), before and after each, then let harness B finish from the
/// log: every call reached the server once, each use has one result, and a
/// call in flight at the crash was re-sent with the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_anywhere_around_an_mcp_call_runs_it_at_most_once() {
    async fn round(n: Option<usize>, after: bool, forget: bool) -> (bool, Vec<&'static str>) {
        let (fx, inner) = sqlite_store().await;
        let (store_a, crasher) = CrashingStore::wrap(inner.clone());
        let hands = RecordingHands::new();
        hands.mcp_server("wiki", vec![mcp_tool("search", "Search.")]);
        *hands.crasher.lock().unwrap() = Some(crasher.clone());
        let script = |req: &RequestCtx| match req.tool_uses_so_far() {
            0 => Turn::new()
                .tool_use("t1", "mcp__wiki__search", json!({"q": "a"}))
                .tool_use("t2", "bash", json!({"command": "ls"}))
                .into(),
            1 | 2 => Reply::tool_use("t3", "mcp__wiki__search", json!({"q": "b"})),
            _ => Reply::text("done"),
        };
        let fake = FakeModel::start(script).await.unwrap();
        let (mcp_servers, tools) = session_body(&[("wiki", allow_all())], vec![]);
        let mut body = agent_body(tools);
        body["agent"]["mcp_servers"] = mcp_servers;
        inner
            .create_session(session_store::NewSession {
                id: "s".into(),
                status: session_store::SessionStatus::Idle,
                body,
                initial_events: vec![user_message("go")],
            })
            .await
            .unwrap();
        if let Some(n) = n {
            crasher.arm(n, after);
        }
        let a = harness(store_a, &fake, hands.clone(), config("harness-a"));
        let task = tokio::spawn(async move { a.wake("s").await });
        let what = format!("crash at {n:?} after={after} forget={forget}");
        crasher.wait_fired_or_done(&task, &what).await;
        let fired = crasher.fired();
        if fired {
            kill(task).await;
        } else {
            assert_eq!(
                task.await.unwrap().unwrap(),
                WakeOutcome::Idle(StopReason::EndTurn),
                "{what}"
            );
        }
        let labels = crasher.labels();
        *hands.crasher.lock().unwrap() = None;
        if forget {
            hands.forget_mcp_record();
        }
        fx.lapse_leases();
        let b = harness(inner.clone(), &fake, hands.clone(), config("harness-b"));
        let out = b.wake("s").await.unwrap();
        // NothingToDo only when A had written the final idle already.
        assert!(
            matches!(
                out,
                WakeOutcome::Idle(StopReason::EndTurn) | WakeOutcome::NothingToDo
            ),
            "{what}: {out:?}"
        );
        let events = complete_log(&*inner, "s").await;
        let idle = of_type(&events, "session.status_idle");
        assert_eq!(
            idle.last().unwrap().body["stop_reason"],
            json!({"type": "end_turn"}),
            "{what}"
        );
        assert!(of_type(&events, "session.error").is_empty(), "{what}");
        let uses = of_type(&events, "agent.mcp_tool_use");
        assert_eq!(uses.len(), 2, "{what}");
        let ran = hands.mcp_executions();
        for u in &uses {
            let runs = ran.iter().filter(|e| e.tool_use_id == u.id).count();
            assert_eq!(runs, 1, "{what}: {} ran {runs} times", u.id);
            let r = mcp_result(&events, &u.id);
            let sent = hands.mcp_calls().iter().filter(|c| **c == u.id).count();
            if forget && sent > 1 {
                // Ran, result lost with the record: said plainly.
                assert_eq!(r.body["is_error"], json!(true), "{what}");
                assert!(text_of(r).contains("may or may not have run"), "{what}");
            } else {
                assert_eq!(r.body["is_error"], json!(false), "{what}: {}", text_of(r));
                assert!(text_of(r).contains("wiki/search said"), "{what}");
            }
        }
        assert_eq!(ran.len(), 2, "{what}: {ran:?}");
        // A crash after the server ran a call and before its result was
        // recorded: the next wake sent the same id again and the agent's
        // record answered.
        if fired && after && n.and_then(|n| labels.get(n)) == Some(&"mcp_call") {
            let resent = uses
                .iter()
                .filter(|u| hands.mcp_calls().iter().filter(|c| **c == u.id).count() == 2)
                .count();
            assert_eq!(resent, 1, "{what}: {:?}", hands.mcp_calls());
        }
        check_ran_once(&of_type(&events, "agent.tool_use"), &hands, &what);
        (fired, labels)
    }
    let (fired, labels) = round(None, false, false).await;
    assert!(!fired);
    assert_eq!(labels.iter().filter(|l| **l == "mcp_call").count(), 2);
    eprintln!("{} crash points: {labels:?}", labels.len());
    for n in 0..labels.len() {
        for after in [false, true] {
            let (fired, _) = round(Some(n), after, false).await;
            assert!(fired, "point {n} was not reached");
        }
    }
    // Right after the first MCP call ran, the agent lost its record.
    let first = labels.iter().position(|l| *l == "mcp_call").unwrap();
    let (fired, _) = round(Some(first), true, true).await;
    assert!(fired);
}

/// A deployment of real processes for the end-to-end tests:
/// `control-plane serve` (API, harness, gateway) with the fake model, an
/// enrolled `sandbox-agent run` with a `vault-bridge serve`, and the real
/// `tickets` MCP server (official `mcp` Python SDK, HTTPS, bearer token)
/// whose token is a static_bearer credential of a vault sent through the
/// API to the bridge.
struct E2e {
    d: e2e_support::Deployment,
    agent: airlock_tests::deploy::Agent,
    bridge: airlock_tests::bridge::Bridge,
    server: airlock_tests::mcp::McpTestServer,
    model: FakeModel,
    vault_id: String,
    _ca: airlock_tests::git_server::TestCa,
}

impl E2e {
    /// `None` (skipped) when the `mcp` Python SDK is not installed.
    async fn start(script: impl airlock_tests::fake_model::Script) -> Option<Self> {
        use airlock_tests::bridge::{Bridge, BridgeOptions};
        use airlock_tests::deploy::{tail, Agent, AgentOptions};
        use airlock_tests::git_server::TestCa;
        use airlock_tests::mcp::McpTestServer;
        use e2e_support::{runtime_toml, Deployment};

        if !airlock_tests::mcp::sdk_installed() {
            eprintln!("skipped: the `mcp` Python SDK is not installed");
            return None;
        }
        let ca = TestCa::new("mcp-e2e-ca").unwrap();
        let server = McpTestServer::tickets(Some(&ca)).unwrap();
        let bridge = Bridge::start(BridgeOptions {
            upstream_ca_files: vec![server.ca_file().unwrap().to_owned()],
            ..Default::default()
        })
        .unwrap();
        let model = FakeModel::start(script).await.unwrap();
        let d = Deployment::start(runtime_toml(&model.base_url(), 5.0))
            .await
            .unwrap();
        let join = d.cp.join_string(&d.environment_id).unwrap();
        let mut agent = Agent::enroll(&d.cp, &join, AgentOptions::default()).unwrap();
        let mut config = std::fs::read_to_string(agent.config_path()).unwrap();
        config.push_str(&bridge.agent_toml());
        std::fs::write(agent.config_path(), config).unwrap();
        agent.run().unwrap();
        d.cp.wait_connected(agent.agent_id(), Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}\n{}", tail(&agent.log(), 30)));
        let vault = d
            .api
            .post(
                "/v1/vaults",
                json!({"display_name": "mcp", "metadata": {"airlock.environment_id": d.environment_id}}),
            )
            .await
            .unwrap();
        let vault_id = vault["id"].as_str().unwrap().to_owned();
        let (status, cred) = d
            .api
            .call(
                "POST",
                &format!("/v1/vaults/{vault_id}/credentials"),
                Some(
                    json!({"display_name": "tickets", "auth": {"type": "static_bearer",
                    "mcp_server_url": server.url(), "token": server.token()}}),
                ),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{cred}");
        Some(Self {
            d,
            agent,
            bridge,
            server,
            model,
            vault_id,
            _ca: ca,
        })
    }

    fn logs(&self) -> String {
        use airlock_tests::deploy::tail;
        format!(
            "\ncontrol plane:\n{}\nagent:\n{}\nbridge:\n{}",
            tail(&self.d.cp.log(), 40),
            tail(&self.agent.log(), 30),
            tail(&self.bridge.log(), 30)
        )
    }

    /// A session of an agent with the tickets server and this toolset
    /// config (`default_config`, `configs`), with the vault; the first
    /// message sent.
    async fn session(&self, toolset: Value, first: &str) -> String {
        let mut t = toolset;
        t["type"] = json!("mcp_toolset");
        t["mcp_server_name"] = json!("tickets");
        let agent_def = self
            .d
            .api
            .post(
                "/v1/agents",
                json!({"name": "support", "model": "claude-sonnet-4-5",
                    "mcp_servers": [{"type": "url", "name": "tickets", "url": self.server.url()}],
                    "tools": [t]}),
            )
            .await
            .unwrap();
        let session = self
            .d
            .api
            .post(
                "/v1/sessions",
                json!({"agent": agent_def["id"], "environment_id": self.d.environment_id,
                    "vault_ids": [self.vault_id]}),
            )
            .await
            .unwrap();
        let id = session["id"].as_str().unwrap().to_owned();
        self.d.api.user_message(&id, first).await.unwrap();
        id
    }

    /// The token is in no event and not in the control plane's log.
    fn check_no_token(&self, events: &[Value]) {
        let all = serde_json::to_string(events).unwrap();
        assert!(!all.contains(self.server.token()));
        assert!(!self.d.cp.log().contains(self.server.token()));
    }
}

fn of_kind<'a>(events: &'a [Value], ty: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == ty).collect()
}

/// End to end over [`E2e`]: the model's MCP call ends the turn with the
/// server's answer; the server saw the call once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_call_goes_through_the_tunnel_agent_and_bridge_to_a_real_server() {
    let script = |req: &RequestCtx| {
        if req.tool_uses_so_far() == 0 {
            Turn::new()
                .text("Searching tickets.")
                .tool_use(
                    "t1",
                    "mcp__tickets__search",
                    json!({"query": "printer on fire", "limit": 2}),
                )
                .into()
        } else {
            Reply::text(format!("Found: {}", req.last_result_text()))
        }
    };
    let Some(e) = E2e::start(script).await else {
        return;
    };
    let session_id = e
        .session(
            json!({"default_config": {"permission_policy": {"type": "always_allow"}}}),
            "Is there a ticket about the printer?",
        )
        .await;
    let events =
        e.d.api
            .wait_end_turn(&session_id, Duration::from_secs(90))
            .await
            .unwrap_or_else(|err| panic!("{err}{}", e.logs()));

    let uses = of_kind(&events, "agent.mcp_tool_use");
    assert_eq!(uses.len(), 1, "{events:#?}");
    assert_eq!(uses[0]["mcp_server_name"], "tickets");
    assert_eq!(uses[0]["name"], "search");
    let results = of_kind(&events, "agent.mcp_tool_result");
    assert_eq!(results.len(), 1, "{events:#?}{}", e.logs());
    let result = results[0];
    assert_eq!(result["mcp_tool_use_id"], uses[0]["id"]);
    assert_eq!(result["is_error"], false, "{result}{}", e.logs());
    let text = result["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("printer on fire") && text.contains("TICKET-1"),
        "{text}"
    );
    assert!(of_kind(&events, "session.error").is_empty(), "{events:#?}");
    // The model had the server's tool with its schema, and saw the answer.
    let reqs = e.model.requests();
    let tool = reqs[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "mcp__tickets__search")
        .unwrap_or_else(|| panic!("not offered: {:#}", reqs[0].body["tools"]));
    assert_eq!(
        tool["input_schema"]["properties"]["query"]["type"],
        "string"
    );
    assert!(reqs
        .last()
        .unwrap()
        .body
        .to_string()
        .contains("printer on fire"));
    let n = e
        .server
        .count_calls("search", &json!({"query": "printer on fire", "limit": 2}))
        .unwrap();
    assert_eq!(n, 1, "{}", e.server.log());
    e.check_no_token(&events);
}

/// End to end: one `always_ask` MCP tool and one allowed, in one turn; the
/// session waits until the confirmation comes through the API, then the
/// image the server returns reaches the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_ask_on_an_mcp_tool_is_confirmed_through_the_api() {
    let script = |req: &RequestCtx| {
        if req.tool_uses_so_far() == 0 {
            Turn::new()
                .tool_use("t1", "mcp__tickets__search", json!({"query": "login"}))
                .tool_use(
                    "t2",
                    "mcp__tickets__screenshot",
                    json!({"ticket": "TICKET-2"}),
                )
                .into()
        } else {
            Reply::text("Seen.")
        }
    };
    let Some(e) = E2e::start(script).await else {
        return;
    };
    let session_id = e
        .session(
            json!({"default_config": {"permission_policy": {"type": "always_allow"}},
                "configs": [{"name": "screenshot", "permission_policy": {"type": "always_ask"}}]}),
            "Show me the login ticket.",
        )
        .await;
    let api = &e.d.api;
    let what = "the session to ask for a confirmation";
    let asked = testkit::try_eventually_async(what, Duration::from_secs(60), || async {
        let events = api.events(&session_id).await.ok()?;
        let idle = events
            .iter()
            .rev()
            .find(|e| e["type"] == "session.status_idle")?;
        (idle["stop_reason"]["type"] == "requires_action").then(|| idle["stop_reason"].clone())
    })
    .await
    .unwrap_or_else(|_| panic!("never asked{}", e.logs()));
    let events = api.events(&session_id).await.unwrap();
    let uses = of_kind(&events, "agent.mcp_tool_use");
    let shot = uses.iter().find(|u| u["name"] == "screenshot").unwrap();
    assert_eq!(shot["evaluated_permission"], "ask");
    assert_eq!(asked["event_ids"], json!([shot["id"]]));
    assert_eq!(
        e.server
            .count_calls("screenshot", &json!({"ticket": "TICKET-2"}))
            .unwrap(),
        0,
        "nothing ran before the confirmation"
    );
    assert_eq!(
        of_kind(&events, "agent.mcp_tool_result").len(),
        1,
        "search ran"
    );

    api.post(
        &format!("/v1/sessions/{session_id}/events"),
        json!({"events": [{"type": "user.tool_confirmation", "tool_use_id": shot["id"], "result": "allow"}]}),
    )
    .await
    .unwrap();
    let events = api
        .wait_end_turn(&session_id, Duration::from_secs(60))
        .await
        .unwrap_or_else(|err| panic!("{err}{}", e.logs()));
    let results = of_kind(&events, "agent.mcp_tool_result");
    assert_eq!(results.len(), 2);
    let img = results
        .iter()
        .find(|r| r["mcp_tool_use_id"] == shot["id"])
        .unwrap();
    assert_eq!(img["is_error"], false, "{img}");
    assert_eq!(img["content"][0]["type"], "image", "{img}");
    assert_eq!(img["content"][0]["source"]["media_type"], "image/png");
    let reqs = e.model.requests();
    assert!(reqs.last().unwrap().body.to_string().contains("image/png"));
    assert_eq!(
        e.server
            .count_calls("screenshot", &json!({"ticket": "TICKET-2"}))
            .unwrap(),
        1
    );
    e.check_no_token(&events);
}

/// End to end: the control plane is SIGKILLed while an MCP call is running
/// on the server; after the restart the session ends its turn, the call
/// has one result, and the server saw it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_killed_mid_call_finishes_and_the_server_saw_the_call_once() {
    let script = |req: &RequestCtx| {
        if req.tool_uses_so_far() == 0 {
            Reply::tool_use("t1", "mcp__tickets__slow", json!({"seconds": 3}))
        } else {
            Reply::text(format!("Result: {}", req.last_result_text()))
        }
    };
    let Some(mut e) = E2e::start(script).await else {
        return;
    };
    let session_id = e
        .session(
            json!({"default_config": {"permission_policy": {"type": "always_allow"}}}),
            "Take your time.",
        )
        .await;
    let args = json!({"seconds": 3});
    testkit::eventually(
        "the server to start the call",
        Duration::from_secs(60),
        || e.server.count_calls("slow", &args).unwrap_or(0) == 1,
    )
    .await;
    e.d.cp.kill9().unwrap();
    e.d.cp.start().unwrap();
    e2e_support::wait_api(&e.d.api, Duration::from_secs(30))
        .await
        .unwrap();
    let events =
        e.d.api
            .wait_end_turn(&session_id, Duration::from_secs(90))
            .await
            .unwrap_or_else(|err| panic!("{err}{}", e.logs()));
    let uses = of_kind(&events, "agent.mcp_tool_use");
    assert_eq!(uses.len(), 1, "{events:#?}");
    let results = of_kind(&events, "agent.mcp_tool_result");
    assert_eq!(results.len(), 1, "{events:#?}");
    let r = results[0];
    let text = r["content"][0]["text"].as_str().unwrap_or("");
    eprintln!("the call's result after the restart: {r}");
    // Either the agent's record had the answer, or it says plainly that
    // the outcome is unknown; never a second run.
    assert!(
        (r["is_error"] == false && text.contains("slept 3"))
            || (r["is_error"] == true && text.contains("may or may not have run")),
        "{r}"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        e.server.count_calls("slow", &args).unwrap(),
        1,
        "{}",
        e.server.log()
    );
    e.check_no_token(&events);
}
