//! The registry of live agent connections: who is connected (one
//! [`AgentInfo`] per connection, as `agents list` shows it), which connection
//! a call to an agent or an environment goes to, and closing every connection
//! of a revoked agent. The gateway inserts and removes entries as
//! connections come and go; the admin socket and `hands` read it through
//! [`AgentDirectory`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pki::{AgentId, PeerIdentity};
use tunnel::{CloseReason, ServerConnection};

use super::Target;

/// Transport an agent is connected over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// QUIC over UDP.
    Quic,
    /// TLS over TCP (h2-multiplexed fallback).
    Tcp,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Quic => "quic",
            Self::Tcp => "tcp",
        })
    }
}

/// One connected agent, as the registry sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentInfo {
    /// Agent id (from its verified certificate).
    pub agent_id: String,
    /// Environment id (from its verified certificate).
    pub environment_id: String,
    /// Software version from its hello.
    pub version: String,
    /// Transport in use.
    pub transport: Transport,
    /// When this connection was established.
    #[serde(with = "crate::rfc3339")]
    pub connected_since: SystemTime,
    /// Last heartbeat received.
    #[serde(with = "crate::rfc3339")]
    pub last_heartbeat: SystemTime,
    /// Expiry of the certificate it connected with (or renewed to).
    #[serde(with = "crate::rfc3339")]
    pub cert_not_after: SystemTime,
    /// Remote address of the connection.
    pub remote_addr: String,
    /// The agent's audit condition as last received (filled in by the
    /// admin socket from the catalog; absent when nothing was received).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AgentAudit>,
}

/// An agent's audit condition in `agents list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentAudit {
    /// Whether its audit log takes writes.
    pub healthy: bool,
    /// What is wrong, when not healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// `seq` of the last checkpoint stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint_seq: Option<u64>,
}

/// What the admin socket and the tool-call path need from the registry of
/// live connections ([`Registry`] is the one implementation).
/// Both methods must be quick and must not block on network I/O.
pub trait AgentDirectory: Send + Sync + 'static {
    /// Every connected agent (one entry per connection).
    fn list(&self) -> Vec<AgentInfo>;
    /// Start closing every live connection of `agent_id` (with an application
    /// close code meaning "revoked"); returns how many were found. Must not
    /// wait for the close to complete, but the close must be under way
    /// immediately: revocation promises it within a second.
    fn disconnect(&self, agent_id: &AgentId) -> usize;
    /// Open a `ping` call on `agent_id`'s newest live connection and time
    /// its round trip (the admin socket's `POST /v1/agents/{id}/ping`).
    fn ping(&self, agent_id: &AgentId) -> PingFuture {
        let _ = agent_id;
        Box::pin(async { Err(PingError::Failed("ping is not offered here".into())) })
    }
}

/// What [`AgentDirectory::ping`] returns: the round trip.
pub type PingFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Duration, PingError>> + Send>>;

/// Why a ping got no pong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PingError {
    /// No live, non-draining connection of the agent.
    #[error("agent {0} is not connected")]
    NotConnected(String),
    /// The call failed or was answered with something else than a pong.
    #[error("{0}")]
    Failed(String),
}

/// One live connection in the registry.
pub(super) struct Entry {
    pub(super) conn: ServerConnection,
    pub(super) identity: PeerIdentity,
    pub(super) software_version: String,
    pub(super) cert_not_after: Arc<Mutex<SystemTime>>,
}

