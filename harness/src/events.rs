//! The event bodies the harness writes, in the published Managed Agents
//! shapes (the official Python SDK's `types/beta/sessions/*` is the wire
//! truth). The names in them (event types, permission values, stop reasons,
//! retry statuses, error types) are the typed ones of
//! [`session_store::names`], shared with the API and the control plane.
//!
//! The store owns `id`, `seq` and `processed_at`; these builders produce the
//! rest of each body.

use model::Usage;
use serde_json::{json, Value};
use session_store::{EvaluatedPermission, PermissionPolicy, StopReasonType};
pub use session_store::{EventType, RetryStatus, SessionErrorType};

/// `session.status_idle.stop_reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The agent finished its turn.
    EndTurn,
    /// Blocked on these events (tool confirmations, custom tool results).
    RequiresAction(Vec<String>),
    /// Errors exhausted the retry budget.
    RetriesExhausted,
    /// The session's budget is spent.
    BudgetReached,
}

impl StopReason {
    /// The published JSON.
    pub fn to_json(&self) -> Value {
        match self {
            Self::EndTurn => json!({"type": StopReasonType::EndTurn}),
            Self::RequiresAction(ids) => {
                json!({"type": StopReasonType::RequiresAction, "event_ids": ids})
            }
            Self::RetriesExhausted => json!({"type": StopReasonType::RetriesExhausted}),
            Self::BudgetReached => json!({"type": StopReasonType::BudgetReached}),
        }
    }

    /// Parse the published JSON (`None` for shapes this harness does not write).
    pub fn from_json(v: &Value) -> Option<Self> {
        match StopReasonType::parse(v.get("type")?.as_str()?) {
            StopReasonType::EndTurn => Some(Self::EndTurn),
            StopReasonType::RetriesExhausted => Some(Self::RetriesExhausted),
            StopReasonType::BudgetReached => Some(Self::BudgetReached),
            StopReasonType::RequiresAction => Some(Self::RequiresAction(
                v.get("event_ids")?
                    .as_array()?
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect(),
            )),
            _ => None,
        }
    }
}

/// `agent.message` with one text block.
pub fn agent_message(text: &str) -> Value {
    json!({"type": EventType::AgentMessage, "content": [{"type": "text", "text": text}]})
}

/// How a tool call's permission was decided (`evaluated_permission` and
/// `evaluation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// `always_allow`: runs at once.
    AlwaysAllow,
    /// `always_ask`: waits for `user.tool_confirmation`.
    AlwaysAsk,
    /// `auto`, judged `allow` (this harness has no classifier: auto allows).
    AutoAllow,
    /// Refused before any policy applied (unknown or disabled tool).
    Refused,
}

impl Permission {
    /// `evaluated_permission`.
    pub fn evaluated(self) -> EvaluatedPermission {
        match self {
            Self::AlwaysAllow | Self::AutoAllow => EvaluatedPermission::Allow,
            Self::AlwaysAsk => EvaluatedPermission::Ask,
            Self::Refused => EvaluatedPermission::Deny,
        }
    }

    /// The permission a tool's `permission_policy` gives (`None` for a
    /// policy this harness does not know).
    pub fn from_policy(policy: &PermissionPolicy) -> Option<Self> {
        match policy {
            PermissionPolicy::AlwaysAllow => Some(Self::AlwaysAllow),
            PermissionPolicy::AlwaysAsk => Some(Self::AlwaysAsk),
            PermissionPolicy::Auto => Some(Self::AutoAllow),
            _ => None,
        }
    }
}

/// `agent.tool_use`.
pub fn agent_tool_use(name: &str, input: &Value, permission: Permission) -> Value {
    let mut v = json!({
        "type": EventType::AgentToolUse,
        "name": name,
        "input": input,
        "evaluated_permission": permission.evaluated(),
    });
    if let (Some(e), Some(obj)) = (evaluation(permission), v.as_object_mut()) {
        obj.insert("evaluation".into(), e);
    }
    v
}

/// `evaluation` of a tool use.
fn evaluation(permission: Permission) -> Option<Value> {
    match permission {
        Permission::AlwaysAllow => Some(json!({"type": PermissionPolicy::AlwaysAllow})),
        Permission::AlwaysAsk => Some(json!({"type": PermissionPolicy::AlwaysAsk})),
        Permission::AutoAllow => Some(json!({
            "type": PermissionPolicy::Auto,
            "evaluated_permission": EvaluatedPermission::Allow,
        })),
        Permission::Refused => None,
    }
}

/// `agent.mcp_tool_use`: `tool` (its name on the server) of `server`.
pub fn agent_mcp_tool_use(
    server: &str,
    tool: &str,
    input: &Value,
    permission: Permission,
) -> Value {
    let mut v = json!({
        "type": EventType::AgentMcpToolUse,
        "mcp_server_name": server,
        "name": tool,
        "input": input,
        "evaluated_permission": permission.evaluated(),
    });
    if let (Some(e), Some(obj)) = (evaluation(permission), v.as_object_mut()) {
        obj.insert("evaluation".into(), e);
    }
    v
}

/// `agent.mcp_tool_result` for the `agent.mcp_tool_use` event `mcp_tool_use_id`.
pub fn agent_mcp_tool_result(mcp_tool_use_id: &str, content: &[Value], is_error: bool) -> Value {
    json!({
        "type": EventType::AgentMcpToolResult,
        "mcp_tool_use_id": mcp_tool_use_id,
        "content": content,
        "is_error": is_error,
    })
}

/// `session.error` about MCP server `server` (`mcp_connection_failed_error`,
/// `mcp_authentication_failed_error`), naming it in `mcp_server_name`.
pub fn mcp_session_error(
    error_type: SessionErrorType,
    server: &str,
    message: &str,
    retry: RetryStatus,
) -> Value {
    json!({
        "type": EventType::SessionError,
        "error": {
            "type": error_type,
            "mcp_server_name": server,
            "message": message,
            "retry_status": {"type": retry},
        },
    })
}

