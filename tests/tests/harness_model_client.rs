//! The production Anthropic client (`model` crate) against the scripted fake
//! Messages server over real loopback sockets: every stream shape, every
//! error class, a stall, malformed and truncated streams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use airlock_tests::fake_model::{sequence, FakeModel, Fault, Reply, Turn};
use model::{
    AnthropicConfig, AnthropicProvider, ApiKey, ContentBlock, Message, MessagesRequest, ModelError,
    Provider, ResponseBlock, Role, StopReason, StreamEvent, StreamItem, SystemBlock, TimeoutPhase,
    ToolDefinition,
};
use serde_json::json;

fn provider(base: &str, idle: Duration) -> AnthropicProvider {
    let mut c = AnthropicConfig::new(base, ApiKey::new("sk-test-key"));
    c.anthropic_beta = vec!["prompt-caching-2024-07-31".into()];
    c.request_timeout = Duration::from_secs(10);
    c.stream_idle_timeout = idle;
    AnthropicProvider::new(c).unwrap()
}

fn request() -> MessagesRequest {
    let mut r = MessagesRequest {
        model: "claude-test".into(),
        max_tokens: 1024,
        system: vec![SystemBlock::text("You are a test.")],
        messages: vec![Message {
            role: Role::User,
            content: vec![ContentBlock::text("hello")],
        }],
        tools: vec![ToolDefinition {
            name: "bash".into(),
            description: Some("run a command".into()),
            input_schema: json!({"type":"object","properties":{"command":{"type":"string"}}}),
            cache_control: None,
        }],
        tool_choice: None,
        temperature: None,
        metadata: None,
    };
    r.apply_cache_breakpoints();
    r
}

async fn collect_events(
    p: &AnthropicProvider,
) -> (Vec<StreamEvent>, Result<model::Response, ModelError>) {
    let mut s = match p.stream(&request()).await {
        Ok(s) => s,
        Err(e) => return (vec![], Err(e)),
    };
    let mut evs = vec![];
    loop {
        match s.next().await {
            Ok(StreamItem::Event(e)) => evs.push(e),
            Ok(StreamItem::Done(r)) => return (evs, Ok(r)),
            Err(e) => return (evs, Err(e)),
        }
    }
}

#[tokio::test]
async fn text_turn_streams_deltas_and_sends_the_right_request() {
    let fake = FakeModel::start(sequence(vec![Turn::new()
        .text("Hello there, world")
        .usage(12, 7)
        .into()]))
    .await
    .unwrap();
    let p = provider(&fake.base_url(), Duration::from_secs(10));
    let (evs, r) = collect_events(&p).await;
    let r = r.unwrap();
    assert_eq!(r.stop_reason, Some(StopReason::EndTurn));
    assert_eq!(
        r.content,
        vec![ResponseBlock::Text {
            text: "Hello there, world".into()
        }]
    );
    assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (12, 7));
    let text_deltas = evs
        .iter()
        .filter(|e| matches!(e, StreamEvent::BlockDelta { .. }))
        .count();
    assert!(
        text_deltas >= 2,
        "text should arrive in several deltas: {evs:?}"
    );
    assert!(matches!(
        evs.first(),
        Some(StreamEvent::MessageStart { .. })
    ));
    assert!(matches!(evs.last(), Some(StreamEvent::MessageStop)));

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let q = &reqs[0];
    assert_eq!(q.path, "/v1/messages");
    assert_eq!(q.header("x-api-key"), Some("sk-test-key"));
    assert_eq!(q.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        q.header("anthropic-beta"),
        Some("prompt-caching-2024-07-31")
    );
    assert_eq!(q.body["stream"], json!(true));
    assert_eq!(q.body["model"], json!("claude-test"));
    assert_eq!(
        q.body["system"][0]["cache_control"],
        json!({"type":"ephemeral"})
    );
    assert_eq!(
        q.body["messages"][0]["content"][0]["cache_control"],
        json!({"type":"ephemeral"})
    );
    assert_eq!(q.body["tools"][0]["name"], json!("bash"));
}

