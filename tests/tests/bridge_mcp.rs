//! The vault-bridge's MCP client against real MCP servers (the official
//! `mcp` Python SDK, `tests/mcp/servers.py`, over HTTPS with a test CA the
//! bridge trusts through `[egress] upstream_ca_files`) and a real OAuth
//! authorization server issuing short-lived tokens. A real `vault-bridge
//! serve` is spoken to over its agent channel, as the sandbox-agent does:
//!
//! - `static_bearer`: tools listed, a tool called (text, image, `isError`),
//!   one MCP session reused; wrong token → `authentication_failed`; server
//!   down → `connection_failed`; garbage → `invalid_response`; 5xx →
//!   `connection_failed`; a 50 MB result → `too_large`; every request is in
//!   the credential-use journal;
//! - a slow tool → `timeout` (the client in-process with a 2 s deadline);
//! - `mcp_oauth`: refresh on a 401 in the middle of a session and before
//!   expiry; 20 concurrent calls racing an expired token → exactly one
//!   refresh request at the authorization server; refreshed tokens survive a
//!   bridge restart (rotating refresh tokens: a lost one would fail);
//! - `mcp_validate`: valid / invalid with scrubbed bodies;
//! - the reference server `mcp-server-time` (PyPI) behind a bearer front;
//! - canary: no token in the bridge's log, journal or data files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use airlock_tests::bridge::{Bridge, BridgeOptions, Channel};
use airlock_tests::git_server::TestCa;
use airlock_tests::mcp::{McpServerOptions, McpTestServer, OAuthClient};
use protocol::bridge::{FromBridge, ToBridge};
use protocol::mcp::{
    McpCallTool, McpFailure, McpListTools, McpOutcome, McpReply, McpServer, McpValidate,
    McpValidation,
};
use protocol::relay::{
    CredentialBinding, EgressCredential, ForgetCredential, ForgetReason, OauthRefresh,
    PutCredential, TokenEndpointAuth, WireSecret,
};
use serde_json::{json, Value};

const VAULT: &str = "vlt_mcp";

fn skip() -> bool {
    if !airlock_tests::mcp::sdk_installed() {
        eprintln!("skipped: the `mcp` Python SDK is not installed");
        return true;
    }
    false
}

fn bearer(id: &str, url: &str) -> EgressCredential {
    EgressCredential {
        http_auth: Default::default(),
        vault_id: VAULT.into(),
        credential_id: id.into(),
        kv_path: None,
        binding: CredentialBinding::StaticBearer {
            mcp_server_url: url.into(),
        },
    }
}

fn oauth_cred(
    id: &str,
    server: &McpTestServer,
    client: OAuthClient,
    expires_at: Option<String>,
) -> EgressCredential {
    EgressCredential {
        http_auth: Default::default(),
        vault_id: VAULT.into(),
        credential_id: id.into(),
        kv_path: None,
        binding: CredentialBinding::McpOauth {
            mcp_server_url: server.url(),
            expires_at,
            refresh: Some(OauthRefresh {
                client_id: client.client_id().into(),
                token_endpoint: server.token_endpoint(),
                token_endpoint_auth: match client {
                    OAuthClient::None => TokenEndpointAuth::None,
                    OAuthClient::Basic => TokenEndpointAuth::ClientSecretBasic,
                    OAuthClient::Post => TokenEndpointAuth::ClientSecretPost,
                },
                scope: Some("notes.read notes.write".into()),
                resource: None,
            }),
        },
    }
}

async fn put(ch: &mut Channel, id: &str, fields: &[(&str, &str)]) {
    let a = ch
        .call(&ToBridge::PutCredential(PutCredential {
            vault_id: VAULT.into(),
            credential_id: id.into(),
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), WireSecret::new(*v)))
                .collect(),
        }))
        .await
        .unwrap();
    assert_eq!(a, FromBridge::Relayed { held: true });
}

fn list(session: &str, url: &str, creds: &[EgressCredential]) -> ToBridge {
    ToBridge::McpListTools(McpListTools {
        session_id: session.into(),
        server: McpServer {
            name: "srv".into(),
            url: url.into(),
        },
        credentials: creds.to_vec(),
    })
}

