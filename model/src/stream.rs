//! The streaming event model and its assembler.
//!
//! [`StreamEvent`] is the Messages API's stream, event by event
//! (`message_start`, `content_block_start`, `content_block_delta` with
//! `text_delta` / `input_json_delta` / ..., `content_block_stop`,
//! `message_delta`, `message_stop`; `ping` is dropped, `error` becomes a
//! [`ModelError`]). Every provider turns its wire format into these events.
//!
//! [`Assembler`] is a plain state machine (no I/O) that checks the order of
//! events and builds the final [`Response`]; [`ModelStream`] drives it over
//! any provider's event stream and hands each event to the caller as it
//! arrives (for time-to-first-token and live forwarding).

use std::pin::Pin;

use futures::{Stream, StreamExt};
use serde_json::Value;

use crate::error::ModelError;
use crate::types::{Response, ResponseBlock, StopReason, Usage};

/// Partial usage carried by `message_delta` (cumulative values; absent fields
/// keep what `message_start` said).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageDelta {
    /// Input tokens, when restated.
    pub input_tokens: Option<u64>,
    /// Output tokens so far.
    pub output_tokens: Option<u64>,
    /// Cache-creation tokens, when restated.
    pub cache_creation_input_tokens: Option<u64>,
    /// Cache-read tokens, when restated.
    pub cache_read_input_tokens: Option<u64>,
}

/// How a content block starts.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BlockStart {
    /// A text block, with its initial text (usually empty).
    Text {
        /// Initial text.
        text: String,
    },
    /// A tool call; its input follows as `input_json_delta` fragments.
    ToolUse {
        /// The model's tool-use id.
        id: String,
        /// Tool name.
        name: String,
    },
    /// Any other block (thinking, server tools, ...), as its start JSON.
    Other(Value),
}

/// An incremental piece of a block.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BlockDelta {
    /// `text_delta`.
    Text(String),
    /// `input_json_delta` (`partial_json`).
    InputJson(String),
    /// Any other delta (`thinking_delta`, `signature_delta`, ...) as JSON.
    Other(Value),
}

/// One event of a streamed response, in wire order (`ping` excluded).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StreamEvent {
    /// `message_start`.
    MessageStart {
        /// Message id.
        id: String,
        /// Model.
        model: String,
        /// Initial usage (input and cache tokens).
        usage: Usage,
    },
    /// `content_block_start`.
    BlockStart {
        /// Block index.
        index: usize,
        /// What kind of block.
        block: BlockStart,
    },
    /// `content_block_delta`.
    BlockDelta {
        /// Block index.
        index: usize,
        /// The piece.
        delta: BlockDelta,
    },
    /// `content_block_stop`.
    BlockStop {
        /// Block index.
        index: usize,
    },
    /// `message_delta`.
    MessageDelta {
        /// Stop reason, once known.
        stop_reason: Option<StopReason>,
        /// Stop sequence that matched.
        stop_sequence: Option<String>,
        /// Cumulative usage.
        usage: UsageDelta,
    },
    /// `message_stop`.
    MessageStop,
}

impl StreamEvent {
    /// Whether this event carries model output (the moment that counts for
    /// time to first token).
    pub fn is_output(&self) -> bool {
        matches!(self, Self::BlockStart { .. } | Self::BlockDelta { .. })
    }
}

/// A stream of provider events.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, ModelError>> + Send>>;

enum OpenBlock {
    Text(String),
    Tool {
        id: String,
        name: String,
        json: String,
    },
    Other(Value),
}

/// The assembler's state machine: checks event order, accumulates blocks.
#[derive(Debug)]
pub struct Assembler {
    provider: String,
    started: Option<(String, String)>,
    usage: Usage,
    blocks: Vec<ResponseBlock>,
    open: Option<(usize, OpenBlockDebug)>,
    stop_reason: Option<StopReason>,
    stop_sequence: Option<String>,
    stopped: bool,
}

/// Debug wrapper so [`Assembler`] can derive `Debug` without printing tool input.
struct OpenBlockDebug(OpenBlock);

