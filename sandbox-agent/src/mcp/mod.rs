//! The sandbox-agent's part of MCP calls: the control plane's tunnel calls
//! `mcp_list_tools`, `mcp_call_tool` and `mcp_validate` are checked against
//! the local policy (`[policy] mcp_hosts`), forwarded to the local
//! vault-bridge over the agent channel, and answered with `Reply::Mcp` /
//! `Reply::McpValidated`.
//!
//! * **At most once.** An `mcp_call_tool` is recorded as started (synced to
//!   disk) before it goes to the bridge and its reply after ([`record`]). A
//!   repeated `tool_use_id` gets the recorded reply with `replayed: true`; one
//!   that started without a recorded reply (the agent restarted, the bridge
//!   died or went silent mid-call) gets `Failed { outcome_unknown }` and the
//!   server is not called. A request that never reached the bridge (no
//!   `[bridge]`, bridge down) is `Failed { no_bridge }` and is forgotten, so
//!   a later retry may call.
//! * **Policy.** `policy.mcp_hosts` absent: any host; present: only hosts
//!   matching an entry (`mcp.internal`, `*.corp`), else `Failed {
//!   policy_denied }` naming the rule. `mcp_validate` of a denied host is an
//!   RPC error `policy_denied`.
//! * **Audit.** Hash-chained lines in the agent's audit log
//!   ([`crate::audit`]) with call, session, tool_use_id, tool, outcome,
//!   duration and an `mcp` object (server, URL host, credential id, failure,
//!   `is_error`, size of the arguments). An `mcp_call_tool` the policy
//!   allows and a bridge can take first gets a `start` line with its input
//!   (`{"tool", "arguments"}`, scrubbed by the bridge and the writer's token
//!   patterns), written before the call record and the bridge are touched:
//!   when it cannot be written the call is refused
//!   (`Failed { audit_unavailable }`) and the server is not called. Its
//!   `end` line carries the result's SHA-256 and size (and the scrubbed copy
//!   in the outputs store when that is on). A request refused before that
//!   (invalid, policy, no bridge) and `mcp_list_tools`/`mcp_validate` are one
//!   line each. The result itself is never in a line.

pub mod record;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::call::{CallError, ErrorCode, Reply, Request, Response};
use protocol::mcp::{
    McpCallTool, McpFailure, McpListTools, McpOutcome, McpReply, McpServer, McpValidate,
};
use protocol::relay::CredentialBinding;

use crate::audit::{
    AuditEvent, AuditLog, Decision, Detail, McpCallDetail, OutputDigest, PHASE_END, PHASE_START,
};
use crate::sandbox::bridge::{BridgeClient, BridgeError, CallFailure};
use record::{Begin, McpRecord};

/// How long the agent waits for the bridge's answer to one MCP request:
/// above the bridge's own deadline (60 s by default, initialize and refresh
/// included), so a slow server is the bridge's `timeout`, not a lost answer.
pub const BRIDGE_DEADLINE: Duration = Duration::from_secs(150);

/// The `McpFailure` code of a call refused because its `start` audit line
/// could not be written. Sent as a code the wire enum does not name yet
/// (peers decode it as an unknown failure and show its message).
pub const AUDIT_UNAVAILABLE: &str = "audit_unavailable";

/// Whether `request` is one of the MCP calls.
pub fn is_mcp(request: &Request) -> bool {
    matches!(
        request,
        Request::McpListTools(_) | Request::McpCallTool(_) | Request::McpValidate(_)
    )
}

