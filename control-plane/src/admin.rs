//! The admin socket: HTTP/1.1 with JSON bodies over a Unix socket
//! (`<data_dir>/admin.sock`, mode 0600; filesystem permissions are the
//! authentication), served by axum like the public API. The
//! `control-plane agents ...` commands (`crate::cli`) talk to it.
//!
//! Endpoints (all in [`router`]):
//! - `GET /v1/agents` → `{"agents": [AgentInfo, ...]}` (connected agents,
//!   with their audit health and last checkpoint seq from the catalog);
//! - `POST /v1/agents/{agent_id}/revoke` → `{"agent_id", "newly_revoked",
//!   "connections_closed"}`: persists the revocation, adds it to the set the
//!   tunnel verifier consults, then closes the agent's live connections;
//! - `POST /v1/agents/{agent_id}/ping` → `{"agent_id", "round_trip_us"}`:
//!   a `ping` call on the agent's newest connection, timed here;
//! - `GET /v1/ca` → `{"fingerprint"}`.
//!
//! Errors: `{"error": {"type", "message"}}`, mapped in [`error_response`] only
//! (an unknown path or method is a 404 `not_found`).
//!
//! Connected agents come from the gateway's registry, through
//! [`AgentDirectory`].
//!
//! Every state-changing request (a revocation) is recorded as an audit event
//! with actor `admin` and the peer's unix uid ([`AdminPeer`], read with
//! `SO_PEERCRED`); a failing record is logged and does not change the answer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Path as UrlPath, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use http::{Method, StatusCode, Uri};
use pki::{AgentId, IdentityService};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::gateway::{AgentDirectory, AgentInfo};

/// Body of a revoke response.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RevokeResponse {
    /// The agent.
    pub agent_id: String,
    /// False if it was already revoked.
    pub newly_revoked: bool,
    /// Live connections closed.
    pub connections_closed: usize,
}

/// Body of a ping response.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PingResponse {
    /// The agent.
    pub agent_id: String,
    /// Round trip of the call, as timed by the control plane.
    pub round_trip_us: u64,
}

/// Body of `GET /v1/agents`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AgentsResponse {
    /// Connected agents.
    pub agents: Vec<AgentInfo>,
}

/// Body of `GET /v1/ca`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CaResponse {
    /// The CA fingerprint agents pin (`sha256:<hex>`).
    pub fingerprint: String,
}

/// `[admin]` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Admin socket path (default `<data_dir>/admin.sock`).
    pub socket: Option<PathBuf>,
}

/// Validated `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Admin socket path.
    pub socket: PathBuf,
}

impl AdminConfig {
    /// Convert.
    pub fn from_raw(raw: RawAdmin, data_dir: &Path) -> Result<Self, crate::config::ConfigError> {
        let socket = raw.socket.unwrap_or_else(|| data_dir.join("admin.sock"));
        // sun_path is 108 bytes on Linux, including the NUL.
        if socket.as_os_str().len() > 107 {
            return Err(crate::config::ConfigError::invalid(
                "admin.socket",
                format!("path {} is longer than 107 bytes", socket.display()),
            ));
        }
        Ok(Self { socket })
    }
}

/// Errors starting the admin listener.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// Another process already serves the socket.
    #[error("admin socket {0} is in use by a running control plane")]
    InUse(PathBuf),
    /// Binding or securing the socket failed.
    #[error("admin socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Bind the admin socket (mode 0600). A stale socket file left by a crashed
/// process is replaced; a live one is an error.
pub async fn bind(path: &Path) -> Result<UnixListener, AdminError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| AdminError::Io {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(AdminError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// State the admin handlers use.
#[derive(Clone)]
pub struct AdminState {
    /// The identity service.
    pub identity: Arc<IdentityService>,
    /// The connection registry.
    pub directory: Arc<dyn AgentDirectory>,
    /// The catalog: agents' audit state, and where admin actions are
    /// recorded (`None`: neither).
    pub catalog: Option<Arc<dyn catalog::Catalog>>,
}

/// Who is on the other end of an admin socket connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminPeer {
    /// The peer process's uid (`SO_PEERCRED`), when the kernel says.
    pub uid: Option<u32>,
}

impl Connected<axum::serve::IncomingStream<'_, UnixListener>> for AdminPeer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, UnixListener>) -> Self {
        AdminPeer {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").finish_non_exhaustive()
    }
}

/// Every admin endpoint, in one place.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{agent_id}/revoke", post(revoke_agent))
        .route("/v1/agents/{agent_id}/ping", post(ping_agent))
        .route("/v1/ca", get(ca))
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(no_such_endpoint)
        .with_state(state)
}

