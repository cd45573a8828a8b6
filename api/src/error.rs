//! API errors and the one function that maps them to the wire.
//!
//! Every failure a handler, extractor or middleware can produce is an
//! [`ApiError`]. Turning one into a response only stashes it in the
//! response's extensions; the outermost middleware then calls
//! [`error_response`] (the one mapping) with the request id, so every error
//! leaves in the standard envelope
//! `{"type":"error","error":{"type","message"},"request_id"}` with the
//! status its kind has.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde_json::json;

/// Everything a request can fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is malformed or asks for something invalid: 400
    /// `invalid_request_error`. The message starts with the field at fault
    /// (`events.0.type: ...`) when there is one.
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong, naming the field.
        message: String,
    },
    /// No key, or a key that is unknown or revoked: 401 `authentication_error`.
    #[error("{message}")]
    Authentication {
        /// What was wrong with the credentials (never which ids exist).
        message: String,
    },
    /// The key may not do this (a `read_only` key sending anything but a
    /// read): 403 `permission_error`.
    #[error("{message}")]
    Permission {
        /// What was refused, naming the role.
        message: String,
    },
    /// The resource (or route) does not exist: 404 `not_found_error`.
    #[error("{message}")]
    NotFound {
        /// What was not found.
        message: String,
    },
    /// The method is not served on this path: 405 `invalid_request_error`.
    #[error("{message}")]
    MethodNotAllowed {
        /// Which method and path.
        message: String,
    },
    /// The write conflicts with the stored state (a taken name, a stale
    /// version): 409, typed `invalid_request_error` as the hosted API does.
    #[error("{message}")]
    Conflict {
        /// What conflicted.
        message: String,
    },
    /// The body is larger than `api.max_body_bytes`: 413 `request_too_large`.
    #[error("request body is larger than the {limit_bytes} bytes allowed")]
    TooLarge {
        /// The configured limit.
        limit_bytes: u64,
    },
    /// The key sent too many requests: 429 `rate_limit_error` with `retry-after`.
    #[error("rate limit exceeded; retry in {retry_after:?}")]
    RateLimited {
        /// When a request will be accepted again.
        retry_after: Duration,
    },
    /// A backend is temporarily unavailable: 503 `api_error` (the SDK retries).
    #[error("{message}")]
    Unavailable {
        /// What is unavailable (no internals).
        message: String,
    },
    /// No vault-bridge can take a credential's secret, so nothing was
    /// stored: 503 `api_error` with `error.details.error_code`
    /// `vault_bridge_unavailable`, not retried by the SDK.
    #[error("{message}")]
    VaultBridgeUnavailable {
        /// Names the vault and the environment.
        message: String,
    },
    /// A bug or a broken backend: 500 `api_error`. The detail is logged,
    /// never sent.
    #[error("internal error: {detail}")]
    Internal {
        /// What failed (logged only).
        detail: String,
    },
}

impl ApiError {
    /// 400 with a message that names the field.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        ApiError::InvalidRequest {
            message: if field.is_empty() {
                message.to_string()
            } else {
                format!("{field}: {message}")
            },
        }
    }

    /// 404 for a resource of `kind` with `id`.
    pub fn not_found(kind: &str, id: &str) -> Self {
        ApiError::NotFound {
            message: format!("{kind} {id} not found"),
        }
    }

    /// 500, logging `detail`.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        ApiError::Internal {
            detail: detail.to_string(),
        }
    }

    /// The status and envelope `error.type` of this error.
    pub fn status_and_type(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidRequest { .. } => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            ApiError::Authentication { .. } => (StatusCode::UNAUTHORIZED, "authentication_error"),
            ApiError::Permission { .. } => (StatusCode::FORBIDDEN, "permission_error"),
            ApiError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found_error"),
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error")
            }
            ApiError::Conflict { .. } => (StatusCode::CONFLICT, "invalid_request_error"),
            ApiError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
            ApiError::Unavailable { .. } | ApiError::VaultBridgeUnavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "api_error")
            }
            ApiError::Internal { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "api_error"),
        }
    }

    /// `error.details.error_code` of the envelope, when the error has one.
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            ApiError::VaultBridgeUnavailable { .. } => Some("vault_bridge_unavailable"),
            _ => None,
        }
    }

    /// The message sent to the client.
    fn public_message(&self) -> String {
        match self {
            ApiError::Internal { .. } => "internal server error".to_owned(),
            other => other.to_string(),
        }
    }
}

/// `error` and every source under it, joined with `: ` (a source whose text
/// the message already holds is not repeated), so a log line names the
/// underlying cause (`database or disk is full`), not only the context.
/// Store and catalog errors hold no secrets (connection URLs are never in
/// them), so the chain is safe to log; it is never sent to the client.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

