//! Identity across replicas: every enrollment, renewal and revocation made
//! at this replica is mirrored into the shared catalog
//! ([`catalog::EnrolledAgents`], migration 5), and this replica takes in
//! what the others did: an agent enrolled elsewhere is imported into the
//! local identity database when it connects (so it is listed and renewed
//! here), and a revocation made at any replica is read from the catalog
//! every [`POLL`] and closes the agent's links here (and refuses its next
//! handshake). pki's `identity.db` stays the local store; the catalog is
//! the shared one. Catalog failures are logged and retried at the next
//! poll; they never refuse an agent that the local store accepts.
//!
//! Join tokens are shared the same way (migration 6): `tokens create`
//! records each token's hash in the catalog too, and enrollment at any
//! replica claims the token there first (see `crate::enroll`), so a token
//! made at one replica enrolls an agent at any of them, once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use catalog::{Catalog, EnrolledAgent, SharedJoinToken, TokenClaim};
use pki::store::AgentRecord;
use pki::{AgentId, EnvironmentId, IdentityService, TokenRecord, TokenState};
use tokio_util::sync::CancellationToken;

use super::registry::{AgentDirectory, Registry};

/// How often the catalog's revocations are read (a revocation at another
/// replica closes the agent's links here within about this long).
pub const POLL: Duration = Duration::from_millis(250);

/// The catalog's row for a local record.
pub fn to_catalog(r: &AgentRecord) -> EnrolledAgent {
    EnrolledAgent {
        agent_id: r.agent_id.to_string(),
        environment_id: r.environment_id.to_string(),
        enrolled_at: r.enrolled_at,
        enrolled_from: r.enrolled_from.clone(),
        cert_serial: r.cert_serial.clone(),
        cert_not_after: r.cert_not_after,
        revoked_at: r.revoked_at,
    }
}

fn to_local(a: &EnrolledAgent) -> Option<AgentRecord> {
    Some(AgentRecord {
        agent_id: AgentId::parse(&a.agent_id).ok()?,
        environment_id: EnvironmentId::parse(&a.environment_id).ok()?,
        enrolled_at: a.enrolled_at,
        enrolled_from: a.enrolled_from.clone(),
        cert_serial: a.cert_serial.clone(),
        cert_not_after: a.cert_not_after,
        revoked_at: a.revoked_at,
    })
}

/// The shared identities of this replica. Cheap to clone.
#[derive(Clone)]
pub struct SharedIdentities {
    catalog: Arc<dyn Catalog>,
    identity: Arc<IdentityService>,
}

impl std::fmt::Debug for SharedIdentities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedIdentities").finish_non_exhaustive()
    }
}

impl SharedIdentities {
    /// Over `catalog` and this replica's `identity`.
    pub fn new(catalog: Arc<dyn Catalog>, identity: Arc<IdentityService>) -> Self {
        Self { catalog, identity }
    }

    /// Mirror the local record of `agent_id` (after an enrollment, a
    /// renewal or a revocation here) into the catalog; a revocation is
    /// also written as one.
    pub async fn publish(&self, agent_id: &AgentId) {
        let identity = self.identity.clone();
        let id = agent_id.clone();
        let local = tokio::task::spawn_blocking(move || identity.agent(&id)).await;
        let record = match local {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => return,
            Ok(Err(error)) => {
                tracing::warn!(agent_id = %agent_id, %error, "identity not mirrored to the catalog");
                return;
            }
            Err(error) => {
                tracing::warn!(agent_id = %agent_id, %error, "identity not mirrored to the catalog");
                return;
            }
        };
        let row = to_catalog(&record);
        let revoked_at = row.revoked_at;
        if let Err(error) = self.catalog.record_enrolled_agent(row).await {
            tracing::warn!(agent_id = %agent_id, %error, "identity not mirrored to the catalog");
            return;
        }
        if let Some(at) = revoked_at {
            if let Err(error) = self
                .catalog
                .revoke_enrolled_agent(agent_id.as_str(), at)
                .await
            {
                tracing::warn!(agent_id = %agent_id, %error, "revocation not mirrored to the catalog");
            }
        }
    }

    /// Before accepting a connection: take in what the catalog knows of
    /// `agent_id` when this replica does not know it, or does not know it
    /// is revoked. Returns whether the catalog says it is revoked.
    pub async fn adopt(&self, agent_id: &AgentId) -> bool {
        let row = match self.catalog.enrolled_agent(agent_id.as_str()).await {
            Ok(Some(row)) => row,
            Ok(None) => return false,
            Err(error) => {
                tracing::warn!(agent_id = %agent_id, %error, "catalog unavailable; the local identity database decides");
                return false;
            }
        };
        let revoked = row.revoked_at.is_some();
        let Some(record) = to_local(&row) else {
            tracing::warn!(agent_id = %agent_id, "catalog row names an invalid id; ignored");
            return false;
        };
        let identity = self.identity.clone();
        let imported = tokio::task::spawn_blocking(move || identity.import_agent(&record)).await;
        if !matches!(imported, Ok(Ok(()))) {
            tracing::warn!(agent_id = %agent_id, "agent from the catalog not stored locally");
        }
        revoked
    }

