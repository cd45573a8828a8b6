//! The public API and the harness in one process, over real loopback
//! sockets: the `api` router served on 127.0.0.1, a real SQLite catalog and
//! session store in a temp dir, the harness supervisor notified by the API,
//! the model client talking to the scripted fake Messages server, and a
//! [`Hands`] given by the caller. A small HTTP/1 client speaks to the API
//! like any client would (JSON requests, SSE streams with resume).
//!
//! This is the API ↔ harness contract without the tunnel and sandboxes
//! (those are `control-plane serve` plus enrolled agents, see `deploy`).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use catalog::{Catalog, GeneratedKey, NewApiKey, SqliteCatalog};
use harness::{
    Disposition, Hands, HandsError, Harness, HarnessConfig, ProvisionSpec, RawHarnessConfig,
    SandboxRef, Supervisor, ToolCall, ToolOutput,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use model::sse::SseDecoder;
use serde_json::{json, Value};
use session_store::{SessionStore, SqliteOptions, SqliteStore};
use tokio_util::sync::CancellationToken;

use crate::fake_model::{FakeModel, Script};

/// Tools in memory: `write`/`read`/`edit` on a per-sandbox file map, `bash`
/// echoes its command. Records every executed call, so a test can prove a
/// denied call never ran.
#[derive(Debug, Default)]
pub struct MemoryHands {
    files: Mutex<HashMap<(String, String), String>>,
    executed: Mutex<Vec<ToolCall>>,
}

impl MemoryHands {
    /// Every call executed so far.
    pub fn executed(&self) -> Vec<ToolCall> {
        self.executed.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

fn text(t: impl Into<String>, is_error: bool) -> ToolOutput {
    ToolOutput {
        content: vec![json!({"type": "text", "text": t.into()})],
        is_error,
        disposition: Disposition::Ran,
    }
}

#[async_trait::async_trait]
impl Hands for MemoryHands {
    async fn provision(&self, spec: &ProvisionSpec) -> Result<SandboxRef, HandsError> {
        Ok(SandboxRef {
            sandbox_id: format!("sbx_{}", spec.session_id),
            ..Default::default()
        })
    }

    async fn execute(
        &self,
        sandbox: &SandboxRef,
        call: &ToolCall,
    ) -> Result<ToolOutput, HandsError> {
        if let Ok(mut e) = self.executed.lock() {
            e.push(call.clone());
        }
        let arg = |k: &str| {
            call.input
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let mut files = self.files.lock().map_err(|_| HandsError::Unavailable {
            session_id: sandbox.sandbox_id.clone(),
            message: "poisoned".into(),
        })?;
        let key = (sandbox.sandbox_id.clone(), arg("file_path"));
        Ok(match call.name.as_str() {
            "write" => {
                files.insert(key, arg("content"));
                text("written", false)
            }
            "read" => match files.get(&key) {
                Some(c) => text(c.clone(), false),
                None => text(format!("{}: no such file", key.1), true),
            },
            "bash" => text(format!("ran: {}", arg("command")), false),
            other => text(format!("{other} is not available here"), true),
        })
    }
}

/// One SSE event as a client sees it.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// `event:`.
    pub event: String,
    /// `id:` (the seq), absent on processed echoes and pings.
    pub id: Option<u64>,
    /// `data:` as JSON.
    pub data: Value,
}

/// An open SSE response, decoded by the workspace's one SSE decoder
/// (`model::sse`: characters split across reads stay whole, events over
/// the cap are an error).
#[derive(Debug)]
pub struct SseClient {
    body: Incoming,
    decoder: SseDecoder,
    ready: VecDeque<model::sse::SseEvent>,
}

/// The largest event the test client accepts.
const MAX_SSE_EVENT_BYTES: usize = 64 * 1024 * 1024;

impl SseClient {
    /// The next event (pings included); `None` when the stream ended.
    pub async fn next(&mut self, limit: Duration) -> Result<Option<SseEvent>> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Ok(Some(SseEvent {
                    event: e.event.unwrap_or_default(),
                    id: e.id.map(|i| i.parse()).transpose().context("sse id")?,
                    data: serde_json::from_str(&e.data).context("sse data")?,
                }));
            }
            let frame = tokio::time::timeout(limit, self.body.frame())
                .await
                .context("timed out waiting for an SSE frame")?;
            match frame {
                None => return Ok(None),
                Some(f) => {
                    if let Ok(data) = f?.into_data() {
                        self.ready.extend(self.decoder.push(&data)?);
                    }
                }
            }
        }
    }

    /// The next event that is not a ping.
    pub async fn next_event(&mut self, limit: Duration) -> Result<Option<SseEvent>> {
        loop {
            match self.next(limit).await? {
                Some(e) if e.event == "ping" => continue,
                other => return Ok(other),
            }
        }
    }
}

/// The API, the harness and the fake model, running.
#[derive(Debug)]
pub struct ApiStack {
    /// Where the API listens.
    pub addr: SocketAddr,
    /// An API key.
    pub key: String,
    /// The session store (shared by the API and the harness).
    pub store: Arc<dyn SessionStore>,
    /// The catalog.
    pub catalog: Arc<dyn Catalog>,
    /// The fake model.
    pub fake: FakeModel,
    supervisor: Option<Supervisor>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    _dir: tempfile::TempDir,
}

