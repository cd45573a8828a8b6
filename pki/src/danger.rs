//! Operations that bypass normal issuance rules. For tests only: making
//! certificates that are already expired, or certificates from a CA nobody
//! trusts. Nothing in the product calls these.

use std::time::{Duration, SystemTime};

use rcgen::PublicKeyData;

use crate::ca::{CaError, CertificateAuthority, IssuedCertificate};
use crate::identity::{AgentId, EnvironmentId};

/// Issue an agent certificate as if it had been issued at `issued_at`
/// (for example an hour ago with a one-minute lifetime: already expired).
pub fn issue_agent_at(
    ca: &CertificateAuthority,
    agent_id: &AgentId,
    environment_id: &EnvironmentId,
    public_key: &impl PublicKeyData,
    issued_at: SystemTime,
    lifetime: Duration,
) -> Result<IssuedCertificate, CaError> {
    ca.issue_agent_at(agent_id, environment_id, public_key, issued_at, lifetime)
}
