//! Temporary deployments of the real binaries for end-to-end tests: a
//! control plane (`control-plane serve` as a process, or the same `App`
//! in-process when a test must call agents through the gateway), join
//! tokens, enrolled agents running `sandbox-agent run`, and waiting until
//! `agents list --json` shows them.
//!
//! Everything lives in a temporary directory removed on drop; child
//! processes are killed on drop. Ports are free loopback ports.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use airlock_tests::deploy::{ControlPlane, CpOptions, Agent, AgentOptions};
//! let mut cp = ControlPlane::spawn(CpOptions::default())?;
//! let join = cp.join_string("env-test")?;
//! let mut agent = Agent::enroll(&cp, &join, AgentOptions::default())?;
//! agent.run()?;
//! cp.wait_connected(agent.agent_id(), std::time::Duration::from_secs(10))?;
//! # Ok(()) }
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use testkit::{try_eventually, try_eventually_blocking};

/// Directory of the workspace's debug binaries (`target/debug`), or
/// `AIRLOCK_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("AIRLOCK_BIN_DIR") {
        return PathBuf::from(d);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("debug")
}

/// Path of a workspace binary; fails with the command that builds it.
pub fn binary(name: &str) -> Result<PathBuf> {
    let p = bin_dir().join(name);
    if !p.is_file() {
        bail!("{} not found: run `cargo build -p control-plane -p sandbox-agent` first (scripts/test-all does)", p.display());
    }
    Ok(p)
}

/// A loopback port free on both UDP and TCP (the tunnel needs both); see
/// [`testkit::free_loopback_ports`].
pub fn free_port() -> u16 {
    testkit::free_loopback_ports(1)
}

/// Control-plane settings for a test deployment.
#[derive(Debug, Clone)]
pub struct CpOptions {
    /// `[tunnel] heartbeat_interval_seconds`.
    pub heartbeat_interval_seconds: f64,
    /// `[pki] agent_cert_lifetime_seconds` (None: the default).
    pub agent_cert_lifetime_seconds: Option<u64>,
    /// `[tunnel] drain_deadline_seconds`.
    pub drain_deadline_seconds: f64,
    /// Extra TOML appended to the config file.
    pub extra_toml: String,
}

impl Default for CpOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval_seconds: 1.0,
            agent_cert_lifetime_seconds: None,
            drain_deadline_seconds: 2.0,
            extra_toml: String::new(),
        }
    }
}

/// A control plane: its data dir, config and ports; a process when spawned.
#[derive(Debug)]
pub struct ControlPlane {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    tunnel_port: u16,
    enroll_port: u16,
    api_port: u16,
    child: Option<Child>,
}

