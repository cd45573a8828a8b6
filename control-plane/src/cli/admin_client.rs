//! The client side of the admin socket (`crate::admin`): one HTTP/1.1
//! request per connection over the Unix socket, JSON answers parsed into
//! the server's own wire types.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use pki::AgentId;

use crate::admin::{AgentsResponse, RevokeResponse};
use crate::gateway::AgentInfo;

/// Errors talking to the admin socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing listens on the socket (the control plane is not running).
    #[error(
        "cannot reach the control plane at {path}: {source} (is `control-plane serve` running?)"
    )]
    Unreachable {
        /// Socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The request could not be built.
    #[error("admin request {path}: {source}")]
    Request {
        /// Request path.
        path: String,
        /// Why.
        source: http::Error,
    },
    /// The HTTP exchange on the socket failed.
    #[error("admin request {path} failed: {source}")]
    Http {
        /// Request path.
        path: String,
        /// Why.
        source: hyper::Error,
    },
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
    #[error("unexpected admin response to {path}: {source}")]
    BadResponse {
        /// Request path.
        path: String,
        /// What did not parse.
        source: serde_json::Error,
    },
}

/// Send one request; parse a JSON success body into `T`.
pub async fn call<T: serde::de::DeserializeOwned>(
    socket: &Path,
    method: Method,
    path: &str,
) -> Result<T, ClientError> {
    let http = |source| ClientError::Http {
        path: path.to_owned(),
        source,
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Unreachable {
            path: socket.to_owned(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let driver = tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "airlock-admin")
        .body(Full::new(Bytes::new()))
        .map_err(|source| ClientError::Request {
            path: path.to_owned(),
            source,
        })?;
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
    driver.abort();
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        return Err(ClientError::Refused {
            status: status.as_u16(),
            kind: v["error"]["type"].as_str().unwrap_or("unknown").to_owned(),
            message: v["error"]["message"].as_str().unwrap_or("").to_owned(),
        });
    }
    serde_json::from_slice(&body).map_err(|source| ClientError::BadResponse {
        path: path.to_owned(),
        source,
    })
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