#[tokio::test]
async fn tool_use_turn_reassembles_input_json_across_one_byte_reads() {
    let turn = Turn::new()
        .text("Let me look.")
        .tool_use(
            "toolu_a",
            "bash",
            json!({"command": "ls -la /tmp", "timeout_ms": 5000}),
        )
        .tool_use(
            "toolu_b",
            "read",
            json!({"file_path": "/etc/hostname", "note": "ünïcödé ✓"}),
        )
        .chunk_bytes(1);
    let fake = FakeModel::start(sequence(vec![turn.into()])).await.unwrap();
    let p = provider(&fake.base_url(), Duration::from_secs(10));
    let (_, r) = collect_events(&p).await;
    let r = r.unwrap();
    assert_eq!(r.stop_reason, Some(StopReason::ToolUse));
    assert_eq!(
        r.content,
        vec![
            ResponseBlock::Text {
                text: "Let me look.".into()
            },
            ResponseBlock::ToolUse {
                id: "toolu_a".into(),
                name: "bash".into(),
                input: json!({"command": "ls -la /tmp", "timeout_ms": 5000})
            },
            ResponseBlock::ToolUse {
                id: "toolu_b".into(),
                name: "read".into(),
                input: json!({"file_path": "/etc/hostname", "note": "ünïcödé ✓"})
            },
        ]
    );
}

