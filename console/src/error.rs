//! Console errors and the one place they become responses: a small HTML
//! page with the status, or the redirect to the sign-in page.

use std::time::Duration;

use axum::response::{IntoResponse, Redirect, Response};
use catalog::{CatalogError, KeyRole};
use http::{header, HeaderValue, StatusCode};
use maud::html;

use crate::backend::ControlPlaneError;

/// Everything a console request can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleError {
    /// No valid session cookie: 303 to `/console/login`.
    #[error("not signed in")]
    NotSignedIn,
    /// The form's CSRF token is missing or wrong: 403, nothing changed.
    #[error("CSRF token missing or invalid")]
    Csrf,
    /// A read-only session tried to change something: 403.
    #[error("this API key has the role {role}: it cannot change anything")]
    ReadOnly {
        /// The session's role.
        role: KeyRole,
    },
    /// Too many sign-in attempts from this address: 429.
    #[error("too many sign-in attempts; retry in {} s", .0.as_secs().max(1))]
    RateLimited(Duration),
    /// No such page or resource: 404.
    #[error("{0}")]
    NotFound(String),
    /// A bad query or form: 400.
    #[error("{0}")]
    BadRequest(String),
    /// The API's code path refused or failed (its status is kept).
    #[error("{0}")]
    Api(#[from] api::ApiError),
    /// The session store failed.
    #[error("session store: {0}")]
    Store(#[from] session_store::StoreError),
    /// The catalog failed.
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    /// The control plane could not answer.
    #[error("{0}")]
    Control(#[from] ControlPlaneError),
}

impl ConsoleError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        self.status_and_message().0
    }

    /// The status and the message shown (no internals for 5xx).
    fn status_and_message(&self) -> (StatusCode, String) {
        match self {
            ConsoleError::NotSignedIn => (StatusCode::SEE_OTHER, String::new()),
            ConsoleError::Csrf | ConsoleError::ReadOnly { .. } => {
                (StatusCode::FORBIDDEN, self.to_string())
            }
            ConsoleError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, self.to_string()),
            ConsoleError::NotFound(_) => (StatusCode::NOT_FOUND, self.to_string()),
            ConsoleError::BadRequest(_) => (StatusCode::BAD_REQUEST, self.to_string()),
            ConsoleError::Api(e) => {
                let (status, _) = e.status_and_type();
                if status.is_server_error() {
                    (status, "the request failed; see the control plane's log".to_owned())
                } else {
                    (status, e.to_string())
                }
            }
            ConsoleError::Store(session_store::StoreError::NotFound { .. }) => {
                (StatusCode::NOT_FOUND, "session not found".to_owned())
            }
            ConsoleError::Catalog(e) if e.is_transient() => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the catalog is unavailable; retry".to_owned(),
            ),
            ConsoleError::Control(ControlPlaneError::UnknownAgent(_))
            | ConsoleError::Control(ControlPlaneError::InvalidAgentId(_)) => {
                (StatusCode::NOT_FOUND, self.to_string())
            }
            ConsoleError::Control(ControlPlaneError::NotConnected(_)) => {
                (StatusCode::CONFLICT, self.to_string())
            }
            ConsoleError::Store(_) | ConsoleError::Catalog(_) | ConsoleError::Control(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "storage or the control plane is unavailable; retry (details in the control plane's log)"
                    .to_owned(),
            ),
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        if matches!(self, ConsoleError::NotSignedIn) {
            return Redirect::to("/console/login").into_response();
        }
        let (status, message) = self.status_and_message();
        if status.is_server_error() {
            tracing::warn!(error = %self, status = status.as_u16(), "console request failed");
        } else {
            tracing::debug!(error = %self, status = status.as_u16(), "console request refused");
        }
        let title = status.canonical_reason().unwrap_or("Error");
        let body = crate::layout::bare(
            title,
            html! {
                h1 { (status.as_u16()) " " (title) }
                p #error role="alert" { (message) }
                p { a href="/console/sessions" { "Back to sessions" } }
            },
        );
        let mut response = (status, body).into_response();
        if let ConsoleError::RateLimited(after) = &self {
            if let Ok(v) = HeaderValue::from_str(&after.as_secs().max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}
