//! The gateway: where sandbox-agents' dialed-out connections land. It binds
//! the tunnel listener (UDP for QUIC and TCP for the fallback, one port
//! number), authenticates each connection by its verified client certificate
//! (agent id, environment and expiry read with `pki`), checks the hello
//! (agent id matches the certificate, a common protocol version, not
//! revoked), keeps the [`Registry`] of live connections, carries certificate
//! renewal over the live connection, hands each agent's audit statuses to
//! the [`crate::audit::CheckpointReceiver`] (tagged with the agent id of the
//! verified certificate), and lets the rest of the control plane call an
//! agent ([`GatewayHandle::call`]).
//!
//! Bad input (a malformed hello, an unknown version, a mismatched id) is
//! answered with a typed rejection, logged once with the peer identity, and
//! closes only that connection.

pub mod config;
pub mod identities;
pub mod registry;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use pki::{IdentityService, PeerIdentity, RenewError};
use protocol::{CallError, ErrorCode, RejectCode, Request, Response};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tunnel::server::TrackedCall;
use tunnel::{CallFailure, CloseReason, Listener, PendingConnection, ServerSettings};

pub use config::GatewayConfig;
pub use identities::SharedIdentities;
use registry::Entry;
pub use registry::{AgentAudit, AgentDirectory, AgentInfo, Registry, Transport};

/// The gateway failed to start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The tunnel TLS configuration could not be built.
    #[error("tunnel tls configuration: {0}")]
    Tls(#[from] pki::TlsError),
    /// The listener could not bind or use the TLS configuration.
    #[error("tunnel listener: {0}")]
    Listen(#[from] tunnel::ListenError),
}

/// Which agent a call goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// This agent.
    Agent(String),
    /// Any connected agent of this environment.
    Environment(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Agent(a) => write!(f, "agent {a}"),
            Target::Environment(e) => write!(f, "environment {e}"),
        }
    }
}

/// A call through the gateway failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentCallError {
    /// No connected, non-draining agent matches the target (transient).
    #[error("no connected agent for {0}")]
    NotConnected(Target),
    /// The call failed on the tunnel (connection lost, draining, bad frames).
    #[error("call to agent {agent_id} failed: {source}")]
    Tunnel {
        /// The agent called.
        agent_id: String,
        /// What happened.
        source: CallFailure,
    },
}

/// Calls agents; cheap to clone, handed to the rest of the control plane.
#[derive(Debug, Clone)]
pub struct GatewayHandle {
    registry: Arc<Registry>,
}

impl GatewayHandle {
    /// A handle over `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// The registry (also the admin surface's [`AgentDirectory`]).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Ids of the connected agents of `environment_id`, sorted, once each.
    pub fn agents_of(&self, environment_id: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .registry
            .list()
            .into_iter()
            .filter(|a| a.environment_id == environment_id)
            .map(|a| a.agent_id)
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Open a call to `target`: send request data with `call.sender`, read
    /// streamed output and the response with `call.receiver`. If the
    /// connection dies, every read and write fails with
    /// [`CallFailure::ConnectionLost`] at once.
    pub async fn call(
        &self,
        target: &Target,
        request: &Request,
    ) -> Result<(String, TrackedCall), AgentCallError> {
        self.open(target, request, None).await
    }

    /// Open a call on `target` whose whole input is `request` plus `data`,
    /// sent with the end of input in one write (the usual shape of a call:
    /// fewer packets and wake-ups than `call` + `send_data` + `finish`).
    /// Only the receiver is left to use, after the input is written: for
    /// inputs of a few MiB at most (the stream window); to stream a large
    /// input while reading the output, use [`Self::call`].
    pub async fn call_finished(
        &self,
        target: &Target,
        request: &Request,
        data: Bytes,
    ) -> Result<(String, TrackedCall), AgentCallError> {
        self.open(target, request, Some(data)).await
    }

    /// Pick a connection for `target` and open the call on it (with
    /// `input`: written and finished at once).
    async fn open(
        &self,
        target: &Target,
        request: &Request,
        input: Option<Bytes>,
    ) -> Result<(String, TrackedCall), AgentCallError> {
        let count = |outcome: &'static str| {
            metrics::counter!("airlock_agent_calls_total", "call" => request.name().to_owned(), "outcome" => outcome)
                .increment(1);
        };
        let Some((agent_id, conn)) = self.registry.pick(target) else {
            count("not_connected");
            return Err(AgentCallError::NotConnected(target.clone()));
        };
        let opened = match input {
            None => conn.call(request).await,
            Some(data) => conn.call_finished(request, data).await,
        };
        count(if opened.is_ok() {
            "opened"
        } else {
            "tunnel_error"
        });
        match opened {
            Ok(call) => Ok((agent_id, call)),
            Err(source) => Err(AgentCallError::Tunnel { agent_id, source }),
        }
    }

