//! A vault-bridge killed with SIGKILL and restarted: the live sandbox gets
//! its egress back by itself within seconds (the agent re-sends the
//! sandbox's `open_egress`), and while the bridge is down a tool call going
//! out fails with a clear error and returns (nothing hangs). Real
//! `vault-bridge serve`, the sandbox-agent's service on real Docker with
//! `[bridge]`, a real HTTPS Git server (nginx, `git http-backend`) as the
//! upstream, reached from bash through `HTTPS_PROXY`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use airlock_tests::bridge::{Bridge, BridgeOptions};
use airlock_tests::git_server::{GitServer, TestCa};
use airlock_tests::sandbox::{TestAgent, Tools};
use protocol::sandbox::ProvisionRequest;
use sandbox_agent::sandbox::SandboxService;
use serde_json::json;

/// One request out through the proxy: `<http code> exit=<curl exit>` and
/// curl's error line when it failed.
async fn probe(tools: &Tools<'_>, url: &str) -> String {
    tools
        .sh(&format!(
            "curl -sS --max-time 10 -o /dev/null -w '%{{http_code}}' '{url}' 2>/tmp/curl.err; \
             echo \" exit=$?\"; cat /tmp/curl.err"
        ))
        .await
}

/// The upstream answered (401: it wants a token; the request went through).
fn reached(out: &str) -> bool {
    out.starts_with("401 exit=0") || out.starts_with("200 exit=0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_bridge_serves_the_live_sandbox_again() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("bridge-restart test ca").unwrap();
    let ca_file = tmp.path().join("upstream-ca.pem");
    ca.write_cert(&ca_file).unwrap();
    let server = GitServer::start(&ca, "localhost", "git", "server-token").unwrap();
    server.create_repo("app").unwrap();
    let repo_url = server.localhost_url("app");
    let url = format!("{repo_url}/info/refs?service=git-upload-pack");

    let mut bridge = Bridge::start(BridgeOptions {
        upstream_ca_files: vec![ca_file],
        ..Default::default()
    })
    .unwrap();

    let mut agent = TestAgent::new();
    let image =
        std::env::var("AIRLOCK_SANDBOX_IMAGE").unwrap_or_else(|_| "airlock-sandbox:latest".into());
    agent.sandbox.default_image = Some(image.clone());
    agent.policy.allowed_images = Some(vec![image]);
    let mut cfg = agent.config();
    cfg.sandbox.bridge = Some(bridge.agent_settings());
    let (svc, _) = SandboxService::start(cfg).await.unwrap();
    let p = svc
        .provision(ProvisionRequest {
            session_id: Some("sesn_restart".into()),
            resources: vec![
                json!({"type": "github_repository", "url": repo_url, "id": "sesrsc_app"}),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let tools = Tools::new(&svc, &p.sandbox_id);

    let out = probe(&tools, &url).await;
    assert!(
        reached(&out),
        "through the bridge before the kill: {out}\nbridge:\n{}",
        bridge.log()
    );

    bridge.kill9().unwrap();
    let started = Instant::now();
    let down = probe(&tools, &url).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a call with the bridge down returned after {:?}",
        started.elapsed()
    );
    assert!(
        !reached(&down),
        "nothing gets out while the bridge is down: {down}"
    );
    assert!(
        down.starts_with("000 exit=") && down.contains("curl:"),
        "a clear curl error: {down}"
    );

    bridge.restart().unwrap();
    let back = Instant::now();
    let last = std::sync::Mutex::new(String::new());
    let ok = testkit::try_eventually_async(
        "the sandbox's egress to work again",
        // printed below (about a second); the bound is for a loaded CI machine
        Duration::from_secs(30),
        || {
            let (tools, url, last) = (&tools, &url, &last);
            async move {
                let out = probe(tools, url).await;
                let done = reached(&out);
                *last.lock().unwrap() = out;
                done
            }
        },
    )
    .await;
    assert!(
        ok.is_ok(),
        "egress not back within 30 s of the restart: {}\nbridge:\n{}",
        last.lock().unwrap(),
        bridge.log()
    );
    eprintln!("egress back {:?} after the restart", back.elapsed());

    svc.shutdown(true).await;
}
