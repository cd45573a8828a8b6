//! The harness: a stateless loop that reads a session's log, rebuilds the model
//! request from events alone, calls the model and routes tool calls to the
//! sandbox. Nothing it holds in memory is needed after a crash: `wake` resumes.
//!
//! It owns the agent loop and its crash-safety rules ([`wake`]), the fold that
//! turns a log into a conversation ([`view`]), the published shapes of the
//! events it writes ([`events`]), the session's agent configuration as the
//! loop needs it ([`agent`]), the [`Hands`] trait through which it reaches
//! sandboxes and MCP servers, the MCP tools' names and list cache
//! ([`mcp`]), and the [`Supervisor`] that decides when wakes run (on notify,
//! on start, after a lease expires). It does not own storage (the
//! `session-store` crate), the wire to the model (the `model` crate), the
//! tunnel to sandbox-agents (the control plane implements [`Hands`]) or the
//! public API (which appends user events and calls [`Supervisor::notify`]).
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod agent;
pub mod config;
pub mod events;
pub mod hands;
pub mod mcp;
pub mod supervisor;
pub mod view;
pub mod wake;

pub use agent::{
    AgentConfig, AgentConfigError, McpServerConfig, McpToolConfig, McpToolset, ToolKind, ToolSpec,
};
pub use config::{
    Budget, ConfigError, HarnessConfig, ProvisioningMode, RawHarnessConfig, RetryPolicy,
};
pub use events::{Permission, StopReason};
pub use hands::{
    Disposition, Hands, HandsError, McpAnswer, McpFailure, McpFailureKind, McpScope, McpServerRef,
    McpToolInfo, McpToolOutput, ProvisionSpec, ResourceFailure, SandboxRef, ToolCall, ToolOutput,
};
pub use supervisor::Supervisor;
pub use view::SessionView;
pub use wake::{Harness, HarnessError, NoopObserver, Observer, WakeOutcome};
