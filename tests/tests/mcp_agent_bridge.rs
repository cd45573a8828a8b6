//! The sandbox-agent's MCP dispatcher (`sandbox_agent::mcp::McpAgent`, the
//! code behind the `mcp_*` tunnel calls) with a real `vault-bridge serve`
//! and the real `tickets` MCP server (official `mcp` SDK, HTTPS, static
//! bearer token relayed to the bridge):
//!
//! - a tool call reaches the server once; the repeat is `replayed` from the
//!   agent's record and the server's call log still holds one call;
//! - the bridge killed (SIGKILL) in the middle of a slow call: the agent
//!   answers `outcome_unknown`, and after the bridge is back the same
//!   `tool_use_id` is still `outcome_unknown` and the server saw the call
//!   once;
//! - `policy.mcp_hosts` not naming the server's host: `policy_denied`, the
//!   server sees nothing;
//! - the audit chain verifies and holds no token and no argument.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use airlock_tests::bridge::{Bridge, BridgeOptions, Channel};
use airlock_tests::mcp::{McpTestServer, TestCa};
use protocol::bridge::{FromBridge, ToBridge};
use protocol::mcp::{McpCallTool, McpFailure, McpListTools, McpOutcome, McpReply, McpServer};
use protocol::relay::{CredentialBinding, EgressCredential, PutCredential, WireSecret};
use sandbox_agent::mcp::McpAgent;
use serde_json::{json, Value};

fn credential(url: &str) -> EgressCredential {
    EgressCredential {
        http_auth: Default::default(),
        vault_id: "vlt_agent".into(),
        credential_id: "vcrd_tickets".into(),
        kv_path: None,
        binding: CredentialBinding::StaticBearer {
            mcp_server_url: url.into(),
        },
    }
}

fn call(server: &McpTestServer, id: &str, tool: &str, arguments: Value) -> McpCallTool {
    McpCallTool {
        session_id: "sesn_agent".into(),
        tool_use_id: id.into(),
        server: McpServer {
            name: "tickets".into(),
            url: server.url(),
        },
        credentials: vec![credential(&server.url())],
        tool: tool.into(),
        arguments,
    }
}

fn failure(r: &McpReply) -> McpFailure {
    match &r.outcome {
        McpOutcome::Failed { failure, .. } => failure.clone(),
        other => panic!("want a failure: {other:?}"),
    }
}

