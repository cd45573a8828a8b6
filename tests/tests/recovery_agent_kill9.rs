//! The other side crashing. First the sandbox-agent is killed with SIGKILL
//! while a tool call runs, twice in one session, and restarted. The control plane
//! keeps running; its harness re-sends the interrupted call with the same
//! id, the restarted agent (which adopted its sandbox) answers that the
//! outcome is unknown instead of running it again, the model is told so,
//! and the session continues in the same sandbox. Then a sandbox container
//! is killed under a call: that call is an error, the next runs in a new
//! sandbox.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;

use std::collections::HashMap;
use std::time::Duration;

use airlock_tests::deploy::{logs_tail, tail};
use airlock_tests::fake_model::{tool_loop, FakeModel};
use e2e_support::{
    check_seqs_and_ids, check_tool_pairs, content_text, results_by_use, runtime_toml, sandbox_file,
    summary, Api, Deployment, SandboxAgent,
};
use serde_json::json;

const CALLS: usize = 12;

fn command(k: usize) -> String {
    format!("echo {k} >> /workspace/log; sleep 1; wc -l < /workspace/log")
}

/// The fake model running `steps` bash calls (`command(k)`), a deployment
/// using it, an enrolled sandbox-agent, and a session of a new agent `name`
/// that was sent `message`; the last is the session id.
async fn start_session(
    steps: usize,
    command: fn(usize) -> String,
    name: &str,
    message: &str,
) -> (FakeModel, Deployment, SandboxAgent, Api, String) {
    let model = FakeModel::builder()
        .latency(Duration::from_millis(20))
        .start(tool_loop(steps, move |k| {
            ("bash".to_owned(), json!({ "command": command(k) }))
        }))
        .await
        .unwrap();
    let d = Deployment::start(runtime_toml(&model.base_url(), 5.0))
        .await
        .unwrap();
    let agent = SandboxAgent::start(&d.cp, &d.environment_id).unwrap();
    let api = d.api.clone();
    let agent_def = api.create_agent(name).await.unwrap();
    let session_id = api
        .create_session(&agent_def, &d.environment_id)
        .await
        .unwrap();
    api.user_message(&session_id, message).await.unwrap();
    (model, d, agent, api, session_id)
}

/// Tool results in the session's log so far (0 while the API does not answer).
async fn tool_results(api: &Api, session_id: &str) -> usize {
    api.events(session_id)
        .await
        .map(|e| {
            e.iter()
                .filter(|e| e["type"] == "agent.tool_result")
                .count()
        })
        .unwrap_or(0)
}

