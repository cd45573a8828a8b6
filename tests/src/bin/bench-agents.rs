//! `bench-agents`: N simulated agents on one real `control-plane serve`
//! process (the release build, on loopback), one run, one table.
//!
//! Every agent is the `tunnel` crate's real client (QUIC first, TLS over TCP
//! as the fallback, full-jitter reconnect backoff: what `sandbox-agent run`
//! uses), each with its own certificate, issued in
//! this process by the control plane's CA (read from its data dir with
//! `pki`, as `control-plane` itself issues them at enrollment: same
//! function, same extensions). The gateway needs nothing else of an agent to
//! accept it (the identity database record is only read at renewal).
//! The simulated agents dial QUIC from `--endpoints` (64) shared UDP
//! endpoints (0: a fresh endpoint per dial, as a real agent does; quinn
//! allocates about 3 MiB per endpoint, which made the bench process, not
//! the control plane, the bottleneck of a storm) and accept
//! `--agent-streams` (16) calls at once (an agent's default is 1,024; quinn
//! sets up every stream slot at connect).
//!
//! Measured, from the control plane's side:
//! - connect: time until all N are connected after they are started at once;
//! - idle: the control plane's RSS (`VmRSS`, `VmHWM` of /proc/<pid>/status) and
//!   CPU (utime+stime of /proc/<pid>/stat over a window) with N connected;
//! - heartbeat: the gap between two heartbeats the control plane records for
//!   the same agent (`last_heartbeat` of `GET /v1/agents` on the admin socket,
//!   sampled every second): the interval plus whatever lateness the control
//!   plane's or the agents' scheduling adds;
//! - calls: `--calls-per-second` pings to random agents for `--calls-seconds`
//!   through the admin socket's `POST /v1/agents/{id}/ping` (the control plane
//!   opens a call on the agent's tunnel and times it): p50/p99 of the round
//!   trip the control plane measured and of the whole admin request;
//! - reconnect storm: the control plane is SIGKILLed and restarted at once on
//!   the same data dir and ports; time from the restart until every agent is
//!   connected again, the per-agent spread, the peak of connections per second
//!   and the failed dials on the way.
//!
//! ```text
//! cargo build --release -p control-plane --bin control-plane && cargo build --release -p airlock-tests --bin bench-agents
//! target/release/bench-agents                       # 10,000 agents, QUIC (auto)
//! target/release/bench-agents --agents 2000 --transport tcp
//! target/release/bench-agents --agents 3000 --max-concurrent-handshakes 65536   # ~ no bound
//! ```
//! The table also counts the control plane's handshake warnings (timed out,
//! failed, refused for want of a slot) and prints the load average.
//! Needs RLIMIT_NOFILE above N (one UDP socket or TCP connection per agent in
//! this process; the control plane needs one per TCP agent): the soft limit is
//! raised to the hard one with `prlimit`, and the run refuses to start if that
//! is not enough.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use airlock_tests::deploy::{ControlPlane, CpOptions};
use anyhow::{bail, Context, Result};
use protocol::{ErrorCode, Reply, Request, Response};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tunnel::call::{CallHandler, CallIo};
use tunnel::client::{ClientHandle, ClientSettings, ClientStatus};
use tunnel::{Transport, TransportMode};

