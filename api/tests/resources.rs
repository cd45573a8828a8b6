//! Session `resources` (`github_repository`) and the
//! `/v1/sessions/{id}/resources` sub-API through the router, with a real
//! SQLite catalog and session store; every JSON response is validated
//! against `api/openapi.yaml`. Tokens go to a recording relay (or the
//! production `NoBridgeRelay`) and must appear nowhere else: not in a
//! response, not in any file of the data directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::{Api, RecordingRelay, Reply};
use http::Method;
use serde_json::{json, Value};

const CANARY: &str = "ghp_CANARY_7f3a9c1e_resources";

/// Files under `dir` whose bytes contain `needle`.
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

/// An agent and a fresh environment: `(agent_id, environment_id)`.
async fn agent_and_env(api: &Api) -> (String, String) {
    let agent = api
        .agent(
            json!({"name": format!("coder-{}", common::uuid_like()), "model": "claude-sonnet-4-5"}),
        )
        .await;
    let env = api
        .environment(&format!("env-{}", common::uuid_like()))
        .await;
    (
        agent["id"].as_str().unwrap().to_owned(),
        env["id"].as_str().unwrap().to_owned(),
    )
}

fn no_canary(r: &Reply) {
    let text = format!("{:?} {}", r.headers, r.body);
    assert!(!text.contains(CANARY), "the token was echoed: {text}");
}