impl ApiStack {
    /// Starts everything; the model answers from `script`, tools run on `hands`.
    pub async fn start(script: impl Script, hands: Arc<dyn Hands>) -> Result<Self> {
        Self::start_opts(script, Some(hands)).await
    }

    /// The API and the stores without a harness (`hands: None`): user
    /// events stay queued. The baseline of the API benchmark.
    pub async fn start_opts(script: impl Script, hands: Option<Arc<dyn Hands>>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("airlock-api-stack-")
            .tempdir()?;
        let catalog: Arc<dyn Catalog> = Arc::new(SqliteCatalog::open_in_dir(dir.path()).await?);
        let store: Arc<dyn SessionStore> =
            Arc::new(SqliteStore::open_in_dir(dir.path(), SqliteOptions::default()).await?);
        let key = GeneratedKey::generate();
        catalog
            .create_api_key(NewApiKey {
                id: "key_stack".into(),
                name: "stack".into(),
                key_hash: key.key_hash.clone(),
                hint: key.hint.clone(),
            })
            .await?;
        let fake = FakeModel::start(script).await?;
        let mut mc = model::AnthropicConfig::new(fake.base_url(), model::ApiKey::new("sk-fake"));
        mc.request_timeout = Duration::from_secs(60);
        let provider = Arc::new(model::AnthropicProvider::new(mc)?);
        let (supervisor, runner): (Option<Supervisor>, Arc<dyn api::SessionRunner>) = match hands {
            Some(hands) => {
                let raw: RawHarnessConfig = toml::from_str("instance_id = \"api-stack\"\n")?;
                let harness = Harness::new(
                    store.clone(),
                    provider,
                    hands,
                    HarnessConfig::from_raw(raw)?,
                );
                let supervisor = Supervisor::start(harness);
                let notify = supervisor.clone();
                (
                    Some(supervisor),
                    Arc::new(api::FnRunner(move |id: &str| notify.notify(id))),
                )
            }
            None => (None, Arc::new(api::NoRunner)),
        };
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = api::ApiState {
            store: store.clone(),
            catalog: catalog.clone(),
            runner,
            relay: Arc::new(api::NoBridgeRelay),
            limits: api::ApiLimits {
                sse_ping_interval: Duration::from_secs(1),
                ..api::ApiLimits::default()
            },
            shutdown: shutdown.clone(),
        };
        let server = tokio::spawn(async move {
            if let Err(e) = api::serve(listener, state).await {
                eprintln!("api server failed: {e}");
            }
        });
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(ApiStack {
            addr,
            key: key.plaintext,
            store,
            catalog,
            fake,
            supervisor,
            shutdown,
            server,
            client,
            _dir: dir,
        })
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<http::Request<Full<Bytes>>> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("x-api-key", &self.key)
            .header("anthropic-beta", "managed-agents-2026-04-01");
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        Ok(b.body(Full::new(
            body.map_or_else(Bytes::new, |v| Bytes::from(v.to_string())),
        ))?)
    }

    /// A JSON request; returns the status and the JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let resp = self
            .client
            .request(self.request(method, path, body.as_ref())?)
            .await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, serde_json::from_slice(&bytes)?))
    }

    /// POST expecting 200.
    pub async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let (status, v) = self.call("POST", path, Some(body)).await?;
        if status != 200 {
            bail!("POST {path}: {status} {v}");
        }
        Ok(v)
    }

    /// `POST /v1/sessions/{id}/events` with `body` (`{"events": [...]}`),
    /// expecting 200.
    pub async fn post_events(&self, session_id: &str, body: Value) -> Result<Value> {
        self.post(&format!("/v1/sessions/{session_id}/events"), body)
            .await
    }

    /// GET expecting 200.
    pub async fn get(&self, path: &str) -> Result<Value> {
        let (status, v) = self.call("GET", path, None).await?;
        if status != 200 {
            bail!("GET {path}: {status} {v}");
        }
        Ok(v)
    }

    /// Opens `GET /v1/sessions/{id}/events/stream` (`after`: resume point).
    pub async fn stream(&self, session_id: &str, last_event_id: Option<u64>) -> Result<SseClient> {
        let mut req = self.request(
            "GET",
            &format!("/v1/sessions/{session_id}/events/stream"),
            None,
        )?;
        if let Some(id) = last_event_id {
            req.headers_mut()
                .insert("last-event-id", id.to_string().parse()?);
        }
        let resp = self.client.request(req).await?;
        if resp.status() != 200 {
            bail!("stream: {}", resp.status());
        }
        Ok(SseClient {
            body: resp.into_body(),
            decoder: SseDecoder::new(MAX_SSE_EVENT_BYTES),
            ready: VecDeque::new(),
        })
    }

    /// An agent, an environment and a session of it; returns the session id.
    pub async fn session(&self, tools: Value) -> Result<String> {
        let agent = self
            .post(
                "/v1/agents",
                json!({"name": "a", "model": "claude-fake", "tools": tools}),
            )
            .await?;
        let env = self
            .post(
                "/v1/environments",
                json!({"name": format!("e-{}", uuid::Uuid::new_v4().simple())}),
            )
            .await?;
        let s = self
            .post(
                "/v1/sessions",
                json!({"agent": agent["id"], "environment_id": env["id"]}),
            )
            .await?;
        Ok(s["id"].as_str().context("session id")?.to_owned())
    }

    /// Stops the API and the harness.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.server.await;
        if let Some(s) = self.supervisor {
            s.shutdown(Duration::from_secs(5)).await;
        }
    }
}
