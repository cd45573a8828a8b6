//! `wake(session_id)`: take the lease, rebuild the session from its log, and
//! advance it until it is idle.
//!
//! Every step reads the log, decides from the [`SessionView`] alone, and
//! writes its outcome with one fenced append. The order of writes is chosen
//! so that a crash between any two of them leaves a log the next wake
//! continues from:
//!
//! | step | writes | a crash after it leaves |
//! |---|---|---|
//! | start a model request | `span.model_request_start` (then marks the input it consumed processed) | an open span: closed with `is_error`, the request is made again (and counts as a failed attempt) |
//! | model response | `agent.message`*, `agent.tool_use`*, `span.model_request_end` (+ results for unknown tools) in one batch | the response, whole |
//! | run a tool | `agent.tool_result` after `Hands::execute` returned | a call without a result: sent again with the same id, the agent answers from its record |
//! | list MCP tools | `session.error` for a server that could not be listed (its tools are left out of the request) | nothing: lists are only cached in memory |
//! | call an MCP tool | `session.error` per failed attempt to reach the server, then `agent.mcp_tool_result` after `Hands::call_mcp_tool` returned | a call without a result: sent again with the same id, the agent answers from its record or says the outcome is unknown; the server is never called twice |
//! | record a denial | `agent.tool_result {is_error}` for a call a queued `deny` confirmation denied, then marks the confirmation processed | a recorded denial whose confirmation is still queued: only the mark is made again |
//! | model error | `span.model_request_end{is_error}`, `session.error` (+ idle `retries_exhausted`) | the failure count, so retries continue rather than restart |
//! | stop | `session.status_idle` | nothing to do |
//!
//! A second harness cannot interleave: the lease's epoch fences every write,
//! and a harness whose renewal or write is refused stops at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use model::{
    BlockStart, ContentBlock, MessagesRequest, ModelError, Provider, Response, ResponseBlock,
    StreamEvent, StreamItem, SystemBlock, Usage,
};
use rand::Rng;
use serde_json::Value;
use session_store::{
    new_event_id, AppendBatch, EventSelector, Fence, Lease, NewEvent, SessionStatus, SessionStore,
    StoreError, StoredEvent, TailItem,
};
use tokio::sync::watch;
use tracing::Instrument;

use crate::agent::{AgentConfig, AgentConfigError, ToolKind};
use crate::config::{HarnessConfig, ProvisioningMode};
use crate::events::{self, EventType, Permission, RetryStatus, SessionErrorType, StopReason};
use crate::hands::{
    Disposition, Hands, HandsError, McpFailureKind, McpScope, McpServerRef, ProvisionSpec,
    SandboxRef, ToolCall, ToolOutput,
};
use crate::mcp::{self, McpOffer, McpToolCache};
use crate::view::{LastStatus, OpenToolUse, OutOfOrder, SessionView};

/// Events read per store round trip when rebuilding.
const READ_PAGE: usize = 10_000;

/// How a wake ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeOutcome {
    /// The session is idle for this reason.
    Idle(StopReason),
    /// There was nothing to do; nothing was written.
    NothingToDo,
    /// Another harness holds the lease.
    Busy {
        /// Its holder name.
        holder: String,
    },
    /// The lease was taken over mid-way; this harness stopped writing.
    LeaseLost,
}

/// Why a wake failed. Model and tool failures are not errors: they are
/// written to the session as events.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// The store failed (transient or not); the wake stopped. Try again later.
    #[error("session store failed for session {session_id}: {source}")]
    Store {
        /// Session.
        session_id: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The log handed out events out of order (a store bug).
    #[error("log of session {session_id} cannot be folded: {source}")]
    Log {
        /// Session.
        session_id: String,
        /// Where.
        #[source]
        source: OutOfOrder,
    },
}

/// Hooks for live observation (time to first token, delta forwarding).
/// Called inline: keep them cheap.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// A model request is about to be sent.
    fn model_request_sent(&self, _session_id: &str) {}
    /// A stream event arrived. `message_event_id` is the id the
    /// `agent.message` built from this text block will be stored under (for
    /// `event_start`/`event_delta` previews); `None` for other blocks.
    fn model_event(
        &self,
        _session_id: &str,
        _message_event_id: Option<&str>,
        _event: &StreamEvent,
    ) {
    }
    /// A wake finished.
    fn wake_finished(&self, _session_id: &str, _outcome: &Result<WakeOutcome, String>) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;

impl Observer for NoopObserver {}

/// The harness: stateless between wakes; cheap to clone.
#[derive(Debug, Clone)]
pub struct Harness {
    store: Arc<dyn SessionStore>,
    provider: Arc<dyn Provider>,
    hands: Arc<dyn Hands>,
    config: Arc<HarnessConfig>,
    observer: Arc<dyn Observer>,
    /// MCP servers' tool lists per session (an in-memory optimisation).
    mcp_tools: Arc<McpToolCache>,
    /// Leases of wakes that were dropped mid-run (aborted at shutdown),
    /// for [`Harness::release_abandoned_leases`].
    abandoned: Arc<std::sync::Mutex<Vec<Lease>>>,
}

/// Held by a running wake: if the wake's future is dropped before it
/// settles its lease (the task was aborted), the lease is parked in
/// `abandoned` so the shutdown path can release it at once instead of
/// leaving the session to wait out the TTL on another replica.
struct LeaseGuard<'a> {
    lease: Option<Lease>,
    abandoned: &'a std::sync::Mutex<Vec<Lease>>,
}

impl LeaseGuard<'_> {
    /// The wake settled the lease itself (released or lost it).
    fn settled(mut self) {
        self.lease = None;
    }
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            if let Ok(mut v) = self.abandoned.lock() {
                v.push(lease);
            }
        }
    }
}

/// Signals from the helper tasks of a wake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Signals {
    /// `user.interrupt` events seen on the live tail.
    interrupts: u64,
    /// The lease renewal was refused: another harness owns the session.
    lease_lost: bool,
}

/// Internal early exits.
#[derive(Debug)]
enum Halt {
    LeaseLost,
    Store(StoreError),
    Log(OutOfOrder),
}

impl From<StoreError> for Halt {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Fenced { .. } => Halt::LeaseLost,
            e => Halt::Store(e),
        }
    }
}

impl From<OutOfOrder> for Halt {
    fn from(e: OutOfOrder) -> Self {
        Halt::Log(e)
    }
}

