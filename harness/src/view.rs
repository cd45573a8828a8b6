//! The session as the harness sees it, rebuilt from events alone.
//!
//! [`SessionView`] is a fold over the log in seq order: no I/O, no clock. It
//! yields the conversation for the next model request and the work that is
//! still open. Its rules are what make the harness restartable:
//!
//! - **Model requests.** `span.model_request_start` closes the user input
//!   gathered so far (tool results first, then user content) into a user
//!   message; that is exactly what the request sent after it contained. The
//!   response's `agent.message` / `agent.tool_use` / `agent.custom_tool_use`
//!   events are stored in one batch with `span.model_request_end`, so a
//!   response is either wholly in the log or not at all. A start without an
//!   end is a request lost in a crash.
//! - **User input** that arrives while a request is in flight (after its
//!   start) is not part of that request: it waits for the next start.
//! - **Tool calls.** The `agent.tool_use` event id is the model-facing
//!   `tool_use.id` and the idempotency key down to the sandbox. A call is
//!   resolved by `agent.tool_result` / `user.tool_result` (built-in),
//!   `user.custom_tool_result` (custom), or a `user.tool_confirmation` with
//!   `deny` (the model is told it was denied; the tool never runs). The
//!   denial's result takes the confirmation's place in the conversation; the
//!   harness also records it as an `agent.tool_result` (for the audit trail)
//!   before it marks the confirmation processed, and that event is not a
//!   second result. Logs written before that (a deny with no result event)
//!   fold the same way.
//! - **Unusable input.** A queued confirmation or result whose call is not
//!   open (answered already, never blocked, unknown) can never be used: it is
//!   listed so the harness marks it processed.
//! - **Turns.** New input (a user message or a tool result) since the last
//!   `session.status_idle` asks for a model call when the conversation ends
//!   with a user message. Idle consumes that demand, so results written while
//!   stopping a turn (interrupt) wait for the next user message.
//! - **MCP calls** (`agent.mcp_tool_use` → `agent.mcp_tool_result`) follow
//!   the same rules as sandbox calls (permission, confirmation, denial,
//!   at-most-once by event id). In the conversation their `tool_use` block
//!   carries [`crate::mcp::mcp_tool_name`]; the request builder renames it
//!   to the name offered now ([`SessionView::mcp_tool_use`]).
//! - Consecutive messages of one role are merged (tool results first).

use std::collections::{HashMap, HashSet};

use model::{ContentBlock, Message, Role, Usage};
use serde_json::{Map, Value};
use session_store::StoredEvent;

use crate::events::{self, StopReason};
use session_store::{ConfirmationResult, EvaluatedPermission, EventType};

/// How a tool call is to be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolUseKind {
    /// Runs in the sandbox; `evaluated_permission` as recorded.
    Sandbox {
        /// `allow`, `ask` or `deny`.
        evaluated_permission: EvaluatedPermission,
    },
    /// Answered by the client with `user.custom_tool_result`.
    Custom,
    /// Runs on MCP server `server` through the hands; `evaluated_permission`
    /// as recorded.
    Mcp {
        /// `mcp_server_name`.
        server: String,
        /// `allow`, `ask` or `deny`.
        evaluated_permission: EvaluatedPermission,
    },
}

/// A tool call without a result yet.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenToolUse {
    /// The `agent.tool_use` / `agent.custom_tool_use` event id.
    pub event_id: String,
    /// Its seq.
    pub seq: u64,
    /// Tool name.
    pub name: String,
    /// Tool input.
    pub input: Value,
    /// How it is resolved.
    pub kind: ToolUseKind,
    /// For `ask` calls: the seq of the `user.tool_confirmation` that allowed it.
    pub allowed_by: Option<u64>,
}

impl OpenToolUse {
    /// Whether the harness may run it now.
    pub fn runnable(&self) -> bool {
        match &self.kind {
            ToolUseKind::Sandbox {
                evaluated_permission,
            }
            | ToolUseKind::Mcp {
                evaluated_permission,
                ..
            } => *evaluated_permission == EvaluatedPermission::Allow || self.allowed_by.is_some(),
            ToolUseKind::Custom => false,
        }
    }

    /// Whether it waits for the client (confirmation or custom result).
    pub fn blocked(&self) -> bool {
        match &self.kind {
            ToolUseKind::Sandbox {
                evaluated_permission,
            }
            | ToolUseKind::Mcp {
                evaluated_permission,
                ..
            } => *evaluated_permission == EvaluatedPermission::Ask && self.allowed_by.is_none(),
            ToolUseKind::Custom => true,
        }
    }

