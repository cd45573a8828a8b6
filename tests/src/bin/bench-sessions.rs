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
//! Rows: the fake model answering at once, and after 1.5 s (the issue's
//! scenario), each with the default `[harness.supervisor]
//! max_concurrent_wakes` and with it raised to N.
//!
//! Run: `cargo build --release -p control-plane && ulimit -n 65536 &&
//! cargo run --release -p airlock-tests --bin bench-sessions`
//! (`--quick`: 100 sessions; `--sessions N`, `--turns T`). Each session
//! holds two connections (its stream and its POSTs), so the open file limit
//! must be well above 2 N for the bench and the control plane.

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

fn arg(name: &str) -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
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
    go.wait().await;
    let started = Instant::now();
    let (mut lat, mut events) = (Vec::new(), 0);
    while let Some(r) = set.join_next().await {
        let (l, e) = r??;
        lat.extend(l);
        events += e;
    }
    let elapsed = started.elapsed();
    cp.terminate()?;
    lat.sort();
    Ok(Row {
        latency_ms: latency.as_millis() as u64,
        wakes: max_wakes
            .map(|n| n.to_string())
            .unwrap_or_else(|| "default".into()),
        sessions,
        turns,
        events,
        elapsed,
        lat,
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
    let mut rows = Vec::new();
    for (latency, wakes) in [
        (Duration::ZERO, None),
        (Duration::ZERO, Some(sessions)),
        (Duration::from_millis(1500), None),
        (Duration::from_millis(1500), Some(sessions)),
    ] {
        let row = run(latency, wakes, sessions, turns).await?;
        eprintln!(
            "done: model {} ms, wakes {}: {:.1} s",
            row.latency_ms,
            row.wakes,
            row.elapsed.as_secs_f64()
        );
        rows.push(row);
    }
    println!(
        "bench-sessions: control-plane serve (release, SQLite), sessions driven through the public API (HTTP/1.1 + SSE on loopback), {} cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!();
    println!(
        "| {:>8} | {:>10} | {:>8} | {:>5} | {:>8} | {:>8} | {:>9} | {:>13} | {:>13} | {:>13} |",
        "model ms",
        "max wakes",
        "sessions",
        "turns",
        "events",
        "wall s",
        "events/s",
        "POST->idle p50",
        "POST->idle p99",
        "max ms"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|",
        "-".repeat(10),
        "-".repeat(12),
        "-".repeat(10),
        "-".repeat(7),
        "-".repeat(10),
        "-".repeat(10),
        "-".repeat(11),
        "-".repeat(15),
        "-".repeat(15),
        "-".repeat(15)
    );
    for r in &rows {
        println!(
            "| {:>8} | {:>10} | {:>8} | {:>5} | {:>8} | {:>8.1} | {:>9.0} | {:>11.0} ms | {:>11.0} ms | {:>13.0} |",
            r.latency_ms,
            r.wakes,
            r.sessions,
            r.turns,
            r.events,
            r.elapsed.as_secs_f64(),
            r.events as f64 / r.elapsed.as_secs_f64(),
            pct(&r.lat, 0.5),
            pct(&r.lat, 0.99),
            pct(&r.lat, 1.0)
        );
    }
    println!();
    println!("events = SSE events received by all clients (pings excluded); each session's turns run one after another, all sessions at once.");
    Ok(())
}
