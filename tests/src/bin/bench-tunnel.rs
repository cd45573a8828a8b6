//! `bench-tunnel`: one run, one table. Echo round trips (p50/p99, calls/s)
//! at concurrency 1 and 64 over QUIC and over the TCP fallback, beside a
//! plain loopback TCP echo (the floor); bulk transfer of 100 MiB over each;
//! the idle RSS of a real `sandbox-agent run`; the agent's binary size.
//!
//! The control plane runs in this process (the same `App` as
//! `control-plane serve`); the agents are the real release binaries.
//!
//! ```text
//! cargo build --release -p control-plane -p sandbox-agent -p airlock-tests --bin bench-tunnel
//! target/release/bench-tunnel
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use airlock_tests::deploy::{Agent, AgentOptions, ControlPlane, CpOptions, InProcessControlPlane};
use anyhow::{Context, Result};
use bytes::Bytes;
use control_plane::gateway::{GatewayHandle, Target};
use protocol::{Reply, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Time `n` runs of the block `op`, one after another (a macro: the block
/// borrows the task's connection mutably across awaits).
macro_rules! time_each {
    ($n:expr, $op:block) => {{
        let mut lat = Vec::with_capacity($n);
        for _ in 0..$n {
            let t = Instant::now();
            $op
            lat.push(t.elapsed());
        }
        lat
    }};
}

const SMALL: usize = 64;
const CALLS_C1: usize = 2_000;
/// c=1 runs in this many interleaved rounds of CALLS_C1 / ROUNDS calls per path.
const ROUNDS: usize = 10;
const CALLS_C64: usize = 12_800;
const BULK: usize = 100 << 20;

struct Row {
    path: &'static str,
    c1: (Duration, Duration, f64),
    c64: (Duration, Duration, f64),
    bulk_mb_s: f64,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summarize(mut lat: Vec<Duration>, elapsed: Duration) -> (Duration, Duration, f64) {
    lat.sort();
    let n = lat.len() as f64;
    (pct(&lat, 0.50), pct(&lat, 0.99), n / elapsed.as_secs_f64())
}

// ---- plain loopback TCP echo: the floor ----

/// The floor's echo server runs in a separate process (this binary with
/// `--tcp-echo-server`), as the agent does, so both paths cross processes.
async fn serve_tcp_echo() -> Result<()> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", l.local_addr()?);
    while let Ok((mut s, _)) = l.accept().await {
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
    Ok(())
}

struct EchoProcess(std::process::Child);

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tcp_echo_process() -> Result<(EchoProcess, std::net::SocketAddr)> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--tcp-echo-server")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let addr = line.trim().parse()?;
    Ok((EchoProcess(child), addr))
}

async fn tcp_rtt(addr: std::net::SocketAddr, calls: usize, conc: usize) -> Vec<Duration> {
    on_tasks(conc, move || async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let msg = [7u8; SMALL];
        let mut buf = [0u8; SMALL];
        time_each!(calls / conc, {
            s.write_all(&msg).await.unwrap();
            s.read_exact(&mut buf).await.unwrap();
        })
    })
    .await
}

/// Run `task` on `conc` spawned tasks; their latencies, together.
async fn on_tasks<F, Fut>(conc: usize, task: F) -> Vec<Duration>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<Duration>> + Send + 'static,
{
    let tasks: Vec<_> = (0..conc).map(|_| tokio::spawn(task())).collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    lat
}

async fn tcp_bulk(addr: std::net::SocketAddr) -> f64 {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (mut r, mut w) = s.into_split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = vec![1u8; 1 << 20];
        for _ in 0..BULK / chunk.len() {
            w.write_all(&chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    while got < BULK {
        let n = r.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got += n;
    }
    writer.await.unwrap();
    BULK as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
}

// ---- bare quinn echo: the QUIC library alone ----

/// A quinn server in a separate process (this binary with
/// `--quic-echo-server`): every bidirectional stream is echoed back, no
/// framing, no Airlock code. It prints its address and its self-signed
/// certificate (hex DER) for the client to trust.
async fn serve_quic_echo() -> Result<()> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let der = cert.cert.der().to_vec();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![der.clone().into()], key)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let config = quinn::ServerConfig::with_crypto(std::sync::Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse()?)?;
    println!("{} {}", endpoint.local_addr()?, hex(&der));
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut recv, &mut send).await;
                    let _ = send.finish();
                    let _ = send.stopped().await;
                });
            }
        });
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2).context("odd hex")?, 16).map_err(Into::into))
        .collect()
}

