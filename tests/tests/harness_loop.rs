//! The harness loop end to end over real parts: the SQLite store, the
//! production model client over loopback to the scripted fake Messages
//! server, and the in-process hands double.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness_support;

use std::time::{Duration, Instant};

use airlock_tests::fake_model::{sequence, tool_loop, FakeModel, Fault, Reply, RequestCtx, Turn};
use harness::{HandsError, Harness, ProvisioningMode, StopReason, Supervisor, WakeOutcome};
use harness_support::*;
use serde_json::{json, Value};
use session_store::SessionStatus;
use testkit::eventually;

#[tokio::test]
async fn a_multi_tool_session_runs_to_end_turn() {
    let (_fx, store, fake, hands, h) =
        rig(tool_loop(5, bash), "sesn_multi", "run five commands").await;

    let out = h.wake("sesn_multi").await.unwrap();
    assert_eq!(out, WakeOutcome::Idle(StopReason::EndTurn));

    let events = complete_log(&*store, "sesn_multi").await;
    assert_eq!(of_type(&events, "agent.tool_use").len(), 5);
    assert_eq!(of_type(&events, "agent.tool_result").len(), 5);
    assert_eq!(of_type(&events, "span.model_request_start").len(), 6);
    assert_eq!(of_type(&events, "agent.message").len(), 6);
    let t = types(&events);
    assert_eq!(
        &t[..4],
        [
            "user.message",
            "session.status_running",
            "span.model_request_start",
            "agent.message"
        ]
    );
    assert_eq!(t.last(), Some(&"session.status_idle"));
    let idle = of_type(&events, "session.status_idle");
    assert_eq!(idle.len(), 1);
    assert_eq!(idle[0].body["stop_reason"], json!({"type": "end_turn"}));
    for e in of_type(&events, "agent.tool_use") {
        assert_eq!(e.body["evaluated_permission"], json!("allow"));
        assert_eq!(e.body["evaluation"], json!({"type": "always_allow"}));
    }
    for e in of_type(&events, "span.model_request_end") {
        assert_eq!(e.body["is_error"], json!(false));
        assert!(e.body["model_usage"]["input_tokens"].as_u64().unwrap() > 0);
    }
    assert_eq!(
        store.get_session("sesn_multi").await.unwrap().status,
        SessionStatus::Idle
    );

    // Every tool ran exactly once, in order, with the event id as the key.
    let execs = hands.executions();
    assert_eq!(execs.len(), 5);
    let tool_use_ids: Vec<_> = of_type(&events, "agent.tool_use")
        .iter()
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(
        execs
            .iter()
            .map(|e| e.tool_use_id.clone())
            .collect::<Vec<_>>(),
        tool_use_ids
    );
    assert_eq!(execs[3].input, json!({"command": "echo step 3"}));
    // Lazy provisioning: once, before the first tool ran.
    assert_eq!(hands.provisions().len(), 1);

    // The model saw a well-formed conversation every time (the fake rejects
    // unpaired tool_use/tool_result), growing by one exchange per request.
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 6);
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(r.body["messages"].as_array().unwrap().len(), 1 + 2 * i);
        assert_eq!(r.body["model"], json!("claude-test"));
        assert_eq!(r.body["system"][0]["text"], json!("You are a test agent."));
        assert_eq!(r.body["tools"].as_array().unwrap().len(), 6);
    }
    let last = &reqs[5].body["messages"];
    assert_eq!(last[2]["content"][0]["type"], json!("tool_result"));
    assert_eq!(last[2]["content"][0]["tool_use_id"], json!(tool_use_ids[0]));
    assert_eq!(last[1]["content"][1]["id"], json!(tool_use_ids[0]));
    assert_eq!(
        last[10]["content"][0]["content"][0]["text"],
        json!("ran bash {\"command\":\"echo step 4\"}")
    );
    // Prompt-cache breakpoints: system, the last message, the previous user message.
    assert_eq!(
        reqs[5].body["system"][0]["cache_control"],
        json!({"type": "ephemeral"})
    );
    assert!(last[10]["content"][0]["cache_control"].is_object());
    assert!(last[8]["content"][0]["cache_control"].is_object());

    // A second wake finds nothing to do.
    assert_eq!(
        h.wake("sesn_multi").await.unwrap(),
        WakeOutcome::NothingToDo
    );
    assert_eq!(log(&*store, "sesn_multi").await.len(), events.len());
}

