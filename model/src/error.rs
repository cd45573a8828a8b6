//! The errors a model call can end in.
//!
//! The split follows who is at fault: the provider said no for a transient
//! reason ([`ModelError::Overloaded`], [`ModelError::RateLimited`]), the
//! provider refused the request or failed ([`ModelError::Api`]), the network
//! failed or went quiet ([`ModelError::Transport`], [`ModelError::Timeout`]),
//! the provider sent bytes that are not a valid stream
//! ([`ModelError::MalformedStream`]), or the caller built a request or config
//! this client cannot send ([`ModelError::InvalidRequest`]).
//!
//! The harness decides about retries from [`ModelError::is_retryable`] and
//! [`ModelError::retry_after`]; it maps the error onto the session's
//! `session.error` shape with [`ModelError::kind`].

use std::time::Duration;

/// Which wait ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutPhase {
    /// Connecting and waiting for the response head took too long.
    ResponseHead,
    /// The response body went quiet between two chunks (a stalled stream).
    StreamIdle,
    /// Reading an error response body took too long.
    ErrorBody,
}

impl std::fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ResponseHead => "waiting for the response head",
            Self::StreamIdle => "waiting for the next stream chunk",
            Self::ErrorBody => "reading the error body",
        })
    }
}

/// A failed model call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The provider is overloaded (HTTP 529, or an `overloaded_error` in the
    /// envelope or mid-stream). Transient: retry after a pause.
    #[error("model provider {provider} is overloaded: {message}")]
    Overloaded {
        /// Provider name, e.g. `anthropic`.
        provider: String,
        /// What the provider said.
        message: String,
        /// The provider's `retry-after`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// The provider rate-limited us (HTTP 429, or a `rate_limit_error`).
    /// Transient: retry no earlier than `retry_after`.
    #[error("model provider {provider} rate-limited the request: {message}")]
    RateLimited {
        /// Provider name.
        provider: String,
        /// What the provider said.
        message: String,
        /// The provider's `retry-after`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// Any other error the provider reported, with the `error.type` of its
    /// envelope (`invalid_request_error`, `authentication_error`,
    /// `api_error`, ...). `status` is `None` for an `error` event that arrived
    /// mid-stream after a 200.
    #[error("model provider {provider} returned {error_type} (status {status:?}): {message}")]
    Api {
        /// Provider name.
        provider: String,
        /// HTTP status, when the error came as a response status.
        status: Option<u16>,
        /// The envelope's `error.type`.
        error_type: String,
        /// The envelope's `error.message`.
        message: String,
        /// The provider's request id, when it sent one.
        request_id: Option<String>,
    },
    /// Connecting, TLS, or the connection broke (including a stream that
    /// ended before `message_stop`). Transient.
    #[error("transport error talking to {provider}: {message}")]
    Transport {
        /// Provider name.
        provider: String,
        /// What failed.
        message: String,
    },
    /// A wait ran out: the response head did not arrive in time, or the
    /// stream stalled. Transient.
    #[error("model provider {provider} timed out after {after:?} {phase}")]
    Timeout {
        /// Provider name.
        provider: String,
        /// Which wait.
        phase: TimeoutPhase,
        /// The configured limit.
        after: Duration,
    },
    /// The provider sent something that is not a valid event stream: bad
    /// SSE framing, invalid JSON, events out of order, tool input that is
    /// not a JSON object. The peer misbehaved; not retried.
    #[error("malformed stream from {provider}: {message}")]
    MalformedStream {
        /// Provider name.
        provider: String,
        /// What was wrong, naming the event or block index.
        message: String,
    },
    /// The caller's request or configuration cannot be sent (bad base URL,
    /// unserialisable body). A bug on our side; not retried.
    #[error("invalid model request: {message}")]
    InvalidRequest {
        /// What is wrong.
        message: String,
    },
}

/// Coarse classification used to map a [`ModelError`] onto `session.error`
/// types (`model_overloaded_error`, `model_rate_limited_error`,
/// `model_request_failed_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelErrorKind {
    /// Overloaded.
    Overloaded,
    /// Rate limited.
    RateLimited,
    /// Everything else.
    RequestFailed,
}

impl ModelError {
    /// Whether trying the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Overloaded { .. }
            | Self::RateLimited { .. }
            | Self::Transport { .. }
            | Self::Timeout { .. } => true,
            Self::Api {
                status, error_type, ..
            } => {
                matches!(status, Some(s) if *s >= 500 || *s == 408 || *s == 409)
                    || matches!(error_type.as_str(), "api_error" | "timeout_error")
            }
            Self::MalformedStream { .. } | Self::InvalidRequest { .. } => false,
        }
    }

    /// The provider's requested pause before the next attempt, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Overloaded { retry_after, .. } | Self::RateLimited { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// Coarse classification for the session's error event.
    pub fn kind(&self) -> ModelErrorKind {
        match self {
            Self::Overloaded { .. } => ModelErrorKind::Overloaded,
            Self::RateLimited { .. } => ModelErrorKind::RateLimited,
            _ => ModelErrorKind::RequestFailed,
        }
    }

    /// Build the error for an Anthropic-style envelope `error.type`, as sent in
    /// an error response body or an `error` stream event.
    pub(crate) fn from_envelope(
        provider: &str,
        status: Option<u16>,
        error_type: String,
        message: String,
        request_id: Option<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        let provider = provider.to_owned();
        match (status, error_type.as_str()) {
            (Some(529), _) | (_, "overloaded_error") => Self::Overloaded {
                provider,
                message,
                retry_after,
            },
            (Some(429), _) | (_, "rate_limit_error") => Self::RateLimited {
                provider,
                message,
                retry_after,
            },
            _ => Self::Api {
                provider,
                status,
                error_type,
                message,
                request_id,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_mapping_distinguishes_overload_rate_limit_and_the_rest() {
        let e = ModelError::from_envelope("p", Some(529), "x".into(), "m".into(), None, None);
        assert_eq!(e.kind(), ModelErrorKind::Overloaded);
        let e =
            ModelError::from_envelope("p", None, "overloaded_error".into(), "m".into(), None, None);
        assert_eq!(e.kind(), ModelErrorKind::Overloaded);
        let e = ModelError::from_envelope(
            "p",
            Some(429),
            "rate_limit_error".into(),
            "m".into(),
            None,
            Some(Duration::from_secs(3)),
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert!(e.is_retryable());
        let e = ModelError::from_envelope(
            "p",
            Some(400),
            "invalid_request_error".into(),
            "bad".into(),
            Some("req_1".into()),
            None,
        );
        assert!(!e.is_retryable());
        assert!(
            matches!(e, ModelError::Api { ref error_type, .. } if error_type == "invalid_request_error")
        );
        let e =
            ModelError::from_envelope("p", Some(500), "api_error".into(), "m".into(), None, None);
        assert!(e.is_retryable());
    }
}
