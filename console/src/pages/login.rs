//! `GET/POST /console/login`, `POST /console/logout`.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use catalog::NewConsoleSession;
use http::{header, StatusCode};
use maud::{html, Markup};
use time::OffsetDateTime;

use crate::auth::{self, SignedIn};
use crate::error::ConsoleError;
use crate::pages::form_field;
use crate::AppState;

fn login_form(error: Option<&str>) -> Markup {
    html! {
        div.login {
            h1 { "Airlock console" }
            @if let Some(e) = error { p #error role="alert" { (e) } }
            form #login-form method="post" action="/console/login" {
                label for="api_key" { "API key" }
                input #api_key type="password" name="api_key" autocomplete="off" required autofocus;
                button #sign-in type="submit" { "Sign in" }
            }
            p.meta { "Sign in with an Airlock API key (control-plane api-keys create). A read-only key can look but not act." }
        }
    }
}

/// `GET /console/login`.
pub async fn form() -> Response {
    crate::layout::bare("Sign in", login_form(None)).into_response()
}

/// `POST /console/login`: checks the key, stores a session, sets the cookie.
pub async fn submit(
    State(s): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    crate::pages::FormPairs(form): crate::pages::FormPairs,
) -> Result<Response, ConsoleError> {
    let client = peer.map_or_else(
        || "unknown".to_owned(),
        |Extension(ConnectInfo(a))| a.ip().to_string(),
    );
    s.login_limiter
        .check(&client, Instant::now())
        .map_err(ConsoleError::RateLimited)?;
    let key = form_field(&form, "api_key").unwrap_or_default().trim();
    let catalog = &s.state.api.state().catalog;
    let record = if key.is_empty() {
        None
    } else {
        catalog.find_api_key(&catalog::hash_api_key(key)).await?
    };
    let Some(record) = record.filter(|r| r.revoked_at.is_none()) else {
        tracing::info!(client, "console sign-in refused: invalid API key");
        return Ok((
            StatusCode::UNAUTHORIZED,
            crate::layout::bare("Sign in", login_form(Some("invalid API key"))),
        )
            .into_response());
    };
    let token = auth::random_token();
    let now = OffsetDateTime::now_utc();
    let ttl = s.state.config.session_ttl;
    catalog
        .create_console_session(NewConsoleSession {
            token_hash: auth::token_hash(&token),
            key_id: record.id.clone(),
            role: record.role,
            csrf_token: auth::random_token(),
            created_at: now,
            expires_at: now + ttl,
        })
        .await?;
    // Old sessions go on sign-in (cheap: one indexed delete).
    if let Err(error) = catalog.delete_expired_console_sessions(now).await {
        tracing::warn!(%error, "expired console sessions not deleted");
    }
    crate::pages::actions::audit(
        &s,
        &record.id,
        "console.login",
        vec![record.id.clone()],
        Ok(()),
    )
    .await;
    tracing::info!(key_id = %record.id, role = %record.role, "console sign-in");
    let mut response = Redirect::to("/console/sessions").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        auth::set_cookie(&token, ttl, s.state.config.secure_cookies),
    );
    Ok(response)
}

/// `POST /console/logout` (CSRF): deletes the session, clears the cookie.
pub async fn logout(
    State(s): State<AppState>,
    who: SignedIn,
    crate::pages::FormPairs(form): crate::pages::FormPairs,
) -> Result<Response, ConsoleError> {
    who.check_csrf(form_field(&form, "csrf"))?;
    s.state
        .api
        .state()
        .catalog
        .delete_console_session(&who.session.token_hash)
        .await?;
    crate::pages::actions::audit(
        &s,
        who.key_id(),
        "console.logout",
        vec![who.key_id().to_owned()],
        Ok(()),
    )
    .await;
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        auth::clear_cookie(s.state.config.secure_cookies),
    );
    Ok(response)
}
