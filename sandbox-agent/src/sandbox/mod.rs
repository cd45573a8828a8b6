//! Sandboxes: hardened Docker containers driven through bollard, each running
//! the static in-sandbox executor as its main process, with tool calls carried
//! over the executor's attached stdio (no `docker exec` per call).
//!
//! [`SandboxService`] is what the tunnel dispatcher calls: `provision`,
//! `execute`, `destroy`, `list`. A tool failure (bad input, command failed,
//! container died, OOM) is a [`ToolResult`] with `is_error`; a
//! [`SandboxError`] is for policy refusals, unknown sandboxes, malformed
//! requests, an unreachable engine and internal faults, and
//! [`to_wire_error`] is the one place that maps it to the wire.
//!
//! Modules: [`config`] (`[sandbox]`, `[policy]`, `[pool]`), [`policy`]
//! (pure checks), [`docker`] (container spec and engine calls),
//! [`executor_client`] (framed stdio to one executor), [`record`]
//! (`tool_use_id` idempotency, persisted), [`pool`] (warm containers),
//! [`service`] (lifecycle: reconcile, reaping, the calls), [`bridge`] (the
//! optional egress channel: the vault-bridge agent-channel client and the
//! in-sandbox paths).

pub mod bridge;
pub mod bridge_audit;
pub mod config;
pub mod docker;
pub mod executor_client;
pub mod policy;
pub mod pool;
pub mod record;
pub mod repositories;
pub mod service;

pub use protocol::sandbox::{
    DestroyRequest, Disposition, ExecuteRequest, ProvisionRequest, Provisioned, SandboxCallError,
    SandboxErrorCode, SandboxInfo, ToolResult,
};
pub use service::SandboxService;

use policy::RequestRefused;

/// Why a sandbox call failed as an RPC (never a tool failure).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The local policy refused the request, or the request is malformed.
    #[error(transparent)]
    Refused(#[from] RequestRefused),
    /// No sandbox with this id is owned by this agent.
    #[error("unknown sandbox `{sandbox_id}`")]
    UnknownSandbox {
        /// The id asked for.
        sandbox_id: String,
    },
    /// The Docker Engine failed or is unreachable (transient from the caller's view).
    #[error("docker engine error during {operation}: {source}")]
    Engine {
        /// What the agent was doing (`create container`, ...).
        operation: &'static str,
        /// What bollard said.
        source: bollard::errors::Error,
    },
    /// A new sandbox's executor did not come up.
    #[error("executor of sandbox `{sandbox_id}` did not start: {message}")]
    ExecutorStart {
        /// The sandbox.
        sandbox_id: String,
        /// What happened.
        message: String,
    },
    /// The execution record or the agent's state files failed.
    #[error("agent state at {path} failed: {source}")]
    State {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The local vault-bridge's agent channel failed: the sandbox would have
    /// no egress, so provision fails (closed) instead.
    #[error("egress channel of sandbox `{sandbox_id}` failed: {source}")]
    Bridge {
        /// The sandbox.
        sandbox_id: String,
        /// What the agent channel said.
        source: bridge::BridgeError,
    },
    /// The service is shutting down.
    #[error("the sandbox service is shutting down")]
    ShuttingDown,
    /// The call's `start` audit line could not be written, so nothing ran
    /// (fail closed; see [`crate::audit`]).
    #[error("refused: the audit record could not be written ({0}); nothing ran")]
    AuditUnavailable(#[source] crate::audit::AuditError),
    /// A bug: an invariant did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Map a [`SandboxError`] to what the control plane sees. The only place
/// that does so.
pub fn to_wire_error(error: &SandboxError) -> SandboxCallError {
    let (code, rule) = match error {
        SandboxError::Refused(RequestRefused::Policy { rule, .. }) => {
            (SandboxErrorCode::PolicyDenied, Some((*rule).to_owned()))
        }
        SandboxError::Refused(_) => (SandboxErrorCode::BadRequest, None),
        SandboxError::UnknownSandbox { .. } => (SandboxErrorCode::UnknownSandbox, None),
        SandboxError::Engine { .. }
        | SandboxError::ExecutorStart { .. }
        | SandboxError::Bridge { .. }
        | SandboxError::AuditUnavailable(_)
        | SandboxError::ShuttingDown => (SandboxErrorCode::Unavailable, None),
        SandboxError::State { .. } | SandboxError::Internal(_) => {
            (SandboxErrorCode::Internal, None)
        }
    };
    SandboxCallError {
        code,
        message: error.to_string(),
        rule,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_errors_carry_code_and_rule() {
        let e = SandboxError::Refused(RequestRefused::Policy {
            rule: "policy.max_pids",
            message: "asked 9000".into(),
        });
        let w = to_wire_error(&e);
        assert_eq!(w.code, SandboxErrorCode::PolicyDenied);
        assert_eq!(w.rule.as_deref(), Some("policy.max_pids"));
        assert!(w.message.contains("policy.max_pids"));
        let w = to_wire_error(&SandboxError::UnknownSandbox {
            sandbox_id: "sbx_1".into(),
        });
        assert_eq!(w.code, SandboxErrorCode::UnknownSandbox);
        assert!(w.message.contains("sbx_1"));
    }
}
