//! Join tokens shared by every control-plane replica (migration 6): a token
//! made at one replica enrolls an agent at any of them, once.
//!
//! Each replica keeps its own identity database (pki's `identity.db`, where
//! `control-plane tokens create` writes the token's hash) and records every
//! token here as well; enrollment at any replica first claims the token
//! here, so the catalog decides single use across replicas. Only the
//! token's hash is stored, never the token.
//!
//! Invariants every implementation keeps: a token is claimed at most once
//! (one conditional write), and is never both used and revoked; a recorded
//! token is never overwritten by recording it again; a claim is released
//! only by the agent that made it (an enrollment that failed after its
//! claim gives the token back).

use crate::error::Result;

/// One join token as the catalog holds it (without its hash). Times are
/// Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedJoinToken {
    /// Public id (`tok_…`).
    pub token_id: String,
    /// The environment an agent enrolled with it joins.
    pub environment_id: String,
    /// When it was made.
    pub created_at: i64,
    /// It enrolls nobody from this time on.
    pub expires_at: i64,
    /// When it enrolled an agent.
    pub used_at: Option<i64>,
    /// The agent it enrolled.
    pub used_by: Option<String>,
    /// When an operator revoked it (unused).
    pub revoked_at: Option<i64>,
}

/// What [`JoinTokens::claim_join_token`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenClaim {
    /// Claimed now for the agent: nobody else can use it.
    Claimed(SharedJoinToken),
    /// No such token in the catalog (made before tokens were shared, or
    /// its recording failed): only the replica that made it knows it.
    Unknown,
    /// It enrolled an agent already.
    Used {
        /// The token.
        token_id: String,
        /// That agent.
        used_by: String,
    },
    /// An operator revoked it.
    Revoked {
        /// The token.
        token_id: String,
    },
    /// Its time is up.
    Expired {
        /// The token.
        token_id: String,
    },
}

/// What [`JoinTokens::revoke_join_token`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRevocation {
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
    /// It enrolled an agent: not revoked (revoke the agent instead).
    AlreadyUsed {
        /// That agent.
        used_by: String,
        /// When.
        used_at: i64,
    },
    /// No such token in the catalog.
    Unknown,
}

/// The shared record of join tokens. See the module docs.
#[async_trait::async_trait]
pub trait JoinTokens: Send + Sync {
    /// Record a token under its hash; a token already recorded (by hash or
    /// id) is kept as it is.
    async fn record_join_token(&self, token_hash: &str, token: SharedJoinToken) -> Result<()>;

    /// Claim the token with hash `token_hash` for `agent_id` at `now`, in
    /// one conditional write: it succeeds for one caller only, and only
    /// while the token is unused, unrevoked and `now < expires_at`.
    async fn claim_join_token(
        &self,
        token_hash: &str,
        agent_id: &str,
        now: i64,
    ) -> Result<TokenClaim>;

    /// Give back a claim `agent_id` made (its enrollment failed after the
    /// claim); a token used by another agent is left alone. Returns whether
    /// a claim was released.
    async fn release_join_token(&self, token_hash: &str, agent_id: &str) -> Result<bool>;

    /// Revoke the unused token `token_id` at `now`; idempotent.
    async fn revoke_join_token(&self, token_id: &str, now: i64) -> Result<TokenRevocation>;

    /// Every recorded token, newest first (ties by id).
    async fn list_join_tokens(&self) -> Result<Vec<SharedJoinToken>>;
}

/// How a token row that a conditional claim did not take stands at `now`
/// (shared by the implementations). `None`: it is claimable after all (a
/// release raced the claim; the caller tries again).
pub(crate) fn unclaimable(t: &SharedJoinToken, now: i64) -> Option<TokenClaim> {
    let token_id = t.token_id.clone();
    if let Some(used_by) = &t.used_by {
        return Some(TokenClaim::Used {
            token_id,
            used_by: used_by.clone(),
        });
    }
    if t.revoked_at.is_some() {
        return Some(TokenClaim::Revoked { token_id });
    }
    (now >= t.expires_at).then_some(TokenClaim::Expired { token_id })
}

/// How a token that a conditional revocation did not change stands
/// (shared by the implementations). `None`: it is revocable after all.
pub(crate) fn unrevocable(t: SharedJoinToken) -> Option<TokenRevocation> {
    if let (Some(used_by), Some(used_at)) = (t.used_by, t.used_at) {
        return Some(TokenRevocation::AlreadyUsed { used_by, used_at });
    }
    t.revoked_at
        .map(|revoked_at| TokenRevocation::AlreadyRevoked { revoked_at })
}

/// Columns of [`SharedJoinToken`], in field order.
pub(crate) const COLUMNS: &str =
    "token_id, environment_id, created_at, expires_at, used_at, used_by, revoked_at";
