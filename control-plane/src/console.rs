//! The control plane's side of the web console ([`console::ControlPlane`]):
//! agents from the identity store (enrolled, revoked) joined with the
//! gateway registry (connected: transport, version, certificate expiry,
//! heartbeat), their sandboxes asked live over the tunnel, where a
//! session's sandbox runs (the agent that lists it), and revocation through
//! the admin socket's own path ([`crate::admin::revoke`]).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use console::{
    AgentState, AgentView, ControlPlane, ControlPlaneError, Placement, RevokeOutcome, SandboxView,
};
use protocol::{Reply, Request, Response};
use time::OffsetDateTime;

use crate::admin::{AdminRequestError, AdminState};
use crate::gateway::{GatewayHandle, Target};

/// How long one agent gets to list its sandboxes for a page.
const LIST_DEADLINE: Duration = Duration::from_secs(2);

/// [`ControlPlane`] over the gateway and the identity store.
#[derive(Clone)]
pub struct ConsoleControl {
    admin: AdminState,
    gateway: GatewayHandle,
}

impl std::fmt::Debug for ConsoleControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleControl").finish_non_exhaustive()
    }
}

impl ConsoleControl {
    /// Over the admin socket's state (identity, registry, catalog) and the
    /// gateway (for live questions to agents).
    pub fn new(admin: AdminState, gateway: GatewayHandle) -> Self {
        Self { admin, gateway }
    }

    async fn list_sandboxes(&self, agent_id: &str) -> Result<Vec<SandboxView>, ControlPlaneError> {
        let target = Target::Agent(agent_id.to_owned());
        let request = Request::ListSandboxes;
        let call = self.gateway.call_unary(&target, &request);
        let reply = tokio::time::timeout(LIST_DEADLINE, call)
            .await
            .map_err(|_| {
                ControlPlaneError::Unavailable(format!(
                    "agent {agent_id} did not list its sandboxes within {LIST_DEADLINE:?}"
                ))
            })?
            .map_err(|e| ControlPlaneError::Unavailable(e.to_string()))?;
        match reply.1 {
            Response::Ok(Reply::ListSandboxes(list)) => Ok(list
                .into_iter()
                .map(|s| SandboxView {
                    sandbox_id: s.sandbox_id,
                    session_id: s.session_id,
                    image: s.image,
                    state: s.state,
                    created_at: s.created_at,
                    expires_at: s.expires_at,
                })
                .collect()),
            Response::Ok(other) => Err(ControlPlaneError::Unavailable(format!(
                "agent {agent_id} answered list_sandboxes with {other:?}"
            ))),
            Response::Err(e) => Err(ControlPlaneError::Unavailable(format!(
                "agent {agent_id}: {}",
                e.message
            ))),
        }
    }
}

fn unix(secs: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(secs).ok()
}

fn system(t: SystemTime) -> Option<OffsetDateTime> {
    Some(OffsetDateTime::from(t))
}

#[async_trait::async_trait]
impl ControlPlane for ConsoleControl {
    async fn agents(&self) -> Result<Vec<AgentView>, ControlPlaneError> {
        let identity = self.admin.identity.clone();
        let enrolled = tokio::task::spawn_blocking(move || identity.agents())
            .await
            .map_err(|e| ControlPlaneError::Unavailable(e.to_string()))?
            .map_err(|e| ControlPlaneError::Unavailable(e.to_string()))?;
        // The newest connection of each connected agent.
        let mut live: HashMap<String, crate::gateway::AgentInfo> = HashMap::new();
        for info in self.admin.directory.list() {
            let newer = live
                .get(&info.agent_id)
                .is_none_or(|old| old.connected_since < info.connected_since);
            if newer {
                live.insert(info.agent_id.clone(), info);
            }
        }
        let connected: Vec<String> = live.keys().cloned().collect();
        let counts = futures::future::join_all(connected.iter().map(|id| async move {
            (
                id.clone(),
                self.list_sandboxes(id).await.ok().map(|l| l.len()),
            )
        }))
        .await
        .into_iter()
        .collect::<HashMap<_, _>>();
        let mut out: Vec<AgentView> = enrolled
            .into_iter()
            .map(|a| {
                let id = a.agent_id.to_string();
                let info = live.get(&id);
                let state = if a.revoked_at.is_some() {
                    AgentState::Revoked
                } else if info.is_some() {
                    AgentState::Connected
                } else {
                    AgentState::Disconnected
                };
                AgentView {
                    environment_id: a.environment_id.to_string(),
                    state,
                    transport: info.map(|i| i.transport.to_string()),
                    version: info.map(|i| i.version.clone()),
                    cert_not_after: info
                        .and_then(|i| system(i.cert_not_after))
                        .or_else(|| unix(a.cert_not_after)),
                    last_heartbeat: info.and_then(|i| system(i.last_heartbeat)),
                    connected_since: info.and_then(|i| system(i.connected_since)),
                    remote_addr: info.map(|i| i.remote_addr.clone()),
                    enrolled_at: unix(a.enrolled_at),
                    revoked_at: a.revoked_at.and_then(unix),
                    sandboxes: counts.get(&id).copied().flatten(),
                    agent_id: id,
                }
            })
            .collect();
        out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        Ok(out)
    }

    async fn sandboxes(&self, agent_id: &str) -> Result<Vec<SandboxView>, ControlPlaneError> {
        if !self
            .admin
            .directory
            .list()
            .iter()
            .any(|a| a.agent_id == agent_id)
        {
            return Err(ControlPlaneError::NotConnected(agent_id.to_owned()));
        }
        self.list_sandboxes(agent_id).await
    }

    async fn placement(&self, session_id: &str, environment_id: &str) -> Option<Placement> {
        for agent_id in self.gateway.agents_of(environment_id) {
            let Ok(list) = self.list_sandboxes(&agent_id).await else {
                continue;
            };
            let mut mine: Vec<SandboxView> = list
                .into_iter()
                .filter(|s| s.session_id.as_deref() == Some(session_id))
                .collect();
            // the one the hands use: running first, then the oldest
            mine.sort_by(|a, b| {
                (a.state != "running", &a.created_at, &a.sandbox_id).cmp(&(
                    b.state != "running",
                    &b.created_at,
                    &b.sandbox_id,
                ))
            });
            if let Some(s) = mine.into_iter().next() {
                return Some(Placement {
                    agent_id,
                    sandbox_id: s.sandbox_id,
                });
            }
        }
        None
    }

    async fn revoke(&self, agent_id: &str) -> Result<RevokeOutcome, ControlPlaneError> {
        match crate::admin::revoke(&self.admin, agent_id).await {
            Ok(r) => Ok(RevokeOutcome {
                newly_revoked: r.newly_revoked,
                connections_closed: r.connections_closed,
            }),
            Err(AdminRequestError::UnknownAgent(a)) => Err(ControlPlaneError::UnknownAgent(a)),
            Err(AdminRequestError::BadId(_)) => {
                Err(ControlPlaneError::InvalidAgentId(agent_id.to_owned()))
            }
            Err(other) => Err(ControlPlaneError::Unavailable(other.to_string())),
        }
    }
}