/// A spawned task aborted when dropped, so dropping a wake (a crash, a
/// shutdown) stops its helpers too.
struct Task<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> Task<T> {
    fn spawn<F>(f: F) -> Self
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        Self(Some(tokio::spawn(f.in_current_span())))
    }

    async fn join(mut self) -> Option<T> {
        match self.0.take() {
            Some(h) => h.await.ok(),
            None => None,
        }
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

enum SandboxSlot {
    Empty,
    Pending(Task<Result<SandboxRef, HandsError>>),
    Ready(SandboxRef),
}

enum Streamed {
    Done(Response, HashMap<usize, String>),
    Failed(ModelError, Usage),
    Interrupted(Usage),
    LeaseLost,
}

impl Harness {
    /// A harness over these parts.
    pub fn new(
        store: Arc<dyn SessionStore>,
        provider: Arc<dyn Provider>,
        hands: Arc<dyn Hands>,
        config: HarnessConfig,
    ) -> Self {
        Self {
            store,
            provider,
            hands,
            config: Arc::new(config),
            observer: Arc::new(NoopObserver),
            mcp_tools: Arc::default(),
            abandoned: Arc::default(),
        }
    }

    /// Release the leases of wakes that were dropped before they finished
    /// (a supervisor aborting wakes at the end of its shutdown grace), so
    /// another replica can take those sessions over now rather than when
    /// the leases expire. Each release is fenced by the lease's epoch: one
    /// already taken over is left alone. Returns how many abandoned leases
    /// there were (released or found taken over).
    pub async fn release_abandoned_leases(&self) -> usize {
        let leases = match self.abandoned.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(_) => return 0,
        };
        let abandoned = leases.len();
        for lease in leases {
            match self.store.release_lease(&lease).await {
                Ok(()) => {
                    tracing::info!(
                        session_id = %lease.session_id,
                        epoch = lease.epoch,
                        "released the lease of an aborted wake"
                    );
                }
                Err(StoreError::Fenced { .. }) => {}
                Err(e) => tracing::warn!(
                    session_id = %lease.session_id,
                    %e,
                    "releasing the lease of an aborted wake failed; it will expire"
                ),
            }
        }
        abandoned
    }

    /// Reuse an MCP server's tool list for a session for `ttl` (default
    /// [`mcp::MCP_TOOLS_TTL`]) before listing it again.
    pub fn with_mcp_tools_ttl(mut self, ttl: Duration) -> Self {
        self.mcp_tools = Arc::new(McpToolCache::new(ttl));
        self
    }

    /// Install an observer.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &HarnessConfig {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// Rebuild a session's view and the next model request from its log
    /// alone (no lease, no writes). What `wake` does before its first model
    /// call; public for diagnostics and the benchmark.
    pub async fn rebuild(
        &self,
        session_id: &str,
    ) -> Result<(SessionView, Option<MessagesRequest>), HarnessError> {
        let store_err = |source| HarnessError::Store {
            session_id: session_id.to_owned(),
            source,
        };
        let record = self
            .store
            .get_session(session_id)
            .await
            .map_err(store_err)?;
        let mut view = SessionView::new();
        read_into(&*self.store, session_id, &mut view)
            .await
            .map_err(|h| match h {
                Halt::Log(source) => HarnessError::Log {
                    session_id: session_id.to_owned(),
                    source,
                },
                Halt::Store(source) => HarnessError::Store {
                    session_id: session_id.to_owned(),
                    source,
                },
                Halt::LeaseLost => HarnessError::Store {
                    session_id: session_id.to_owned(),
                    source: StoreError::NotFound {
                        session_id: session_id.to_owned(),
                    },
                },
            })?;
        let request = AgentConfig::from_session(session_id, &record.body)
            .ok()
            .map(|agent| {
                // Only what is cached: a rebuild calls no server.
                let listed = agent
                    .mcp_servers
                    .iter()
                    .filter_map(|s| {
                        self.mcp_tools
                            .get(session_id, &s.name, &s.url)
                            .map(|t| (s.name.clone(), t))
                    })
                    .collect();
                let offer = McpOffer::build(&agent, &listed);
                build_request(&agent, &view, self.config.max_tokens, &offer)
            });
        Ok((view, request))
    }

    /// Take the lease on `session_id`, advance the session until it is idle
    /// (or blocked on the client), release the lease.
    pub async fn wake(&self, session_id: &str) -> Result<WakeOutcome, HarnessError> {
        self.wake_report(session_id)
            .await
            .map(|(outcome, _)| outcome)
    }

    /// [`Harness::wake`], also returning the seq of the last event the wake
    /// folded (0 when it did not read the log: `Busy`, `LeaseLost`). After
    /// `Idle` or `NothingToDo`, a session whose `last_seq` is still that has
    /// nothing new for a wake (the supervisor's recovery scan uses this).
    pub async fn wake_report(&self, session_id: &str) -> Result<(WakeOutcome, u64), HarnessError> {
        self.wake_with_lease(session_id, None).await
    }

    /// [`Harness::wake_report`] starting from a lease this instance already
    /// holds (one [`SessionStore::reclaim_leases`] gave back after a
    /// restart) instead of acquiring one. The lease is renewed first; if it
    /// was taken over or released meanwhile, the wake acquires as usual.
    pub async fn wake_with_lease(
        &self,
        session_id: &str,
        held: Option<Lease>,
    ) -> Result<(WakeOutcome, u64), HarnessError> {
        let span = tracing::info_span!("wake", session_id, holder = %self.config.instance_id);
        let outcome = self.wake_inner(session_id, held).instrument(span).await;
        let label = match &outcome {
            Ok((WakeOutcome::Idle(_), _)) => "idle",
            Ok((WakeOutcome::NothingToDo, _)) => "nothing_to_do",
            Ok((WakeOutcome::Busy { .. }, _)) => "busy",
            Ok((WakeOutcome::LeaseLost, _)) => "lease_lost",
            Err(_) => "error",
        };
        metrics::counter!("airlock_wakes_total", "outcome" => label).increment(1);
        let reported = outcome
            .as_ref()
            .map(|(o, _)| o.clone())
            .map_err(ToString::to_string);
        self.observer.wake_finished(session_id, &reported);
        outcome
    }

    /// Renew `held` if given and still ours, else acquire the lease.
    async fn take_lease(&self, session_id: &str, held: Option<Lease>) -> Result<Lease, StoreError> {
        if let Some(lease) = held {
            match self.store.renew_lease(&lease, self.config.lease_ttl).await {
                Ok(l) => {
                    tracing::debug!(epoch = l.epoch, "resuming with a reclaimed lease");
                    return Ok(l);
                }
                Err(StoreError::Fenced { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.store
            .acquire_lease(session_id, &self.config.instance_id, self.config.lease_ttl)
            .await
    }

    async fn wake_inner(
        &self,
        session_id: &str,
        held: Option<Lease>,
    ) -> Result<(WakeOutcome, u64), HarnessError> {
        let store_err = |source| HarnessError::Store {
            session_id: session_id.to_owned(),
            source,
        };
        let lease = match self.take_lease(session_id, held).await {
            Ok(l) => l,
            Err(StoreError::LeaseHeld { holder, .. }) => {
                return Ok((WakeOutcome::Busy { holder }, 0))
            }
            Err(e) => return Err(store_err(e)),
        };
        tracing::debug!(epoch = lease.epoch, "lease acquired");
        let guard = LeaseGuard {
            lease: Some(lease.clone()),
            abandoned: &self.abandoned,
        };
        let (sig_tx, sig_rx) = watch::channel(Signals::default());
        let sig_tx = Arc::new(sig_tx);
        let renewal = Task::spawn(renew_lease(
            self.store.clone(),
            lease.clone(),
            self.config.lease_ttl,
            self.config.lease_renew_interval,
            sig_tx.clone(),
        ));
        let result = self.run(session_id, &lease, sig_rx, sig_tx).await;
        drop(renewal);
        let settled = match result {
            Ok(outcome) => {
                match self.store.release_lease(&lease).await {
                    Ok(()) | Err(StoreError::Fenced { .. }) => {}
                    Err(e) => tracing::warn!(%e, "releasing the lease failed; it will expire"),
                }
                Ok(outcome)
            }
            Err(Halt::LeaseLost) => {
                tracing::warn!(
                    epoch = lease.epoch,
                    "lease lost to another harness; stopped"
                );
                Ok((WakeOutcome::LeaseLost, 0))
            }
            Err(Halt::Store(e)) => {
                let _ = self.store.release_lease(&lease).await;
                Err(store_err(e))
            }
            Err(Halt::Log(e)) => {
                let _ = self.store.release_lease(&lease).await;
                Err(HarnessError::Log {
                    session_id: session_id.to_owned(),
                    source: e,
                })
            }
        };
        guard.settled();
        settled
    }

    async fn run(
        &self,
        session_id: &str,
        lease: &Lease,
        signals: watch::Receiver<Signals>,
        sig_tx: Arc<watch::Sender<Signals>>,
    ) -> Result<(WakeOutcome, u64), Halt> {
        let mut view = SessionView::new();
        let (record, ()) = tokio::try_join!(
            async { self.store.get_session(session_id).await.map_err(Halt::from) },
            read_into(&*self.store, session_id, &mut view),
        )?;
        if record.status == SessionStatus::Terminated {
            return Ok((WakeOutcome::NothingToDo, view.last_seq()));
        }
        let agent = AgentConfig::from_session(session_id, &record.body);
        let tail = Task::spawn(watch_interrupts(
            self.store.clone(),
            session_id.to_owned(),
            view.last_seq() + 1,
            sig_tx,
        ));
        let mut run = Run {
            h: self,
            sid: session_id.to_owned(),
            fence: Fence::Epoch(lease.epoch),
            view,
            agent,
            signals,
            sandbox: SandboxSlot::Empty,
            mcp_reported: std::collections::HashSet::new(),
            did_work: false,
            _tail: tail,
        };
        let outcome = run.main_loop().await?;
        Ok((outcome, run.view.last_seq()))
    }
}

/// Fold every event after `view.last_seq()` into `view`.
async fn read_into(
    store: &dyn SessionStore,
    sid: &str,
    view: &mut SessionView,
) -> Result<(), Halt> {
    loop {
        let page = store.read(sid, view.last_seq() + 1, READ_PAGE).await?;
        let n = page.len();
        for e in page {
            view.apply_owned(e)?;
        }
        if n < READ_PAGE {
            return Ok(());
        }
    }
}

async fn renew_lease(
    store: Arc<dyn SessionStore>,
    mut lease: Lease,
    ttl: Duration,
    every: Duration,
    sig: Arc<watch::Sender<Signals>>,
) {
    loop {
        tokio::time::sleep(every).await;
        match store.renew_lease(&lease, ttl).await {
            Ok(l) => lease = l,
            Err(StoreError::Fenced { .. } | StoreError::NotFound { .. }) => {
                sig.send_modify(|s| s.lease_lost = true);
                return;
            }
            Err(e) => tracing::warn!(%e, "lease renewal failed; retrying"),
        }
    }
}

async fn watch_interrupts(
    store: Arc<dyn SessionStore>,
    sid: String,
    from: u64,
    sig: Arc<watch::Sender<Signals>>,
) {
    use futures::StreamExt;
    let Ok(mut tail) = store.subscribe(&sid, from).await else {
        return;
    };
    while let Some(item) = tail.next().await {
        match item {
            Ok(TailItem::Appended(e)) if e.kind() == EventType::UserInterrupt => {
                sig.send_modify(|s| s.interrupts += 1);
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

fn build_request(
    agent: &AgentConfig,
    view: &SessionView,
    max_tokens: u32,
    offer: &McpOffer,
) -> MessagesRequest {
    let mut messages = view.request_messages();
    // MCP calls in the conversation carry the names offered now.
    for m in &mut messages {
        for b in &mut m.content {
            if let ContentBlock::ToolUse { id, name, .. } = b {
                if let Some((server, tool)) = view.mcp_tool_use(id) {
                    *name = offer.model_name(server, tool);
                }
            }
        }
    }
    let mut r = MessagesRequest {
        model: agent.model.clone(),
        max_tokens,
        system: agent.system.iter().map(SystemBlock::text).collect(),
        messages,
        tools: agent
            .tools
            .iter()
            .map(|t| t.definition.clone())
            .chain(offer.definitions())
            .collect(),
        tool_choice: None,
        temperature: None,
        metadata: None,
    };
    r.apply_cache_breakpoints();
    r
}

fn text_output(text: &str, is_error: bool) -> ToolOutput {
    ToolOutput {
        content: vec![events::text_block(text)],
        is_error,
        disposition: Disposition::Ran,
    }
}

/// One wake in progress.
struct Run<'h> {
    h: &'h Harness,
    sid: String,
    fence: Fence,
    view: SessionView,
    agent: Result<AgentConfig, AgentConfigError>,
    signals: watch::Receiver<Signals>,
    sandbox: SandboxSlot,
    /// MCP servers whose failed listing this wake reported already.
    mcp_reported: std::collections::HashSet<String>,
    did_work: bool,
    _tail: Task<()>,
}

impl Run<'_> {
    async fn main_loop(&mut self) -> Result<WakeOutcome, Halt> {
        loop {
            read_into(&*self.h.store, &self.sid, &mut self.view).await?;
            if self.signals.borrow().lease_lost {
                return Err(Halt::LeaseLost);
            }
            let mut stale = self.view.stale_queued();
            if !self.view.unusable().is_empty() {
                tracing::info!(
                    events = self.view.unusable().len(),
                    "marking queued confirmations/results for calls that are not open processed"
                );
                stale.extend_from_slice(self.view.unusable());
                stale.sort_unstable();
                stale.dedup();
            }
            if !stale.is_empty() {
                self.mark_processed(stale).await?;
            }
            if !self.view.interrupts().is_empty() {
                self.handle_interrupt().await?;
                continue;
            }
            if let Some(span) = self.view.open_span().map(str::to_owned) {
                tracing::info!(span_id = %span, "closing a model request lost in a crash");
                self.append(vec![events::span_end(&span, true, &Usage::default())], None)
                    .await?;
                continue;
            }
            if !self.view.denials().is_empty() {
                self.record_denials().await?;
                continue;
            }
            if let Some(tool) = self
                .view
                .open_tools()
                .iter()
                .find(|t| t.runnable())
                .cloned()
            {
                self.run_tool(tool).await?;
                continue;
            }
            let blocked: Vec<String> = self
                .view
                .open_tools()
                .iter()
                .filter(|t| t.blocked())
                .map(|t| t.event_id.clone())
                .collect();
            if !blocked.is_empty() {
                let reason = StopReason::RequiresAction(blocked);
                if self.view.last_status() != Some(&LastStatus::Idle(Some(reason.clone()))) {
                    self.go_idle(&reason).await?;
                    continue;
                }
                return Ok(WakeOutcome::Idle(reason));
            }
            if self.view.needs_model() {
                if let Err(e) = &self.agent {
                    let message = e.to_string();
                    self.stop_turn(
                        vec![events::session_error(
                            SessionErrorType::UnknownError,
                            &message,
                            RetryStatus::Exhausted,
                        )],
                        StopReason::RetriesExhausted,
                    )
                    .await?;
                    continue;
                }
                if self.budget_reached() {
                    tracing::info!(
                        requests_this_turn = self.view.requests_this_turn(),
                        tokens = self.view.usage().total(),
                        "budget reached"
                    );
                    self.stop_turn(vec![], StopReason::BudgetReached).await?;
                    continue;
                }
                self.model_turn().await?;
                continue;
            }
            match self.view.last_status() {
                Some(LastStatus::Running) => {
                    self.go_idle(&StopReason::EndTurn).await?;
                    continue;
                }
                Some(LastStatus::Idle(Some(r))) if self.did_work => {
                    return Ok(WakeOutcome::Idle(r.clone()))
                }
                _ if self.did_work => return Ok(WakeOutcome::Idle(StopReason::EndTurn)),
                _ => return Ok(WakeOutcome::NothingToDo),
            }
        }
    }

    fn lease_lost(&self) -> bool {
        self.signals.borrow().lease_lost
    }

    /// Append under the fence; fold what was stored (and anything others
    /// appended before it) into the view.
    async fn append(
        &mut self,
        events: Vec<Value>,
        status: Option<SessionStatus>,
    ) -> Result<Vec<StoredEvent>, Halt> {
        self.append_new(
            events.into_iter().map(NewEvent::processed).collect(),
            status,
        )
        .await
    }

    async fn append_new(
        &mut self,
        events: Vec<NewEvent>,
        set_status: Option<SessionStatus>,
    ) -> Result<Vec<StoredEvent>, Halt> {
        if self.lease_lost() {
            return Err(Halt::LeaseLost);
        }
        let stored = self
            .h
            .store
            .append_batch(
                &self.sid,
                AppendBatch {
                    events,
                    fence: self.fence,
                    set_status,
                },
            )
            .await?;
        self.did_work = true;
        if let Some(first) = stored.first() {
            if first.seq > self.view.last_seq() + 1 {
                let gap =
                    usize::try_from(first.seq - self.view.last_seq() - 1).unwrap_or(usize::MAX);
                let missing = self
                    .h
                    .store
                    .read(&self.sid, self.view.last_seq() + 1, gap.clamp(1, 100_000))
                    .await?;
                for e in missing.into_iter().filter(|e| e.seq < first.seq) {
                    self.view.apply_owned(e)?;
                }
            }
        }
        for e in &stored {
            self.view.apply(e)?;
        }
        Ok(stored)
    }

    async fn mark_processed(&mut self, seqs: Vec<u64>) -> Result<(), Halt> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.h
            .store
            .mark_processed(&self.sid, EventSelector::Seqs(seqs.clone()), self.fence)
            .await?;
        self.view.mark_consumed(&seqs);
        Ok(())
    }

    async fn ensure_running(&mut self) -> Result<(), Halt> {
        if self.view.last_status() != Some(&LastStatus::Running) {
            self.append(vec![events::status_running()], Some(SessionStatus::Running))
                .await?;
        }
        Ok(())
    }

    async fn go_idle(&mut self, reason: &StopReason) -> Result<(), Halt> {
        self.append(vec![events::status_idle(reason)], Some(SessionStatus::Idle))
            .await?;
        Ok(())
    }

    /// End the turn with `reason` (after `first` events), consuming the
    /// queued user messages so they do not ask again.
    async fn stop_turn(&mut self, mut first: Vec<Value>, reason: StopReason) -> Result<(), Halt> {
        first.push(events::status_idle(&reason));
        self.append(first, Some(SessionStatus::Idle)).await?;
        let queued = self.view.queued_user_messages();
        self.mark_processed(queued).await
    }

    fn budget_reached(&self) -> bool {
        let b = &self.h.config.budget;
        (b.max_model_requests_per_turn > 0
            && self.view.requests_this_turn() >= b.max_model_requests_per_turn)
            || (b.max_session_tokens > 0 && self.view.usage().total() >= b.max_session_tokens)
    }

    async fn handle_interrupt(&mut self) -> Result<(), Halt> {
        let seqs = self.view.interrupts().to_vec();
        let mut batch = Vec::new();
        if let Some(span) = self.view.open_span() {
            batch.push(events::span_end(span, false, &Usage::default()));
        }
        for t in self.view.open_tools() {
            let content = [events::text_block(
                "Not run: the user interrupted the turn before this tool call ran.",
            )];
            batch.push(if t.mcp_server().is_some() {
                events::agent_mcp_tool_result(&t.event_id, &content, true)
            } else {
                events::agent_tool_result(&t.event_id, &content, true)
            });
        }
        let running = self.view.last_status() == Some(&LastStatus::Running);
        tracing::info!(open_tools = self.view.open_tools().len(), "interrupt");
        if running || !batch.is_empty() {
            batch.push(events::status_idle(&StopReason::EndTurn));
            self.append(batch, Some(SessionStatus::Idle)).await?;
        }
        self.mark_processed(seqs).await
    }

    // ------------------------------------------------------------- tools

    /// Record each call a queued `deny` confirmation denied as an error
    /// `agent.tool_result` (the log then pairs every tool use with a result),
    /// then mark the confirmations processed. A crash between the two leaves
    /// a recorded denial: only the mark is made again.
    async fn record_denials(&mut self) -> Result<(), Halt> {
        let denials = self.view.denials().to_vec();
        let results: Vec<Value> = denials
            .iter()
            .filter(|d| !d.recorded)
            .map(|d| {
                tracing::info!(tool_use_id = %d.tool_use_id, "recording a denied tool call");
                let content = [events::text_block(&d.text)];
                match &d.mcp_server {
                    Some(_) => events::agent_mcp_tool_result(&d.tool_use_id, &content, true),
                    None => events::agent_tool_result(&d.tool_use_id, &content, true),
                }
            })
            .collect();
        if !results.is_empty() {
            self.append(results, None).await?;
        }
        self.mark_processed(denials.iter().map(|d| d.confirmation_seq).collect())
            .await
    }

    async fn run_tool(&mut self, tool: OpenToolUse) -> Result<(), Halt> {
        if let Some(server) = tool.mcp_server().map(str::to_owned) {
            return self.run_mcp_tool(tool, &server).await;
        }
        self.ensure_running().await?;
        let started = std::time::Instant::now();
        let call = ToolCall {
            tool_use_id: tool.event_id.clone(),
            name: tool.name.clone(),
            input: tool.input.clone(),
        };
        let known_sandbox_tool = matches!(&self.agent, Ok(a) if a.tool(&tool.name).is_some_and(|t| t.kind == ToolKind::Sandbox));
        let out = if known_sandbox_tool {
            self.execute(&call).await?
        } else {
            text_output(
                &format!(
                    "Not run: tool `{}` is not available in this session.",
                    tool.name
                ),
                true,
            )
        };
        let mut content = out.content;
        let mut is_error = out.is_error;
        if out.disposition == Disposition::Unknown {
            is_error = true;
            if content.is_empty() {
                content.push(events::text_block(
                    "The outcome of this tool call is unknown: it may or may not have run before a failure.",
                ));
            }
        }
        let outcome = if is_error { "error" } else { "ok" };
        metrics::counter!("airlock_tool_calls_total", "outcome" => outcome).increment(1);
        metrics::histogram!("airlock_tool_call_duration_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(tool_use_id = %call.tool_use_id, tool = %call.name, is_error, disposition = ?out.disposition, "tool result");
        self.append(
            vec![events::agent_tool_result(
                &call.tool_use_id,
                &content,
                is_error,
            )],
            None,
        )
        .await?;
        if let Some(c) = tool.allowed_by {
            self.mark_processed(vec![c]).await?;
        }
        Ok(())
    }

    /// Run one call, provisioning as needed and retrying transient hands
    /// failures. Only a lost lease is an `Err`; everything else is a result.
    async fn execute(&mut self, call: &ToolCall) -> Result<ToolOutput, Halt> {
        let policy = self.h.config.retry.clone();
        let mut failures = 0u32;
        let mut reprovisioned = false;
        loop {
            let sandbox = match self.sandbox().await {
                Ok(s) => s,
                Err(e) if e.is_transient() && failures + 1 < policy.max_attempts => {
                    failures += 1;
                    tracing::warn!(%e, failures, "provisioning failed; retrying");
                    self.pause(policy.delay(failures, None, jitter_unit()))
                        .await?;
                    continue;
                }
                Err(e) => {
                    return Ok(text_output(
                        &format!("Not run: could not provision a sandbox: {e}"),
                        true,
                    ));
                }
            };
            let hands = self.h.hands.clone();
            let mut sig = self.signals.clone();
            let result = tokio::select! {
                r = hands.execute(&sandbox, call) => r,
                () = lease_lost(&mut sig) => return Err(Halt::LeaseLost),
            };
            match result {
                Ok(out) => return Ok(out),
                Err(HandsError::SandboxGone { sandbox_id }) if !reprovisioned => {
                    tracing::info!(sandbox_id = %sandbox_id, "sandbox gone; provisioning again");
                    self.sandbox = SandboxSlot::Empty;
                    reprovisioned = true;
                }
                Err(e) if e.is_transient() && failures + 1 < policy.max_attempts => {
                    failures += 1;
                    tracing::warn!(%e, failures, "tool call could not be made; retrying");
                    self.pause(policy.delay(failures, None, jitter_unit()))
                        .await?;
                }
                Err(e) => return Ok(text_output(&format!("Not run: {e}"), true)),
            }
        }
    }

    // --------------------------------------------------------------- mcp

    fn mcp_scope(&self) -> McpScope {
        let (environment_id, vault_ids) = match &self.agent {
            Ok(a) => (a.environment_id.clone(), a.vault_ids.clone()),
            Err(_) => (None, Vec::new()),
        };
        McpScope {
            session_id: self.sid.clone(),
            environment_id,
            vault_ids,
        }
    }

    /// The MCP tools of the next model request: each enabled server's list,
    /// from the cache or listed now (all at once). A server that cannot be
    /// listed is a `session.error` (once per wake) and its tools are left
    /// out of this request; it is listed again before the next one.
    async fn mcp_offer(&mut self, agent: &AgentConfig) -> Result<McpOffer, Halt> {
        let mut listed = HashMap::new();
        let mut to_list = Vec::new();
        for s in &agent.mcp_servers {
            match self.h.mcp_tools.get(&self.sid, &s.name, &s.url) {
                Some(tools) => {
                    listed.insert(s.name.clone(), tools);
                }
                None => to_list.push(McpServerRef {
                    name: s.name.clone(),
                    url: s.url.clone(),
                }),
            }
        }
        if to_list.is_empty() {
            return Ok(McpOffer::build(agent, &listed));
        }
        let scope = self.mcp_scope();
        let listings = futures::future::join_all(to_list.into_iter().map(|server| {
            let hands = self.h.hands.clone();
            let scope = scope.clone();
            async move {
                let r = hands.list_mcp_tools(&scope, &server).await;
                (server, r)
            }
        }));
        let mut sig = self.signals.clone();
        let results = tokio::select! {
            r = listings => r,
            () = lease_lost(&mut sig) => return Err(Halt::LeaseLost),
        };
        let mut errors = Vec::new();
        for (server, result) in results {
            let (error_type, message) = match result {
                Ok(Ok(tools)) => {
                    tracing::debug!(mcp_server_name = %server.name, tools = tools.len(), "MCP tools listed");
                    self.h
                        .mcp_tools
                        .put(&self.sid, &server.name, &server.url, tools.clone());
                    self.mcp_reported.remove(&server.name);
                    listed.insert(server.name, tools);
                    continue;
                }
                Ok(Err(f)) => (
                    mcp::listing_error_type(&f.kind),
                    format!(
                        "The tools of MCP server `{}` could not be listed ({}): {}. They are left out until it answers.",
                        server.name,
                        f.kind.code(),
                        f.message
                    ),
                ),
                Err(e) => (
                    SessionErrorType::McpConnectionFailed,
                    format!(
                        "The tools of MCP server `{}` could not be listed: {e}. They are left out until it answers.",
                        server.name
                    ),
                ),
            };
            tracing::warn!(mcp_server_name = %server.name, error = %message, "MCP tool listing failed");
            if self.mcp_reported.insert(server.name.clone()) {
                errors.push(events::mcp_session_error(
                    error_type,
                    &server.name,
                    &message,
                    RetryStatus::Retrying,
                ));
            }
        }
        if !errors.is_empty() {
            self.append(errors, None).await?;
        }
        Ok(McpOffer::build(agent, &listed))
    }

    /// Run one MCP call and record its `agent.mcp_tool_result`.
    async fn run_mcp_tool(&mut self, tool: OpenToolUse, server: &str) -> Result<(), Halt> {
        self.ensure_running().await?;
        let (content, is_error) = self.call_mcp(&tool, server).await?;
        tracing::debug!(tool_use_id = %tool.event_id, mcp_server_name = %server, tool = %tool.name, is_error, "MCP tool result");
        self.append(
            vec![events::agent_mcp_tool_result(
                &tool.event_id,
                &content,
                is_error,
            )],
            None,
        )
        .await?;
        if let Some(c) = tool.allowed_by {
            self.mark_processed(vec![c]).await?;
        }
        Ok(())
    }

    /// Call an MCP tool (the event id is the idempotency key, so a repeat is
    /// safe), retrying a server that could not be reached (each failure a
    /// `session.error`, `retrying` then `exhausted`; a failure the agent
    /// answers from its record ends the retries) and transient hands
    /// failures. Only a lost lease is an `Err`; everything else is a result.
    async fn call_mcp(
        &mut self,
        tool: &OpenToolUse,
        server_name: &str,
    ) -> Result<(Vec<Value>, bool), Halt> {
        let error = |text: String| Ok((vec![events::text_block(&text)], true));
        let server = match &self.agent {
            Ok(a) => match a.mcp_server(server_name) {
                Some(s) if s.toolset.permission(&tool.name).is_some() => McpServerRef {
                    name: s.name.clone(),
                    url: s.url.clone(),
                },
                Some(_) => {
                    return error(format!(
                        "Not run: tool `{}` of MCP server `{server_name}` is not enabled in this session.",
                        tool.name
                    ))
                }
                None => {
                    return error(format!(
                        "Not run: MCP server `{server_name}` is not available in this session."
                    ))
                }
            },
            Err(_) => {
                return error(format!(
                    "Not run: MCP server `{server_name}` is not available in this session."
                ))
            }
        };
        let scope = self.mcp_scope();
        let policy = self.h.config.retry.clone();
        let mut failures = 0u32;
        let mut unreachable = 0u32;
        loop {
            let hands = self.h.hands.clone();
            let mut sig = self.signals.clone();
            let result = tokio::select! {
                r = hands.call_mcp_tool(&scope, &tool.event_id, &server, &tool.name, &tool.input) => r,
                () = lease_lost(&mut sig) => return Err(Halt::LeaseLost),
            };
            match result {
                Ok(Ok(out)) => {
                    if out.replayed {
                        tracing::info!(tool_use_id = %tool.event_id, "MCP call answered from the agent's record");
                    }
                    if out.tools_changed {
                        tracing::info!(mcp_server_name = %server.name, "MCP server's tool list changed; listed again before the next model call");
                        self.h.mcp_tools.invalidate(&self.sid, &server.name);
                    }
                    return Ok((out.content, out.is_error));
                }
                Ok(Err(f)) if f.kind == McpFailureKind::ConnectionFailed => {
                    unreachable += 1;
                    self.h.mcp_tools.invalidate(&self.sid, &server.name);
                    // A failure from the agent's record is final: the agent
                    // does not send this id to the server again.
                    let exhausted = f.replayed || unreachable >= policy.max_attempts;
                    tracing::warn!(mcp_server_name = %server.name, error = %f.message, attempts = unreachable, exhausted, "MCP server could not be reached");
                    self.append(
                        vec![events::mcp_session_error(
                            SessionErrorType::McpConnectionFailed,
                            &server.name,
                            &f.message,
                            if exhausted {
                                RetryStatus::Exhausted
                            } else {
                                RetryStatus::Retrying
                            },
                        )],
                        None,
                    )
                    .await?;
                    if exhausted {
                        return error(mcp::failure_text(&server.name, &tool.name, &f));
                    }
                    self.pause(policy.delay(unreachable, None, jitter_unit()))
                        .await?;
                }
                Ok(Err(f)) => {
                    if let Some(error_type) = mcp::session_error_type(&f.kind) {
                        self.h.mcp_tools.invalidate(&self.sid, &server.name);
                        self.append(
                            vec![events::mcp_session_error(
                                error_type,
                                &server.name,
                                &f.message,
                                RetryStatus::Exhausted,
                            )],
                            None,
                        )
                        .await?;
                    }
                    tracing::info!(mcp_server_name = %server.name, tool = %tool.name, failure = f.kind.code(), "MCP call failed");
                    return error(mcp::failure_text(&server.name, &tool.name, &f));
                }
                Err(e) if e.is_transient() && failures + 1 < policy.max_attempts => {
                    failures += 1;
                    tracing::warn!(%e, failures, "MCP call could not be made; retrying");
                    self.pause(policy.delay(failures, None, jitter_unit()))
                        .await?;
                }
                Err(e) => {
                    return error(format!(
                        "The call to `{}` on MCP server `{}` could not be made: {e}",
                        tool.name, server.name
                    ))
                }
            }
        }
    }

    fn provision_spec(&self) -> ProvisionSpec {
        let (environment_id, resources, vault_ids) = match &self.agent {
            Ok(a) => (
                a.environment_id.clone(),
                a.resources.clone(),
                a.vault_ids.clone(),
            ),
            Err(_) => (None, Vec::new(), Vec::new()),
        };
        ProvisionSpec {
            session_id: self.sid.clone(),
            environment_id,
            resources,
            vault_ids,
        }
    }

    fn start_speculative_provision(&mut self) {
        if matches!(self.sandbox, SandboxSlot::Empty) {
            let hands = self.h.hands.clone();
            let spec = self.provision_spec();
            self.sandbox =
                SandboxSlot::Pending(Task::spawn(async move { hands.provision(&spec).await }));
        }
    }

    async fn sandbox(&mut self) -> Result<SandboxRef, HandsError> {
        let pending = match std::mem::replace(&mut self.sandbox, SandboxSlot::Empty) {
            SandboxSlot::Ready(s) => {
                self.sandbox = SandboxSlot::Ready(s.clone());
                return Ok(s);
            }
            SandboxSlot::Pending(task) => task.join().await,
            SandboxSlot::Empty => None,
        };
        let result = match pending {
            Some(Ok(s)) => Ok(s),
            Some(Err(e)) => {
                tracing::info!(%e, "speculative provisioning failed; provisioning again");
                self.h.hands.provision(&self.provision_spec()).await
            }
            None => self.h.hands.provision(&self.provision_spec()).await,
        };
        if let Ok(s) = &result {
            tracing::debug!(sandbox_id = %s.sandbox_id, "sandbox ready");
            self.sandbox = SandboxSlot::Ready(s.clone());
            if !s.resource_errors.is_empty() {
                let errors = s
                    .resource_errors
                    .iter()
                    .map(|f| NewEvent::processed(events::resource_error(f)))
                    .collect();
                // A failure here (a lost lease) fails the next append too,
                // which ends the wake; the sandbox itself is fine.
                if let Err(h) = self.append_new(errors, None).await {
                    tracing::warn!(halt = ?h, "could not record the sandbox's resource errors");
                }
            }
        }
        result
    }

    /// Sleep, waking early on an interrupt; a lost lease ends the wake.
    async fn pause(&mut self, d: Duration) -> Result<(), Halt> {
        let base = self.signals.borrow().interrupts;
        let mut sig = self.signals.clone();
        tokio::select! {
            () = tokio::time::sleep(d) => Ok(()),
            s = stop_signal(&mut sig, base) => if s.lease_lost { Err(Halt::LeaseLost) } else { Ok(()) },
        }
    }

    // ------------------------------------------------------------- model

    async fn model_turn(&mut self) -> Result<(), Halt> {
        let agent = match &self.agent {
            Ok(a) => a.clone(),
            Err(_) => return Ok(()),
        };
        // One durable write opens the request (and the running status).
        let span_id = new_event_id();
        let mut opening = Vec::new();
        let mut status = None;
        if self.view.last_status() != Some(&LastStatus::Running) {
            opening.push(NewEvent::processed(events::status_running()));
            status = Some(SessionStatus::Running);
        }
        opening.push(NewEvent::processed(events::span_start()).with_id(span_id.clone()));
        self.append_new(opening, status).await?;
        // The input this request consumes is marked processed while the
        // request is already on its way (the mark does not change it).
        let consumed = self.view.stale_queued();
        let marking = {
            let store = self.h.store.clone();
            let sid = self.sid.clone();
            let fence = self.fence;
            let seqs = consumed.clone();
            Task::spawn(async move {
                if seqs.is_empty() {
                    return Ok(());
                }
                store
                    .mark_processed(&sid, EventSelector::Seqs(seqs), fence)
                    .await
                    .map(|_| ())
            })
        };
        if agent.needs_sandbox() {
            match self.h.config.provisioning {
                ProvisioningMode::Eager => {
                    if let Err(e) = self.sandbox().await {
                        tracing::warn!(%e, "eager provisioning failed; tools will try again");
                    }
                }
                ProvisioningMode::Speculative => self.start_speculative_provision(),
                ProvisioningMode::Lazy => {}
            }
        }
        let offer = self.mcp_offer(&agent).await?;
        let request = build_request(&agent, &self.view, self.h.config.max_tokens, &offer);
        self.h.observer.model_request_sent(&self.sid);
        let started = std::time::Instant::now();
        let streamed = self.stream_response(&request).await;
        let outcome = match &streamed {
            Streamed::Done(..) => "ok",
            Streamed::Failed(..) => "error",
            Streamed::Interrupted(..) | Streamed::LeaseLost => "interrupted",
        };
        metrics::counter!("airlock_model_requests_total", "outcome" => outcome).increment(1);
        metrics::histogram!("airlock_model_request_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        match marking.join().await {
            Some(Ok(())) => self.view.mark_consumed(&consumed),
            Some(Err(e)) => return Err(e.into()),
            None => {
                return Err(Halt::Store(StoreError::Unavailable {
                    reason: "marking consumed input processed was cancelled".to_owned(),
                    source: None,
                }))
            }
        }
        match streamed {
            Streamed::Done(resp, text_ids) => {
                self.record_response(&agent, &offer, &span_id, resp, text_ids)
                    .await
            }
            Streamed::Failed(e, usage) => self.record_failure(&span_id, e, usage).await,
            Streamed::Interrupted(usage) => {
                self.append(vec![events::span_end(&span_id, false, &usage)], None)
                    .await?;
                Ok(())
            }
            Streamed::LeaseLost => Err(Halt::LeaseLost),
        }
    }

    async fn stream_response(&mut self, request: &MessagesRequest) -> Streamed {
        enum Step<T> {
            Item(T),
            Stop(Signals),
        }
        let base = self.signals.borrow().interrupts;
        let mut sig = self.signals.clone();
        let provider = self.h.provider.clone();
        let stopped = |s: Signals, usage: Usage| {
            if s.lease_lost {
                Streamed::LeaseLost
            } else {
                Streamed::Interrupted(usage)
            }
        };
        let step = tokio::select! {
            r = provider.stream(request) => Step::Item(r),
            s = stop_signal(&mut sig, base) => Step::Stop(s),
        };
        let mut stream = match step {
            Step::Item(Ok(s)) => s,
            Step::Item(Err(e)) => return Streamed::Failed(e, Usage::default()),
            Step::Stop(s) => return stopped(s, Usage::default()),
        };
        let mut text_ids: HashMap<usize, String> = HashMap::new();
        loop {
            let step = tokio::select! {
                item = stream.next() => Step::Item(item),
                s = stop_signal(&mut sig, base) => Step::Stop(s),
            };
            match step {
                Step::Item(Ok(StreamItem::Event(ev))) => {
                    if let StreamEvent::BlockStart {
                        index,
                        block: BlockStart::Text { .. },
                    } = &ev
                    {
                        text_ids.insert(*index, new_event_id());
                    }
                    let id = match &ev {
                        StreamEvent::BlockStart { index, .. }
                        | StreamEvent::BlockDelta { index, .. }
                        | StreamEvent::BlockStop { index } => {
                            text_ids.get(index).map(String::as_str)
                        }
                        _ => None,
                    };
                    self.h.observer.model_event(&self.sid, id, &ev);
                }
                Step::Item(Ok(StreamItem::Done(resp))) => return Streamed::Done(resp, text_ids),
                Step::Item(Err(e)) => return Streamed::Failed(e, stream.usage_so_far()),
                Step::Stop(s) => return stopped(s, stream.usage_so_far()),
            }
        }
    }

    async fn record_response(
        &mut self,
        agent: &AgentConfig,
        offer: &McpOffer,
        span_id: &str,
        resp: Response,
        text_ids: HashMap<usize, String>,
    ) -> Result<(), Halt> {
        let mut batch = Vec::new();
        let mut refused = Vec::new();
        for (index, block) in resp.content.iter().enumerate() {
            match block {
                ResponseBlock::Text { text } => {
                    if text.is_empty() {
                        continue;
                    }
                    let id = text_ids.get(&index).cloned().unwrap_or_else(new_event_id);
                    batch.push(NewEvent::processed(events::agent_message(text)).with_id(id));
                }
                ResponseBlock::ToolUse { name, input, .. } => {
                    let id = new_event_id();
                    let body = match (agent.tool(name), offer.resolve(name)) {
                        (Some(t), _) if t.kind == ToolKind::Custom => {
                            events::agent_custom_tool_use(name, input)
                        }
                        (Some(t), _) => events::agent_tool_use(name, input, t.permission),
                        (None, Some(m)) => {
                            events::agent_mcp_tool_use(&m.server, &m.tool.name, input, m.permission)
                        }
                        (None, None) => {
                            refused.push((id.clone(), name.clone()));
                            events::agent_tool_use(name, input, Permission::Refused)
                        }
                    };
                    batch.push(NewEvent::processed(body).with_id(id));
                }
                _ => {}
            }
        }
        batch.push(NewEvent::processed(events::span_end(
            span_id,
            false,
            &resp.usage,
        )));
        let available: Vec<&str> = agent
            .tools
            .iter()
            .map(|t| t.definition.name.as_str())
            .chain(offer.tools().iter().map(|t| t.model_name.as_str()))
            .collect();
        for (id, name) in refused {
            tracing::info!(tool = %name, "model called an unknown tool");
            let text = format!(
                "Error: there is no tool named `{name}` in this session. Available tools: {}.",
                if available.is_empty() {
                    "none".to_owned()
                } else {
                    available.join(", ")
                }
            );
            batch.push(NewEvent::processed(events::agent_tool_result(
                &id,
                &[events::text_block(&text)],
                true,
            )));
        }
        tracing::debug!(
            stop_reason = resp
                .stop_reason
                .as_ref()
                .map(|s| s.as_str())
                .unwrap_or("none"),
            input_tokens = resp.usage.input_tokens,
            output_tokens = resp.usage.output_tokens,
            cache_read_input_tokens = resp.usage.cache_read_input_tokens,
            "model response"
        );
        self.append_new(batch, None).await?;
        Ok(())
    }

    async fn record_failure(
        &mut self,
        span_id: &str,
        e: ModelError,
        usage: Usage,
    ) -> Result<(), Halt> {
        let failures = self.view.consecutive_failures() + 1;
        let policy = self.h.config.retry.clone();
        let exhausted = !e.is_retryable() || failures >= policy.max_attempts;
        let message = e.to_string();
        tracing::warn!(error = %message, failures, exhausted, "model request failed");
        let retry = if exhausted {
            RetryStatus::Exhausted
        } else {
            RetryStatus::Retrying
        };
        let mut batch = vec![
            events::span_end(span_id, true, &usage),
            events::session_error(events::model_error_type(&e), &message, retry),
        ];
        if exhausted {
            batch.push(events::status_idle(&StopReason::RetriesExhausted));
            self.append(batch, Some(SessionStatus::Idle)).await?;
            return Ok(());
        }
        self.append(batch, None).await?;
        let delay = policy.delay(failures, e.retry_after(), jitter_unit());
        tracing::debug!(?delay, "waiting before the next attempt");
        self.pause(delay).await
    }
}

/// A random number in [0, 1) for backoff jitter (the thread rng is not held
/// across an await).
fn jitter_unit() -> f64 {
    rand::thread_rng().gen()
}

/// Resolves when the lease is lost (never otherwise).
async fn lease_lost(sig: &mut watch::Receiver<Signals>) {
    loop {
        if sig.borrow_and_update().lease_lost {
            return;
        }
        if sig.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves when the lease is lost or an interrupt beyond `base` arrives.
async fn stop_signal(sig: &mut watch::Receiver<Signals>, base: u64) -> Signals {
    loop {
        let s = *sig.borrow_and_update();
        if s.lease_lost || s.interrupts > base {
            return s;
        }
        if sig.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
