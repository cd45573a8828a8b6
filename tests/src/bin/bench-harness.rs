//! bench-harness: what a wake costs and what lazy provisioning buys.
//!
//! 1. Wake time for sessions of 1k, 10k and 100k events in the SQLite store
//!    (a temp dir): `rebuild` is read + fold + model request built, no
//!    writes; `wake → request` is a real `wake()` on a new user message up to
//!    the moment the model request is sent (lease, session record, log, fold,
//!    the `status_running` / `span.model_request_start` appends and marking
//!    the message processed, all durable).
//! 2. Time to first token with the fake Messages server answering after
//!    L = 300 ms and a hands double whose `provision` takes P = 2 s, for eager
//!    provisioning (the baseline: the model waits for the sandbox), lazy (on
//!    the first tool call) and speculative (in parallel with the first model
//!    call); also the time until the first tool result is stored. Measured
//!    from the `wake()` call; ≥ 50 sessions each, 10 at a time.
//!
//! Run: `cargo run --release -p airlock-tests --bin bench-harness`
//! (`--quick` for a smoke run with fewer samples and no 100k session).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_tests::fake_model::{FakeModel, Reply, RequestCtx, Turn};
use anyhow::{Context, Result};
use harness::{
    Disposition, Hands, HandsError, Harness, HarnessConfig, Observer, ProvisionSpec,
    ProvisioningMode, RawHarnessConfig, SandboxRef, ToolCall, ToolOutput,
};
use model::{AnthropicConfig, AnthropicProvider, ApiKey, StreamEvent};
use serde_json::json;
use session_store::{
    new_event_id, Fence, NewEvent, NewSession, SessionStatus, SessionStore, SqliteOptions,
    SqliteStore,
};

const LATENCY: Duration = Duration::from_millis(300);
const PROVISION: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct SleepHands {
    provision: Duration,
    /// First execution per sandbox (`sbx_<session>`).
    executed: Mutex<HashMap<String, Instant>>,
}

#[async_trait::async_trait]
impl Hands for SleepHands {
    async fn provision(&self, spec: &ProvisionSpec) -> Result<SandboxRef, HandsError> {
        tokio::time::sleep(self.provision).await;
        Ok(SandboxRef {
            sandbox_id: format!("sbx_{}", spec.session_id),
            ..Default::default()
        })
    }

    async fn execute(
        &self,
        sandbox: &SandboxRef,
        call: &ToolCall,
    ) -> Result<ToolOutput, HandsError> {
        if let Ok(mut m) = self.executed.lock() {
            m.entry(sandbox.sandbox_id.clone())
                .or_insert_with(Instant::now);
        }
        Ok(ToolOutput {
            content: vec![json!({"type": "text", "text": format!("ran {}", call.name)})],
            is_error: false,
            disposition: Disposition::Ran,
        })
    }
}

/// Timestamps per session: request sent, first output token.
#[derive(Debug, Default)]
struct Clock {
    sent: Mutex<HashMap<String, Instant>>,
    first: Mutex<HashMap<String, Instant>>,
}

impl Observer for Clock {
    fn model_request_sent(&self, session_id: &str) {
        if let Ok(mut m) = self.sent.lock() {
            m.entry(session_id.to_owned()).or_insert_with(Instant::now);
        }
    }

    fn model_event(&self, session_id: &str, _id: Option<&str>, event: &StreamEvent) {
        if event.is_output() {
            if let Ok(mut m) = self.first.lock() {
                m.entry(session_id.to_owned()).or_insert_with(Instant::now);
            }
        }
    }
}

impl Clock {
    fn take(&self, session_id: &str) -> (Option<Instant>, Option<Instant>) {
        let s = self.sent.lock().ok().and_then(|mut m| m.remove(session_id));
        let f = self
            .first
            .lock()
            .ok()
            .and_then(|mut m| m.remove(session_id));
        (s, f)
    }
}

