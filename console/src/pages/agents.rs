//! `GET /console/agents`, `GET /console/agents/{id}`, and revocation with a
//! confirmation page (`GET/POST /console/agents/{id}/revoke`).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use time::OffsetDateTime;

use crate::auth::SignedIn;
use crate::backend::AgentView;
use crate::error::ConsoleError;
use crate::pages::FormPairs;
use crate::render::rfc3339;
use crate::AppState;

fn when(t: Option<OffsetDateTime>) -> Markup {
    match t {
        Some(t) => html! { time datetime=(rfc3339(t)) { (rfc3339(t)) } },
        None => html! { span.meta { "—" } },
    }
}

fn opt(v: &Option<String>) -> Markup {
    match v {
        Some(v) => html! { (v) },
        None => html! { span.meta { "—" } },
    }
}

/// `GET /console/agents`.
pub async fn list(State(s): State<AppState>, who: SignedIn) -> Result<Response, ConsoleError> {
    let agents = s.state.control.agents().await?;
    let body = html! {
        h1 { "Agents" }
        table #agents {
            caption.sr-only { "Sandbox-agents" }
            thead { tr {
                th scope="col" { "Agent" } th scope="col" { "State" } th scope="col" { "Environment" }
                th scope="col" { "Transport" } th scope="col" { "Version" } th scope="col" { "Certificate expires" }
                th scope="col" { "Last heartbeat" } th scope="col" { "Sandboxes" }
            } }
            tbody {
                @for a in &agents {
                    tr.agent data-agent-id=(a.agent_id) {
                        td { a href={ "/console/agents/" (a.agent_id) } { code { (a.agent_id) } } }
                        td.agent-state data-state=(a.state.as_str()) { (a.state.as_str()) }
                        td { code { (a.environment_id) } }
                        td.transport { (opt(&a.transport)) }
                        td.version { (opt(&a.version)) }
                        td.cert-expiry { (when(a.cert_not_after)) }
                        td.heartbeat { (when(a.last_heartbeat)) }
                        td.sandboxes { @if let Some(n) = a.sandboxes { (n) } @else { span.meta { "—" } } }
                    }
                }
                @if agents.is_empty() { tr.empty { td colspan="8" { "No agent is enrolled." } } }
            }
        }
    };
    Ok(crate::layout::page("Agents", &who, body))
}

async fn find(s: &AppState, id: &str) -> Result<AgentView, ConsoleError> {
    s.state
        .control
        .agents()
        .await?
        .into_iter()
        .find(|a| a.agent_id == id)
        .ok_or_else(|| ConsoleError::NotFound(format!("agent {id} is not enrolled")))
}

/// `GET /console/agents/{id}`.
pub async fn show(
    State(s): State<AppState>,
    Path(id): Path<String>,
    who: SignedIn,
) -> Result<Response, ConsoleError> {
    let a = find(&s, &id).await?;
    let sandboxes = match a.state {
        crate::AgentState::Connected => Some(s.state.control.sandboxes(&id).await),
        _ => None,
    };
    let body = html! {
        h1 { "Agent " code { (a.agent_id) } }
        dl.meta-list {
            dt { "State" } dd { span #agent-state.agent-state data-state=(a.state.as_str()) { (a.state.as_str()) } }
            dt { "Environment" } dd { code { (a.environment_id) } }
            dt { "Transport" } dd { (opt(&a.transport)) }
            dt { "Version" } dd { (opt(&a.version)) }
            dt { "Remote address" } dd { (opt(&a.remote_addr)) }
            dt { "Connected since" } dd { (when(a.connected_since)) }
            dt { "Last heartbeat" } dd { (when(a.last_heartbeat)) }
            dt { "Certificate expires" } dd { (when(a.cert_not_after)) }
            dt { "Enrolled" } dd { (when(a.enrolled_at)) }
            dt { "Revoked" } dd { (when(a.revoked_at)) }
        }
        h2 { "Sandboxes" }
        @match &sandboxes {
            None => p.meta { "Not connected: its sandboxes cannot be listed." },
            Some(Err(e)) => p #error { "Could not list its sandboxes: " (e.to_string()) },
            Some(Ok(list)) => {
                table #sandboxes {
                    thead { tr { th scope="col" { "Sandbox" } th scope="col" { "Session" } th scope="col" { "State" }
                                 th scope="col" { "Image" } th scope="col" { "Created" } th scope="col" { "Expires" } } }
                    tbody {
                        @for sb in list {
                            tr.sandbox data-sandbox-id=(sb.sandbox_id) {
                                td { code { (sb.sandbox_id) } }
                                td { @if let Some(sid) = &sb.session_id { a href={ "/console/sessions/" (sid) } { code { (sid) } } } }
                                td { (sb.state) }
                                td { code { (sb.image) } }
                                td { (sb.created_at) }
                                td { (sb.expires_at.clone().unwrap_or_default()) }
                            }
                        }
                        @if list.is_empty() { tr.empty { td colspan="6" { "No sandbox." } } }
                    }
                }
            }
        }
        @if who.role().can_write() && a.state != crate::AgentState::Revoked {
            p { a #revoke.button.danger href={ "/console/agents/" (a.agent_id) "/revoke" } { "Revoke this agent…" } }
        }
    };
    Ok(crate::layout::page(&format!("Agent {id}"), &who, body))
}

/// `GET /console/agents/{id}/revoke`: the confirmation page (admins).
pub async fn revoke_confirm(
    State(s): State<AppState>,
    Path(id): Path<String>,
    who: SignedIn,
) -> Result<Response, ConsoleError> {
    who.require_admin()?;
    let a = find(&s, &id).await?;
    let body = html! {
        h1 { "Revoke agent " code { (a.agent_id) } "?" }
        p.notice { "Its certificates will be refused from now on and its live connections are closed within a second. "
                   "It must enroll again with a new join token to come back. This cannot be undone." }
        form #revoke-confirm method="post" action={ "/console/agents/" (a.agent_id) "/revoke" } {
            (crate::layout::csrf_input(&who))
            button #revoke-confirm-button type="submit" { "Revoke " (a.agent_id) }
            " "
            a href={ "/console/agents/" (a.agent_id) } { "Cancel" }
        }
    };
    Ok(crate::layout::page("Revoke agent", &who, body))
}

/// `POST /console/agents/{id}/revoke` (CSRF, admins): the admin socket's
/// revocation, audited.
pub async fn revoke(
    State(s): State<AppState>,
    Path(id): Path<String>,
    who: SignedIn,
    FormPairs(form): FormPairs,
) -> Result<Response, ConsoleError> {
    let action = "console.agents.revoke";
    crate::pages::actions::admitted(&s, &who, &form, action, std::slice::from_ref(&id)).await?;
    let result = s
        .state
        .control
        .revoke(&id)
        .await
        .map_err(ConsoleError::from);
    crate::pages::actions::audit(
        &s,
        who.key_id(),
        action,
        vec![id.clone()],
        result.as_ref().map(|_| ()),
    )
    .await;
    let outcome = result?;
    tracing::info!(agent_id = %id, key_id = who.key_id(), newly_revoked = outcome.newly_revoked,
                   connections_closed = outcome.connections_closed, "agent revoked from the console");
    Ok(Redirect::to(&format!("/console/agents/{id}")).into_response())
}
