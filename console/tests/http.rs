//! HTTP-level tests of the web console (issue 12): no page without a
//! session cookie, CSRF on every POST, the read-only role, XSS payloads
//! rendered inert, cookie flags with and without TLS, revoked keys and
//! expired sessions refused, actions through the API's own paths, timeline
//! paging, error layers, and the `[console]` config errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use catalog::{KeyRole, NewConsoleSession};
use common::{Stack, AGENT, SANDBOX};
use console::{ConsoleConfig, RawConsoleConfig};
use http::{header, StatusCode};
use serde_json::json;

fn text(t: &str) -> serde_json::Value {
    json!([{"type": "text", "text": t}])
}

/// Every GET page of the console (with ids that exist).
const PAGES: &[&str] = &[
    "/console",
    "/console/",
    "/console/sessions",
    "/console/sessions/rows",
    "/console/sessions/sesn_one",
    "/console/sessions/sesn_one/live?after_seq=0",
    "/console/agents",
    "/console/agents/agt_console_test",
    "/console/agents/agt_console_test/revoke",
    "/console/audit",
    "/console/no-such-page",
];

/// Every POST route with the fields it needs besides `csrf`.
fn posts() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    vec![
        (
            "/console/sessions/sesn_one/confirm",
            vec![("tool_use_id", "TOOL"), ("result", "allow")],
        ),
        ("/console/sessions/sesn_one/interrupt", vec![]),
        ("/console/sessions/sesn_one/archive", vec![]),
        ("/console/agents/agt_console_test/revoke", vec![]),
        ("/console/logout", vec![]),
    ]
}

/// A session waiting on an `always_ask` bash call; returns the tool use id.
async fn asking_session(s: &Stack) -> String {
    s.session(
        "sesn_one",
        "ask",
        vec![
            json!({"type": "user.message", "content": text("list files")}),
            json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "ls"},
                   "evaluated_permission": "ask", "evaluation": {"type": "always_ask"}}),
            json!({"type": "session.status_idle", "stop_reason": {"type": "requires_action", "event_ids": []}}),
        ],
    )
    .await;
    let events = s.store.read("sesn_one", 1, 10).await.unwrap();
    events[1].id.clone()
}

#[tokio::test]
async fn no_page_without_a_valid_session_cookie() {
    let s = Stack::new(ConsoleConfig::enabled(false)).await;
    asking_session(&s).await;
    for cookie in [None, Some("forged-token"), Some("")] {
        for page in PAGES {
            let r = s.get(page, cookie).await;
            assert_eq!(
                r.status,
                StatusCode::SEE_OTHER,
                "{page} with {cookie:?}: {}",
                r.body
            );
            assert_eq!(r.location(), Some("/console/login"), "{page}");
            assert!(!r.body.contains("sesn_one"), "{page} leaked content");
        }
        for (path, fields) in posts() {
            let r = s.post(path, cookie, &fields).await;
            assert_eq!(r.status, StatusCode::SEE_OTHER, "POST {path}");
            assert_eq!(r.location(), Some("/console/login"));
        }
    }
    // nothing was appended or revoked by any of those
    assert_eq!(s.event_types("sesn_one").await.len(), 3);
    assert!(s.control.revoked.lock().unwrap().is_empty());
    // the sign-in page and the assets need no cookie
    let login = s.get("/console/login", None).await;
    assert_eq!(login.status, StatusCode::OK);
    for needle in [
        "id=\"login-form\"",
        "id=\"api_key\"",
        "type=\"password\"",
        "for=\"api_key\"",
        "id=\"sign-in\"",
    ] {
        assert!(login.body.contains(needle), "login page lacks {needle}");
    }
    assert_eq!(
        s.get("/console/static/console.css", None).await.status,
        StatusCode::OK
    );
    // the API's own routes still authenticate with their key, not the cookie
    assert_eq!(
        s.get("/v1/sessions", None).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn sign_in_sets_a_strict_cookie_secure_only_with_tls() {
    for tls in [false, true] {
        let s = Stack::new(ConsoleConfig::enabled(tls)).await;
        let r = s
            .post("/console/login", None, &[("api_key", s.admin_key.as_str())])
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER);
        assert_eq!(r.location(), Some("/console/sessions"));
        let c = r.set_cookie().unwrap();
        assert!(c.starts_with("airlock_console="), "{c}");
        for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
            assert!(c.contains(flag), "{c} lacks {flag}");
        }
        assert_eq!(c.contains("Secure"), tls, "tls={tls}: {c}");
        // the token is not the API key, and only its hash is stored
        let token = c
            .split(';')
            .next()
            .unwrap()
            .trim_start_matches("airlock_console=");
        assert!(!c.contains(&s.admin_key));
        let stored = s
            .catalog
            .find_console_session(
                &console::auth::token_hash(token),
                time::OffsetDateTime::now_utc(),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.key_id, "key_admin");
        assert_ne!(stored.token_hash, token);
        let page = s.get("/console/sessions", Some(token)).await;
        assert!(page.body.contains("data-role=\"admin\""));
        assert!(
            page.body.contains("ops &lt;admin&gt;"),
            "the key name is escaped"
        );
    }
}

