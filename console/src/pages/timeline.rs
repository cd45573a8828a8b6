//! `GET /console/sessions/{id}`: one session's timeline, 200 events a page.
//! By default the last 200 (the live tail, which the script follows over
//! SSE); `?before_seq=N` the 200 before N, `?after_seq=N` the 200 after N.
//! Tool calls are shown with their result and confirmation even when those
//! come after the page (one bounded read ahead).

use std::collections::{HashMap, HashSet};

use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::html;
use serde_json::Value;
use session_store::{EventQuery, Order, SessionRecord, SessionStatus, StoredEvent};

use crate::auth::SignedIn;
use crate::backend::Placement;
use crate::error::ConsoleError;
use crate::render::{self, answers, is_tool_use, rfc3339, Ctx};
use crate::{AppState, TIMELINE_PAGE};

/// Events read past the page to find the answers of its tool calls.
const LOOKAHEAD: usize = 500;

/// Which page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    Tail,
    Before(u64),
    After(u64),
}

fn parse_seq(q: &HashMap<String, String>, key: &str) -> Result<Option<u64>, ConsoleError> {
    q.get(key)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ConsoleError::BadRequest(format!("{key}: expected a sequence number, got {v:?}"))
            })
        })
        .transpose()
}

/// A page of events in seq order, whether older and newer ones exist.
pub(crate) struct EventsPage {
    pub events: Vec<StoredEvent>,
    pub older: bool,
    pub newer: bool,
}

async fn load(s: &AppState, id: &str, w: Window) -> Result<EventsPage, ConsoleError> {
    let store = &s.state.api.state().store;
    let query = |order, after_seq| EventQuery {
        order,
        after_seq,
        limit: TIMELINE_PAGE,
        ..EventQuery::default()
    };
    Ok(match w {
        Window::Tail => {
            let p = store
                .list_events(id, query(Order::Descending, None))
                .await?;
            let mut events = p.events;
            events.reverse();
            EventsPage {
                events,
                older: p.has_more,
                newer: false,
            }
        }
        Window::Before(n) => {
            let p = store
                .list_events(id, query(Order::Descending, Some(n)))
                .await?;
            let mut events = p.events;
            events.reverse();
            EventsPage {
                events,
                older: p.has_more,
                newer: true,
            }
        }
        Window::After(n) => {
            let p = store
                .list_events(id, query(Order::Ascending, Some(n)))
                .await?;
            EventsPage {
                events: p.events,
                older: n > 0,
                newer: p.has_more,
            }
        }
    })
}

/// Results and confirmations of the page's tool calls, from the page and
/// a bounded read after it.
pub(crate) async fn answers_for(
    s: &AppState,
    id: &str,
    events: &[StoredEvent],
    read_ahead: bool,
) -> Result<(HashMap<String, StoredEvent>, HashMap<String, StoredEvent>), ConsoleError> {
    let uses: HashSet<String> = events
        .iter()
        .filter(|e| is_tool_use(e))
        .map(|e| e.id.clone())
        .collect();
    let mut results = HashMap::new();
    let mut confirmations = HashMap::new();
    let mut take = |e: &StoredEvent, results: &mut HashMap<String, StoredEvent>| {
        if let Some((kind, use_id)) = answers(e) {
            if uses.contains(&use_id) {
                if kind == "result" {
                    results.insert(use_id, e.clone());
                } else {
                    confirmations.insert(use_id, e.clone());
                }
            }
        }
    };
    for e in events {
        take(e, &mut results);
    }
    let open = uses.iter().any(|u| !results.contains_key(u));
    if read_ahead && open {
        if let Some(last) = events.last() {
            let more = s
                .state
                .api
                .state()
                .store
                .read(id, last.seq + 1, LOOKAHEAD)
                .await?;
            for e in &more {
                take(e, &mut results);
            }
        }
    }
    Ok((results, confirmations))
}