impl ControlPlane {
    /// Write a config (free ports, a fresh data dir) without starting anything.
    pub fn configure(opts: CpOptions) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("airlock-cp-").tempdir()?;
        let tunnel_port = free_port();
        let enroll_port = loop {
            let p = free_port();
            if p != tunnel_port {
                break p;
            }
        };
        let api_port = loop {
            let p = free_port();
            if p != tunnel_port && p != enroll_port {
                break p;
            }
        };
        let mut toml = format!(
            "data_dir = \"{data}\"\nshutdown_grace_seconds = 5\n\n[tunnel]\nlisten = \"127.0.0.1:{tunnel_port}\"\nheartbeat_interval_seconds = {hb}\ndrain_deadline_seconds = {drain}\n\n[enroll]\nlisten = \"127.0.0.1:{enroll_port}\"\nadvertise_address = \"127.0.0.1:{enroll_port}\"\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n\n[pki]\nserver_names = [\"localhost\", \"127.0.0.1\"]\n",
            data = dir.path().join("data").display(),
            hb = opts.heartbeat_interval_seconds,
            drain = opts.drain_deadline_seconds,
        );
        if let Some(l) = opts.agent_cert_lifetime_seconds {
            toml.push_str(&format!("agent_cert_lifetime_seconds = {l}\n"));
        }
        toml.push_str(&opts.extra_toml);
        let config_path = dir.path().join("control-plane.toml");
        std::fs::write(&config_path, toml)?;
        Ok(Self {
            dir,
            config_path,
            tunnel_port,
            enroll_port,
            api_port,
            child: None,
        })
    }

    /// Configure and start `control-plane serve`; waits until the tunnel port answers.
    pub fn spawn(opts: CpOptions) -> Result<Self> {
        let mut cp = Self::configure(opts)?;
        cp.start()?;
        Ok(cp)
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The deployment's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Tunnel address (UDP and TCP).
    pub fn tunnel_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.tunnel_port))
    }

    /// Enrollment address.
    pub fn enroll_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.enroll_port))
    }

    /// Public API address (`[api] listen`).
    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.api_port))
    }

    /// The server's log file (appended to across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("control-plane.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Start (or restart) `control-plane serve` on the same config and ports.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("control plane already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(binary("control-plane")?)
            .arg("--config")
            .arg(&self.config_path)
            .arg("serve")
            .env("RUST_LOG", "info,control_plane=debug,tunnel=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn control-plane serve")?;
        self.child = Some(child);
        // The port may still be held by a killed predecessor for a moment: wait until every
        // listener answers (the API's too: a test's first call may come right after start).
        let addr = self.tunnel_addr();
        let enroll = self.enroll_addr();
        let api = self.api_addr();
        try_eventually_blocking("control plane listening", Duration::from_secs(20), || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Some(Err(anyhow!("control-plane serve exited with {status}")));
                }
            }
            let ok = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .is_ok()
                && std::net::TcpStream::connect_timeout(&enroll, Duration::from_millis(200))
                    .is_ok()
                && std::net::TcpStream::connect_timeout(&api, Duration::from_millis(200)).is_ok()
                && std::os::unix::net::UnixStream::connect(self.admin_socket()).is_ok();
            ok.then_some(Ok(()))
        })
        .map_err(anyhow::Error::from)
        .and_then(|r| r)
        .with_context(|| format!("control plane log:\n{}", self.log()))
    }

    /// The admin socket path.
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("data").join("admin.sock")
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` the server (no drain, no goodbye).
    pub fn kill9(&mut self) -> Result<()> {
        kill9_child(&mut self.child)
    }

    /// SIGTERM and wait (graceful drain).
    pub fn terminate(&mut self) -> Result<()> {
        terminate_child(&mut self.child).map(|_| ())
    }

    /// Run `control-plane --config <cfg> <args>`; returns stdout; fails on non-zero exit.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(binary("control-plane")?)
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env("NO_COLOR", "1")
            .output()?;
        if !out.status.success() {
            bail!(
                "control-plane {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A join string for `environment` (`tokens create --json`).
    pub fn join_string(&self, environment: &str) -> Result<String> {
        let out = self.cli(&["tokens", "create", "--environment", environment, "--json"])?;
        let v: Value = serde_json::from_str(out.trim())
            .with_context(|| format!("tokens create output: {out}"))?;
        v["join_string"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no join_string in {v}"))
    }

    /// `agents list --json` (connected agents).
    pub fn agents(&self) -> Result<Vec<Value>> {
        let out = self.cli(&["agents", "list", "--json"])?;
        let v: Value = serde_json::from_str(out.trim())
            .with_context(|| format!("agents list output: {out}"))?;
        match v {
            Value::Array(a) => Ok(a),
            Value::Object(ref o) if o.contains_key("agents") => {
                Ok(v["agents"].as_array().cloned().unwrap_or_default())
            }
            other => bail!("unexpected agents list output: {other}"),
        }
    }

    /// The connections of `agent_id` in `agents list --json`.
    pub fn connections_of(&self, agent_id: &str) -> Vec<Value> {
        self.agents()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["agent_id"] == agent_id)
            .collect()
    }

    /// Wait until `agent_id` has exactly one connection; return it.
    pub fn wait_connected(&self, agent_id: &str, limit: Duration) -> Result<Value> {
        self.wait_connection(agent_id, limit, |_| true)
    }

    /// Wait until `agent_id` has exactly one connection satisfying `pred`.
    pub fn wait_connection(
        &self,
        agent_id: &str,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        try_eventually_blocking(&format!("agent {agent_id} connected"), limit, || {
            let c = self.connections_of(agent_id);
            (c.len() == 1 && pred(&c[0])).then(|| c[0].clone())
        })
        .with_context(|| {
            format!(
                "connections now: {:?}\ncontrol plane log tail:\n{}",
                self.connections_of(agent_id),
                tail(&self.log(), 40)
            )
        })
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `kill -9` a child process, if any, and reap it.
fn kill9_child(child: &mut Option<Child>) -> Result<()> {
    if let Some(mut c) = child.take() {
        c.kill()?;
        c.wait()?;
    }
    Ok(())
}

/// SIGTERM a child process, if any, and wait up to 15 s for it to exit
/// (then kill it); its exit status when it exited by itself.
fn terminate_child(child: &mut Option<Child>) -> Result<Option<std::process::ExitStatus>> {
    if let Some(mut c) = child.take() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        if let Ok(exited) = try_eventually_blocking(
            "the process to exit after SIGTERM",
            Duration::from_secs(15),
            || c.try_wait().transpose(),
        ) {
            return Ok(Some(exited?));
        }
        c.kill()?;
        c.wait()?;
    }
    Ok(None)
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The tails of a control plane's and an agent's logs (`cp_lines` and
/// `agent_lines` lines), for the message of a failed end-to-end test.
pub fn logs_tail(cp: &ControlPlane, cp_lines: usize, agent: &Agent, agent_lines: usize) -> String {
    format!(
        "control plane log:\n{}\nagent log:\n{}",
        tail(&cp.log(), cp_lines),
        tail(&agent.log(), agent_lines)
    )
}

/// Agent settings for a test deployment.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `[tunnel]` keys (TOML lines), e.g. `transport = "tcp"`.
    pub tunnel_toml: String,
    /// `[control_plane] address` override (e.g. a relay in front of the control plane).
    pub address: Option<String>,
    /// Extra environment for `run`.
    pub env: Vec<(String, String)>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            tunnel_toml: "quic_connect_timeout_seconds = 1.5\nreconnect_base_seconds = 0.2\nreconnect_cap_seconds = 2.0\n".into(),
            address: None,
            env: Vec::new(),
        }
    }
}

impl AgentOptions {
    /// The default, and an auto agent that fell back to TCP (its QUIC dial
    /// landed while the control plane was down, or was slow under load)
    /// tries QUIC again after a second instead of a minute: for tests that
    /// compare the transport.
    pub fn back_to_quic_soon() -> Self {
        let mut o = Self::default();
        o.tunnel_toml
            .push_str("quic_retry_interval_seconds = 1.0\n");
        o
    }
}

/// An enrolled agent; runs `sandbox-agent run` on demand.
#[derive(Debug)]
pub struct Agent {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    agent_id: String,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Agent {
    /// Write a config and run `sandbox-agent enroll --join`.
    pub fn enroll(cp: &ControlPlane, join: &str, opts: AgentOptions) -> Result<Self> {
        let _ = cp;
        let dir = tempfile::Builder::new()
            .prefix("airlock-agent-")
            .tempdir()?;
        let mut toml = format!(
            "data_dir = \"{}\"\n\n[sandbox]\nexecutor_path = \"{}\"\n",
            dir.path().join("data").display(),
            dir.path().join("no-executor").display()
        );
        if let Some(a) = &opts.address {
            toml.push_str(&format!(
                "\n[control_plane]\naddress = \"{a}\"\nserver_name = \"127.0.0.1\"\n"
            ));
        }
        toml.push_str(&format!("\n[tunnel]\n{}\n", opts.tunnel_toml));
        let config_path = dir.path().join("sandbox-agent.toml");
        std::fs::write(&config_path, toml)?;
        let out = Command::new(binary("sandbox-agent")?)
            .arg("--config")
            .arg(&config_path)
            .args(["enroll", "--join", join])
            .env("NO_COLOR", "1")
            .output()?;
        if !out.status.success() {
            bail!(
                "sandbox-agent enroll failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let agent_id = stdout
            .lines()
            .find_map(|l| l.strip_prefix("agent_id="))
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no agent_id= in enroll output: {stdout}"))?;
        Ok(Self {
            dir,
            config_path,
            agent_id,
            env: opts.env,
            child: None,
        })
    }

    /// The enrolled agent id.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// The agent's config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The identity directory (key, certificate, CA).
    pub fn identity_dir(&self) -> PathBuf {
        self.dir.path().join("data").join("identity")
    }

    /// The log of `run` (appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("sandbox-agent.log")
    }

    /// The log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Start `sandbox-agent run`.
    pub fn run(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("agent already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new(binary("sandbox-agent")?);
        cmd.arg("--config")
            .arg(&self.config_path)
            .arg("run")
            .env("RUST_LOG", "info,tunnel=debug,sandbox_agent=debug")
            .env("NO_COLOR", "1")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().context("spawn sandbox-agent run")?);
        Ok(())
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` the agent.
    pub fn kill9(&mut self) -> Result<()> {
        kill9_child(&mut self.child)
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn terminate(&mut self) -> Result<Option<std::process::ExitStatus>> {
        terminate_child(&mut self.child)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The control plane's `App` running in this process (same config file),
/// for tests that call agents through the gateway.
pub struct InProcessControlPlane {
    /// The running app.
    pub running: control_plane::app::Running,
}

impl std::fmt::Debug for InProcessControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessControlPlane")
            .finish_non_exhaustive()
    }
}

