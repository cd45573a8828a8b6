//! The MCP test servers of `tests/mcp/servers.py` (fixture `airlock_tests::mcp`)
//! do what the MCP tests rely on: each answers `initialize` + `tools/list`
//! with its token and refuses without it; the tools answer as documented;
//! the broken paths are broken; the OAuth server refreshes with each client
//! authentication method, counts refreshes, rotates refresh tokens and its
//! access tokens expire.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use airlock_tests::mcp::{McpTestServer, OAuthClient, TestCa};
use serde_json::json;

/// POST `form` to the token endpoint with curl, with HTTP Basic `basic`
/// (user:password) when given; secrets travel on curl's stdin.
fn token_request(s: &McpTestServer, form: &str, basic: Option<&str>) -> (u16, serde_json::Value) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut config = String::new();
    if let Some(b) = basic {
        config.push_str(&format!("user = \"{b}\"\n"));
    }
    config.push_str(&format!("data = \"{form}\"\n"));
    let mut c = Command::new("curl");
    c.args(["-sS", "--noproxy", "*", "-K", "-", "-w", "\n%{http_code}"]);
    if let Some(ca) = s.ca_file() {
        c.arg("--cacert").arg(ca);
    }
    let mut child = c
        .arg(s.token_endpoint())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), serde_json::from_str(body).unwrap())
}

/// A refresh as `client` authenticates at the token endpoint.
fn refresh(
    s: &McpTestServer,
    client: OAuthClient,
    refresh_token: &str,
    extra: &str,
) -> (u16, serde_json::Value) {
    let form = format!("grant_type=refresh_token&refresh_token={refresh_token}{extra}");
    match client {
        OAuthClient::None => token_request(s, &format!("{form}&client_id=client-none"), None),
        OAuthClient::Basic => token_request(
            s,
            &form,
            Some(&format!(
                "client-basic:{}",
                s.client_secret(client).unwrap()
            )),
        ),
        OAuthClient::Post => token_request(
            s,
            &format!(
                "{form}&client_id=client-post&client_secret={}",
                s.client_secret(client).unwrap()
            ),
            None,
        ),
    }
}

