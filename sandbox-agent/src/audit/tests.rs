//! Unit tests of the writer and verifier together.

use super::*;

#[test]
fn chain_verifies_and_detects_tampering() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = AuditLog::open(dir.path()).unwrap();
        for i in 0..3 {
            log.record(AuditEvent {
                call: "execute".into(),
                tool: Some("bash".into()),
                outcome: "ok".into(),
                duration_ms: i,
                ..Default::default()
            });
        }
    }
    // reopen continues the chain
    let log = AuditLog::open(dir.path()).unwrap();
    log.record(AuditEvent {
        call: "destroy".into(),
        outcome: "ok".into(),
        ..Default::default()
    });
    let path = log.path().to_owned();
    assert_eq!(verify(&path).unwrap().0, 4);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen("\"duration_ms\":1", "\"duration_ms\":9", 1),
    )
    .unwrap();
    let err = verify(&path).unwrap_err();
    assert!(matches!(err, AuditError::Broken { line: 2, .. }), "{err}");
    // dropping a line breaks it too
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
    assert!(matches!(
        verify(&path),
        Err(AuditError::Broken { line: 2, .. })
    ));
}

#[test]
fn credential_use_lines_chain_and_give_the_resume_seq() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    assert_eq!(last_credential_seq(log.path()).unwrap(), 0);
    let shared = log.clone();
    for seq in [4, 7] {
        shared.record(AuditEvent {
            call: "credential_use".into(),
            sandbox_id: Some("sbx_1".into()),
            session_id: Some("sesn_1".into()),
            tool_use_id: Some("toolu_1".into()),
            outcome: "injected".into(),
            credential_use: Some(CredentialUseDetail {
                bridge_seq: seq,
                bridge_at: "2026-12-06T15:00:00.000000Z".into(),
                credential_id: Some("vcrd_1".into()),
                vault_id: Some("vlt_1".into()),
                host: "git.example.com".into(),
                method: "GET".into(),
                path: "/repo.git/info/refs".into(),
                status: Some(200),
            }),
            ..Default::default()
        });
    }
    log.record(AuditEvent {
        call: "execute".into(),
        outcome: "ok".into(),
        ..Default::default()
    });
    assert_eq!(verify(log.path()).unwrap().0, 3);
    assert_eq!(last_credential_seq(log.path()).unwrap(), 7);
    let text = std::fs::read_to_string(log.path()).unwrap();
    std::fs::write(
        log.path(),
        text.replacen("\"status\":200", "\"status\":201", 1),
    )
    .unwrap();
    assert!(matches!(
        verify(log.path()),
        Err(AuditError::Broken { line: 1, .. })
    ));
}

/// A v1 line as the previous writer produced it (re-encoding through the
/// v1 struct, hash last) still verifies with the raw-bytes verifier, and a
/// v2 event without v2 fields encodes to the same bytes.
#[test]
fn v1_lines_stay_valid_and_byte_identical() {
    #[derive(serde::Serialize)]
    struct V1Line {
        seq: u64,
        at: String,
        call: String,
        sandbox_id: Option<String>,
        outcome: String,
        duration_ms: u64,
        prev: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        hash: Option<String>,
    }
    let mut line = V1Line {
        seq: 1,
        at: "2026-12-01T00:00:00Z".into(),
        call: "provision".into(),
        sandbox_id: Some("sbx_1".into()),
        outcome: "ok".into(),
        duration_ms: 12,
        prev: GENESIS.into(),
        hash: None,
    };
    let body = serde_json::to_vec(&line).unwrap();
    line.hash = Some(chain::hash_of(GENESIS, &body));
    let mut text = serde_json::to_string(&line).unwrap();
    text.push('\n');
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(CURRENT_FILE), &text).unwrap();
    assert_eq!(
        verify_dir(dir.path(), &VerifyOptions::default())
            .unwrap()
            .last_seq,
        1
    );
    // the same event through the v2 struct encodes identically
    #[derive(serde::Serialize)]
    struct Out<'a> {
        seq: u64,
        at: &'a str,
        #[serde(flatten)]
        event: &'a AuditEvent,
        prev: &'a str,
    }
    let ev = AuditEvent {
        call: "provision".into(),
        sandbox_id: Some("sbx_1".into()),
        outcome: "ok".into(),
        duration_ms: 12,
        ..Default::default()
    };
    let v2 = serde_json::to_vec(&Out {
        seq: 1,
        at: "2026-12-01T00:00:00Z",
        event: &ev,
        prev: GENESIS,
    })
    .unwrap();
    assert_eq!(v2, body);
    // and a writer continues a v1 file
    let log = AuditLog::open(dir.path()).unwrap();
    assert_eq!(log.try_record(ev).unwrap(), 2);
    assert_eq!(verify(log.path()).unwrap().0, 2);
}