impl std::fmt::Debug for OpenBlockDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            OpenBlock::Text(t) => write!(f, "Text({} bytes)", t.len()),
            OpenBlock::Tool { name, json, .. } => write!(f, "Tool({name}, {} bytes)", json.len()),
            OpenBlock::Other(_) => f.write_str("Other"),
        }
    }
}

impl Assembler {
    /// A fresh assembler; `provider` names the peer in errors.
    pub fn new(provider: impl Into<String>) -> Self {
        Self {
            provider: provider.into(),
            started: None,
            usage: Usage::default(),
            blocks: Vec::new(),
            open: None,
            stop_reason: None,
            stop_sequence: None,
            stopped: false,
        }
    }

    fn malformed(&self, message: impl Into<String>) -> ModelError {
        ModelError::MalformedStream {
            provider: self.provider.clone(),
            message: message.into(),
        }
    }

    /// Whether `message_stop` was seen.
    pub fn is_complete(&self) -> bool {
        self.stopped
    }

    /// Usage as known so far (for accounting a call that failed mid-stream).
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Apply the next event; errors when it is out of order or invalid.
    pub fn apply(&mut self, event: &StreamEvent) -> Result<(), ModelError> {
        if self.stopped {
            return Err(self.malformed("event after message_stop"));
        }
        if self.started.is_none() && !matches!(event, StreamEvent::MessageStart { .. }) {
            return Err(self.malformed("stream does not begin with message_start"));
        }
        match event {
            StreamEvent::MessageStart { id, model, usage } => {
                if self.started.is_some() {
                    return Err(self.malformed("second message_start"));
                }
                self.started = Some((id.clone(), model.clone()));
                self.usage = *usage;
            }
            StreamEvent::BlockStart { index, block } => {
                if let Some((open, _)) = &self.open {
                    return Err(self.malformed(format!(
                        "content_block_start {index} while block {open} is open"
                    )));
                }
                if *index != self.blocks.len() {
                    return Err(self.malformed(format!(
                        "content_block_start index {index}, expected {}",
                        self.blocks.len()
                    )));
                }
                let open = match block {
                    BlockStart::Text { text } => OpenBlock::Text(text.clone()),
                    BlockStart::ToolUse { id, name } => OpenBlock::Tool {
                        id: id.clone(),
                        name: name.clone(),
                        json: String::new(),
                    },
                    BlockStart::Other(v) => OpenBlock::Other(v.clone()),
                };
                self.open = Some((*index, OpenBlockDebug(open)));
            }
            StreamEvent::BlockDelta { index, delta } => {
                let provider = self.provider.clone();
                let bad = |m: String| ModelError::MalformedStream {
                    provider: provider.clone(),
                    message: m,
                };
                let Some((open_index, OpenBlockDebug(open))) = self.open.as_mut() else {
                    return Err(bad(format!(
                        "content_block_delta for block {index} that is not open"
                    )));
                };
                if *open_index != *index {
                    return Err(bad(format!(
                        "content_block_delta for block {index} while block {open_index} is open"
                    )));
                }
                match (open, delta) {
                    (OpenBlock::Text(t), BlockDelta::Text(s)) => t.push_str(s),
                    (OpenBlock::Tool { json, .. }, BlockDelta::InputJson(s)) => json.push_str(s),
                    (OpenBlock::Other(v), BlockDelta::Other(d)) => merge_other_delta(v, d),
                    (OpenBlock::Other(_), _) => {}
                    (OpenBlock::Text(_), _) => {
                        return Err(bad(format!(
                            "block {index} is text but got a non-text delta"
                        )))
                    }
                    (OpenBlock::Tool { .. }, _) => {
                        return Err(bad(format!(
                            "block {index} is tool_use but got a delta other than input_json_delta"
                        )))
                    }
                }
            }
            StreamEvent::BlockStop { index } => {
                let Some((open_index, OpenBlockDebug(open))) = self.open.take() else {
                    return Err(self.malformed(format!(
                        "content_block_stop for block {index} that is not open"
                    )));
                };
                if open_index != *index {
                    return Err(self.malformed(format!(
                        "content_block_stop for block {index} while block {open_index} is open"
                    )));
                }
                let block = match open {
                    OpenBlock::Text(text) => ResponseBlock::Text { text },
                    OpenBlock::Tool { id, name, json } => {
                        let input = if json.trim().is_empty() {
                            Value::Object(Default::default())
                        } else {
                            serde_json::from_str::<Value>(&json).map_err(|e| {
                                self.malformed(format!(
                                    "tool_use block {index} ({name}) input is not valid json: {e}"
                                ))
                            })?
                        };
                        if !input.is_object() {
                            return Err(self.malformed(format!(
                                "tool_use block {index} ({name}) input is not a json object"
                            )));
                        }
                        if id.is_empty() || name.is_empty() {
                            return Err(self.malformed(format!(
                                "tool_use block {index} has an empty id or name"
                            )));
                        }
                        ResponseBlock::ToolUse { id, name, input }
                    }
                    OpenBlock::Other(v) => ResponseBlock::Other(v),
                };
                self.blocks.push(block);
            }
            StreamEvent::MessageDelta {
                stop_reason,
                stop_sequence,
                usage,
            } => {
                if stop_reason.is_some() {
                    self.stop_reason = stop_reason.clone();
                }
                if stop_sequence.is_some() {
                    self.stop_sequence = stop_sequence.clone();
                }
                if let Some(v) = usage.input_tokens {
                    self.usage.input_tokens = v;
                }
                if let Some(v) = usage.output_tokens {
                    self.usage.output_tokens = v;
                }
                if let Some(v) = usage.cache_creation_input_tokens {
                    self.usage.cache_creation_input_tokens = v;
                }
                if let Some(v) = usage.cache_read_input_tokens {
                    self.usage.cache_read_input_tokens = v;
                }
            }
            StreamEvent::MessageStop => {
                if let Some((open, _)) = &self.open {
                    return Err(self.malformed(format!("message_stop while block {open} is open")));
                }
                self.stopped = true;
            }
        }
        Ok(())
    }

