//! MCP servers in agent definitions, session overrides and updates, tool
//! confirmations of MCP tool calls, and `mcp_oauth_validate`, through the
//! router with a real SQLite catalog and session store; every JSON response
//! is validated against `api/openapi.yaml`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{Api, RecordingRelay};
use http::Method;
use protocol::mcp::{McpProbe, McpValidation, ProbeHttpResponse, RefreshProbe};
use serde_json::{json, Value};
use session_store::{Fence, NewEvent};

const TOOLSET: &str = "agent_toolset_20260401";

fn server(name: &str, url: &str) -> Value {
    json!({"type": "url", "name": name, "url": url})
}

/// Two servers, their toolsets (one with per-tool configs) and the sandbox toolset.
fn mcp_agent() -> Value {
    json!({
        "name": "support", "model": "claude-sonnet-4-5",
        "mcp_servers": [server("tickets", "https://tickets.internal/mcp"), server("wiki", "http://10.1.2.3:8080/mcp")],
        "tools": [
            {"type": TOOLSET},
            {"type": "mcp_toolset", "mcp_server_name": "tickets",
             "default_config": {"permission_policy": {"type": "always_allow"}},
             "configs": [{"name": "close_ticket", "permission_policy": {"type": "always_ask"}},
                         {"name": "delete_ticket", "enabled": false}]},
            {"type": "mcp_toolset", "mcp_server_name": "wiki"}
        ]
    })
}

async fn session_of(api: &Api, agent: Value) -> Value {
    let env = api
        .environment(&format!("env-{}", common::uuid_like()))
        .await;
    api.post(
        "/v1/sessions",
        json!({"agent": agent, "environment_id": env["id"]}),
    )
    .await
}

