//! The agent's MCP dispatcher ([`sandbox_agent::mcp::McpAgent`]) against a
//! stub vault-bridge on a real Unix socket speaking the real agent-channel
//! frames: forwarding, no bridge / bridge down, at most once per
//! `tool_use_id` (replay, a bridge that dies or goes silent mid-call, an
//! agent restart mid-call, concurrent duplicates), the `mcp_hosts` policy,
//! and the audit lines (hash-chained, no arguments).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use protocol::bridge::{BridgeErrorCode, FromBridge, ToBridge};
use protocol::call::{Reply, Request, Response};
use protocol::frame::{Frame, FrameCodec};
use protocol::mcp::{McpCallTool, McpFailure, McpListTools, McpOutcome, McpReply, McpServer};
use sandbox_agent::mcp::record::McpRecord;
use sandbox_agent::mcp::McpAgent;
use sandbox_agent::sandbox::config::{BridgeSettings, Policy, RawPolicy};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// What the stub does with a request once it has read it.
#[derive(Clone)]
enum Behaviour {
    /// Answer with this after the delay.
    Answer(Box<FromBridge>, Duration),
    /// Close the connection without answering (the bridge died).
    Close,
    /// Never answer.
    Hang,
}

/// A stub vault-bridge: hello, then one request per connection, recorded.
struct StubBridge {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    seen: Arc<Mutex<Vec<ToBridge>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    task: tokio::task::JoinHandle<()>,
}

async fn read_message(stream: &mut UnixStream, buf: &mut BytesMut) -> Option<ToBridge> {
    let codec = FrameCodec::default();
    loop {
        if let Some(f) = codec.decode(buf).unwrap() {
            return Some(ToBridge::decode(&f).unwrap());
        }
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

async fn write_message(stream: &mut UnixStream, m: &FromBridge) {
    let b = FrameCodec::default()
        .encode_to_bytes(&Frame::control(m).unwrap())
        .unwrap();
    let _ = stream.write_all(&b).await;
}

impl StubBridge {
    fn start(behaviour: Behaviour) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let behaviour = Arc::new(Mutex::new(behaviour));
        let (s, b) = (seen.clone(), behaviour.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, behaviour) = (s.clone(), b.clone());
                tokio::spawn(async move {
                    let mut buf = BytesMut::new();
                    let Some(ToBridge::Hello { .. }) = read_message(&mut stream, &mut buf).await
                    else {
                        return;
                    };
                    write_message(
                        &mut stream,
                        &FromBridge::HelloAccepted {
                            version: 1,
                            software_version: "stub".into(),
                        },
                    )
                    .await;
                    let Some(request) = read_message(&mut stream, &mut buf).await else {
                        return;
                    };
                    // The audit's scrub pass: this stub knows no secrets.
                    if let ToBridge::Scrub { id, value } = request {
                        let answer = FromBridge::Scrubbed {
                            id,
                            value,
                            redactions: 0,
                        };
                        write_message(&mut stream, &answer).await;
                        return;
                    }
                    seen.lock().unwrap().push(request);
                    let now = behaviour.lock().unwrap().clone();
                    match now {
                        Behaviour::Answer(answer, delay) => {
                            tokio::time::sleep(delay).await;
                            write_message(&mut stream, &answer).await;
                        }
                        Behaviour::Close => drop(stream),
                        Behaviour::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                    }
                });
            }
        });
        Self {
            _dir: dir,
            socket,
            seen,
            behaviour,
            task,
        }
    }

    fn settings(&self) -> BridgeSettings {
        BridgeSettings {
            socket_path: self.socket.clone(),
            egress_dir: self.socket.with_file_name("egress"),
            ca_cert_file: self.socket.with_file_name("ca.pem"),
            call_timeout: Duration::from_secs(5),
        }
    }

    fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    fn calls(&self) -> Vec<McpCallTool> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|m| match m {
                ToBridge::McpCallTool(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }
}

impl Drop for StubBridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn called(text: &str) -> FromBridge {
    FromBridge::Mcp(McpReply {
        outcome: McpOutcome::Called {
            content: vec![json!({"type": "text", "text": text})],
            is_error: false,
        },
        credential_id: Some("vcrd_tickets".into()),
        replayed: false,
        tools_changed: false,
    })
}

fn call(id: &str, url: &str, arguments: Value) -> McpCallTool {
    McpCallTool {
        session_id: "sesn_1".into(),
        tool_use_id: id.into(),
        server: McpServer {
            name: "tickets".into(),
            url: url.into(),
        },
        credentials: vec![],
        tool: "search".into(),
        arguments,
    }
}

