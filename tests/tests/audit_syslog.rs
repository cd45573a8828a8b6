//! The audit shipper against a real rsyslogd from Debian's packages
//! (`scripts/setup.d/60-rsyslog.sh`): an unprivileged instance per test with
//! its own config, pid file and work dir, a TLS listener (imtcp + gtls, a
//! server certificate from a test CA) on a free loopback port, writing each
//! message's MSGID, STRUCTURED-DATA and MSG to a file.
//!
//! - `sandbox-agent run` ships through its child shipper; the agent is
//!   killed with SIGKILL mid-stream (once restarted at once, so the old
//!   child still finishes while the new one waits for the lock; once after
//!   the old child is gone); after the last restart every record arrived
//!   exactly once and in order.
//! - `sandbox-agent audit ship` on its own (the separate unit's mode):
//!   waits for a receiver that is down, resumes from its cursor, ships only
//!   new records on the next run, refuses a cursor that no longer matches.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock_tests::deploy::{binary, free_port, Agent, AgentOptions, ControlPlane, CpOptions};
use airlock_tests::git_server::TestCa;
use sandbox_agent::audit::{AuditEvent, AuditLog, AuditSettings};
use serde_json::{json, Value};

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

/// An rsyslogd receiving RFC 5425 (TLS, octet counting) on a loopback port.
struct Rsyslog {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Rsyslog {
    fn configure(ca: &TestCa) -> Self {
        assert!(
            Path::new(RSYSLOGD).exists(),
            "{RSYSLOGD} missing: run scripts/setup.d/60-rsyslog.sh"
        );
        let dir = tempfile::Builder::new()
            .prefix("airlock-rsyslog-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let (cert, key) = ca.issue(&["localhost"]).unwrap();
        ca.write_cert(&d.join("ca.pem")).unwrap();
        std::fs::write(d.join("server.pem"), cert).unwrap();
        std::fs::write(d.join("server.key"), key).unwrap();
        std::fs::create_dir(d.join("work")).unwrap();
        let port = free_port();
        let conf = format!(
            r#"global(workDirectory="{d}/work" maxMessageSize="1m"
  DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="{d}/ca.pem"
  DefaultNetstreamDriverCertFile="{d}/server.pem" DefaultNetstreamDriverKeyFile="{d}/server.key")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="airlock" type="string" string="%pri% %app-name% %msgid% %structured-data% %msg%\n")
action(type="omfile" file="{d}/received.log" template="airlock")
"#,
            d = d.display()
        );
        std::fs::write(d.join("rsyslog.conf"), conf).unwrap();
        Self {
            dir,
            port,
            child: None,
        }
    }

