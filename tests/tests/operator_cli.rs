//! The operator CLI (`control-plane environments …`, `control-plane
//! sessions …`) against a real `control-plane serve`: every command runs
//! the real binary, which talks to the server over its public HTTP API with
//! a key from `control-plane api-keys create`. The harness points at the
//! scripted fake model (the only fake: the model API cannot run here).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use airlock_tests::deploy::{binary, free_port, tail};
use airlock_tests::fake_model::{FakeModel, Reply, RequestCtx};
use e2e_support::{runtime_toml, Deployment};
use serde_json::Value;

/// Run `control-plane --config <cfg> <args>` with `AIRLOCK_API_KEY=key` (the
/// API URL comes from the config's `[api] listen`).
fn cli(d: &Deployment, key: &str, args: &[&str]) -> Output {
    Command::new(binary("control-plane").unwrap())
        .arg("--config")
        .arg(d.cp.config_path())
        .args(args)
        .env("AIRLOCK_API_KEY", key)
        .env_remove("AIRLOCK_API_URL")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Run and expect success; returns stdout.
fn ok(d: &Deployment, args: &[&str]) -> String {
    let out = cli(d, &d.api_key, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "control-plane {} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        args.join(" "),
        out.status
    );
    assert!(
        !stdout.contains(&d.api_key) && !stderr.contains(&d.api_key),
        "the API key must never be printed"
    );
    stdout
}

/// Run with `--json` and expect success; returns the parsed stdout.
fn ok_json(d: &Deployment, args: &[&str]) -> Value {
    let out = ok(d, args);
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("control-plane {}: not JSON ({e}): {out}", args.join(" ")))
}