async fn quic_echo_connect() -> Result<(EchoProcess, quinn::Endpoint, quinn::Connection)> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--quic-echo-server")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let process = EchoProcess(child);
    let (addr, cert) = line
        .trim()
        .split_once(' ')
        .context("quic echo server line")?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(unhex(cert)?.into())?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    let conn = endpoint.connect(addr.parse()?, "localhost")?.await?;
    Ok((process, endpoint, conn))
}

async fn quic_echo_once(conn: &quinn::Connection, payload: &[u8]) -> usize {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let send_all = async {
        send.write_all(payload).await.unwrap();
        send.finish().unwrap();
    };
    let ((), back) = tokio::join!(send_all, recv.read_to_end(usize::MAX));
    back.unwrap().len()
}

async fn quic_rtt(conn: &quinn::Connection, calls: usize, conc: usize) -> Vec<Duration> {
    on_tasks(conc, || {
        let conn = conn.clone();
        async move {
            let msg = [7u8; SMALL];
            time_each!(calls / conc, {
                assert_eq!(quic_echo_once(&conn, &msg).await, SMALL);
            })
        }
    })
    .await
}

async fn quic_bulk(conn: &quinn::Connection) -> f64 {
    let payload = vec![3u8; BULK];
    let started = Instant::now();
    assert_eq!(quic_echo_once(conn, &payload).await, BULK);
    BULK as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
}

// ---- one interface over the paths ----

/// A path an echo can take.
enum Path {
    Tcp(std::net::SocketAddr),
    Quic(quinn::Connection),
    Tunnel(GatewayHandle, Target),
}

impl Path {
    /// Round-trip latencies of `calls` echoes over `conc` concurrent tasks.
    async fn latencies(&self, calls: usize, conc: usize) -> Vec<Duration> {
        match self {
            Path::Tcp(addr) => tcp_rtt(*addr, calls, conc).await,
            Path::Quic(conn) => quic_rtt(conn, calls, conc).await,
            Path::Tunnel(gw, target) => tunnel_rtt(gw, target, calls, conc).await,
        }
    }

    async fn bulk(&self) -> f64 {
        match self {
            Path::Tcp(addr) => tcp_bulk(*addr).await,
            Path::Quic(conn) => quic_bulk(conn).await,
            Path::Tunnel(gw, target) => tunnel_bulk(gw, target).await,
        }
    }
}

// ---- tunnel echo ----

/// A small echo the way production calls go: request, data and the end of
/// input in one write, then read the reply.
async fn echo_small(gw: &GatewayHandle, target: &Target, payload: Bytes) -> usize {
    let (_, mut call) = gw
        .call_finished(target, &Request::Echo, payload)
        .await
        .unwrap();
    let (back, response) = call.call.receiver.collect().await.unwrap();
    assert!(
        matches!(response, Response::Ok(Reply::Echo(_))),
        "{response:?}"
    );
    back.len()
}

/// A streamed echo: data sent while the echo streams back (bulk).
async fn echo_once(gw: &GatewayHandle, target: &Target, payload: Bytes) -> usize {
    let (_, mut call) = gw.call(target, &Request::Echo).await.unwrap();
    let tunnel::Call { sender, receiver } = &mut call.call;
    let send = async {
        sender.send_data(payload).await.unwrap();
        sender.finish().unwrap();
    };
    let recv = receiver.collect();
    let ((), r) = tokio::join!(send, recv);
    let (back, response) = r.unwrap();
    assert!(
        matches!(response, Response::Ok(Reply::Echo(_))),
        "{response:?}"
    );
    back.len()
}

