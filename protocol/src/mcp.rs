//! MCP calls of a session, made by the vault-bridge on the harness's behalf.
//!
//! The harness decides which MCP tools the model may call; the call itself
//! travels control plane → tunnel → sandbox-agent → vault-bridge → MCP
//! server, so the server may sit on the customer's private network and its
//! token never leaves it. The same three messages travel twice: as tunnel
//! calls ([`crate::Request::McpListTools`], [`crate::Request::McpCallTool`],
//! [`crate::Request::McpValidate`]) and as agent-channel requests
//! ([`crate::bridge::ToBridge`]); the agent forwards them, keeps an
//! at-most-once record of tool calls by `tool_use_id`, and audits each call.
//!
//! The bridge chooses the credential: the first of `credentials` whose
//! binding is `static_bearer` or `mcp_oauth` with an `mcp_server_url` equal to
//! the server's `url` (compared after [`normalize_server_url`]). It adds
//! `Authorization: Bearer …`, refreshes `mcp_oauth` tokens (before expiry,
//! and once on a 401; one refresh in flight per credential) and writes the
//! new tokens back to its backend. No value ever appears in these messages.
//!
//! A failure to reach or use the server is not an RPC error: it is an
//! [`McpOutcome::Failed`] with an [`McpFailure`] code the harness maps to the
//! SDK's `session.error` types or to an `is_error` tool result.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::relay::EgressCredential;

/// Largest MCP tool result (its content blocks as JSON) the bridge passes
/// on; a larger one is [`McpFailure::TooLarge`]. Below the tunnel's frame cap.
pub const MCP_RESULT_MAX_BYTES: usize = 768 * 1024;

/// Longest MCP server name (the SDK's limit).
pub const MCP_SERVER_NAME_MAX_LEN: usize = 255;

/// One `mcp_servers` entry of an agent definition (`type: "url"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpServer {
    /// The server's name in the agent definition (`mcp_server_name`).
    pub name: String,
    /// Its Streamable HTTP endpoint (`https://mcp.internal/mcp`).
    pub url: String,
}

/// List a server's tools (`tools/list`, every page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpListTools {
    /// `sesn_...` (audited; the bridge keeps one MCP session per
    /// (session, server) and reuses it).
    pub session_id: String,
    /// The server.
    pub server: McpServer,
    /// The session's vault credentials (metadata only).
    #[serde(default)]
    pub credentials: Vec<EgressCredential>,
}

/// Call one tool (`tools/call`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpCallTool {
    /// `sesn_...`.
    pub session_id: String,
    /// The `agent.mcp_tool_use` event id: the idempotency key. The agent
    /// answers a repeated id from its record, or with
    /// [`McpFailure::OutcomeUnknown`] when an earlier attempt started and
    /// its outcome was never recorded; it never calls the server twice.
    pub tool_use_id: String,
    /// The server.
    pub server: McpServer,
    /// The session's vault credentials (metadata only).
    #[serde(default)]
    pub credentials: Vec<EgressCredential>,
    /// The tool's name on the server.
    pub tool: String,
    /// Its arguments (a JSON object).
    #[serde(default)]
    pub arguments: Value,
}

/// Probe an `mcp_oauth` (or `static_bearer`) credential for
/// `POST /v1/vaults/{vid}/credentials/{cid}/mcp_oauth_validate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpValidate {
    /// The credential (metadata; its binding names the server URL).
    pub credential: EgressCredential,
}

/// A tool a server offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpTool {
    /// Its name on the server.
    pub name: String,
    /// What it does, as the server says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its JSON Schema (an object schema).
    pub input_schema: Value,
}

/// The answer to [`McpListTools`] and [`McpCallTool`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpReply {
    /// What happened.
    #[serde(flatten)]
    pub outcome: McpOutcome,
    /// The vault credential the bridge used (`vcrd_...`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
    /// Whether the answer came from the agent's record of an earlier run
    /// with the same `tool_use_id` (the server was not called again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    /// The server sent `notifications/tools/list_changed` since this
    /// session's last `tools/list` of it: list again before offering its
    /// tools (the harness drops its cached list).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tools_changed: bool,
}

/// What an MCP request came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum McpOutcome {
    /// `tools/list` answered (all pages).
    Tools {
        /// The tools.
        tools: Vec<McpTool>,
    },
    /// `tools/call` answered. A tool that failed on the server is
    /// `is_error: true` here, not [`McpOutcome::Failed`].
    Called {
        /// Anthropic content blocks: `{"type":"text","text"}`,
        /// `{"type":"image","source":{"type":"base64","media_type","data"}}`
        /// (MCP images), resources as text.
        content: Vec<Value>,
        /// The server's `isError`.
        #[serde(default)]
        is_error: bool,
    },
    /// The request could not be made or answered.
    Failed {
        /// Why.
        failure: McpFailure,
        /// A sentence naming what failed (never a token).
        message: String,
    },
}

