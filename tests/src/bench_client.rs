//! A client of a real `control-plane serve`'s public API for the benchmarks
//! that drive the process from outside (bench-recovery, bench-sessions):
//! JSON calls, the event list, and SSE streams, over one pooled HTTP/1.1
//! client with `TCP_NODELAY`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use model::sse::SseDecoder;
use serde_json::{json, Value};

/// The public API of one control plane.
#[derive(Debug, Clone)]
pub struct PublicApi {
    base: String,
    key: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl PublicApi {
    /// A client of `addr` with API key `key`.
    pub fn new(addr: SocketAddr, key: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            base: format!("http://{addr}"),
            key: key.to_owned(),
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(2048)
                .build(connector),
        }
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<http::Request<Full<Bytes>>> {
        Ok(http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("x-api-key", &self.key)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(Full::new(
                body.map_or_else(Bytes::new, |v| Bytes::from(v.to_string())),
            ))?)
    }

    /// One call; the status and the JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let resp = tokio::time::timeout(
            Duration::from_secs(60),
            self.client
                .request(self.request(method, path, body.as_ref())?),
        )
        .await
        .with_context(|| format!("{method} {path}: no answer in 60 s"))??;
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

    /// An agent (model only, no tools), a self-hosted environment and a
    /// session of them; returns the session id.
    pub async fn agent_and_environment(&self, name: &str) -> Result<(String, String)> {
        let agent = self
            .post(
                "/v1/agents",
                json!({"name": name, "model": "claude-sonnet-4-5", "system": "bench"}),
            )
            .await?;
        let env = self
            .post(
                "/v1/environments",
                json!({"name": format!("{name}-{}", uuid::Uuid::new_v4().simple()),
                       "config": {"type": "self_hosted"}}),
            )
            .await?;
        let id = |v: &Value| {
            v["id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("no id in {v}"))
        };
        Ok((id(&agent)?, id(&env)?))
    }

    /// A session of `agent` in `environment`.
    pub async fn session(&self, agent: &str, environment: &str) -> Result<String> {
        let s = self
            .post(
                "/v1/sessions",
                json!({"agent": agent, "environment_id": environment}),
            )
            .await?;
        s["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no session id in {s}"))
    }

    /// `POST /v1/sessions/{id}/events` with one `user.message`.
    pub async fn user_message(&self, session_id: &str, text: &str) -> Result<()> {
        self.post(
            &format!("/v1/sessions/{session_id}/events"),
            json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": text}]}]}),
        )
        .await
        .map(|_| ())
    }

    /// Every event of a session in seq order.
    pub async fn events(&self, session_id: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let path = match &page {
                None => format!("/v1/sessions/{session_id}/events?limit=1000"),
                Some(p) => format!("/v1/sessions/{session_id}/events?limit=1000&page={p}"),
            };
            let (s, v) = self.call("GET", &path, None).await?;
            if s != 200 {
                bail!("GET {path}: {s} {v}");
            }
            out.extend(v["data"].as_array().cloned().unwrap_or_default());
            match v["next_page"].as_str() {
                Some(p) => page = Some(p.to_owned()),
                None => return Ok(out),
            }
        }
    }

    /// The session's SSE stream of events after `after` (0: from the start).
    pub async fn stream(&self, session_id: &str, after: u64) -> Result<EventStream> {
        let mut req = self.request(
            "GET",
            &format!("/v1/sessions/{session_id}/events/stream?after={after}"),
            None,
        )?;
        req.headers_mut().insert(
            "accept",
            http::HeaderValue::from_static("text/event-stream"),
        );
        let resp = self.client.request(req).await?;
        if resp.status() != 200 {
            bail!("stream of {session_id}: {}", resp.status());
        }
        Ok(EventStream {
            body: resp.into_body(),
            decoder: SseDecoder::new(64 * 1024 * 1024),
            ready: VecDeque::new(),
        })
    }
}

/// An open SSE stream.
#[derive(Debug)]
pub struct EventStream {
    body: Incoming,
    decoder: SseDecoder,
    ready: VecDeque<model::sse::SseEvent>,
}

impl EventStream {
    /// The next event that is not a ping: its `event:` name and JSON data;
    /// `None` when the stream ended.
    pub async fn next(&mut self, limit: Duration) -> Result<Option<(String, Value)>> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                let name = e.event.unwrap_or_default();
                if name == "ping" {
                    continue;
                }
                return Ok(Some((
                    name,
                    serde_json::from_str(&e.data).context("sse data")?,
                )));
            }
            let frame = tokio::time::timeout(limit, self.body.frame())
                .await
                .context("no SSE frame in time")?;
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
}
