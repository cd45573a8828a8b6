//! `vault-bridge serve`: open the backend (retrying while it is transiently
//! unavailable), check its health, log that the bridge is ready, keep
//! checking health, and on the shutdown signal stop background work within
//! the grace period. Later pieces (the agent channel, the egress listeners)
//! start and stop here too, on the same shutdown path.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{self, BackendError, SecretBackend};
use crate::config::Config;

/// How often the running bridge checks its backend.
const HEALTH_INTERVAL: Duration = Duration::from_secs(30);
/// Pauses between attempts to open a backend that is down or sealed.
const OPEN_RETRY: settings::BackoffPolicy = settings::BackoffPolicy::new(
    Duration::from_millis(500),
    Duration::from_secs(30),
    settings::Jitter::None,
);

/// Why `serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The backend cannot be opened and retrying will not help (wrong key,
    /// bad key file mode, corrupt store, permission denied).
    #[error("cannot open the secret backend: {0}")]
    Backend(#[source] BackendError),
    /// The egress proxy cannot start (CA, upstream trust roots, socket dir).
    #[error("cannot start the egress proxy: {0}")]
    Egress(String),
    /// The agent channel socket cannot be bound.
    #[error(transparent)]
    AgentChannel(#[from] crate::agent_channel::ChannelError),
    /// The ops listener (`[ops] listen`) cannot be bound.
    #[error(transparent)]
    Ops(#[from] daemon::ops::OpsError),
}

/// The bridge's readiness: the backend answers its health check (reachable,
/// unsealed) once it is open, and the agent socket is bound; the health
/// result also sets `airlock_bridge_backend_healthy`.
fn ops(
    backend: Arc<std::sync::OnceLock<Arc<dyn SecretBackend>>>,
    socket: &daemon::ops::Flag,
) -> daemon::ops::Ops {
    daemon::ops::Ops::new()
        .check("backend", move || {
            let backend = backend.get().cloned();
            async move {
                let Some(backend) = backend else {
                    return Err("secret backend not open yet (retrying)".to_owned());
                };
                let r = backend
                    .health()
                    .await
                    .map_err(|e| format!("secret backend unhealthy: {e}"));
                metrics::gauge!("airlock_bridge_backend_healthy")
                    .set(f64::from(u8::from(r.is_ok())));
                r
            }
        })
        .flag("agent_socket", socket)
}

/// The egress proxy and its per-sandbox listeners, from `[egress]`.
fn egress_listeners(
    config: &Config,
    relay: &Arc<crate::relay::Relay>,
    audit: Arc<crate::audit_journal::AuditJournal>,
) -> Result<Arc<crate::agent_channel_egress::EgressListeners>, ServeError> {
    use crate::egress::{self, Egress, EgressCa, TrustRoots, Upstream};
    let ca_dir = egress::ca_dir(&config.bridge.data_dir);
    let ca = EgressCa::load_or_create(&ca_dir)
        .map_err(|e| ServeError::Egress(format!("egress ca in {}: {e}", ca_dir.display())))?;
    let roots = if config.egress.upstream_ca_files.is_empty() {
        TrustRoots::Webpki
    } else {
        TrustRoots::Files(config.egress.upstream_ca_files.clone())
    };
    let upstream = Upstream::new(
        &roots,
        Arc::new(egress::SystemResolver),
        config.egress.connect_timeout,
    )
    .map_err(|e| ServeError::Egress(e.to_string()))?;
    let proxy = Arc::new(Egress::new(
        ca,
        upstream,
        Arc::new(crate::relay::BridgeSecrets(relay.clone())),
        audit,
    ));
    crate::agent_channel_egress::EgressListeners::new(&config.egress.socket_dir, proxy)
        .map(Arc::new)
        .map_err(|e| ServeError::Egress(e.to_string()))
}

/// Run the bridge until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    tokio::pin!(shutdown);
    // The ops listener (`[ops]`; off when absent) answers from the start:
    // /readyz says what is missing while the backend is retried.
    let opened = Arc::new(std::sync::OnceLock::<Arc<dyn SecretBackend>>::new());
    let socket_bound = daemon::ops::Flag::down("agent socket not bound yet");
    let (stop_ops, ops_stopped) = tokio::sync::oneshot::channel::<()>();
    let ops_task = match daemon::ops::bind(&config.ops).await? {
        Some(server) => {
            // Machine-readable, like the other daemons' addresses.
            println!("ops_addr={}", server.local_addr());
            let ops = ops(opened.clone(), &socket_bound);
            Some(tokio::spawn(server.serve(ops, async move {
                let _ = ops_stopped.await;
            })))
        }
        None => None,
    };
    let mut retry = 0u32;
    let backend: Arc<dyn SecretBackend> = loop {
        tokio::select! {
            opened = backend::open(&config.backend) => match opened {
                Ok(b) => break b,
                Err(error) if error.is_transient() => {
                    let pause = OPEN_RETRY.delay(retry, 0.0);
                    retry = retry.saturating_add(1);
                    tracing::warn!(%error, retry_in_ms = pause.as_millis() as u64, "secret backend unavailable; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = &mut shutdown => {
                            tracing::info!("vault-bridge stopped before its backend opened");
                            return Ok(());
                        }
                    }
                }
                Err(error) => return Err(ServeError::Backend(error)),
            },
            () = &mut shutdown => {
                tracing::info!("vault-bridge stopped before its backend opened");
                return Ok(());
            }
        }
    };
    let _ = opened.set(backend.clone());
    let mut healthy = match backend.health().await {
        Ok(()) => true,
        Err(error) if error.is_transient() => {
            tracing::warn!(%error, "secret backend unhealthy at start");
            false
        }
        Err(error) => return Err(ServeError::Backend(error)),
    };
    metrics::gauge!("airlock_bridge_backend_healthy").set(f64::from(u8::from(healthy)));
    let journal_path = crate::audit_journal::journal_path(&config.bridge.data_dir);
    let journal = crate::audit_journal::AuditJournal::open(
        &journal_path,
        crate::audit_journal::DEFAULT_MAX_RECORDS,
    )
    .map(Arc::new)
    .map_err(|e| ServeError::Egress(e.to_string()))?;
    let request_timeout = match &config.backend {
        crate::config::BackendConfig::File(c) => c.request_timeout,
        crate::config::BackendConfig::Openbao(c) => c.request_timeout,
    };
    let relay =
        crate::relay::Relay::open(&config.bridge.data_dir, backend.clone(), request_timeout)
            .await
            .map(Arc::new)
            .map_err(|e| ServeError::Egress(e.to_string()))?;
    let listeners = egress_listeners(&config, &relay, journal.clone())?;
    let mcp = crate::mcp::McpClient::new(
        crate::mcp::McpConfig {
            trust_roots: if config.egress.upstream_ca_files.is_empty() {
                crate::egress::TrustRoots::Webpki
            } else {
                crate::egress::TrustRoots::Files(config.egress.upstream_ca_files.clone())
            },
            connect_timeout: config.egress.connect_timeout,
            state_dir: Some(config.bridge.data_dir.clone()),
            call_timeout: config.mcp.call_timeout,
            plain_http: config.mcp.plain_http,
            refresh_margin: config.mcp.refresh_margin,
            ..Default::default()
        },
        relay.clone(),
        journal.clone(),
    )
    .map(Arc::new)
    .map_err(|e| ServeError::Egress(e.to_string()))?;
    let channel = crate::agent_channel::AgentChannel::bind(
        &config.bridge.socket_path,
        &config.bridge.allowed_peer_uids,
        listeners,
        backend.clone(),
    )?
    .with_audit(journal)
    .with_relay(relay)
    .with_mcp(mcp);
    let (stop_channel, channel_stopped) = tokio::sync::oneshot::channel::<()>();
    let channel_task = tokio::spawn(channel.run(async move {
        let _ = channel_stopped.await;
    }));
    socket_bound.set_up();
    tracing::info!(
        socket_path = %config.bridge.socket_path.display(),
        egress_socket_dir = %config.egress.socket_dir.display(),
        healthy,
        "vault-bridge ready"
    );
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let checked = backend.health().await;
                metrics::gauge!("airlock_bridge_backend_healthy").set(f64::from(u8::from(checked.is_ok())));
                match checked {
                    Ok(()) if !healthy => {
                        healthy = true;
                        tracing::info!("secret backend healthy again");
                    }
                    Ok(()) => {}
                    Err(error) => {
                        if healthy {
                            tracing::warn!(%error, "secret backend unhealthy");
                        }
                        healthy = false;
                    }
                }
            }
            () = &mut shutdown => break,
        }
    }
    let grace = config.bridge.shutdown_grace;
    socket_bound.set_down("shutting down");
    let _ = stop_channel.send(());
    let graceful = tokio::time::timeout(grace, async {
        let _ = channel_task.await;
        backend.close().await;
    })
    .await
    .is_ok();
    let _ = stop_ops.send(());
    if let Some(task) = ops_task {
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
    tracing::info!(graceful, "vault-bridge stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}
