//! `sessions tail`: follow a session's event stream (SSE) live, print one
//! line (or one JSON object) per event, and resume a dropped stream with
//! `Last-Event-ID` so no event is lost or repeated. Bytes are decoded by the
//! one SSE decoder of the workspace, [`model::sse::SseDecoder`].

use std::io::Write;
use std::time::Duration;

use http_body_util::BodyExt;
use model::sse::SseDecoder;
#[cfg(test)]
use model::sse::SseEvent;
use serde_json::Value;
use session_store::EventType;

use super::api::{api_error, path_segment, ApiClient, OperatorError, REQUEST_TIMEOUT};
use super::output::{text, truncate};
use super::spinner::Spinner;

/// The largest event `tail` accepts. The API takes request bodies up to
/// `api.max_body_bytes` (16 MiB by default), and an event carries at most
/// one of them plus its envelope; a larger one ends `tail` with an error
/// naming this limit (resuming would only read it again).
pub(super) const MAX_EVENT_BYTES: usize = 64 * 1024 * 1024;

/// Follow the SSE stream until Ctrl-C, the session's deletion, or a drop
/// it cannot resume from.
pub(super) async fn tail(
    api: &ApiClient,
    id: &str,
    after: Option<u64>,
    json_out: bool,
    reconnect: Duration,
) -> Result<(), OperatorError> {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        r = follow(api, id, after, json_out, reconnect) => r,
    }
}

/// How one connection of `sessions tail` ended.
#[derive(Debug)]
enum Ended {
    /// The session was deleted (`session.deleted`): nothing more will come.
    Deleted,
    /// The stream ended or broke off; resumable from the last seq.
    Dropped(String),
}

/// Whether a failed (re)connection is worth retrying.
fn retryable(error: &OperatorError) -> bool {
    match error {
        OperatorError::Unreachable { .. }
        | OperatorError::Timeout { .. }
        | OperatorError::Body { .. } => true,
        OperatorError::Api { status, .. } | OperatorError::BadResponse { status, .. } => {
            *status >= 500 || *status == 429
        }
        _ => false,
    }
}

/// The seq of the newest event of a session (0 if none).
async fn latest_seq(api: &ApiClient, id: &str) -> Result<u64, OperatorError> {
    let v = api
        .call(
            "GET",
            &format!(
                "/v1/sessions/{}/events?order=desc&limit=1",
                path_segment(id)
            ),
            None,
        )
        .await?;
    Ok(v["data"][0]["seq"].as_u64().unwrap_or(0))
}

/// The SSE endpoint of session `id`.
fn stream_path(id: &str) -> String {
    format!("/v1/sessions/{}/events/stream", path_segment(id))
}

/// Open the stream after `last` (live when `None`); the body of a 2xx answer.
async fn open_stream(
    api: &ApiClient,
    id: &str,
    last: Option<u64>,
    spinner: bool,
) -> Result<hyper::body::Incoming, OperatorError> {
    let path = stream_path(id);
    let mut req = api.request("GET", &path, None, "text/event-stream")?;
    if let Some(seq) = last {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&seq.to_string()) {
            req.headers_mut().insert("last-event-id", v);
        }
    }
    let resp = {
        let _spinner = spinner.then(|| Spinner::start(format!("the stream of {id}")));
        tokio::time::timeout(REQUEST_TIMEOUT, api.send(req))
            .await
            .map_err(|_| OperatorError::Timeout {
                url: api.base.clone(),
                seconds: REQUEST_TIMEOUT.as_secs(),
            })??
    };
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        return Err(api_error(&path, status, parsed.as_ref(), &bytes));
    }
    Ok(resp.into_body())
}

