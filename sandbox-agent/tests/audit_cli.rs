//! `sandbox-agent audit …` against real audit dirs written by the real
//! `AuditLog` (rotation, checkpoints, scrubbing): exit codes of `verify`
//! (intact, tampered, wrong key, truncated against the control plane's
//! checkpoints), `public-key`, `show`/`tail` filters and formats, `tail -f`
//! across rotation, and the shape of the OCSF export.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sandbox_agent::audit::{
    AuditEvent, AuditLog, AuditSettings, CredentialUseDetail, Decision, McpCallDetail, OutputDigest,
};
use serde_json::{json, Value};

const AGENT: &str = "agt_audit_cli";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sandbox-agent"));
    c.env_remove("AIRLOCK_CONFIG").env("NO_COLOR", "1");
    c
}

fn audit(dir: &Path, args: &[&str]) -> Output {
    let mut c = bin();
    c.arg("audit")
        .arg(args[0])
        .arg("--dir")
        .arg(dir)
        .args(&args[1..]);
    c.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn settings(dir: &Path) -> AuditSettings {
    let mut s = AuditSettings::defaults(dir);
    s.rotate_bytes = 4096;
    s.checkpoint_every_records = 10;
    s
}

fn exec(session: &str, tool: &str, input: Value, outcome: &str) -> AuditEvent {
    AuditEvent {
        call: "execute".into(),
        phase: Some(if outcome == "refused" {
            None
        } else {
            Some("start")
        })
        .flatten()
        .map(str::to_owned),
        sandbox_id: Some("sbx_1".into()),
        session_id: Some(session.into()),
        tool_use_id: Some(format!("toolu_{tool}")),
        tool: Some(tool.into()),
        input: Some(input),
        decision: Some(if outcome == "refused" {
            Decision {
                allowed: false,
                rule: Some("tools.deny".into()),
                reason: Some("tool denied by policy".into()),
            }
        } else {
            Decision {
                allowed: true,
                ..Default::default()
            }
        }),
        outcome: outcome.into(),
        ..Default::default()
    }
}

fn end(session: &str, tool: &str, outcome: &str, exit: Option<i32>) -> AuditEvent {
    AuditEvent {
        call: "execute".into(),
        phase: Some("end".into()),
        sandbox_id: Some("sbx_1".into()),
        session_id: Some(session.into()),
        tool_use_id: Some(format!("toolu_{tool}")),
        tool: Some(tool.into()),
        outcome: outcome.into(),
        exit_code: exit,
        output: Some(OutputDigest::of(b"{\"content\":\"hello\"}")),
        duration_ms: 12,
        ..Default::default()
    }
}

/// A log with every kind of record: returns (dir, last checkpoint).
fn mixed_log(dir: &Path) -> protocol::audit::AuditCheckpoint {
    let log = AuditLog::open_with(&settings(dir), AGENT).unwrap();
    log.try_record(AuditEvent {
        call: "provision".into(),
        sandbox_id: Some("sbx_1".into()),
        session_id: Some("sesn_a".into()),
        outcome: "ok".into(),
        detail: Some("image airlock-sandbox:test".into()),
        ..Default::default()
    })
    .unwrap();
    // The command carries a token the writer's patterns must scrub.
    log.try_record(exec(
        "sesn_a",
        "bash",
        json!({"command": "curl -H 'Authorization: Bearer ghp_0123456789abcdefghijABCDEFGHIJ012345' https://x"}),
        "started",
    ))
    .unwrap();
    log.try_record(end("sesn_a", "bash", "ok", Some(0)))
        .unwrap();
    for (tool, input) in [
        ("read", json!({"file_path": "/workspace/a.txt"})),
        (
            "write",
            json!({"file_path": "/workspace/b.txt", "content": "x"}),
        ),
        (
            "edit",
            json!({"file_path": "/workspace/b.txt", "old_string": "x", "new_string": "y"}),
        ),
        ("grep", json!({"pattern": "foo", "path": "/workspace"})),
    ] {
        log.try_record(exec("sesn_b", tool, input, "started"))
            .unwrap();
        log.try_record(end("sesn_b", tool, "ok", None)).unwrap();
    }
    log.try_record(exec(
        "sesn_b",
        "bash",
        json!({"command": "rm -rf /"}),
        "refused",
    ))
    .unwrap();
    log.try_record(AuditEvent {
        call: "mcp_call_tool".into(),
        session_id: Some("sesn_b".into()),
        tool_use_id: Some("toolu_mcp".into()),
        tool: Some("create_ticket".into()),
        input: Some(json!({"tool": "create_ticket", "arguments": {"title": "t"}})),
        outcome: "ok".into(),
        mcp: Some(McpCallDetail {
            server: Some("tickets".into()),
            host: "tickets.internal".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap();
    log.try_record(AuditEvent {
        call: "credential_use".into(),
        session_id: Some("sesn_b".into()),
        sandbox_id: Some("sbx_1".into()),
        outcome: "injected".into(),
        credential_use: Some(CredentialUseDetail {
            bridge_seq: 1,
            bridge_at: "2026-12-06T15:00:00.000000Z".into(),
            credential_id: Some("vcrd_1".into()),
            vault_id: Some("vlt_1".into()),
            host: "git.example.com".into(),
            method: "GET".into(),
            path: "/repo.git/info/refs".into(),
            status: Some(200),
        }),
        ..Default::default()
    })
    .unwrap();
    log.try_record(AuditEvent {
        call: "destroy".into(),
        sandbox_id: Some("sbx_1".into()),
        outcome: "ok".into(),
        ..Default::default()
    })
    .unwrap();
    log.checkpoint_now().unwrap().expect("a checkpoint")
}

fn file_lines(dir: &Path) -> Vec<String> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.starts_with("audit.") && n.ends_with(".jsonl") && n != "audit.jsonl"
        })
        .collect();
    segs.sort();
    segs.push(dir.join("audit.jsonl"));
    segs.iter()
        .filter(|p| p.exists())
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn seqs(text: &str) -> Vec<u64> {
    text.lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn verify_exit_codes_and_public_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let log = AuditLog::open_with(&settings(dir), AGENT).unwrap();
    for i in 0..60 {
        log.try_record(end(&format!("sesn_{}", i % 3), "bash", "ok", Some(i)))
            .unwrap();
    }
    let last = log.checkpoint_now().unwrap().unwrap();
    let key = log.public_key().unwrap();
    drop(log);
    let rotated = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            let n = n.to_str().unwrap();
            n.starts_with("audit.0")
        })
        .count();
    assert!(
        rotated >= 2,
        "rotate_bytes 4096 should have rotated: {rotated}"
    );

    let o = audit(dir, &["public-key"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), key);

    let o = audit(dir, &["verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("audit log intact"), "{out}");
    assert!(out.contains(&format!("{} file(s)", rotated + 1)), "{out}");
    assert!(out.contains(&format!("last seq {}", last.seq + 1)), "{out}");
    assert!(!out.contains(" 0 checkpoint(s) verified"), "{out}");

    // Another key: every checkpoint signature fails.
    let other = tempfile::tempdir().unwrap();
    let other_key = audit(other.path(), &["public-key"]);
    let other_key = stdout(&other_key).trim().to_owned();
    let o = audit(dir, &["verify", "--public-key", &other_key]);
    assert_eq!(o.status.code(), Some(3), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("signature"), "{}", stderr(&o));

    // The control plane's checkpoints (JSON lines with extra keys) match.
    let cps = dir.join("checkpoints.jsonl");
    let mut line = serde_json::to_value(&last).unwrap();
    line["agent_id"] = json!(AGENT);
    line["received_at"] = json!("2026-12-06T20:00:00Z");
    std::fs::write(&cps, format!("{line}\n")).unwrap();
    let o = audit(dir, &["verify", "--checkpoints", cps.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("1 control-plane checkpoint(s) matched"),
        "{}",
        stdout(&o)
    );
    // ... and the API's JSON form too.
    std::fs::write(&cps, json!({"data": [last]}).to_string()).unwrap();
    let o = audit(dir, &["verify", "--checkpoints", cps.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // Tamper with one byte of a line in the first rotated segment.
    let first_seg = {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("audit.0")
            })
            .collect();
        v.sort();
        v.remove(0)
    };
    let original = std::fs::read_to_string(&first_seg).unwrap();
    let tampered = original.replacen("\"exit_code\":3,", "\"exit_code\":4,", 1);
    assert_ne!(tampered, original);
    std::fs::write(&first_seg, &tampered).unwrap();
    let o = audit(dir, &["verify"]);
    assert_eq!(o.status.code(), Some(3), "{}{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(first_seg.file_name().unwrap().to_str().unwrap()),
        "{err}"
    );
    assert!(err.contains("line 4") && err.contains("seq 4"), "{err}");
    std::fs::write(&first_seg, &original).unwrap();

    // Cut the log back before the control plane's checkpoint: truncated (exit 4).
    // (the live file holds at most the lines after the last rotation, and the
    // control plane's checkpoint is of the line before the final checkpoint line)
    std::fs::write(dir.join("audit.jsonl"), "").unwrap();
    let o = audit(dir, &["verify", "--checkpoints", cps.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(4), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("truncated"), "{}", stderr(&o));
    // Without the control plane's checkpoints the shorter chain is still a chain.
    let o = audit(dir, &["verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn show_and_tail_filter_and_print_the_raw_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    mixed_log(dir);
    let lines = file_lines(dir);
    // JSON lines are the file's lines, byte for byte.
    let o = audit(dir, &["show"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().collect::<Vec<_>>(), lines);

    let o = audit(dir, &["show", "--session", "sesn_a"]);
    let got = stdout(&o);
    assert!(!got.is_empty());
    for l in got.lines() {
        assert_eq!(
            serde_json::from_str::<Value>(l).unwrap()["session_id"],
            "sesn_a"
        );
    }
    assert_eq!(seqs(&got), vec![1, 2, 3]);

    let o = audit(dir, &["show", "--outcome", "refused"]);
    let got = stdout(&o);
    assert_eq!(got.lines().count(), 1, "{got}");
    assert!(got.contains("rm -rf /"));

    let o = audit(
        dir,
        &["show", "--tool", "create_ticket", "--call", "mcp_call_tool"],
    );
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
    let o = audit(dir, &["show", "--tool", "grep", "--session", "sesn_b"]);
    assert_eq!(stdout(&o).lines().count(), 2, "{}", stdout(&o));

    // Time range: everything was written just now.
    let o = audit(
        dir,
        &[
            "show",
            "--since",
            "2000-01-01T00:00:00Z",
            "--until",
            "2999-01-01T00:00:00Z",
        ],
    );
    assert_eq!(stdout(&o).lines().count(), lines.len());
    let o = audit(dir, &["show", "--until", "2000-01-01T00:00:00Z"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "");
    let o = audit(dir, &["show", "--since", "yesterday"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--since"), "{}", stderr(&o));

    let o = audit(dir, &["show", "--format", "table", "--session", "sesn_a"]);
    let table = stdout(&o);
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].starts_with("     SEQ"), "{table}");
    assert_eq!(rows.len(), 4, "{table}");
    assert!(
        rows[2].contains("bash") && rows[2].contains("curl"),
        "{table}"
    );

    let o = audit(dir, &["tail", "-n", "3"]);
    let n = lines.len() as u64;
    assert_eq!(seqs(&stdout(&o)), vec![n - 2, n - 1, n]);
    let o = audit(dir, &["tail", "-n", "2", "--call", "execute"]);
    assert_eq!(stdout(&o).lines().count(), 2);

    // `ship` without [audit.syslog] is a config error (64: the ship unit does not restart on it).
    let o = audit(dir, &["ship", "--once"]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("[audit.syslog]"), "{}", stderr(&o));

    // An empty dir is an empty log.
    let empty = tempfile::tempdir().unwrap();
    let o = audit(empty.path(), &["show"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
}

#[test]
fn tail_follow_sees_new_records_across_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let log = AuditLog::open_with(&settings(dir), AGENT).unwrap();
    for i in 0..5 {
        log.try_record(end("sesn_f", "bash", "ok", Some(i)))
            .unwrap();
    }
    let mut child = bin()
        .args(["audit", "tail", "-f", "-n", "2", "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let wait_for = |n: usize, got: &mut Vec<u64>| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while got.len() < n && Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                got.push(
                    serde_json::from_str::<Value>(&l).unwrap()["seq"]
                        .as_u64()
                        .unwrap(),
                );
            }
        }
    };
    wait_for(2, &mut got);
    assert_eq!(got, vec![4, 5]);
    // Enough records to rotate several times (and checkpoint) while following.
    for i in 0..80 {
        log.try_record(end("sesn_f", "bash", "ok", Some(i)))
            .unwrap();
    }
    log.checkpoint_now().unwrap();
    let total = file_lines(dir).len();
    assert!(
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .starts_with("audit.0"))
            .count()
            >= 2
    );
    wait_for(total - 3, &mut got);
    let _ = child.kill();
    let _ = child.wait();
    let want: Vec<u64> = (4..=total as u64).collect();
    assert_eq!(got, want, "every record once, in order, across rotation");
}

#[test]
fn export_ocsf_maps_each_kind_and_adds_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    mixed_log(dir);
    let lines = file_lines(dir);
    let o = audit(dir, &["export", "--format", "ocsf"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), lines.len());
    // The writer scrubbed the token; the export holds no more than the log.
    assert!(!text.contains("ghp_0123456789"), "{text}");
    assert!(
        text.contains("[redacted:"),
        "the scrubbed command is exported as recorded"
    );
    let mut seen = std::collections::BTreeMap::new();
    for (e, raw) in events.iter().zip(&lines) {
        let rec: Value = serde_json::from_str(raw).unwrap();
        let class = e["class_uid"].as_u64().unwrap();
        let activity = e["activity_id"].as_u64().unwrap();
        assert_eq!(
            e["type_uid"].as_u64().unwrap(),
            class * 100 + activity,
            "{e}"
        );
        for k in [
            "category_uid",
            "severity_id",
            "status_id",
            "time",
            "metadata",
            "device",
            "actor",
            "unmapped",
        ] {
            assert!(!e[k].is_null(), "{k} missing in {e}");
        }
        assert_eq!(e["metadata"]["version"], "1.3.0");
        assert_eq!(e["metadata"]["product"]["name"], "Airlock sandbox-agent");
        assert_eq!(e["metadata"]["product"]["vendor_name"], "Airlock");
        assert_eq!(e["metadata"]["uid"], rec["seq"].to_string());
        assert_eq!(e["unmapped"]["seq"], rec["seq"]);
        assert_eq!(e["unmapped"]["hash"], rec["hash"]);
        assert!(e["time"].as_i64().unwrap() > 1_700_000_000_000, "{e}");
        assert!(!e["device"]["hostname"].as_str().unwrap().is_empty());
        let kind = format!(
            "{}/{}/{}",
            rec["call"].as_str().unwrap(),
            rec["tool"].as_str().unwrap_or("-"),
            rec["phase"]
                .as_str()
                .unwrap_or(rec["outcome"].as_str().unwrap())
        );
        seen.insert(
            kind,
            (
                e["type_uid"].as_u64().unwrap(),
                e["status_id"].as_u64().unwrap(),
                e.clone(),
            ),
        );
    }
    let t = |k: &str| {
        seen.get(k)
            .unwrap_or_else(|| panic!("{k} not in {:?}", seen.keys()))
            .clone()
    };
    assert_eq!(t("provision/-/ok").0, 600_203);
    assert_eq!(t("destroy/-/ok").0, 600_204);
    let (uid, _, bash) = t("execute/bash/start");
    assert_eq!(uid, 100_701);
    assert!(bash["process"]["cmd_line"]
        .as_str()
        .unwrap()
        .starts_with("curl"));
    assert_eq!(bash["actor"]["session"]["uid"], "sesn_a");
    let (uid, _, bash_end) = t("execute/bash/end");
    assert_eq!(uid, 100_702);
    assert_eq!(bash_end["exit_code"], 0);
    assert_eq!(
        bash_end["unmapped"]["output_sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    let (uid, status, refused) = t("execute/bash/refused");
    assert_eq!((uid, status), (100_701, 2));
    assert_eq!(refused["status_detail"], "tool denied by policy");
    assert_eq!(t("execute/read/start").0, 100_102);
    assert_eq!(t("execute/write/start").0, 100_101);
    assert_eq!(t("execute/edit/end").0, 100_103);
    let (uid, _, grep) = t("execute/grep/start");
    assert_eq!(uid, 100_102);
    assert_eq!(grep["file"]["path"], "/workspace");
    let (uid, _, mcp) = t("mcp_call_tool/create_ticket/ok");
    assert_eq!(uid, 600_399);
    assert_eq!(mcp["api"]["service"]["name"], "tickets");
    let (uid, _, http) = t("credential_use/-/injected");
    assert_eq!(uid, 400_203);
    assert_eq!(http["http_request"]["url"]["hostname"], "git.example.com");
    assert_eq!(http["http_response"]["code"], 200);
    let (uid, _, cp) = t("checkpoint/-/signed");
    assert_eq!(uid, 99);
    assert!(cp["unmapped"]["checkpoint"]["signature"].is_string());

    // jsonl export = the raw lines; filters apply to exports too.
    let o = audit(dir, &["export", "--format", "jsonl", "--session", "sesn_a"]);
    assert_eq!(seqs(&stdout(&o)), vec![1, 2, 3]);
    let o = audit(dir, &["export", "--format", "xml"]);
    assert_eq!(o.status.code(), Some(2));
}
