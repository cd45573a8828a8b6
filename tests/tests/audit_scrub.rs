//! Secrets never reach the audit record: a real `vault-bridge serve`
//! process holds canary values (a static_bearer token set with its CLI, an
//! environment credential and a session Git token relayed over its agent
//! channel as the agent relays them); a real sandbox-agent service on real
//! Docker with `[bridge]`, `[audit] detail = "full"` and the outputs store on
//! runs tool calls whose inputs and outputs hold the canaries (raw,
//! URL-encoded, base64) and common token formats. The canaries appear in
//! what the tools return (so they were really there) but nowhere in the
//! audit files, the outputs store or `sandbox-agent audit export`, where
//! `[redacted:<credential id or kind>]` markers stand instead. The bash
//! call's `end` line carries its exit code (the static executor must be
//! built from this tree: `scripts/setup.d/30-images.sh` does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use airlock_tests::bridge::{Bridge, BridgeOptions, Channel};
use airlock_tests::sandbox::{text, TestAgent, Tools};
use protocol::bridge::{FromBridge, ToBridge};
use protocol::relay::{PutCredential, PutSessionToken, WireSecret};
use protocol::sandbox::ProvisionRequest;
use sandbox_agent::audit::{verify_dir, AuditLog, AuditSettings, VerifyOptions};
use sandbox_agent::sandbox::SandboxService;
use serde_json::json;

/// A static_bearer token in the bridge's backend (set with its CLI).
const STATIC: &str = "canaryStaticBearer7Q2x9Lm4";
/// An environment credential relayed by the control plane (`/`, `+`, `=`
/// make its URL-encoded and base64 forms differ from it).
const ENV: &str = "canary/Env+Cred=5Vb8Np3Kz";
/// A session's Git token.
const GIT: &str = "canaryGitTok8Hd2Wq6Rs";
/// Token formats the agent's own patterns catch (no bridge needed).
const GITHUB: &str = "ghp_0123456789abcdefghijABCDEFGHIJ012345";
const AWS: &str = "AKIAIOSFODNN7CANARY1";

