//! Shared fixtures of the harness tests: a SQLite store with a manual clock,
//! the production model client pointed at the fake Messages server, an
//! in-process [`Hands`] double that keeps an execution record like the
//! sandbox-agent does (and scripted MCP servers behind an at-most-once
//! record by `tool_use_id`, as the agent keeps for MCP calls), and a store wrapper that can "crash" the harness at
//! the n-th write.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_tests::fake_model::{FakeModel, Script};
use harness::{
    Disposition, Hands, HandsError, Harness, HarnessConfig, McpAnswer, McpFailure, McpScope,
    McpServerRef, McpToolInfo, McpToolOutput, ProvisionSpec, ProvisioningMode, RawHarnessConfig,
    SandboxRef, StopReason, ToolCall, ToolOutput, WakeOutcome,
};
use model::{AnthropicConfig, AnthropicProvider, ApiKey};
use serde_json::{json, Value};
use session_store::{
    AppendBatch, EventSelector, EventStream, Fence, Lease, ManualClock, NewEvent, NewSession,
    Result as StoreResult, SessionPage, SessionQuery, SessionRecord, SessionStatus, SessionStore,
    SessionUpdate, SqliteOptions, SqliteStore, StoredEvent,
};
use testkit::{eventually, eventually_async};

/// Bound for anything a test waits for; only reached when it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------ store

pub struct StoreFixture {
    pub store: Arc<SqliteStore>,
    pub clock: Arc<ManualClock>,
    pub _dir: tempfile::TempDir,
}

pub async fn sqlite() -> StoreFixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let options = SqliteOptions {
        clock: clock.clone(),
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_in_dir(dir.path(), options).await.unwrap();
    StoreFixture {
        store: Arc::new(store),
        clock,
        _dir: dir,
    }
}

impl StoreFixture {
    /// Let every lease lapse (an hour on the store's clock).
    pub fn lapse_leases(&self) {
        self.clock.advance(Duration::from_secs(3600));
    }
}

/// A fresh SQLite fixture and its store as the harness takes it.
pub async fn sqlite_store() -> (StoreFixture, Arc<dyn SessionStore>) {
    let fx = sqlite().await;
    let store: Arc<dyn SessionStore> = fx.store.clone();
    (fx, store)
}

pub fn agent_body(tools: Value) -> Value {
    json!({
        "type": "session",
        "environment_id": "env_test",
        "resources": [],
        "agent": {
            "type": "agent",
            "id": "agent_test",
            "version": 1,
            "name": "tester",
            "model": {"id": "claude-test"},
            "system": "You are a test agent.",
            "tools": tools,
        }
    })
}

pub fn toolset() -> Value {
    json!([{"type": "agent_toolset_20260401",
            "default_config": {"enabled": true, "permission_policy": {"type": "always_allow"}},
            "configs": []}])
}

pub fn user_message(text: &str) -> NewEvent {
    NewEvent::queued(json!({"type": "user.message", "content": [{"type": "text", "text": text}]}))
}

pub async fn create_session(store: &dyn SessionStore, id: &str, tools: Value, first: &str) {
    store
        .create_session(NewSession {
            id: id.to_owned(),
            status: SessionStatus::Idle,
            body: agent_body(tools),
            initial_events: vec![user_message(first)],
        })
        .await
        .unwrap();
}

pub async fn send(store: &dyn SessionStore, id: &str, event: NewEvent) -> StoredEvent {
    store
        .append(id, vec![event], Fence::None)
        .await
        .unwrap()
        .remove(0)
}

/// Queue an event given by its JSON body.
pub async fn queue(store: &dyn SessionStore, id: &str, body: Value) -> StoredEvent {
    send(store, id, NewEvent::queued(body)).await
}

/// Queue the client's answer (`allow` or `deny`) to the `always_ask` call
/// `tool_use_id`.
pub async fn confirm(
    store: &dyn SessionStore,
    id: &str,
    tool_use_id: &str,
    result: &str,
) -> StoredEvent {
    let body =
        json!({"type": "user.tool_confirmation", "tool_use_id": tool_use_id, "result": result});
    queue(store, id, body).await
}

pub async fn log(store: &dyn SessionStore, id: &str) -> Vec<StoredEvent> {
    store.read(id, 1, 100_000).await.unwrap()
}