fn call(session: &str, url: &str, creds: &[EgressCredential], tool: &str, args: Value) -> ToBridge {
    ToBridge::McpCallTool(McpCallTool {
        session_id: session.into(),
        tool_use_id: format!("mcptoolu_{}", uuid::Uuid::new_v4().simple()),
        server: McpServer {
            name: "srv".into(),
            url: url.into(),
        },
        credentials: creds.to_vec(),
        tool: tool.into(),
        arguments: args,
    })
}

async fn mcp(ch: &mut Channel, m: &ToBridge) -> McpReply {
    match ch.call(m).await.unwrap() {
        FromBridge::Mcp(r) => r,
        other => panic!("not an mcp answer: {other:?}"),
    }
}

fn failure(r: &McpReply) -> (McpFailure, String) {
    match &r.outcome {
        McpOutcome::Failed { failure, message } => (failure.clone(), message.clone()),
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn called(r: &McpReply) -> (Vec<Value>, bool) {
    match &r.outcome {
        McpOutcome::Called { content, is_error } => (content.clone(), *is_error),
        other => panic!("expected a result, got {other:?}"),
    }
}

fn start_bridge(ca_file: &Path) -> Bridge {
    Bridge::start(BridgeOptions {
        upstream_ca_files: vec![ca_file.to_owned()],
        ..Default::default()
    })
    .unwrap()
}

fn journal(bridge: &Bridge) -> Vec<Value> {
    let text = std::fs::read_to_string(bridge.data_dir().join("audit/credential-uses.jsonl"))
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Every file under `dir` holding `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                if b.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    hits.push(p.display().to_string());
                }
            }
        }
    }
    hits
}

fn assert_no_canary(bridge: &Bridge, secrets: &[String]) {
    let log = bridge.log();
    for s in secrets {
        assert!(!log.contains(s.as_str()), "a secret is in the bridge's log");
        let hits = files_containing(&bridge.data_dir(), s);
        assert!(hits.is_empty(), "a secret is in plain text in {hits:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_bearer_lists_calls_and_maps_every_failure() {
    if skip() {
        return;
    }
    let ca = TestCa::new("mcp-test-ca").unwrap();
    let mut server = McpTestServer::tickets(Some(&ca)).unwrap();
    let bridge = start_bridge(server.ca_file().unwrap());
    let mut ch = Channel::connect(&bridge.socket_path()).await.unwrap();
    put(&mut ch, "vcrd_tickets", &[("token", server.token())]).await;
    put(
        &mut ch,
        "vcrd_wrong",
        &[("token", "canary-wrong-token-0417")],
    )
    .await;
    let url = server.url();
    // The credential matches the server URL in its normal form.
    let creds = vec![
        bearer("vcrd_other", "https://elsewhere.example.com/mcp"),
        bearer(
            "vcrd_tickets",
            &format!("{}/", url.to_uppercase().replace("/MCP", "/mcp")),
        ),
    ];

    let r = mcp(&mut ch, &list("sesn_a", &url, &creds)).await;
    assert_eq!(r.credential_id.as_deref(), Some("vcrd_tickets"));
    let McpOutcome::Tools { tools } = &r.outcome else {
        panic!("{r:?}\n{}", bridge.log());
    };
    let names: Vec<_> = tools.iter().map(|t| t.name.as_str()).collect();
    for want in ["search", "screenshot", "slow", "huge", "fail"] {
        assert!(names.contains(&want), "{names:?}");
    }
    let search = tools.iter().find(|t| t.name == "search").unwrap();
    assert_eq!(search.input_schema["type"], "object");

    let r = mcp(
        &mut ch,
        &call(
            "sesn_a",
            &url,
            &creds,
            "search",
            json!({"query": "printer on fire"}),
        ),
    )
    .await;
    let (content, is_error) = called(&r);
    assert!(!is_error);
    assert_eq!(content[0]["type"], "text");
    assert!(
        content[0]["text"]
            .as_str()
            .unwrap()
            .contains("printer on fire"),
        "{content:?}"
    );
    assert_eq!(
        server
            .count_calls("search", &json!({"query": "printer on fire"}))
            .unwrap(),
        1
    );

    let r = mcp(
        &mut ch,
        &call("sesn_a", &url, &creds, "screenshot", json!({})),
    )
    .await;
    let (content, _) = called(&r);
    let img = content
        .iter()
        .find(|b| b["type"] == "image")
        .expect("an image block");
    assert_eq!(img["source"]["type"], "base64");
    assert_eq!(img["source"]["media_type"], "image/png");
    assert!(!img["source"]["data"].as_str().unwrap().is_empty());

    let r = mcp(&mut ch, &call("sesn_a", &url, &creds, "fail", json!({}))).await;
    assert!(called(&r).1, "isError passed on");

    // One MCP session for the session: initialize once for all of the above.
    let inits = server
        .requests()
        .unwrap()
        .iter()
        .filter(|r| {
            r["rpc"]
                .as_array()
                .is_some_and(|a| a.iter().any(|m| m == "initialize"))
        })
        .count();
    assert_eq!(inits, 1, "the MCP session is reused");

    // Arguments that are not an object.
    let r = mcp(&mut ch, &call("sesn_a", &url, &creds, "search", json!([1]))).await;
    assert_eq!(failure(&r).0, McpFailure::InvalidRequest);

    // Wrong token; no credential at all.
    let wrong = vec![bearer("vcrd_wrong", &url)];
    let r = mcp(&mut ch, &list("sesn_b", &url, &wrong)).await;
    let (code, message) = failure(&r);
    assert_eq!(code, McpFailure::AuthenticationFailed, "{message}");
    assert!(message.contains("401"), "{message}");
    assert!(!message.contains("canary-wrong"), "{message}");
    let r = mcp(&mut ch, &list("sesn_b", &url, &[])).await;
    assert_eq!(failure(&r).0, McpFailure::AuthenticationFailed);
    assert_eq!(r.credential_id, None);

    // Broken servers.
    for (path, want) in [
        ("/garbage/mcp", McpFailure::InvalidResponse),
        ("/html/mcp", McpFailure::InvalidResponse),
        ("/notrpc/mcp", McpFailure::InvalidResponse),
        ("/status/503/mcp", McpFailure::ConnectionFailed),
    ] {
        let u = server.url_at(path);
        let r = mcp(&mut ch, &list("sesn_c", &u, &[bearer("vcrd_tickets", &u)])).await;
        let (code, message) = failure(&r);
        assert_eq!(code, want, "{path}: {message}");
    }

    // A 50 MB result: too large, and the bridge stays responsive.
    let started = std::time::Instant::now();
    let r = mcp(
        &mut ch,
        &call("sesn_a", &url, &creds, "huge", json!({"megabytes": 50})),
    )
    .await;
    let (code, message) = failure(&r);
    assert_eq!(code, McpFailure::TooLarge, "{message}");
    assert!(started.elapsed() < Duration::from_secs(60));
    let r = mcp(
        &mut ch,
        &call("sesn_a", &url, &creds, "search", json!({"query": "after"})),
    )
    .await;
    assert!(!called(&r).1);

    // Plain http to a non-loopback host is refused before any request.
    let r = mcp(&mut ch, &list("sesn_d", "http://10.255.255.1/mcp", &[])).await;
    let (code, message) = failure(&r);
    assert_eq!(code, McpFailure::InvalidRequest);
    assert!(message.contains("loopback"), "{message}");

    // Every request with a credential is journaled (POST on the MCP path).
    let uses = journal(&bridge);
    let mcp_uses: Vec<_> = uses
        .iter()
        .filter(|u| u["credential_id"] == "vcrd_tickets" && u["path"] == "/mcp")
        .collect();
    assert!(mcp_uses.len() >= 5, "{uses:?}");
    assert!(mcp_uses
        .iter()
        .all(|u| u["method"] == "POST" || u["method"] == "GET" || u["method"] == "DELETE"));
    assert!(mcp_uses
        .iter()
        .any(|u| u["session_id"] == "sesn_a" && u["status"] == 200));
    assert!(uses
        .iter()
        .any(|u| u["credential_id"] == "vcrd_wrong" && u["status"] == 401));

    // A result just under the cap crosses the agent channel in one frame.
    let r = mcp(
        &mut ch,
        &call("sesn_a", &url, &creds, "huge", json!({"megabytes": 0.6})),
    )
    .await;
    let (content, _) = called(&r);
    let text = content[0]["text"].as_str().unwrap();
    assert!(text.len() >= 600_000, "{}", text.len());

    // An archived credential: refused from then on, before any request.
    assert_eq!(
        ch.call(&ToBridge::ForgetCredential(ForgetCredential {
            vault_id: VAULT.into(),
            credential_id: "vcrd_wrong".into(),
            reason: ForgetReason::Archived,
        }))
        .await
        .unwrap(),
        FromBridge::Relayed { held: true }
    );
    let requests_before = server.requests().unwrap().len();
    let r = mcp(&mut ch, &list("sesn_e", &url, &wrong)).await;
    let (code, message) = failure(&r);
    assert_eq!(code, McpFailure::SecretUnavailable, "{message}");
    assert!(message.contains("vcrd_wrong"), "{message}");
    assert_eq!(server.requests().unwrap().len(), requests_before);

    // Server down.
    server.kill();
    let r = mcp(
        &mut ch,
        &call("sesn_a", &url, &creds, "search", json!({"query": "x"})),
    )
    .await;
    let (code, message) = failure(&r);
    assert_eq!(code, McpFailure::ConnectionFailed, "{message}");

    let mut secrets = server.secrets();
    secrets.push("canary-wrong-token-0417".into());
    assert_no_canary(&bridge, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_tool_times_out_within_the_configured_deadline() {
    if skip() {
        return;
    }
    let ca = TestCa::new("mcp-test-ca").unwrap();
    let server = McpTestServer::tickets(Some(&ca)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = vault_bridge::config::Config::parse(
        &format!("[bridge]\ndata_dir = \"{}\"\n", dir.path().display()),
        Path::new("test.toml"),
    )
    .unwrap();
    let backend = vault_bridge::backend::open(&config.backend).await.unwrap();
    let relay = Arc::new(
        vault_bridge::relay::Relay::open(dir.path(), backend, Duration::from_secs(5))
            .await
            .unwrap(),
    );
    let audit = Arc::new(vault_bridge::egress::MemoryAudit::new());
    let client = vault_bridge::mcp::McpClient::new(
        vault_bridge::mcp::McpConfig {
            call_timeout: Duration::from_secs(2),
            trust_roots: vault_bridge::egress::TrustRoots::Files(vec![server
                .ca_file()
                .unwrap()
                .to_owned()]),
            ..Default::default()
        },
        relay.clone(),
        audit.clone(),
    )
    .unwrap();
    relay
        .put_credential(&PutCredential {
            vault_id: VAULT.into(),
            credential_id: "vcrd_t".into(),
            fields: [("token".to_owned(), WireSecret::new(server.token()))].into(),
        })
        .await;
    let creds = vec![bearer("vcrd_t", &server.url())];
    let ToBridge::McpCallTool(slow) = call(
        "sesn_s",
        &server.url(),
        &creds,
        "slow",
        json!({"seconds": 10}),
    ) else {
        unreachable!()
    };
    let started = std::time::Instant::now();
    let r = client.call_tool(&slow).await;
    let (code, message) = failure(&r);
    assert_eq!(code, McpFailure::Timeout, "{message}");
    // the tool sleeps 10 s: ending well before that is the 2 s deadline
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // The session still serves the next call.
    let ToBridge::McpCallTool(fast) = call(
        "sesn_s",
        &server.url(),
        &creds,
        "search",
        json!({"query": "q"}),
    ) else {
        unreachable!()
    };
    assert!(!called(&client.call_tool(&fast).await).1);
    assert!(audit
        .events()
        .iter()
        .all(|e| e.credential_id.as_deref() == Some("vcrd_t")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_tokens_refresh_mid_session_once_for_twenty_calls_and_survive_a_restart() {
    if skip() {
        return;
    }
    let ca = TestCa::new("mcp-test-ca").unwrap();
    let mut opts = McpServerOptions::new(airlock_tests::mcp::McpKind::OAuth);
    opts.access_ttl_seconds = 300.0;
    let server = McpTestServer::start(opts, Some(&ca)).unwrap();
    let mut bridge = start_bridge(server.ca_file().unwrap());
    let mut ch = Channel::connect(&bridge.socket_path()).await.unwrap();
    let url = server.url();
    let client = OAuthClient::Basic;
    let pair = server.grant(client, None, None).unwrap();
    let secret = server.client_secret(client).unwrap().to_owned();
    put(
        &mut ch,
        "vcrd_oauth",
        &[
            ("access_token", &pair.access_token),
            ("refresh_token", &pair.refresh_token),
            ("client_secret", &secret),
        ],
    )
    .await;
    // Expiry unknown to the API: the bridge learns of it from a 401.
    let creds = vec![oauth_cred("vcrd_oauth", &server, client, None)];
    let mut canaries = vec![
        pair.access_token.clone(),
        pair.refresh_token.clone(),
        secret,
    ];
    canaries.extend(server.secrets());

    let r = mcp(&mut ch, &list("sesn_o", &url, &creds)).await;
    assert!(
        matches!(r.outcome, McpOutcome::Tools { .. }),
        "{r:?}\n{}",
        bridge.log()
    );
    assert_eq!(server.refresh_count().unwrap(), 0);

    // The token expires in the middle of the session: one 401, one refresh,
    // the call goes through on the same MCP session.
    server.expire_access_tokens().unwrap();
    let r = mcp(&mut ch, &list("sesn_o", &url, &creds)).await;
    assert!(
        matches!(r.outcome, McpOutcome::Tools { .. }),
        "{r:?}\n{}",
        bridge.log()
    );
    assert_eq!(server.refresh_count().unwrap(), 1);
    let stats = server.stats().unwrap();
    assert_eq!(
        stats["refreshes"][0]["auth"], "client_secret_basic",
        "{stats}"
    );
    assert_eq!(
        stats["refreshes"][0]["scope"], "notes.read notes.write",
        "{stats}"
    );

    // 20 concurrent calls racing an expired token (the token endpoint takes
    // a second): exactly one refresh request reaches the server.
    server.configure_oauth(300.0, 1.0).unwrap();
    server.expire_access_tokens().unwrap();
    let before = server.refresh_count().unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let socket = bridge.socket_path();
        let (url, creds) = (url.clone(), creds.clone());
        tasks.push(tokio::spawn(async move {
            let mut ch = Channel::connect(&socket).await.unwrap();
            mcp(
                &mut ch,
                &list(&format!("sesn_race_{}", i % 4), &url, &creds),
            )
            .await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert!(matches!(r.outcome, McpOutcome::Tools { .. }), "{r:?}");
    }
    assert_eq!(
        server.refresh_count().unwrap() - before,
        1,
        "{}",
        server.stats().unwrap()
    );
    assert_eq!(server.stats().unwrap()["max_concurrent_refreshes"], 1);

    // Restart: the refreshed (rotated) tokens come back from the backend; no
    // refresh is needed, and the next refresh uses the rotated refresh token.
    let refreshes = server.refresh_count().unwrap();
    bridge.kill9().unwrap();
    bridge.restart().unwrap();
    let mut ch = Channel::connect(&bridge.socket_path()).await.unwrap();
    let r = mcp(&mut ch, &list("sesn_o", &url, &creds)).await;
    assert!(
        matches!(r.outcome, McpOutcome::Tools { .. }),
        "{r:?}\n{}",
        bridge.log()
    );
    assert_eq!(
        server.refresh_count().unwrap(),
        refreshes,
        "no refresh after the restart"
    );
    server.configure_oauth(300.0, 0.0).unwrap();
    server.expire_access_tokens().unwrap();
    let r = mcp(&mut ch, &list("sesn_o", &url, &creds)).await;
    assert!(
        matches!(r.outcome, McpOutcome::Tools { .. }),
        "{r:?}\n{}",
        bridge.log()
    );
    assert_eq!(server.refresh_count().unwrap(), refreshes + 1);
    assert_eq!(server.stats().unwrap()["refresh_failed"], 0);

    // Before expiry: a credential whose token expires within the margin is
    // refreshed before the request (no 401 first).
    let pair2 = server.grant(OAuthClient::Post, None, None).unwrap();
    let secret2 = server.client_secret(OAuthClient::Post).unwrap().to_owned();
    put(
        &mut ch,
        "vcrd_soon",
        &[
            ("access_token", &pair2.access_token),
            ("refresh_token", &pair2.refresh_token),
            ("client_secret", &secret2),
        ],
    )
    .await;
    canaries.extend([
        pair2.access_token.clone(),
        pair2.refresh_token.clone(),
        secret2,
    ]);
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(5);
    let soon = soon
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let creds2 = vec![oauth_cred(
        "vcrd_soon",
        &server,
        OAuthClient::Post,
        Some(soon),
    )];
    let unauthorized_before = server
        .requests()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == 401)
        .count();
    let before = server.refresh_count().unwrap();
    let r = mcp(&mut ch, &list("sesn_soon", &url, &creds2)).await;
    assert!(
        matches!(r.outcome, McpOutcome::Tools { .. }),
        "{r:?}\n{}",
        bridge.log()
    );
    assert_eq!(server.refresh_count().unwrap(), before + 1);
    let stats = server.stats().unwrap();
    let last = stats["refreshes"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["auth"], "client_secret_post", "{stats}");
    let unauthorized_after = server
        .requests()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == 401)
        .count();
    assert_eq!(
        unauthorized_after, unauthorized_before,
        "refreshed before, not after a 401"
    );

    // A refresh that is refused: authentication_failed, once.
    server.revoke_refresh_tokens().unwrap();
    server.expire_access_tokens().unwrap();
    let r = mcp(&mut ch, &list("sesn_o", &url, &creds)).await;
    let (code, message) = failure(&r);
    assert_eq!(code, McpFailure::AuthenticationFailed, "{message}");
    assert!(message.contains("refresh"), "{message}");

    // Refreshed tokens (new values) are never logged either.
    assert_no_canary(&bridge, &canaries);
    let log = bridge.log();
    let bearer_lines: Vec<_> = log
        .lines()
        .filter(|l| {
            // A server's `WWW-Authenticate: Bearer error=...` challenge is
            // not a credential; anything else after "Bearer " would be.
            l.match_indices("Bearer ").any(|(i, m)| {
                let rest = l[i + m.len()..].trim_start_matches(['\\', '"']);
                !["error=", "realm=", "resource_metadata=", "scope="]
                    .iter()
                    .any(|p| rest.starts_with(p))
            })
        })
        .map(|l| l.chars().take(300).collect::<String>())
        .collect();
    assert!(
        bearer_lines.is_empty(),
        "an Authorization value in the log: {bearer_lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_reports_valid_invalid_and_scrubs_bodies() {
    if skip() {
        return;
    }
    let ca = TestCa::new("mcp-test-ca").unwrap();
    let mut opts = McpServerOptions::new(airlock_tests::mcp::McpKind::OAuth);
    opts.access_ttl_seconds = 300.0;
    let server = McpTestServer::start(opts, Some(&ca)).unwrap();
    let bridge = start_bridge(server.ca_file().unwrap());
    let mut ch = Channel::connect(&bridge.socket_path()).await.unwrap();
    let client = OAuthClient::None;
    let pair = server.grant(client, None, None).unwrap();
    put(
        &mut ch,
        "vcrd_v",
        &[
            ("access_token", &pair.access_token),
            ("refresh_token", &pair.refresh_token),
        ],
    )
    .await;
    let cred = oauth_cred("vcrd_v", &server, client, None);
    let validate = |c: &EgressCredential| {
        ToBridge::McpValidate(McpValidate {
            credential: c.clone(),
        })
    };
    let v = match ch.call(&validate(&cred)).await.unwrap() {
        FromBridge::McpValidated(v) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(v.status, "valid", "{v:?}");
    assert!(v.has_refresh_token);
    let probe = v.mcp_probe.as_ref().unwrap();
    assert_eq!(probe.method, "tools/list");
    assert_eq!(probe.http_response.as_ref().unwrap().status_code, 200);
    assert!(v.refresh.is_none());

    // Expired access token: refreshed during the probe, still valid.
    server.expire_access_tokens().unwrap();
    let v: McpValidation = match ch.call(&validate(&cred)).await.unwrap() {
        FromBridge::McpValidated(v) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(v.status, "valid", "{v:?}");
    assert_eq!(v.refresh.as_ref().unwrap().status, "succeeded");
    let body = &v
        .refresh
        .as_ref()
        .unwrap()
        .http_response
        .as_ref()
        .unwrap()
        .body;
    assert!(body.contains("[redacted]"), "{body}");
    assert!(!body.contains(&pair.refresh_token));

    // Refresh refused: invalid, with the endpoint's answer.
    server.revoke_refresh_tokens().unwrap();
    server.expire_access_tokens().unwrap();
    let v: McpValidation = match ch.call(&validate(&cred)).await.unwrap() {
        FromBridge::McpValidated(v) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(v.status, "invalid", "{v:?}");
    let refresh = v.refresh.as_ref().unwrap();
    assert_eq!(refresh.status, "failed");
    let answer = refresh.http_response.as_ref().unwrap();
    assert!(answer.status_code >= 400);
    assert_eq!(
        v.mcp_probe
            .as_ref()
            .unwrap()
            .http_response
            .as_ref()
            .unwrap()
            .status_code,
        401
    );

    // A static bearer with a wrong token and no refresh: invalid.
    put(&mut ch, "vcrd_bad", &[("token", "canary-bad-bearer-77")]).await;
    let v: McpValidation = match ch
        .call(&validate(&bearer("vcrd_bad", &server.url())))
        .await
        .unwrap()
    {
        FromBridge::McpValidated(v) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(v.status, "invalid", "{v:?}");
    assert!(!v.has_refresh_token);
    let mut canaries = vec![
        pair.access_token,
        pair.refresh_token,
        "canary-bad-bearer-77".into(),
    ];
    canaries.extend(server.secrets());
    assert_no_canary(&bridge, &canaries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_time_server_answers_through_the_bridge() {
    if skip() {
        return;
    }
    let ca = TestCa::new("mcp-test-ca").unwrap();
    let server = McpTestServer::time(Some(&ca)).unwrap();
    let bridge = start_bridge(server.ca_file().unwrap());
    let mut ch = Channel::connect(&bridge.socket_path()).await.unwrap();
    put(&mut ch, "vcrd_time", &[("token", server.token())]).await;
    let url = server.url();
    let creds = vec![bearer("vcrd_time", &url)];
    let r = mcp(&mut ch, &list("sesn_t", &url, &creds)).await;
    let McpOutcome::Tools { tools } = &r.outcome else {
        panic!("{r:?}\n{}\n{}", bridge.log(), server.log());
    };
    assert!(
        tools.iter().any(|t| t.name == "get_current_time"),
        "{tools:?}"
    );
    let r = mcp(
        &mut ch,
        &call(
            "sesn_t",
            &url,
            &creds,
            "get_current_time",
            json!({"timezone": "UTC"}),
        ),
    )
    .await;
    let (content, is_error) = called(&r);
    assert!(!is_error, "{content:?}");
    let text = content[0]["text"].as_str().unwrap();
    let year = time::OffsetDateTime::now_utc().year().to_string();
    assert!(text.contains("UTC") && text.contains(&year), "{text}");
    assert_no_canary(&bridge, &server.secrets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_changes_its_tools_is_flagged_until_listed_again() {
    if skip() {
        return;
    }
    let ca = TestCa::new("mcp-test-ca").unwrap();
    let server = McpTestServer::tickets(Some(&ca)).unwrap();
    let bridge = start_bridge(server.ca_file().unwrap());
    let mut ch = Channel::connect(&bridge.socket_path()).await.unwrap();
    put(&mut ch, "vcrd_tickets", &[("token", server.token())]).await;
    let url = server.url();
    let creds = vec![bearer("vcrd_tickets", &url)];
    let names = |r: &McpReply| -> Vec<String> {
        let McpOutcome::Tools { tools } = &r.outcome else {
            panic!("{r:?}")
        };
        tools.iter().map(|t| t.name.clone()).collect()
    };
    let r = mcp(&mut ch, &list("sesn_g", &url, &creds)).await;
    assert!(!names(&r).contains(&"extra".to_owned()));
    let r = mcp(
        &mut ch,
        &call("sesn_g", &url, &creds, "search", json!({"query": "q"})),
    )
    .await;
    assert!(!r.tools_changed, "nothing changed yet: {r:?}");
    // `grow` adds a tool and sends notifications/tools/list_changed.
    let r = mcp(&mut ch, &call("sesn_g", &url, &creds, "grow", json!({}))).await;
    called(&r);
    let mut flagged = r.tools_changed;
    // The notification may be handled just after the reply: the flag stays
    // up on the session's next replies until it lists again.
    for _ in 0..20 {
        if flagged {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let r = mcp(
            &mut ch,
            &call("sesn_g", &url, &creds, "search", json!({"query": "again"})),
        )
        .await;
        flagged = r.tools_changed;
    }
    assert!(flagged, "tools_changed never reported\n{}", bridge.log());
    let r = mcp(&mut ch, &list("sesn_g", &url, &creds)).await;
    assert!(names(&r).contains(&"extra".to_owned()), "{:?}", names(&r));
    let r = mcp(&mut ch, &call("sesn_g", &url, &creds, "extra", json!({}))).await;
    assert!(!r.tools_changed, "cleared by the listing: {r:?}");
    assert_eq!(called(&r).0[0]["text"], "extra ran");
}
