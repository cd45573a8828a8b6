//! The public HTTP API, wire-compatible with the Managed Agents beta API
//! (`/v1/agents`, `/v1/environments`, `/v1/vaults` and their credentials,
//! `/v1/sessions` with their `github_repository` resources, session events:
//! send, list and SSE stream), so the official `anthropic` SDKs work against
//! Airlock by changing `base_url`. Beyond the original, a stream resumes
//! without loss from `Last-Event-ID` or `?after=<seq>`, and events carry
//! their `seq`. Airlock extensions live under `/v1/airlock/` (the audit:
//! `/v1/airlock/audit/events`, `/v1/airlock/agents/{id}/audit/checkpoints`).
//! `api/openapi.yaml` describes exactly what is served; the
//! tests validate responses against it.
//!
//! This crate owns the HTTP edge: routing, `x-api-key` authentication
//! against the catalog's hashed keys (before any lookup, so an
//! unauthenticated caller learns nothing about ids), per-key rate limits,
//! the body size limit, one parser per resource turning a request into a
//! typed action, the validation of agent tools and permission policies, and
//! the one mapping of errors to the standard envelope ([`error_response`]),
//! and TLS on its listener ([`tls`]: certificate and key files, reloaded on
//! `SIGHUP`; plain HTTP only on loopback unless allowed, see [`config`]).
//! It does not store anything itself (agents, environments, keys and vault
//! metadata live in the `catalog`, sessions and events in the
//! `session-store`; the audit of state-changing requests ([`audit`]) goes to
//! the catalog; credential secrets and repository tokens go to a
//! [`SecretRelay`] and are never stored by the control plane), and does not
//! run sessions: after appending user events it calls
//! [`SessionRunner::notify`], which the control plane implements with the
//! harness supervisor.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod agents;
pub mod audit;
mod body;
pub mod config;
mod credentials;
mod edge;
mod environments;
mod error;
mod events;
mod fanout;
mod fields;
mod ids;
mod mcp;
mod query;
pub mod relay;
mod resources;
mod sessions;
mod stream;
pub mod tls;
mod tools;
mod vaults;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

pub use config::{ApiConfig, RawApiConfig};
pub use error::{error_response, ApiError};
pub use relay::{
    NoBridgeRelay, RelayError, RelayTarget, SecretFields, SecretRelay, SecretValue,
    SessionTokenTarget,
};

/// Runs sessions: told when a session has new input. The control plane
/// implements it with the harness supervisor (`Supervisor::notify`).
pub trait SessionRunner: Send + Sync + std::fmt::Debug {
    /// New user events were appended to `session_id`: make sure a wake runs.
    fn notify(&self, session_id: &str);
}

/// A runner from a closure (`FnRunner(move |id: &str| supervisor.notify(id))`).
pub struct FnRunner<F>(pub F);

impl<F> std::fmt::Debug for FnRunner<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnRunner")
    }
}

impl<F: Fn(&str) + Send + Sync> SessionRunner for FnRunner<F> {
    fn notify(&self, session_id: &str) {
        (self.0)(session_id)
    }
}

/// A runner that runs nothing (no harness attached): sessions accept
/// events, which stay queued.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRunner;

impl SessionRunner for NoRunner {
    fn notify(&self, session_id: &str) {
        tracing::debug!(session_id, "no harness attached; the events stay queued");
    }
}

/// Limits and intervals of the API (from `[api]`, see [`ApiConfig`]).
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Largest request body accepted.
    pub max_body_bytes: u64,
    /// How often an idle SSE stream sends a `ping` event.
    pub sse_ping_interval: Duration,
    /// Requests per second each API key may make (`None`: unlimited).
    pub rate_limit_per_second: Option<f64>,
    /// Burst allowance of the rate limit.
    pub rate_limit_burst: u32,
    /// Items the shared tail of a session buffers for its live readers; a
    /// reader further behind continues on a tail of its own.
    pub sse_buffer_events: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_body_bytes: config::DEFAULT_MAX_BODY_BYTES,
            sse_ping_interval: Duration::from_secs(config::DEFAULT_SSE_PING_INTERVAL_SECONDS),
            rate_limit_per_second: None,
            rate_limit_burst: config::DEFAULT_RATE_LIMIT_BURST,
            sse_buffer_events: config::DEFAULT_SSE_BUFFER_EVENTS,
        }
    }
}

