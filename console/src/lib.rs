//! The web console: server-rendered HTML for operators and auditors, served
//! under `/console` on the control plane's API listener (same TLS).
//!
//! - Sign-in with an API key ([`auth`]): the cookie `airlock_console` holds
//!   a random token; the catalog stores only its SHA-256 with the key id,
//!   role, CSRF token and expiry, so every replica accepts it and revoking
//!   the key ends it. Every state-changing request is a POST form carrying
//!   the session's CSRF token; a `read_only` key sees no action and a forged
//!   POST gets 403.
//! - Pages ([`pages`]): sessions (filters, live status), one session's
//!   timeline (messages, tool calls joined with their results, duration and
//!   the agent/sandbox holding the session's sandbox, permission asks with
//!   approve/deny, errors attributed to their layer; 200 events per page;
//!   following live over SSE), agents (connected or not, transport,
//!   version, certificate expiry, heartbeat, sandboxes; revoke with a
//!   confirmation) and the audit (checkpoints per agent with their
//!   verification state, the control plane's audit events).
//! - Actions go through the API's own code paths ([`api::ApiHandle`]):
//!   approving appends the same `user.tool_confirmation` the API would,
//!   interrupt appends `user.interrupt`, archive is the API's archive; each
//!   is recorded in the catalog's audit with the key id.
//! - Templates are [`maud`] (checked at compile time, everything escaped);
//!   CSS and JS are embedded ([`assets`]); every response carries a strict
//!   CSP (no inline script) and `nosniff` ([`security_headers`]).
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod assets;
pub mod auth;
pub mod backend;
pub mod config;
mod error;
mod layout;
mod live;
mod pages;
mod render;

use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use http::{header, HeaderValue};

pub use backend::{
    AgentState, AgentView, ControlPlane, ControlPlaneError, Placement, RevokeOutcome, SandboxView,
};
pub use config::{ConsoleConfig, RawConsoleConfig};
pub use error::ConsoleError;

/// The CSP of every console response: nothing but our own files, no inline
/// script or style, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

/// Events per timeline page.
pub const TIMELINE_PAGE: usize = 200;

/// What the console serves from.
#[derive(Debug, Clone)]
pub struct ConsoleState {
    /// The API's state and its action paths.
    pub api: api::ApiHandle,
    /// Agents and revocation.
    pub control: Arc<dyn ControlPlane>,
    /// `[console]`.
    pub config: ConsoleConfig,
}

/// The state handlers get.
#[derive(Debug)]
pub(crate) struct Shared {
    pub state: ConsoleState,
    pub login_limiter: auth::LoginLimiter,
}

pub(crate) type AppState = Arc<Shared>;

/// The console's router (every route under `/console`), to merge with the
/// API's on the same listener. It has no fallback of its own: unknown paths
/// under `/console` are answered here (sign-in first), others by the API.
pub fn router(state: ConsoleState) -> Router {
    let shared = Arc::new(Shared {
        state,
        login_limiter: auth::LoginLimiter::new(),
    });
    Router::new()
        .route("/console", get(pages::root))
        .route("/console/", get(pages::root))
        .route(
            "/console/login",
            get(pages::login::form).post(pages::login::submit),
        )
        .route("/console/logout", axum::routing::post(pages::login::logout))
        .route("/console/static/{file}", get(assets::serve))
        .route("/console/sessions", get(pages::sessions::list))
        .route("/console/sessions/rows", get(pages::sessions::rows))
        .route("/console/sessions/{id}", get(pages::timeline::show))
        .route("/console/sessions/{id}/live", get(live::stream))
        .route(
            "/console/sessions/{id}/confirm",
            axum::routing::post(pages::actions::confirm),
        )
        .route(
            "/console/sessions/{id}/interrupt",
            axum::routing::post(pages::actions::interrupt),
        )
        .route(
            "/console/sessions/{id}/archive",
            axum::routing::post(pages::actions::archive),
        )
        .route("/console/agents", get(pages::agents::list))
        .route("/console/agents/{id}", get(pages::agents::show))
        .route(
            "/console/agents/{id}/revoke",
            get(pages::agents::revoke_confirm).post(pages::agents::revoke),
        )
        .route("/console/audit", get(pages::audit::show))
        .route("/console/{*rest}", get(pages::unknown).post(pages::unknown))
        .layer(axum::middleware::from_fn(read_body_first))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(shared)
}

/// Largest form body the console reads.
pub(crate) const MAX_FORM_BYTES: usize = 64 * 1024;

/// Reads a request's body (up to [`MAX_FORM_BYTES`]) before anything
/// answers it. A request refused before its handler reads the form (no
/// session cookie, CSRF, read-only) would otherwise leave the body unread,
/// and the server would close the connection after answering; a client that
/// sends its next POST on that pooled connection gets it cut without an
/// answer (POSTs are not retried). With the body read, the connection stays
/// usable. A larger body is refused here with 413.
async fn read_body_first(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Err(_) => {
            let mut r = Response::new(axum::body::Body::from(
                "request body too large or unreadable",
            ));
            *r.status_mut() = http::StatusCode::PAYLOAD_TOO_LARGE;
            r
        }
    }
}

/// Adds the CSP, `nosniff`, no-referrer, no framing and no caching to every
/// console response.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
