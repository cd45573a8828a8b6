//! bench-sessions: 1,000 concurrent sessions through the public API of a
//! real `control-plane serve` (release build, SQLite in its data dir) with
//! the fake model.
//!
//! Each row starts a control plane, creates N sessions (one agent, one
//! environment), opens one SSE stream per session, then POSTs one
//! `user.message` to every session at once, T turns in a row per session.
//! Measured per turn: from the POST to the session's
//! `session.status_idle` (`end_turn`) on its stream; events/s counts every
//! SSE event the N clients received (pings excluded) over the wall time
//! from the first POST to the last idle.
//!
//! Also per row, of the control-plane process: CPU seconds (user + system)
//! from the first POST to the last idle, and its peak RSS (`VmHWM`).
//!
//! Rows: the fake model answering at once, and after 1.5 s (the issue's
//! scenario), each with the default `[harness.supervisor]
//! max_concurrent_wakes` and with it raised to N (`--wakes 64,256,N`
//! picks the values: `default` or numbers; `--latencies 0,1500` the model's
//! delays in ms).
//!
//! Run: `cargo build --release -p control-plane --bin control-plane &&
//! cargo build --release -p airlock-tests --bin bench-sessions && ulimit -n
//! 65536 && target/release/bench-sessions` (the first build matters: a
//! `--bin bench-sessions` build does not rebuild the `control-plane`
//! binary the bench starts) (`--quick`: 100 sessions;
//! `--sessions N`, `--turns T`). Each session holds two connections (its
//! stream and its POSTs), so the open file limit must be above 2 N + 100
//! for the bench and for the control plane (which inherits it): checked
//! at start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_tests::bench_client::PublicApi;
use airlock_tests::deploy::{ControlPlane, CpOptions};
use airlock_tests::fake_model::{FakeModel, Reply, RequestCtx};
use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use tokio::task::JoinSet;

const WAIT: Duration = Duration::from_secs(300);

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

