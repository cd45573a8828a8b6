//! The harness's view of the hands: provision a sandbox for a session, run a
//! tool call in it. The control plane implements [`Hands`] over the tunnel to
//! the sandbox-agent; tests use an in-process double.
//!
//! Contract the harness relies on:
//! - `provision` is idempotent per session: it returns the session's live
//!   sandbox if there is one, else makes a new one. The harness keeps no
//!   sandbox id across wakes; it asks again.
//! - `execute` is idempotent per `tool_use_id` (the `agent.tool_use` event
//!   id): a call that already ran is answered from the agent's record
//!   ([`Disposition::Replayed`]); one whose outcome cannot be known (the
//!   sandbox died mid-call) says so ([`Disposition::Unknown`], `is_error`).
//! - A tool failure is a [`ToolOutput`] with `is_error`, never an `Err`.
//!   `Err` means the call could not be made.
//! - MCP: `list_mcp_tools` lists a server's tools, `call_mcp_tool` calls one,
//!   both through the session's environment (agent → vault-bridge → server).
//!   `call_mcp_tool` is idempotent per `tool_use_id` (the `agent.mcp_tool_use`
//!   event id) like `execute`: a repeat is answered from the agent's record
//!   ([`McpToolOutput::replayed`]) or is [`McpFailureKind::OutcomeUnknown`];
//!   the server is never called twice. A failure to reach or use the server
//!   is an [`McpFailure`] (inner `Err`), not a [`HandsError`]; `HandsError`
//!   means the request did not reach an agent. Hands without an MCP path
//!   keep the default methods, which refuse.

use serde_json::Value;

/// What to provision.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisionSpec {
    /// The session the sandbox serves.
    pub session_id: String,
    /// The session's `environment_id`.
    pub environment_id: Option<String>,
    /// The session's `resources` (repositories, files, ...), as the API stored them.
    pub resources: Vec<Value>,
    /// The session's `vault_ids`: the credentials its sandbox may use.
    pub vault_ids: Vec<String>,
}

/// A provisioned sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SandboxRef {
    /// Its id (unique across agents).
    pub sandbox_id: String,
    /// Resources that could not be set up when it was made (a repository
    /// that did not clone); the harness reports each as a `session.error`.
    pub resource_errors: Vec<ResourceFailure>,
}

/// A session resource the hands could not set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceFailure {
    /// The SDK's error type (`repository_clone_error`, ...).
    pub error_type: String,
    /// The repository's URL.
    pub repository_url: String,
    /// What went wrong.
    pub message: String,
}

/// One tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The `agent.tool_use` event id: the idempotency key.
    pub tool_use_id: String,
    /// Tool name (`bash`, `read`, ...).
    pub name: String,
    /// Tool input.
    pub input: Value,
}

/// How a result was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Disposition {
    /// The tool ran for this request.
    #[default]
    Ran,
    /// Answered from the agent's record of an earlier run with this id.
    Replayed,
    /// An earlier attempt may or may not have run; nobody knows.
    Unknown,
}

/// A tool's result, as the model will see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    /// Content blocks (`{"type":"text","text":…}`, images, ...).
    pub content: Vec<Value>,
    /// Whether the tool failed.
    pub is_error: bool,
    /// How it was obtained.
    pub disposition: Disposition,
}

/// Why a hands call could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandsError {
    /// Transient: no agent connected, tunnel down, engine busy. Nothing ran;
    /// retrying later may succeed.
    #[error("hands unavailable for session {session_id}: {message}")]
    Unavailable {
        /// Session.
        session_id: String,
        /// What failed.
        message: String,
    },
    /// The sandbox no longer exists (expired, destroyed) and nothing ran:
    /// provision again.
    #[error("sandbox {sandbox_id} is gone")]
    SandboxGone {
        /// The sandbox.
        sandbox_id: String,
    },
    /// Refused by policy or invalid: retrying will not help. The model is told.
    #[error("hands refused the call for session {session_id}: {message}")]
    Refused {
        /// Session.
        session_id: String,
        /// Why (names the rule or field).
        message: String,
    },
}

impl HandsError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// The session an MCP request is made for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct McpScope {
    /// `sesn_...`.
    pub session_id: String,
    /// The session's `environment_id` (whose agents make the call).
    pub environment_id: Option<String>,
    /// The session's `vault_ids` (the bridge picks the server's credential
    /// among them by URL).
    pub vault_ids: Vec<String>,
}

/// One `mcp_servers` entry of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServerRef {
    /// `mcp_server_name`.
    pub name: String,
    /// Its Streamable HTTP URL.
    pub url: String,
}

/// A tool an MCP server offers.
#[derive(Debug, Clone, PartialEq)]
pub struct McpToolInfo {
    /// Its name on the server.
    pub name: String,
    /// What it does, as the server says.
    pub description: Option<String>,
    /// Its JSON Schema (an object schema).
    pub input_schema: Value,
}

