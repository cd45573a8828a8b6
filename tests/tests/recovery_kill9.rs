//! Crash recovery with real processes: a 50-tool-call session run by a real
//! `control-plane serve` (SQLite in its data dir) with a real enrolled
//! `sandbox-agent run` and a real Docker sandbox; the control plane is
//! killed with SIGKILL at 20 random points and restarted on the same data
//! dir each time (the agent reconnects by itself).
//!
//! The session must complete, and the evidence that no tool ran twice comes
//! from outside the log: each call appends its number to `/workspace/log`
//! and prints the line count, so the file (read with `docker exec`) must
//! hold 0..49 once each in order, every result the model received (the fake
//! model's request record) must be the count right after its own append,
//! and the agent's execution record must show one `start` per call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use airlock_tests::deploy::logs_tail;
use airlock_tests::fake_model::{tool_loop, FakeModel, RequestCtx};
use e2e_support::{
    check_seqs_and_ids, check_tool_pairs, content_text, results_by_use, runtime_toml, sandbox_file,
    summary, wait_api, Deployment, Rng, SandboxAgent,
};
use serde_json::{json, Value};

const CALLS: usize = 50;
const KILLS: usize = 20;

/// Appends its number, takes a moment (so kills land inside tool calls
/// too), prints the line count.
fn command(k: usize) -> String {
    format!("echo {k} >> /workspace/log; sleep 0.2; wc -l < /workspace/log")
}

/// A tool call the agent started and has not finished.
fn in_flight(agent: &SandboxAgent) -> bool {
    let mut open = std::collections::HashSet::new();
    for l in agent.record() {
        if l.t == "start" {
            open.insert(l.id);
        } else {
            open.remove(&l.id);
        }
    }
    !open.is_empty()
}

