//! The shipper as a child process of `sandbox-agent run`: the current
//! executable run as `audit ship --until-stdin-closes` with the same config,
//! in its own process group (a signal to the agent's group does not cut a
//! batch short), its standard input a pipe from the agent. When the agent
//! stops, or dies (`kill -9`: the kernel closes the pipe), the child
//! finishes its batch in flight, writes its cursor and exits; the next
//! agent's child waits for the shipper lock until then. On a clean stop the
//! agent first writes [`super::ship::DRAIN_REQUEST`]: the child ships what
//! the log holds (the final checkpoint included) before it exits. A child that exits
//! on its own while the agent runs is started again after a pause.

use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long to wait between a child's exit and the next start.
const RESTART_PAUSE: Duration = Duration::from_secs(5);
/// How often the supervisor looks at the child.
const POLL: Duration = Duration::from_millis(200);

/// How to start the child.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// The config file the agent was started with.
    pub config: Option<PathBuf>,
    /// Extra arguments before `audit ship` (e.g. `--log-format json`).
    pub global_args: Vec<String>,
}

/// Whether `sandbox-agent run` should run the shipper itself: `[audit.syslog]`
/// is configured and enabled, and its `shipper` is `agent` (not `unit`, the
/// separate `airlock-sandbox-agent-audit-ship.service`).
pub fn wanted(config: &crate::config::Config) -> bool {
    config
        .audit
        .syslog
        .as_ref()
        .is_some_and(|s| s.enabled && s.shipper == crate::audit::config::ShipperMode::Agent)
}

/// The running supervisor of the shipper child.
#[derive(Debug)]
pub struct ShipperChild {
    stop: mpsc::Sender<Duration>,
    thread: std::thread::JoinHandle<()>,
}

fn spawn_child(spec: &ChildSpec) -> std::io::Result<(Child, ChildStdin)> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(&spec.global_args);
    if let Some(c) = &spec.config {
        cmd.arg("--config").arg(c);
    }
    cmd.args(["audit", "ship", "--until-stdin-closes"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0);
    let mut child = cmd.spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no stdin pipe to the shipper child"))?;
    Ok((child, stdin))
}

impl ShipperChild {
    /// Start the child and a thread that keeps it running.
    pub fn start(spec: ChildSpec) -> std::io::Result<Self> {
        let (mut child, stdin) = spawn_child(&spec)?;
        tracing::info!(pid = child.id(), "audit shipper child started");
        let (stop_tx, stop_rx) = mpsc::channel::<Duration>();
        let thread = std::thread::Builder::new()
            .name("audit-shipper".into())
            .spawn(move || {
                let mut stdin = Some(stdin);
                loop {
                    match stop_rx.recv_timeout(POLL) {
                        Ok(deadline) => {
                            // A clean stop: ask for a drain, then end the input.
                            if let Some(mut s) = stdin.take() {
                                use std::io::Write as _;
                                let _ = s.write_all(super::ship::DRAIN_REQUEST);
                            }
                            wait_with_deadline(&mut child, deadline);
                            return;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            drop(stdin.take());
                            return;
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                    }
                    match child.try_wait() {
                        Ok(None) => continue,
                        Ok(Some(status)) => {
                            tracing::warn!(%status, restart_in_s = RESTART_PAUSE.as_secs(), "audit shipper child exited; starting it again");
                        }
                        Err(error) => {
                            tracing::warn!(%error, "audit shipper child: cannot wait; starting it again");
                        }
                    }
                    match stop_rx.recv_timeout(RESTART_PAUSE) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    match spawn_child(&spec) {
                        Ok((c, s)) => {
                            tracing::info!(pid = c.id(), "audit shipper child started");
                            child = c;
                            stdin = Some(s);
                        }
                        Err(error) => {
                            tracing::error!(%error, "audit shipper child could not be started");
                        }
                    }
                }
            })?;
        Ok(Self {
            stop: stop_tx,
            thread,
        })
    }

    /// Close the child's standard input and wait (at most `deadline`) for it
    /// to finish its batch and exit.
    pub fn stop(self, deadline: Duration) {
        let _ = self.stop.send(deadline);
        let _ = self.thread.join();
    }
}

fn wait_with_deadline(child: &mut Child, deadline: Duration) {
    let until = Instant::now() + deadline;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                tracing::info!(%status, "audit shipper child stopped");
                return;
            }
            Ok(None) if Instant::now() < until => std::thread::sleep(POLL),
            Ok(None) => {
                // It keeps the lock until it exits; the next one waits for it.
                tracing::warn!(
                    pid = child.id(),
                    "audit shipper child still running at the deadline; leaving it to finish"
                );
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "audit shipper child: cannot wait");
                return;
            }
        }
    }
}