struct Args {
    agents: usize,
    transport: TransportMode,
    heartbeat_seconds: f64,
    idle_seconds: u64,
    calls_per_second: u32,
    calls_seconds: u64,
    storm: bool,
    connect_limit: Duration,
    /// `tunnel.max_concurrent_handshakes` of the control plane (None: its default).
    max_concurrent_handshakes: Option<u64>,
    /// QUIC endpoints the simulated agents share (0: a fresh one per dial,
    /// as a real agent dials).
    endpoints: usize,
    /// Calls the control plane may open at once on one simulated agent.
    agent_streams: u32,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        agents: 10_000,
        transport: TransportMode::Auto,
        heartbeat_seconds: 5.0,
        idle_seconds: 20,
        calls_per_second: 500,
        calls_seconds: 10,
        storm: true,
        connect_limit: Duration::from_secs(300),
        max_concurrent_handshakes: None,
        endpoints: 64,
        agent_streams: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--agents" => a.agents = value()?.parse().context("--agents")?,
            "--transport" => {
                a.transport = match value()?.as_str() {
                    "auto" => TransportMode::Auto,
                    "quic" => TransportMode::QuicOnly,
                    "tcp" => TransportMode::TcpOnly,
                    other => bail!("--transport: auto, quic or tcp, not {other}"),
                }
            }
            "--heartbeat-seconds" => {
                a.heartbeat_seconds = value()?.parse().context("--heartbeat-seconds")?
            }
            "--idle-seconds" => a.idle_seconds = value()?.parse().context("--idle-seconds")?,
            "--calls-per-second" => {
                a.calls_per_second = value()?.parse().context("--calls-per-second")?
            }
            "--calls-seconds" => a.calls_seconds = value()?.parse().context("--calls-seconds")?,
            "--no-storm" => a.storm = false,
            "--max-concurrent-handshakes" => {
                a.max_concurrent_handshakes =
                    Some(value()?.parse().context("--max-concurrent-handshakes")?)
            }
            "--endpoints" => a.endpoints = value()?.parse().context("--endpoints")?,
            "--agent-streams" => a.agent_streams = value()?.parse().context("--agent-streams")?,
            "--connect-limit-seconds" => {
                a.connect_limit =
                    Duration::from_secs(value()?.parse().context("--connect-limit-seconds")?)
            }
            other => {
                bail!("unknown flag {other} (see the doc comment of tests/src/bin/bench-agents.rs)")
            }
        }
    }
    if a.agents == 0 {
        bail!("--agents must be at least 1");
    }
    Ok(a)
}

// ---------------------------------------------------------------- fd limit

/// (soft, hard) RLIMIT_NOFILE of this process, from /proc/self/limits.
fn nofile() -> Result<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no `Max open files` in /proc/self/limits")?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let n = |s: &str| {
        if s == "unlimited" {
            Ok(u64::MAX)
        } else {
            s.parse::<u64>().context("limit")
        }
    };
    Ok((n(f[3])?, n(f[4])?))
}

/// Raise the soft fd limit to the hard one (util-linux `prlimit`: the
/// workspace forbids unsafe code, and no crate of ours wraps setrlimit); the
/// control plane started later inherits it. Fails if `need` is not reachable.
fn raise_nofile(need: u64) -> Result<u64> {
    let (soft, hard) = nofile()?;
    if soft < need && hard > soft {
        let status = Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={hard}:{hard}"))
            .status()
            .context("run prlimit (util-linux) to raise RLIMIT_NOFILE")?;
        if !status.success() {
            bail!("prlimit --nofile={hard}:{hard} failed: {status}");
        }
    }
    let (soft, hard) = nofile()?;
    if soft < need {
        bail!("RLIMIT_NOFILE is {soft} (hard {hard}) but this run needs about {need}: raise the hard limit (`ulimit -Hn`, or LimitNOFILE= in a unit) or use fewer --agents");
    }
    Ok(soft)
}

// ---------------------------------------------------------------- control plane process

struct Cp {
    deployment: ControlPlane,
    bin: PathBuf,
    child: Option<Child>,
}

impl Cp {
    fn data_dir(&self) -> PathBuf {
        self.deployment.dir().join("data")
    }

