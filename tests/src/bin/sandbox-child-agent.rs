//! sandbox-child-agent: the sandbox service that
//! `tests/tests/sandbox_lifecycle.rs::kill_9_agent_then_restart_adopts_or_reaps`
//! starts as a process and kills with SIGKILL. Not a test on its own, so it
//! is a helper binary rather than an ignored test in that file.
//!
//! ```text
//! sandbox-child-agent AGENT_ID DATA_DIR
//! ```
//!
//! Starts a sandbox service for `AGENT_ID` on `DATA_DIR` with a warm pool of
//! one, provisions `keep` (writes `state.txt` in it), waits for the pool,
//! provisions `short` (2 s TTL, created cold), starts a `sleep 3` call in
//! `keep` with tool_use_id `toolu_inflight`, and once that call runs writes
//! `DATA_DIR/child-ready` (`keep`, `short` and `short`'s expiry, one per
//! line). Then it waits to be killed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use airlock_tests::sandbox::{container_processes, exec, provision, test_image, TestAgent};
use protocol::sandbox::{ExecuteRequest, ProvisionRequest};
use serde_json::json;
use testkit::{eventually, eventually_async};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(agent_id), Some(dir)) = (args.next(), args.next()) else {
        eprintln!("usage: sandbox-child-agent AGENT_ID DATA_DIR");
        std::process::exit(64);
    };
    let dir = PathBuf::from(dir);
    let mut agent = TestAgent::with_identity(&agent_id, &dir);
    agent.cleanup_on_drop = false;
    agent.pool.size = Some(1);
    let (svc, _) = agent.start().await;
    let keep = provision(&svc).await;
    let r = exec(
        &svc,
        &keep,
        "write",
        json!({"file_path": "state.txt", "content": "before crash"}),
    )
    .await;
    assert!(!r.is_error);
    let image = test_image();
    eventually_async("child pool filled", Duration::from_secs(60), || {
        let svc = svc.clone();
        let image = image.clone();
        async move { svc.pool_ready(&image) == 1 }
    })
    .await;
    // `short` comes late, shortly before the test kills this process, so that
    // it is still there then (its expiry has whole seconds: the TTL is between
    // one and two seconds); a profile the pool does not hold, so it is
    // created cold and the warm container stays in the pool
    let short = svc
        .provision(ProvisionRequest {
            ttl_seconds: Some(2),
            memory_bytes: Some(128 * 1024 * 1024),
            ..Default::default()
        })
        .await
        .unwrap()
        .sandbox_id;
    let svc2 = svc.clone();
    let keep2 = keep.clone();
    tokio::spawn(async move {
        let _ = svc2
            .execute(
                ExecuteRequest {
                    sandbox_id: keep2,
                    tool_use_id: "toolu_inflight".into(),
                    name: "bash".into(),
                    input: json!({"command": "sleep 3", "timeout_ms": 10000}),
                    stream: false,
                },
                None,
            )
            .await;
    });
    // ready once the call is in flight: its command runs in the container
    eventually("the in-flight call to run", Duration::from_secs(30), || {
        container_processes(&keep)
            .iter()
            .any(|p| p.contains("sleep 3"))
    })
    .await;
    // short's expiry as the agent lists it (RFC 3339, whole seconds)
    let expires_at = svc
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.sandbox_id == short)
        .and_then(|s| s.expires_at)
        .expect("short listed with an expiry (reaped already on a very slow machine?)");
    // written whole, then renamed: the test sees the file complete or not at all
    let tmp = dir.join("child-ready.tmp");
    std::fs::write(&tmp, format!("{keep}\n{short}\n{expires_at}\n")).unwrap();
    std::fs::rename(&tmp, dir.join("child-ready")).unwrap();
    // Killed by the test from here on; the bound only matters if the test
    // itself died first.
    tokio::time::sleep(Duration::from_secs(600)).await;
}