#[tokio::test]
async fn resources_are_created_listed_rotated_and_deleted() {
    let relay = Arc::new(RecordingRelay::default());
    let api = Api::with_relay(relay.clone()).await;
    let (agent, env) = agent_and_env(&api).await;
    let r = api
        .call(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent": agent, "environment_id": env, "resources": [
                {"type": "github_repository", "url": "https://git.corp.example/team/widgets.git",
                 "authorization_token": CANARY, "checkout": {"type": "branch", "name": "main"}},
                {"type": "github_repository", "url": "https://github.com/acme/public-repo",
                 "checkout": {"type": "commit", "sha": "0123456789abcdef0123456789abcdef01234567"},
                 "mount_path": "/src/public"},
                {"type": "github_repository", "url": "https://gitlab.corp.example:8443/g/sub/tools"},
            ]})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    no_canary(&r);
    let session = r.body;
    let sid = session["id"].as_str().unwrap().to_owned();
    let res = session["resources"].as_array().unwrap().clone();
    assert_eq!(res.len(), 3);
    let ids: Vec<String> = res
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.iter().all(|id| id.starts_with("sesrsc_")));
    assert_eq!(res[0]["type"], json!("github_repository"));
    assert_eq!(
        res[0]["url"],
        json!("https://git.corp.example/team/widgets.git")
    );
    assert_eq!(res[0]["mount_path"], json!("/workspace/widgets"));
    assert_eq!(
        res[0]["checkout"],
        json!({"type": "branch", "name": "main"})
    );
    assert_eq!(res[1]["mount_path"], json!("/src/public"));
    assert_eq!(res[2]["mount_path"], json!("/workspace/tools"));
    assert_eq!(res[2]["checkout"], Value::Null);
    assert!(res[0].get("authorization_token").is_none());

    // only the token-bearing resource went to the relay, for this session
    {
        let tokens = relay.session_tokens.lock().unwrap();
        assert_eq!(tokens.len(), 1);
        let (t, token) = &tokens[0];
        assert_eq!(token, CANARY);
        assert_eq!(t.environment_id, env);
        assert_eq!(t.session_id, sid);
        assert_eq!(t.resource_id, ids[0]);
        assert_eq!(t.url, "https://git.corp.example/team/widgets.git");
    }

    // the session object and the stored body carry the resources (what the harness reads)
    let mut again = api.get(&format!("/v1/sessions/{sid}")).await;
    again["stats"] = session["stats"].clone();
    assert_eq!(again, session);
    let stored = api.store.get_session(&sid).await.unwrap();
    assert_eq!(stored.body["resources"], json!(res));
    assert!(!stored.body.to_string().contains(CANARY));

    // list: all when limit is omitted, pages with limit
    let base = format!("/v1/sessions/{sid}/resources");
    let all = api.get(&base).await;
    assert_eq!(all["data"], json!(res));
    assert_eq!(all["next_page"], Value::Null);
    let p1 = api.get(&format!("{base}?limit=2")).await;
    assert_eq!(p1["data"], json!(res[..2]));
    let next = p1["next_page"].as_str().unwrap().to_owned();
    let p2 = api.get(&format!("{base}?limit=2&page={next}")).await;
    assert_eq!(p2["data"], json!(res[2..]));
    assert_eq!(p2["next_page"], Value::Null);
    for (q, starts) in [
        ("limit=0", "limit: must be an integer from 1 to 1000"),
        ("limit=1001", "limit: must be an integer from 1 to 1000"),
        ("page=bogus", "page: not a page cursor"),
        ("order=asc", "order: unknown"),
    ] {
        api.expect_error(
            Method::GET,
            &format!("{base}?{q}"),
            None,
            400,
            "invalid_request_error",
            starts,
        )
        .await;
    }

    // retrieve
    assert_eq!(api.get(&format!("{base}/{}", ids[1])).await, res[1]);
    api.expect_error(
        Method::GET,
        &format!("{base}/sesrsc_nope"),
        None,
        404,
        "not_found_error",
        &format!("resource sesrsc_nope not found in session {sid}"),
    )
    .await;
    api.expect_error(
        Method::GET,
        "/v1/sessions/sesn_nope/resources",
        None,
        404,
        "not_found_error",
        "session sesn_nope not found",
    )
    .await;

    // rotation: to the relay, updated_at moves, the token is never echoed
    let rotated = format!("{CANARY}_rotated");
    let r = api
        .call(
            Method::POST,
            &format!("{base}/{}", ids[0]),
            Some(json!({"authorization_token": rotated})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    no_canary(&r);
    assert_eq!(r.body["id"], json!(ids[0]));
    assert_eq!(r.body["url"], res[0]["url"]);
    assert!(r.body["updated_at"].as_str().unwrap() >= res[0]["updated_at"].as_str().unwrap());
    assert_eq!(r.body["created_at"], res[0]["created_at"]);
    {
        let tokens = relay.session_tokens.lock().unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[1].1, rotated);
        assert_eq!(tokens[1].0.resource_id, ids[0]);
    }
    // a public repository gains a token the same way
    let r = api
        .call(
            Method::POST,
            &format!("{base}/{}", ids[1]),
            Some(json!({"authorization_token": CANARY})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    for (body, starts) in [
        (json!({}), "authorization_token: field required"),
        (
            json!({"authorization_token": ""}),
            "authorization_token: must not be empty",
        ),
        (
            json!({"authorization_token": 5}),
            "authorization_token: expected a string",
        ),
        (
            json!({"authorization_token": format!("a b{CANARY}")}),
            "authorization_token: must be printable ASCII",
        ),
        (
            json!({"authorization_token": "t", "url": "https://x/y/z"}),
            "url: unknown field",
        ),
    ] {
        let r = api
            .expect_error(
                Method::POST,
                &format!("{base}/{}", ids[0]),
                Some(body),
                400,
                "invalid_request_error",
                starts,
            )
            .await;
        no_canary(&r);
    }
    api.expect_error(
        Method::POST,
        &format!("{base}/sesrsc_nope"),
        Some(json!({"authorization_token": "t"})),
        404,
        "not_found_error",
        "resource sesrsc_nope not found",
    )
    .await;

    // adding is for file resources only, which need a Files API
    for (body, starts) in [
        (
            json!({"type": "file", "file_id": "file_1"}),
            "type: file resources are not supported: no Files API",
        ),
        (
            json!({"type": "github_repository", "url": "https://h/o/r"}),
            "type: github_repository resources are given when the session is created",
        ),
        (json!({}), "type: field required"),
    ] {
        api.expect_error(
            Method::POST,
            &base,
            Some(body),
            400,
            "invalid_request_error",
            starts,
        )
        .await;
    }
    api.expect_error(
        Method::POST,
        "/v1/sessions/sesn_nope/resources",
        Some(json!({"type": "file", "file_id": "file_1"})),
        404,
        "not_found_error",
        "session sesn_nope not found",
    )
    .await;

    // delete: gone from the session and the listing, the bridge forgets it
    let r = api
        .call(Method::DELETE, &format!("{base}/{}", ids[0]), None)
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"id": ids[0], "type": "session_resource_deleted"})
    );
    assert_eq!(
        relay
            .session_forgets
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.resource_id.clone())
            .collect::<Vec<_>>(),
        vec![ids[0].clone()]
    );
    api.expect_error(
        Method::DELETE,
        &format!("{base}/{}", ids[0]),
        None,
        404,
        "not_found_error",
        "resource",
    )
    .await;
    let left = api.get(&base).await;
    assert_eq!(
        left["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].clone())
            .collect::<Vec<_>>(),
        vec![json!(ids[1]), json!(ids[2])]
    );
    // a cursor whose resource was deleted still continues after it
    let after_first = api.get(&format!("{base}?limit=1")).await;
    assert_eq!(after_first["data"][0]["id"], json!(ids[1]));
    let session = api.get(&format!("/v1/sessions/{sid}")).await;
    assert_eq!(session["resources"].as_array().unwrap().len(), 2);

    // deleting the session tells the bridges to forget every token
    relay.session_forgets.lock().unwrap().clear();
    let r = api
        .call(Method::DELETE, &format!("/v1/sessions/{sid}"), None)
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let mut forgotten: Vec<String> = relay
        .session_forgets
        .lock()
        .unwrap()
        .iter()
        .map(|t| t.resource_id.clone())
        .collect();
    forgotten.sort();
    assert_eq!(forgotten, vec![ids[1].clone(), ids[2].clone()]);

    assert!(
        files_containing(api.dir.path(), CANARY).is_empty(),
        "the token reached the data dir"
    );
}

