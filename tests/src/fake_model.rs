//! A scripted fake of the Anthropic Messages API, for tests and benchmarks.
//!
//! It listens on `127.0.0.1`, answers `POST /v1/messages` with the exact
//! streaming wire format (`message_start`, `ping`, `content_block_start` /
//! `content_block_delta` (`text_delta`, `input_json_delta`) /
//! `content_block_stop`, `message_delta`, `message_stop`), and records every
//! request it received. What it answers comes from a [`Script`]: a function of
//! the request, so a 50-tool-call session is a three-line closure and the
//! answer to a replayed request after a crash is the same as the first time.
//!
//! Faults are part of the script: HTTP 429 with `retry-after`, 529
//! overloaded, any other error envelope, an `error` event mid-stream, a
//! malformed chunk, a stream cut before `message_stop`, and a stall that holds
//! the connection open without a byte until the client gives up.
//!
//! Like the real API, it rejects (400 `invalid_request_error`) a conversation
//! whose `tool_use` blocks are not answered by `tool_result` blocks in the
//! next message, so a harness that rebuilds its request wrongly fails loudly.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// One piece of a streamed response body.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    /// Bytes to write.
    Data(Vec<u8>),
    /// Pause before the next chunk.
    Sleep(Duration),
    /// Hold the connection open and send nothing more, until the client
    /// goes away (or the server is dropped).
    Stall,
}

/// What the fake answers to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A streamed assistant turn, rendered against the request (usage
    /// follows the request size, ids follow the request number).
    Turn(Box<Turn>),
    /// `200 text/event-stream` with these chunks, after the server's (or
    /// this reply's) first-token latency.
    Stream {
        /// Body chunks in order. The stream ends when they do.
        chunks: Vec<Chunk>,
        /// Latency before the first chunk; `None` uses the server default.
        latency: Option<Duration>,
    },
    /// A plain HTTP response (errors).
    Http {
        /// Status code.
        status: u16,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// Body.
        body: String,
    },
}

impl Reply {
    /// A turn that says `text` and ends (`end_turn`).
    pub fn text(text: impl Into<String>) -> Self {
        Turn::new().text(text).into()
    }

    /// A turn that calls one tool (`tool_use`); the id is derived from the
    /// request number so it is unique per session.
    pub fn tool_use(id: impl Into<String>, name: impl Into<String>, input: Value) -> Self {
        Turn::new().tool_use(id, name, input).into()
    }

    /// An error response with the standard envelope.
    pub fn error(status: u16, error_type: &str, message: &str) -> Self {
        Self::Http {
            status,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("request-id".into(), "req_fake".into()),
            ],
            body: json!({"type":"error","error":{"type":error_type,"message":message},"request_id":"req_fake"})
                .to_string(),
        }
    }

    /// HTTP 429 `rate_limit_error` with `retry-after: seconds`.
    pub fn rate_limited(retry_after_seconds: f64) -> Self {
        let mut r = Self::error(
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
        );
        if let Self::Http { headers, .. } = &mut r {
            headers.push(("retry-after".into(), format_seconds(retry_after_seconds)));
        }
        r
    }

    /// HTTP 529 `overloaded_error`.
    pub fn overloaded() -> Self {
        Self::error(529, "overloaded_error", "Overloaded")
    }

    /// Set the latency before the first chunk of a streamed reply.
    pub fn with_latency(mut self, d: Duration) -> Self {
        match &mut self {
            Self::Stream { latency, .. } => *latency = Some(d),
            Self::Turn(t) => t.latency = Some(d),
            Self::Http { .. } => {}
        }
        self
    }
}

fn format_seconds(s: f64) -> String {
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s}")
    }
}

/// A fault injected into a streamed turn after its first `after` SSE events.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Stop sending, keep the connection open.
    Stall,
    /// Send an `error` event with this `error.type` and end the stream.
    ErrorEvent(String),
    /// End the stream (cleanly at the HTTP level) before `message_stop`.
    Truncate,
    /// Send a `data:` line that is not JSON.
    Corrupt,
}

#[derive(Debug, Clone, PartialEq)]
enum TurnBlock {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// A tool_use whose input fragments are sent verbatim (may be invalid).
    RawToolUse {
        id: String,
        name: String,
        fragments: Vec<String>,
    },
}

