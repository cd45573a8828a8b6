//! Two control planes on one PostgreSQL (session store and catalog shared),
//! each with its own enrolled sandbox-agent of the same environment, racing
//! for the same sessions: both supervisors scan for running sessions every
//! 200 ms, and sessions are started through both APIs.
//!
//! The race is made real: control plane A is frozen (SIGSTOP) while it is
//! in the middle of a session, B takes the expired lease over and carries
//! on, then A is thawed and its stale writes must be fenced off (its log
//! says the lease was lost, and the session log shows nothing of it). Then
//! B is killed with SIGKILL mid-session and A finishes every session.
//!
//! Checked on each session's log: seqs gap-free, ids unique, one tool use
//! per step in order, exactly one result per tool use, one `agent.message`
//! per model turn (no turn duplicated), every model request span closed
//! once and never interleaved with another; and on the fake model's record:
//! every request any harness sent is a prefix of the session's final
//! history.
//!
//! Needs `AIRLOCK_TEST_PG_URL` (scripts/setup.d/20-postgres.sh); without it
//! the test is skipped, except under `CI=true`, where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;

use std::collections::HashMap;
use std::time::Duration;

use airlock_tests::deploy::{tail, ControlPlane, CpOptions};
use airlock_tests::fake_model::{FakeModel, Reply, RequestCtx, Turn};
use airlock_tests::replicas::{instance_id, live_holder};
use e2e_support::{
    check_seqs_and_ids, check_tool_pairs, content_text, runtime_toml, start_replicas, summary, Api,
    SandboxAgent,
};
use serde_json::{json, Value};
use testkit::eventually_async;

const STEPS: usize = 16;
const SESSIONS: usize = 3;

fn command(k: usize) -> String {
    format!("sleep 0.3; echo step {k}")
}

/// The conversation's first user text names the session (`session N`), so
/// the model's record can be grouped per session.
fn first_user_text(req: &RequestCtx) -> String {
    req.messages()
        .iter()
        .find(|m| m["role"] == "user")
        .map(content_text)
        .unwrap_or_default()
}

fn script(req: &RequestCtx) -> Reply {
    let k = req.tool_uses_so_far();
    if k < STEPS {
        Turn::new()
            .text(format!("step {k}"))
            .tool_use(
                format!("toolu_{k}"),
                "bash",
                json!({ "command": command(k) }),
            )
            .into()
    } else {
        Reply::text(format!("done after {STEPS} steps"))
    }
}

fn tool_use_ids(body: &Value) -> Vec<String> {
    RequestCtx {
        n: 0,
        body: body.clone(),
    }
    .messages()
    .iter()
    .filter_map(|m| m["content"].as_array())
    .flatten()
    .filter(|b| b["type"] == "tool_use")
    .map(|b| b["id"].as_str().unwrap_or_default().to_owned())
    .collect()
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid}");
}