#[tokio::test]
async fn a_refused_token_creates_no_session_and_stores_nothing() {
    let relay = Arc::new(RecordingRelay::default());
    relay.refuse.store(true, Ordering::SeqCst);
    let api = Api::with_relay(relay.clone()).await;
    let (agent, env) = agent_and_env(&api).await;
    let r = api
        .expect_error(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent": agent, "environment_id": env, "resources": [
                {"type": "github_repository", "url": "https://h.example/o/public"},
                {"type": "github_repository", "url": "https://h.example/o/private", "authorization_token": CANARY},
            ]})),
            503,
            "api_error",
            &format!(
                "resources.1.authorization_token: no vault-bridge of environment {env} is connected to receive \
                 the token of https://h.example/o/private; the session was not created and nothing was stored"
            ),
        )
        .await;
    no_canary(&r);
    assert_eq!(
        r.body["error"]["details"]["error_code"],
        json!("vault_bridge_unavailable")
    );
    assert_eq!(r.headers["x-should-retry"], "false");
    assert_eq!(relay.session_tokens.lock().unwrap().len(), 1);
    let sessions = api.get("/v1/sessions").await;
    assert_eq!(sessions["data"], json!([]), "a session was stored");
    assert!(files_containing(api.dir.path(), CANARY).is_empty());

    // rotation refused: 503, the resource is unchanged
    relay.refuse.store(false, Ordering::SeqCst);
    let s = api
        .post(
            "/v1/sessions",
            json!({"agent": agent, "environment_id": env, "resources": [
                {"type": "github_repository", "url": "https://h.example/o/private", "authorization_token": CANARY}]}),
        )
        .await;
    let sid = s["id"].as_str().unwrap();
    let rid = s["resources"][0]["id"].as_str().unwrap();
    relay.refuse.store(true, Ordering::SeqCst);
    let r = api
        .expect_error(
            Method::POST,
            &format!("/v1/sessions/{sid}/resources/{rid}"),
            Some(json!({"authorization_token": format!("{CANARY}2")})),
            503,
            "api_error",
            &format!("authorization_token: no vault-bridge of environment {env} is connected"),
        )
        .await;
    no_canary(&r);
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("the resource still has its previous token"));
    assert_eq!(
        api.get(&format!("/v1/sessions/{sid}/resources/{rid}"))
            .await,
        s["resources"][0]
    );

    // archiving tells the bridges to forget; an archived session's resources cannot change
    api.post(&format!("/v1/sessions/{sid}/archive"), json!({}))
        .await;
    assert_eq!(
        relay.session_forgets.lock().unwrap()[0].resource_id,
        rid.to_owned()
    );
    relay.refuse.store(false, Ordering::SeqCst);
    api.expect_error(
        Method::POST,
        &format!("/v1/sessions/{sid}/resources/{rid}"),
        Some(json!({"authorization_token": "t"})),
        400,
        "invalid_request_error",
        &format!("session {sid} is archived"),
    )
    .await;
    api.expect_error(
        Method::DELETE,
        &format!("/v1/sessions/{sid}/resources/{rid}"),
        None,
        400,
        "invalid_request_error",
        &format!("session {sid} is archived"),
    )
    .await;
    assert!(files_containing(api.dir.path(), CANARY).is_empty());
}

