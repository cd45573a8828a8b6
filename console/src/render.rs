//! One session event as a timeline item (`li.event`), shared by the page
//! and the live stream. Tool calls are joined with their result and their
//! confirmation; errors carry the layer they come from.

use std::collections::HashMap;

use maud::{html, Markup};
use serde_json::{Map, Value};
use session_store::StoredEvent;
use time::OffsetDateTime;

use crate::auth::SignedIn;
use crate::backend::Placement;

/// What rendering an event needs besides the event.
pub(crate) struct Ctx<'a> {
    pub session_id: &'a str,
    pub who: &'a SignedIn,
    /// Where the session's sandbox runs (asked of the agents).
    pub placement: Option<&'a Placement>,
    /// Results by the id of the tool use they answer.
    pub results: &'a HashMap<String, StoredEvent>,
    /// Confirmations by the id of the tool use they answer.
    pub confirmations: &'a HashMap<String, StoredEvent>,
    /// Tool uses present (a result whose use is here is shown inside it).
    pub uses_present: &'a std::collections::HashSet<String>,
    /// Nothing can be confirmed any more.
    pub closed: bool,
}

/// The tool-use id a result or confirmation answers, if it is one.
pub(crate) fn answers(e: &StoredEvent) -> Option<(&'static str, String)> {
    let field = match e.event_type.as_str() {
        "agent.tool_result" => "tool_use_id",
        "agent.mcp_tool_result" => "mcp_tool_use_id",
        "user.custom_tool_result" => "custom_tool_use_id",
        "user.tool_confirmation" => {
            return str_of(&e.body, "tool_use_id").map(|id| ("confirmation", id))
        }
        _ => return None,
    };
    str_of(&e.body, field).map(|id| ("result", id))
}

/// Whether the event is a tool use.
pub(crate) fn is_tool_use(e: &StoredEvent) -> bool {
    matches!(
        e.event_type.as_str(),
        "agent.tool_use" | "agent.mcp_tool_use" | "agent.custom_tool_use"
    )
}

fn str_of(body: &Map<String, Value>, key: &str) -> Option<String> {
    body.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// The layer a `session.error` type comes from.
pub(crate) fn error_layer(error_type: &str) -> &'static str {
    if error_type.starts_with("model_") {
        "model"
    } else if error_type.starts_with("mcp_") {
        "bridge"
    } else if error_type.starts_with("repository_") {
        "sandbox"
    } else {
        "harness"
    }
}

/// The layer of a tool call that did not run, from the result the harness
/// wrote (`Not run: ...`): the sandbox could not be made or is gone, or the
/// call did not reach an agent (the tunnel). A tool that ran and failed has
/// no layer: it is the tool's own error.
pub(crate) fn tool_error_layer(result_text: &str) -> Option<&'static str> {
    let rest = result_text.strip_prefix("Not run: ")?;
    if rest.starts_with("could not provision a sandbox") || rest.starts_with("sandbox ") {
        Some("sandbox")
    } else {
        Some("tunnel")
    }
}

