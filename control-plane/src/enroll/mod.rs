//! The enrollment listener: HTTPS (server-auth TLS with the control plane's
//! certificate issued by the internal CA), one endpoint, `POST /v1/enroll`
//! (wire types in [`pki::enroll`]). Each connection has a deadline and the
//! body a size cap; every refused request is logged once, at WARN, with the
//! peer address and the typed reason, and affects only that connection.

pub mod config;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::gateway::identities::token_from_catalog;
use bytes::Bytes;
use catalog::TokenClaim;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use pki::enroll::{
    EnrollErrorCode, EnrollRequest, EnrollResponse, ErrorBody, ErrorEnvelope, ENROLL_PATH,
    MAX_ENROLL_BODY_BYTES,
};
use pki::{EnrollError, IdentityService, PreparedEnrollment, TokenError, TokenRecord};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use config::{EnrollConfig, PkiConfig};

/// Why one enrollment request failed. Maps to the wire in [`error_response`] only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The identity service refused (bad token, bad CSR) or failed.
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    /// Body larger than [`MAX_ENROLL_BODY_BYTES`].
    #[error("request body exceeds {MAX_ENROLL_BODY_BYTES} bytes")]
    TooLarge,
    /// Body is not an [`EnrollRequest`].
    #[error("request body is not a valid enroll request: {0}")]
    BadJson(String),
    /// The body could not be read.
    #[error("reading request body failed: {0}")]
    Body(String),
    /// Unknown path.
    #[error("no such endpoint {0}")]
    NotFound(String),
    /// Wrong method on the endpoint.
    #[error("method {0} not allowed")]
    MethodNotAllowed(Method),
    /// The shared catalog, which decides a token's single use across
    /// replicas, could not be asked (or holds a row that does not parse).
    /// The token is left as it was.
    #[error("the shared catalog could not claim the join token: {0}")]
    SharedCatalog(String),
}

/// The one place an enrollment error becomes an HTTP response.
pub fn error_response(error: &RequestError) -> Response<Full<Bytes>> {
    use EnrollErrorCode as C;
    let (status, code) = match error {
        RequestError::Enroll(EnrollError::Token(t)) => match t {
            TokenError::Malformed => (StatusCode::UNAUTHORIZED, C::TokenMalformed),
            TokenError::Unknown => (StatusCode::UNAUTHORIZED, C::TokenUnknown),
            TokenError::Expired { .. } => (StatusCode::UNAUTHORIZED, C::TokenExpired),
            TokenError::AlreadyUsed { .. } => (StatusCode::UNAUTHORIZED, C::TokenUsed),
            TokenError::Revoked { .. } => (StatusCode::UNAUTHORIZED, C::TokenRevoked),
            _ => (StatusCode::UNAUTHORIZED, C::TokenUnknown),
        },
        RequestError::Enroll(EnrollError::Csr(pki::CsrError::UnsupportedKey(_))) => {
            (StatusCode::BAD_REQUEST, C::UnsupportedKey)
        }
        RequestError::Enroll(EnrollError::Csr(_)) => (StatusCode::BAD_REQUEST, C::InvalidCsr),
        RequestError::Enroll(_) => (StatusCode::INTERNAL_SERVER_ERROR, C::Internal),
        RequestError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, C::PayloadTooLarge),
        RequestError::BadJson(_) | RequestError::Body(_) => {
            (StatusCode::BAD_REQUEST, C::BadRequest)
        }
        RequestError::NotFound(_) => (StatusCode::NOT_FOUND, C::NotFound),
        RequestError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, C::MethodNotAllowed),
        RequestError::SharedCatalog(_) => (StatusCode::SERVICE_UNAVAILABLE, C::Internal),
    };
    // Token errors say which check failed but never which agent used a token.
    let message = match error {
        RequestError::Enroll(EnrollError::Token(TokenError::AlreadyUsed { token_id, .. })) => {
            format!("join token {token_id} was already used")
        }
        RequestError::Enroll(EnrollError::Internal(_)) => {
            "enrollment failed on the server; retry later".to_owned()
        }
        RequestError::SharedCatalog(_) => {
            "the control plane's shared catalog is unavailable; the token is unchanged, retry later"
                .to_owned()
        }
        other => other.to_string(),
    };
    json_response(
        status,
        &ErrorEnvelope {
            error: ErrorBody {
                kind: code.as_str().to_owned(),
                message,
            },
        },
    )
}

fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Bind the enrollment listener.
pub async fn bind(config: &EnrollConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind(config.listen).await
}

/// Serve enrollment on `listener` until `shutdown` fires; connections are
/// spawned on `tracker` and finish their current request (bounded by the
/// per-connection deadline) after shutdown.
pub async fn serve(
    listener: TcpListener,
    identity: Arc<IdentityService>,
    shared: Option<crate::gateway::SharedIdentities>,
    config: EnrollConfig,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> Result<(), pki::TlsError> {
    let tls = Arc::new(identity.enroll_server_config()?);
    let acceptor = TlsAcceptor::from(tls);
    let limit = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%error, "enroll accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(remote_addr = %peer, "enroll connection refused: too many connections");
            drop(tcp);
            continue;
        };
        let acceptor = acceptor.clone();
        let identity = identity.clone();
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let deadline = config.request_timeout;
        let span = tracing::info_span!("enroll_conn", remote_addr = %peer);
        tracker.spawn(
            async move {
                let _permit = permit;
                match tokio::time::timeout(
                    deadline,
                    connection(tcp, peer, acceptor, identity, shared, shutdown),
                )
                .await
                {
                    Ok(()) => {}
                    Err(_) => tracing::warn!(
                        timeout_seconds = deadline.as_secs(),
                        "enroll connection timed out"
                    ),
                }
            }
            .instrument(span),
        );
    }
    tracing::info!("enroll listener stopped accepting");
    Ok(())
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    identity: Arc<IdentityService>,
    shared: Option<crate::gateway::SharedIdentities>,
    shutdown: CancellationToken,
) {
    let accepted = tokio::select! {
        r = acceptor.accept(tcp) => r,
        // Shutting down: a connection still in its handshake has no request to finish.
        _ = shutdown.cancelled() => return,
    };
    let tls = match accepted {
        Ok(t) => t,
        Err(error) => {
            tracing::warn!(%error, "enroll tls handshake failed");
            return;
        }
    };
    let service = hyper::service::service_fn(move |req| {
        let identity = identity.clone();
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(req, peer, identity, shared).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(5))
        .keep_alive(false);
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(error) = res {
                tracing::debug!(%error, "enroll connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            if let Err(error) = conn.await {
                tracing::debug!(%error, "enroll connection ended with an error during shutdown");
            }
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    identity: Arc<IdentityService>,
    shared: Option<crate::gateway::SharedIdentities>,
) -> Response<Full<Bytes>> {
    match enroll_request(req, peer, identity, shared).await {
        Ok(resp) => resp,
        Err(error) => {
            tracing::warn!(remote_addr = %peer, %error, "enrollment refused");
            error_response(&error)
        }
    }
}

async fn enroll_request(
    req: Request<Incoming>,
    peer: SocketAddr,
    identity: Arc<IdentityService>,
    shared: Option<crate::gateway::SharedIdentities>,
) -> Result<Response<Full<Bytes>>, RequestError> {
    if req.uri().path() != ENROLL_PATH {
        return Err(RequestError::NotFound(req.uri().path().to_owned()));
    }
    if req.method() != Method::POST {
        return Err(RequestError::MethodNotAllowed(req.method().clone()));
    }
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_DRAIN_BYTES as u64) {
        // Too large to be worth reading: answer now, the connection closes.
        return Err(RequestError::TooLarge);
    }
    let body = read_body(req.into_body()).await?;
    let request: EnrollRequest =
        serde_json::from_slice(&body).map_err(|e| RequestError::BadJson(e.to_string()))?;
    let peer_str = peer.to_string();
    let hostname = request.hostname.clone();
    let prepared = PreparedEnrollment::new(&request.token, &request.csr_pem)?;
    // With a shared catalog the token is claimed there first: it decides
    // single use across replicas, and brings in a token made elsewhere.
    let claimed = match &shared {
        Some(shared) => claim(shared, &prepared).await?,
        None => None,
    };
    let (token_hash, agent_id) = (
        prepared.token_hash().to_owned(),
        prepared.agent_id().clone(),
    );
    // Whose claim to give back if the enrollment fails after it.
    let holder = shared.as_ref().filter(|_| claimed.is_some());
    let enrolled = tokio::task::spawn_blocking(move || {
        identity.enroll_prepared(prepared, Some(&peer_str), claimed.as_ref())
    })
    .await
    .map_err(|e| {
        RequestError::Enroll(EnrollError::Internal(pki::ServerFault::Task {
            what: "enroll",
            source: Box::new(e),
        }))
    })
    .and_then(|r| r.map_err(RequestError::from));
    let enrollment = match enrolled {
        Ok(e) => e,
        Err(error) => {
            // Refused here (a token revoked at this replica) or failed: the
            // claim made for this enrollment is given back.
            if let Some(shared) = holder {
                shared.release_token(&token_hash, &agent_id).await;
            }
            return Err(error);
        }
    };
    tracing::info!(
        remote_addr = %peer,
        agent_id = %enrollment.agent_id,
        environment_id = %enrollment.environment_id,
        token_id = %enrollment.token_id,
        hostname = hostname.as_deref().unwrap_or("-"),
        cert_serial = %enrollment.certificate.serial,
        "agent enrolled"
    );
    // Every replica accepts, renews and lists it.
    if let Some(shared) = &shared {
        shared.publish(&enrollment.agent_id).await;
    }
    let chain = &enrollment.certificate.chain;
    let response = EnrollResponse {
        agent_id: enrollment.agent_id.to_string(),
        environment_id: enrollment.environment_id.to_string(),
        certificate_chain_pem: enrollment.certificate.chain_pem(),
        ca_certificate_pem: chain.last().map(pki::ca::der_to_pem).unwrap_or_default(),
        not_after: pki::store::unix_seconds(enrollment.certificate.not_after),
    };
    Ok(json_response(StatusCode::OK, &response))
}

/// Claim the token of `prepared` in the shared catalog: `Some` (claimed;
/// the token as the catalog holds it), `None` (no replica made it, as far
/// as the catalog and this replica know: the local check answers
/// `token_unknown`), or the refusal as the token error the local check
/// would give.
async fn claim(
    shared: &crate::gateway::SharedIdentities,
    prepared: &PreparedEnrollment,
) -> Result<Option<TokenRecord>, RequestError> {
    let claim = shared
        .claim_token(prepared.token_hash(), prepared.agent_id())
        .await
        .map_err(|e| RequestError::SharedCatalog(e.to_string()))?;
    let refused = |e: TokenError| Err(RequestError::Enroll(EnrollError::Token(e)));
    match claim {
        TokenClaim::Claimed(t) => {
            let token_id = t.token_id.clone();
            match token_from_catalog(t, pki::store::unix_seconds(SystemTime::now())) {
                Ok(token) => Ok(Some(token)),
                Err(e) => {
                    shared
                        .release_token(prepared.token_hash(), prepared.agent_id())
                        .await;
                    Err(RequestError::SharedCatalog(format!(
                        "join token {token_id}: {e}"
                    )))
                }
            }
        }
        TokenClaim::Unknown => Ok(None),
        TokenClaim::Used { token_id, used_by } => {
            refused(TokenError::AlreadyUsed { token_id, used_by })
        }
        TokenClaim::Revoked { token_id } => refused(TokenError::Revoked { token_id }),
        TokenClaim::Expired { token_id } => refused(TokenError::Expired { token_id }),
    }
}

/// How much of an oversized body is read (and discarded) before answering
/// 413, so an ordinary client gets the answer instead of a reset.
const MAX_DRAIN_BYTES: usize = 1024 * 1024;

/// Read at most [`MAX_ENROLL_BODY_BYTES`]; past that, discard up to
/// [`MAX_DRAIN_BYTES`] and report [`RequestError::TooLarge`].
async fn read_body(mut body: Incoming) -> Result<Bytes, RequestError> {
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| RequestError::Body(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            seen = seen.saturating_add(data.len());
            if seen > MAX_DRAIN_BYTES {
                return Err(RequestError::TooLarge);
            }
            if seen <= MAX_ENROLL_BODY_BYTES {
                buf.extend_from_slice(&data);
            }
        }
    }
    if seen > MAX_ENROLL_BODY_BYTES {
        return Err(RequestError::TooLarge);
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A catalog failure at the claim is a 503 the agent may retry, with
    /// the wire's `internal` kind and a message that names no detail of
    /// the database (the detail is in the server's log line).
    #[tokio::test]
    async fn a_catalog_failure_is_a_retryable_503_without_details() {
        let error = RequestError::SharedCatalog(
            "catalog unavailable: connecting to postgres://airlock@db:5432 refused".into(),
        );
        let resp = error_response(&error);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "internal", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("retry later"), "{message}");
        assert!(!message.contains("postgres"), "{message}");
        assert!(
            error.to_string().contains("postgres"),
            "the log line has the detail"
        );
    }
}