/// Tool results in the log so far (`None` while the API is down).
async fn progress(api: &e2e_support::Api, session_id: &str) -> Option<usize> {
    let events = api.events(session_id).await.ok()?;
    Some(
        events
            .iter()
            .filter(|e| e["type"] == "agent.tool_result")
            .count(),
    )
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_tool_calls_survive_twenty_kill9s_without_running_a_tool_twice() {
    let mut rng = Rng::from_env("recovery_kill9");
    let model = FakeModel::builder()
        .latency(Duration::from_millis(60))
        .start(tool_loop(CALLS, |k| {
            ("bash".to_owned(), json!({ "command": command(k) }))
        }))
        .await
        .unwrap();
    let mut d = Deployment::start(runtime_toml(&model.base_url(), 2.0))
        .await
        .unwrap();
    let agent = SandboxAgent::start(&d.cp, &d.environment_id).unwrap();
    let api = d.api.clone();
    let agent_id = api.create_agent("counter").await.unwrap();
    let session_id = api
        .create_session(&agent_id, &d.environment_id)
        .await
        .unwrap();
    api.user_message(&session_id, "Count to fifty, one bash call at a time.")
        .await
        .unwrap();

    // Kill at random points spread over the session: after a random amount
    // of progress past the previous kill, plus a random delay, so kills land
    // in model streams, tool calls and between writes alike; every fourth
    // kill waits for a tool call in flight on the agent, so re-sent calls
    // are certain to happen.
    let started = Instant::now();
    let mut kill_log = Vec::new();
    for i in 0..KILLS {
        let target = (i + 1) * (CALLS - 2) / (KILLS + 1);
        let (api_ref, session) = (&api, session_id.as_str());
        let progressed = testkit::try_eventually_async(
            &format!("progress to {target} tool results"),
            Duration::from_secs(90),
            || async move { progress(api_ref, session).await.filter(|n| *n >= target) },
        )
        .await;
        let reached = match progressed {
            Ok(n) => n,
            Err(_) => panic!(
                "no progress to {target} tool results before kill {i}: {}\n{}",
                summary(&api.events(&session_id).await.unwrap_or_default()),
                logs_tail(&d.cp, 80, &agent.agent, 30)
            ),
        };
        let point = if i % 4 == 3 {
            testkit::eventually(
                &format!("a tool call in flight before kill {i}"),
                Duration::from_secs(30),
                || in_flight(&agent),
            )
            .await;
            "a tool call in flight".to_owned()
        } else {
            // A random kill point is what this test is about, not a wait.
            let delay = Duration::from_millis(rng.below(400));
            tokio::time::sleep(delay).await;
            format!("+{} ms", delay.as_millis())
        };
        d.cp.kill9().unwrap();
        kill_log.push(format!("kill {i}: at >= {reached} results, {point}"));
        d.cp.start().unwrap();
        wait_api(&api, Duration::from_secs(30)).await.unwrap();
    }
    eprintln!("{}", kill_log.join("\n"));

    let events = api
        .wait_end_turn(&session_id, Duration::from_secs(180))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs_tail(&d.cp, 120, &agent.agent, 40)));
    eprintln!(
        "session completed {:.1} s after the first kill was scheduled",
        started.elapsed().as_secs_f64()
    );

    // 1. The log: no event lost or duplicated, one result per tool use.
    check_seqs_and_ids(&events);
    let uses = check_tool_pairs(&events);
    let commands: Vec<String> = uses
        .iter()
        .map(|u| u["input"]["command"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = (0..CALLS).map(command).collect();
    assert_eq!(commands, want, "one tool use per step, in order");
    let results = results_by_use(&events);
    let ids: Vec<String> = uses
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect();
    for (k, id) in ids.iter().enumerate() {
        let r = &results[id];
        assert_eq!(r["is_error"], false, "call {k}: {r}");
        assert_eq!(
            content_text(r).trim(),
            (k + 1).to_string(),
            "call {k} saw the file with {k}+1 lines: {r}"
        );
    }
    let last_idle = events
        .iter()
        .rev()
        .find(|e| e["type"] == "session.status_idle")
        .unwrap();
    assert_eq!(last_idle["stop_reason"]["type"], "end_turn");
    let final_text = events
        .iter()
        .rev()
        .find(|e| e["type"] == "agent.message")
        .unwrap();
    assert_eq!(
        content_text(final_text),
        format!("done after {CALLS} tool calls")
    );

    // 2. The model's record: every request's history is a prefix of the
    // final one (no tool use lost, duplicated or re-issued under another
    // id), and the results it was given are the counts right after each
    // call's own append.
    let requests = model.requests();
    let final_req = requests
        .iter()
        .rev()
        .find(|r| tool_use_ids(&r.body).len() == CALLS)
        .expect("a request carrying all 50 results");
    assert_eq!(
        tool_use_ids(&final_req.body),
        ids,
        "the model saw the log's tool use ids"
    );
    for r in &requests {
        let seen = tool_use_ids(&r.body);
        assert_eq!(
            seen[..],
            ids[..seen.len()],
            "request {} diverges from the final history",
            r.n
        );
    }
    let ctx = RequestCtx {
        n: final_req.n,
        body: final_req.body.clone(),
    };
    let model_results: Vec<String> = ctx
        .messages()
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter(|b| b["type"] == "tool_result")
        .map(|b| content_text(b).trim().to_owned())
        .collect();
    let counts: Vec<String> = (1..=CALLS).map(|n| n.to_string()).collect();
    assert_eq!(model_results, counts, "the model got each call's own count");

    // 3. The agent's execution record: each call started exactly once, in
    // one sandbox, and nothing else ran there.
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
    assert_eq!(starts.len(), CALLS, "no other call ran: {starts:?}");
    let audit = agent.audit();
    let executes = audit.iter().filter(|a| a["call"] == "execute").count();
    let replayed = audit
        .iter()
        .filter(|a| a["call"] == "execute" && a["outcome"] == "replayed")
        .count();
    let provisions = audit.iter().filter(|a| a["call"] == "provision").count();
    eprintln!(
        "agent: {CALLS} calls ran once each; {} re-sent after a kill ({replayed} answered from the record, the rest joined the run in flight); {provisions} provision(s)",
        executes - CALLS
    );
    assert!(
        executes > CALLS,
        "kills inside tool calls made the harness re-send some calls"
    );

    // 4. The sandbox itself: one sandbox, every number once, in order.
    let sandboxes = agent.sandboxes();
    assert_eq!(
        sandboxes.len(),
        1,
        "one sandbox served the whole session: {sandboxes:?}"
    );
    let log = sandbox_file(&sandboxes[0], "/workspace/log").unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let want: Vec<String> = (0..CALLS).map(|k| k.to_string()).collect();
    assert_eq!(lines, want, "/workspace/log holds each number exactly once");
    let sandbox_of: Vec<&str> = record
        .iter()
        .filter(|l| l.t == "start")
        .map(|l| l.sandbox_id.as_str())
        .collect();
    assert!(
        sandbox_of.iter().all(|s| *s == sandboxes[0]),
        "every call ran in that sandbox"
    );

    // The restarts really recovered the session (not one lucky run).
    let log = d.cp.log();
    assert!(
        log.matches("control plane started").count() > KILLS,
        "the control plane was restarted {KILLS} times"
    );
    d.cp.terminate().unwrap();
}
