//! The control plane's side of the agents' audit: what to do with each
//! [`AuditStatus`] an agent sends on its control stream (the gateway hands
//! them over, tagged with the agent id of the verified tunnel certificate),
//! and the recording of admin actions.
//!
//! A status carries the agent's audit health and, usually, its latest
//! signed checkpoint. [`CheckpointReceiver::receive`]:
//! 1. records the health (healthy or not, and the problem) for the agent;
//! 2. verifies the checkpoint's signature for this agent id
//!    (`pki::audit_key::verify_checkpoint`); an invalid one is refused: not
//!    stored, logged at warn and counted ([`CheckpointReceiver::refused`]);
//! 3. stores it through [`catalog::AuditStore::record_checkpoint`], which
//!    pins the agent's first public key (a later different key is stored with
//!    `key_changed`) and flags a checkpoint that goes backwards for its key
//!    (`rollback`); both flags are logged at warn. The same checkpoint
//!    received again (after a reconnect) is not stored twice.
//!
//! The stored checkpoints are what `sandbox-agent audit verify
//! --checkpoints` compares the agent's own log against: a log cut back
//! below, or replaced by something else than, a checkpoint the control plane
//! holds is detected there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use catalog::audit::{
    Actor, CheckpointOutcome, CheckpointRecord, NewAuditEvent, NewCheckpoint, Outcome,
};
use catalog::Catalog;
use protocol::audit::AuditStatus;
use time::OffsetDateTime;

/// Longest `problem` text kept (longer ones are cut).
const MAX_PROBLEM_CHARS: usize = 1024;
/// Longest `head`, `at`, `key_id`, `public_key` or `signature` accepted.
const MAX_FIELD_CHARS: usize = 256;

/// Why a received status was not (fully) taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiveError {
    /// The checkpoint's signature does not verify for this agent (peer misbehaved).
    #[error("agent {agent_id}: checkpoint refused: {source}")]
    BadSignature {
        /// The agent.
        agent_id: String,
        /// Why.
        source: pki::audit_key::AuditKeyError,
    },
    /// A checkpoint field is longer than any real one (peer misbehaved).
    #[error(
        "agent {agent_id}: checkpoint refused: {field} is longer than {MAX_FIELD_CHARS} characters"
    )]
    Oversized {
        /// The agent.
        agent_id: String,
        /// The field.
        field: &'static str,
    },
    /// The catalog failed (transient or a bug); the status may be lost.
    #[error("agent {agent_id}: storing audit status: {source}")]
    Store {
        /// The agent.
        agent_id: String,
        /// Why.
        source: catalog::CatalogError,
    },
}

/// What happened to a status's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The status carried no checkpoint (health only).
    NoCheckpoint,
    /// Stored (see its `key_changed` and `rollback` flags).
    Stored(Box<CheckpointRecord>),
    /// Already stored.
    Duplicate,
}

/// Takes agents' audit statuses into the catalog. Cheap to share.
#[derive(Debug)]
pub struct CheckpointReceiver {
    catalog: Arc<dyn Catalog>,
    refused: AtomicU64,
    store_failures: AtomicU64,
}

impl CheckpointReceiver {
    /// A receiver storing into `catalog`.
    pub fn new(catalog: Arc<dyn Catalog>) -> Self {
        Self {
            catalog,
            refused: AtomicU64::new(0),
            store_failures: AtomicU64::new(0),
        }
    }

    /// Checkpoints refused so far (bad signature or oversized field).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Statuses that could not be stored so far (catalog errors).
    pub fn store_failures(&self) -> u64 {
        self.store_failures.load(Ordering::Relaxed)
    }