    /// The assembled response; errors unless `message_stop` was seen.
    pub fn finish(self) -> Result<Response, ModelError> {
        if !self.stopped {
            return Err(ModelError::Transport {
                provider: self.provider,
                message: "stream ended before message_stop".to_owned(),
            });
        }
        let (id, model) = self.started.unwrap_or_default();
        Ok(Response {
            id,
            model,
            content: self.blocks,
            stop_reason: self.stop_reason,
            stop_sequence: self.stop_sequence,
            usage: self.usage,
        })
    }
}

/// Fold a pass-through delta into its block: `thinking_delta` appends to
/// `thinking`, `signature_delta` sets `signature`, others are kept as-is.
fn merge_other_delta(block: &mut Value, delta: &Value) {
    let Some(obj) = block.as_object_mut() else {
        return;
    };
    match delta.get("type").and_then(Value::as_str) {
        Some("thinking_delta") => {
            if let Some(s) = delta.get("thinking").and_then(Value::as_str) {
                let cur = obj
                    .get("thinking")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                obj.insert("thinking".into(), Value::String(cur + s));
            }
        }
        Some("signature_delta") => {
            if let Some(s) = delta.get("signature") {
                obj.insert("signature".into(), s.clone());
            }
        }
        _ => {}
    }
}

/// Parse one SSE `data` payload of the Anthropic stream. `Ok(None)` for
/// `ping` and for event types this client does not know (the API may add
/// new ones; they are ignored, as the API's versioning policy asks).
pub(crate) fn parse_anthropic_event(
    provider: &str,
    sse_event: Option<&str>,
    data: &str,
) -> Result<Option<StreamEvent>, ModelError> {
    let malformed = |m: String| ModelError::MalformedStream {
        provider: provider.to_owned(),
        message: m,
    };
    let v: Value = serde_json::from_str(data).map_err(|e| {
        malformed(format!(
            "event {} data is not valid json: {e}",
            sse_event.unwrap_or("(unnamed)")
        ))
    })?;
    let ty = v
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("event data has no string `type`".to_owned()))?;
    if let Some(name) = sse_event {
        if name != ty {
            return Err(malformed(format!(
                "sse event name {name} does not match data type {ty}"
            )));
        }
    }
    let str_field = |obj: &Value, key: &str| -> Result<String, ModelError> {
        obj.get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| malformed(format!("{ty} has no string `{key}`")))
    };
    let index = |obj: &Value| -> Result<usize, ModelError> {
        obj.get("index")
            .and_then(Value::as_u64)
            .and_then(|i| usize::try_from(i).ok())
            .ok_or_else(|| malformed(format!("{ty} has no integer `index`")))
    };
    let ev = match ty {
        "ping" => return Ok(None),
        "error" => {
            let err = v.get("error").cloned().unwrap_or(Value::Null);
            let error_type = err
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("unknown_error")
                .to_owned();
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let request_id = v
                .get("request_id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            return Err(ModelError::from_envelope(
                provider, None, error_type, message, request_id, None,
            ));
        }
        "message_start" => {
            let m = v
                .get("message")
                .ok_or_else(|| malformed("message_start has no `message`".to_owned()))?;
            let usage: Usage = match m.get("usage") {
                Some(u) => serde_json::from_value(u.clone())
                    .map_err(|e| malformed(format!("message_start usage: {e}")))?,
                None => Usage::default(),
            };
            StreamEvent::MessageStart {
                id: str_field(m, "id")?,
                model: m
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                usage,
            }
        }
        "content_block_start" => {
            let cb = v.get("content_block").ok_or_else(|| {
                malformed("content_block_start has no `content_block`".to_owned())
            })?;
            let block = match cb.get("type").and_then(Value::as_str) {
                Some("text") => BlockStart::Text {
                    text: cb
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                },
                Some("tool_use") => {
                    if let Some(input) = cb.get("input") {
                        if !input.is_object() {
                            return Err(malformed(
                                "tool_use start input is not an object".to_owned(),
                            ));
                        }
                    }
                    BlockStart::ToolUse {
                        id: str_field(cb, "id")?,
                        name: str_field(cb, "name")?,
                    }
                }
                Some(_) => BlockStart::Other(cb.clone()),
                None => return Err(malformed("content_block has no string `type`".to_owned())),
            };
            StreamEvent::BlockStart {
                index: index(&v)?,
                block,
            }
        }
        "content_block_delta" => {
            let d = v
                .get("delta")
                .ok_or_else(|| malformed("content_block_delta has no `delta`".to_owned()))?;
            let delta = match d.get("type").and_then(Value::as_str) {
                Some("text_delta") => BlockDelta::Text(str_field(d, "text")?),
                Some("input_json_delta") => BlockDelta::InputJson(str_field(d, "partial_json")?),
                Some(_) => BlockDelta::Other(d.clone()),
                None => return Err(malformed("delta has no string `type`".to_owned())),
            };
            StreamEvent::BlockDelta {
                index: index(&v)?,
                delta,
            }
        }
        "content_block_stop" => StreamEvent::BlockStop { index: index(&v)? },
        "message_delta" => {
            let d = v.get("delta").cloned().unwrap_or(Value::Null);
            let u = v.get("usage").cloned().unwrap_or(Value::Null);
            let num = |k: &str| u.get(k).and_then(Value::as_u64);
            StreamEvent::MessageDelta {
                stop_reason: d
                    .get("stop_reason")
                    .and_then(Value::as_str)
                    .map(StopReason::parse),
                stop_sequence: d
                    .get("stop_sequence")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                usage: UsageDelta {
                    input_tokens: num("input_tokens"),
                    output_tokens: num("output_tokens"),
                    cache_creation_input_tokens: num("cache_creation_input_tokens"),
                    cache_read_input_tokens: num("cache_read_input_tokens"),
                },
            }
        }
        "message_stop" => StreamEvent::MessageStop,
        _ => return Ok(None),
    };
    Ok(Some(ev))
}