fn agent(data: &Path, bridge: Option<&BridgeSettings>, hosts: Option<Vec<&str>>) -> McpAgent {
    let hosts = hosts.map(|h| {
        Policy::from_raw(
            RawPolicy {
                mcp_hosts: Some(h.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            },
            "img",
        )
        .unwrap()
        .mcp_hosts
        .unwrap()
    });
    McpAgent::open(data, Duration::from_secs(3600), bridge, hosts)
        .unwrap()
        .with_deadline(Duration::from_millis(800))
}

fn failure(r: &McpReply) -> (McpFailure, String) {
    match &r.outcome {
        McpOutcome::Failed { failure, message } => (failure.clone(), message.clone()),
        other => panic!("want a failure: {other:?}"),
    }
}

/// The audit lines, without the `start` lines written before a call goes
/// to the bridge.
fn audit_lines(data: &Path) -> Vec<Value> {
    all_audit_lines(data)
        .into_iter()
        .filter(|l| l["phase"] != "start")
        .collect()
}

fn all_audit_lines(data: &Path) -> Vec<Value> {
    sandbox_agent::audit::verify(&data.join("audit.jsonl")).unwrap();
    std::fs::read_to_string(data.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const URL: &str = "https://mcp.internal/mcp";

#[tokio::test]
async fn forwards_and_replays_a_repeated_tool_use_id_without_calling_again() {
    let data = tempfile::tempdir().unwrap();
    let stub = StubBridge::start(Behaviour::Answer(
        Box::new(called("3 tickets")),
        Duration::ZERO,
    ));
    let a = agent(data.path(), Some(&stub.settings()), None);
    let args = json!({"query": "vpn", "secret_looking": "canary-args-7781"});

    let first = a.call_tool(call("mcptoolu_1", URL, args.clone())).await;
    assert!(!first.replayed);
    assert_eq!(first.credential_id.as_deref(), Some("vcrd_tickets"));
    assert!(
        matches!(&first.outcome, McpOutcome::Called { content, .. } if content[0]["text"] == "3 tickets")
    );
    let again = a.call_tool(call("mcptoolu_1", URL, args.clone())).await;
    assert!(again.replayed);
    assert_eq!(again.outcome, first.outcome);
    assert_eq!(stub.calls().len(), 1, "the bridge saw the call twice");
    assert_eq!(stub.calls()[0].arguments, args);

    // The record survives a restart of the agent.
    drop(a);
    let a = agent(data.path(), Some(&stub.settings()), None);
    let after = a.call_tool(call("mcptoolu_1", URL, args.clone())).await;
    assert!(after.replayed);
    assert_eq!(after.outcome, first.outcome);
    assert_eq!(stub.calls().len(), 1);

    // Through the tunnel-call entry point too.
    let r = a
        .handle(Request::McpCallTool(call("mcptoolu_1", URL, args)))
        .await;
    match r {
        Response::Ok(Reply::Mcp { call, reply }) => {
            assert_eq!(call, "mcp_call_tool");
            assert!(reply.replayed);
        }
        other => panic!("{other:?}"),
    }

    let lines = audit_lines(data.path());
    let calls: Vec<&Value> = lines
        .iter()
        .filter(|l| l["call"] == "mcp_call_tool")
        .collect();
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[0]["outcome"], "ok");
    assert_eq!(calls[0]["tool_use_id"], "mcptoolu_1");
    assert_eq!(calls[0]["session_id"], "sesn_1");
    assert_eq!(calls[0]["tool"], "search");
    assert_eq!(calls[0]["mcp"]["server"], "tickets");
    assert_eq!(calls[0]["mcp"]["host"], "mcp.internal");
    assert_eq!(calls[0]["mcp"]["credential_id"], "vcrd_tickets");
    assert!(calls[0]["mcp"]["arguments_bytes"].as_u64().unwrap() > 20);
    assert!(calls[0]["duration_ms"].is_u64());
    assert_eq!(calls[1]["outcome"], "replayed");
    // The input is recorded (scrubbed) in the start line written before
    // the call went to the bridge; the result only by digest.
    let all = all_audit_lines(data.path());
    let start = all
        .iter()
        .find(|l| l["phase"] == "start" && l["tool_use_id"] == "mcptoolu_1")
        .unwrap();
    assert_eq!(start["input"]["tool"], "search");
    assert_eq!(start["input"]["arguments"]["query"], "vpn");
    assert_eq!(start["decision"]["allowed"], true);
    assert_eq!(calls[0]["phase"], "end");
    assert_eq!(calls[0]["output"]["sha256"].as_str().unwrap().len(), 64);
    let text = std::fs::read_to_string(data.path().join("audit.jsonl")).unwrap();
    assert!(!text.contains("3 tickets"), "the result in the audit log");
}

#[tokio::test]
async fn no_bridge_and_a_bridge_that_is_down_are_no_bridge_and_leave_the_id_callable() {
    let data = tempfile::tempdir().unwrap();
    let a = agent(data.path(), None, None);
    let r = a.call_tool(call("mcptoolu_2", URL, json!({}))).await;
    let (f, m) = failure(&r);
    assert_eq!(f, McpFailure::NoBridge);
    assert!(m.contains("[bridge]"), "{m}");
    let l = a
        .list_tools(McpListTools {
            session_id: "sesn_1".into(),
            server: McpServer {
                name: "tickets".into(),
                url: URL.into(),
            },
            credentials: vec![],
        })
        .await;
    assert_eq!(failure(&l).0, McpFailure::NoBridge);

    // A configured bridge that is not running.
    let gone = tempfile::tempdir().unwrap();
    let settings = BridgeSettings {
        socket_path: gone.path().join("agent.sock"),
        egress_dir: gone.path().join("egress"),
        ca_cert_file: gone.path().join("ca.pem"),
        call_timeout: Duration::from_secs(2),
    };
    let a = agent(data.path(), Some(&settings), None);
    let r = a.call_tool(call("mcptoolu_2", URL, json!({}))).await;
    let (f, m) = failure(&r);
    assert_eq!(f, McpFailure::NoBridge);
    assert!(m.contains("agent.sock"), "{m}");
    assert!(!r.replayed);

    // The server was never called: once a bridge is there, the same id runs.
    let stub = StubBridge::start(Behaviour::Answer(Box::new(called("now")), Duration::ZERO));
    drop(a);
    let a = agent(data.path(), Some(&stub.settings()), None);
    let r = a.call_tool(call("mcptoolu_2", URL, json!({}))).await;
    assert!(matches!(r.outcome, McpOutcome::Called { .. }), "{r:?}");
    assert!(!r.replayed);
    assert_eq!(stub.calls().len(), 1);
}

#[tokio::test]
async fn a_bridge_that_dies_mid_call_is_outcome_unknown_and_never_called_again() {
    let data = tempfile::tempdir().unwrap();
    let stub = StubBridge::start(Behaviour::Close);
    let a = agent(data.path(), Some(&stub.settings()), None);
    let r = a.call_tool(call("mcptoolu_3", URL, json!({"q": 1}))).await;
    let (f, m) = failure(&r);
    assert_eq!(f, McpFailure::OutcomeUnknown);
    assert!(m.contains("mcptoolu_3"), "{m}");
    assert!(!r.replayed);
    assert_eq!(stub.calls().len(), 1);

    // The bridge is back and would answer: the id is still not called.
    stub.set(Behaviour::Answer(Box::new(called("late")), Duration::ZERO));
    let again = a.call_tool(call("mcptoolu_3", URL, json!({"q": 1}))).await;
    assert_eq!(failure(&again).0, McpFailure::OutcomeUnknown);
    assert!(again.replayed);
    assert_eq!(stub.calls().len(), 1, "called the server again");

    // A silent bridge (no answer within the deadline) is the same.
    stub.set(Behaviour::Hang);
    let r = a.call_tool(call("mcptoolu_4", URL, json!({}))).await;
    assert_eq!(failure(&r).0, McpFailure::OutcomeUnknown);
    stub.set(Behaviour::Answer(Box::new(called("late")), Duration::ZERO));
    let again = a.call_tool(call("mcptoolu_4", URL, json!({}))).await;
    assert_eq!(failure(&again).0, McpFailure::OutcomeUnknown);
    assert_eq!(stub.calls().len(), 2);

    let lines = audit_lines(data.path());
    let outcomes: Vec<(&str, &str)> = lines
        .iter()
        .filter(|l| l["call"] == "mcp_call_tool")
        .map(|l| {
            (
                l["outcome"].as_str().unwrap(),
                l["mcp"]["failure"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(outcomes, vec![("failed", "outcome_unknown"); 4]);
}

#[tokio::test]
async fn an_agent_restart_mid_call_is_outcome_unknown_without_calling_the_server() {
    let data = tempfile::tempdir().unwrap();
    // The agent recorded the start and died before any reply was recorded.
    {
        let r = McpRecord::open(data.path(), Duration::from_secs(3600)).unwrap();
        assert!(matches!(
            r.begin("mcptoolu_5", "sesn_1", "tickets").unwrap(),
            sandbox_agent::mcp::record::Begin::Call
        ));
    }
    let stub = StubBridge::start(Behaviour::Answer(Box::new(called("x")), Duration::ZERO));
    let a = agent(data.path(), Some(&stub.settings()), None);
    let r = a.call_tool(call("mcptoolu_5", URL, json!({}))).await;
    let (f, m) = failure(&r);
    assert_eq!(f, McpFailure::OutcomeUnknown);
    assert!(m.contains("restarted"), "{m}");
    assert!(r.replayed);
    assert!(stub.calls().is_empty(), "the server was called");

    // A torn last line (the agent died mid-write) does not break the record.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(data.path().join("mcp_calls.jsonl"))
        .unwrap();
    f.write_all(b"{\"t\":\"done\",\"id\":\"mcptoolu_5\",\"at\":1")
        .unwrap();
    drop(f);
    drop(a);
    let a = agent(data.path(), Some(&stub.settings()), None);
    assert_eq!(
        failure(&a.call_tool(call("mcptoolu_5", URL, json!({}))).await).0,
        McpFailure::OutcomeUnknown
    );
}

#[tokio::test]
async fn concurrent_duplicates_reach_the_bridge_once() {
    let data = tempfile::tempdir().unwrap();
    let stub = StubBridge::start(Behaviour::Answer(
        Box::new(called("slow")),
        Duration::from_millis(300),
    ));
    let a = agent(data.path(), Some(&stub.settings()), None);
    let (x, y) = tokio::join!(
        a.call_tool(call("mcptoolu_6", URL, json!({}))),
        a.call_tool(call("mcptoolu_6", URL, json!({})))
    );
    assert_eq!(stub.calls().len(), 1);
    assert_eq!(x.outcome, y.outcome);
    assert!(matches!(x.outcome, McpOutcome::Called { .. }));
    assert!(
        x.replayed != y.replayed,
        "one answer is the call, the other a replay"
    );
}

#[tokio::test]
async fn the_mcp_hosts_policy_denies_other_hosts_naming_the_rule() {
    let data = tempfile::tempdir().unwrap();
    let stub = StubBridge::start(Behaviour::Answer(Box::new(called("ok")), Duration::ZERO));
    let a = agent(
        data.path(),
        Some(&stub.settings()),
        Some(vec!["mcp.internal", "*.Corp"]),
    );
    for url in [
        "https://mcp.internal/mcp",
        "https://MCP.internal:8443/x",
        "https://tickets.corp/mcp",
        "https://a.b.corp/mcp",
    ] {
        let r = a
            .call_tool(call(&format!("ok-{url}"), url, json!({})))
            .await;
        assert!(
            matches!(r.outcome, McpOutcome::Called { .. }),
            "{url}: {r:?}"
        );
    }
    for url in [
        "https://evil.example/mcp",
        "https://corp/mcp",
        "https://xcorp/mcp",
        "https://mcp.internal.evil/mcp",
        "http://127.0.0.1:9/mcp",
    ] {
        let r = a
            .call_tool(call(&format!("no-{url}"), url, json!({})))
            .await;
        let (f, m) = failure(&r);
        assert_eq!(f, McpFailure::PolicyDenied, "{url}");
        assert!(m.contains("policy.mcp_hosts"), "{m}");
        assert!(m.contains("tickets"), "{m}");
    }
    assert_eq!(stub.calls().len(), 4);
    // A denied call is not recorded as started: allowed later, it runs.
    let r = a
        .call_tool(call(
            "no-https://evil.example/mcp",
            "https://mcp.internal/mcp",
            json!({}),
        ))
        .await;
    assert!(matches!(r.outcome, McpOutcome::Called { .. }), "{r:?}");

    // An empty list denies every host; a bad URL is invalid_request.
    let b = agent(data.path(), Some(&stub.settings()), Some(vec![]));
    let r = b.call_tool(call("empty", URL, json!({}))).await;
    assert_eq!(failure(&r).0, McpFailure::PolicyDenied);
    let r = b.call_tool(call("bad", "ftp://x/y", json!({}))).await;
    assert_eq!(failure(&r).0, McpFailure::InvalidRequest);
    let r = b.call_tool(call("args", URL, json!([1, 2]))).await;
    assert_eq!(failure(&r).0, McpFailure::InvalidRequest);

    let lines = audit_lines(data.path());
    let denied = lines
        .iter()
        .filter(|l| l["mcp"]["failure"] == "policy_denied")
        .count();
    assert_eq!(denied, 6);
}

#[test]
fn mcp_hosts_entries_are_checked_at_load() {
    for bad in [
        "https://mcp.internal",
        "mcp.internal/mcp",
        "*",
        "a.*.corp",
        "",
        "user@h",
    ] {
        let e = Policy::from_raw(
            RawPolicy {
                mcp_hosts: Some(vec![bad.into()]),
                ..Default::default()
            },
            "img",
        )
        .unwrap_err();
        assert!(e.to_string().contains("policy.mcp_hosts"), "{bad}: {e}");
    }
    let p = Policy::from_raw(RawPolicy::default(), "img").unwrap();
    assert_eq!(p.mcp_hosts, None);
    let t: RawPolicy =
        serde_json::from_value(json!({"mcp_hosts": ["MCP.internal", "*.corp"]})).unwrap();
    let p = Policy::from_raw(t, "img").unwrap();
    assert_eq!(p.mcp_hosts.unwrap(), ["mcp.internal", "*.corp"]);
}

#[tokio::test]
async fn a_bridge_without_mcp_support_is_no_bridge() {
    let data = tempfile::tempdir().unwrap();
    let stub = StubBridge::start(Behaviour::Answer(
        Box::new(FromBridge::error(
            BridgeErrorCode::UnsupportedRequest,
            "unsupported request",
        )),
        Duration::ZERO,
    ));
    let a = agent(data.path(), Some(&stub.settings()), None);
    let r = a.call_tool(call("mcptoolu_7", URL, json!({}))).await;
    let (f, m) = failure(&r);
    assert_eq!(f, McpFailure::NoBridge);
    assert!(m.contains("does not support"), "{m}");
    // Refused before calling: a retry goes to the bridge again.
    stub.set(Behaviour::Answer(Box::new(called("ok")), Duration::ZERO));
    let r = a.call_tool(call("mcptoolu_7", URL, json!({}))).await;
    assert!(matches!(r.outcome, McpOutcome::Called { .. }));
    assert_eq!(stub.calls().len(), 2);
}

#[tokio::test]
async fn a_dropped_tunnel_call_still_records_the_reply_for_the_resend() {
    let data = tempfile::tempdir().unwrap();
    let stub = StubBridge::start(Behaviour::Answer(
        Box::new(called("finished while nobody waited")),
        Duration::from_millis(400),
    ));
    let a = agent(data.path(), Some(&stub.settings()), None);
    // The control plane goes away: the handler's future is dropped mid-call.
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        a.call_tool(call("mcptoolu_8", URL, json!({}))),
    )
    .await;
    assert!(dropped.is_err());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let resent = a.call_tool(call("mcptoolu_8", URL, json!({}))).await;
    assert!(resent.replayed, "{resent:?}");
    assert!(
        matches!(&resent.outcome, McpOutcome::Called { content, .. } if content[0]["text"] == "finished while nobody waited")
    );
    assert_eq!(stub.calls().len(), 1);
    let lines = audit_lines(data.path());
    let outcomes: Vec<&str> = lines
        .iter()
        .map(|l| l["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["ok", "replayed"]);
}

#[tokio::test]
async fn the_sandbox_service_and_the_mcp_dispatcher_write_one_audit_chain() {
    use sandbox_agent::audit::{AuditEvent, AuditLog};
    let data = tempfile::tempdir().unwrap();
    // The service's log, opened first (as `run` does).
    let service_log = AuditLog::open(data.path()).unwrap();
    let stub = StubBridge::start(Behaviour::Answer(Box::new(called("x")), Duration::ZERO));
    let a = agent(data.path(), Some(&stub.settings()), None);
    for i in 0..3 {
        service_log.record(AuditEvent {
            call: "execute".into(),
            outcome: "ok".into(),
            ..Default::default()
        });
        a.call_tool(call(&format!("mcptoolu_9_{i}"), URL, json!({})))
            .await;
    }
    let (seq, _) = sandbox_agent::audit::verify(&data.path().join("audit.jsonl")).unwrap();
    // Three execute lines and three MCP calls of a start and an end line.
    assert_eq!(seq, 9);
}
