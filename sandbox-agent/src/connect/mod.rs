//! `sandbox-agent run`: load the enrolled identity, dial every control-plane
//! replica through the tunnel (one link each, see [`links`]; QUIC, TCP
//! fallback, proxy), serve their calls with one set of services, renew the
//! certificate over a live link, and drain every link on SIGTERM/SIGINT.
//!
//! Calls are dispatched by [`Dispatcher`]: `ping` and `echo` here;
//! `provision`/`execute`/`destroy`/`list_sandboxes` by the sandbox service
//! when it is running (Docker reachable, executor present), otherwise they
//! are answered `unavailable` with the reason; the relay calls and the MCP
//! calls (`mcp_list_tools`, `mcp_call_tool`, `mcp_validate`, see
//! [`crate::mcp`]) go to the local vault-bridge.

pub mod config;
pub mod links;
pub mod ops;
mod relay;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use protocol::call::{CallError, ErrorCode, Pong, Reply, Request, Response};
use rustls_pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tunnel::call::{CallHandler, CallIo};
use tunnel::client::{self, ClientSettings};

use crate::config::Config;
use crate::identity::renewal::{RenewalError, Renewer};
use crate::identity::AgentIdentity;
use crate::sandbox::service::ServiceConfig;
use crate::sandbox::SandboxService;