    /// Claim the join token with `token_hash` in the shared catalog for
    /// `agent_id` (see [`catalog::JoinTokens::claim_join_token`]). A token
    /// this replica knows but the catalog does not (made while the catalog
    /// was unreachable, or before tokens were shared) is recorded there
    /// first, so the catalog decides every token's single use.
    pub async fn claim_token(
        &self,
        token_hash: &str,
        agent_id: &AgentId,
    ) -> catalog::Result<TokenClaim> {
        let claim = self
            .catalog
            .claim_join_token(token_hash, agent_id.as_str(), unix_now())
            .await?;
        if claim != TokenClaim::Unknown {
            return Ok(claim);
        }
        let identity = self.identity.clone();
        let local = match tokio::task::spawn_blocking(move || identity.tokens_with_hashes()).await {
            Ok(Ok(tokens)) => tokens,
            _ => return Ok(TokenClaim::Unknown),
        };
        let Some((_, token)) = local.iter().find(|(hash, _)| hash == token_hash) else {
            return Ok(TokenClaim::Unknown);
        };
        self.catalog
            .record_join_token(token_hash, token_to_catalog(token))
            .await?;
        self.catalog
            .claim_join_token(token_hash, agent_id.as_str(), unix_now())
            .await
    }

    /// Give back the claim `agent_id` made on a token (its enrollment
    /// failed afterwards); a failure is logged (the token then stays used).
    pub async fn release_token(&self, token_hash: &str, agent_id: &AgentId) {
        if let Err(error) = self
            .catalog
            .release_join_token(token_hash, agent_id.as_str())
            .await
        {
            tracing::warn!(agent_id = %agent_id, %error, "join token claim not released; the token stays used");
        }
    }

    /// Read the catalog's revocations every [`POLL`] until `shutdown`:
    /// each one new to this replica is stored locally, joins the revocation
    /// set and closes the agent's connections here.
    pub async fn watch_revocations(self, registry: Arc<Registry>, shutdown: CancellationToken) {
        let mut known: HashSet<String> = HashSet::new();
        let mut failing = false;
        loop {
            match self.catalog.revoked_agent_ids().await {
                Ok(ids) => {
                    if failing {
                        tracing::info!("catalog revocations readable again");
                        failing = false;
                    }
                    for id in ids {
                        if known.contains(&id) {
                            continue;
                        }
                        let Ok(agent_id) = AgentId::parse(&id) else {
                            known.insert(id);
                            continue;
                        };
                        if !self.identity.revocations().is_revoked(&agent_id) {
                            // Stored locally too (imported when unknown here).
                            self.adopt(&agent_id).await;
                            self.identity.revocations().insert(agent_id.clone());
                            let closed = registry.disconnect(&agent_id);
                            tracing::info!(agent_id = %agent_id, connections_closed = closed, "agent revoked at another replica; its links here closed");
                        } else if registry.disconnect(&agent_id) > 0 {
                            tracing::info!(agent_id = %agent_id, "revoked agent's remaining links closed");
                        }
                        known.insert(id);
                    }
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "cannot read revocations from the catalog; retrying");
                        failing = true;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

/// The catalog's row for a local join token (a token known here in a
/// state the catalog does not know yet, e.g. made before tokens were shared).
pub fn token_to_catalog(t: &TokenRecord) -> SharedJoinToken {
    let (used_at, used_by, revoked_at) = match &t.state {
        TokenState::Used { used_by, used_at } => (Some(*used_at), Some(used_by.to_string()), None),
        TokenState::Revoked { revoked_at } => (None, None, Some(*revoked_at)),
        TokenState::Active | TokenState::Expired => (None, None, None),
    };
    SharedJoinToken {
        token_id: t.token_id.clone(),
        environment_id: t.environment_id.to_string(),
        created_at: t.created_at,
        expires_at: t.expires_at,
        used_at,
        used_by,
        revoked_at,
    }
}

/// A token as the catalog holds it, with its state at `now` (Unix
/// seconds); the error names what does not parse.
pub fn token_from_catalog(t: SharedJoinToken, now: i64) -> Result<TokenRecord, String> {
    let environment_id = EnvironmentId::parse(&t.environment_id).map_err(|e| e.to_string())?;
    Ok(TokenRecord {
        state: TokenState::at(t.expires_at, t.used_at, t.used_by, t.revoked_at, now)?,
        token_id: t.token_id,
        environment_id,
        created_at: t.created_at,
        expires_at: t.expires_at,
    })
}

fn unix_now() -> i64 {
    pki::store::unix_seconds(std::time::SystemTime::now())
}

/// Mirror this replica's existing identities and join tokens into the
/// catalog once (a replica upgraded into a shared deployment brings its
/// agents and tokens along; a token whose recording failed when it was made
/// is shared now). Tokens the catalog holds already are left as they are.
pub async fn publish_all(shared: &SharedIdentities) {
    let identity = shared.identity.clone();
    if let Ok(Ok(tokens)) = tokio::task::spawn_blocking(move || identity.tokens_with_hashes()).await
    {
        for (hash, t) in &tokens {
            if let Err(error) = shared
                .catalog
                .record_join_token(hash, token_to_catalog(t))
                .await
            {
                tracing::warn!(%error, "join tokens not shared through the catalog");
                break;
            }
        }
    }
    let identity = shared.identity.clone();
    let Ok(Ok(all)) = tokio::task::spawn_blocking(move || identity.agents()).await else {
        return;
    };
    for a in &all {
        if let Err(error) = shared.catalog.record_enrolled_agent(to_catalog(a)).await {
            tracing::warn!(%error, "identities not mirrored to the catalog");
            return;
        }
        if let Some(at) = a.revoked_at {
            let _ = shared
                .catalog
                .revoke_enrolled_agent(a.agent_id.as_str(), at)
                .await;
        }
    }
}
