//! The admin surface: HTTP/1.1 with JSON bodies over a Unix socket
//! (`<data_dir>/admin.sock`, mode 0600; filesystem permissions are the
//! authentication). The `control-plane agents ...` CLI talks to it.
//!
//! Endpoints:
//! - `GET /v1/agents` → `{"agents": [AgentInfo, ...]}` (connected agents);
//! - `POST /v1/agents/{agent_id}/revoke` → `{"agent_id", "newly_revoked",
//!   "connections_closed"}`: persists the revocation, adds it to the set the
//!   tunnel verifier consults, then closes the agent's live connections;
//! - `GET /v1/ca` → `{"fingerprint"}`.
//!
//! Errors: `{"error": {"type", "message"}}`, mapped in [`error_response`] only.
//!
//! Connected agents come from the gateway's registry, through
//! [`AgentDirectory`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pki::{AgentId, IdentityService};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// Body of `GET /v1/agents`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AgentsResponse {
    /// Connected agents.
    pub agents: Vec<AgentInfo>,
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
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").finish_non_exhaustive()
    }
}

/// Serve the admin API until `shutdown`; removes the socket file on exit.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    state: AdminState,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, state).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => { if let Err(error) = res { tracing::debug!(%error, "admin connection error"); } }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
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
    /// Server-side failure.
    #[error("{0}")]
    Internal(String),
}

/// The one place an admin error becomes an HTTP response.
pub fn error_response(error: &AdminRequestError) -> Response<Full<Bytes>> {
    let (status, kind) = match error {
        AdminRequestError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
        AdminRequestError::BadId(_) => (StatusCode::BAD_REQUEST, "invalid_agent_id"),
        AdminRequestError::UnknownAgent(_) => (StatusCode::NOT_FOUND, "unknown_agent"),
        AdminRequestError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    json(
        status,
        &serde_json::json!({"error": {"type": kind, "message": error.to_string()}}),
    )
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(body).unwrap_or_default(),
    )));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn handle(req: Request<Incoming>, state: AdminState) -> Response<Full<Bytes>> {
    match route(req, state).await {
        Ok(r) => r,
        Err(error) => {
            tracing::warn!(%error, "admin request failed");
            error_response(&error)
        }
    }
}

async fn route(
    req: Request<Incoming>,
    state: AdminState,
) -> Result<Response<Full<Bytes>>, AdminRequestError> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["v1", "agents"]) => {
            let agents = state.directory.list();
            Ok(json(StatusCode::OK, &AgentsResponse { agents }))
        }
        (&Method::POST, ["v1", "agents", id, "revoke"]) => {
            let agent_id = AgentId::parse(id)?;
            let identity = state.identity.clone();
            let id2 = agent_id.clone();
            let newly = tokio::task::spawn_blocking(move || identity.revoke(&id2))
                .await
                .map_err(|e| AdminRequestError::Internal(e.to_string()))?
                .map_err(|e| match e {
                    pki::ServiceError::Store(pki::StoreError::UnknownAgent(a)) => {
                        AdminRequestError::UnknownAgent(a)
                    }
                    other => AdminRequestError::Internal(other.to_string()),
                })?;
            let closed = state.directory.disconnect(&agent_id);
            tracing::info!(agent_id = %agent_id, newly_revoked = newly, connections_closed = closed, "agent revoked");
            Ok(json(
                StatusCode::OK,
                &RevokeResponse {
                    agent_id: agent_id.to_string(),
                    newly_revoked: newly,
                    connections_closed: closed,
                },
            ))
        }
        (&Method::GET, ["v1", "ca"]) => Ok(json(
            StatusCode::OK,
            &serde_json::json!({"fingerprint": state.identity.ca_fingerprint().to_string()}),
        )),
        _ => {
            // Drain nothing: bodies on unknown routes are ignored.
            drop(req.into_body());
            Err(AdminRequestError::NotFound { method, path })
        }
    }
}

/// Client side of the admin socket, for the CLI.
pub mod client {
    use std::path::{Path, PathBuf};

    use super::*;