/// `agent.custom_tool_use`.
pub fn agent_custom_tool_use(name: &str, input: &Value) -> Value {
    json!({"type": EventType::AgentCustomToolUse, "name": name, "input": input})
}

/// `agent.tool_result` for the `agent.tool_use` event `tool_use_id`.
pub fn agent_tool_result(tool_use_id: &str, content: &[Value], is_error: bool) -> Value {
    json!({
        "type": EventType::AgentToolResult,
        "tool_use_id": tool_use_id,
        "content": content,
        "is_error": is_error,
    })
}

/// A text content block.
pub fn text_block(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

/// `span.model_request_start`.
pub fn span_start() -> Value {
    json!({"type": EventType::SpanModelRequestStart})
}

/// `span.model_request_end`.
pub fn span_end(start_id: &str, is_error: bool, usage: &Usage) -> Value {
    json!({
        "type": EventType::SpanModelRequestEnd,
        "model_request_start_id": start_id,
        "is_error": is_error,
        "model_usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens,
        },
    })
}

/// `session.status_running`.
pub fn status_running() -> Value {
    json!({"type": EventType::SessionStatusRunning})
}

/// `session.status_idle`.
pub fn status_idle(reason: &StopReason) -> Value {
    json!({"type": EventType::SessionStatusIdle, "stop_reason": reason.to_json()})
}

/// `session.error` with a published error type.
pub fn session_error(error_type: SessionErrorType, message: &str, retry: RetryStatus) -> Value {
    json!({
        "type": EventType::SessionError,
        "error": {
            "type": error_type,
            "message": message,
            "retry_status": {"type": retry},
        },
    })
}

/// `session.error` for a session resource that could not be set up: the
/// SDK's `repository_*_error` with the repository's URL; always `retrying`
/// (the session goes on without the repository).
pub fn resource_error(f: &crate::hands::ResourceFailure) -> Value {
    json!({
        "type": EventType::SessionError,
        "error": {
            "type": SessionErrorType::from(f.error_type.as_str()),
            "repository_url": f.repository_url,
            "message": f.message,
            "retry_status": {"type": RetryStatus::Retrying},
        },
    })
}

/// The `session.error` type for a model failure.
pub fn model_error_type(e: &model::ModelError) -> SessionErrorType {
    match e.kind() {
        model::ModelErrorKind::Overloaded => SessionErrorType::ModelOverloaded,
        model::ModelErrorKind::RateLimited => SessionErrorType::ModelRateLimited,
        _ => SessionErrorType::ModelRequestFailed,
    }
}

/// Usage from a `span.model_request_end.model_usage` object.
pub fn usage_from_json(v: &Value) -> Usage {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: n("input_tokens"),
        output_tokens: n("output_tokens"),
        cache_creation_input_tokens: n("cache_creation_input_tokens"),
        cache_read_input_tokens: n("cache_read_input_tokens"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_the_published_types() {
        assert_eq!(
            status_idle(&StopReason::RequiresAction(vec!["sevt_1".into()])),
            json!({"type":"session.status_idle","stop_reason":{"type":"requires_action","event_ids":["sevt_1"]}})
        );
        assert_eq!(
            session_error(
                SessionErrorType::ModelOverloaded,
                "Overloaded",
                RetryStatus::Retrying
            ),
            json!({"type":"session.error","error":{"type":"model_overloaded_error","message":"Overloaded","retry_status":{"type":"retrying"}}})
        );
        let u = Usage {
            input_tokens: 1,
            output_tokens: 2,
            cache_creation_input_tokens: 3,
            cache_read_input_tokens: 4,
        };
        let e = span_end("sevt_s", false, &u);
        assert_eq!(usage_from_json(&e["model_usage"]), u);
        assert_eq!(e["model_request_start_id"], json!("sevt_s"));
        let t = agent_tool_use("bash", &json!({"command":"ls"}), Permission::AlwaysAsk);
        assert_eq!(t["evaluated_permission"], json!("ask"));
        assert_eq!(t["evaluation"], json!({"type":"always_ask"}));
        let t = agent_tool_use("nope", &json!({}), Permission::Refused);
        assert_eq!(t["evaluated_permission"], json!("deny"));
        assert!(t.get("evaluation").is_none());
        let m = agent_mcp_tool_use("wiki", "search", &json!({"q": "x"}), Permission::AlwaysAsk);
        assert_eq!(
            m,
            json!({"type": "agent.mcp_tool_use", "mcp_server_name": "wiki", "name": "search",
                   "input": {"q": "x"}, "evaluated_permission": "ask", "evaluation": {"type": "always_ask"}})
        );
        assert_eq!(
            agent_mcp_tool_result("sevt_1", &[text_block("r")], false),
            json!({"type": "agent.mcp_tool_result", "mcp_tool_use_id": "sevt_1",
                   "content": [{"type": "text", "text": "r"}], "is_error": false})
        );
        assert_eq!(
            mcp_session_error(
                SessionErrorType::McpAuthenticationFailed,
                "wiki",
                "401",
                RetryStatus::Exhausted
            ),
            json!({"type": "session.error", "error": {"type": "mcp_authentication_failed_error",
                   "mcp_server_name": "wiki", "message": "401", "retry_status": {"type": "exhausted"}}})
        );
        for r in [
            StopReason::EndTurn,
            StopReason::RetriesExhausted,
            StopReason::BudgetReached,
            StopReason::RequiresAction(vec!["a".into()]),
        ] {
            assert_eq!(StopReason::from_json(&r.to_json()), Some(r));
        }
    }
}
