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
    let mut d = Deployment::start(runtime_toml(&model.base_url(), 5.0))
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

    // tokens create warns about an environment no agent could serve
    let out = cli(
        &d,
        &d.api_key,
        &["tokens", "create", "--environment", "env_nope", "--json"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: environment env_nope does not exist"),
        "{stderr}"
    );
    let out = cli(
        &d,
        &d.api_key,
        &["tokens", "create", "--environment", &env_id, "--json"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("warning: environment {env_id} is archived")),
        "{stderr}"
    );
    let out = cli(
        &d,
        &d.api_key,
        &[
            "tokens",
            "create",
            "--environment",
            &d.environment_id,
            "--json",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("warning:"),
        "{stderr}"
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
    let (api, sid) = (&d.api, session_id.as_str());
    let interrupted = testkit::try_eventually_async(
        "a user.interrupt in the log",
        Duration::from_secs(30),
        || async move {
            let events = api.events(sid).await.unwrap();
            events.iter().any(|e| e["type"] == "user.interrupt")
        },
    )
    .await;
    if let Err(e) = interrupted {
        let events = d.api.events(&session_id).await.unwrap();
        panic!(
            "no user.interrupt in the log ({e}): {events:?}\n{}",
            tail(&d.cp.log(), 40)
        );
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

    // tail survives a dropped stream: the server is killed (SIGKILL) and
    // restarted; tail resumes with Last-Event-ID, nothing lost or repeated
    let mut t = Tail::start(
        &d,
        &["sessions", "tail", &session_id, "--after", "0", "--json"],
    );
    t.until(Duration::from_secs(60), "user.interrupt", |l| {
        l.contains("\"user.interrupt\"")
    });
    d.cp.kill9().unwrap();
    d.cp.start().unwrap();
    d.api
        .user_message(&session_id, "after the restart")
        .await
        .unwrap();
    t.until(
        Duration::from_secs(60),
        "the message sent after the restart",
        |l| l.contains("after the restart"),
    );
    let logged: std::collections::BTreeSet<u64> = d
        .api
        .events(&session_id)
        .await
        .unwrap()
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    let final_seq = *logged.last().unwrap();
    t.until(Duration::from_secs(60), "the last event", |l| {
        parse(l)["seq"].as_u64() >= Some(final_seq)
    });
    // every seq once (a user event may show a second time, processed)
    let mut seen: Vec<(u64, String)> = Vec::new();
    for line in &t.seen {
        let v = parse(line);
        let seq = v["seq"].as_u64().unwrap();
        let kind = v["type"].as_str().unwrap().to_owned();
        let again = seen.iter().filter(|(s, _)| *s == seq).count();
        assert!(
            again == 0 || (again == 1 && kind.starts_with("user.")),
            "seq {seq} ({kind}) repeated:\n{}",
            t.seen.join("\n")
        );
        seen.push((seq, kind));
    }
    let seqs: std::collections::BTreeSet<u64> = seen.iter().map(|(s, _)| *s).collect();
    assert!(
        logged.is_subset(&seqs),
        "events missing after the resume: {:?}",
        logged.difference(&seqs).collect::<Vec<_>>()
    );
    drop(t);

    // sessions list follows pages up to --limit / --all, and filters
    let mut mine = vec![session_id.clone()];
    for _ in 0..4 {
        mine.push(
            d.api
                .create_session(&agent_id, &d.environment_id)
                .await
                .unwrap(),
        );
    }
    let other_agent = d.api.create_agent("ops-agent-2").await.unwrap();
    let other = d
        .api
        .create_session(&other_agent, &d.environment_id)
        .await
        .unwrap();
    let page = ok_json(
        &d,
        &[
            "sessions",
            "list",
            "--limit",
            "3",
            "--page-size",
            "2",
            "--json",
        ],
    );
    let got = ids(&page);
    assert_eq!(got.len(), 3, "{page}");
    assert_eq!(got[0], other, "newest first: {page}");
    assert_eq!(got[1..], [mine[4].clone(), mine[3].clone()], "{page}");
    let every = ids(&ok_json(
        &d,
        &["sessions", "list", "--all", "--page-size", "2", "--json"],
    ));
    assert_eq!(every.len(), 6, "{every:?}");
    let distinct: std::collections::BTreeSet<&String> = every.iter().collect();
    assert_eq!(distinct.len(), 6, "a page repeated: {every:?}");
    for s in mine.iter().chain([&other]) {
        assert!(every.contains(s), "{s} not in {every:?}");
    }
    let by_agent = ids(&ok_json(
        &d,
        &["sessions", "list", "--agent", &other_agent, "--json"],
    ));
    assert_eq!(by_agent, std::slice::from_ref(&other));
    let out = cli(
        &d,
        &d.api_key,
        &["sessions", "list", "--limit", "2", "--page-size", "1"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    assert!(
        stderr.contains("showing the first 2 sessions; more match"),
        "{stderr}"
    );
    let future = ids(&ok_json(
        &d,
        &[
            "sessions",
            "list",
            "--created-after",
            "2999-01-01T00:00:00Z",
            "--json",
        ],
    ));
    assert!(future.is_empty(), "{future:?}");
    let err = fails(&d, &d.api_key, &["sessions", "list", "--status", "paused"]);
    assert!(
        err.contains("invalid_request_error") && err.contains("statuses"),
        "{err}"
    );
    let err = fails(&d, &d.api_key, &["sessions", "list", "--limit", "0"]);
    assert!(err.contains("--limit"), "{err}");

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
