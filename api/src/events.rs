//! `/v1/sessions/{id}/events`: send a batch of user events, list events.
//!
//! The parser turns each sent event into a typed [`UserEvent`]: a
//! `user.message`, `user.interrupt`, `user.tool_confirmation` (naming the
//! `agent.tool_use` or `agent.mcp_tool_use` event that asked) or `user.custom_tool_result` (naming
//! the `agent.custom_tool_use` event). Unknown types are a 400 naming the
//! type. Sent events are appended queued (`processed_at: null`) in one
//! batch, then the runner is notified; the harness marks them processed
//! when it consumes them.

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use serde_json::{json, Value};
use std::ops::Bound;

use session_store::{
    ConfirmationResult, EvaluatedPermission, EventQuery, EventSelector, EventType, Fence, NewEvent,
    Order, SessionStatus, StoreError, StoredEvent,
};
use time::OffsetDateTime;

use crate::body::JsonBody;
use crate::error::ApiError;
use crate::fields::{join, or_list, type_name, Obj};
use crate::query::{Cursor, Dir, Query};
use crate::AppState;

/// Most events in one send.
const MAX_EVENTS_PER_SEND: usize = 100;

/// A validated client event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum UserEvent {
    /// A user turn.
    Message(Value),
    /// Stop the current turn.
    Interrupt(Value),
    /// Allow or deny an `always_ask` tool call; names its event id.
    ToolConfirmation { tool_use_id: String, body: Value },
    /// The result of a custom tool call; names its event id.
    CustomToolResult {
        custom_tool_use_id: String,
        body: Value,
    },
}

impl UserEvent {
    fn into_body(self) -> Value {
        match self {
            UserEvent::Message(b)
            | UserEvent::Interrupt(b)
            | UserEvent::ToolConfirmation { body: b, .. }
            | UserEvent::CustomToolResult { body: b, .. } => b,
        }
    }
}

/// The event types a client may send, in the order error messages list them.
const SENDABLE: [EventType; 4] = [
    EventType::UserMessage,
    EventType::UserInterrupt,
    EventType::UserToolConfirmation,
    EventType::UserCustomToolResult,
];

/// `user.message, user.interrupt, user.tool_confirmation or user.custom_tool_result`.
fn sendable() -> String {
    or_list(SENDABLE.iter().map(EventType::as_str))
}

fn source(path: &str, v: &Value, allowed: &[&str]) -> Result<(), ApiError> {
    let o = Obj::new(path, v)?;
    let t = o.req_str("type")?;
    if !allowed.contains(&t) {
        return Err(ApiError::invalid(
            &o.path("type"),
            format!("unknown source type {t:?}; expected {}", allowed.join(", ")),
        ));
    }
    match t {
        "base64" => {
            o.only(&["type", "data", "media_type"])?;
            o.req_str("data")?;
            o.req_str("media_type")?;
        }
        "text" => {
            o.only(&["type", "data", "media_type"])?;
            o.req_str("data")?;
            if o.req_str("media_type")? != "text/plain" {
                return Err(ApiError::invalid(
                    &o.path("media_type"),
                    "must be text/plain",
                ));
            }
        }
        "url" => {
            o.only(&["type", "url"])?;
            o.req_nonempty("url")?;
        }
        _ => {
            o.only(&["type", "file_id"])?;
            o.req_nonempty("file_id")?;
        }
    }
    Ok(())
}

/// Validates content blocks of the given kinds.
fn content(
    path: &str,
    value: Option<&Value>,
    required: bool,
    kinds: &[&str],
) -> Result<(), ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return if required {
            Err(ApiError::invalid(path, "field required"))
        } else {
            Ok(())
        };
    };
    let Value::Array(blocks) = value else {
        return Err(ApiError::invalid(
            path,
            format!("expected an array, got {}", type_name(value)),
        ));
    };
    if required && blocks.is_empty() {
        return Err(ApiError::invalid(path, "must contain at least one block"));
    }
    for (i, b) in blocks.iter().enumerate() {
        let bpath = join(path, &i.to_string());
        let o = Obj::new(&bpath, b)?;
        let t = o.req_str("type")?;
        if !kinds.contains(&t) {
            return Err(ApiError::invalid(
                &o.path("type"),
                format!(
                    "unknown content block type {t:?}; expected {}",
                    kinds.join(", ")
                ),
            ));
        }
        match t {
            "text" => {
                o.only(&["type", "text"])?;
                o.req_str("text")?;
            }
            "image" => {
                o.only(&["type", "source"])?;
                let s = o
                    .get("source")
                    .ok_or_else(|| ApiError::invalid(&o.path("source"), "field required"))?;
                source(&o.path("source"), s, &["base64", "url", "file"])?;
            }
            "document" => {
                o.only(&["type", "source", "title", "context"])?;
                o.opt_str("title")?;
                o.opt_str("context")?;
                let s = o
                    .get("source")
                    .ok_or_else(|| ApiError::invalid(&o.path("source"), "field required"))?;
                source(&o.path("source"), s, &["base64", "text", "url", "file"])?;
            }
            "search_result" => {
                o.only(&["type", "source", "title", "content", "citations"])?;
                o.req_str("source")?;
                o.req_str("title")?;
                content(&o.path("content"), o.get("content"), true, &["text"])?;
            }
            _ => o.only(&["type"])?,
        }
    }
    Ok(())
}