/// A streamed assistant turn, built block by block.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    blocks: Vec<TurnBlock>,
    stop_reason: Option<String>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: u64,
    fault: Option<(usize, Fault)>,
    chunk_bytes: Option<usize>,
    latency: Option<Duration>,
    pings: bool,
}

impl Default for Turn {
    fn default() -> Self {
        Self::new()
    }
}

impl Turn {
    /// An empty turn (add blocks).
    pub fn new() -> Self {
        Self {
            blocks: Vec::new(),
            stop_reason: None,
            input_tokens: None,
            output_tokens: None,
            cache_read_input_tokens: 0,
            fault: None,
            chunk_bytes: None,
            latency: None,
            pings: true,
        }
    }

    /// Add a text block (streamed in several `text_delta`s).
    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.blocks.push(TurnBlock::Text(text.into()));
        self
    }

    /// Add a tool_use block (input streamed in several `input_json_delta`s).
    pub fn tool_use(
        mut self,
        id: impl Into<String>,
        name: impl Into<String>,
        input: Value,
    ) -> Self {
        self.blocks.push(TurnBlock::ToolUse {
            id: id.into(),
            name: name.into(),
            input,
        });
        self
    }

    /// Add a tool_use block whose `partial_json` fragments are sent as given.
    pub fn raw_tool_use(
        mut self,
        id: impl Into<String>,
        name: impl Into<String>,
        fragments: &[&str],
    ) -> Self {
        self.blocks.push(TurnBlock::RawToolUse {
            id: id.into(),
            name: name.into(),
            fragments: fragments.iter().map(|s| (*s).to_owned()).collect(),
        });
        self
    }

    /// Override the stop reason (default: `tool_use` if any tool block, else `end_turn`).
    pub fn stop_reason(mut self, r: &str) -> Self {
        self.stop_reason = Some(r.to_owned());
        self
    }

    /// Override usage (default: request bytes / 4 in, text bytes / 4 + 10 per tool out).
    pub fn usage(mut self, input_tokens: u64, output_tokens: u64) -> Self {
        self.input_tokens = Some(input_tokens);
        self.output_tokens = Some(output_tokens);
        self
    }

    /// Report this many cache-read input tokens.
    pub fn cache_read(mut self, tokens: u64) -> Self {
        self.cache_read_input_tokens = tokens;
        self
    }

    /// Inject a fault after the first `after_events` SSE events.
    pub fn fault(mut self, after_events: usize, fault: Fault) -> Self {
        self.fault = Some((after_events, fault));
        self
    }

    /// Write the body in chunks of at most this many bytes (exercises SSE
    /// reassembly across reads).
    pub fn chunk_bytes(mut self, n: usize) -> Self {
        self.chunk_bytes = Some(n.max(1));
        self
    }

    /// Latency before the first chunk.
    pub fn latency(mut self, d: Duration) -> Self {
        self.latency = Some(d);
        self
    }

    /// Do not send `ping` events.
    pub fn no_pings(mut self) -> Self {
        self.pings = false;
        self
    }

    /// Render the SSE events `(name, data)` of this turn for a request.
    fn events(&self, n: usize, request: &Value) -> Vec<(String, String)> {
        let model = request
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("fake");
        let input_tokens = self
            .input_tokens
            .unwrap_or_else(|| (request.to_string().len() as u64 / 4).max(1));
        let mut out_tokens = 0u64;
        let mut evs: Vec<(String, Value)> = Vec::new();
        evs.push((
            "message_start".into(),
            json!({"type":"message_start","message":{
                "id": format!("msg_fake_{n:04}"), "type":"message", "role":"assistant",
                "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": self.cache_read_input_tokens, "output_tokens": 1}}}),
        ));
        if self.pings {
            evs.push(("ping".into(), json!({"type":"ping"})));
        }
        let mut any_tool = false;
        for (i, b) in self.blocks.iter().enumerate() {
            match b {
                TurnBlock::Text(t) => {
                    out_tokens += (t.len() as u64 / 4).max(1);
                    evs.push((
                        "content_block_start".into(),
                        json!({"type":"content_block_start","index":i,"content_block":{"type":"text","text":""}}),
                    ));
                    for piece in split_text(t, 3) {
                        evs.push((
                            "content_block_delta".into(),
                            json!({"type":"content_block_delta","index":i,"delta":{"type":"text_delta","text":piece}}),
                        ));
                    }
                }
                TurnBlock::ToolUse { id, name, input } => {
                    any_tool = true;
                    out_tokens += 10;
                    let s = input.to_string();
                    let mut frags = vec![String::new()];
                    frags.extend(split_text(&s, 3));
                    push_tool(&mut evs, i, id, name, &frags);
                }
                TurnBlock::RawToolUse {
                    id,
                    name,
                    fragments,
                } => {
                    any_tool = true;
                    out_tokens += 10;
                    push_tool(&mut evs, i, id, name, fragments);
                }
            }
            evs.push((
                "content_block_stop".into(),
                json!({"type":"content_block_stop","index":i}),
            ));
        }
        let stop = self
            .stop_reason
            .clone()
            .unwrap_or_else(|| if any_tool { "tool_use" } else { "end_turn" }.to_owned());
        let output_tokens = self.output_tokens.unwrap_or(out_tokens.max(1));
        evs.push((
            "message_delta".into(),
            json!({"type":"message_delta","delta":{"stop_reason":stop,"stop_sequence":null},"usage":{"output_tokens":output_tokens}}),
        ));
        evs.push(("message_stop".into(), json!({"type":"message_stop"})));
        evs.into_iter().map(|(n, v)| (n, v.to_string())).collect()
    }

    fn chunks(&self, n: usize, request: &Value) -> Vec<Chunk> {
        let events = self.events(n, request);
        let mut out = Vec::new();
        let frame = |name: &str, data: &str| format!("event: {name}\ndata: {data}\n\n");
        for (i, (name, data)) in events.iter().enumerate() {
            if let Some((after, fault)) = &self.fault {
                if i == *after {
                    match fault {
                        Fault::Stall => out.push(Chunk::Stall),
                        Fault::ErrorEvent(t) => out.push(Chunk::Data(
                            frame(
                                "error",
                                &json!({"type":"error","error":{"type":t,"message":format!("injected {t}")}})
                                    .to_string(),
                            )
                            .into_bytes(),
                        )),
                        Fault::Truncate => {}
                        Fault::Corrupt => {
                            out.push(Chunk::Data(
                            b"event: content_block_delta\ndata: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"ty\n\n".to_vec(),
                        ))
                        }
                    }
                    break;
                }
            }
            out.push(Chunk::Data(frame(name, data).into_bytes()));
        }
        match self.chunk_bytes {
            None => out,
            Some(k) => out
                .into_iter()
                .flat_map(|c| match c {
                    Chunk::Data(s) => s
                        .chunks(k)
                        .map(|b| Chunk::Data(b.to_vec()))
                        .collect::<Vec<_>>(),
                    other => vec![other],
                })
                .collect(),
        }
    }

    /// The reply for request number `n` with body `request`.
    pub fn render(&self, n: usize, request: &Value) -> Reply {
        Reply::Stream {
            chunks: self.chunks(n, request),
            latency: self.latency,
        }
    }
}

