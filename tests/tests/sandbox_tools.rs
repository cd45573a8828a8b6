//! Every tool against a real sandbox (Docker, test image, static executor),
//! including the edge cases: binary and missing files, non-unique edit, huge
//! output, a command that ignores SIGTERM, a background job that outlives its
//! call, persistent shell state, streaming, `ANTHROPIC_*` stripping and
//! `tool_use_id` replay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use airlock_tests::sandbox::{exec, exec_id, provision, text, tool_use_id, TestAgent, Tools};
use protocol::sandbox::{Disposition, ExecuteRequest, ProvisionRequest};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bash_shell_persists_state_and_handles_edges() {
    let agent = TestAgent::new();
    let (svc, _) = agent.start().await;
    let sbx = provision(&svc).await;
    let sb = Tools::new(&svc, &sbx);
    let t0 = std::time::Instant::now();
    // Each part is logged with the time since the start (the log is the
    // part's name).
    let step = |what: &str| eprintln!("{:?} {what}", t0.elapsed());

    step("cwd, env and functions survive between calls");
    let cwd = sb
        .ok(
            "bash",
            json!({"command": "mkdir -p d && cd d && export FOO=bar && pwd"}),
        )
        .await;
    assert_eq!(cwd.trim(), "/workspace/d");
    assert_eq!(sb.sh("pwd; echo $FOO").await, "/workspace/d\nbar");

    step("non-zero exit is a tool error carrying output and code");
    let r = sb
        .run(
            "bash",
            json!({"command": "echo out; echo err >&2; exit_code() { return 3; }; exit_code"}),
        )
        .await;
    assert!(r.is_error);
    let t = text(&r);
    assert!(
        t.contains("out") && t.contains("err") && t.contains("[exit code: 3]"),
        "{t}"
    );

    step("ANSI stripped");
    sb.text_is(
        "bash",
        json!({"command": "printf '\\033[1;31mred\\033[0m\\n'"}),
        "red\n",
    )
    .await;

    step("ANTHROPIC_* never reaches the shell, even when asked for");
    assert_eq!(sb.sh("export -p | grep -c ANTHROPIC_ || true").await, "0");

    step("huge output: last 100 KiB kept with an explicit marker");
    let r = sb.run("bash", json!({"command": "i=0; while [ $i -lt 30000 ]; do echo line-$i-padding-padding; i=$((i+1)); done"})).await;
    assert!(!r.is_error);
    let t = text(&r);
    assert!(
        t.starts_with("[output truncated: showing the last 102400 of"),
        "{}",
        &t[..200]
    );
    assert!(t.trim_end().ends_with("line-29999-padding-padding"));
    assert!(t.len() < 110 * 1024);

    step("a background job outlives its call");
    assert_eq!(
        sb.sh("(sleep 2; echo done > /workspace/bg.txt) & echo started")
            .await,
        "started"
    );
    let seen = testkit::try_eventually_async(
        "the background job's file",
        std::time::Duration::from_secs(10),
        || async { sb.sh("cat /workspace/bg.txt 2>/dev/null || true").await == "done" },
    )
    .await
    .is_ok();
    assert!(
        seen,
        "background job did not finish after its call returned"
    );

    step("a command that ignores SIGTERM is still killed at its timeout, with its group");
    let hang = json!({"command": "trap '' TERM; (trap '' TERM; sleep 300) & sleep 300", "timeout_ms": 1000});
    let r = sb.run("bash", hang).await;
    assert!(r.is_error);
    assert!(text(&r).contains("timed out after 1000 ms"), "{}", text(&r));
    assert_eq!(
        sb.sh("ps -o pid,comm | grep -c 'sleep' || true").await,
        "0",
        "the timed-out group must be gone"
    );
    step("and the shell is fresh (cwd reset to the workdir)");
    assert_eq!(sb.sh("pwd").await, "/workspace");

    step("restart resets state; exit in a command is reported and recovered from");
    sb.run("bash", json!({"command": "export KEEP=1"})).await;
    sb.ok("bash", json!({"restart": true})).await;
    assert_eq!(sb.sh("echo \"[$KEEP]\"").await, "[]");
    sb.fails_with("bash", json!({"command": "exit 7"}), "status 7")
        .await;
    assert_eq!(sb.sh("echo alive").await, "alive");

    step("bad input is a tool error, not an RPC error");
    sb.fails_with("bash", json!({"cmd": "true"}), "invalid input for bash")
        .await;
    svc.shutdown(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bash_output_streams_as_produced() {
    let agent = TestAgent::new();
    let (svc, _) = agent.start().await;
    let sbx = provision(&svc).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let req = ExecuteRequest {
        sandbox_id: sbx.clone(),
        tool_use_id: tool_use_id(),
        name: "bash".into(),
        // waits (30 s at most) for a marker this test creates once it has
        // seen the first chunk: no race with a slow reader
        input: json!({"command": "echo first; for i in $(seq 300); do [ -e go ] && break; sleep 0.1; done; echo second"}),
        stream: true,
    };
    let svc2 = svc.clone();
    let call = tokio::spawn(async move { svc2.execute(req, Some(tx)).await });
    // The first chunk arrives while the command is still sleeping.
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
        .await
        .expect("no streamed chunk")
        .expect("stream closed");
    assert!(String::from_utf8_lossy(&first).contains("first"));
    assert!(
        !call.is_finished(),
        "the call finished before its first chunk was seen"
    );
    let go = exec(&svc, &sbx, "bash", json!({"command": "touch go"})).await;
    assert!(!go.is_error, "{go:?}");
    let r = call.await.unwrap().unwrap();
    assert_eq!(text(&r), "first\nsecond\n");
    svc.shutdown(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_tools_with_edge_cases() {
    let agent = TestAgent::new();
    let (svc, _) = agent.start().await;
    let sbx = provision(&svc).await;
    let sb = Tools::new(&svc, &sbx);

    sb.ok(
        "write",
        json!({"file_path": "src/deep/a.txt", "content": "alpha\nbeta\ngamma\nbeta\n"}),
    )
    .await;
    for (input, want) in [
        (
            json!({"file_path": "/workspace/src/deep/a.txt"}),
            "     1\talpha\n     2\tbeta\n     3\tgamma\n     4\tbeta\n",
        ),
        (
            json!({"file_path": "src/deep/a.txt", "view_range": [2, 3]}),
            "     2\tbeta\n     3\tgamma\n",
        ),
        (
            json!({"file_path": "src/deep/a.txt", "view_range": [3, 0]}),
            "     3\tgamma\n     4\tbeta\n",
        ),
    ] {
        sb.text_is("read", input, want).await;
    }
    // a range past the end, and a missing file
    for (input, needle) in [
        (
            json!({"file_path": "src/deep/a.txt", "view_range": [9, 10]}),
            "beyond the end",
        ),
        (json!({"file_path": "nope.txt"}), "no such file"),
    ] {
        sb.fails_with("read", input, needle).await;
    }
    // files made in the shell, then read: a binary file is refused, a PNG
    // comes back as an image block, a file above the size cap is refused
    // with the fix
    for (file, make, refused) in [
        (
            "bin.dat",
            "printf 'ELF\\000\\001\\002' > bin.dat",
            Some("binary"),
        ),
        ("i.png", "printf '\\211PNG\\r\\n\\032\\n0000' > i.png", None),
        (
            "big.txt",
            "head -c 300000 /dev/zero | tr '\\0' a > big.txt",
            Some("limit"),
        ),
    ] {
        sb.run("bash", json!({ "command": make })).await;
        let input = json!({ "file_path": file });
        match refused {
            Some(needle) => {
                sb.fails_with("read", input, needle).await;
            }
            None => {
                let r = sb.run("read", input).await;
                assert!(!r.is_error);
                assert_eq!(r.content[0]["type"], "image");
            }
        }
    }

    // edit: unique, not found, not unique, replace_all
    for (old, new, needle) in [("beta", "B", "occurs 2 times"), ("delta", "D", "not found")] {
        let input = json!({"file_path": "src/deep/a.txt", "old_string": old, "new_string": new});
        sb.fails_with("edit", input, needle).await;
    }
    sb.ok(
        "edit",
        json!({"file_path": "src/deep/a.txt", "old_string": "gamma", "new_string": "G"}),
    )
    .await;
    let r = sb.run("edit", json!({"file_path": "src/deep/a.txt", "old_string": "beta", "new_string": "B", "replace_all": true})).await;
    assert!(
        !r.is_error && text(&r).contains("replaced 2 occurrences"),
        "{}",
        text(&r)
    );
    sb.text_is(
        "bash",
        json!({"command": "cat src/deep/a.txt"}),
        "alpha\nB\nG\nB\n",
    )
    .await;

    // glob: doublestar, newest first
    for (tool, input) in [
        (
            "write",
            json!({"file_path": "src/old.rs", "content": "fn old() {}\n"}),
        ),
        (
            "bash",
            json!({"command": "touch -d '2020-01-01' src/old.rs"}),
        ),
        (
            "write",
            json!({"file_path": "src/deep/new.rs", "content": "fn new() {}\n// TODO later\n"}),
        ),
    ] {
        sb.run(tool, input).await;
    }
    for (input, want) in [
        (
            json!({"pattern": "**/*.rs"}),
            "/workspace/src/deep/new.rs\n/workspace/src/old.rs\n",
        ),
        (
            json!({"pattern": "*.rs", "path": "src"}),
            "/workspace/src/old.rs\n",
        ),
    ] {
        sb.text_is("glob", input, want).await;
    }

    // grep: regex, matching lines with path and line number
    let r = sb
        .run("grep", json!({"pattern": "^fn (old|new)", "path": "src"}))
        .await;
    let t = text(&r);
    assert!(t.contains("/workspace/src/old.rs:1:fn old() {}"), "{t}");
    assert!(
        t.contains("/workspace/src/deep/new.rs:1:fn new() {}"),
        "{t}"
    );
    sb.text_is(
        "grep",
        json!({"pattern": "TODO"}),
        "/workspace/src/deep/new.rs:2:// TODO later\n",
    )
    .await;
    let r = sb.run("grep", json!({"pattern": "[unclosed"})).await;
    assert!(r.is_error && text(&r).contains("invalid regex"));

    // the root filesystem is read-only; /tmp is writable
    let r = sb
        .run("write", json!({"file_path": "/etc/x", "content": "x"}))
        .await;
    assert!(r.is_error, "{}", text(&r));
    sb.ok("write", json!({"file_path": "/tmp/x/y", "content": "x"}))
        .await;
    svc.shutdown(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_use_id_replays_and_policy_refuses() {
    let mut agent = TestAgent::new();
    agent.policy.allowed_tools = Some(vec!["bash".into(), "read".into()]);
    let (svc, _) = agent.start().await;
    let sbx = provision(&svc).await;
    let sb = Tools::new(&svc, &sbx);
    let id = tool_use_id();
    let r = exec_id(
        &svc,
        &sbx,
        &id,
        "bash",
        json!({"command": "echo x >> count; wc -l < count"}),
    )
    .await;
    assert_eq!(text(&r).trim(), "1");
    assert_eq!(r.disposition, Disposition::Ran);
    let again = exec_id(
        &svc,
        &sbx,
        &id,
        "bash",
        json!({"command": "echo x >> count; wc -l < count"}),
    )
    .await;
    assert_eq!(again.disposition, Disposition::Replayed);
    assert_eq!(
        text(&again).trim(),
        "1",
        "a replay must not run the command again"
    );
    assert_eq!(sb.sh("wc -l < count").await, "1");

    // policy: a tool outside allowed_tools is refused as an RPC error naming the rule
    let err = svc
        .execute(
            ExecuteRequest {
                sandbox_id: sbx.clone(),
                tool_use_id: tool_use_id(),
                name: "write".into(),
                input: json!({"file_path": "a", "content": "b"}),
                stream: false,
            },
            None,
        )
        .await
        .unwrap_err();
    let wire = sandbox_agent::sandbox::to_wire_error(&err);
    assert_eq!(wire.code, protocol::sandbox::SandboxErrorCode::PolicyDenied);
    assert_eq!(wire.rule.as_deref(), Some("policy.allowed_tools"));
    // an image outside allowed_images is refused at provision
    let err = svc
        .provision(ProvisionRequest {
            image: Some("debian:bookworm".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        sandbox_agent::sandbox::to_wire_error(&err).rule.as_deref(),
        Some("policy.allowed_images")
    );
    // unknown sandbox is an RPC error
    let err = svc
        .execute(
            ExecuteRequest {
                sandbox_id: "sbx_nope".into(),
                tool_use_id: tool_use_id(),
                name: "bash".into(),
                input: json!({"command": "true"}),
                stream: false,
            },
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(
        sandbox_agent::sandbox::to_wire_error(&err).code,
        protocol::sandbox::SandboxErrorCode::UnknownSandbox
    );
    // the audit chain holds every call and verifies
    let (lines, _) = sandbox_agent::audit::verify(svc.audit_path()).unwrap();
    assert!(lines >= 6, "{lines} audit lines");
    let audit = std::fs::read_to_string(svc.audit_path()).unwrap();
    assert!(audit.contains("\"outcome\":\"replayed\"") && audit.contains("policy.allowed_tools"));
    assert!(
        audit.contains("echo x"),
        "the audit log records tool inputs (scrubbed) in start lines"
    );
    svc.shutdown(true).await;
}