/// Text of content blocks (non-text blocks named).
pub(crate) fn content_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::Array(blocks)) => blocks
            .iter()
            .map(|b| match b.get("type").and_then(Value::as_str) {
                Some("text") => b
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                Some(other) => format!("[{other}]"),
                None => String::new(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn pretty(v: Option<&Value>) -> String {
    v.map(|v| serde_json::to_string_pretty(v).unwrap_or_default())
        .unwrap_or_default()
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    session_store::format_rfc3339(t)
}

fn duration_text(from: OffsetDateTime, to: OffsetDateTime) -> String {
    let ms = (to - from).whole_milliseconds().max(0);
    if ms < 10_000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn head(e: &StoredEvent, label: &str) -> Markup {
    html! {
        div.head {
            span.type { (label) }
            span.meta { "#" (e.seq) }
            time.meta datetime=(rfc3339(e.created_at)) { (rfc3339(e.created_at)) }
        }
    }
}

/// One event as `li.event`, or `None` for a result or confirmation shown
/// inside its tool call.
pub(crate) fn event(ctx: &Ctx<'_>, e: &StoredEvent) -> Option<Markup> {
    if let Some((_, id)) = answers(e) {
        if ctx.uses_present.contains(&id) {
            return None;
        }
    }
    let t = e.event_type.as_str();
    let body = &e.body;
    Some(match t {
        "user.message" | "agent.message" => html! {
            li.event.message data-seq=(e.seq) data-event-type=(t) data-event-id=(e.id) {
                (head(e, if t == "user.message" { "User" } else { "Agent" }))
                pre.text { (content_text(body.get("content"))) }
                @if e.processed_at.is_none() { span.meta { "queued" } }
            }
        },
        "agent.thinking" => html! {
            li.event data-seq=(e.seq) data-event-type=(t) data-event-id=(e.id) {
                (head(e, "Thinking"))
            }
        },
        "agent.tool_use" | "agent.mcp_tool_use" | "agent.custom_tool_use" => tool_call(ctx, e),
        "agent.tool_result" | "agent.mcp_tool_result" | "user.custom_tool_result" => {
            let id = answers(e).map(|(_, id)| id).unwrap_or_default();
            let text = content_text(body.get("content"));
            let is_error = body
                .get("is_error")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let layer = if is_error {
                tool_error_layer(&text)
            } else {
                None
            };
            html! {
                li.event.tool-result.error[layer.is_some()] data-seq=(e.seq) data-event-type=(t)
                    data-event-id=(e.id) data-tool-use-id=(id) data-layer=[layer] {
                    (head(e, "Tool result"))
                    span.meta { "for " code { (id) } }
                    " " span class={ "is-error is-error-" (is_error) } { "is_error: " (is_error) }
                    pre.result { (text) }
                }
            }
        }
        "user.tool_confirmation" => {
            let result = str_of(body, "result").unwrap_or_default();
            html! {
                li.event.confirmation data-seq=(e.seq) data-event-type=(t) data-event-id=(e.id)
                    data-tool-use-id=[str_of(body, "tool_use_id")] {
                    (head(e, "Confirmation"))
                    span { (result) " " code { (str_of(body, "tool_use_id").unwrap_or_default()) } }
                    @if let Some(m) = str_of(body, "deny_message") { pre { (m) } }
                }
            }
        }
        "user.interrupt" => html! {
            li.event data-seq=(e.seq) data-event-type=(t) data-event-id=(e.id) { (head(e, "Interrupt")) }
        },
        "session.error" => {
            let err = body.get("error").and_then(Value::as_object);
            let etype = err
                .and_then(|o| str_of(o, "type"))
                .unwrap_or_else(|| "unknown_error".to_owned());
            let message = err.and_then(|o| str_of(o, "message")).unwrap_or_default();
            let retry = err
                .and_then(|o| o.get("retry_status"))
                .and_then(|r| r.get("type"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let layer = error_layer(&etype);
            html! {
                li.event.error data-seq=(e.seq) data-event-type=(t) data-event-id=(e.id) data-layer=(layer) data-error-type=(etype) {
                    (head(e, "Error"))
                    span.layer { "layer: " strong { (layer) } } " "
                    code { (etype) }
                    @if let Some(server) = err.and_then(|o| str_of(o, "mcp_server_name")) { " MCP server " code { (server) } }
                    @if !retry.is_empty() { " " span.meta { "retry: " (retry) } }
                    pre { (message) }
                }
            }
        }
        "span.model_request_start" => html! {
            li.event.span data-seq=(e.seq) data-event-type=(t) data-event-id=(e.id) { (head(e, "Model request")) }
        },
        "span.model_request_end" => {
            let is_error = body
                .get("is_error")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let usage = body.get("model_usage");
            let tokens = |k: &str| {
                usage
                    .and_then(|u| u.get(k))
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            };
            html! {
                li.event.span.error[is_error] data-seq=(e.seq) data-event-type=(t) data-event-id=(e.id)
                    data-layer=[is_error.then_some("model")] {
                    (head(e, "Model response"))
                    span.meta { "in " (tokens("input_tokens")) " / out " (tokens("output_tokens")) " tokens" }
                    @if is_error { " " span.is-error-true { "failed" } }
                }
            }
        }
        "session.status_running"
        | "session.status_idle"
        | "session.status_terminated"
        | "session.status_rescheduled" => {
            let reason = body
                .get("stop_reason")
                .and_then(|r| r.get("type"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            html! {
                li.event.status-change data-seq=(e.seq) data-event-type=(t) data-event-id=(e.id) {
                    (head(e, t.trim_start_matches("session.")))
                    @if let Some(r) = reason { span.meta { "stop reason: " (r) } }
                }
            }
        }
        _ => html! {
            li.event data-seq=(e.seq) data-event-type=(t) data-event-id=(e.id) {
                (head(e, t))
                pre { (pretty(Some(&Value::Object(body.clone())))) }
            }
        },
    })
}

fn tool_call(ctx: &Ctx<'_>, e: &StoredEvent) -> Markup {
    let t = e.event_type.as_str();
    let body = &e.body;
    let name = str_of(body, "name").unwrap_or_default();
    let server = str_of(body, "mcp_server_name");
    let result = ctx.results.get(&e.id);
    let confirmation = ctx.confirmations.get(&e.id);
    let result_text = result.map(|r| content_text(r.body.get("content")));
    let is_error = result
        .and_then(|r| r.body.get("is_error"))
        .and_then(Value::as_bool);
    let layer = match (is_error, result_text.as_deref()) {
        (Some(true), Some(text)) => tool_error_layer(text),
        _ => None,
    };
    let permission = str_of(body, "evaluated_permission");
    let pending = permission.as_deref() == Some("ask")
        && confirmation.is_none()
        && result.is_none()
        && !ctx.closed;
    let ran_on = ctx
        .placement
        .filter(|_| t == "agent.tool_use" && permission.as_deref() != Some("deny"));
    html! {
        li.event.tool-call.error[layer.is_some()] data-seq=(e.seq) data-event-type=(t) data-event-id=(e.id)
            data-tool-use-id=(e.id) data-layer=[layer] data-pending=[pending.then_some("true")] {
            (head(e, "Tool call"))
            div {
                "name: " strong.tool-name { (name) }
                @if let Some(s) = &server { " on MCP server " code { (s) } }
                @if let Some(p) = &permission { " " span.meta { "permission: " (p) } }
            }
            details open {
                summary { "Input" }
                pre.input { (pretty(body.get("input"))) }
            }
            @if let Some(c) = confirmation {
                div.confirmed { "confirmation: " strong { (str_of(&c.body, "result").unwrap_or_default()) } }
            }
            @match (result, &result_text) {
                (Some(r), Some(text)) => {
                    div {
                        "duration: " span.duration { (duration_text(e.created_at, r.created_at)) } " · "
                        span class={ "is-error is-error-" (is_error.unwrap_or(false)) } { "is_error: " (is_error.unwrap_or(false)) }
                        @if let Some(l) = layer { " · layer: " strong.layer { (l) } }
                    }
                    details open {
                        summary { "Result" }
                        pre.result { (text) }
                    }
                }
                _ => {
                    @if !pending { div.meta.no-result { "no result yet" } }
                }
            }
            @if let Some(p) = ran_on {
                div.ran-on data-agent-id=(p.agent_id) data-sandbox-id=(p.sandbox_id) {
                    "ran on agent " a href={ "/console/agents/" (p.agent_id) } { code { (p.agent_id) } }
                    ", sandbox " code { (p.sandbox_id) }
                    span.meta { " (the session's sandbox as its agent lists it now)" }
                }
            }
            @if pending {
                @if ctx.who.role().can_write() {
                    form.confirm method="post" action={ "/console/sessions/" (ctx.session_id) "/confirm" } data-tool-use-id=(e.id) {
                        input type="hidden" name="tool_use_id" value=(e.id);
                        (crate::layout::csrf_input(ctx.who))
                        span { "This call waits for a confirmation. " }
                        button.approve type="submit" name="result" value="allow" { "Approve" }
                        " "
                        button.deny type="submit" name="result" value="deny" { "Deny" }
                    }
                } @else {
                    div.meta.awaiting { "awaiting confirmation (a read-only key cannot answer it)" }
                }
            }
        }
    }
}