#[tokio::test]
async fn http_errors_are_typed_with_retry_after_and_error_type() {
    let fake = FakeModel::start(sequence(vec![
        Reply::rate_limited(2.0),
        Reply::overloaded(),
        Reply::error(400, "invalid_request_error", "messages: bad"),
        Reply::error(401, "authentication_error", "invalid x-api-key"),
        Reply::error(500, "api_error", "internal"),
    ]))
    .await
    .unwrap();
    let p = provider(&fake.base_url(), Duration::from_secs(10));

    let e = p.stream(&request()).await.unwrap_err();
    assert!(matches!(e, ModelError::RateLimited { .. }), "{e:?}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
    assert!(e.is_retryable());

    let e = p.stream(&request()).await.unwrap_err();
    assert!(matches!(e, ModelError::Overloaded { .. }), "{e:?}");
    assert!(e.is_retryable());

    let e = p.stream(&request()).await.unwrap_err();
    match &e {
        ModelError::Api {
            status,
            error_type,
            message,
            request_id,
            ..
        } => {
            assert_eq!(*status, Some(400));
            assert_eq!(error_type, "invalid_request_error");
            assert_eq!(message, "messages: bad");
            assert_eq!(request_id.as_deref(), Some("req_fake"));
        }
        other => panic!("{other:?}"),
    }
    assert!(!e.is_retryable());

    let e = p.stream(&request()).await.unwrap_err();
    assert!(
        matches!(e, ModelError::Api { ref error_type, .. } if error_type == "authentication_error")
    );
    assert!(!e.is_retryable());

    let e = p.stream(&request()).await.unwrap_err();
    assert!(e.is_retryable(), "500 api_error is transient: {e:?}");
}

#[tokio::test]
async fn error_event_mid_stream_after_some_output() {
    let fake = FakeModel::start(sequence(vec![
        Turn::new()
            .text("partial answer")
            .fault(4, Fault::ErrorEvent("overloaded_error".into()))
            .into(),
        Turn::new()
            .text("partial answer")
            .fault(4, Fault::ErrorEvent("api_error".into()))
            .into(),
    ]))
    .await
    .unwrap();
    let p = provider(&fake.base_url(), Duration::from_secs(10));
    let (evs, r) = collect_events(&p).await;
    assert!(
        evs.iter().any(StreamEvent::is_output),
        "output before the error: {evs:?}"
    );
    assert!(matches!(r, Err(ModelError::Overloaded { .. })), "{r:?}");
    let (_, r) = collect_events(&p).await;
    assert!(
        matches!(r, Err(ModelError::Api { status: None, ref error_type, .. }) if error_type == "api_error"),
        "{r:?}"
    );
}

#[tokio::test]
async fn malformed_truncated_and_invalid_tool_input_streams() {
    let fake = FakeModel::start(sequence(vec![
        Turn::new().text("hello").fault(3, Fault::Corrupt).into(),
        Turn::new().text("hello").fault(5, Fault::Truncate).into(),
        Turn::new()
            .raw_tool_use("toolu_x", "bash", &["", "{\"command\": ", "\"ls\""])
            .into(),
        Turn::new()
            .raw_tool_use("toolu_y", "bash", &["[1, 2]"])
            .into(),
        Reply::Stream {
            chunks: vec![airlock_tests::fake_model::Chunk::Data(
                "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n".into(),
            )],
            latency: None,
        },
    ]))
    .await
    .unwrap();
    let p = provider(&fake.base_url(), Duration::from_secs(10));
    let (_, r) = collect_events(&p).await;
    assert!(
        matches!(r, Err(ModelError::MalformedStream { .. })),
        "corrupt: {r:?}"
    );
    let (_, r) = collect_events(&p).await;
    match r {
        Err(ModelError::Transport { message, .. }) => {
            assert!(message.contains("message_stop"), "{message}")
        }
        other => panic!("truncated: {other:?}"),
    }
    let (_, r) = collect_events(&p).await;
    match r {
        Err(ModelError::MalformedStream { message, .. }) => {
            assert!(message.contains("not valid json"), "{message}")
        }
        other => panic!("bad tool json: {other:?}"),
    }
    let (_, r) = collect_events(&p).await;
    match r {
        Err(ModelError::MalformedStream { message, .. }) => {
            assert!(message.contains("not a json object"), "{message}")
        }
        other => panic!("non-object tool input: {other:?}"),
    }
    let (_, r) = collect_events(&p).await;
    assert!(
        matches!(r, Err(ModelError::MalformedStream { .. })),
        "out of order: {r:?}"
    );
}

#[tokio::test]
async fn a_stall_mid_stream_is_an_idle_timeout_and_the_connection_is_released() {
    let fake = FakeModel::start(sequence(vec![Turn::new()
        .text("I was saying")
        .fault(4, Fault::Stall)
        .into()]))
    .await
    .unwrap();
    let idle = Duration::from_millis(300);
    let p = provider(&fake.base_url(), idle);
    let (evs, r) = collect_events(&p).await;
    assert!(!evs.is_empty());
    match r {
        Err(ModelError::Timeout {
            phase: TimeoutPhase::StreamIdle,
            after,
            ..
        }) => assert_eq!(after, idle),
        other => panic!("{other:?}"),
    }
    // The client dropped the body: the fake sees its stalled stream end.
    testkit::eventually("the stalled stream to end", Duration::from_secs(10), || {
        fake.open_streams() == 0
    })
    .await;
    assert_eq!(fake.open_streams(), 0, "stalled stream still open");
}

#[tokio::test]
async fn latency_before_the_first_token_is_observed() {
    let latency = Duration::from_millis(250);
    let fake = FakeModel::builder()
        .latency(latency)
        .start(sequence(vec![Reply::text("late")]))
        .await
        .unwrap();
    let p = provider(&fake.base_url(), Duration::from_secs(10));
    let t0 = Instant::now();
    let mut s = p.stream(&request()).await.unwrap();
    loop {
        match s.next().await.unwrap() {
            StreamItem::Event(e) if e.is_output() => break,
            StreamItem::Event(_) => {}
            StreamItem::Done(_) => panic!("no output"),
        }
    }
    assert!(
        t0.elapsed() >= latency,
        "first token before the scripted latency"
    );
}

#[tokio::test]
async fn transport_failures_and_response_head_timeout() {
    // Nothing listens: connection refused.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let p = provider(&format!("http://{addr}"), Duration::from_secs(5));
    let e = p.stream(&request()).await.unwrap_err();
    assert!(matches!(e, ModelError::Transport { .. }), "{e:?}");
    assert!(e.is_retryable());

    // A server that accepts and never answers.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let mut c = AnthropicConfig::new(format!("http://{addr}"), ApiKey::new("k"));
    c.request_timeout = Duration::from_millis(300);
    let p = AnthropicProvider::new(c).unwrap();
    let e = p.stream(&request()).await.unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::Timeout {
                phase: TimeoutPhase::ResponseHead,
                ..
            }
        ),
        "{e:?}"
    );
    hold.abort();
}

#[tokio::test]
async fn the_fake_rejects_a_conversation_with_an_unanswered_tool_use() {
    let fake = FakeModel::start(sequence(vec![Reply::text("never")]))
        .await
        .unwrap();
    let p = provider(&fake.base_url(), Duration::from_secs(5));
    let mut r = request();
    r.messages.push(Message {
        role: Role::Assistant,
        content: vec![ContentBlock::ToolUse {
            id: "toolu_1".into(),
            name: "bash".into(),
            input: json!({}),
            cache_control: None,
        }],
    });
    r.messages.push(Message {
        role: Role::User,
        content: vec![ContentBlock::text("and?")],
    });
    let e = p.stream(&r).await.unwrap_err();
    match e {
        ModelError::Api {
            error_type,
            message,
            ..
        } => {
            assert_eq!(error_type, "invalid_request_error");
            assert!(message.contains("toolu_1"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}
