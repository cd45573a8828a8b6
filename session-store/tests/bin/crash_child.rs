//! session-store-crash-child: the child side of
//! `tests/sqlite.rs::acknowledged_appends_survive_kill_9`, a helper binary
//! (not a test, so it cannot count as a passing one).
//!
//! ```text
//! session-store-crash-child DB_PATH SESSION_ID
//! ```
//!
//! Opens the SQLite store at `DB_PATH`, prints `READY`, then appends to
//! `SESSION_ID` as fast as it can from eight tasks and prints `ACK <seq> <id>`
//! for every event once its append has returned, until it is killed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use session_store::{Fence, NewEvent, SessionStore, SqliteOptions, SqliteStore};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(db), Some(session)) = (args.next(), args.next()) else {
        eprintln!("usage: session-store-crash-child DB_PATH SESSION_ID");
        std::process::exit(64);
    };
    let store = SqliteStore::open(std::path::Path::new(&db), SqliteOptions::default())
        .await
        .unwrap();
    println!("READY");
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let store = store.clone();
        let session = session.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                let size = 1 + (i * 7 + t) % 20;
                let batch = (0..size)
                    .map(|k| {
                        NewEvent::processed(serde_json::json!({
                            "type": "agent.message",
                            "content": [{"type": "text", "text": "x".repeat(200)}],
                            "task": t, "i": i, "k": k,
                        }))
                    })
                    .collect();
                let stored = store.append(&session, batch, Fence::None).await.unwrap();
                let mut out = String::new();
                for e in stored {
                    out.push_str(&format!("ACK {} {}\n", e.seq, e.id));
                }
                print!("{out}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}
