//! A revoked agent stops instead of redialing forever: real `control-plane
//! serve` and `sandbox-agent run` processes on loopback. Revoking a connected
//! agent (QUIC: close code `revoked`; TCP: the redial is refused) makes
//! `sandbox-agent run` exit with code 77 and one error line naming the agent
//! and what to do; restarted, it is refused at the TLS handshake
//! (`certificate_revoked`) and exits again at once. Failures that are not a
//! revocation (control plane down, a TLS peer that is not ours) keep it
//! redialing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use airlock_tests::deploy::{binary, tail, Agent, AgentOptions, ControlPlane, CpOptions};

const LIMIT: Duration = Duration::from_secs(20);
/// How long a revoked agent may take to exit.
const EXIT_LIMIT: Duration = Duration::from_secs(6);
/// `sandbox-agent run`'s exit code for a revoked agent (sysexits EX_NOPERM).
const EXIT_REVOKED: i32 = 77;

/// One `sandbox-agent run` process with its own log file.
struct Run {
    child: Child,
    log: PathBuf,
}

impl Run {
    fn start(agent: &Agent, tag: &str) -> Self {
        let log = agent
            .config_path()
            .parent()
            .unwrap()
            .join(format!("run-{tag}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary("sandbox-agent").unwrap())
            .arg("--config")
            .arg(agent.config_path())
            .arg("run")
            .env("RUST_LOG", "info,tunnel=debug")
            .env("NO_COLOR", "1")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait up to `limit` for the process to exit.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        testkit::try_eventually_blocking("the agent to exit", limit, || {
            self.child.try_wait().unwrap()
        })
        .ok()
    }

    /// How many times the log says the agent is about to redial.
    fn redials(&self) -> usize {
        self.log().matches("redialing after backoff").count()
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The run exited with the revoked code and said so once, naming the agent and the remedy.
fn assert_revoked_exit(run: &mut Run, agent_id: &str, what: &str) -> Duration {
    let started = Instant::now();
    let status = run.wait_exit(EXIT_LIMIT).unwrap_or_else(|| {
        panic!(
            "{what}: agent still running after {EXIT_LIMIT:?}\n{}",
            tail(&run.log(), 30)
        )
    });
    let took = started.elapsed();
    let log = run.log();
    assert_eq!(
        status.code(),
        Some(EXIT_REVOKED),
        "{what}: exit status {status}\n{}",
        tail(&log, 30)
    );
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(
        errors.len(),
        1,
        "{what}: one error line expected:\n{}",
        tail(&log, 30)
    );
    let line = errors[0];
    eprintln!("{what}: {line}");
    assert!(line.contains(agent_id), "{what}: {line}");
    assert!(line.contains("is revoked"), "{what}: {line}");
    assert!(
        line.contains("Re-enroll with a new join token"),
        "{what}: {line}"
    );
    took
}

fn revoke_and_restart(opts: AgentOptions, transport: &str) {
    let cp = ControlPlane::spawn(CpOptions::default()).unwrap();
    let join = cp.join_string("env-revoked-stops").unwrap();
    let agent = Agent::enroll(&cp, &join, opts).unwrap();
    let id = agent.agent_id().to_owned();

    let mut run = Run::start(&agent, "first");
    let conn = cp
        .wait_connection(&id, LIMIT, |c| c["transport"] == transport)
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&run.log(), 30)));
    assert_eq!(conn["transport"], transport, "{conn}");

    let started = Instant::now();
    let out = cp.cli(&["agents", "revoke", &id]).unwrap();
    assert!(out.contains("1 live connection"), "{out}");
    assert_revoked_exit(&mut run, &id, "revoked while connected");
    eprintln!(
        "{transport}: revoked agent exited {:?} after `agents revoke` was started",
        started.elapsed()
    );

    // Restarted (e.g. by hand: systemd does not restart on 77), it is refused
    // at once and exits again instead of looping.
    let mut again = Run::start(&agent, "restart");
    let took = assert_revoked_exit(&mut again, &id, "restarted after revocation");
    eprintln!("{transport}: restarted revoked agent exited after {took:?}");
    let refused = cp
        .log()
        .lines()
        .filter(|l| l.contains("client certificate rejected") && l.contains(&id))
        .count();
    assert!(
        refused >= 1,
        "no TLS refusal logged:\n{}",
        tail(&cp.log(), 30)
    );
    assert!(cp.connections_of(&id).is_empty());
}

#[test]
fn revoked_agent_on_quic_exits_with_code_77_and_does_not_loop() {
    revoke_and_restart(AgentOptions::back_to_quic_soon(), "quic");
}

#[test]
fn revoked_agent_on_tcp_exits_with_code_77_and_does_not_loop() {
    let mut tcp = AgentOptions::default();
    tcp.tunnel_toml.push_str("transport = \"tcp\"\n");
    revoke_and_restart(tcp, "tcp");
}

#[test]
fn failures_that_are_not_a_revocation_keep_redialing() {
    let mut cp = ControlPlane::spawn(CpOptions::default()).unwrap();
    // Another control plane: its own CA, so the TLS handshake fails, but not
    // because anyone revoked us.
    let stranger = ControlPlane::spawn(CpOptions::default()).unwrap();
    let join = cp.join_string("env-transient").unwrap();
    let agent = Agent::enroll(&cp, &join, AgentOptions::default()).unwrap();
    let id = agent.agent_id().to_owned();
    let lost = Agent::enroll(
        &cp,
        &cp.join_string("env-transient").unwrap(),
        AgentOptions {
            address: Some(stranger.tunnel_addr().to_string()),
            ..AgentOptions::default()
        },
    )
    .unwrap();

    let mut run = Run::start(&agent, "transient");
    let mut wrong = Run::start(&lost, "wrong-ca");
    cp.wait_connected(&id, LIMIT).unwrap();

    // Control plane gone (kill -9), then back: the agent redials and reconnects.
    let redials_before = run.redials();
    cp.kill9().unwrap();
    // the agent notices the control plane is gone and redials (instead of exiting)
    testkit::try_eventually_blocking("the agent to redial", LIMIT, || {
        run.redials() > redials_before || !run.is_running()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&run.log(), 30)));
    assert!(
        run.is_running(),
        "agent exited with the control plane down:\n{}",
        tail(&run.log(), 30)
    );
    cp.start().unwrap();
    cp.wait_connected(&id, LIMIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&run.log(), 30)));
    assert!(run.is_running());

    // The TLS failure against the wrong control plane is retried, not final.
    let log = wrong.log();
    assert!(
        wrong.is_running(),
        "agent exited on a TLS failure:\n{}",
        tail(&log, 30)
    );
    let failures = log.lines().filter(|l| l.contains("dial failed")).count();
    assert!(
        failures >= 2,
        "expected repeated dial failures:\n{}",
        tail(&log, 30)
    );
    assert!(!log.contains("is revoked"), "{}", tail(&log, 30));
}
