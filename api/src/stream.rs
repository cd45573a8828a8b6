//! `GET /v1/sessions/{id}/events/stream`: the session's events over SSE.
//!
//! Each event is sent with the SSE event name equal to its `type`, the JSON
//! as `data`, and its `seq` as the SSE `id`. A user event is sent when it is
//! queued (`processed_at: null`) and again, without an SSE `id` (so
//! `Last-Event-ID` never moves backwards), when the harness has processed
//! it. An idle stream gets a `ping` event every `api.sse_ping_interval_seconds`.
//!
//! As published, a stream starts with the events appended after it opened.
//! Our extension: `?after=<seq>` or a `Last-Event-ID: <seq>` header replays
//! every event after that seq first, then follows live, with no gap and no
//! repeat, so a dropped stream resumes without loss. Deleting the session
//! ends its streams with a `session.deleted` event; shutdown ends them too.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde_json::json;
use std::sync::Arc;

use session_store::{EventStream, EventType, SessionStore, StoreError, TailItem};
use tokio::sync::broadcast;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::events::event_json;
use crate::fanout::{HubItem, SessionHub};
use crate::ids::rfc3339;
use crate::query::Query;
use crate::AppState;

/// Where a stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartAt {
    /// Events appended after the stream opened (the published behaviour).
    Live,
    /// Every event with a seq above this one (our resume extension).
    After(u64),
}

/// Parses the stream request: `event_deltas[]` (accepted; Airlock sends no
/// previews yet), `after`, and `Last-Event-ID`.
pub(crate) fn parse(query: &Query, headers: &HeaderMap) -> Result<StartAt, ApiError> {
    query.only(&["event_deltas", "after"])?;
    for d in query.many("event_deltas") {
        if !matches!(
            EventType::parse(d),
            EventType::AgentMessage | EventType::AgentThinking
        ) {
            return Err(ApiError::invalid(
                "event_deltas",
                format!(
                    "unknown delta type {d:?}; expected {} or {}",
                    EventType::AgentMessage,
                    EventType::AgentThinking
                ),
            ));
        }
    }
    if let Some(after) = query.u64("after")? {
        return Ok(StartAt::After(after));
    }
    match headers.get("last-event-id") {
        None => Ok(StartAt::Live),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(StartAt::After)
            .ok_or_else(|| {
                ApiError::invalid(
                    "Last-Event-ID",
                    "expected an event seq (a non-negative integer)",
                )
            }),
    }
}

fn frame(event: &str, id: Option<u64>, data: &serde_json::Value) -> Bytes {
    let mut s = format!("event: {event}\n");
    if let Some(id) = id {
        s.push_str(&format!("id: {id}\n"));
    }
    // serde_json never writes a raw newline: one data line.
    s.push_str(&format!("data: {data}\n\n"));
    Bytes::from(s)
}

/// Where a stream's items come from.
enum Source {
    /// A store tail of its own (resumes, and readers that fell behind).
    Own(EventStream),
    /// The session's shared tail; items below `start` are not this reader's.
    Shared {
        _hub: Arc<SessionHub>,
        rx: broadcast::Receiver<Arc<HubItem>>,
        start: u64,
    },
}

/// Why a stream's source ended.
struct Failure {
    deleted: bool,
    transient: bool,
    message: String,
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure {
            deleted: matches!(e, StoreError::NotFound { .. }),
            transient: e.is_transient(),
            message: e.to_string(),
        }
    }
}

struct Tail {
    source: Source,
    store: Arc<dyn SessionStore>,
    ping: Interval,
    shutdown: CancellationToken,
    session_id: String,
    /// The last appended seq sent (0: none).
    last_seq: u64,
    done: bool,
}