fn agent_body() -> serde_json::Value {
    json!({
        "environment_id": "env_bench",
        "agent": {
            "model": {"id": "claude-bench"},
            "system": "You are a benchmark agent.",
            "tools": [{"type": "agent_toolset_20260401"}],
        }
    })
}

fn user(text: &str) -> NewEvent {
    NewEvent::queued(json!({"type": "user.message", "content": [{"type": "text", "text": text}]}))
}

fn config(mode: ProvisioningMode) -> Result<HarnessConfig> {
    let raw: RawHarnessConfig =
        toml::from_str("instance_id = \"bench\"\n[budget]\nmax_model_requests_per_turn = 0\n")?;
    let mut c = HarnessConfig::from_raw(raw)?;
    c.provisioning = mode;
    Ok(c)
}

fn provider(fake: &FakeModel) -> Result<Arc<AnthropicProvider>> {
    let mut c = AnthropicConfig::new(fake.base_url(), ApiKey::new("sk-bench"));
    c.request_timeout = Duration::from_secs(120);
    c.stream_idle_timeout = Duration::from_secs(120);
    Ok(Arc::new(AnthropicProvider::new(c)?))
}

/// A session with `n` events: a user message, then rounds of
/// span start / agent.message / agent.tool_use / span end / agent.tool_result.
async fn build_session(store: &dyn SessionStore, id: &str, n: usize) -> Result<()> {
    store
        .create_session(NewSession {
            id: id.to_owned(),
            status: SessionStatus::Idle,
            body: agent_body(),
            initial_events: vec![NewEvent::processed(
                json!({"type": "user.message", "content": [{"type": "text", "text": "Refactor the parser module and keep the tests green."}]}),
            )],
        })
        .await?;
    let mut written = 1;
    let mut round = 0usize;
    let mut batch = Vec::new();
    while written + 5 <= n {
        let span = new_event_id();
        let tool = new_event_id();
        batch.push(
            NewEvent::processed(json!({"type": "span.model_request_start"})).with_id(span.clone()),
        );
        batch.push(NewEvent::processed(json!({"type": "agent.message", "content": [{"type": "text", "text": format!("Step {round}: I will inspect the next file and run the relevant tests to see what changed.")}]})));
        batch.push(NewEvent::processed(json!({"type": "agent.tool_use", "name": "bash", "input": {"command": format!("cargo test -p parser -- case_{round}")}, "evaluated_permission": "allow", "evaluation": {"type": "always_allow"}})).with_id(tool.clone()));
        batch.push(NewEvent::processed(json!({"type": "span.model_request_end", "model_request_start_id": span, "is_error": false, "model_usage": {"input_tokens": 1200, "output_tokens": 80, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 9000}})));
        batch.push(NewEvent::processed(json!({"type": "agent.tool_result", "tool_use_id": tool, "is_error": false, "content": [{"type": "text", "text": format!("running 1 test\ntest case_{round} ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 41 filtered out; finished in 0.02s\n")}]})));
        written += 5;
        round += 1;
        if batch.len() >= 1000 {
            store
                .append(id, std::mem::take(&mut batch), Fence::None)
                .await?;
        }
    }
    while written < n {
        batch.push(NewEvent::processed(
            json!({"type": "session.status_running"}),
        ));
        written += 1;
    }
    if !batch.is_empty() {
        store.append(id, batch, Fence::None).await?;
    }
    // End the turn so the benchmark's user messages start new ones.
    store
        .append(
            id,
            vec![NewEvent::processed(
                json!({"type": "session.status_idle", "stop_reason": {"type": "end_turn"}}),
            )],
            Fence::None,
        )
        .await?;
    Ok(())
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

struct Row {
    what: String,
    n: usize,
    p50: Duration,
    p95: Duration,
    note: String,
}

fn row(what: impl Into<String>, mut samples: Vec<Duration>, note: impl Into<String>) -> Row {
    samples.sort();
    Row {
        what: what.into(),
        n: samples.len(),
        p50: pct(&samples, 50.0),
        p95: pct(&samples, 95.0),
        note: note.into(),
    }
}

async fn wake_bench(sizes: &[(usize, usize)], rows: &mut Vec<Row>) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open_in_dir(dir.path(), SqliteOptions::default()).await?);
    let fake = FakeModel::builder()
        .no_validation()
        .start(|_: &RequestCtx| Reply::text("ok"))
        .await?;
    let clock = Arc::new(Clock::default());
    let h = Harness::new(
        store.clone(),
        provider(&fake)?,
        Arc::new(SleepHands::default()),
        config(ProvisioningMode::Lazy)?,
    )
    .with_observer(clock.clone());
    for &(n, iterations) in sizes {
        let id = format!("sesn_wake_{n}");
        let t = Instant::now();
        build_session(&*store, &id, n).await?;
        eprintln!(
            "built a {n}-event session in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        // Warm the page cache once, as a running server would have it.
        h.rebuild(&id).await?;
        let mut rebuild = Vec::new();
        let mut wake = Vec::new();
        let mut read = Vec::new();
        let mut fold = Vec::new();
        for i in 0..iterations {
            let t = Instant::now();
            let mut events = Vec::new();
            loop {
                let page = store.read(&id, events.len() as u64 + 1, 10_000).await?;
                let done = page.len() < 10_000;
                events.extend(page);
                if done {
                    break;
                }
            }
            read.push(t.elapsed());
            let t = Instant::now();
            let view = harness::SessionView::from_owned_events(events)?;
            std::hint::black_box(view.request_messages());
            fold.push(t.elapsed());
            let t = Instant::now();
            let (view, request) = h.rebuild(&id).await?;
            rebuild.push(t.elapsed());
            anyhow::ensure!(
                request.is_some() && view.last_seq() as usize >= n,
                "rebuild of {id} is incomplete"
            );
            store
                .append(&id, vec![user(&format!("and now step {i}"))], Fence::None)
                .await?;
            let t = Instant::now();
            let out = h.wake(&id).await?;
            let (sent, _) = clock.take(&id);
            let sent = sent.context("the wake sent no model request")?;
            wake.push(sent.duration_since(t));
            anyhow::ensure!(
                out == harness::WakeOutcome::Idle(harness::StopReason::EndTurn),
                "unexpected outcome {out:?}"
            );
        }
        let target = if n == 10_000 { "target ≤ 100 ms" } else { "" };
        rows.push(row(
            format!("wake {n} events: store.read of the log"),
            read,
            "session-store part",
        ));
        rows.push(row(
            format!("wake {n} events: fold + messages"),
            fold,
            "harness part",
        ));
        rows.push(row(
            format!("wake {n} events: rebuild (read+fold+request)"),
            rebuild,
            target,
        ));
        rows.push(row(
            format!("wake {n} events: wake() → request sent"),
            wake,
            target,
        ));
    }
    Ok(())
}