fn bash(i: u64) -> AuditEvent {
    AuditEvent {
        call: "execute".into(),
        phase: Some(PHASE_START.into()),
        session_id: Some("sesn_1".into()),
        tool: Some("bash".into()),
        input: Some(serde_json::json!({
            "command": format!("echo {i}; GH_TOKEN=ghp_1A2b3C4d5E6f7G8h9I0jK1l2M3n4O5p6Q7r8 gh pr list")
        })),
        decision: Some(Decision {
            allowed: true,
            ..Default::default()
        }),
        outcome: "started".into(),
        detail: Some("image airlock-sandbox:latest".into()),
        ..Default::default()
    }
}

#[test]
fn reopen_after_rotation_continues_the_chain_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AuditSettings::defaults(dir.path());
    s.rotate_bytes = 4096;
    s.checkpoint_every_records = 10;
    {
        let log = AuditLog::open_with(&s, "agt_1").unwrap();
        for i in 0..30 {
            log.try_record(bash(i)).unwrap();
        }
        assert!(log.status().healthy);
        assert!(log.status().checkpoint.is_some());
    }
    let segments = chain::segments(dir.path()).unwrap();
    assert!(segments.len() >= 2, "{segments:?}");
    // every segment ends in a checkpoint line (rotation signs the head)
    for (seq, path) in &segments {
        let last = chain::last_line(path).unwrap().unwrap();
        let text = String::from_utf8(last).unwrap();
        assert!(text.contains("\"call\":\"checkpoint\""), "{text}");
        assert!(text.contains(&format!("\"seq\":{seq},")), "{text}");
    }
    let before = verify_dir(dir.path(), &VerifyOptions::default()).unwrap();
    let log = AuditLog::open_with(&s, "agt_1").unwrap();
    let seq = log.try_record(bash(99)).unwrap();
    assert_eq!(seq, before.last_seq + 1);
    let cp = log.checkpoint_now().unwrap().unwrap();
    assert_eq!(cp.seq, seq);
    // nothing new: no second checkpoint
    assert!(log.checkpoint_now().unwrap().is_none());
    let key = log.public_key().unwrap();
    let report = verify_dir(
        dir.path(),
        &VerifyOptions {
            public_key: Some(key),
            checkpoints: vec![cp.clone()],
        },
    )
    .unwrap();
    assert_eq!(report.matched_checkpoints, 1);
    assert_eq!(report.agent_id.as_deref(), Some("agt_1"));
    assert_eq!(report.last_checkpoint, Some(cp));
    // the token in the input was scrubbed by the writer and counted
    let text: String = chain::segments(dir.path())
        .unwrap()
        .iter()
        .map(|(_, p)| std::fs::read_to_string(p).unwrap())
        .chain([std::fs::read_to_string(log.path()).unwrap()])
        .collect();
    assert!(!text.contains("ghp_1A2b3C4d5E6f7G8h9I0jK1l2M3n4O5p6Q7r8"));
    assert!(text.contains("[redacted:github_token]"));
    assert!(text.contains("\"redactions\":1"));
    assert!(text.starts_with("{\"seq\":1,\"at\":\""));
    assert!(text.contains("\"v\":2,\"call\":\"execute\",\"phase\":\"start\""));
}

