//! A data dir whose disk is full, tried as a new user would: the catalog and
//! the session store both live on a tiny tmpfs that is then filled. A
//! catalog write must answer like a session append does (503 `api_error`,
//! "temporarily unavailable; retry", `x-should-retry: true`), never a bare
//! 500, and the log line must name the cause (`database or disk is full`).
//!
//! Mounting a tmpfs needs root; without it the test says so and returns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use api::{error_response, ApiError};
use catalog::{Catalog, NewAgent, SqliteCatalog};
use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use session_store::{
    NewEvent, NewSession, SessionStatus, SessionStore, SqliteOptions, SqliteStore, StoreError,
};

/// A tmpfs of `size_kib` mounted on a fresh directory; unmounted on drop.
struct TinyDisk {
    dir: tempfile::TempDir,
}

impl TinyDisk {
    /// `None` (the test is skipped) only outside CI: under `CI=true` a
    /// missing tmpfs fails the test, so the suite cannot pass without it.
    fn mount(size_kib: u64) -> Option<TinyDisk> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_kib}k,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        let why = match out {
            Ok(o) if o.status.success() => return Some(TinyDisk { dir }),
            Ok(o) => format!(
                "cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => format!("cannot run mount: {e}"),
        };
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{why} (CI=true: this test must run)");
        }
        eprintln!("SKIPPED: {why}");
        None
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the disk refuses more (ENOSPC).
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match f.write_all(&chunk).and_then(|()| f.sync_all()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return path,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Every event's fields, as `name=value` text, while installed.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push_str(&format!(" {}={value}", field.name()));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(event.metadata().level().to_string());
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

async fn envelope(error: ApiError) -> (StatusCode, Option<String>, Value) {
    let response = error_response(&error, "req_full");
    let status = response.status();
    let retry = response
        .headers()
        .get("x-should-retry")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, retry, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn a_full_disk_answers_503_for_catalog_writes_like_session_appends() {
    let Some(disk) = TinyDisk::mount(2048) else {
        return;
    };
    let catalog = SqliteCatalog::open_in_dir(disk.path()).await.unwrap();
    let store = SqliteStore::open_in_dir(disk.path(), SqliteOptions::default())
        .await
        .unwrap();
    let (session, _) = store
        .create_session(NewSession {
            id: "sesn_full".into(),
            status: SessionStatus::Idle,
            body: json!({}),
            initial_events: vec![],
        })
        .await
        .unwrap();
    let filler = disk.fill();

    // Larger than any slack a page or the WAL might still have.
    let big = "x".repeat(256 * 1024);
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());

    let appended = store
        .append(
            &session.id,
            vec![NewEvent::queued(
                json!({"type": "user.message", "text": big}),
            )],
            session_store::Fence::None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(appended, StoreError::Unavailable { .. }),
        "{appended:?}"
    );
    let (append_status, append_retry, append_body) = envelope(appended.into()).await;

    let written = catalog
        .create_agent(NewAgent {
            id: "agent_full".into(),
            body: json!({"name": "coder", "system": big}),
        })
        .await
        .unwrap_err();
    assert!(
        written.is_transient(),
        "a full disk is transient: {written:?}"
    );
    let (status, retry, body) = envelope(written.into()).await;

    assert_eq!(append_status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(retry, append_retry);
    assert_eq!(retry.as_deref(), Some("true"));
    assert_eq!(body["type"], append_body["type"]);
    assert_eq!(body["error"]["type"], append_body["error"]["type"]);
    assert_eq!(body["error"]["type"], "api_error");
    assert_eq!(body["request_id"], "req_full");
    assert_eq!(
        body["error"]["message"],
        "the catalog is temporarily unavailable; retry"
    );
    assert_eq!(
        append_body["error"]["message"],
        "the session store is temporarily unavailable; retry"
    );

    let logged = capture.0.lock().unwrap().clone();
    let line = logged
        .iter()
        .find(|l| l.contains("catalog unavailable"))
        .unwrap_or_else(|| panic!("no catalog log line in {logged:?}"));
    assert!(line.starts_with("WARN"), "{line}");
    assert!(
        line.contains("database or disk is full"),
        "the log line names the cause: {line}"
    );

    // Space again: the same write succeeds (it was transient, nothing stuck).
    std::fs::remove_file(filler).unwrap();
    catalog
        .create_agent(NewAgent {
            id: "agent_full".into(),
            body: json!({"name": "coder"}),
        })
        .await
        .unwrap();
}
