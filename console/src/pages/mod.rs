//! The console's pages and actions.

pub mod actions;
pub mod agents;
pub mod audit;
pub mod login;
pub mod sessions;
pub mod timeline;

use axum::response::{IntoResponse, Redirect, Response};

use crate::auth::SignedIn;
use crate::error::ConsoleError;

/// `GET /console/`: the sessions, or the sign-in page.
pub async fn root(who: Result<SignedIn, ConsoleError>) -> Response {
    match who {
        Ok(_) => Redirect::to("/console/sessions").into_response(),
        Err(e) => e.into_response(),
    }
}

/// Any other path under `/console`: sign-in first, then 404.
pub async fn unknown(who: Result<SignedIn, ConsoleError>) -> Response {
    match who {
        Ok(_) => ConsoleError::NotFound("no such console page".to_owned()).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Reads a form body (`application/x-www-form-urlencoded`) into pairs,
/// without failing on missing fields (the handler names what is missing).
pub(crate) fn form_field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A form body as pairs, whatever the content type says (so a forged POST
/// without a proper body still gets the CSRF answer, not a parse error).
#[derive(Debug)]
pub struct FormPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> axum::extract::FromRequest<S> for FormPairs {
    type Rejection = ConsoleError;

    async fn from_request(req: axum::extract::Request, _state: &S) -> Result<Self, ConsoleError> {
        let bytes = axum::body::to_bytes(req.into_body(), crate::MAX_FORM_BYTES)
            .await
            .map_err(|_| {
                ConsoleError::BadRequest("form body too large or unreadable".to_owned())
            })?;
        Ok(FormPairs(
            serde_urlencoded::from_bytes(&bytes).unwrap_or_default(),
        ))
    }
}
