//! Secrets sent through the API leave no trace in the control plane's
//! PostgreSQL rows (issue 9 item 3, issue 10's canary test): a real
//! `control-plane serve` whose session store AND catalog are on PostgreSQL
//! (their own schemas), a real enrolled `sandbox-agent run` with `[bridge]`,
//! a real `vault-bridge serve` (file backend). Every secret-carrying API
//! call is made with a distinct canary:
//!
//! - `static_bearer` created, then updated with a new token;
//! - `mcp_oauth` with `access_token`, `refresh.refresh_token` and
//!   `refresh.token_endpoint_auth.client_secret`;
//! - `environment_variable` with `secret_value`;
//! - a session with those `vault_ids` and a `github_repository` resource
//!   with an `authorization_token`, then the token rotated through
//!   `POST /v1/sessions/{id}/resources/{rid}`;
//! - one credential archived, one deleted, the session deleted.
//!
//! Then `pg_dump --data-only` of both schemas, the session's events, the
//! control plane's data dir and its log hold 0 bytes of any canary, while
//! the dump does hold the credentials' ids (it is the right data) and the
//! bridge holds the secrets (`vault-bridge credentials list`).
//!
//! Needs `AIRLOCK_TEST_PG_URL` (scripts/setup.d/20-postgres.sh) and
//! `pg_dump`; skipped without them, except under `CI=true` where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_support;

use std::path::Path;
use std::time::Duration;

use airlock_tests::bridge::{Bridge, BridgeOptions};
use airlock_tests::deploy::{tail, Agent, AgentOptions, ControlPlane, CpOptions};
use e2e_support::{wait_api, Api};
use serde_json::{json, Value};

const CANARIES: [&str; 8] = [
    "canary-pg-bearer-1-a61f0c",
    "canary-pg-bearer-2-b72e1d",
    "canary-pg-access-c83d2e",
    "canary-pg-refresh-d94c3f",
    "canary-pg-client-secret-ea5b40",
    "canary-pg-env-secret-fb6a51",
    "canary-pg-repo-token-1-0c7962",
    "canary-pg-repo-token-2-1d8a73",
];

fn files_containing(dir: &Path, needle: &[u8], hits: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            files_containing(&p, needle, hits);
        } else if ft.is_file() {
            if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p.display().to_string());
                }
            }
        }
    }
}

/// Every row of `schemas`, as `pg_dump --data-only` prints them.
fn dump(url: &str, schemas: &[&str]) -> String {
    let mut cmd = std::process::Command::new("pg_dump");
    cmd.args(["--data-only", "--no-owner", "--dbname", url]);
    for s in schemas {
        cmd.arg(format!("--schema={s}"));
    }
    let out = cmd.output().expect("pg_dump (postgresql-client)");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn drop_schemas(url: &str, schemas: &[&str]) {
    let sql: String = schemas
        .iter()
        .map(|s| format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE;"))
        .collect();
    let _ = std::process::Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", "--dbname", url, "-c", &sql])
        .output();
}

struct DropSchemas<'a>(&'a str, [String; 2]);

impl Drop for DropSchemas<'_> {
    fn drop(&mut self) {
        drop_schemas(self.0, &[self.1[0].as_str(), self.1[1].as_str()]);
    }
}

