//! [`GatewayRelay`]: the API's [`api::SecretRelay`] over the tunnel. A
//! secret sent through the vaults API (or a session resource's
//! `authorization_token`) goes, in memory, to every connected sandbox-agent
//! of the target environment, which hands it to its local vault-bridge
//! (`put_credential`, `put_session_token`). Nothing here stores or logs a
//! value: the fields travel as `WireSecret`s (redacted `Debug`).
//!
//! A put succeeds when at least one bridge of the environment holds the
//! secret; with no agent of the environment connected it fails with
//! [`RelayError::NoBridge`], and when every connected agent answered with a
//! failure (no `[bridge]`, bridge down, backend sealed) with
//! [`RelayError::Refused`] listing their reasons. Forgets go to every
//! connected agent, best effort. Each agent call runs under a deadline, all
//! agents in parallel, so a stuck agent cannot hold an API request.
//!
//! `mcp_oauth_validate` goes to one agent: the credential (metadata only,
//! as [`crate::egress_credentials::egress_credential`] builds it for
//! sessions) travels as `mcp_validate`, the agent's bridge probes the MCP
//! server with the secret it holds, and the first agent that answers with
//! a validation object wins; agents are tried in turn under
//! [`DEFAULT_VALIDATE_DEADLINE`] each (a probe may refresh a token).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::egress_credentials::egress_credential;
use crate::gateway::{GatewayHandle, Target};
use api::{RelayError, RelayTarget, SecretFields, SecretRelay, SecretValue, SessionTokenTarget};
use protocol::call::{Reply, Request, Response};
use protocol::mcp::{McpValidate, McpValidation};
use protocol::relay::{
    ForgetCredential, ForgetReason, ForgetSessionToken, PutCredential, PutSessionToken, WireSecret,
};
use serde_json::Value;

/// Default deadline of one agent's relay call.
pub const DEFAULT_RELAY_DEADLINE: Duration = Duration::from_secs(10);

/// Least deadline of one agent's `mcp_validate` (an MCP probe, maybe a
/// token refresh and a second probe).
pub const DEFAULT_VALIDATE_DEADLINE: Duration = Duration::from_secs(30);

/// Relays secrets to the vault-bridges of an environment's connected agents.
#[derive(Debug, Clone)]
pub struct GatewayRelay {
    gateway: GatewayHandle,
    deadline: Duration,
}

/// What one agent answered.
type Answer = (String, Result<bool, String>);

impl GatewayRelay {
    /// A relay over `gateway`; each agent call gets `deadline`.
    pub fn new(gateway: GatewayHandle, deadline: Duration) -> Self {
        Self { gateway, deadline }
    }

    /// Send `request` to every connected agent of `environment_id` at once.
    async fn broadcast(&self, environment_id: &str, request: &Request) -> Vec<Answer> {
        let mut calls = tokio::task::JoinSet::new();
        for agent_id in self.gateway.agents_of(environment_id) {
            let gateway = self.gateway.clone();
            let request = request.clone();
            let deadline = self.deadline;
            calls.spawn(async move {
                let target = Target::Agent(agent_id.clone());
                let answer =
                    tokio::time::timeout(deadline, gateway.call_unary(&target, &request)).await;
                let result = match answer {
                    Err(_) => Err(format!("no answer within {deadline:?}")),
                    Ok(Err(e)) => Err(e.to_string()),
                    Ok(Ok((_, Response::Ok(Reply::Relay { ack, .. })))) => Ok(ack.held),
                    Ok(Ok((_, Response::Ok(_)))) => Err("unexpected reply".to_owned()),
                    Ok(Ok((_, Response::Err(e)))) => Err(format!("{}: {}", e.code, e.message)),
                };
                (agent_id, result)
            });
        }
        let mut answers = Vec::new();
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok(a) => answers.push(a),
                Err(e) => answers.push(("?".to_owned(), Err(format!("relay task failed: {e}")))),
            }
        }
        answers
    }

    /// A put: Ok when a bridge holds it.
    async fn put(&self, environment_id: &str, request: Request) -> Result<(), RelayError> {
        let call = request.name();
        let answers = self.broadcast(environment_id, &request).await;
        if answers.is_empty() {
            return Err(RelayError::NoBridge {
                environment_id: environment_id.to_owned(),
            });
        }
        let held = answers
            .iter()
            .filter(|(_, r)| matches!(r, Ok(true)))
            .count();
        for (agent_id, result) in &answers {
            match result {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(call, %agent_id, %environment_id, "the agent's vault-bridge did not take the secret")
                }
                Err(reason) => {
                    tracing::warn!(call, %agent_id, %environment_id, %reason, "relay to the agent's vault-bridge failed")
                }
            }
        }
        if held > 0 {
            tracing::info!(call, %environment_id, bridges = held, of = answers.len(), "relayed to vault-bridges");
            return Ok(());
        }
        let reason = answers
            .iter()
            .map(|(agent_id, r)| match r {
                Ok(_) => format!("{agent_id}: the bridge did not take it"),
                Err(e) => format!("{agent_id}: {e}"),
            })
            .collect::<Vec<_>>()
            .join("; ");
        Err(RelayError::Refused {
            environment_id: environment_id.to_owned(),
            reason,
        })
    }

    /// A forget: every connected agent, best effort (failures are logged).
    async fn forget(&self, environment_id: &str, request: Request) {
        let call = request.name();
        for (agent_id, result) in self.broadcast(environment_id, &request).await {
            if let Err(reason) = result {
                tracing::warn!(call, %agent_id, %environment_id, %reason, "forget not delivered to the agent's vault-bridge");
            }
        }
    }
}

