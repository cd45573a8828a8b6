//! Shared test support: a router over a real SQLite catalog and session
//! store in a temp dir, an API key, a recording runner, and validation of
//! every JSON response against `api/openapi.yaml`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::{
    ApiLimits, ApiState, RelayError, RelayTarget, SecretFields, SecretRelay, SecretValue,
    SessionRunner, SessionTokenTarget,
};
use axum::body::Body;
use axum::Router;
use catalog::{Catalog, GeneratedKey, NewApiKey, SqliteCatalog};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use session_store::{SessionStore, SqliteOptions, SqliteStore};
use tower::ServiceExt;

/// Records every notify.
#[derive(Debug, Default)]
pub struct Recorder(pub Mutex<Vec<String>>);

impl SessionRunner for Recorder {
    fn notify(&self, session_id: &str) {
        self.0.lock().unwrap().push(session_id.to_owned());
    }
}

/// What a relay was given: the target and its (field, value) pairs.
pub type RelayedPut = (RelayTarget, Vec<(String, String)>);

/// A relay that records what it was given (field names and values) and
/// accepts, or refuses like a missing bridge when `refuse` is set.
#[derive(Debug, Default)]
pub struct RecordingRelay {
    pub refuse: std::sync::atomic::AtomicBool,
    /// (target, [(field, value)]) of every accepted or refused put.
    pub puts: Mutex<Vec<RelayedPut>>,
    pub forgets: Mutex<Vec<RelayTarget>>,
    /// (target, token) of every accepted or refused session token put.
    pub session_tokens: Mutex<Vec<(SessionTokenTarget, String)>>,
    pub session_forgets: Mutex<Vec<SessionTokenTarget>>,
    /// What `validate_mcp` answers: `None` is "no bridge connected".
    pub validation: Mutex<Option<protocol::mcp::McpValidation>>,
    /// (target, stored credential body) of every `validate_mcp`.
    pub validations: Mutex<Vec<(RelayTarget, Value)>>,
}

#[async_trait::async_trait]
impl SecretRelay for RecordingRelay {
    async fn put(&self, target: &RelayTarget, fields: &SecretFields) -> Result<(), RelayError> {
        let values = fields
            .names()
            .into_iter()
            .map(|n| (n.to_owned(), fields.get(n).unwrap().expose().to_owned()))
            .collect();
        self.puts.lock().unwrap().push((target.clone(), values));
        if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(RelayError::NoBridge {
                environment_id: target.environment_id.clone(),
            });
        }
        Ok(())
    }

    async fn forget(&self, target: &RelayTarget) -> Result<(), RelayError> {
        self.forgets.lock().unwrap().push(target.clone());
        Ok(())
    }

    async fn put_session_token(
        &self,
        target: &SessionTokenTarget,
        token: &SecretValue,
    ) -> Result<(), RelayError> {
        self.session_tokens
            .lock()
            .unwrap()
            .push((target.clone(), token.expose().to_owned()));
        if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(RelayError::NoBridge {
                environment_id: target.environment_id.clone(),
            });
        }
        Ok(())
    }

    async fn forget_session_token(&self, target: &SessionTokenTarget) -> Result<(), RelayError> {
        self.session_forgets.lock().unwrap().push(target.clone());
        Ok(())
    }

    async fn validate_mcp(
        &self,
        target: &RelayTarget,
        stored: &Value,
    ) -> Result<protocol::mcp::McpValidation, RelayError> {
        self.validations
            .lock()
            .unwrap()
            .push((target.clone(), stored.clone()));
        self.validation
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| RelayError::NoBridge {
                environment_id: target.environment_id.clone(),
            })
    }
}

/// The OpenAPI document and response validation.
pub struct Spec {
    doc: Value,
}

