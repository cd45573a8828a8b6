//! Session store benchmark: durable appends/s (single and batched, SQLite and
//! PostgreSQL) and the time to read a whole session back.
//!
//! ```text
//! cargo run --release -p session-store --example bench-store [-- --dir PATH]
//! ```
//!
//! PostgreSQL rows run when `AIRLOCK_TEST_PG_URL` is set (a throwaway schema
//! is created and dropped). Baselines printed beside the figures: the raw
//! "overwrite 4 KiB + fdatasync" rate of the data dir's disk (what a lone
//! appender that waits for each commit is bound by), and the SQLite store with
//! group commit turned off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use session_store::{
    Fence, NewEvent, NewSession, PgOptions, PgStore, SessionStatus, SessionStore, SqliteOptions,
    SqliteStore,
};

fn event(i: u64) -> NewEvent {
    NewEvent::processed(json!({
        "type": "agent.message",
        "content": [{"type": "text", "text": format!("step {i}: {}", "lorem ipsum dolor sit amet ".repeat(8))}],
    }))
}

async fn new_session(store: &dyn SessionStore) -> String {
    let id = format!("sesn_{}", uuid::Uuid::now_v7().simple());
    store
        .create_session(NewSession {
            id: id.clone(),
            status: SessionStatus::Running,
            body: json!({}),
            initial_events: vec![],
        })
        .await
        .unwrap();
    id
}

/// `tasks` tasks each make `appends` appends of `batch` events to their own
/// session (or one shared session); returns events/s.
async fn appends(
    store: Arc<dyn SessionStore>,
    tasks: u64,
    appends: u64,
    batch: u64,
    shared: bool,
) -> (u64, Duration) {
    let shared_id = new_session(&*store).await;
    let mut ids = Vec::new();
    for _ in 0..tasks {
        ids.push(if shared {
            shared_id.clone()
        } else {
            new_session(&*store).await
        });
    }
    let start = Instant::now();
    let mut handles = Vec::new();
    for id in ids {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..appends {
                let events = (0..batch).map(|k| event(i * batch + k)).collect();
                store.append(&id, events, Fence::None).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    (tasks * appends * batch, start.elapsed())
}

/// Fills a session with `n` events, then reads it back whole (pages of
/// 10,000); returns the median of 5 read-backs.
async fn read_back(store: &dyn SessionStore, n: u64) -> Duration {
    let id = new_session(store).await;
    let mut written = 0;
    while written < n {
        let size = (n - written).min(500);
        store
            .append(
                &id,
                (0..size).map(|k| event(written + k)).collect(),
                Fence::None,
            )
            .await
            .unwrap();
        written += size;
    }
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let mut from = 1;
        let mut count = 0;
        loop {
            let page = store.read(&id, from, 10_000).await.unwrap();
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            count += page.len() as u64;
        }
        times.push(start.elapsed());
        assert_eq!(count, n);
    }
    times.sort();
    times[2]
}

/// Raw rate of "overwrite 4 KiB, fdatasync" on the data dir's disk (what one
/// appender waiting for each commit pays at least once per append).
fn fsync_rate(dir: &std::path::Path) -> f64 {
    use std::io::{Seek, SeekFrom};
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 4096];
    f.write_all(&block).unwrap();
    f.sync_all().unwrap();
    let n = 300;
    let start = Instant::now();
    for _ in 0..n {
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    std::fs::remove_file(&path).unwrap();
    rate
}

struct Table {
    rows: Vec<[String; 6]>,
}

impl Table {
    fn add(
        &mut self,
        backend: &str,
        workload: &str,
        events: u64,
        took: Duration,
        baseline: String,
        target: &str,
    ) {
        let rate = events as f64 / took.as_secs_f64();
        self.rows.push([
            backend.into(),
            workload.into(),
            events.to_string(),
            if took < Duration::from_secs(1) {
                format!("{:.1} ms", took.as_secs_f64() * 1000.0)
            } else {
                format!("{:.2} s", took.as_secs_f64())
            },
            format!("{rate:.0}"),
            format!("{baseline} {target}").trim().to_owned(),
        ]);
        eprintln!("  done: {backend} {workload}: {rate:.0} events/s");
    }

    fn print(&self) {
        let header = [
            "backend",
            "workload",
            "events",
            "time",
            "events/s",
            "baseline / target",
        ];
        let mut widths = header.map(str::len);
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.len());
            }
        }
        let line = |cells: [&str; 6]| {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
                if i == 2 || i == 3 || i == 4 {
                    s.push_str(&format!("{c:>w$}  "));
                } else {
                    s.push_str(&format!("{c:<w$}  "));
                }
            }
            println!("{}", s.trim_end());
        };
        line(header);
        line(widths.map(|w| "-".repeat(w)).each_ref().map(|s| s.as_str()));
        for row in &self.rows {
            line(row.each_ref().map(|s| s.as_str()));
        }
    }
}