/// Why `run` could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The identity could not be loaded (not enrolled, bad files, no address).
    #[error("identity: {0}")]
    Identity(#[from] crate::identity::LoadError),
    /// The TLS client configuration could not be built.
    #[error("tls: {0}")]
    Tls(#[from] pki::TlsError),
    /// The ops listener (`[ops] listen`) could not be bound.
    #[error(transparent)]
    Ops(#[from] daemon::ops::OpsError),
    /// The control plane refused this agent as revoked; redialing cannot
    /// help. `main` exits with its own code so that systemd does not restart.
    #[error("agent {agent_id} is revoked by the control plane ({detail}); it will not reconnect. Re-enroll with a new join token: `sandbox-agent enroll --force --join <join string>` (create one with `control-plane tokens create`), then start the agent again")]
    Revoked {
        /// This agent's id.
        agent_id: String,
        /// The refusal as received.
        detail: String,
    },
    /// The control plane speaks no protocol version of this build (the
    /// refusal names both ranges); redialing cannot help.
    #[error("agent {agent_id}: the control plane refused this agent's protocol versions ({detail}); see docs/upgrades.md")]
    Incompatible {
        /// This agent's id.
        agent_id: String,
        /// The refusal as received.
        detail: String,
    },
}

/// Serves the control plane's calls.
#[derive(Clone)]
pub struct Dispatcher {
    sandboxes: Result<SandboxService, String>,
    bridge: Option<crate::sandbox::bridge::BridgeClient>,
    mcp: Result<crate::mcp::McpAgent, String>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("sandboxes", &self.sandboxes.is_ok())
            .field(
                "bridge",
                &self.bridge.as_ref().map(|b| b.socket().to_owned()),
            )
            .finish()
    }
}

impl Dispatcher {
    /// A dispatcher with `sandboxes`, or the reason there are none.
    pub fn new(sandboxes: Result<SandboxService, String>) -> Self {
        Self {
            sandboxes,
            bridge: None,
            mcp: Err("the agent was started without its MCP call record".into()),
        }
    }

    /// Serve the MCP calls with `mcp`, or refuse them with the reason it
    /// could not be set up.
    pub fn with_mcp(mut self, mcp: Result<crate::mcp::McpAgent, String>) -> Self {
        self.mcp = mcp;
        self
    }

    /// Forward the relay calls to the vault-bridge of `[bridge]` (absent:
    /// they are refused as unavailable).
    pub fn with_bridge(mut self, bridge: Option<&crate::sandbox::config::BridgeSettings>) -> Self {
        self.bridge = bridge.map(crate::sandbox::bridge::BridgeClient::new);
        self
    }

    #[allow(clippy::result_large_err)]
    fn service(&self) -> Result<&SandboxService, Response> {
        self.sandboxes.as_ref().map_err(|reason| {
            Response::Err(CallError::new(
                ErrorCode::Unavailable,
                format!("sandboxes are unavailable on this agent: {reason}"),
            ))
        })
    }
}

/// The answer to an MCP call when the agent's MCP part could not start.
fn mcp_unavailable(request: Request, reason: &str) -> Response {
    let message = format!("MCP is unavailable on this agent: {reason}");
    match request {
        Request::McpValidate(_) => Response::error(ErrorCode::Unavailable, message),
        r => Response::Ok(Reply::Mcp {
            call: r.name().to_owned(),
            reply: protocol::mcp::McpReply {
                outcome: protocol::mcp::McpOutcome::Failed {
                    failure: protocol::mcp::McpFailure::NoBridge,
                    message,
                },
                credential_id: None,
                replayed: false,
                tools_changed: false,
            },
        }),
    }
}

fn sandbox_error(e: &crate::sandbox::SandboxError) -> Response {
    Response::Err(CallError::from(crate::sandbox::to_wire_error(e)))
}

#[async_trait::async_trait]
impl CallHandler for Dispatcher {
    async fn handle(&self, request: Request, io: &mut CallIo) -> Response {
        match request {
            Request::Ping => Response::Ok(Reply::Pong(Pong {
                software_version: env!("CARGO_PKG_VERSION").to_owned(),
            })),
            Request::Echo => client::serve_echo(io).await,
            r if relay::is_relay(&r) => relay::handle(self.bridge.as_ref(), r).await,
            r if crate::mcp::is_mcp(&r) => match &self.mcp {
                Ok(mcp) => mcp.handle(r).await,
                Err(reason) => mcp_unavailable(r, reason),
            },
            Request::Provision(req) => match self.service() {
                Err(r) => r,
                Ok(s) => match s.provision(req).await {
                    Ok(p) => Response::Ok(Reply::Provision(p)),
                    Err(e) => sandbox_error(&e),
                },
            },
            Request::Execute(req) => match self.service() {
                Err(r) => r,
                Ok(s) => {
                    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
                    let stream = req.stream.then_some(tx);
                    let exec = s.execute(req, stream);
                    tokio::pin!(exec);
                    // Forward streamed output as data frames while the tool runs.
                    let result = loop {
                        tokio::select! {
                            r = &mut exec => break r,
                            Some(chunk) = rx.recv() => {
                                if let Err(error) = io.send_data(chunk).await {
                                    tracing::debug!(%error, "streamed output not delivered");
                                }
                            }
                        }
                    };
                    while let Ok(chunk) = rx.try_recv() {
                        let _ = io.send_data(chunk).await;
                    }
                    match result {
                        Ok(r) => Response::Ok(Reply::Execute(r)),
                        Err(e) => sandbox_error(&e),
                    }
                }
            },
            Request::Destroy(req) => match self.service() {
                Err(r) => r,
                Ok(s) => match s.destroy(req).await {
                    Ok(()) => Response::Ok(Reply::Destroy),
                    Err(e) => sandbox_error(&e),
                },
            },
            Request::ListSandboxes => match self.service() {
                Err(r) => r,
                Ok(s) => match s.list().await {
                    Ok(l) => Response::Ok(Reply::ListSandboxes(l)),
                    Err(e) => sandbox_error(&e),
                },
            },
            other => Response::error(
                ErrorCode::UnsupportedCall,
                format!("call `{}` is not supported by this agent", other.name()),
            ),
        }
    }
}

/// Renewal over the live tunnel: the CSR goes out on the control stream,
/// the chain comes back.
struct TunnelRenewer(Arc<links::Links>);

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl Renewer for TunnelRenewer {
    async fn renew(&self, csr_der: Vec<u8>) -> Result<Vec<CertificateDer<'static>>, RenewalError> {
        let chain_pem = self
            .0
            .renew(pem("CERTIFICATE REQUEST", &csr_der))
            .await
            .map_err(|e| match e.code {
                ErrorCode::Unavailable => RenewalError::Transport(e),
                _ => RenewalError::Refused(e),
            })?;
        pki::ca::pem_to_certs(&chain_pem).map_err(RenewalError::BadChain)
    }
}