    /// Take one status from `agent_id` (see the module docs). Logs what it
    /// does; the caller only needs the result for tests.
    pub async fn receive(
        &self,
        agent_id: &str,
        status: AuditStatus,
    ) -> Result<Received, ReceiveError> {
        let now = OffsetDateTime::now_utc();
        let problem = status
            .problem
            .map(|p| p.chars().take(MAX_PROBLEM_CHARS).collect::<String>());
        if !status.healthy {
            tracing::warn!(
                agent_id,
                problem = problem.as_deref().unwrap_or(""),
                "agent reports its audit log unhealthy"
            );
        }
        self.catalog
            .record_audit_health(agent_id, status.healthy, problem, now)
            .await
            .map_err(|source| self.store_failed(agent_id, source))?;
        let Some(cp) = status.checkpoint else {
            return Ok(Received::NoCheckpoint);
        };
        for (field, value) in [
            ("head", &cp.head),
            ("at", &cp.at),
            ("key_id", &cp.key_id),
            ("public_key", &cp.public_key),
            ("signature", &cp.signature),
        ] {
            if value.chars().count() > MAX_FIELD_CHARS {
                self.refused.fetch_add(1, Ordering::Relaxed);
                let e = ReceiveError::Oversized {
                    agent_id: agent_id.to_owned(),
                    field,
                };
                tracing::warn!(agent_id, error = %e, "audit checkpoint refused");
                return Err(e);
            }
        }
        if let Err(source) = pki::audit_key::verify_checkpoint(agent_id, &cp, None) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            let e = ReceiveError::BadSignature {
                agent_id: agent_id.to_owned(),
                source,
            };
            tracing::warn!(agent_id, seq = cp.seq, error = %e, refused_total = self.refused(), "audit checkpoint refused");
            return Err(e);
        }
        let new = NewCheckpoint {
            id: format!("audcp_{}", uuid::Uuid::now_v7().simple()),
            agent_id: agent_id.to_owned(),
            seq: cp.seq,
            head: cp.head,
            at: cp.at,
            key_id: cp.key_id,
            public_key: cp.public_key,
            signature: cp.signature,
            received_at: now,
        };
        match self.catalog.record_checkpoint(new).await {
            Ok(CheckpointOutcome::Stored(r)) => {
                if r.key_changed {
                    tracing::warn!(agent_id, seq = r.seq, key_id = %r.key_id, "audit checkpoint signed by another key than the agent's first one (stored, flagged key_changed)");
                }
                if r.rollback {
                    tracing::warn!(agent_id, seq = r.seq, key_id = %r.key_id, "audit checkpoint goes backwards or contradicts a stored one (stored, flagged rollback)");
                }
                tracing::debug!(agent_id, seq = r.seq, "audit checkpoint stored");
                Ok(Received::Stored(r))
            }
            Ok(CheckpointOutcome::Duplicate) => Ok(Received::Duplicate),
            Err(source) => Err(self.store_failed(agent_id, source)),
        }
    }

    fn store_failed(&self, agent_id: &str, source: catalog::CatalogError) -> ReceiveError {
        self.store_failures.fetch_add(1, Ordering::Relaxed);
        let e = ReceiveError::Store {
            agent_id: agent_id.to_owned(),
            source,
        };
        tracing::error!(agent_id, error = %e, "audit status not stored");
        e
    }
}

