//! The set of revoked agents, consulted by the tunnel's client-certificate
//! verifier on every handshake. Revocation is by agent id: every certificate
//! ever issued to a revoked agent is refused. The set is persisted by
//! [`crate::store`]; this type is its in-memory, lock-protected view, cheap to
//! clone and share between the verifier and the admin surface.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use crate::identity::AgentId;

/// Shared set of revoked agent ids.
#[derive(Debug, Clone, Default)]
pub struct RevocationSet {
    inner: Arc<RwLock<HashSet<AgentId>>>,
}

impl RevocationSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A set holding `ids`.
    pub fn from_ids(ids: impl IntoIterator<Item = AgentId>) -> Self {
        Self {
            inner: Arc::new(RwLock::new(ids.into_iter().collect())),
        }
    }

    /// Whether `agent_id` is revoked.
    pub fn is_revoked(&self, agent_id: &AgentId) -> bool {
        // A poisoned lock only means a writer panicked mid-insert of a
        // HashSet, which leaves it consistent: keep serving.
        match self.inner.read() {
            Ok(g) => g.contains(agent_id),
            Err(p) => p.into_inner().contains(agent_id),
        }
    }

    /// Add `agent_id`; returns false if it was already revoked.
    pub fn insert(&self, agent_id: AgentId) -> bool {
        match self.inner.write() {
            Ok(mut g) => g.insert(agent_id),
            Err(p) => p.into_inner().insert(agent_id),
        }
    }

    /// Number of revoked agents.
    pub fn len(&self) -> usize {
        match self.inner.read() {
            Ok(g) => g.len(),
            Err(p) => p.into_inner().len(),
        }
    }

    /// Whether no agent is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