impl From<catalog::CatalogError> for ApiError {
    fn from(e: catalog::CatalogError) -> Self {
        use catalog::CatalogError as C;
        match e {
            C::NotFound { kind, id } => ApiError::NotFound {
                message: format!("{kind} {id} not found"),
            },
            C::Conflict { .. } => ApiError::Conflict {
                message: e.to_string(),
            },
            C::Archived { .. } => ApiError::InvalidRequest {
                message: e.to_string(),
            },
            C::Unavailable { .. } => {
                tracing::warn!(error = %error_chain(&e), "catalog unavailable");
                ApiError::Unavailable {
                    message: "the catalog is temporarily unavailable; retry".to_owned(),
                }
            }
            other => ApiError::internal(error_chain(&other)),
        }
    }
}

impl From<session_store::StoreError> for ApiError {
    fn from(e: session_store::StoreError) -> Self {
        use session_store::StoreError as S;
        match e {
            S::NotFound { session_id } => ApiError::not_found("session", &session_id),
            S::EventNotFound { event, .. } => ApiError::NotFound {
                message: format!("event {event} not found"),
            },
            S::Conflict { .. } => ApiError::Conflict {
                message: e.to_string(),
            },
            S::Invalid { reason, .. } => ApiError::InvalidRequest { message: reason },
            S::Unavailable { .. } => {
                tracing::warn!(error = %error_chain(&e), "session store unavailable");
                ApiError::Unavailable {
                    message: "the session store is temporarily unavailable; retry".to_owned(),
                }
            }
            other => ApiError::internal(error_chain(&other)),
        }
    }
}

/// Marker left in a response's extensions: the middleware renders it.
#[derive(Debug, Clone)]
pub(crate) struct PendingError(pub ApiError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = StatusCode::INTERNAL_SERVER_ERROR.into_response();
        r.extensions_mut().insert(PendingError(self));
        r
    }
}

/// THE mapping of an [`ApiError`] to the wire: status, envelope, and the
/// headers the SDK reads (`request-id`, `retry-after`, `x-should-retry`).
pub fn error_response(error: &ApiError, request_id: &str) -> Response {
    let (status, kind) = error.status_and_type();
    if let ApiError::Internal { detail } = error {
        tracing::error!(request_id, error = %detail, "internal error");
    }
    let mut body = json!({
        "type": "error",
        "error": {"type": kind, "message": error.public_message()},
        "request_id": request_id,
    });
    if let Some(code) = error.error_code() {
        body["error"]["details"] = json!({ "error_code": code });
    }
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("request-id", v);
    }
    // A conflict will not resolve by retrying the same request (the SDK
    // retries 409 by default); 429 and 5xx may.
    let retry = matches!(
        error,
        ApiError::RateLimited { .. } | ApiError::Unavailable { .. } | ApiError::Internal { .. }
    );
    headers.insert(
        "x-should-retry",
        HeaderValue::from_static(if retry { "true" } else { "false" }),
    );
    if let ApiError::RateLimited { retry_after } = error {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            headers.insert("retry-after", v);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Layer(&'static str, #[source] Option<Box<Layer>>);

    #[test]
    fn error_chain_names_every_cause_once() {
        let e = Layer(
            "catalog backend error while committing",
            Some(Box::new(Layer("database or disk is full", None))),
        );
        assert_eq!(
            error_chain(&e),
            "catalog backend error while committing: database or disk is full"
        );
        let repeated = Layer(
            "unavailable: disk full",
            Some(Box::new(Layer("disk full", None))),
        );
        assert_eq!(error_chain(&repeated), "unavailable: disk full");
    }

    #[test]
    fn every_kind_has_its_status_and_type() {
        let cases = [
            (
                ApiError::invalid("name", "field required"),
                400,
                "invalid_request_error",
            ),
            (
                ApiError::Authentication {
                    message: "x".into(),
                },
                401,
                "authentication_error",
            ),
            (
                ApiError::not_found("agent", "agent_1"),
                404,
                "not_found_error",
            ),
            (
                ApiError::Conflict {
                    message: "x".into(),
                },
                409,
                "invalid_request_error",
            ),
            (
                ApiError::TooLarge { limit_bytes: 1 },
                413,
                "request_too_large",
            ),
            (
                ApiError::RateLimited {
                    retry_after: Duration::from_millis(1500),
                },
                429,
                "rate_limit_error",
            ),
            (ApiError::internal("boom"), 500, "api_error"),
            (
                ApiError::VaultBridgeUnavailable {
                    message: "x".into(),
                },
                503,
                "api_error",
            ),
        ];
        for (e, status, kind) in cases {
            let (s, k) = e.status_and_type();
            assert_eq!((s.as_u16(), k), (status, kind), "{e:?}");
            let r = error_response(&e, "req_1");
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(r.headers()["request-id"], "req_1");
        }
        assert_eq!(
            ApiError::invalid("events.0.type", "unknown").to_string(),
            "events.0.type: unknown"
        );
        let r = error_response(
            &ApiError::RateLimited {
                retry_after: Duration::from_millis(1500),
            },
            "r",
        );
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(
            ApiError::internal("secret detail").public_message(),
            "internal server error"
        );
    }
}