    /// The MCP server of an MCP call.
    pub fn mcp_server(&self) -> Option<&str> {
        match &self.kind {
            ToolUseKind::Mcp { server, .. } => Some(server),
            _ => None,
        }
    }
}

/// A call denied by a queued `user.tool_confirmation`: the harness records
/// its `agent.tool_result` (unless `recorded`), then marks the confirmation
/// processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The denied `agent.tool_use` event id.
    pub tool_use_id: String,
    /// Seq of the denying confirmation.
    pub confirmation_seq: u64,
    /// The result text the model is given (and the event records).
    pub text: String,
    /// Whether its result event is in the log already.
    pub recorded: bool,
    /// The MCP server, for an `agent.mcp_tool_use` (recorded as
    /// `agent.mcp_tool_result`).
    pub mcp_server: Option<String>,
}

/// The latest status event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastStatus {
    /// `session.status_running`.
    Running,
    /// `session.status_idle` with its stop reason (`None`: a shape this
    /// harness does not write).
    Idle(Option<StopReason>),
}

/// The fold. See the module documentation for the rules.
#[derive(Debug, Clone, Default)]
pub struct SessionView {
    messages: Vec<Message>,
    pending_results: Vec<ContentBlock>,
    pending_user: Vec<ContentBlock>,
    assistant: Vec<ContentBlock>,
    open_span: Option<String>,
    open_tools: Vec<OpenToolUse>,
    known_tools: HashSet<String>,
    mcp_uses: HashMap<String, (String, String)>,
    resolved_tools: HashSet<String>,
    input_since_idle: bool,
    last_status: Option<LastStatus>,
    queued: Vec<(u64, EventType)>,
    unusable: Vec<u64>,
    denials: Vec<Denial>,
    interrupts: Vec<u64>,
    last_span_start_seq: u64,
    usage: Usage,
    requests_this_turn: u32,
    consecutive_failures: u32,
    last_seq: u64,
}

/// Events out of order: the caller fed a gap or a repeat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event seq {got} applied after seq {last}: the log must be folded in order without gaps")]
pub struct OutOfOrder {
    /// Last seq applied.
    pub last: u64,
    /// Seq offered.
    pub got: u64,
}

/// Take a field's array of content blocks out of a body.
fn take_blocks(body: &mut Map<String, Value>, key: &str) -> Vec<Value> {
    match body.remove(key) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

/// Published content blocks into request blocks (`redacted` blocks dropped).
fn to_request_blocks(blocks: Vec<Value>) -> impl Iterator<Item = ContentBlock> {
    blocks
        .into_iter()
        .filter_map(|b| match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = match b {
                    Value::Object(mut m) => match m.remove("text") {
                        Some(Value::String(t)) => t,
                        _ => String::new(),
                    },
                    _ => String::new(),
                };
                Some(ContentBlock::text(text))
            }
            Some("redacted") | None => None,
            Some(_) => Some(ContentBlock::Other(b)),
        })
}

/// What the model (and the log's `agent.mcp_tool_result`) is told about a
/// denied MCP call.
pub fn mcp_denial_text(server: &str, tool: &str, deny_message: Option<&str>) -> String {
    let mut text = format!(
        "The user denied this call to `{tool}` on MCP server `{server}`; the tool did not run."
    );
    if let Some(m) = deny_message {
        text.push_str(" Their message: ");
        text.push_str(m);
    }
    text
}

/// What the model (and the log's `agent.tool_result`) is told about a denied call.
pub fn denial_text(tool: &str, deny_message: Option<&str>) -> String {
    let mut text = format!("The user denied this call to `{tool}`; the tool did not run.");
    if let Some(m) = deny_message {
        text.push_str(" Their message: ");
        text.push_str(m);
    }
    text
}

fn str_of<'a>(body: &'a Map<String, Value>, key: &str) -> &'a str {
    body.get(key).and_then(Value::as_str).unwrap_or("")
}

fn bool_of(body: &Map<String, Value>, key: &str) -> bool {
    body.get(key).and_then(Value::as_bool).unwrap_or(false)
}

impl SessionView {
    /// An empty view (a session with no events).
    pub fn new() -> Self {
        Self::default()
    }