/// The next item of `source`; on broadcast lag, continues on a tail of its
/// own from `last_seq + 1` (gap-free, like a resume).
async fn next_item(
    source: &mut Source,
    store: &Arc<dyn SessionStore>,
    session_id: &str,
    last_seq: u64,
) -> Option<Result<TailItem, Failure>> {
    use futures::StreamExt;
    loop {
        match source {
            Source::Own(tail) => return tail.next().await.map(|r| r.map_err(Failure::from)),
            Source::Shared { rx, start, .. } => match rx.recv().await {
                Ok(item) => match &*item {
                    HubItem::Item(TailItem::Appended(e) | TailItem::Processed(e))
                        if e.seq < *start =>
                    {
                        continue
                    }
                    HubItem::Item(i) => return Some(Ok(i.clone())),
                    HubItem::Failed {
                        deleted,
                        transient,
                        message,
                    } => {
                        return Some(Err(Failure {
                            deleted: *deleted,
                            transient: *transient,
                            message: message.clone(),
                        }))
                    }
                },
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let from = last_seq.max(*start - 1) + 1;
                    tracing::debug!(
                        session_id,
                        missed,
                        from_seq = from,
                        "reader fell behind the shared tail; continuing on its own"
                    );
                    match store.subscribe(session_id, from).await {
                        Ok(tail) => *source = Source::Own(tail),
                        Err(e) => return Some(Err(e.into())),
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            },
        }
    }
}

async fn next_frame(st: &mut Tail) -> Option<Bytes> {
    if st.done {
        return None;
    }
    tokio::select! {
        _ = st.shutdown.cancelled() => None,
        _ = st.ping.tick() => Some(frame("ping", None, &json!({"type": "ping"}))),
        item = next_item(&mut st.source, &st.store, &st.session_id, st.last_seq) => match item {
            Some(Ok(TailItem::Appended(e))) => {
                st.last_seq = e.seq;
                Some(frame(&e.event_type, Some(e.seq), &event_json(&e)))
            }
            Some(Ok(TailItem::Processed(e))) => Some(frame(&e.event_type, None, &event_json(&e))),
            Some(Err(f)) if f.deleted => {
                st.done = true;
                let now = rfc3339(time::OffsetDateTime::now_utc());
                let deleted = EventType::SessionDeleted;
                Some(frame(
                    deleted.as_str(),
                    None,
                    &json!({"type": deleted, "id": format!("sevt_deleted_{}", st.session_id), "processed_at": now}),
                ))
            }
            Some(Err(f)) => {
                st.done = true;
                tracing::warn!(session_id = %st.session_id, error = %f.message, "event stream failed");
                let kind = if f.transient { "overloaded_error" } else { "api_error" };
                Some(frame(
                    "error",
                    None,
                    &json!({"type": "error", "error": {"type": kind, "message": "the event stream failed; reconnect with Last-Event-ID to resume"}}),
                ))
            }
            None => None,
        },
    }
}

pub(crate) async fn stream(
    State(s): State<AppState>,
    Path(session_id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let start = parse(&Query::parse(q.as_deref())?, &headers)?;
    let store = &s.state.store;
    let (source, from) = match start {
        StartAt::After(after) => {
            store.get_session(&session_id).await?;
            let from = after.saturating_add(1);
            (Source::Own(store.subscribe(&session_id, from).await?), from)
        }
        StartAt::Live => {
            // Subscribe to the shared tail first, then take the start: every
            // event at or after it is broadcast after the subscription.
            let hub = s.hubs.get(store, &session_id).await?;
            let rx = hub.subscribe();
            let from = store.get_session(&session_id).await?.last_seq + 1;
            (
                Source::Shared {
                    _hub: hub,
                    rx,
                    start: from,
                },
                from,
            )
        }
    };
    let every = s
        .state
        .limits
        .sse_ping_interval
        .max(Duration::from_millis(10));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = Tail {
        source,
        store: store.clone(),
        last_seq: from - 1,
        ping,
        shutdown: s.state.shutdown.clone(),
        session_id: session_id.clone(),
        done: false,
    };
    tracing::debug!(session_id, from_seq = from, "event stream opened");
    let body = futures::stream::unfold(state, |mut st| async move {
        next_frame(&mut st)
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), st))
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_points() {
        let none = HeaderMap::new();
        assert_eq!(
            parse(&Query::parse(None).unwrap(), &none).unwrap(),
            StartAt::Live
        );
        assert_eq!(
            parse(&Query::parse(Some("after=7")).unwrap(), &none).unwrap(),
            StartAt::After(7)
        );
        let mut h = HeaderMap::new();
        h.insert("last-event-id", HeaderValue::from_static("12"));
        assert_eq!(
            parse(&Query::parse(None).unwrap(), &h).unwrap(),
            StartAt::After(12)
        );
        // the query wins over the header
        assert_eq!(
            parse(&Query::parse(Some("after=3")).unwrap(), &h).unwrap(),
            StartAt::After(3)
        );
        h.insert("last-event-id", HeaderValue::from_static("x"));
        assert!(parse(&Query::parse(None).unwrap(), &h)
            .unwrap_err()
            .to_string()
            .starts_with("Last-Event-ID:"));
        assert!(parse(
            &Query::parse(Some("event_deltas[]=agent.message")).unwrap(),
            &none
        )
        .is_ok());
        assert!(parse(&Query::parse(Some("event_deltas[]=x")).unwrap(), &none).is_err());
        assert!(parse(&Query::parse(Some("after=-1")).unwrap(), &none).is_err());
    }

    #[test]
    fn frames_are_sse() {
        let f = frame("user.message", Some(3), &json!({"type": "user.message"}));
        assert_eq!(
            &f[..],
            b"event: user.message\nid: 3\ndata: {\"type\":\"user.message\"}\n\n"
        );
        let p = frame("ping", None, &json!({"type": "ping"}));
        assert!(!String::from_utf8_lossy(&p).contains("id:"));
    }
}
