//! Shared by the `e2e_*` and `recovery_*` tests: a whole deployment of real
//! processes (`control-plane serve` with the harness pointed at the scripted
//! fake model, an enrolled `sandbox-agent run` driving real Docker
//! sandboxes), a small HTTP client for the public API (JSON and SSE), and
//! readers of the evidence a test checks against: the session log through
//! the API, the agent's execution record and the sandbox's files.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use airlock_tests::deploy::{tail, Agent, AgentOptions, ControlPlane, CpOptions};
use airlock_tests::fake_model::{Reply, RequestCtx, Turn};
use airlock_tests::sandbox::{remove_agent_containers, test_image};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// `[model]` and `[harness]` for a test control plane: the fake model,
/// short leases, quick retries and scans, so recovery takes seconds.
pub fn runtime_toml(model_base_url: &str, lease_ttl_seconds: f64) -> String {
    format!(
        "\n[model]\nbase_url = \"{model_base_url}\"\napi_key = \"test-key\"\nrequest_timeout_seconds = 10\nstream_idle_timeout_seconds = 10\n\
         \n[harness]\nlease_ttl_seconds = {lease_ttl_seconds}\nprovisioning = \"lazy\"\n\
         \n[harness.retry]\nmax_attempts = 12\ninitial_backoff_seconds = 0.1\nmax_backoff_seconds = 1\n\
         \n[harness.supervisor]\nrecovery_scan_interval_seconds = 0.2\nbusy_retry_interval_seconds = 0.1\n"
    )
}

/// The public API, as any HTTP client sees it.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    key: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    /// A client of `addr` authenticating with `key`.
    pub fn new(addr: std::net::SocketAddr, key: &str) -> Self {
        Self {
            base: format!("http://{addr}"),
            key: key.to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<hyper::Response<Incoming>> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("x-api-key", &self.key)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let resp = tokio::time::timeout(
            Duration::from_secs(30),
            self.client.request(req.body(Full::new(body))?),
        )
        .await
        .with_context(|| format!("{method} {path}: no response within 30 s"))?
        .with_context(|| format!("{method} {path}"))?;
        Ok(resp)
    }

    /// One request; the status and the JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let resp = self.send(method, path, body.as_ref(), &[]).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
        Ok((status, v))
    }

    /// POST expecting 2xx.
    pub async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let (s, v) = self.call("POST", path, Some(body)).await?;
        if !(200..300).contains(&s) {
            bail!("POST {path}: {s} {v}");
        }
        Ok(v)
    }

    /// GET expecting 2xx.
    pub async fn get(&self, path: &str) -> Result<Value> {
        let (s, v) = self.call("GET", path, None).await?;
        if !(200..300).contains(&s) {
            bail!("GET {path}: {s} {v}");
        }
        Ok(v)
    }

    /// Every event of a session, in seq order (all pages).
    pub async fn events(&self, session_id: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let path = match &page {
                None => format!("/v1/sessions/{session_id}/events?limit=1000"),
                Some(p) => format!("/v1/sessions/{session_id}/events?limit=1000&page={p}"),
            };
            let v = self.get(&path).await?;
            out.extend(v["data"].as_array().cloned().unwrap_or_default());
            match v["next_page"].as_str() {
                Some(p) => page = Some(p.to_owned()),
                None => return Ok(out),
            }
        }
    }

    /// The session's SSE stream from the start (`after=0`).
    pub async fn stream(&self, session_id: &str) -> Result<Sse> {
        let resp = self
            .send(
                "GET",
                &format!("/v1/sessions/{session_id}/events/stream?after=0"),
                None,
                &[("accept", "text/event-stream")],
            )
            .await?;
        if resp.status() != 200 {
            bail!("stream: status {}", resp.status());
        }
        Ok(Sse {
            body: resp.into_body(),
            buf: Vec::new(),
        })
    }

    /// Create an agent with the toolset (every tool `always_allow`).
    pub async fn create_agent(&self, name: &str) -> Result<String> {
        let v = self
            .post(
                "/v1/agents",
                json!({
                    "name": name,
                    "model": "claude-sonnet-4-5",
                    "system": "You are a test agent.",
                    "tools": [{"type": "agent_toolset_20260401",
                               "default_config": {"permission_policy": {"type": "always_allow"}}}],
                }),
            )
            .await?;
        Ok(v["id"]
            .as_str()
            .ok_or_else(|| anyhow!("agent id in {v}"))?
            .to_owned())
    }

    /// Create a self-hosted environment.
    pub async fn create_environment(&self, name: &str) -> Result<String> {
        let v = self
            .post(
                "/v1/environments",
                json!({"name": name, "config": {"type": "self_hosted"}}),
            )
            .await?;
        Ok(v["id"]
            .as_str()
            .ok_or_else(|| anyhow!("environment id in {v}"))?
            .to_owned())
    }

    /// Create a session of `agent_id` in `environment_id`.
    pub async fn create_session(&self, agent_id: &str, environment_id: &str) -> Result<String> {
        let v = self
            .post(
                "/v1/sessions",
                json!({"agent": agent_id, "environment_id": environment_id, "title": "e2e"}),
            )
            .await?;
        Ok(v["id"]
            .as_str()
            .ok_or_else(|| anyhow!("session id in {v}"))?
            .to_owned())
    }

    /// Send one `user.message`.
    pub async fn user_message(&self, session_id: &str, text: &str) -> Result<()> {
        self.post(
            &format!("/v1/sessions/{session_id}/events"),
            json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": text}]}]}),
        )
        .await
        .map(|_| ())
    }

    /// Poll until the session is idle and its log ends the turn with
    /// `end_turn`; returns the events.
    pub async fn wait_end_turn(&self, session_id: &str, limit: Duration) -> Result<Vec<Value>> {
        let what = format!("session {session_id} to end its turn");
        let ended = testkit::try_eventually_async(&what, limit, || async move {
            // The API may be down for a moment (a restarting control plane).
            let events = self.events(session_id).await.ok()?;
            let last = events.iter().rev().find(|e| {
                e["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("session.status"))
            })?;
            if last["type"] != "session.status_idle" {
                return None;
            }
            let reason = &last["stop_reason"]["type"];
            if reason == "end_turn" {
                return Some(Ok(events));
            }
            if reason != "requires_action" {
                return Some(Err(anyhow!(
                    "session {session_id} went idle with {}: {}",
                    last["stop_reason"],
                    summary(&events)
                )));
            }
            None
        })
        .await;
        match ended {
            Ok(outcome) => outcome,
            Err(_) => {
                let events = self.events(session_id).await.unwrap_or_default();
                bail!(
                    "session {session_id} did not end its turn within {limit:?}: {}",
                    summary(&events)
                );
            }
        }
    }
}