/// What the API serves from.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// Sessions and their events.
    pub store: Arc<dyn session_store::SessionStore>,
    /// Agents, environments and API keys.
    pub catalog: Arc<dyn catalog::Catalog>,
    /// Told when sessions have new input.
    pub runner: Arc<dyn SessionRunner>,
    /// Takes credential secrets to the vault-bridges ([`NoBridgeRelay`]
    /// until the tunnel carries them).
    pub relay: Arc<dyn SecretRelay>,
    /// Limits.
    pub limits: ApiLimits,
    /// Cancelled on shutdown: open SSE streams end so the server can drain.
    pub shutdown: CancellationToken,
}

/// State shared by handlers: the [`ApiState`] plus the rate limiter.
#[derive(Debug)]
pub(crate) struct Shared {
    pub state: ApiState,
    pub limiter: edge::RateLimiter,
    /// The shared tails of live SSE readers.
    pub hubs: fanout::Hubs,
}

pub(crate) type AppState = Arc<Shared>;

/// The API as an axum router, with authentication, limits and error
/// rendering applied to every route (and to unknown routes).
pub fn router(state: ApiState) -> Router {
    ApiHandle::new(state).router()
}

/// The API's shared state, for another router on the same listener (the
/// web console) to act through the API's own code paths instead of copies.
#[derive(Debug, Clone)]
pub struct ApiHandle(AppState);

impl ApiHandle {
    /// The shared state (rate limiter, live tails) over `state`.
    pub fn new(state: ApiState) -> Self {
        let limiter = edge::RateLimiter::new(
            state.limits.rate_limit_per_second,
            state.limits.rate_limit_burst,
        );
        let hubs = fanout::Hubs::new(state.limits.sse_buffer_events);
        ApiHandle(Arc::new(Shared {
            state,
            limiter,
            hubs,
        }))
    }

    /// What the API serves from.
    pub fn state(&self) -> &ApiState {
        &self.0.state
    }

    /// The API's router over this state (see [`router`]).
    pub fn router(&self) -> Router {
        build_router(self.0.clone())
    }

    /// Sends user events exactly as `POST /v1/sessions/{id}/events` does
    /// (the same parser, archived/terminated and reference checks, the
    /// queued append and the runner's notify); the stored events as the API
    /// returns them.
    pub async fn send_events(
        &self,
        session_id: &str,
        events: Vec<serde_json::Value>,
    ) -> Result<Vec<serde_json::Value>, ApiError> {
        let axum::Json(reply) = events::send(
            axum::extract::State(self.0.clone()),
            axum::extract::Path(session_id.to_owned()),
            body::JsonBody(serde_json::json!({ "events": events })),
        )
        .await?;
        Ok(reply["data"].as_array().cloned().unwrap_or_default())
    }

    /// Archives the session exactly as `POST /v1/sessions/{id}/archive`
    /// does (refused while running; terminates it first).
    pub async fn archive_session(&self, session_id: &str) -> Result<(), ApiError> {
        sessions::archive(
            axum::extract::State(self.0.clone()),
            axum::extract::Path(session_id.to_owned()),
        )
        .await
        .map(|_| ())
    }
}

