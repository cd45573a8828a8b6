//! bench-api: the public API's event path, end to end over loopback HTTP.
//!
//! The API router on a real socket, the SQLite catalog and session store in
//! a temp dir, the harness supervisor woken by the API, and the fake
//! Messages server answering at once (0 ms latency, a short text turn), so
//! what is measured is the API, the store, the harness loop and SSE
//! delivery, not a model.
//!
//! 1. Baseline: `POST /events` → the queued `user.message` echoed on the
//!    session's SSE stream, with no harness attached (the API + store path).
//! 2. Turns: `POST /events` → harness (lease, model call, appends) → the
//!    turn's `session.status_idle` on the SSE stream; S sessions in
//!    parallel, T turns each, one after another per session. Events/s counts
//!    every SSE event a client received (queued echo, processed echo,
//!    status_running, span start, agent.message, span end, status_idle).
//! 3. Fan-out: R concurrent readers on one session; each turn's latency per
//!    reader from the POST to that reader seeing the echo and the idle, for
//!    R = 1 (baseline) and R = 100.
//!
//! Run: `cargo run --release -p airlock-tests --bin bench-api`
//! (`--quick` for a smoke run with fewer turns).

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_tests::api_stack::{ApiStack, MemoryHands, SseClient};
use airlock_tests::fake_model::Reply;
use anyhow::{bail, Context, Result};
use serde_json::json;
use tokio::task::JoinSet;

const WAIT: Duration = Duration::from_secs(60);