async fn ok(api: &Api, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = api.call(method, path, body).await.unwrap();
    assert_eq!(status, 200, "{method} {path}: {v}");
    for c in CANARIES {
        assert!(
            !v.to_string().contains(c),
            "{method} {path} echoed a secret: {v}"
        );
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_sent_through_the_api_are_in_no_postgres_row_event_file_or_log() {
    let Some(url) = airlock_tests::replicas::pg_url("bridge_canary_postgres") else {
        return;
    };
    let schema = format!(
        "canary_{}_{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp()
    );
    let catalog_schema = format!("{schema}_cat");
    let _cleanup = DropSchemas(&url, [schema.clone(), catalog_schema.clone()]);
    let bridge = Bridge::start(BridgeOptions::default()).unwrap();

    let mut cp = ControlPlane::configure(CpOptions {
        extra_toml: format!(
            "\n[session_store]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\npostgres_schema = \"{schema}\"\npostgres_max_connections = 4\n\
             \n[catalog]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\npostgres_schema = \"{catalog_schema}\"\n"
        ),
        ..CpOptions::default()
    })
    .unwrap();
    let key: Value = serde_json::from_str(
        cp.cli(&["api-keys", "create", "--name", "canary", "--json"])
            .unwrap()
            .trim(),
    )
    .unwrap();
    cp.start().unwrap();
    let api = Api::new(cp.api_addr(), key["key"].as_str().unwrap());
    wait_api(&api, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&cp.log(), 30)));
    let env = api
        .create_environment(&format!("env-canary-{}", std::process::id()))
        .await
        .unwrap();
    let join = cp.join_string(&env).unwrap();
    let mut agent = Agent::enroll(&cp, &join, AgentOptions::default()).unwrap();
    let mut config = std::fs::read_to_string(agent.config_path()).unwrap();
    config.push_str(&bridge.agent_toml());
    std::fs::write(agent.config_path(), config).unwrap();
    agent.run().unwrap();
    cp.wait_connected(agent.agent_id(), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&agent.log(), 30)));

    let vault = ok(
        &api,
        "POST",
        "/v1/vaults",
        Some(json!({"display_name": "canary", "metadata": {"airlock.environment_id": env}})),
    )
    .await;
    let vault_id = vault["id"].as_str().unwrap().to_owned();
    let creds = format!("/v1/vaults/{vault_id}/credentials");
    let bearer = ok(&api, "POST", &creds, Some(json!({
        "display_name": "bearer",
        "auth": {"type": "static_bearer", "mcp_server_url": "https://tickets.corp.example/mcp", "token": CANARIES[0]}
    }))).await;
    let bearer_id = bearer["id"].as_str().unwrap().to_owned();
    ok(
        &api,
        "POST",
        &format!("{creds}/{bearer_id}"),
        Some(json!({
            "auth": {"type": "static_bearer", "token": CANARIES[1]}
        })),
    )
    .await;
    let oauth = ok(&api, "POST", &creds, Some(json!({
        "display_name": "oauth",
        "auth": {"type": "mcp_oauth", "mcp_server_url": "https://notes.corp.example/mcp",
                 "access_token": CANARIES[2], "expires_at": "2030-01-01T00:00:00Z",
                 "refresh": {"client_id": "airlock", "refresh_token": CANARIES[3],
                             "token_endpoint": "https://sso.corp.example/token", "scope": "notes",
                             "token_endpoint_auth": {"type": "client_secret_post", "client_secret": CANARIES[4]}}}
    }))).await;
    let oauth_id = oauth["id"].as_str().unwrap().to_owned();
    let envvar = ok(&api, "POST", &creds, Some(json!({
        "display_name": "env",
        "auth": {"type": "environment_variable", "secret_name": "API_KEY", "secret_value": CANARIES[5],
                 "networking": {"type": "limited", "allowed_hosts": ["api.corp.example"]},
                 "injection_location": {"header": true, "body": false}}
    }))).await;
    let envvar_id = envvar["id"].as_str().unwrap().to_owned();

    // The bridge holds them all; the control plane none.
    let listed = bridge.credentials_list().unwrap();
    for id in [&bearer_id, &oauth_id, &envvar_id] {
        assert!(listed.contains(id.as_str()), "bridge list: {listed}");
    }

    let agent_id = api.create_agent("canary").await.unwrap();
    let session = ok(&api, "POST", "/v1/sessions", Some(json!({
        "agent": agent_id, "environment_id": env, "vault_ids": [vault_id],
        "resources": [{"type": "github_repository", "url": "https://git.corp.example/acme/app.git",
                       "authorization_token": CANARIES[6]}]
    }))).await;
    let session_id = session["id"].as_str().unwrap().to_owned();
    let resources = ok(
        &api,
        "GET",
        &format!("/v1/sessions/{session_id}/resources"),
        None,
    )
    .await;
    let rid = resources["data"][0]["id"].as_str().unwrap().to_owned();
    ok(
        &api,
        "POST",
        &format!("/v1/sessions/{session_id}/resources/{rid}"),
        Some(json!({
            "authorization_token": CANARIES[7]
        })),
    )
    .await;
    let events = api.events(&session_id).await.unwrap();
    let events_text = serde_json::to_string(&events).unwrap();

    ok(
        &api,
        "POST",
        &format!("{creds}/{oauth_id}/archive"),
        Some(json!({})),
    )
    .await;
    ok(&api, "DELETE", &format!("{creds}/{envvar_id}"), None).await;

    // Rows: the right data is there (ids), no secret is.
    let rows = dump(&url, &[schema.as_str(), catalog_schema.as_str()]);
    for id in [&vault_id, &bearer_id, &oauth_id, &session_id] {
        assert!(
            rows.contains(id.as_str()),
            "{id} not in the dump: wrong schemas?"
        );
    }
    assert!(rows.contains("tickets.corp.example"), "metadata is stored");
    let mut found = Vec::new();
    for c in CANARIES {
        if rows.contains(c) {
            found.push(format!("row: {c}"));
        }
        if events_text.contains(c) {
            found.push(format!("event: {c}"));
        }
        let mut hits = Vec::new();
        files_containing(cp.dir(), c.as_bytes(), &mut hits);
        found.extend(hits.into_iter().map(|h| format!("file {h}: {c}")));
        if cp.log().contains(c) {
            found.push(format!("control-plane log: {c}"));
        }
        if agent.log().contains(c) {
            found.push(format!("agent log: {c}"));
        }
        if bridge.log().contains(c) {
            found.push(format!("bridge log: {c}"));
        }
    }
    assert!(
        found.is_empty(),
        "secrets on the control plane's side: {found:?}"
    );

    // Deleting the session makes the bridges forget its repository token.
    ok(&api, "DELETE", &format!("/v1/sessions/{session_id}"), None).await;
    let rows = dump(&url, &[schema.as_str(), catalog_schema.as_str()]);
    for c in CANARIES {
        assert!(!rows.contains(c), "row after delete: {c}");
    }
    agent.terminate().unwrap();
}
