//! Recovery in seconds, with real processes: a real `control-plane serve`
//! (SQLite in its data dir, lease TTL 60 s) runs a session against the fake
//! model answering in 1.5 s (the scenario) with a real enrolled
//! `sandbox-agent run` and a real Docker sandbox.
//!
//! Mid-session, while a model request is in flight:
//! 1. the control plane is frozen (SIGSTOP): a second `serve` on the same
//!    data dir must refuse to start (the lock on `<data_dir>/instance_id`),
//!    so two live processes never share an instance id;
//! 2. the frozen one is killed (SIGKILL) and `serve` restarted on the same
//!    data dir: it takes back the lease its instance id still holds with a
//!    higher epoch and resumes the session at once. The test fails if it
//!    waits for the 60 s TTL: the first new event must come within 15 s of
//!    the restart and the session must end its turn within 45 s;
//! 3. no tool ran twice (the agent's execution record: one `start` per
//!    tool_use id; the sandbox file holds every number once), the log is
//!    gap-free with one result per tool use;
//! 4. the zombie's grant is fenced: the lease epoch the killed process held
//!    is refused for a write, the current epoch is higher.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use airlock_tests::deploy::{binary, logs_tail};
use airlock_tests::fake_model::{tool_loop, FakeModel};
use e2e_support::{
    check_seqs_and_ids, check_tool_pairs, content_text, runtime_toml, sandbox_file, summary,
    wait_api, Deployment, SandboxAgent,
};
use serde_json::{json, Value};
use session_store::{Fence, NewEvent, SessionStore, SqliteOptions, SqliteStore, StoreError};

const CALLS: usize = 6;
const TTL_SECONDS: f64 = 60.0;
const MODEL_LATENCY: Duration = Duration::from_millis(1500);

fn command(k: usize) -> String {
    format!("echo {k} >> /workspace/log; wc -l < /workspace/log")
}

