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
