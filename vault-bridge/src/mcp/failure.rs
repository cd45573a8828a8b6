//! rmcp's errors → [`McpFailure`] codes and a sentence naming the server
//! (never a token: rmcp's transport errors carry statuses, ids and bounded
//! body previews of the *server's* answer, and the bearer token is only in
//! request headers reqwest marks sensitive).

use protocol::mcp::McpFailure;
use rmcp::service::{ClientInitializeError, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpError;

use super::http::error_status;

/// A classified failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The code.
    pub code: McpFailure,
    /// What failed.
    pub message: String,
    /// Whether it was a 401/403 (a refresh may help).
    pub auth: bool,
    /// Whether the session is unusable from now on.
    pub session_broken: bool,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: McpFailure, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            auth: false,
            session_broken: false,
        }
    }
}

type HttpErr = StreamableHttpError<reqwest::Error>;

/// Classify an error of the transport layer found in `e`'s source chain.
fn classify_chain(e: &(dyn std::error::Error + 'static), server: &str) -> Option<Failure> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<HttpErr>() {
            return Some(classify_http(h, server));
        }
        if let Some(r) = err.downcast_ref::<reqwest::Error>() {
            return Some(classify_reqwest(r, server));
        }
        cur = err.source();
    }
    None
}

fn classify_reqwest(r: &reqwest::Error, server: &str) -> Failure {
    let detail = chain_text(r);
    if r.is_timeout() {
        Failure::new(
            McpFailure::Timeout,
            format!("mcp server {server}: {detail}"),
        )
    } else if r.is_decode() || r.is_body() {
        Failure::new(
            McpFailure::InvalidResponse,
            format!("mcp server {server}: unreadable answer: {detail}"),
        )
    } else {
        let mut f = Failure::new(
            McpFailure::ConnectionFailed,
            format!("mcp server {server} could not be reached: {detail}"),
        );
        f.session_broken = true;
        f
    }
}

fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn classify_http(h: &HttpErr, server: &str) -> Failure {
    if let Some(status) = error_status(h) {
        return match status {
            401 | 403 => {
                let mut f = Failure::new(
                    McpFailure::AuthenticationFailed,
                    format!("mcp server {server} refused the credential (HTTP {status})"),
                );
                f.auth = true;
                f
            }
            500..=599 | 429 => Failure::new(
                McpFailure::ConnectionFailed,
                format!("mcp server {server} answered HTTP {status}"),
            ),
            404 => {
                let mut f = Failure::new(
                    McpFailure::ConnectionFailed,
                    format!("mcp server {server} answered HTTP 404 (session gone or not an MCP endpoint)"),
                );
                f.session_broken = true;
                f
            }
            _ => Failure::new(
                McpFailure::InvalidResponse,
                format!("mcp server {server} answered HTTP {status}"),
            ),
        };
    }
    match h {
        StreamableHttpError::Client(r) => classify_reqwest(r, server),
        StreamableHttpError::ResponseBodyTooLarge { max_size } => Failure::new(
            McpFailure::TooLarge,
            format!("mcp server {server}: answer larger than {max_size} bytes"),
        ),
        StreamableHttpError::Sse(e) if e.to_string().to_ascii_lowercase().contains("exceed") => {
            Failure::new(
                McpFailure::TooLarge,
                format!("mcp server {server}: answer too large: {e}"),
            )
        }
        StreamableHttpError::Io(e) => {
            let mut f = Failure::new(
                McpFailure::ConnectionFailed,
                format!("mcp server {server}: i/o error: {e}"),
            );
            f.session_broken = true;
            f
        }
        StreamableHttpError::TransportChannelClosed => {
            let mut f = Failure::new(
                McpFailure::ConnectionFailed,
                format!("mcp server {server}: connection closed"),
            );
            f.session_broken = true;
            f
        }
        other => Failure::new(
            McpFailure::InvalidResponse,
            format!("mcp server {server}: invalid answer: {other}"),
        ),
    }
}

/// Classify the error that ended a response's SSE stream (and the session).
pub fn from_stream_error(cause: &str, server: &str) -> Failure {
    let mut f = if cause.contains("maximum size") || cause.contains("exceed") {
        Failure::new(
            McpFailure::TooLarge,
            format!("mcp server {server}: answer too large ({cause})"),
        )
    } else {
        Failure::new(
            McpFailure::ConnectionFailed,
            format!("mcp server {server}: the answer's event stream failed: {cause}"),
        )
    };
    f.session_broken = true;
    f
}

/// Classify a failed request on a live session.
pub fn from_service(e: &ServiceError, server: &str) -> Failure {
    match e {
        ServiceError::TransportSend(t) => classify_chain(t, server).unwrap_or_else(|| {
            let mut f = Failure::new(
                McpFailure::ConnectionFailed,
                format!("mcp server {server}: {}", chain_text(t)),
            );
            f.session_broken = true;
            f
        }),
        ServiceError::TransportClosed => {
            let mut f = Failure::new(
                McpFailure::ConnectionFailed,
                format!("mcp server {server}: the MCP session's connection closed"),
            );
            f.session_broken = true;
            f
        }
        ServiceError::Timeout { .. } => Failure::new(
            McpFailure::Timeout,
            format!("mcp server {server} did not answer in time"),
        ),
        ServiceError::McpError(d) => Failure::new(
            McpFailure::InvalidResponse,
            format!(
                "mcp server {server} answered error {}: {}",
                d.code.0, d.message
            ),
        ),
        other => Failure::new(
            McpFailure::InvalidResponse,
            format!("mcp server {server}: {other}"),
        ),
    }
}

/// Classify a failed `initialize`.
pub fn from_initialize(e: &ClientInitializeError, server: &str) -> Failure {
    let mut f = match e {
        ClientInitializeError::TransportError { error, .. } => classify_chain(error, server)
            .unwrap_or_else(|| {
                Failure::new(
                    McpFailure::ConnectionFailed,
                    format!("mcp server {server}: {}", chain_text(error)),
                )
            }),
        ClientInitializeError::ConnectionClosed(why) => Failure::new(
            McpFailure::ConnectionFailed,
            format!("mcp server {server}: connection closed during initialize: {why}"),
        ),
        ClientInitializeError::JsonRpcError(d) => Failure::new(
            McpFailure::InvalidResponse,
            format!("mcp server {server} refused initialize: {}", d.message),
        ),
        other => Failure::new(
            McpFailure::InvalidResponse,
            format!("mcp server {server}: initialize failed: {other}"),
        ),
    };
    f.session_broken = true;
    f
}
