//! API key roles on the public API: a `read_only` key reads and is refused
//! everything else with 403 `permission_error` (validated against
//! `api/openapi.yaml`), and the refused request changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use catalog::{GeneratedKey, KeyRole, NewApiKey};
use common::Api;
use http::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn a_read_only_key_reads_and_is_refused_every_change_with_permission_error() {
    let api = Api::new().await;
    let agent = api
        .agent(json!({"name": "coder", "model": "claude-sonnet-4-5"}))
        .await;
    let agent_id = agent["id"].as_str().unwrap().to_owned();
    let viewer = GeneratedKey::generate();
    api.catalog
        .create_api_key_with_role(
            NewApiKey {
                id: "key_viewer".into(),
                name: "auditor".into(),
                key_hash: viewer.key_hash.clone(),
                hint: viewer.hint.clone(),
            },
            KeyRole::ReadOnly,
        )
        .await
        .unwrap();
    let as_viewer = |method: Method, path: &str, body: Option<serde_json::Value>| {
        let mut req = api.request(method, path, body.as_ref());
        req.headers_mut()
            .insert("x-api-key", viewer.plaintext.parse().unwrap());
        req
    };

    // Reading works.
    let listed = api.send(as_viewer(Method::GET, "/v1/agents", None)).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert_eq!(listed.body["data"][0]["id"], json!(agent_id));

    // Every kind of change is refused, naming the role, and changes nothing.
    let changes = [
        (
            Method::POST,
            "/v1/agents".to_owned(),
            Some(json!({"name": "x", "model": "claude-sonnet-4-5"})),
        ),
        (
            Method::POST,
            format!("/v1/agents/{agent_id}"),
            Some(json!({"version": 1, "name": "renamed"})),
        ),
        (Method::POST, format!("/v1/agents/{agent_id}/archive"), None),
        (
            Method::POST,
            "/v1/environments".to_owned(),
            Some(json!({"name": "e"})),
        ),
        (
            Method::POST,
            "/v1/vaults".to_owned(),
            Some(json!({"display_name": "v"})),
        ),
        (Method::DELETE, "/v1/sessions/sesn_nothing".to_owned(), None),
    ];
    for (method, path, body) in changes {
        let r = api.send(as_viewer(method.clone(), &path, body)).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            r.body
        );
        assert_eq!(
            r.body["error"]["type"],
            json!("permission_error"),
            "{}",
            r.body
        );
        let msg = r.body["error"]["message"].as_str().unwrap();
        assert!(msg.contains("read_only") && msg.contains(&path), "{msg}");
    }
    let after = api.get(&format!("/v1/agents/{agent_id}")).await;
    assert_eq!(after["name"], json!("coder"));
    assert_eq!(after["version"], json!(1));
    assert!(after["archived_at"].is_null(), "{after}");
    let agents = api.get("/v1/agents").await;
    assert_eq!(agents["data"].as_array().unwrap().len(), 1, "{agents}");
    let envs = api.get("/v1/environments").await;
    assert!(envs["data"].as_array().unwrap().is_empty(), "{envs}");
}