/// The uid of this process (the owner of `/proc/self`), for admin events
/// recorded by the CLI; `None` where `/proc` is not mounted.
pub fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Record one admin action (CLI or admin socket) as an audit event. A
/// failure is logged at error and does not change the action's result.
pub async fn record_admin_action(
    catalog: &dyn Catalog,
    uid: Option<u32>,
    action: &str,
    resource_ids: Vec<String>,
    ok: bool,
) {
    let event = NewAuditEvent {
        id: format!("audevt_{}", uuid::Uuid::now_v7().simple()),
        at: OffsetDateTime::now_utc(),
        actor: Actor::Admin { uid },
        remote_addr: None,
        action: action.to_owned(),
        resource_ids,
        status: if ok { 200 } else { 500 },
        outcome: if ok { Outcome::Ok } else { Outcome::Error },
        request_id: None,
    };
    if let Err(error) = catalog.record_audit_event(event).await {
        tracing::error!(%error, action, "admin action not recorded in the audit");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use catalog::audit::CheckpointQuery;
    use pki::audit_key::AuditKey;

    async fn receiver() -> (tempfile::TempDir, Arc<dyn Catalog>, CheckpointReceiver) {
        let dir = tempfile::tempdir().unwrap();
        let catalog: Arc<dyn Catalog> = Arc::new(
            catalog::SqliteCatalog::open_in_dir(dir.path())
                .await
                .unwrap(),
        );
        let r = CheckpointReceiver::new(catalog.clone());
        (dir, catalog, r)
    }

    fn status(key: &AuditKey, agent: &str, seq: u64, head: &str) -> AuditStatus {
        AuditStatus {
            healthy: true,
            problem: None,
            checkpoint: Some(key.checkpoint(agent, seq, head, "2026-12-06T20:00:00Z")),
        }
    }

    fn flags(r: Received) -> (bool, bool) {
        match r {
            Received::Stored(c) => (c.key_changed, c.rollback),
            other => panic!("not stored: {other:?}"),
        }
    }

    #[tokio::test]
    async fn valid_forged_key_change_and_rollback() {
        let (dir, catalog, r) = receiver().await;
        let k1 = AuditKey::load_or_generate(&dir.path().join("k1.key")).unwrap();
        let k2 = AuditKey::load_or_generate(&dir.path().join("k2.key")).unwrap();
        let agent = "agt_one";
        // valid: stored, first key pinned
        assert_eq!(
            flags(
                r.receive(agent, status(&k1, agent, 10, "aa"))
                    .await
                    .unwrap()
            ),
            (false, false)
        );
        // the same again (reconnect): not stored twice
        assert_eq!(
            r.receive(agent, status(&k1, agent, 10, "aa"))
                .await
                .unwrap(),
            Received::Duplicate
        );
        // forged: a changed head under the old signature
        let mut forged = status(&k1, agent, 11, "bb");
        if let Some(cp) = forged.checkpoint.as_mut() {
            cp.head = "cc".into();
        }
        assert!(matches!(
            r.receive(agent, forged).await,
            Err(ReceiveError::BadSignature { .. })
        ));
        // signed for another agent id
        assert!(matches!(
            r.receive(agent, status(&k1, "agt_other", 12, "dd")).await,
            Err(ReceiveError::BadSignature { .. })
        ));
        // oversized field
        let mut big = status(&k1, agent, 13, "ee");
        if let Some(cp) = big.checkpoint.as_mut() {
            cp.head = "f".repeat(1000);
        }
        assert!(matches!(
            r.receive(agent, big).await,
            Err(ReceiveError::Oversized { field: "head", .. })
        ));
        assert_eq!(r.refused(), 3);
        // forward on the pinned key
        assert_eq!(
            flags(
                r.receive(agent, status(&k1, agent, 20, "ff"))
                    .await
                    .unwrap()
            ),
            (false, false)
        );
        // backwards: stored, flagged rollback
        assert_eq!(
            flags(
                r.receive(agent, status(&k1, agent, 15, "gg"))
                    .await
                    .unwrap()
            ),
            (false, true)
        );
        // same seq, other head: rollback
        assert_eq!(
            flags(
                r.receive(agent, status(&k1, agent, 20, "hh"))
                    .await
                    .unwrap()
            ),
            (false, true)
        );
        // another key: key_changed
        assert_eq!(
            flags(r.receive(agent, status(&k2, agent, 1, "ii")).await.unwrap()),
            (true, false)
        );
        // health only, unhealthy
        let sick = AuditStatus {
            healthy: false,
            problem: Some("writing audit.jsonl: No space left on device".into()),
            checkpoint: None,
        };
        assert_eq!(
            r.receive(agent, sick).await.unwrap(),
            Received::NoCheckpoint
        );
        let state = catalog.audit_state(agent).await.unwrap().unwrap();
        assert!(!state.healthy);
        assert_eq!(state.last_seq, Some(1));
        assert_eq!(
            state.pinned_public_key.as_deref(),
            Some(k1.public_key_b64())
        );
        let page = catalog
            .list_checkpoints(
                agent,
                CheckpointQuery {
                    after_id: None,
                    limit: 100,
                },
            )
            .await
            .unwrap();
        let seqs: Vec<u64> = page.items.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, vec![10, 20, 15, 20, 1], "refused ones are not stored");
        // every stored one verifies
        for c in &page.items {
            let cp = protocol::audit::AuditCheckpoint {
                seq: c.seq,
                head: c.head.clone(),
                at: c.at.clone(),
                key_id: c.key_id.clone(),
                public_key: c.public_key.clone(),
                signature: c.signature.clone(),
            };
            pki::audit_key::verify_checkpoint(agent, &cp, None).unwrap();
        }
    }
}
