//! The API driven through its router with a real SQLite catalog and session
//! store; every JSON response is validated against `api/openapi.yaml`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use api::ApiLimits;
use common::{user_message, Api, SseReader};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use session_store::{EventSelector, Fence, NewEvent};
use tower::ServiceExt;

#[tokio::test]
async fn agents_create_retrieve_update_versions_archive() {
    let api = Api::new().await;
    let a = api
        .agent(json!({
            "name": "coder", "model": {"id": "claude-sonnet-4-5", "effort": "high"}, "system": "be brief",
            "metadata": {"team": "infra"},
            "tools": [{"type": "agent_toolset_20260401",
                       "default_config": {"permission_policy": {"type": "always_ask"}},
                       "configs": [{"name": "read", "permission_policy": {"type": "always_allow"}}]}]
        }))
        .await;
    let id = a["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("agent_"));
    assert_eq!(a["version"], json!(1));
    assert_eq!(
        a["model"],
        json!({"id": "claude-sonnet-4-5", "effort": {"type": "high"}})
    );
    assert_eq!(
        a["tools"][0]["configs"][0]["permission_policy"],
        json!({"type": "always_allow"})
    );
    assert_eq!(
        a["tools"][0]["default_config"]["permission_policy"],
        json!({"type": "always_ask"})
    );
    assert_eq!(api.get(&format!("/v1/agents/{id}")).await, a);

    // an update is a new version; the old one stays as it was
    let b = api
        .post(
            &format!("/v1/agents/{id}"),
            json!({"system": null, "metadata": {"team": null, "x": "1"}, "version": 1}),
        )
        .await;
    assert_eq!(b["version"], json!(2));
    assert_eq!(b["system"], Value::Null);
    assert_eq!(b["metadata"], json!({"x": "1"}));
    assert_eq!(b["created_at"], a["created_at"]);
    assert_eq!(api.get(&format!("/v1/agents/{id}?version=1")).await, a);
    // an update that changes nothing makes no version
    let same = api
        .post(&format!("/v1/agents/{id}"), json!({"name": "coder"}))
        .await;
    assert_eq!(same["version"], json!(2));
    // a stale precondition is a conflict, typed as the hosted API types it
    let r = api
        .expect_error(
            Method::POST,
            &format!("/v1/agents/{id}"),
            Some(json!({"name": "n", "version": 1})),
            409,
            "invalid_request_error",
            "agent ",
        )
        .await;
    assert_eq!(r.headers["x-should-retry"], "false");

    let versions = api.get(&format!("/v1/agents/{id}/versions")).await;
    let vs: Vec<_> = versions["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(vs, [2, 1]);
    let page = api.get(&format!("/v1/agents/{id}/versions?limit=1")).await;
    assert_eq!(page["data"][0]["version"], json!(2));
    let next = page["next_page"].as_str().unwrap();
    let page2 = api
        .get(&format!("/v1/agents/{id}/versions?limit=1&page={next}"))
        .await;
    assert_eq!(page2["data"][0]["version"], json!(1));
    assert_eq!(page2["next_page"], Value::Null);

    let archived = api
        .post(&format!("/v1/agents/{id}/archive"), json!({}))
        .await;
    assert!(archived["archived_at"].is_string());
    api.expect_error(
        Method::POST,
        &format!("/v1/agents/{id}"),
        Some(json!({"name": "z"})),
        400,
        "invalid_request_error",
        "agent ",
    )
    .await;
    let listed = api.get("/v1/agents").await;
    assert!(listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["id"] != json!(id)));
    let listed = api.get("/v1/agents?include_archived=true").await;
    assert!(listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["id"] == json!(id)));
    api.expect_error(
        Method::GET,
        &format!("/v1/agents/{id}?version=9"),
        None,
        404,
        "not_found_error",
        "agent ",
    )
    .await;
    api.expect_error(
        Method::GET,
        "/v1/agents/agent_missing",
        None,
        404,
        "not_found_error",
        "agent agent_missing",
    )
    .await;
}

#[tokio::test]
async fn agents_list_in_pages_newest_first() {
    let api = Api::new().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            api.agent(json!({"name": format!("a{i}"), "model": "m"}))
                .await["id"]
                .clone(),
        );
    }
    let mut seen = Vec::new();
    let mut page = api.get("/v1/agents?limit=2").await;
    loop {
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["id"].clone()),
        );
        match page["next_page"].as_str() {
            Some(p) => page = api.get(&format!("/v1/agents?limit=2&page={p}")).await,
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);
    // a cursor of another listing is refused naming `page`
    let p = api.get("/v1/agents?limit=1").await["next_page"]
        .as_str()
        .unwrap()
        .to_owned();
    api.expect_error(
        Method::GET,
        &format!("/v1/environments?page={p}"),
        None,
        400,
        "invalid_request_error",
        "page:",
    )
    .await;
    api.expect_error(
        Method::GET,
        "/v1/agents?limit=1000",
        None,
        400,
        "invalid_request_error",
        "limit:",
    )
    .await;
    api.expect_error(
        Method::GET,
        "/v1/agents?created_at[gte]=yesterday",
        None,
        400,
        "invalid_request_error",
        "created_at[gte]:",
    )
    .await;
    let future = api
        .get("/v1/agents?created_at%5Bgte%5D=2999-01-01T00:00:00Z")
        .await;
    assert_eq!(future["data"], json!([]));
}

