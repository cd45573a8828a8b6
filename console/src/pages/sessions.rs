//! `GET /console/sessions`: the sessions, newest first, with filters
//! (status, agent, environment, created since/until) and 50 per page.
//! `GET /console/sessions/rows` gives the same rows alone, for the script
//! that keeps the statuses live.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup};
use serde_json::Value;
use session_store::{Order, SessionQuery, SessionRecord, SessionStatus};
use time::OffsetDateTime;

use crate::auth::SignedIn;
use crate::error::ConsoleError;
use crate::render::rfc3339;
use crate::AppState;

/// Rows per page.
pub const PAGE_ROWS: usize = 50;
/// Store pages scanned per request when filters skip sessions.
const MAX_SCAN_PAGES: usize = 20;

/// The filters as parsed.
#[derive(Debug, Default)]
struct Filters {
    status: Option<SessionStatus>,
    agent: Option<String>,
    environment: Option<String>,
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    page: Option<i64>,
}

fn nonempty(q: &HashMap<String, String>, k: &str) -> Option<String> {
    q.get(k)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// RFC 3339, or what a `datetime-local` input sends (`2026-12-07T02:30`,
/// taken as UTC), or a date.
fn parse_time(key: &str, v: &str) -> Result<OffsetDateTime, ConsoleError> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = OffsetDateTime::parse(v, &Rfc3339) {
        return Ok(t);
    }
    let with_seconds = match v.len() {
        10 => format!("{v}T00:00:00Z"),
        16 => format!("{v}:00Z"),
        19 => format!("{v}Z"),
        _ => String::new(),
    };
    OffsetDateTime::parse(&with_seconds, &Rfc3339).map_err(|_| {
        ConsoleError::BadRequest(format!(
            "{key}: expected a time like 2026-12-07T02:30 or RFC 3339, got {v:?}"
        ))
    })
}

impl Filters {
    fn parse(q: &HashMap<String, String>) -> Result<Self, ConsoleError> {
        let status = match nonempty(q, "status") {
            None => None,
            Some(s) => Some(s.parse::<SessionStatus>().map_err(|_| {
                ConsoleError::BadRequest(format!(
                    "status: expected idle, running, rescheduling or terminated, got {s:?}"
                ))
            })?),
        };
        let page = match nonempty(q, "page") {
            None => None,
            Some(p) => Some(p.parse::<i64>().map_err(|_| {
                ConsoleError::BadRequest(format!("page: expected a number, got {p:?}"))
            })?),
        };
        Ok(Filters {
            status,
            agent: nonempty(q, "agent"),
            environment: nonempty(q, "environment"),
            since: nonempty(q, "since")
                .map(|v| parse_time("since", &v))
                .transpose()?,
            until: nonempty(q, "until")
                .map(|v| parse_time("until", &v))
                .transpose()?,
            page,
        })
    }

    fn matches(&self, r: &SessionRecord) -> bool {
        let agent = &r.body["agent"];
        self.agent.as_ref().is_none_or(|a| {
            agent["id"].as_str() == Some(a.as_str()) || agent["name"].as_str() == Some(a.as_str())
        }) && self
            .environment
            .as_ref()
            .is_none_or(|e| r.body["environment_id"].as_str() == Some(e.as_str()))
            && self.since.is_none_or(|t| r.created_at >= t)
            && self.until.is_none_or(|t| r.created_at < t)
    }

    /// The query string of these filters with another page.
    fn query(&self, q: &HashMap<String, String>, page: Option<i64>) -> String {
        let mut pairs: Vec<(&str, String)> = ["status", "agent", "environment", "since", "until"]
            .iter()
            .filter_map(|k| nonempty(q, k).map(|v| (*k, v)))
            .collect();
        if let Some(p) = page {
            pairs.push(("page", p.to_string()));
        }
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }
}

/// One page of matching sessions and the cursor of the next one.
async fn load(
    s: &AppState,
    f: &Filters,
) -> Result<(Vec<SessionRecord>, Option<i64>), ConsoleError> {
    let store = &s.state.api.state().store;
    let mut out = Vec::new();
    let mut after = f.page;
    for _ in 0..MAX_SCAN_PAGES {
        let page = store
            .list_sessions(SessionQuery {
                status: f.status,
                order: Order::Descending,
                after_position: after,
                limit: 100,
            })
            .await?;
        for r in page.sessions {
            after = Some(r.position);
            if f.matches(&r) {
                out.push(r);
                if out.len() == PAGE_ROWS {
                    return Ok((out, after));
                }
            }
        }
        if !page.has_more {
            return Ok((out, None));
        }
    }
    Ok((out, after))
}