fn user(text: &str) -> serde_json::Value {
    json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": text}]}]})
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

struct Row {
    scenario: String,
    readers: usize,
    turns: usize,
    events: usize,
    elapsed: Duration,
    lat: Vec<Duration>,
    what: &'static str,
}

impl Row {
    fn print(&mut self) {
        self.lat.sort();
        println!(
            "| {:<46} | {:>7} | {:>6} | {:>8} | {:>9.0} | {:>9.0} | {:<14} | {:>8.2} | {:>8.2} |",
            self.scenario,
            self.readers,
            self.turns,
            self.events,
            self.turns as f64 / self.elapsed.as_secs_f64(),
            self.events as f64 / self.elapsed.as_secs_f64(),
            self.what,
            pct(&self.lat, 0.5),
            pct(&self.lat, 0.99),
        );
    }
}

/// Reads until an event satisfying `done`; returns how many non-ping
/// events were read.
async fn read_until(
    stream: &mut SseClient,
    done: impl Fn(&airlock_tests::api_stack::SseEvent) -> bool,
) -> Result<usize> {
    let mut n = 0;
    loop {
        let e = stream.next_event(WAIT).await?.context("stream ended")?;
        n += 1;
        if done(&e) {
            return Ok(n);
        }
    }
}

fn is_end_turn(e: &airlock_tests::api_stack::SseEvent) -> bool {
    e.event == "session.status_idle" && e.data["stop_reason"]["type"] == "end_turn"
}

async fn baseline(turns: usize) -> Result<Row> {
    let stack = ApiStack::start_opts(|_: &_| Reply::text("ok"), None).await?;
    let sid = stack.session(json!([])).await?;
    let mut stream = stack.stream(&sid, None).await?;
    let mut lat = Vec::with_capacity(turns);
    let started = Instant::now();
    for k in 0..turns {
        let t0 = Instant::now();
        stack
            .post(
                &format!("/v1/sessions/{sid}/events"),
                user(&format!("m{k}")),
            )
            .await?;
        read_until(&mut stream, |e| e.event == "user.message").await?;
        lat.push(t0.elapsed());
    }
    let elapsed = started.elapsed();
    stack.stop().await;
    Ok(Row {
        scenario: "POST /events -> SSE echo (no harness)".into(),
        readers: 1,
        turns,
        events: turns,
        elapsed,
        lat,
        what: "POST->echo",
    })
}

async fn turns(sessions: usize, per_session: usize) -> Result<Row> {
    let stack = Arc::new(
        ApiStack::start(|_: &_| Reply::text("ok"), Arc::new(MemoryHands::default())).await?,
    );
    let mut ids = Vec::new();
    for _ in 0..sessions {
        ids.push(stack.session(json!([])).await?);
    }
    let started = Instant::now();
    let mut set = JoinSet::new();
    for sid in ids {
        let stack = stack.clone();
        set.spawn(async move {
            let mut stream = stack.stream(&sid, None).await?;
            let mut lat = Vec::new();
            let mut events = 0;
            for k in 0..per_session {
                let t0 = Instant::now();
                stack
                    .post(
                        &format!("/v1/sessions/{sid}/events"),
                        user(&format!("turn {k}")),
                    )
                    .await?;
                events += read_until(&mut stream, is_end_turn).await?;
                lat.push(t0.elapsed());
            }
            Ok::<_, anyhow::Error>((lat, events))
        });
    }
    let (mut lat, mut events) = (Vec::new(), 0);
    while let Some(r) = set.join_next().await {
        let (l, e) = r??;
        lat.extend(l);
        events += e;
    }
    let elapsed = started.elapsed();
    if let Ok(stack) = Arc::try_unwrap(stack) {
        stack.stop().await;
    }
    Ok(Row {
        scenario: format!("POST -> harness turn -> SSE idle ({sessions} sessions)"),
        readers: sessions,
        turns: sessions * per_session,
        events,
        elapsed,
        lat,
        what: "POST->idle",
    })
}

async fn fan_out(readers: usize, turns: usize) -> Result<(Row, Row)> {
    let stack =
        ApiStack::start(|_: &_| Reply::text("ok"), Arc::new(MemoryHands::default())).await?;
    let sid = stack.session(json!([])).await?;
    let mut streams = Vec::with_capacity(readers);
    for _ in 0..readers {
        streams.push(stack.stream(&sid, None).await?);
    }
    let (mut echo, mut idle, mut events) = (Vec::new(), Vec::new(), 0);
    let started = Instant::now();
    for k in 0..turns {
        let t0 = Instant::now();
        let text = format!("turn {k}");
        stack
            .post(&format!("/v1/sessions/{sid}/events"), user(&text))
            .await?;
        let mut set = JoinSet::new();
        for mut s in streams.drain(..) {
            let text = text.clone();
            set.spawn(async move {
                let mut n = 0;
                let mut echo_at = None;
                loop {
                    let e = s.next_event(WAIT).await?.context("stream ended")?;
                    n += 1;
                    if echo_at.is_none()
                        && e.event == "user.message"
                        && e.data["content"][0]["text"] == text.as_str()
                    {
                        echo_at = Some(t0.elapsed());
                    }
                    if is_end_turn(&e) {
                        let Some(echo) = echo_at else {
                            bail!("idle before the echo")
                        };
                        return Ok::<_, anyhow::Error>((s, echo, t0.elapsed(), n));
                    }
                }
            });
        }
        while let Some(r) = set.join_next().await {
            let (s, e, i, n) = r??;
            streams.push(s);
            echo.push(e);
            idle.push(i);
            events += n;
        }
    }
    let elapsed = started.elapsed();
    stack.stop().await;
    let scenario = format!("fan-out: one session, {readers} SSE readers");
    Ok((
        Row {
            scenario: scenario.clone(),
            readers,
            turns,
            events,
            elapsed,
            lat: echo,
            what: "POST->echo",
        },
        Row {
            scenario,
            readers,
            turns,
            events,
            elapsed,
            lat: idle,
            what: "POST->idle",
        },
    ))
}

#[tokio::main]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (base_turns, sessions, per_session, fan_turns) = if quick {
        (50, 4, 5, 5)
    } else {
        (500, 20, 25, 50)
    };
    println!("bench-api: fake model at 0 ms latency, SQLite store (synchronous=FULL), HTTP/1.1 on loopback, {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    println!();
    println!(
        "| {:<46} | {:>7} | {:>6} | {:>8} | {:>9} | {:>9} | {:<14} | {:>8} | {:>8} |",
        "scenario",
        "readers",
        "turns",
        "events",
        "turns/s",
        "events/s",
        "latency",
        "p50 ms",
        "p99 ms"
    );
    println!(
        "|{}|",
        [
            "-".repeat(48),
            "-".repeat(9),
            "-".repeat(8),
            "-".repeat(10),
            "-".repeat(11),
            "-".repeat(11),
            "-".repeat(16),
            "-".repeat(10),
            "-".repeat(10)
        ]
        .join("|")
    );
    baseline(base_turns).await?.print();
    turns(1, per_session * 4).await?.print();
    turns(sessions, per_session).await?.print();
    let (mut e1, mut i1) = fan_out(1, fan_turns).await?;
    e1.print();
    i1.print();
    let (mut e100, mut i100) = fan_out(100, fan_turns).await?;
    e100.print();
    i100.print();
    println!();
    println!("events = SSE events received by all readers (pings excluded); turns/s and events/s over the scenario's wall time.");
    Ok(())
}