    /// Errors talking to the admin socket.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum ClientError {
        /// Nothing listens on the socket (the control plane is not running).
        #[error("cannot reach the control plane at {path}: {source} (is `control-plane serve` running?)")]
        Unreachable {
            /// Socket path.
            path: PathBuf,
            /// Why.
            source: std::io::Error,
        },
        /// HTTP failure on the socket.
        #[error("admin request failed: {0}")]
        Http(String),
        /// The server answered with an error.
        #[error("control plane refused: {message} ({kind})")]
        Refused {
            /// HTTP status.
            status: u16,
            /// Error type.
            kind: String,
            /// Error message.
            message: String,
        },
        /// The answer was not the JSON expected.
        #[error("unexpected admin response: {0}")]
        BadResponse(String),
    }

    /// Send one request; parse a JSON success body into `T`.
    pub async fn call<T: serde::de::DeserializeOwned>(
        socket: &Path,
        method: Method,
        path: &str,
    ) -> Result<T, ClientError> {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|source| ClientError::Unreachable {
                path: socket.to_owned(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "airlock-admin")
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        driver.abort();
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            return Err(ClientError::Refused {
                status: status.as_u16(),
                kind: v["error"]["type"].as_str().unwrap_or("unknown").to_owned(),
                message: v["error"]["message"].as_str().unwrap_or("").to_owned(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::BadResponse(e.to_string()))
    }

    /// `GET /v1/agents`.
    pub async fn list_agents(socket: &Path) -> Result<Vec<AgentInfo>, ClientError> {
        Ok(call::<AgentsResponse>(socket, Method::GET, "/v1/agents")
            .await?
            .agents)
    }

    /// `POST /v1/agents/{id}/revoke`.
    pub async fn revoke(socket: &Path, agent_id: &AgentId) -> Result<RevokeResponse, ClientError> {
        call(
            socket,
            Method::POST,
            &format!("/v1/agents/{agent_id}/revoke"),
        )
        .await
    }
}

/// Render agents as a fixed-width table (the CLI's default output).
pub fn agents_table(agents: &[AgentInfo]) -> String {
    let headers = [
        "AGENT",
        "ENVIRONMENT",
        "VERSION",
        "TRANSPORT",
        "CONNECTED SINCE",
        "LAST HEARTBEAT",
        "CERT EXPIRES",
        "REMOTE",
    ];
    let rows: Vec<[String; 8]> = agents
        .iter()
        .map(|a| {
            [
                a.agent_id.clone(),
                a.environment_id.clone(),
                a.version.clone(),
                a.transport.to_string(),
                crate::rfc3339::display(a.connected_since),
                crate::rfc3339::display(a.last_heartbeat),
                crate::rfc3339::display(a.cert_not_after),
                a.remote_addr.clone(),
            ]
        })
        .collect();
    let mut out = crate::table::render(&headers, &rows);
    if rows.is_empty() {
        out.push_str("(no agents connected)\n");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::gateway::Transport;

    #[test]
    fn table_and_json_shapes() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let a = AgentInfo {
            agent_id: "agt_01".into(),
            environment_id: "prod".into(),
            version: "0.1.0".into(),
            transport: Transport::Quic,
            connected_since: t,
            last_heartbeat: t,
            cert_not_after: t,
            remote_addr: "127.0.0.1:5000".into(),
        };
        let table = agents_table(std::slice::from_ref(&a));
        assert!(table.starts_with("AGENT"), "{table}");
        assert!(
            table.contains("agt_01") && table.contains("2023-11-14T22:13:20Z"),
            "{table}"
        );
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["transport"], "quic");
        assert_eq!(v["connected_since"], "2023-11-14T22:13:20Z");
        let back: AgentInfo = serde_json::from_value(v).unwrap();
        assert_eq!(back, a);
        assert!(agents_table(&[]).contains("no agents connected"));
    }
}

/// The operator commands behind `control-plane tokens|agents|ca ...`. Each
/// prints its result to stdout. `tokens create|list|revoke`, `ca fingerprint`
/// and `agents list --enrolled` work on the data directory directly (the
/// server need not run); `agents list` and `agents revoke` use the admin socket,
/// and `agents revoke` falls back to recording the revocation in the
/// database when the server is not running.
pub mod commands {
    use std::time::Duration;

    use pki::{AgentId, EnvironmentId, IdentityService, JoinString, TokenRecord, TokenState};

    use super::agents_table;
    use super::client::{self, ClientError};
    use crate::config::Config;
    use crate::enroll::config::{join_host_port, split_host_port};
    use crate::rfc3339;

    /// Why a command failed.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum CommandError {
        /// A bad argument (names the flag).
        #[error("invalid {flag}: {message}")]
        Usage {
            /// The flag.
            flag: &'static str,
            /// What is wrong.
            message: String,
        },
        /// The identity service failed.
        #[error(transparent)]
        Identity(#[from] pki::ServiceError),
        /// The CA could not be loaded.
        #[error(transparent)]
        Ca(#[from] pki::CaError),
        /// The admin socket failed.
        #[error(transparent)]
        Admin(#[from] ClientError),
        /// A join token could not be revoked (unknown id, already used).
        #[error(transparent)]
        TokenRevoke(#[from] pki::RevokeTokenError),
    }

    fn time(unix: i64) -> String {
        rfc3339::display(pki::store::time_of(unix))
    }

    /// A token as `tokens list --json` prints it: times as RFC 3339, the
    /// state as `state` plus `used_by`/`used_at` or `revoked_at`.
    fn token_json(t: &TokenRecord) -> serde_json::Value {
        let mut v = serde_json::json!({
            "token_id": t.token_id,
            "environment_id": t.environment_id.as_str(),
            "state": t.state.name(),
            "created_at": time(t.created_at),
            "expires_at": time(t.expires_at),
        });
        match &t.state {
            TokenState::Used { used_by, used_at } => {
                v["used_by"] = used_by.as_str().into();
                v["used_at"] = time(*used_at).into();
            }
            TokenState::Revoked { revoked_at } => {
                v["revoked_at"] = time(*revoked_at).into();
            }
            TokenState::Active | TokenState::Expired => {}
        }
        v
    }

    /// The STATE cell of `tokens list`.
    fn token_state_cell(state: &TokenState) -> String {
        match state {
            TokenState::Used { used_by, .. } => format!("used by {used_by}"),
            TokenState::Revoked { revoked_at } => format!("revoked at {}", time(*revoked_at)),
            other => other.name().to_owned(),
        }
    }

    /// Render tokens as a fixed-width table (the default output of `tokens list`).
    pub fn tokens_table(tokens: &[TokenRecord], all: bool) -> String {
        let headers = ["TOKEN ID", "ENVIRONMENT", "STATE", "CREATED", "EXPIRES"];
        let rows: Vec<[String; 5]> = tokens
            .iter()
            .map(|t| {
                [
                    t.token_id.clone(),
                    t.environment_id.to_string(),
                    token_state_cell(&t.state),
                    time(t.created_at),
                    time(t.expires_at),
                ]
            })
            .collect();
        let mut out = crate::table::render(&headers, &rows);
        if rows.is_empty() {
            out.push_str(if all {
                "(no join tokens)\n"
            } else {
                "(no active join tokens; --all also lists expired, used and revoked ones)\n"
            });
        }
        out
    }

    /// `tokens list`: active join tokens (every token with `all`), newest
    /// first, from the identity database. Never prints a token or its hash.
    pub fn tokens_list(config: &Config, all: bool, json: bool) -> Result<(), CommandError> {
        let identity = IdentityService::open(config.pki.identity_settings(&config.data_dir))?;
        let tokens = identity.tokens(all)?;
        if json {
            let list: Vec<serde_json::Value> = tokens.iter().map(token_json).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&list).unwrap_or_default()
            );
        } else {
            print!("{}", tokens_table(&tokens, all));
        }
        Ok(())
    }

    /// `tokens revoke <id>`: an unused token stops working at once (also for
    /// a running server: enrollment reads the same database). Revoking a
    /// revoked token succeeds and says so; a used token is an error naming
    /// the agent it enrolled.
    pub fn tokens_revoke(config: &Config, token_id: &str, json: bool) -> Result<(), CommandError> {
        let identity = IdentityService::open(config.pki.identity_settings(&config.data_dir))?;
        let r = identity.revoke_token(token_id)?;
        if json {
            let v = serde_json::json!({
                "token_id": r.token_id,
                "revoked_at": time(r.revoked_at),
                "newly_revoked": r.newly_revoked,
            });
            println!("{v}");
        } else if r.newly_revoked {
            println!(
                "join token {} revoked; it can no longer enroll an agent",
                r.token_id
            );
        } else {
            println!(
                "join token {} was already revoked (at {}); nothing changed",
                r.token_id,
                time(r.revoked_at)
            );
        }
        Ok(())
    }

    /// `tokens create`: make a join token and print it with a join string.
    pub fn tokens_create(
        config: &Config,
        environment: &str,
        ttl_seconds: u64,
        enroll_address: Option<&str>,
        json: bool,
    ) -> Result<(), CommandError> {
        let environment_id =
            EnvironmentId::parse(environment).map_err(|e| CommandError::Usage {
                flag: "--environment",
                message: e.to_string(),
            })?;
        let enroll_address = enroll_address
            .unwrap_or(&config.enroll.advertise_address)
            .to_owned();
        let (host, _) = split_host_port(&enroll_address).ok_or_else(|| CommandError::Usage {
            flag: "--enroll-address",
            message: format!("`{enroll_address}` is not host:port"),
        })?;
        let tunnel_address = join_host_port(host, config.tunnel_listen.port());
        let identity = IdentityService::open(config.pki.identity_settings(&config.data_dir))?;
        let created = identity
            .create_token(&environment_id, Duration::from_secs(ttl_seconds))
            .map_err(|e| match e {
                pki::ServiceError::BadTtl => CommandError::Usage {
                    flag: "--ttl-seconds",
                    message: e.to_string(),
                },
                other => other.into(),
            })?;
        let join = JoinString::new(
            &created.token,
            enroll_address.clone(),
            identity.ca_fingerprint(),
            Some(tunnel_address.clone()),
        )
        .encode();
        if json {
            let v = serde_json::json!({
                "token": created.token.expose(),
                "token_id": created.token_id,
                "environment_id": created.environment_id.as_str(),
                "expires_at": rfc3339::display(created.expires_at),
                "enroll_address": enroll_address,
                "tunnel_address": tunnel_address,
                "ca_fingerprint": identity.ca_fingerprint().to_string(),
                "join_string": join,
            });
            println!("{v}");
        } else {
            println!("token id:        {}", created.token_id);
            println!("environment:     {}", created.environment_id);
            println!("expires at:      {}", rfc3339::display(created.expires_at));
            println!("enroll address:  {enroll_address}");
            println!("tunnel address:  {tunnel_address}");
            println!("ca fingerprint:  {}", identity.ca_fingerprint());
            println!("token:           {}", created.token.expose());
            println!();
            println!("The token is shown once and works once. On the agent host run:");
            println!();
            println!("  sandbox-agent enroll --join '{join}'");
        }
        Ok(())
    }

    /// `ca fingerprint`: print the CA fingerprint (creating the CA if needed).
    pub fn ca_fingerprint(config: &Config) -> Result<(), CommandError> {
        let ca = pki::CertificateAuthority::load_or_create(&config.pki.ca)?;
        println!("{}", ca.fingerprint());
        Ok(())
    }

    /// `agents list`: connected agents from the running server, or every
    /// enrolled agent from the database with `enrolled`.
    pub async fn agents_list(
        config: &Config,
        json: bool,
        enrolled: bool,
    ) -> Result<(), CommandError> {
        if enrolled {
            let settings = config.pki.identity_settings(&config.data_dir);
            let agents =
                tokio::task::spawn_blocking(move || IdentityService::open(settings)?.agents())
                    .await
                    .map_err(|e| CommandError::Usage {
                        flag: "--enrolled",
                        message: e.to_string(),
                    })??;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&agents).unwrap_or_default()
                );
            } else {
                println!(
                    "{:<26}  {:<20}  {:<20}  {:<20}  STATUS",
                    "AGENT", "ENVIRONMENT", "ENROLLED", "CERT EXPIRES"
                );
                for a in &agents {
                    println!(
                        "{:<26}  {:<20}  {:<20}  {:<20}  {}",
                        a.agent_id.as_str(),
                        a.environment_id.as_str(),
                        rfc3339::display(pki::store::time_of(a.enrolled_at)),
                        rfc3339::display(pki::store::time_of(a.cert_not_after)),
                        if a.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        }
                    );
                }
            }
            return Ok(());
        }
        let agents = client::list_agents(&config.admin.socket).await?;
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&agents).unwrap_or_default()
            );
        } else {
            print!("{}", agents_table(&agents));
        }
        Ok(())
    }

    /// `agents revoke <id>`.
    pub async fn agents_revoke(config: &Config, agent_id: &str) -> Result<(), CommandError> {
        let agent_id = AgentId::parse(agent_id).map_err(|e| CommandError::Usage {
            flag: "agent id",
            message: e.to_string(),
        })?;
        match client::revoke(&config.admin.socket, &agent_id).await {
            Ok(r) => {
                println!(
                    "agent {} revoked{}; {} live connection(s) closed",
                    r.agent_id,
                    if r.newly_revoked {
                        ""
                    } else {
                        " (already revoked)"
                    },
                    r.connections_closed
                );
                Ok(())
            }
            Err(ClientError::Unreachable { .. }) => {
                let settings = config.pki.identity_settings(&config.data_dir);
                let id = agent_id.clone();
                let newly = tokio::task::spawn_blocking(move || {
                    IdentityService::open(settings)?.revoke(&id)
                })
                .await
                .map_err(|e| CommandError::Usage {
                    flag: "agent id",
                    message: e.to_string(),
                })??;
                println!(
                    "agent {agent_id} revoked{} in {}; the control plane is not running, so it takes effect when it starts",
                    if newly { "" } else { " (already revoked)" },
                    config.data_dir.display()
                );
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    #[cfg(test)]
    #[allow(clippy::unwrap_used)]
    mod tests {
        use super::*;

        #[test]
        fn tokens_table_and_json_show_each_state() {
            let t = 1_700_000_000;
            let rec = |id: &str, state: TokenState| TokenRecord {
                token_id: id.into(),
                environment_id: EnvironmentId::parse("prod").unwrap(),
                created_at: t,
                expires_at: t + 3600,
                state,
            };
            let agent = AgentId::generate();
            let tokens = [
                rec("tok_a", TokenState::Active),
                rec("tok_e", TokenState::Expired),
                rec(
                    "tok_u",
                    TokenState::Used {
                        used_by: agent.clone(),
                        used_at: t + 5,
                    },
                ),
                rec("tok_r", TokenState::Revoked { revoked_at: t + 9 }),
            ];
            let table = tokens_table(&tokens, true);
            let lines: Vec<&str> = table.lines().collect();
            assert!(
                lines[0].starts_with("TOKEN ID  ENVIRONMENT  STATE"),
                "{table}"
            );
            assert!(
                lines[1].contains("tok_a") && lines[1].contains(" active "),
                "{table}"
            );
            assert!(lines[2].contains(" expired "), "{table}");
            assert!(lines[3].contains(&format!("used by {agent}")), "{table}");
            assert!(
                lines[4].contains("revoked at 2023-11-14T22:13:29Z"),
                "{table}"
            );
            assert!(
                lines[1].contains("2023-11-14T22:13:20Z  2023-11-14T23:13:20Z"),
                "{table}"
            );
            assert!(tokens_table(&[], false).contains("no active join tokens"));

            let v = token_json(&tokens[2]);
            assert_eq!(v["state"], "used");
            assert_eq!(v["used_by"], agent.as_str());
            assert_eq!(v["used_at"], "2023-11-14T22:13:25Z");
            assert_eq!(v["created_at"], "2023-11-14T22:13:20Z");
            assert!(v.get("revoked_at").is_none());
        }
    }
}
