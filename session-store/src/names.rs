//! The names the session log speaks in, typed once for the API, the harness
//! and the control plane: event `type`s, permission policies and decisions,
//! stop reasons, retry statuses and `session.error` types (the published
//! Managed Agents spellings; the official Python SDK's `types/beta` is the
//! wire truth).
//!
//! They live here, in the lowest crate all three depend on, because the
//! store owns the event log's shape; the store itself still treats bodies as
//! opaque and never interprets these values.
//!
//! Each enum keeps an `Unknown(String)` variant: a value read from the wire
//! or the log that this build does not know (written by a newer version, or
//! sent by a client) round-trips unchanged instead of failing. Adding a name
//! is one line in the enum's `wire_names!` list.

use std::fmt;

/// Defines a wire-name enum: the listed variants with their spellings, plus
/// `Unknown(String)`, `as_str`, `parse` (never fails), `KNOWN`, `Display`,
/// `From<&str>` and serde as a plain string.
macro_rules! wire_names {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A spelling this build does not know (read from the wire or
            /// the log); kept as is.
            Unknown(String),
        }

        impl $name {
            /// Every known value, in declaration order.
            pub const KNOWN: &'static [$name] = &[$($name::$variant),+];

            /// The wire spelling.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $text, )+
                    $name::Unknown(other) => other,
                }
            }

            /// The value spelled `text` (`Unknown` when it is none of the
            /// known ones).
            pub fn parse(text: &str) -> Self {
                match text {
                    $( $text => $name::$variant, )+
                    other => $name::Unknown(other.to_owned()),
                }
            }

            /// Whether this is one of the known values.
            pub fn is_known(&self) -> bool {
                !matches!(self, $name::Unknown(_))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                $name::parse(text)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                Ok($name::parse(&text))
            }
        }
    };
}

wire_names! {
    /// An event's `type`.
    pub enum EventType {
        /// User turn (client-sent).
        UserMessage = "user.message",
        /// Interrupt (client-sent).
        UserInterrupt = "user.interrupt",
        /// Allow/deny of an `always_ask` tool call (client-sent).
        UserToolConfirmation = "user.tool_confirmation",
        /// Result of a custom tool (client-sent).
        UserCustomToolResult = "user.custom_tool_result",
        /// Result of a built-in tool sent by a client (self-hosted workers).
        UserToolResult = "user.tool_result",
        /// An outcome definition (client-sent; not supported here).
        UserDefineOutcome = "user.define_outcome",
        /// A system message (not accepted from clients).
        SystemMessage = "system.message",
        /// Agent text.
        AgentMessage = "agent.message",
        /// Agent thinking.
        AgentThinking = "agent.thinking",
        /// Built-in tool call.
        AgentToolUse = "agent.tool_use",
        /// Built-in tool result.
        AgentToolResult = "agent.tool_result",
        /// Custom tool call.
        AgentCustomToolUse = "agent.custom_tool_use",
        /// MCP tool call.
        AgentMcpToolUse = "agent.mcp_tool_use",
        /// MCP tool result.
        AgentMcpToolResult = "agent.mcp_tool_result",
        /// Model request opened.
        SpanModelRequestStart = "span.model_request_start",
        /// Model request closed.
        SpanModelRequestEnd = "span.model_request_end",
        /// Session running.
        SessionStatusRunning = "session.status_running",
        /// Session idle.
        SessionStatusIdle = "session.status_idle",
        /// Session terminated.
        SessionStatusTerminated = "session.status_terminated",
        /// Session error.
        SessionError = "session.error",
        /// The session was deleted (the last frame of a live stream; never stored).
        SessionDeleted = "session.deleted",
    }
}

wire_names! {
    /// A tool's `permission_policy.type`.
    pub enum PermissionPolicy {
        /// Runs at once.
        AlwaysAllow = "always_allow",
        /// Waits for a `user.tool_confirmation`.
        AlwaysAsk = "always_ask",
        /// Decided by the harness (this one has no classifier: auto allows).
        Auto = "auto",
    }
}

wire_names! {
    /// `agent.tool_use.evaluated_permission`.
    pub enum EvaluatedPermission {
        /// Runs.
        Allow = "allow",
        /// Waits for the client's confirmation.
        Ask = "ask",
        /// Refused.
        Deny = "deny",
    }
}

