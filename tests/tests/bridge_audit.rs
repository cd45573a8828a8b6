//! Credential uses land in the agent's hash-chained audit record: a real
//! `vault-bridge serve` process, a real sandbox-agent service on real Docker
//! with `[bridge]`, a real HTTPS server (nginx, `git http-backend`) as the
//! upstream. A bash tool call sends a credential placeholder through the
//! bridge's egress proxy; the bridge refuses it (403) and reports the use;
//! the agent's `audit.jsonl` then holds a `credential_use` line with the
//! sandbox, session, host, method, path, outcome and the tool call's
//! `tool_use_id`, the chain verifies, and the secret-shaped strings of the
//! request are nowhere in the file. The bridge is then killed (SIGKILL) and
//! restarted: the agent reconnects, records the next use once, and the
//! bridge's sequence numbers in the record have neither gaps nor duplicates.
//!
//! Not yet covered here (waits for the relay/injection pieces of issue 9):
//! an *injected* vault credential (`outcome: injected` with `credential_id`
//! and `vault_id`); the bridge's own unit tests cover the mapping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use airlock_tests::git_server::{GitServer, TestCa};
use airlock_tests::sandbox::{TestAgent, Tools};
use protocol::sandbox::ProvisionRequest;
use sandbox_agent::sandbox::config::BridgeSettings;
use sandbox_agent::sandbox::SandboxService;
use serde_json::{json, Value};

const SESSION: &str = "sesn_audit";
/// Shaped like a bridge placeholder, known to no session: refused everywhere.
const CANARY: &str = "airlock-placeholder-canaryAUDIT0123456789";

struct Bridge {
    child: Child,
    config: PathBuf,
    socket: PathBuf,
}

impl Bridge {
    fn start(config: &Path, socket: &Path) -> Self {
        let bin = airlock_tests::deploy::binary("vault-bridge")
            .unwrap_or_else(|e| panic!("{e} (cargo build -p vault-bridge)"));
        let _ = std::fs::remove_file(socket);
        let child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            child,
            config: config.to_owned(),
            socket: socket.to_owned(),
        }
    }

    async fn ready(&self) {
        let socket = self.socket.clone();
        testkit::eventually("vault-bridge agent socket", Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        })
        .await;
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn write_config(dir: &Path, upstream_ca: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let data = dir.join("bridge");
    let egress = dir.join("egress");
    std::fs::create_dir_all(&egress).unwrap();
    std::fs::set_permissions(&egress, std::fs::Permissions::from_mode(0o711)).unwrap();
    let socket = dir.join("run/agent.sock");
    let config = dir.join("vault-bridge.toml");
    std::fs::write(
        &config,
        format!(
            r#"[bridge]
data_dir = "{data}"
socket_path = "{socket}"

[backend]
type = "file"

[backend.file]
create_if_missing = true

[egress]
socket_dir = "{egress}"
upstream_ca_files = ["{ca}"]
"#,
            data = data.display(),
            socket = socket.display(),
            egress = egress.display(),
            ca = upstream_ca.display(),
        ),
    )
    .unwrap();
    (config, socket, data)
}

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn uses(path: &Path) -> Vec<Value> {
    audit_lines(path)
        .into_iter()
        .filter(|l| l["call"] == "credential_use")
        .collect()
}

