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

const SMALL: usize = 64;
const CALLS_C1: usize = 2_000;
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

async fn tcp_rtt(
    addr: std::net::SocketAddr,
    calls: usize,
    conc: usize,
) -> (Duration, Duration, f64) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            let msg = [7u8; SMALL];
            let mut buf = [0u8; SMALL];
            let mut lat = Vec::with_capacity(calls / conc);
            for _ in 0..calls / conc {
                let t = Instant::now();
                s.write_all(&msg).await.unwrap();
                s.read_exact(&mut buf).await.unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    summarize(lat, started.elapsed())
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

// ---- tunnel echo ----

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
) -> (Duration, Duration, f64) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let gw = gw.clone();
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let payload = Bytes::from(vec![7u8; SMALL]);
            let mut lat = Vec::with_capacity(calls / conc);
            for _ in 0..calls / conc {
                let t = Instant::now();
                assert_eq!(echo_once(&gw, &target, payload.clone()).await, SMALL);
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    summarize(lat, started.elapsed())
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--tcp-echo-server") {
        return serve_tcp_echo().await;
    }
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
    // warm up every path
    tcp_rtt(floor_addr, 200, 1).await;
    let tq = Target::Agent(quic.agent_id().to_owned());
    let tt = Target::Agent(tcp.agent_id().to_owned());
    tunnel_rtt(&gw, &tq, 200, 1).await;
    tunnel_rtt(&gw, &tt, 200, 1).await;

    let mut rows = Vec::new();
    rows.push(Row {
        path: "plain TCP echo (floor)",
        c1: tcp_rtt(floor_addr, CALLS_C1, 1).await,
        c64: tcp_rtt(floor_addr, CALLS_C64, 64).await,
        bulk_mb_s: tcp_bulk(floor_addr).await,
    });
    for (path, target) in [("tunnel QUIC", &tq), ("tunnel TCP+TLS+h2", &tt)] {
        rows.push(Row {
            path,
            c1: tunnel_rtt(&gw, target, CALLS_C1, 1).await,
            c64: tunnel_rtt(&gw, target, CALLS_C64, 64).await,
            bulk_mb_s: tunnel_bulk(&gw, target).await,
        });
    }
    let busy_rss_quic = quic.pid().and_then(vm_rss_kib).unwrap_or(0);

    let floor_p50 = rows[0].c1.0;
    println!();
    println!("bench-tunnel: {SMALL}-byte echo round trips (c=1: {CALLS_C1} calls, c=64: {CALLS_C64} calls over 64 tasks);");
    println!("bulk: {} MiB sent and echoed back at once (MB/s = MiB each way per second; twice that crosses the link)", BULK >> 20);
    println!("floor: plain loopback TCP echo to a separate process; tunnel: calls from the in-process control plane to a real `sandbox-agent run`");
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
