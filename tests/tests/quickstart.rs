//! The README's first set-up command, checked: `bash scripts/quickstart`
//! brings up a working deployment (the real `control-plane serve`, an
//! enrolled `sandbox-agent run` on the local Docker Engine and the real
//! `vault-bridge serve` with the file backend as its `[bridge]`), and the SDK
//! example it prints runs verbatim with the pinned `anthropic` SDK against
//! it. The model is the scripted fake (the only fake), reached through
//! `ANTHROPIC_BASE_URL` exactly as a newcomer's real key would be.
//!
//! To stay fast the script runs with its knobs set: the debug binaries
//! (`AIRLOCK_BIN_DIR`), the static executor and the small test image of
//! scripts/setup.d/30-images.sh (`AIRLOCK_EXECUTOR_PATH`,
//! `AIRLOCK_SANDBOX_IMAGE`), a temp `AIRLOCK_HOME` and free ports.
//!
//! Steps: `up`; `up` again while running (same key, environment and
//! processes); `api.env` (0600, URL/key/environment); the printed example
//! equals `example.py` and runs: its output and the session's log (idle with
//! `end_turn`, every `agent.tool_use` answered by its `agent.tool_result`,
//! the file read back; the agent is connected to the bridge and the
//! session's sandbox got its egress socket); `status`; `down` (the three
//! processes gone); `up` after
//! `down` (same key and environment, the key still works); `down`. A guard
//! runs `down` whatever happens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use airlock_tests::deploy::{bin_dir, free_port};
use airlock_tests::fake_model::{FakeModel, Reply, RequestCtx, Turn};
use airlock_tests::sandbox::{executor_path, remove_agent_containers, test_image};
use e2e_support::Api;
use serde_json::{json, Value};

/// The prompt of the printed example (scripts/quickstart).
const PROMPT: &str = "Write hello.txt saying hi, then read it back.";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The model's side of the example: write hello.txt, read it back, then
/// end the turn quoting what was read. Any other prompt gets a plain text
/// (no tool call), which the checks below reject.
fn script(req: &RequestCtx) -> Reply {
    let first = req.first_user_text();
    if first != PROMPT {
        return Reply::text(format!("unexpected prompt {first:?}"));
    }
    match req.tool_uses_so_far() {
        0 => Turn::new()
            .text("Writing hello.txt.")
            .tool_use(
                "toolu_qs_write",
                "write",
                json!({"file_path": "hello.txt", "content": "hi"}),
            )
            .into(),
        1 => Turn::new()
            .text("Reading it back.")
            .tool_use("toolu_qs_read", "read", json!({"file_path": "hello.txt"}))
            .into(),
        _ => {
            let result = req
                .last_tool_results()
                .first()
                .map(|r| r["content"].to_string())
                .unwrap_or_default();
            Reply::text(format!("hello.txt says: {result}"))
        }
    }
}

/// `bash scripts/quickstart …` with the test's environment; runs `down` on drop.
struct Quickstart {
    home: tempfile::TempDir,
    env: Vec<(String, String)>,
    agent_id: Option<String>,
}

impl Quickstart {
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(root().join("scripts/quickstart"))
            .args(args)
            .current_dir(root())
            .stdin(Stdio::null())
            .env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// Run and expect exit 0; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let started = Instant::now();
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "quickstart {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}\ncontrol-plane log:\n{}\nagent log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log("control-plane.log"),
            self.log("agent.log"),
        );
        eprintln!("quickstart {args:?}: {:.1?}", started.elapsed());
        stdout
    }

    fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    fn log(&self, name: &str) -> String {
        let s = std::fs::read_to_string(self.path(name)).unwrap_or_default();
        airlock_tests::deploy::tail(&s, 40)
    }

    fn pid(&self, name: &str) -> u32 {
        let p = self.path(&format!("{name}.pid"));
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .parse()
            .unwrap()
    }

    /// `api.env` as a map; checks it is private to the user.
    fn api_env(&self) -> HashMap<String, String> {
        let p = self.path("api.env");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", p.display());
        std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        let out = self.run(&["down"]);
        if !out.status.success() {
            eprintln!(
                "quickstart down (cleanup) failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Some(id) = &self.agent_id {
            remove_agent_containers(id);
        }
    }
}