fn forms(v: &str) -> Vec<String> {
    let mut out = vec![v.to_owned(), airlock_tests::bridge::base64(v.as_bytes())];
    let url: String = v
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    out.push(url);
    out
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn assert_no_canary(what: &str, body: &str) {
    for c in [STATIC, ENV, GIT, GITHUB, AWS] {
        for f in forms(c) {
            assert!(!body.contains(&f), "{what} holds a secret ({f}):\n{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_from_the_bridge_never_reach_the_audit_record() {
    // The bridge: a static credential set offline, then relayed ones.
    let mut bridge = Bridge::configure(BridgeOptions::default()).unwrap();
    bridge
        .set_secret("vlt_canary", "vcrd_static", "token", STATIC)
        .unwrap();
    bridge.restart().unwrap();
    let socket = bridge.socket_path();
    let relayed = Channel::once(
        &socket,
        &ToBridge::PutCredential(PutCredential {
            vault_id: "vlt_canary".into(),
            credential_id: "vcrd_env".into(),
            fields: [("secret_value".to_owned(), WireSecret::new(ENV))].into(),
        }),
    )
    .await
    .unwrap();
    assert_eq!(relayed, FromBridge::Relayed { held: true });
    let relayed = Channel::once(
        &socket,
        &ToBridge::PutSessionToken(PutSessionToken {
            session_id: "sesn_scrub".into(),
            resource_id: "sesrsc_git".into(),
            url: "https://git.example.com/org/repo.git".into(),
            token: WireSecret::new(GIT),
        }),
    )
    .await
    .unwrap();
    assert_eq!(relayed, FromBridge::Relayed { held: true });

    // The agent: [bridge], full detail, outputs stored.
    let mut agent = TestAgent::new();
    agent.policy.allowed_tools = Some(vec!["bash".into(), "read".into(), "write".into()]);
    let cfg = agent.with_bridge(bridge.agent_settings());
    let audit_dir = agent.data_dir.join("audit");
    let mut settings = AuditSettings::defaults(&audit_dir);
    settings.outputs.store = true;
    settings.outputs.dir = audit_dir.join("outputs");
    let log = AuditLog::open_with(&settings, &agent.agent_id).unwrap();
    let (svc, _) = SandboxService::start_with_audit(cfg, log.clone())
        .await
        .unwrap();
    let sbx = svc
        .provision(ProvisionRequest {
            session_id: Some("sesn_scrub".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .sandbox_id;
    let sb = Tools::new(&svc, &sbx);

    // Inputs and outputs with every canary in several forms.
    let env_url = &forms(ENV)[2];
    let r = sb
        .run(
            "bash",
            json!({"command": format!(
                "echo {STATIC}; printf %s '{ENV}' | base64 -w0; echo; echo 'https://x/?t={env_url}'; \
                 echo https://oauth2:{GIT}@git.example.com/org/repo.git; echo {GITHUB} {AWS}"
            )}),
        )
        .await;
    assert!(!r.is_error, "{}", text(&r));
    let out = text(&r);
    // The tool's own result is not scrubbed: the canaries were really there.
    assert!(
        out.contains(STATIC) && out.contains(GIT) && out.contains(&forms(ENV)[1]),
        "{out}"
    );
    let w = sb
        .run(
            "write",
            json!({"file_path": "/workspace/token.txt", "content": format!("token={GIT}\nenv={ENV}\n")}),
        )
        .await;
    assert!(!w.is_error, "{}", text(&w));
    let read = sb
        .run("read", json!({"file_path": "/workspace/token.txt"}))
        .await;
    assert!(text(&read).contains(GIT), "{}", text(&read));
    // A call the policy refuses keeps its (scrubbed) input too.
    let refused = svc
        .execute(
            protocol::sandbox::ExecuteRequest {
                sandbox_id: sbx.clone(),
                tool_use_id: airlock_tests::sandbox::tool_use_id(),
                name: "grep".into(),
                input: json!({"pattern": STATIC}),
                stream: false,
            },
            None,
        )
        .await;
    assert!(refused.is_err());
    log.checkpoint_now().unwrap();

    // Nowhere in the audit dir: lines, segments, the outputs store.
    let all = files(&audit_dir);
    let stored: Vec<&PathBuf> = all
        .iter()
        .filter(|p| p.starts_with(audit_dir.join("outputs")))
        .collect();
    assert!(stored.len() >= 2, "outputs stored: {all:?}");
    let mut store_text = String::new();
    for p in &all {
        if p.file_name().is_some_and(|n| n == "audit-signing.key") {
            continue;
        }
        let body = String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
        assert_no_canary(&p.display().to_string(), &body);
        if stored.contains(&p) {
            store_text.push_str(&body);
        }
    }
    let lines = std::fs::read_to_string(audit_dir.join("audit.jsonl")).unwrap();
    for marker in [
        "[redacted:vcrd_static]",
        "[redacted:vcrd_env]",
        "[redacted:sesrsc_git]",
    ] {
        assert!(lines.contains(marker), "{marker} in the lines:\n{lines}");
        assert!(
            store_text.contains(marker),
            "{marker} in the outputs store:\n{store_text}"
        );
    }
    // The start lines count what was replaced.
    let starts: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["call"] == "execute" && l["phase"] == "start")
        .collect();
    assert_eq!(starts.len(), 3, "{lines}");
    assert!(
        starts[0]["redactions"].as_u64().unwrap_or(0) >= 5,
        "{}",
        starts[0]
    );
    // The bash call's end line carries the command's exit status and the
    // digest of what it returned.
    let bash_end = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["call"] == "execute" && l["phase"] == "end" && l["tool"] == "bash")
        .unwrap();
    assert_eq!(bash_end["outcome"], "ok", "{bash_end}");
    assert_eq!(bash_end["exit_code"], 0, "{bash_end}");
    assert_eq!(bash_end["output"]["sha256"].as_str().unwrap().len(), 64);
    assert!(bash_end["output"]["stored"].is_string(), "{bash_end}");
    let denied: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["outcome"] == "refused")
        .collect();
    assert_eq!(denied.len(), 1, "{lines}");
    assert_eq!(denied[0]["decision"]["allowed"], false);
    assert_eq!(denied[0]["decision"]["rule"], "policy.allowed_tools");
    assert_eq!(denied[0]["input"]["pattern"], "[redacted:vcrd_static]");
    verify_dir(&audit_dir, &VerifyOptions::default()).unwrap();

    // Nor in what `sandbox-agent audit export` gives the SIEM.
    let bin = airlock_tests::deploy::binary("sandbox-agent").unwrap();
    let config = agent.data_dir.join("agent.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"{}\"\n", agent.data_dir.display()),
    )
    .unwrap();
    for format in ["jsonl", "ocsf"] {
        let out = std::process::Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .args(["audit", "export", "--format", format, "--dir"])
            .arg(&audit_dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "export {format}: {stderr}");
        assert!(stdout.contains("[redacted:vcrd_static]"), "{stdout}");
        assert_no_canary(&format!("audit export --format {format}"), &stdout);
        assert_no_canary("audit export stderr", &stderr);
    }
    svc.shutdown(true).await;
    drop(bridge);
}