wire_names! {
    /// `user.tool_confirmation.result`.
    pub enum ConfirmationResult {
        /// Run the tool.
        Allow = "allow",
        /// Do not run it (`deny_message` may say why).
        Deny = "deny",
    }
}

wire_names! {
    /// `session.status_idle.stop_reason.type`.
    pub enum StopReasonType {
        /// The agent finished its turn.
        EndTurn = "end_turn",
        /// Blocked on client events (`event_ids`).
        RequiresAction = "requires_action",
        /// Errors exhausted the retry budget.
        RetriesExhausted = "retries_exhausted",
        /// The session's budget is spent.
        BudgetReached = "budget_reached",
    }
}

wire_names! {
    /// `session.error.error.retry_status.type`.
    pub enum RetryStatus {
        /// The harness is retrying.
        Retrying = "retrying",
        /// The turn is dead; the session goes idle.
        Exhausted = "exhausted",
        /// The session will terminate.
        Terminal = "terminal",
    }
}

wire_names! {
    /// `session.error.error.type`.
    pub enum SessionErrorType {
        /// The model API is overloaded.
        ModelOverloaded = "model_overloaded_error",
        /// The model API rate-limited the request.
        ModelRateLimited = "model_rate_limited_error",
        /// The model request failed otherwise.
        ModelRequestFailed = "model_request_failed_error",
        /// A session repository did not clone.
        RepositoryClone = "repository_clone_error",
        /// A session repository refused its credentials (or had none).
        RepositoryAuthentication = "repository_authentication_error",
        /// A session repository's branch or commit could not be checked out.
        RepositoryCheckout = "repository_checkout_error",
        /// A session repository's server forbade the request.
        RepositoryForbidden = "repository_forbidden_error",
        /// A session repository does not exist.
        RepositoryNotFound = "repository_not_found_error",
        /// An MCP server could not be reached (or answered 5xx).
        McpConnectionFailed = "mcp_connection_failed_error",
        /// An MCP server refused the session's credential (or it had none).
        McpAuthenticationFailed = "mcp_authentication_failed_error",
        /// Anything else.
        UnknownError = "unknown_error",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn round_trips<T>(known: &[T])
    where
        T: Clone + PartialEq + fmt::Debug + fmt::Display + serde::Serialize,
        T: for<'de> serde::Deserialize<'de> + for<'a> From<&'a str>,
    {
        let mut seen = HashSet::new();
        for value in known {
            let text = value.to_string();
            assert!(seen.insert(text.clone()), "{text} is listed twice");
            assert_eq!(&T::from(text.as_str()), value);
            let json = serde_json::to_value(value).unwrap();
            assert_eq!(json, serde_json::Value::String(text.clone()));
            assert_eq!(&serde_json::from_value::<T>(json).unwrap(), value);
        }
    }

    #[test]
    fn every_name_round_trips_through_text_and_serde() {
        round_trips(EventType::KNOWN);
        round_trips(PermissionPolicy::KNOWN);
        round_trips(EvaluatedPermission::KNOWN);
        round_trips(ConfirmationResult::KNOWN);
        round_trips(StopReasonType::KNOWN);
        round_trips(RetryStatus::KNOWN);
        round_trips(SessionErrorType::KNOWN);
    }

    #[test]
    fn unknown_values_are_kept_not_refused() {
        let t = EventType::parse("agent.vault_use");
        assert_eq!(t, EventType::Unknown("agent.vault_use".into()));
        assert!(!t.is_known());
        assert_eq!(t.as_str(), "agent.vault_use");
        let from_json: EventType = serde_json::from_str("\"user.dance\"").unwrap();
        assert_eq!(serde_json::to_string(&from_json).unwrap(), "\"user.dance\"");
        assert!(EventType::UserMessage.is_known());
        assert!(EventType::UserMessage == "user.message");
        assert_eq!(EventType::AgentToolUse.as_str(), "agent.tool_use");
        assert_eq!(
            PermissionPolicy::parse("always_ask"),
            PermissionPolicy::AlwaysAsk
        );
        assert_eq!(ConfirmationResult::parse("maybe").to_string(), "maybe");
    }
}
