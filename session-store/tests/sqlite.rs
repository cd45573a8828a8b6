//! The conformance suite against the SQLite store, plus SQLite-only tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;

use std::sync::Arc;

use conformance::Fixture;
use session_store::{SessionStore, SqliteOptions, SqliteStore};

async fn sqlite() -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in_dir(dir.path(), SqliteOptions::default())
        .await
        .unwrap();
    Some(Fixture {
        store: Arc::new(store),
        guard: Box::new(dir),
    })
}

all_conformance_tests!(sqlite);

// ------------------------------------------------- torn and partial writes
//
// The test runs a helper binary (tests/bin/crash_child.rs) as a child that
// appends as fast as it can from several tasks and prints every acknowledged
// event; the parent
// kills it with SIGKILL (mostly in the middle of a commit, since the writer is
// committing nearly all the time), reopens the file and checks that every
// acknowledged event is there with its id, seqs are gap-free, and SQLite's
// integrity check passes. Five rounds on the same file.

#[test]
fn acknowledged_appends_survive_kill_9() {
    use std::collections::BTreeMap;
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use session_store::{NewSession, SessionStatus};

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.sqlite3");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let session = "sesn_crash".to_owned();
    rt.block_on(async {
        let store = SqliteStore::open(&db, SqliteOptions::default())
            .await
            .unwrap();
        store
            .create_session(NewSession {
                id: session.clone(),
                status: SessionStatus::Running,
                body: serde_json::json!({}),
                initial_events: vec![],
            })
            .await
            .unwrap();
    });

    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    for round in 0..5u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_session-store-crash-child"))
            .arg(&db)
            .arg(&session)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // kill after a different number of acknowledgements each round
        let kill_after = 200 + round * 337;
        let mut seen_this_round = 0u64;
        while seen_this_round < kill_after {
            let line = match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => line,
                Err(e) => {
                    let _ = child.kill();
                    panic!("round {round}: the child stopped acknowledging ({e})");
                }
            };
            if let Some(rest) = line.strip_prefix("ACK ") {
                let (seq, id) = rest.split_once(' ').unwrap();
                acked.insert(seq.parse().unwrap(), id.to_owned());
                seen_this_round += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // lines the child printed before it died were acknowledged too
        reader.join().unwrap();
        for line in rx.try_iter() {
            if let Some(rest) = line.strip_prefix("ACK ") {
                let (seq, id) = rest.split_once(' ').unwrap();
                acked.insert(seq.parse().unwrap(), id.to_owned());
            }
        }

        // the file opens cleanly and passes SQLite's own check
        let conn = rusqlite::Connection::open(&db).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "round {round}");
        drop(conn);
        rt.block_on(async {
            let store = SqliteStore::open(&db, SqliteOptions::default()).await.unwrap();
            let record = store.get_session(&session).await.unwrap();
            let events = store.read(&session, 1, 100_000).await.unwrap();
            assert_eq!(events.len() as u64, record.last_seq, "round {round}: last_seq matches the events");
            for (i, e) in events.iter().enumerate() {
                assert_eq!(e.seq, i as u64 + 1, "round {round}: seq gap");
            }
            for (seq, id) in &acked {
                let e = events
                    .get(*seq as usize - 1)
                    .unwrap_or_else(|| panic!("round {round}: acknowledged seq {seq} is lost"));
                assert_eq!(&e.id, id, "round {round}: seq {seq} has another event than acknowledged");
            }
            eprintln!(
                "round {round}: {} acknowledged so far, {} stored (unacknowledged commits may survive)",
                acked.len(),
                events.len()
            );
        });
    }
}

// --------------------------------------- the trait's provided list_events
//
// A wrapper that delegates everything but `list_events`, so the provided
// (scan-and-filter) body runs the same conformance case as the SQL ones.

#[derive(Debug)]
struct DefaultListEvents(SqliteStore);