#[tokio::test]
async fn the_production_relay_refuses_tokens_but_public_repositories_work() {
    let api = Api::new().await;
    let (agent, env) = agent_and_env(&api).await;
    let r = api
        .expect_error(
            Method::POST,
            "/v1/sessions",
            Some(json!({"agent": agent, "environment_id": env, "resources": [
                {"type": "github_repository", "url": "https://github.com/acme/private", "authorization_token": CANARY}]})),
            503,
            "api_error",
            "resources.0.authorization_token: no vault-bridge of environment",
        )
        .await;
    no_canary(&r);
    assert_eq!(api.get("/v1/sessions").await["data"], json!([]));
    let s = api
        .post(
            "/v1/sessions",
            json!({"agent": agent, "environment_id": env, "resources": [
                {"type": "github_repository", "url": "https://github.com/acme/public"}]}),
        )
        .await;
    assert_eq!(s["resources"][0]["mount_path"], json!("/workspace/public"));
    assert!(files_containing(api.dir.path(), CANARY).is_empty());
}

#[tokio::test]
async fn invalid_resources_are_refused_naming_the_field() {
    let relay = Arc::new(RecordingRelay::default());
    let api = Api::with_relay(relay.clone()).await;
    let (agent, env) = agent_and_env(&api).await;
    let gh = |extra: Value| {
        let mut v = json!({"type": "github_repository", "url": "https://git.example/o/r"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let too_many: Vec<Value> = (0..21)
        .map(|i| gh(json!({"mount_path": format!("/r/{i}")})))
        .collect();
    for (resources, starts) in [
        (
            json!([{"type": "file", "file_id": "file_1"}]),
            "resources.0.type: file resources are not supported: no Files API",
        ),
        (
            json!([gh(json!({})), {"type": "memory_store", "memory_store_id": "memstore_1"}]),
            "resources.1.type: memory_store resources are not supported",
        ),
        (
            json!([{"type": "volume"}]),
            "resources.0.type: unknown resource type",
        ),
        (
            json!([{"url": "https://h/o/r"}]),
            "resources.0.type: field required",
        ),
        (
            json!([{"type": "github_repository"}]),
            "resources.0.url: field required",
        ),
        (
            json!([gh(json!({"url": "https://user:pw@git.example/o/r"}))]),
            "resources.0.url: must not carry credentials",
        ),
        (
            json!([gh(json!({"url": "git@git.example:o/r.git"}))]),
            "resources.0.url: must be an https:// URL",
        ),
        (
            json!([gh(json!({"url": "https://git.example/o/r?ref=x"}))]),
            "resources.0.url: must not have a query",
        ),
        (
            json!([gh(json!({"url": "https://git.example"}))]),
            "resources.0.url: must have a path",
        ),
        (
            json!([gh(json!({"mount_path": "workspace/r"}))]),
            "resources.0.mount_path: must be an absolute path",
        ),
        (
            json!([gh(json!({"mount_path": "/workspace/../etc"}))]),
            "resources.0.mount_path: must be normalized",
        ),
        (
            json!([
                gh(json!({})),
                gh(json!({"url": "https://other.example/p/r.git"}))
            ]),
            "resources.1.mount_path: /workspace/r overlaps /workspace/r",
        ),
        (
            json!([gh(json!({"checkout": {"type": "commit", "sha": "abc"}}))]),
            "resources.0.checkout.sha: must be a full commit SHA",
        ),
        (
            json!([gh(json!({"checkout": {"type": "branch"}}))]),
            "resources.0.checkout.name: field required",
        ),
        (
            json!([gh(json!({"authorization_token": ["x"]}))]),
            "resources.0.authorization_token: expected a string",
        ),
        (
            json!([gh(json!({"authorization_token": format!("{CANARY}\n")}))]),
            "resources.0.authorization_token: must be printable ASCII",
        ),
        (
            json!([gh(json!({"token": "x"}))]),
            "resources.0.token: unknown field",
        ),
        (json!("x"), "resources: expected an array"),
        (Value::Array(too_many), "resources: at most 20 resources"),
    ] {
        let r = api
            .expect_error(
                Method::POST,
                "/v1/sessions",
                Some(json!({"agent": agent, "environment_id": env, "resources": resources})),
                400,
                "invalid_request_error",
                starts,
            )
            .await;
        no_canary(&r);
    }
    assert!(relay.session_tokens.lock().unwrap().is_empty());
    assert_eq!(api.get("/v1/sessions").await["data"], json!([]));
    // null and [] mean no resources
    for resources in [Value::Null, json!([])] {
        let s = api
            .post(
                "/v1/sessions",
                json!({"agent": agent, "environment_id": env, "resources": resources}),
            )
            .await;
        assert_eq!(s["resources"], json!([]));
    }
}
