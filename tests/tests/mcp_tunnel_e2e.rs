//! MCP tunnel calls end to end: control plane (in-process gateway) → tunnel
//! → `sandbox-agent run` (real binary, enrolled, `[bridge]` and
//! `[policy] mcp_hosts`) → `vault-bridge serve` (real) → the `tickets` MCP
//! server (official `mcp` SDK, HTTPS, static bearer relayed to the bridge):
//!
//! - `mcp_list_tools` and `mcp_call_tool` answered as `Reply::Mcp`, the
//!   repeat `replayed` across the wire, the server saw one call;
//! - a host outside `mcp_hosts`: `policy_denied` naming the rule;
//! - the agent SIGKILLed during a slow call: after its restart the same
//!   `tool_use_id` is `outcome_unknown` and the MCP server saw the call once;
//! - the agent's audit chain verifies and names the calls, without the token
//!   or the arguments;
//! - the control plane going away during a slow call (its tunnel connection
//!   dropped): the agent still records the bridge's reply, and the call
//!   re-sent through the restarted control plane gets it `replayed`; the
//!   server saw the call once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use airlock_tests::bridge::{Bridge, BridgeOptions, Channel};
use airlock_tests::deploy::{
    tail, Agent, AgentOptions, ControlPlane, CpOptions, InProcessControlPlane,
};
use airlock_tests::mcp::{McpTestServer, TestCa};
use control_plane::gateway::Target;
use protocol::bridge::{FromBridge, ToBridge};
use protocol::mcp::{McpCallTool, McpFailure, McpListTools, McpOutcome, McpReply, McpServer};
use protocol::relay::{CredentialBinding, EgressCredential, PutCredential, WireSecret};
use protocol::{Reply, Request, Response};
use serde_json::{json, Value};

fn credential(url: &str) -> EgressCredential {
    EgressCredential {
        http_auth: Default::default(),
        vault_id: "vlt_e2e".into(),
        credential_id: "vcrd_e2e_tickets".into(),
        kv_path: None,
        binding: CredentialBinding::StaticBearer {
            mcp_server_url: url.into(),
        },
    }
}

fn call(url: &str, id: &str, tool: &str, arguments: Value) -> Request {
    Request::McpCallTool(McpCallTool {
        session_id: "sesn_mcp_e2e".into(),
        tool_use_id: id.into(),
        server: McpServer {
            name: "tickets".into(),
            url: url.into(),
        },
        credentials: vec![credential(url)],
        tool: tool.into(),
        arguments,
    })
}

fn mcp_reply(r: Response, agent: &Agent, bridge: &Bridge) -> McpReply {
    match r {
        Response::Ok(Reply::Mcp { reply, .. }) => reply,
        other => panic!(
            "not an MCP reply: {other:?}\nagent:\n{}\nbridge:\n{}",
            tail(&agent.log(), 30),
            tail(&bridge.log(), 30)
        ),
    }
}