#[tokio::test]
async fn bad_and_revoked_keys_are_refused_and_revocation_ends_sessions() {
    let s = Stack::new(ConsoleConfig::enabled(false)).await;
    for bad in ["", "sk-airlock-nope", "<script>"] {
        let r = s.post("/console/login", None, &[("api_key", bad)]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(r.body.contains("id=\"error\""));
        assert!(r.body.contains("invalid API key"));
        assert!(r.set_cookie().is_none());
    }
    let (token, _) = s.sign_in(&s.admin_key).await;
    s.catalog.revoke_api_key("key_admin").await.unwrap();
    let r = s.get("/console/sessions", Some(&token)).await;
    assert_eq!(
        r.status,
        StatusCode::SEE_OTHER,
        "revoking the key ends its console session"
    );
    let r = s
        .post("/console/login", None, &[("api_key", s.admin_key.as_str())])
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "a revoked key cannot sign in"
    );
}

#[tokio::test]
async fn expired_sessions_are_refused() {
    let s = Stack::new(ConsoleConfig::enabled(false)).await;
    let now = time::OffsetDateTime::now_utc();
    let token = console::auth::random_token();
    s.catalog
        .create_console_session(NewConsoleSession {
            token_hash: console::auth::token_hash(&token),
            key_id: "key_admin".into(),
            role: KeyRole::Admin,
            csrf_token: "c".repeat(43),
            created_at: now - time::Duration::hours(9),
            expires_at: now - time::Duration::seconds(1),
        })
        .await
        .unwrap();
    assert_eq!(
        s.get("/console/sessions", Some(&token)).await.status,
        StatusCode::SEE_OTHER
    );
    // a TTL of a second, through the real sign-in
    let mut config = ConsoleConfig::enabled(false);
    config.session_ttl = Duration::from_secs(1);
    let s = Stack::new(config).await;
    let (token, _) = s.sign_in(&s.admin_key).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        s.get("/console/sessions", Some(&token)).await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        s.catalog
            .delete_expired_console_sessions(time::OffsetDateTime::now_utc())
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn every_post_needs_the_csrf_token_and_changes_nothing_without_it() {
    let s = Stack::new(ConsoleConfig::enabled(false)).await;
    let tool = asking_session(&s).await;
    let (token, csrf) = s.sign_in(&s.admin_key).await;
    for (path, fields) in posts() {
        let fields: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (*k, if *v == "TOOL" { tool.as_str() } else { *v }))
            .collect();
        let missing = s.post(path, Some(&token), &fields).await;
        let mut wrong_fields = fields.clone();
        let wrong_token = format!("{}x", &csrf[..csrf.len() - 1]);
        wrong_fields.push(("csrf", &wrong_token));
        let wrong = s.post(path, Some(&token), &wrong_fields).await;
        let mut short = fields.clone();
        short.push(("csrf", "x"));
        let short = s.post(path, Some(&token), &short).await;
        for r in [missing, wrong, short] {
            assert_eq!(r.status, StatusCode::FORBIDDEN, "POST {path}: {}", r.body);
            assert!(r.body.contains("CSRF token missing or invalid"), "{path}");
        }
    }
    // a bare POST without a form body at all
    let r = s
        .send(
            http::Request::post("/console/sessions/sesn_one/interrupt")
                .header(header::COOKIE, format!("airlock_console={token}"))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(s.event_types("sesn_one").await.len(), 3, "nothing appended");
    assert!(
        s.control.revoked.lock().unwrap().is_empty(),
        "nothing revoked"
    );
    assert!(s.runner.0.lock().unwrap().is_empty(), "nothing woken");
    assert_eq!(
        s.get("/console/sessions", Some(&token)).await.status,
        StatusCode::OK,
        "still signed in"
    );
}

#[tokio::test]
async fn read_only_keys_see_no_action_and_cannot_change_anything() {
    let s = Stack::new(ConsoleConfig::enabled(false)).await;
    let tool = asking_session(&s).await;
    let (token, csrf) = s.sign_in(&s.reader_key).await;
    let page = s.get("/console/sessions/sesn_one", Some(&token)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("data-role=\"read_only\""));
    for action in [
        "class=\"confirm\"",
        "id=\"interrupt\"",
        "id=\"archive\"",
        "class=\"approve\"",
    ] {
        assert!(!page.body.contains(action), "read-only page shows {action}");
    }
    assert!(page.body.contains("awaiting confirmation"));
    let agent = s
        .get("/console/agents/agt_console_test", Some(&token))
        .await;
    assert!(!agent.body.contains("id=\"revoke\""));
    assert_eq!(
        s.get("/console/agents/agt_console_test/revoke", Some(&token))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    for (path, fields) in posts() {
        if path == "/console/logout" {
            continue; // signing out is not a change to anything but the own session
        }
        let mut fields: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (*k, if *v == "TOOL" { tool.as_str() } else { *v }))
            .collect();
        fields.push(("csrf", &csrf));
        let r = s.post(path, Some(&token), &fields).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "POST {path}: {}", r.body);
        assert!(r.body.contains("read_only"), "{path}: {}", r.body);
    }
    assert_eq!(s.event_types("sesn_one").await.len(), 3);
    assert!(s.control.revoked.lock().unwrap().is_empty());
    // every refused attempt is in the audit, with the key and the 403
    let audit = s
        .catalog
        .list_audit_events(catalog::audit::AuditEventQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    for want in [
        "console.sessions.confirm.allow",
        "console.sessions.interrupt",
        "console.sessions.archive",
        "console.agents.revoke",
    ] {
        let found = audit.items.iter().find(|e| e.event.action == want);
        let e = found.unwrap_or_else(|| panic!("refused {want} not audited"));
        assert_eq!(e.event.status, 403, "{want}");
        assert_eq!(e.event.outcome, catalog::audit::Outcome::Error, "{want}");
        assert!(
            matches!(&e.event.actor, catalog::audit::Actor::ApiKey(k) if k == "key_reader"),
            "{want}: {:?}",
            e.event.actor
        );
    }
    // and on the public API: reads yes, anything else 403 permission_error naming the role
    let get = s
        .send(
            http::Request::get("/v1/sessions")
                .header("x-api-key", &s.reader_key)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(get.status, StatusCode::OK, "{}", get.body);
    let post = s
        .send(
            http::Request::post("/v1/sessions/sesn_one/events")
                .header("x-api-key", &s.reader_key)
                .header(header::CONTENT_TYPE, "application/json")
                .body(axum::body::Body::from(
                    r#"{"events":[{"type":"user.interrupt"}]}"#,
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(post.status, StatusCode::FORBIDDEN, "{}", post.body);
    let v: serde_json::Value = serde_json::from_str(&post.body).unwrap();
    assert_eq!(v["error"]["type"], "permission_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("read_only"));
    assert_eq!(s.event_types("sesn_one").await.len(), 3);
}

#[tokio::test]
async fn approving_appends_the_apis_confirmation_and_is_audited() {
    let s = Stack::new(ConsoleConfig::enabled(false)).await;
    let tool = asking_session(&s).await;
    let (token, csrf) = s.sign_in(&s.admin_key).await;
    let page = s.get("/console/sessions/sesn_one", Some(&token)).await;
    assert!(page.body.contains(&format!("data-tool-use-id=\"{tool}\"")));
    assert!(page.body.contains("class=\"confirm\""), "{}", page.body);
    assert!(page.body.contains("class=\"ran-on\""));
    assert!(page.body.contains(AGENT) && page.body.contains(SANDBOX));
    let r = s
        .post(
            "/console/sessions/sesn_one/confirm",
            Some(&token),
            &[("tool_use_id", &tool), ("result", "allow"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let events = s.store.read("sesn_one", 1, 10).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.event_type, "user.tool_confirmation");
    assert_eq!(last.body["tool_use_id"], json!(tool));
    assert_eq!(last.body["result"], json!("allow"));
    assert!(last.processed_at.is_none(), "queued like the API's");
    assert_eq!(*s.runner.0.lock().unwrap(), vec!["sesn_one".to_owned()]);
    // the API's own checks apply: a second answer names the problem? the tool use is still "ask",
    // so a confirmation of an unknown id is refused with the API's message
    let bad = s
        .post(
            "/console/sessions/sesn_one/confirm",
            Some(&token),
            &[
                ("tool_use_id", "sevt_nope"),
                ("result", "allow"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("no event sevt_nope"), "{}", bad.body);
    // interrupt, revoke: audited with the key id
    assert_eq!(
        s.post(
            "/console/sessions/sesn_one/interrupt",
            Some(&token),
            &[("csrf", &csrf)]
        )
        .await
        .status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        s.event_types("sesn_one").await.last().unwrap(),
        "user.interrupt"
    );
    assert_eq!(
        s.post(
            "/console/agents/agt_console_test/revoke",
            Some(&token),
            &[("csrf", &csrf)]
        )
        .await
        .status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(*s.control.revoked.lock().unwrap(), vec![AGENT.to_owned()]);
    let audit = s
        .catalog
        .list_audit_events(catalog::audit::AuditEventQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<(String, String)> = audit
        .items
        .iter()
        .map(|e| {
            (
                e.event.action.clone(),
                match &e.event.actor {
                    catalog::audit::Actor::ApiKey(k) => k.clone(),
                    _ => String::new(),
                },
            )
        })
        .collect();
    for want in [
        "console.login",
        "console.sessions.confirm.allow",
        "console.sessions.interrupt",
        "console.agents.revoke",
    ] {
        assert!(
            actions.iter().any(|(a, k)| a == want && k == "key_admin"),
            "{want} not audited: {actions:?}"
        );
    }
    let audit_page = s.get("/console/audit", Some(&token)).await;
    assert!(
        audit_page.body.contains("id=\"audit-events\"")
            && audit_page.body.contains("console.agents.revoke")
    );
    let agents = s.get("/console/agents", Some(&token)).await;
    assert!(agents.body.contains("data-state=\"revoked\""));
    // sign out: the server-side session is gone
    assert_eq!(
        s.post("/console/logout", Some(&token), &[("csrf", &csrf)])
            .await
            .status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        s.get("/console/sessions", Some(&token)).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn xss_payloads_come_back_escaped_under_a_strict_csp() {
    let s = Stack::new(ConsoleConfig::enabled(false)).await;
    let payload = "<script>alert(1)</script><img src=x onerror=alert(2)>";
    s.session(
        "sesn_one",
        payload,
        vec![
            json!({"type": "user.message", "content": text(payload)}),
            json!({"type": "agent.tool_use", "name": payload, "input": {"command": payload, payload: 1},
                   "evaluated_permission": "allow"}),
            json!({"type": "session.error", "error": {"type": "model_overloaded_error", "message": payload, "retry_status": {"type": "retrying"}}}),
        ],
    )
    .await;
    let use_id = s.store.read("sesn_one", 2, 1).await.unwrap()[0].id.clone();
    s.store
        .append(
            "sesn_one",
            vec![session_store::NewEvent::processed(
                json!({"type": "agent.tool_result", "tool_use_id": use_id,
                "content": text(&format!("</pre>{payload}")), "is_error": false}),
            )],
            session_store::Fence::None,
        )
        .await
        .unwrap();
    let (token, _) = s.sign_in(&s.admin_key).await;
    for page in [
        "/console/sessions/sesn_one",
        "/console/sessions",
        "/console/agents",
        "/console/agents/agt_console_test",
    ] {
        let r = s.get(page, Some(&token)).await;
        assert_eq!(r.status, StatusCode::OK, "{page}");
        assert!(
            !r.body.contains("<script>alert"),
            "{page} has a live script"
        );
        assert!(!r.body.contains("<img src=x"), "{page} has a live img");
        assert!(
            !r.body.contains("<b>9.9</b>"),
            "{page} has live markup from an agent"
        );
        assert_eq!(
            r.headers.get(header::CONTENT_SECURITY_POLICY).unwrap(),
            console::CONTENT_SECURITY_POLICY
        );
        assert_eq!(
            r.headers.get(header::X_CONTENT_TYPE_OPTIONS).unwrap(),
            "nosniff"
        );
        assert!(
            !r.body.contains("<script>") || !r.body.contains("<script>a"),
            "no inline script"
        );
    }
    let t = s.get("/console/sessions/sesn_one", Some(&token)).await.body;
    assert!(
        t.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "the payload is shown, escaped"
    );
    assert!(t.contains("&lt;/pre&gt;"));
    // the tool result is joined into its call, and the error names its layer
    assert!(t.contains("class=\"event tool-call\""), "{t}");
    assert!(t.contains("class=\"duration\""));
    assert!(t.contains("data-layer=\"model\""));
    // the only scripts are our file
    assert_eq!(t.matches("<script").count(), 1);
    assert!(t.contains("<script src=\"/console/static/console.js\" defer>"));
}

#[tokio::test]
async fn timeline_pages_by_200_and_joins_results_across_pages() {
    let s = Stack::new(ConsoleConfig::enabled(false)).await;
    let mut events: Vec<serde_json::Value> = (0..449)
        .map(|i| json!({"type": "agent.message", "content": text(&format!("m{i}"))}))
        .collect();
    // seq 450: a tool use; its result lands on seq 451, past the "after_seq=249" page
    events.push(json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "true"}, "evaluated_permission": "allow"}));
    s.session("sesn_one", "long", events).await;
    let use_id = s.store.read("sesn_one", 450, 1).await.unwrap()[0]
        .id
        .clone();
    s.store
        .append(
            "sesn_one",
            vec![
                session_store::NewEvent::processed(json!({"type": "agent.tool_result", "tool_use_id": use_id, "content": text("done"), "is_error": true})),
                session_store::NewEvent::processed(json!({"type": "session.error", "error": {"type": "mcp_connection_failed_error", "message": "down", "mcp_server_name": "wiki"}})),
            ],
            session_store::Fence::None,
        )
        .await
        .unwrap();
    let (token, _) = s.sign_in(&s.admin_key).await;
    let seqs = |body: &str| -> Vec<u64> {
        body.match_indices("data-seq=\"")
            .map(|(i, m)| {
                body[i + m.len()..]
                    .split('"')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect()
    };
    let tail = s.get("/console/sessions/sesn_one", Some(&token)).await.body;
    let got = seqs(&tail);
    // the last 200 events (253..=452); the result (451) is shown inside its call (450)
    assert_eq!(got.first(), Some(&253));
    assert_eq!(got.last(), Some(&452));
    assert_eq!(got.len(), 199);
    assert!(!got.contains(&451));
    assert!(tail.contains("id=\"page-older\"") && tail.contains("?before_seq=253"));
    assert!(!tail.contains("id=\"page-newer\""));
    assert!(tail.contains("data-live-url=\"/console/sessions/sesn_one/live?after_seq=452\""));
    assert!(
        tail.contains("data-layer=\"bridge\""),
        "an MCP error is the bridge's"
    );
    let older = s
        .get("/console/sessions/sesn_one?before_seq=253", Some(&token))
        .await
        .body;
    assert_eq!(seqs(&older), (53..253).collect::<Vec<_>>());
    assert!(older.contains("id=\"page-newer\"") && older.contains("id=\"page-live\""));
    assert!(!older.contains("data-live-url"));
    let first = s
        .get("/console/sessions/sesn_one?after_seq=0", Some(&token))
        .await
        .body;
    assert_eq!(seqs(&first), (1..=200).collect::<Vec<_>>());
    assert!(!first.contains("id=\"page-older\""));
    let mid = s
        .get("/console/sessions/sesn_one?after_seq=249", Some(&token))
        .await
        .body;
    let got = seqs(&mid);
    assert_eq!(got, (250..=449).collect::<Vec<_>>());
    let last = s
        .get("/console/sessions/sesn_one?after_seq=400", Some(&token))
        .await
        .body;
    assert!(
        last.contains("pre class=\"result\""),
        "the result past the page is joined"
    );
    assert_eq!(
        s.get("/console/sessions/sesn_one?before_seq=x", Some(&token))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.get("/console/sessions/sesn_nope", Some(&token))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn sessions_list_filters() {
    let s = Stack::new(ConsoleConfig::enabled(false)).await;
    s.session("sesn_a", "a", vec![]).await;
    s.session("sesn_b", "b", vec![]).await;
    let (token, _) = s.sign_in(&s.admin_key).await;
    let all = s.get("/console/sessions", Some(&token)).await.body;
    assert!(
        all.contains("data-session-id=\"sesn_a\"") && all.contains("data-session-id=\"sesn_b\"")
    );
    assert!(all.contains("data-status=\"idle\""));
    let none = s
        .get("/console/sessions?status=running", Some(&token))
        .await
        .body;
    assert!(!none.contains("data-session-id="));
    let env = s
        .get("/console/sessions?environment=env_other", Some(&token))
        .await
        .body;
    assert!(!env.contains("data-session-id="));
    let agent = s
        .get(
            "/console/sessions?agent=helper&since=2000-01-01",
            Some(&token),
        )
        .await
        .body;
    assert!(agent.contains("data-session-id=\"sesn_a\""));
    let future = s
        .get("/console/sessions?since=2999-01-01T00:00", Some(&token))
        .await
        .body;
    assert!(!future.contains("data-session-id="));
    let bad = s
        .get("/console/sessions?status=sleeping", Some(&token))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("status: expected"));
}

#[tokio::test]
async fn sign_in_attempts_are_rate_limited() {
    let s = Stack::new(ConsoleConfig::enabled(false)).await;
    let mut limited = None;
    for i in 0..12 {
        let r = s
            .post("/console/login", None, &[("api_key", "sk-airlock-wrong")])
            .await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(i);
            assert!(r.headers.contains_key(header::RETRY_AFTER));
            break;
        }
    }
    assert_eq!(limited, Some(10), "the eleventh attempt at once is refused");
}

#[test]
fn console_config_errors_name_the_key() {
    let loopback = "127.0.0.1:8080".parse().unwrap();
    let public = "0.0.0.0:8080".parse().unwrap();
    let raw = |t: &str| -> RawConsoleConfig { toml::from_str(t).unwrap() };
    // defaults: on for loopback or TLS, off otherwise
    assert!(
        ConsoleConfig::from_raw(&raw(""), loopback, false)
            .unwrap()
            .enabled
    );
    assert!(
        !ConsoleConfig::from_raw(&raw(""), public, false)
            .unwrap()
            .enabled
    );
    let tls = ConsoleConfig::from_raw(&raw(""), public, true).unwrap();
    assert!(tls.enabled && tls.secure_cookies);
    assert_eq!(tls.session_ttl, Duration::from_secs(480 * 60));
    let e = ConsoleConfig::from_raw(&raw("enabled = true"), public, false).unwrap_err();
    assert_eq!(e.key, "console.enabled", "{e}");
    assert!(e.to_string().contains("[api.tls]"), "{e}");
    for bad in ["session_ttl_minutes = 0", "session_ttl_minutes = 100000"] {
        let e = ConsoleConfig::from_raw(&raw(bad), loopback, false).unwrap_err();
        assert_eq!(e.key, "console.session_ttl_minutes", "{e}");
    }
    let unknown = toml::from_str::<RawConsoleConfig>("enable = true").unwrap_err();
    assert!(unknown.to_string().contains("enable"), "{unknown}");
    assert_eq!(
        ConsoleConfig::from_raw(&raw("session_ttl_minutes = 5"), loopback, false)
            .unwrap()
            .session_ttl,
        Duration::from_secs(300)
    );
}

/// The benchmark of issue 12: a session of 10,000 events; the timeline's
/// first paint (the live tail) is one page of 200, whatever the length.
#[tokio::test]
async fn timeline_first_paint_of_a_10000_event_session() {
    let s = Stack::new(ConsoleConfig::enabled(false)).await;
    let mut events = Vec::with_capacity(10_000);
    for i in 0..5_000 {
        events.push(json!({"type": "agent.tool_use", "name": "bash", "input": {"command": format!("echo {i}")}, "evaluated_permission": "allow"}));
        events.push(json!({"type": "agent.message", "content": text(&format!("step {i} of a long session"))}));
    }
    s.session("sesn_one", "10k", events).await;
    let (token, _) = s.sign_in(&s.admin_key).await;
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..5 {
        let t0 = Instant::now();
        let r = s.get("/console/sessions/sesn_one", Some(&token)).await;
        times.push(t0.elapsed());
        assert_eq!(r.status, StatusCode::OK);
        bytes = r.body.len();
        assert_eq!(r.body.matches("data-seq=\"").count(), 200);
    }
    times.sort();
    let first = s
        .get("/console/sessions/sesn_one?after_seq=0", Some(&token))
        .await;
    println!(
        "timeline first paint, 10000-event session: median {:.1} ms (min {:.1}, max {:.1}) server time over 5 requests, {} bytes of HTML (200 events); first page {} bytes",
        times[2].as_secs_f64() * 1000.0,
        times[0].as_secs_f64() * 1000.0,
        times[4].as_secs_f64() * 1000.0,
        bytes,
        first.body.len()
    );
    assert!(bytes < 400_000, "one page stays small: {bytes} bytes");
}