    /// Start `control-plane serve` and wait until the tunnel and the admin
    /// socket answer. Returns when it was spawned.
    fn start(&mut self) -> Result<Instant> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.deployment.log_path())?;
        let spawned = Instant::now();
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(self.deployment.config_path())
            .arg("serve")
            // What a production unit logs (one line per agent connect/disconnect).
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn control-plane serve")?;
        self.child = Some(child);
        let tunnel = self.deployment.tunnel_addr();
        let admin = self.deployment.admin_socket();
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "control-plane serve exited with {status}; log:\n{}",
                    self.deployment.log()
                );
            }
            if std::net::TcpStream::connect_timeout(&tunnel, Duration::from_millis(100)).is_ok()
                && std::os::unix::net::UnixStream::connect(&admin).is_ok()
            {
                return Ok(spawned);
            }
            if Instant::now() > until {
                bail!(
                    "control plane not listening after 30 s; log:\n{}",
                    self.deployment.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let until = Instant::now() + Duration::from_secs(15);
            while Instant::now() < until {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Cp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The release `control-plane` next to this binary (or in `AIRLOCK_BIN_DIR`).
fn control_plane_binary() -> Result<PathBuf> {
    let dir = match std::env::var_os("AIRLOCK_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()?
            .parent()
            .context("no parent of this binary")?
            .to_path_buf(),
    };
    let p = dir.join("control-plane");
    if !p.is_file() {
        bail!("{} not found: cargo build --release -p control-plane --bin control-plane && cargo build --release -p airlock-tests --bin bench-agents", p.display());
    }
    Ok(p)
}

// ---------------------------------------------------------------- /proc

struct ProcSample {
    rss_kib: u64,
    hwm_kib: u64,
    threads: u64,
    cpu_ticks: u64,
    fds: usize,
}

fn proc_sample(pid: u32) -> Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f[11].parse()?;
    let stime: u64 = f[12].parse()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    Ok(ProcSample {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        threads: field("Threads:"),
        cpu_ticks: utime + stime,
        fds,
    })
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

// ---------------------------------------------------------------- simulated agents

/// Answers what the control plane may send a bench agent: ping, an empty
/// sandbox list; everything else is unsupported here.
struct BenchHandler;

#[async_trait::async_trait]
impl CallHandler for BenchHandler {
    async fn handle(&self, request: Request, _io: &mut CallIo) -> Response {
        match request {
            Request::Ping => Response::Ok(Reply::Pong(Default::default())),
            Request::ListSandboxes => Response::Ok(Reply::ListSandboxes(Vec::new())),
            other => Response::error(
                ErrorCode::UnsupportedCall,
                format!("bench agent: no {}", other.name()),
            ),
        }
    }
}

/// Connection events of all agents.
#[derive(Default)]
struct Tracker {
    connected: AtomicUsize,
    /// (when, agent index, transport) of every `Connected`.
    ups: Mutex<Vec<(Instant, usize, Transport)>>,
    /// When of every `Disconnected` (a lost link or a failed dial round).
    downs: Mutex<Vec<Instant>>,
    /// Final refusals (revoked, incompatible): a bench bug or a server refusal.
    refused: Mutex<Vec<String>>,
}

fn watch_status(idx: usize, handle: &ClientHandle, tracker: Arc<Tracker>) {
    let mut status = handle.status();
    tokio::spawn(async move {
        let mut up = false;
        loop {
            let now = Instant::now();
            let s = status.borrow_and_update().clone();
            match s {
                ClientStatus::Connected { transport, .. } => {
                    if !up {
                        tracker.connected.fetch_add(1, Ordering::SeqCst);
                        up = true;
                    }
                    tracker.ups.lock().unwrap().push((now, idx, transport));
                }
                other => {
                    if up {
                        tracker.connected.fetch_sub(1, Ordering::SeqCst);
                        up = false;
                    }
                    match other {
                        ClientStatus::Disconnected { .. } => {
                            tracker.downs.lock().unwrap().push(now)
                        }
                        ClientStatus::Revoked { error } | ClientStatus::Incompatible { error } => {
                            tracker.refused.lock().unwrap().push(error)
                        }
                        _ => {}
                    }
                }
            }
            if status.changed().await.is_err() {
                return;
            }
        }
    });
}

struct AgentSpec {
    id: String,
    tls: Arc<rustls::ClientConfig>,
}

/// One certificate per agent from the control plane's CA (its data dir).
fn issue_agents(data_dir: &Path, n: usize) -> Result<Vec<AgentSpec>> {
    let pki_dir = data_dir.join("pki");
    let ca = pki::CertificateAuthority::load(&pki_dir.join("ca.crt"), &pki_dir.join("ca.key"))
        .context("load the control plane's CA")?;
    let ca_der: CertificateDer<'static> = ca.cert_der().clone();
    let verifier = Arc::new(pki::tls::ControlPlaneVerifier::new(&ca_der)?);
    let env = pki::EnvironmentId::parse("env_bench")?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let id = pki::AgentId::parse(&format!("agt_bench{i:06}"))?;
        let key = rcgen::KeyPair::generate()?;
        let issued = ca.issue_agent(&id, &env, &key, Duration::from_secs(24 * 3600))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let tls = rustls::ClientConfig::builder_with_provider(pki::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_auth_cert(issued.chain, key_der)?;
        out.push(AgentSpec {
            id: id.as_str().to_owned(),
            tls: Arc::new(tls),
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------- statistics

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

/// Wait until `pred` holds (checked every 50 ms) or `limit` passes.
async fn wait_for(limit: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if pred() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pred()
}

/// Connections per one-second bucket of the `Connected` events after `from`
/// (first one per agent only), relative to `from`.
fn per_second(
    ups: &[(Instant, usize, Transport)],
    from: Instant,
    n: usize,
) -> (Vec<usize>, Vec<Duration>, HashMap<&'static str, usize>) {
    let mut first: Vec<Option<(Duration, Transport)>> = vec![None; n];
    for (t, i, tr) in ups {
        if *t >= from && first[*i].is_none() {
            first[*i] = Some((t.duration_since(from), *tr));
        }
    }
    let mut times: Vec<Duration> = first.iter().flatten().map(|(d, _)| *d).collect();
    times.sort();
    let mut buckets = vec![0usize; times.last().map(|d| d.as_secs() as usize + 1).unwrap_or(0)];
    for d in &times {
        buckets[d.as_secs() as usize] += 1;
    }
    let mut by_transport = HashMap::new();
    for (_, tr) in first.iter().flatten() {
        *by_transport
            .entry(match tr {
                Transport::Quic => "quic",
                Transport::Tcp => "tcp",
            })
            .or_insert(0) += 1;
    }
    (buckets, times, by_transport)
}

// ---------------------------------------------------------------- control plane log

/// What the control plane's log says about handshakes, from byte `from` on.
#[derive(Debug, Default, Clone, Copy)]
struct HandshakeLog {
    /// `tunnel handshake timed out` lines.
    timed_out: usize,
    /// `tunnel handshake failed` lines.
    failed: usize,
    /// Connections refused for want of a handshake slot, as counted by the
    /// rate-limited warnings (`refused=N`; those after the last warning of a
    /// process are not in the log, so this is a lower bound).
    refused: u64,
}

fn handshake_log(path: &Path, from: usize) -> (HandshakeLog, usize) {
    let text = std::fs::read(path).unwrap_or_default();
    let end = text.len();
    let text = String::from_utf8_lossy(&text[from.min(end)..]);
    let mut h = HandshakeLog::default();
    for line in text.lines() {
        if line.contains("tunnel handshake timed out") {
            h.timed_out += 1;
        } else if line.contains("tunnel handshake failed") {
            h.failed += 1;
        } else if line.contains("tunnel handshakes refused") {
            if let Some(n) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("refused="))
                .and_then(|v| v.parse::<u64>().ok())
            {
                h.refused += n;
            }
        }
    }
    (h, end)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------- admin socket

async fn list_agents(socket: &Path) -> Result<Vec<control_plane::gateway::AgentInfo>> {
    Ok(control_plane::cli::admin_client::list_agents(socket).await?)
}

async fn admin_ping(socket: &Path, agent_id: &str) -> Result<Duration> {
    let a: serde_json::Value = control_plane::cli::admin_client::call(
        socket,
        http::Method::POST,
        &format!("/v1/agents/{agent_id}/ping"),
    )
    .await?;
    let us = a["round_trip_us"]
        .as_u64()
        .with_context(|| format!("ping answer without round_trip_us: {a}"))?;
    Ok(Duration::from_micros(us))
}

// ---------------------------------------------------------------- main

fn main() -> Result<()> {
    let args = parse_args()?;
    // One socket per agent here, a few hundred for the runtime and the control plane.
    let fds = raise_nofile(args.agents as u64 + 512)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args, fds))
}

async fn run(args: Args, fds: u64) -> Result<()> {
    let n = args.agents;
    let ticks = clock_ticks() as f64;
    let deployment = ControlPlane::configure(CpOptions {
        heartbeat_interval_seconds: args.heartbeat_seconds,
        ..Default::default()
    })?;
    if let Some(m) = args.max_concurrent_handshakes {
        // Under `[tunnel]` of the config the deployment wrote.
        let path = deployment.config_path();
        let text = std::fs::read_to_string(path)?;
        let text = text.replacen(
            "[tunnel]\n",
            &format!("[tunnel]\nmax_concurrent_handshakes = {m}\n"),
            1,
        );
        std::fs::write(path, text)?;
    }
    let load_start = loadavg();
    let mut cp = Cp {
        deployment,
        bin: control_plane_binary()?,
        child: None,
    };
    cp.start()?;
    let log_path = cp.deployment.log_path();
    let admin = cp.deployment.admin_socket();
    let started_rss = proc_sample(cp.pid())?;
    eprintln!(
        "control plane pid {} on {}; RLIMIT_NOFILE {fds}; issuing {n} certificates",
        cp.pid(),
        cp.deployment.tunnel_addr()
    );

    let t = Instant::now();
    let data_dir = cp.data_dir();
    let specs = tokio::task::spawn_blocking(move || issue_agents(&data_dir, n)).await??;
    let issue_time = t.elapsed();
    eprintln!("issued {n} certificates in {}", secs(issue_time));

    // ------------------------------------------------ connect all
    let tracker = Arc::new(Tracker::default());
    let handler: Arc<dyn CallHandler> = Arc::new(BenchHandler);
    let server = cp.deployment.tunnel_addr().to_string();
    let connect_start = Instant::now();
    // Shared QUIC endpoints: quinn gives every endpoint a receive buffer of
    // about 3 MiB, and a real agent makes one per dial; 10,000 simulated
    // agents redialing in one process spent most of its CPU allocating and
    // unmapping them (and the bench, not the control plane, set the pace).
    let tuning = tunnel::tuning::Tuning {
        max_concurrent_streams: args.agent_streams,
        ..Default::default()
    };
    let endpoints = (0..args.endpoints)
        .map(|_| tunnel::client::shared_quic_endpoint(([127, 0, 0, 1], 0).into(), &tuning))
        .collect::<std::io::Result<Vec<_>>>()
        .context("shared quic endpoints")?;
    let mut handles = Vec::with_capacity(n);
    for (i, spec) in specs.iter().enumerate() {
        let mut s = ClientSettings::new(server.clone(), "localhost", spec.id.clone());
        s.mode = args.transport;
        s.capabilities = vec!["bench".into()];
        s.tuning = tuning;
        s.quic_endpoint = endpoints.get(i % endpoints.len().max(1)).cloned();
        let h = tunnel::client::spawn(s, spec.tls.clone(), handler.clone());
        watch_status(i, &h, tracker.clone());
        handles.push(h);
    }
    let ok = wait_for(args.connect_limit, || {
        tracker.connected.load(Ordering::SeqCst) >= n
    })
    .await;
    let connect_all = connect_start.elapsed();
    let connected = tracker.connected.load(Ordering::SeqCst);
    if !ok {
        bail!(
            "only {connected} of {n} agents connected within {}; refused: {:?}; log tail:\n{}",
            secs(args.connect_limit),
            tracker.refused.lock().unwrap().first(),
            airlock_tests::deploy::tail(&cp.deployment.log(), 20)
        );
    }
    let (cold_buckets, _, cold_tr) = {
        let ups = tracker.ups.lock().unwrap().clone();
        per_second(&ups, connect_start, n)
    };
    let cold_failed = tracker.downs.lock().unwrap().len();
    let (cold_log, log_offset) = handshake_log(&log_path, 0);
    eprintln!(
        "all {n} connected in {} ({cold_failed} failed dial rounds; {cold_tr:?}; control plane log: {cold_log:?})",
        secs(connect_all)
    );

    // The control plane agrees?
    // Every agent listed; a few may briefly have two links (a TCP link
    // draining after the move to QUIC, or a link whose agent gave up on the
    // hello and redialed, until its watchdog closes it).
    let listed = list_agents(&admin).await?;
    let distinct: std::collections::HashSet<&str> =
        listed.iter().map(|a| a.agent_id.as_str()).collect();
    if distinct.len() != n {
        bail!(
            "the control plane lists {} agents ({} links), expected {n}",
            distinct.len(),
            listed.len()
        );
    }
    eprintln!("listed: {n} agents, {} links", listed.len());

    // ------------------------------------------------ idle
    tokio::time::sleep(Duration::from_secs(5)).await;
    let bench_pid = std::process::id();
    let a = proc_sample(cp.pid())?;
    let b0 = proc_sample(bench_pid)?;
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let z = proc_sample(cp.pid())?;
    let b1 = proc_sample(bench_pid)?;
    let idle_cpu = (z.cpu_ticks - a.cpu_ticks) as f64 / ticks / args.idle_seconds as f64 * 100.0;
    let bench_cpu = (b1.cpu_ticks - b0.cpu_ticks) as f64 / ticks / args.idle_seconds as f64 * 100.0;
    let per_agent_kib = (z.rss_kib.saturating_sub(started_rss.rss_kib)) as f64 / n as f64;
    eprintln!(
        "idle: rss {} (hwm {}), {:.1}% cpu, {} threads, {} fds; bench {:.1}% cpu, rss {}",
        mib(z.rss_kib),
        mib(z.hwm_kib),
        idle_cpu,
        z.threads,
        z.fds,
        bench_cpu,
        mib(b1.rss_kib)
    );

    // ------------------------------------------------ heartbeats
    let interval = Duration::from_secs_f64(args.heartbeat_seconds);
    let window = interval * 3 + Duration::from_secs(1);
    let mut seen: HashMap<String, Vec<SystemTime>> = HashMap::new();
    let mut list_times = Vec::new();
    let hb_start = Instant::now();
    while hb_start.elapsed() < window {
        let t = Instant::now();
        let list = list_agents(&admin).await?;
        list_times.push(t.elapsed());
        for a in list {
            let v = seen.entry(a.agent_id).or_default();
            if v.last() != Some(&a.last_heartbeat) {
                v.push(a.last_heartbeat);
            }
        }
        tokio::time::sleep(Duration::from_millis(1000).saturating_sub(t.elapsed())).await;
    }
    let mut gaps: Vec<Duration> = seen
        .values()
        .flat_map(|v| v.windows(2).filter_map(|w| w[1].duration_since(w[0]).ok()))
        .collect();
    gaps.sort();
    list_times.sort();
    eprintln!(
        "heartbeat gaps: {} observed, p50 {} p99 {} max {}; agents list of {n}: p50 {}",
        gaps.len(),
        ms(pct(&gaps, 0.5)),
        ms(pct(&gaps, 0.99)),
        ms(pct(&gaps, 1.0)),
        ms(pct(&list_times, 0.5))
    );

    // ------------------------------------------------ calls
    let mut call_rtt = Vec::new();
    let mut call_e2e = Vec::new();
    let mut call_errors = 0usize;
    let mut call_cpu = 0.0;
    let mut first_error = None;
    if args.calls_per_second > 0 && args.calls_seconds > 0 {
        let total = (args.calls_per_second as u64 * args.calls_seconds) as usize;
        let period = Duration::from_secs_f64(1.0 / args.calls_per_second as f64);
        let ids: Arc<Vec<String>> = Arc::new(specs.iter().map(|s| s.id.clone()).collect());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let c0 = proc_sample(cp.pid())?;
        let calls_start = Instant::now();
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for k in 0..total {
            tick.tick().await;
            let id = ids[(k * 7919 + (k >> 3)) % ids.len()].clone();
            let admin = admin.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = admin_ping(&admin, &id).await;
                let _ = tx.send((r, t.elapsed()));
            });
        }
        drop(tx);
        while let Some((r, e2e)) = rx.recv().await {
            match r {
                Ok(rtt) => {
                    call_rtt.push(rtt);
                    call_e2e.push(e2e);
                }
                Err(e) => {
                    call_errors += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        let elapsed = calls_start.elapsed();
        let c1 = proc_sample(cp.pid())?;
        call_cpu = (c1.cpu_ticks - c0.cpu_ticks) as f64 / ticks / elapsed.as_secs_f64() * 100.0;
        call_rtt.sort();
        call_e2e.sort();
        eprintln!(
            "calls: {} ok, {call_errors} failed ({first_error:?}) in {}; rtt p50 {} p99 {}; admin request p50 {} p99 {}; cp cpu {call_cpu:.0}%",
            call_rtt.len(), secs(elapsed), ms(pct(&call_rtt, 0.5)), ms(pct(&call_rtt, 0.99)),
            ms(pct(&call_e2e, 0.5)), ms(pct(&call_e2e, 0.99))
        );
    }

    // ------------------------------------------------ reconnect storm
    let mut storm = None;
    if args.storm {
        let downs_before = tracker.downs.lock().unwrap().len();
        let killed = Instant::now();
        cp.kill9()?;
        let restarted = cp.start()?;
        let listening = restarted.elapsed();
        let limit = Duration::from_secs(300);
        let back = wait_for(limit, || {
            let ups = tracker.ups.lock().unwrap();
            let mut seen = vec![false; n];
            let mut count = 0;
            for (t, i, _) in ups.iter() {
                if *t >= killed && !seen[*i] {
                    seen[*i] = true;
                    count += 1;
                }
            }
            count >= n
        })
        .await;
        let all_back = restarted.elapsed();
        let ups = tracker.ups.lock().unwrap().clone();
        let (buckets, times, tr) = per_second(&ups, restarted, n);
        if !back {
            bail!(
                "after the restart only {} of {n} agents came back within {}",
                times.len(),
                secs(limit)
            );
        }
        let failed = tracker.downs.lock().unwrap().len() - downs_before;
        let (storm_log, _) = handshake_log(&log_path, log_offset);
        let after = proc_sample(cp.pid())?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let settled = proc_sample(cp.pid())?;
        let listed = list_agents(&admin).await?.len();
        eprintln!(
            "storm: kill→restart {} ; all {n} back {} after the restart; p50 {} p90 {} p99 {}; per second {buckets:?}; {failed} failed/lost dial rounds; {tr:?}; control plane log: {storm_log:?}; rss {} (hwm {}), {} 5 s later; listed {listed}",
            ms(restarted.duration_since(killed)), secs(all_back), secs(pct(&times, 0.5)), secs(pct(&times, 0.9)),
            secs(pct(&times, 0.99)), mib(after.rss_kib), mib(after.hwm_kib), mib(settled.rss_kib)
        );
        storm = Some((
            listening, all_back, times, buckets, failed, tr, after, settled, storm_log,
        ));
    }

    // ------------------------------------------------ table
    let mode = match args.transport {
        TransportMode::Auto => "auto (QUIC first)",
        TransportMode::QuicOnly => "QUIC only",
        TransportMode::TcpOnly => "TLS over TCP only",
    };
    println!();
    let slots = args.max_concurrent_handshakes.map_or_else(
        || {
            format!(
                "{} (default)",
                tunnel::server::DEFAULT_MAX_CONCURRENT_HANDSHAKES
            )
        },
        |m| m.to_string(),
    );
    let sockets = match args.endpoints {
        0 => "a QUIC endpoint per dial".to_owned(),
        e => format!("{e} shared QUIC endpoints"),
    };
    println!("bench-agents: {n} agents ({sockets}, {} calls at once each), transport {mode}, heartbeat {} s, max_concurrent_handshakes {slots}, one control-plane serve (release) on loopback, {} cores; load average (1/5/15 min) {load_start} at start, {} at the end", args.agent_streams, args.heartbeat_seconds, std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), loadavg());
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| agents connected (cold start, all started at once) | {n} in {} ({} failed dial rounds; per second {:?}; by transport {:?}) |", secs(connect_all), cold_failed, cold_buckets, cold_tr);
    println!("| control plane log, cold start: handshakes timed out · failed · refused (no slot) | {} · {} · ≥ {} |", cold_log.timed_out, cold_log.failed, cold_log.refused);
    println!(
        "| control plane RSS at start, no agent | {} |",
        mib(started_rss.rss_kib)
    );
    println!(
        "| control plane RSS, {n} connected, idle | {} ({:.1} KiB per agent; peak so far {}) |",
        mib(z.rss_kib),
        per_agent_kib,
        mib(z.hwm_kib)
    );
    println!("| control plane CPU, idle with {n} connected | {idle_cpu:.1} % of one core (over {} s; {} threads, {} fds) |", args.idle_seconds, z.threads, z.fds);
    println!(
        "| bench process (all agents) CPU, idle | {bench_cpu:.1} % of one core (RSS {}) |",
        mib(b1.rss_kib)
    );
    println!("| heartbeat gap at the control plane (interval {} s) | p50 {} · p99 {} · max {} ({} gaps) |", args.heartbeat_seconds, ms(pct(&gaps, 0.5)), ms(pct(&gaps, 0.99)), ms(pct(&gaps, 1.0)), gaps.len());
    println!(
        "| `GET /v1/agents` with {n} agents (admin socket) | p50 {} · max {} |",
        ms(pct(&list_times, 0.5)),
        ms(pct(&list_times, 1.0))
    );
    if !call_rtt.is_empty() || call_errors > 0 {
        println!("| ping call, {} calls/s for {} s to random agents: round trip at the control plane | p50 {} · p99 {} ({} ok, {call_errors} failed) |", args.calls_per_second, args.calls_seconds, ms(pct(&call_rtt, 0.5)), ms(pct(&call_rtt, 0.99)), call_rtt.len());
        println!("| same, whole admin request (connect, HTTP, call, answer) | p50 {} · p99 {} (control plane CPU {call_cpu:.0} % of one core) |", ms(pct(&call_e2e, 0.5)), ms(pct(&call_e2e, 0.99)));
    }
    if let Some((listening, all_back, times, buckets, failed, tr, after, settled, storm_log)) =
        &storm
    {
        println!(
            "| reconnect storm: SIGKILL, restart at once; listening after | {} |",
            ms(*listening)
        );
        println!("| all {n} back, from the restart | {} |", secs(*all_back));
        println!(
            "| per-agent reconnect time from the restart | p10 {} · p50 {} · p90 {} · p99 {} |",
            secs(pct(times, 0.1)),
            secs(pct(times, 0.5)),
            secs(pct(times, 0.9)),
            secs(pct(times, 0.99))
        );
        let peak = buckets.iter().max().copied().unwrap_or(0);
        println!("| connections accepted per second (peak · each second) | {peak} · {buckets:?} |");
        println!("| failed dial rounds during the storm; transports after | {failed}; {tr:?} |");
        println!("| control plane log, storm: handshakes timed out · failed · refused (no slot) | {} · {} · ≥ {} |", storm_log.timed_out, storm_log.failed, storm_log.refused);
        println!(
            "| control plane RSS after the storm (peak · 5 s later) | {} · {} |",
            mib(after.hwm_kib),
            mib(settled.rss_kib)
        );
    }
    println!();

    cp.terminate();
    drop(handles);
    Ok(())
}
