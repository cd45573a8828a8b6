//! The control plane's audit with real processes: a real `control-plane
//! serve`, an agent enrolled with a real join token, and the real tunnel.
//!
//! The agent side is the tunnel client with the enrolled agent's identity
//! and its audit status published through `ClientSettings::audit_status`
//! (what `sandbox-agent run` wires to its audit log), with checkpoints
//! signed by a real audit key: they arrive over the control stream, are
//! verified, pinned, flagged and stored; `control-plane audit checkpoints`
//! exports them as JSON lines, the API as pages; a forged checkpoint is
//! refused; `agents list` shows the audit health. Admin actions (`tokens
//! create`, `api-keys create`, `agents revoke` over the admin socket) and API
//! requests are in `control-plane audit events`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;

use std::sync::Arc;
use std::time::Duration;

use airlock_tests::deploy::{tail, Agent, AgentOptions, ControlPlane, CpOptions};
use pki::audit_key::AuditKey;
use protocol::audit::AuditStatus;
use protocol::{ErrorCode, Request, Response};
use serde_json::{json, Value};
use tunnel::{CallHandler, CallIo};

const LIMIT: Duration = Duration::from_secs(20);

struct NoCalls;

#[async_trait::async_trait]
impl CallHandler for NoCalls {
    async fn handle(&self, request: Request, _io: &mut CallIo) -> Response {
        Response::error(ErrorCode::UnsupportedCall, format!("no {}", request.name()))
    }
}