/// An SSE stream being read.
#[derive(Debug)]
pub struct Sse {
    body: Incoming,
    buf: Vec<u8>,
}

/// One SSE event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// `event:` name.
    pub event: String,
    /// `id:` if any.
    pub id: Option<String>,
    /// `data:` parsed as JSON.
    pub data: Value,
}

impl Sse {
    /// The next event (pings included), or `None` at the end of the stream.
    pub async fn next(&mut self, limit: Duration) -> Result<Option<SseEvent>> {
        let until = tokio::time::Instant::now() + limit;
        loop {
            if let Some(end) = find(&self.buf, b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&raw);
                let (mut event, mut id, mut data) = (String::from("message"), None, String::new());
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() && id.is_none() && event == "message" {
                    continue; // a comment or keep-alive
                }
                let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Ok(Some(SseEvent { event, id, data }));
            }
            match tokio::time::timeout_at(until, self.body.frame()).await {
                Err(_) => bail!("no SSE event within {limit:?}"),
                Ok(None) => return Ok(None),
                Ok(Some(frame)) => {
                    if let Ok(d) = frame?.into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
            }
        }
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// A model script whose first turn runs `echo sandbox-ready` in the
/// sandbox (so the session's sandbox exists and is ready) and whose next
/// turn ends with "done".
pub fn one_ready_call(req: &RequestCtx) -> Reply {
    match req.tool_uses_so_far() {
        0 => Turn::new()
            .tool_use(
                "toolu_ready",
                "bash",
                json!({"command": "echo sandbox-ready"}),
            )
            .into(),
        _ => Reply::text("done"),
    }
}

/// `type` of every event, compactly (for failure messages).
pub fn summary(events: &[Value]) -> String {
    let tail: Vec<String> = events
        .iter()
        .rev()
        .take(30)
        .rev()
        .map(|e| {
            let t = e["type"].as_str().unwrap_or("?");
            match t {
                "session.status_idle" => format!(
                    "{}#{}({})",
                    t,
                    e["seq"],
                    e["stop_reason"]["type"].as_str().unwrap_or("")
                ),
                "session.error" => format!(
                    "{}#{}({})",
                    t,
                    e["seq"],
                    e["error"]["message"].as_str().unwrap_or("")
                ),
                "agent.tool_result" => format!("{}#{}(err={})", t, e["seq"], e["is_error"]),
                _ => format!("{}#{}", t, e["seq"]),
            }
        })
        .collect();
    format!("{} events, last: {}", events.len(), tail.join(" "))
}

/// The text of a tool result's (or any event's) content blocks.
pub fn content_text(v: &Value) -> String {
    match &v["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// The log's invariants: seqs 1..=n without a gap, ids unique.
pub fn check_seqs_and_ids(events: &[Value]) {
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    let want: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(seqs, want, "seqs are gap-free from 1");
    let mut ids = std::collections::HashSet::new();
    for e in events {
        let id = e["id"].as_str().expect("id");
        assert!(ids.insert(id.to_owned()), "event id {id} appears twice");
    }
}

/// Every `agent.tool_use` has exactly one `agent.tool_result`, after it.
/// Returns the tool uses in log order.
pub fn check_tool_pairs(events: &[Value]) -> Vec<Value> {
    let mut uses = Vec::new();
    let mut pos: HashMap<String, usize> = HashMap::new();
    let mut results: HashMap<String, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        match e["type"].as_str() {
            Some("agent.tool_use") => {
                pos.insert(e["id"].as_str().unwrap().to_owned(), i);
                uses.push(e.clone());
            }
            Some("agent.tool_result") => {
                let id = e["tool_use_id"].as_str().expect("tool_use_id").to_owned();
                let at = *pos.get(&id).unwrap_or_else(|| {
                    panic!(
                        "result at seq {} answers no earlier tool_use ({id})",
                        e["seq"]
                    )
                });
                assert!(at < i);
                *results.entry(id).or_default() += 1;
            }
            _ => {}
        }
    }
    for u in &uses {
        let id = u["id"].as_str().unwrap();
        assert_eq!(
            results.get(id).copied().unwrap_or(0),
            1,
            "tool_use {id} (seq {}) has exactly one result",
            u["seq"]
        );
    }
    uses
}

/// The result event of each tool use, by tool_use id.
pub fn results_by_use(events: &[Value]) -> HashMap<String, Value> {
    events
        .iter()
        .filter(|e| e["type"] == "agent.tool_result")
        .map(|e| (e["tool_use_id"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

/// One line of the agent's execution record.
#[derive(Debug, Clone)]
pub struct RecordLine {
    /// `start`, `done` or `unknown`.
    pub t: String,
    /// tool_use id.
    pub id: String,
    /// Sandbox.
    pub sandbox_id: String,
}

/// Removes an agent's containers even if the test fails.
#[derive(Debug)]
pub struct ContainerCleanup(pub String);

impl Drop for ContainerCleanup {
    fn drop(&mut self) {
        remove_agent_containers(&self.0);
    }
}

/// An enrolled agent whose sandboxes use the test image and the real executor.
pub struct SandboxAgent {
    /// The agent process.
    pub agent: Agent,
    /// Removes its containers on drop (declared after `agent`, so the
    /// process is killed before its containers are removed).
    _cleanup: ContainerCleanup,
}

impl std::fmt::Debug for SandboxAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxAgent")
            .field("agent_id", &self.agent.agent_id())
            .finish()
    }
}

impl SandboxAgent {
    /// Enroll with `cp` for `environment_id`, point `[sandbox]` at the test
    /// image, run, and wait until it is connected.
    pub fn start(cp: &ControlPlane, environment_id: &str) -> Result<Self> {
        let image = test_image();
        let join = cp.join_string(environment_id)?;
        let agent = Agent::enroll(cp, &join, AgentOptions::default())?;
        let cleanup = ContainerCleanup(agent.agent_id().to_owned());
        let config = std::fs::read_to_string(agent.config_path())?;
        let out = airlock_tests::sandbox::sandbox_ready_agent_config(&config, &image);
        std::fs::write(agent.config_path(), out)?;
        let mut me = Self {
            agent,
            _cleanup: cleanup,
        };
        me.agent.run()?;
        cp.wait_connected(me.agent.agent_id(), Duration::from_secs(60))
            .with_context(|| format!("agent log:\n{}", tail(&me.agent.log(), 40)))?;
        Ok(me)
    }

    /// The agent id.
    pub fn id(&self) -> &str {
        self.agent.agent_id()
    }

    /// The agent's data dir (record, audit log, assignments).
    pub fn data_dir(&self) -> PathBuf {
        self.agent
            .identity_dir()
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default()
    }

    /// The execution record, line by line.
    pub fn record(&self) -> Vec<RecordLine> {
        let text =
            std::fs::read_to_string(self.data_dir().join("executions.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| RecordLine {
                t: v["t"].as_str().unwrap_or_default().to_owned(),
                id: v["id"].as_str().unwrap_or_default().to_owned(),
                sandbox_id: v["sandbox_id"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    }

    /// The audit log, one JSON object per call: the `start` lines written
    /// before a call runs are left out (each such call also has its `end`).
    pub fn audit(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.data_dir().join("audit.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["phase"] != "start")
            .collect()
    }

    /// Sandbox ids of this agent's live containers.
    pub fn sandboxes(&self) -> Vec<String> {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "--filter",
                &format!("label=airlock.agent_id={}", self.id()),
                "--format",
                "{{.Label \"airlock.sandbox_id\"}}",
            ])
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

/// A file inside a sandbox, read with `docker exec` (outside Airlock).
pub fn sandbox_file(sandbox_id: &str, path: &str) -> Result<String> {
    let out = std::process::Command::new("docker")
        .args(["exec", &format!("airlock-{sandbox_id}"), "cat", path])
        .output()?;
    if !out.status.success() {
        bail!(
            "docker exec cat {path} in {sandbox_id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A control plane running the harness against `model_base_url`, with an
/// API key and a self-hosted environment created through the API.
pub struct Deployment {
    /// The control plane (a process; restartable on the same data dir).
    pub cp: ControlPlane,
    /// API client.
    pub api: Api,
    /// The API key.
    pub api_key: String,
    /// The environment created for the test.
    pub environment_id: String,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("environment_id", &self.environment_id)
            .finish()
    }
}

/// An API key named `name`, created with `cp`'s CLI (started or not).
pub fn create_api_key(cp: &ControlPlane, name: &str) -> Result<String> {
    let out = cp.cli(&["api-keys", "create", "--name", name, "--json"])?;
    let key: Value = serde_json::from_str(out.trim())?;
    Ok(key["key"]
        .as_str()
        .ok_or_else(|| anyhow!("no key in {key}"))?
        .to_owned())
}

/// Start the replicas `cps` (configured, sharing one catalog) with one API
/// key created at the first; an API client for each, once every one answers.
pub async fn start_replicas(cps: &mut [&mut ControlPlane], key_name: &str) -> Result<Vec<Api>> {
    let first = cps.first().ok_or_else(|| anyhow!("no replica"))?;
    let key = create_api_key(first, key_name)?;
    for cp in cps.iter_mut() {
        cp.start()?;
    }
    let apis: Vec<Api> = cps.iter().map(|cp| Api::new(cp.api_addr(), &key)).collect();
    for api in &apis {
        wait_api(api, Duration::from_secs(30)).await?;
    }
    Ok(apis)
}

impl Deployment {
    /// Configure and start with `extra_toml` (typically [`runtime_toml`]).
    pub async fn start(extra_toml: String) -> Result<Self> {
        let mut cp = ControlPlane::configure(CpOptions {
            extra_toml,
            ..CpOptions::default()
        })?;
        let api_key = create_api_key(&cp, "e2e")?;
        cp.start()?;
        let api = Api::new(cp.api_addr(), &api_key);
        wait_api(&api, Duration::from_secs(30)).await?;
        let environment_id = api
            .create_environment(&format!("env-{}", std::process::id()))
            .await?;
        Ok(Self {
            cp,
            api,
            api_key,
            environment_id,
        })
    }
}

/// Wait until the API answers (after a start or restart).
pub async fn wait_api(api: &Api, limit: Duration) -> Result<()> {
    testkit::try_eventually_async("the API to answer", limit, || async move {
        matches!(
            api.call("GET", "/v1/agents?limit=1", None).await,
            Ok((200, _))
        )
    })
    .await
    .map_err(|_| anyhow!("API did not answer within {limit:?}"))
}

/// A small deterministic PRNG (xorshift64*), seeded per run; the seed is
/// printed so a failing schedule can be replayed with `AIRLOCK_TEST_SEED`.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// From `AIRLOCK_TEST_SEED` or the clock; prints the seed.
    pub fn from_env(test: &str) -> Self {
        let seed = std::env::var("AIRLOCK_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{test}: seed {seed} (replay with AIRLOCK_TEST_SEED={seed})");
        Self(seed.max(1))
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}