/// Whether a process runs (a zombie counts as gone).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The example as printed: the indented block after "Try it with the official SDK".
fn printed_example(stdout: &str) -> String {
    let mut lines = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Try it with the official SDK"))
        .skip(1)
        .skip_while(|l| l.trim().is_empty());
    let mut out = String::new();
    for l in lines.by_ref() {
        if l.is_empty() {
            out.push('\n');
            continue;
        }
        match l.strip_prefix("  ") {
            Some(code) => {
                out.push_str(code);
                out.push('\n');
            }
            None => break,
        }
    }
    out.trim_end().to_owned() + "\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_brings_up_a_deployment_that_the_printed_sdk_example_works_against() {
    let started = Instant::now();
    let executor = executor_path();
    let image = test_image();
    for b in ["control-plane", "sandbox-agent", "vault-bridge"] {
        assert!(
            bin_dir().join(b).is_file(),
            "{} missing: cargo build -p control-plane -p sandbox-agent -p vault-bridge",
            bin_dir().join(b).display()
        );
    }
    let model = FakeModel::builder().start(script).await.unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let home = tempfile::Builder::new()
        .prefix("airlock-quickstart-")
        .tempdir()
        .unwrap();
    let env: Vec<(String, String)> = [
        ("AIRLOCK_HOME", home.path().display().to_string()),
        ("AIRLOCK_API_PORT", ports[0].to_string()),
        ("AIRLOCK_TUNNEL_PORT", ports[1].to_string()),
        ("AIRLOCK_ENROLL_PORT", ports[2].to_string()),
        ("AIRLOCK_BIN_DIR", bin_dir().display().to_string()),
        ("AIRLOCK_EXECUTOR_PATH", executor.display().to_string()),
        ("AIRLOCK_SANDBOX_IMAGE", image.clone()),
        ("ANTHROPIC_BASE_URL", model.base_url()),
        ("ANTHROPIC_API_KEY", "x".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut qs = Quickstart {
        home,
        env,
        agent_id: None,
    };

    // up
    let stdout = qs.ok(&[]);
    let creds = qs.api_env();
    let url = creds.get("AIRLOCK_API_URL").cloned().unwrap_or_default();
    let key = creds.get("AIRLOCK_API_KEY").cloned().unwrap_or_default();
    let env_id = creds
        .get("AIRLOCK_ENVIRONMENT_ID")
        .cloned()
        .unwrap_or_default();
    assert_eq!(url, format!("http://127.0.0.1:{}", ports[0]), "{creds:?}");
    assert!(key.len() >= 20, "API key in api.env: {creds:?}");
    assert!(
        env_id.starts_with("env_"),
        "environment in api.env: {creds:?}"
    );
    for (what, v) in [("URL", &url), ("key", &key), ("environment", &env_id)] {
        assert!(
            stdout.contains(v.as_str()),
            "the {what} is not printed:\n{stdout}"
        );
    }
    let example = std::fs::read_to_string(qs.path("example.py")).unwrap();
    assert_eq!(
        printed_example(&stdout),
        example,
        "the printed example differs from example.py"
    );
    for v in [&url, &key, &env_id] {
        assert!(example.contains(&format!("\"{v}\"")), "{example}");
    }
    assert!(example.contains(PROMPT), "{example}");
    let cp_pid = qs.pid("control-plane");
    let agent_pid = qs.pid("agent");
    let vb_pid = qs.pid("vault-bridge");
    assert!(running(vb_pid), "the vault-bridge does not run after up");
    // The agent's config points at the bridge; the bridge's file backend
    // has its key (0600) and its socket answers.
    let agent_toml = std::fs::read_to_string(qs.path("agent/agent.toml")).unwrap();
    assert_eq!(
        agent_toml.matches("\n[bridge]\n").count(),
        1,
        "{agent_toml}"
    );
    assert!(
        agent_toml.contains(&format!(
            "socket_path = \"{}\"",
            qs.path("vault-bridge/run/agent.sock").display()
        )),
        "{agent_toml}"
    );
    let key_mode = std::fs::metadata(qs.path("vault-bridge/data/credentials.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600, "the bridge's key file mode");
    std::os::unix::net::UnixStream::connect(qs.path("vault-bridge/run/agent.sock"))
        .expect("the vault-bridge agent socket answers");
    assert!(stdout.contains("Vault-bridge:"), "{stdout}");

    // up again while running: nothing new
    qs.ok(&[]);
    assert_eq!(qs.api_env(), creds, "a second up changed api.env");
    assert_eq!(
        (
            qs.pid("control-plane"),
            qs.pid("agent"),
            qs.pid("vault-bridge")
        ),
        (cp_pid, agent_pid, vb_pid),
        "a second up restarted the processes"
    );
    let agent_toml_again = std::fs::read_to_string(qs.path("agent/agent.toml")).unwrap();
    assert_eq!(
        agent_toml_again, agent_toml,
        "a second up rewrote agent.toml"
    );

    // the printed example, verbatim, with the pinned SDK
    let py_started = Instant::now();
    let mut child = Command::new("python3")
        .arg(qs.path("example.py"))
        .current_dir(qs.home.path())
        .env_remove("ANTHROPIC_BASE_URL")
        .env_remove("ANTHROPIC_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let exited =
        testkit::try_eventually_blocking("the SDK script to exit", Duration::from_secs(90), || {
            child.try_wait().unwrap()
        });
    if exited.is_err() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let py_out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "example.py failed ({}) after {:.1?}:\nstdout:\n{py_out}\nstderr:\n{}\ncontrol-plane log:\n{}\nagent log:\n{}",
        out.status,
        py_started.elapsed(),
        String::from_utf8_lossy(&out.stderr),
        qs.log("control-plane.log"),
        qs.log("agent.log"),
    );
    eprintln!("example.py: {:.1?}", py_started.elapsed());
    let printed: Vec<&str> = py_out.lines().collect();
    for t in ["agent.tool_use", "agent.tool_result", "agent.message"] {
        assert!(printed.contains(&t), "example printed no {t}:\n{py_out}");
    }
    assert_eq!(
        printed.last(),
        Some(&"session.status_idle"),
        "example output:\n{py_out}"
    );

    // the session, as the API recorded it
    let api = Api::new(url.trim_start_matches("http://").parse().unwrap(), &key);
    let sessions = api.get("/v1/sessions?limit=10").await.unwrap();
    let sessions = sessions["data"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let session = &sessions[0];
    assert_eq!(session["environment_id"], env_id.as_str(), "{session}");
    assert_eq!(session["status"], "idle", "{session}");
    let sid = session["id"].as_str().unwrap();
    let events = api.events(sid).await.unwrap();
    let of = |t: &str| -> Vec<&Value> { events.iter().filter(|e| e["type"] == t).collect() };
    let uses: BTreeSet<&str> = of("agent.tool_use")
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    let results: BTreeSet<&str> = of("agent.tool_result")
        .iter()
        .filter_map(|e| e["tool_use_id"].as_str())
        .collect();
    assert_eq!(uses.len(), 2, "tool uses: {events:#?}");
    assert_eq!(uses, results, "every tool_use needs its tool_result");
    let names: Vec<&str> = of("agent.tool_use")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, ["write", "read"], "{events:#?}");
    let read = of("agent.tool_result")
        .last()
        .map(|e| e.to_string())
        .unwrap();
    assert!(
        read.contains("hi") && !read.contains("\"is_error\":true"),
        "read back: {read}"
    );
    let idle = of("session.status_idle");
    assert_eq!(
        idle.last().unwrap()["stop_reason"]["type"],
        "end_turn",
        "{events:#?}"
    );
    assert!(
        model.request_count() >= 3,
        "the model got {} requests",
        model.request_count()
    );

    // The agent talks to the bridge, and the session's sandbox went out
    // through it (its egress socket was opened at provision).
    let vb_log = std::fs::read_to_string(qs.path("vault-bridge.log")).unwrap_or_default();
    assert!(
        vb_log.contains("agent connected"),
        "vault-bridge log:\n{vb_log}"
    );
    assert!(
        vb_log.contains("egress socket open"),
        "no sandbox egress opened; vault-bridge log:\n{vb_log}"
    );

    // status
    let status = qs.ok(&["status"]);
    assert!(
        status.contains(&format!("control-plane: running (pid {cp_pid}"))
            && status.contains(&format!("agent: running (pid {agent_pid}"))
            && status.contains(&format!("vault-bridge: running (pid {vb_pid}")),
        "{status}"
    );
    let agent_id = status
        .split_whitespace()
        .find(|w| w.starts_with("agt_"))
        .unwrap_or_else(|| panic!("no connected agent in status:\n{status}"))
        .to_owned();
    qs.agent_id = Some(agent_id);

    // down: the three processes gone
    qs.ok(&["down"]);
    for (name, pid) in [
        ("control-plane", cp_pid),
        ("agent", agent_pid),
        ("vault-bridge", vb_pid),
    ] {
        assert!(!running(pid), "{name} (pid {pid}) still runs after down");
        assert!(!qs.path(&format!("{name}.pid")).exists());
    }
    let status = qs.ok(&["status"]);
    assert!(
        status.contains("control-plane: stopped")
            && status.contains("agent: stopped")
            && status.contains("vault-bridge: stopped"),
        "{status}"
    );

    // up after down: same key and environment; the key works against the new process
    qs.ok(&[]);
    assert_eq!(qs.api_env(), creds, "up after down changed api.env");
    assert_ne!(qs.pid("control-plane"), cp_pid);
    let env = api
        .get(&format!("/v1/environments/{env_id}"))
        .await
        .unwrap();
    assert_eq!(env["id"], env_id.as_str());
    let out = Command::new(bin_dir().join("control-plane"))
        .args(["agents", "list", "--json", "--config"])
        .arg(qs.path("control-plane/control-plane.toml"))
        .output()
        .unwrap();
    let agents: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        agents.to_string().contains(qs.agent_id.as_deref().unwrap()),
        "the same agent reconnects after up: {agents}"
    );
    let (cp_pid, agent_pid, vb_pid) = (
        qs.pid("control-plane"),
        qs.pid("agent"),
        qs.pid("vault-bridge"),
    );
    qs.ok(&["down"]);
    assert!(!running(cp_pid) && !running(agent_pid) && !running(vb_pid));
    eprintln!("quickstart check: {:.1?}", started.elapsed());
}