/// Follow the stream; when it drops, resume it with `Last-Event-ID` (the
/// last seq seen) for up to `reconnect`, backing off from 200 ms to 5 s.
async fn follow(
    api: &ApiClient,
    id: &str,
    after: Option<u64>,
    json_out: bool,
    reconnect: Duration,
) -> Result<(), OperatorError> {
    // Without --after, "from now on" is the newest seq now, so that a
    // resume after a drop has a seq to start from (no gap).
    let mut last = match after {
        Some(a) => Some(a),
        None if !reconnect.is_zero() => Some(latest_seq(api, id).await?),
        None => None,
    };
    let path = stream_path(id);
    let mut body = open_stream(api, id, last, true).await?;
    loop {
        let why = match read_stream(&mut body, &path, &mut last, json_out).await? {
            Ended::Deleted => return Ok(()),
            Ended::Dropped(why) => why,
        };
        if reconnect.is_zero() {
            return Ok(());
        }
        let at = last.map_or_else(|| "the start".to_owned(), |s| format!("seq {s}"));
        eprintln!("stream of {id} dropped after {at} ({why}); reconnecting with Last-Event-ID");
        let dropped = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(200);
        body = loop {
            tokio::time::sleep(backoff).await;
            match open_stream(api, id, last, false).await {
                Ok(b) => break b,
                Err(e) if retryable(&e) && dropped.elapsed() < reconnect => {
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) if retryable(&e) => {
                    return Err(OperatorError::StreamLost {
                        session: id.to_owned(),
                        seconds: reconnect.as_secs(),
                        message: e.to_string(),
                    })
                }
                Err(e) => return Err(e),
            }
        };
        eprintln!("stream of {id} resumed after {at}");
    }
}

/// Print the events of one connection until it ends.
async fn read_stream(
    body: &mut hyper::body::Incoming,
    path: &str,
    last: &mut Option<u64>,
    json_out: bool,
) -> Result<Ended, OperatorError> {
    let mut reader = TailReader::new(path, json_out, MAX_EVENT_BYTES);
    loop {
        let frame = match body.frame().await {
            None => return Ok(Ended::Dropped("the server ended the stream".to_owned())),
            Some(Err(error)) => return Ok(Ended::Dropped(error.to_string())),
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if let Some(ended) = reader.push(&data, &mut std::io::stdout().lock(), last)? {
            return Ok(ended);
        }
    }
}

/// Turns the bytes of one connection into the lines `tail` prints, through
/// the one SSE decoder ([`model::sse::SseDecoder`]: a character split
/// across reads stays whole, an event over the cap is an error).
struct TailReader {
    decoder: SseDecoder,
    path: String,
    json_out: bool,
}

impl TailReader {
    fn new(path: &str, json_out: bool, limit_bytes: usize) -> Self {
        Self {
            decoder: SseDecoder::new(limit_bytes),
            path: path.to_owned(),
            json_out,
        }
    }

    /// Decode `chunk` and print the events it completes to `out`, moving
    /// `last` to each printed event's id. `Some` when this connection is
    /// over (the session was deleted, or the server sent `error`).
    fn push(
        &mut self,
        chunk: &[u8],
        out: &mut impl Write,
        last: &mut Option<u64>,
    ) -> Result<Option<Ended>, OperatorError> {
        let events = self
            .decoder
            .push(chunk)
            .map_err(|source| OperatorError::Stream {
                path: self.path.clone(),
                source,
            })?;
        for ev in events {
            let event = ev.event.as_deref().unwrap_or("message");
            if event == "ping" {
                continue;
            }
            if event == "error" {
                // The server gives up on this stream; resume it.
                return Ok(Some(Ended::Dropped(truncate(&ev.data, 200))));
            }
            let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
                continue;
            };
            if self.json_out {
                writeln!(out, "{v}")?;
            } else {
                writeln!(
                    out,
                    "{:>6}  {:<28}  {}",
                    text(&v["seq"]),
                    text(&v["type"]),
                    summary(&v)
                )?;
            }
            out.flush()?;
            if let Some(seq) = ev.id.as_deref().and_then(|s| s.trim().parse::<u64>().ok()) {
                *last = Some(seq);
            }
            if EventType::parse(event) == EventType::SessionDeleted {
                return Ok(Some(Ended::Deleted));
            }
        }
        Ok(None)
    }
}