/// A response being streamed: yields each event as it arrives, then the
/// assembled [`Response`].
pub struct ModelStream {
    events: EventStream,
    assembler: Option<Assembler>,
    provider: String,
}

impl std::fmt::Debug for ModelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStream")
            .field("provider", &self.provider)
            .field("assembler", &self.assembler)
            .finish_non_exhaustive()
    }
}

/// What [`ModelStream::next`] produced.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// One more event (already checked and folded into the response).
    Event(StreamEvent),
    /// The stream is complete; this is the assembled response.
    Done(Response),
}

impl ModelStream {
    /// Wrap a provider's event stream.
    pub fn new(provider: impl Into<String>, events: EventStream) -> Self {
        let provider = provider.into();
        Self {
            events,
            assembler: Some(Assembler::new(provider.clone())),
            provider,
        }
    }

    /// Usage known so far (input tokens are known after `message_start`).
    pub fn usage_so_far(&self) -> Usage {
        self.assembler
            .as_ref()
            .map(Assembler::usage)
            .unwrap_or_default()
    }

    /// The next event, or the final response once `message_stop` arrived.
    /// After `Done` (or an error) the stream is spent and returns an
    /// `InvalidRequest` error.
    pub async fn next(&mut self) -> Result<StreamItem, ModelError> {
        let Some(asm) = self.assembler.as_mut() else {
            return Err(ModelError::InvalidRequest {
                message: "model stream polled after it ended".to_owned(),
            });
        };
        if asm.is_complete() {
            // Drain: anything after message_stop is a protocol error, EOF is fine.
            let tail = self.events.next().await;
            let asm = self.assembler.take();
            return match (tail, asm) {
                (None, Some(asm)) => asm.finish().map(StreamItem::Done),
                (Some(Err(e)), _) => Err(e),
                (Some(Ok(_)), _) | (None, None) => Err(ModelError::MalformedStream {
                    provider: self.provider.clone(),
                    message: "event after message_stop".to_owned(),
                }),
            };
        }
        match self.events.next().await {
            Some(Ok(ev)) => {
                if let Err(e) = asm.apply(&ev) {
                    self.assembler = None;
                    return Err(e);
                }
                Ok(StreamItem::Event(ev))
            }
            Some(Err(e)) => {
                self.assembler = None;
                Err(e)
            }
            None => {
                let asm = self.assembler.take();
                match asm {
                    Some(asm) => asm.finish().map(StreamItem::Done),
                    None => Err(ModelError::InvalidRequest {
                        message: "model stream polled after it ended".to_owned(),
                    }),
                }
            }
        }
    }