#[tokio::test]
async fn a_user_message_after_idle_starts_a_new_turn_with_history() {
    let (_fx, store, fake, _, h) = rig(
        |r: &RequestCtx| Reply::text(format!("echo: {}", r.last_user_text().unwrap_or(""))),
        "s",
        "first",
    )
    .await;
    h.wake("s").await.unwrap();
    send(&*store, "s", user_message("second")).await;
    wake_idle(&h, "s", StopReason::EndTurn).await;
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    let m = &reqs[1].body["messages"];
    assert_eq!(m.as_array().unwrap().len(), 3);
    assert_eq!(m[1]["content"][0]["text"], json!("echo: first"));
    assert_eq!(m[2]["content"][0]["text"], json!("second"));
    let events = complete_log(&*store, "s").await;
    assert_eq!(of_type(&events, "session.status_idle").len(), 2);
}

#[tokio::test]
async fn an_interrupt_stops_an_in_flight_model_request() {
    // The first answer takes 20 s; the interrupt must not wait for it.
    let script = sequence(vec![
        Reply::text("too late").with_latency(Duration::from_secs(20)),
        Reply::text("fresh answer"),
    ]);
    let (_fx, store, fake, _, h) = rig(script, "s", "think hard").await;
    let task = tokio::spawn({
        let h = h.clone();
        async move { h.wake("s").await }
    });
    assert!(fake.wait_for_requests(1, PATIENCE).await);
    let started = Instant::now();
    queue(&*store, "s", json!({"type": "user.interrupt"})).await;
    let out = joined(task).await.unwrap();
    assert_eq!(out, WakeOutcome::Idle(StopReason::EndTurn));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "interrupt waited for the model"
    );

    let events = complete_log(&*store, "s").await;
    assert!(of_type(&events, "agent.message").is_empty());
    let t = types(&events);
    assert_eq!(
        t,
        [
            "user.message",
            "session.status_running",
            "span.model_request_start",
            "user.interrupt",
            "span.model_request_end",
            "session.status_idle"
        ]
    );
    // The next message starts a new turn; the model sees both user messages.
    send(&*store, "s", user_message("never mind, say hi")).await;
    wake_idle(&h, "s", StopReason::EndTurn).await;
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    let m = &reqs[1].body["messages"];
    assert_eq!(m.as_array().unwrap().len(), 1);
    assert_eq!(m[0]["content"].as_array().unwrap().len(), 2);
    check_complete(&log(&*store, "s").await);
}

