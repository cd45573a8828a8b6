//! The control plane's audit storage: the agents' signed audit checkpoints
//! (with their audit health) and one row per state-changing API request or
//! admin action.
//!
//! Checkpoints arrive with their signature already verified by the control
//! plane; the store classifies each one against what it holds for the agent
//! ([`classify`], inside the same transaction as the insert):
//! - the first public key seen for an agent is pinned; a checkpoint signed by
//!   another key is stored with `key_changed`;
//! - among one key's checkpoints, a lower `seq` than the highest stored, or
//!   the same `seq` with another `head`, is stored with `rollback`;
//! - the exact checkpoint already stored (same key, `seq` and `head`, e.g.
//!   resent after a reconnect) is not stored again.
//!
//! Audit events never hold request bodies or secrets: ids, an action name,
//! the outcome.

use time::OffsetDateTime;

use crate::error::Result;
use crate::types::Page;

/// A checkpoint received from an agent, signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCheckpoint {
    /// The id (`audcp_…`, chosen by the caller).
    pub id: String,
    /// The agent that sent it (its verified tunnel identity).
    pub agent_id: String,
    /// Lines covered.
    pub seq: u64,
    /// Hash of line `seq`.
    pub head: String,
    /// When the agent made it, as signed (RFC 3339).
    pub at: String,
    /// Key id.
    pub key_id: String,
    /// Public key, base64.
    pub public_key: String,
    /// Signature, base64.
    pub signature: String,
    /// When the control plane received it.
    pub received_at: OffsetDateTime,
}

/// A stored checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRecord {
    /// The id.
    pub id: String,
    /// The agent.
    pub agent_id: String,
    /// Lines covered.
    pub seq: u64,
    /// Hash of line `seq`.
    pub head: String,
    /// When the agent made it (RFC 3339, as signed).
    pub at: String,
    /// Key id.
    pub key_id: String,
    /// Public key, base64.
    pub public_key: String,
    /// Signature, base64.
    pub signature: String,
    /// When the control plane received it.
    pub received_at: OffsetDateTime,
    /// Signed by another key than the agent's pinned (first) one.
    pub key_changed: bool,
    /// Lower `seq` than one already stored for the same key, or the same
    /// `seq` with another head.
    pub rollback: bool,
    /// Storage order (the listing key).
    pub position: i64,
}

/// What the store already holds for an agent, as [`classify`] needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriorCheckpoints {
    /// The agent's pinned public key, if any checkpoint was stored.
    pub pinned_key: Option<String>,
    /// Highest `seq` stored for the checkpoint's key.
    pub max_seq_for_key: Option<u64>,
    /// Heads stored for the checkpoint's key at the checkpoint's `seq`.
    pub heads_at_seq: Vec<String>,
}

/// How a new checkpoint is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The same checkpoint is stored already: nothing to store.
    Duplicate,
    /// Store it, with these flags.
    Store {
        /// Another key than the pinned one.
        key_changed: bool,
        /// Backwards (or the same seq with another head) for its key.
        rollback: bool,
    },
}

/// The acceptance rules (see the module docs), as a pure function.
pub fn classify(prior: &PriorCheckpoints, public_key: &str, seq: u64, head: &str) -> Verdict {
    if prior.heads_at_seq.iter().any(|h| h == head) {
        return Verdict::Duplicate;
    }
    let key_changed = prior.pinned_key.as_deref().is_some_and(|k| k != public_key);
    let rollback =
        prior.max_seq_for_key.is_some_and(|max| seq < max) || !prior.heads_at_seq.is_empty();
    Verdict::Store {
        key_changed,
        rollback,
    }
}

/// What [`AuditStore::record_checkpoint`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointOutcome {
    /// Stored, with the flags it got.
    Stored(Box<CheckpointRecord>),
    /// Already stored; nothing changed.
    Duplicate,
}

/// An agent's audit condition as the control plane last heard it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAuditState {
    /// The agent.
    pub agent_id: String,
    /// Whether its audit log takes writes.
    pub healthy: bool,
    /// What is wrong, when not healthy.
    pub problem: Option<String>,
    /// When this health was received.
    pub health_at: OffsetDateTime,
    /// The pinned public key (first seen), if any checkpoint was stored.
    pub pinned_public_key: Option<String>,
    /// `seq` of the last checkpoint stored.
    pub last_seq: Option<u64>,
    /// When the last checkpoint was received.
    pub last_checkpoint_at: Option<OffsetDateTime>,
}