    /// Fold a whole log.
    pub fn from_events<'a>(
        events: impl IntoIterator<Item = &'a StoredEvent>,
    ) -> Result<Self, OutOfOrder> {
        let mut v = Self::new();
        for e in events {
            v.apply(e)?;
        }
        Ok(v)
    }

    /// Fold a whole log, consuming it (no copies of the bodies).
    pub fn from_owned_events(
        events: impl IntoIterator<Item = StoredEvent>,
    ) -> Result<Self, OutOfOrder> {
        let mut v = Self::new();
        for e in events {
            v.apply_owned(e)?;
        }
        Ok(v)
    }

    /// Apply the next event (seq must be `last_seq + 1`).
    pub fn apply(&mut self, e: &StoredEvent) -> Result<(), OutOfOrder> {
        self.apply_owned(e.clone())
    }

    /// Apply the next event, consuming it (seq must be `last_seq + 1`).
    pub fn apply_owned(&mut self, e: StoredEvent) -> Result<(), OutOfOrder> {
        if e.seq != self.last_seq + 1 {
            return Err(OutOfOrder {
                last: self.last_seq,
                got: e.seq,
            });
        }
        let StoredEvent {
            seq,
            id,
            event_type,
            processed_at,
            mut body,
            ..
        } = e;
        self.last_seq = seq;
        let queued = processed_at.is_none();
        let event_type = EventType::parse(&event_type);
        match event_type {
            EventType::UserMessage => {
                self.pending_user
                    .extend(to_request_blocks(take_blocks(&mut body, "content")));
                self.input_since_idle = true;
                if queued {
                    self.queued.push((seq, event_type));
                }
            }
            EventType::UserInterrupt if queued => self.interrupts.push(seq),
            EventType::UserToolConfirmation => {
                let tool_use_id = str_of(&body, "tool_use_id");
                let allow =
                    ConfirmationResult::parse(str_of(&body, "result")) == ConfirmationResult::Allow;
                if let Some(pos) = self
                    .open_tools
                    .iter()
                    .position(|t| t.event_id == tool_use_id && t.blocked())
                {
                    if allow {
                        self.open_tools[pos].allowed_by = Some(seq);
                    } else {
                        let t = self.open_tools.remove(pos);
                        let deny_message = body.get("deny_message").and_then(Value::as_str);
                        let text = match t.mcp_server() {
                            Some(server) => mcp_denial_text(server, &t.name, deny_message),
                            None => denial_text(&t.name, deny_message),
                        };
                        self.resolve(&t.event_id, vec![events::text_block(&text)], true);
                        let mcp_server = t.mcp_server().map(str::to_owned);
                        if queued {
                            self.denials.push(Denial {
                                tool_use_id: t.event_id,
                                confirmation_seq: seq,
                                text,
                                recorded: false,
                                mcp_server,
                            });
                        }
                    }
                } else if queued {
                    self.unusable.push(seq);
                }
                if queued {
                    self.queued.push((seq, event_type));
                }
            }
            EventType::UserCustomToolResult => {
                let tool_use_id = str_of(&body, "custom_tool_use_id").to_owned();
                if let Some(pos) = self
                    .open_tools
                    .iter()
                    .position(|t| t.event_id == tool_use_id && t.kind == ToolUseKind::Custom)
                {
                    self.open_tools.remove(pos);
                    let is_error = bool_of(&body, "is_error");
                    self.resolve(&tool_use_id, take_blocks(&mut body, "content"), is_error);
                } else if queued {
                    self.unusable.push(seq);
                }
                if queued {
                    self.queued.push((seq, event_type));
                }
            }
            EventType::AgentToolResult
            | EventType::UserToolResult
            | EventType::AgentMcpToolResult => {
                let key = if event_type == EventType::AgentMcpToolResult {
                    "mcp_tool_use_id"
                } else {
                    "tool_use_id"
                };
                let tool_use_id = str_of(&body, key).to_owned();
                if let Some(pos) = self
                    .open_tools
                    .iter()
                    .position(|t| t.event_id == tool_use_id)
                {
                    self.open_tools.remove(pos);
                    let is_error = bool_of(&body, "is_error");
                    self.resolve(&tool_use_id, take_blocks(&mut body, "content"), is_error);
                } else if let Some(d) = self
                    .denials
                    .iter_mut()
                    .find(|d| d.tool_use_id == tool_use_id)
                {
                    // The record of a denial (its result is already in the
                    // conversation, at the confirmation).
                    d.recorded = true;
                } else if queued {
                    self.unusable.push(seq);
                }
                if queued {
                    self.queued.push((seq, event_type));
                }
            }
            EventType::SpanModelRequestStart => {
                self.flush_input();
                self.last_span_start_seq = seq;
                self.open_span = Some(id);
                self.assistant.clear();
            }
            EventType::AgentMessage => {
                self.assistant
                    .extend(to_request_blocks(take_blocks(&mut body, "content")));
            }
            EventType::AgentToolUse
            | EventType::AgentCustomToolUse
            | EventType::AgentMcpToolUse => {
                let name = str_of(&body, "name").to_owned();
                let input = body
                    .remove("input")
                    .unwrap_or_else(|| Value::Object(Map::new()));
                let evaluated_permission =
                    match body.get("evaluated_permission").and_then(Value::as_str) {
                        Some(p) => EvaluatedPermission::parse(p),
                        None => EvaluatedPermission::Allow,
                    };
                let kind = match event_type {
                    EventType::AgentCustomToolUse => ToolUseKind::Custom,
                    EventType::AgentMcpToolUse => ToolUseKind::Mcp {
                        server: str_of(&body, "mcp_server_name").to_owned(),
                        evaluated_permission,
                    },
                    _ => ToolUseKind::Sandbox {
                        evaluated_permission,
                    },
                };
                // The conversation names an MCP call as the model knows it.
                let block_name = match &kind {
                    ToolUseKind::Mcp { server, .. } => {
                        self.mcp_uses
                            .insert(id.clone(), (server.clone(), name.clone()));
                        crate::mcp::mcp_tool_name(server, &name)
                    }
                    _ => name.clone(),
                };
                if self.known_tools.insert(id.clone()) {
                    self.open_tools.push(OpenToolUse {
                        event_id: id.clone(),
                        seq,
                        name: name.clone(),
                        input: input.clone(),
                        kind,
                        allowed_by: None,
                    });
                }
                self.assistant.push(ContentBlock::ToolUse {
                    id,
                    name: block_name,
                    input,
                    cache_control: None,
                });
            }
            EventType::SpanModelRequestEnd => {
                let start = body.get("model_request_start_id").and_then(Value::as_str);
                if start.is_some() && start == self.open_span.as_deref() {
                    self.open_span = None;
                }
                let is_error = bool_of(&body, "is_error");
                if let Some(u) = body.get("model_usage") {
                    self.usage.add(&events::usage_from_json(u));
                }
                let blocks = std::mem::take(&mut self.assistant);
                if !blocks.is_empty() {
                    self.push_message(Role::Assistant, blocks);
                } else if !is_error {
                    // The model answered with nothing (or the request was
                    // interrupted): the demand it was answering is spent.
                    self.input_since_idle = false;
                }
                if is_error {
                    self.consecutive_failures += 1;
                } else {
                    self.consecutive_failures = 0;
                    self.requests_this_turn += 1;
                }
            }
            EventType::SessionStatusRunning => self.last_status = Some(LastStatus::Running),
            EventType::SessionStatusIdle => {
                self.last_status = Some(LastStatus::Idle(
                    body.get("stop_reason").and_then(StopReason::from_json),
                ));
                self.input_since_idle = false;
                self.consecutive_failures = 0;
            }
            _ => {}
        }
        Ok(())
    }

    fn resolve(&mut self, id: &str, content: Vec<Value>, is_error: bool) {
        if !self.resolved_tools.insert(id.to_owned()) {
            return;
        }
        self.pending_results.push(ContentBlock::ToolResult {
            tool_use_id: id.to_owned(),
            content,
            is_error,
            cache_control: None,
        });
        self.input_since_idle = true;
    }

    fn flush_input(&mut self) {
        if !self.pending_user.is_empty() {
            self.requests_this_turn = 0;
        }
        let mut blocks = std::mem::take(&mut self.pending_results);
        blocks.append(&mut self.pending_user);
        if !blocks.is_empty() {
            self.push_message(Role::User, blocks);
        }
    }

    fn push_message(&mut self, role: Role, blocks: Vec<ContentBlock>) {
        match self.messages.last_mut() {
            Some(last) if last.role == role => {
                if role == Role::User {
                    let (mut results, mut rest): (Vec<_>, Vec<_>) =
                        std::mem::take(&mut last.content)
                            .into_iter()
                            .partition(|b| matches!(b, ContentBlock::ToolResult { .. }));
                    let (new_results, new_rest): (Vec<_>, Vec<_>) = blocks
                        .into_iter()
                        .partition(|b| matches!(b, ContentBlock::ToolResult { .. }));
                    results.extend(new_results);
                    rest.extend(new_rest);
                    results.append(&mut rest);
                    last.content = results;
                } else {
                    last.content.extend(blocks);
                }
            }
            None if role == Role::Assistant => {
                // A conversation cannot start with the assistant; nothing the
                // harness writes does that. Drop rather than send an invalid request.
            }
            _ => self.messages.push(Message {
                role,
                content: blocks,
            }),
        }
    }

    /// The messages of the next model request: the conversation plus the
    /// input waiting for it.
    pub fn request_messages(&self) -> Vec<Message> {
        let mut v = self.clone_conversation_only();
        v.flush_input();
        v.messages
    }

    fn clone_conversation_only(&self) -> Self {
        Self {
            messages: self.messages.clone(),
            pending_results: self.pending_results.clone(),
            pending_user: self.pending_user.clone(),
            ..Self::default()
        }
    }

    /// Whether the next step is a model call. Nothing may be left to run or
    /// wait for; then either a user message arrived that no request has
    /// consumed yet (still queued, after the last request start), or new
    /// input (a message or tool result) since the last idle leaves the
    /// conversation ending with the user.
    pub fn needs_model(&self) -> bool {
        if !self.open_tools.is_empty() || !self.interrupts.is_empty() {
            return false;
        }
        if self.has_new_user_message() {
            return true;
        }
        if !self.input_since_idle {
            return false;
        }
        if !self.pending_results.is_empty() || !self.pending_user.is_empty() {
            return true;
        }
        matches!(self.messages.last(), Some(m) if m.role == Role::User)
    }

    /// A `user.message` still queued that arrived after the last request start.
    pub fn has_new_user_message(&self) -> bool {
        self.queued
            .iter()
            .any(|(s, t)| *t == EventType::UserMessage && *s > self.last_span_start_seq)
    }

    /// Queued client events that a model request already consumed (before
    /// the last request start) but that are not marked processed (a crash
    /// between the two writes).
    pub fn stale_queued(&self) -> Vec<u64> {
        self.queued
            .iter()
            .filter(|(s, _)| *s < self.last_span_start_seq)
            .map(|(s, _)| *s)
            .collect()
    }

    /// Queued `user.message` events (seqs).
    pub fn queued_user_messages(&self) -> Vec<u64> {
        self.queued
            .iter()
            .filter(|(_, t)| *t == EventType::UserMessage)
            .map(|(s, _)| *s)
            .collect()
    }

    /// Tool calls without a result, in order.
    pub fn open_tools(&self) -> &[OpenToolUse] {
        &self.open_tools
    }

    /// (server, tool) of the `agent.mcp_tool_use` event `id`.
    pub fn mcp_tool_use(&self, id: &str) -> Option<(&str, &str)> {
        self.mcp_uses.get(id).map(|(s, t)| (s.as_str(), t.as_str()))
    }

    /// The span start id of a model request with no end (lost in a crash).
    pub fn open_span(&self) -> Option<&str> {
        self.open_span.as_deref()
    }

    /// Seqs of unprocessed `user.interrupt` events.
    pub fn interrupts(&self) -> &[u64] {
        &self.interrupts
    }

    /// Queued (unprocessed) client events other than interrupts, `(seq, type)`.
    pub fn queued(&self) -> &[(u64, EventType)] {
        &self.queued
    }

    /// Forget queued events the harness marked processed.
    pub fn mark_consumed(&mut self, seqs: &[u64]) {
        self.queued.retain(|(s, _)| !seqs.contains(s));
        self.interrupts.retain(|s| !seqs.contains(s));
        self.unusable.retain(|s| !seqs.contains(s));
        self.denials.retain(|d| !seqs.contains(&d.confirmation_seq));
    }

    /// Queued client events that can never be used (a confirmation or result
    /// for a call that is not open): to be marked processed so they do not
    /// keep the session looking like it has input.
    pub fn unusable(&self) -> &[u64] {
        &self.unusable
    }

    /// Calls denied by a still-queued confirmation, in log order.
    pub fn denials(&self) -> &[Denial] {
        &self.denials
    }

    /// The latest status event.
    pub fn last_status(&self) -> Option<&LastStatus> {
        self.last_status.as_ref()
    }

    /// Token usage of every model request so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Successful model requests since the last request that consumed a
    /// user message (0 while a user message waits: it starts a new turn).
    pub fn requests_this_turn(&self) -> u32 {
        if self.pending_user.is_empty() {
            self.requests_this_turn
        } else {
            0
        }
    }

    /// Failed model requests since the last success or idle.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Seq of the last event folded.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Whether a user message is waiting for the next request.
    pub fn has_pending_user_input(&self) -> bool {
        !self.pending_user.is_empty()
    }

    /// The committed conversation (without the pending input).
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::OffsetDateTime;

    struct Log {
        events: Vec<StoredEvent>,
    }

    impl Log {
        fn new() -> Self {
            Self { events: vec![] }
        }
        fn push(&mut self, body: Value, queued: bool) -> String {
            let seq = self.events.len() as u64 + 1;
            let id = format!("sevt_{seq}");
            let ty = body["type"].as_str().unwrap().to_owned();
            self.events.push(StoredEvent {
                session_id: "s".into(),
                seq,
                id: id.clone(),
                event_type: ty,
                processed_at: if queued {
                    None
                } else {
                    Some(OffsetDateTime::UNIX_EPOCH)
                },
                created_at: OffsetDateTime::UNIX_EPOCH,
                body: body.as_object().unwrap().clone(),
            });
            id
        }
        fn user(&mut self, text: &str) -> String {
            self.push(
                json!({"type":"user.message","content":[{"type":"text","text":text}]}),
                true,
            )
        }
        fn view(&self) -> SessionView {
            SessionView::from_events(&self.events).unwrap()
        }
    }

    fn roles(v: &[Message]) -> Vec<Role> {
        v.iter().map(|m| m.role).collect()
    }

    #[test]
    fn a_tool_turn_pairs_uses_with_results_and_merges_late_user_input() {
        let mut log = Log::new();
        log.user("list files");
        let v = log.view();
        assert!(v.needs_model());
        assert_eq!(v.queued().len(), 1);
        let s1 = log.push(events::span_start(), false);
        // A user message arrives while the request is in flight.
        log.user("also, hurry");
        log.push(events::agent_message("Looking."), false);
        let tu = log.push(
            events::agent_tool_use(
                "bash",
                &json!({"command":"ls"}),
                events::Permission::AlwaysAllow,
            ),
            false,
        );
        log.push(
            events::span_end(
                &s1,
                false,
                &Usage {
                    input_tokens: 10,
                    output_tokens: 5,
                    ..Default::default()
                },
            ),
            false,
        );
        let v = log.view();
        assert!(!v.needs_model(), "a tool is open");
        assert_eq!(v.open_tools().len(), 1);
        assert!(v.open_tools()[0].runnable());
        log.push(
            events::agent_tool_result(&tu, &[json!({"type":"text","text":"a b"})], false),
            false,
        );
        let v = log.view();
        assert!(v.needs_model());
        let msgs = v.request_messages();
        assert_eq!(roles(&msgs), [Role::User, Role::Assistant, Role::User]);
        // The late message comes after the tool result, not before the response.
        match &msgs[2].content[..] {
            [ContentBlock::ToolResult { tool_use_id, .. }, ContentBlock::Text { text, .. }] => {
                assert_eq!(tool_use_id, &tu);
                assert_eq!(text, "also, hurry");
            }
            other => panic!("{other:?}"),
        }
        match &msgs[1].content[1] {
            ContentBlock::ToolUse { id, .. } => assert_eq!(id, &tu),
            other => panic!("{other:?}"),
        }
        assert_eq!(v.usage().input_tokens, 10);
        // End of turn.
        let s2 = log.push(events::span_start(), false);
        log.push(events::agent_message("Done."), false);
        log.push(events::span_end(&s2, false, &Usage::default()), false);
        let v = log.view();
        assert!(!v.needs_model());
        assert_eq!(
            v.requests_this_turn(),
            1,
            "the late user message started a new turn"
        );
        log.push(events::status_idle(&StopReason::EndTurn), false);
        assert!(!log.view().needs_model());
        log.user("next");
        let v = log.view();
        assert!(v.needs_model());
        assert_eq!(
            roles(&v.request_messages()),
            [
                Role::User,
                Role::Assistant,
                Role::User,
                Role::Assistant,
                Role::User
            ]
        );
    }

    #[test]
    fn a_request_lost_in_a_crash_is_open_and_asked_again() {
        let mut log = Log::new();
        log.user("hi");
        let s = log.push(events::span_start(), false);
        let v = log.view();
        assert_eq!(v.open_span(), Some(s.as_str()));
        assert!(v.needs_model());
        assert_eq!(roles(&v.request_messages()), [Role::User]);
        log.push(events::span_end(&s, true, &Usage::default()), false);
        let v = log.view();
        assert!(v.needs_model());
        assert_eq!(v.consecutive_failures(), 1);
        assert_eq!(v.open_span(), None);
    }

    #[test]
    fn ask_custom_and_deny_resolution() {
        let mut log = Log::new();
        log.user("go");
        let s = log.push(events::span_start(), false);
        let ask = log.push(
            events::agent_tool_use(
                "bash",
                &json!({"command":"rm -rf x"}),
                events::Permission::AlwaysAsk,
            ),
            false,
        );
        let custom = log.push(
            events::agent_custom_tool_use("lookup", &json!({"q":1})),
            false,
        );
        let ask2 = log.push(
            events::agent_tool_use("write", &json!({}), events::Permission::AlwaysAsk),
            false,
        );
        log.push(events::span_end(&s, false, &Usage::default()), false);
        let v = log.view();
        assert_eq!(v.open_tools().iter().filter(|t| t.blocked()).count(), 3);
        log.push(
            json!({"type":"user.tool_confirmation","tool_use_id":ask,"result":"allow"}),
            true,
        );
        log.push(json!({"type":"user.tool_confirmation","tool_use_id":ask2,"result":"deny","deny_message":"no writes"}), true);
        let v = log.view();
        let open = v.open_tools();
        assert_eq!(open.len(), 2);
        assert!(open[0].runnable() && open[0].event_id == ask);
        assert!(open[1].blocked() && open[1].event_id == custom);
        log.push(json!({"type":"user.custom_tool_result","custom_tool_use_id":custom,"content":[{"type":"text","text":"42"}]}), true);
        log.push(events::agent_tool_result(&ask, &[], false), false);
        let v = log.view();
        assert!(v.open_tools().is_empty());
        assert!(v.needs_model());
        let msgs = v.request_messages();
        let last = &msgs.last().unwrap().content;
        assert_eq!(last.len(), 3);
        let denied = last.iter().find(|b| matches!(b, ContentBlock::ToolResult { tool_use_id, .. } if *tool_use_id == ask2)).unwrap();
        match denied {
            ContentBlock::ToolResult {
                is_error, content, ..
            } => {
                assert!(*is_error);
                assert!(content[0]["text"].as_str().unwrap().contains("no writes"));
            }
            _ => unreachable!(),
        }
        // Stray or duplicate results are ignored.
        log.push(events::agent_tool_result(&ask, &[], true), false);
        log.push(events::agent_tool_result("sevt_nope", &[], true), false);
        assert_eq!(
            log.view().request_messages().last().unwrap().content.len(),
            3
        );
    }

    #[test]
    fn idle_consumes_the_demand_for_a_model_call() {
        let mut log = Log::new();
        log.user("go");
        let s = log.push(events::span_start(), false);
        let tu = log.push(
            events::agent_tool_use("bash", &json!({}), events::Permission::AlwaysAllow),
            false,
        );
        log.push(events::span_end(&s, false, &Usage::default()), false);
        log.push(json!({"type":"user.interrupt"}), true);
        let v = log.view();
        assert_eq!(v.interrupts().len(), 1);
        assert!(!v.needs_model());
        // Interrupt handling writes an "interrupted" result and idle.
        log.push(
            events::agent_tool_result(&tu, &[json!({"type":"text","text":"interrupted"})], true),
            false,
        );
        log.push(events::status_idle(&StopReason::EndTurn), false);
        let mut v = log.view();
        v.mark_consumed(&[5]);
        assert!(v.interrupts().is_empty());
        log.events[4].processed_at = Some(OffsetDateTime::UNIX_EPOCH);
        assert!(
            !v.needs_model(),
            "results written while stopping wait for the user"
        );
        log.user("try again");
        let v = log.view();
        assert!(v.needs_model());
        let msgs = v.request_messages();
        assert_eq!(roles(&msgs), [Role::User, Role::Assistant, Role::User]);
        assert_eq!(msgs[2].content.len(), 2);
    }

    /// A log up to an `always_ask` call that blocks the session.
    fn blocked_on_ask() -> (Log, String) {
        let mut log = Log::new();
        log.push(
            json!({"type":"user.message","content":[{"type":"text","text":"go"}]}),
            false,
        );
        let s = log.push(events::span_start(), false);
        let ask = log.push(
            events::agent_tool_use("bash", &json!({}), events::Permission::AlwaysAsk),
            false,
        );
        log.push(events::span_end(&s, false, &Usage::default()), false);
        log.push(
            events::status_idle(&StopReason::RequiresAction(vec![ask.clone()])),
            false,
        );
        (log, ask)
    }

    #[test]
    fn a_queued_denial_is_listed_until_recorded_and_folds_the_same_before_and_after() {
        let (mut log, ask) = blocked_on_ask();
        log.push(
            json!({"type":"user.tool_confirmation","tool_use_id":ask,"result":"deny","deny_message":"not today"}),
            true,
        );
        let conf_idx = log.events.len() - 1;
        let v = log.view();
        assert!(v.open_tools().is_empty());
        assert!(v.needs_model());
        assert!(v.unusable().is_empty());
        let d = v.denials().to_vec();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].tool_use_id, ask);
        assert_eq!(d[0].confirmation_seq, conf_idx as u64 + 1);
        assert!(!d[0].recorded);
        assert!(d[0].text.contains("`bash`") && d[0].text.contains("not today"));
        let before = v.request_messages();
        match &before.last().unwrap().content[..] {
            [ContentBlock::ToolResult {
                tool_use_id,
                is_error,
                content,
                ..
            }] => {
                assert_eq!(tool_use_id, &ask);
                assert!(*is_error);
                assert_eq!(content[0]["text"], json!(d[0].text));
            }
            other => panic!("{other:?}"),
        }
        // The harness records the denial: listed as recorded, not a second result.
        log.push(
            events::agent_tool_result(&ask, &[events::text_block(&d[0].text)], true),
            false,
        );
        let v = log.view();
        assert!(v.denials()[0].recorded);
        assert_eq!(v.request_messages(), before);
        assert!(v.unusable().is_empty(), "the record is not unusable input");
        // ... then marks the confirmation processed: nothing left to do.
        log.events[conf_idx].processed_at = Some(OffsetDateTime::UNIX_EPOCH);
        let v = log.view();
        assert!(v.denials().is_empty());
        assert!(v.queued().is_empty());
        assert_eq!(v.request_messages(), before);
        // A log from before denials were recorded (processed deny, no
        // result event) folds to the same conversation.
        log.events.pop();
        let v = log.view();
        assert!(v.denials().is_empty());
        assert!(v.needs_model());
        assert_eq!(v.request_messages(), before);
        // Marking the confirmation consumed forgets the denial too.
        let (mut log, ask) = blocked_on_ask();
        log.push(
            json!({"type":"user.tool_confirmation","tool_use_id":ask,"result":"deny"}),
            true,
        );
        let mut v = log.view();
        assert!(!v.denials()[0].text.contains("Their message"));
        let seq = v.denials()[0].confirmation_seq;
        v.mark_consumed(&[seq]);
        assert!(v.denials().is_empty());
    }

    #[test]
    fn input_for_calls_that_are_not_open_is_unusable() {
        let (mut log, ask) = blocked_on_ask();
        // For an unknown call, and a custom result for a sandbox call.
        let a = log.push(
            json!({"type":"user.tool_confirmation","tool_use_id":"sevt_nope","result":"allow"}),
            true,
        );
        let b = log.push(
            json!({"type":"user.custom_tool_result","custom_tool_use_id":ask,"content":[]}),
            true,
        );
        // Processed strays are history, not input.
        log.push(
            json!({"type":"user.tool_confirmation","tool_use_id":"sevt_old","result":"deny"}),
            false,
        );
        // The real answer, then a second answer to the same call.
        log.push(
            json!({"type":"user.tool_confirmation","tool_use_id":ask,"result":"allow"}),
            true,
        );
        let dup = log.push(
            json!({"type":"user.tool_confirmation","tool_use_id":ask,"result":"deny"}),
            true,
        );
        let seq_of = |id: &str| log.events.iter().find(|e| e.id == id).unwrap().seq;
        let mut v = log.view();
        assert_eq!(v.unusable(), &[seq_of(&a), seq_of(&b), seq_of(&dup)]);
        assert!(v.denials().is_empty(), "the call was allowed first");
        assert!(v.open_tools()[0].runnable());
        v.mark_consumed(&[seq_of(&a), seq_of(&b), seq_of(&dup)]);
        assert!(v.unusable().is_empty());
        assert_eq!(v.queued().len(), 1, "the allow stays until its tool ran");
    }

    #[test]
    fn out_of_order_is_refused() {
        let mut log = Log::new();
        log.user("a");
        log.user("b");
        let mut v = SessionView::new();
        assert!(v.apply(&log.events[1]).is_err());
        v.apply(&log.events[0]).unwrap();
        assert!(v.apply(&log.events[0]).is_err());
    }
}