#[tokio::test]
async fn an_interrupt_during_tools_lets_the_running_one_finish_and_skips_the_rest() {
    let (_fx, store, fake, hands, h) = rig(
        sequence(vec![Turn::new()
            .tool_use("toolu_a", "bash", json!({"command": "sleep 1"}))
            .tool_use("toolu_b", "bash", json!({"command": "rm -rf /tmp/x"}))
            .into()]),
        "s",
        "do two things",
    )
    .await;
    let gate = hands.close_gate();
    let task = tokio::spawn({
        let h = h.clone();
        async move { h.wake("s").await }
    });
    eventually("the first tool to start", PATIENCE, || {
        hands.calls().len() == 1
    })
    .await;
    queue(&*store, "s", json!({"type": "user.interrupt"})).await;
    // Let the running tool finish only after the interrupt is in the log.
    gate.add_permits(10);
    let out = joined(task).await.unwrap();
    assert_eq!(out, WakeOutcome::Idle(StopReason::EndTurn));
    let events = complete_log(&*store, "s").await;
    let results = of_type(&events, "agent.tool_result");
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].body["is_error"], json!(false));
    assert_eq!(results[1].body["is_error"], json!(true));
    assert!(results[1].body["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("interrupted"));
    assert_eq!(hands.executions().len(), 1, "the second tool must not run");
    assert_eq!(fake.request_count(), 1, "no model call after the interrupt");
}

#[tokio::test]
async fn retries_honour_retry_after_then_succeed() {
    let (_fx, store, fake, _, h) = rig(
        sequence(vec![
            Reply::rate_limited(0.4),
            Reply::overloaded(),
            Turn::new()
                .text("hello")
                .fault(3, Fault::ErrorEvent("overloaded_error".into()))
                .into(),
            Reply::text("finally"),
        ]),
        "s",
        "hi",
    )
    .await;
    wake_idle(&h, "s", StopReason::EndTurn).await;
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 4);
    let gap = reqs[1].at.duration_since(reqs[0].at);
    assert!(
        gap >= Duration::from_millis(400),
        "retry-after 0.4 s not honoured: {gap:?}"
    );
    let events = complete_log(&*store, "s").await;
    let errors = of_type(&events, "session.error");
    let kinds: Vec<_> = errors
        .iter()
        .map(|e| e.body["error"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "model_rate_limited_error",
            "model_overloaded_error",
            "model_overloaded_error"
        ]
    );
    for e in &errors {
        assert_eq!(e.body["error"]["retry_status"], json!({"type": "retrying"}));
    }
    let ends = of_type(&events, "span.model_request_end");
    let flags: Vec<_> = ends
        .iter()
        .map(|e| e.body["is_error"].as_bool().unwrap())
        .collect();
    assert_eq!(flags, [true, true, true, false]);
    let msgs = of_type(&events, "agent.message");
    assert_eq!(
        msgs.len(),
        1,
        "the partial answer of the failed stream is not kept"
    );
    assert_eq!(msgs[0].body["content"][0]["text"], json!("finally"));
    // Every attempt sent the same conversation.
    for r in &reqs[1..] {
        assert_eq!(r.body["messages"], reqs[0].body["messages"]);
    }
}