#[test]
fn outcomes_detail_keeps_no_inputs_and_makes_no_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AuditSettings::defaults(dir.path());
    s.detail = Detail::Outcomes;
    s.checkpoint_every_records = 1;
    let log = AuditLog::open_with(&s, "agt_1").unwrap();
    let mut ev = bash(1);
    ev.output = Some(OutputDigest::of(b"{}"));
    log.try_record(ev).unwrap();
    assert!(log.checkpoint_now().unwrap().is_none());
    assert!(log.public_key().is_none());
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(!text.contains("\"v\":"));
    assert!(!text.contains("input") && !text.contains("output") && !text.contains("checkpoint"));
    assert!(!dir.path().join(KEY_FILE).exists());
}

#[test]
fn a_log_opened_without_an_agent_id_is_upgraded_by_open_with() {
    let dir = tempfile::tempdir().unwrap();
    let plain = AuditLog::open(dir.path()).unwrap();
    plain.try_record(bash(1)).unwrap();
    assert!(plain.checkpoint_now().unwrap().is_none());
    let s = AuditSettings::defaults(dir.path());
    let full = AuditLog::open_with(&s, "agt_1").unwrap();
    // the same chain: a record through either handle continues it
    assert_eq!(plain.try_record(bash(2)).unwrap(), 2);
    assert_eq!(full.try_record(bash(3)).unwrap(), 3);
    let cp = plain.checkpoint_now().unwrap().unwrap();
    assert_eq!(cp.seq, 3);
    assert_eq!(full.status().checkpoint, Some(cp));
    // a later plain open shares it and does not turn checkpoints off
    let again = AuditLog::open(dir.path()).unwrap();
    again.try_record(bash(4)).unwrap();
    assert!(again.checkpoint_now().unwrap().is_some());
}

#[tokio::test]
async fn checkpoints_by_time_when_there_were_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AuditSettings::defaults(dir.path());
    s.checkpoint_interval = std::time::Duration::from_millis(300);
    let log = AuditLog::open_with(&s, "agt_1").unwrap();
    let mut status = log.watch_status();
    assert!(status.borrow().checkpoint.is_none());
    log.try_record(bash(1)).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), status.changed())
        .await
        .expect("a checkpoint within the interval")
        .unwrap();
    let cp = status.borrow().checkpoint.clone().unwrap();
    assert_eq!(cp.seq, 1);
    // no new records: no new checkpoint
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    assert!(!status.has_changed().unwrap());
    let report = verify_dir(dir.path(), &VerifyOptions::default()).unwrap();
    assert_eq!((report.last_seq, report.checkpoints), (2, 1));
}

#[test]
fn a_partial_last_line_from_a_crash_is_cut_and_recorded_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    log.try_record(bash(1)).unwrap();
    log.try_record(bash(2)).unwrap();
    let path = log.path().to_owned();
    drop(log);
    let good = std::fs::read(&path).unwrap();
    let mut torn = good.clone();
    let partial = b"{\"seq\":3,\"at\":\"2026-12";
    torn.extend_from_slice(partial);
    std::fs::write(&path, &torn).unwrap();
    // the verifier calls it what it is
    let err = verify_dir(dir.path(), &VerifyOptions::default()).unwrap_err();
    assert!(err.to_string().contains("truncated mid-line"), "{err}");
    // the writer cuts it and says so in the chain
    let log = AuditLog::open(dir.path()).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(std::str::from_utf8(&good).unwrap()));
    let last = text.lines().last().unwrap();
    assert!(
        last.contains("\"call\":\"audit_recovered\"") && last.contains("\"seq\":3,"),
        "{last}"
    );
    assert!(last.contains(&format!("{} bytes", partial.len())), "{last}");
    assert_eq!(log.try_record(bash(4)).unwrap(), 4);
    verify_dir(dir.path(), &VerifyOptions::default()).unwrap();
}

#[test]
fn free_text_fields_are_scrubbed_too() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path()).unwrap();
    let mut ev = bash(1);
    ev.input = None;
    ev.detail = Some("pull failed for https://bot:hunter2-pass@registry.example.com/img".into());
    ev.decision = Some(Decision {
        allowed: false,
        rule: Some("tools.deny".into()),
        reason: Some("command sets AWS key AKIAIOSFODNN7EXAMPLE".into()),
    });
    log.try_record(ev).unwrap();
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        !text.contains("hunter2-pass") && !text.contains("AKIAIOSFODNN7EXAMPLE"),
        "{text}"
    );
    assert!(text.contains("\"redactions\":2"), "{text}");
}