async fn run_writes(
    table: &mut Table,
    backend: &str,
    store: Arc<dyn SessionStore>,
    fsyncs: Option<f64>,
) {
    let single_baseline = fsyncs
        .map(|r| format!("raw write+fdatasync {r:.0}/s"))
        .unwrap_or_default();
    let (n, t) = appends(store.clone(), 1, 1000, 1, false).await;
    table.add(
        backend,
        "single: 1 event/append, 1 task",
        n,
        t,
        single_baseline,
        "",
    );
    let (n, t) = appends(store.clone(), 32, 200, 1, false).await;
    table.add(
        backend,
        "single: 1 event/append, 32 tasks, 32 sessions",
        n,
        t,
        String::new(),
        "",
    );
    let (n, t) = appends(store.clone(), 32, 200, 1, true).await;
    table.add(
        backend,
        "single: 1 event/append, 32 tasks, 1 session",
        n,
        t,
        String::new(),
        "",
    );
    let (n, t) = appends(store.clone(), 1, 500, 100, false).await;
    table.add(
        backend,
        "batched: 100 events/append, 1 task",
        n,
        t,
        String::new(),
        "target >= 10000",
    );
    let (n, t) = appends(store.clone(), 8, 100, 100, false).await;
    table.add(
        backend,
        "batched: 100 events/append, 8 tasks",
        n,
        t,
        String::new(),
        "target >= 10000",
    );
}

async fn run_reads(table: &mut Table, backend: &str, store: &dyn SessionStore) {
    for n in [1_000u64, 10_000, 100_000] {
        let t = read_back(store, n).await;
        table.add(
            backend,
            &format!("read back a {n}-event session (median of 5)"),
            n,
            t,
            String::new(),
            "",
        );
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut dir_arg: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir_arg = args.next().map(PathBuf::from),
            other => {
                eprintln!("unknown argument {other:?}; usage: bench-store [--dir PATH]");
                std::process::exit(64);
            }
        }
    }
    let tmp = tempfile::tempdir_in(dir_arg.unwrap_or_else(std::env::temp_dir)).unwrap();
    let mut table = Table { rows: Vec::new() };

    let fsyncs = fsync_rate(tmp.path());
    eprintln!("raw write+fdatasync rate: {fsyncs:.0}/s");

    let sqlite = SqliteStore::open(&tmp.path().join("bench.sqlite3"), SqliteOptions::default())
        .await
        .unwrap();
    run_writes(&mut table, "sqlite", Arc::new(sqlite.clone()), Some(fsyncs)).await;

    // baseline: the same store with group commit off (one transaction per write)
    let no_group = SqliteStore::open(
        &tmp.path().join("bench-nogroup.sqlite3"),
        SqliteOptions {
            max_group_commit: 1,
            ..SqliteOptions::default()
        },
    )
    .await
    .unwrap();
    let (n, t) = appends(Arc::new(no_group), 32, 50, 1, false).await;
    table.add(
        "sqlite",
        "baseline: 32 tasks, group commit off",
        n,
        t,
        String::new(),
        "",
    );

    run_reads(&mut table, "sqlite", &sqlite).await;

    match std::env::var("AIRLOCK_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => {
            let schema = format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
            let pg = PgStore::connect(
                &url,
                PgOptions {
                    schema,
                    max_connections: 40,
                    ..PgOptions::default()
                },
            )
            .await
            .unwrap();
            run_writes(&mut table, "postgres", Arc::new(pg.clone()), None).await;
            run_reads(&mut table, "postgres", &pg).await;
            pg.drop_schema().await.unwrap();
        }
        _ => eprintln!("postgres: skipped (AIRLOCK_TEST_PG_URL is unset)"),
    }

    println!();
    println!(
        "session store benchmark ({} cores, data dir {}, events ~330 bytes of JSON)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        tmp.path().display()
    );
    table.print();
}