    /// A call without request data: returns streamed output and the response.
    pub async fn call_unary(
        &self,
        target: &Target,
        request: &Request,
    ) -> Result<(Bytes, Response), AgentCallError> {
        let (agent_id, call) = self.call_finished(target, request, Bytes::new()).await?;
        match call.finish_and_collect().await {
            Ok(r) => Ok(r),
            Err(source) => {
                if !matches!(source, CallFailure::ConnectionLost(_)) {
                    tracing::warn!(agent_id = %agent_id, call = request.name(), error = %source, "agent call failed");
                }
                Err(AgentCallError::Tunnel { agent_id, source })
            }
        }
    }
}

/// A bound gateway, not yet serving.
pub struct Gateway {
    listener: Listener,
    settings: ServerSettings,
    drain_deadline: Duration,
    identity: Arc<IdentityService>,
    registry: Arc<Registry>,
    audit: Option<Arc<crate::audit::CheckpointReceiver>>,
    shared: Option<SharedIdentities>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("local_addr", &self.listener.local_addr())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Bind the tunnel listener on `listen` (`tunnel.listen`).
    pub async fn bind(
        config: &GatewayConfig,
        listen: SocketAddr,
        identity: Arc<IdentityService>,
        registry: Arc<Registry>,
    ) -> Result<Self, GatewayError> {
        let tls = identity.tunnel_server_config(&[tunnel::ALPN])?;
        let settings = config.server_settings(listen);
        // Keyed by the CA: a restarted control plane's stateless resets are
        // accepted by agents still holding a connection to its predecessor.
        let reset_key = tunnel::server::StatelessResetKey::new(
            identity
                .ca()
                .derive_secret("airlock tunnel quic stateless reset v1"),
        );
        let listener =
            Listener::bind_with_reset_key(settings.clone(), Arc::new(tls), Some(reset_key)).await?;
        Ok(Self {
            listener,
            settings,
            drain_deadline: config.drain_deadline,
            identity,
            registry,
            audit: None,
            shared: None,
        })
    }

    /// Share identities with the other replicas through `catalog` (see
    /// [`identities`]): agents enrolled elsewhere are accepted and renewed
    /// here, renewals are mirrored, and revocations made at any replica
    /// close the agent's links here within about [`identities::POLL`].
    pub fn with_shared_identities(mut self, catalog: Arc<dyn catalog::Catalog>) -> Self {
        self.shared = Some(SharedIdentities::new(catalog, self.identity.clone()));
        self
    }

    /// Hand the agents' audit statuses to `receiver` (without one they are
    /// dropped).
    pub fn with_audit(mut self, receiver: Arc<crate::audit::CheckpointReceiver>) -> Self {
        self.audit = Some(receiver);
        self
    }

    /// Where it listens (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// A handle for calling agents.
    pub fn handle(&self) -> GatewayHandle {
        GatewayHandle {
            registry: self.registry.clone(),
        }
    }