fn row(r: &SessionRecord) -> Markup {
    let agent = &r.body["agent"];
    let title = r.body["title"].as_str().unwrap_or_default();
    let archived = r.body.get("archived_at").is_some_and(|a| !a.is_null());
    html! {
        tr.session data-session-id=(r.id) {
            td { a.session-link href={ "/console/sessions/" (r.id) } { code { (r.id) } } }
            td.status data-status=(r.status.as_str()) { (r.status.as_str()) @if archived { " (archived)" } }
            td { (title) }
            td { (agent["name"].as_str().unwrap_or_default()) " " span.meta { (agent["id"].as_str().unwrap_or_default()) } }
            td { code { (r.body["environment_id"].as_str().unwrap_or_default()) } }
            td { time datetime=(rfc3339(r.created_at)) { (rfc3339(r.created_at)) } }
            td { time datetime=(rfc3339(r.updated_at)) { (rfc3339(r.updated_at)) } }
        }
    }
}

fn rows_markup(sessions: &[SessionRecord]) -> Markup {
    html! {
        @for r in sessions { (row(r)) }
        @if sessions.is_empty() { tr.empty { td colspan="7" { "No session matches." } } }
    }
}

fn select_status(current: Option<SessionStatus>) -> Markup {
    html! {
        select #status name="status" {
            option value="" selected[current.is_none()] { "any" }
            @for st in SessionStatus::ALL {
                option value=(st.as_str()) selected[current == Some(st)] { (st.as_str()) }
            }
        }
    }
}

/// `GET /console/sessions`.
pub async fn list(
    State(s): State<AppState>,
    who: SignedIn,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ConsoleError> {
    let f = Filters::parse(&q)?;
    let (sessions, next) = load(&s, &f).await?;
    let v = |k: &str| q.get(k).cloned().unwrap_or_default();
    let body = html! {
        h1 { "Sessions" }
        form #filters method="get" action="/console/sessions" {
            div { label for="status" { "Status" } (select_status(f.status)) }
            div { label for="agent" { "Agent (id or name)" } input #agent type="text" name="agent" value=(v("agent")); }
            div { label for="environment" { "Environment id" } input #environment type="text" name="environment" value=(v("environment")); }
            div { label for="since" { "Created since (UTC)" } input #since type="datetime-local" name="since" value=(v("since")); }
            div { label for="until" { "Created before (UTC)" } input #until type="datetime-local" name="until" value=(v("until")); }
            div { button type="submit" #apply-filters { "Filter" } }
        }
        table #sessions data-rows-url={ "/console/sessions/rows?" (f.query(&q, f.page)) } {
            caption.sr-only { "Sessions, newest first" }
            thead { tr { th scope="col" { "Session" } th scope="col" { "Status" } th scope="col" { "Title" }
                         th scope="col" { "Agent" } th scope="col" { "Environment" } th scope="col" { "Created" } th scope="col" { "Updated" } } }
            tbody { (rows_markup(&sessions)) }
        }
        div.pager {
            @if f.page.is_some() { a #page-first href={ "/console/sessions?" (f.query(&q, None)) } { "Newest" } }
            @if let Some(n) = next { a #page-next href={ "/console/sessions?" (f.query(&q, Some(n))) } { "Older" } }
        }
    };
    Ok(crate::layout::page("Sessions", &who, body))
}

/// `GET /console/sessions/rows`: the rows of the same query, alone.
pub async fn rows(
    State(s): State<AppState>,
    _who: SignedIn,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ConsoleError> {
    let f = Filters::parse(&q)?;
    let (sessions, _) = load(&s, &f).await?;
    Ok(Html(rows_markup(&sessions).into_string()).into_response())
}

/// The session's environment id.
pub(crate) fn environment_of(r: &SessionRecord) -> &str {
    r.body
        .get("environment_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
}
