//! `GET /console/audit`: per agent, the latest checkpoint and its
//! verification state; the control plane's audit events (API, admin and
//! console actions), newest first, 100 a page.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::Response;
use catalog::audit::{Actor, AuditEventQuery, CheckpointQuery};
use maud::html;
use sha2::{Digest, Sha256};

use crate::auth::SignedIn;
use crate::error::ConsoleError;
use crate::render::rfc3339;
use crate::AppState;

/// Audit events per page.
const EVENTS_PAGE: usize = 100;
/// Checkpoints read per agent to find its latest.
const CHECKPOINT_SCAN: usize = 1000;

/// Short fingerprint of a base64 public key (SHA-256, first 16 hex).
fn fingerprint(public_key: &str) -> String {
    hex::encode(Sha256::digest(public_key.as_bytes()))
        .chars()
        .take(16)
        .collect()
}

/// `GET /console/audit[?after=audevt_…]`.
pub async fn show(
    State(s): State<AppState>,
    who: SignedIn,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ConsoleError> {
    let catalog = &s.state.api.state().catalog;
    let states = catalog.audit_states().await?;
    // The latest checkpoint of each agent (pages through what it sent).
    let mut rows = Vec::new();
    for st in &states {
        let mut after = None;
        let mut latest = None;
        loop {
            let page = catalog
                .list_checkpoints(
                    &st.agent_id,
                    CheckpointQuery {
                        after_id: after.clone(),
                        limit: CHECKPOINT_SCAN,
                    },
                )
                .await?;
            after = page.items.last().map(|c| c.id.clone());
            if let Some(c) = page.items.into_iter().last() {
                latest = Some(c);
            }
            if !page.has_more || after.is_none() {
                break;
            }
        }
        rows.push((st, latest));
    }
    let after = q.get("after").filter(|a| !a.is_empty()).cloned();
    let events = catalog
        .list_audit_events(AuditEventQuery {
            after_id: after.clone(),
            descending: true,
            limit: EVENTS_PAGE,
            ..AuditEventQuery::default()
        })
        .await
        .map_err(|e| match e {
            catalog::CatalogError::Invalid { reason } => {
                ConsoleError::BadRequest(format!("after: {reason}"))
            }
            other => ConsoleError::Catalog(other),
        })?;
    let body = html! {
        h1 { "Audit" }
        h2 #checkpoints-heading { "Agents' audit checkpoints" }
        table #checkpoints aria-labelledby="checkpoints-heading" {
            thead { tr {
                th scope="col" { "Agent" } th scope="col" { "Latest checkpoint" } th scope="col" { "Signed at" }
                th scope="col" { "Received" } th scope="col" { "Key fingerprint" } th scope="col" { "Verification" } th scope="col" { "Audit log" }
            } }
            tbody {
                @for (st, cp) in &rows {
                    @let state = match cp { None => "none", Some(c) if c.rollback => "rollback", Some(c) if c.key_changed => "key_changed", Some(_) => "verified" };
                    tr.checkpoint data-agent-id=(st.agent_id) {
                        td { a href={ "/console/agents/" (st.agent_id) } { code { (st.agent_id) } } }
                        td.seq { @if let Some(c) = cp { (c.seq) } @else { "—" } }
                        td { @if let Some(c) = cp { (c.at) } }
                        td { @if let Some(c) = cp { (rfc3339(c.received_at)) } }
                        td { @if let Some(c) = cp { code { (fingerprint(&c.public_key)) } } }
                        td.verification data-state=(state) { (state) }
                        td { @if st.healthy { "healthy" } @else { "failing: " (st.problem.clone().unwrap_or_default()) } }
                    }
                }
                @if rows.is_empty() { tr.empty { td colspan="7" { "No agent has sent audit state yet." } } }
            }
        }
        p.meta { "verified: signature checked on receipt, same pinned key, seq not behind; key_changed: signed by another key than the agent's first; rollback: a lower seq (or another head at the same seq) than already stored." }
        h2 #events-heading { "Control-plane audit events" }
        table #audit-events aria-labelledby="events-heading" {
            thead { tr {
                th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Action" }
                th scope="col" { "Resources" } th scope="col" { "Status" } th scope="col" { "Outcome" }
            } }
            tbody {
                @for r in &events.items {
                    @let e = &r.event;
                    tr.audit-event data-event-id=(e.id) data-action=(e.action) {
                        td { (rfc3339(e.at)) }
                        td { @match &e.actor { Actor::ApiKey(k) => { "key " code { (k) } }, Actor::Admin { uid } => { "admin" @if let Some(u) = uid { " uid " (u) } } } }
                        td { code { (e.action) } }
                        td { @for id in &e.resource_ids { code { (id) } " " } }
                        td { (e.status) }
                        td data-outcome=(e.outcome.as_str()) { (e.outcome.as_str()) }
                    }
                }
                @if events.items.is_empty() { tr.empty { td colspan="6" { "No audit event." } } }
            }
        }
        nav.pager aria-label="Audit pages" {
            @if after.is_some() { a #audit-newest href="/console/audit" { "Newest" } }
            @if events.has_more { @if let Some(last) = events.items.last() {
                a #audit-older href={ "/console/audit?after=" (last.event.id) } { "Older" }
            } }
        }
    };
    Ok(crate::layout::page("Audit", &who, body))
}