async fn tunnel_rtt(
    gw: &GatewayHandle,
    target: &Target,
    calls: usize,
    conc: usize,
) -> Vec<Duration> {
    on_tasks(conc, || {
        let (gw, target) = (gw.clone(), target.clone());
        async move {
            let payload = Bytes::from(vec![7u8; SMALL]);
            time_each!(calls / conc, {
                assert_eq!(echo_small(&gw, &target, payload.clone()).await, SMALL);
            })
        }
    })
    .await
}

async fn tunnel_bulk(gw: &GatewayHandle, target: &Target) -> f64 {
    let payload = Bytes::from(vec![3u8; BULK]);
    let started = Instant::now();
    assert_eq!(echo_once(gw, target, payload).await, BULK);
    BULK as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// The echo servers run on a single-threaded runtime, as `sandbox-agent run`
/// does, so every server side of the table has the same runtime shape; the
/// client side (this process, with the control plane) has two workers.
fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--tcp-echo-server") {
        return single_threaded()?.block_on(serve_tcp_echo());
    }
    if std::env::args().any(|a| a == "--quic-echo-server") {
        return single_threaded()?.block_on(serve_quic_echo());
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(bench())
}

fn single_threaded() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn bench() -> Result<()> {
    if std::env::var_os("AIRLOCK_BIN_DIR").is_none() {
        let exe = std::env::current_exe()?;
        let dir = exe.parent().map(PathBuf::from).context("binary dir")?;
        std::env::set_var("AIRLOCK_BIN_DIR", dir);
    }
    let bin_dir = airlock_tests::deploy::bin_dir();
    let cp = ControlPlane::configure(CpOptions {
        heartbeat_interval_seconds: 5.0,
        ..Default::default()
    })?;
    let app = InProcessControlPlane::start(&cp).await?;
    let gw = app.gateway().clone();

    let quiet = vec![("RUST_LOG".to_owned(), "warn".to_owned())];
    let mut quic = Agent::enroll(
        &cp,
        &cp.join_string("bench")?,
        AgentOptions {
            tunnel_toml: "transport = \"quic\"\n".into(),
            env: quiet.clone(),
            ..Default::default()
        },
    )?;
    let mut tcp = Agent::enroll(
        &cp,
        &cp.join_string("bench")?,
        AgentOptions {
            tunnel_toml: "transport = \"tcp\"\n".into(),
            env: quiet,
            ..Default::default()
        },
    )?;
    quic.run()?;
    tcp.run()?;
    let limit = Duration::from_secs(30);
    app.wait_connected(quic.agent_id(), limit).await?;
    app.wait_connected(tcp.agent_id(), limit).await?;

    // idle RSS: connected, heartbeating, nothing else, for a few seconds
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss_quic = quic.pid().and_then(vm_rss_kib).unwrap_or(0);
    let idle_rss_tcp = tcp.pid().and_then(vm_rss_kib).unwrap_or(0);
    let agent_bin = bin_dir.join("sandbox-agent");
    let bin_size = std::fs::metadata(&agent_bin).map(|m| m.len()).unwrap_or(0);

    let (_floor_process, floor_addr) = tcp_echo_process()?;
    let (_quic_process, _quic_endpoint, bare) = quic_echo_connect().await?;
    // warm up every path
    tcp_rtt(floor_addr, 200, 1).await;
    quic_rtt(&bare, 200, 1).await;
    let tq = Target::Agent(quic.agent_id().to_owned());
    let tt = Target::Agent(tcp.agent_id().to_owned());
    tunnel_rtt(&gw, &tq, 200, 1).await;
    tunnel_rtt(&gw, &tt, 200, 1).await;
    // Profiling aid: `AIRLOCK_BENCH_ONLY=quic|tcp|bare|floor N` runs N c=1
    // round trips on that path alone, prints their p50 and exits (so a
    // profiler attached to the run sees nothing else).
    if let Ok(only) = std::env::var("AIRLOCK_BENCH_ONLY") {
        let mut words = only.split_whitespace();
        let path = match words.next() {
            Some("quic") => Path::Tunnel(gw.clone(), tq.clone()),
            Some("tcp") => Path::Tunnel(gw.clone(), tt.clone()),
            Some("bare") => Path::Quic(bare.clone()),
            _ => Path::Tcp(floor_addr),
        };
        let n = words.next().and_then(|w| w.parse().ok()).unwrap_or(20_000);
        let started = Instant::now();
        let (p50, p99, rate) = summarize(path.latencies(n, 1).await, started.elapsed());
        println!(
            "{only}: c1 p50 {} ms, p99 {} ms, {rate:.0} calls/s",
            ms(p50),
            ms(p99)
        );
        drop(quic);
        drop(tcp);
        app.stop().await;
        return Ok(());
    }

    // c=1 latency is measured in interleaved rounds (every path in turn,
    // ROUNDS times) so that a change in machine load moves the floor and the
    // tunnels alike and the p50 ratios stay comparable.
    let paths = [
        Path::Tcp(floor_addr),
        Path::Quic(bare.clone()),
        Path::Tunnel(gw.clone(), tq.clone()),
        Path::Tunnel(gw.clone(), tt.clone()),
    ];
    let names = [
        "plain TCP echo (floor)",
        "bare quinn stream echo",
        "tunnel QUIC",
        "tunnel TCP+TLS+h2",
    ];
    let mut c1_lat: Vec<Vec<Duration>> = vec![Vec::new(); paths.len()];
    let mut c1_time = vec![Duration::ZERO; paths.len()];
    for _ in 0..ROUNDS {
        for (i, p) in paths.iter().enumerate() {
            let started = Instant::now();
            c1_lat[i].extend(p.latencies(CALLS_C1 / ROUNDS, 1).await);
            c1_time[i] += started.elapsed();
        }
    }
    let mut rows = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let started = Instant::now();
        let c64 = summarize(p.latencies(CALLS_C64, 64).await, started.elapsed());
        rows.push(Row {
            path: names[i],
            c1: summarize(std::mem::take(&mut c1_lat[i]), c1_time[i]),
            c64,
            bulk_mb_s: p.bulk().await,
        });
    }
    let busy_rss_quic = quic.pid().and_then(vm_rss_kib).unwrap_or(0);

    let floor_p50 = rows[0].c1.0;
    println!();
    println!("bench-tunnel: {SMALL}-byte echo round trips (c=1: {CALLS_C1} calls per path in {ROUNDS} interleaved rounds, c=64: {CALLS_C64} calls over 64 tasks);");
    println!("bulk: {} MiB sent and echoed back at once (MB/s = MiB each way per second; twice that crosses the link)", BULK >> 20);
    println!("floor: plain loopback TCP echo to a separate process; bare quinn: one quinn stream per call to a separate process (no Airlock code, reference);");
    println!("tunnel: calls from the in-process control plane to a real `sandbox-agent run`");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {} cores, load average {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{:<24} {:>10} {:>10} {:>11} {:>10} {:>10} {:>11} {:>10} {:>9}",
        "path",
        "c1 p50 ms",
        "c1 p99 ms",
        "c1 calls/s",
        "c64 p50",
        "c64 p99",
        "c64 calls/s",
        "bulk MB/s",
        "p50/floor"
    );
    for r in &rows {
        println!(
            "{:<24} {:>10} {:>10} {:>11.0} {:>10} {:>10} {:>11.0} {:>10.1} {:>8.2}x",
            r.path,
            ms(r.c1.0),
            ms(r.c1.1),
            r.c1.2,
            ms(r.c64.0),
            ms(r.c64.1),
            r.c64.2,
            r.bulk_mb_s,
            r.c1.0.as_secs_f64() / floor_p50.as_secs_f64()
        );
    }
    println!();
    println!("agent idle RSS (VmRSS of `sandbox-agent run`, connected, idle 3 s): quic {:.1} MiB, tcp {:.1} MiB (after the load: quic {:.1} MiB)", idle_rss_quic as f64 / 1024.0, idle_rss_tcp as f64 / 1024.0, busy_rss_quic as f64 / 1024.0);
    println!(
        "agent binary size ({}): {:.1} MiB",
        agent_bin.display(),
        bin_size as f64 / (1 << 20) as f64
    );
    println!("targets: p50 within 3x of plain TCP; >= 200 MB/s bulk over QUIC; idle RSS <= 15 MiB");

    drop(quic);
    drop(tcp);
    app.stop().await;
    Ok(())
}
