//! Chaos with real processes: two `control-plane serve` replicas on one
//! PostgreSQL (session store and catalog) with one shared CA and a short
//! lease TTL, the scripted fake model, and one real enrolled
//! `sandbox-agent run` (real Docker sandbox) holding a link to BOTH replicas,
//! each through a [`LinkCutter`] (a UDP + TCP relay the test cuts).
//!
//! One session makes `CALLS` bash calls; each appends its number to
//! `/workspace/log` in the sandbox (the side-effect counter) and prints the
//! line count. Meanwhile a schedule drawn from a seeded PRNG SIGKILLs a
//! random replica `KILLS` times (restarting it after a random pause; every
//! fourth kill waits for a tool call in flight and kills the replica holding
//! the session's lease) and cuts the agent's links `CUTS` times (one link or
//! both, for a random outage; a cut drops every flow of that link at once).
//!
//! Checked after the session ends:
//! - the session completed (`end_turn`, the model's final text);
//! - 0 tools ran twice: the sandbox file holds 0..CALLS-1 once each, in
//!   order; each result is the count right after its own append; the
//!   agent's execution record has exactly one `start` per tool_use_id;
//! - 0 events lost or duplicated: seqs gap-free, event ids unique, exactly
//!   one result per tool use, one tool use per step in order, and every
//!   request the model received is a prefix of the final history;
//! - the chaos really happened: every kill and restart, cuts that dropped
//!   live links, calls re-sent to the agent; afterwards the agent is linked
//!   to both replicas again.
//!
//! Short schedule by default (40 calls, 6 kills, 40 cuts: scripts/test-all);
//! `AIRLOCK_CHAOS_FULL=1` runs the schedule (200 calls, 50 kills,
//! 500 cuts). The seed is printed; `AIRLOCK_TEST_SEED=<seed>` replays the
//! schedule (the timing of real processes is not replayed).
//!
//! Needs `AIRLOCK_TEST_PG_URL` (scripts/setup.d/20-postgres.sh); without it
//! the test is skipped, except under `CI=true`, where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_tests::deploy::{tail, ControlPlane, CpOptions};
use airlock_tests::fake_model::{tool_loop, FakeModel, RequestCtx};
use airlock_tests::link_cutter::LinkCutter;
use airlock_tests::replicas::{fresh_schema, pg_url, postgres_toml, SharedCa};
use e2e_support::{
    check_seqs_and_ids, check_tool_pairs, content_text, results_by_use, runtime_toml, sandbox_file,
    start_replicas, summary, wait_api, Api, Rng, SandboxAgent,
};
use serde_json::{json, Value};
use session_store::{PgStore, SessionStatus, SessionStore};

/// The schedule's size.
#[derive(Debug, Clone, Copy)]
struct Size {
    calls: usize,
    kills: usize,
    cuts: usize,
}

impl Size {
    fn from_env() -> Self {
        if std::env::var("AIRLOCK_CHAOS_FULL").as_deref() == Ok("1") {
            Self {
                calls: 200,
                kills: 50,
                cuts: 500,
            }
        } else {
            Self {
                calls: 40,
                kills: 6,
                cuts: 40,
            }
        }
    }
}

const NAMES: [&str; 2] = ["A", "B"];
const LEASE_TTL_SECONDS: f64 = 2.0;

/// Appends its number, takes a moment (so kills and cuts land inside tool
/// calls too), prints the line count.
fn command(k: usize) -> String {
    format!("echo {k} >> /workspace/log; sleep 0.1; wc -l < /workspace/log")
}

/// One SIGKILL of the schedule.
#[derive(Debug, Clone)]
struct Kill {
    /// Tool results to wait for first.
    after: usize,
    /// Which replica (an in-flight kill picks the lease holder instead).
    replica: usize,
    /// Random pause after `after` is reached.
    delay: Duration,
    /// Wait for a tool call in flight on the agent, kill the lease holder.
    in_flight: bool,
    /// How long the replica stays dead.
    down: Duration,
}

/// One link cut of the schedule.
#[derive(Debug, Clone)]
struct Cut {
    /// Tool results to wait for first.
    after: usize,
    /// Which links: 0 = A's, 1 = B's, 2 = both.
    links: usize,
    /// Random pause after `after` is reached.
    delay: Duration,
    /// How long the cut lasts before `restore`.
    outage: Duration,
}

fn schedule(rng: &mut Rng, size: Size) -> (Vec<Kill>, Vec<Cut>) {
    let ms = |rng: &mut Rng, n: u64| Duration::from_millis(rng.below(n));
    let kills = (0..size.kills)
        .map(|i| Kill {
            after: (i + 1) * (size.calls - 2) / (size.kills + 1),
            replica: rng.below(2) as usize,
            delay: ms(rng, 400),
            in_flight: i % 4 == 3,
            down: ms(rng, 1000),
        })
        .collect();
    let cuts = (0..size.cuts)
        .map(|j| Cut {
            after: j * (size.calls - 1) / size.cuts,
            links: rng.below(3) as usize,
            delay: ms(rng, 200),
            outage: ms(rng, 300),
        })
        .collect();
    (kills, cuts)
}

