//! The edge every request passes: a request id, authentication (before any
//! routing decision that could reveal an id), the per-key rate limit, the
//! body size limit, the rendering of every error through
//! [`crate::error_response`], the audit event of every authenticated
//! state-changing request ([`crate::audit`]), and the `read_only` role
//! (403 `permission_error` for anything but GET).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, Method, Uri};

use crate::error::{error_response, ApiError, PendingError};
use crate::ids::new_id;
use crate::AppState;

/// The configured body limit, for the body extractor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimit(pub u64);

/// Token buckets per API key.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: Option<f64>,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub(crate) fn new(per_second: Option<f64>, burst: u32) -> Self {
        RateLimiter {
            rate: per_second.filter(|r| *r > 0.0),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key_id` at `now`, or says when one will exist.
    pub(crate) fn check(&self, key_id: &str, now: Instant) -> Result<(), Duration> {
        let Some(rate) = self.rate else { return Ok(()) };
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets
            .entry(key_id.to_owned())
            .or_insert((self.burst, now));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * rate;
        *tokens = (*tokens + refill).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }
}

/// The key presented: `x-api-key`, or `Authorization: Bearer`.
fn presented_key(req: &Request) -> Option<&str> {
    if let Some(v) = req.headers().get("x-api-key") {
        return v.to_str().ok();
    }
    let auth = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    auth.strip_prefix("Bearer ").map(str::trim)
}

async fn authenticate(
    shared: &AppState,
    key: Option<String>,
) -> Result<catalog::ApiKeyRecord, ApiError> {
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return Err(ApiError::Authentication {
            message: "missing api key: send it in the x-api-key header".to_owned(),
        });
    };
    let hash = catalog::hash_api_key(&key);
    match shared.state.catalog.find_api_key(&hash).await? {
        Some(record) if record.revoked_at.is_none() => Ok(record),
        _ => Err(ApiError::Authentication {
            message: "invalid x-api-key".to_owned(),
        }),
    }
}

/// A `read_only` key reads (GET, HEAD) and nothing else; checked before
/// routing, so it learns nothing about the path either.
fn read_only_may(role: catalog::KeyRole, method: &Method, path: &str) -> Result<(), ApiError> {
    if role.can_write() || method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    Err(ApiError::Permission {
        message: format!(
            "this API key has the role {role}: {method} {path} is not allowed (only GET)"
        ),
    })
}

/// The middleware around every route.
pub(crate) async fn edge(State(shared): State<AppState>, mut req: Request, next: Next) -> Response {
    let request_id = new_id("req");
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut key_id = String::new();
    let remote_addr = crate::audit::remote_addr(&req);
    let mut audit_target = None;
    let outcome = async {
        let key = presented_key(&req).map(str::to_owned);
        let record = authenticate(&shared, key).await?;
        key_id = record.id;
        audit_target = crate::audit::target(&method, &path);
        // after the audit target: a refused write is recorded too
        read_only_may(record.role, &method, &path)?;
        shared
            .limiter
            .check(&key_id, Instant::now())
            .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
        let limit = shared.state.limits.max_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ApiError::TooLarge { limit_bytes: limit });
        }
        req.extensions_mut().insert(BodyLimit(limit));
        if let Some(t) = audit_target.as_mut().filter(|t| t.events) {
            let (peeked, action) = crate::audit::peek_events(req, limit).await?;
            t.action = action.to_owned();
            req = peeked;
        }
        Ok(next.run(req).await)
    }
    .await;
    let mut response = match outcome {
        Ok(r) => finish(r, &request_id).await,
        Err(e) => error_response(&e, &request_id),
    };
    if let Some(target) = audit_target {
        response =
            crate::audit::record(&shared, target, &key_id, remote_addr, &request_id, response)
                .await;
    }
    tracing::debug!(
        %method,
        path,
        status = response.status().as_u16(),
        request_id,
        key_id,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "api request"
    );
    response
}

/// Renders a pending error, wraps a foreign error response (an axum
/// rejection) in the envelope, or adds the request id.
async fn finish(mut response: Response, request_id: &str) -> Response {
    if let Some(PendingError(e)) = response.extensions_mut().remove::<PendingError>() {
        return error_response(&e, request_id);
    }
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        let text = match axum::body::to_bytes(
            std::mem::replace(response.body_mut(), Body::empty()),
            64 * 1024,
        )
        .await
        {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(_) => String::new(),
        };
        let message = if text.is_empty() {
            status.canonical_reason().unwrap_or("error").to_lowercase()
        } else {
            text
        };
        let e = match status.as_u16() {
            404 => ApiError::NotFound { message },
            413 => ApiError::TooLarge { limit_bytes: 0 },
            s if s >= 500 => ApiError::internal(message),
            _ => ApiError::InvalidRequest { message },
        };
        return error_response(&e, request_id);
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("request-id", v);
    }
    response
}

/// Unknown paths (after authentication).
pub(crate) async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::NotFound {
        message: format!("no route for {method} {}", uri.path()),
    }
    .into_response()
}

/// Known paths with another method.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError::MethodNotAllowed {
        message: format!("method {method} is not allowed on {}", uri.path()),
    }
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_the_rate_and_cap_at_the_burst() {
        let l = RateLimiter::new(Some(2.0), 2);
        let t0 = Instant::now();
        assert!(l.check("k", t0).is_ok());
        assert!(l.check("k", t0).is_ok());
        let wait = l.check("k", t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(l.check("other", t0).is_ok(), "keys have their own buckets");
        assert!(l.check("k", t0 + Duration::from_millis(500)).is_ok());
        assert!(l.check("k", t0 + Duration::from_secs(100)).is_ok());
        assert!(l.check("k", t0 + Duration::from_secs(100)).is_ok());
        assert!(
            l.check("k", t0 + Duration::from_secs(100)).is_err(),
            "the burst caps the refill"
        );
        let off = RateLimiter::new(None, 1);
        for _ in 0..100 {
            assert!(off.check("k", t0).is_ok());
        }
    }
}