async fn tool_results(api: &e2e_support::Api, session_id: &str) -> Option<usize> {
    let events = api.events(session_id).await.ok()?;
    Some(
        events
            .iter()
            .filter(|e| e["type"] == "agent.tool_result")
            .count(),
    )
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_resumes_its_session_before_the_lease_ttl() {
    let model = FakeModel::builder()
        .latency(MODEL_LATENCY)
        .start(tool_loop(CALLS, |k| {
            ("bash".to_owned(), json!({ "command": command(k) }))
        }))
        .await
        .unwrap();
    let mut d = Deployment::start(runtime_toml(&model.base_url(), TTL_SECONDS))
        .await
        .unwrap();
    let data_dir = d.cp.dir().join("data");
    let agent = SandboxAgent::start(&d.cp, &d.environment_id).unwrap();
    let api = d.api.clone();
    let agent_id = api.create_agent("counter").await.unwrap();
    let session_id = api
        .create_session(&agent_id, &d.environment_id)
        .await
        .unwrap();
    api.user_message(&session_id, "Count, one bash call at a time.")
        .await
        .unwrap();

    // The stable instance id: created once, 0600.
    let id_path = data_dir.join("instance_id");
    let instance_id = std::fs::read_to_string(&id_path).unwrap().trim().to_owned();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&id_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} mode", id_path.display());
    }

    // Mid-session: two results in, the next model request in flight.
    let (api_ref, sid) = (&api, session_id.as_str());
    testkit::try_eventually_async("two tool results", Duration::from_secs(90), || async move {
        tool_results(api_ref, sid).await.filter(|n| *n >= 2)
    })
    .await
    .unwrap_or_else(|_| panic!("no progress: {}", logs_tail(&d.cp, 80, &agent.agent, 30)));
    testkit::eventually("a model request in flight", Duration::from_secs(30), || {
        model.open_streams() > 0
    })
    .await;
    let before = api.events(&session_id).await.unwrap();
    let last_seq_before = before.last().unwrap()["seq"].as_u64().unwrap();

    // 1. Frozen, not dead: a second process on the data dir must not start.
    let pid = d.cp.pid().unwrap();
    signal(pid, "-STOP");
    let second = std::process::Command::new(binary("control-plane").unwrap())
        .arg("--config")
        .arg(d.cp.config_path())
        .arg("serve")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let second_log = String::from_utf8_lossy(&second.stderr).into_owned()
        + &String::from_utf8_lossy(&second.stdout);
    assert!(
        !second.status.success(),
        "a second serve on the data dir started: {second_log}"
    );
    assert!(
        second_log.contains("another control plane is running on data dir"),
        "the refusal names the reason: {second_log}"
    );

    // 2. SIGKILL the frozen one; what it held stays in the store.
    d.cp.kill9().unwrap();
    let zombie = {
        let store = SqliteStore::open_in_dir(&data_dir, SqliteOptions::default())
            .await
            .unwrap();
        let lease = store.get_session(&session_id).await.unwrap().lease;
        drop(store);
        lease
    };
    assert_eq!(
        zombie.holder.as_deref(),
        Some(instance_id.as_str()),
        "the killed process held the session's lease under the data dir's id"
    );
    assert!(zombie.expires_at.is_some());

    let restarted = Instant::now();
    d.cp.start().unwrap();
    let first_new = testkit::try_eventually_async(
        "the first new event after the restart",
        Duration::from_secs(15),
        || async move {
            let events = api_ref.events(sid).await.ok()?;
            events
                .iter()
                .any(|e| e["seq"].as_u64().unwrap_or(0) > last_seq_before)
                .then(|| restarted.elapsed())
        },
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no new event within 15 s of the restart (lease TTL {TTL_SECONDS} s): {}",
            logs_tail(&d.cp, 80, &agent.agent, 30)
        )
    });
    wait_api(&api, Duration::from_secs(30)).await.unwrap();
    let events = api
        .wait_end_turn(&session_id, Duration::from_secs(45))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs_tail(&d.cp, 120, &agent.agent, 40)));
    let ended = restarted.elapsed();
    eprintln!(
        "restart -> first new event {:.2} s, -> end of turn {:.2} s (lease TTL {TTL_SECONDS} s)",
        first_new.as_secs_f64(),
        ended.as_secs_f64()
    );
    assert!(
        ended < Duration::from_secs(45),
        "the turn ended {ended:?} after the restart"
    );
    assert!(
        d.cp.log().contains("reclaimed this instance's leases"),
        "the restart took the lease back: {}",
        logs_tail(&d.cp, 60, &agent.agent, 0)
    );

    // 3. The log, the agent's record and the sandbox: nothing twice.
    check_seqs_and_ids(&events);
    let uses = check_tool_pairs(&events);
    assert_eq!(uses.len(), CALLS, "{}", summary(&events));
    let ids: Vec<String> = uses
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect();
    let mut starts: HashMap<String, usize> = HashMap::new();
    for l in agent.record().iter().filter(|l| l.t == "start") {
        *starts.entry(l.id.clone()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(starts.get(id), Some(&1), "{id} started once: {starts:?}");
    }
    assert_eq!(starts.len(), CALLS, "no other call ran: {starts:?}");
    let sandboxes = agent.sandboxes();
    assert_eq!(sandboxes.len(), 1, "{sandboxes:?}");
    let file = sandbox_file(&sandboxes[0], "/workspace/log").unwrap();
    let want: Vec<String> = (0..CALLS).map(|k| k.to_string()).collect();
    assert_eq!(file.lines().collect::<Vec<_>>(), want, "each call ran once");
    let last = events.iter().rev().find(|e| e["type"] == "agent.message");
    assert_eq!(
        content_text(last.unwrap()),
        format!("done after {CALLS} tool calls")
    );

    // 4. The zombie's grant is fenced.
    d.cp.terminate().unwrap();
    let store = SqliteStore::open_in_dir(&data_dir, SqliteOptions::default())
        .await
        .unwrap();
    let now = store.get_session(&session_id).await.unwrap().lease;
    assert!(
        now.epoch > zombie.epoch,
        "a new grant since the kill: {now:?} after {zombie:?}"
    );
    let write: Value = json!({"type": "agent.message", "content": []});
    match store
        .append(
            &session_id,
            vec![NewEvent::processed(write)],
            Fence::Epoch(zombie.epoch),
        )
        .await
    {
        Err(StoreError::Fenced {
            presented_epoch,
            current_epoch,
            ..
        }) => assert_eq!((presented_epoch, current_epoch), (zombie.epoch, now.epoch)),
        other => panic!("the killed process's epoch must be fenced, got {other:?}"),
    }
}