/// Build the tunnel client settings from config and identity.
pub fn client_settings(config: &Config, identity: &AgentIdentity) -> ClientSettings {
    let t = &config.tunnel;
    let endpoint = identity.endpoint();
    let mut s = ClientSettings::new(
        endpoint.address.clone(),
        endpoint.server_name.clone(),
        identity.identity().agent_id.as_str(),
    );
    s.mode = t.transport;
    s.proxy = t.proxy.clone();
    s.quic_connect_timeout = t.quic_connect_timeout;
    s.quic_retry_interval = t.quic_retry_interval;
    s.connect_timeout = t.connect_timeout;
    s.heartbeat_misses = t.heartbeat_misses;
    s.max_frame_bytes = t.max_frame_bytes;
    s.backoff = t.backoff;
    s.drain_deadline = t.drain_deadline;
    s.tuning.max_udp_payload_bytes = t.quic_max_udp_payload_bytes;
    s.software_version = env!("CARGO_PKG_VERSION").to_owned();
    s.capabilities = vec![
        "echo".into(),
        "renew".into(),
        "sandbox".into(),
        "mcp".into(),
    ];
    s
}

/// Run the agent until SIGTERM/SIGINT, then drain; or until the control
/// plane refuses it as revoked, then stop at once with [`RunError::Revoked`].
pub async fn run(config: Config) -> Result<(), RunError> {
    let cfg = config.clone();
    let identity = tokio::task::spawn_blocking(move || AgentIdentity::load(&cfg))
        .await
        .map_err(crate::identity::LoadError::Task)??;
    let tls = Arc::new(identity.client_config(&[tunnel::ALPN])?);
    let ops_server = daemon::ops::bind(&config.ops).await?;
    if let Some(server) = &ops_server {
        // Machine-readable, like the control plane's addresses (tests read it).
        println!("ops_addr={}", server.local_addr());
    }
    let agent_id = identity.identity().agent_id.as_str().to_owned();

    // One audit log for the whole agent, shared by the sandbox service and
    // the MCP dispatcher (one chain, one writer). Without it neither serves
    // calls: nothing may run unaudited.
    let audit = crate::audit::AuditLog::open_with(&config.audit, &agent_id).map_err(|error| {
        tracing::error!(agent_id = %agent_id, %error, dir = %config.audit.dir.display(),
            "audit log unavailable; sandbox and MCP calls will be refused");
        format!("the audit log could not be opened: {error}")
    });
    if let Ok(log) = &audit {
        let st = log.status();
        tracing::info!(agent_id = %agent_id, dir = %config.audit.dir.display(), healthy = st.healthy, "audit log open");
    }

    let sandboxes = if let Err(reason) = &audit {
        Err(reason.clone())
    } else if config.sandbox.executor_path.is_file() {
        let service_config = ServiceConfig {
            agent_id: agent_id.clone(),
            data_dir: config.data_dir.clone(),
            sandbox: config.sandbox.clone(),
            policy: config.policy.clone(),
            pool: config.pool.clone(),
        };
        let log = audit.clone().map_err(|reason| reason.to_string());
        let started = match log {
            Ok(log) => SandboxService::start_with_audit(service_config, log).await,
            Err(reason) => Err(crate::sandbox::SandboxError::Internal(reason)),
        };
        match started {
            Ok((service, report)) => {
                tracing::info!(agent_id = %agent_id, adopted = report.adopted.len(), removed = report.removed.len(), "sandbox service started");
                Ok(service)
            }
            Err(error) => {
                tracing::warn!(agent_id = %agent_id, %error, "sandbox service unavailable; sandbox calls will be refused");
                Err(error.to_string())
            }
        }
    } else {
        let reason = format!(
            "executor binary {} not found (sandbox.executor_path)",
            config.sandbox.executor_path.display()
        );
        tracing::warn!(agent_id = %agent_id, %reason, "sandbox service not started");
        Err(reason)
    };
    let service = sandboxes.as_ref().ok().cloned();
    let ops_sandboxes = sandboxes.clone();
    let mcp = audit.clone().and_then(|log| {
        crate::mcp::McpAgent::open_with_audit(
            &config.data_dir,
            config.sandbox.record_retention,
            config.sandbox.bridge.as_ref(),
            config.policy.mcp_hosts.clone(),
            log,
        )
        .map_err(|error| {
            tracing::error!(agent_id = %agent_id, %error, "MCP calls will be refused");
            error.to_string()
        })
    });

    let mut settings = client_settings(&config, &identity);
    // The control plane keeps every checkpoint head and the log's health
    // (sent at every connect and on every change, on every link).
    settings.audit_status = audit.as_ref().ok().map(|log| log.watch_status());
    let addresses = identity.endpoint().addresses.clone();
    tracing::info!(agent_id = %agent_id, addresses = ?addresses, transport = ?settings.mode,
        proxy = ?settings.proxy.as_ref().map(|p| p.to_string()), "sandbox-agent running");
    let drain = settings.drain_deadline;
    let endpoint = identity.endpoint().clone();
    let handle = Arc::new(links::Links::start(
        &addresses,
        settings,
        move |configured| endpoint.server_name_for(configured),
        tls,
        Arc::new(
            Dispatcher::new(sandboxes)
                .with_bridge(config.sandbox.bridge.as_ref())
                .with_mcp(mcp),
        ),
    ));

    let stop = CancellationToken::new();
    // The ops listener (`[ops]`; off when absent), stopped with the rest.
    let ops_task = ops_server.map(|server| {
        let ops = ops::ops(
            handle.clone(),
            ops_sandboxes,
            audit.clone(),
            identity.clone(),
        );
        tokio::spawn(server.serve(ops, stop.clone().cancelled_owned()))
    });
    let renewal = tokio::spawn(crate::identity::renewal::run(
        identity.clone(),
        TunnelRenewer(handle.clone()),
        stop.clone(),
    ));

    let mut incompatible = None;
    let revoked = tokio::select! {
        _ = shutdown_signal() => None,
        detail = handle.revoked() => Some(detail),
        detail = handle.incompatible() => {
            incompatible = Some(detail);
            None
        }
    };
    match &revoked {
        // Revoked on one link: the identity is revoked; stop every link.
        Some(_) => tracing::info!(agent_id = %agent_id, "revoked; stopping"),
        None => {
            tracing::info!(agent_id = %agent_id, drain_ms = drain.as_millis() as u64, "draining")
        }
    }
    stop.cancel();
    // One shutdown path: every link drains under the same deadline (none
    // for a revoked agent: it must not serve another call).
    let deadline = if revoked.is_some() {
        Duration::ZERO
    } else {
        drain
    };
    handle.shutdown(deadline).await;
    if let Some(task) = ops_task {
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), renewal).await;
    if let Some(service) = service {
        if revoked.is_some() {
            // A revoked agent's sandboxes lose their way out at once.
            service.close_all_egress().await;
        }
        // Sandboxes are kept (as on SIGTERM); the next start adopts or removes them.
        service.shutdown(false).await;
    }
    if let Ok(log) = &audit {
        // A clean stop signs the chain head, so a later cut shows.
        match log.checkpoint_now() {
            Ok(Some(c)) => {
                tracing::info!(agent_id = %agent_id, seq = c.seq, "audit checkpoint at shutdown")
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(agent_id = %agent_id, %error, "audit checkpoint at shutdown failed")
            }
        }
    }
    tracing::info!(agent_id = %agent_id, "stopped");
    match (revoked, incompatible) {
        (Some(detail), _) => Err(RunError::Revoked { agent_id, detail }),
        (None, Some(detail)) => Err(RunError::Incompatible { agent_id, detail }),
        (None, None) => Ok(()),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT stops the agent");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
