//! Crash recovery and fencing, in process: a harness is dropped at every
//! write and tool execution of a session (before and after the operation
//! takes effect) and a fresh harness with no memory of it finishes the
//! session; two harnesses race for one session. Checked against the hands
//! double's execution record and the fake model's request record, not only
//! against the log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use airlock_tests::fake_model::{tool_loop, FakeModel, Reply, RequestCtx, Turn};
use harness::{Observer, StopReason, Supervisor, WakeOutcome};
use harness_support::*;
use serde_json::{json, Value};
use session_store::SessionStatus;
use testkit::eventually;

const TOOLS: usize = 3;

/// What must hold after any crash and recovery.
fn check_recovered(
    events: &[session_store::StoredEvent],
    hands: &RecordingHands,
    fake: &FakeModel,
    what: &str,
) {
    check_complete(events);
    let tool_uses = of_type(events, "agent.tool_use");
    assert_eq!(tool_uses.len(), TOOLS, "{what}: tool uses");
    assert_eq!(
        of_type(events, "agent.tool_result").len(),
        TOOLS,
        "{what}: tool results"
    );
    // No tool ran twice, and every recorded call ran once.
    check_ran_once(&tool_uses, hands, what);
    // No response duplicated or lost.
    let texts = message_texts(events);
    let mut expected: Vec<String> = (0..TOOLS).map(|k| format!("step {k}")).collect();
    expected.push(format!("done after {TOOLS} tool calls"));
    assert_eq!(texts, expected, "{what}: agent messages");
    assert!(
        of_type(events, "session.error").is_empty(),
        "{what}: a request was rejected"
    );
    let idle = of_type(events, "session.status_idle");
    assert_eq!(
        idle.last().unwrap().body["stop_reason"],
        json!({"type": "end_turn"}),
        "{what}"
    );
    // The model saw every request well-formed (the fake validates pairing)
    // and its last request holds the whole conversation.
    let reqs = fake.requests();
    let last = &reqs.last().unwrap().body["messages"];
    assert_eq!(
        last.as_array().unwrap().len(),
        1 + 2 * TOOLS,
        "{what}: final conversation"
    );
    for k in 0..TOOLS {
        let result = &last[2 + 2 * k]["content"][0];
        assert_eq!(result["type"], json!("tool_result"), "{what}");
        assert_eq!(result["tool_use_id"], json!(tool_uses[k].id), "{what}");
    }
}

/// Harness B's wake after A crashed ended the turn, or found it ended
/// (NothingToDo only when A had already written the final idle).
fn check_finished(out: &WakeOutcome, what: &str) {
    assert!(
        matches!(
            out,
            WakeOutcome::Idle(StopReason::EndTurn) | WakeOutcome::NothingToDo
        ),
        "{what}: {out:?}"
    );
}

struct Round {
    fired: bool,
    labels: Vec<&'static str>,
}