async fn curl_canary(tools: &Tools<'_>, url: &str) -> String {
    tools
        .sh(&format!(
            "curl -sS -o /dev/null -w '%{{http_code}}' --proxy http://127.0.0.1:3128 \
             -H 'Authorization: Bearer {CANARY}' '{url}'"
        ))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_use_is_in_the_agents_chained_audit_with_its_tool_use_id() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("bridge-audit test ca").unwrap();
    let ca_file = tmp.path().join("upstream-ca.pem");
    ca.write_cert(&ca_file).unwrap();
    let server = GitServer::start(&ca, "localhost", "git", "server-token").unwrap();
    server.create_repo("app").unwrap();
    let repo_url = server.localhost_url("app");

    let (config, socket, data) = write_config(tmp.path(), &ca_file);
    let mut bridge = Bridge::start(&config, &socket);
    bridge.ready().await;

    let settings = BridgeSettings {
        socket_path: socket.clone(),
        egress_dir: tmp.path().join("egress"),
        ca_cert_file: vault_bridge::egress::ca_dir(&data).join("ca.crt"),
        call_timeout: Duration::from_secs(10),
    };
    let mut agent = TestAgent::new();
    // The default sandbox image (git and curl); the test image has no curl.
    let image =
        std::env::var("AIRLOCK_SANDBOX_IMAGE").unwrap_or_else(|_| "airlock-sandbox:latest".into());
    agent.sandbox.default_image = Some(image.clone());
    agent.policy.allowed_images = Some(vec![image]);
    let mut cfg = agent.config();
    cfg.sandbox.bridge = Some(settings);
    let (svc, _) = SandboxService::start(cfg.clone()).await.unwrap();
    let p = svc
        .provision(ProvisionRequest {
            session_id: Some(SESSION.into()),
            resources: vec![json!({"type": "github_repository", "url": repo_url})],
            ..Default::default()
        })
        .await
        .unwrap();

    // One tool call with a known id sends the placeholder; the bridge refuses.
    let tool_use_id = "toolu_audit_first";
    let r = svc
        .execute(
            protocol::sandbox::ExecuteRequest {
                sandbox_id: p.sandbox_id.clone(),
                tool_use_id: tool_use_id.into(),
                name: "bash".into(),
                input: json!({"command": format!(
                    "curl -sS -o /dev/null -w '%{{http_code}}' --proxy http://127.0.0.1:3128 \
                     -H 'Authorization: Bearer {CANARY}' '{repo_url}/info/refs?service=git-upload-pack'"
                )}),
                stream: false,
            },
            None,
        )
        .await
        .unwrap();
    let out = airlock_tests::sandbox::text(&r);
    assert!(
        out.contains("403"),
        "the bridge refuses the placeholder: {out}"
    );

    let audit = svc.audit_path().to_owned();
    let recorded = testkit::eventually(
        "the credential use in the agent's audit",
        Duration::from_secs(15),
        || uses(&audit).into_iter().next(),
    )
    .await;
    assert_eq!(recorded["sandbox_id"], p.sandbox_id.as_str(), "{recorded}");
    assert_eq!(recorded["session_id"], SESSION);
    assert_eq!(recorded["tool_use_id"], tool_use_id, "{recorded}");
    assert_eq!(recorded["outcome"], "placeholder_refused");
    let u = &recorded["credential_use"];
    assert_eq!(u["host"], "localhost");
    assert_eq!(u["method"], "GET");
    assert_eq!(
        u["path"],
        format!("{}/info/refs", path_of(&repo_url)).as_str()
    );
    assert_eq!(u["bridge_seq"], 1);
    assert!(
        u.get("credential_id").is_none(),
        "an unknown placeholder names no credential"
    );
    sandbox_agent::audit::verify(&audit).unwrap();

    // The bridge dies hard and comes back: the agent reconnects and the next
    // use is recorded once, with the next sequence number.
    bridge.kill9();
    let bridge = Bridge::start(&bridge.config.clone(), &socket);
    bridge.ready().await;
    // A restarted bridge has no listener for the old sandbox (re-opening
    // them is not this test's concern): the session gets a new sandbox.
    let p2 = svc
        .provision(ProvisionRequest {
            session_id: Some(SESSION.into()),
            resources: vec![json!({"type": "github_repository", "url": repo_url})],
            ..Default::default()
        })
        .await
        .unwrap();
    let tools = Tools::new(&svc, &p2.sandbox_id);
    let second = curl_canary(&tools, &format!("{repo_url}/second")).await;
    assert!(second.contains("403"), "{second}");
    let all = testkit::eventually(
        "the second use after the bridge restart",
        Duration::from_secs(30),
        || {
            let u = uses(&audit);
            (u.len() >= 2).then_some(u)
        },
    )
    .await;
    // A third use on the same connection, then nothing more than three.
    let third = curl_canary(&tools, &format!("{repo_url}/third")).await;
    assert!(third.contains("403"), "{third}");
    let all3 = testkit::eventually("the third use", Duration::from_secs(15), || {
        let u = uses(&audit);
        (u.len() >= 3).then_some(u)
    })
    .await;
    drop(all);
    let seqs: Vec<u64> = all3
        .iter()
        .map(|l| l["credential_use"]["bridge_seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        [1, 2, 3],
        "no gap, no duplicate across the bridge restart"
    );
    assert!(all3[1]["tool_use_id"].is_string(), "{}", all3[1]);
    assert!(
        !audit_lines(&audit)
            .iter()
            .any(|l| l["call"] == "credential_use_gap"),
        "no gap recorded"
    );
    sandbox_agent::audit::verify(&audit).unwrap();

    // A restarted agent resumes after what it recorded: nothing is replayed.
    svc.shutdown(false).await;
    drop(svc);
    let (svc2, _) = SandboxService::start(cfg).await.unwrap();
    let tools2 = Tools::new(&svc2, &p2.sandbox_id);
    let fourth = curl_canary(&tools2, &format!("{repo_url}/fourth")).await;
    assert!(fourth.contains("403"), "{fourth}");
    let all4 = testkit::eventually("the fourth use", Duration::from_secs(15), || {
        let u = uses(&audit);
        (u.len() >= 4).then_some(u)
    })
    .await;
    let seqs: Vec<u64> = all4
        .iter()
        .map(|l| l["credential_use"]["bridge_seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    sandbox_agent::audit::verify(&audit).unwrap();

    // Never a value: neither the placeholder nor the server's token.
    let text = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(text.matches(CANARY).count(), 0);
    assert_eq!(text.matches(server.token()).count(), 0);
    let journal =
        std::fs::read_to_string(vault_bridge::audit_journal::journal_path(&data)).unwrap();
    assert_eq!(journal.matches(CANARY).count(), 0);
    assert_eq!(journal.lines().count(), 4, "{journal}");
    svc2.shutdown(true).await;
}

/// The path of an https url (`https://host:port/a/b` -> `/a/b`).
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/')
        .map_or_else(|| "/".to_owned(), |i| rest[i..].to_owned())
}