fn lines(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn checkpoints(cp: &ControlPlane, agent_id: &str) -> Vec<Value> {
    lines(
        &cp.cli(&["audit", "checkpoints", "--agent", agent_id])
            .unwrap(),
    )
}

fn wait_checkpoints(cp: &ControlPlane, agent_id: &str, n: usize) -> Vec<Value> {
    testkit::try_eventually_blocking("checkpoints stored", LIMIT, || {
        let c = checkpoints(cp, agent_id);
        (c.len() >= n).then_some(c)
    })
    .unwrap_or_else(|_| {
        panic!(
            "{n} checkpoints expected, have {:?}\n{}",
            checkpoints(cp, agent_id),
            tail(&cp.log(), 40)
        )
    })
}

fn flags(c: &Value) -> (u64, bool, bool) {
    (
        c["seq"].as_u64().unwrap(),
        c["key_changed"].as_bool().unwrap(),
        c["rollback"].as_bool().unwrap(),
    )
}

fn status(key: &AuditKey, agent: &str, seq: u64) -> AuditStatus {
    AuditStatus {
        healthy: true,
        problem: None,
        checkpoint: Some(key.checkpoint(
            agent,
            seq,
            &format!("{seq:064x}"),
            "2026-12-06T21:00:00.000000Z",
        )),
    }
}

#[test]
fn checkpoints_over_the_real_tunnel_are_verified_pinned_flagged_and_exported() {
    let cp = ControlPlane::spawn(CpOptions::default()).unwrap();
    let join = cp.join_string("env-audit").unwrap();
    let agent = Agent::enroll(&cp, &join, AgentOptions::default()).unwrap();
    let id = agent.agent_id().to_owned();
    let keys = tempfile::tempdir().unwrap();
    let k1 = AuditKey::load_or_generate(&keys.path().join("k1.key")).unwrap();
    let k2 = AuditKey::load_or_generate(&keys.path().join("k2.key")).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = sandbox_agent::config::Config::load(agent.config_path()).unwrap();
    let identity = sandbox_agent::identity::AgentIdentity::load(&config).unwrap();
    let tls = Arc::new(identity.client_config(&[tunnel::ALPN]).unwrap());
    let (publish, watch) = tokio::sync::watch::channel(status(&k1, &id, 10));
    let mut settings = sandbox_agent::connect::client_settings(&config, &identity);
    settings.audit_status = Some(watch);
    let client = rt.block_on(async { tunnel::client::spawn(settings, tls, Arc::new(NoCalls)) });
    cp.wait_connected(&id, LIMIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&cp.log(), 30)));

    // the current status arrives on connect
    let c = wait_checkpoints(&cp, &id, 1);
    assert_eq!(flags(&c[0]), (10, false, false));
    assert_eq!(c[0]["agent_id"], id.as_str());
    assert_eq!(c[0]["public_key"], k1.public_key_b64());
    assert_eq!(c[0]["head"], format!("{:064x}", 10));
    assert!(c[0]["received_at"].as_str().unwrap().ends_with('Z'));
    // every exported line is a checkpoint that verifies for the agent
    let cp0: protocol::audit::AuditCheckpoint = serde_json::from_value(c[0].clone()).unwrap();
    pki::audit_key::verify_checkpoint(&id, &cp0, Some(k1.public_key_b64())).unwrap();

    // a forged checkpoint (head changed after signing) is refused, not stored
    let mut forged = status(&k1, &id, 11);
    forged.checkpoint.as_mut().unwrap().head = format!("{:064x}", 999);
    publish.send(forged).unwrap();
    testkit::try_eventually_blocking("the forged checkpoint refused", LIMIT, || {
        cp.log().contains("audit checkpoint refused").then_some(())
    })
    .unwrap_or_else(|_| panic!("no refusal logged\n{}", tail(&cp.log(), 30)));
    // forward, then backwards, then another key
    publish.send(status(&k1, &id, 20)).unwrap();
    wait_checkpoints(&cp, &id, 2);
    publish.send(status(&k1, &id, 15)).unwrap();
    wait_checkpoints(&cp, &id, 3);
    publish.send(status(&k2, &id, 1)).unwrap();
    let c = wait_checkpoints(&cp, &id, 4);
    assert_eq!(
        c.iter().map(flags).collect::<Vec<_>>(),
        [
            (10, false, false),
            (20, false, false),
            (15, false, true),
            (1, true, false)
        ]
    );
    assert!(
        !c.iter().any(|x| x["seq"] == 11),
        "the forged checkpoint is not stored"
    );
    // logged just after the row is stored: the listing may come first
    logged(&cp, &["flagged rollback", "flagged key_changed"]);

    // health: unhealthy shows in agents list with the last checkpoint seq
    publish
        .send(AuditStatus {
            healthy: false,
            problem: Some("writing audit.jsonl: No space left on device (os error 28)".into()),
            checkpoint: None,
        })
        .unwrap();
    let conn = cp
        .wait_connection(&id, LIMIT, |a| a["audit"]["healthy"] == false)
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&cp.log(), 30)));
    assert_eq!(conn["audit"]["last_checkpoint_seq"], 1, "{conn}");
    assert!(conn["audit"]["problem"]
        .as_str()
        .unwrap()
        .contains("No space left"));
    let table = cp.cli(&["agents", "list"]).unwrap();
    assert!(table.contains("UNHEALTHY: writing audit.jsonl"), "{table}");

    // the same checkpoint again (as after a reconnect) is not stored twice
    publish.send(status(&k2, &id, 1)).unwrap();
    let conn = cp
        .wait_connection(&id, LIMIT, |a| a["audit"]["healthy"] == true)
        .unwrap();
    assert_eq!(conn["audit"]["last_checkpoint_seq"], 1);
    assert_eq!(
        checkpoints(&cp, &id).len(),
        4,
        "a resent checkpoint is not stored again"
    );

    // the API export, in pages
    let key_out = cp
        .cli(&["api-keys", "create", "--name", "auditor", "--json"])
        .unwrap();
    let key: Value = serde_json::from_str(key_out.trim()).unwrap();
    let api = e2e_support::Api::new(cp.api_addr(), key["key"].as_str().unwrap());
    let (pages, events) = rt.block_on(async {
        let mut seqs = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let q = match &after {
                Some(a) => {
                    format!("/v1/airlock/agents/{id}/audit/checkpoints?limit=3&after_id={a}")
                }
                None => format!("/v1/airlock/agents/{id}/audit/checkpoints?limit=3"),
            };
            let page = api.get(&q).await.unwrap();
            seqs.extend(
                page["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["seq"].as_u64().unwrap()),
            );
            if page["has_more"] != true {
                break;
            }
            after = page["last_id"].as_str().map(str::to_owned);
        }
        // an API request is audited with the caller's remote address
        api.post(
            "/v1/environments",
            json!({"name": "audited", "config": {"type": "self_hosted"}}),
        )
        .await
        .unwrap();
        let events = api.get("/v1/airlock/audit/events?limit=100").await.unwrap();
        (seqs, events)
    });
    assert_eq!(pages, [10, 20, 15, 1]);
    let env_event = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "environments.create")
        .unwrap_or_else(|| panic!("{events}"))
        .clone();
    assert_eq!(env_event["actor"]["api_key_id"], key["id"]);
    assert!(
        env_event["remote_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{env_event}"
    );
    assert_eq!(env_event["resource_ids"].as_array().unwrap().len(), 1);

    // admin actions: the revocation goes through the admin socket
    let out = cp.cli(&["agents", "revoke", &id]).unwrap();
    assert!(out.contains("1 live connection"), "{out}");
    let uid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").unwrap().uid()
    };
    let admin = lines(&cp.cli(&["audit", "events", "--json"]).unwrap());
    let find = |action: &str| {
        admin
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("no {action} in {admin:?}"))
            .clone()
    };
    let revoke = find("agents.revoke");
    assert_eq!(revoke["actor"], json!({"type": "admin", "uid": uid}));
    assert_eq!(revoke["resource_ids"], json!([id]));
    assert_eq!(revoke["outcome"], "ok");
    let token = find("join_tokens.create");
    assert_eq!(token["resource_ids"][0], "env-audit");
    assert!(
        token["resource_ids"][1]
            .as_str()
            .unwrap()
            .starts_with("tok_"),
        "{token}"
    );
    assert_eq!(find("api_keys.create")["resource_ids"], json!([key["id"]]));
    // filters on the CLI
    let only = lines(
        &cp.cli(&["audit", "events", "--json", "--action", "agents.revoke"])
            .unwrap(),
    );
    assert_eq!(only.len(), 1);
    let table = cp.cli(&["audit", "events", "--resource-id", &id]).unwrap();
    assert!(table.starts_with("AT"), "{table}");
    assert!(
        table.contains("agents.revoke") && table.contains(&format!("admin (uid {uid})")),
        "{table}"
    );
    eprintln!("{table}");
    for c in checkpoints(&cp, &id) {
        eprintln!("{c}");
    }
    rt.block_on(client.shutdown(Duration::from_secs(1)));
}