/// The log of `id`, checked with [`check_complete`].
pub async fn complete_log(store: &dyn SessionStore, id: &str) -> Vec<StoredEvent> {
    let events = log(store, id).await;
    check_complete(&events);
    events
}

/// Poll until the last event of `id` is `session.status_idle` (bounded by
/// [`PATIENCE`]; `what` names the wait in the failure).
pub async fn wait_idle_logged(store: &dyn SessionStore, id: &str, what: &str) {
    eventually_async(what, PATIENCE, || async move {
        let events = log(store, id).await;
        events.last().map(|e| e.event_type.as_str()) == Some("session.status_idle")
    })
    .await;
}

pub fn types(events: &[StoredEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

pub fn of_type<'a>(events: &'a [StoredEvent], ty: &str) -> Vec<&'a StoredEvent> {
    events.iter().filter(|e| e.event_type == ty).collect()
}

/// The log invariants every test checks: ids unique; every tool use has
/// exactly one result (agent.tool_result, or a denial); every span start has
/// exactly one end; user events that a request consumed are processed.
pub fn check_log(events: &[StoredEvent]) {
    let mut ids = HashSet::new();
    for e in events {
        assert!(ids.insert(e.id.clone()), "duplicate event id {}", e.id);
    }
    let mut results: HashMap<String, usize> = HashMap::new();
    for e in of_type(events, "agent.tool_result") {
        *results
            .entry(e.body["tool_use_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    for e in of_type(events, "user.custom_tool_result") {
        *results
            .entry(e.body["custom_tool_use_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    for e in of_type(events, "agent.mcp_tool_result") {
        let id = e.body["mcp_tool_use_id"].as_str().unwrap().to_owned();
        assert!(
            events
                .iter()
                .any(|u| u.id == id && u.event_type == "agent.mcp_tool_use"),
            "agent.mcp_tool_result {} answers {id}, which is no agent.mcp_tool_use",
            e.id
        );
        *results.entry(id).or_default() += 1;
    }
    // A denial is recorded as an error agent.tool_result; in logs from before
    // that, the deny confirmation itself is the result.
    for e in of_type(events, "user.tool_confirmation") {
        if e.body["result"] == json!("deny") {
            let id = e.body["tool_use_id"].as_str().unwrap().to_owned();
            results.entry(id).or_insert(1);
        }
    }
    for e in events.iter().filter(|e| {
        e.event_type == "agent.tool_use"
            || e.event_type == "agent.custom_tool_use"
            || e.event_type == "agent.mcp_tool_use"
    }) {
        let n = results.get(&e.id).copied().unwrap_or(0);
        assert!(n <= 1, "tool use {} has {n} results", e.id);
    }
    for (id, n) in &results {
        assert_eq!(*n, 1, "tool use {id} has {n} results");
        assert!(
            events.iter().any(|e| &e.id == id),
            "result for a tool use {id} that is not in the log"
        );
    }
    let mut ends: HashMap<String, usize> = HashMap::new();
    for e in of_type(events, "span.model_request_end") {
        let start = e.body["model_request_start_id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            e.body["model_usage"].is_object(),
            "span end without model_usage"
        );
        *ends.entry(start).or_default() += 1;
    }
    for s in of_type(events, "span.model_request_start") {
        let n = ends.get(&s.id).copied().unwrap_or(0);
        assert!(n <= 1, "span {} closed {n} times", s.id);
    }
}

/// Every tool use has its result (the session is not mid-turn).
pub fn check_complete(events: &[StoredEvent]) {
    check_log(events);
    let resolved: HashSet<String> = events
        .iter()
        .filter_map(|e| match e.event_type.as_str() {
            "agent.tool_result" => e.body["tool_use_id"].as_str().map(str::to_owned),
            "agent.mcp_tool_result" => e.body["mcp_tool_use_id"].as_str().map(str::to_owned),
            "user.custom_tool_result" => e.body["custom_tool_use_id"].as_str().map(str::to_owned),
            "user.tool_confirmation" if e.body["result"] == json!("deny") => {
                e.body["tool_use_id"].as_str().map(str::to_owned)
            }
            _ => None,
        })
        .collect();
    for e in of_type(events, "agent.tool_use")
        .into_iter()
        .chain(of_type(events, "agent.mcp_tool_use"))
    {
        assert!(resolved.contains(&e.id), "tool use {} has no result", e.id);
    }
    for s in of_type(events, "span.model_request_start") {
        assert!(
            of_type(events, "span.model_request_end")
                .iter()
                .any(|e| e.body["model_request_start_id"] == json!(s.id)),
            "span {} never closed",
            s.id
        );
    }
    for e in events.iter().filter(|e| e.event_type.starts_with("user.")) {
        assert!(
            e.processed_at.is_some(),
            "{} {} left unprocessed",
            e.event_type,
            e.id
        );
    }
}

// ------------------------------------------------------------------ model

pub fn provider(fake: &FakeModel, idle_timeout: Duration) -> Arc<AnthropicProvider> {
    let mut c = AnthropicConfig::new(fake.base_url(), ApiKey::new("sk-test"));
    c.stream_idle_timeout = idle_timeout;
    c.request_timeout = Duration::from_secs(10);
    Arc::new(AnthropicProvider::new(c).unwrap())
}

pub fn config(instance: &str) -> HarnessConfig {
    let raw: RawHarnessConfig = toml::from_str(&format!(
        "instance_id = \"{instance}\"\nprovisioning = \"lazy\"\n[retry]\nmax_attempts = 4\ninitial_backoff_seconds = 0.01\nmax_backoff_seconds = 0.05\njitter = false\n"
    ))
    .unwrap();
    HarnessConfig::from_raw(raw).unwrap()
}

pub fn harness(
    store: Arc<dyn SessionStore>,
    fake: &FakeModel,
    hands: Arc<RecordingHands>,
    config: HarnessConfig,
) -> Harness {
    Harness::new(
        store,
        provider(fake, Duration::from_secs(10)),
        hands,
        config,
    )
}

/// Wake `id` and check that it goes idle for `reason`.
pub async fn wake_idle(h: &Harness, id: &str, reason: StopReason) {
    let out = h.wake(id).await.unwrap();
    assert_eq!(out, WakeOutcome::Idle(reason), "wake of {id}");
}

/// Wake `id` on harnesses `a` and `b` at once and check that exactly one of
/// them ended the turn (`what` names the round); both outcomes.
pub async fn race(a: &Harness, b: &Harness, id: &str, what: &str) -> (WakeOutcome, WakeOutcome) {
    let (ra, rb) = tokio::join!(a.wake(id), b.wake(id));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let done = [&ra, &rb]
        .iter()
        .filter(|o| ***o == WakeOutcome::Idle(StopReason::EndTurn))
        .count();
    assert_eq!(done, 1, "{what}: {ra:?} {rb:?}");
    (ra, rb)
}

/// The output of a spawned task (a wake), waited for at most [`PATIENCE`].
pub async fn joined<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap()
}

/// Kill a spawned wake, as a crash would, and wait until it is gone.
pub async fn kill<T>(task: tokio::task::JoinHandle<T>) {
    task.abort();
    let _ = task.await;
}

/// The scripted bash call number `k` (`echo step k`), for `tool_loop`.
pub fn bash(k: usize) -> (String, Value) {
    (
        "bash".to_owned(),
        json!({"command": format!("echo step {k}")}),
    )
}

/// The fake model answering after `latency`, running `steps` calls of
/// [`bash`] (`tool_loop`).
pub async fn slow_bash_loop(latency: Duration, steps: usize) -> FakeModel {
    FakeModel::builder()
        .latency(latency)
        .start(airlock_tests::fake_model::tool_loop(steps, bash))
        .await
        .unwrap()
}

/// What most harness tests start from: the SQLite fixture (keep it: it owns
/// the store's directory and clock), its store, the fake model, the hands
/// double and a harness over them.
pub type Rig = (
    StoreFixture,
    Arc<dyn SessionStore>,
    FakeModel,
    Arc<RecordingHands>,
    Harness,
);

/// A [`Rig`] with harness `h1` ([`config`]) and session `id` created with
/// [`toolset`] and the first message `first` (in that order).
pub async fn rig(script: impl Script, id: &str, first: &str) -> Rig {
    rig_with(script, config("h1"), id, toolset(), first).await
}

/// The same with a given harness config and tools.
pub async fn rig_with(
    script: impl Script,
    config: HarnessConfig,
    id: &str,
    tools: Value,
    first: &str,
) -> Rig {
    let (fx, store) = sqlite_store().await;
    let fake = FakeModel::start(script).await.unwrap();
    let hands = RecordingHands::new();
    let h = harness(store.clone(), &fake, hands.clone(), config);
    create_session(&*store, id, tools, first).await;
    (fx, store, fake, hands, h)
}

/// Each of `uses` ran exactly once on `hands`, and no other call ran.
pub fn check_ran_once(uses: &[&StoredEvent], hands: &RecordingHands, what: &str) {
    let mut runs: HashMap<String, usize> = HashMap::new();
    for e in hands.executions() {
        *runs.entry(e.tool_use_id).or_default() += 1;
    }
    for t in uses {
        assert_eq!(
            runs.get(&t.id).copied(),
            Some(1),
            "{what}: tool use {} ran {:?} times",
            t.id,
            runs.get(&t.id)
        );
    }
    assert_eq!(
        runs.len(),
        uses.len(),
        "{what}: executions of calls not in the log: {runs:?}"
    );
}

/// The text of each `agent.message` of a log.
pub fn message_texts(events: &[StoredEvent]) -> Vec<String> {
    of_type(events, "agent.message")
        .iter()
        .map(|e| e.body["content"][0]["text"].as_str().unwrap().to_owned())
        .collect()
}

pub fn with_provisioning(mut c: HarnessConfig, mode: ProvisioningMode) -> HarnessConfig {
    c.provisioning = mode;
    c
}

// ------------------------------------------------------------------ crash points

/// Counts crash points (store writes, tool executions) and, at the chosen
/// one, never returns: the test then aborts the wake, as a kill would.
#[derive(Debug, Default)]
pub struct Crasher {
    count: AtomicUsize,
    target: Mutex<Option<(usize, bool)>>,
    fired: AtomicBool,
    labels: Mutex<Vec<&'static str>>,
}

impl Crasher {
    /// Wait until the spawned wake `task` finished or this crasher fired
    /// (bounded by [`PATIENCE`]; `what` names the round in the failure).
    pub async fn wait_fired_or_done<T>(&self, task: &tokio::task::JoinHandle<T>, what: &str) {
        eventually(
            &format!("{what}: harness A to finish or crash"),
            PATIENCE,
            || task.is_finished() || self.fired(),
        )
        .await;
    }

    /// Crash at point `n` (0-based), `after` the operation or before it.
    pub fn arm(&self, n: usize, after: bool) {
        *self.target.lock().unwrap() = Some((n, after));
    }

    pub fn points(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// What each point was (`append`, `mark_processed`, `execute`, ...).
    pub fn labels(&self) -> Vec<&'static str> {
        self.labels.lock().unwrap().clone()
    }

    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Returns the point number if this operation is the crash point for this side.
    fn check(&self, n: usize, after: bool) -> bool {
        let t = *self.target.lock().unwrap();
        if t == Some((n, after)) {
            self.fired.store(true, Ordering::SeqCst);
            true
        } else {
            false
        }
    }

    async fn around<T>(&self, label: &'static str, op: impl std::future::Future<Output = T>) -> T {
        let n = self.count.fetch_add(1, Ordering::SeqCst);
        self.labels.lock().unwrap().push(label);
        if self.check(n, false) {
            std::future::pending::<()>().await;
        }
        let out = op.await;
        if self.check(n, true) {
            std::future::pending::<()>().await;
        }
        out
    }
}

/// A store whose writes are crash points.
#[derive(Debug)]
pub struct CrashingStore {
    pub inner: Arc<dyn SessionStore>,
    pub crasher: Arc<Crasher>,
}

impl CrashingStore {
    /// `inner` with its writes as the crash points of a new crasher.
    pub fn wrap(inner: Arc<dyn SessionStore>) -> (Arc<dyn SessionStore>, Arc<Crasher>) {
        let crasher = Arc::new(Crasher::default());
        let store = Arc::new(CrashingStore {
            inner,
            crasher: crasher.clone(),
        });
        (store, crasher)
    }
}

#[async_trait::async_trait]
impl SessionStore for CrashingStore {
    async fn create_session(
        &self,
        new: NewSession,
    ) -> StoreResult<(SessionRecord, Vec<StoredEvent>)> {
        self.inner.create_session(new).await
    }
    async fn get_session(&self, session_id: &str) -> StoreResult<SessionRecord> {
        self.inner.get_session(session_id).await
    }
    async fn update_session(
        &self,
        session_id: &str,
        update: SessionUpdate,
    ) -> StoreResult<SessionRecord> {
        self.crasher
            .around(
                "update_session",
                self.inner.update_session(session_id, update),
            )
            .await
    }
    async fn list_sessions(&self, query: SessionQuery) -> StoreResult<SessionPage> {
        self.inner.list_sessions(query).await
    }
    async fn delete_session(&self, session_id: &str) -> StoreResult<()> {
        self.inner.delete_session(session_id).await
    }
    async fn append_batch(
        &self,
        session_id: &str,
        batch: AppendBatch,
    ) -> StoreResult<Vec<StoredEvent>> {
        self.crasher
            .around("append", self.inner.append_batch(session_id, batch))
            .await
    }
    async fn mark_processed(
        &self,
        session_id: &str,
        events: EventSelector,
        fence: Fence,
    ) -> StoreResult<Vec<StoredEvent>> {
        self.crasher
            .around(
                "mark_processed",
                self.inner.mark_processed(session_id, events, fence),
            )
            .await
    }
    async fn read(
        &self,
        session_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        self.inner.read(session_id, from_seq, limit).await
    }
    async fn get_events(
        &self,
        session_id: &str,
        events: EventSelector,
    ) -> StoreResult<Vec<StoredEvent>> {
        self.inner.get_events(session_id, events).await
    }
    async fn subscribe(&self, session_id: &str, from_seq: u64) -> StoreResult<EventStream> {
        self.inner.subscribe(session_id, from_seq).await
    }
    async fn acquire_lease(
        &self,
        session_id: &str,
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<Lease> {
        self.inner.acquire_lease(session_id, holder, ttl).await
    }
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> StoreResult<Lease> {
        self.inner.renew_lease(lease, ttl).await
    }
    async fn release_lease(&self, lease: &Lease) -> StoreResult<()> {
        self.inner.release_lease(lease).await
    }
    async fn sessions_needing_wake(
        &self,
        after: i64,
        limit: usize,
    ) -> StoreResult<Vec<session_store::WakeCandidate>> {
        self.inner.sessions_needing_wake(after, limit).await
    }
}

// ------------------------------------------------------------------ hands

/// One real execution (not a replay).
#[derive(Debug, Clone)]
pub struct Execution {
    pub tool_use_id: String,
    pub name: String,
    pub input: Value,
    pub sandbox_id: String,
    pub at: Instant,
}

#[derive(Debug, Default)]
struct HandsState {
    provisions: Vec<(String, Instant)>,
    sandboxes: HashMap<String, SandboxRef>,
    record: HashMap<String, ToolOutput>,
    executions: Vec<Execution>,
    calls: Vec<(ToolCall, Instant)>,
    in_flight: HashSet<String>,
    forget_record: bool,
    fail_next_provisions: Vec<HandsError>,
    fail_next_executes: Vec<HandsError>,
    resource_errors: Vec<harness::ResourceFailure>,
    mcp: McpState,
}

/// The scripted MCP servers of the double.
#[derive(Debug, Default)]
struct McpState {
    /// Server name → its tools.
    tools: HashMap<String, Vec<McpToolInfo>>,
    /// Server name → failures of its next listings.
    list_failures: HashMap<String, Vec<McpFailure>>,
    /// Failures of the next calls, before anything runs (not recorded).
    call_failures: Vec<McpFailure>,
    /// Hands errors of the next MCP requests (lists and calls).
    hands_failures: Vec<HandsError>,
    record: HashMap<String, McpToolOutput>,
    executions: Vec<McpExecution>,
    calls: Vec<String>,
    listings: Vec<String>,
    scopes: Vec<McpScope>,
    forget_record: bool,
    /// Record a call's failure by its id and answer repeats from it
    /// (`replayed`), as the sandbox-agent does.
    record_failures: bool,
    failure_record: HashMap<String, McpFailure>,
}

/// One MCP call that reached the (scripted) server.
#[derive(Debug, Clone, PartialEq)]
pub struct McpExecution {
    pub tool_use_id: String,
    pub server: String,
    pub url: String,
    pub tool: String,
    pub arguments: Value,
}

/// A tool of a scripted MCP server, with a one-property object schema.
pub fn mcp_tool(name: &str, description: &str) -> McpToolInfo {
    McpToolInfo {
        name: name.to_owned(),
        description: Some(description.to_owned()),
        input_schema: json!({"type": "object", "properties": {"q": {"type": "string"}}}),
    }
}

/// The hands double: provisions one sandbox per session (idempotent), runs
/// a call once per `tool_use_id` and answers repeats from its record (as the
/// sandbox-agent does); records everything with timestamps.
#[derive(Debug, Default)]
pub struct RecordingHands {
    state: Mutex<HandsState>,
    pub provision_delay: Mutex<Duration>,
    pub execute_delay: Mutex<Duration>,
    /// When set, executions wait for this before running.
    pub gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    pub crasher: Mutex<Option<Arc<Crasher>>>,
    done: tokio::sync::Notify,
    sandbox_counter: AtomicUsize,
}

impl RecordingHands {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn with_provision_delay(d: Duration) -> Arc<Self> {
        let h = Self::default();
        *h.provision_delay.lock().unwrap() = d;
        Arc::new(h)
    }

    pub fn executions(&self) -> Vec<Execution> {
        self.state.lock().unwrap().executions.clone()
    }

    pub fn calls(&self) -> Vec<ToolCall> {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .map(|(c, _)| c.clone())
            .collect()
    }

    pub fn call_times(&self) -> Vec<Instant> {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .map(|(_, t)| *t)
            .collect()
    }

    pub fn provisions(&self) -> Vec<(String, Instant)> {
        self.state.lock().unwrap().provisions.clone()
    }

    /// Simulate an agent that lost its record: repeats are "unknown".
    pub fn forget_record(&self) {
        let mut s = self.state.lock().unwrap();
        s.forget_record = true;
        s.record.clear();
    }

    /// The next new sandbox comes with these resource errors (a repository
    /// that did not clone).
    pub fn with_resource_errors(&self, errors: Vec<harness::ResourceFailure>) {
        self.state.lock().unwrap().resource_errors = errors;
    }

    pub fn fail_next_provision(&self, e: HandsError) {
        self.state.lock().unwrap().fail_next_provisions.push(e);
    }

    pub fn fail_next_execute(&self, e: HandsError) {
        self.state.lock().unwrap().fail_next_executes.push(e);
    }

    /// Gate executions: each needs a permit from the returned semaphore.
    pub fn close_gate(&self) -> Arc<tokio::sync::Semaphore> {
        let s = Arc::new(tokio::sync::Semaphore::new(0));
        *self.gate.lock().unwrap() = Some(s.clone());
        s
    }

    /// Serve MCP server `name` with `tools`.
    pub fn mcp_server(&self, name: &str, tools: Vec<McpToolInfo>) {
        self.state
            .lock()
            .unwrap()
            .mcp
            .tools
            .insert(name.to_owned(), tools);
    }

    /// The next listing of `server` fails with `f`.
    pub fn fail_next_mcp_list(&self, server: &str, f: McpFailure) {
        self.state
            .lock()
            .unwrap()
            .mcp
            .list_failures
            .entry(server.to_owned())
            .or_default()
            .push(f);
    }

    /// The next MCP call fails with `f` before it reaches the server.
    pub fn fail_next_mcp_call(&self, f: McpFailure) {
        self.state.lock().unwrap().mcp.call_failures.push(f);
    }

    /// The next MCP request (list or call) does not reach an agent.
    pub fn fail_next_mcp_request(&self, e: HandsError) {
        self.state.lock().unwrap().mcp.hands_failures.push(e);
    }

    /// Record failed calls by id and answer repeats from the record, as the
    /// sandbox-agent does (default: a failed call is forgotten, so a retry
    /// reaches the server).
    pub fn record_mcp_failures(&self) {
        self.state.lock().unwrap().mcp.record_failures = true;
    }

    /// Simulate an agent that lost its MCP record: a repeat of a call that
    /// reached the server is `outcome_unknown`.
    pub fn forget_mcp_record(&self) {
        let mut s = self.state.lock().unwrap();
        s.mcp.forget_record = true;
        s.mcp.record.clear();
    }

    /// MCP calls that reached a server.
    pub fn mcp_executions(&self) -> Vec<McpExecution> {
        self.state.lock().unwrap().mcp.executions.clone()
    }

    /// Every MCP call's tool_use_id, repeats included.
    pub fn mcp_calls(&self) -> Vec<String> {
        self.state.lock().unwrap().mcp.calls.clone()
    }

    /// Every listing's server name.
    pub fn mcp_listings(&self) -> Vec<String> {
        self.state.lock().unwrap().mcp.listings.clone()
    }

    /// The scope of every MCP request.
    pub fn mcp_scopes(&self) -> Vec<McpScope> {
        self.state.lock().unwrap().mcp.scopes.clone()
    }

    /// What the scripted server answers: `image` returns an image block,
    /// `fail` a server-side tool error, `grow` adds a tool `extra` to its
    /// server and says its tool list changed, anything else a text naming
    /// the call.
    pub fn mcp_output_for(server: &str, tool: &str, arguments: &Value) -> McpToolOutput {
        let content = match tool {
            "image" => vec![json!({"type": "image", "source": {"type": "base64",
                "media_type": "image/png", "data": "iVBORw0KGgo="}})],
            _ => vec![json!({"type": "text", "text": format!("{server}/{tool} said {arguments}")})],
        };
        McpToolOutput {
            content,
            is_error: tool == "fail",
            replayed: false,
            tools_changed: tool == "grow",
        }
    }

    pub fn output_for(call: &ToolCall) -> ToolOutput {
        ToolOutput {
            content: vec![
                json!({"type": "text", "text": format!("ran {} {}", call.name, call.input)}),
            ],
            is_error: false,
            disposition: Disposition::Ran,
        }
    }

    async fn crash_point<T>(&self, op: impl std::future::Future<Output = T>) -> T {
        let c = self.crasher.lock().unwrap().clone();
        match c {
            Some(c) => c.around("execute", op).await,
            None => op.await,
        }
    }
}

#[async_trait::async_trait]
impl Hands for RecordingHands {
    async fn provision(&self, spec: &ProvisionSpec) -> Result<SandboxRef, HandsError> {
        let d = *self.provision_delay.lock().unwrap();
        {
            let mut s = self.state.lock().unwrap();
            s.provisions.push((spec.session_id.clone(), Instant::now()));
            if !s.fail_next_provisions.is_empty() {
                return Err(s.fail_next_provisions.remove(0));
            }
        }
        if !d.is_zero() {
            // a slow provision is what the test configured, not a wait
            tokio::time::sleep(d).await;
        }
        let mut s = self.state.lock().unwrap();
        if let Some(sb) = s.sandboxes.get(&spec.session_id) {
            return Ok(sb.clone());
        }
        let n = self.sandbox_counter.fetch_add(1, Ordering::SeqCst);
        let sb = SandboxRef {
            sandbox_id: format!("sbx_{n}"),
            resource_errors: std::mem::take(&mut s.resource_errors),
        };
        s.sandboxes.insert(spec.session_id.clone(), sb.clone());
        Ok(sb)
    }

    async fn execute(
        &self,
        sandbox: &SandboxRef,
        call: &ToolCall,
    ) -> Result<ToolOutput, HandsError> {
        {
            let mut s = self.state.lock().unwrap();
            s.calls.push((call.clone(), Instant::now()));
            if !s.fail_next_executes.is_empty() {
                return Err(s.fail_next_executes.remove(0));
            }
        }
        // A repeat waits for an in-flight run of the same id, then replays.
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap();
                if let Some(out) = s.record.get(&call.tool_use_id) {
                    let mut out = out.clone();
                    out.disposition = Disposition::Replayed;
                    return Ok(out);
                }
                if s.forget_record
                    && s.executions
                        .iter()
                        .any(|e| e.tool_use_id == call.tool_use_id)
                {
                    return Ok(ToolOutput {
                        content: vec![
                            json!({"type":"text","text":"The outcome of this call is unknown: the sandbox restarted before its result was recorded."}),
                        ],
                        is_error: true,
                        disposition: Disposition::Unknown,
                    });
                }
                if s.in_flight.contains(&call.tool_use_id) {
                    true
                } else {
                    s.in_flight.insert(call.tool_use_id.clone());
                    false
                }
            };
            if !wait {
                break;
            }
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self
                .state
                .lock()
                .unwrap()
                .in_flight
                .contains(&call.tool_use_id)
            {
                continue;
            }
            notified.await;
        }
        let gate = self.gate.lock().unwrap().clone();
        let delay = *self.execute_delay.lock().unwrap();
        let this = self;
        // If the caller goes away before the run is recorded (a crash before
        // the call reached the agent), the call never happened.
        struct InFlight<'a>(&'a RecordingHands, String);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.state.lock().unwrap().in_flight.remove(&self.1);
                self.0.done.notify_waiters();
            }
        }
        let guard = InFlight(self, call.tool_use_id.clone());
        let run = async move {
            let _guard = guard;
            if let Some(g) = gate {
                if let Ok(p) = g.acquire().await {
                    p.forget();
                }
            }
            if !delay.is_zero() {
                // a slow tool is what the test configured, not a wait
                tokio::time::sleep(delay).await;
            }
            let out = Self::output_for(call);
            let mut s = this.state.lock().unwrap();
            s.executions.push(Execution {
                tool_use_id: call.tool_use_id.clone(),
                name: call.name.clone(),
                input: call.input.clone(),
                sandbox_id: sandbox.sandbox_id.clone(),
                at: Instant::now(),
            });
            if !s.forget_record {
                s.record.insert(call.tool_use_id.clone(), out.clone());
            }
            drop(s);
            out
        };
        // The "after" crash point sits after the run is recorded, before the
        // harness hears of it.
        Ok(self.crash_point(run).await)
    }

    async fn list_mcp_tools(
        &self,
        scope: &McpScope,
        server: &McpServerRef,
    ) -> Result<McpAnswer<Vec<McpToolInfo>>, HandsError> {
        let mut s = self.state.lock().unwrap();
        s.mcp.listings.push(server.name.clone());
        s.mcp.scopes.push(scope.clone());
        if !s.mcp.hands_failures.is_empty() {
            return Err(s.mcp.hands_failures.remove(0));
        }
        if let Some(f) = s.mcp.list_failures.get_mut(&server.name) {
            if !f.is_empty() {
                return Ok(Err(f.remove(0)));
            }
        }
        match s.mcp.tools.get(&server.name) {
            Some(tools) => Ok(Ok(tools.clone())),
            None => Ok(Err(McpFailure {
                kind: harness::McpFailureKind::ConnectionFailed,
                message: format!("no server at {}", server.url),
                replayed: false,
            })),
        }
    }

    async fn call_mcp_tool(
        &self,
        scope: &McpScope,
        tool_use_id: &str,
        server: &McpServerRef,
        tool: &str,
        arguments: &Value,
    ) -> Result<McpAnswer<McpToolOutput>, HandsError> {
        {
            let mut s = self.state.lock().unwrap();
            s.mcp.calls.push(tool_use_id.to_owned());
            s.mcp.scopes.push(scope.clone());
            if !s.mcp.hands_failures.is_empty() {
                return Err(s.mcp.hands_failures.remove(0));
            }
            if let Some(f) = s.mcp.failure_record.get(tool_use_id) {
                let mut f = f.clone();
                f.replayed = true;
                return Ok(Err(f));
            }
            if !s.mcp.call_failures.is_empty() {
                let f = s.mcp.call_failures.remove(0);
                if s.mcp.record_failures {
                    s.mcp
                        .failure_record
                        .insert(tool_use_id.to_owned(), f.clone());
                }
                return Ok(Err(f));
            }
            if let Some(out) = s.mcp.record.get(tool_use_id) {
                let mut out = out.clone();
                out.replayed = true;
                return Ok(Ok(out));
            }
            if s.mcp
                .executions
                .iter()
                .any(|e| e.tool_use_id == tool_use_id)
            {
                // Ran, and its outcome was not recorded (forgotten).
                return Ok(Err(McpFailure {
                    kind: harness::McpFailureKind::OutcomeUnknown,
                    message: format!("call {tool_use_id} started before a restart"),
                    replayed: false,
                }));
            }
        }
        let run = async {
            let out = Self::mcp_output_for(&server.name, tool, arguments);
            let mut s = self.state.lock().unwrap();
            if out.tools_changed {
                if let Some(tools) = s.mcp.tools.get_mut(&server.name) {
                    tools.push(mcp_tool("extra", "Appeared after grow."));
                }
            }
            s.mcp.executions.push(McpExecution {
                tool_use_id: tool_use_id.to_owned(),
                server: server.name.clone(),
                url: server.url.clone(),
                tool: tool.to_owned(),
                arguments: arguments.clone(),
            });
            if !s.mcp.forget_record {
                s.mcp.record.insert(tool_use_id.to_owned(), out.clone());
            }
            out
        };
        // The "after" crash point sits after the server ran the call and
        // the record has it, before the harness hears of it.
        let c = self.crasher.lock().unwrap().clone();
        let out = match c {
            Some(c) => c.around("mcp_call", run).await,
            None => run.await,
        };
        Ok(Ok(out))
    }
}