/// The stop reason of the last `session.status_idle`, if any.
async fn stop_reason(s: &AppState, id: &str) -> Result<Option<String>, ConsoleError> {
    let p = s
        .state
        .api
        .state()
        .store
        .list_events(
            id,
            EventQuery {
                order: Order::Descending,
                limit: 1,
                types: Some(vec!["session.status_idle".to_owned()]),
                ..EventQuery::default()
            },
        )
        .await?;
    Ok(p.events.first().and_then(|e| {
        e.body
            .get("stop_reason")
            .and_then(|r| r.get("type"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }))
}

/// Where the session's sandbox runs, asked only when the page has sandbox
/// tool calls.
pub(crate) async fn placement_for(
    s: &AppState,
    record: &SessionRecord,
    events: &[StoredEvent],
) -> Option<Placement> {
    if !events.iter().any(|e| e.event_type == "agent.tool_use") {
        return None;
    }
    let env = crate::pages::sessions::environment_of(record);
    s.state.control.placement(&record.id, env).await
}

/// Whether nothing can be confirmed or sent any more.
pub(crate) fn closed(record: &SessionRecord) -> bool {
    record.status == SessionStatus::Terminated
        || record.body.get("archived_at").is_some_and(|a| !a.is_null())
}

/// `GET /console/sessions/{id}`.
pub async fn show(
    State(s): State<AppState>,
    Path(id): Path<String>,
    who: SignedIn,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ConsoleError> {
    let window = match (parse_seq(&q, "before_seq")?, parse_seq(&q, "after_seq")?) {
        (Some(_), Some(_)) => {
            return Err(ConsoleError::BadRequest(
                "before_seq and after_seq: give one of them".to_owned(),
            ))
        }
        (Some(n), None) => Window::Before(n),
        (None, Some(n)) => Window::After(n),
        (None, None) => Window::Tail,
    };
    let page = load(&s, &id, window).await?;
    let reason = stop_reason(&s, &id).await?;
    // Read after the events: the status shown is never older than the last
    // event the page holds (the live tail starts after it, so a status change
    // between the two reads is sent again rather than lost).
    let record = s.state.api.state().store.get_session(&id).await?;
    let (results, confirmations) =
        answers_for(&s, &id, &page.events, page.newer || window != Window::Tail).await?;
    let placement = placement_for(&s, &record, &page.events).await;
    let uses_present: HashSet<String> = page
        .events
        .iter()
        .filter(|e| is_tool_use(e))
        .map(|e| e.id.clone())
        .collect();
    let closed = closed(&record);
    let ctx = Ctx {
        session_id: &id,
        who: &who,
        placement: placement.as_ref(),
        results: &results,
        confirmations: &confirmations,
        uses_present: &uses_present,
        closed,
    };
    let first = page.events.first().map(|e| e.seq);
    let last = page.events.last().map(|e| e.seq);
    let live = !page.newer;
    let live_url = live.then(|| {
        format!(
            "/console/sessions/{id}/live?after_seq={}",
            last.unwrap_or(0)
        )
    });
    let agent = &record.body["agent"];
    let title = record.body["title"].as_str().unwrap_or_default().to_owned();
    let archived = record.body.get("archived_at").is_some_and(|a| !a.is_null());
    let body = html! {
        h1 { "Session " code { (id) } }
        @if !title.is_empty() { p { (title) } }
        dl.meta-list {
            dt { "Status" } dd { span #session-status.status data-status=(record.status.as_str()) { (record.status.as_str()) }
                                 @if archived { " (archived)" } }
            dt { "Stop reason" } dd { span #session-stop-reason { (reason.unwrap_or_default()) } }
            dt { "Agent" } dd { (agent["name"].as_str().unwrap_or_default()) " " code { (agent["id"].as_str().unwrap_or_default()) } }
            dt { "Environment" } dd { code { (crate::pages::sessions::environment_of(&record)) } }
            dt { "Created" } dd { (rfc3339(record.created_at)) }
            dt { "Events" } dd { (record.last_seq) }
            dt { "Live" } dd { span #live-indicator data-state="closed" { "not live" } }
        }
        @if who.role().can_write() && !closed {
            div.actions {
                form #interrupt method="post" action={ "/console/sessions/" (id) "/interrupt" } {
                    (crate::layout::csrf_input(&who))
                    button type="submit" #interrupt-button { "Interrupt" }
                }
                @if record.status != SessionStatus::Running && record.status != SessionStatus::Rescheduling {
                    form #archive method="post" action={ "/console/sessions/" (id) "/archive" } {
                        (crate::layout::csrf_input(&who))
                        button.danger type="submit" #archive-button { "Archive" }
                    }
                }
            }
        }
        nav.pager aria-label="Timeline pages" {
            @if page.older { @if let Some(f) = first { a #page-older href={ "/console/sessions/" (id) "?before_seq=" (f) } { "Older events" } } }
            @if page.newer { @if let Some(l) = last { a #page-newer href={ "/console/sessions/" (id) "?after_seq=" (l) } { "Newer events" } } }
            @if window != Window::Tail { a #page-live href={ "/console/sessions/" (id) } { "Latest (live)" } }
            @if window == Window::Tail && page.older { a #page-first href={ "/console/sessions/" (id) "?after_seq=0" } { "First events" } }
        }
        ol #timeline data-live-url=[live_url] aria-live="polite" {
            @for e in &page.events {
                @if let Some(m) = render::event(&ctx, e) { (m) }
            }
        }
        @if page.events.is_empty() { p.meta { "No events on this page." } }
    };
    Ok(crate::layout::page(&format!("Session {id}"), &who, body))
}