async fn results(api: &Api, session_id: &str) -> usize {
    api.events(session_id)
        .await
        .map(|e| {
            e.iter()
                .filter(|e| e["type"] == "agent.tool_result")
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_on_postgres_one_harness_at_a_time_and_the_survivor_finishes() {
    let Some(url) = airlock_tests::replicas::pg_url("recovery_pg_race") else {
        return;
    };
    let schema = format!(
        "race_{}_{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp()
    );
    let model = FakeModel::builder()
        .latency(Duration::from_millis(40))
        .start(script)
        .await
        .unwrap();
    let shared = format!(
        "{}\n[session_store]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\npostgres_schema = \"{schema}\"\npostgres_max_connections = 8\ntail_poll_interval_seconds = 1\n\
         \n[catalog]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\npostgres_schema = \"{schema}_cat\"\n",
        runtime_toml(&model.base_url(), 2.0)
    );
    let options = || CpOptions {
        extra_toml: shared.clone(),
        ..CpOptions::default()
    };
    let mut a = ControlPlane::configure(options()).unwrap();
    let mut b = ControlPlane::configure(options()).unwrap();
    let mut apis = start_replicas(&mut [&mut a, &mut b], "race").await.unwrap();
    let (api_b, api_a) = (apis.pop().unwrap(), apis.pop().unwrap());
    let store = airlock_tests::replicas::session_store(&url, &schema).await;

    // One environment (shared catalog), an agent enrolled with each replica.
    let env = api_a.create_environment("race").await.unwrap();
    let agent_a = SandboxAgent::start(&a, &env).unwrap();
    let agent_b = SandboxAgent::start(&b, &env).unwrap();
    let agent_def = api_b.create_agent("racer").await.unwrap();
    let mut sessions = Vec::new();
    for i in 0..SESSIONS {
        let sid = api_a.create_session(&agent_def, &env).await.unwrap();
        // Started through either API: both supervisors see every session.
        let api = if i % 2 == 0 { &api_a } else { &api_b };
        api.user_message(&sid, &format!("session {i}: take {STEPS} steps"))
            .await
            .unwrap();
        sessions.push(sid);
    }
    let (pid_a, pid_b) = (a.pid().unwrap(), b.pid().unwrap());
    let (id_a, id_b) = (instance_id(&a), instance_id(&b));
    let (id_a, id_b) = (id_a.as_str(), id_b.as_str());
    let diag = |a: &ControlPlane, b: &ControlPlane| {
        format!(
            "\n--- A log:\n{}\n--- B log:\n{}",
            tail(&a.log(), 60),
            tail(&b.log(), 60)
        )
    };

    // 1. A is in the middle of a session: freeze it.
    let target = eventually_async("a session A is working on", Duration::from_secs(60), || {
        let (store, sessions, api) = (&store, &sessions, &api_b);
        async move {
            for sid in sessions {
                let n = results(api, sid).await;
                if (1..STEPS - 6).contains(&n)
                    && live_holder(store, sid).await.as_deref() == Some(id_a)
                {
                    return Some(sid.clone());
                }
            }
            None
        }
    })
    .await;
    let before = results(&api_b, &target).await;
    signal(pid_a, "-STOP");
    eprintln!("froze A (pid {pid_a}) during {target} at {before} results");

    // 2. B takes the lease over once it expires and makes progress.
    eventually_async(
        "B to take over and advance the frozen session",
        Duration::from_secs(60),
        || {
            let (store, target, api) = (&store, &target, &api_b);
            async move {
                (live_holder(store, target).await.as_deref() == Some(id_b)
                    && results(api, target).await >= before + 2)
                    .then_some(())
            }
        },
    )
    .await;

    // 3. Thaw A: its wake finds itself fenced off and stops.
    signal(pid_a, "-CONT");
    eventually_async(
        "A to notice the lease was lost",
        Duration::from_secs(30),
        || {
            let a = &a;
            async move {
                a.log()
                    .contains("lease lost to another harness")
                    .then_some(())
            }
        },
    )
    .await;
    eprintln!("A was fenced off and stopped its wake");

    // 4. Kill B in the middle of a session; A finishes everything.
    let victim = eventually_async("a session B is working on", Duration::from_secs(60), || {
        let (store, sessions, api) = (&store, &sessions, &api_a);
        async move {
            for sid in sessions {
                let n = results(api, sid).await;
                if n < STEPS - 1 && live_holder(store, sid).await.as_deref() == Some(id_b) {
                    return Some((sid.clone(), n));
                }
            }
            None
        }
    })
    .await;
    b.kill9().unwrap();
    eprintln!(
        "killed B (pid {pid_b}) during {} at {} results",
        victim.0, victim.1
    );

    let mut logs = HashMap::new();
    for sid in &sessions {
        match api_a.wait_end_turn(sid, Duration::from_secs(120)).await {
            Ok(events) => {
                logs.insert(sid.clone(), events);
            }
            Err(e) => panic!("{e}{}", diag(&a, &b)),
        }
    }
    let holder_after = live_holder(&store, &victim.0).await;
    assert_ne!(
        holder_after.as_deref(),
        Some(id_b),
        "the dead replica holds nothing"
    );

    // The logs: one harness at a time left one consistent history.
    for (sid, events) in &logs {
        check_seqs_and_ids(events);
        let uses = check_tool_pairs(events);
        let commands: Vec<String> = uses
            .iter()
            .map(|u| u["input"]["command"].as_str().unwrap().to_owned())
            .collect();
        let want: Vec<String> = (0..STEPS).map(command).collect();
        assert_eq!(
            commands,
            want,
            "{sid}: one tool use per step, in order: {}",
            summary(events)
        );
        let messages: Vec<String> = events
            .iter()
            .filter(|e| e["type"] == "agent.message")
            .map(content_text)
            .collect();
        let mut want: Vec<String> = (0..STEPS).map(|k| format!("step {k}")).collect();
        want.push(format!("done after {STEPS} steps"));
        assert_eq!(messages, want, "{sid}: every model turn recorded once");
        let mut open: Option<String> = None;
        let mut closed = std::collections::HashSet::new();
        for e in events {
            match e["type"].as_str() {
                Some("span.model_request_start") => {
                    assert!(
                        open.is_none(),
                        "{sid}: model request {} started while {open:?} was open",
                        e["id"]
                    );
                    open = Some(e["id"].as_str().unwrap().to_owned());
                }
                Some("span.model_request_end") => {
                    let id = e["model_request_start_id"].as_str().unwrap().to_owned();
                    assert_eq!(
                        open.as_deref(),
                        Some(id.as_str()),
                        "{sid}: span end {} closes the open request",
                        e["seq"]
                    );
                    assert!(closed.insert(id), "{sid}: a request closed twice");
                    open = None;
                }
                _ => {}
            }
        }
        assert!(open.is_none(), "{sid}: a model request left open");
    }

    // The model's record: whatever any harness sent is a prefix of the
    // session's final history (no stale or divergent turn was ever asked).
    let requests = model.requests();
    for (i, sid) in sessions.iter().enumerate() {
        let final_ids: Vec<String> = logs[sid]
            .iter()
            .filter(|e| e["type"] == "agent.tool_use")
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        let prefix = format!("session {i}:");
        let mine: Vec<_> = requests
            .iter()
            .filter(|r| {
                first_user_text(&RequestCtx {
                    n: r.n,
                    body: r.body.clone(),
                })
                .starts_with(&prefix)
            })
            .collect();
        assert!(mine.len() > STEPS, "{sid}: every step asked the model");
        for r in mine {
            let seen = tool_use_ids(&r.body);
            assert!(
                seen.len() <= final_ids.len() && seen[..] == final_ids[..seen.len()],
                "{sid}: request {} diverges",
                r.n
            );
        }
    }

    // Per agent, no call ran twice (a call in flight when its harness lost
    // the lease may run once on each agent: the agents keep separate records).
    for agent in [&agent_a, &agent_b] {
        let mut starts: HashMap<String, usize> = HashMap::new();
        for l in agent.record().into_iter().filter(|l| l.t == "start") {
            *starts.entry(l.id).or_default() += 1;
        }
        assert!(
            starts.values().all(|n| *n == 1),
            "agent {}: a call started twice: {starts:?}",
            agent.id()
        );
    }
    a.terminate().unwrap();
}
