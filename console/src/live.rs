//! `GET /console/sessions/{id}/live?after_seq=N`: the timeline's live tail
//! over SSE (cookie-authenticated). Each `event` message is one rendered
//! `li.event` (a result or confirmation comes as its whole tool call again,
//! which the script puts in place of the old one); `status` messages carry
//! the status and the stop reason on two lines. Ends on shutdown.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::Value;
use session_store::{EventSelector, SessionRecord, StoredEvent, TailItem};
use tokio::sync::OnceCell;

use crate::auth::SignedIn;
use crate::backend::Placement;
use crate::error::ConsoleError;
use crate::render::{self, answers, is_tool_use, Ctx};
use crate::AppState;

fn status_of(event_type: &str) -> Option<&'static str> {
    match event_type {
        "session.status_running" => Some("running"),
        "session.status_idle" => Some("idle"),
        "session.status_terminated" => Some("terminated"),
        "session.status_rescheduled" => Some("rescheduling"),
        _ => None,
    }
}

struct Follow {
    s: AppState,
    who: SignedIn,
    record: SessionRecord,
    placement: OnceCell<Option<Placement>>,
}

impl Follow {
    async fn placement(&self, events: &[StoredEvent]) -> Option<Placement> {
        if !events.iter().any(|e| e.event_type == "agent.tool_use") {
            return None;
        }
        self.placement
            .get_or_init(|| crate::pages::timeline::placement_for(&self.s, &self.record, events))
            .await
            .clone()
    }

    /// The fragment for `e`: the event, or for an answer its tool call.
    async fn fragment(&self, e: &StoredEvent) -> Result<Option<String>, ConsoleError> {
        let id = &self.record.id;
        let subject: Vec<StoredEvent> = match answers(e) {
            Some((_, use_id)) => {
                match self
                    .s
                    .state
                    .api
                    .state()
                    .store
                    .get_events(id, EventSelector::Ids(vec![use_id]))
                    .await
                {
                    Ok(found) => found,
                    Err(session_store::StoreError::EventNotFound { .. }) => vec![e.clone()],
                    Err(other) => return Err(other.into()),
                }
            }
            None => vec![e.clone()],
        };
        let (results, confirmations) = if subject.iter().any(is_tool_use) {
            crate::pages::timeline::answers_for(&self.s, id, &subject, true).await?
        } else {
            (HashMap::new(), HashMap::new())
        };
        let placement = self.placement(&subject).await;
        let uses_present: HashSet<String> = HashSet::new();
        let ctx = Ctx {
            session_id: id,
            who: &self.who,
            placement: placement.as_ref(),
            results: &results,
            confirmations: &confirmations,
            uses_present: &uses_present,
            closed: crate::pages::timeline::closed(&self.record),
        };
        Ok(subject
            .first()
            .and_then(|x| render::event(&ctx, x))
            .map(|m| m.into_string()))
    }

    async fn messages(&self, e: StoredEvent) -> Vec<Event> {
        let mut out = Vec::new();
        match self.fragment(&e).await {
            Ok(Some(html)) => out.push(
                Event::default()
                    .event("event")
                    .id(e.seq.to_string())
                    .data(html),
            ),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, session_id = %self.record.id, seq = e.seq, "console live: event not rendered")
            }
        }
        if let Some(status) = status_of(&e.event_type) {
            let reason = e
                .body
                .get("stop_reason")
                .and_then(|r| r.get("type"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            out.push(
                Event::default()
                    .event("status")
                    .data(format!("{status}\n{reason}")),
            );
        }
        out
    }
}

/// `GET /console/sessions/{id}/live`.
pub async fn stream(
    State(s): State<AppState>,
    Path(id): Path<String>,
    who: SignedIn,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ConsoleError> {
    let after = match q.get("after_seq").filter(|v| !v.is_empty()) {
        None => 0,
        Some(v) => v.parse::<u64>().map_err(|_| {
            ConsoleError::BadRequest(format!("after_seq: expected a sequence number, got {v:?}"))
        })?,
    };
    let store = s.state.api.state().store.clone();
    let record = store.get_session(&id).await?;
    let tail = store.subscribe(&id, after + 1).await?;
    let shutdown = s.state.api.state().shutdown.clone();
    let follow = Arc::new(Follow {
        s,
        who,
        record,
        placement: OnceCell::new(),
    });
    let events = tail
        .take_while(|item| std::future::ready(item.is_ok()))
        .filter_map(|item| {
            std::future::ready(match item {
                Ok(TailItem::Appended(e)) => Some(e),
                _ => None,
            })
        })
        .then(move |e| {
            let follow = follow.clone();
            async move {
                futures::stream::iter(
                    follow
                        .messages(e)
                        .await
                        .into_iter()
                        .map(Ok::<_, Infallible>),
                )
            }
        })
        .flatten()
        .take_until(async move { shutdown.cancelled_owned().await });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
