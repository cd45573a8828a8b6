//! Clone at provision, end to end on real components: a real `vault-bridge
//! serve` holding a session's repository token (relayed over its agent
//! channel as the control plane's `put_session_token` arrives), the
//! sandbox-agent's service on real Docker with `[bridge]` and the default
//! sandbox image (git, curl), and a real Git server (git http-backend behind
//! nginx, HTTPS, basic auth).
//!
//! - the session's repository is cloned into `/workspace/<name>` inside the
//!   sandbox at provision, through the bridge (which adds the token);
//! - bash in the sandbox commits and pushes; the push is on the server;
//! - a repository the session holds no token for is a resource error of
//!   the SDK's type (`repository_authentication_error`), not a failed
//!   provision;
//! - the token is nowhere the sandbox can read: environment,
//!   `/proc/*/environ` and `cmdline`, `git config --show-origin -l`, any
//!   file under `/workspace`, `/home`, `/tmp`, `/etc`, `/run`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use airlock_tests::bridge::{Bridge, BridgeOptions, Channel};
use airlock_tests::git_server::{GitServer, TestCa};
use airlock_tests::sandbox::{TestAgent, Tools};
use protocol::bridge::{FromBridge, ToBridge};
use protocol::relay::{PutSessionToken, WireSecret};
use protocol::sandbox::{DestroyRequest, ProvisionRequest};
use sandbox_agent::sandbox::SandboxService;
use serde_json::json;

const TOKEN: &str = "canary-clone-token-c7d2e0";
const SESSION: &str = "sesn_clone";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sessions_repository_is_cloned_through_the_bridge_and_pushed_without_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("bridge-clone test ca").unwrap();
    let ca_file = tmp.path().join("upstream-ca.pem");
    ca.write_cert(&ca_file).unwrap();
    let user = vault_bridge::agent_channel_egress::GIT_TOKEN_USERNAME;
    let server = GitServer::start(&ca, "localhost", user, TOKEN).unwrap();
    server.create_random_repo("app", 2, 4096).unwrap();
    server.create_random_repo("other", 1, 1024).unwrap();
    let bridge = Bridge::start(BridgeOptions {
        upstream_ca_files: vec![ca_file],
        ..Default::default()
    })
    .unwrap();

    let held = Channel::once(
        &bridge.socket_path(),
        &ToBridge::PutSessionToken(PutSessionToken {
            session_id: SESSION.into(),
            resource_id: "sesrsc_app".into(),
            url: server.localhost_url("app"),
            token: WireSecret::new(TOKEN),
        }),
    )
    .await
    .unwrap();
    assert_eq!(held, FromBridge::Relayed { held: true });

    let mut agent = TestAgent::new();
    let (svc, _) = SandboxService::start(agent.with_bridge(bridge.agent_settings()))
        .await
        .unwrap();
    let app_url = server.localhost_url("app");
    let p = svc
        .provision(ProvisionRequest {
            session_id: Some(SESSION.into()),
            resources: vec![
                json!({"type": "github_repository", "id": "sesrsc_app", "url": app_url}),
                json!({"type": "github_repository", "id": "sesrsc_other",
                       "url": server.localhost_url("other"), "mount_path": "/workspace/other"}),
            ],
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("provision failed: {e}\n{}", bridge.log()));

    // The repository without a token: an SDK-typed resource error, provision went on.
    assert_eq!(p.resource_errors.len(), 1, "{:?}", p.resource_errors);
    let e = &p.resource_errors[0];
    assert_eq!(e.repository_url, server.localhost_url("other"));
    assert_eq!(e.error_type, "repository_authentication_error", "{e:?}");
    assert!(!e.message.contains(TOKEN));

    let t = Tools::new(&svc, &p.sandbox_id);
    let log = t.sh("git -C /workspace/app log --format=%s -1").await;
    assert_eq!(log, "seed", "the clone is in the sandbox");
    let remote = t.sh("git -C /workspace/app remote get-url origin").await;
    assert_eq!(remote, app_url, "the remote stays the real url");
    let pushed = t
        .sh("cd /workspace/app && echo change > CHANGE && git add CHANGE \
             && git -c user.name=agent -c user.email=agent@airlock.invalid commit -q -m 'from the sandbox' \
             && git push -q origin HEAD:main 2>&1 && echo pushed-ok")
        .await;
    assert!(pushed.ends_with("pushed-ok"), "{pushed}\n{}", bridge.log());
    assert!(
        server.log("app").unwrap().contains("from the sandbox"),
        "{}",
        server.log("app").unwrap()
    );

    // Nothing the sandbox can read holds the token.
    let probes = [
        "env",
        "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'",
        "cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '",
        "git -C /workspace/app config --show-origin -l",
        // prints any match itself (a count or file names would hide it)
        "grep -rIoh -e 'canary-clone-token-[0-9a-f]*' /workspace /home /tmp /etc /run 2>/dev/null | head -5",
        "git -C /workspace/app log -p --all | head -200",
    ];
    for probe in probes {
        let out = t.sh(probe).await;
        assert!(!out.contains(TOKEN), "{probe} shows the token");
    }
    svc.destroy(DestroyRequest {
        sandbox_id: p.sandbox_id.clone(),
    })
    .await
    .unwrap();
    assert!(!bridge.log().contains(TOKEN));
}
