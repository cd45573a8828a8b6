//! bench-console: the web console's timeline of a 10,000-event session.
//!
//! A real `control-plane serve` (its SQLite session store and catalog in a
//! temp dir): an agent, an environment and a session are made through the
//! public API; the control plane is stopped and the session's log is filled
//! through the session-store API (`SqliteStore::append`) with 10,000 events
//! in the harness's own shapes (`harness::events`: model spans, agent
//! messages, `bash` tool uses with their results, idle/running turns); then
//! the control plane is started again and, signed in to the console with an
//! API key, each page is loaded `--loads` times (default 50, after 5 warm-up
//! loads) one after another over one keep-alive loopback connection.
//!
//! Printed per page: the events it shows, the bytes of the response body, and
//! the time from sending the request to the first byte and to the last byte
//! (p50/p99), for the console's timeline (the default live tail, the first
//! page, a page in the middle), the console's sessions list, and, for
//! comparison, the public API's own event list (its default page of 1000,
//! and `limit=200`).
//!
//! Run: `cargo build --release -p control-plane -p airlock-tests --bin bench-console`
//! then `target/release/bench-console [--events N] [--loads N]` (the release
//! binaries next to it are used; `AIRLOCK_BIN_DIR` overrides).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use airlock_tests::deploy::{ControlPlane, CpOptions};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use harness::events::{
    agent_message, agent_tool_result, agent_tool_use, span_end, span_start, status_idle,
    status_running, text_block, Permission, StopReason,
};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use session_store::{new_event_id, Fence, NewEvent, SessionStore, SqliteOptions, SqliteStore};

type Http = Client<HttpConnector, Full<Bytes>>;

struct Args {
    events: usize,
    loads: usize,
}

fn args() -> Result<Args> {
    let mut a = Args {
        events: 10_000,
        loads: 50,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let n: usize = value
            .parse()
            .with_context(|| format!("{flag}: `{value}` is not a number"))?;
        match flag.as_str() {
            "--events" => a.events = n,
            "--loads" => a.loads = n.max(1),
            other => bail!("unknown flag {other} (--events N, --loads N)"),
        }
    }
    Ok(a)
}

/// One response: status, headers of interest, body, and its timings.
struct Loaded {
    status: u16,
    location: Option<String>,
    set_cookie: Option<String>,
    body: Bytes,
    first_byte: Duration,
    last_byte: Duration,
}

async fn send(http: &Http, req: http::Request<Full<Bytes>>) -> Result<Loaded> {
    let t0 = Instant::now();
    let resp = http.request(req).await?;
    let first_byte = t0.elapsed();
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let location = header("location");
    let set_cookie = header("set-cookie");
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Loaded {
        status,
        location,
        set_cookie,
        body,
        first_byte,
        last_byte: t0.elapsed(),
    })
}

fn api_request(
    base: &str,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<http::Request<Full<Bytes>>> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "managed-agents-2026-04-01");
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    Ok(b.body(Full::new(
        body.map_or_else(Bytes::new, |v| Bytes::from(v.to_string())),
    ))?)
}

