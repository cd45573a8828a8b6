//! The console over a real SQLite catalog and session store, merged with
//! the real API router as the control plane serves them, driven through
//! `tower::ServiceExt::oneshot`. The control plane's side (agents,
//! revocation) is a recording double: the tunnel and identity store behind
//! the real one are exercised by the Chromium tests (tests/console_*).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::Router;
use catalog::{Catalog, GeneratedKey, KeyRole, NewApiKey, SqliteCatalog};
use console::{
    AgentState, AgentView, ConsoleConfig, ControlPlane, ControlPlaneError, Placement,
    RevokeOutcome, SandboxView,
};
use http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use session_store::{
    NewEvent, NewSession, SessionStatus, SessionStore, SqliteOptions, SqliteStore,
};
use tower::ServiceExt;

/// Records notifications.
#[derive(Debug, Default)]
pub struct Runner(pub Mutex<Vec<String>>);

impl api::SessionRunner for Runner {
    fn notify(&self, session_id: &str) {
        self.0.lock().unwrap().push(session_id.to_owned());
    }
}

/// One connected agent and one revoked; records revocations.
#[derive(Debug, Default)]
pub struct Control {
    pub revoked: Mutex<Vec<String>>,
}

pub const AGENT: &str = "agt_console_test";
pub const SANDBOX: &str = "sbx_console_test";

#[async_trait::async_trait]
impl ControlPlane for Control {
    async fn agents(&self) -> Result<Vec<AgentView>, ControlPlaneError> {
        let revoked = self.revoked.lock().unwrap().contains(&AGENT.to_owned());
        Ok(vec![AgentView {
            agent_id: AGENT.to_owned(),
            environment_id: "env_test".to_owned(),
            state: if revoked {
                AgentState::Revoked
            } else {
                AgentState::Connected
            },
            transport: Some("quic".to_owned()),
            version: Some("<b>9.9</b>".to_owned()),
            cert_not_after: Some(time::OffsetDateTime::now_utc()),
            last_heartbeat: Some(time::OffsetDateTime::now_utc()),
            connected_since: None,
            remote_addr: None,
            enrolled_at: None,
            revoked_at: None,
            sandboxes: Some(1),
        }])
    }

    async fn sandboxes(&self, _agent_id: &str) -> Result<Vec<SandboxView>, ControlPlaneError> {
        Ok(vec![SandboxView {
            sandbox_id: SANDBOX.to_owned(),
            session_id: None,
            image: "airlock-sandbox".to_owned(),
            state: "running".to_owned(),
            created_at: "2026-12-07T00:00:00Z".to_owned(),
            expires_at: None,
        }])
    }

    async fn placement(&self, _session_id: &str, _environment_id: &str) -> Option<Placement> {
        Some(Placement {
            agent_id: AGENT.to_owned(),
            sandbox_id: SANDBOX.to_owned(),
        })
    }

    async fn revoke(&self, agent_id: &str) -> Result<RevokeOutcome, ControlPlaneError> {
        if agent_id != AGENT {
            return Err(ControlPlaneError::UnknownAgent(agent_id.to_owned()));
        }
        self.revoked.lock().unwrap().push(agent_id.to_owned());
        Ok(RevokeOutcome {
            newly_revoked: true,
            connections_closed: 1,
        })
    }
}

/// The API and the console on one router, as the control plane merges them.
pub struct Stack {
    pub _dir: tempfile::TempDir,
    pub router: Router,
    pub catalog: Arc<dyn Catalog>,
    pub store: Arc<dyn SessionStore>,
    pub runner: Arc<Runner>,
    pub control: Arc<Control>,
    pub admin_key: String,
    pub admin_key_id: String,
    pub reader_key: String,
}