#[test]
fn tickets_needs_its_token_and_its_tools_answer() {
    let ca = TestCa::new("airlock mcp test CA").unwrap();
    let s = McpTestServer::tickets(Some(&ca)).unwrap();
    assert!(s.url().starts_with("https://127.0.0.1:"), "{}", s.url());

    let mut tools = s.list_tools_with(&s.url(), Some(s.token())).unwrap();
    tools.sort();
    assert_eq!(
        tools,
        ["fail", "grow", "huge", "screenshot", "search", "slow"]
    );

    let no = s
        .post_rpc(
            &s.url(),
            None,
            None,
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize"}),
        )
        .unwrap();
    assert_eq!(no.status, 401);
    assert!(no.www_authenticate.unwrap().starts_with("Bearer"));
    let wrong = s
        .list_tools_with(&s.url(), Some("not-the-token"))
        .unwrap_err();
    assert!(wrong.to_string().contains("HTTP 401"), "{wrong:#}");
    assert!(!s.log().contains(s.token()), "token in the server log");

    let r = s
        .call_tool_with(
            &s.url(),
            Some(s.token()),
            "search",
            &json!({"query": "vpn-4711", "limit": 2}),
        )
        .unwrap();
    assert_eq!(r["isError"], json!(false));
    let text = r["content"][0]["text"].as_str().unwrap();
    let echoed: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(echoed["query"], "vpn-4711");
    assert_eq!(echoed["limit"], 2);

    let img = s
        .call_tool_with(&s.url(), Some(s.token()), "screenshot", &json!({}))
        .unwrap();
    assert_eq!(img["content"][0]["type"], "image");
    assert_eq!(img["content"][0]["mimeType"], "image/png");
    let data = img["content"][0]["data"].as_str().unwrap();
    assert!(data.starts_with("iVBORw0KGgo"), "not a PNG: {data}");

    let failed = s
        .call_tool_with(
            &s.url(),
            Some(s.token()),
            "fail",
            &json!({"message": "db down"}),
        )
        .unwrap();
    assert_eq!(failed["isError"], json!(true));
    assert!(failed["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("db down"));

    let t0 = std::time::Instant::now();
    let slow = s
        .call_tool_with(&s.url(), Some(s.token()), "slow", &json!({"seconds": 1.5}))
        .unwrap();
    assert!(t0.elapsed() >= std::time::Duration::from_millis(1500));
    assert_eq!(slow["content"][0]["text"], "slept 1.5 s");

    let huge = s
        .call_tool_with(&s.url(), Some(s.token()), "huge", &json!({"megabytes": 2}))
        .unwrap();
    assert_eq!(
        huge["content"][0]["text"].as_str().unwrap().len(),
        2 * 1024 * 1024
    );

    // Each tools/call is in the call log once, with its arguments.
    assert_eq!(
        s.count_calls("search", &json!({"query": "vpn-4711", "limit": 2}))
            .unwrap(),
        1
    );
    assert_eq!(s.count_calls("slow", &json!({"seconds": 1.5})).unwrap(), 1);
    let calls = s.calls().unwrap();
    assert_eq!(
        calls.iter().map(|c| c.tool.as_str()).collect::<Vec<_>>(),
        ["search", "screenshot", "fail", "slow", "huge"]
    );
    // No tools/call without the token reached the log as a success.
    let reqs = s.requests().unwrap();
    assert!(reqs.iter().any(|r| r["status"] == 401));
}

#[test]
fn tickets_broken_paths_are_broken() {
    let s = McpTestServer::tickets(None).unwrap();
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let g = s
        .post_rpc(&s.url_at("/garbage/mcp"), Some(s.token()), None, &list)
        .unwrap();
    assert_eq!(g.status, 200);
    assert!(g.message().is_err(), "garbage parsed: {}", g.body);
    let h = s
        .post_rpc(&s.url_at("/html/mcp"), Some(s.token()), None, &list)
        .unwrap();
    assert!(h.body.contains("<html>"));
    let n = s
        .post_rpc(&s.url_at("/notrpc/mcp"), Some(s.token()), None, &list)
        .unwrap();
    let v = n.message().unwrap();
    assert!(v.get("jsonrpc").is_none());
    let e = s
        .post_rpc(&s.url_at("/status/503/mcp"), Some(s.token()), None, &list)
        .unwrap();
    assert_eq!(e.status, 503);
}

#[test]
fn oauth_server_refreshes_counts_and_expires() {
    let ca = TestCa::new("airlock mcp test CA").unwrap();
    // Tokens live 5 s: long enough for three TLS requests on a loaded machine.
    let s = McpTestServer::oauth(Some(&ca), 5.0).unwrap();
    assert_eq!(s.refresh_count().unwrap(), 0);

    let pair = s.grant(OAuthClient::Basic, None, Some(&s.url())).unwrap();
    assert_eq!(pair.expires_in, 5);
    let mut tools = s
        .list_tools_with(&s.url(), Some(&pair.access_token))
        .unwrap();
    tools.sort();
    assert_eq!(tools, ["add_note", "list_notes", "whoami"]);

    // Without a token, and with the token once it expired: 401 naming the
    // protected-resource metadata.
    let no = s
        .post_rpc(
            &s.url(),
            None,
            None,
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize"}),
        )
        .unwrap();
    assert_eq!(no.status, 401);
    assert!(no.www_authenticate.unwrap().contains("resource_metadata="));
    let expired = testkit::try_eventually_blocking(
        "the access token to expire",
        std::time::Duration::from_secs(20),
        || s.list_tools_with(&s.url(), Some(&pair.access_token)).err(),
    )
    .unwrap();
    assert!(expired.to_string().contains("HTTP 401"), "{expired:#}");

    // client_secret_basic (client_id only in the header), with scope and resource.
    let (code, v) = refresh(
        &s,
        OAuthClient::Basic,
        &pair.refresh_token,
        &format!("&scope=notes.read&resource={}", s.url()),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["scope"], "notes.read");
    let new_access = v["access_token"].as_str().unwrap().to_owned();
    assert_ne!(new_access, pair.access_token);
    assert_eq!(
        s.list_tools_with(&s.url(), Some(&new_access))
            .unwrap()
            .len(),
        3
    );
    // Rotation: the old refresh token is spent.
    let (code, v) = refresh(&s, OAuthClient::Basic, &pair.refresh_token, "");
    assert_eq!(code, 400);
    assert_eq!(v["error"], "invalid_grant");

    // client_secret_post and none.
    let post = s.grant(OAuthClient::Post, None, None).unwrap();
    assert_eq!(
        refresh(&s, OAuthClient::Post, &post.refresh_token, "").0,
        200
    );
    let public = s.grant(OAuthClient::None, None, None).unwrap();
    assert_eq!(
        refresh(&s, OAuthClient::None, &public.refresh_token, "").0,
        200
    );
    // A confidential client without its secret is refused (invalid_client).
    let basic2 = s.grant(OAuthClient::Basic, None, None).unwrap();
    let (code, v) = token_request(
        &s,
        &format!(
            "grant_type=refresh_token&refresh_token={}&client_id=client-basic",
            basic2.refresh_token
        ),
        None,
    );
    assert_eq!((code, v["error"].as_str()), (401, Some("invalid_client")));
    // Another client's refresh token is refused (invalid_grant).
    assert_eq!(
        refresh(&s, OAuthClient::None, &basic2.refresh_token, "").1["error"],
        "invalid_grant"
    );

    let stats = s.stats().unwrap();
    assert_eq!(stats["refresh_requests"], 6, "{stats}");
    assert_eq!(stats["refresh_succeeded"], 3, "{stats}");
    let auths: Vec<&str> = stats["refreshes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["auth"].as_str().unwrap())
        .collect();
    assert_eq!(
        auths,
        [
            "client_secret_basic",
            "client_secret_basic",
            "client_secret_post",
            "none",
            "none",
            "none"
        ]
    );
    assert_eq!(stats["refreshes"][0]["resource"], s.url());
    let stats_text = stats.to_string();
    for secret in s
        .secrets()
        .iter()
        .chain([&pair.access_token, &pair.refresh_token])
    {
        assert!(!stats_text.contains(secret.as_str()), "a secret in /stats");
    }

    // Admin: expire now, revoke refresh tokens.
    let fresh = s.grant(OAuthClient::None, None, None).unwrap();
    assert_eq!(
        s.list_tools_with(&s.url(), Some(&fresh.access_token))
            .unwrap()
            .len(),
        3
    );
    s.expire_access_tokens().unwrap();
    assert!(s
        .list_tools_with(&s.url(), Some(&fresh.access_token))
        .is_err());
    s.revoke_refresh_tokens().unwrap();
    assert_eq!(
        refresh(&s, OAuthClient::None, &fresh.refresh_token, "").0,
        400
    );
}

#[test]
fn time_reference_server_behind_its_front() {
    let s = McpTestServer::time(None).unwrap();
    let mut tools = s.list_tools_with(&s.url(), Some(s.token())).unwrap();
    tools.sort();
    assert_eq!(tools, ["convert_time", "get_current_time"]);
    assert!(s.list_tools_with(&s.url(), None).is_err());
    let r = s
        .call_tool_with(
            &s.url(),
            Some(s.token()),
            "get_current_time",
            &json!({"timezone": "Europe/Paris"}),
        )
        .unwrap();
    assert_eq!(r["isError"], json!(false), "{r}");
    let text = r["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("Europe/Paris"), "{text}");
    assert_eq!(s.calls().unwrap().len(), 1);
}
