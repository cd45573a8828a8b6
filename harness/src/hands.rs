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
}