fn no_threads(o: &Obj<'_>) -> Result<(), ApiError> {
    if o.get("session_thread_id").is_some() {
        return Err(ApiError::invalid(
            &o.path("session_thread_id"),
            "Airlock sessions have one thread; omit this field",
        ));
    }
    Ok(())
}

/// Parses one sent event at `path` (`events.3`).
pub(crate) fn parse_event(path: &str, v: &Value) -> Result<UserEvent, ApiError> {
    let o = Obj::new(path, v)?;
    let t = o.req_str("type")?;
    match EventType::parse(t) {
        EventType::UserMessage => {
            o.only(&["type", "content"])?;
            content(&o.path("content"), o.get("content"), true, &["text", "image", "document"])?;
            Ok(UserEvent::Message(json!({"type": t, "content": o.get("content")})))
        }
        EventType::UserInterrupt => {
            o.only(&["type", "session_thread_id"])?;
            no_threads(&o)?;
            Ok(UserEvent::Interrupt(json!({"type": t})))
        }
        EventType::UserToolConfirmation => {
            o.only(&["type", "tool_use_id", "result", "deny_message", "session_thread_id"])?;
            no_threads(&o)?;
            let tool_use_id = o.req_nonempty("tool_use_id")?.to_owned();
            let result = ConfirmationResult::parse(o.req_str("result")?);
            if !result.is_known() {
                return Err(ApiError::invalid(&o.path("result"), format!("expected allow or deny, got {:?}", result.as_str())));
            }
            let deny_message = o.opt_str("deny_message")?;
            if deny_message.is_some() && result != ConfirmationResult::Deny {
                return Err(ApiError::invalid(&o.path("deny_message"), "only allowed with result deny"));
            }
            let mut body = json!({"type": t, "tool_use_id": tool_use_id, "result": result});
            if let Some(m) = deny_message {
                body["deny_message"] = json!(m);
            }
            Ok(UserEvent::ToolConfirmation { tool_use_id, body })
        }
        EventType::UserCustomToolResult => {
            o.only(&["type", "custom_tool_use_id", "content", "is_error", "session_thread_id"])?;
            no_threads(&o)?;
            let custom_tool_use_id = o.req_nonempty("custom_tool_use_id")?.to_owned();
            content(&o.path("content"), o.get("content"), false, &["text", "image", "document", "search_result"])?;
            let is_error = o.opt_bool("is_error")?;
            let mut body = json!({"type": t, "custom_tool_use_id": custom_tool_use_id});
            if let Some(c) = o.get("content") {
                body["content"] = c.clone();
            }
            if let Some(e) = is_error {
                body["is_error"] = json!(e);
            }
            Ok(UserEvent::CustomToolResult { custom_tool_use_id, body })
        }
        EventType::UserToolResult => Err(ApiError::invalid(
            &o.path("type"),
            "user.tool_result is for external self-hosted workers; Airlock runs tools on its own sandbox-agents",
        )),
        EventType::UserDefineOutcome | EventType::SystemMessage => Err(ApiError::invalid(
            &o.path("type"),
            format!("{t} is not supported by Airlock yet"),
        )),
        other => Err(ApiError::invalid(
            &o.path("type"),
            format!("unknown event type {:?}; expected {}", other.as_str(), sendable()),
        )),
    }
}

/// Parses an `initial_events` entry of a session create (only `user.message`).
pub(crate) fn parse_initial_event(path: &str, v: &Value) -> Result<Value, ApiError> {
    match parse_event(path, v)? {
        UserEvent::Message(body) => Ok(body),
        _ => Err(ApiError::invalid(
            &join(path, "type"),
            format!(
                "only {} is supported in initial_events",
                EventType::UserMessage
            ),
        )),
    }
}