async fn api_post(http: &Http, base: &str, key: &str, path: &str, body: Value) -> Result<Value> {
    let r = send(http, api_request(base, key, "POST", path, Some(body))?).await?;
    if r.status != 200 {
        bail!(
            "POST {path}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    Ok(serde_json::from_slice(&r.body)?)
}

/// The session's events in the harness's shapes: a user message, then turns
/// of model span, agent message, `bash` tool use and result, with an idle
/// and a new user message every 25 calls; exactly `n` events.
fn events(n: usize) -> Vec<NewEvent> {
    let user = |text: &str| {
        NewEvent::processed(json!({
            "type": "user.message",
            "content": [{"type": "text", "text": text}],
        }))
    };
    let mut out = vec![user(
        "Run the test suite crate by crate and fix what fails.",
    )];
    let mut call = 0usize;
    while out.len() < n {
        if call % 25 == 0 {
            if call > 0 {
                out.push(NewEvent::processed(status_idle(&StopReason::EndTurn)));
                out.push(user("Go on with the next crates."));
            }
            out.push(NewEvent::processed(status_running()));
        }
        let start = new_event_id();
        out.push(NewEvent {
            body: span_start(),
            id: Some(start.clone()),
            queued: false,
        });
        out.push(NewEvent::processed(span_end(
            &start,
            false,
            &model::Usage {
                input_tokens: 1200 + call as u64,
                output_tokens: 80,
                ..Default::default()
            },
        )));
        out.push(NewEvent::processed(agent_message(&format!(
            "Step {call}: running the tests of crate-{}.",
            call % 40
        ))));
        let use_id = new_event_id();
        out.push(NewEvent {
            body: agent_tool_use(
                "bash",
                &json!({"command": format!("cargo test -p crate-{} --no-fail-fast 2>&1 | tail -n 8", call % 40)}),
                Permission::AlwaysAllow,
            ),
            id: Some(use_id.clone()),
            queued: false,
        });
        let output = format!(
            "running 12 tests\ntest parse::empty ... ok\ntest parse::nested ... ok\ntest io::roundtrip ... ok\n\
             test io::large ... ok\ntest result: ok. 12 passed; 0 failed; 0 ignored; finished in 0.{:02}s\n",
            call % 100
        );
        out.push(NewEvent::processed(agent_tool_result(
            &use_id,
            &[text_block(&output)],
            false,
        )));
        call += 1;
    }
    out.truncate(n);
    out
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

fn shown(body: &[u8], api: bool) -> usize {
    if api {
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["data"].as_array().map(Vec::len))
            .unwrap_or(0)
    } else {
        let html = String::from_utf8_lossy(body);
        html.matches("<li class=\"event").count() + html.matches("<tr class=\"session").count()
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    if std::env::var_os("AIRLOCK_BIN_DIR").is_none() {
        let exe = std::env::current_exe()?;
        let dir = exe.parent().map(PathBuf::from).context("binary dir")?;
        std::env::set_var("AIRLOCK_BIN_DIR", dir);
    }
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let mut cp = ControlPlane::configure(CpOptions::default())?;
    cp.start()?;
    let created: Value =
        serde_json::from_str(&cp.cli(&["api-keys", "create", "--name", "bench", "--json"])?)?;
    let key = created["key"].as_str().context("api key")?.to_owned();
    let base = format!("http://{}", cp.api_addr());
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let http: Http = Client::builder(TokioExecutor::new()).build(connector);
    let agent = api_post(
        &http,
        &base,
        &key,
        "/v1/agents",
        json!({"name": "bench", "model": "claude-fake", "tools": [{"type": "agent_toolset_20260401"}]}),
    )
    .await?;
    let env = api_post(
        &http,
        &base,
        &key,
        "/v1/environments",
        json!({"name": "bench-console"}),
    )
    .await?;
    let session = api_post(
        &http,
        &base,
        &key,
        "/v1/sessions",
        json!({"agent": agent["id"], "environment_id": env["id"], "title": "10,000 events"}),
    )
    .await?;
    let sid = session["id"].as_str().context("session id")?.to_owned();
    cp.terminate()?;

    // The log, written through the session-store API while the control plane is down.
    let t = Instant::now();
    {
        let store =
            SqliteStore::open_in_dir(&cp.dir().join("data"), SqliteOptions::default()).await?;
        let all = events(args.events);
        let mut it = all.into_iter().peekable();
        while it.peek().is_some() {
            let batch: Vec<NewEvent> = it.by_ref().take(500).collect();
            store.append(&sid, batch, Fence::None).await?;
        }
        let last = store.get_session(&sid).await?;
        eprintln!(
            "wrote {} events to {sid} in {:.1} s (status {})",
            args.events,
            t.elapsed().as_secs_f64(),
            last.status
        );
    }
    cp.start()?;

    // Sign in to the console.
    let login = send(
        &http,
        http::Request::builder()
            .method("POST")
            .uri(format!("{base}/console/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(format!("api_key={key}"))))?,
    )
    .await?;
    if login.status != 303 {
        bail!(
            "console login: {} {:?} {}",
            login.status,
            login.location,
            String::from_utf8_lossy(&login.body)
        );
    }
    let cookie = login
        .set_cookie
        .as_deref()
        .and_then(|c| c.split(';').next())
        .context("no console cookie")?
        .to_owned();

    let middle = (args.events / 2) as u64;
    let pages: Vec<(String, String, bool)> = vec![
        (
            "console timeline, default (live tail)".into(),
            format!("/console/sessions/{sid}"),
            false,
        ),
        (
            "console timeline, first page".into(),
            format!("/console/sessions/{sid}?after_seq=0"),
            false,
        ),
        (
            format!("console timeline, before_seq={middle}"),
            format!("/console/sessions/{sid}?before_seq={middle}"),
            false,
        ),
        (
            "console sessions list".into(),
            "/console/sessions".into(),
            false,
        ),
        (
            "API events list, default (limit 1000)".into(),
            format!("/v1/sessions/{sid}/events"),
            true,
        ),
        (
            "API events list, limit=200".into(),
            format!("/v1/sessions/{sid}/events?limit=200"),
            true,
        ),
    ];
    println!(
        "\nbench-console: one session of {} events, {} loads per page after 5 warm-up loads, \
         one keep-alive loopback connection, {} build",
        args.events,
        args.loads,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!(
        "| {:<44} | {:>6} | {:>9} | {:>13} | {:>8} | {:>8} |",
        "page", "items", "bytes", "first byte p50", "p50 ms", "p99 ms"
    );
    println!(
        "|{:-<46}|{:->8}|{:->11}|{:->15}|{:->10}|{:->10}|",
        "", "", "", "", "", ""
    );
    for (name, path, api) in &pages {
        let mut first = Vec::with_capacity(args.loads);
        let mut last = Vec::with_capacity(args.loads);
        let mut bytes = 0;
        let mut events_shown = 0;
        for i in 0..args.loads + 5 {
            let req = if *api {
                api_request(&base, &key, "GET", path, None)?
            } else {
                http::Request::builder()
                    .uri(format!("{base}{path}"))
                    .header("cookie", &cookie)
                    .body(Full::new(Bytes::new()))?
            };
            let r = send(&http, req).await?;
            if r.status != 200 {
                bail!(
                    "GET {path}: {} {:?} {}",
                    r.status,
                    r.location,
                    String::from_utf8_lossy(&r.body[..r.body.len().min(500)])
                );
            }
            if i >= 5 {
                first.push(r.first_byte);
                last.push(r.last_byte);
            }
            bytes = r.body.len();
            events_shown = shown(&r.body, *api);
        }
        first.sort();
        last.sort();
        println!(
            "| {:<44} | {:>6} | {:>9} | {:>13.2} | {:>8.2} | {:>8.2} |",
            name,
            events_shown,
            bytes,
            pct(&first, 0.5),
            pct(&last, 0.5),
            pct(&last, 0.99)
        );
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nmachine: {} cores; load average before {}, after {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        load_after
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    cp.terminate()?;
    Ok(())
}