fn rewrite_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref") {
                *r = r.replace("#/components/schemas/", "#/$defs/");
            }
            for x in m.values_mut() {
                rewrite_refs(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

impl Spec {
    pub fn load() -> Spec {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
        let doc: Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(doc["openapi"], json!("3.1.0"));
        Spec { doc }
    }

    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// The path template of the spec matching a concrete path.
    pub fn template(&self, path: &str) -> Option<String> {
        let segs: Vec<&str> = path.split('/').collect();
        self.doc["paths"]
            .as_object()?
            .keys()
            .find(|t| {
                let ts: Vec<&str> = t.split('/').collect();
                ts.len() == segs.len()
                    && ts
                        .iter()
                        .zip(&segs)
                        .all(|(t, s)| t.starts_with('{') || t == s)
            })
            .cloned()
    }

    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let ptr = r.trim_start_matches('#');
                self.resolve(
                    self.doc
                        .pointer(ptr)
                        .unwrap_or_else(|| panic!("dangling $ref {r}")),
                )
            }
            None => v,
        }
    }

    /// A validator for the named component schema.
    pub fn validator(&self, schema_ref: &Value) -> jsonschema::Validator {
        let mut defs = self.doc["components"]["schemas"].clone();
        rewrite_refs(&mut defs);
        let mut root = schema_ref.clone();
        rewrite_refs(&mut root);
        let mut schema =
            json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": defs});
        for (k, v) in root.as_object().unwrap() {
            schema[k] = v.clone();
        }
        jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|e| panic!("schema does not compile: {e}"))
    }

    /// The response schema of `method path` for `status`.
    pub fn response_schema(&self, method: &Method, path: &str, status: StatusCode) -> Value {
        let template = self
            .template(path)
            .unwrap_or_else(|| panic!("{path} is not in openapi.yaml"));
        let op = &self.doc["paths"][&template][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{method} {template} is not in openapi.yaml");
        let responses = &op["responses"];
        let r = responses.get(status.as_str()).unwrap_or_else(|| {
            responses
                .get("default")
                .unwrap_or_else(|| panic!("no {status} response for {method} {template}"))
        });
        let r = self.resolve(r);
        r["content"]["application/json"]["schema"].clone()
    }

    /// Panics unless `body` matches the documented response.
    pub fn check(&self, method: &Method, path: &str, status: StatusCode, body: &Value) {
        let schema = self.response_schema(method, path, status);
        self.check_schema(&schema, body, &format!("{method} {path} -> {status}"));
    }

    pub fn check_schema(&self, schema: &Value, body: &Value, what: &str) {
        let v = self.validator(schema);
        let errors: Vec<String> = v
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: response does not match openapi.yaml:\n{}\nbody: {body:#}",
            errors.join("\n")
        );
    }
}

/// A router over real stores.
pub struct Api {
    pub dir: tempfile::TempDir,
    pub store: Arc<dyn SessionStore>,
    pub catalog: Arc<dyn Catalog>,
    pub runner: Arc<Recorder>,
    pub relay: Arc<RecordingRelay>,
    pub router: Router,
    pub key: String,
    pub spec: Arc<Spec>,
    pub shutdown: tokio_util::sync::CancellationToken,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Api {
    pub async fn new() -> Api {
        Self::with_limits(ApiLimits::default()).await
    }

    pub async fn with_limits(limits: ApiLimits) -> Api {
        Self::build(limits, None).await
    }

    /// With `relay` instead of the production `NoBridgeRelay` (whose puts
    /// are never recorded: `self.relay` stays empty).
    pub async fn with_relay(relay: Arc<RecordingRelay>) -> Api {
        Self::build(ApiLimits::default(), Some(relay)).await
    }

    async fn build(limits: ApiLimits, relay: Option<Arc<RecordingRelay>>) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let catalog: Arc<dyn Catalog> =
            Arc::new(SqliteCatalog::open_in_dir(dir.path()).await.unwrap());
        let store: Arc<dyn SessionStore> = Arc::new(
            SqliteStore::open_in_dir(dir.path(), SqliteOptions::default())
                .await
                .unwrap(),
        );
        let key = GeneratedKey::generate();
        catalog
            .create_api_key(NewApiKey {
                id: "key_test".into(),
                name: "test".into(),
                key_hash: key.key_hash.clone(),
                hint: key.hint.clone(),
            })
            .await
            .unwrap();
        let runner = Arc::new(Recorder::default());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let served: Arc<dyn SecretRelay> = match &relay {
            Some(r) => r.clone(),
            None => Arc::new(api::NoBridgeRelay),
        };
        let router = api::router(ApiState {
            store: store.clone(),
            catalog: catalog.clone(),
            runner: runner.clone(),
            relay: served,
            limits,
            shutdown: shutdown.clone(),
        });
        Api {
            dir,
            store,
            catalog,
            runner,
            relay: relay.unwrap_or_default(),
            router,
            key: key.plaintext,
            spec: Arc::new(Spec::load()),
            shutdown,
        }
    }

