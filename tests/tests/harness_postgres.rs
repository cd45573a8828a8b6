//! The harness on the PostgreSQL store with two "replicas" (two store
//! handles with their own connection pools on one schema, as two control
//! planes would have): racing wakes, a paused replica fenced out after its
//! lease lapsed on the database clock, and a session left running by a dead
//! replica recovered by the other one's supervisor.
//!
//! Needs `AIRLOCK_TEST_PG_URL` (scripts/setup.d/20-postgres.sh). Without it
//! the tests fail under `CI=true` and are skipped with a printed reason
//! otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness_support;

use std::sync::Arc;
use std::time::Duration;

use airlock_tests::fake_model::{tool_loop, FakeModel, Reply, RequestCtx};
use harness::{StopReason, Supervisor, WakeOutcome};
use harness_support::*;
use serde_json::json;
use session_store::{PgOptions, PgStore, SessionStatus, SessionStore};
use testkit::eventually;

const TOOLS: usize = 3;

fn pg_url() -> Option<String> {
    match std::env::var("AIRLOCK_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
                panic!("AIRLOCK_TEST_PG_URL is unset under CI=true: scripts/setup.d/20-postgres.sh must start PostgreSQL");
            }
            eprintln!(
                "skipping: AIRLOCK_TEST_PG_URL is unset (source scripts/setup.d/20-postgres.sh)"
            );
            None
        }
    }
}

/// Drops the test's schema at the end (pass or fail).
struct SchemaGuard(Option<PgStore>);

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        if let Some(store) = self.0.take() {
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    let _ = rt.block_on(store.drop_schema());
                }
            })
            .join();
        }
    }
}