impl InProcessControlPlane {
    /// Start the app from `cp`'s config (the same ports; `cp` must not be running).
    pub async fn start(cp: &ControlPlane) -> Result<Self> {
        let config = control_plane::config::Config::load(cp.config_path())?;
        let app =
            tokio::task::spawn_blocking(move || control_plane::app::App::new(config)).await??;
        let running = app.start().await?;
        Ok(Self { running })
    }

    /// The gateway.
    pub fn gateway(&self) -> &control_plane::gateway::GatewayHandle {
        self.running.gateway()
    }

    /// Wait until `agent_id` is connected (through the registry).
    pub async fn wait_connected(
        &self,
        agent_id: &str,
        limit: Duration,
    ) -> Result<control_plane::gateway::AgentInfo> {
        use control_plane::gateway::AgentDirectory;
        // The check's error is the registry's entries for the agent, quoted
        // on a timeout.
        let info = try_eventually(&format!("agent {agent_id}"), limit, || {
            let mut list: Vec<_> = self
                .gateway()
                .registry()
                .list()
                .into_iter()
                .filter(|a| a.agent_id == agent_id)
                .collect();
            match list.len() {
                1 => Ok(list.remove(0)),
                _ => Err(format!("registry: {list:?}")),
            }
        })
        .await?;
        Ok(info)
    }

    /// Stop (drain with a short grace).
    pub async fn stop(self) {
        let _ = self.running.shutdown(Duration::from_secs(3)).await;
    }
}