/// The tool_use ids of a model request's conversation, in order.
fn tool_use_ids(body: &Value) -> Vec<String> {
    let ctx = RequestCtx {
        n: 0,
        body: body.clone(),
    };
    ctx.messages()
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter(|b| b["type"] == "tool_use")
        .map(|b| b["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A tool call the agent started and has not finished.
fn in_flight(agent: &SandboxAgent) -> bool {
    let mut open = HashSet::new();
    for l in agent.record() {
        if l.t == "start" {
            open.insert(l.id);
        } else {
            open.remove(&l.id);
        }
    }
    !open.is_empty()
}

/// Tool results in the log, through whichever replica answers.
async fn results_now(apis: &[Api], session_id: &str) -> Option<usize> {
    for api in apis {
        if let Ok(events) = api.events(session_id).await {
            return Some(
                events
                    .iter()
                    .filter(|e| e["type"] == "agent.tool_result")
                    .count(),
            );
        }
    }
    None
}

/// Which replica holds the session's unexpired lease.
async fn lease_holder(store: &PgStore, session_id: &str) -> Option<usize> {
    let r = store.get_session(session_id).await.ok()?;
    if r.status != SessionStatus::Running {
        return None;
    }
    if r.lease.expires_at? <= time::OffsetDateTime::now_utc() {
        return None;
    }
    let holder = r.lease.holder?;
    (0..2).find(|i| holder == instance_id(*i))
}

fn instance_id(replica: usize) -> String {
    format!("chaos-{}", NAMES[replica].to_lowercase())
}

/// The logs' tails, for a failure message.
fn diag(cps: &[ControlPlane], agent: &SandboxAgent) -> String {
    format!(
        "\n--- A log:\n{}\n--- B log:\n{}\n--- agent log:\n{}",
        tail(&cps[0].log(), 60),
        tail(&cps[1].log(), 60),
        tail(&agent.agent.log(), 40)
    )
}

/// How long the session may make no progress before the test gives up.
const STALL: Duration = Duration::from_secs(90);

/// Wait until `target` tool results are in the log (or the session is
/// done); `Err(results)` when nothing moved for [`STALL`].
async fn wait_progress(
    progress: &AtomicUsize,
    done: &AtomicBool,
    target: usize,
) -> Result<usize, usize> {
    let (mut last, mut since) = (progress.load(Ordering::SeqCst), Instant::now());
    loop {
        let n = progress.load(Ordering::SeqCst);
        if n >= target || done.load(Ordering::SeqCst) {
            return Ok(n);
        }
        if n != last {
            (last, since) = (n, Instant::now());
        } else if since.elapsed() > STALL {
            return Err(n);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_replica_kills_and_link_cuts_without_running_a_tool_twice() {
    let Some(url) = pg_url("chaos_replicas") else {
        return;
    };
    let size = Size::from_env();
    let mut rng = Rng::from_env("chaos_replicas");
    let (kills, cuts) = schedule(&mut rng, size);
    let link_cuts: u64 = cuts.iter().map(|c| if c.links == 2 { 2 } else { 1 }).sum();
    eprintln!(
        "chaos_replicas: {} calls, {} SIGKILLs, {} link cuts",
        size.calls, size.kills, size.cuts
    );
    let t0 = Instant::now();

    let model = FakeModel::builder()
        .latency(Duration::from_millis(60))
        .start(tool_loop(size.calls, |k| {
            ("bash".to_owned(), json!({ "command": command(k) }))
        }))
        .await
        .unwrap();

    // Two replicas: one PostgreSQL, one CA, their own data dirs and instance ids.
    let schema = fresh_schema("chaos");
    let ca = SharedCa::generate().unwrap();
    let runtime = runtime_toml(&model.base_url(), LEASE_TTL_SECONDS);
    let mut cps: Vec<ControlPlane> = (0..2)
        .map(|i| {
            let runtime = runtime.replacen(
                "[harness]\n",
                &format!("[harness]\ninstance_id = \"{}\"\n", instance_id(i)),
                1,
            );
            ControlPlane::configure(CpOptions {
                heartbeat_interval_seconds: 0.5,
                // The default budget (200 model requests a turn) would end
                // the full schedule's 201-request turn with budget_reached.
                extra_toml: format!(
                    "{}{runtime}{}\n[harness.budget]\nmax_model_requests_per_turn = 0\n",
                    ca.pki_keys(),
                    postgres_toml(&url, &schema)
                ),
                ..CpOptions::default()
            })
            .unwrap()
        })
        .collect();
    let mut refs: Vec<&mut ControlPlane> = cps.iter_mut().collect();
    let apis = start_replicas(&mut refs, "chaos").await.unwrap();
    let store = airlock_tests::replicas::session_store(&url, &schema).await;

    // The agent: enrolled at A, then linked to both replicas through the cutters.
    let cutters: Arc<Vec<LinkCutter>> = Arc::new(
        cps.iter()
            .map(|cp| LinkCutter::start(cp.tunnel_addr()))
            .collect(),
    );
    let env = apis[0].create_environment("chaos").await.unwrap();
    let mut agent = SandboxAgent::start(&cps[0], &env).unwrap();
    agent.agent.terminate().unwrap();
    let config = std::fs::read_to_string(agent.agent.config_path()).unwrap();
    let config = config.replace("reconnect_cap_seconds = 2.0", "reconnect_cap_seconds = 1.0");
    std::fs::write(
        agent.agent.config_path(),
        format!(
            "{config}\n[control_plane]\naddresses = [\"{}\", \"{}\"]\n",
            cutters[0].addr(),
            cutters[1].addr()
        ),
    )
    .unwrap();
    agent.agent.run().unwrap();
    for cp in &cps {
        cp.wait_connected(agent.id(), Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", tail(&agent.agent.log(), 40)));
    }
    eprintln!(
        "agent {} linked to both replicas ({:.1} s after the start)",
        agent.id(),
        t0.elapsed().as_secs_f64()
    );

    let agent_def = apis[1].create_agent("chaos").await.unwrap();
    let session_id = apis[0].create_session(&agent_def, &env).await.unwrap();
    apis[0]
        .user_message(&session_id, "Count, one bash call at a time.")
        .await
        .unwrap();
    let started = Instant::now();

    // Progress (tool results in the log), polled through either replica.
    let progress = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (progress, done, apis, sid) = (
            progress.clone(),
            done.clone(),
            apis.clone(),
            session_id.clone(),
        );
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                if let Some(n) = results_now(&apis, &sid).await {
                    progress.store(n, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    // The link cuts, on their own task.
    let cut_task = {
        let (progress, done, cutters) = (progress.clone(), done.clone(), cutters.clone());
        tokio::spawn(async move {
            let mut during_session = 0;
            for c in cuts {
                if wait_progress(&progress, &done, c.after).await.is_err() {
                    break; // the kill loop reports the stall
                }
                tokio::time::sleep(c.delay).await;
                let links: &[usize] = match c.links {
                    0 => &[0],
                    1 => &[1],
                    _ => &[0, 1],
                };
                for &l in links {
                    cutters[l].cut();
                }
                if !done.load(Ordering::SeqCst) {
                    during_session += 1;
                }
                tokio::time::sleep(c.outage).await;
                for &l in links {
                    cutters[l].restore();
                }
            }
            during_session
        })
    };

    // The kills, here.
    let mut kill_log = Vec::new();
    for (i, k) in kills.iter().enumerate() {
        let reached = match wait_progress(&progress, &done, k.after).await {
            Ok(n) => n,
            Err(n) => panic!(
                "no progress past {n} tool results for {STALL:?} before kill {i} (waiting for {}):\n{}{}",
                k.after,
                kill_log.join("\n"),
                diag(&cps, &agent)
            ),
        };
        let (victim, point) = if k.in_flight {
            let seen = testkit::try_eventually(
                &format!("a tool call in flight before kill {i}"),
                Duration::from_secs(30),
                || in_flight(&agent),
            )
            .await
            .is_ok();
            let holder = lease_holder(&store, &session_id).await;
            let point = if seen {
                "a tool call in flight"
            } else {
                "no call in flight within 30 s"
            };
            (
                holder.unwrap_or(k.replica),
                format!("{point}, lease holder {holder:?}"),
            )
        } else {
            tokio::time::sleep(k.delay).await;
            (k.replica, format!("+{} ms", k.delay.as_millis()))
        };
        cps[victim].kill9().unwrap();
        kill_log.push(format!(
            "kill {i}: {} at >= {reached} results, {point}, down {} ms",
            NAMES[victim],
            k.down.as_millis()
        ));
        tokio::time::sleep(k.down).await;
        let cp = &mut cps[victim];
        tokio::task::block_in_place(|| cp.start())
            .unwrap_or_else(|e| panic!("restart {} after kill {i}: {e:#}", NAMES[victim]));
        wait_api(&apis[victim], Duration::from_secs(30))
            .await
            .unwrap();
    }
    eprintln!("{}", kill_log.join("\n"));

    let limit = Duration::from_secs(60 + 3 * size.calls as u64);
    let events = match apis[0].wait_end_turn(&session_id, limit).await {
        Ok(e) => e,
        Err(e) => panic!("{e}{}", diag(&cps, &agent)),
    };
    let took = started.elapsed();
    done.store(true, Ordering::SeqCst);
    let cuts_in_session = cut_task.await.unwrap();
    poller.await.unwrap();
    eprintln!(
        "session of {} calls completed in {:.1} s with {} SIGKILLs and {cuts_in_session} of {} cuts while it ran",
        size.calls,
        took.as_secs_f64(),
        size.kills,
        size.cuts
    );
    for (i, c) in cutters.iter().enumerate() {
        eprintln!("link to {}: {}", NAMES[i], c.stats());
    }

    // 1. The log: no event lost or duplicated, one result per tool use, in order.
    check_seqs_and_ids(&events);
    let uses = check_tool_pairs(&events);
    let commands: Vec<String> = uses
        .iter()
        .map(|u| u["input"]["command"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = (0..size.calls).map(command).collect();
    assert_eq!(commands, want, "one tool use per step, in order");
    let ids: Vec<String> = uses
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect();
    let results = results_by_use(&events);
    for (k, id) in ids.iter().enumerate() {
        let r = &results[id];
        assert_eq!(r["is_error"], false, "call {k}: {r}");
        assert_eq!(
            content_text(r).trim(),
            (k + 1).to_string(),
            "call {k} saw the file with {k}+1 lines: {r}"
        );
    }
    let final_text = events
        .iter()
        .rev()
        .find(|e| e["type"] == "agent.message")
        .unwrap();
    assert_eq!(
        content_text(final_text),
        format!("done after {} tool calls", size.calls),
        "{}",
        summary(&events)
    );

    // 2. The model's record: whatever any replica asked is a prefix of the
    // final history (no tool use lost, duplicated or re-issued).
    let requests = model.requests();
    for r in &requests {
        let seen = tool_use_ids(&r.body);
        assert!(
            seen.len() <= ids.len() && seen[..] == ids[..seen.len()],
            "request {} diverges from the final history",
            r.n
        );
    }

    // 3. The agent's execution record: each call started exactly once.
    let record = agent.record();
    let mut starts: HashMap<&str, usize> = HashMap::new();
    for l in record.iter().filter(|l| l.t == "start") {
        *starts.entry(l.id.as_str()).or_default() += 1;
    }
    for (k, id) in ids.iter().enumerate() {
        assert_eq!(
            starts.get(id.as_str()),
            Some(&1),
            "call {k} ({id}) started once on the agent"
        );
    }
    assert_eq!(starts.len(), size.calls, "no other call ran: {starts:?}");

    // 4. The sandbox: one sandbox, every number once, in order.
    let sandboxes = agent.sandboxes();
    assert_eq!(sandboxes.len(), 1, "one sandbox: {sandboxes:?}");
    let log = sandbox_file(&sandboxes[0], "/workspace/log").unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let want: Vec<String> = (0..size.calls).map(|k| k.to_string()).collect();
    assert_eq!(lines, want, "/workspace/log holds each number exactly once");

    // 5. The chaos happened: every kill restarted a replica, cuts dropped
    // live links, calls were re-sent; and the agent is linked to both again.
    let restarts: usize = cps
        .iter()
        .map(|cp| cp.log().matches("control plane started").count())
        .sum();
    assert_eq!(
        restarts,
        2 + size.kills,
        "each kill was followed by a restart"
    );
    let stats: Vec<_> = cutters.iter().map(LinkCutter::stats).collect();
    assert_eq!(
        stats.iter().map(|s| s.cuts).sum::<u64>(),
        link_cuts,
        "every scheduled cut was made"
    );
    let effective: u64 = stats.iter().map(|s| s.effective_cuts).sum();
    assert!(
        effective > 0 && stats.iter().all(|s| s.flows_cut > 0),
        "cuts dropped live links on both sides: {stats:?}"
    );
    let audit = agent.audit();
    let executes = audit.iter().filter(|a| a["call"] == "execute").count();
    let replayed = audit
        .iter()
        .filter(|a| a["call"] == "execute" && a["outcome"] == "replayed")
        .count();
    eprintln!(
        "agent: {} calls ran once each; {} re-sent ({replayed} answered from the record, the rest joined the run in flight)",
        size.calls,
        executes - size.calls
    );
    assert!(
        executes > size.calls,
        "kills and cuts inside tool calls made the replicas re-send some calls"
    );
    for cp in &cps {
        cp.wait_connected(agent.id(), Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e:#}{}", diag(&cps, &agent)));
    }
    eprintln!(
        "chaos_replicas: passed in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    for cp in &mut cps {
        cp.terminate().unwrap();
    }
}
