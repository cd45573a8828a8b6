//! Logs as an operator's pipeline sees them: a real `control-plane serve`
//! and an enrolled `sandbox-agent run`, each with stderr to a pipe (as under
//! systemd, Docker or a log shipper; no `NO_COLOR` set).
//!
//! - text (the default): not one ANSI escape byte;
//! - `--log-format json`: every line is one JSON object with `timestamp`,
//!   `level`, `target` and `message`, and the connect lines carry the stable
//!   fields documented in docs/logging.md (`agent_id`, `transport`,
//!   `remote_addr`, `version`, ...).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_tests::deploy::{binary, Agent, AgentOptions, ControlPlane, CpOptions};
use serde_json::Value;

/// A process whose stderr is a pipe read line by line.
struct Piped {
    child: Child,
    lines: Arc<Mutex<Vec<Vec<u8>>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Piped {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .env_remove("NO_COLOR")
            .env_remove("AIRLOCK_LOG_FORMAT")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            loop {
                let mut line = Vec::new();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => sink.lock().unwrap().push(line),
                }
            }
        });
        Self {
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn text(&self) -> String {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()
    }

    fn wait_for(&self, needle: &str) {
        testkit::try_eventually_blocking(needle, Duration::from_secs(30), || {
            self.text().contains(needle)
        })
        .unwrap_or_else(|e| panic!("{e}; stderr so far:\n{}", self.text()));
    }

    /// SIGTERM, wait for the exit and the last lines.
    fn stop(mut self) -> Vec<Vec<u8>> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let exited = testkit::try_eventually_blocking("exit", Duration::from_secs(20), || {
            self.child.try_wait().ok().flatten()
        });
        if exited.is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

/// A control plane and an enrolled agent, both logging to pipes in `format`;
/// returns their stderr lines once the agent connected and both stopped.
fn run_both(format: &str) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let cp = ControlPlane::configure(CpOptions::default()).unwrap();
    let start_cp = || {
        let mut c = Command::new(binary("control-plane").unwrap());
        c.args(["--log-format", format, "--config"])
            .arg(cp.config_path())
            .arg("serve");
        Piped::spawn(c)
    };
    let server = start_cp();
    server.wait_for("control plane started");
    let join = cp.join_string("env-logs").unwrap();
    let agent = Agent::enroll(&cp, &join, AgentOptions::default()).unwrap();
    let mut a = Command::new(binary("sandbox-agent").unwrap());
    a.args(["--log-format", format, "--config"])
        .arg(agent.config_path())
        .arg("run");
    let agent_proc = Piped::spawn(a);
    agent_proc.wait_for("connected to control plane");
    server.wait_for("agent connected");
    let agent_lines = agent_proc.stop();
    let server_lines = server.stop();
    (server_lines, agent_lines)
}

#[test]
fn text_logs_to_a_pipe_have_no_ansi_escapes() {
    let (server, agent) = run_both("text");
    for (who, lines) in [("control plane", &server), ("agent", &agent)] {
        assert!(lines.len() > 3, "{who}: too few lines: {lines:?}");
        for line in lines {
            assert!(
                !line.contains(&0x1b),
                "{who}: ANSI escape in {:?}",
                String::from_utf8_lossy(line)
            );
        }
    }
}

fn parse(who: &str, lines: &[Vec<u8>]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_slice(l).unwrap_or_else(|e| {
                panic!("{who}: not JSON ({e}): {:?}", String::from_utf8_lossy(l))
            });
            for field in ["timestamp", "level", "target"] {
                assert!(v[field].is_string(), "{who}: no {field} in {v}");
            }
            assert!(!l.contains(&0x1b), "{who}: ANSI escape in {v}");
            v
        })
        .collect()
}

fn find<'a>(who: &str, lines: &'a [Value], message: &str) -> &'a Value {
    lines
        .iter()
        .find(|v| v["message"] == message)
        .unwrap_or_else(|| panic!("{who}: no {message:?} line in {lines:#?}"))
}

#[test]
fn json_logs_are_one_object_per_line_with_the_documented_fields() {
    let (server, agent) = run_both("json");
    let server = parse("control plane", &server);
    let agent = parse("agent", &agent);

    let started = find("control plane", &server, "control plane started");
    for field in ["enroll_addr", "tunnel_addr", "api_addr", "ca_fingerprint"] {
        assert!(started[field].is_string(), "{field} in {started}");
    }
    let connected = find("control plane", &server, "agent connected");
    assert!(
        connected["agent_id"]
            .as_str()
            .is_some_and(|a| a.starts_with("agt_")),
        "{connected}"
    );
    assert_eq!(connected["version"], protocol::hello::PROTOCOL_VERSION_MAX);
    assert!(connected["software_version"].is_string(), "{connected}");
    // The connection's span carries who and how.
    let span = &connected["span"];
    for field in ["agent_id", "environment_id", "transport", "remote_addr"] {
        assert!(span[field].is_string(), "span.{field} in {connected}");
    }
    assert_eq!(connected["level"], "INFO");

    let up = find("agent", &agent, "connected to control plane");
    for field in ["agent_id", "transport", "remote_addr"] {
        assert!(up[field].is_string(), "{field} in {up}");
    }
    assert_eq!(up["version"], protocol::hello::PROTOCOL_VERSION_MAX);
    // Protocol v2: the hello answer carries the control plane's clock.
    assert!(up["clock_skew_ms"].is_i64(), "{up}");
    assert!(
        up["clock_skew_ms"].as_i64().unwrap().abs() < 5_000,
        "same host, skew {up}"
    );
}