fn build_router(shared: AppState) -> Router {
    Router::new()
        .route("/v1/agents", post(agents::create).get(agents::list))
        .route(
            "/v1/agents/{agent_id}",
            get(agents::retrieve).post(agents::update),
        )
        .route("/v1/agents/{agent_id}/archive", post(agents::archive))
        .route("/v1/agents/{agent_id}/versions", get(agents::versions))
        .route(
            "/v1/environments",
            post(environments::create).get(environments::list),
        )
        .route(
            "/v1/environments/{environment_id}",
            get(environments::retrieve)
                .post(environments::update)
                .delete(environments::delete),
        )
        .route(
            "/v1/environments/{environment_id}/archive",
            post(environments::archive),
        )
        .route("/v1/vaults", post(vaults::create).get(vaults::list))
        .route(
            "/v1/vaults/{vault_id}",
            get(vaults::retrieve)
                .post(vaults::update)
                .delete(vaults::delete),
        )
        .route("/v1/vaults/{vault_id}/archive", post(vaults::archive))
        .route(
            "/v1/vaults/{vault_id}/credentials",
            post(credentials::create).get(credentials::list),
        )
        .route(
            "/v1/vaults/{vault_id}/credentials/{credential_id}",
            get(credentials::retrieve)
                .post(credentials::update)
                .delete(credentials::delete),
        )
        .route(
            "/v1/vaults/{vault_id}/credentials/{credential_id}/archive",
            post(credentials::archive),
        )
        .route(
            "/v1/vaults/{vault_id}/credentials/{credential_id}/mcp_oauth_validate",
            post(credentials::mcp_oauth_validate),
        )
        .route("/v1/sessions", post(sessions::create).get(sessions::list))
        .route(
            "/v1/sessions/{session_id}",
            get(sessions::retrieve)
                .post(sessions::update)
                .delete(sessions::delete),
        )
        .route("/v1/sessions/{session_id}/archive", post(sessions::archive))
        .route(
            "/v1/sessions/{session_id}/resources",
            get(resources::list).post(resources::add),
        )
        .route(
            "/v1/sessions/{session_id}/resources/{resource_id}",
            get(resources::retrieve)
                .post(resources::update)
                .delete(resources::delete),
        )
        .route(
            "/v1/sessions/{session_id}/events",
            post(events::send).get(events::list),
        )
        .route(
            "/v1/sessions/{session_id}/events/stream",
            get(stream::stream),
        )
        .route("/v1/airlock/audit/events", get(audit::list_events))
        .route(
            "/v1/airlock/agents/{agent_id}/audit/checkpoints",
            get(audit::list_checkpoints),
        )
        .fallback(edge::not_found)
        .method_not_allowed_fallback(edge::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            edge::edge,
        ))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(shared)
}

/// Serves `router(state)` on `listener` (plain HTTP) until `state.shutdown`
/// fires, then waits for open requests (SSE streams end on the same token).
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState) -> std::io::Result<()> {
    let token = state.shutdown.clone();
    serve_app(listener, router(state), token).await
}

/// Serves `app` (the API's router, possibly merged with another) on
/// `listener` in plain HTTP until `token` fires.
async fn serve_app(
    listener: tokio::net::TcpListener,
    app: Router,
    token: CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // SSE frames and small JSON replies must not wait for Nagle.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    // Connect info: the remote address of each request, for the audit.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { token.cancelled().await })
    .await
}

/// Serves `router(state)` over TLS with `cert` (see [`tls`]) until
/// `state.shutdown` fires; `SIGHUP` reloads the certificate and key from
/// their files for new connections (established ones and their SSE streams
/// are untouched).
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    cert: tls::CertReloader,
    state: ApiState,
) -> std::io::Result<()> {
    let token = state.shutdown.clone();
    serve_app_tls(listener, cert, router(state), token).await
}

async fn serve_app_tls(
    listener: tokio::net::TcpListener,
    cert: tls::CertReloader,
    app: Router,
    token: CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let config = cert
        .server_config()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    tokio::spawn(cert.reload_on_sighup(token.clone()));
    let listener = tls::TlsListener::new(listener, config, token.clone())?;
    // tap_io: a no-op that gives the listener the connect-info impl for its address.
    let listener = listener.tap_io(|_| {});
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { token.cancelled().await })
    .await
}

/// Serves the API as `config` says: HTTPS with the certificate `tls`
/// loaded from `[api.tls]`, or plain HTTP (logging a warning when that is
/// off loopback, which the config allows only with `api.allow_plain_http`).
pub async fn serve_configured(
    listener: tokio::net::TcpListener,
    tls: Option<tls::CertReloader>,
    state: ApiState,
) -> std::io::Result<()> {
    let token = state.shutdown.clone();
    serve_router(listener, tls, router(state), token).await
}

/// [`serve_configured`] for a router built by the caller: the API's
/// ([`ApiHandle::router`]) merged with another one on the same listener
/// (the web console, whose routes do not pass the API's edge), until
/// `token` fires.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    tls: Option<tls::CertReloader>,
    app: Router,
    token: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    match tls {
        Some(cert) => {
            tracing::info!(api_addr = %addr, cert_file = %cert.files().cert_file.display(), "public API serving HTTPS");
            serve_app_tls(listener, cert, app, token).await
        }
        None => {
            if addr.ip().is_loopback() {
                tracing::info!(api_addr = %addr, "public API serving plain HTTP on loopback (configure [api.tls] to expose it)");
            } else {
                tracing::warn!(api_addr = %addr, "public API serving PLAIN HTTP off loopback (api.allow_plain_http = true): API keys cross the network in clear unless a TLS proxy terminates in front");
            }
            serve_app(listener, app, token).await
        }
    }
}