fn failure(r: &McpReply) -> (McpFailure, String) {
    match &r.outcome {
        McpOutcome::Failed { failure, message } => (failure.clone(), message.clone()),
        other => panic!("want a failure: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_calls_cross_control_plane_tunnel_agent_and_bridge() {
    if !airlock_tests::mcp::sdk_installed() {
        eprintln!("skipped: the `mcp` Python SDK is not installed (scripts/setup.d/55-mcp.sh)");
        return;
    }
    let ca = TestCa::new("airlock mcp e2e CA").unwrap();
    let server = McpTestServer::tickets(Some(&ca)).unwrap();
    let bridge = Bridge::start(BridgeOptions {
        upstream_ca_files: vec![server.ca_file().unwrap().to_owned()],
        ..Default::default()
    })
    .unwrap();
    let mut ch = Channel::connect(&bridge.socket_path()).await.unwrap();
    let relayed = ch
        .call(&ToBridge::PutCredential(PutCredential {
            vault_id: "vlt_e2e".into(),
            credential_id: "vcrd_e2e_tickets".into(),
            fields: [("token".to_owned(), WireSecret::new(server.token()))].into(),
        }))
        .await
        .unwrap();
    assert_eq!(relayed, FromBridge::Relayed { held: true });

    let cp = ControlPlane::configure(CpOptions::default()).unwrap();
    let app = InProcessControlPlane::start(&cp).await.unwrap();
    let join = cp.join_string("env-mcp-e2e").unwrap();
    let mut agent = Agent::enroll(&cp, &join, AgentOptions::default()).unwrap();
    let mut config = std::fs::read_to_string(agent.config_path()).unwrap();
    config.push_str(&bridge.agent_toml());
    config.push_str("\n[policy]\nmcp_hosts = [\"127.0.0.1\", \"*.corp\"]\n");
    std::fs::write(agent.config_path(), config).unwrap();
    agent.run().unwrap();
    app.wait_connected(agent.agent_id(), Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&agent.log(), 30)));
    let target = Target::Agent(agent.agent_id().into());
    let gw = app.gateway();

    // tools/list through the whole path.
    let (_, r) = gw
        .call_unary(
            &target,
            &Request::McpListTools(McpListTools {
                session_id: "sesn_mcp_e2e".into(),
                server: McpServer {
                    name: "tickets".into(),
                    url: server.url(),
                },
                credentials: vec![credential(&server.url())],
            }),
        )
        .await
        .unwrap();
    match mcp_reply(r, &agent, &bridge).outcome {
        McpOutcome::Tools { tools } => assert_eq!(tools.len(), 6, "{tools:?}"),
        other => panic!("{other:?}"),
    }

    // A call and its repeat.
    let args = json!({"query": "e2e-once-9917"});
    let (_, r) = gw
        .call_unary(
            &target,
            &call(&server.url(), "mcptoolu_e1", "search", args.clone()),
        )
        .await
        .unwrap();
    let first = mcp_reply(r, &agent, &bridge);
    assert!(
        matches!(
            &first.outcome,
            McpOutcome::Called {
                is_error: false,
                ..
            }
        ),
        "{first:?}"
    );
    assert_eq!(first.credential_id.as_deref(), Some("vcrd_e2e_tickets"));
    let (_, r) = gw
        .call_unary(
            &target,
            &call(&server.url(), "mcptoolu_e1", "search", args.clone()),
        )
        .await
        .unwrap();
    let again = mcp_reply(r, &agent, &bridge);
    assert!(again.replayed);
    assert_eq!(again.outcome, first.outcome);
    assert_eq!(server.count_calls("search", &args).unwrap(), 1);

    // The server's image comes back as an Anthropic image block.
    let (_, r) = gw
        .call_unary(
            &target,
            &call(&server.url(), "mcptoolu_e2", "screenshot", json!({})),
        )
        .await
        .unwrap();
    match mcp_reply(r, &agent, &bridge).outcome {
        McpOutcome::Called { content, .. } => {
            assert_eq!(content[0]["type"], "image", "{content:?}");
            assert_eq!(content[0]["source"]["media_type"], "image/png");
        }
        other => panic!("{other:?}"),
    }

    // Outside the agent's mcp_hosts.
    let denied_url = server.url().replace("127.0.0.1", "localhost");
    let (_, r) = gw
        .call_unary(
            &target,
            &call(&denied_url, "mcptoolu_e3", "search", json!({"query": "no"})),
        )
        .await
        .unwrap();
    let (f, m) = failure(&mcp_reply(r, &agent, &bridge));
    assert_eq!(f, McpFailure::PolicyDenied);
    assert!(m.contains("policy.mcp_hosts"), "{m}");
    assert_eq!(
        server
            .count_calls("search", &json!({"query": "no"}))
            .unwrap(),
        0
    );

    // The agent dies during a slow call; after its restart the call is
    // outcome_unknown and is not made again.
    let slow = json!({"seconds": 5});
    let gw2 = app.gateway().clone();
    let (t2, req) = (
        target.clone(),
        call(&server.url(), "mcptoolu_e4", "slow", slow.clone()),
    );
    let pending = tokio::spawn(async move { gw2.call_unary(&t2, &req).await });
    testkit::eventually(
        "the server got the slow call",
        Duration::from_secs(20),
        || server.count_calls("slow", &slow).unwrap() == 1,
    )
    .await;
    agent.kill9().unwrap();
    let lost = pending.await.unwrap();
    assert!(
        !matches!(&lost, Ok((_, Response::Ok(Reply::Mcp { reply, .. }))) if matches!(reply.outcome, McpOutcome::Called { .. })),
        "a result arrived from a killed agent: {lost:?}"
    );
    agent.run().unwrap();
    let (_, r) = testkit::eventually_async(
        "a call through the restarted agent",
        Duration::from_secs(30),
        || {
            let gw = app.gateway().clone();
            let (t, req) = (
                target.clone(),
                call(&server.url(), "mcptoolu_e4", "slow", json!({"seconds": 5})),
            );
            async move { gw.call_unary(&t, &req).await.ok() }
        },
    )
    .await;
    let unknown = mcp_reply(r, &agent, &bridge);
    let (f, m) = failure(&unknown);
    assert_eq!(f, McpFailure::OutcomeUnknown, "{m}");
    assert!(unknown.replayed);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        server.count_calls("slow", &slow).unwrap(),
        1,
        "the MCP server saw the call twice"
    );

    // The audit chain.
    let data = agent.config_path().parent().unwrap().join("data");
    sandbox_agent::audit::verify(&data.join("audit.jsonl")).unwrap();
    let audit = std::fs::read_to_string(data.join("audit.jsonl")).unwrap();
    assert!(
        !audit.contains(server.token()),
        "token in the agent's audit"
    );
    assert!(
        audit.contains("e2e-once-9917"),
        "the arguments in the agent's audit (start line)"
    );
    let mcp_lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l.get("mcp").is_some() && l["phase"] != "start")
        .collect();
    let summary: Vec<(String, String)> = mcp_lines
        .iter()
        .map(|l| {
            (
                l["call"].as_str().unwrap().to_owned(),
                l["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary[..5],
        [
            ("mcp_list_tools".to_owned(), "ok".to_owned()),
            ("mcp_call_tool".to_owned(), "ok".to_owned()),
            ("mcp_call_tool".to_owned(), "replayed".to_owned()),
            ("mcp_call_tool".to_owned(), "ok".to_owned()),
            ("mcp_call_tool".to_owned(), "refused".to_owned()),
        ],
        "{audit}"
    );
    assert_eq!(
        summary.last().unwrap(),
        &("mcp_call_tool".to_owned(), "failed".to_owned())
    );
    assert_eq!(
        mcp_lines.last().unwrap()["mcp"]["failure"],
        "outcome_unknown"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_outliving_its_control_plane_is_replayed_after_the_restart() {
    if !airlock_tests::mcp::sdk_installed() {
        eprintln!("skipped: the `mcp` Python SDK is not installed (scripts/setup.d/55-mcp.sh)");
        return;
    }
    let ca = TestCa::new("airlock mcp e2e CA").unwrap();
    let server = McpTestServer::tickets(Some(&ca)).unwrap();
    let bridge = Bridge::start(BridgeOptions {
        upstream_ca_files: vec![server.ca_file().unwrap().to_owned()],
        ..Default::default()
    })
    .unwrap();
    let mut ch = Channel::connect(&bridge.socket_path()).await.unwrap();
    ch.call(&ToBridge::PutCredential(PutCredential {
        vault_id: "vlt_e2e".into(),
        credential_id: "vcrd_e2e_tickets".into(),
        fields: [("token".to_owned(), WireSecret::new(server.token()))].into(),
    }))
    .await
    .unwrap();
    let cp = ControlPlane::configure(CpOptions::default()).unwrap();
    let app = InProcessControlPlane::start(&cp).await.unwrap();
    let join = cp.join_string("env-mcp-e2e-cp").unwrap();
    let mut agent = Agent::enroll(&cp, &join, AgentOptions::default()).unwrap();
    let mut config = std::fs::read_to_string(agent.config_path()).unwrap();
    config.push_str(&bridge.agent_toml());
    std::fs::write(agent.config_path(), config).unwrap();
    agent.run().unwrap();
    app.wait_connected(agent.agent_id(), Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&agent.log(), 30)));
    let target = Target::Agent(agent.agent_id().into());

    let slow = json!({"seconds": 8});
    let gw = app.gateway().clone();
    let (t, req) = (
        target.clone(),
        call(&server.url(), "mcptoolu_cp1", "slow", slow.clone()),
    );
    let pending = tokio::spawn(async move { gw.call_unary(&t, &req).await });
    testkit::eventually(
        "the server got the slow call",
        Duration::from_secs(20),
        || server.count_calls("slow", &slow).unwrap() == 1,
    )
    .await;
    // The control plane goes away (its tunnel connection with it).
    app.stop().await;
    let lost = pending.await.unwrap();
    assert!(
        !matches!(&lost, Ok((_, Response::Ok(Reply::Mcp { .. })))),
        "the reply crossed a stopped control plane: {lost:?}"
    );
    let app = InProcessControlPlane::start(&cp).await.unwrap();
    app.wait_connected(agent.agent_id(), Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&agent.log(), 30)));
    let (_, r) = testkit::eventually_async(
        "the re-sent call through the restarted control plane",
        Duration::from_secs(30),
        || {
            let gw = app.gateway().clone();
            let (t, req) = (
                target.clone(),
                call(&server.url(), "mcptoolu_cp1", "slow", json!({"seconds": 8})),
            );
            async move { gw.call_unary(&t, &req).await.ok() }
        },
    )
    .await;
    let reply = mcp_reply(r, &agent, &bridge);
    assert!(reply.replayed, "{reply:?}");
    match &reply.outcome {
        McpOutcome::Called { content, is_error } => {
            assert!(!is_error);
            assert_eq!(content[0]["text"], "slept 8.0 s");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        server.count_calls("slow", &json!({"seconds": 8})).unwrap(),
        1
    );
    app.stop().await;
}