fn arg_str(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn arg(name: &str) -> Option<usize> {
    arg_str(name).and_then(|v| v.parse().ok())
}

/// A comma-separated list of numbers, `default` giving `None`.
fn list(name: &str, text: &str) -> Result<Vec<Option<usize>>> {
    text.split(',')
        .map(|v| match v.trim() {
            "default" => Ok(None),
            n => n
                .parse()
                .map(Some)
                .with_context(|| format!("{name}: `{n}` is not a number or `default`")),
        })
        .collect()
}

/// CPU time (user + system, clock ticks) and peak RSS (KiB) of `pid`.
fn proc_sample(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("VmHWM in /proc/<pid>/status")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After `(comm) `: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').context("/proc/<pid>/stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks =
        f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    Ok((ticks, hwm))
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The open file limit (soft) of this process.
fn nofile() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
}

struct Row {
    latency_ms: u64,
    wakes: String,
    sessions: usize,
    turns: usize,
    events: usize,
    elapsed: Duration,
    lat: Vec<Duration>,
    cpu_s: f64,
    hwm_mib: f64,
}

async fn run(
    latency: Duration,
    max_wakes: Option<usize>,
    sessions: usize,
    turns: usize,
) -> Result<Row> {
    let model = FakeModel::builder()
        .latency(latency)
        .start(|req: &RequestCtx| Reply::text(format!("answer {}", req.n)))
        .await
        .map_err(|e| anyhow!("fake model: {e}"))?;
    let wakes = max_wakes
        .map(|n| format!("\n[harness.supervisor]\nmax_concurrent_wakes = {n}\n"))
        .unwrap_or_default();
    let mut cp = ControlPlane::configure(CpOptions {
        extra_toml: format!(
            "\n[model]\nbase_url = \"{}\"\napi_key = \"bench-key\"\n{wakes}",
            model.base_url()
        ),
        ..CpOptions::default()
    })?;
    let key: Value = serde_json::from_str(
        cp.cli(&["api-keys", "create", "--name", "bench", "--json"])?
            .trim(),
    )?;
    let key = key["key"].as_str().context("api key")?.to_owned();
    cp.start()?;
    let api = Arc::new(PublicApi::new(cp.api_addr(), &key));
    let (agent, env) = api.agent_and_environment("bench-sessions").await?;
    let mut ids = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        ids.push(api.session(&agent, &env).await?);
    }
    let mut streams = Vec::with_capacity(sessions);
    for id in &ids {
        streams.push(api.stream(id, 0).await?);
    }
    let go = Arc::new(tokio::sync::Barrier::new(sessions + 1));
    let mut set = JoinSet::new();
    for (sid, mut stream) in ids.into_iter().zip(streams) {
        let (api, go) = (api.clone(), go.clone());
        set.spawn(async move {
            go.wait().await;
            let mut lat = Vec::with_capacity(turns);
            let mut events = 0usize;
            for t in 0..turns {
                let t0 = Instant::now();
                api.user_message(&sid, &format!("turn {t}")).await?;
                // This turn's idle comes after its `status_running`.
                let mut running = false;
                loop {
                    let (name, data) = stream
                        .next(WAIT)
                        .await?
                        .with_context(|| format!("stream of {sid} ended"))?;
                    events += 1;
                    running |= name == "session.status_running";
                    if running && name == "session.status_idle" {
                        let reason = data["stop_reason"]["type"].as_str().unwrap_or_default();
                        if reason == "end_turn" {
                            break;
                        }
                        anyhow::bail!("{sid} went idle with {reason}: {data}");
                    }
                }
                lat.push(t0.elapsed());
            }
            Ok::<_, anyhow::Error>((lat, events))
        });
    }
    let pid = cp.pid().context("control plane pid")?;
    let (ticks0, _) = proc_sample(pid)?;
    go.wait().await;
    let started = Instant::now();
    let (mut lat, mut events) = (Vec::new(), 0);
    while let Some(r) = set.join_next().await {
        let (l, e) = r??;
        lat.extend(l);
        events += e;
    }
    let elapsed = started.elapsed();
    let (ticks1, hwm_kib) = proc_sample(pid)?;
    cp.terminate()?;
    lat.sort();
    Ok(Row {
        latency_ms: latency.as_millis() as u64,
        wakes: max_wakes.map(|n| n.to_string()).unwrap_or_else(|| {
            format!(
                "default {}",
                harness::HarnessConfig::default()
                    .supervisor
                    .max_concurrent_wakes
            )
        }),
        sessions,
        turns,
        events,
        elapsed,
        lat,
        cpu_s: (ticks1 - ticks0) as f64 / clock_ticks(),
        hwm_mib: hwm_kib as f64 / 1024.0,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let sessions = arg("--sessions").unwrap_or(if quick { 100 } else { 1000 });
    let turns = arg("--turns").unwrap_or(2);
    if std::env::var_os("AIRLOCK_BIN_DIR").is_none() {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join("target")
            });
        std::env::set_var("AIRLOCK_BIN_DIR", target.join("release"));
    }
    let wakes = list(
        "--wakes",
        &arg_str("--wakes").unwrap_or_else(|| format!("default,{sessions}")),
    )?;
    let latencies = list(
        "--latencies",
        &arg_str("--latencies").unwrap_or("0,1500".into()),
    )?;
    if let Some(limit) = nofile() {
        let need = 2 * sessions as u64 + 100;
        if limit < need {
            anyhow::bail!(
                "the open file limit is {limit}; {sessions} sessions need at least {need} (`ulimit -n 65536`)"
            );
        }
    }
    let mut rows = Vec::new();
    for latency in &latencies {
        let latency = Duration::from_millis(latency.unwrap_or(0) as u64);
        for w in &wakes {
            let row = run(latency, *w, sessions, turns).await?;
            eprintln!(
                "done: model {} ms, wakes {}: {:.1} s",
                row.latency_ms,
                row.wakes,
                row.elapsed.as_secs_f64()
            );
            rows.push(row);
        }
    }
    println!(
        "bench-sessions: control-plane serve (release, SQLite, RUST_LOG=info,control_plane=debug,tunnel=debug to a file), sessions driven through the public API (HTTP/1.1 + SSE on loopback), {} cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!();
    println!(
        "| {:>8} | {:>10} | {:>8} | {:>5} | {:>8} | {:>6} | {:>8} | {:>14} | {:>14} | {:>8} | {:>8} | {:>12} |",
        "model ms",
        "max wakes",
        "sessions",
        "turns",
        "events",
        "wall s",
        "events/s",
        "POST->idle p50",
        "POST->idle p99",
        "max ms",
        "CP CPU s",
        "CP peak RSS"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|",
        "-".repeat(10),
        "-".repeat(12),
        "-".repeat(10),
        "-".repeat(7),
        "-".repeat(10),
        "-".repeat(8),
        "-".repeat(10),
        "-".repeat(16),
        "-".repeat(16),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(14)
    );
    for r in &rows {
        println!(
            "| {:>8} | {:>10} | {:>8} | {:>5} | {:>8} | {:>6.1} | {:>8.0} | {:>11.0} ms | {:>11.0} ms | {:>8.0} | {:>8.1} | {:>8.0} MiB |",
            r.latency_ms,
            r.wakes,
            r.sessions,
            r.turns,
            r.events,
            r.elapsed.as_secs_f64(),
            r.events as f64 / r.elapsed.as_secs_f64(),
            pct(&r.lat, 0.5),
            pct(&r.lat, 0.99),
            pct(&r.lat, 1.0),
            r.cpu_s,
            r.hwm_mib
        );
    }
    println!();
    println!("events = SSE events received by all clients (pings excluded) up to each turn's idle; each session's turns run one after another, all sessions at once; CP CPU s = the control plane's user + system time over the wall time; one control plane per row.");
    Ok(())
}