async fn replicas() -> Option<(Arc<dyn SessionStore>, Arc<dyn SessionStore>, SchemaGuard)> {
    let url = pg_url()?;
    let schema = format!("h_{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
    let connect = |schema: String| {
        let url = url.clone();
        async move {
            PgStore::connect(
                &url,
                PgOptions {
                    schema,
                    max_connections: 8,
                    ..PgOptions::default()
                },
            )
            .await
            .unwrap()
        }
    };
    let a = connect(schema.clone()).await;
    let b = connect(schema).await;
    Some((Arc::new(a.clone()), Arc::new(b), SchemaGuard(Some(a))))
}

fn check_once(events: &[session_store::StoredEvent], hands: &RecordingHands, what: &str) {
    check_complete(events);
    let uses = of_type(events, "agent.tool_use");
    assert_eq!(uses.len(), TOOLS, "{what}");
    check_ran_once(&uses, hands, what);
    let texts = message_texts(events);
    assert_eq!(texts.len(), TOOLS + 1, "{what}: {texts:?}");
    assert_eq!(
        texts.last().unwrap(),
        &format!("done after {TOOLS} tool calls"),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_racing_for_one_session_advance_it_once() {
    let Some((a_store, b_store, _guard)) = replicas().await else {
        return;
    };
    for round in 0..5 {
        let id = format!("sesn_race_{round}");
        let hands = RecordingHands::new();
        let fake = FakeModel::start(tool_loop(TOOLS, bash)).await.unwrap();
        create_session(&*a_store, &id, toolset(), "three steps").await;
        let a = harness(a_store.clone(), &fake, hands.clone(), config("replica-a"));
        let b = harness(b_store.clone(), &fake, hands.clone(), config("replica-b"));
        race(&a, &b, &id, &format!("round {round}")).await;
        let events = log(&*b_store, &id).await;
        check_once(&events, &hands, &format!("round {round}"));
        assert_eq!(
            fake.request_count(),
            TOOLS + 1,
            "round {round}: each model request made once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_is_fenced_out_after_its_lease_lapses() {
    let Some((a_store, b_store, _guard)) = replicas().await else {
        return;
    };
    let hands = RecordingHands::new();
    let gate = hands.close_gate();
    let fake = FakeModel::start(tool_loop(TOOLS, bash)).await.unwrap();
    create_session(&*a_store, "s", toolset(), "three steps").await;
    // Replica A takes a 1 s lease and, as if paused, never renews it.
    let mut cfg_a = config("replica-a");
    cfg_a.lease_ttl = Duration::from_secs(1);
    cfg_a.lease_renew_interval = Duration::from_secs(3600);
    let a = harness(a_store.clone(), &fake, hands.clone(), cfg_a);
    let task_a = tokio::spawn(async move { a.wake("s").await });
    eventually("A to call the first tool", PATIENCE, || {
        hands.calls().len() == 1
    })
    .await;
    // Replica B keeps trying until the lease has lapsed on the database clock.
    let b = harness(b_store.clone(), &fake, hands.clone(), config("replica-b"));
    let task_b = tokio::spawn(async move {
        let b = &b;
        testkit::eventually_async("B to get the lease", PATIENCE, || async move {
            match b.wake("s").await.unwrap() {
                WakeOutcome::Busy { .. } => None,
                other => Some(other),
            }
        })
        .await
    });
    eventually("B to take over and re-send the call", PATIENCE, || {
        hands.calls().len() == 2
    })
    .await;
    gate.add_permits(100);
    let ra = joined(task_a).await.unwrap();
    let rb = joined(task_b).await;
    assert_eq!(ra, WakeOutcome::LeaseLost);
    assert_eq!(rb, WakeOutcome::Idle(StopReason::EndTurn));
    check_once(&log(&*a_store, "s").await, &hands, "takeover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_left_running_by_a_dead_replica_is_recovered_by_the_other() {
    let Some((a_store, b_store, _guard)) = replicas().await else {
        return;
    };
    let hands = RecordingHands::new();
    let fake = slow_bash_loop(Duration::from_millis(100), TOOLS).await;
    create_session(&*a_store, "s", toolset(), "three steps").await;
    let mut cfg_a = config("replica-a");
    cfg_a.lease_ttl = Duration::from_secs(1);
    cfg_a.lease_renew_interval = Duration::from_millis(300);
    let a = harness(a_store.clone(), &fake, hands.clone(), cfg_a);
    let task_a = tokio::spawn(async move { a.wake("s").await });
    // Replica A dies in the middle of the session.
    assert!(fake.wait_for_requests(2, PATIENCE).await);
    task_a.abort();
    let _ = task_a.await;
    assert_eq!(
        a_store.get_session("s").await.unwrap().status,
        SessionStatus::Running
    );
    // Replica B's supervisor finds it once A's lease has lapsed.
    let mut cfg_b = config("replica-b");
    cfg_b.supervisor.recovery_scan_interval = Duration::from_millis(200);
    let sup = Supervisor::start(harness(b_store.clone(), &fake, hands.clone(), cfg_b));
    wait_idle_logged(&*b_store, "s", "replica B never recovered the session").await;
    assert!(sup.shutdown(Duration::from_secs(10)).await);
    check_once(&log(&*b_store, "s").await, &hands, "recovery");
    assert_eq!(
        b_store.get_session("s").await.unwrap().status,
        SessionStatus::Idle
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_queued_on_a_replica_that_died_before_waking_is_recovered_by_the_other() {
    let Some((a_store, b_store, _guard)) = replicas().await else {
        return;
    };
    let hands = RecordingHands::new();
    let fake = FakeModel::start(|req: &RequestCtx| {
        Reply::text(format!("answer to: {}", req.last_user_text().unwrap_or("")))
    })
    .await
    .unwrap();
    // Replica A's API appended the message to the idle session and died
    // before waking it.
    create_session(&*a_store, "s", toolset(), "are you there").await;
    assert_eq!(
        b_store.get_session("s").await.unwrap().status,
        SessionStatus::Idle
    );
    // Replica B's scan finds it.
    let sup = Supervisor::manual(harness(
        b_store.clone(),
        &fake,
        hands.clone(),
        config("replica-b"),
    ));
    assert_eq!(sup.recover_once().await, 1);
    eventually("the recovered wake to finish", PATIENCE, || {
        sup.active() == 0
    })
    .await;
    let events = complete_log(&*b_store, "s").await;
    assert_eq!(
        of_type(&events, "agent.message")[0].body["content"][0]["text"],
        json!("answer to: are you there")
    );
    assert_eq!(sup.recover_once().await, 0);
    assert_eq!(fake.requests().len(), 1);
    assert!(sup.shutdown(Duration::from_secs(10)).await);
}
