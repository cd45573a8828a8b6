//! bench-recovery: how long a session waits after its control plane is
//! killed with SIGKILL and restarted, with the stable instance id (the
//! restarted process takes its leases back at once) side by side with the
//! old behaviour (a fresh instance id on every start, so the session waits
//! until the dead process's lease lapses).
//!
//! A real `control-plane serve` (release build, SQLite in its data dir,
//! default `[harness]` settings except the rows' lease TTL and instance id)
//! and the fake model answering after 1.5 s (the scenario). Each
//! round: a new session gets a user message; once its model request is in
//! flight (plus a random 0-1 s, so kills land anywhere in the request), the
//! process is SIGKILLed and started again on the same data dir and ports.
//! Measured: kill → the API listening again, and kill → the first event the
//! session gets after the kill (the resumed wake closing the interrupted
//! span), seen by polling the event list every 20 ms; then the round waits
//! for the session to end its turn.
//!
//! Run: `cargo build --release -p control-plane && cargo run --release -p
//! airlock-tests --bin bench-recovery` (`--quick`: fewer rounds). Uses the
//! release binaries unless `AIRLOCK_BIN_DIR` says otherwise.

use std::time::{Duration, Instant};

use airlock_tests::bench_client::PublicApi;
use airlock_tests::deploy::{ControlPlane, CpOptions};
use airlock_tests::fake_model::{FakeModel, Reply, RequestCtx};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

const MODEL_LATENCY: Duration = Duration::from_millis(1500);
const ID_LINE: &str = "# instance_id\n";

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64()
}

/// How a row picks the lease TTL and the instance id.
struct Mode {
    name: &'static str,
    /// `None`: the default.
    ttl: Option<f64>,
    /// A new `[harness] instance_id` on every start (the old behaviour).
    fresh_id: bool,
    rounds: usize,
}

struct Row {
    name: &'static str,
    ttl: String,
    listening: Vec<Duration>,
    first: Vec<Duration>,
}

fn seq_of(e: &Value) -> u64 {
    e["seq"].as_u64().unwrap_or(0)
}

async fn wait_for<T, F, Fut>(what: &str, limit: Duration, every: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > until {
            bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(every).await;
    }
}

fn set_instance_id(cp: &ControlPlane, id: Option<&str>) -> Result<()> {
    let text = std::fs::read_to_string(cp.config_path())?;
    let start = text
        .find("[harness]\n")
        .context("a [harness] table in the config")?
        + "[harness]\n".len();
    let end = start + text[start..].find('\n').context("a line after [harness]")? + 1;
    let line = match id {
        Some(id) => format!("instance_id = \"{id}\"\n"),
        None => ID_LINE.to_owned(),
    };
    let out = format!("{}{line}{}", &text[..start], &text[end..]);
    std::fs::write(cp.config_path(), out)?;
    Ok(())
}

async fn run(mode: &Mode, model: &FakeModel, rng: &mut u64) -> Result<Row> {
    let ttl = mode
        .ttl
        .map(|t| format!("lease_ttl_seconds = {t}\n"))
        .unwrap_or_default();
    let mut cp = ControlPlane::configure(CpOptions {
        extra_toml: format!(
            "\n[model]\nbase_url = \"{}\"\napi_key = \"bench-key\"\n\n[harness]\n{ID_LINE}{ttl}",
            model.base_url()
        ),
        ..CpOptions::default()
    })?;
    let key: Value = serde_json::from_str(
        cp.cli(&["api-keys", "create", "--name", "bench", "--json"])?
            .trim(),
    )?;
    let key = key["key"].as_str().context("api key")?.to_owned();
    if mode.fresh_id {
        set_instance_id(&cp, Some("bench-start-0"))?;
    }
    cp.start()?;
    let api = PublicApi::new(cp.api_addr(), &key);
    let (agent, env) = api.agent_and_environment("bench-recovery").await?;
    let mut row = Row {
        name: mode.name,
        ttl: mode
            .ttl
            .map(|t| format!("{t}"))
            .unwrap_or_else(|| "default".into()),
        listening: Vec::new(),
        first: Vec::new(),
    };
    for round in 0..mode.rounds {
        let sid = api.session(&agent, &env).await?;
        api.user_message(&sid, &format!("round {round}")).await?;
        let (a, s) = (&api, sid.as_str());
        wait_for(
            "the model request in flight",
            Duration::from_secs(60),
            Duration::from_millis(10),
            || async move {
                let events = a.events(s).await.ok()?;
                (model.open_streams() > 0
                    && events
                        .iter()
                        .any(|e| e["type"] == "span.model_request_start"))
                .then_some(())
            },
        )
        .await?;
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        tokio::time::sleep(Duration::from_millis(*rng % 1000)).await;
        let last = api.events(&sid).await?.last().map(seq_of).unwrap_or(0);
        cp.kill9()?;
        let killed = Instant::now();
        if mode.fresh_id {
            set_instance_id(&cp, Some(&format!("bench-start-{}", round + 1)))?;
        }
        cp.start()?;
        row.listening.push(killed.elapsed());
        let first = wait_for(
            "the first new event",
            Duration::from_secs(180),
            Duration::from_millis(20),
            || async move {
                let events = a.events(s).await.ok()?;
                events
                    .iter()
                    .any(|e| seq_of(e) > last)
                    .then(|| killed.elapsed())
            },
        )
        .await?;
        row.first.push(first);
        wait_for(
            "the turn to end",
            Duration::from_secs(60),
            Duration::from_millis(50),
            || async move {
                let events = a.events(s).await.ok()?;
                events
                    .iter()
                    .rev()
                    .find(|e| {
                        e["type"]
                            .as_str()
                            .is_some_and(|t| t.starts_with("session.status"))
                    })
                    .filter(|e| {
                        e["type"] == "session.status_idle" && e["stop_reason"]["type"] == "end_turn"
                    })
                    .map(|_| ())
            },
        )
        .await?;
        eprintln!(
            "{}: round {round}: listening after {:.2} s, first new event after {:.2} s",
            mode.name,
            row.listening[round].as_secs_f64(),
            first.as_secs_f64()
        );
    }
    cp.terminate()?;
    Ok(row)
}

