//! The conformance suite every `SessionStore` implementation must pass.
//!
//! Each case takes a fresh, empty store. `all_conformance_tests!(make)`
//! expands to one `#[tokio::test]` per case, where `make().await` returns
//! `Option<Fixture>` (`None`: skip, the fixture printed why).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use session_store::{
    AppendBatch, BodyUpdate, EventPage, EventQuery, EventSelector, Fence, NewEvent, NewSession,
    Order, SessionQuery, SessionStatus, SessionStore, SessionUpdate, StoreError, StoredEvent,
    TailItem,
};
use testkit::eventually_async;

/// A store under test and whatever keeps it alive (temp dir, schema).
pub struct Fixture {
    pub store: Arc<dyn SessionStore>,
    pub guard: Box<dyn std::any::Any + Send>,
}

/// Generous bound for anything we wait for; only reached when a test fails.
const PATIENCE: Duration = Duration::from_secs(30);

#[macro_export]
macro_rules! conformance_tests {
    ($make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(fixture) = $make().await else { return };
                conformance::$case(fixture.store.clone()).await;
                drop(fixture);
            }
        )*
    };
}

#[macro_export]
macro_rules! all_conformance_tests {
    ($make:path) => {
        $crate::conformance_tests!($make;
            append_assigns_ids_seqs_and_processed_at,
            seqs_are_gap_free_and_ordered_across_batches,
            invalid_and_missing_are_refused_without_effect,
            a_batch_is_atomic,
            old_epoch_is_fenced_after_takeover,
            lease_is_exclusive_until_released_or_expired,
            epochs_increase_forever,
            concurrent_appenders_on_one_session,
            concurrent_appenders_on_many_sessions,
            subscribe_from_any_seq_while_appending,
            subscribe_reports_processing_of_queued_events,
            mark_processed_by_seq_and_id,
            status_changes_atomically_with_append,
            session_crud_and_body_patches,
            delete_ends_tails_and_reads,
            pagination_and_status_filter,
            sessions_needing_wake_follows_leases,
            sessions_needing_wake_includes_queued_input,
            create_with_initial_events,
            list_events_pages_filters_and_orders,
            a_refused_batch_among_concurrent_ones_fails_alone,
            status_transitions_follow_one_rule,
            a_stale_status_change_is_fenced_in_every_path,
            sessions_are_counted_by_status,
            reclaim_takes_back_only_own_leases_with_a_higher_epoch,
        );
    };
}

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

pub async fn new_session(store: &dyn SessionStore, status: SessionStatus) -> String {
    let id = new_id("sesn");
    store
        .create_session(NewSession {
            id: id.clone(),
            status,
            body: json!({"title": "t"}),
            initial_events: vec![],
        })
        .await
        .unwrap();
    id
}

pub fn ev(kind: &str, n: u64) -> NewEvent {
    NewEvent::processed(json!({"type": kind, "n": n}))
}

async fn read_all(store: &dyn SessionStore, session_id: &str) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let page = store.read(session_id, from, 97).await.unwrap();
        if page.is_empty() {
            return out;
        }
        from = page.last().unwrap().seq + 1;
        out.extend(page);
    }
}

fn assert_gap_free(events: &[StoredEvent], first: u64) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, first + i as u64, "seq gap or repeat at index {i}");
    }
}

async fn next_item(stream: &mut session_store::EventStream) -> TailItem {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("tail produced nothing in time")
        .expect("tail ended")
        .expect("tail failed")
}

// ---------------------------------------------------------------- cases

/// `count_sessions_by_status` (the `airlock_sessions{status}` gauge) agrees
/// with what `list_sessions` pages through, status by status.
pub async fn sessions_are_counted_by_status(store: Arc<dyn SessionStore>) {
    let empty = store.count_sessions_by_status().await.unwrap();
    assert!(empty.iter().all(|(_, n)| *n == 0), "{empty:?}");
    let plan = [
        (SessionStatus::Running, 4u64),
        (SessionStatus::Idle, 7),
        (SessionStatus::Rescheduling, 2),
    ];
    for (status, n) in plan {
        for _ in 0..n {
            new_session(&*store, status).await;
        }
    }
    let mut counted = store.count_sessions_by_status().await.unwrap();
    counted.retain(|(_, n)| *n > 0);
    counted.sort_by_key(|(s, _)| format!("{s:?}"));
    let mut expected: Vec<(SessionStatus, u64)> = plan.to_vec();
    expected.sort_by_key(|(s, _)| format!("{s:?}"));
    assert_eq!(counted, expected);
    for (status, n) in plan {
        let page = store
            .list_sessions(SessionQuery {
                status: Some(status),
                order: Order::Ascending,
                after_position: None,
                limit: 100,
            })
            .await
            .unwrap();
        assert_eq!(page.sessions.len() as u64, n, "{status:?}");
    }
}

pub async fn append_assigns_ids_seqs_and_processed_at(store: Arc<dyn SessionStore>) {
    let s = new_session(&*store, SessionStatus::Idle).await;
    let stored = store
        .append(
            &s,
            vec![
                ev("agent.message", 1),
                NewEvent::queued(json!({"type": "user.message", "content": [{"type": "text", "text": "hi"}]})),
                NewEvent::processed(json!({"type": "span.model_request_start", "id": "forged", "processed_at": "x"})),
            ],
            Fence::None,
        )
        .await
        .unwrap();
    assert_eq!(
        stored.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let ids: BTreeSet<_> = stored.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|id| id.starts_with("sevt_")), "{ids:?}");
    assert!(stored[0].processed_at.is_some());
    assert!(
        stored[1].processed_at.is_none(),
        "queued events are unprocessed"
    );
    assert_ne!(stored[2].id, "forged", "the store owns ids");
    assert_eq!(stored[1].event_type, "user.message");
    let wire = stored[1].to_json();
    assert_eq!(wire["processed_at"], Value::Null);
    assert_eq!(wire["content"][0]["text"], "hi");
    let back = store.read(&s, 1, 100).await.unwrap();
    assert_eq!(
        back, stored,
        "read returns exactly what append acknowledged"
    );
    assert_eq!(store.read(&s, 3, 100).await.unwrap(), stored[2..].to_vec());
    assert!(store.read(&s, 4, 100).await.unwrap().is_empty());
    assert_eq!(store.get_session(&s).await.unwrap().last_seq, 3);
    // a chosen id is kept
    let chosen = session_store::new_event_id();
    let got = store
        .append(
            &s,
            vec![ev("agent.message", 4).with_id(chosen.clone())],
            Fence::None,
        )
        .await
        .unwrap();
    assert_eq!(got[0].id, chosen);
    assert_eq!(got[0].seq, 4);
}