    /// Accept connections until `shutdown`; then send every agent a goaway,
    /// let in-flight calls finish until the drain deadline, and close.
    pub async fn serve(mut self, shutdown: CancellationToken, tracker: TaskTracker) {
        if let Some(shared) = self.shared.clone() {
            let registry = self.registry.clone();
            let stop = shutdown.clone();
            tracker.spawn(async move {
                identities::publish_all(&shared).await;
                shared.watch_revocations(registry, stop).await;
            });
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                pending = self.listener.accept() => match pending {
                    Some(pending) => {
                        let ctx = AcceptContext {
                            settings: self.settings.clone(),
                            identity: self.identity.clone(),
                            registry: self.registry.clone(),
                            audit: self.audit.clone(),
                            shared: self.shared.clone(),
                        };
                        tracker.spawn(ctx.handle(pending));
                    }
                    None => break,
                },
            }
        }
        self.listener.stop_accepting();
        let conns = self.registry.connections();
        tracing::info!(
            connections = conns.len(),
            drain_deadline_ms = self.drain_deadline.as_millis() as u64,
            "gateway draining"
        );
        for c in &conns {
            c.goaway("shutdown", self.drain_deadline);
        }
        // One deadline for all: wait for each in turn with what is left of it.
        let until = tokio::time::Instant::now() + self.drain_deadline;
        let mut drained = true;
        for c in &conns {
            drained &= c
                .drained(until.saturating_duration_since(tokio::time::Instant::now()))
                .await;
        }
        for c in &conns {
            c.close(CloseReason::Shutdown);
        }
        self.listener.shutdown(Duration::from_millis(500)).await;
        tracing::info!(graceful = drained, "gateway stopped");
    }
}

struct AcceptContext {
    settings: ServerSettings,
    identity: Arc<IdentityService>,
    registry: Arc<Registry>,
    audit: Option<Arc<crate::audit::CheckpointReceiver>>,
    shared: Option<SharedIdentities>,
}

impl AcceptContext {
    async fn handle(self, pending: PendingConnection) {
        let remote_addr = pending.remote_addr();
        let transport = pending.transport();
        let Some(leaf) = pending.peer_certificates().first() else {
            tracing::warn!(%remote_addr, %transport, "connection without a client certificate refused");
            pending
                .reject(RejectCode::IdentityMismatch, "no client certificate")
                .await;
            return;
        };
        let identity = match pki::peer_identity(leaf) {
            Ok(i) => i,
            Err(error) => {
                tracing::warn!(%remote_addr, %transport, %error, "client certificate names no agent; refused");
                pending
                    .reject(RejectCode::IdentityMismatch, error.to_string())
                    .await;
                return;
            }
        };
        let agent_id = identity.agent_id.as_str().to_owned();
        let span = tracing::info_span!("agent", agent_id = %agent_id, environment_id = %identity.environment_id, %transport, %remote_addr);
        // Instrumented, never entered across an await: an entered span stays
        // on the worker thread while this task sleeps, and the events of every
        // task later run there nest in it (10,000 agents connecting: log lines
        // of ~100 KB, 2 GB of log in 3 minutes, handshakes timing out).
        tracing::Instrument::instrument(self.accepted(pending, identity, agent_id), span).await
    }

