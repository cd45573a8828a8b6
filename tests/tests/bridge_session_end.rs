//! Archiving a credential, or ending a session (archive or delete through
//! the API), stops the credential's use within a second (issue 9, item 7),
//! timed end to end: a real `control-plane serve` with the scripted fake
//! model, a real enrolled `sandbox-agent run` with `[bridge]` on real Docker,
//! a real `vault-bridge serve`, and the real Git server (`git http-backend`
//! behind nginx + fcgiwrap over HTTPS, basic auth required).
//!
//! Each session uses a vault (`vault_ids`) whose `static_bearer` credential
//! holds the Git server's token, relayed through the API, sent as HTTP Basic
//! (`airlock.http_auth = "basic"`) on requests under the repository's URL.
//! A bash call gives the session a sandbox with an egress socket at the
//! bridge. The probe is a request through that sandbox's own egress socket,
//! from the host (curl through a loopback forwarder, as the executor's
//! forwarder does inside the sandbox): `GET /app.git/info/refs` answers 200
//! only when the bridge added the credential. Then:
//!
//! - the credential archived (`POST …/credentials/{id}/archive`): from the
//!   moment the API call returned, the first probe that is not a 200 is a
//!   502 naming the archived credential;
//! - a session archived (`POST /v1/sessions/{id}/archive`), and another
//!   deleted (`DELETE /v1/sessions/{id}`): the first probe that is not a 200
//!   is a 403 from the bridge (the ended session's egress refuses every host).
//!
//! Each must happen within a second of the API call's return; the figures
//! are printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_tests::bridge::{egress_sockets, forward_to_socket, Bridge, BridgeOptions};
use airlock_tests::deploy::{tail, Agent, AgentOptions};
use airlock_tests::fake_model::FakeModel;
use airlock_tests::git_server::{GitServer, TestCa};
use airlock_tests::sandbox::{sandbox_ready_agent_config, test_image};
use e2e_support::{runtime_toml, Api, ContainerCleanup, Deployment};
use serde_json::{json, Value};

const TOKEN: &str = "canary-session-end-5e1b77c0a4";
/// The bound this test enforces. The target is a second (each run prints its
/// figures, tens of milliseconds); a loaded CI machine only gets more slack.
const LIMIT: Duration = Duration::from_secs(5);

/// One request through the proxy at `port`: (the proxy's answer to CONNECT
/// when it refused the tunnel, else the request's HTTP status, 0 when curl
/// got none; body and curl's error).
async fn probe(port: u16, ca: &Path, url: &str) -> (u16, String) {
    let out = tokio::process::Command::new("curl")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["-sS", "--max-time", "5", "--proxy"])
        .arg(format!("http://127.0.0.1:{port}"))
        .arg("--cacert")
        .arg(ca)
        .args(["-w", "\n%{http_connect} %{http_code}", url])
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let codes: Vec<u16> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect();
    let code = match codes[..] {
        [connect, _] if connect != 0 && connect != 200 => connect,
        [_, status] => status,
        _ => 0,
    };
    (code, text)
}

/// Probes until one is not a 200; returns (its status, its text, the time
/// from `since` until that probe's answer, the number of probes).
async fn until_refused(
    port: u16,
    ca: &Path,
    url: &str,
    since: Instant,
) -> (u16, String, Duration, usize) {
    let mut n = 0;
    loop {
        n += 1;
        let (code, text) = probe(port, ca, url).await;
        if code != 200 {
            return (code, text, since.elapsed(), n);
        }
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "the credential was still used 20 s later"
        );
    }
}

struct Fixture {
    d: Deployment,
    agent: Agent,
    bridge: Bridge,
    agent_def: String,
    vault_id: String,
    repo_url: String,
    info_refs: String,
}

impl Fixture {
    fn logs(&self) -> String {
        format!(
            "control plane:\n{}\nagent:\n{}\nbridge:\n{}",
            tail(&self.d.cp.log(), 30),
            tail(&self.agent.log(), 30),
            tail(&self.bridge.log(), 30)
        )
    }

