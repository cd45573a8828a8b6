//! An `mcp_oauth` refresh with a public client (`token_endpoint_auth: none`)
//! sends the credential's `scope` and `resource` (RFC 8707) to the token
//! endpoint (issue 10, item 4): a real `vault-bridge serve`, the
//! `oauth-notes` server of `tests/mcp/servers.py` behind the `mcp` SDK's
//! OAuth 2.1 authorization server. The access token is expired on the
//! server; the next listing gets a 401, the bridge refreshes once with
//! `client_id` in the form, `scope` and `resource`, and the listing goes
//! through. The authorization server's own record of the refresh request is
//! what is checked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use airlock_tests::bridge::{Bridge, BridgeOptions, Channel};
use airlock_tests::git_server::TestCa;
use airlock_tests::mcp::{McpKind, McpServerOptions, McpTestServer, OAuthClient};
use protocol::bridge::{FromBridge, ToBridge};
use protocol::mcp::{McpListTools, McpOutcome, McpServer};
use protocol::relay::{
    CredentialBinding, EgressCredential, OauthRefresh, PutCredential, TokenEndpointAuth, WireSecret,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_client_refresh_sends_scope_and_resource() {
    if !airlock_tests::mcp::sdk_installed() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the `mcp` Python SDK is not installed (scripts/setup.d/55-mcp.sh)");
        }
        eprintln!("skipped: the `mcp` Python SDK is not installed");
        return;
    }
    let ca = TestCa::new("mcp-resource-ca").unwrap();
    let mut opts = McpServerOptions::new(McpKind::OAuth);
    opts.access_ttl_seconds = 300.0;
    let server = McpTestServer::start(opts, Some(&ca)).unwrap();
    let bridge = Bridge::start(BridgeOptions {
        upstream_ca_files: vec![server.ca_file().unwrap().to_owned()],
        ..Default::default()
    })
    .unwrap();
    let url = server.url();
    let pair = server
        .grant(OAuthClient::None, Some("notes.read"), Some(&url))
        .unwrap();
    let mut ch = Channel::connect(&bridge.socket_path()).await.unwrap();
    let put = PutCredential {
        vault_id: "vlt_res".into(),
        credential_id: "vcrd_res".into(),
        fields: [
            (
                "access_token".to_owned(),
                WireSecret::new(pair.access_token.clone()),
            ),
            (
                "refresh_token".to_owned(),
                WireSecret::new(pair.refresh_token.clone()),
            ),
        ]
        .into(),
    };
    assert_eq!(
        ch.call(&ToBridge::PutCredential(put)).await.unwrap(),
        FromBridge::Relayed { held: true }
    );
    let list = ToBridge::McpListTools(McpListTools {
        session_id: "sesn_res".into(),
        server: McpServer {
            name: "notes".into(),
            url: url.clone(),
        },
        credentials: vec![EgressCredential {
            http_auth: Default::default(),
            vault_id: "vlt_res".into(),
            credential_id: "vcrd_res".into(),
            kv_path: None,
            binding: CredentialBinding::McpOauth {
                mcp_server_url: url.clone(),
                expires_at: None,
                refresh: Some(OauthRefresh {
                    client_id: OAuthClient::None.client_id().into(),
                    token_endpoint: server.token_endpoint(),
                    token_endpoint_auth: TokenEndpointAuth::None,
                    scope: Some("notes.read".into()),
                    resource: Some(url.clone()),
                }),
            },
        }],
    });
    let listed = |r: FromBridge| match r {
        FromBridge::Mcp(r) => matches!(r.outcome, McpOutcome::Tools { .. }),
        _ => false,
    };
    let r = ch.call(&list).await.unwrap();
    assert!(listed(r.clone()), "{r:?}\n{}", bridge.log());
    assert_eq!(server.refresh_count().unwrap(), 0);

    server.expire_access_tokens().unwrap();
    let r = ch.call(&list).await.unwrap();
    assert!(listed(r.clone()), "{r:?}\n{}", bridge.log());
    assert_eq!(server.refresh_count().unwrap(), 1);
    let stats = server.stats().unwrap();
    let refresh = &stats["refreshes"][0];
    assert_eq!(refresh["auth"], "none", "{stats}");
    assert_eq!(
        refresh["client_id"],
        OAuthClient::None.client_id(),
        "{stats}"
    );
    assert_eq!(refresh["scope"], "notes.read", "{stats}");
    assert_eq!(refresh["resource"], url.as_str(), "{stats}");
    assert_eq!(stats["refresh_succeeded"], 1, "{stats}");
    for s in [&pair.access_token, &pair.refresh_token] {
        assert!(
            !bridge.log().contains(s.as_str()),
            "a token in the bridge's log"
        );
    }
}