    /// Read the whole stream and return the assembled response.
    pub async fn collect(mut self) -> Result<Response, ModelError> {
        loop {
            if let StreamItem::Done(r) = self.next().await? {
                return Ok(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(data: Value) -> Result<Option<StreamEvent>, ModelError> {
        let ty = data["type"].as_str().map(str::to_owned);
        parse_anthropic_event("t", ty.as_deref(), &data.to_string())
    }

    fn start() -> StreamEvent {
        ev(json!({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"m","stop_reason":null,"usage":{"input_tokens":10,"output_tokens":1,"cache_read_input_tokens":5}}})).unwrap().unwrap()
    }

    #[test]
    fn assembles_text_and_tool_use_with_usage() {
        let events = [
            start(),
            ev(json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})).unwrap().unwrap(),
            ev(json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}})).unwrap().unwrap(),
            ev(json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}})).unwrap().unwrap(),
            ev(json!({"type":"content_block_stop","index":0})).unwrap().unwrap(),
            ev(json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"bash","input":{}}})).unwrap().unwrap(),
            ev(json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}})).unwrap().unwrap(),
            ev(json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"command\": \"l"}})).unwrap().unwrap(),
            ev(json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"s\"}"}})).unwrap().unwrap(),
            ev(json!({"type":"content_block_stop","index":1})).unwrap().unwrap(),
            ev(json!({"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":42}})).unwrap().unwrap(),
            ev(json!({"type":"message_stop"})).unwrap().unwrap(),
        ];
        let mut a = Assembler::new("t");
        for e in &events {
            a.apply(e).unwrap();
        }
        let r = a.finish().unwrap();
        assert_eq!(r.id, "msg_1");
        assert_eq!(r.stop_reason, Some(StopReason::ToolUse));
        assert_eq!(r.usage.input_tokens, 10);
        assert_eq!(r.usage.cache_read_input_tokens, 5);
        assert_eq!(r.usage.output_tokens, 42);
        assert_eq!(
            r.content,
            vec![
                ResponseBlock::Text {
                    text: "Hello".into()
                },
                ResponseBlock::ToolUse {
                    id: "toolu_1".into(),
                    name: "bash".into(),
                    input: json!({"command":"ls"})
                },
            ]
        );
    }

    #[test]
    fn ping_and_unknown_events_are_ignored_error_events_are_typed() {
        assert_eq!(ev(json!({"type":"ping"})).unwrap(), None);
        assert_eq!(ev(json!({"type":"future_event","x":1})).unwrap(), None);
        let e =
            ev(json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}))
                .unwrap_err();
        assert!(matches!(e, ModelError::Overloaded { .. }));
        let e =
            ev(json!({"type":"error","error":{"type":"api_error","message":"boom"}})).unwrap_err();
        assert!(
            matches!(e, ModelError::Api { status: None, ref error_type, .. } if error_type == "api_error")
        );
    }

    #[test]
    fn out_of_order_and_invalid_streams_are_malformed() {
        let text_start = ev(json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})).unwrap().unwrap();
        // No message_start first.
        let mut a = Assembler::new("t");
        assert!(matches!(
            a.apply(&text_start),
            Err(ModelError::MalformedStream { .. })
        ));
        // Wrong index.
        let mut a = Assembler::new("t");
        a.apply(&start()).unwrap();
        let e = a.apply(&StreamEvent::BlockStart {
            index: 3,
            block: BlockStart::Text {
                text: String::new(),
            },
        });
        assert!(matches!(e, Err(ModelError::MalformedStream { .. })));
        // Tool input that is not json.
        let mut a = Assembler::new("t");
        a.apply(&start()).unwrap();
        a.apply(&StreamEvent::BlockStart {
            index: 0,
            block: BlockStart::ToolUse {
                id: "i".into(),
                name: "n".into(),
            },
        })
        .unwrap();
        a.apply(&StreamEvent::BlockDelta {
            index: 0,
            delta: BlockDelta::InputJson("{\"a\":".into()),
        })
        .unwrap();
        assert!(matches!(
            a.apply(&StreamEvent::BlockStop { index: 0 }),
            Err(ModelError::MalformedStream { .. })
        ));
        // Text delta into a tool block.
        let mut a = Assembler::new("t");
        a.apply(&start()).unwrap();
        a.apply(&StreamEvent::BlockStart {
            index: 0,
            block: BlockStart::ToolUse {
                id: "i".into(),
                name: "n".into(),
            },
        })
        .unwrap();
        assert!(a
            .apply(&StreamEvent::BlockDelta {
                index: 0,
                delta: BlockDelta::Text("x".into())
            })
            .is_err());
        // message_stop with an open block.
        let mut a = Assembler::new("t");
        a.apply(&start()).unwrap();
        a.apply(&text_start).unwrap();
        assert!(a.apply(&StreamEvent::MessageStop).is_err());
        // Truncated: no message_stop.
        let mut a = Assembler::new("t");
        a.apply(&start()).unwrap();
        assert!(matches!(a.finish(), Err(ModelError::Transport { .. })));
        // Bad json, mismatched names.
        assert!(matches!(
            parse_anthropic_event("t", None, "{nope"),
            Err(ModelError::MalformedStream { .. })
        ));
        assert!(matches!(
            parse_anthropic_event("t", Some("message_stop"), "{\"type\":\"ping\"}"),
            Err(ModelError::MalformedStream { .. })
        ));
    }
}