#[tokio::test]
async fn environments_crud_with_unique_names() {
    let api = Api::new().await;
    let e = api
        .post(
            "/v1/environments",
            json!({"name": "prod", "description": "d", "metadata": {"a": "1"}}),
        )
        .await;
    let id = e["id"].as_str().unwrap().to_owned();
    assert_eq!(e["config"], json!({"type": "self_hosted"}));
    assert_eq!(api.get(&format!("/v1/environments/{id}")).await, e);
    let r = api
        .expect_error(
            Method::POST,
            "/v1/environments",
            Some(json!({"name": "prod"})),
            409,
            "invalid_request_error",
            "name:",
        )
        .await;
    assert_eq!(r.headers["x-should-retry"], "false");
    api.expect_error(
        Method::POST,
        "/v1/environments",
        Some(json!({"name": "c", "config": {"type": "cloud"}})),
        400,
        "invalid_request_error",
        "config.type: cloud environments are not available",
    )
    .await;
    let other = api.environment("staging").await;
    api.expect_error(
        Method::POST,
        &format!("/v1/environments/{}", other["id"].as_str().unwrap()),
        Some(json!({"name": "prod"})),
        409,
        "invalid_request_error",
        "name:",
    )
    .await;
    let u = api
        .post(
            &format!("/v1/environments/{id}"),
            json!({"metadata": {"a": null, "b": "2"}, "description": null}),
        )
        .await;
    assert_eq!(u["metadata"], json!({"b": "2"}));
    assert_eq!(u["description"], Value::Null);
    let list = api.get("/v1/environments").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    let archived = api
        .post(&format!("/v1/environments/{id}/archive"), json!({}))
        .await;
    assert!(archived["archived_at"].is_string());
    assert_eq!(
        api.get("/v1/environments").await["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        api.get("/v1/environments?include_archived=true").await["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let d = api
        .call(Method::DELETE, &format!("/v1/environments/{id}"), None)
        .await;
    assert_eq!(d.body, json!({"id": id, "type": "environment_deleted"}));
    api.expect_error(
        Method::GET,
        &format!("/v1/environments/{id}"),
        None,
        404,
        "not_found_error",
        "environment ",
    )
    .await;
    // the name is free again
    api.environment("prod").await;
}

#[tokio::test]
async fn sessions_lifecycle_pagination_and_filters() {
    let api = Api::new().await;
    let agent = api
        .agent(json!({"name": "a", "model": "m", "tools": [{"type": "agent_toolset_20260401"}]}))
        .await;
    let env = api.environment("e").await;
    let s = api
        .post("/v1/sessions", json!({"agent": agent["id"], "environment_id": env["id"], "title": "t", "metadata": {"k": "v"}}))
        .await;
    let sid = s["id"].as_str().unwrap().to_owned();
    assert_eq!(s["status"], json!("idle"));
    assert_eq!(s["agent"]["id"], agent["id"]);
    assert_eq!(
        s["agent"]["tools"], agent["tools"],
        "the snapshot carries the tools and their policies"
    );
    assert!(api.runner.0.lock().unwrap().is_empty(), "no input, no wake");
    assert_eq!(
        api.get(&format!("/v1/sessions/{sid}")).await["title"],
        json!("t")
    );

    // pinned version, and initial events wake the runner
    api.post(
        &format!("/v1/agents/{}", agent["id"].as_str().unwrap()),
        json!({"system": "v2"}),
    )
    .await;
    let pinned = api
        .post("/v1/sessions", json!({"agent": {"type": "agent", "id": agent["id"], "version": 1}, "environment_id": env["id"],
            "initial_events": [user_message("hello")]}))
        .await;
    assert_eq!(pinned["agent"]["version"], json!(1));
    assert_eq!(pinned["agent"]["system"], Value::Null);
    assert_eq!(
        api.runner.0.lock().unwrap().as_slice(),
        [pinned["id"].as_str().unwrap()]
    );
    let latest = api
        .post(
            "/v1/sessions",
            json!({"agent": agent["id"], "environment_id": env["id"]}),
        )
        .await;
    assert_eq!(latest["agent"]["version"], json!(2));
    let events = api
        .get(&format!(
            "/v1/sessions/{}/events",
            pinned["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(events["data"][0]["type"], json!("user.message"));
    assert_eq!(events["data"][0]["processed_at"], Value::Null);

    // list: newest first, pages both ways, filters
    let all = api.get("/v1/sessions").await;
    let ids: Vec<_> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(
        ids,
        [latest["id"].clone(), pinned["id"].clone(), s["id"].clone()]
    );
    let p1 = api.get("/v1/sessions?limit=1").await;
    assert_eq!(p1["prev_page"], Value::Null);
    let p2 = api
        .get(&format!(
            "/v1/sessions?limit=1&page={}",
            p1["next_page"].as_str().unwrap()
        ))
        .await;
    assert_eq!(p2["data"][0]["id"], pinned["id"]);
    let back = api
        .get(&format!(
            "/v1/sessions?limit=1&page={}",
            p2["prev_page"].as_str().unwrap()
        ))
        .await;
    assert_eq!(back["data"][0]["id"], latest["id"]);
    let asc = api.get("/v1/sessions?order=asc&limit=2").await;
    assert_eq!(asc["data"][0]["id"], s["id"]);
    api.expect_error(
        Method::GET,
        &format!(
            "/v1/sessions?order=asc&page={}",
            p1["next_page"].as_str().unwrap()
        ),
        None,
        400,
        "invalid_request_error",
        "page: the cursor was made for order=desc",
    )
    .await;
    let v1 = api
        .get(&format!(
            "/v1/sessions?agent_id={}&agent_version=1",
            agent["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(v1["data"].as_array().unwrap().len(), 2);
    let idle = api
        .get("/v1/sessions?statuses[]=idle&statuses[]=running")
        .await;
    assert_eq!(idle["data"].as_array().unwrap().len(), 3);
    assert_eq!(
        api.get("/v1/sessions?statuses[]=terminated").await["data"],
        json!([])
    );
    api.expect_error(
        Method::GET,
        "/v1/sessions?statuses[]=sleeping",
        None,
        400,
        "invalid_request_error",
        "statuses:",
    )
    .await;

    // update: title, metadata patch, tools while idle
    let u = api
        .post(&format!("/v1/sessions/{sid}"), json!({"title": "renamed", "metadata": {"k": null, "n": "1"},
            "agent": {"tools": [{"type": "custom", "name": "t", "description": "d", "input_schema": {"type": "object"}}]}}))
        .await;
    assert_eq!(u["title"], json!("renamed"));
    assert_eq!(u["metadata"], json!({"n": "1"}));
    assert_eq!(u["agent"]["tools"][0]["name"], json!("t"));
    api.expect_error(
        Method::POST,
        &format!("/v1/sessions/{sid}"),
        Some(json!({"vault_ids": ["v"]})),
        400,
        "invalid_request_error",
        "vault_ids:",
    )
    .await;

    // a running session refuses archive and delete
    api.store
        .update_session(
            &sid,
            session_store::SessionUpdate {
                status: Some(session_store::SessionStatus::Running),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    api.expect_error(
        Method::POST,
        &format!("/v1/sessions/{sid}/archive"),
        Some(json!({})),
        400,
        "invalid_request_error",
        "session ",
    )
    .await;
    api.expect_error(
        Method::DELETE,
        &format!("/v1/sessions/{sid}"),
        None,
        400,
        "invalid_request_error",
        "session ",
    )
    .await;
    api.expect_error(
        Method::POST,
        &format!("/v1/sessions/{sid}"),
        Some(json!({"agent": {"tools": []}})),
        400,
        "invalid_request_error",
        "agent:",
    )
    .await;
    api.store
        .update_session(
            &sid,
            session_store::SessionUpdate {
                status: Some(session_store::SessionStatus::Idle),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    // archive terminates; an archived session takes no events
    let a = api
        .post(&format!("/v1/sessions/{sid}/archive"), json!({}))
        .await;
    assert_eq!(a["status"], json!("terminated"));
    assert!(a["archived_at"].is_string());
    let evs = api.get(&format!("/v1/sessions/{sid}/events")).await;
    assert_eq!(
        evs["data"].as_array().unwrap().last().unwrap()["type"],
        json!("session.status_terminated")
    );
    api.expect_error(
        Method::POST,
        &format!("/v1/sessions/{sid}/events"),
        Some(json!({"events": [user_message("x")]})),
        400,
        "invalid_request_error",
        "session ",
    )
    .await;
    assert!(api.get("/v1/sessions").await["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["id"] != json!(sid)));
    assert!(api.get("/v1/sessions?include_archived=true").await["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["id"] == json!(sid)));

    let d = api
        .call(Method::DELETE, &format!("/v1/sessions/{sid}"), None)
        .await;
    assert_eq!(d.body, json!({"id": sid, "type": "session_deleted"}));
    api.expect_error(
        Method::GET,
        &format!("/v1/sessions/{sid}"),
        None,
        404,
        "not_found_error",
        "session ",
    )
    .await;

    // references to unknown or archived things name the field
    api.expect_error(
        Method::POST,
        "/v1/sessions",
        Some(json!({"agent": "agent_nope", "environment_id": env["id"]})),
        404,
        "not_found_error",
        "agent:",
    )
    .await;
    api.expect_error(
        Method::POST,
        "/v1/sessions",
        Some(json!({"agent": agent["id"], "environment_id": "env_nope"})),
        404,
        "not_found_error",
        "environment_id:",
    )
    .await;
    api.post(
        &format!("/v1/environments/{}/archive", env["id"].as_str().unwrap()),
        json!({}),
    )
    .await;
    api.expect_error(
        Method::POST,
        "/v1/sessions",
        Some(json!({"agent": agent["id"], "environment_id": env["id"]})),
        400,
        "invalid_request_error",
        "environment_id:",
    )
    .await;
}

#[tokio::test]
async fn events_send_list_pages_and_filters() {
    let api = Api::new().await;
    let s = api.session().await;
    let sid = s["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/sessions/{sid}/events");
    let sent = api.post(&path, json!({"events": [user_message("one"), user_message("two"), {"type": "user.interrupt"}]})).await;
    let data = sent["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert!(data
        .iter()
        .all(|e| e["processed_at"].is_null() && e["id"].as_str().unwrap().starts_with("sevt_")));
    assert_eq!(
        data.iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(api.runner.0.lock().unwrap().as_slice(), [sid.as_str()]);
    // the harness's events (appended here directly) interleave
    api.store
        .mark_processed(&sid, EventSelector::Seqs(vec![1, 2]), Fence::None)
        .await
        .unwrap();
    api.store
        .append(
            &sid,
            vec![
                NewEvent::processed(json!({"type": "session.status_running"})),
                NewEvent::processed(
                    json!({"type": "agent.message", "content": [{"type": "text", "text": "hi"}]}),
                ),
                NewEvent::processed(
                    json!({"type": "session.status_idle", "stop_reason": {"type": "end_turn"}}),
                ),
            ],
            Fence::None,
        )
        .await
        .unwrap();

    let all = api.get(&path).await;
    let seqs: Vec<u64> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    assert!(all["data"][0]["processed_at"].is_string());
    assert!(all["data"][2]["processed_at"].is_null());
    assert_eq!(all["next_page"], Value::Null);
    // pages of 4 both ways
    let p1 = api.get(&format!("{path}?limit=4")).await;
    assert_eq!(p1["data"].as_array().unwrap().len(), 4);
    let p2 = api
        .get(&format!(
            "{path}?limit=4&page={}",
            p1["next_page"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        p2["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [5, 6]
    );
    assert_eq!(p2["next_page"], Value::Null);
    let d1 = api.get(&format!("{path}?order=desc&limit=4")).await;
    assert_eq!(
        d1["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [6, 5, 4, 3]
    );
    let d2 = api
        .get(&format!(
            "{path}?order=desc&limit=4&page={}",
            d1["next_page"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        d2["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [2, 1]
    );
    // type filters, both spellings
    let msgs = api
        .get(&format!(
            "{path}?types[]=user.message&types[]=agent.message"
        ))
        .await;
    assert_eq!(msgs["data"].as_array().unwrap().len(), 3);
    let msgs = api.get(&format!("{path}?types=session.status_idle")).await;
    assert_eq!(msgs["data"][0]["stop_reason"], json!({"type": "end_turn"}));
    let filtered = api
        .get(&format!("{path}?types[]=user.message&limit=1"))
        .await;
    let next = api
        .get(&format!(
            "{path}?types[]=user.message&limit=1&page={}",
            filtered["next_page"].as_str().unwrap()
        ))
        .await;
    assert_eq!(next["data"][0]["seq"], json!(2));
    // created_at filters compare processed_at: queued events drop out
    let since = api
        .get(&format!("{path}?created_at[gte]=2000-01-01T00:00:00Z"))
        .await;
    assert_eq!(since["data"].as_array().unwrap().len(), 5);
    let none = api
        .get(&format!("{path}?created_at[lt]=2000-01-01T00:00:00Z"))
        .await;
    assert_eq!(none["data"], json!([]));
    api.expect_error(
        Method::GET,
        "/v1/sessions/sesn_nope/events",
        None,
        404,
        "not_found_error",
        "session sesn_nope",
    )
    .await;
}

#[tokio::test]
async fn confirmations_and_custom_results_must_name_the_right_event() {
    let api = Api::new().await;
    let s = api.session().await;
    let sid = s["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/sessions/{sid}/events");
    let stored = api
        .store
        .append(&sid, vec![
            NewEvent::processed(json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "ls"}, "evaluated_permission": "ask", "evaluation": {"type": "always_ask"}})),
            NewEvent::processed(json!({"type": "agent.tool_use", "name": "read", "input": {"file_path": "x"}, "evaluated_permission": "allow"})),
            NewEvent::processed(json!({"type": "agent.custom_tool_use", "name": "lookup", "input": {"q": "x"}})),
        ], Fence::None)
        .await
        .unwrap();
    let (ask, allowed, custom) = (&stored[0].id, &stored[1].id, &stored[2].id);
    let ok = api
        .post(&path, json!({"events": [
            {"type": "user.tool_confirmation", "tool_use_id": ask, "result": "deny", "deny_message": "not now"},
            {"type": "user.custom_tool_result", "custom_tool_use_id": custom, "content": [{"type": "text", "text": "42"}]}
        ]}))
        .await;
    assert_eq!(ok["data"][0]["deny_message"], json!("not now"));
    assert_eq!(ok["data"][1]["content"][0]["text"], json!("42"));
    for (body, field) in [
        (
            json!({"type": "user.tool_confirmation", "tool_use_id": "sevt_nope", "result": "allow"}),
            "events.0.tool_use_id:",
        ),
        (
            json!({"type": "user.tool_confirmation", "tool_use_id": allowed, "result": "allow"}),
            "events.0.tool_use_id:",
        ),
        (
            json!({"type": "user.tool_confirmation", "tool_use_id": custom, "result": "allow"}),
            "events.0.tool_use_id:",
        ),
        (
            json!({"type": "user.custom_tool_result", "custom_tool_use_id": ask}),
            "events.0.custom_tool_use_id:",
        ),
    ] {
        api.expect_error(
            Method::POST,
            &path,
            Some(json!({"events": [body]})),
            400,
            "invalid_request_error",
            field,
        )
        .await;
    }
    // a rejected batch stores nothing
    let before = api.get(&path).await["data"].as_array().unwrap().len();
    api.expect_error(
        Method::POST,
        &path,
        Some(json!({"events": [user_message("x"), {"type": "user.bogus"}]})),
        400,
        "invalid_request_error",
        "events.1.type: unknown event type \"user.bogus\"",
    )
    .await;
    assert_eq!(
        api.get(&path).await["data"].as_array().unwrap().len(),
        before
    );
}

#[tokio::test]
async fn stream_is_live_resumes_without_loss_echoes_processing_and_ends_on_delete() {
    let api = Api::with_limits(ApiLimits {
        sse_ping_interval: Duration::from_millis(200),
        ..ApiLimits::default()
    })
    .await;
    let s = api.session().await;
    let sid = s["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/sessions/{sid}/events");
    api.post(&path, json!({"events": [user_message("before")]}))
        .await;

    let open = |q: &str, last_event_id: Option<&str>| {
        let mut req = api.request(Method::GET, &format!("{path}/stream{q}"), None);
        if let Some(id) = last_event_id {
            req.headers_mut()
                .insert("last-event-id", id.parse().unwrap());
        }
        api.router.clone().oneshot(req)
    };
    let resp = open("", None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let schema = json!({"$ref": "#/components/schemas/StreamEvent"});
    let mut live = SseReader::new(resp.into_body());
    // pings arrive on an idle stream
    let ping = live.next().await.unwrap();
    assert_eq!(
        (ping.event.as_str(), ping.data.clone()),
        ("ping", json!({"type": "ping"}))
    );
    // live: only what is appended after the stream opened
    let sent = api
        .post(&path, json!({"events": [user_message("live")]}))
        .await;
    let f = live.next_event().await.unwrap();
    api.spec.check_schema(&schema, &f.data, "stream");
    assert_eq!(f.event, "user.message");
    assert_eq!(f.id, Some(2));
    assert_eq!(f.data["id"], sent["data"][0]["id"]);
    assert!(f.data["processed_at"].is_null());
    // processed: the same event again, with processed_at and no SSE id
    api.store
        .mark_processed(&sid, EventSelector::Seqs(vec![2]), Fence::None)
        .await
        .unwrap();
    let again = live.next_event().await.unwrap();
    assert_eq!(again.data["id"], sent["data"][0]["id"]);
    assert!(again.data["processed_at"].is_string());
    assert_eq!(again.id, None);
    for i in 0..3 {
        api.store
            .append(&sid, vec![NewEvent::processed(json!({"type": "agent.message", "content": [{"type": "text", "text": format!("m{i}")}]}))], Fence::None)
            .await
            .unwrap();
    }
    let mut last = 0;
    for _ in 0..3 {
        let f = live.next_event().await.unwrap();
        api.spec.check_schema(&schema, &f.data, "stream");
        last = f.id.unwrap();
    }
    assert_eq!(last, 5);
    drop(live);

    // resume with Last-Event-ID after seq 3: seqs 4.. exactly once, then live
    let mut resumed = SseReader::new(open("", Some("3")).await.unwrap().into_body());
    let a = resumed.next_event().await.unwrap();
    let b = resumed.next_event().await.unwrap();
    assert_eq!((a.id, b.id), (Some(4), Some(5)));
    api.store
        .append(
            &sid,
            vec![NewEvent::processed(
                json!({"type": "session.status_idle", "stop_reason": {"type": "end_turn"}}),
            )],
            Fence::None,
        )
        .await
        .unwrap();
    let c = resumed.next_event().await.unwrap();
    assert_eq!((c.event.as_str(), c.id), ("session.status_idle", Some(6)));
    // `after=0` replays everything
    let mut replay = SseReader::new(open("?after=0", None).await.unwrap().into_body());
    let mut seqs = Vec::new();
    while seqs.len() < 6 {
        let f = replay.next_event().await.unwrap();
        if let Some(id) = f.id {
            seqs.push(id);
        }
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);

    // deleting the session ends open streams with session.deleted
    api.call(Method::DELETE, &format!("/v1/sessions/{sid}"), None)
        .await;
    let end = resumed.next_event().await.unwrap();
    assert_eq!(end.event, "session.deleted");
    api.spec.check_schema(&schema, &end.data, "stream");
    assert!(
        resumed.next().await.is_none(),
        "the stream ends after session.deleted"
    );
    let r = api.call(Method::GET, &format!("{path}/stream"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let api = Api::new().await;
    let s = api.session().await;
    let req = api.request(
        Method::GET,
        &format!("/v1/sessions/{}/events/stream", s["id"].as_str().unwrap()),
        None,
    );
    let resp = api.router.clone().oneshot(req).await.unwrap();
    let mut reader = SseReader::new(resp.into_body());
    api.shutdown.cancel();
    assert!(reader.next().await.is_none());
}

#[tokio::test]
async fn unauthenticated_callers_learn_nothing() {
    let api = Api::new().await;
    let s = api.session().await;
    let sid = s["id"].as_str().unwrap();
    let key = api.key.clone();
    let paths = [
        (Method::GET, format!("/v1/sessions/{sid}")),
        (Method::GET, "/v1/sessions/sesn_does_not_exist".to_owned()),
        (Method::GET, "/v1/no/such/route".to_owned()),
        (Method::DELETE, "/v1/agents".to_owned()),
        (Method::POST, format!("/v1/sessions/{sid}/events")),
        (Method::GET, format!("/v1/sessions/{sid}/events/stream")),
    ];
    for (header, value) in [
        (None, ""),
        (Some("x-api-key"), "sk-airlock-wrong"),
        (Some("authorization"), "Bearer nope"),
        (Some("x-api-key"), ""),
    ] {
        let mut bodies = Vec::new();
        for (m, p) in &paths {
            let mut b = http::Request::builder().method(m.clone()).uri(p);
            if let Some(h) = header {
                b = b.header(h, value);
            }
            let r = api
                .send(b.body(axum::body::Body::from("{\"events\": []}")).unwrap())
                .await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{m} {p}");
            assert_eq!(r.body["error"]["type"], json!("authentication_error"));
            let mut body = r.body.clone();
            body["request_id"] = Value::Null;
            bodies.push(body);
        }
        assert!(
            bodies.windows(2).all(|w| w[0] == w[1]),
            "identical answers whatever the path: {bodies:?}"
        );
    }
    // Bearer works like x-api-key; a revoked key stops working
    let req = http::Request::builder()
        .uri(format!("/v1/sessions/{sid}"))
        .header("authorization", format!("Bearer {key}"))
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(api.send(req).await.status, StatusCode::OK);
    api.catalog.revoke_api_key("key_test").await.unwrap();
    api.expect_error(
        Method::GET,
        &format!("/v1/sessions/{sid}"),
        None,
        401,
        "authentication_error",
        "invalid x-api-key",
    )
    .await;
}

#[tokio::test]
async fn invalid_requests_get_4xx_naming_the_field_never_500() {
    let api = Api::with_limits(ApiLimits {
        max_body_bytes: 4096,
        ..ApiLimits::default()
    })
    .await;
    let s = api.session().await;
    let sid = s["id"].as_str().unwrap().to_owned();
    let ev = format!("/v1/sessions/{sid}/events");
    type Case = (
        Method,
        String,
        Option<Value>,
        u16,
        &'static str,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/v1/agents".into(),
            Some(json!({"model": "m"})),
            400,
            "invalid_request_error",
            "name: field required",
        ),
        (
            Method::POST,
            "/v1/agents".into(),
            Some(json!({"name": 5, "model": "m"})),
            400,
            "invalid_request_error",
            "name: expected a string",
        ),
        (
            Method::POST,
            "/v1/agents".into(),
            Some(json!({"name": "a", "model": "m", "tools": "all"})),
            400,
            "invalid_request_error",
            "tools: expected an array",
        ),
        (
            Method::POST,
            "/v1/agents".into(),
            Some(
                json!({"name": "a", "model": "m", "tools": [{"type": "agent_toolset_20260401", "configs": [{"name": "bash", "permission_policy": {"type": "sometimes"}}]}]}),
            ),
            400,
            "invalid_request_error",
            "tools.0.configs.0.permission_policy.type:",
        ),
        (
            Method::POST,
            "/v1/agents".into(),
            Some(json!({"name": "a", "model": "m", "metadata": {"k": 1}})),
            400,
            "invalid_request_error",
            "metadata.k:",
        ),
        (
            Method::POST,
            "/v1/agents".into(),
            Some(json!({"name": "a", "model": "m", "colour": "red"})),
            400,
            "invalid_request_error",
            "colour: unknown field",
        ),
        (
            Method::POST,
            "/v1/agents".into(),
            Some(json!([1, 2])),
            400,
            "invalid_request_error",
            "body: expected a JSON object",
        ),
        (
            Method::POST,
            "/v1/environments".into(),
            Some(json!({})),
            400,
            "invalid_request_error",
            "name: field required",
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(json!({"agent": {"type": "agent", "id": 3}, "environment_id": "e"})),
            400,
            "invalid_request_error",
            "agent.id: expected a string",
        ),
        (
            Method::POST,
            ev.clone(),
            Some(json!({"events": [{"type": "user.telepathy"}]})),
            400,
            "invalid_request_error",
            "events.0.type: unknown event type \"user.telepathy\"",
        ),
        (
            Method::POST,
            ev.clone(),
            Some(
                json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": 7}]}]}),
            ),
            400,
            "invalid_request_error",
            "events.0.content.0.text: expected a string",
        ),
        (
            Method::POST,
            ev.clone(),
            Some(json!({"events": "no"})),
            400,
            "invalid_request_error",
            "events: expected an array",
        ),
        (
            Method::POST,
            ev.clone(),
            Some(json!({"events": [{"type": "user.interrupt", "session_thread_id": "sthr_1"}]})),
            400,
            "invalid_request_error",
            "events.0.session_thread_id:",
        ),
        (
            Method::GET,
            format!("{ev}?limit=abc"),
            None,
            400,
            "invalid_request_error",
            "limit:",
        ),
        (
            Method::GET,
            format!("{ev}?order=sideways"),
            None,
            400,
            "invalid_request_error",
            "order:",
        ),
        (
            Method::GET,
            format!("{ev}?page=not-a-cursor"),
            None,
            400,
            "invalid_request_error",
            "page:",
        ),
        (
            Method::GET,
            format!("{ev}?colour=red"),
            None,
            400,
            "invalid_request_error",
            "colour: unknown query parameter",
        ),
        (
            Method::GET,
            format!("{ev}/stream?after=minus"),
            None,
            400,
            "invalid_request_error",
            "after:",
        ),
        (
            Method::GET,
            "/v1/agents/agent_nope".into(),
            None,
            404,
            "not_found_error",
            "agent agent_nope not found",
        ),
        (
            Method::GET,
            "/v1/environments/env_nope".into(),
            None,
            404,
            "not_found_error",
            "environment env_nope not found",
        ),
        (
            Method::POST,
            "/v1/sessions/sesn_nope/events".into(),
            Some(json!({"events": [user_message("x")]})),
            404,
            "not_found_error",
            "session sesn_nope not found",
        ),
        (
            Method::DELETE,
            "/v1/sessions/sesn_nope".into(),
            None,
            404,
            "not_found_error",
            "session sesn_nope",
        ),
        (
            Method::GET,
            "/v1/nothing".into(),
            None,
            404,
            "not_found_error",
            "no route for GET /v1/nothing",
        ),
        (
            Method::PUT,
            "/v1/agents".into(),
            None,
            405,
            "invalid_request_error",
            "method PUT is not allowed",
        ),
    ];
    for (m, p, b, status, kind, starts) in cases {
        api.expect_error(m, &p, b, status, kind, starts).await;
    }
    // malformed JSON and an empty body
    let bad = http::Request::builder()
        .method("POST")
        .uri("/v1/agents")
        .header("x-api-key", &api.key)
        .body(axum::body::Body::from("{\"name\": "))
        .unwrap();
    let r = api.send(bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("body: invalid JSON"));
    let empty = http::Request::builder()
        .method("POST")
        .uri("/v1/agents")
        .header("x-api-key", &api.key)
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(api.send(empty).await.status, StatusCode::BAD_REQUEST);
    // oversized: by content-length, and streamed without one
    let big = json!({"events": [user_message(&"x".repeat(10_000))]});
    api.expect_error(
        Method::POST,
        &ev,
        Some(big.clone()),
        413,
        "request_too_large",
        "request body is larger than the 4096 bytes",
    )
    .await;
    let chunks = futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(
        big.to_string(),
    ))]);
    let streamed = http::Request::builder()
        .method("POST")
        .uri(&ev)
        .header("x-api-key", &api.key)
        .body(axum::body::Body::from_stream(chunks))
        .unwrap();
    let r = api.send(streamed).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let api = Api::with_limits(ApiLimits {
        rate_limit_per_second: Some(0.5),
        rate_limit_burst: 2,
        ..ApiLimits::default()
    })
    .await;
    assert_eq!(
        api.call(Method::GET, "/v1/agents", None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.call(Method::GET, "/v1/agents", None).await.status,
        StatusCode::OK
    );
    let r = api
        .expect_error(
            Method::GET,
            "/v1/agents",
            None,
            429,
            "rate_limit_error",
            "rate limit exceeded",
        )
        .await;
    assert_eq!(r.headers["retry-after"], "2");
    assert_eq!(r.headers["x-should-retry"], "true");
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let api = Api::new().await;
    let doc = api.spec.doc().clone();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let path = template
                .replace("{agent_id}", "agent_x")
                .replace("{environment_id}", "env_x")
                .replace("{session_id}", "sesn_x");
            let m: Method = method.to_uppercase().parse().unwrap();
            let body = (method == "post").then(|| json!({}));
            let r = api.call(m.clone(), &path, body).await;
            assert!(
                r.status != StatusCode::METHOD_NOT_ALLOWED
                    && !r.body["error"]["message"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("no route"),
                "{m} {template} is documented but not served: {}",
                r.body
            );
        }
    }
}

#[tokio::test]
async fn the_spec_rejects_wrong_shapes() {
    // the validation above is only worth something if it can fail
    let api = Api::new().await;
    let agent = api.agent(json!({"name": "a", "model": "m"})).await;
    let schema = json!({"$ref": "#/components/schemas/Agent"});
    let v = api.spec.validator(&schema);
    assert!(v.is_valid(&agent));
    for (k, bad) in [
        ("version", json!("1")),
        ("created_at", json!("yesterday")),
        ("extra_field", json!(1)),
        ("model", json!("m")),
    ] {
        let mut a = agent.clone();
        a[k] = bad;
        assert!(!v.is_valid(&a), "{k} should be refused");
    }
    let mut a = agent.clone();
    a.as_object_mut().unwrap().remove("tools");
    assert!(!v.is_valid(&a));
    let ev = api
        .spec
        .validator(&json!({"$ref": "#/components/schemas/Event"}));
    assert!(ev.is_valid(
        &json!({"id": "sevt_1", "seq": 1, "type": "user.interrupt", "processed_at": null})
    ));
    assert!(!ev
        .is_valid(&json!({"id": "sevt_1", "seq": 1, "type": "user.dance", "processed_at": null})));
    assert!(
        !ev.is_valid(&json!({"id": "sevt_1", "type": "user.interrupt", "processed_at": null})),
        "seq is required"
    );
    assert!(!ev.is_valid(&json!({"id": "sevt_1", "seq": 1, "type": "session.status_idle", "processed_at": "2026-01-01T00:00:00Z"})), "stop_reason is required");
}

#[tokio::test]
async fn live_readers_share_one_tail_and_a_slow_one_loses_nothing() {
    // a tiny shared buffer, so the slow reader falls behind it
    let api = Api::with_limits(ApiLimits {
        sse_buffer_events: 2,
        ..ApiLimits::default()
    })
    .await;
    let s = api.session().await;
    let sid = s["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/sessions/{sid}/events");
    api.post(&path, json!({"events": [user_message("history")]}))
        .await;
    let open = || {
        api.router
            .clone()
            .oneshot(api.request(Method::GET, &format!("{path}/stream"), None))
    };
    let mut fast = SseReader::new(open().await.unwrap().into_body());
    let mut slow = SseReader::new(open().await.unwrap().into_body());
    let mut late_ids = Vec::new();
    for i in 0..20 {
        let stored = api.store
            .append(&sid, vec![NewEvent::processed(json!({"type": "agent.message", "content": [{"type": "text", "text": format!("m{i}")}]}))], Fence::None)
            .await
            .unwrap();
        late_ids.push(stored[0].seq);
        // the fast reader keeps up; the slow one reads nothing yet
        let f = fast.next_event().await.unwrap();
        assert_eq!(f.id, Some(stored[0].seq));
    }
    // a reader that joins now starts now, sharing the same tail
    let mut joiner = SseReader::new(open().await.unwrap().into_body());
    let sent = api
        .post(&path, json!({"events": [user_message("after the join")]}))
        .await;
    let j = joiner.next_event().await.unwrap();
    assert_eq!(
        j.data["id"], sent["data"][0]["id"],
        "a live reader sees nothing from before it opened"
    );
    assert_eq!(
        fast.next_event().await.unwrap().data["id"],
        sent["data"][0]["id"]
    );
    // the slow reader gets every event, in order, once (it continued on a tail of its own)
    let mut got = Vec::new();
    while got.len() < 21 {
        let f = slow.next_event().await.unwrap();
        got.push(f.id.expect("appended events carry their seq"));
    }
    let mut want = late_ids.clone();
    want.push(sent["data"][0]["seq"].as_u64().unwrap());
    assert_eq!(got, want);
    // processed echoes reach live readers of the shared tail too
    api.store
        .mark_processed(
            &sid,
            EventSelector::Ids(vec![sent["data"][0]["id"].as_str().unwrap().to_owned()]),
            Fence::None,
        )
        .await
        .unwrap();
    let echo = joiner.next_event().await.unwrap();
    assert_eq!(
        (echo.data["id"].clone(), echo.id),
        (sent["data"][0]["id"].clone(), None)
    );
    assert!(echo.data["processed_at"].is_string());
}
