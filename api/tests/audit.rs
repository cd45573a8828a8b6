//! The control plane's audit through the API router over a real SQLite
//! catalog: one event per state-changing request (actions, ids, outcome,
//! remote address, request id, no bodies), none for reads or refused
//! authentication, the three kinds of session event posts, and the
//! `/v1/airlock/audit/events` and `/v1/airlock/agents/{id}/audit/checkpoints`
//! listings with their filters and pages (validated against openapi.yaml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use catalog::audit::NewCheckpoint;
use common::{user_message, Api};
use http::{Method, StatusCode};
use serde_json::{json, Value};

async fn events(api: &Api, query: &str) -> Vec<Value> {
    let v = api.get(&format!("/v1/airlock/audit/events?{query}")).await;
    v["data"].as_array().unwrap().clone()
}

fn actions(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn state_changing_requests_are_recorded_once_each() {
    let api = Api::new().await;
    // a request with a known remote address
    let mut req = api.request(
        Method::POST,
        "/v1/environments",
        Some(&json!({"name": "prod", "config": {"type": "self_hosted"}})),
    );
    let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(peer));
    let env = api.send(req).await;
    assert_eq!(env.status, StatusCode::OK);
    let env_id = env.body["id"].as_str().unwrap().to_owned();
    let env_request_id = env.headers["request-id"].to_str().unwrap().to_owned();

    let session = api.session().await; // agents.create, environments.create, sessions.create
    let sid = session["id"].as_str().unwrap().to_owned();
    let agent_id = session["agent"]["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/sessions/{sid}/events");
    api.post(
        &path,
        json!({"events": [user_message("the secret word is hunter2")]}),
    )
    .await;
    api.post(&path, json!({"events": [{"type": "user.interrupt"}]}))
        .await;
    // a confirmation of an unknown tool use: refused, recorded as an error
    let r = api
        .call(
            Method::POST,
            &path,
            Some(json!({"events": [{"type": "user.tool_confirmation", "tool_use_id": "sevt_nope", "result": "allow"}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    api.post(&format!("/v1/sessions/{sid}/archive"), json!({}))
        .await;
    let vault = api.post("/v1/vaults", json!({"display_name": "v"})).await;
    let vid = vault["id"].as_str().unwrap().to_owned();
    api.post(&format!("/v1/vaults/{vid}"), json!({"display_name": "w"}))
        .await;
    let r = api
        .call(Method::DELETE, &format!("/v1/environments/{env_id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // reads are not recorded
    api.get("/v1/sessions").await;
    api.get(&format!("/v1/sessions/{sid}")).await;
    // nor is a request that fails authentication
    let mut bad = api.request(
        Method::POST,
        "/v1/vaults",
        Some(&json!({"display_name": "x"})),
    );
    bad.headers_mut()
        .insert("x-api-key", "sk-nope".parse().unwrap());
    assert_eq!(api.send(bad).await.status, StatusCode::UNAUTHORIZED);
    // an unknown route that changes nothing is still recorded
    let r = api.call(Method::DELETE, "/v1/nothing/here", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let all = events(&api, "limit=100").await;
    assert_eq!(
        actions(&all),
        [
            "environments.create",
            "agents.create",
            "environments.create",
            "sessions.create",
            "sessions.message",
            "sessions.interrupt",
            "sessions.tool_confirmation",
            "sessions.archive",
            "vaults.create",
            "vaults.update",
            "environments.delete",
            "unrouted",
        ]
    );
    let first = &all[0];
    assert_eq!(
        first["actor"],
        json!({"type": "api_key", "api_key_id": "key_test"})
    );
    assert_eq!(first["remote_addr"], "192.0.2.7:40000");
    assert_eq!(first["resource_ids"], json!([env_id]), "the created id");
    assert_eq!(first["request_id"], env_request_id.as_str());
    assert_eq!(
        (first["status"].as_u64(), first["outcome"].as_str()),
        (Some(200), Some("ok"))
    );
    assert!(first["id"].as_str().unwrap().starts_with("audevt_"));
    assert_eq!(all[1]["resource_ids"], json!([agent_id]));
    assert_eq!(all[3]["resource_ids"], json!([sid]));
    assert_eq!(all[4]["resource_ids"], json!([sid]));
    assert_eq!(
        all[4]["remote_addr"],
        Value::Null,
        "no connect info in this request"
    );
    assert_eq!(
        (all[6]["status"].as_u64(), all[6]["outcome"].as_str()),
        (Some(400), Some("error"))
    );
    assert_eq!(all[9]["resource_ids"], json!([vid]));
    assert_eq!(all[11]["resource_ids"], json!([]));
    // never a body
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains("hunter2"), "{text}");

    // filters
    assert_eq!(
        actions(&events(&api, "action=sessions.interrupt").await),
        ["sessions.interrupt"]
    );
    assert_eq!(
        actions(&events(&api, &format!("resource_id={sid}")).await),
        [
            "sessions.create",
            "sessions.message",
            "sessions.interrupt",
            "sessions.tool_confirmation",
            "sessions.archive"
        ]
    );
    assert_eq!(
        actions(&events(&api, "outcome=error").await),
        ["sessions.tool_confirmation", "unrouted"]
    );
    assert_eq!(events(&api, "api_key_id=key_test").await.len(), all.len());
    assert!(events(&api, "api_key_id=key_other").await.is_empty());
    let at4 = all[4]["at"].as_str().unwrap();
    let since = events(&api, &format!("since={at4}")).await;
    assert!(
        since.len() >= all.len() - 4 && since.len() < all.len(),
        "{}",
        since.len()
    );
    assert!(events(&api, "until=2000-01-01T00:00:00Z").await.is_empty());
    let newest = events(&api, "order=desc&limit=1").await;
    assert_eq!(newest[0]["id"], all[11]["id"]);

    // pages of five
    let mut got = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let q = match &after {
            Some(a) => format!("/v1/airlock/audit/events?limit=5&after_id={a}"),
            None => "/v1/airlock/audit/events?limit=5".to_owned(),
        };
        let page = api.get(&q).await;
        got.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].clone()),
        );
        assert_eq!(
            page["last_id"],
            *page["data"]
                .as_array()
                .unwrap()
                .last()
                .unwrap()
                .get("id")
                .unwrap()
        );
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        after = page["last_id"].as_str().map(str::to_owned);
    }
    assert_eq!(got, all.iter().map(|e| e["id"].clone()).collect::<Vec<_>>());
    // bad parameters are typed 400s naming the parameter
    api.expect_error(
        Method::GET,
        "/v1/airlock/audit/events?outcome=maybe",
        None,
        400,
        "invalid_request_error",
        "outcome",
    )
    .await;
    api.expect_error(
        Method::GET,
        "/v1/airlock/audit/events?after_id=audevt_nope",
        None,
        400,
        "invalid_request_error",
        "after_id",
    )
    .await;
    api.expect_error(
        Method::GET,
        "/v1/airlock/audit/events?colour=red",
        None,
        400,
        "invalid_request_error",
        "colour",
    )
    .await;
    // reading the audit is not itself recorded
    assert_eq!(events(&api, "limit=100").await.len(), all.len());
}

#[tokio::test]
async fn checkpoints_are_exported_in_pages() {
    let api = Api::new().await;
    let empty = api
        .get("/v1/airlock/agents/agt_none/audit/checkpoints")
        .await;
    assert_eq!(
        empty,
        json!({"data": [], "has_more": false, "first_id": null, "last_id": null})
    );
    for seq in [10u64, 20, 15] {
        api.catalog
            .record_checkpoint(NewCheckpoint {
                id: format!("audcp_{seq}"),
                agent_id: "agt_a".into(),
                seq,
                head: format!("{seq:064x}"),
                at: "2026-12-06T20:00:00Z".into(),
                key_id: "0011223344556677".into(),
                public_key: "cGs=".into(),
                signature: "c2ln".into(),
                received_at: time::OffsetDateTime::now_utc(),
            })
            .await
            .unwrap();
    }
    let p1 = api
        .get("/v1/airlock/agents/agt_a/audit/checkpoints?limit=2")
        .await;
    assert_eq!(p1["has_more"], true);
    let seqs = |p: &Value| {
        p["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["seq"].as_u64().unwrap(), c["rollback"].as_bool().unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(seqs(&p1), [(10, false), (20, false)]);
    let last = p1["last_id"].as_str().unwrap();
    let p2 = api
        .get(&format!(
            "/v1/airlock/agents/agt_a/audit/checkpoints?limit=2&after_id={last}"
        ))
        .await;
    assert_eq!(seqs(&p2), [(15, true)]);
    assert_eq!(p2["has_more"], false);
    let c = &p2["data"][0];
    assert_eq!(c["agent_id"], "agt_a");
    assert_eq!(c["key_changed"], false);
    assert_eq!(c["head"], format!("{:064x}", 15));
}