/// `sandbox-agent --config <cfg> audit verify --checkpoints <file>`.
fn verify_against(agent: &Agent, checkpoints: &std::path::Path) -> std::process::Output {
    std::process::Command::new(airlock_tests::deploy::binary("sandbox-agent").unwrap())
        .arg("--config")
        .arg(agent.config_path())
        .args(["audit", "verify", "--checkpoints"])
        .arg(checkpoints)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// Append `n` records and a checkpoint to the agent's audit log through
/// the agent's own audit library (what its calls do), as a stopped agent's
/// history; returns the checkpoint.
fn seed(
    config: &sandbox_agent::config::Config,
    agent_id: &str,
    n: usize,
) -> protocol::audit::AuditCheckpoint {
    let log = sandbox_agent::audit::AuditLog::open_with(&config.audit, agent_id).unwrap();
    for _ in 0..n {
        log.try_record(sandbox_agent::audit::AuditEvent {
            call: "list_sandboxes".into(),
            outcome: "ok".into(),
            ..Default::default()
        })
        .unwrap();
    }
    log.checkpoint_now()
        .unwrap()
        .expect("a checkpoint over new records")
}

#[test]
fn a_real_agent_publishes_its_checkpoints_and_a_rolled_back_log_is_caught() {
    let cp = ControlPlane::spawn(CpOptions::default()).unwrap();
    let join = cp.join_string("env-audit-agent").unwrap();
    let mut agent = Agent::enroll(&cp, &join, AgentOptions::default()).unwrap();
    let id = agent.agent_id().to_owned();
    let config = sandbox_agent::config::Config::load(agent.config_path()).unwrap();
    let audit_dir = config.audit.dir.clone();
    let current = audit_dir.join("audit.jsonl");

    // history: a checkpoint, a copy of the log at that point, then more
    let old = seed(&config, &id, 3);
    let old_copy = audit_dir.join("old-copy.jsonl.bak");
    std::fs::copy(&current, &old_copy).unwrap();
    let new = seed(&config, &id, 3);
    assert!(new.seq > old.seq);

    // the real agent publishes its latest checkpoint on connect
    agent.run().unwrap();
    cp.wait_connected(&id, LIMIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&agent.log(), 30)));
    let c = wait_checkpoints(&cp, &id, 1);
    assert_eq!(flags(&c[0]), (new.seq, false, false), "{:?}", c);
    assert_eq!(c[0]["head"], new.head.as_str());
    assert_eq!(c[0]["public_key"], new.public_key.as_str());
    let conn = cp
        .wait_connection(&id, LIMIT, |a| a["audit"]["last_checkpoint_seq"] == new.seq)
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&cp.log(), 30)));
    assert_eq!(conn["audit"]["healthy"], true, "{conn}");

    // the control plane's export verifies against the agent's log
    let export = audit_dir.parent().unwrap().join("cp-checkpoints.jsonl");
    std::fs::write(
        &export,
        cp.cli(&["audit", "checkpoints", "--agent", &id]).unwrap(),
    )
    .unwrap();
    let out = verify_against(&agent, &export);
    assert!(
        out.status.success(),
        "verify: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // someone puts the older copy back while the agent is stopped
    agent.terminate().unwrap();
    std::fs::copy(&old_copy, &current).unwrap();
    std::fs::remove_file(&old_copy).unwrap();
    let out = verify_against(&agent, &export);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("verify of the rolled-back log: {}", said.trim());
    assert!(
        !out.status.success(),
        "the rolled-back log must fail verify: {said}"
    );
    assert!(
        said.contains("truncated") || said.contains("rolled back"),
        "{said}"
    );

    // restarted on the old copy, the agent's checkpoint goes backwards: the
    // control plane keeps it, flagged
    agent.run().unwrap();
    let c = wait_checkpoints(&cp, &id, 2);
    assert_eq!(flags(&c[1]), (old.seq, false, true), "{:?}", c);
    logged(&cp, &["flagged rollback"]);
    agent.terminate().unwrap();
}

/// Wait until the control plane's log has every one of `lines`.
fn logged(cp: &ControlPlane, lines: &[&str]) {
    testkit::try_eventually_blocking("the flags logged", LIMIT, || {
        let log = cp.log();
        lines.iter().all(|l| log.contains(l)).then_some(())
    })
    .unwrap_or_else(|_| panic!("{lines:?} not logged\n{}", tail(&cp.log(), 30)));
}