/// Parses the body of `POST /v1/sessions/{id}/events`.
pub(crate) fn parse_send(body: &Value) -> Result<Vec<UserEvent>, ApiError> {
    let o = Obj::new("", body)?;
    o.only(&["events"])?;
    let events = o
        .opt_array("events")?
        .ok_or_else(|| ApiError::invalid("events", "field required"))?;
    if events.is_empty() {
        return Err(ApiError::invalid(
            "events",
            "must contain at least one event",
        ));
    }
    if events.len() > MAX_EVENTS_PER_SEND {
        return Err(ApiError::invalid(
            "events",
            format!("at most {MAX_EVENTS_PER_SEND} events per request"),
        ));
    }
    events
        .iter()
        .enumerate()
        .map(|(i, e)| parse_event(&join("events", &i.to_string()), e))
        .collect()
}

/// The published event JSON plus our `seq`.
pub(crate) fn event_json(e: &StoredEvent) -> Value {
    let mut v = e.to_json();
    if let Value::Object(m) = &mut v {
        m.insert("seq".into(), json!(e.seq));
    }
    v
}

/// Checks that referenced tool-use events exist and can be answered.
async fn check_references(
    s: &AppState,
    session_id: &str,
    events: &[UserEvent],
) -> Result<(), ApiError> {
    for (i, e) in events.iter().enumerate() {
        let (field, id, expect) = match e {
            UserEvent::ToolConfirmation { tool_use_id, .. } => (
                "tool_use_id",
                tool_use_id,
                vec![EventType::AgentToolUse, EventType::AgentMcpToolUse],
            ),
            UserEvent::CustomToolResult {
                custom_tool_use_id, ..
            } => (
                "custom_tool_use_id",
                custom_tool_use_id,
                vec![EventType::AgentCustomToolUse],
            ),
            _ => continue,
        };
        let path = format!("events.{i}.{field}");
        let found = match s
            .state
            .store
            .get_events(session_id, EventSelector::Ids(vec![id.clone()]))
            .await
        {
            Ok(found) => found,
            Err(StoreError::EventNotFound { .. }) => {
                return Err(ApiError::invalid(
                    &path,
                    format!("no event {id} in session {session_id}"),
                ))
            }
            Err(e) => return Err(e.into()),
        };
        let Some(target) = found.first() else {
            return Err(ApiError::invalid(
                &path,
                format!("no event {id} in session {session_id}"),
            ));
        };
        let kind = target.kind();
        if !expect.contains(&kind) {
            return Err(ApiError::invalid(
                &path,
                format!(
                    "event {id} is a {}, not an {}",
                    target.event_type,
                    or_list(expect.iter().map(EventType::as_str))
                ),
            ));
        }
        if matches!(kind, EventType::AgentToolUse | EventType::AgentMcpToolUse)
            && target
                .body
                .get("evaluated_permission")
                .and_then(Value::as_str)
                .map(EvaluatedPermission::parse)
                != Some(EvaluatedPermission::Ask)
        {
            return Err(ApiError::invalid(
                &path,
                format!("tool use {id} does not await a confirmation"),
            ));
        }
    }
    Ok(())
}