/// A short, one-line summary of an event for `sessions tail`.
fn summary(v: &Value) -> String {
    let content_text = |c: &Value| -> String {
        c.as_array()
            .map(|blocks| {
                blocks
                    .iter()
                    .filter_map(|b| b["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    use EventType as E;
    let s = match E::parse(v["type"].as_str().unwrap_or_default()) {
        E::UserMessage | E::AgentMessage | E::AgentThinking => content_text(&v["content"]),
        E::AgentToolUse | E::AgentCustomToolUse | E::AgentMcpToolUse => {
            format!(
                "{} {}",
                text(&v["name"]),
                truncate(&v["input"].to_string(), 80)
            )
        }
        E::AgentToolResult | E::AgentMcpToolResult | E::UserCustomToolResult => {
            let err = if v["is_error"].as_bool() == Some(true) {
                " (error)"
            } else {
                ""
            };
            format!(
                "{}{err} {}",
                text(&v["tool_use_id"]),
                content_text(&v["content"])
            )
        }
        E::UserToolConfirmation => format!("{} {}", text(&v["tool_use_id"]), text(&v["result"])),
        E::SessionStatusIdle => format!("stop_reason={}", text(&v["stop_reason"]["type"])),
        E::SessionError => format!(
            "{}: {}",
            text(&v["error"]["type"]),
            text(&v["error"]["message"])
        ),
        _ => String::new(),
    };
    truncate(&s, 120)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn sse_decoder_handles_split_chunks_pings_and_crlf() {
        let mut p = SseDecoder::new(MAX_EVENT_BYTES);
        assert!(p.push(b"event: ping\ndata: {}\n").unwrap().is_empty());
        let got = p.push(b"\nid: 1\nevent: user.message\r\ndata: {\"seq\":1}\r\n\r\nevent: x\ndata: a\ndata: b\n\n").unwrap();
        let ev = |event: &str, id: Option<&str>, data: &str| SseEvent {
            event: Some(event.to_owned()),
            id: id.map(str::to_owned),
            data: data.to_owned(),
        };
        assert_eq!(
            got,
            vec![
                ev("ping", None, "{}"),
                ev("user.message", Some("1"), "{\"seq\":1}"),
                ev("x", None, "a\nb"),
            ]
        );
        assert!(p.push(b": comment\n\n").unwrap().is_empty());
    }

    #[test]
    fn tail_keeps_a_character_split_across_reads_and_follows_ids() {
        let event = "id: 7\nevent: agent.message\ndata: {\"seq\":7,\"type\":\"agent.message\",\"content\":[{\"type\":\"text\",\"text\":\"caf\u{e9} \u{1f600}\"}]}\n\n";
        let bytes = event.as_bytes();
        for cut in [bytes.len() - 12, bytes.len() - 9] {
            let (a, b) = bytes.split_at(cut);
            assert!(
                std::str::from_utf8(a).is_err(),
                "cut {cut} must split a character"
            );
            let mut reader = TailReader::new("/v1/sessions/sesn_x/events/stream", false, 1024);
            let (mut out, mut last) = (Vec::new(), None);
            assert!(reader.push(a, &mut out, &mut last).unwrap().is_none());
            assert!(out.is_empty());
            assert!(reader.push(b, &mut out, &mut last).unwrap().is_none());
            let line = String::from_utf8(out).unwrap();
            assert!(line.contains("caf\u{e9} \u{1f600}"), "{line:?}");
            assert!(!line.contains('\u{fffd}'), "{line:?}");
            assert_eq!(last, Some(7));
        }
    }

    #[test]
    fn tail_refuses_an_oversized_event_naming_the_limit() {
        let mut reader = TailReader::new("/v1/sessions/sesn_x/events/stream", true, 64);
        let (mut out, mut last) = (Vec::new(), Some(3));
        let big = format!("id: 4\ndata: {{\"text\":\"{}\"}}\n\n", "x".repeat(100));
        let e = reader
            .push(big.as_bytes(), &mut out, &mut last)
            .unwrap_err();
        assert!(
            matches!(
                &e,
                OperatorError::Stream {
                    source: model::sse::SseError::TooLarge {
                        limit_bytes: 64,
                        ..
                    },
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "reading the event stream /v1/sessions/sesn_x/events/stream: sse event at line 2 exceeds 64 bytes"
        );
        assert!(!retryable(&e));
        assert!(out.is_empty());
        assert_eq!(last, Some(3));
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let api = |status: u16| OperatorError::Api {
            status,
            kind: "x".to_owned(),
            message: "y".to_owned(),
        };
        assert!(retryable(&OperatorError::Unreachable {
            url: "u".to_owned(),
            message: "refused".to_owned(),
        }));
        assert!(retryable(&api(503)) && retryable(&api(429)));
        assert!(!retryable(&api(404)) && !retryable(&api(401)));
        assert!(!retryable(&OperatorError::MissingKey));
    }

    #[test]
    fn summaries_are_short_and_typed() {
        let v = json!({"type": "session.status_idle", "stop_reason": {"type": "end_turn"}});
        assert_eq!(summary(&v), "stop_reason=end_turn");
        let v = json!({"type": "agent.message", "content": [{"type": "text", "text": "x".repeat(500)}]});
        assert!(summary(&v).chars().count() <= 121);
        assert_eq!(path_segment("sesn_a/../b"), "sesn_a%2F%2E%2E%2Fb");
    }
}
