//! What only the control plane knows: the sandbox-agents (enrolled,
//! connected, revoked), their sandboxes, where a session's sandbox runs, and
//! revocation. The control plane implements [`ControlPlane`] over its
//! gateway registry and identity store (`control-plane/src/console.rs`).

use time::OffsetDateTime;

/// An agent's condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    /// At least one live tunnel connection.
    Connected,
    /// Enrolled, not revoked, not connected.
    Disconnected,
    /// Revoked: its certificates are refused.
    Revoked,
}

impl AgentState {
    /// `connected`, `disconnected` or `revoked`.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Connected => "connected",
            AgentState::Disconnected => "disconnected",
            AgentState::Revoked => "revoked",
        }
    }
}

/// One sandbox-agent as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentView {
    /// Its id (from its certificate).
    pub agent_id: String,
    /// The environment it serves.
    pub environment_id: String,
    /// Connected, disconnected or revoked.
    pub state: AgentState,
    /// `quic` or `tcp` while connected.
    pub transport: Option<String>,
    /// Software version from its hello, while connected.
    pub version: Option<String>,
    /// Expiry of its latest certificate.
    pub cert_not_after: Option<OffsetDateTime>,
    /// Last heartbeat, while connected.
    pub last_heartbeat: Option<OffsetDateTime>,
    /// Since when connected.
    pub connected_since: Option<OffsetDateTime>,
    /// Remote address of the connection.
    pub remote_addr: Option<String>,
    /// When it enrolled.
    pub enrolled_at: Option<OffsetDateTime>,
    /// When it was revoked.
    pub revoked_at: Option<OffsetDateTime>,
    /// Sandboxes it reports (asked live; `None` when not connected or it did
    /// not answer in time).
    pub sandboxes: Option<usize>,
}

/// A sandbox as its agent lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxView {
    /// Sandbox id.
    pub sandbox_id: String,
    /// The session it serves.
    pub session_id: Option<String>,
    /// Image.
    pub image: String,
    /// `running`, `exited`, ...
    pub state: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Expiry, RFC 3339.
    pub expires_at: Option<String>,
}

/// Where a session's sandbox is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The agent holding it.
    pub agent_id: String,
    /// The sandbox.
    pub sandbox_id: String,
}

/// What a revocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeOutcome {
    /// False if it was revoked already.
    pub newly_revoked: bool,
    /// Live connections closed.
    pub connections_closed: usize,
}

/// Why the control plane could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlPlaneError {
    /// Not a well-formed agent id.
    #[error("invalid agent id {0:?}")]
    InvalidAgentId(String),
    /// No such agent is enrolled.
    #[error("agent {0} is not enrolled")]
    UnknownAgent(String),
    /// The agent is not connected (for a live question).
    #[error("agent {0} is not connected")]
    NotConnected(String),
    /// The identity store or an agent failed.
    #[error("{0}")]
    Unavailable(String),
}

/// The control plane's side of the console.
#[async_trait::async_trait]
pub trait ControlPlane: Send + Sync + std::fmt::Debug {
    /// Every enrolled agent (connected or not, revoked included), with the
    /// live details of connected ones.
    async fn agents(&self) -> Result<Vec<AgentView>, ControlPlaneError>;

    /// The sandboxes `agent_id` lists now.
    async fn sandboxes(&self, agent_id: &str) -> Result<Vec<SandboxView>, ControlPlaneError>;

    /// Where the session's sandbox runs now, asked of the connected agents
    /// of `environment_id` (`None`: none holds one, or none answered).
    async fn placement(&self, session_id: &str, environment_id: &str) -> Option<Placement>;

    /// Revokes the agent the way the admin socket does (persisted, added to
    /// the revocation set, live connections closed).
    async fn revoke(&self, agent_id: &str) -> Result<RevokeOutcome, ControlPlaneError>;
}