code_enum! {
    /// Why an MCP request failed ([`McpOutcome::Failed`]).
    McpFailure {
        /// The server could not be reached, refused the connection, failed
        /// TLS, or answered 5xx (`mcp_connection_failed_error`).
        ConnectionFailed => "connection_failed",
        /// 401/403 after the one refresh, a refresh that failed, or no
        /// credential for a server that wants one
        /// (`mcp_authentication_failed_error`).
        AuthenticationFailed => "authentication_failed",
        /// The server did not answer in time (a tool error).
        Timeout => "timeout",
        /// The server's answer is not valid MCP / JSON-RPC (a tool error).
        InvalidResponse => "invalid_response",
        /// The result is larger than [`MCP_RESULT_MAX_BYTES`] (a tool error).
        TooLarge => "too_large",
        /// The server is not allowed by the agent's local policy.
        PolicyDenied => "policy_denied",
        /// An earlier attempt with this `tool_use_id` started and its
        /// outcome was never recorded; not re-run (a tool error).
        OutcomeUnknown => "outcome_unknown",
        /// The credential's secret could not be had (backend down,
        /// archived, revoked).
        SecretUnavailable => "secret_unavailable",
        /// The agent has no vault-bridge (or it is down).
        NoBridge => "no_bridge",
        /// The request itself was invalid (bad URL, arguments not an object).
        InvalidRequest => "invalid_request",
    }
}

/// The SDK's validation object of `mcp_oauth_validate`, without the ids and
/// the time the API adds (`type`, `credential_id`, `vault_id`, `validated_at`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpValidation {
    /// `valid`, `invalid` or `unknown`.
    pub status: String,
    /// Whether the credential has a refresh token.
    pub has_refresh_token: bool,
    /// The MCP request that was probed, when one was.
    #[serde(default)]
    pub mcp_probe: Option<McpProbe>,
    /// The refresh attempt, when one was made.
    #[serde(default)]
    pub refresh: Option<RefreshProbe>,
}

/// `mcp_probe` of [`McpValidation`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpProbe {
    /// `initialize` or `tools/list`.
    pub method: String,
    /// What the server answered.
    #[serde(default)]
    pub http_response: Option<ProbeHttpResponse>,
}

/// `refresh` of [`McpValidation`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshProbe {
    /// `succeeded`, `failed`, `connect_error` or `no_refresh_token`.
    pub status: String,
    /// What the token endpoint answered.
    #[serde(default)]
    pub http_response: Option<ProbeHttpResponse>,
}

/// An HTTP answer in a validation object: tokens scrubbed from the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeHttpResponse {
    /// HTTP status.
    pub status_code: u16,
    /// `Content-Type`, if any.
    #[serde(default)]
    pub content_type: Option<String>,
    /// The body, scrubbed of every token value and cut to 4 KiB.
    pub body: String,
    /// Whether `body` was cut.
    pub body_truncated: bool,
}

/// The form of an MCP server URL that credentials are matched by: scheme and
/// host lowercased, default port dropped, one trailing `/` of the path
/// dropped, no query or fragment kept. `None` if it is not an http(s) URL.
pub fn normalize_server_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let mut authority = authority.to_ascii_lowercase();
    if let Some(stripped) = authority.strip_suffix(default_port) {
        authority = stripped.to_owned();
    }
    let path = path.strip_suffix('/').unwrap_or(path);
    Some(format!("{scheme}://{authority}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replies_have_a_flat_outcome_tag() {
        let r = McpReply {
            outcome: McpOutcome::Called {
                content: vec![json!({"type": "text", "text": "12:00"})],
                is_error: false,
            },
            credential_id: Some("vcrd_1".into()),
            replayed: false,
            tools_changed: false,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            json!({"outcome": "called", "content": [{"type": "text", "text": "12:00"}],
                   "is_error": false, "credential_id": "vcrd_1"})
        );
        assert_eq!(serde_json::from_value::<McpReply>(v).unwrap(), r);
        let f: McpReply = serde_json::from_value(json!({
            "outcome": "failed", "failure": "quota_exceeded", "message": "m"
        }))
        .unwrap();
        assert_eq!(
            f.outcome,
            McpOutcome::Failed {
                failure: McpFailure::Unknown("quota_exceeded".into()),
                message: "m".into()
            }
        );
    }

    #[test]
    fn server_urls_are_matched_in_one_form() {
        let n = |u| normalize_server_url(u);
        assert_eq!(
            n("HTTPS://MCP.Example.com:443/mcp/"),
            Some("https://mcp.example.com/mcp".into())
        );
        assert_eq!(
            n("https://mcp.example.com/mcp?x=1"),
            Some("https://mcp.example.com/mcp".into())
        );
        assert_eq!(
            n("http://127.0.0.1:8080"),
            Some("http://127.0.0.1:8080".into())
        );
        assert_eq!(n("ftp://x/y"), None);
        assert_eq!(n("https://user:pw@x/y"), None);
        assert_eq!(n("https:///y"), None);
    }
}
