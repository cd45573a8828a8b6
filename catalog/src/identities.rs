//! Enrolled agents' identities, shared by every control-plane replica
//! (migration 5): who is enrolled (agent id, environment), the serial and
//! expiry of the certificate last issued to it, and whether it is revoked.
//!
//! Each replica keeps its own identity database (pki's `identity.db`) as
//! the local store and mirrors every enrollment, renewal and revocation
//! here; the catalog is the shared copy, so a replica can renew and list an
//! agent enrolled at another, and every replica's gateway learns of a
//! revocation made at any of them by reading [`EnrolledAgents::revoked_agent_ids`].
//!
//! Invariants every implementation keeps: a revocation is never undone
//! (recording the agent again keeps `revoked_at`); the first revocation's
//! time is kept; the environment of an agent never changes.

use crate::error::Result;

/// One enrolled agent, as the catalog holds it. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolledAgent {
    /// The agent id (`agt_…`, from its certificate).
    pub agent_id: String,
    /// Its environment.
    pub environment_id: String,
    /// When it enrolled.
    pub enrolled_at: i64,
    /// The peer address it enrolled from, when known.
    pub enrolled_from: Option<String>,
    /// Serial of the certificate last issued to it.
    pub cert_serial: String,
    /// Expiry of that certificate.
    pub cert_not_after: i64,
    /// When it was revoked (`None`: not revoked).
    pub revoked_at: Option<i64>,
}

/// What [`EnrolledAgents::revoke_enrolled_agent`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// Revoked now, at this time.
    Revoked {
        /// Unix seconds.
        revoked_at: i64,
    },
    /// It was revoked before, at this time (kept).
    AlreadyRevoked {
        /// Unix seconds.
        revoked_at: i64,
    },
    /// No such agent in the catalog.
    Unknown,
}

/// The shared record of enrolled agents. See the module docs.
#[async_trait::async_trait]
pub trait EnrolledAgents: Send + Sync {
    /// Record an enrollment or a renewal: inserts the agent, or updates its
    /// certificate serial and expiry (never its environment, enrollment time
    /// or revocation).
    async fn record_enrolled_agent(&self, agent: EnrolledAgent) -> Result<()>;

    /// The agent, if enrolled (revoked ones included).
    async fn enrolled_agent(&self, agent_id: &str) -> Result<Option<EnrolledAgent>>;

    /// Every enrolled agent, oldest enrollment first (ties by id).
    async fn list_enrolled_agents(&self) -> Result<Vec<EnrolledAgent>>;

    /// Revoke the agent at `at` (Unix seconds); idempotent.
    async fn revoke_enrolled_agent(&self, agent_id: &str, at: i64) -> Result<Revocation>;

    /// Ids of every revoked agent, sorted (what each replica's gateway
    /// polls; an indexed read of the revoked rows only).
    async fn revoked_agent_ids(&self) -> Result<Vec<String>>;
}