/// A page request over one agent's checkpoints (oldest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointQuery {
    /// Continue after this checkpoint id.
    pub after_id: Option<String>,
    /// Page size.
    pub limit: usize,
}

/// Who did something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A public API request authenticated with this key id.
    ApiKey(String),
    /// An operator on the control-plane host (admin socket or CLI), with
    /// the unix uid when known.
    Admin {
        /// The peer's (or the CLI process's) uid.
        uid: Option<u32>,
    },
}

/// How a request or action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Succeeded (HTTP 2xx / the command succeeded).
    Ok,
    /// Failed.
    Error,
}

impl Outcome {
    /// `ok` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
        }
    }

    /// Parses `ok` or `error`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ok" => Some(Outcome::Ok),
            "error" => Some(Outcome::Error),
            _ => None,
        }
    }
}

/// One audited action, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEvent {
    /// The id (`audevt_…`, chosen by the caller).
    pub id: String,
    /// When.
    pub at: OffsetDateTime,
    /// Who.
    pub actor: Actor,
    /// Remote address (`ip:port`) of an API request.
    pub remote_addr: Option<String>,
    /// What (`sessions.create`, `agents.revoke`...).
    pub action: String,
    /// The ids the action was about (path ids, then the created id).
    pub resource_ids: Vec<String>,
    /// HTTP status (admin CLI actions: 200 or 500).
    pub status: u16,
    /// Success or failure.
    pub outcome: Outcome,
    /// The request id, when there is one.
    pub request_id: Option<String>,
}

/// A stored audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEventRecord {
    /// What was recorded.
    pub event: NewAuditEvent,
    /// Storage order (the listing key).
    pub position: i64,
}

/// A page request over audit events (oldest first unless `descending`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditEventQuery {
    /// Continue after this event id (in the listing's order).
    pub after_id: Option<String>,
    /// Newest first.
    pub descending: bool,
    /// Only this action.
    pub action: Option<String>,
    /// Only events naming this resource id.
    pub resource_id: Option<String>,
    /// Only requests with this API key.
    pub api_key_id: Option<String>,
    /// Only this outcome.
    pub outcome: Option<Outcome>,
    /// At or after.
    pub since: Option<OffsetDateTime>,
    /// Before.
    pub until: Option<OffsetDateTime>,
    /// Page size.
    pub limit: usize,
}

/// Durable storage of agent audit checkpoints and health, and of the audit
/// events of API and admin actions. Every [`crate::Catalog`] is one.
#[async_trait::async_trait]
pub trait AuditStore: Send + Sync {
    /// Classifies ([`classify`]) and stores a verified checkpoint, in one
    /// transaction; pins the agent's first key.
    async fn record_checkpoint(&self, new: NewCheckpoint) -> Result<CheckpointOutcome>;

    /// Records the agent's latest audit health.
    async fn record_audit_health(
        &self,
        agent_id: &str,
        healthy: bool,
        problem: Option<String>,
        at: OffsetDateTime,
    ) -> Result<()>;

    /// The agent's audit condition, `None` if nothing was ever received.
    async fn audit_state(&self, agent_id: &str) -> Result<Option<AgentAuditState>>;

    /// Every agent's audit condition.
    async fn audit_states(&self) -> Result<Vec<AgentAuditState>>;

    /// A page of one agent's checkpoints, in the order received.
    /// [`crate::CatalogError::Invalid`] if `after_id` is not one of them.
    async fn list_checkpoints(
        &self,
        agent_id: &str,
        query: CheckpointQuery,
    ) -> Result<Page<CheckpointRecord>>;

    /// Stores one audit event.
    async fn record_audit_event(&self, event: NewAuditEvent) -> Result<()>;

    /// A page of audit events. [`crate::CatalogError::Invalid`] if
    /// `after_id` is not a stored event.
    async fn list_audit_events(&self, query: AuditEventQuery) -> Result<Page<AuditEventRecord>>;
}

/// RFC 3339 (UTC) text of `t`.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

impl CheckpointRecord {
    /// The export form (API `data` items and `control-plane audit
    /// checkpoints` lines): the `AuditCheckpoint` fields (`seq`, `head`,
    /// `at`, `key_id`, `public_key`, `signature`) plus `id`, `agent_id`,
    /// `received_at`, `key_changed` and `rollback`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "agent_id": self.agent_id,
            "seq": self.seq,
            "head": self.head,
            "at": self.at,
            "key_id": self.key_id,
            "public_key": self.public_key,
            "signature": self.signature,
            "received_at": rfc3339(self.received_at),
            "key_changed": self.key_changed,
            "rollback": self.rollback,
        })
    }
}

