//! The conformance suite against the SQLite store, plus SQLite-only tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;

use std::sync::Arc;

use conformance::Fixture;
use session_store::{SqliteOptions, SqliteStore};

async fn sqlite() -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_in_dir(dir.path(), SqliteOptions::default()).await.unwrap();
    Some(Fixture {
        store: Arc::new(store),
        guard: Box::new(dir),
    })
}

all_conformance_tests!(sqlite);