async fn relay_token(bridge: &Bridge, token: &str) {
    let mut ch = Channel::connect(&bridge.socket_path()).await.unwrap();
    let a = ch
        .call(&ToBridge::PutCredential(PutCredential {
            vault_id: "vlt_agent".into(),
            credential_id: "vcrd_tickets".into(),
            fields: [("token".to_owned(), WireSecret::new(token))].into(),
        }))
        .await
        .unwrap();
    assert_eq!(a, FromBridge::Relayed { held: true });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_bridge_and_server_call_at_most_once() {
    if !airlock_tests::mcp::sdk_installed() {
        eprintln!("skipped: the `mcp` Python SDK is not installed (scripts/setup.d/55-mcp.sh)");
        return;
    }
    let ca = TestCa::new("airlock mcp agent test CA").unwrap();
    let server = McpTestServer::tickets(Some(&ca)).unwrap();
    let mut bridge = Bridge::start(BridgeOptions {
        upstream_ca_files: vec![server.ca_file().unwrap().to_owned()],
        ..Default::default()
    })
    .unwrap();
    relay_token(&bridge, server.token()).await;
    let data = tempfile::tempdir().unwrap();
    let settings = bridge.agent_settings();
    let agent = McpAgent::open(
        data.path(),
        Duration::from_secs(3600),
        Some(&settings),
        None,
    )
    .unwrap();

    // tools/list through agent and bridge.
    let listed = agent
        .list_tools(McpListTools {
            session_id: "sesn_agent".into(),
            server: McpServer {
                name: "tickets".into(),
                url: server.url(),
            },
            credentials: vec![credential(&server.url())],
        })
        .await;
    match &listed.outcome {
        McpOutcome::Tools { tools } => {
            let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
            names.sort();
            assert_eq!(
                names,
                ["fail", "grow", "huge", "screenshot", "search", "slow"]
            );
        }
        other => panic!("{other:?}\n{}", bridge.log()),
    }

    // One call, then its repeat: the server sees it once.
    let args = json!({"query": "agent-once-5521", "limit": 1});
    let first = agent
        .call_tool(call(&server, "mcptoolu_a1", "search", args.clone()))
        .await;
    match &first.outcome {
        McpOutcome::Called { content, is_error } => {
            assert!(!is_error);
            assert!(content[0]["text"]
                .as_str()
                .unwrap()
                .contains("agent-once-5521"));
        }
        other => panic!("{other:?}\n{}", bridge.log()),
    }
    assert_eq!(first.credential_id.as_deref(), Some("vcrd_tickets"));
    let again = agent
        .call_tool(call(&server, "mcptoolu_a1", "search", args.clone()))
        .await;
    assert!(again.replayed);
    assert_eq!(again.outcome, first.outcome);
    assert_eq!(server.count_calls("search", &args).unwrap(), 1);

    // The bridge dies in the middle of a slow call.
    let slow_args = json!({"seconds": 4});
    let a2 = agent.clone();
    let slow = call(&server, "mcptoolu_a2", "slow", slow_args.clone());
    let pending = tokio::spawn(async move { a2.call_tool(slow).await });
    testkit::eventually(
        "the server got the slow call",
        Duration::from_secs(20),
        || server.count_calls("slow", &slow_args).unwrap() == 1,
    )
    .await;
    bridge.kill9().unwrap();
    let r = pending.await.unwrap();
    assert_eq!(failure(&r), McpFailure::OutcomeUnknown, "{r:?}");
    bridge.restart().unwrap();
    relay_token(&bridge, server.token()).await;
    let again = agent
        .call_tool(call(&server, "mcptoolu_a2", "slow", slow_args.clone()))
        .await;
    assert_eq!(failure(&again), McpFailure::OutcomeUnknown);
    assert!(again.replayed);
    // A new id works again through the restarted bridge.
    let fresh = agent
        .call_tool(call(
            &server,
            "mcptoolu_a3",
            "search",
            json!({"query": "after"}),
        ))
        .await;
    assert!(
        matches!(fresh.outcome, McpOutcome::Called { .. }),
        "{fresh:?}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(server.count_calls("slow", &slow_args).unwrap(), 1);

    // A policy that does not name the server's host.
    let denied_dir = tempfile::tempdir().unwrap();
    let strict = McpAgent::open(
        denied_dir.path(),
        Duration::from_secs(3600),
        Some(&settings),
        Some(vec!["*.corp".into()]),
    )
    .unwrap();
    let before = server.calls().unwrap().len();
    let r = strict
        .call_tool(call(
            &server,
            "mcptoolu_a4",
            "search",
            json!({"query": "x"}),
        ))
        .await;
    assert_eq!(failure(&r), McpFailure::PolicyDenied);
    assert_eq!(server.calls().unwrap().len(), before);

    // The audit chain: verified, no token; the arguments in the start lines
    // (scrubbed by the bridge), the results by digest only.
    sandbox_agent::audit::verify(&data.path().join("audit.jsonl")).unwrap();
    let audit = std::fs::read_to_string(data.path().join("audit.jsonl")).unwrap();
    assert!(!audit.contains(server.token()));
    assert!(audit.contains("agent-once-5521"));
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["phase"] != "start")
        .collect();
    let outcomes: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l["call"].as_str().unwrap(), l["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("mcp_list_tools", "ok"),
            ("mcp_call_tool", "ok"),
            ("mcp_call_tool", "replayed"),
            ("mcp_call_tool", "failed"),
            ("mcp_call_tool", "failed"),
            ("mcp_call_tool", "ok"),
        ]
    );
    assert_eq!(lines[1]["mcp"]["credential_id"], "vcrd_tickets");
    assert_eq!(lines[1]["mcp"]["host"], "127.0.0.1");
}