#[tokio::test]
async fn agents_carry_mcp_servers_and_resolved_toolsets_across_versions() {
    let api = Api::new().await;
    let a = api.agent(mcp_agent()).await;
    let id = a["id"].as_str().unwrap().to_owned();
    assert_eq!(
        a["mcp_servers"],
        json!([
            server("tickets", "https://tickets.internal/mcp"),
            server("wiki", "http://10.1.2.3:8080/mcp")
        ])
    );
    assert_eq!(
        a["tools"][1],
        json!({"type": "mcp_toolset", "mcp_server_name": "tickets",
            "default_config": {"enabled": true, "permission_policy": {"type": "always_allow"}},
            "configs": [
                {"name": "close_ticket", "enabled": true, "permission_policy": {"type": "always_ask"}},
                {"name": "delete_ticket", "enabled": false, "permission_policy": {"type": "always_allow"}}]})
    );
    assert_eq!(
        a["tools"][2],
        json!({"type": "mcp_toolset", "mcp_server_name": "wiki",
            "default_config": {"enabled": true, "permission_policy": {"type": "always_ask"}},
            "configs": []})
    );
    assert_eq!(a["tools"][0]["type"], json!(TOOLSET));
    assert_eq!(api.get(&format!("/v1/agents/{id}")).await, a);

    // replace the servers and tools together: a new version
    let v2 = api
        .post(
            &format!("/v1/agents/{id}"),
            json!({"version": 1, "mcp_servers": [server("wiki", "https://wiki.internal/mcp")],
                   "tools": [{"type": "mcp_toolset", "mcp_server_name": "wiki",
                              "default_config": {"enabled": false},
                              "configs": [{"name": "search", "enabled": true}]}]}),
        )
        .await;
    assert_eq!(v2["version"], json!(2));
    assert_eq!(
        v2["mcp_servers"],
        json!([server("wiki", "https://wiki.internal/mcp")])
    );
    assert_eq!(
        v2["tools"],
        json!([{"type": "mcp_toolset", "mcp_server_name": "wiki",
            "default_config": {"enabled": false, "permission_policy": {"type": "always_ask"}},
            "configs": [{"name": "search", "enabled": true, "permission_policy": {"type": "always_ask"}}]}])
    );
    // the first version is untouched
    let v1 = api.get(&format!("/v1/agents/{id}?version=1")).await;
    assert_eq!(v1["mcp_servers"], a["mcp_servers"]);
    assert_eq!(v1["tools"], a["tools"]);
    // an update of another field keeps them
    let v3 = api
        .post(&format!("/v1/agents/{id}"), json!({"name": "support-2"}))
        .await;
    assert_eq!(v3["version"], json!(3));
    assert_eq!(v3["mcp_servers"], v2["mcp_servers"]);
    assert_eq!(v3["tools"], v2["tools"]);
    // clearing the servers alone leaves a toolset without its server
    api.expect_error(
        Method::POST,
        &format!("/v1/agents/{id}"),
        Some(json!({"mcp_servers": null})),
        400,
        "invalid_request_error",
        "tools.0.mcp_server_name: no MCP server named \"wiki\" (mcp_servers is empty)",
    )
    .await;
    // both cleared: fine
    let v4 = api
        .post(
            &format!("/v1/agents/{id}"),
            json!({"mcp_servers": [], "tools": null}),
        )
        .await;
    assert_eq!(v4["mcp_servers"], json!([]));
    assert_eq!(v4["tools"], json!([]));
    let versions = api.get(&format!("/v1/agents/{id}/versions")).await;
    assert_eq!(versions["data"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn bad_mcp_definitions_name_the_field() {
    let api = Api::new().await;
    let with = |patch: Value| {
        let mut a = mcp_agent();
        for (k, v) in patch.as_object().unwrap() {
            a[k] = v.clone();
        }
        a
    };
    let too_many: Vec<Value> = (0..21)
        .map(|i| server(&format!("s{i}"), "https://a.internal/"))
        .collect();
    let cases = [
        (
            with(
                json!({"tools": [{"type": TOOLSET}, {"type": "mcp_toolset", "mcp_server_name": "tickets"}]}),
            ),
            "mcp_servers.1.name: MCP server \"wiki\" is not referenced by any mcp_toolset in tools",
        ),
        (
            with(json!({"mcp_servers": [server("tickets", "https://tickets.internal/mcp")]})),
            "tools.2.mcp_server_name: no MCP server named \"wiki\" (mcp_servers defines tickets)",
        ),
        (
            with(
                json!({"tools": [{"type": "mcp_toolset", "mcp_server_name": "wiki"},
                                  {"type": "mcp_toolset", "mcp_server_name": "tickets"},
                                  {"type": "mcp_toolset", "mcp_server_name": "wiki"}]}),
            ),
            "tools.2.mcp_server_name: MCP server \"wiki\" is already configured by tools.0",
        ),
        (
            with(
                json!({"mcp_servers": [server("tickets", "https://a.internal/"), server("tickets", "https://b.internal/")]}),
            ),
            "mcp_servers.1.name: MCP server name \"tickets\" is already used by mcp_servers.0",
        ),
        (
            with(
                json!({"mcp_servers": [server("tickets", "wss://a.internal/"), server("wiki", "https://b.internal/")]}),
            ),
            "mcp_servers.0.url: expected an http or https URL",
        ),
        (
            with(json!({"mcp_servers": [{"type": "stdio", "name": "x", "command": "npx"}]})),
            "mcp_servers.0.type: unknown MCP server type \"stdio\"; expected url",
        ),
        (
            with(
                json!({"mcp_servers": [{"type": "url", "name": "x", "url": "https://x/", "authorization_token": "t"}]}),
            ),
            "mcp_servers.0.authorization_token: unknown field",
        ),
        (
            with(json!({"mcp_servers": too_many})),
            "mcp_servers: at most 20 MCP servers are allowed, got 21",
        ),
        (
            with(
                json!({"tools": [{"type": "mcp_toolset", "mcp_server_name": "tickets",
                "configs": [{"name": "x", "permission_policy": {"type": "sometimes"}}]}]}),
            ),
            "tools.0.configs.0.permission_policy.type: unknown permission policy \"sometimes\"",
        ),
        (
            with(
                json!({"tools": [{"type": "mcp_toolset", "mcp_server_name": "tickets", "configs": [{"name": ""}]}]}),
            ),
            "tools.0.configs.0.name: must be 1 to 128 characters",
        ),
        (
            with(
                json!({"tools": [{"type": "mcp_toolset", "mcp_server_name": "tickets", "configs": [{"name": "a"}, {"name": "a"}]}]}),
            ),
            "tools.0.configs.1.name: tool \"a\" is configured twice",
        ),
        (
            with(json!({"tools": [{"type": "mcp_toolset"}]})),
            "tools.0.mcp_server_name: field required",
        ),
    ];
    for (body, message) in cases {
        api.expect_error(
            Method::POST,
            "/v1/agents",
            Some(body),
            400,
            "invalid_request_error",
            message,
        )
        .await;
    }
    assert!(api.get("/v1/agents").await["data"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn sessions_override_and_update_mcp_servers_whole() {
    let api = Api::new().await;
    let a = api.agent(mcp_agent()).await;
    let id = a["id"].as_str().unwrap();

    // a plain reference snapshots the agent's servers and toolsets
    let s = session_of(&api, json!(id)).await;
    assert_eq!(s["agent"]["mcp_servers"], a["mcp_servers"]);
    assert_eq!(s["agent"]["tools"], a["tools"]);

    // overrides replace tools and servers whole; the agent is unchanged
    let o = session_of(
        &api,
        json!({"type": "agent_with_overrides", "id": id, "version": 1, "system": "be careful",
               "mcp_servers": [server("db", "http://127.0.0.1:7000/mcp")],
               "tools": [{"type": "mcp_toolset", "mcp_server_name": "db",
                          "configs": [{"name": "query", "permission_policy": {"type": "always_allow"}}]}]}),
    )
    .await;
    assert_eq!(o["agent"]["id"], json!(id));
    assert_eq!(o["agent"]["version"], json!(1));
    assert_eq!(o["agent"]["system"], json!("be careful"));
    assert_eq!(
        o["agent"]["mcp_servers"],
        json!([server("db", "http://127.0.0.1:7000/mcp")])
    );
    assert_eq!(
        o["agent"]["tools"],
        json!([{"type": "mcp_toolset", "mcp_server_name": "db",
            "default_config": {"enabled": true, "permission_policy": {"type": "always_ask"}},
            "configs": [{"name": "query", "enabled": true, "permission_policy": {"type": "always_allow"}}]}])
    );
    assert_eq!(api.get(&format!("/v1/agents/{id}")).await, a);

    // empty overrides clear both
    let cleared = session_of(
        &api,
        json!({"type": "agent_with_overrides", "id": id, "mcp_servers": [], "tools": []}),
    )
    .await;
    assert_eq!(cleared["agent"]["mcp_servers"], json!([]));
    assert_eq!(cleared["agent"]["tools"], json!([]));

    // overriding one leaves the agent's other, which must still match
    let env = api.environment("env-bad-overrides").await;
    for (agent, message) in [
        (
            json!({"type": "agent_with_overrides", "id": id, "tools": [{"type": TOOLSET}]}),
            "agent.mcp_servers.0.name: MCP server \"tickets\" is not referenced by any mcp_toolset in agent.tools",
        ),
        (
            json!({"type": "agent_with_overrides", "id": id, "mcp_servers": []}),
            "agent.tools.1.mcp_server_name: no MCP server named \"tickets\" (agent.mcp_servers is empty)",
        ),
        (
            json!({"type": "agent_with_overrides", "id": id, "mcp_servers": [server("x", "gopher://x/")]}),
            "agent.mcp_servers.0.url:",
        ),
        (
            json!({"type": "agent_with_overrides", "id": id, "name": "renamed"}),
            "agent.name: unknown field",
        ),
    ] {
        api.expect_error(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent": agent, "environment_id": env["id"]})),
            400,
            "invalid_request_error",
            message,
        )
        .await;
    }

    // session update: agent.tools and agent.mcp_servers replaced whole while idle
    let sid = s["id"].as_str().unwrap();
    let u = api
        .post(
            &format!("/v1/sessions/{sid}"),
            json!({"agent": {"mcp_servers": [server("wiki", "https://wiki2.internal/mcp")],
                              "tools": [{"type": TOOLSET}, {"type": "mcp_toolset", "mcp_server_name": "wiki"}]}}),
        )
        .await;
    assert_eq!(
        u["agent"]["mcp_servers"],
        json!([server("wiki", "https://wiki2.internal/mcp")])
    );
    assert_eq!(u["agent"]["tools"].as_array().unwrap().len(), 2);
    assert_eq!(
        api.get(&format!("/v1/sessions/{sid}")).await["agent"],
        u["agent"]
    );
    api.expect_error(
        Method::POST,
        &format!("/v1/sessions/{sid}"),
        Some(json!({"agent": {"mcp_servers": [server("wiki", "https://wiki2.internal/mcp"), server("extra", "https://x.internal/")]}})),
        400,
        "invalid_request_error",
        "agent.mcp_servers.1.name: MCP server \"extra\" is not referenced",
    )
    .await;
    api.expect_error(
        Method::POST,
        &format!("/v1/sessions/{sid}"),
        Some(json!({"agent": {"tools": []}})),
        400,
        "invalid_request_error",
        "agent.mcp_servers.0.name:",
    )
    .await;
    // the refused updates changed nothing
    assert_eq!(
        api.get(&format!("/v1/sessions/{sid}")).await["agent"],
        u["agent"]
    );

    // not while running
    api.store
        .update_session(
            sid,
            session_store::SessionUpdate {
                status: Some(session_store::SessionStatus::Running),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    api.expect_error(
        Method::POST,
        &format!("/v1/sessions/{sid}"),
        Some(json!({"agent": {"mcp_servers": [], "tools": []}})),
        400,
        "invalid_request_error",
        "agent: session",
    )
    .await;
}

#[tokio::test]
async fn confirmations_may_name_an_mcp_tool_use_that_asked() {
    let api = Api::new().await;
    let a = api.agent(mcp_agent()).await;
    let s = session_of(&api, a["id"].clone()).await;
    let sid = s["id"].as_str().unwrap().to_owned();
    let stored = api
        .store
        .append(&sid, vec![
            NewEvent::processed(json!({"type": "agent.mcp_tool_use", "mcp_server_name": "tickets", "name": "close_ticket",
                "input": {"id": 7}, "evaluated_permission": "ask", "evaluation": {"type": "always_ask"}})),
            NewEvent::processed(json!({"type": "agent.mcp_tool_use", "mcp_server_name": "wiki", "name": "search",
                "input": {"q": "x"}, "evaluated_permission": "allow", "evaluation": {"type": "always_allow"}})),
            NewEvent::processed(json!({"type": "agent.mcp_tool_result", "mcp_tool_use_id": "sevt_x",
                "content": [{"type": "text", "text": "found"}], "is_error": false})),
        ], Fence::None)
        .await
        .unwrap();
    let (ask, allowed, result) = (&stored[0].id, &stored[1].id, &stored[2].id);
    let path = format!("/v1/sessions/{sid}/events");
    let ok = api
        .post(
            &path,
            json!({"events": [{"type": "user.tool_confirmation", "tool_use_id": ask, "result": "allow"}]}),
        )
        .await;
    assert_eq!(ok["data"][0]["tool_use_id"], json!(ask));
    assert_eq!(ok["data"][0]["result"], json!("allow"));
    api.expect_error(
        Method::POST,
        &path,
        Some(json!({"events": [{"type": "user.tool_confirmation", "tool_use_id": allowed, "result": "allow"}]})),
        400,
        "invalid_request_error",
        &format!("events.0.tool_use_id: tool use {allowed} does not await a confirmation"),
    )
    .await;
    api.expect_error(
        Method::POST,
        &path,
        Some(json!({"events": [{"type": "user.tool_confirmation", "tool_use_id": result, "result": "deny"}]})),
        400,
        "invalid_request_error",
        &format!("events.0.tool_use_id: event {result} is a agent.mcp_tool_result, not an agent.tool_use or agent.mcp_tool_use"),
    )
    .await;
    // the MCP events list with the documented shapes
    let listed = api.get(&path).await;
    let types: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(types.contains(&"agent.mcp_tool_use") && types.contains(&"agent.mcp_tool_result"));
}

#[tokio::test]
async fn mcp_oauth_validate_answers_the_bridges_verdict() {
    let relay = Arc::new(RecordingRelay::default());
    let api = Api::with_relay(relay.clone()).await;
    let env = api.environment("env-validate").await;
    let env_id = env["id"].as_str().unwrap();
    let v = api
        .post(
            "/v1/vaults",
            json!({"display_name": "mcp", "metadata": {"airlock.environment_id": env_id}}),
        )
        .await;
    let vid = v["id"].as_str().unwrap();
    let c = api
        .post(
            &format!("/v1/vaults/{vid}/credentials"),
            json!({"auth": {"type": "mcp_oauth", "mcp_server_url": "https://tickets.internal/mcp", "access_token": "canary-at",
                   "refresh": {"client_id": "cid", "refresh_token": "canary-rt", "token_endpoint": "https://idp.internal/token",
                               "token_endpoint_auth": {"type": "none"}}}}),
        )
        .await;
    let cid = c["id"].as_str().unwrap();
    let path = format!("/v1/vaults/{vid}/credentials/{cid}/mcp_oauth_validate");

    *relay.validation.lock().unwrap() = Some(McpValidation {
        status: "invalid".into(),
        has_refresh_token: true,
        mcp_probe: Some(McpProbe {
            method: "initialize".into(),
            http_response: Some(ProbeHttpResponse {
                status_code: 401,
                content_type: None,
                body: "é".repeat(3000),
                body_truncated: false,
            }),
        }),
        refresh: Some(RefreshProbe {
            status: "failed".into(),
            http_response: Some(ProbeHttpResponse {
                status_code: 400,
                content_type: Some("application/json".into()),
                body: r#"{"error":"invalid_grant"}"#.into(),
                body_truncated: false,
            }),
        }),
    });
    let r = api.post(&path, json!({})).await;
    assert_eq!(r["type"], json!("vault_credential_validation"));
    assert_eq!(r["credential_id"], json!(cid));
    assert_eq!(r["vault_id"], json!(vid));
    assert!(r["validated_at"].is_string());
    assert_eq!(r["status"], json!("invalid"));
    assert_eq!(r["has_refresh_token"], json!(true));
    assert_eq!(r["mcp_probe"]["method"], json!("initialize"));
    let probe = &r["mcp_probe"]["http_response"];
    assert_eq!(probe["status_code"], json!(401));
    assert_eq!(probe["content_type"], json!(""));
    assert_eq!(probe["body_truncated"], json!(true));
    let body = probe["body"].as_str().unwrap();
    assert!(body.len() <= 4096 && body.len() > 4090, "{}", body.len());
    assert_eq!(
        r["refresh"],
        json!({"status": "failed", "http_response": {"status_code": 400, "content_type": "application/json",
            "body": "{\"error\":\"invalid_grant\"}", "body_truncated": false}})
    );
    // the relay got the target and the stored metadata, never a secret
    let (target, stored) = relay.validations.lock().unwrap().last().cloned().unwrap();
    assert_eq!(target.environment_id, env_id);
    assert_eq!(target.credential_id, cid);
    assert_eq!(
        stored["auth"]["mcp_server_url"],
        json!("https://tickets.internal/mcp")
    );
    assert!(!stored.to_string().contains("canary"));
    assert!(!r.to_string().contains("canary"));

    // a passing probe: no step failed, no refresh tried
    *relay.validation.lock().unwrap() = Some(McpValidation {
        status: "valid".into(),
        has_refresh_token: true,
        mcp_probe: None,
        refresh: None,
    });
    let r = api.post(&path, json!({})).await;
    assert_eq!(
        (&r["status"], &r["mcp_probe"], &r["refresh"]),
        (&json!("valid"), &Value::Null, &Value::Null)
    );

    // an unpinned vault has no bridge to ask
    let loose = api
        .post("/v1/vaults", json!({"display_name": "loose"}))
        .await;
    let lid = loose["id"].as_str().unwrap();
    let lc = api
        .post(
            &format!("/v1/vaults/{lid}/credentials"),
            json!({"metadata": {"airlock.kv_path": "team/wiki"},
                   "auth": {"type": "static_bearer", "mcp_server_url": "https://wiki.internal/mcp"}}),
        )
        .await;
    let r = api
        .expect_error(
            Method::POST,
            &format!(
                "/v1/vaults/{lid}/credentials/{}/mcp_oauth_validate",
                lc["id"].as_str().unwrap()
            ),
            None,
            503,
            "api_error",
            &format!("vault {lid} is not pinned to an environment"),
        )
        .await;
    assert_eq!(
        r.body["error"]["details"]["error_code"],
        json!("vault_bridge_unavailable")
    );

    // archived credentials are not probed
    api.post(
        &format!("/v1/vaults/{vid}/credentials/{cid}/archive"),
        json!({}),
    )
    .await;
    let calls = relay.validations.lock().unwrap().len();
    api.expect_error(
        Method::POST,
        &path,
        None,
        400,
        "invalid_request_error",
        &format!("credential {cid} is archived"),
    )
    .await;
    assert_eq!(relay.validations.lock().unwrap().len(), calls);
}