/// Serve the admin API until `shutdown`, letting open requests finish;
/// removes the socket file on exit.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    state: AdminState,
    shutdown: CancellationToken,
) {
    let app = router(state).into_make_service_with_connect_info::<AdminPeer>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(error) = served {
        tracing::error!(%error, socket = %path.display(), "admin socket failed");
    }
    let _ = std::fs::remove_file(&path);
    tracing::info!("admin socket closed");
}

/// Why an admin request failed; mapped in [`error_response`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminRequestError {
    /// Unknown path or method.
    #[error("no such endpoint {method} {path}")]
    NotFound {
        /// Method.
        method: Method,
        /// Path.
        path: String,
    },
    /// Malformed agent id in the path.
    #[error(transparent)]
    BadId(#[from] pki::IdentityError),
    /// The agent was never enrolled.
    #[error("agent {0} is not enrolled")]
    UnknownAgent(String),
    /// The identity database failed.
    #[error("identity database: {0}")]
    Identity(pki::ServiceError),
    /// The agent has no live connection here.
    #[error("agent {0} is not connected")]
    NotConnected(String),
    /// A call to the agent failed.
    #[error("{0}")]
    AgentCall(String),
    /// The blocking task that ran the database work panicked or was cancelled.
    #[error("identity task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The one place an admin error becomes an HTTP response.
pub fn error_response(error: &AdminRequestError) -> Response {
    let (status, kind) = match error {
        AdminRequestError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
        AdminRequestError::BadId(_) => (StatusCode::BAD_REQUEST, "invalid_agent_id"),
        AdminRequestError::UnknownAgent(_) => (StatusCode::NOT_FOUND, "unknown_agent"),
        AdminRequestError::NotConnected(_) => (StatusCode::CONFLICT, "agent_not_connected"),
        AdminRequestError::AgentCall(_) => (StatusCode::BAD_GATEWAY, "agent_call_failed"),
        AdminRequestError::Identity(_) | AdminRequestError::Task(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
    };
    let body = serde_json::json!({"error": {"type": kind, "message": error.to_string()}});
    (status, Json(body)).into_response()
}

impl IntoResponse for AdminRequestError {
    fn into_response(self) -> Response {
        tracing::warn!(error = %self, "admin request failed");
        error_response(&self)
    }
}

async fn list_agents(State(state): State<AdminState>) -> Json<AgentsResponse> {
    let mut agents = state.directory.list();
    if let Some(catalog) = &state.catalog {
        match catalog.audit_states().await {
            Ok(states) => {
                for a in &mut agents {
                    a.audit = states.iter().find(|s| s.agent_id == a.agent_id).map(|s| {
                        crate::gateway::AgentAudit {
                            healthy: s.healthy,
                            problem: s.problem.clone(),
                            last_checkpoint_seq: s.last_seq,
                        }
                    });
                }
            }
            Err(error) => tracing::warn!(%error, "agents list without audit state"),
        }
    }
    Json(AgentsResponse { agents })
}

async fn revoke_agent(
    State(state): State<AdminState>,
    peer: Option<Extension<ConnectInfo<AdminPeer>>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<RevokeResponse>, AdminRequestError> {
    let result = revoke(&state, &id).await;
    if let Some(catalog) = &state.catalog {
        let uid = peer.and_then(|Extension(ConnectInfo(p))| p.uid);
        crate::audit::record_admin_action(
            catalog.as_ref(),
            uid,
            "agents.revoke",
            vec![id],
            result.is_ok(),
        )
        .await;
    }
    result.map(Json)
}

/// Revokes `id` (persisted, revocation set, live connections closed); the
/// admin socket and the web console (`crate::console`) both call this.
pub(crate) async fn revoke(
    state: &AdminState,
    id: &str,
) -> Result<RevokeResponse, AdminRequestError> {
    let agent_id = AgentId::parse(id)?;
    // Enrolled at another replica: take in the shared record first, so it
    // can be revoked here; the revocation is then mirrored to every replica.
    let shared = state
        .catalog
        .clone()
        .map(|c| crate::gateway::SharedIdentities::new(c, state.identity.clone()));
    if let Some(shared) = &shared {
        shared.adopt(&agent_id).await;
    }
    let identity = state.identity.clone();
    let id2 = agent_id.clone();
    let newly = tokio::task::spawn_blocking(move || identity.revoke(&id2))
        .await?
        .map_err(|e| match e {
            pki::ServiceError::Store(pki::StoreError::UnknownAgent(a)) => {
                AdminRequestError::UnknownAgent(a)
            }
            other => AdminRequestError::Identity(other),
        })?;
    let closed = state.directory.disconnect(&agent_id);
    if let Some(shared) = &shared {
        shared.publish(&agent_id).await;
    }
    tracing::info!(agent_id = %agent_id, newly_revoked = newly, connections_closed = closed, "agent revoked");
    Ok(RevokeResponse {
        agent_id: agent_id.to_string(),
        newly_revoked: newly,
        connections_closed: closed,
    })
}

async fn ping_agent(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<PingResponse>, AdminRequestError> {
    let agent_id = AgentId::parse(&id)?;
    match state.directory.ping(&agent_id).await {
        Ok(rtt) => Ok(Json(PingResponse {
            agent_id: id,
            round_trip_us: u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX),
        })),
        Err(crate::gateway::registry::PingError::NotConnected(a)) => {
            Err(AdminRequestError::NotConnected(a))
        }
        Err(e) => Err(AdminRequestError::AgentCall(e.to_string())),
    }
}

async fn ca(State(state): State<AdminState>) -> Json<CaResponse> {
    Json(CaResponse {
        fingerprint: state.identity.ca_fingerprint().to_string(),
    })
}

async fn no_such_endpoint(method: Method, uri: Uri) -> AdminRequestError {
    AdminRequestError::NotFound {
        method,
        path: uri.path().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::gateway::Registry;

    async fn call(router: &Router, method: &str, path: &str) -> (StatusCode, serde_json::Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn routes_answer_json_and_every_error_is_typed() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("data_dir = \"{}\"", dir.path().display());
        let config = crate::config::Config::parse(&text, Path::new("t.toml")).unwrap();
        let identity =
            IdentityService::open(config.pki.identity_settings(&config.data_dir)).unwrap();
        let router = router(AdminState {
            identity: Arc::new(identity),
            directory: Arc::new(Registry::new()),
            catalog: None,
        });
        let (status, v) = call(&router, "GET", "/v1/agents").await;
        assert_eq!(
            (status, v),
            (StatusCode::OK, serde_json::json!({"agents": []}))
        );
        let (status, v) = call(&router, "GET", "/v1/ca").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            v["fingerprint"].as_str().unwrap().starts_with("sha256:"),
            "{v}"
        );
        for (method, path, want, kind) in [
            ("GET", "/v1/nope", StatusCode::NOT_FOUND, "not_found"),
            ("POST", "/v1/agents", StatusCode::NOT_FOUND, "not_found"),
            (
                "POST",
                "/v1/agents/not%20an%20id/revoke",
                StatusCode::BAD_REQUEST,
                "invalid_agent_id",
            ),
            (
                "POST",
                &format!("/v1/agents/{}/revoke", AgentId::generate()),
                StatusCode::NOT_FOUND,
                "unknown_agent",
            ),
            (
                "POST",
                &format!("/v1/agents/{}/ping", AgentId::generate()),
                StatusCode::CONFLICT,
                "agent_not_connected",
            ),
        ] {
            let (status, v) = call(&router, method, path).await;
            assert_eq!(status, want, "{method} {path}: {v}");
            assert_eq!(v["error"]["type"], kind, "{method} {path}: {v}");
            assert!(!v["error"]["message"].as_str().unwrap().is_empty(), "{v}");
        }
    }

    #[tokio::test]
    async fn revocations_are_recorded_in_the_audit_even_when_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("data_dir = \"{}\"", dir.path().display());
        let config = crate::config::Config::parse(&text, Path::new("t.toml")).unwrap();
        let identity =
            IdentityService::open(config.pki.identity_settings(&config.data_dir)).unwrap();
        let catalog: Arc<dyn catalog::Catalog> = Arc::new(
            catalog::SqliteCatalog::open_in_dir(dir.path())
                .await
                .unwrap(),
        );
        let router = router(AdminState {
            identity: Arc::new(identity),
            directory: Arc::new(Registry::new()),
            catalog: Some(catalog.clone()),
        });
        let unknown = AgentId::generate();
        let (status, _) = call(&router, "POST", &format!("/v1/agents/{unknown}/revoke")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = call(&router, "GET", "/v1/agents").await;
        assert_eq!(status, StatusCode::OK);
        let page = catalog
            .list_audit_events(catalog::audit::AuditEventQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        let events: Vec<_> = page.items.into_iter().map(|r| r.event).collect();
        assert_eq!(events.len(), 1, "reads are not recorded: {events:?}");
        let e = &events[0];
        assert_eq!(e.action, "agents.revoke");
        assert_eq!(e.resource_ids, vec![unknown.to_string()]);
        assert_eq!(e.outcome, catalog::audit::Outcome::Error);
        // no connect info in a oneshot request: the uid is unknown
        assert_eq!(e.actor, catalog::audit::Actor::Admin { uid: None });
    }
}