pub async fn seqs_are_gap_free_and_ordered_across_batches(store: Arc<dyn SessionStore>) {
    let s = new_session(&*store, SessionStatus::Running).await;
    let mut n = 0;
    for size in [1u64, 5, 2, 100, 1, 37] {
        let batch: Vec<_> = (0..size).map(|i| ev("x", n + i)).collect();
        let stored = store.append(&s, batch, Fence::None).await.unwrap();
        assert_gap_free(&stored, n + 1);
        n += size;
    }
    let all = read_all(&*store, &s).await;
    assert_eq!(all.len() as u64, n);
    assert_gap_free(&all, 1);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(
            e.body["n"],
            json!(i as u64),
            "events keep the appended order"
        );
    }
}

pub async fn invalid_and_missing_are_refused_without_effect(store: Arc<dyn SessionStore>) {
    let missing = new_id("sesn");
    match store.append(&missing, vec![ev("x", 0)], Fence::None).await {
        Err(StoreError::NotFound { session_id }) => assert_eq!(session_id, missing),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let err = store.get_session(&missing).await.unwrap_err();
    assert!(
        err.to_string().contains(&missing),
        "errors name the session: {err}"
    );
    assert!(matches!(
        store.read(&missing, 1, 10).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.subscribe(&missing, 1).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store
            .acquire_lease(&missing, "h", Duration::from_secs(5))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let s = new_session(&*store, SessionStatus::Idle).await;
    for bad in [json!({"no_type": 1}), json!("text"), json!({"type": 5})] {
        let err = store
            .append(&s, vec![ev("ok", 0), NewEvent::processed(bad)], Fence::None)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
    }
    assert!(matches!(
        store.append(&s, vec![], Fence::None).await,
        Err(StoreError::Invalid { .. })
    ));
    assert!(
        store.read(&s, 1, 10).await.unwrap().is_empty(),
        "refused batches left nothing"
    );
    assert!(matches!(
        store.read(&s, 1, 0).await,
        Err(StoreError::Invalid { .. })
    ));
}

pub async fn a_batch_is_atomic(store: Arc<dyn SessionStore>) {
    let s = new_session(&*store, SessionStatus::Idle).await;
    let taken = store
        .append(&s, vec![ev("x", 0)], Fence::None)
        .await
        .unwrap()[0]
        .id
        .clone();
    // the third event reuses a taken id: the whole batch must be refused
    let err = store
        .append(
            &s,
            vec![ev("x", 1), ev("x", 2), ev("x", 3).with_id(taken)],
            Fence::None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(
        read_all(&*store, &s).await.len(),
        1,
        "no event of a refused batch is stored"
    );
    let next = store
        .append(&s, vec![ev("x", 4)], Fence::None)
        .await
        .unwrap();
    assert_eq!(next[0].seq, 2, "a refused batch consumes no seq");
    assert_eq!(store.get_session(&s).await.unwrap().last_seq, 2);
}

pub async fn old_epoch_is_fenced_after_takeover(store: Arc<dyn SessionStore>) {
    let s = new_session(&*store, SessionStatus::Running).await;
    let a = store
        .acquire_lease(&s, "harness-a", Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(a.epoch, 1);
    store
        .append(&s, vec![ev("a", 1)], Fence::from(&a))
        .await
        .unwrap();
    // b takes over once a's lease lapses
    let b = eventually_async("the lease to expire", PATIENCE, || {
        let store = store.clone();
        let s = s.clone();
        async move {
            store
                .acquire_lease(&s, "harness-b", Duration::from_secs(60))
                .await
                .ok()
        }
    })
    .await;
    assert_eq!(b.epoch, 2);
    match store.append(&s, vec![ev("a", 2)], Fence::from(&a)).await {
        Err(StoreError::Fenced {
            session_id,
            presented_epoch,
            current_epoch,
        }) => {
            assert_eq!(
                (session_id.as_str(), presented_epoch, current_epoch),
                (s.as_str(), 1, 2)
            );
        }
        other => panic!("expected Fenced, got {other:?}"),
    }
    let fenced_status = store
        .append_batch(
            &s,
            AppendBatch {
                events: vec![ev("session.status_idle", 3)],
                fence: Fence::from(&a),
                set_status: Some(SessionStatus::Idle),
            },
        )
        .await;
    assert!(matches!(fenced_status, Err(StoreError::Fenced { .. })));
    assert!(matches!(
        store
            .mark_processed(&s, EventSelector::Seqs(vec![1]), Fence::from(&a))
            .await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(matches!(
        store.renew_lease(&a, Duration::from_secs(60)).await,
        Err(StoreError::Fenced {
            current_epoch: 2,
            ..
        })
    ));
    assert!(matches!(
        store.release_lease(&a).await,
        Err(StoreError::Fenced { .. })
    ));
    // a future epoch is no better than a stale one
    assert!(matches!(
        store.append(&s, vec![ev("x", 0)], Fence::Epoch(3)).await,
        Err(StoreError::Fenced { .. })
    ));
    // the new holder and the API still write
    store
        .append(&s, vec![ev("b", 3)], Fence::from(&b))
        .await
        .unwrap();
    store
        .append(
            &s,
            vec![NewEvent::queued(json!({"type": "user.message"}))],
            Fence::None,
        )
        .await
        .unwrap();
    let all = read_all(&*store, &s).await;
    assert_eq!(
        all.iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["a", "b", "user.message"]
    );
    assert_gap_free(&all, 1);
    assert_eq!(
        store.get_session(&s).await.unwrap().status,
        SessionStatus::Running
    );
}

pub async fn lease_is_exclusive_until_released_or_expired(store: Arc<dyn SessionStore>) {
    let s = new_session(&*store, SessionStatus::Running).await;
    let a = store
        .acquire_lease(&s, "a", Duration::from_secs(600))
        .await
        .unwrap();
    match store.acquire_lease(&s, "b", Duration::from_secs(600)).await {
        Err(StoreError::LeaseHeld { holder, epoch, .. }) => {
            assert_eq!((holder.as_str(), epoch), ("a", 1))
        }
        other => panic!("expected LeaseHeld, got {other:?}"),
    }
    // the holder itself does not get a second grant either
    assert!(matches!(
        store.acquire_lease(&s, "a", Duration::from_secs(600)).await,
        Err(StoreError::LeaseHeld { .. })
    ));
    let renewed = store
        .renew_lease(&a, Duration::from_secs(1200))
        .await
        .unwrap();
    assert_eq!(renewed.epoch, a.epoch);
    assert!(renewed.expires_at > a.expires_at);
    let record = store.get_session(&s).await.unwrap();
    assert_eq!(record.lease.holder.as_deref(), Some("a"));
    assert_eq!(record.lease.epoch, 1);
    store.release_lease(&renewed).await.unwrap();
    let b = store
        .acquire_lease(&s, "b", Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(b.epoch, 2);
    let c = eventually_async("b's lease to expire", PATIENCE, || {
        let store = store.clone();
        let s = s.clone();
        async move {
            store
                .acquire_lease(&s, "c", Duration::from_secs(60))
                .await
                .ok()
        }
    })
    .await;
    assert_eq!(c.epoch, 3);
    assert_eq!(c.holder, "c");
}

pub async fn epochs_increase_forever(store: Arc<dyn SessionStore>) {
    let s = new_session(&*store, SessionStatus::Running).await;
    let mut last = 0;
    for i in 0..6 {
        let lease = store
            .acquire_lease(&s, &format!("h{i}"), Duration::from_secs(60))
            .await
            .unwrap();
        assert!(lease.epoch > last, "epoch {} after {last}", lease.epoch);
        last = lease.epoch;
        store.release_lease(&lease).await.unwrap();
    }
    assert_eq!(last, 6);
}

async fn hammer(store: Arc<dyn SessionStore>, sessions: Vec<String>, tasks: usize, appends: usize) {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        let sessions = sessions.clone();
        handles.push(tokio::spawn(async move {
            let mut acked: Vec<(String, u64, u64)> = Vec::new(); // (session, seq, n)
            for i in 0..appends {
                let s = &sessions[(t + i) % sessions.len()];
                let size = 1 + (i % 3) as u64;
                let batch: Vec<_> = (0..size)
                    .map(|k| {
                        NewEvent::processed(json!({"type": "x", "task": t, "n": i as u64 * 10 + k}))
                    })
                    .collect();
                let stored = store.append(s, batch, Fence::None).await.unwrap();
                assert_gap_free(&stored, stored[0].seq);
                for e in stored {
                    acked.push((s.clone(), e.seq, e.body["n"].as_u64().unwrap()));
                }
            }
            (t, acked)
        }));
    }
    let mut acked_by_session: HashMap<String, Vec<(u64, usize, u64)>> = HashMap::new();
    for h in handles {
        let (t, acked) = h.await.unwrap();
        for (s, seq, n) in acked {
            acked_by_session.entry(s).or_default().push((seq, t, n));
        }
    }
    for s in &sessions {
        let all = read_all(&*store, s).await;
        assert_gap_free(&all, 1);
        let mut acked = acked_by_session.remove(s).unwrap_or_default();
        acked.sort();
        assert_eq!(
            acked.len(),
            all.len(),
            "every acknowledged event is stored once in {s}"
        );
        let mut last_n_per_task: HashMap<u64, u64> = HashMap::new();
        for ((seq, t, n), e) in acked.iter().zip(&all) {
            assert_eq!(e.seq, *seq);
            assert_eq!(
                e.body["task"].as_u64(),
                Some(*t as u64),
                "seq {seq} belongs to the task it was acked to"
            );
            assert_eq!(e.body["n"].as_u64(), Some(*n));
            // each task's own events keep its order
            if let Some(prev) = last_n_per_task.insert(*t as u64, *n) {
                assert!(*n > prev, "task {t} order broken at seq {seq}");
            }
        }
    }
}

pub async fn concurrent_appenders_on_one_session(store: Arc<dyn SessionStore>) {
    let s = new_session(&*store, SessionStatus::Running).await;
    hammer(store, vec![s], 16, 25).await;
}

pub async fn concurrent_appenders_on_many_sessions(store: Arc<dyn SessionStore>) {
    let mut sessions = Vec::new();
    for _ in 0..8 {
        sessions.push(new_session(&*store, SessionStatus::Running).await);
    }
    hammer(store, sessions, 12, 24).await;
}

pub async fn subscribe_from_any_seq_while_appending(store: Arc<dyn SessionStore>) {
    let s = new_session(&*store, SessionStatus::Running).await;
    for chunk in 0..5u64 {
        let batch: Vec<_> = (0..10).map(|k| ev("x", chunk * 10 + k)).collect();
        store.append(&s, batch, Fence::None).await.unwrap();
    }
    const TOTAL: u64 = 260;
    let mut readers = Vec::new();
    for from in [1u64, 25, 50, 51, 120, TOTAL] {
        let stream = store.subscribe(&s, from).await.unwrap();
        readers.push(tokio::spawn(async move {
            let mut stream = stream;
            let mut seen = Vec::new();
            while seen.last().copied().unwrap_or(from - 1) < TOTAL {
                match next_item(&mut stream).await {
                    TailItem::Appended(e) => seen.push(e.seq),
                    TailItem::Processed(e) => {
                        panic!("nothing is queued here, got processed seq {}", e.seq)
                    }
                }
            }
            (from, seen)
        }));
    }
    // appends continue from several tasks while the tails replay and follow
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let store = store.clone();
        let s = s.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..14u64 {
                let size = 1 + (i + w) % 9;
                let batch: Vec<_> = (0..size).map(|k| ev("y", w * 1000 + i * 10 + k)).collect();
                store.append(&s, batch, Fence::None).await.unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let appended = store.get_session(&s).await.unwrap().last_seq;
    if appended < TOTAL {
        let batch: Vec<_> = (appended..TOTAL).map(|k| ev("z", k)).collect();
        store.append(&s, batch, Fence::None).await.unwrap();
    }
    let last_seq = store.get_session(&s).await.unwrap().last_seq;
    assert!(last_seq >= TOTAL);
    for r in readers {
        let (from, seen) = r.await.unwrap();
        let expected: Vec<u64> = (from..=TOTAL).collect();
        assert_eq!(seen, expected, "tail from {from} skipped or repeated a seq");
    }
    // a tail opened at the end sees the next append only
    let mut late = store.subscribe(&s, last_seq + 1).await.unwrap();
    store
        .append(&s, vec![ev("late", 0)], Fence::None)
        .await
        .unwrap();
    match next_item(&mut late).await {
        TailItem::Appended(e) => {
            assert_eq!(e.seq, last_seq + 1);
            assert_eq!(e.event_type, "late");
        }
        other => panic!("unexpected {other:?}"),
    }
}

pub async fn subscribe_reports_processing_of_queued_events(store: Arc<dyn SessionStore>) {
    let s = new_session(&*store, SessionStatus::Idle).await;
    let mut tail = store.subscribe(&s, 1).await.unwrap();
    let queued = store
        .append(
            &s,
            vec![NewEvent::queued(json!({"type": "user.message", "k": 1}))],
            Fence::None,
        )
        .await
        .unwrap();
    match next_item(&mut tail).await {
        TailItem::Appended(e) => {
            assert_eq!(e.seq, 1);
            assert!(e.processed_at.is_none());
        }
        other => panic!("unexpected {other:?}"),
    }
    let lease = store
        .acquire_lease(&s, "h", Duration::from_secs(60))
        .await
        .unwrap();
    let changed = store
        .mark_processed(
            &s,
            EventSelector::Ids(vec![queued[0].id.clone()]),
            Fence::from(&lease),
        )
        .await
        .unwrap();
    assert_eq!(changed.len(), 1);
    store
        .append(&s, vec![ev("agent.message", 2)], Fence::from(&lease))
        .await
        .unwrap();
    let mut saw_processed = false;
    let mut saw_next = false;
    while !(saw_processed && saw_next) {
        match next_item(&mut tail).await {
            TailItem::Processed(e) => {
                assert!(!saw_processed, "processed reported twice");
                assert_eq!(e.seq, 1);
                assert_eq!(e.processed_at, changed[0].processed_at);
                saw_processed = true;
            }
            TailItem::Appended(e) => {
                assert!(!saw_next, "seq 2 delivered twice");
                assert_eq!(e.seq, 2);
                saw_next = true;
            }
        }
    }
    // a tail opened afterwards sees the current state directly
    let mut fresh = store.subscribe(&s, 1).await.unwrap();
    match next_item(&mut fresh).await {
        TailItem::Appended(e) => assert!(e.processed_at.is_some()),
        other => panic!("unexpected {other:?}"),
    }
}

pub async fn mark_processed_by_seq_and_id(store: Arc<dyn SessionStore>) {
    let s = new_session(&*store, SessionStatus::Idle).await;
    let stored = store
        .append(
            &s,
            vec![
                NewEvent::queued(json!({"type": "user.message", "i": 0})),
                NewEvent::queued(json!({"type": "user.message", "i": 1})),
                ev("agent.message", 2),
                NewEvent::queued(json!({"type": "user.interrupt", "i": 3})),
            ],
            Fence::None,
        )
        .await
        .unwrap();
    let agent_time = stored[2].processed_at;
    let changed = store
        .mark_processed(&s, EventSelector::Seqs(vec![1, 3]), Fence::None)
        .await
        .unwrap();
    assert_eq!(
        changed.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1],
        "only queued events change"
    );
    let again = store
        .mark_processed(&s, EventSelector::Seqs(vec![1]), Fence::None)
        .await
        .unwrap();
    assert!(again.is_empty(), "marking twice changes nothing");
    let by_id = store
        .mark_processed(
            &s,
            EventSelector::Ids(vec![stored[3].id.clone(), stored[1].id.clone()]),
            Fence::None,
        )
        .await
        .unwrap();
    assert_eq!(by_id.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 4]);
    let all = read_all(&*store, &s).await;
    assert!(all.iter().all(|e| e.processed_at.is_some()));
    assert_eq!(
        all[0].processed_at, changed[0].processed_at,
        "processed_at is stored as returned"
    );
    assert_eq!(all[2].processed_at, agent_time);
    match store
        .mark_processed(&s, EventSelector::Seqs(vec![99]), Fence::None)
        .await
    {
        Err(StoreError::EventNotFound { session_id, .. }) => assert_eq!(session_id, s),
        other => panic!("expected EventNotFound, got {other:?}"),
    }
    let got = store
        .get_events(
            &s,
            EventSelector::Ids(vec![stored[2].id.clone(), stored[0].id.clone()]),
        )
        .await
        .unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 3]);
}

pub async fn status_changes_atomically_with_append(store: Arc<dyn SessionStore>) {
    let s = new_session(&*store, SessionStatus::Running).await;
    let before = store.get_session(&s).await.unwrap();
    let lease = store
        .acquire_lease(&s, "h", Duration::from_secs(60))
        .await
        .unwrap();
    store
        .append_batch(
            &s,
            AppendBatch {
                events: vec![
                    ev("agent.message", 0),
                    NewEvent::processed(
                        json!({"type": "session.status_idle", "stop_reason": {"type": "end_turn"}}),
                    ),
                ],
                fence: Fence::from(&lease),
                set_status: Some(SessionStatus::Idle),
            },
        )
        .await
        .unwrap();
    let after = store.get_session(&s).await.unwrap();
    assert_eq!(after.status, SessionStatus::Idle);
    assert!(after.version > before.version);
    assert_eq!(after.last_seq, 2);
    store
        .append_batch(
            &s,
            AppendBatch {
                events: vec![ev("session.status_terminated", 0)],
                fence: Fence::None,
                set_status: Some(SessionStatus::Terminated),
            },
        )
        .await
        .unwrap();
    let refused = store
        .append_batch(
            &s,
            AppendBatch {
                events: vec![ev("session.status_running", 0)],
                fence: Fence::None,
                set_status: Some(SessionStatus::Running),
            },
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict { .. })),
        "{refused:?}"
    );
    let record = store.get_session(&s).await.unwrap();
    assert_eq!(record.status, SessionStatus::Terminated);
    assert_eq!(record.last_seq, 3, "the refused batch stored nothing");
    assert!(matches!(
        store
            .update_session(
                &s,
                SessionUpdate {
                    status: Some(SessionStatus::Idle),
                    ..Default::default()
                }
            )
            .await,
        Err(StoreError::Conflict { .. })
    ));
}

pub async fn session_crud_and_body_patches(store: Arc<dyn SessionStore>) {
    let id = new_id("sesn");
    let (created, events) = store
        .create_session(NewSession {
            id: id.clone(),
            status: SessionStatus::Idle,
            body: json!({"title": "one", "metadata": {"a": "1", "b": "2"}, "agent": {"model": "m"}}),
            initial_events: vec![],
        })
        .await
        .unwrap();
    assert!(events.is_empty());
    assert_eq!(created.id, id);
    assert_eq!(created.status, SessionStatus::Idle);
    assert_eq!(created.last_seq, 0);
    assert_eq!(created.lease.epoch, 0);
    let dup = store
        .create_session(NewSession {
            id: id.clone(),
            status: SessionStatus::Idle,
            body: json!({}),
            initial_events: vec![],
        })
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict { .. })), "{dup:?}");
    assert_eq!(store.get_session(&id).await.unwrap(), created);
    let patched = store
        .update_session(
            &id,
            SessionUpdate {
                status: Some(SessionStatus::Running),
                body: Some(BodyUpdate::MergePatch(
                    json!({"title": "two", "metadata": {"a": null, "c": "3"}}),
                )),
                if_version: Some(created.version),
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.status, SessionStatus::Running);
    assert_eq!(
        patched.body,
        json!({"title": "two", "metadata": {"b": "2", "c": "3"}, "agent": {"model": "m"}})
    );
    assert!(patched.version > created.version);
    assert!(patched.updated_at >= created.updated_at);
    assert_eq!(patched.created_at, created.created_at);
    let stale = store
        .update_session(
            &id,
            SessionUpdate {
                body: Some(BodyUpdate::Replace(json!({}))),
                if_version: Some(created.version),
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    let replaced = store
        .update_session(
            &id,
            SessionUpdate {
                body: Some(BodyUpdate::Replace(json!({"x": 1}))),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(replaced.body, json!({"x": 1}));
    assert!(matches!(
        store
            .update_session(&new_id("sesn"), SessionUpdate::default())
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn delete_ends_tails_and_reads(store: Arc<dyn SessionStore>) {
    let s = new_session(&*store, SessionStatus::Running).await;
    store
        .append(&s, vec![ev("x", 0)], Fence::None)
        .await
        .unwrap();
    let mut tail = store.subscribe(&s, 1).await.unwrap();
    assert!(matches!(next_item(&mut tail).await, TailItem::Appended(_)));
    store.delete_session(&s).await.unwrap();
    let end = tokio::time::timeout(PATIENCE, tail.next())
        .await
        .expect("tail did not end");
    assert!(
        matches!(end, Some(Err(StoreError::NotFound { .. }))),
        "{end:?}"
    );
    assert!(matches!(
        store.read(&s, 1, 10).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.get_session(&s).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete_session(&s).await,
        Err(StoreError::NotFound { .. })
    ));
    // the id can be used again, from seq 1
    store
        .create_session(NewSession {
            id: s.clone(),
            status: SessionStatus::Idle,
            body: json!({}),
            initial_events: vec![],
        })
        .await
        .unwrap();
    let again = store
        .append(&s, vec![ev("x", 0)], Fence::None)
        .await
        .unwrap();
    assert_eq!(again[0].seq, 1);
}

pub async fn pagination_and_status_filter(store: Arc<dyn SessionStore>) {
    let mut ids = Vec::new();
    for i in 0..23 {
        let status = if i % 3 == 0 {
            SessionStatus::Running
        } else {
            SessionStatus::Idle
        };
        ids.push(new_session(&*store, status).await);
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_sessions(SessionQuery {
                status: None,
                order: Order::Ascending,
                after_position: after,
                limit: 10,
            })
            .await
            .unwrap();
        seen.extend(page.sessions.iter().map(|r| r.id.clone()));
        after = page.sessions.last().map(|r| r.position);
        if !page.has_more {
            break;
        }
    }
    assert_eq!(
        seen, ids,
        "ascending pages list every session once in creation order"
    );
    let desc = store
        .list_sessions(SessionQuery {
            status: None,
            order: Order::Descending,
            after_position: None,
            limit: 5,
        })
        .await
        .unwrap();
    assert!(desc.has_more);
    let newest: Vec<_> = ids.iter().rev().take(5).cloned().collect();
    assert_eq!(
        desc.sessions
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>(),
        newest
    );
    let desc2 = store
        .list_sessions(SessionQuery {
            status: None,
            order: Order::Descending,
            after_position: desc.sessions.last().map(|r| r.position),
            limit: 5,
        })
        .await
        .unwrap();
    let next: Vec<_> = ids.iter().rev().skip(5).take(5).cloned().collect();
    assert_eq!(
        desc2
            .sessions
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>(),
        next
    );
    let running = store
        .list_sessions(SessionQuery {
            status: Some(SessionStatus::Running),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let expected: Vec<_> = ids.iter().step_by(3).cloned().collect();
    assert_eq!(
        running
            .sessions
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>(),
        expected
    );
    assert!(!running.has_more);
    assert!(running
        .sessions
        .iter()
        .all(|r| r.status == SessionStatus::Running));
}

/// Ids of a wake scan from the start.
async fn wake_ids(store: &dyn SessionStore) -> Vec<String> {
    store
        .sessions_needing_wake(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.session_id)
        .collect()
}

pub async fn sessions_needing_wake_follows_leases(store: Arc<dyn SessionStore>) {
    let free = new_session(&*store, SessionStatus::Running).await;
    let held = new_session(&*store, SessionStatus::Running).await;
    let short = new_session(&*store, SessionStatus::Running).await;
    let idle = new_session(&*store, SessionStatus::Idle).await;
    store
        .acquire_lease(&held, "h", Duration::from_secs(600))
        .await
        .unwrap();
    store
        .acquire_lease(&short, "h", Duration::from_millis(150))
        .await
        .unwrap();
    let now = wake_ids(&*store).await;
    assert!(now.contains(&free), "{now:?}");
    assert!(!now.contains(&held));
    assert!(!now.contains(&idle));
    let later = eventually_async("the short lease to expire", PATIENCE, || {
        let store = store.clone();
        let short = short.clone();
        async move {
            let ids = wake_ids(&*store).await;
            ids.contains(&short).then_some(ids)
        }
    })
    .await;
    assert!(later.contains(&free));
    assert!(!later.contains(&held));
}

pub async fn reclaim_takes_back_only_own_leases_with_a_higher_epoch(store: Arc<dyn SessionStore>) {
    const LONG: Duration = Duration::from_secs(600);
    // "a" is a process that died: one live lease, one lapsed, one released.
    let live = new_session(&*store, SessionStatus::Running).await;
    let lapsed = new_session(&*store, SessionStatus::Running).await;
    let released = new_session(&*store, SessionStatus::Running).await;
    let others = new_session(&*store, SessionStatus::Running).await;
    let never = new_session(&*store, SessionStatus::Running).await;
    let a_live = store.acquire_lease(&live, "a", LONG).await.unwrap();
    store
        .append(&live, vec![ev("a", 1)], Fence::from(&a_live))
        .await
        .unwrap();
    let a_lapsed = store
        .acquire_lease(&lapsed, "a", Duration::from_millis(100))
        .await
        .unwrap();
    let a_released = store.acquire_lease(&released, "a", LONG).await.unwrap();
    store.release_lease(&a_released).await.unwrap();
    let b = store.acquire_lease(&others, "b", LONG).await.unwrap();
    eventually_async("a's short lease to lapse", PATIENCE, || {
        let store = store.clone();
        let lapsed = lapsed.clone();
        async move { wake_ids(&*store).await.contains(&lapsed) }
    })
    .await;

    let t0 = time::OffsetDateTime::now_utc();
    let mut got = store.reclaim_leases("a", LONG).await.unwrap();
    got.sort_by(|x, y| x.session_id.cmp(&y.session_id));
    let mut want = vec![
        (live.clone(), a_live.epoch + 1),
        (lapsed.clone(), a_lapsed.epoch + 1),
    ];
    want.sort();
    assert_eq!(
        got.iter()
            .map(|l| (l.session_id.clone(), l.epoch))
            .collect::<Vec<_>>(),
        want,
        "the live and the lapsed lease of a, each with the next epoch"
    );
    for l in &got {
        assert_eq!(l.holder, "a");
        assert!(
            l.expires_at > t0 + time::Duration::seconds(500),
            "a fresh ttl: {l:?}"
        );
        let record = store.get_session(&l.session_id).await.unwrap();
        assert_eq!(record.lease.epoch, l.epoch);
        assert_eq!(record.lease.holder.as_deref(), Some("a"));
    }
    let new_live = got.iter().find(|l| l.session_id == live).unwrap().clone();

    // The old grant is fenced everywhere; the new one writes.
    match store
        .append(&live, vec![ev("a", 2)], Fence::from(&a_live))
        .await
    {
        Err(StoreError::Fenced {
            presented_epoch,
            current_epoch,
            ..
        }) => assert_eq!(
            (presented_epoch, current_epoch),
            (a_live.epoch, new_live.epoch)
        ),
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert!(matches!(
        store.renew_lease(&a_live, LONG).await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(matches!(
        store.release_lease(&a_live).await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(matches!(
        store
            .mark_processed(&live, EventSelector::Seqs(vec![1]), Fence::from(&a_live))
            .await,
        Err(StoreError::Fenced { .. })
    ));
    store
        .append(&live, vec![ev("a", 3)], Fence::from(&new_live))
        .await
        .unwrap();
    let events = read_all(&*store, &live).await;
    assert_eq!(
        events
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["a", "a"]
    );
    assert_gap_free(&events, 1);
    // The reclaimed leases are held: nobody else gets them.
    assert!(matches!(
        store.acquire_lease(&lapsed, "c", LONG).await,
        Err(StoreError::LeaseHeld { .. })
    ));

    // Other holders' leases, free ones and never-leased ones are untouched.
    let o = store.get_session(&others).await.unwrap().lease;
    assert_eq!((o.holder.as_deref(), o.epoch), (Some("b"), b.epoch));
    store
        .append(&others, vec![ev("b", 1)], Fence::from(&b))
        .await
        .unwrap();
    let r = store.get_session(&released).await.unwrap().lease;
    assert_eq!((r.holder, r.epoch), (None, a_released.epoch));
    let n = store.get_session(&never).await.unwrap().lease;
    assert_eq!((n.holder, n.epoch), (None, 0));

    // Reclaiming again re-grants again (epochs only grow); nothing for a
    // holder with no leases.
    let again = store.reclaim_leases("a", LONG).await.unwrap();
    assert_eq!(again.len(), 2);
    for l in &again {
        let before = got.iter().find(|g| g.session_id == l.session_id).unwrap();
        assert_eq!(l.epoch, before.epoch + 1);
    }
    assert!(store
        .reclaim_leases("nobody", LONG)
        .await
        .unwrap()
        .is_empty());
}

pub async fn sessions_needing_wake_includes_queued_input(store: Arc<dyn SessionStore>) {
    // An idle session with a queued user message (appended, then the
    // control plane died before waking it) needs a wake; processed events,
    // terminated sessions and held leases do not.
    let queued = new_session(&*store, SessionStatus::Idle).await;
    let processed = new_session(&*store, SessionStatus::Idle).await;
    let terminated = new_session(&*store, SessionStatus::Idle).await;
    let held = new_session(&*store, SessionStatus::Idle).await;
    let msg = || NewEvent::queued(json!({"type": "user.message", "content": []}));
    store
        .append(
            &processed,
            vec![NewEvent::processed(json!({"type": "agent.message"}))],
            Fence::None,
        )
        .await
        .unwrap();
    for s in [&queued, &terminated, &held] {
        store
            .append(
                s,
                vec![NewEvent::processed(json!({"type": "agent.message"})), msg()],
                Fence::None,
            )
            .await
            .unwrap();
    }
    store
        .update_session(
            &terminated,
            SessionUpdate {
                status: Some(SessionStatus::Terminated),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let lease = store
        .acquire_lease(&held, "h", Duration::from_secs(600))
        .await
        .unwrap();
    let scan = store.sessions_needing_wake(0, 100).await.unwrap();
    let mine: Vec<_> = scan
        .iter()
        .filter(|c| [&queued, &processed, &terminated, &held].contains(&&c.session_id))
        .collect();
    assert_eq!(mine.len(), 1, "{scan:?}");
    assert_eq!(mine[0].session_id, queued);
    assert_eq!(mine[0].last_seq, 2, "the candidate carries its last seq");
    let record = store.get_session(&queued).await.unwrap();
    assert_eq!(mine[0].position, record.position);
    // Paging: nothing after the candidate's own position is that candidate.
    let after = store
        .sessions_needing_wake(mine[0].position, 100)
        .await
        .unwrap();
    assert!(
        after.iter().all(|c| c.position > mine[0].position),
        "{after:?}"
    );
    assert!(!after.iter().any(|c| c.session_id == queued));
    // A released lease makes the held one a candidate too.
    store.release_lease(&lease).await.unwrap();
    assert!(wake_ids(&*store).await.contains(&held));
    // More input moves last_seq; processing it ends the need.
    store
        .append(&queued, vec![msg()], Fence::None)
        .await
        .unwrap();
    let c = store
        .sessions_needing_wake(0, 100)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.session_id == queued)
        .unwrap();
    assert_eq!(c.last_seq, 3);
    store
        .mark_processed(&queued, EventSelector::Seqs(vec![2, 3]), Fence::None)
        .await
        .unwrap();
    assert!(!wake_ids(&*store).await.contains(&queued));
    // Limits are checked.
    assert!(matches!(
        store.sessions_needing_wake(0, 0).await,
        Err(StoreError::Invalid { .. })
    ));
}

pub async fn create_with_initial_events(store: Arc<dyn SessionStore>) {
    let id = new_id("sesn");
    let (record, events) = store
        .create_session(NewSession {
            id: id.clone(),
            status: SessionStatus::Running,
            body: json!({}),
            initial_events: vec![
                NewEvent::queued(json!({"type": "user.message", "content": []})),
                NewEvent::queued(json!({"type": "user.define_outcome"})),
            ],
        })
        .await
        .unwrap();
    assert_eq!(record.last_seq, 2);
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(read_all(&*store, &id).await, events);
    // an invalid initial event refuses the whole creation
    let bad = new_id("sesn");
    let err = store
        .create_session(NewSession {
            id: bad.clone(),
            status: SessionStatus::Running,
            body: json!({}),
            initial_events: vec![NewEvent::queued(json!({"no": "type"}))],
        })
        .await;
    assert!(matches!(err, Err(StoreError::Invalid { .. })), "{err:?}");
    assert!(matches!(
        store.get_session(&bad).await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn list_events_pages_filters_and_orders(store: Arc<dyn SessionStore>) {
    use std::ops::Bound;
    let s = new_session(&*store, SessionStatus::Running).await;
    for round in 0..4u64 {
        let batch = vec![
            ev("a", round),
            ev("b", round),
            NewEvent::queued(json!({"type": "user.message", "n": round})),
        ];
        store.append(&s, batch, Fence::None).await.unwrap();
    }
    store
        .mark_processed(&s, EventSelector::Seqs(vec![3, 9]), Fence::None)
        .await
        .unwrap();
    let all = read_all(&*store, &s).await;
    assert_eq!(all.len(), 12);

    let page_all = |order, types: Option<Vec<String>>, from, to, limit| {
        let store = store.clone();
        let s = s.clone();
        async move {
            let mut out = Vec::new();
            let mut after = None;
            loop {
                let EventPage { events, has_more } = store
                    .list_events(
                        &s,
                        EventQuery {
                            order,
                            after_seq: after,
                            limit,
                            types: types.clone(),
                            processed_from: from,
                            processed_to: to,
                        },
                    )
                    .await
                    .unwrap();
                assert!(events.len() <= limit);
                after = events.last().map(|e| e.seq);
                out.extend(events);
                if !has_more {
                    return out;
                }
            }
        }
    };
    let seqs = |v: &[StoredEvent]| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    // ascending pages of 5 give everything in order
    let asc = page_all(
        Order::Ascending,
        None,
        Bound::Unbounded,
        Bound::Unbounded,
        5,
    )
    .await;
    assert_eq!(asc, all);
    // descending pages of 4 give everything in reverse
    let desc = page_all(
        Order::Descending,
        None,
        Bound::Unbounded,
        Bound::Unbounded,
        4,
    )
    .await;
    let mut rev = all.clone();
    rev.reverse();
    assert_eq!(desc, rev);
    // a type filter
    let only = page_all(
        Order::Ascending,
        Some(vec!["b".into(), "user.message".into()]),
        Bound::Unbounded,
        Bound::Unbounded,
        3,
    )
    .await;
    assert_eq!(seqs(&only), vec![2, 3, 5, 6, 8, 9, 11, 12]);
    let empty_filter = page_all(
        Order::Ascending,
        Some(vec![]),
        Bound::Unbounded,
        Bound::Unbounded,
        100,
    )
    .await;
    assert_eq!(empty_filter.len(), 12, "an empty type list does not filter");
    // processed_at bounds, checked against a model of the stored events
    let times: Vec<_> = all.iter().filter_map(|e| e.processed_at).collect();
    for t in [times[0], times[times.len() / 2], *times.last().unwrap()] {
        for (from, to) in [
            (Bound::Included(t), Bound::Unbounded),
            (Bound::Excluded(t), Bound::Unbounded),
            (Bound::Unbounded, Bound::Included(t)),
            (Bound::Unbounded, Bound::Excluded(t)),
            (Bound::Included(t), Bound::Included(t)),
        ] {
            let got = page_all(Order::Ascending, None, from, to, 7).await;
            let expected: Vec<u64> = all
                .iter()
                .filter(|e| match e.processed_at {
                    None => false,
                    Some(p) => std::ops::RangeBounds::contains(&(from, to), &p),
                })
                .map(|e| e.seq)
                .collect();
            assert_eq!(seqs(&got), expected, "bounds {from:?}..{to:?}");
            assert!(
                got.iter().all(|e| e.processed_at.is_some()),
                "queued events never match a time bound"
            );
        }
    }
    assert!(matches!(
        store
            .list_events(&new_id("sesn"), EventQuery::default())
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store
            .list_events(
                &s,
                EventQuery {
                    limit: 0,
                    ..EventQuery::default()
                }
            )
            .await,
        Err(StoreError::Invalid { .. })
    ));
}

pub async fn a_refused_batch_among_concurrent_ones_fails_alone(store: Arc<dyn SessionStore>) {
    let s = new_session(&*store, SessionStatus::Running).await;
    let taken = store
        .append(&s, vec![ev("first", 0)], Fence::None)
        .await
        .unwrap()[0]
        .id
        .clone();
    for round in 0..3u64 {
        let barrier = Arc::new(tokio::sync::Barrier::new(20));
        let mut tasks = Vec::new();
        for t in 0..20u64 {
            let store = store.clone();
            let s = s.clone();
            let taken = taken.clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                let n = round * 100 + t;
                let batch = match t {
                    7 => vec![ev("dup", n), ev("dup", n).with_id(taken)],
                    _ => vec![ev("ok", n), ev("ok", n)],
                };
                let fence = if t == 11 {
                    Fence::Epoch(99)
                } else {
                    Fence::None
                };
                barrier.wait().await;
                (t, store.append(&s, batch, fence).await)
            }));
        }
        for task in tasks {
            let (t, result) = task.await.unwrap();
            match (t, result) {
                (7, Err(StoreError::Conflict { .. })) | (11, Err(StoreError::Fenced { .. })) => {}
                (7 | 11, other) => panic!("task {t} should have been refused, got {other:?}"),
                (_, Ok(stored)) => {
                    assert_eq!(stored.len(), 2);
                    assert_eq!(stored[1].seq, stored[0].seq + 1);
                }
                (_, Err(e)) => panic!("task {t} was refused: {e}"),
            }
        }
    }
    let all = read_all(&*store, &s).await;
    assert_gap_free(&all, 1);
    assert_eq!(
        all.len(),
        1 + 3 * 18 * 2,
        "only the two refused batches of each round are missing"
    );
    assert!(all.iter().all(|e| e.event_type != "dup"));
    // each accepted batch is contiguous
    for pair in all[1..].chunks(2) {
        assert_eq!(pair[0].body["n"], pair[1].body["n"]);
    }
}

/// Every (from, to) pair, through both ways a status changes (an append with
/// `set_status` and `update_session`): allowed exactly when
/// `session_store::check_transition` allows it, refused with the same
/// conflict and without effect otherwise.
pub async fn status_transitions_follow_one_rule(store: Arc<dyn SessionStore>) {
    for from in SessionStatus::ALL {
        for to in SessionStatus::ALL {
            let expected = session_store::check_transition("x", from, to).is_ok();
            let s = new_session(&*store, from).await;
            let before = store.get_session(&s).await.unwrap();
            let appended = store
                .append_batch(
                    &s,
                    AppendBatch {
                        events: vec![ev("session.status_change", 0)],
                        fence: Fence::None,
                        set_status: Some(to),
                    },
                )
                .await;
            let after = store.get_session(&s).await.unwrap();
            match appended {
                Ok(_) => {
                    assert!(expected, "append moved {from} to {to}");
                    assert_eq!(after.status, to);
                    assert_eq!(after.version, before.version + 1, "{from} -> {to}");
                    assert_eq!(after.last_seq, 1);
                }
                Err(StoreError::Conflict { reason, .. }) => {
                    assert!(!expected, "append refused {from} -> {to}: {reason}");
                    assert_eq!(reason, format!("status {from} cannot become {to}"));
                    assert_eq!(after, before, "a refused append changes nothing");
                }
                Err(e) => panic!("append {from} -> {to}: {e}"),
            }
            let s = new_session(&*store, from).await;
            let before = store.get_session(&s).await.unwrap();
            let updated = store
                .update_session(
                    &s,
                    SessionUpdate {
                        status: Some(to),
                        ..Default::default()
                    },
                )
                .await;
            match updated {
                Ok(record) => {
                    assert!(expected, "update moved {from} to {to}");
                    assert_eq!(record.status, to);
                    assert_eq!(record.version, before.version + 1);
                }
                Err(StoreError::Conflict { reason, .. }) => {
                    assert!(!expected, "update refused {from} -> {to}: {reason}");
                    assert_eq!(reason, format!("status {from} cannot become {to}"));
                    assert_eq!(store.get_session(&s).await.unwrap(), before);
                }
                Err(e) => panic!("update {from} -> {to}: {e}"),
            }
        }
    }
}

/// A harness whose lease was taken over learns it was fenced, not that the
/// session ended: the fence is checked before the status rule, whether the
/// batch is decided with others (group commit) or alone (the path a group
/// falls back to when another batch in it has a taken event id).
pub async fn a_stale_status_change_is_fenced_in_every_path(store: Arc<dyn SessionStore>) {
    let s = new_session(&*store, SessionStatus::Running).await;
    let stale = store
        .acquire_lease(&s, "old", Duration::from_secs(60))
        .await
        .unwrap();
    store.release_lease(&stale).await.unwrap();
    let stale = Fence::from(&stale);
    let current = store
        .acquire_lease(&s, "new", Duration::from_secs(60))
        .await
        .unwrap();
    let taken = store
        .append_batch(
            &s,
            AppendBatch {
                events: vec![ev("session.status_terminated", 0)],
                fence: Fence::from(&current),
                set_status: Some(SessionStatus::Terminated),
            },
        )
        .await
        .unwrap()[0]
        .id
        .clone();
    for round in 0..3u64 {
        let barrier = Arc::new(tokio::sync::Barrier::new(8));
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let store = store.clone();
            let s = s.clone();
            let taken = taken.clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                let n = round * 100 + t;
                let batch = match t {
                    0 => AppendBatch {
                        events: vec![ev("session.status_running", n)],
                        fence: stale,
                        set_status: Some(SessionStatus::Running),
                    },
                    1 => AppendBatch {
                        events: vec![ev("dup", n).with_id(taken)],
                        fence: Fence::None,
                        set_status: None,
                    },
                    _ => AppendBatch {
                        events: vec![ev("ok", n)],
                        fence: Fence::None,
                        set_status: None,
                    },
                };
                barrier.wait().await;
                (t, store.append_batch(&s, batch).await)
            }));
        }
        for task in tasks {
            match task.await.unwrap() {
                (0, Err(StoreError::Fenced { .. })) | (1, Err(StoreError::Conflict { .. })) => {}
                (0 | 1, other) => panic!("batch should have been refused, got {other:?}"),
                (_, Ok(_)) => {}
                (t, Err(e)) => panic!("batch {t} was refused: {e}"),
            }
        }
    }
    let record = store.get_session(&s).await.unwrap();
    assert_eq!(record.status, SessionStatus::Terminated);
    assert_eq!(record.last_seq, 1 + 3 * 6);
}
