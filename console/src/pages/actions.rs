//! The console's actions on a session: answer a permission ask, interrupt,
//! archive. Each goes through the API's own code path ([`api::ApiHandle`]),
//! which appends the same events the API would and notifies the runner; each
//! is recorded in the control plane's audit with the key id.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use catalog::audit::{Actor, NewAuditEvent, Outcome};
use serde_json::json;
use time::OffsetDateTime;

use crate::auth::SignedIn;
use crate::error::ConsoleError;
use crate::pages::{form_field, FormPairs};
use crate::AppState;

/// Records a console action in the catalog's audit (a failure is logged
/// and does not change the action's answer).
pub(crate) async fn audit(
    s: &AppState,
    key_id: &str,
    action: &str,
    resource_ids: Vec<String>,
    outcome: Result<(), &ConsoleError>,
) {
    let ok = outcome.is_ok();
    let event = NewAuditEvent {
        id: format!("audevt_{}", uuid::Uuid::now_v7().simple()),
        at: OffsetDateTime::now_utc(),
        actor: Actor::ApiKey(key_id.to_owned()),
        remote_addr: None,
        action: action.to_owned(),
        resource_ids,
        status: outcome.map_or_else(|e| e.status().as_u16(), |()| 200),
        outcome: if ok { Outcome::Ok } else { Outcome::Error },
        request_id: None,
    };
    if let Err(error) = s.state.api.state().catalog.record_audit_event(event).await {
        tracing::error!(%error, action, "console action not recorded in the audit");
    }
}

/// The checks every action makes, in order: CSRF, then the role. A refusal
/// is recorded in the audit like the action would have been (with its 403).
pub(crate) async fn admitted(
    s: &AppState,
    who: &SignedIn,
    form: &[(String, String)],
    action: &str,
    ids: &[String],
) -> Result<(), ConsoleError> {
    let checked = who
        .check_csrf(form_field(form, "csrf"))
        .and_then(|()| who.require_admin());
    if let Err(refused) = &checked {
        audit(s, who.key_id(), action, ids.to_vec(), Err(refused)).await;
    }
    checked
}

async fn finish(
    s: &AppState,
    who: &SignedIn,
    action: &str,
    ids: Vec<String>,
    result: Result<(), ConsoleError>,
    back: String,
) -> Result<Response, ConsoleError> {
    audit(s, who.key_id(), action, ids, result.as_ref().copied()).await;
    result?;
    Ok(Redirect::to(&back).into_response())
}

/// `POST /console/sessions/{id}/confirm` (`tool_use_id`, `result` allow |
/// deny, optional `deny_message`): the API's `user.tool_confirmation`.
pub async fn confirm(
    State(s): State<AppState>,
    Path(id): Path<String>,
    who: SignedIn,
    FormPairs(form): FormPairs,
) -> Result<Response, ConsoleError> {
    let tool_use_id = form_field(&form, "tool_use_id")
        .unwrap_or_default()
        .to_owned();
    let result = form_field(&form, "result").unwrap_or_default().to_owned();
    let action = format!(
        "console.sessions.confirm.{}",
        if result == "allow" { "allow" } else { "deny" }
    );
    let ids = vec![id.clone(), tool_use_id.clone()];
    admitted(&s, &who, &form, &action, &ids).await?;
    let mut event =
        json!({"type": "user.tool_confirmation", "tool_use_id": tool_use_id, "result": result});
    if let Some(m) = form_field(&form, "deny_message").filter(|m| !m.is_empty()) {
        event["deny_message"] = json!(m);
    }
    let outcome = s
        .state
        .api
        .send_events(&id, vec![event])
        .await
        .map(|_| ())
        .map_err(ConsoleError::from);
    finish(
        &s,
        &who,
        &action,
        ids,
        outcome,
        format!("/console/sessions/{id}"),
    )
    .await
}

/// `POST /console/sessions/{id}/interrupt`: the API's `user.interrupt`.
pub async fn interrupt(
    State(s): State<AppState>,
    Path(id): Path<String>,
    who: SignedIn,
    FormPairs(form): FormPairs,
) -> Result<Response, ConsoleError> {
    admitted(
        &s,
        &who,
        &form,
        "console.sessions.interrupt",
        std::slice::from_ref(&id),
    )
    .await?;
    let outcome = s
        .state
        .api
        .send_events(&id, vec![json!({"type": "user.interrupt"})])
        .await
        .map(|_| ())
        .map_err(ConsoleError::from);
    finish(
        &s,
        &who,
        "console.sessions.interrupt",
        vec![id.clone()],
        outcome,
        format!("/console/sessions/{id}"),
    )
    .await
}

/// `POST /console/sessions/{id}/archive`: the API's archive.
pub async fn archive(
    State(s): State<AppState>,
    Path(id): Path<String>,
    who: SignedIn,
    FormPairs(form): FormPairs,
) -> Result<Response, ConsoleError> {
    admitted(
        &s,
        &who,
        &form,
        "console.sessions.archive",
        std::slice::from_ref(&id),
    )
    .await?;
    let outcome = s
        .state
        .api
        .archive_session(&id)
        .await
        .map_err(ConsoleError::from);
    finish(
        &s,
        &who,
        "console.sessions.archive",
        vec![id.clone()],
        outcome,
        format!("/console/sessions/{id}"),
    )
    .await
}