impl Stack {
    pub async fn new(config: ConsoleConfig) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let catalog: Arc<dyn Catalog> =
            Arc::new(SqliteCatalog::open_in_dir(dir.path()).await.unwrap());
        let store: Arc<dyn SessionStore> = Arc::new(
            SqliteStore::open_in_dir(dir.path(), SqliteOptions::default())
                .await
                .unwrap(),
        );
        let admin = GeneratedKey::generate();
        catalog
            .create_api_key(NewApiKey {
                id: "key_admin".into(),
                name: "ops <admin>".into(),
                key_hash: admin.key_hash.clone(),
                hint: admin.hint.clone(),
            })
            .await
            .unwrap();
        let reader = GeneratedKey::generate();
        catalog
            .create_api_key_with_role(
                NewApiKey {
                    id: "key_reader".into(),
                    name: "auditor".into(),
                    key_hash: reader.key_hash.clone(),
                    hint: reader.hint.clone(),
                },
                KeyRole::ReadOnly,
            )
            .await
            .unwrap();
        let runner = Arc::new(Runner::default());
        let control = Arc::new(Control::default());
        let api = api::ApiHandle::new(api::ApiState {
            store: store.clone(),
            catalog: catalog.clone(),
            runner: runner.clone(),
            relay: Arc::new(api::NoBridgeRelay),
            limits: api::ApiLimits::default(),
            shutdown: tokio_util::sync::CancellationToken::new(),
        });
        let router = api.router().merge(console::router(console::ConsoleState {
            api,
            control: control.clone(),
            config,
        }));
        Stack {
            _dir: dir,
            router,
            catalog,
            store,
            runner,
            control,
            admin_key: admin.plaintext,
            admin_key_id: "key_admin".into(),
            reader_key: reader.plaintext,
        }
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub async fn get(&self, path: &str, cookie: Option<&str>) -> Reply {
        let mut b = Request::get(path);
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, format!("airlock_console={c}"));
        }
        self.send(b.body(Body::empty()).unwrap()).await
    }

    pub async fn post(&self, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Reply {
        let mut b =
            Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, format!("airlock_console={c}"));
        }
        let body = serde_urlencoded::to_string(form).unwrap();
        self.send(b.body(Body::from(body)).unwrap()).await
    }

    /// Signs in with `key`; the cookie token and the CSRF token.
    pub async fn sign_in(&self, key: &str) -> (String, String) {
        let r = self.post("/console/login", None, &[("api_key", key)]).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
        let cookie = r.set_cookie().expect("a cookie");
        let token = cookie
            .split(';')
            .next()
            .unwrap()
            .trim_start_matches("airlock_console=")
            .to_owned();
        let page = self.get("/console/sessions", Some(&token)).await;
        assert_eq!(page.status, StatusCode::OK);
        let csrf = page.csrf().expect("a csrf input");
        (token, csrf)
    }

    /// A session with `events` appended (processed), id `id`.
    pub async fn session(&self, id: &str, title: &str, events: Vec<Value>) {
        self.store
            .create_session(NewSession {
                id: id.to_owned(),
                status: SessionStatus::Idle,
                body: json!({"type": "session", "id": id, "title": title, "environment_id": "env_test",
                             "agent": {"id": "agent_test", "name": "helper", "version": 1},
                             "metadata": {}, "archived_at": null}),
                initial_events: Vec::new(),
            })
            .await
            .unwrap();
        if !events.is_empty() {
            for chunk in events.chunks(1000) {
                self.store
                    .append(
                        id,
                        chunk.iter().cloned().map(NewEvent::processed).collect(),
                        session_store::Fence::None,
                    )
                    .await
                    .unwrap();
            }
        }
    }

    pub async fn event_types(&self, id: &str) -> Vec<String> {
        self.store
            .read(id, 1, 100_000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event_type)
            .collect()
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn location(&self) -> Option<&str> {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
    }

    pub fn set_cookie(&self) -> Option<String> {
        self.headers
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// The value of the first `name="csrf"` input.
    pub fn csrf(&self) -> Option<String> {
        let at = self.body.find("name=\"csrf\" value=\"")?;
        let rest = &self.body[at + "name=\"csrf\" value=\"".len()..];
        Some(rest[..rest.find('"')?].to_owned())
    }
}