struct TtftResult {
    ttft: Vec<Duration>,
    first_tool: Vec<Duration>,
}

async fn ttft_bench(
    mode: ProvisioningMode,
    sessions: usize,
    concurrency: usize,
    provision: Duration,
) -> Result<TtftResult> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open_in_dir(dir.path(), SqliteOptions::default()).await?);
    // First answer: a tool call; after its result: the final text.
    let fake = FakeModel::builder()
        .latency(LATENCY)
        .start(|r: &RequestCtx| {
            if r.last_is_tool_result() {
                Reply::text("done").with_latency(Duration::ZERO)
            } else {
                Turn::new()
                    .text("Let me look at the repository first.")
                    .tool_use(format!("toolu_{}", r.n), "bash", json!({"command": "ls"}))
                    .into()
            }
        })
        .await?;
    let clock = Arc::new(Clock::default());
    let hands = Arc::new(SleepHands {
        provision,
        ..SleepHands::default()
    });
    let h = Harness::new(
        store.clone(),
        provider(&fake)?,
        hands.clone(),
        config(mode)?,
    )
    .with_observer(clock.clone());
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for i in 0..sessions {
        let id = format!("sesn_ttft_{i}");
        store
            .create_session(NewSession {
                id: id.clone(),
                status: SessionStatus::Idle,
                body: agent_body(),
                initial_events: vec![user("What is in this repository?")],
            })
            .await?;
        let (h, clock, sem, hands) = (h.clone(), clock.clone(), sem.clone(), hands.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await?;
            let t = Instant::now();
            let out = h.wake(&id).await?;
            anyhow::ensure!(
                out == harness::WakeOutcome::Idle(harness::StopReason::EndTurn),
                "{id}: unexpected outcome {out:?}"
            );
            let (_, first) = clock.take(&id);
            let first = first.context("no token was observed")?;
            let ran = hands
                .executed
                .lock()
                .ok()
                .and_then(|m| m.get(&format!("sbx_{id}")).copied())
                .context("the tool never ran")?;
            Ok::<_, anyhow::Error>((first.duration_since(t), ran.duration_since(t)))
        }));
    }
    let mut res = TtftResult {
        ttft: Vec::new(),
        first_tool: Vec::new(),
    };
    for t in tasks {
        let (ttft, tool) = t.await??;
        res.ttft.push(ttft);
        res.first_tool.push(tool);
    }
    Ok(res)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: Vec<(usize, usize)> = if quick {
        vec![(1_000, 5), (10_000, 5)]
    } else {
        vec![(1_000, 30), (10_000, 30), (100_000, 10)]
    };
    let sessions = if quick { 10 } else { 50 };
    let mut rows = Vec::new();
    wake_bench(&sizes, &mut rows).await?;

    let mut ttft_rows = Vec::new();
    let mut eager_p50 = Duration::ZERO;
    for (mode, name) in [
        (ProvisioningMode::Eager, "eager (baseline)"),
        (ProvisioningMode::Lazy, "lazy"),
        (ProvisioningMode::Speculative, "speculative"),
    ] {
        let t = Instant::now();
        let r = ttft_bench(mode, sessions, 10, PROVISION).await?;
        eprintln!(
            "{name}: {sessions} sessions in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let mut ttft = r.ttft.clone();
        ttft.sort();
        let p50 = pct(&ttft, 50.0);
        if mode == ProvisioningMode::Eager {
            eager_p50 = p50;
        }
        let note = if mode == ProvisioningMode::Eager {
            format!("L + P = {}", ms(LATENCY + PROVISION))
        } else {
            format!(
                "p50 − L = {:+.1} ms; p50 {:+.0}% vs eager",
                (p50.as_secs_f64() - LATENCY.as_secs_f64()) * 1000.0,
                (p50.as_secs_f64() / eager_p50.as_secs_f64().max(1e-9) - 1.0) * 100.0
            )
        };
        ttft_rows.push(row(format!("TTFT, {name}, L=300 ms P=2 s"), r.ttft, note));
        ttft_rows.push(row(
            format!("first tool run, {name}"),
            r.first_tool,
            "wake() → Hands::execute",
        ));
    }
    // Lazy TTFT does not depend on P: the same with P = 0.
    let r = ttft_bench(ProvisioningMode::Lazy, sessions, 10, Duration::ZERO).await?;
    ttft_rows.push(row(
        "TTFT, lazy, L=300 ms P=0",
        r.ttft,
        "P-independence check",
    ));
    rows.extend(ttft_rows);

    println!();
    println!("bench-harness — SQLite store (temp dir, WAL, synchronous=FULL), fake Messages server on 127.0.0.1, release build");
    println!();
    println!("| measurement | n | p50 | p95 | note |");
    println!("|---|---:|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.what,
            r.n,
            ms(r.p50),
            ms(r.p95),
            r.note
        );
    }
    Ok(())
}