/// Run and expect failure; returns stderr.
fn fails(d: &Deployment, key: &str, args: &[&str]) -> String {
    let out = cli(d, key, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "control-plane {} should fail; stdout: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("expected a JSON array, got {list}"))
        .iter()
        .map(|v| v["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A running `sessions tail` whose stdout lines arrive on a channel; killed on drop.
struct Tail {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Tail {
    fn start(d: &Deployment, args: &[&str]) -> Self {
        let mut child = Command::new(binary("control-plane").unwrap())
            .arg("--config")
            .arg(d.cp.config_path())
            .args(args)
            .env("AIRLOCK_API_KEY", &d.api_key)
            .env_remove("AIRLOCK_API_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Read lines until `pred` holds for one, within `limit`.
    fn until(&mut self, limit: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "tail: no line with {what} ({e:?}); lines so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn script(_req: &RequestCtx) -> Reply {
    Reply::text("hello operator")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_cli_manages_environments_and_sessions_over_the_api() {
    let model = FakeModel::builder().start(script).await.unwrap();
    let d = Deployment::start(runtime_toml(&model.base_url(), 5.0))
        .await
        .unwrap();
    let name = format!("ops-{}", std::process::id());

    // environments create / list / show / archive
    let env = ok_json(&d, &["environments", "create", "--name", &name, "--json"]);
    let env_id = env["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {env}"))
        .to_owned();
    assert_eq!(env["name"], name.as_str(), "{env}");
    assert_eq!(env["config"]["type"], "self_hosted", "{env}");
    let list = ok_json(&d, &["environments", "list", "--json"]);
    assert!(ids(&list).contains(&env_id), "{env_id} not in {list}");
    assert!(
        ids(&list).contains(&d.environment_id),
        "{} not in {list}",
        d.environment_id
    );
    let table = ok(&d, &["environments", "list"]);
    assert!(table.starts_with("ID"), "table header: {table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains(&env_id) && l.contains(&name)),
        "{table}"
    );
    let shown = ok_json(&d, &["environments", "show", &env_id, "--json"]);
    assert_eq!(shown["id"], env_id.as_str());
    assert!(shown["archived_at"].is_null(), "{shown}");
    let archived = ok(&d, &["environments", "archive", &env_id]);
    assert!(archived.contains(&env_id), "{archived}");
    let shown = ok_json(&d, &["environments", "show", &env_id, "--json"]);
    assert!(
        shown["archived_at"].is_string(),
        "archived_at after archive: {shown}"
    );
    let human = ok(&d, &["environments", "show", &env_id]);
    assert!(
        human.contains(&env_id) && human.contains("archived_at"),
        "{human}"
    );

    // sessions list / show for a session created through the HTTP API
    let agent_id = d.api.create_agent("ops-agent").await.unwrap();
    let session_id = d
        .api
        .create_session(&agent_id, &d.environment_id)
        .await
        .unwrap();
    let list = ok_json(&d, &["sessions", "list", "--json"]);
    assert!(
        ids(&list).contains(&session_id),
        "{session_id} not in {list}"
    );
    let terminated = ok_json(
        &d,
        &["sessions", "list", "--status", "terminated", "--json"],
    );
    assert!(
        !ids(&terminated).contains(&session_id),
        "a live session listed as terminated: {terminated}"
    );
    let table = ok(&d, &["sessions", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&session_id) && l.contains(&agent_id)),
        "{table}"
    );
    let shown = ok_json(&d, &["sessions", "show", &session_id, "--json"]);
    assert_eq!(shown["id"], session_id.as_str());
    assert_eq!(shown["environment_id"], d.environment_id.as_str());
    assert!(shown["status"].is_string(), "{shown}");
    let human = ok(&d, &["sessions", "show", &session_id]);
    assert!(
        human.contains(&session_id) && human.contains(&agent_id),
        "{human}"
    );

    // interrupt, then the log has a user.interrupt
    d.api.user_message(&session_id, "say hello").await.unwrap();
    let out = ok(&d, &["sessions", "interrupt", &session_id]);
    assert!(out.contains(&session_id), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = d.api.events(&session_id).await.unwrap();
        if events.iter().any(|e| e["type"] == "user.interrupt") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no user.interrupt in the log: {events:?}\n{}",
            tail(&d.cp.log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // tail --after 0 --json replays from the start, one JSON event per line
    let mut t = Tail::start(
        &d,
        &["sessions", "tail", &session_id, "--after", "0", "--json"],
    );
    let parse = |l: &str| {
        serde_json::from_str::<Value>(l)
            .unwrap_or_else(|e| panic!("tail --json line is not JSON ({e}): {l}"))
    };
    let first = parse(&t.until(Duration::from_secs(60), "user.message", |l| {
        l.contains("\"user.message\"")
    }));
    assert_eq!(first["type"], "user.message");
    assert!(first["seq"].as_u64().is_some(), "{first}");
    let int = parse(&t.until(Duration::from_secs(60), "user.interrupt", |l| {
        l.contains("\"user.interrupt\"")
    }));
    assert!(
        int["seq"].as_u64() > first["seq"].as_u64(),
        "seq order: {first} then {int}"
    );
    for line in &t.seen {
        parse(line);
    }
    drop(t);

    // the human form: seq, type, summary
    let mut t = Tail::start(&d, &["sessions", "tail", &session_id, "--after", "0"]);
    let line = t.until(Duration::from_secs(60), "user.message", |l| {
        l.contains("user.message")
    });
    assert!(
        line.contains("say hello"),
        "summary of the user.message: {line}"
    );
    t.until(Duration::from_secs(60), "user.interrupt", |l| {
        l.contains("user.interrupt")
    });
    drop(t);

    // errors
    let missing = "sesn_0000000000000000000000000000";
    let err = fails(&d, &d.api_key, &["sessions", "show", missing]);
    assert!(
        err.starts_with("error: ") && (err.contains(missing) || err.contains("not_found")),
        "{err}"
    );
    let err = fails(&d, "sk-airlock-wrong", &["sessions", "list"]);
    assert!(err.contains("authentication_error"), "{err}");
    assert!(
        !err.contains("sk-airlock-wrong"),
        "the key must not be printed: {err}"
    );
    let port = free_port();
    let out = Command::new(binary("control-plane").unwrap())
        .args([
            "sessions",
            "list",
            "--api-url",
            &format!("http://127.0.0.1:{port}"),
            "--api-key",
            "k",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "cannot reach the control plane API at http://127.0.0.1:{port}"
        )),
        "{err}"
    );
    let err = fails(&d, "", &["environments", "list"]);
    assert!(err.contains("no API key"), "{err}");
}