/// What an MCP tool call returned.
#[derive(Debug, Clone, PartialEq)]
pub struct McpToolOutput {
    /// Anthropic content blocks (text, image, ...).
    pub content: Vec<Value>,
    /// The server's `isError`.
    pub is_error: bool,
    /// Answered from the agent's record of an earlier attempt with this id.
    pub replayed: bool,
    /// The server said its tool list changed: list it again before the
    /// next model call.
    pub tools_changed: bool,
}

/// Why an MCP request failed at the bridge or the server (the protocol's
/// `McpFailure` codes).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum McpFailureKind {
    /// Server unreachable, TLS failure or 5xx (`mcp_connection_failed_error`).
    ConnectionFailed,
    /// 401/403 after a refresh, a failed refresh, or no credential
    /// (`mcp_authentication_failed_error`).
    AuthenticationFailed,
    /// The server did not answer in time.
    Timeout,
    /// Not valid MCP / JSON-RPC.
    InvalidResponse,
    /// The result is larger than the bridge passes on.
    TooLarge,
    /// Refused by the agent's local policy.
    PolicyDenied,
    /// An earlier attempt with this id started and its outcome was never
    /// recorded; not run again.
    OutcomeUnknown,
    /// The credential's secret could not be had (backend down, revoked).
    SecretUnavailable,
    /// The agent has no vault-bridge (or it is down).
    NoBridge,
    /// The request was invalid (bad URL, arguments not an object).
    InvalidRequest,
    /// A code this harness does not know.
    Other(String),
}

impl McpFailureKind {
    /// The wire code (`connection_failed`, ...).
    pub fn code(&self) -> &str {
        match self {
            Self::ConnectionFailed => "connection_failed",
            Self::AuthenticationFailed => "authentication_failed",
            Self::Timeout => "timeout",
            Self::InvalidResponse => "invalid_response",
            Self::TooLarge => "too_large",
            Self::PolicyDenied => "policy_denied",
            Self::OutcomeUnknown => "outcome_unknown",
            Self::SecretUnavailable => "secret_unavailable",
            Self::NoBridge => "no_bridge",
            Self::InvalidRequest => "invalid_request",
            Self::Other(c) => c,
        }
    }

    /// The kind of a wire code.
    pub fn from_code(code: &str) -> Self {
        match code {
            "connection_failed" => Self::ConnectionFailed,
            "authentication_failed" => Self::AuthenticationFailed,
            "timeout" => Self::Timeout,
            "invalid_response" => Self::InvalidResponse,
            "too_large" => Self::TooLarge,
            "policy_denied" => Self::PolicyDenied,
            "outcome_unknown" => Self::OutcomeUnknown,
            "secret_unavailable" => Self::SecretUnavailable,
            "no_bridge" => Self::NoBridge,
            "invalid_request" => Self::InvalidRequest,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// An MCP request that failed: why, and a sentence naming what failed
/// (never a token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpFailure {
    /// Why.
    pub kind: McpFailureKind,
    /// What failed.
    pub message: String,
    /// The agent answered from its record of an earlier attempt with this
    /// `tool_use_id`: sending it again will not reach the server.
    pub replayed: bool,
}

/// The answer of an MCP request that reached an agent.
pub type McpAnswer<T> = Result<T, McpFailure>;

/// Sandboxes, as the harness uses them. See the module documentation for
/// the contract.
#[async_trait::async_trait]
pub trait Hands: Send + Sync + std::fmt::Debug {
    /// The session's sandbox, made if needed.
    async fn provision(&self, spec: &ProvisionSpec) -> Result<SandboxRef, HandsError>;

    /// Run (or answer from record) one tool call.
    async fn execute(
        &self,
        sandbox: &SandboxRef,
        call: &ToolCall,
    ) -> Result<ToolOutput, HandsError>;

    /// List `server`'s tools (`tools/list`, every page) for the session.
    async fn list_mcp_tools(
        &self,
        scope: &McpScope,
        server: &McpServerRef,
    ) -> Result<McpAnswer<Vec<McpToolInfo>>, HandsError> {
        let _ = server;
        Err(no_mcp(scope))
    }

    /// Call `tool` on `server` with `arguments`, at most once per
    /// `tool_use_id` (the `agent.mcp_tool_use` event id).
    async fn call_mcp_tool(
        &self,
        scope: &McpScope,
        tool_use_id: &str,
        server: &McpServerRef,
        tool: &str,
        arguments: &Value,
    ) -> Result<McpAnswer<McpToolOutput>, HandsError> {
        let _ = (tool_use_id, server, tool, arguments);
        Err(no_mcp(scope))
    }
}

fn no_mcp(scope: &McpScope) -> HandsError {
    HandsError::Refused {
        session_id: scope.session_id.clone(),
        message: "these hands have no path to MCP servers".to_owned(),
    }
}
