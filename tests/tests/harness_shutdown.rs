//! A supervisor that runs out of shutdown grace aborts its wakes and
//! releases their leases, so another replica takes the sessions over at
//! once instead of after the lease TTL (the store's clock is manual here,
//! so an unreleased lease would never expire during the test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness_support;

use std::time::Duration;

use airlock_tests::fake_model::{sequence, FakeModel, Reply};
use harness::{StopReason, Supervisor, WakeOutcome};
use harness_support::*;
use session_store::StoreError;
use testkit::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_wakes_release_their_leases_for_another_replica() {
    let (_fx, store) = sqlite_store().await;
    // Replica 1's model never answers within the test: its wakes are
    // in flight when it shuts down.
    let slow = FakeModel::builder()
        .latency(Duration::from_secs(600))
        .start(sequence(vec![
            Reply::text("too late"),
            Reply::text("too late"),
        ]))
        .await
        .unwrap();
    let sessions = ["s-a", "s-b"];
    for s in sessions {
        create_session(&*store, s, toolset(), "say something").await;
    }
    let sup = Supervisor::start(harness(
        store.clone(),
        &slow,
        RecordingHands::new(),
        config("replica-1"),
    ));
    for s in sessions {
        sup.notify(s);
    }
    eventually("the wakes reach the model", PATIENCE, || {
        slow.request_count() >= sessions.len()
    })
    .await;
    for s in sessions {
        let lease = store.get_session(s).await.unwrap().lease;
        assert_eq!(lease.holder.as_deref(), Some("replica-1"), "{s}: {lease:?}");
    }

    // Grace runs out: the wakes are aborted, not finished.
    assert!(!sup.shutdown(Duration::from_millis(200)).await);

    for s in sessions {
        let lease = store.get_session(s).await.unwrap().lease;
        assert_eq!(
            lease.holder, None,
            "{s}: lease still held after shutdown: {lease:?}"
        );
        // Another replica gets it now (the clock never moved, so only a
        // release makes this possible).
        let taken = store
            .acquire_lease(s, "probe", Duration::from_secs(30))
            .await;
        let taken = match taken {
            Ok(l) => l,
            Err(StoreError::LeaseHeld { holder, .. }) => {
                panic!("{s}: still leased to {holder} after shutdown")
            }
            Err(e) => panic!("{s}: {e}"),
        };
        store.release_lease(&taken).await.unwrap();
    }

    // Replica 2 finishes both sessions from the log.
    let fast = FakeModel::builder()
        .start(sequence(vec![Reply::text("hello"), Reply::text("hello")]))
        .await
        .unwrap();
    let h2 = harness(
        store.clone(),
        &fast,
        RecordingHands::new(),
        config("replica-2"),
    );
    for s in sessions {
        assert_eq!(
            h2.wake(s).await.unwrap(),
            WakeOutcome::Idle(StopReason::EndTurn),
            "{s}"
        );
        let events = log(&*store, s).await;
        check_log(&events);
        assert_eq!(of_type(&events, "agent.message").len(), 1, "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakes_that_finish_in_the_grace_leave_nothing_to_release() {
    let (_fx, store) = sqlite_store().await;
    let fake = FakeModel::builder()
        .latency(Duration::from_millis(100))
        .start(sequence(vec![Reply::text("hello")]))
        .await
        .unwrap();
    create_session(&*store, "s", toolset(), "say something").await;
    let h = harness(
        store.clone(),
        &fake,
        RecordingHands::new(),
        config("replica-1"),
    );
    let sup = Supervisor::start(h.clone());
    sup.notify("s");
    eventually("the wake reaches the model", PATIENCE, || {
        fake.request_count() >= 1
    })
    .await;
    assert!(sup.shutdown(Duration::from_secs(10)).await);
    assert_eq!(h.release_abandoned_leases().await, 0);
    let record = store.get_session("s").await.unwrap();
    assert_eq!(record.lease.holder, None);
    assert_eq!(of_type(&log(&*store, "s").await, "agent.message").len(), 1);
}
