//! The event bodies the harness writes, in the published Managed Agents
//! shapes (the official Python SDK's `types/beta/sessions/*` is the wire
//! truth), and the names of the ones it reads.
//!
//! The store owns `id`, `seq` and `processed_at`; these builders produce the
//! rest of each body.

use model::Usage;
use serde_json::{json, Value};

/// Event type names.
pub mod types {
    /// User turn (client-sent).
    pub const USER_MESSAGE: &str = "user.message";
    /// Interrupt (client-sent).
    pub const USER_INTERRUPT: &str = "user.interrupt";
    /// Allow/deny of an `always_ask` tool call (client-sent).
    pub const USER_TOOL_CONFIRMATION: &str = "user.tool_confirmation";
    /// Result of a custom tool (client-sent).
    pub const USER_CUSTOM_TOOL_RESULT: &str = "user.custom_tool_result";
    /// Result of a built-in tool sent by a client (self-hosted workers).
    pub const USER_TOOL_RESULT: &str = "user.tool_result";
    /// Agent text.
    pub const AGENT_MESSAGE: &str = "agent.message";
    /// Built-in tool call.
    pub const AGENT_TOOL_USE: &str = "agent.tool_use";
    /// Built-in tool result.
    pub const AGENT_TOOL_RESULT: &str = "agent.tool_result";
    /// Custom tool call.
    pub const AGENT_CUSTOM_TOOL_USE: &str = "agent.custom_tool_use";
    /// Model request opened.
    pub const SPAN_MODEL_REQUEST_START: &str = "span.model_request_start";
    /// Model request closed.
    pub const SPAN_MODEL_REQUEST_END: &str = "span.model_request_end";
    /// Session running.
    pub const SESSION_STATUS_RUNNING: &str = "session.status_running";
    /// Session idle.
    pub const SESSION_STATUS_IDLE: &str = "session.status_idle";
    /// Session error.
    pub const SESSION_ERROR: &str = "session.error";
}

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
            Self::EndTurn => json!({"type": "end_turn"}),
            Self::RequiresAction(ids) => json!({"type": "requires_action", "event_ids": ids}),
            Self::RetriesExhausted => json!({"type": "retries_exhausted"}),
            Self::BudgetReached => json!({"type": "budget_reached"}),
        }
    }

    /// Parse the published JSON (`None` for shapes this harness does not write).
    pub fn from_json(v: &Value) -> Option<Self> {
        match v.get("type")?.as_str()? {
            "end_turn" => Some(Self::EndTurn),
            "retries_exhausted" => Some(Self::RetriesExhausted),
            "budget_reached" => Some(Self::BudgetReached),
            "requires_action" => Some(Self::RequiresAction(
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

/// `session.error.error.retry_status.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryStatus {
    /// The harness is retrying.
    Retrying,
    /// The turn is dead; the session goes idle.
    Exhausted,
    /// The session will terminate.
    Terminal,
}

impl RetryStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Retrying => "retrying",
            Self::Exhausted => "exhausted",
            Self::Terminal => "terminal",
        }
    }
}

/// `agent.message` with one text block.
pub fn agent_message(text: &str) -> Value {
    json!({"type": types::AGENT_MESSAGE, "content": [{"type": "text", "text": text}]})
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
    pub fn evaluated(self) -> &'static str {
        match self {
            Self::AlwaysAllow | Self::AutoAllow => "allow",
            Self::AlwaysAsk => "ask",
            Self::Refused => "deny",
        }
    }
}

/// `agent.tool_use`.
pub fn agent_tool_use(name: &str, input: &Value, permission: Permission) -> Value {
    let mut v = json!({
        "type": types::AGENT_TOOL_USE,
        "name": name,
        "input": input,
        "evaluated_permission": permission.evaluated(),
    });
    let evaluation = match permission {
        Permission::AlwaysAllow => Some(json!({"type": "always_allow"})),
        Permission::AlwaysAsk => Some(json!({"type": "always_ask"})),
        Permission::AutoAllow => Some(json!({"type": "auto", "evaluated_permission": "allow"})),
        Permission::Refused => None,
    };
    if let (Some(e), Some(obj)) = (evaluation, v.as_object_mut()) {
        obj.insert("evaluation".into(), e);
    }
    v
}

/// `agent.custom_tool_use`.
pub fn agent_custom_tool_use(name: &str, input: &Value) -> Value {
    json!({"type": types::AGENT_CUSTOM_TOOL_USE, "name": name, "input": input})
}

/// `agent.tool_result` for the `agent.tool_use` event `tool_use_id`.
pub fn agent_tool_result(tool_use_id: &str, content: &[Value], is_error: bool) -> Value {
    json!({
        "type": types::AGENT_TOOL_RESULT,
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
    json!({"type": types::SPAN_MODEL_REQUEST_START})
}

/// `span.model_request_end`.
pub fn span_end(start_id: &str, is_error: bool, usage: &Usage) -> Value {
    json!({
        "type": types::SPAN_MODEL_REQUEST_END,
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
    json!({"type": types::SESSION_STATUS_RUNNING})
}

/// `session.status_idle`.
pub fn status_idle(reason: &StopReason) -> Value {
    json!({"type": types::SESSION_STATUS_IDLE, "stop_reason": reason.to_json()})
}

/// `session.error` with a published error type (`model_overloaded_error`,
/// `model_rate_limited_error`, `model_request_failed_error`, `unknown_error`).
pub fn session_error(error_type: &str, message: &str, retry: RetryStatus) -> Value {
    json!({
        "type": types::SESSION_ERROR,
        "error": {
            "type": error_type,
            "message": message,
            "retry_status": {"type": retry.as_str()},
        },
    })
}

/// The `session.error` type for a model failure.
pub fn model_error_type(e: &model::ModelError) -> &'static str {
    match e.kind() {
        model::ModelErrorKind::Overloaded => "model_overloaded_error",
        model::ModelErrorKind::RateLimited => "model_rate_limited_error",
        _ => "model_request_failed_error",
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
                "model_overloaded_error",
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