    fn start(&mut self) {
        let d = self.dir.path();
        let log = std::fs::File::create(d.join("rsyslogd.out")).unwrap();
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(d.join("rsyslog.conf"))
            .arg("-i")
            .arg(d.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not listen: {}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rsyslogd.out")).unwrap_or_default()
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `[audit.syslog]` pointing at this receiver.
    fn toml(&self) -> String {
        format!(
            "[audit.syslog]\naddress = \"127.0.0.1:{}\"\nca_file = \"{}\"\nserver_name = \"localhost\"\napp_name = \"airlock-test\"\n",
            self.port,
            self.ca_file().display()
        )
    }

    /// (seq, hash) of every message received so far, checked line by line:
    /// the SD's seq and hash are the MSG's, MSGID is the call, PRI is authpriv.
    fn received(&self) -> Vec<(u64, String)> {
        let text =
            std::fs::read_to_string(self.dir.path().join("received.log")).unwrap_or_default();
        let mut out = Vec::new();
        for line in text.lines() {
            let mut parts = line.splitn(4, ' ');
            let pri: u16 = parts.next().unwrap().parse().unwrap();
            assert_eq!(pri / 8, 10, "authpriv: {line}");
            assert_eq!(parts.next(), Some("airlock-test"), "{line}");
            let msgid = parts.next().unwrap();
            let rest = parts.next().unwrap();
            let (sd, msg) = rest.split_once("] ").unwrap_or_else(|| panic!("{line}"));
            let rec: Value = serde_json::from_str(msg).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(rec["call"], msgid, "{line}");
            let seq = rec["seq"].as_u64().unwrap();
            let hash = rec["hash"].as_str().unwrap().to_owned();
            assert!(
                sd.starts_with(&format!("[airlock@32473 seq=\"{seq}\" hash=\"{hash}\"")),
                "{line}"
            );
            out.push((seq, hash));
        }
        out
    }

    fn wait_received(&self, n: usize, limit: Duration) -> Vec<(u64, String)> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.received();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every (seq, hash) of the log in `dir`, in file order.
fn log_records(dir: &Path) -> Vec<(u64, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
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
    files.sort();
    files.push(dir.join("audit.jsonl"));
    let mut out = Vec::new();
    for f in files.iter().filter(|f| f.exists()) {
        for l in std::fs::read_to_string(f).unwrap().lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            out.push((
                v["seq"].as_u64().unwrap(),
                v["hash"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

fn fill(dir: &Path, agent_id: &str, n: usize, rotate_bytes: u64) {
    let mut s = AuditSettings::defaults(dir);
    s.rotate_bytes = rotate_bytes;
    let log = AuditLog::open_with(&s, agent_id).unwrap();
    for i in 0..n {
        log.try_record(AuditEvent {
            call: "execute".into(),
            phase: Some("start".into()),
            sandbox_id: Some("sbx_1".into()),
            session_id: Some(format!("sesn_{}", i % 7)),
            tool_use_id: Some(format!("toolu_{i}")),
            tool: Some("bash".into()),
            // quotes, backslashes and brackets travel in MSG and in SD values alike
            input: Some(json!({"command": format!("echo \"{i}\" \\ [x] ]")})),
            outcome: "started".into(),
            ..Default::default()
        })
        .unwrap();
    }
    log.checkpoint_now().unwrap();
}

/// Whether the shipper lock of `dir` is free (no shipper running).
fn shipper_gone(dir: &Path) -> bool {
    sandbox_agent::audit_cmd::cursor::ShipLock::try_acquire(dir)
        .unwrap()
        .is_some()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_exactly_once_in_order(got: &[(u64, String)], want: &[(u64, String)]) {
    let seqs: Vec<u64> = got.iter().map(|r| r.0).collect();
    let mut dups = seqs.clone();
    dups.dedup();
    assert_eq!(
        dups.len(),
        seqs.len(),
        "a seq arrived twice (first few: {:?})",
        &seqs[..seqs.len().min(20)]
    );
    assert_eq!(
        got.len(),
        want.len(),
        "received {} of {} records",
        got.len(),
        want.len()
    );
    assert_eq!(got, want, "every record once, in order, with its hash");
}

#[test]
fn agent_killed_mid_stream_every_record_arrives_exactly_once() {
    let ca = TestCa::new("airlock audit syslog test CA").unwrap();
    let mut rsyslog = Rsyslog::configure(&ca);
    rsyslog.start();
    let cp = ControlPlane::spawn(CpOptions::default()).unwrap();
    let join = cp.join_string("env-audit").unwrap();
    let opts = AgentOptions {
        // Small batches: thousands of cursor writes, so the kills land mid-stream.
        env: vec![("AIRLOCK_AUDIT_SHIP_BATCH_RECORDS".into(), "3".into())],
        ..AgentOptions::default()
    };
    let mut agent = Agent::enroll(&cp, &join, opts).unwrap();
    let data = agent.config_path().parent().unwrap().join("data");
    const RECORDS: usize = 4000;
    fill(&data, agent.agent_id(), RECORDS, 65_536);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(agent.config_path())
        .unwrap();
    write!(f, "\n[audit]\nrotate_bytes = 65536\n{}", rsyslog.toml()).unwrap();
    drop(f);

    // 1: kill -9 mid-stream and restart at once: the old child finishes its
    // batch while the new agent's child waits for the lock.
    agent.run().unwrap();
    let first = rsyslog.wait_received(300, Duration::from_secs(30)).len();
    agent.kill9().unwrap();
    assert!(
        first < RECORDS,
        "the stream should still be running at the kill ({first})"
    );
    agent.run().unwrap();
    // 2: kill -9 again; this time the child finishes and exits before the restart.
    let mark = first + 600;
    let second = rsyslog.wait_received(mark, Duration::from_secs(30)).len();
    agent.kill9().unwrap();
    assert!(
        second < RECORDS,
        "the stream should still be running at the second kill ({second})"
    );
    wait_until(
        "the orphaned shipper child to exit",
        Duration::from_secs(15),
        || shipper_gone(&data),
    );
    // rsyslog writes what it received a moment later: first wait for the
    // last record the exited shipper's cursor says the socket accepted.
    let shipped = cursor_seq(&data);
    wait_until(
        "rsyslog to write what the exited shipper sent",
        Duration::from_secs(15),
        || rsyslog.received().iter().any(|r| r.0 >= shipped),
    );
    let after_exit = rsyslog.received().len();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        rsyslog.received().len(),
        after_exit,
        "nothing is shipped while no agent runs"
    );
    agent.run().unwrap();
    // Everything in the log now (the agent adds its own lines) arrives.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let want = log_records(&data);
        let got = rsyslog.received();
        if got.len() >= want.len() && want.len() > RECORDS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} arrived; agent log:\n{}",
            got.len(),
            want.len(),
            airlock_tests::deploy::tail(&agent.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.terminate().unwrap();
    wait_until(
        "the shipper child to exit after SIGTERM of the agent",
        Duration::from_secs(40),
        || shipper_gone(&data),
    );
    let want = log_records(&data);
    let got = rsyslog.wait_received(want.len(), Duration::from_secs(15));
    assert_exactly_once_in_order(&got, &want);
    assert_eq!(Some(cursor_seq(&data)), want.last().map(|r| r.0));
    rsyslog.stop();
}

/// The last record the shipper's cursor says the receiver accepted.
fn cursor_seq(data: &Path) -> u64 {
    let cursor: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("audit-ship.cursor")).unwrap())
            .unwrap();
    cursor["seq"].as_u64().unwrap()
}

fn ship(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(binary("sandbox-agent").unwrap());
    c.arg("--config")
        .arg(config)
        .args(["audit", "ship"])
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("AIRLOCK_AUDIT_SHIP_BATCH_RECORDS");
    c
}

#[test]
fn standalone_shipper_waits_for_the_receiver_and_resumes_from_its_cursor() {
    let ca = TestCa::new("airlock audit syslog test CA").unwrap();
    let mut rsyslog = Rsyslog::configure(&ca);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fill(&data, "agt_standalone", 500, 16_384);
    let config = tmp.path().join("sandbox-agent.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n\n[audit]\n{}",
            data.display(),
            rsyslog.toml()
        ),
    )
    .unwrap();

    // The receiver is down: --once fails, nothing moves.
    let out = ship(&config, &["--once"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("syslog receiver 127.0.0.1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!data.join("audit-ship.cursor").exists());

    // A long-running shipper started while the receiver is down connects once it is up.
    let mut shipper = ship(&config, &[])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    rsyslog.start();
    let want = log_records(&data);
    let got = rsyslog.wait_received(want.len(), Duration::from_secs(30));
    assert_exactly_once_in_order(&got, &want);
    // A second shipper on the same dir waits for the lock; SIGTERM stops the first cleanly.
    let out = ship(&config, &["--once"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill").arg(shipper.id().to_string()).status();
    assert!(shipper.wait().unwrap().success());
    let out = out.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("shipped 0 record(s)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // New records: the next run ships exactly those.
    let before = log_records(&data).len();
    fill(&data, "agt_standalone", 40, 16_384);
    let new = log_records(&data).len() - before; // 40 and the checkpoint lines
    let out = ship(&config, &["--once"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = log_records(&data);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("shipped {new} record(s)")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let got = rsyslog.wait_received(want.len(), Duration::from_secs(10));
    assert_exactly_once_in_order(&got, &want);

    // A cursor that does not match the log (replaced under the shipper) is refused.
    let cursor_path = data.join("audit-ship.cursor");
    let mut cursor: Value =
        serde_json::from_str(&std::fs::read_to_string(&cursor_path).unwrap()).unwrap();
    cursor["hash"] = json!("00".repeat(32));
    std::fs::write(&cursor_path, cursor.to_string()).unwrap();
    let out = ship(&config, &["--once"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match the audit log"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(rsyslog.received().len(), want.len());
    rsyslog.stop();
}