/// Ids of calls the agent started and has not finished.
fn in_flight(agent: &SandboxAgent) -> Vec<String> {
    let mut open = Vec::new();
    for l in agent.record() {
        if l.t == "start" {
            open.push(l.id);
        } else {
            open.retain(|i| *i != l.id);
        }
    }
    open
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_call_twice_the_session_goes_on_and_nothing_runs_twice() {
    let (_model, d, mut agent, api, session_id) =
        start_session(CALLS, command, "counter", "Count, one bash call at a time.").await;

    let mut interrupted = Vec::new();
    for after in [3, 7] {
        let (api_ref, session, agent_ref) = (&api, session_id.as_str(), &agent);
        let found = testkit::try_eventually_async(
            &format!("a call in flight after {after} results"),
            Duration::from_secs(90),
            || async move {
                if tool_results(api_ref, session).await >= after {
                    in_flight(agent_ref).pop()
                } else {
                    None
                }
            },
        )
        .await;
        let id = match found {
            Ok(id) => id,
            Err(_) => panic!(
                "no call in flight after {after} results: {}\n{}",
                summary(&api.events(&session_id).await.unwrap_or_default()),
                tail(&d.cp.log(), 60)
            ),
        };
        agent.agent.kill9().unwrap();
        interrupted.push(id);
        agent.agent.run().unwrap();
        d.cp.wait_connected(agent.id(), Duration::from_secs(60))
            .unwrap();
    }

    let events = api
        .wait_end_turn(&session_id, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs_tail(&d.cp, 100, &agent.agent, 40)));
    check_seqs_and_ids(&events);
    let uses = check_tool_pairs(&events);
    let commands: Vec<String> = uses
        .iter()
        .map(|u| u["input"]["command"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        commands,
        (0..CALLS).map(command).collect::<Vec<_>>(),
        "the session went on to the end"
    );
    let results = results_by_use(&events);

    // The interrupted calls: the model was told the outcome is unknown.
    for id in &interrupted {
        let r = &results[id];
        assert_eq!(r["is_error"], true, "{r}");
        assert!(
            content_text(r).to_lowercase().contains("unknown"),
            "the model is told the outcome is unknown: {r}"
        );
    }
    // Every other call ran and succeeded.
    for u in &uses {
        let id = u["id"].as_str().unwrap();
        if !interrupted.iter().any(|i| i == id) {
            assert_eq!(results[id]["is_error"], false, "{}", results[id]);
        }
    }

    // Nothing ran twice. The agent's audit log (append-only; the execution
    // record is compacted when the agent starts) has one completed run per
    // call that finished, none for the interrupted ones, which were
    // answered `unknown` when re-sent.
    let mut ran: HashMap<String, usize> = HashMap::new();
    let mut unknown: HashMap<String, usize> = HashMap::new();
    for a in agent.audit().into_iter().filter(|a| a["call"] == "execute") {
        let id = a["tool_use_id"].as_str().unwrap_or_default().to_owned();
        match a["outcome"].as_str() {
            Some("ok" | "tool_error") => *ran.entry(id).or_default() += 1,
            Some("unknown") => *unknown.entry(id).or_default() += 1,
            _ => {}
        }
    }
    for u in &uses {
        let id = u["id"].as_str().unwrap();
        if interrupted.iter().any(|i| i == id) {
            assert_eq!(
                ran.get(id),
                None,
                "interrupted call {id} has no completed run"
            );
            assert!(
                unknown.contains_key(id),
                "interrupted call {id} was answered unknown"
            );
        } else {
            assert_eq!(ran.get(id), Some(&1), "call {id} ran exactly once: {ran:?}");
        }
    }
    assert_eq!(
        ran.len() + interrupted.len(),
        CALLS,
        "no other call ran: {ran:?}"
    );
    let sandboxes = agent.sandboxes();
    assert_eq!(
        sandboxes.len(),
        1,
        "the session kept its (adopted) sandbox: {sandboxes:?}"
    );
    let file = sandbox_file(&sandboxes[0], "/workspace/log").unwrap();
    let mut seen: HashMap<usize, usize> = HashMap::new();
    for l in file.lines() {
        *seen.entry(l.trim().parse().unwrap()).or_default() += 1;
    }
    for (k, u) in uses.iter().enumerate() {
        let n = seen.get(&k).copied().unwrap_or(0);
        if interrupted.iter().any(|i| i == u["id"].as_str().unwrap()) {
            assert!(n <= 1, "interrupted call {k} ran at most once: {file}");
        } else {
            assert_eq!(n, 1, "call {k} ran exactly once: {file}");
        }
    }
    let provisions = agent
        .audit()
        .iter()
        .filter(|a| a["call"] == "provision")
        .count();
    assert_eq!(provisions, 1, "the sandbox was found again, not made again");
}

/// A sandbox killed under a tool call: that call's result says the outcome
/// is unknown, and the next call runs in a new sandbox instead of failing
/// against the dead one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_killed_mid_call_the_next_call_gets_a_new_sandbox() {
    const STEPS: usize = 6;
    let (_model, d, agent, api, session_id) = start_session(
        STEPS,
        |k| format!("sleep 1; echo step {k}"),
        "stepper",
        "Take six steps.",
    )
    .await;

    // Kill the container while the third call runs.
    let (api_ref, session, agent_ref) = (&api, session_id.as_str(), &agent);
    let (victim, first) = testkit::eventually_async(
        "a third call in flight",
        Duration::from_secs(60),
        || async move {
            if tool_results(api_ref, session).await < 2 {
                return None;
            }
            match (in_flight(agent_ref).pop(), &agent_ref.sandboxes()[..]) {
                (Some(id), [sbx]) => Some((id, sbx.clone())),
                _ => None,
            }
        },
    )
    .await;
    let killed = std::process::Command::new("docker")
        .args(["kill", &format!("airlock-{first}")])
        .output()
        .unwrap();
    assert!(
        killed.status.success(),
        "docker kill: {}",
        String::from_utf8_lossy(&killed.stderr)
    );

    let events = api
        .wait_end_turn(&session_id, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs_tail(&d.cp, 80, &agent.agent, 40)));
    check_seqs_and_ids(&events);
    let uses = check_tool_pairs(&events);
    assert_eq!(uses.len(), STEPS);
    let results = results_by_use(&events);
    let hit = &results[&victim];
    assert_eq!(hit["is_error"], true, "{hit}");
    let mut after_victim = false;
    for u in &uses {
        let id = u["id"].as_str().unwrap();
        if id == victim {
            after_victim = true;
            continue;
        }
        let r = &results[id];
        assert_eq!(
            r["is_error"],
            false,
            "every other call ran{}: {r}",
            if after_victim {
                " (in the new sandbox)"
            } else {
                ""
            }
        );
    }
    let sandboxes = agent.sandboxes();
    assert_eq!(sandboxes.len(), 1, "one live sandbox: {sandboxes:?}");
    assert_ne!(sandboxes[0], first, "a new sandbox replaced the killed one");
    let provisions = agent
        .audit()
        .iter()
        .filter(|a| a["call"] == "provision")
        .count();
    assert_eq!(provisions, 2);
}