#[tokio::test]
async fn exhausted_retries_end_in_session_error_and_idle() {
    let (_fx, store, fake, _, h) = rig(
        sequence(vec![
            Reply::overloaded(),
            Reply::overloaded(),
            Reply::overloaded(),
            Reply::overloaded(),
            Reply::text("back"),
        ]),
        "s",
        "hi",
    )
    .await;
    wake_idle(&h, "s", StopReason::RetriesExhausted).await;
    assert_eq!(fake.request_count(), 4, "max_attempts = 4");
    let events = complete_log(&*store, "s").await;
    let statuses: Vec<_> = of_type(&events, "session.error")
        .iter()
        .map(|e| {
            e.body["error"]["retry_status"]["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(statuses, ["retrying", "retrying", "retrying", "exhausted"]);
    let idle = of_type(&events, "session.status_idle");
    assert_eq!(
        idle.last().unwrap().body["stop_reason"],
        json!({"type": "retries_exhausted"})
    );
    assert_eq!(
        store.get_session("s").await.unwrap().status,
        SessionStatus::Idle
    );
    // A later wake without new input does nothing; a new message works.
    assert_eq!(h.wake("s").await.unwrap(), WakeOutcome::NothingToDo);
    send(&*store, "s", user_message("again")).await;
    wake_idle(&h, "s", StopReason::EndTurn).await;
    let reqs = fake.requests();
    assert_eq!(
        reqs[4].body["messages"].as_array().unwrap().len(),
        1,
        "both user messages, merged"
    );
    check_complete(&log(&*store, "s").await);
}

#[tokio::test]
async fn budgets_stop_a_runaway_session() {
    let mut cfg = config("h1");
    cfg.budget.max_model_requests_per_turn = 3;
    let (_fx, store, fake, hands, h) =
        rig_with(tool_loop(100, bash), cfg, "s", toolset(), "loop forever").await;
    wake_idle(&h, "s", StopReason::BudgetReached).await;
    assert_eq!(fake.request_count(), 3);
    complete_log(&*store, "s").await;
    assert_eq!(
        hands.executions().len(),
        3,
        "the tools of the last answer still ran"
    );
    // A new user message starts a new turn with a fresh per-turn budget.
    send(&*store, "s", user_message("go on")).await;
    wake_idle(&h, "s", StopReason::BudgetReached).await;
    assert_eq!(fake.request_count(), 6);

    // Token budget over the whole session.
    let spender = |r: &RequestCtx| {
        let k = r.tool_uses_so_far();
        Turn::new()
            .tool_use(format!("toolu_{k}"), "bash", json!({"command": "true"}))
            .usage(600, 100)
            .into()
    };
    let mut cfg = config("h2");
    cfg.budget.max_session_tokens = 1500;
    let (_fx2, store2, fake2, _, h2) = rig_with(spender, cfg, "t", toolset(), "spend").await;
    wake_idle(&h2, "t", StopReason::BudgetReached).await;
    assert_eq!(fake2.request_count(), 3, "700 + 700 < 1500 <= 2100");
    send(&*store2, "t", user_message("more")).await;
    wake_idle(&h2, "t", StopReason::BudgetReached).await;
    assert_eq!(fake2.request_count(), 3, "the session budget stays spent");
    check_complete(&log(&*store2, "t").await);
}

#[tokio::test]
async fn an_unknown_tool_is_refused_and_the_model_is_told() {
    let (_fx, store, fake, hands, h) = rig(
        sequence(vec![
            Turn::new()
                .text("let me")
                .tool_use("toolu_x", "frobnicate", json!({"level": 11}))
                .into(),
            Reply::text("sorry, I will use bash"),
        ]),
        "s",
        "frobnicate it",
    )
    .await;
    wake_idle(&h, "s", StopReason::EndTurn).await;
    let events = complete_log(&*store, "s").await;
    let tu = of_type(&events, "agent.tool_use");
    assert_eq!(tu[0].body["evaluated_permission"], json!("deny"));
    let res = of_type(&events, "agent.tool_result");
    assert_eq!(res[0].body["is_error"], json!(true));
    let text = res[0].body["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("frobnicate") && text.contains("bash"),
        "{text}"
    );
    assert!(hands.calls().is_empty());
    let reqs = fake.requests();
    assert_eq!(
        reqs[1].body["messages"][2]["content"][0]["is_error"],
        json!(true)
    );
}

#[tokio::test]
async fn a_malformed_response_is_a_clear_error_and_corrupts_nothing() {
    let (_fx, store, fake, hands, h) = rig(
        sequence(vec![
            Turn::new().text("partial").fault(4, Fault::Corrupt).into(),
            Turn::new()
                .raw_tool_use("toolu_1", "bash", &["{\"command\": \"ls"])
                .into(),
            Reply::text("recovered"),
        ]),
        "s",
        "hi",
    )
    .await;
    wake_idle(&h, "s", StopReason::RetriesExhausted).await;
    assert_eq!(fake.request_count(), 1, "a malformed stream is not retried");
    let events = complete_log(&*store, "s").await;
    let err = of_type(&events, "session.error");
    assert_eq!(err.len(), 1);
    assert_eq!(
        err[0].body["error"]["type"],
        json!("model_request_failed_error")
    );
    assert_eq!(
        err[0].body["error"]["retry_status"],
        json!({"type": "exhausted"})
    );
    assert!(err[0].body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("malformed"));
    assert!(of_type(&events, "agent.message").is_empty());

    send(&*store, "s", user_message("again")).await;
    wake_idle(&h, "s", StopReason::RetriesExhausted).await;
    let events = complete_log(&*store, "s").await;
    assert!(
        of_type(&events, "agent.tool_use").is_empty(),
        "a tool call with invalid input is not recorded"
    );
    assert!(hands.calls().is_empty());

    send(&*store, "s", user_message("third time")).await;
    wake_idle(&h, "s", StopReason::EndTurn).await;
    check_complete(&log(&*store, "s").await);
    // The conversation the model sees is still valid (the fake validates it).
    assert_eq!(
        fake.requests()[2].body["messages"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_stall_mid_stream_times_out_and_is_retried_or_reported() {
    let (_fx, store) = sqlite_store().await;
    let fake = FakeModel::start(sequence(vec![
        Turn::new()
            .text("I was saying")
            .fault(4, Fault::Stall)
            .into(),
        Reply::text("as I was saying"),
        Turn::new().text("x").fault(2, Fault::Stall).into(),
        Turn::new().text("x").fault(2, Fault::Stall).into(),
    ]))
    .await
    .unwrap();
    let mut cfg = config("h1");
    cfg.retry.max_attempts = 2;
    let h = Harness::new(
        store.clone(),
        provider(&fake, Duration::from_millis(300)),
        RecordingHands::new(),
        cfg,
    );
    create_session(&*store, "s", toolset(), "talk").await;
    wake_idle(&h, "s", StopReason::EndTurn).await;
    let events = complete_log(&*store, "s").await;
    let err = of_type(&events, "session.error");
    assert_eq!(err.len(), 1);
    assert!(err[0].body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("timed out"));
    assert_eq!(
        of_type(&events, "agent.message")[0].body["content"][0]["text"],
        json!("as I was saying")
    );

    send(&*store, "s", user_message("again")).await;
    wake_idle(&h, "s", StopReason::RetriesExhausted).await;
    let events = complete_log(&*store, "s").await;
    let err = of_type(&events, "session.error");
    assert_eq!(err.len(), 3);
    assert_eq!(
        err[2].body["error"]["retry_status"],
        json!({"type": "exhausted"})
    );
    eventually("stalled streams to close", PATIENCE, || {
        fake.open_streams() == 0
    })
    .await;
}

#[tokio::test]
async fn always_ask_and_custom_tools_block_until_the_client_answers() {
    let script = sequence(vec![
        Turn::new()
            .tool_use("t1", "bash", json!({"command": "deploy"}))
            .tool_use("t2", "lookup", json!({"q": "weather"}))
            .tool_use("t3", "write", json!({"file_path": "a", "content": "b"}))
            .into(),
        Reply::text("all done"),
    ]);
    let tools = json!([
        {"type": "agent_toolset_20260401",
         "default_config": {"enabled": true, "permission_policy": {"type": "always_ask"}}},
        {"type": "custom", "name": "lookup", "description": "look up", "input_schema": {"type": "object"}}
    ]);
    let (_fx, store, fake, hands, h) = rig_with(
        script,
        config("h1"),
        "s",
        tools,
        "deploy and check the weather",
    )
    .await;
    let out = h.wake("s").await.unwrap();
    let events = log(&*store, "s").await;
    check_log(&events);
    let bash = of_type(&events, "agent.tool_use")[0].clone();
    let write = of_type(&events, "agent.tool_use")[1].clone();
    let custom = of_type(&events, "agent.custom_tool_use")[0].clone();
    assert_eq!(bash.body["evaluated_permission"], json!("ask"));
    assert_eq!(bash.body["evaluation"], json!({"type": "always_ask"}));
    assert_eq!(
        out,
        WakeOutcome::Idle(StopReason::RequiresAction(vec![
            bash.id.clone(),
            custom.id.clone(),
            write.id.clone()
        ]))
    );
    assert!(hands.calls().is_empty(), "nothing runs before confirmation");
    assert_eq!(
        store.get_session("s").await.unwrap().status,
        SessionStatus::Idle
    );
    // A wake without an answer changes nothing.
    assert_eq!(h.wake("s").await.unwrap(), out);
    assert_eq!(log(&*store, "s").await.len(), events.len());

    // Allow bash: it runs; idle again, now waiting on the other two.
    let allow = confirm(&*store, "s", &bash.id, "allow").await;
    let out = h.wake("s").await.unwrap();
    assert_eq!(
        out,
        WakeOutcome::Idle(StopReason::RequiresAction(vec![
            custom.id.clone(),
            write.id.clone()
        ]))
    );
    assert_eq!(hands.executions().len(), 1);
    assert_eq!(hands.executions()[0].tool_use_id, bash.id);
    let events = log(&*store, "s").await;
    assert!(events
        .iter()
        .find(|e| e.id == allow.id)
        .unwrap()
        .processed_at
        .is_some());

    // Deny write (it never runs), answer the custom tool: the model continues.
    queue(&*store, "s", json!({"type": "user.tool_confirmation", "tool_use_id": write.id, "result": "deny", "deny_message": "not today"})).await;
    queue(&*store, "s", json!({"type": "user.custom_tool_result", "custom_tool_use_id": custom.id, "content": [{"type": "text", "text": "sunny"}]})).await;
    wake_idle(&h, "s", StopReason::EndTurn).await;
    assert_eq!(hands.executions().len(), 1, "denied tool never ran");
    let events = complete_log(&*store, "s").await;
    // The denial is in the log as the call's one error result (audit trail),
    // written before the model was asked again.
    let denied: Vec<_> = of_type(&events, "agent.tool_result")
        .into_iter()
        .filter(|e| e.body["tool_use_id"] == json!(write.id))
        .collect();
    assert_eq!(denied.len(), 1, "{denied:#?}");
    assert_eq!(denied[0].body["is_error"], json!(true));
    let text = denied[0].body["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("denied") && text.contains("`write`") && text.contains("not today"),
        "{text}"
    );
    let pos = |id: &str| events.iter().position(|e| e.id == id).unwrap();
    let second_span = of_type(&events, "span.model_request_start")[1].id.clone();
    assert!(pos(&denied[0].id) < pos(&second_span));
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    let results = reqs[1].body["messages"][2]["content"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(results.len(), 3);
    let by_id = |id: &str| {
        results
            .iter()
            .find(|b| b["tool_use_id"] == json!(id))
            .unwrap()
            .clone()
    };
    assert_eq!(by_id(&custom.id)["content"][0]["text"], json!("sunny"));
    assert_eq!(by_id(&write.id)["is_error"], json!(true));
    assert!(by_id(&write.id)["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("not today"));
    assert_eq!(by_id(&bash.id)["is_error"], Value::Null);
}

#[tokio::test]
async fn provisioning_lazy_speculative_and_eager() {
    for mode in [
        ProvisioningMode::Lazy,
        ProvisioningMode::Speculative,
        ProvisioningMode::Eager,
    ] {
        let (_fx, store) = sqlite_store().await;
        let latency = Duration::from_millis(300);
        let fake = slow_bash_loop(latency, 1).await;
        let hands = RecordingHands::with_provision_delay(Duration::from_millis(500));
        let h = harness(
            store.clone(),
            &fake,
            hands.clone(),
            with_provisioning(config("h1"), mode),
        );
        create_session(&*store, "s", toolset(), "one command").await;
        let t0 = Instant::now();
        wake_idle(&h, "s", StopReason::EndTurn).await;
        let first_request = fake.requests()[0].at;
        let provisions = hands.provisions();
        assert_eq!(provisions.len(), 1, "{mode:?}");
        let provisioned_at = provisions[0].1;
        match mode {
            // The model is asked before any sandbox is asked for.
            ProvisioningMode::Lazy => assert!(provisioned_at > first_request, "{mode:?}"),
            // Asked for together with the first model call.
            ProvisioningMode::Speculative => {
                assert!(provisioned_at < first_request + latency, "{mode:?}")
            }
            // The model waits for the sandbox.
            ProvisioningMode::Eager => assert!(
                first_request.duration_since(t0) >= Duration::from_millis(500),
                "{mode:?}"
            ),
        }
        check_complete(&log(&*store, "s").await);
    }
}

#[tokio::test]
async fn a_repository_that_did_not_clone_is_a_session_error_and_the_session_goes_on() {
    let (_fx, store, _fake, hands, h) =
        rig(tool_loop(1, bash), "sesn_repo", "use the repository").await;
    hands.with_resource_errors(vec![harness::ResourceFailure {
        error_type: "repository_authentication_error".into(),
        repository_url: "https://git.example.com/org/app.git".into(),
        message: "fatal: Authentication failed".into(),
    }]);
    let out = h.wake("sesn_repo").await.unwrap();
    assert_eq!(out, WakeOutcome::Idle(StopReason::EndTurn));
    let events = complete_log(&*store, "sesn_repo").await;
    let errors = of_type(&events, "session.error");
    assert_eq!(errors.len(), 1, "one error per failed resource, once");
    assert_eq!(
        errors[0].body["error"],
        json!({"type": "repository_authentication_error",
               "repository_url": "https://git.example.com/org/app.git",
               "message": "fatal: Authentication failed",
               "retry_status": {"type": "retrying"}})
    );
    // The tool still ran in the sandbox.
    assert_eq!(of_type(&events, "agent.tool_result").len(), 1);
}

#[tokio::test]
async fn transient_hands_failures_are_retried_and_a_lost_sandbox_is_replaced() {
    let (_fx, store, _fake, hands, h) = rig(tool_loop(2, bash), "s", "two").await;
    hands.fail_next_provision(HandsError::Unavailable {
        session_id: "s".into(),
        message: "no agent connected".into(),
    });
    hands.fail_next_execute(HandsError::SandboxGone {
        sandbox_id: "sbx_0".into(),
    });
    wake_idle(&h, "s", StopReason::EndTurn).await;
    let events = complete_log(&*store, "s").await;
    assert!(of_type(&events, "agent.tool_result")
        .iter()
        .all(|e| e.body["is_error"] == json!(false)));
    assert_eq!(hands.executions().len(), 2);
    assert_eq!(
        hands.provisions().len(),
        3,
        "failed, ok, again after the sandbox was gone"
    );

    // A refusal is the tool's error, shown to the model.
    let (_fx, store, _fake, hands, h) = rig(tool_loop(1, bash), "s", "one").await;
    hands.fail_next_execute(HandsError::Refused {
        session_id: "s".into(),
        message: "policy tools.allowed forbids bash".into(),
    });
    wake_idle(&h, "s", StopReason::EndTurn).await;
    let events = log(&*store, "s").await;
    let r = &of_type(&events, "agent.tool_result")[0].body;
    assert_eq!(r["is_error"], json!(true));
    assert!(r["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("tools.allowed"));
}

#[tokio::test]
async fn an_invalid_agent_snapshot_is_reported_not_crashed_on() {
    let (_fx, store) = sqlite_store().await;
    let fake = FakeModel::start(sequence(vec![])).await.unwrap();
    let h = harness(store.clone(), &fake, RecordingHands::new(), config("h1"));
    store
        .create_session(session_store::NewSession {
            id: "s".into(),
            status: SessionStatus::Idle,
            body: json!({"agent": {"tools": []}}),
            initial_events: vec![user_message("hi")],
        })
        .await
        .unwrap();
    wake_idle(&h, "s", StopReason::RetriesExhausted).await;
    let events = complete_log(&*store, "s").await;
    let err = &of_type(&events, "session.error")[0].body["error"];
    assert_eq!(err["type"], json!("unknown_error"));
    assert!(err["message"].as_str().unwrap().contains("agent.model"));
    assert_eq!(fake.request_count(), 0);
}

#[tokio::test]
async fn the_supervisor_wakes_on_notify_and_recovers_running_sessions_on_start() {
    let (_fx, store) = sqlite_store().await;
    let fake = FakeModel::start(tool_loop(2, bash)).await.unwrap();
    let hands = RecordingHands::new();
    // A session left `running` (its harness died) with work to do.
    create_session(&*store, "sesn_orphan", toolset(), "recover me").await;
    store
        .update_session(
            "sesn_orphan",
            session_store::SessionUpdate {
                status: Some(SessionStatus::Running),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let h = harness(store.clone(), &fake, hands.clone(), config("h1"));
    let sup = Supervisor::start(h);
    // Recovered without anyone calling notify.
    let st = store.clone();
    let idle = |id: &'static str| {
        let st = st.clone();
        async move {
            st.get_session(id)
                .await
                .map(|r| r.status == SessionStatus::Idle)
                .unwrap_or(false)
        }
    };
    testkit::eventually_async("the orphan to be recovered", PATIENCE, || {
        idle("sesn_orphan")
    })
    .await;
    // A new session is woken by notify.
    create_session(&*store, "sesn_new", toolset(), "hello").await;
    sup.notify("sesn_new");
    sup.notify("sesn_new");
    wait_idle_logged(&*store, "sesn_new", "notify did not wake the session").await;
    assert!(sup.shutdown(Duration::from_secs(10)).await);
    for id in ["sesn_orphan", "sesn_new"] {
        let events = complete_log(&*store, id).await;
        assert_eq!(of_type(&events, "agent.tool_result").len(), 2, "{id}");
    }
    assert_eq!(hands.executions().len(), 4);
}