/// Why the MCP part could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum McpSetupError {
    /// The call record could not be opened.
    #[error(transparent)]
    Record(#[from] record::RecordError),
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

/// The agent's MCP dispatcher.
#[derive(Debug, Clone)]
pub struct McpAgent {
    bridge: Option<BridgeClient>,
    record: Arc<McpRecord>,
    audit: AuditLog,
    mcp_hosts: Option<Vec<String>>,
    deadline: Duration,
}

impl McpAgent {
    /// Open the call record and audit log in `data_dir`; forward to
    /// `bridge` (`None`: every request is `no_bridge`); allow the hosts of
    /// `mcp_hosts` (`None`: any).
    pub fn open(
        data_dir: &Path,
        retention: Duration,
        bridge: Option<&crate::sandbox::config::BridgeSettings>,
        mcp_hosts: Option<Vec<String>>,
    ) -> Result<Self, McpSetupError> {
        let audit = AuditLog::open(data_dir)?;
        Self::open_with_audit(data_dir, retention, bridge, mcp_hosts, audit)
    }

    /// [`McpAgent::open`] writing to `audit` (the agent opens its log once,
    /// from `[audit]`, and shares it with the sandbox service).
    pub fn open_with_audit(
        data_dir: &Path,
        retention: Duration,
        bridge: Option<&crate::sandbox::config::BridgeSettings>,
        mcp_hosts: Option<Vec<String>>,
        audit: AuditLog,
    ) -> Result<Self, McpSetupError> {
        Ok(Self {
            bridge: bridge.map(BridgeClient::new),
            record: Arc::new(McpRecord::open(data_dir, retention)?),
            audit,
            mcp_hosts,
            deadline: BRIDGE_DEADLINE,
        })
    }

    /// Wait `deadline` for the bridge instead of [`BRIDGE_DEADLINE`].
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The call record.
    pub fn record(&self) -> &McpRecord {
        &self.record
    }

    /// Answer one MCP tunnel call.
    pub async fn handle(&self, request: Request) -> Response {
        match request {
            Request::McpListTools(r) => Response::Ok(Reply::Mcp {
                call: "mcp_list_tools".into(),
                reply: self.list_tools(r).await,
            }),
            Request::McpCallTool(r) => Response::Ok(Reply::Mcp {
                call: "mcp_call_tool".into(),
                reply: self.call_tool(r).await,
            }),
            Request::McpValidate(r) => match self.validate(r).await {
                Ok(v) => Response::Ok(Reply::McpValidated(v)),
                Err(e) => Response::Err(e),
            },
            other => Response::error(
                ErrorCode::UnsupportedCall,
                format!("call `{}` is not an MCP call", other.name()),
            ),
        }
    }

    /// `mcp_list_tools`.
    pub async fn list_tools(&self, r: McpListTools) -> McpReply {
        let started = Instant::now();
        let host = url_host(&r.server.url);
        let line = Line {
            call: "mcp_list_tools",
            session_id: r.session_id.clone(),
            tool_use_id: None,
            tool: None,
            server: r.server.name.clone(),
            arguments_bytes: None,
        };
        let reply = match self.precheck(&r.server, &host) {
            Err(reply) => reply,
            Ok(bridge) => {
                let server = r.server.clone();
                match bridge.mcp_list_tools(r, self.deadline).await {
                    Ok(reply) => reply,
                    Err(f) => bridge_failure(&f, &server),
                }
            }
        };
        self.audit(line, &host, &reply, started);
        reply
    }

    /// `mcp_call_tool`: at most once per `tool_use_id`.
    ///
    /// The call runs in a task of its own: if the tunnel call is dropped
    /// (the control plane went away), the bridge's reply is still recorded
    /// and audited, so the re-sent call gets it as a replay instead of
    /// waiting on a start that nobody finishes.
    pub async fn call_tool(&self, r: McpCallTool) -> McpReply {
        let id = r.tool_use_id.clone();
        let this = self.clone();
        match tokio::spawn(async move { this.call_tool_here(r).await }).await {
            Ok(reply) => reply,
            Err(error) => {
                tracing::error!(tool_use_id = %id, %error, "MCP call task failed");
                let reason = "the agent's call task failed";
                self.record.finish_unknown(&id, reason).unwrap_or_else(|_| {
                    let mut reply = record::unknown_reply(&id, reason);
                    reply.replayed = false;
                    reply
                })
            }
        }
    }

    async fn call_tool_here(&self, r: McpCallTool) -> McpReply {
        let started = Instant::now();
        let host = url_host(&r.server.url);
        let line = Line {
            call: "mcp_call_tool",
            session_id: r.session_id.clone(),
            tool_use_id: Some(r.tool_use_id.clone()),
            tool: Some(r.tool.clone()),
            server: r.server.name.clone(),
            arguments_bytes: Some(
                serde_json::to_vec(&r.arguments)
                    .map(|v| v.len() as u64)
                    .unwrap_or(0),
            ),
        };
        let mut started_line = false;
        let reply = self
            .call_tool_once(r, &host, &line, &mut started_line)
            .await;
        if started_line {
            self.audit_end(line, &host, &reply, started).await;
        } else {
            self.audit(line, &host, &reply, started);
        }
        reply
    }

    /// The `start` line of an `mcp_call_tool` (fail closed: `Err` is the
    /// refusal to return; nothing was sent).
    async fn audit_start(
        &self,
        r: &McpCallTool,
        line: &Line,
        host: &Result<String, String>,
    ) -> Result<(), McpReply> {
        let (input, redactions) = if self.audit.detail() == Detail::Outcomes {
            (None, None)
        } else {
            let input = serde_json::json!({"tool": r.tool, "arguments": r.arguments});
            let s = crate::sandbox::bridge::scrub_for_audit(self.bridge.as_ref(), &input).await;
            (Some(s.value), (s.redactions > 0).then_some(s.redactions))
        };
        let event = AuditEvent {
            call: line.call.to_owned(),
            phase: Some(PHASE_START.to_owned()),
            session_id: Some(line.session_id.clone()),
            tool_use_id: line.tool_use_id.clone(),
            tool: line.tool.clone(),
            input,
            redactions,
            decision: Some(Decision {
                allowed: true,
                ..Default::default()
            }),
            outcome: "started".into(),
            mcp: Some(McpCallDetail {
                server: (!line.server.is_empty()).then(|| line.server.clone()),
                host: host.clone().unwrap_or_default(),
                arguments_bytes: line.arguments_bytes,
                ..Default::default()
            }),
            ..Default::default()
        };
        self.audit.try_record(event).map(|_| ()).map_err(|error| {
            tracing::error!(tool_use_id = %r.tool_use_id, %error, "MCP call refused: the audit record could not be written");
            failed(
                McpFailure::Unknown(AUDIT_UNAVAILABLE.into()),
                format!("refused: the audit record could not be written ({error}); nothing ran"),
            )
        })
    }

    async fn call_tool_once(
        &self,
        r: McpCallTool,
        host: &Result<String, String>,
        line: &Line,
        started_line: &mut bool,
    ) -> McpReply {
        if r.tool_use_id.is_empty() {
            return failed(McpFailure::InvalidRequest, "tool_use_id is empty".into());
        }
        if !r.arguments.is_object() && !r.arguments.is_null() {
            return failed(
                McpFailure::InvalidRequest,
                format!(
                    "the arguments of MCP tool `{}` must be a JSON object",
                    r.tool
                ),
            );
        }
        // Fail closed: a call that may reach the server first gets its start
        // line, before the record is touched. (A call the policy or a
        // missing bridge refuses gets one line after; its replay, if any,
        // is still answered from the record below.)
        if self.precheck(&r.server, host).is_ok() {
            if let Err(refusal) = self.audit_start(&r, line, host).await {
                return refusal;
            }
            *started_line = true;
        }
        // The record first: a replay or an unknown outcome is answered even
        // when the policy or the bridge changed since.
        let id = r.tool_use_id.clone();
        match self.record.begin(&id, &r.session_id, &r.server.name) {
            Err(error) => {
                tracing::error!(tool_use_id = %id, %error, "MCP call record failed; not calling");
                return failed(
                    McpFailure::OutcomeUnknown,
                    format!("the agent could not record MCP tool call {id}, so it did not call the server: {error}"),
                );
            }
            Ok(Begin::Replay(reply)) | Ok(Begin::Unknown(reply)) => return reply,
            Ok(Begin::InFlight(mut rx)) => {
                return loop {
                    if let Some(reply) = rx.borrow_and_update().clone() {
                        break reply;
                    }
                    if rx.changed().await.is_err() {
                        break record::unknown_reply(
                            &id,
                            "the first attempt ended without a reply",
                        );
                    }
                };
            }
            Ok(Begin::Call) => {}
        }
        let bridge = match self.precheck(&r.server, host) {
            Ok(b) => b,
            Err(reply) => {
                self.record.abandon(&id, &reply);
                return reply;
            }
        };
        let server = r.server.clone();
        match bridge.mcp_call_tool(r, self.deadline).await {
            Ok(reply) => {
                if let Err(error) = self.record.finish(&id, &reply) {
                    tracing::error!(tool_use_id = %id, %error, "MCP call record: reply not written (a retry will read as outcome_unknown)");
                }
                reply
            }
            Err(f) if !f.sent || matches!(f.error, BridgeError::Refused { .. }) => {
                // The bridge never acted on it: forget it so a retry may call.
                let reply = bridge_failure(&f, &server);
                self.record.abandon(&id, &reply);
                reply
            }
            Err(f) => {
                let reason = format!("the vault-bridge did not answer ({})", f.error);
                match self.record.finish_unknown(&id, &reason) {
                    Ok(reply) => reply,
                    Err(error) => {
                        tracing::error!(tool_use_id = %id, %error, "MCP call record: unknown outcome not written");
                        let mut reply = record::unknown_reply(&id, &reason);
                        reply.replayed = false;
                        reply
                    }
                }
            }
        }
    }

    /// `mcp_validate`: the bridge's validation object.
    pub async fn validate(
        &self,
        r: McpValidate,
    ) -> Result<protocol::mcp::McpValidation, CallError> {
        let started = Instant::now();
        let url = match &r.credential.binding {
            CredentialBinding::StaticBearer { mcp_server_url }
            | CredentialBinding::McpOauth { mcp_server_url, .. } => mcp_server_url.clone(),
            _ => {
                return Err(CallError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "credential {} is not an MCP credential (static_bearer or mcp_oauth)",
                        r.credential.credential_id
                    ),
                ))
            }
        };
        let host = url_host(&url);
        let credential_id = r.credential.credential_id.clone();
        let server = McpServer {
            name: String::new(),
            url,
        };
        let result = match self.precheck(&server, &host) {
            Err(reply) => Err(match reply.outcome {
                McpOutcome::Failed {
                    failure: McpFailure::PolicyDenied,
                    message,
                } => CallError::new(ErrorCode::PolicyDenied, message),
                McpOutcome::Failed {
                    failure: McpFailure::InvalidRequest,
                    message,
                } => CallError::new(ErrorCode::BadRequest, message),
                McpOutcome::Failed { message, .. } => {
                    CallError::new(ErrorCode::Unavailable, message)
                }
                _ => CallError::new(ErrorCode::Internal, "unexpected precheck outcome"),
            }),
            Ok(bridge) => bridge
                .mcp_validate(r, self.deadline)
                .await
                .map_err(|f| CallError::new(ErrorCode::Unavailable, f.error.to_string())),
        };
        let outcome = match &result {
            Ok(v) => v.status.clone(),
            Err(e) => e.code.to_string(),
        };
        self.audit.record(AuditEvent {
            call: "mcp_validate".into(),
            outcome,
            duration_ms: millis(started.elapsed()),
            mcp: Some(McpCallDetail {
                server: None,
                host: host.clone().unwrap_or_default(),
                credential_id: Some(credential_id),
                ..Default::default()
            }),
            ..Default::default()
        });
        result
    }

    /// The bridge to use, or the reply refusing the request: a bad URL, a
    /// host the policy does not allow, no bridge.
    fn precheck(
        &self,
        server: &McpServer,
        host: &Result<String, String>,
    ) -> Result<&BridgeClient, McpReply> {
        let host = host
            .as_ref()
            .map_err(|why| failed(McpFailure::InvalidRequest, why.clone()))?;
        if let Some(rule) = &self.mcp_hosts {
            if !host_allowed(rule, host) {
                let name = if server.name.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", server.name)
                };
                return Err(failed(
                    McpFailure::PolicyDenied,
                    format!(
                        "MCP server host `{host}`{name} is not allowed by this agent's policy: policy.mcp_hosts = {rule:?}"
                    ),
                ));
            }
        }
        self.bridge.as_ref().ok_or_else(|| {
            failed(
                McpFailure::NoBridge,
                "this agent has no [bridge]: MCP servers are reached through a vault-bridge".into(),
            )
        })
    }

    /// The `end` line of an `mcp_call_tool` that had a `start` line: the
    /// outcome and the result's digest (its scrubbed copy stored when the
    /// outputs store is on). Written whatever happens: a failure leaves the
    /// log unhealthy, the reply still goes back.
    async fn audit_end(
        &self,
        line: Line,
        host: &Result<String, String>,
        reply: &McpReply,
        started: Instant,
    ) {
        let mut event = self.event(line, host, reply, started);
        event.phase = Some(PHASE_END.to_owned());
        if let McpOutcome::Called { content, .. } = &reply.outcome {
            let bytes = serde_json::to_vec(content).unwrap_or_default();
            let mut digest = OutputDigest::of(&bytes);
            if let Some(store) = self
                .audit
                .outputs()
                .filter(|_| self.audit.detail() == Detail::Full)
            {
                let (value, found) = crate::audit::Scrubber::global()
                    .scrubbed(serde_json::Value::from(content.clone()));
                let s = crate::sandbox::bridge::scrub_for_audit(self.bridge.as_ref(), &value).await;
                if s.complete {
                    match serde_json::to_vec(&s.value)
                        .map_err(crate::audit::AuditError::Encode)
                        .and_then(|b| store.put(&b))
                    {
                        Ok(sha) => digest.stored = Some(sha),
                        Err(error) => tracing::warn!(%error, "audit: MCP output not stored"),
                    }
                    let n = found.saturating_add(s.redactions);
                    event.redactions = (n > 0).then_some(n);
                }
            }
            event.output = Some(digest);
        }
        self.audit.record(event);
    }

    fn audit(&self, line: Line, host: &Result<String, String>, reply: &McpReply, started: Instant) {
        let event = self.event(line, host, reply, started);
        self.audit.record(event);
    }

    fn event(
        &self,
        line: Line,
        host: &Result<String, String>,
        reply: &McpReply,
        started: Instant,
    ) -> AuditEvent {
        let (outcome, failure, is_error) = match &reply.outcome {
            McpOutcome::Tools { .. } => ("ok", None, false),
            McpOutcome::Called { is_error, .. } => {
                (if *is_error { "tool_error" } else { "ok" }, None, *is_error)
            }
            McpOutcome::Failed { failure, .. } => ("failed", Some(failure.to_string()), false),
            _ => ("unknown", None, false),
        };
        let outcome = if reply.replayed && outcome != "failed" {
            "replayed"
        } else {
            outcome
        };
        let decision = match &reply.outcome {
            McpOutcome::Failed {
                failure: McpFailure::PolicyDenied,
                message,
            } => Some(Decision {
                allowed: false,
                rule: Some("policy.mcp_hosts".into()),
                reason: Some(message.clone()),
            }),
            _ => None,
        };
        let outcome = if decision.is_some() {
            "refused"
        } else {
            outcome
        };
        AuditEvent {
            decision,
            call: line.call.to_owned(),
            session_id: Some(line.session_id),
            tool_use_id: line.tool_use_id,
            tool: line.tool,
            outcome: outcome.to_owned(),
            detail: reply
                .replayed
                .then(|| "answered from the MCP call record".to_owned()),
            duration_ms: millis(started.elapsed()),
            mcp: Some(McpCallDetail {
                server: (!line.server.is_empty()).then_some(line.server),
                host: host.clone().unwrap_or_default(),
                credential_id: reply.credential_id.clone(),
                failure,
                is_error,
                arguments_bytes: line.arguments_bytes,
            }),
            ..Default::default()
        }
    }
}