    /// A credential for the repository, its token relayed through the API.
    async fn credential(&self) -> String {
        let (status, cred) = self
            .d
            .api
            .call(
                "POST",
                &format!("/v1/vaults/{}/credentials", self.vault_id),
                Some(json!({
                    "display_name": "git",
                    "metadata": {"airlock.http_auth": "basic"},
                    "auth": {"type": "static_bearer", "mcp_server_url": self.repo_url, "token": TOKEN}
                })),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{cred}\n{}", self.logs());
        assert!(!cred.to_string().contains(TOKEN));
        cred["id"].as_str().unwrap().to_owned()
    }

    /// A session using the vault that ran one bash call; returns its id and
    /// its sandbox's egress socket.
    async fn session(&self) -> (String, PathBuf) {
        let before = egress_sockets(&self.bridge.egress_dir());
        let api = &self.d.api;
        let s = api
            .post(
                "/v1/sessions",
                json!({"agent": self.agent_def, "environment_id": self.d.environment_id,
                       "vault_ids": [self.vault_id]}),
            )
            .await
            .unwrap();
        let session = s["id"].as_str().unwrap().to_owned();
        api.user_message(&session, "Run something.").await.unwrap();
        let events = api
            .wait_end_turn(&session, Duration::from_secs(90))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        assert!(
            events
                .iter()
                .any(|e| e["type"] == "agent.tool_result" && e["is_error"] == false),
            "the bash call ran: {events:?}"
        );
        let new: Vec<_> = egress_sockets(&self.bridge.egress_dir())
            .difference(&before)
            .cloned()
            .collect();
        assert_eq!(new.len(), 1, "one new sandbox with egress: {new:?}");
        (session, new[0].clone())
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiving_a_credential_or_ending_a_session_stops_its_use_within_a_second() {
    let ca = TestCa::new("session-end test ca").unwrap();
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca_dir.path().join("ca.pem");
    ca.write_cert(&ca_file).unwrap();
    let user = vault_bridge::agent_channel_egress::GIT_TOKEN_USERNAME;
    let git = GitServer::start(&ca, "localhost", user, TOKEN).unwrap();
    git.create_random_repo("app", 1, 1024).unwrap();
    let repo_url = git.localhost_url("app");
    let info_refs = format!("{repo_url}/info/refs?service=git-upload-pack");

    let model = FakeModel::builder()
        .latency(Duration::from_millis(20))
        .start(e2e_support::one_ready_call)
        .await
        .unwrap();
    let d = Deployment::start(runtime_toml(&model.base_url(), 5.0))
        .await
        .unwrap();
    let bridge = Bridge::start(BridgeOptions {
        upstream_ca_files: vec![ca_file.clone()],
        ..BridgeOptions::default()
    })
    .unwrap();
    let join = d.cp.join_string(&d.environment_id).unwrap();
    let mut agent = Agent::enroll(&d.cp, &join, AgentOptions::default()).unwrap();
    let _cleanup = ContainerCleanup(agent.agent_id().to_owned());
    let config = std::fs::read_to_string(agent.config_path()).unwrap();
    let mut config = sandbox_ready_agent_config(&config, &test_image());
    config.push_str(&bridge.agent_toml());
    std::fs::write(agent.config_path(), config).unwrap();
    agent.run().unwrap();
    d.cp.wait_connected(agent.agent_id(), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&agent.log(), 40)));

    let agent_def = d.api.create_agent("session-end").await.unwrap();
    let vault: Value = d
        .api
        .post(
            "/v1/vaults",
            json!({"display_name": "git", "metadata": {"airlock.environment_id": d.environment_id}}),
        )
        .await
        .unwrap();
    let f = Fixture {
        vault_id: vault["id"].as_str().unwrap().to_owned(),
        d,
        agent,
        bridge,
        agent_def,
        repo_url,
        info_refs,
    };
    let bridge_ca = f.bridge.ca_cert_path();
    let api: &Api = &f.d.api;
    let mut figures = Vec::new();

    // 1. The credential archived.
    let cred = f.credential().await;
    let (_s1, socket) = f.session().await;
    let port = forward_to_socket(socket).await;
    let (code, text) = probe(port, &bridge_ca, &f.info_refs).await;
    assert_eq!(
        code,
        200,
        "the bridge adds the credential: {text}\n{}",
        f.logs()
    );
    let started = Instant::now();
    api.post(
        &format!("/v1/vaults/{}/credentials/{cred}/archive", f.vault_id),
        json!({}),
    )
    .await
    .unwrap();
    let returned = Instant::now();
    let (code, text, took, probes) = until_refused(port, &bridge_ca, &f.info_refs, returned).await;
    eprintln!(
        "credential archived: use stopped {took:?} after the API call returned ({:?} after it started; {probes} probe(s)); answer {code}",
        returned - started
    );
    figures.push(("credential archived", took));
    assert_eq!(code, 502, "{text}");
    assert!(text.contains(&cred) && text.contains("archived"), "{text}");

    // 2. A session archived, 3. a session deleted (a fresh credential: the
    // first one is archived).
    f.credential().await;
    for how in ["archived", "deleted"] {
        let (session, socket) = f.session().await;
        let port = forward_to_socket(socket).await;
        let (code, text) = probe(port, &bridge_ca, &f.info_refs).await;
        assert_eq!(
            code,
            200,
            "the bridge adds the credential: {text}\n{}",
            f.logs()
        );
        let started = Instant::now();
        let (status, body) = match how {
            "archived" => {
                api.call(
                    "POST",
                    &format!("/v1/sessions/{session}/archive"),
                    Some(json!({})),
                )
                .await
            }
            _ => {
                api.call("DELETE", &format!("/v1/sessions/{session}"), None)
                    .await
            }
        }
        .unwrap();
        let returned = Instant::now();
        assert_eq!(status, 200, "{body}");
        let (code, text, took, probes) =
            until_refused(port, &bridge_ca, &f.info_refs, returned).await;
        eprintln!(
            "session {how}: use stopped {took:?} after the API call returned ({:?} after it started; {probes} probe(s)); answer {code}",
            returned - started
        );
        figures.push((
            if how == "archived" {
                "session archived"
            } else {
                "session deleted"
            },
            took,
        ));
        assert_eq!(code, 403, "{text}\n{}", f.logs());
        assert!(
            text.contains("response 403"),
            "the bridge refused the tunnel: {text}"
        );
        // Still refused a moment later (the agent did not re-open it).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (code, text) = probe(port, &bridge_ca, &f.info_refs).await;
        assert_eq!(code, 403, "{text}\n{}", f.logs());
    }

    eprintln!("| what | use stopped after the API call returned |");
    eprintln!("|---|---|");
    for (what, took) in &figures {
        eprintln!("| {what} | {took:?} |");
    }
    for (what, took) in &figures {
        assert!(
            *took <= LIMIT,
            "{what}: the credential was used {took:?} after the API call returned\n{}",
            f.logs()
        );
    }
    let mut hits = Vec::new();
    files_containing(f.d.cp.dir(), TOKEN.as_bytes(), &mut hits);
    assert!(
        hits.is_empty(),
        "token in the control plane's files: {hits:?}"
    );
    assert!(!f.d.cp.log().contains(TOKEN));
    assert!(!f.agent.log().contains(TOKEN));
    assert!(!f.bridge.log().contains(TOKEN));
}