fn push_tool(evs: &mut Vec<(String, Value)>, i: usize, id: &str, name: &str, frags: &[String]) {
    evs.push((
        "content_block_start".into(),
        json!({"type":"content_block_start","index":i,"content_block":{"type":"tool_use","id":id,"name":name,"input":{}}}),
    ));
    for f in frags {
        evs.push((
            "content_block_delta".into(),
            json!({"type":"content_block_delta","index":i,"delta":{"type":"input_json_delta","partial_json":f}}),
        ));
    }
}

/// Split into about `parts` pieces on char boundaries (at least one piece).
fn split_text(s: &str, parts: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    let size = chars.len().div_ceil(parts).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

impl From<Turn> for Reply {
    fn from(t: Turn) -> Self {
        Self::Turn(Box::new(t))
    }
}

/// What a script sees of a request.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    /// 0-based number of this request at this server.
    pub n: usize,
    /// The JSON body.
    pub body: Value,
}

impl RequestCtx {
    /// The request's messages.
    pub fn messages(&self) -> &[Value] {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The content blocks of the last message.
    pub fn last_blocks(&self) -> &[Value] {
        self.messages()
            .last()
            .and_then(|m| m.get("content"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// `tool_result` blocks of the last message.
    pub fn last_tool_results(&self) -> Vec<&Value> {
        self.last_blocks()
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            .collect()
    }

    /// Whether the last message ends with tool results.
    pub fn last_is_tool_result(&self) -> bool {
        !self.last_tool_results().is_empty()
    }

    /// How many `tool_use` blocks the conversation holds so far.
    pub fn tool_uses_so_far(&self) -> usize {
        self.messages()
            .iter()
            .filter_map(|m| m.get("content").and_then(Value::as_array))
            .flatten()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
            .count()
    }

    /// The text of the first user message ([`content_text`] of its
    /// content; empty when there is none).
    pub fn first_user_text(&self) -> String {
        self.messages()
            .iter()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .and_then(|m| m.get("content"))
            .map(content_text)
            .unwrap_or_default()
    }

    /// The text of the first of the last tool results ([`content_text`] of
    /// its content; empty when there is none).
    pub fn last_result_text(&self) -> String {
        self.last_tool_results()
            .first()
            .and_then(|r| r.get("content"))
            .map(content_text)
            .unwrap_or_default()
    }

    /// The text of the last user text block (or string content), if any.
    pub fn last_user_text(&self) -> Option<&str> {
        for m in self.messages().iter().rev() {
            if m.get("role").and_then(Value::as_str) != Some("user") {
                continue;
            }
            match m.get("content") {
                Some(Value::String(t)) => return Some(t),
                Some(Value::Array(c)) => {
                    if let Some(t) = c
                        .iter()
                        .rev()
                        .find(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                        .and_then(|b| b.get("text").and_then(Value::as_str))
                    {
                        return Some(t);
                    }
                }
                _ => {}
            }
        }
        None
    }
}

/// The text of a message's or a tool result's `content`: the string itself,
/// or the `text` of its blocks joined with a space.
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Resolves when stdin reaches its end (or cannot be read): the fake-model
/// binaries stop with the test process that spawned them.
pub async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let mut stdin = tokio::io::stdin();
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// What a fake-model binary does once `fake` is up: print `base_url=…`
/// (the line its parent waits for), serve until SIGTERM, Ctrl-C or stdin
/// closes, then say how many requests it served as `name`.
pub async fn serve_until_stopped(fake: &FakeModel, name: &str) -> std::io::Result<()> {
    println!("base_url={}", fake.base_url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        () = stdin_closed() => {}
    }
    eprintln!("{name}: served {} requests", fake.request_count());
    Ok(())
}

/// Decides the reply to each request.
pub trait Script: Send + Sync + 'static {
    /// The reply to this request.
    fn reply(&self, req: &RequestCtx) -> Reply;
}

impl<F> Script for F
where
    F: Fn(&RequestCtx) -> Reply + Send + Sync + 'static,
{
    fn reply(&self, req: &RequestCtx) -> Reply {
        self(req)
    }
}

/// Replies in order; after the last one, every request gets a 500
/// `api_error` "script exhausted" so an unexpected extra call is visible.
pub fn sequence(replies: Vec<Reply>) -> impl Script {
    let next = AtomicUsize::new(0);
    move |_: &RequestCtx| {
        let i = next.fetch_add(1, Ordering::SeqCst);
        replies
            .get(i)
            .cloned()
            .unwrap_or_else(|| Reply::error(500, "api_error", "fake model script exhausted"))
    }
}

/// A session of `calls` tool calls, then a final text: while the
/// conversation holds fewer than `calls` tool_use blocks, reply with the next
/// call `tool(k)` (k = 0-based call number, id `toolu_{k:04}`); then reply
/// `"done after {calls} tool calls"`. A function of the request alone, so a
/// harness that replays a request after a crash gets the same answer.
pub fn tool_loop(
    calls: usize,
    tool: impl Fn(usize) -> (String, Value) + Send + Sync + 'static,
) -> impl Script {
    move |req: &RequestCtx| {
        let k = req.tool_uses_so_far();
        if k < calls {
            let (name, input) = tool(k);
            Turn::new()
                .text(format!("step {k}"))
                .tool_use(format!("toolu_{k:04}"), name, input)
                .into()
        } else {
            Reply::text(format!("done after {calls} tool calls"))
        }
    }
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// 0-based number.
    pub n: usize,
    /// Request path.
    pub path: String,
    /// Headers (names lowercase).
    pub headers: Vec<(String, String)>,
    /// Body as JSON (`Null` if it was not JSON).
    pub body: Value,
    /// When it arrived.
    pub at: Instant,
}

impl RecordedRequest {
    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Shared {
    script: Box<dyn Script>,
    requests: Mutex<Vec<RecordedRequest>>,
    latency: Duration,
    validate: bool,
    counter: AtomicUsize,
    open_streams: AtomicUsize,
}

/// Builder for [`FakeModel`].
#[derive(Debug, Clone)]
pub struct FakeModelBuilder {
    latency: Duration,
    validate: bool,
    listen: SocketAddr,
}

impl FakeModelBuilder {
    /// Latency before the first byte of every streamed reply.
    pub fn latency(mut self, d: Duration) -> Self {
        self.latency = d;
        self
    }

    /// Turn off request validation (tool_use / tool_result pairing, roles).
    pub fn no_validation(mut self) -> Self {
        self.validate = false;
        self
    }

    /// Listen on this address instead of `127.0.0.1:0`. Tests must stay on
    /// loopback.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Bind `127.0.0.1:0` and start serving `script`.
    pub async fn start(self, script: impl Script) -> std::io::Result<FakeModel> {
        let listener = TcpListener::bind(self.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            script: Box::new(script),
            requests: Mutex::new(Vec::new()),
            latency: self.latency,
            validate: self.validate,
            counter: AtomicUsize::new(0),
            open_streams: AtomicUsize::new(0),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        let s = s.clone();
                        conns.spawn(async move {
                            let svc = service_fn(move |req| handle(s.clone(), req));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(FakeModel { addr, shared, task })
    }
}

/// A running fake Messages server. Dropping it stops it and closes every
/// connection (including stalled streams).
pub struct FakeModel {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeModel")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeModel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeModel {
    /// A builder with no latency and validation on.
    pub fn builder() -> FakeModelBuilder {
        FakeModelBuilder {
            latency: Duration::ZERO,
            validate: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    /// Start with defaults.
    pub async fn start(script: impl Script) -> std::io::Result<Self> {
        Self::builder().start(script).await
    }

    /// `http://127.0.0.1:PORT`, to use as the client's base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Number of requests received so far.
    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Streamed responses currently being written (a stalled one counts until
    /// the client hangs up).
    pub fn open_streams(&self) -> usize {
        self.shared.open_streams.load(Ordering::SeqCst)
    }

    /// Wait (bounded polling) until `n` requests arrived; false on timeout.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        testkit::try_eventually(&format!("{n} model requests"), timeout, || {
            self.request_count() >= n
        })
        .await
        .is_ok()
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn error_response(status: u16, error_type: &str, message: &str) -> Response<Body> {
    let body = json!({"type":"error","error":{"type":error_type,"message":message},"request_id":"req_fake"});
    full(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &[
            ("content-type".to_owned(), "application/json".to_owned()),
            ("request-id".to_owned(), "req_fake".to_owned()),
        ],
        body.to_string(),
    )
}

fn full(status: StatusCode, headers: &[(String, String)], body: String) -> Response<Body> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(Full::new(Bytes::from(body)).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let bytes = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let n = shared.counter.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut r) = shared.requests.lock() {
        r.push(RecordedRequest {
            n,
            path: path.clone(),
            headers: headers.clone(),
            body: body.clone(),
            at: Instant::now(),
        });
    }
    if method != http::Method::POST || path != "/v1/messages" {
        return Ok(error_response(404, "not_found_error", "not found"));
    }
    let has = |h: &str| headers.iter().any(|(k, v)| k == h && !v.is_empty());
    let bearer = headers.iter().any(|(k, v)| {
        k == "authorization" && v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ")
    });
    if !has("x-api-key") && !bearer {
        return Ok(error_response(
            401,
            "authentication_error",
            "x-api-key (or authorization: Bearer) header is required",
        ));
    }
    if !has("anthropic-version") {
        return Ok(error_response(
            400,
            "invalid_request_error",
            "anthropic-version header is required",
        ));
    }
    if shared.validate {
        if let Err(msg) = validate_request(&body) {
            return Ok(error_response(400, "invalid_request_error", &msg));
        }
    }
    let ctx = RequestCtx { n, body };
    let (chunks, latency) = match shared.script.reply(&ctx) {
        Reply::Turn(t) => (t.chunks(ctx.n, &ctx.body), t.latency),
        Reply::Stream { chunks, latency } => (chunks, latency),
        Reply::Http {
            status,
            headers,
            body,
        } => {
            return Ok(full(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                &headers,
                body,
            ))
        }
    };
    let latency = latency.unwrap_or(shared.latency);
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    let s = shared.clone();
    s.open_streams.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        struct Open(Arc<Shared>);
        impl Drop for Open {
            fn drop(&mut self) {
                self.0.open_streams.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _open = Open(s);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        for c in chunks {
            match c {
                Chunk::Data(d) => {
                    if tx.send(Bytes::from(d)).await.is_err() {
                        return;
                    }
                }
                Chunk::Sleep(d) => tokio::time::sleep(d).await,
                Chunk::Stall => {
                    tx.closed().await;
                    return;
                }
            }
        }
    });
    let stream = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|o| o.map(|b| Ok::<_, Infallible>(Frame::data(b))))
    });
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream; charset=utf-8")
        .header("cache-control", "no-cache")
        .header("request-id", format!("req_fake_{n:04}"))
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()));
    Ok(resp)
}

/// The request checks the real API makes that catch a wrongly rebuilt
/// conversation.
pub fn validate_request(body: &Value) -> Result<(), String> {
    if body.get("stream") != Some(&Value::Bool(true)) {
        return Err("stream: must be true for this fake".into());
    }
    if body
        .get("model")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err("model: field required".into());
    }
    if body.get("max_tokens").and_then(Value::as_u64).is_none() {
        return Err("max_tokens: field required".into());
    }
    let msgs = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("messages: field required")?;
    if msgs.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    let breakpoints = body.to_string().matches("\"cache_control\"").count();
    if breakpoints > 4 {
        return Err(format!(
            "a maximum of 4 blocks with cache_control may be provided. found {breakpoints}"
        ));
    }
    let mut seen_ids = HashSet::new();
    let mut prev_tool_ids: Vec<String> = Vec::new();
    let mut prev_role = "";
    for (i, m) in msgs.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if role != "user" && role != "assistant" {
            return Err(format!("messages.{i}.role: must be user or assistant"));
        }
        if i == 0 && role != "user" {
            return Err("messages: first message must use the \"user\" role".into());
        }
        if role == prev_role {
            return Err(format!(
                "messages.{i}: roles must alternate between \"user\" and \"assistant\""
            ));
        }
        // The API also takes a plain string as one text block.
        let as_list;
        let content = match m.get("content") {
            Some(Value::Array(a)) => a,
            Some(Value::String(t)) if !t.is_empty() => {
                as_list = vec![json!({"type": "text", "text": t})];
                &as_list
            }
            _ => {
                return Err(format!(
                    "messages.{i}.content: must be a list or a non-empty string"
                ))
            }
        };
        if content.is_empty() {
            return Err(format!(
                "messages.{i}: all messages must have non-empty content"
            ));
        }
        let ty = |b: &Value| {
            b.get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let results: Vec<String> = content
            .iter()
            .filter(|b| ty(b) == "tool_result")
            .map(|b| {
                b.get("tool_use_id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        if role == "user" {
            for id in &prev_tool_ids {
                if !results.contains(id) {
                    return Err(format!(
                        "messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: {id}"
                    ));
                }
            }
            for id in &results {
                if !prev_tool_ids.contains(id) {
                    return Err(format!(
                        "messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: {id}"
                    ));
                }
            }
            if !results.is_empty() {
                let first_non_result = content.iter().position(|b| ty(b) != "tool_result");
                if let Some(p) = first_non_result {
                    if content[p..].iter().any(|b| ty(b) == "tool_result") {
                        return Err(format!(
                            "messages.{i}.content: tool_result blocks must come first"
                        ));
                    }
                }
            }
            prev_tool_ids.clear();
        } else {
            if !results.is_empty() {
                return Err(format!(
                    "messages.{i}: tool_result blocks are only allowed in user messages"
                ));
            }
            prev_tool_ids = content
                .iter()
                .filter(|b| ty(b) == "tool_use")
                .map(|b| b.get("id").and_then(Value::as_str).unwrap_or("").to_owned())
                .collect();
            for id in &prev_tool_ids {
                if id.is_empty() || !seen_ids.insert(id.clone()) {
                    return Err(format!(
                        "messages.{i}: `tool_use` ids must be unique and non-empty: {id}"
                    ));
                }
            }
        }
        prev_role = if role == "user" { "user" } else { "assistant" };
    }
    if !prev_tool_ids.is_empty() && prev_role == "assistant" {
        // A trailing assistant message with tool_use is a prefill the API rejects.
        return Err(format!(
            "messages: `tool_use` ids were found without `tool_result` blocks immediately after: {}",
            prev_tool_ids.join(", ")
        ));
    }
    Ok(())
}
