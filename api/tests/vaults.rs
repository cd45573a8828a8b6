//! The vaults and credentials API through the router, with a real SQLite
//! catalog; every JSON response is validated against `api/openapi.yaml`.
//! Secrets go to a recording relay (or the production `NoBridgeRelay`) and
//! must appear nowhere else: not in a response, not in the catalog, not in
//! any file of the data directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::{Api, RecordingRelay};
use http::Method;
use serde_json::{json, Value};

const PIN: &str = "airlock.environment_id";

/// Every byte of every file under `dir` that contains `needle`.
fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    hits.push(p.display().to_string());
                }
            }
        }
    }
    hits
}

async fn pinned_vault(api: &Api, name: &str) -> (Value, Value) {
    let env = api
        .environment(&format!("env-{}", common::uuid_like()))
        .await;
    let v = api
        .post(
            "/v1/vaults",
            json!({"display_name": name, "metadata": {PIN: env["id"]}}),
        )
        .await;
    (env, v)
}

fn static_bearer(url: &str, token: &str) -> Value {
    json!({"display_name": "mcp", "auth": {"type": "static_bearer", "mcp_server_url": url, "token": token}})
}

#[tokio::test]
async fn vaults_create_list_update_archive_delete() {
    let api = Api::new().await;
    let v = api
        .post(
            "/v1/vaults",
            json!({"display_name": "team", "metadata": {"a": "1"}}),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("vlt_"));
    assert_eq!(v["type"], json!("vault"));
    assert_eq!(v["metadata"], json!({"a": "1"}));
    assert_eq!(v["archived_at"], Value::Null);
    assert_eq!(api.get(&format!("/v1/vaults/{id}")).await, v);

    for (body, starts) in [
        (json!({}), "display_name: field required"),
        (
            json!({"display_name": ""}),
            "display_name: must not be empty",
        ),
        (
            json!({"display_name": "x".repeat(256)}),
            "display_name: must be at most 255",
        ),
        (
            json!({"display_name": "v", "extra": 1}),
            "extra: unknown field",
        ),
        (
            json!({"display_name": "v", "metadata": {"k": 1}}),
            "metadata.k:",
        ),
    ] {
        api.expect_error(
            Method::POST,
            "/v1/vaults",
            Some(body),
            400,
            "invalid_request_error",
            starts,
        )
        .await;
    }
    // the pin must name a live environment
    api.expect_error(
        Method::POST,
        "/v1/vaults",
        Some(json!({"display_name": "v", "metadata": {PIN: "env_nope"}})),
        404,
        "not_found_error",
        "metadata.airlock.environment_id: environment env_nope not found",
    )
    .await;
    let gone = api.environment("archived-env").await;
    api.post(
        &format!("/v1/environments/{}/archive", gone["id"].as_str().unwrap()),
        json!({}),
    )
    .await;
    api.expect_error(
        Method::POST,
        "/v1/vaults",
        Some(json!({"display_name": "v", "metadata": {PIN: gone["id"]}})),
        400,
        "invalid_request_error",
        "metadata.airlock.environment_id: environment",
    )
    .await;

    // update: display name, metadata patch (null deletes a key)
    let u = api
        .post(
            &format!("/v1/vaults/{id}"),
            json!({"display_name": "team-2", "metadata": {"a": null, "b": "2"}}),
        )
        .await;
    assert_eq!(u["display_name"], json!("team-2"));
    assert_eq!(u["metadata"], json!({"b": "2"}));
    assert_eq!(u["created_at"], v["created_at"]);
    api.expect_error(
        Method::POST,
        &format!("/v1/vaults/{id}"),
        Some(json!({"display_name": null})),
        400,
        "invalid_request_error",
        "display_name:",
    )
    .await;
    api.expect_error(
        Method::POST,
        "/v1/vaults/vlt_nope",
        Some(json!({"display_name": "x"})),
        404,
        "not_found_error",
        "vault vlt_nope not found",
    )
    .await;

    // pages, newest first
    let mut ids = vec![id.clone()];
    for i in 0..3 {
        ids.push(
            api.post("/v1/vaults", json!({"display_name": format!("v{i}")}))
                .await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut page: Option<String> = None;
    loop {
        let q = page.map_or(String::new(), |p| format!("&page={p}"));
        let r = api.get(&format!("/v1/vaults?limit=3{q}")).await;
        seen.extend(
            r["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["id"].as_str().unwrap().to_owned()),
        );
        match r["next_page"].as_str() {
            Some(p) => page = Some(p.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    api.expect_error(
        Method::GET,
        "/v1/vaults?limit=101",
        None,
        400,
        "invalid_request_error",
        "limit:",
    )
    .await;

    // archive: terminal for changes, hidden from listings unless asked
    let a = api
        .post(&format!("/v1/vaults/{id}/archive"), json!({}))
        .await;
    assert!(a["archived_at"].is_string());
    api.expect_error(
        Method::POST,
        &format!("/v1/vaults/{id}"),
        Some(json!({"display_name": "z"})),
        400,
        "invalid_request_error",
        &format!("vault {id} is archived"),
    )
    .await;
    let listed = api.get("/v1/vaults?limit=100").await;
    assert!(listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["id"] != json!(id)));
    let listed = api.get("/v1/vaults?limit=100&include_archived=true").await;
    assert!(listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["id"] == json!(id)));

    let d = api
        .call(Method::DELETE, &format!("/v1/vaults/{id}"), None)
        .await;
    assert_eq!(d.body, json!({"id": id, "type": "vault_deleted"}));
    api.expect_error(
        Method::GET,
        &format!("/v1/vaults/{id}"),
        None,
        404,
        "not_found_error",
        "vault ",
    )
    .await;
    api.expect_error(
        Method::DELETE,
        &format!("/v1/vaults/{id}"),
        None,
        404,
        "not_found_error",
        "vault ",
    )
    .await;
}

#[tokio::test]
async fn credentials_relay_secrets_and_store_metadata_only() {
    let relay = Arc::new(RecordingRelay::default());
    let api = Api::with_relay(relay.clone()).await;
    let (env, v) = pinned_vault(&api, "mcp").await;
    let (env_id, vid) = (env["id"].as_str().unwrap(), v["id"].as_str().unwrap());
    let base = format!("/v1/vaults/{vid}/credentials");

    let sb = api
        .post(
            &base,
            static_bearer("https://mcp.example/a", "canary-static-1"),
        )
        .await;
    let sb_id = sb["id"].as_str().unwrap().to_owned();
    assert!(sb_id.starts_with("vcrd_"));
    assert_eq!(sb["type"], json!("vault_credential"));
    assert_eq!(sb["vault_id"], json!(vid));
    assert_eq!(
        sb["auth"],
        json!({"type": "static_bearer", "mcp_server_url": "https://mcp.example/a"})
    );
    {
        let puts = relay.puts.lock().unwrap();
        assert_eq!(puts.len(), 1);
        assert_eq!(puts[0].0.environment_id, env_id);
        assert_eq!(puts[0].0.vault_id, vid);
        assert_eq!(puts[0].0.credential_id, sb_id);
        assert_eq!(
            puts[0].1,
            [("token".to_owned(), "canary-static-1".to_owned())]
        );
    }

    let oauth = api
        .post(
            &base,
            json!({"auth": {"type": "mcp_oauth", "mcp_server_url": "https://mcp.example/b",
                "access_token": "canary-access", "expires_at": "2999-01-01T00:00:00Z",
                "refresh": {"client_id": "cid", "refresh_token": "canary-refresh", "token_endpoint": "https://idp.example/token",
                            "token_endpoint_auth": {"type": "client_secret_basic", "client_secret": "canary-client"},
                            "scope": "read", "resource": "https://mcp.example/"}},
                "metadata": {"team": "infra"}}),
        )
        .await;
    assert_eq!(
        oauth["auth"],
        json!({"type": "mcp_oauth", "mcp_server_url": "https://mcp.example/b", "expires_at": "2999-01-01T00:00:00Z",
               "refresh": {"client_id": "cid", "token_endpoint": "https://idp.example/token",
                           "token_endpoint_auth": {"type": "client_secret_basic"}, "scope": "read", "resource": "https://mcp.example/"}})
    );
    assert_eq!(oauth["display_name"], Value::Null);
    let oauth_id = oauth["id"].as_str().unwrap().to_owned();
    assert_eq!(
        relay.puts.lock().unwrap()[1]
            .1
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["access_token", "client_secret", "refresh_token"]
    );

    let envvar = api
        .post(
            &base,
            json!({"auth": {"type": "environment_variable", "secret_name": "GH_TOKEN", "secret_value": "canary-env",
                "networking": {"type": "limited", "allowed_hosts": ["API.github.com", "*.example.com", "192.0.2.1"]}}}),
        )
        .await;
    assert_eq!(
        envvar["auth"],
        json!({"type": "environment_variable", "secret_name": "GH_TOKEN",
               "networking": {"type": "limited", "allowed_hosts": ["api.github.com", "*.example.com", "192.0.2.1"]},
               "injection_location": {"header": true, "body": false}})
    );
    let env_cred = envvar["id"].as_str().unwrap().to_owned();

    // validation errors name the field, and nothing reaches the relay
    let puts_before = relay.puts.lock().unwrap().len();
    for (body, status, starts) in [
        (json!({"display_name": "x"}), 400, "auth: field required"),
        (
            json!({"auth": {"type": "static_bearer", "mcp_server_url": "https://m.example/"}}),
            400,
            "auth.token: field required",
        ),
        (
            json!({"auth": {"type": "github", "token": "canary-x"}}),
            400,
            "auth.type: unknown credential type",
        ),
        (
            json!({"auth": {"type": "environment_variable", "secret_name": "X", "secret_value": "canary-x",
                "networking": {"type": "limited", "allowed_hosts": ["https://evil.example/"]}}}),
            400,
            "auth.networking.allowed_hosts.0:",
        ),
        (
            json!({"auth": {"type": "environment_variable", "secret_name": "X", "secret_value": "canary-x",
                "networking": {"type": "limited", "allowed_hosts": ["fe80::1"]}}}),
            400,
            "auth.networking.allowed_hosts.0:",
        ),
        (
            json!({"auth": {"type": "environment_variable", "secret_name": "X", "secret_value": "canary-x",
                "networking": {"type": "unrestricted"}, "injection_location": {"header": false}}}),
            400,
            "auth.injection_location: at least one",
        ),
        (
            json!({"auth": {"type": "mcp_oauth", "mcp_server_url": "https://m.example/", "access_token": "canary-x",
                "expires_at": "2020-01-01T00:00:00Z"}}),
            400,
            "auth.expires_at: must be in the future",
        ),
        (
            json!({"auth": {"type": "mcp_oauth", "mcp_server_url": "https://m.example/", "access_token": "canary-x",
                "refresh": {"client_id": "c", "refresh_token": "r", "token_endpoint": "https://t.example/",
                            "token_endpoint_auth": {"type": "jwt"}}}}),
            400,
            "auth.refresh.token_endpoint_auth.type:",
        ),
        // one live credential per MCP server URL / variable name
        (
            static_bearer("https://mcp.example/a", "canary-dup"),
            409,
            "auth: https://mcp.example/a:",
        ),
    ] {
        // 409 is typed invalid_request_error, as the hosted API does
        let r = api
            .expect_error(
                Method::POST,
                &base,
                Some(body),
                status,
                "invalid_request_error",
                starts,
            )
            .await;
        assert!(!r.body.to_string().contains("canary"), "{}", r.body);
    }
    assert_eq!(relay.puts.lock().unwrap().len(), puts_before);

    // get, list, pages
    assert_eq!(api.get(&format!("{base}/{sb_id}")).await, sb);
    let l = api.get(&format!("{base}?limit=2")).await;
    assert_eq!(
        l["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].clone())
            .collect::<Vec<_>>(),
        [json!(env_cred), json!(oauth_id)]
    );
    let next = l["next_page"].as_str().unwrap();
    let l2 = api.get(&format!("{base}?limit=2&page={next}")).await;
    assert_eq!(l2["data"][0]["id"], json!(sb_id));
    assert_eq!(l2["next_page"], Value::Null);
    let other = api
        .post("/v1/vaults", json!({"display_name": "other"}))
        .await;
    api.expect_error(
        Method::GET,
        &format!(
            "/v1/vaults/{}/credentials/{sb_id}",
            other["id"].as_str().unwrap()
        ),
        None,
        404,
        "not_found_error",
        &format!("credential {sb_id} not found"),
    )
    .await;
    api.expect_error(
        Method::GET,
        "/v1/vaults/vlt_nope/credentials",
        None,
        404,
        "not_found_error",
        "vault vlt_nope not found",
    )
    .await;

    // update: rotate a token (relayed), metadata patch; type and immutable fields stay
    let u = api
        .post(
            &format!("{base}/{sb_id}"),
            json!({"auth": {"type": "static_bearer", "token": "canary-static-2"}, "metadata": {"k": "v"}, "display_name": "renamed"}),
        )
        .await;
    assert_eq!(u["metadata"], json!({"k": "v"}));
    assert_eq!(u["display_name"], json!("renamed"));
    assert_eq!(u["auth"], sb["auth"]);
    assert_eq!(
        relay.puts.lock().unwrap().last().unwrap().1,
        [("token".to_owned(), "canary-static-2".to_owned())]
    );
    api.expect_error(
        Method::POST,
        &format!("{base}/{sb_id}"),
        Some(json!({"auth": {"type": "mcp_oauth", "access_token": "canary-x"}})),
        400,
        "invalid_request_error",
        "auth.type: the type of a credential cannot change",
    )
    .await;
    api.expect_error(
        Method::POST,
        &format!("{base}/{sb_id}"),
        Some(json!({"auth": {"type": "static_bearer", "mcp_server_url": "https://elsewhere.example/"}})),
        400,
        "invalid_request_error",
        "auth.mcp_server_url: is immutable",
    )
    .await;
    api.expect_error(
        Method::POST,
        &format!("{base}/{env_cred}"),
        Some(json!({"auth": {"type": "environment_variable", "secret_name": "OTHER"}})),
        400,
        "invalid_request_error",
        "auth.secret_name: is immutable",
    )
    .await;
    api.expect_error(
        Method::POST,
        &format!("{base}/{oauth_id}"),
        Some(json!({"auth": {"type": "mcp_oauth", "refresh": {"client_id": "other"}}})),
        400,
        "invalid_request_error",
        "auth.refresh.client_id: is immutable",
    )
    .await;
    let e = api
        .post(
            &format!("{base}/{env_cred}"),
            json!({"auth": {"type": "environment_variable", "networking": {"type": "unrestricted"},
                "injection_location": {"body": true}}}),
        )
        .await;
    assert_eq!(e["auth"]["networking"], json!({"type": "unrestricted"}));
    assert_eq!(
        e["auth"]["injection_location"],
        json!({"header": true, "body": true})
    );

    // mcp_oauth_validate: a bridge probes; with none connected, a 503 that says so
    let r = api
        .expect_error(
            Method::POST,
            &format!("{base}/{oauth_id}/mcp_oauth_validate"),
            None,
            503,
            "api_error",
            &format!("credential {oauth_id} of vault {vid} was not validated: no vault-bridge of environment {env_id} is connected"),
        )
        .await;
    assert_eq!(
        r.body["error"]["details"]["error_code"],
        json!("vault_bridge_unavailable")
    );
    let (target, stored) = relay.validations.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (
            target.environment_id.as_str(),
            target.vault_id.as_str(),
            target.credential_id.as_str()
        ),
        (env_id, vid, oauth_id.as_str())
    );
    assert_eq!(stored["auth"]["type"], json!("mcp_oauth"));
    api.expect_error(
        Method::POST,
        &format!("{base}/{env_cred}/mcp_oauth_validate"),
        None,
        400,
        "invalid_request_error",
        "auth.type: credential",
    )
    .await;
    api.expect_error(
        Method::POST,
        &format!("{base}/vcrd_nope/mcp_oauth_validate"),
        None,
        404,
        "not_found_error",
        "credential vcrd_nope not found",
    )
    .await;

    // archive: the bridges forget it; it refuses changes; its binding is free
    let a = api
        .post(&format!("{base}/{sb_id}/archive"), json!({}))
        .await;
    assert!(a["archived_at"].is_string());
    assert_eq!(
        relay.forgets.lock().unwrap().last().unwrap().credential_id,
        sb_id
    );
    api.expect_error(
        Method::POST,
        &format!("{base}/{sb_id}"),
        Some(json!({"display_name": "x"})),
        400,
        "invalid_request_error",
        &format!("credential {sb_id} is archived"),
    )
    .await;
    let l = api.get(&format!("{base}?include_archived=true")).await;
    assert_eq!(l["data"].as_array().unwrap().len(), 3);
    let l = api.get(&base).await;
    assert_eq!(l["data"].as_array().unwrap().len(), 2);
    let again = api
        .post(
            &base,
            static_bearer("https://mcp.example/a", "canary-static-3"),
        )
        .await;

    // delete
    let d = api
        .call(
            Method::DELETE,
            &format!("{base}/{}", again["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(d.body["type"], json!("vault_credential_deleted"));
    assert_eq!(
        relay.forgets.lock().unwrap().last().unwrap().credential_id,
        again["id"].as_str().unwrap()
    );
    api.expect_error(
        Method::DELETE,
        &format!("{base}/{}", again["id"].as_str().unwrap()),
        None,
        404,
        "not_found_error",
        "credential ",
    )
    .await;

    // archiving the vault archives (and forgets) its live credentials
    let forgets_before = relay.forgets.lock().unwrap().len();
    api.post(&format!("/v1/vaults/{vid}/archive"), json!({}))
        .await;
    assert_eq!(relay.forgets.lock().unwrap().len(), forgets_before + 2);
    let c = api.get(&format!("{base}/{oauth_id}")).await;
    assert!(c["archived_at"].is_string());
    api.expect_error(
        Method::POST,
        &base,
        Some(static_bearer("https://mcp.example/z", "canary-late")),
        400,
        "invalid_request_error",
        &format!("vault {vid} is archived"),
    )
    .await;

    // the relay had every secret; nothing else did
    for (_, fields) in relay.puts.lock().unwrap().iter() {
        for (_, value) in fields {
            let hits = files_containing(api.dir.path(), value);
            assert!(hits.is_empty(), "{value} found in {hits:?}");
        }
    }
    let page = api
        .catalog
        .list_credentials(
            vid,
            catalog::VaultQuery {
                include_archived: true,
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for c in page.items {
        assert!(!c.body.to_string().contains("canary"), "{}", c.body);
    }
}

#[tokio::test]
async fn a_secret_with_no_bridge_is_refused_and_nothing_is_stored() {
    // the production relay: no bridge is ever connected
    let api = Api::new().await;
    let (env, v) = pinned_vault(&api, "refused").await;
    let (env_id, vid) = (env["id"].as_str().unwrap(), v["id"].as_str().unwrap());
    let base = format!("/v1/vaults/{vid}/credentials");
    let canary = "canary-0f1e2d3c4b5a";
    let r = api
        .call(
            Method::POST,
            &base,
            Some(json!({"auth": {"type": "environment_variable", "secret_name": "API_KEY", "secret_value": canary,
                "networking": {"type": "unrestricted"}}})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 503, "{}", r.body);
    assert_eq!(r.body["error"]["type"], json!("api_error"));
    assert_eq!(
        r.body["error"]["details"]["error_code"],
        json!("vault_bridge_unavailable")
    );
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains(vid) && msg.contains(env_id), "{msg}");
    assert!(msg.contains("nothing was stored"), "{msg}");
    assert_eq!(r.headers["x-should-retry"], "false");
    assert!(!r.body.to_string().contains(canary));
    // nothing was stored: not even the metadata
    let l = api.get(&format!("{base}?include_archived=true")).await;
    assert_eq!(l["data"], json!([]));
    assert!(files_containing(api.dir.path(), canary).is_empty());

    // an unpinned vault has no bridge either
    let loose = api
        .post("/v1/vaults", json!({"display_name": "loose"}))
        .await;
    let lid = loose["id"].as_str().unwrap();
    let r = api
        .call(
            Method::POST,
            &format!("/v1/vaults/{lid}/credentials"),
            Some(static_bearer("https://m.example/", canary)),
        )
        .await;
    assert_eq!(r.status.as_u16(), 503, "{}", r.body);
    assert_eq!(
        r.body["error"]["details"]["error_code"],
        json!("vault_bridge_unavailable")
    );
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("is not pinned to an environment"));

    // a credential whose secret already lives in the customer's Vault
    let kv = api
        .post(
            &base,
            json!({"metadata": {"airlock.kv_path": "team/github"}, "display_name": "gh",
                   "auth": {"type": "static_bearer", "mcp_server_url": "https://mcp.example/gh"}}),
        )
        .await;
    assert_eq!(
        kv["auth"],
        json!({"type": "static_bearer", "mcp_server_url": "https://mcp.example/gh"})
    );
    assert_eq!(kv["metadata"], json!({"airlock.kv_path": "team/github"}));
    let kid = kv["id"].as_str().unwrap();
    assert_eq!(api.get(&format!("{base}/{kid}")).await, kv);
    // rotating its secret through the API still needs a bridge; nothing changes
    let r = api
        .call(
            Method::POST,
            &format!("{base}/{kid}"),
            Some(json!({"auth": {"type": "static_bearer", "token": canary}, "display_name": "changed"})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 503, "{}", r.body);
    assert_eq!(api.get(&format!("{base}/{kid}")).await, kv);
    // a relay that refuses (a bridge that cannot store it) is the same refusal
    let relay = Arc::new(RecordingRelay::default());
    relay.refuse.store(true, Ordering::SeqCst);
    let api2 = Api::with_relay(relay.clone()).await;
    let (_, v2) = pinned_vault(&api2, "refusing").await;
    let r = api2
        .call(
            Method::POST,
            &format!("/v1/vaults/{}/credentials", v2["id"].as_str().unwrap()),
            Some(static_bearer("https://m.example/", canary)),
        )
        .await;
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(relay.puts.lock().unwrap().len(), 1, "the relay was asked");
    assert!(files_containing(api2.dir.path(), canary).is_empty());
    let l = api2
        .get(&format!(
            "/v1/vaults/{}/credentials",
            v2["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(l["data"], json!([]));
}

#[tokio::test]
async fn vault_pins_move_only_without_live_credentials() {
    let relay = Arc::new(RecordingRelay::default());
    let api = Api::with_relay(relay.clone()).await;
    let (_, v) = pinned_vault(&api, "pinned").await;
    let vid = v["id"].as_str().unwrap();
    let other = api.environment("elsewhere").await;
    let c = api
        .post(
            &format!("/v1/vaults/{vid}/credentials"),
            static_bearer("https://m.example/", "canary-pin"),
        )
        .await;
    api.expect_error(
        Method::POST,
        &format!("/v1/vaults/{vid}"),
        Some(json!({"metadata": {PIN: other["id"]}})),
        400,
        "invalid_request_error",
        "metadata.airlock.environment_id: vault",
    )
    .await;
    api.post(
        &format!(
            "/v1/vaults/{vid}/credentials/{}/archive",
            c["id"].as_str().unwrap()
        ),
        json!({}),
    )
    .await;
    let moved = api
        .post(
            &format!("/v1/vaults/{vid}"),
            json!({"metadata": {PIN: other["id"]}}),
        )
        .await;
    assert_eq!(moved["metadata"][PIN], other["id"]);
}

#[tokio::test]
async fn sessions_take_vault_ids() {
    let api = Api::new().await;
    let agent = api.agent(json!({"name": "a", "model": "m"})).await;
    let (env, v) = pinned_vault(&api, "for-sessions").await;
    let loose = api
        .post("/v1/vaults", json!({"display_name": "loose"}))
        .await;
    let s = api
        .post(
            "/v1/sessions",
            json!({"agent": agent["id"], "environment_id": env["id"], "vault_ids": [v["id"], loose["id"]]}),
        )
        .await;
    assert_eq!(s["vault_ids"], json!([v["id"], loose["id"]]));
    let sid = s["id"].as_str().unwrap();
    assert_eq!(
        api.get(&format!("/v1/sessions/{sid}")).await["vault_ids"],
        s["vault_ids"]
    );
    let plain = api
        .post(
            "/v1/sessions",
            json!({"agent": agent["id"], "environment_id": env["id"]}),
        )
        .await;
    assert_eq!(plain["vault_ids"], json!([]));

    let create = |vault_ids: Value| json!({"agent": agent["id"], "environment_id": env["id"], "vault_ids": vault_ids});
    api.expect_error(
        Method::POST,
        "/v1/sessions",
        Some(create(json!([v["id"], "vlt_nope"]))),
        404,
        "not_found_error",
        "vault_ids.1: vault vlt_nope not found",
    )
    .await;
    api.expect_error(
        Method::POST,
        "/v1/sessions",
        Some(create(json!([v["id"], v["id"]]))),
        400,
        "invalid_request_error",
        "vault_ids.1:",
    )
    .await;
    api.expect_error(
        Method::POST,
        "/v1/sessions",
        Some(create(json!([7]))),
        400,
        "invalid_request_error",
        "vault_ids.0:",
    )
    .await;
    let other_env = api.environment("other-env").await;
    api.expect_error(
        Method::POST,
        "/v1/sessions",
        Some(json!({"agent": agent["id"], "environment_id": other_env["id"], "vault_ids": [v["id"]]})),
        400,
        "invalid_request_error",
        "vault_ids.0: vault",
    )
    .await;
    api.post(
        &format!("/v1/vaults/{}/archive", loose["id"].as_str().unwrap()),
        json!({}),
    )
    .await;
    api.expect_error(
        Method::POST,
        "/v1/sessions",
        Some(create(json!([loose["id"]]))),
        400,
        "invalid_request_error",
        &format!(
            "vault_ids.0: vault {} is archived",
            loose["id"].as_str().unwrap()
        ),
    )
    .await;
    // vault_ids cannot change after creation (reserved by the API)
    api.expect_error(
        Method::POST,
        &format!("/v1/sessions/{sid}"),
        Some(json!({"vault_ids": []})),
        400,
        "invalid_request_error",
        "vault_ids: not yet supported",
    )
    .await;
}