/// What leases cost on PostgreSQL (the store several replicas share):
/// `sessions` leases held at once, renewed all together `rounds` times as
/// fast as the store answers; renew latency percentiles and the renewals
/// per second it sustained. Skipped without `AIRLOCK_TEST_PG_URL`.
async fn lease_costs(sessions: usize, rounds: usize) -> Result<()> {
    use session_store::{NewSession, PgOptions, PgStore, SessionStatus, SessionStore};
    use std::sync::Arc;
    let Some(url) = std::env::var("AIRLOCK_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        println!("lease costs on PostgreSQL: skipped (AIRLOCK_TEST_PG_URL unset)");
        return Ok(());
    };
    let store = PgStore::connect(
        &url,
        PgOptions {
            schema: format!("bench_recovery_{}", std::process::id()),
            ..PgOptions::default()
        },
    )
    .await?;
    let s: Arc<dyn SessionStore> = Arc::new(store.clone());
    let mut leases = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let id = format!("sesn_lease{i:05}");
        s.create_session(NewSession {
            id: id.clone(),
            status: SessionStatus::Running,
            body: serde_json::json!({}),
            initial_events: vec![],
        })
        .await?;
        leases.push(
            s.acquire_lease(&id, "bench", Duration::from_secs(30))
                .await?,
        );
    }
    let mut lat = Vec::with_capacity(sessions * rounds);
    let started = Instant::now();
    for _ in 0..rounds {
        let mut set = tokio::task::JoinSet::new();
        for l in leases.drain(..) {
            let s = s.clone();
            set.spawn(async move {
                let t0 = Instant::now();
                let l = s.renew_lease(&l, Duration::from_secs(30)).await;
                (l, t0.elapsed())
            });
        }
        while let Some(r) = set.join_next().await {
            let (l, d) = r?;
            leases.push(l?);
            lat.push(d);
        }
    }
    let elapsed = started.elapsed();
    let t0 = Instant::now();
    let reclaimed = s.reclaim_leases("bench", Duration::from_secs(30)).await?;
    let reclaim = t0.elapsed();
    lat.sort();
    println!(
        "lease costs on PostgreSQL ({} connections in the pool): {sessions} leases renewed together {rounds} times: \
         renew p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {:.0} renewals/s sustained; \
         reclaim_leases of all {} in {:.1} ms",
        PgOptions::default().max_connections,
        pct(&lat, 0.5) * 1e3,
        pct(&lat, 0.99) * 1e3,
        pct(&lat, 1.0) * 1e3,
        lat.len() as f64 / elapsed.as_secs_f64(),
        reclaimed.len(),
        reclaim.as_secs_f64() * 1e3,
    );
    let _ = store.drop_schema().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
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
    let model = FakeModel::builder()
        .latency(MODEL_LATENCY)
        .start(|req: &RequestCtx| Reply::text(format!("answer {}", req.n)))
        .await
        .map_err(|e| anyhow!("fake model: {e}"))?;
    let (new_rounds, old_rounds) = if quick { (3, 2) } else { (8, 4) };
    let modes = [
        Mode {
            name: "stable instance id (now)",
            ttl: None,
            fresh_id: false,
            rounds: new_rounds,
        },
        Mode {
            name: "fresh instance id per start (before), TTL 30 s",
            ttl: Some(30.0),
            fresh_id: true,
            rounds: old_rounds,
        },
        Mode {
            name: "fresh instance id per start, default TTL",
            ttl: None,
            fresh_id: true,
            rounds: old_rounds,
        },
    ];
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    lease_costs(1000, if quick { 3 } else { 10 }).await?;
    let mut rows = Vec::new();
    for m in &modes {
        rows.push(run(m, &model, &mut seed).await?);
    }
    println!(
        "bench-recovery: control-plane serve from {} (SQLite), fake model at {} ms, SIGKILL + restart on the same data dir, {} cores",
        std::env::var("AIRLOCK_BIN_DIR").unwrap_or_default(),
        MODEL_LATENCY.as_millis(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!();
    println!(
        "| {:<48} | {:>7} | {:>6} | {:>15} | {:>16} | {:>16} |",
        "restart", "TTL s", "rounds", "kill->listen p50", "kill->event p50", "kill->event max"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|",
        "-".repeat(50),
        "-".repeat(9),
        "-".repeat(8),
        "-".repeat(17),
        "-".repeat(18),
        "-".repeat(18)
    );
    for r in &mut rows {
        r.listening.sort();
        r.first.sort();
        println!(
            "| {:<48} | {:>7} | {:>6} | {:>13.2} s | {:>14.2} s | {:>14.2} s |",
            r.name,
            r.ttl,
            r.first.len(),
            pct(&r.listening, 0.5),
            pct(&r.first, 0.5),
            pct(&r.first, 1.0)
        );
    }
    println!();
    let now = pct(&rows[0].first, 0.5);
    println!(
        "kill -> first new event, p50: the old behaviour (TTL 30 s) takes {:.1}x as long as the stable id; with a fresh id at the default TTL {:.1}x (what a session on a dead replica waits for another one).",
        pct(&rows[1].first, 0.5) / now,
        pct(&rows[2].first, 0.5) / now
    );
    Ok(())
}
