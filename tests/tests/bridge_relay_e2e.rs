//! A secret sent through the vaults API reaches the vault-bridge of the
//! vault's environment over the tunnel and nowhere else: a real control
//! plane (`control-plane serve`), a real enrolled `sandbox-agent run` with
//! `[bridge]`, a real `vault-bridge serve` (file backend).
//!
//! - a vault pinned to the environment (`airlock.environment_id`) and a
//!   credential carrying a canary token → `vault-bridge credentials list`
//!   shows the credential;
//! - the agent stopped, the same kind of request answers 503
//!   `vault_bridge_unavailable` and stores nothing;
//! - the credential archived (agent back) → the bridge no longer holds it;
//! - the control plane's data dir and log hold 0 bytes of the canary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;

use std::path::Path;
use std::time::Duration;

use airlock_tests::bridge::{Bridge, BridgeOptions};
use airlock_tests::deploy::{tail, Agent, AgentOptions, ControlPlane, CpOptions};
use e2e_support::{wait_api, Api};
use serde_json::{json, Value};

const CANARY: &str = "canary-relay-7f3a9c1e5b2d4f60";

fn files_containing(dir: &Path, needle: &[u8], hits: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            files_containing(&p, needle, hits);
        } else if ft.is_file() {
            if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p.display().to_string());
                }
            }
        }
    }
}

fn credential(name: &str) -> Value {
    json!({
        "display_name": name,
        "auth": {"type": "static_bearer", "mcp_server_url": format!("https://{name}.mcp.example.com/"), "token": CANARY}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_secret_reaches_the_environments_bridge_and_nothing_else() {
    let bridge = Bridge::start(BridgeOptions::default()).unwrap();

    let mut cp = ControlPlane::configure(CpOptions::default()).unwrap();
    let key: Value = serde_json::from_str(
        cp.cli(&["api-keys", "create", "--name", "relay", "--json"])
            .unwrap()
            .trim(),
    )
    .unwrap();
    cp.start().unwrap();
    let api = Api::new(cp.api_addr(), key["key"].as_str().unwrap());
    wait_api(&api, Duration::from_secs(30)).await.unwrap();
    let env = api
        .create_environment(&format!("env-relay-{}", std::process::id()))
        .await
        .unwrap();

    let join = cp.join_string(&env).unwrap();
    let mut agent = Agent::enroll(&cp, &join, AgentOptions::default()).unwrap();
    let mut config = std::fs::read_to_string(agent.config_path()).unwrap();
    config.push_str(&bridge.agent_toml());
    std::fs::write(agent.config_path(), config).unwrap();
    agent.run().unwrap();
    cp.wait_connected(agent.agent_id(), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&agent.log(), 30)));

    let vault = api
        .post(
            "/v1/vaults",
            json!({"display_name": "relay", "metadata": {"airlock.environment_id": env}}),
        )
        .await
        .unwrap();
    let vault_id = vault["id"].as_str().unwrap().to_owned();
    let (status, cred) = api
        .call(
            "POST",
            &format!("/v1/vaults/{vault_id}/credentials"),
            Some(credential("first")),
        )
        .await
        .unwrap();
    assert_eq!(
        status,
        200,
        "{cred}\nagent:\n{}\nbridge:\n{}",
        tail(&agent.log(), 30),
        tail(&bridge.log(), 30)
    );
    let cred_id = cred["id"].as_str().unwrap().to_owned();
    assert!(!cred.to_string().contains(CANARY), "secret echoed: {cred}");
    let listed = bridge.credentials_list().unwrap();
    assert!(listed.contains(&cred_id), "bridge list: {listed}");
    assert!(listed.contains(&vault_id), "bridge list: {listed}");

    // No agent of the environment connected: refused, nothing stored.
    agent.terminate().unwrap();
    testkit::eventually("the agent to disconnect", Duration::from_secs(30), || {
        cp.connections_of(agent.agent_id()).is_empty()
    })
    .await;
    let (status, body) = api
        .call(
            "POST",
            &format!("/v1/vaults/{vault_id}/credentials"),
            Some(credential("second")),
        )
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["error"]["details"]["error_code"], "vault_bridge_unavailable",
        "{body}"
    );
    let listed = api
        .get(&format!("/v1/vaults/{vault_id}/credentials"))
        .await
        .unwrap();
    assert_eq!(
        listed["data"].as_array().map(Vec::len),
        Some(1),
        "the refused credential was not stored: {listed}"
    );

    // Archived: the bridge drops it.
    agent.run().unwrap();
    cp.wait_connected(agent.agent_id(), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&agent.log(), 30)));
    api.post(
        &format!("/v1/vaults/{vault_id}/credentials/{cred_id}/archive"),
        json!({}),
    )
    .await
    .unwrap();
    testkit::eventually(
        "the bridge to forget the archived credential",
        Duration::from_secs(5),
        || !bridge.credentials_list().unwrap().contains(&cred_id),
    )
    .await;

    // The canary is nowhere on the control plane's side.
    let mut hits = Vec::new();
    files_containing(cp.dir(), CANARY.as_bytes(), &mut hits);
    assert!(
        hits.is_empty(),
        "canary in the control plane's files: {hits:?}"
    );
    assert!(!cp.log().contains(CANARY));
    assert!(!agent.log().contains(CANARY), "canary in the agent's log");
    assert!(!bridge.log().contains(CANARY), "canary in the bridge's log");
}
