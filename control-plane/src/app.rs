//! The running control plane: [`App`] opens what must exist before anything
//! listens (the CA, the identity database), [`App::start`] binds the listeners
//! and spawns their services, and [`Running::shutdown`] is the one shutdown
//! path: stop accepting, let in-flight work drain until a deadline, report
//! whether it was graceful.
//!
//! Services so far: the enrollment listener, the admin socket, the server
//! certificate rotation, the gateway, the public API and the harness
//! supervisor (see [`crate::runtime`]; shut down first, while the gateway
//! still reaches agents). To add one (the gateway, the API, the harness), bind
//! its listener in [`App::start`] (so bind errors fail start-up) and spawn it
//! with [`Running::spawn_service`]; it must return when the
//! [`CancellationToken`] fires, and should spawn per-connection tasks on
//! [`Running::tracker`] so the drain waits for them.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pki::IdentityService;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::AdminState;
use crate::config::Config;

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The CA, identity database or TLS config could not be set up.
    #[error("identity: {0}")]
    Identity(#[from] pki::ServiceError),
    /// A TLS config could not be built.
    #[error("tls: {0}")]
    Tls(#[from] pki::TlsError),
    /// A listener could not be bound.
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        /// Which listener (`enroll.listen`, ...).
        what: &'static str,
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The admin socket could not be set up.
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    /// The gateway (tunnel listener) could not start.
    #[error("tunnel.listen: {0}")]
    Gateway(#[from] crate::gateway::GatewayError),
    /// The catalog (agents, environments, API keys) could not be opened.
    #[error("catalog: {0}")]
    Catalog(#[from] catalog::CatalogError),
    /// The session store could not be opened.
    #[error("session_store: {0}")]
    SessionStore(#[from] session_store::StoreError),
    /// The model client could not be built.
    #[error("model: {0}")]
    Model(#[from] model::ModelError),
    /// The ops listener (`[ops] listen`) could not be bound.
    #[error(transparent)]
    Ops(#[from] daemon::ops::OpsError),
    /// The public API's certificate or key (`[api.tls]`) could not be loaded.
    #[error(transparent)]
    ApiTls(#[from] api::tls::TlsError),
    /// The harness's instance id (`<data_dir>/instance_id`) could not be
    /// claimed: another control plane runs on the data dir, or the file is bad.
    #[error(transparent)]
    InstanceId(#[from] crate::runtime::InstanceIdError),
}

/// A configured, not yet listening control plane.
pub struct App {
    config: Config,
    identity: Arc<IdentityService>,
    /// The gateway's registry of connected agents.
    agents: Arc<crate::gateway::Registry>,
    /// The session log (opened from `[session_store]` at start if not given).
    session_store: Option<Arc<dyn session_store::SessionStore>>,
    /// The catalog (opened from `[catalog]` at start if not given).
    catalog: Option<Arc<dyn catalog::Catalog>>,
    /// Told when the API appends user events. `None`: the harness
    /// supervisor built from `[model]` and `[harness]` at start.
    runner: Option<Arc<dyn api::SessionRunner>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Load or create the CA and open the identity database (blocking I/O;
    /// call before entering the runtime or from `spawn_blocking`).
    pub fn new(config: Config) -> Result<Self, AppError> {
        let identity = IdentityService::open(config.pki.identity_settings(&config.data_dir))?;
        let agents = Arc::new(crate::gateway::Registry::new());
        Ok(Self {
            config,
            identity: Arc::new(identity),
            agents,
            session_store: None,
            catalog: None,
            runner: None,
        })
    }

    /// The identity service (CA, tokens, revocation, TLS configs).
    pub fn identity(&self) -> &Arc<IdentityService> {
        &self.identity
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Use this session store (shared with the harness) instead of opening
    /// `[session_store]` at start.
    pub fn with_session_store(mut self, store: Arc<dyn session_store::SessionStore>) -> Self {
        self.session_store = Some(store);
        self
    }

    /// Use this catalog instead of opening `[catalog]` at start.
    pub fn with_catalog(mut self, catalog: Arc<dyn catalog::Catalog>) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// Who the API tells about new user events, instead of the harness
    /// supervisor `start` builds (with a runner given here, no harness runs
    /// in this process; `api::NoRunner` leaves events queued).
    pub fn with_runner(mut self, runner: Arc<dyn api::SessionRunner>) -> Self {
        self.runner = Some(runner);
        self
    }

    /// Bind every listener, then spawn every service.
    pub async fn start(self) -> Result<Running, AppError> {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut running = Running {
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            services: Vec::new(),
            enroll_addr: self.config.enroll.listen,
            admin_socket: self.config.admin.socket.clone(),
            identity: self.identity.clone(),
            gateway: crate::gateway::GatewayHandle::new(self.agents.clone()),
            tunnel_addr: self.config.tunnel_listen,
            api_addr: self.config.api.listen,
            session_store: None,
            catalog: None,
            supervisor: None,
            instance: None,
            ops_addr: None,
            ready: daemon::ops::Flag::down("starting: listeners not bound yet"),
        };
        // Storage behind the public API, opened before anything listens.
        let session_store = match self.session_store.clone() {
            Some(s) => s,
            None => session_store::open_store(&self.config.session_store).await?,
        };
        let catalog = match self.catalog.clone() {
            Some(c) => c,
            None => catalog::open_catalog(&self.config.catalog).await?,
        };
        running.session_store = Some(session_store.clone());
        running.catalog = Some(catalog.clone());
        // The ops listener (`[ops]`; off when absent): bound with the others
        // so a conflict fails start-up; /readyz is 200 once all are bound and
        // 503 again from the start of the drain.
        let ops_server = daemon::ops::bind(&self.config.ops).await?;
        // The model client (no I/O yet), so a bad one fails before anything
        // runs, and the harness's instance id, locked for this process.
        let provider = match &self.runner {
            Some(_) => None,
            None => Some((
                crate::runtime::provider(&self.config.model)?,
                crate::runtime::InstanceIdentity::claim(
                    &self.config.data_dir,
                    &self.config.harness,
                )?,
            )),
        };

        // Bind first, so a port conflict fails start-up before anything runs.
        let enroll_listener = crate::enroll::bind(&self.config.enroll)
            .await
            .map_err(|source| AppError::Bind {
                what: "enroll.listen",
                addr: self.config.enroll.listen.to_string(),
                source,
            })?;
        running.enroll_addr = enroll_listener
            .local_addr()
            .unwrap_or(self.config.enroll.listen);
        let admin_listener = crate::admin::bind(&self.config.admin.socket).await?;
        let gateway = crate::gateway::Gateway::bind(
            &self.config.tunnel,
            self.config.tunnel_listen,
            self.identity.clone(),
            self.agents.clone(),
        )
        .await?
        .with_audit(Arc::new(crate::audit::CheckpointReceiver::new(
            catalog.clone(),
        )))
        .with_shared_identities(catalog.clone());
        running.tunnel_addr = gateway.local_addr();
        // The API's certificate (`[api.tls]`; two small files, read here so a
        // bad pair fails start-up before anything listens on the API port).
        let api_tls = (self.config.api.tls.clone())
            .map(api::tls::CertReloader::load)
            .transpose()?;
        let api_listener = tokio::net::TcpListener::bind(self.config.api.listen)
            .await
            .map_err(|source| AppError::Bind {
                what: "api.listen",
                addr: self.config.api.listen.to_string(),
                source,
            })?;
        running.api_addr = api_listener.local_addr().unwrap_or(self.config.api.listen);
        running.spawn_service("gateway", {
            let tracker = tracker.clone();
            move |token| gateway.serve(token, tracker)
        });

        let identity = self.identity.clone();
        let shared_identities = Some(crate::gateway::SharedIdentities::new(
            catalog.clone(),
            identity.clone(),
        ));
        let enroll_config = self.config.enroll.clone();
        running.spawn_service("enroll", {
            let tracker = tracker.clone();
            move |token| async move {
                if let Err(error) = crate::enroll::serve(
                    enroll_listener,
                    identity,
                    shared_identities,
                    enroll_config,
                    token,
                    tracker,
                )
                .await
                {
                    tracing::error!(%error, "enroll listener failed");
                }
            }
        });
        let state = AdminState {
            identity: self.identity.clone(),
            directory: self.agents.clone(),
            catalog: Some(catalog.clone()),
        };
        let socket = self.config.admin.socket.clone();
        running.spawn_service("admin", move |token| {
            crate::admin::serve(admin_listener, socket, state, token)
        });
        let identity = self.identity.clone();
        running.spawn_service("server-cert-rotation", move |token| {
            rotate_server_cert(identity, token)
        });
        // The harness: started last, once the gateway serves, so recovered
        // wakes can reach agents as they reconnect.
        let runner: Arc<dyn api::SessionRunner> = match (provider, self.runner.clone()) {
            (Some((provider, instance)), _) => {
                let supervisor = crate::runtime::start_supervisor(
                    session_store.clone(),
                    provider,
                    &self.config.harness,
                    &instance,
                    running.gateway.clone(),
                    catalog.clone(),
                );
                running.supervisor = Some(supervisor.clone());
                running.instance = Some(instance);
                Arc::new(api::FnRunner(move |id: &str| supervisor.notify(id)))
            }
            (None, runner) => runner.unwrap_or_else(|| Arc::new(api::NoRunner)),
        };
        // The web console (`[console]`) on the API's listener, its agents and
        // revocation over the same registry, identity and admin path.
        let console_config = self.config.console.clone();
        let console_control = console_config.enabled.then(|| {
            let admin = AdminState {
                identity: self.identity.clone(),
                directory: self.agents.clone(),
                catalog: Some(catalog.clone()),
            };
            Arc::new(crate::console::ConsoleControl::new(
                admin,
                running.gateway.clone(),
            )) as Arc<dyn console::ControlPlane>
        });
        let (session_store_for_ops, catalog_for_ops) = (session_store.clone(), catalog.clone());
        let limits = self.config.api.limits.clone();
        let relay_gateway = running.gateway.clone();
        running.spawn_service("api", move |token| async move {
            let state = api::ApiState {
                store: session_store,
                catalog,
                runner,
                // Secrets sent through the API go, in memory, to the
                // vault-bridges of the vault's environment over the tunnel.
                relay: Arc::new(crate::relay::GatewayRelay::new(
                    relay_gateway,
                    crate::relay::DEFAULT_RELAY_DEADLINE,
                )),
                limits,
                shutdown: token,
            };
            let shutdown = state.shutdown.clone();
            let api = api::ApiHandle::new(state);
            let mut app = api.router();
            if let Some(control) = console_control {
                tracing::info!(
                    secure_cookies = console_config.secure_cookies,
                    "web console served under /console"
                );
                app = app.merge(console::router(console::ConsoleState {
                    api,
                    control,
                    config: console_config,
                }));
            }
            if let Err(error) = api::serve_router(api_listener, api_tls, app, shutdown).await {
                tracing::error!(%error, "api listener failed");
            }
        });

        if let Some(server) = ops_server {
            running.ops_addr = Some(server.local_addr());
            let ops = crate::ops::ops(
                session_store_for_ops,
                catalog_for_ops,
                self.agents.clone(),
                self.identity.clone(),
                &running.ready,
            );
            running.spawn_service("ops", move |token| {
                server.serve(ops, token.cancelled_owned())
            });
        }
        running.ready.set_up();
        tracing::info!(
            enroll_addr = %running.enroll_addr,
            tunnel_addr = %running.tunnel_addr,
            api_addr = %running.api_addr,
            admin_socket = %running.admin_socket.display(),
            ca_fingerprint = %self.identity.ca_fingerprint(),
            "control plane started"
        );
        Ok(running)
    }
}

/// Re-issue the server certificate at two thirds of its life.
async fn rotate_server_cert(identity: Arc<IdentityService>, shutdown: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let not_after = identity.server_cert_not_after();
        let now = SystemTime::now();
        let due = if failures == 0 {
            pki::agent::renewal_due(now, not_after)
        } else {
            now + pki::agent::renewal_retry_delay(failures, now, not_after)
        };
        let wait = due.duration_since(now).unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let id = identity.clone();
        match tokio::task::spawn_blocking(move || id.rotate_server_cert()).await {
            Ok(Ok(not_after)) => {
                failures = 0;
                tracing::info!(not_after = %crate::rfc3339::display(not_after), "server certificate re-issued");
            }
            Ok(Err(error)) => {
                failures += 1;
                tracing::error!(%error, "server certificate re-issue failed");
            }
            Err(error) => {
                failures += 1;
                tracing::error!(%error, "server certificate re-issue task failed");
            }
        }
    }
}

/// What happened during shutdown.
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    /// Everything finished before the deadline.
    pub graceful: bool,
    /// How long the drain took.
    pub elapsed: Duration,
    /// Services still running at the deadline.
    pub unfinished: Vec<&'static str>,
}

/// A started control plane.
#[derive(Debug)]
pub struct Running {
    shutdown: CancellationToken,
    tracker: TaskTracker,
    services: Vec<(&'static str, JoinHandle<()>)>,
    enroll_addr: SocketAddr,
    admin_socket: PathBuf,
    identity: Arc<IdentityService>,
    gateway: crate::gateway::GatewayHandle,
    tunnel_addr: SocketAddr,
    api_addr: SocketAddr,
    session_store: Option<Arc<dyn session_store::SessionStore>>,
    catalog: Option<Arc<dyn catalog::Catalog>>,
    supervisor: Option<harness::Supervisor>,
    /// The lock on the instance id, held until this value is dropped.
    instance: Option<crate::runtime::InstanceIdentity>,
    ops_addr: Option<SocketAddr>,
    ready: daemon::ops::Flag,
}

impl Running {
    /// The harness supervisor (`None` when a runner was given to the app).
    pub fn supervisor(&self) -> Option<&harness::Supervisor> {
        self.supervisor.as_ref()
    }

    /// Where the ops listener (`[ops]`) is bound, when configured.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    /// Where the public API listens (useful with port 0).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The session store the API serves from.
    pub fn session_store(&self) -> Option<&Arc<dyn session_store::SessionStore>> {
        self.session_store.as_ref()
    }

    /// The catalog the API serves from.
    pub fn catalog(&self) -> Option<&Arc<dyn catalog::Catalog>> {
        self.catalog.as_ref()
    }

    /// Calls agents through the gateway.
    pub fn gateway(&self) -> &crate::gateway::GatewayHandle {
        &self.gateway
    }

    /// Where the tunnel listens (UDP and TCP; useful with port 0).
    pub fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel_addr
    }

    /// Where the enrollment listener is bound (useful with port 0).
    pub fn enroll_addr(&self) -> SocketAddr {
        self.enroll_addr
    }

    /// The admin socket path.
    pub fn admin_socket(&self) -> &Path {
        &self.admin_socket
    }

    /// The identity service.
    pub fn identity(&self) -> &Arc<IdentityService> {
        &self.identity
    }

    /// The token every service watches; cancelled by [`Self::shutdown`].
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Tracker for per-connection tasks; the drain waits for them.
    pub fn tracker(&self) -> TaskTracker {
        self.tracker.clone()
    }

    /// Spawn a named service: `run` gets the shutdown token and must return
    /// soon after it fires.
    pub fn spawn_service<F, Fut>(&mut self, name: &'static str, run: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(run(self.shutdown.clone()));
        self.services.push((name, handle));
    }

    /// Resolves when any service ended on its own (which is a failure).
    pub async fn service_exited(&mut self) -> &'static str {
        loop {
            if let Some(i) = self.services.iter().position(|(_, h)| h.is_finished()) {
                return self.services[i].0;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stop accepting, drain until `grace` has passed, and report.
    pub async fn shutdown(self, grace: Duration) -> ShutdownReport {
        let started = Instant::now();
        self.ready.set_down("draining: shutting down");
        tracing::info!(
            grace_seconds = grace.as_secs_f64(),
            "shutting down: no new connections, draining"
        );
        let deadline = tokio::time::Instant::now() + grace;
        let mut unfinished = Vec::new();
        // Wakes first, while the gateway still reaches agents: half the
        // grace, then the rest are aborted (the next start recovers them).
        if let Some(supervisor) = &self.supervisor {
            if !supervisor.shutdown(grace / 2).await {
                unfinished.push("harness");
            }
        }
        self.shutdown.cancel();
        self.tracker.close();
        for (name, handle) in self.services {
            let abort = handle.abort_handle();
            if tokio::time::timeout_at(deadline, handle).await.is_err() {
                abort.abort();
                unfinished.push(name);
            }
        }
        let drained = tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_ok();
        if !drained {
            unfinished.push("connections");
        }
        let report = ShutdownReport {
            graceful: unfinished.is_empty(),
            elapsed: started.elapsed(),
            unfinished,
        };
        if report.graceful {
            tracing::info!(
                elapsed_ms = report.elapsed.as_millis() as u64,
                "shutdown complete: graceful"
            );
        } else {
            tracing::warn!(elapsed_ms = report.elapsed.as_millis() as u64, unfinished = ?report.unfinished, "shutdown complete: not graceful, deadline reached");
        }
        report
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    match term {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutdown requested"),
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT will stop the process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