    /// A raw request with the test key.
    pub fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Request<Body> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("x-api-key", &self.key)
            .header("anthropic-version", "2023-06-01")
            .header("anthropic-beta", "managed-agents-2026-04-01");
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        b.body(body.map_or(Body::empty(), |v| Body::from(v.to_string())))
            .unwrap()
    }

    /// Sends `req`, reads the JSON reply and validates it against the spec.
    pub async fn send(&self, req: Request<Body>) -> Reply {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
            .await
            .expect("body within 30s")
            .unwrap()
            .to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: body is not json ({e}): {:?}",
                String::from_utf8_lossy(&bytes)
            )
        });
        assert!(
            headers.get("request-id").is_some(),
            "{method} {path}: no request-id header"
        );
        assert_ne!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{method} {path}: 500: {body}"
        );
        if self.spec.template(&path).is_some()
            && self.spec.doc()["paths"][self.spec.template(&path).unwrap()]
                [method.as_str().to_lowercase()]
            .is_object()
        {
            self.spec.check(&method, &path, status, &body);
        } else {
            // unknown routes and methods still answer with the envelope
            self.spec
                .check_schema(&json!({"$ref": "#/components/schemas/Error"}), &body, &path);
        }
        if !status.is_success() {
            assert_eq!(
                body["request_id"].as_str(),
                headers["request-id"].to_str().ok()
            );
        }
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let req = self.request(method, path, body.as_ref());
        self.send(req).await
    }

    pub async fn get(&self, path: &str) -> Value {
        let r = self.call(Method::GET, path, None).await;
        assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", r.body);
        r.body
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let r = self.call(Method::POST, path, Some(body)).await;
        assert_eq!(r.status, StatusCode::OK, "POST {path}: {}", r.body);
        r.body
    }

    /// Expects a 4xx with `error.type` and a message starting with `starts`.
    pub async fn expect_error(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        status: u16,
        kind: &str,
        starts: &str,
    ) -> Reply {
        let r = self.call(method.clone(), path, body).await;
        assert_eq!(r.status.as_u16(), status, "{method} {path}: {}", r.body);
        assert_eq!(
            r.body["error"]["type"],
            json!(kind),
            "{method} {path}: {}",
            r.body
        );
        let msg = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.starts_with(starts),
            "{method} {path}: message {msg:?} does not start with {starts:?}"
        );
        r
    }

    pub async fn agent(&self, body: Value) -> Value {
        self.post("/v1/agents", body).await
    }

    pub async fn environment(&self, name: &str) -> Value {
        self.post(
            "/v1/environments",
            json!({"name": name, "config": {"type": "self_hosted"}}),
        )
        .await
    }

    /// An agent with the toolset (bash always_ask) and a custom tool, an
    /// environment and a session.
    pub async fn session(&self) -> Value {
        let agent = self.agent(json!({
            "name": "coder", "model": "claude-sonnet-4-5",
            "tools": [
                {"type": "agent_toolset_20260401", "configs": [{"name": "bash", "permission_policy": {"type": "always_ask"}}]},
                {"type": "custom", "name": "lookup", "description": "look up", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}
            ]
        })).await;
        let env = self.environment(&format!("env-{}", uuid_like())).await;
        self.post(
            "/v1/sessions",
            json!({"agent": agent["id"], "environment_id": env["id"]}),
        )
        .await
    }
}

pub fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn user_message(text: &str) -> Value {
    json!({"type": "user.message", "content": [{"type": "text", "text": text}]})
}

/// Reads SSE frames from a streaming body through the one SSE decoder
/// (`model::sse`), so a character split across body frames stays whole.
pub struct SseReader {
    body: Body,
    decoder: model::sse::SseDecoder,
    ready: std::collections::VecDeque<SseFrame>,
}

#[derive(Debug, Clone)]
pub struct SseFrame {
    pub event: String,
    pub id: Option<u64>,
    pub data: Value,
}

impl SseReader {
    pub fn new(body: Body) -> Self {
        SseReader {
            body,
            decoder: model::sse::SseDecoder::new(16 << 20),
            ready: std::collections::VecDeque::new(),
        }
    }

    /// The next frame, or None at the end of the stream; panics after 20 s.
    pub async fn next(&mut self) -> Option<SseFrame> {
        loop {
            if let Some(f) = self.ready.pop_front() {
                return Some(f);
            }
            let frame = tokio::time::timeout(Duration::from_secs(20), self.body.frame())
                .await
                .expect("an SSE frame within 20s");
            let frame = frame?;
            let Ok(data) = frame.unwrap().into_data() else {
                continue;
            };
            for e in self.decoder.push(&data).unwrap() {
                self.ready.push_back(SseFrame {
                    event: e.event.unwrap_or_default(),
                    id: e.id.map(|id| id.parse().unwrap()),
                    data: serde_json::from_str(&e.data).unwrap(),
                });
            }
        }
    }

    /// The next frame that is not a ping.
    pub async fn next_event(&mut self) -> Option<SseFrame> {
        loop {
            let f = self.next().await?;
            if f.event != "ping" {
                return Some(f);
            }
        }
    }
}