#[async_trait::async_trait]
impl SessionStore for DefaultListEvents {
    async fn create_session(
        &self,
        new: session_store::NewSession,
    ) -> session_store::Result<(
        session_store::SessionRecord,
        Vec<session_store::StoredEvent>,
    )> {
        self.0.create_session(new).await
    }
    async fn get_session(&self, id: &str) -> session_store::Result<session_store::SessionRecord> {
        self.0.get_session(id).await
    }
    async fn update_session(
        &self,
        id: &str,
        update: session_store::SessionUpdate,
    ) -> session_store::Result<session_store::SessionRecord> {
        self.0.update_session(id, update).await
    }
    async fn list_sessions(
        &self,
        query: session_store::SessionQuery,
    ) -> session_store::Result<session_store::SessionPage> {
        self.0.list_sessions(query).await
    }
    async fn delete_session(&self, id: &str) -> session_store::Result<()> {
        self.0.delete_session(id).await
    }
    async fn append_batch(
        &self,
        id: &str,
        batch: session_store::AppendBatch,
    ) -> session_store::Result<Vec<session_store::StoredEvent>> {
        self.0.append_batch(id, batch).await
    }
    async fn mark_processed(
        &self,
        id: &str,
        events: session_store::EventSelector,
        fence: session_store::Fence,
    ) -> session_store::Result<Vec<session_store::StoredEvent>> {
        self.0.mark_processed(id, events, fence).await
    }
    async fn read(
        &self,
        id: &str,
        from: u64,
        limit: usize,
    ) -> session_store::Result<Vec<session_store::StoredEvent>> {
        self.0.read(id, from, limit).await
    }
    async fn get_events(
        &self,
        id: &str,
        events: session_store::EventSelector,
    ) -> session_store::Result<Vec<session_store::StoredEvent>> {
        self.0.get_events(id, events).await
    }
    async fn subscribe(
        &self,
        id: &str,
        from: u64,
    ) -> session_store::Result<session_store::EventStream> {
        self.0.subscribe(id, from).await
    }
    async fn acquire_lease(
        &self,
        id: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> session_store::Result<session_store::Lease> {
        self.0.acquire_lease(id, holder, ttl).await
    }
    async fn renew_lease(
        &self,
        lease: &session_store::Lease,
        ttl: std::time::Duration,
    ) -> session_store::Result<session_store::Lease> {
        self.0.renew_lease(lease, ttl).await
    }
    async fn release_lease(&self, lease: &session_store::Lease) -> session_store::Result<()> {
        self.0.release_lease(lease).await
    }
    async fn sessions_needing_wake(
        &self,
        after: i64,
        limit: usize,
    ) -> session_store::Result<Vec<session_store::WakeCandidate>> {
        self.0.sessions_needing_wake(after, limit).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provided_list_events_matches_the_sql_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in_dir(dir.path(), SqliteOptions::default())
        .await
        .unwrap();
    conformance::list_events_pages_filters_and_orders(Arc::new(DefaultListEvents(store))).await;
}

// ------------------------------------------ leases on a virtual clock
#[tokio::test]
async fn lease_expiry_follows_the_injected_clock() {
    use std::time::Duration;

    use session_store::{Clock, Fence, ManualClock, NewSession, SessionStatus, StoreError};

    let clock = Arc::new(ManualClock::new(
        time::OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
    ));
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in_dir(
        dir.path(),
        SqliteOptions {
            clock: clock.clone(),
            ..SqliteOptions::default()
        },
    )
    .await
    .unwrap();
    store
        .create_session(NewSession {
            id: "sesn_v".into(),
            status: SessionStatus::Running,
            body: serde_json::json!({}),
            initial_events: vec![],
        })
        .await
        .unwrap();
    let a = store
        .acquire_lease("sesn_v", "a", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(a.expires_at, clock.now() + Duration::from_secs(10));
    assert!(store.sessions_needing_wake(0, 10).await.unwrap().is_empty());
    clock.advance(Duration::from_millis(9_999));
    assert!(matches!(
        store
            .acquire_lease("sesn_v", "b", Duration::from_secs(10))
            .await,
        Err(StoreError::LeaseHeld { .. })
    ));
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        store
            .sessions_needing_wake(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.session_id)
            .collect::<Vec<_>>(),
        vec!["sesn_v".to_owned()]
    );
    // an expired lease that nobody took over can still be renewed
    let renewed = store
        .renew_lease(&a, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(renewed.expires_at, clock.now() + Duration::from_secs(10));
    clock.advance(Duration::from_secs(10));
    let b = store
        .acquire_lease("sesn_v", "b", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(b.epoch, 2);
    assert!(matches!(
        store
            .append(
                "sesn_v",
                vec![session_store::NewEvent::processed(
                    serde_json::json!({"type": "x"})
                )],
                Fence::from(&a)
            )
            .await,
        Err(StoreError::Fenced {
            current_epoch: 2,
            ..
        })
    ));
    let stored = store
        .append(
            "sesn_v",
            vec![session_store::NewEvent::processed(
                serde_json::json!({"type": "x"}),
            )],
            Fence::from(&b),
        )
        .await
        .unwrap();
    assert_eq!(
        stored[0].processed_at,
        Some(clock.now()),
        "event times come from the same clock"
    );
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite3");
    drop(
        SqliteStore::open(&path, SqliteOptions::default())
            .await
            .unwrap(),
    );
    // reopening a migrated file is fine (migrations are idempotent)
    drop(
        SqliteStore::open(&path, SqliteOptions::default())
            .await
            .unwrap(),
    );
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO schema_migrations (version, name, applied_at_us) VALUES (999, 'future', 0)",
        [],
    )
    .unwrap();
    drop(conn);
    match SqliteStore::open(&path, SqliteOptions::default()).await {
        Err(session_store::StoreError::SchemaTooNew { found: 999, .. }) => {}
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}