pub(crate) async fn send(
    State(s): State<AppState>,
    Path(session_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let events = parse_send(&body)?;
    let record = s.state.store.get_session(&session_id).await?;
    if record.body.get("archived_at").is_some_and(|a| !a.is_null()) {
        return Err(ApiError::invalid(
            "",
            format!("session {session_id} is archived"),
        ));
    }
    if record.status == SessionStatus::Terminated {
        return Err(ApiError::invalid(
            "",
            format!("session {session_id} is terminated"),
        ));
    }
    check_references(&s, &session_id, &events).await?;
    let stored = s
        .state
        .store
        .append(
            &session_id,
            events
                .into_iter()
                .map(|e| NewEvent::queued(e.into_body()))
                .collect(),
            Fence::None,
        )
        .await?;
    tracing::debug!(session_id, events = stored.len(), "user events queued");
    s.state.runner.notify(&session_id);
    Ok(Json(
        json!({"data": stored.iter().map(event_json).collect::<Vec<_>>()}),
    ))
}

/// The `processed_at` bounds of `created_at[gt|gte|lt|lte]` (as published,
/// the `created_at` filters compare `processed_at`).
fn bounds(q: &Query) -> Result<(Bound<OffsetDateTime>, Bound<OffsetDateTime>), ApiError> {
    let lower = match (q.time("created_at[gt]")?, q.time("created_at[gte]")?) {
        (Some(gt), Some(gte)) if gte > gt => Bound::Included(gte),
        (Some(gt), _) => Bound::Excluded(gt),
        (None, Some(gte)) => Bound::Included(gte),
        (None, None) => Bound::Unbounded,
    };
    let upper = match (q.time("created_at[lt]")?, q.time("created_at[lte]")?) {
        (Some(lt), Some(lte)) if lte < lt => Bound::Included(lte),
        (Some(lt), _) => Bound::Excluded(lt),
        (None, Some(lte)) => Bound::Included(lte),
        (None, None) => Bound::Unbounded,
    };
    Ok((lower, upper))
}

pub(crate) async fn list(
    State(s): State<AppState>,
    Path(session_id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = Query::parse(q.as_deref())?;
    q.only(&[
        "created_at[gt]",
        "created_at[gte]",
        "created_at[lt]",
        "created_at[lte]",
        "limit",
        "order",
        "page",
        "types",
    ])?;
    let limit = q.limit(1000, 1000)?;
    let order = q.order(Dir::Asc)?;
    let listing = format!("events:{session_id}");
    let cursor = q.cursor(&listing, order)?;
    let types: Vec<String> = q.many("types").into_iter().map(str::to_owned).collect();
    let (processed_from, processed_to) = bounds(&q)?;
    let store = &s.state.store;
    // 404 for an unknown session, whatever the store does with an empty read
    store.get_session(&session_id).await?;
    let page = store
        .list_events(
            &session_id,
            EventQuery {
                order: match order {
                    Dir::Asc => Order::Ascending,
                    Dir::Desc => Order::Descending,
                },
                after_seq: cursor.map(|c| u64::try_from(c.at).unwrap_or(0)),
                limit,
                types: (!types.is_empty()).then_some(types),
                processed_from,
                processed_to,
            },
        )
        .await?;
    let next = if page.has_more {
        page.events.last().map(|e| {
            Cursor {
                order,
                before: false,
                at: i64::try_from(e.seq).unwrap_or(i64::MAX),
            }
            .encode(&listing)
        })
    } else {
        None
    };
    Ok(Json(json!({
        "data": page.events.iter().map(event_json).collect::<Vec<_>>(),
        "next_page": next,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sendable_events_parse_and_others_name_the_type() {
        let ok = parse_send(&json!({"events": [
            {"type": "user.message", "content": [{"type": "text", "text": "hi"}]},
            {"type": "user.interrupt"},
            {"type": "user.tool_confirmation", "tool_use_id": "sevt_1", "result": "deny", "deny_message": "no"},
            {"type": "user.custom_tool_result", "custom_tool_use_id": "sevt_2", "content": [{"type": "text", "text": "42"}], "is_error": false}
        ]}))
        .unwrap();
        assert_eq!(ok.len(), 4);
        let err = |v: Value| parse_send(&v).unwrap_err().to_string();
        assert!(err(json!({})).starts_with("events: field required"));
        assert!(err(json!({"events": []})).starts_with("events:"));
        assert!(err(json!({"events": [{"type": "user.dance"}]}))
            .starts_with("events.0.type: unknown event type \"user.dance\""));
        assert_eq!(
            err(json!({"events": [{"type": "user.dance"}]})),
            "events.0.type: unknown event type \"user.dance\"; expected user.message, user.interrupt, user.tool_confirmation or user.custom_tool_result"
        );
        assert!(err(json!({"events": [{"type": "user.message"}]}))
            .starts_with("events.0.content: field required"));
        assert!(
            err(json!({"events": [{"type": "user.message", "content": "hi"}]}))
                .starts_with("events.0.content: expected an array")
        );
        assert!(
            err(json!({"events": [{"type": "user.message", "content": [{"type": "text"}]}]}))
                .starts_with("events.0.content.0.text:")
        );
        assert!(
            err(json!({"events": [{"type": "user.message", "content": [{"type": "video"}]}]}))
                .starts_with("events.0.content.0.type:")
        );
        assert!(err(json!({"events": [{"type": "user.tool_confirmation", "tool_use_id": "x", "result": "maybe"}]})).starts_with("events.0.result:"));
        assert!(err(json!({"events": [{"type": "user.tool_confirmation", "tool_use_id": "x", "result": "allow", "deny_message": "m"}]}))
            .starts_with("events.0.deny_message:"));
        assert!(
            err(json!({"events": [{"type": "user.custom_tool_result"}]}))
                .starts_with("events.0.custom_tool_use_id:")
        );
        assert!(
            err(json!({"events": [{"type": "user.tool_result", "tool_use_id": "x"}]}))
                .starts_with("events.0.type:")
        );
        assert!(err(json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": "x"}]}, {"nope": 1}]}))
            .starts_with("events.1.type: field required"));
    }
}