/// What an audit line says about the request (besides its reply).
struct Line {
    call: &'static str,
    session_id: String,
    tool_use_id: Option<String>,
    tool: Option<String>,
    server: String,
    arguments_bytes: Option<u64>,
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

fn failed(failure: McpFailure, message: String) -> McpReply {
    McpReply {
        outcome: McpOutcome::Failed { failure, message },
        credential_id: None,
        replayed: false,
        tools_changed: false,
    }
}

/// The failure reply for an agent-channel call that failed.
fn bridge_failure(f: &CallFailure, server: &McpServer) -> McpReply {
    match &f.error {
        BridgeError::Refused {
            code: protocol::bridge::BridgeErrorCode::UnsupportedRequest,
            ..
        } => failed(
            McpFailure::NoBridge,
            format!(
                "the vault-bridge does not support MCP requests (upgrade it) for MCP server {}",
                server.name
            ),
        ),
        e if !f.sent => failed(
            McpFailure::NoBridge,
            format!(
                "the vault-bridge is not reachable for MCP server {}: {e}",
                server.name
            ),
        ),
        e => failed(
            McpFailure::NoBridge,
            format!("the vault-bridge failed on MCP server {}: {e}", server.name),
        ),
    }
}

/// The lowercase host of an MCP server URL (no port), or why there is none.
pub fn url_host(url: &str) -> Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("MCP server URL `{url}`: {e}"))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(format!("MCP server URL `{url}` is not http(s)"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("MCP server URL `{url}` carries user info"));
    }
    match parsed.host() {
        Some(url::Host::Domain(d)) => Ok(d.trim_end_matches('.').to_ascii_lowercase()),
        Some(url::Host::Ipv4(a)) => Ok(a.to_string()),
        Some(url::Host::Ipv6(a)) => Ok(a.to_string()),
        None => Err(format!("MCP server URL `{url}` has no host")),
    }
}

/// Whether `host` matches one of `patterns` (`policy.mcp_hosts`, lowercase):
/// equal, or under the domain of a `*.domain` entry.
pub fn host_allowed(patterns: &[String], host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    patterns.iter().any(|p| match p.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
        None => {
            let p = p.trim_start_matches('[').trim_end_matches(']');
            *p == host
        }
    })
}