/// Connected agents, by connection id. Implements [`AgentDirectory`].
#[derive(Default)]
pub struct Registry {
    entries: Mutex<HashMap<u64, Entry>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("connections", &self.len())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// No live connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn insert(&self, entry: Entry) {
        if let Ok(mut e) = self.entries.lock() {
            e.insert(entry.conn.id(), entry);
        }
    }

    pub(super) fn remove(&self, id: u64) {
        if let Ok(mut e) = self.entries.lock() {
            e.remove(&id);
        }
    }

    pub(super) fn connections(&self) -> Vec<ServerConnection> {
        self.entries
            .lock()
            .map(|e| e.values().map(|x| x.conn.clone()).collect())
            .unwrap_or_default()
    }

    /// The best connection for `target`: not draining, not closed; for an
    /// agent its newest connection, for an environment the agent with the
    /// fewest calls in flight.
    pub(super) fn pick(&self, target: &Target) -> Option<(String, ServerConnection)> {
        let entries = self.entries.lock().ok()?;
        let usable = entries
            .values()
            .filter(|e| !e.conn.is_draining() && !e.conn.is_closed());
        match target {
            Target::Agent(id) => usable
                .filter(|e| e.identity.agent_id.as_str() == id)
                .max_by_key(|e| e.conn.connected_at())
                .map(|e| (id.clone(), e.conn.clone())),
            Target::Environment(env) => usable
                .filter(|e| e.identity.environment_id.as_str() == env)
                .min_by_key(|e| e.conn.in_flight())
                .map(|e| (e.identity.agent_id.as_str().to_owned(), e.conn.clone())),
        }
    }
}

fn transport(t: tunnel::Transport) -> Transport {
    match t {
        tunnel::Transport::Quic => Transport::Quic,
        tunnel::Transport::Tcp => Transport::Tcp,
    }
}

impl AgentDirectory for Registry {
    fn list(&self) -> Vec<AgentInfo> {
        let Ok(entries) = self.entries.lock() else {
            return Vec::new();
        };
        let mut out: Vec<AgentInfo> = entries
            .values()
            .filter(|e| !e.conn.is_closed())
            .map(|e| AgentInfo {
                agent_id: e.identity.agent_id.as_str().to_owned(),
                environment_id: e.identity.environment_id.as_str().to_owned(),
                version: e.software_version.clone(),
                transport: transport(e.conn.transport()),
                connected_since: e.conn.connected_at(),
                last_heartbeat: e.conn.last_heartbeat(),
                cert_not_after: e
                    .cert_not_after
                    .lock()
                    .map(|t| *t)
                    .unwrap_or(e.identity.not_after),
                remote_addr: e.conn.remote_addr().to_string(),
                audit: None,
            })
            .collect();
        out.sort_by(|a, b| (&a.agent_id, a.connected_since).cmp(&(&b.agent_id, b.connected_since)));
        out
    }

    fn ping(&self, agent_id: &AgentId) -> PingFuture {
        let picked = self.pick(&Target::Agent(agent_id.as_str().to_owned()));
        let agent_id = agent_id.as_str().to_owned();
        Box::pin(async move {
            let Some((_, conn)) = picked else {
                return Err(PingError::NotConnected(agent_id));
            };
            let failed =
                |e: tunnel::CallFailure| PingError::Failed(format!("ping {agent_id}: {e}"));
            let start = Instant::now();
            let call = conn
                .call_finished(&protocol::Request::Ping, bytes::Bytes::new())
                .await
                .map_err(failed)?;
            let (_, response) = call.finish_and_collect().await.map_err(failed)?;
            match response {
                protocol::Response::Ok(protocol::Reply::Pong(_)) => Ok(start.elapsed()),
                other => Err(PingError::Failed(format!(
                    "ping {agent_id}: answered {other:?}"
                ))),
            }
        })
    }

    fn disconnect(&self, agent_id: &AgentId) -> usize {
        let Ok(mut entries) = self.entries.lock() else {
            return 0;
        };
        let ids: Vec<u64> = entries
            .iter()
            .filter(|(_, e)| &e.identity.agent_id == agent_id)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some(e) = entries.remove(id) {
                tracing::info!(agent_id = %agent_id, transport = %e.conn.transport(), "closing connection: agent revoked");
                e.conn.close(CloseReason::Revoked);
            }
        }
        ids.len()
    }
}