/// Run harness A with a crash at point `n` (`after` the operation or
/// before it), then harness B to the end; check everything.
async fn crash_round(n: Option<usize>, after: bool, forget_record: bool) -> Round {
    let (fx, inner) = sqlite_store().await;
    let (store_a, crasher) = CrashingStore::wrap(inner.clone());
    let hands = RecordingHands::new();
    *hands.crasher.lock().unwrap() = Some(crasher.clone());
    let fake = FakeModel::start(tool_loop(TOOLS, bash)).await.unwrap();
    create_session(&*inner, "s", toolset(), "three steps").await;
    if let Some(n) = n {
        crasher.arm(n, after);
    }
    let a = harness(store_a, &fake, hands.clone(), config("harness-a"));
    let task = tokio::spawn(async move { a.wake("s").await });
    let what = format!(
        "crash at point {n:?} ({})",
        if after { "after" } else { "before" }
    );
    crasher.wait_fired_or_done(&task, &what).await;
    let fired = crasher.fired();
    if fired {
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled(), "{what}");
    } else {
        assert_eq!(
            task.await.unwrap().unwrap(),
            WakeOutcome::Idle(StopReason::EndTurn),
            "{what}"
        );
    }
    let labels = crasher.labels();
    *hands.crasher.lock().unwrap() = None;
    if forget_record {
        hands.forget_record();
    }
    // A's lease lapses; B knows nothing but the log.
    fx.lapse_leases();
    let b = harness(inner.clone(), &fake, hands.clone(), config("harness-b"));
    let out = b.wake("s").await.unwrap();
    if fired {
        check_finished(&out, &what);
    }
    let events = log(&*inner, "s").await;
    if forget_record {
        check_complete(&events);
    } else {
        check_recovered(&events, &hands, &fake, &what);
    }
    Round { fired, labels }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_write_or_tool_call_is_recovered_exactly_once() {
    let clean = crash_round(None, false, false).await;
    assert!(!clean.fired);
    let points = clean.labels.len();
    eprintln!("{points} crash points: {:?}", clean.labels);
    assert!(clean.labels.iter().filter(|l| **l == "execute").count() == TOOLS);
    assert!(points >= 15, "too few crash points: {:?}", clean.labels);
    for n in 0..points {
        for after in [false, true] {
            let r = crash_round(Some(n), after, false).await;
            assert!(r.fired, "point {n} was not reached");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_whose_outcome_is_unknown_is_reported_honestly() {
    // Crash right after the first tool ran, and the agent lost its record.
    let clean = crash_round(None, false, false).await;
    let first_exec = clean.labels.iter().position(|l| *l == "execute").unwrap();

    let (fx, inner) = sqlite_store().await;
    let (store_a, crasher) = CrashingStore::wrap(inner.clone());
    let hands = RecordingHands::new();
    *hands.crasher.lock().unwrap() = Some(crasher.clone());
    let fake = FakeModel::start(tool_loop(TOOLS, bash)).await.unwrap();
    create_session(&*inner, "s", toolset(), "three steps").await;
    crasher.arm(first_exec, true);
    let a = harness(store_a, &fake, hands.clone(), config("harness-a"));
    let task = tokio::spawn(async move { a.wake("s").await });
    eventually("the crash", PATIENCE, || crasher.fired()).await;
    kill(task).await;
    *hands.crasher.lock().unwrap() = None;
    hands.forget_record();
    fx.lapse_leases();
    let b = harness(inner.clone(), &fake, hands.clone(), config("harness-b"));
    wake_idle(&b, "s", StopReason::EndTurn).await;
    let events = complete_log(&*inner, "s").await;
    let first_tool = of_type(&events, "agent.tool_use")[0].id.clone();
    let result = of_type(&events, "agent.tool_result")
        .into_iter()
        .find(|e| e.body["tool_use_id"] == json!(first_tool))
        .unwrap()
        .clone();
    assert_eq!(result.body["is_error"], json!(true));
    assert!(result.body["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("unknown"));
    // It was not run again, and the model was told exactly that.
    assert_eq!(
        hands
            .executions()
            .iter()
            .filter(|e| e.tool_use_id == first_tool)
            .count(),
        1
    );
    let reqs = fake.requests();
    let seen = reqs.iter().any(|r| {
        r.body["messages"].as_array().unwrap().iter().any(|m| {
            m["content"].as_array().unwrap().iter().any(|b| {
                b["tool_use_id"] == json!(first_tool)
                    && b["is_error"] == json!(true)
                    && b["content"][0]["text"]
                        .as_str()
                        .unwrap_or("")
                        .contains("unknown")
            })
        })
    });
    assert!(seen, "the model never saw the unknown outcome");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_the_model_stream_is_recovered() {
    let (fx, inner) = sqlite_store().await;
    let hands = RecordingHands::new();
    let fake = slow_bash_loop(Duration::from_millis(200), TOOLS).await;
    create_session(&*inner, "s", toolset(), "three steps").await;
    let a = harness(inner.clone(), &fake, hands.clone(), config("harness-a"));
    let task = tokio::spawn(async move { a.wake("s").await });
    // Kill it while its second model request is in flight.
    assert!(fake.wait_for_requests(2, PATIENCE).await);
    kill(task).await;
    fx.lapse_leases();
    let b = harness(inner.clone(), &fake, hands.clone(), config("harness-b"));
    wake_idle(&b, "s", StopReason::EndTurn).await;
    let events = log(&*inner, "s").await;
    check_recovered(&events, &hands, &fake, "crash mid-stream");
    let crashed: Vec<_> = of_type(&events, "span.model_request_end")
        .iter()
        .filter(|e| e.body["is_error"] == json!(true))
        .map(|e| e.body["model_request_start_id"].clone())
        .collect();
    assert_eq!(crashed.len(), 1, "the lost request is closed as failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_harnesses_racing_for_one_session_advance_it_once() {
    for round in 0..10 {
        let (_fx, store) = sqlite_store().await;
        let hands = RecordingHands::new();
        let fake = FakeModel::start(tool_loop(TOOLS, bash)).await.unwrap();
        create_session(&*store, "s", toolset(), "three steps").await;
        let a = harness(store.clone(), &fake, hands.clone(), config("harness-a"));
        let b = harness(store.clone(), &fake, hands.clone(), config("harness-b"));
        let (ra, rb) = race(&a, &b, "s", &format!("round {round}")).await;
        for o in [&ra, &rb] {
            assert!(
                matches!(
                    o,
                    WakeOutcome::Idle(StopReason::EndTurn)
                        | WakeOutcome::Busy { .. }
                        | WakeOutcome::NothingToDo
                ),
                "round {round}: {o:?}"
            );
        }
        let events = log(&*store, "s").await;
        check_recovered(&events, &hands, &fake, &format!("race round {round}"));
        assert_eq!(
            fake.request_count(),
            TOOLS + 1,
            "round {round}: each request made once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harness_whose_lease_was_taken_over_writes_nothing_more() {
    let (fx, store) = sqlite_store().await;
    let hands = RecordingHands::new();
    let gate = hands.close_gate();
    let fake = FakeModel::start(tool_loop(TOOLS, bash)).await.unwrap();
    create_session(&*store, "s", toolset(), "three steps").await;
    // A stalls inside its first tool call (a long GC pause, a partition...).
    let a = harness(store.clone(), &fake, hands.clone(), config("harness-a"));
    let task_a = tokio::spawn(async move { a.wake("s").await });
    eventually("A to call the first tool", PATIENCE, || {
        hands.calls().len() == 1
    })
    .await;
    // Its lease lapses; B takes the session over and re-sends the same call.
    fx.lapse_leases();
    let b = harness(store.clone(), &fake, hands.clone(), config("harness-b"));
    let task_b = tokio::spawn(async move { b.wake("s").await });
    eventually("B to re-send the first tool call", PATIENCE, || {
        hands.calls().len() == 2
    })
    .await;
    let calls = hands.calls();
    assert_eq!(
        calls[0].tool_use_id, calls[1].tool_use_id,
        "same idempotency key"
    );
    // A's call finishes; both hear the result; only B may write it.
    gate.add_permits(100);
    let ra = joined(task_a).await.unwrap();
    let rb = joined(task_b).await.unwrap();
    assert_eq!(ra, WakeOutcome::LeaseLost);
    assert_eq!(rb, WakeOutcome::Idle(StopReason::EndTurn));
    let events = log(&*store, "s").await;
    check_recovered(&events, &hands, &fake, "takeover");
    assert_eq!(fake.request_count(), TOOLS + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_harness_cannot_record_a_model_response() {
    let (fx, store) = sqlite_store().await;
    let hands = RecordingHands::new();
    // Request 0 (A's) is slow; B's requests are fast.
    let fake = FakeModel::start({
        let inner = tool_loop(TOOLS, bash);
        move |r: &airlock_tests::fake_model::RequestCtx| {
            let reply = airlock_tests::fake_model::Script::reply(&inner, r);
            if r.n == 0 {
                reply.with_latency(Duration::from_millis(1500))
            } else {
                reply
            }
        }
    })
    .await
    .unwrap();
    create_session(&*store, "s", toolset(), "three steps").await;
    let a = harness(store.clone(), &fake, hands.clone(), config("harness-a"));
    let task_a = tokio::spawn(async move { a.wake("s").await });
    assert!(fake.wait_for_requests(1, PATIENCE).await);
    fx.lapse_leases();
    let b = harness(store.clone(), &fake, hands.clone(), config("harness-b"));
    wake_idle(&b, "s", StopReason::EndTurn).await;
    let ra = joined(task_a).await.unwrap();
    assert_eq!(ra, WakeOutcome::LeaseLost);
    let events = log(&*store, "s").await;
    check_recovered(&events, &hands, &fake, "stale response");
}

// ------------------------------------------- input queued before a crash

/// Counts finished wakes.
#[derive(Debug, Default)]
struct Wakes(AtomicUsize);

impl Observer for Wakes {
    fn wake_finished(&self, _session_id: &str, _outcome: &Result<WakeOutcome, String>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Wakes {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

async fn settle(sup: &Supervisor) {
    eventually("the supervisor's wakes to finish", PATIENCE, || {
        sup.active() == 0
    })
    .await;
}

fn answering() -> impl Fn(&RequestCtx) -> Reply + Send + Sync + 'static {
    |req: &RequestCtx| Reply::text(format!("answer to: {}", req.last_user_text().unwrap_or("")))
}

fn always_ask() -> Value {
    json!([{"type": "agent_toolset_20260401",
            "default_config": {"enabled": true, "permission_policy": {"type": "always_ask"}}}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_appended_before_the_wake_started_is_recovered_by_the_scan() {
    let (_fx, store) = sqlite_store().await;
    let fake = FakeModel::start(answering()).await.unwrap();
    let hands = RecordingHands::new();
    // A first turn, then the API appends a message to the idle session and
    // the control plane dies before the wake starts (nobody calls notify).
    create_session(&*store, "sesn_a", toolset(), "first").await;
    let h1 = harness(store.clone(), &fake, hands.clone(), config("h1"));
    wake_idle(&h1, "sesn_a", StopReason::EndTurn).await;
    drop(h1);
    let second = send(&*store, "sesn_a", user_message("second")).await;
    // And a session whose very first message never got a wake.
    create_session(&*store, "sesn_b", toolset(), "never woken").await;
    for id in ["sesn_a", "sesn_b"] {
        assert_eq!(
            store.get_session(id).await.unwrap().status,
            SessionStatus::Idle
        );
    }
    // A fresh harness and supervisor over the same store (the restart).
    let wakes = Arc::new(Wakes::default());
    let h2 =
        harness(store.clone(), &fake, hands.clone(), config("h2")).with_observer(wakes.clone());
    let sup = Supervisor::manual(h2);
    assert_eq!(sup.recover_once().await, 2);
    settle(&sup).await;
    assert_eq!(wakes.count(), 2);
    for (id, said) in [("sesn_a", "second"), ("sesn_b", "never woken")] {
        let events = complete_log(&*store, id).await;
        assert_eq!(
            events.last().unwrap().event_type,
            "session.status_idle",
            "{id}"
        );
        let answer =
            of_type(&events, "agent.message").last().unwrap().body["content"][0]["text"].clone();
        assert_eq!(answer, json!(format!("answer to: {said}")), "{id}");
    }
    let events = log(&*store, "sesn_a").await;
    let pos = |id: &str| events.iter().position(|e| e.id == id).unwrap();
    assert!(events[pos(&second.id)].processed_at.is_some());
    assert_eq!(of_type(&events, "agent.message").len(), 2);
    assert_eq!(fake.requests().len(), 3, "one request per message");
    // Nothing is left for a scan to wake.
    assert_eq!(sup.recover_once().await, 0);
    settle(&sup).await;
    assert_eq!(wakes.count(), 2);
    assert_eq!(fake.requests().len(), 3);
    assert!(sup.shutdown(Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_waiting_for_the_client_is_not_woken_on_every_scan() {
    let (_fx, store) = sqlite_store().await;
    let fake = FakeModel::start(|req: &RequestCtx| {
        if req.tool_uses_so_far() == 0 {
            Turn::new()
                .tool_use("t1", "bash", json!({"command": "deploy"}))
                .into()
        } else {
            Reply::text(format!("deployed; {}", req.last_user_text().unwrap_or("")))
        }
    })
    .await
    .unwrap();
    let hands = RecordingHands::new();
    let wakes = Arc::new(Wakes::default());
    let new_sup = || {
        Supervisor::manual(
            harness(store.clone(), &fake, hands.clone(), config("h1")).with_observer(wakes.clone()),
        )
    };
    create_session(&*store, "s", always_ask(), "deploy").await;
    let sup = new_sup();
    sup.notify("s");
    settle(&sup).await;
    let events = log(&*store, "s").await;
    let tool_use = of_type(&events, "agent.tool_use")[0].clone();
    assert_eq!(
        events.last().unwrap().body["stop_reason"],
        json!({"type": "requires_action", "event_ids": [tool_use.id]})
    );
    assert_eq!(fake.requests().len(), 1);
    // A message sent while the call waits for the client stays queued: the
    // notified wake can do nothing with it and writes nothing.
    let note = send(&*store, "s", user_message("be careful")).await;
    sup.notify("s");
    settle(&sup).await;
    assert_eq!(wakes.count(), 2);
    assert_eq!(log(&*store, "s").await.len(), events.len() + 1);
    // Every scan sees the queued message; none wakes the session again.
    for _ in 0..5 {
        assert_eq!(sup.recover_once().await, 0);
    }
    settle(&sup).await;
    assert_eq!(wakes.count(), 2);
    // A restarted supervisor has no memo: one wake, then it remembers.
    assert!(sup.shutdown(Duration::from_secs(10)).await);
    let sup = new_sup();
    assert_eq!(sup.recover_once().await, 1);
    settle(&sup).await;
    for _ in 0..5 {
        assert_eq!(sup.recover_once().await, 0);
    }
    settle(&sup).await;
    assert_eq!(wakes.count(), 3);
    assert_eq!(fake.requests().len(), 1, "no model request while blocked");
    assert!(hands.calls().is_empty());
    // The answer is new input (the last seq moved): the scan wakes it, the
    // call runs and the waiting message goes to the model with its result.
    confirm(&*store, "s", &tool_use.id, "allow").await;
    assert_eq!(sup.recover_once().await, 1);
    settle(&sup).await;
    let events = complete_log(&*store, "s").await;
    assert_eq!(hands.executions().len(), 1);
    assert_eq!(fake.requests().len(), 2);
    assert_eq!(
        of_type(&events, "agent.message").last().unwrap().body["content"][0]["text"],
        json!("deployed; be careful")
    );
    assert!(events
        .iter()
        .find(|e| e.id == note.id)
        .unwrap()
        .processed_at
        .is_some());
    // A second answer to the answered call can never be used: one wake marks
    // it processed, and scans find nothing after that.
    let late = confirm(&*store, "s", &tool_use.id, "deny").await;
    assert_eq!(sup.recover_once().await, 1);
    settle(&sup).await;
    let after = log(&*store, "s").await;
    assert_eq!(
        after.len(),
        events.len() + 1,
        "nothing written but the mark"
    );
    assert!(after.last().unwrap().processed_at.is_some());
    assert_eq!(after.last().unwrap().id, late.id);
    assert!(store
        .sessions_needing_wake(0, 100)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(sup.recover_once().await, 0);
    assert_eq!(fake.requests().len(), 2);
    assert_eq!(hands.executions().len(), 1);
    assert!(sup.shutdown(Duration::from_secs(10)).await);
}

// ------------------------------------------------------------ denials

/// A denied `always_ask` call: harness A crashes at each of the two writes
/// that record the denial (the result, then the confirmation's mark), before
/// and after each takes effect, and harness B finishes. The log always ends with exactly one error `agent.tool_result`
/// for the call, the tool never runs and the model is told once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_is_recorded_once_across_crashes() {
    for n in 0..2 {
        for after in [false, true] {
            let (fx, inner) = sqlite_store().await;
            let (store_a, crasher) = CrashingStore::wrap(inner.clone());
            let fake = FakeModel::start(|req: &RequestCtx| {
                if req.tool_uses_so_far() == 0 {
                    Turn::new()
                        .tool_use("t1", "bash", json!({"command": "rm -rf /"}))
                        .into()
                } else {
                    Reply::text("understood")
                }
            })
            .await
            .unwrap();
            let hands = RecordingHands::new();
            create_session(&*inner, "s", always_ask(), "clean up").await;
            let a = harness(store_a, &fake, hands.clone(), config("harness-a"));
            assert!(matches!(
                a.wake("s").await.unwrap(),
                WakeOutcome::Idle(StopReason::RequiresAction(_))
            ));
            let tool_use = of_type(&log(&*inner, "s").await, "agent.tool_use")[0].clone();
            queue(&*inner, "s", json!({"type": "user.tool_confirmation", "tool_use_id": tool_use.id, "result": "deny", "deny_message": "never on prod"})).await;
            let base = crasher.points();
            crasher.arm(base + n, after);
            let task = tokio::spawn(async move { a.wake("s").await });
            let what = format!(
                "crash at point {n} of the denial wake ({})",
                if after { "after" } else { "before" }
            );
            crasher.wait_fired_or_done(&task, &what).await;
            assert!(crasher.fired(), "{what}: not reached");
            assert_eq!(
                crasher.labels()[base + n],
                ["append", "mark_processed"][n],
                "{what}"
            );
            {
                kill(task).await;
                fx.lapse_leases();
                let b = harness(inner.clone(), &fake, hands.clone(), config("harness-b"));
                let out = b.wake("s").await.unwrap();
                check_finished(&out, &what);
            }
            let events = complete_log(&*inner, "s").await;
            let results = of_type(&events, "agent.tool_result");
            assert_eq!(results.len(), 1, "{what}: {results:#?}");
            assert_eq!(results[0].body["tool_use_id"], json!(tool_use.id), "{what}");
            assert_eq!(results[0].body["is_error"], json!(true), "{what}");
            let text = results[0].body["content"][0]["text"].as_str().unwrap();
            assert!(
                text.contains("denied") && text.contains("never on prod"),
                "{what}: {text}"
            );
            assert!(hands.calls().is_empty(), "{what}: a denied call ran");
            let reqs = fake.requests();
            assert_eq!(reqs.len(), 2, "{what}: model requests");
            let told = reqs[1].body["messages"][2]["content"].clone();
            assert_eq!(told.as_array().unwrap().len(), 1, "{what}: {told}");
            assert_eq!(told[0]["tool_use_id"], json!(tool_use.id));
            assert_eq!(told[0]["is_error"], json!(true));
            assert_eq!(of_type(&events, "agent.message").len(), 1, "{what}");
        }
    }
}