fn wire(v: &SecretValue) -> WireSecret {
    WireSecret::new(v.expose().to_owned())
}

#[async_trait::async_trait]
impl SecretRelay for GatewayRelay {
    async fn put(&self, target: &RelayTarget, fields: &SecretFields) -> Result<(), RelayError> {
        let fields: BTreeMap<String, WireSecret> = fields
            .names()
            .into_iter()
            .filter_map(|n| fields.get(n).map(|v| (n.to_owned(), wire(v))))
            .collect();
        let request = Request::PutCredential(PutCredential {
            vault_id: target.vault_id.clone(),
            credential_id: target.credential_id.clone(),
            fields,
        });
        GatewayRelay::put(self, &target.environment_id, request).await
    }

    async fn forget(&self, target: &RelayTarget) -> Result<(), RelayError> {
        // The trait does not say why; archived refuses the credential from
        // now on, which is right for archive, delete and a failed store.
        let request = Request::ForgetCredential(ForgetCredential {
            vault_id: target.vault_id.clone(),
            credential_id: target.credential_id.clone(),
            reason: ForgetReason::Archived,
        });
        GatewayRelay::forget(self, &target.environment_id, request).await;
        Ok(())
    }

    async fn put_session_token(
        &self,
        target: &SessionTokenTarget,
        token: &SecretValue,
    ) -> Result<(), RelayError> {
        let request = Request::PutSessionToken(PutSessionToken {
            session_id: target.session_id.clone(),
            resource_id: target.resource_id.clone(),
            url: target.url.clone(),
            token: wire(token),
        });
        GatewayRelay::put(self, &target.environment_id, request).await
    }

    async fn forget_session_token(&self, target: &SessionTokenTarget) -> Result<(), RelayError> {
        let request = Request::ForgetSessionToken(ForgetSessionToken {
            session_id: target.session_id.clone(),
            resource_id: Some(target.resource_id.clone()),
        });
        GatewayRelay::forget(self, &target.environment_id, request).await;
        Ok(())
    }

    async fn end_session(&self, environment_id: &str, session_id: &str) -> Result<(), RelayError> {
        // Without a resource, the bridge takes it as the session's end.
        let request = Request::ForgetSessionToken(ForgetSessionToken {
            session_id: session_id.to_owned(),
            resource_id: None,
        });
        GatewayRelay::forget(self, environment_id, request).await;
        Ok(())
    }

    async fn validate_mcp(
        &self,
        target: &RelayTarget,
        stored: &Value,
    ) -> Result<McpValidation, RelayError> {
        let environment_id = &target.environment_id;
        let Some(credential) = egress_credential(&target.vault_id, &target.credential_id, stored)
        else {
            return Err(RelayError::Refused {
                environment_id: environment_id.clone(),
                reason: format!(
                    "credential {}'s stored auth is not understood",
                    target.credential_id
                ),
            });
        };
        let agents = self.gateway.agents_of(environment_id);
        if agents.is_empty() {
            return Err(RelayError::NoBridge {
                environment_id: environment_id.clone(),
            });
        }
        let request = Request::McpValidate(McpValidate { credential });
        let deadline = self.deadline.max(DEFAULT_VALIDATE_DEADLINE);
        let mut reasons = Vec::new();
        for agent_id in agents {
            let target_agent = Target::Agent(agent_id.clone());
            let answer =
                tokio::time::timeout(deadline, self.gateway.call_unary(&target_agent, &request))
                    .await;
            let reason = match answer {
                Ok(Ok((_, Response::Ok(Reply::McpValidated(v))))) => {
                    tracing::info!(%agent_id, %environment_id, credential_id = %target.credential_id,
                        status = %v.status, "mcp credential validated by the agent's vault-bridge");
                    return Ok(v);
                }
                Ok(Ok((_, Response::Ok(_)))) => "unexpected reply".to_owned(),
                Ok(Ok((_, Response::Err(e)))) => format!("{}: {}", e.code, e.message),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {deadline:?}"),
            };
            tracing::warn!(%agent_id, %environment_id, credential_id = %target.credential_id, %reason,
                "mcp_validate not answered by the agent's vault-bridge");
            reasons.push(format!("{agent_id}: {reason}"));
        }
        Err(RelayError::Refused {
            environment_id: environment_id.clone(),
            reason: reasons.join("; "),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn target() -> RelayTarget {
        RelayTarget {
            environment_id: "env_none".into(),
            vault_id: "vlt_1".into(),
            credential_id: "vcrd_1".into(),
        }
    }

    #[tokio::test]
    async fn no_connected_agent_is_no_bridge_and_forgets_are_fine() {
        let relay = GatewayRelay::new(
            GatewayHandle::new(Arc::new(crate::gateway::registry::Registry::new())),
            Duration::from_secs(1),
        );
        let e = SecretRelay::put(&relay, &target(), &SecretFields::default())
            .await
            .unwrap_err();
        assert!(
            matches!(e, RelayError::NoBridge { ref environment_id } if environment_id == "env_none"),
            "{e:?}"
        );
        assert!(SecretRelay::forget(&relay, &target()).await.is_ok());
        let stored = serde_json::json!({"auth": {"type": "static_bearer", "mcp_server_url": "https://m.example/"}});
        let e = SecretRelay::validate_mcp(&relay, &target(), &stored)
            .await
            .unwrap_err();
        assert!(
            matches!(e, RelayError::NoBridge { ref environment_id } if environment_id == "env_none"),
            "{e:?}"
        );
    }
}