impl AuditEventRecord {
    /// The export form (API `data` items and `control-plane audit events
    /// --json` lines).
    pub fn to_json(&self) -> serde_json::Value {
        let e = &self.event;
        let actor = match &e.actor {
            Actor::ApiKey(k) => serde_json::json!({"type": "api_key", "api_key_id": k}),
            Actor::Admin { uid } => serde_json::json!({"type": "admin", "uid": uid}),
        };
        serde_json::json!({
            "id": e.id,
            "type": "audit_event",
            "at": rfc3339(e.at),
            "actor": actor,
            "remote_addr": e.remote_addr,
            "action": e.action,
            "resource_ids": e.resource_ids,
            "status": e.status,
            "outcome": e.outcome.as_str(),
            "request_id": e.request_id,
        })
    }
}

/// The columns of a stored audit event, as both backends read them.
pub(crate) struct EventParts {
    pub position: i64,
    pub id: String,
    pub at: i64,
    pub api_key_id: Option<String>,
    pub admin: bool,
    pub admin_uid: Option<i64>,
    pub remote_addr: Option<String>,
    pub action: String,
    pub resource_ids: String,
    pub status: i64,
    pub outcome: String,
    pub request_id: Option<String>,
}

/// The stored form of resource ids: a JSON array of strings (searched for
/// `"<id>"`).
pub(crate) fn encode_ids(ids: &[String]) -> String {
    serde_json::Value::from(ids.to_vec()).to_string()
}

pub(crate) fn decode_event(p: EventParts) -> Result<AuditEventRecord> {
    let corrupt =
        |what: &str| crate::CatalogError::corrupt(format!("audit event {}: {what}", p.id));
    let resource_ids: Vec<String> =
        serde_json::from_str(&p.resource_ids).map_err(|_| corrupt("resource_ids"))?;
    let actor = match (p.admin, &p.api_key_id) {
        (true, _) => Actor::Admin {
            uid: p.admin_uid.and_then(|u| u32::try_from(u).ok()),
        },
        (false, Some(k)) => Actor::ApiKey(k.clone()),
        (false, None) => return Err(corrupt("no actor")),
    };
    Ok(AuditEventRecord {
        position: p.position,
        event: NewAuditEvent {
            id: p.id.clone(),
            at: crate::types::from_micros(p.at)?,
            actor,
            remote_addr: p.remote_addr,
            action: p.action,
            resource_ids,
            status: u16::try_from(p.status).map_err(|_| corrupt("status"))?,
            outcome: Outcome::parse(&p.outcome).ok_or_else(|| corrupt("outcome"))?,
            request_id: p.request_id,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prior(pinned: Option<&str>, max: Option<u64>, heads: &[&str]) -> PriorCheckpoints {
        PriorCheckpoints {
            pinned_key: pinned.map(str::to_owned),
            max_seq_for_key: max,
            heads_at_seq: heads.iter().map(|h| (*h).to_owned()).collect(),
        }
    }

    #[test]
    fn acceptance_rules() {
        let store = |key_changed, rollback| Verdict::Store {
            key_changed,
            rollback,
        };
        // first checkpoint of an agent: pinned, no flag
        assert_eq!(
            classify(&prior(None, None, &[]), "k1", 10, "h10"),
            store(false, false)
        );
        // forward on the pinned key
        assert_eq!(
            classify(&prior(Some("k1"), Some(10), &[]), "k1", 20, "h20"),
            store(false, false)
        );
        // resent after a reconnect
        assert_eq!(
            classify(&prior(Some("k1"), Some(20), &["h20"]), "k1", 20, "h20"),
            Verdict::Duplicate
        );
        // backwards
        assert_eq!(
            classify(&prior(Some("k1"), Some(20), &[]), "k1", 15, "h15"),
            store(false, true)
        );
        // same seq, another head
        assert_eq!(
            classify(&prior(Some("k1"), Some(20), &["h20"]), "k1", 20, "x"),
            store(false, true)
        );
        // another key: flagged, its own seq line starts fresh
        assert_eq!(
            classify(&prior(Some("k1"), None, &[]), "k2", 1, "h1"),
            store(true, false)
        );
        assert_eq!(
            classify(&prior(Some("k1"), Some(5), &[]), "k2", 3, "h3"),
            store(true, true)
        );
    }
}