    /// The rest of [`Self::handle`], in the agent's span.
    async fn accepted(self, pending: PendingConnection, identity: PeerIdentity, agent_id: String) {
        // Enrolled at another replica: take in the catalog's record first
        // (so it is listed and renewed here, and a revocation there counts).
        if let Some(shared) = &self.shared {
            let svc = self.identity.clone();
            let id = identity.agent_id.clone();
            let known = tokio::task::spawn_blocking(move || svc.agent(&id))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
                .is_some();
            if !known && shared.adopt(&identity.agent_id).await {
                self.identity
                    .revocations()
                    .insert(identity.agent_id.clone());
            }
        }
        if self.identity.revocations().is_revoked(&identity.agent_id) {
            tracing::warn!(agent_id = %agent_id, "revoked agent refused");
            pending
                .reject(RejectCode::Revoked, format!("agent {agent_id} is revoked"))
                .await;
            return;
        }
        let hello = match pending.hello() {
            Ok(h) => h.clone(),
            Err(error) => {
                tracing::warn!(agent_id = %agent_id, %error, "malformed hello; connection refused");
                let message = error.to_string();
                pending.reject(RejectCode::Malformed, message).await;
                return;
            }
        };
        if hello.agent_id != agent_id {
            tracing::warn!(agent_id = %agent_id, claimed = %hello.agent_id, "hello names another agent than the certificate; refused");
            pending
                .reject(
                    RejectCode::IdentityMismatch,
                    format!(
                        "hello names {} but the certificate names {agent_id}",
                        hello.agent_id
                    ),
                )
                .await;
            return;
        }
        let Some(version) = pending.negotiate() else {
            tracing::warn!(agent_id = %agent_id, min = hello.min_version, max = hello.max_version, "no common protocol version; refused");
            pending
                .reject(
                    RejectCode::UnsupportedVersion,
                    protocol::hello::unsupported_message(
                        (hello.min_version, hello.max_version),
                        (
                            protocol::hello::PROTOCOL_VERSION_MIN,
                            protocol::hello::PROTOCOL_VERSION_MAX,
                        ),
                    ),
                )
                .await;
            return;
        };
        let cert_not_after = Arc::new(Mutex::new(identity.not_after));
        let renew = renew_fn(
            self.identity.clone(),
            identity.clone(),
            cert_not_after.clone(),
            self.shared.clone(),
        );
        let conn = match pending
            .accept(version, &self.settings, Some(renew), agent_id.clone())
            .await
        {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(agent_id = %agent_id, %error, "could not answer hello");
                return;
            }
        };
        tracing::info!(agent_id = %agent_id, software_version = %hello.software_version, version, "agent connected");
        let id = conn.id();
        let audit_task = match (&self.audit, conn.take_audit_statuses()) {
            (Some(receiver), Some(mut statuses)) => {
                let receiver = receiver.clone();
                let agent_id = agent_id.clone();
                let conn = conn.clone();
                Some(tokio::spawn(async move {
                    // One at a time, in order of arrival; errors are logged
                    // and counted by the receiver. Once the link is gone,
                    // what was already received is still stored.
                    loop {
                        tokio::select! {
                            biased;
                            status = statuses.recv() => match status {
                                Some(status) => { let _ = receiver.receive(&agent_id, status).await; }
                                None => break,
                            },
                            _ = conn.closed() => {
                                while let Ok(status) = statuses.try_recv() {
                                    let _ = receiver.receive(&agent_id, status).await;
                                }
                                break;
                            }
                        }
                    }
                }))
            }
            _ => None,
        };
        self.registry.insert(Entry {
            conn: conn.clone(),
            identity,
            software_version: hello.software_version,
            cert_not_after,
        });
        let reason = conn.closed().await;
        self.registry.remove(id);
        if let Some(task) = audit_task {
            // Statuses already queued are stored; then the reader ends with the link.
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        tracing::info!(agent_id = %agent_id, %reason, "agent disconnected");
    }
}

/// Renewal over the live connection: issue for the CSR, bound to the peer's
/// verified identity; the one place renewal errors map to the wire.
fn renew_fn(
    identity: Arc<IdentityService>,
    peer: PeerIdentity,
    not_after: Arc<Mutex<SystemTime>>,
    shared: Option<SharedIdentities>,
) -> tunnel::RenewFn {
    Arc::new(move |csr_pem: String| {
        use rustls_pki_types::pem::PemObject;
        let der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
                .map_err(|e| {
                    CallError::new(ErrorCode::BadRequest, format!("csr is not PEM: {e}"))
                })?;
        match identity.renew(&peer, der.as_ref()) {
            Ok(cert) => {
                if let Ok(mut t) = not_after.lock() {
                    *t = cert.not_after;
                }
                tracing::info!(agent_id = %peer.agent_id, not_after = %crate::rfc3339::display(cert.not_after), "certificate renewed over the tunnel");
                // The other replicas see the new serial and expiry.
                if let (Some(shared), Ok(rt)) =
                    (shared.clone(), tokio::runtime::Handle::try_current())
                {
                    let id = peer.agent_id.clone();
                    rt.spawn(async move { shared.publish(&id).await });
                }
                Ok(cert.chain_pem())
            }
            Err(error) => {
                tracing::warn!(agent_id = %peer.agent_id, %error, "renewal refused");
                let code = match &error {
                    RenewError::Revoked(_) | RenewError::UnknownAgent(_) => ErrorCode::Forbidden,
                    RenewError::Internal(_) => ErrorCode::Internal,
                    _ => ErrorCode::BadRequest,
                };
                Err(CallError::new(code, error.to_string()))
            }
        }
    })
}
