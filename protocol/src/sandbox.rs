//! Message shapes of the sandbox calls carried over the tunnel: `provision`,
//! `execute`, `destroy`, `list_sandboxes`.
//!
//! Tool names and inputs follow Anthropic's `agent_toolset_20260401`; inputs
//! are carried as JSON so the agent (not the wire) validates each tool's schema.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `provision`: ask the agent for a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ProvisionRequest {
    /// Session the sandbox serves (a label on the container; also used to
    /// make provision idempotent per session when `reuse_for_session` is set).
    pub session_id: Option<String>,
    /// Image reference; `None` means the agent's configured default image.
    pub image: Option<String>,
    /// CPU limit in cores (fractional allowed).
    pub cpu: Option<f64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// Maximum number of processes.
    pub pids: Option<u64>,
    /// Writable disk limit in bytes, where the storage driver allows it.
    pub disk_bytes: Option<u64>,
    /// Network policy; `None` (the default) means no network at all.
    pub network: Option<NetworkPolicy>,
    /// Non-secret environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory inside the sandbox.
    pub workdir: Option<String>,
    /// Time to live in seconds; the agent reaps the sandbox after it.
    pub ttl_seconds: Option<u64>,
    /// Extra labels (the agent adds its own ownership labels).
    pub labels: BTreeMap<String, String>,
    /// Resources the session names (repositories, MCP servers), resolved by the
    /// agent and its local bridge; never carries credentials.
    pub resources: Vec<serde_json::Value>,
    /// The session's vault credentials (from its `vault_ids`), metadata
    /// only: the agent passes them to its vault-bridge, which builds the
    /// sandbox's egress policy from them.
    pub credentials: Vec<crate::relay::EgressCredential>,
    /// Hosts the sandbox may reach through the bridge besides the
    /// repositories' and credentials' hosts (the environment's
    /// `networking.allowed_hosts`); the agent's own policy still decides.
    pub allowed_hosts: Vec<String>,
}

/// Network access for a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NetworkPolicy {
    /// No network interface but loopback.
    None,
    /// A named network the agent's policy allows.
    Named {
        /// Docker network name.
        name: String,
    },
}

/// Result of `provision`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provisioned {
    /// Agent-assigned sandbox id (`sbx_…`).
    pub sandbox_id: String,
    /// Image actually used.
    pub image: String,
    /// Whether the sandbox came from the warm pool.
    #[serde(default)]
    pub from_pool: bool,
    /// Resources that could not be set up (a repository that did not
    /// clone); the sandbox is usable without them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_errors: Vec<ResourceError>,
}

/// A session resource the agent could not set up at provision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceError {
    /// The SDK's error type: `repository_clone_error`,
    /// `repository_authentication_error`, `repository_checkout_error`,
    /// `repository_forbidden_error`, `repository_not_found_error`.
    #[serde(rename = "type")]
    pub error_type: String,
    /// The repository's URL.
    pub repository_url: String,
    /// What went wrong (never a secret).
    pub message: String,
}

/// `execute`: run one tool call in a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecuteRequest {
    /// Target sandbox.
    pub sandbox_id: String,
    /// The `agent.tool_use` event id: the idempotency key. A repeated call with
    /// the same id returns the recorded result instead of running again.
    pub tool_use_id: String,
    /// Tool name (`bash`, `read`, `write`, `edit`, `glob`, `grep`).
    pub name: String,
    /// Tool input as published for `agent_toolset_20260401`.
    pub input: serde_json::Value,
    /// Whether the caller wants output streamed as it is produced (bash).
    #[serde(default)]
    pub stream: bool,
}

/// A tool result, as the model will see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    /// Content blocks (`{"type":"text","text":…}`, images, …).
    pub content: Vec<serde_json::Value>,
    /// True when the tool failed; a failure is a result, never an RPC error.
    #[serde(default)]
    pub is_error: bool,
    /// How this result was obtained.
    #[serde(default)]
    pub disposition: Disposition,
}

impl ToolResult {
    /// A single text block result.
    pub fn text(text: impl Into<String>, is_error: bool) -> Self {
        Self {
            content: vec![serde_json::json!({"type": "text", "text": text.into()})],
            is_error,
            disposition: Disposition::Ran,
        }
    }
}

/// Whether a result comes from running the tool now, from the agent's record of
/// an earlier run with the same `tool_use_id`, or is unknown (the call may or
/// may not have run, e.g. the sandbox died mid-call before anything was recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// Ran for this request.
    #[default]
    Ran,
    /// Answered from the agent's execution record.
    Replayed,
    /// The outcome of an earlier attempt is unknown.
    Unknown,
}

/// `destroy`: remove a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestroyRequest {
    /// Sandbox to remove.
    pub sandbox_id: String,
}

/// One entry of `list_sandboxes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxInfo {
    /// Sandbox id.
    pub sandbox_id: String,
    /// Session it serves, if any.
    pub session_id: Option<String>,
    /// Image.
    pub image: String,
    /// Lifecycle state as the agent sees it (`running`, `exited`, …).
    pub state: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Expiry, RFC 3339, when a TTL is set.
    pub expires_at: Option<String>,
}

/// A sandbox call that failed as an RPC. Tool failures are never this: they
/// are a [`ToolResult`] with `is_error`. This is for policy refusals, unknown
/// sandboxes, malformed requests, an unavailable container engine and bugs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxCallError {
    /// Machine-readable class.
    pub code: SandboxErrorCode,
    /// Human-readable message naming the rule, id or field at fault.
    pub message: String,
    /// For `policy_denied`: the policy rule (config key) that refused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// Class of a [`SandboxCallError`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxErrorCode {
    /// The agent's local policy refused the request (the caller should not retry).
    PolicyDenied,
    /// No sandbox with that id is owned by this agent.
    UnknownSandbox,
    /// The request is malformed (caller misused the API).
    BadRequest,
    /// Transient: the container engine is unreachable or capacity is exhausted; retry later.
    Unavailable,
    /// A bug or an unexpected fault in the agent.
    Internal,
    /// A code this version does not know.
    #[serde(other)]
    Unknown,
}
