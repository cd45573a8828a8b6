//! fake-model: the scripted fake Messages server as a process, for
//! multi-process tests (the control plane is killed and restarted; the fake
//! keeps its request record) and for trying the control plane by hand.
//!
//! ```text
//! fake-model [--listen 127.0.0.1:0] [--latency-ms 0] [--script echo|tool-loop]
//!            [--tool-calls 50] [--tool bash] [--record requests.jsonl] [--exit-on-stdin-eof]
//! ```
//!
//! Prints `listening on http://ADDR` on stdout once ready (use it as
//! `ANTHROPIC_BASE_URL`), appends every request it receives to `--record` as
//! one JSON line `{"n", "at_ms", "path", "body"}`, and exits on SIGINT/SIGTERM
//! (or, with `--exit-on-stdin-eof`, when its parent closes stdin: a test
//! that dies does not leave it behind).
//!
//! Scripts: `echo` answers every request with `echo: <last user text>`;
//! `tool-loop` answers with tool call k (`{"command": "echo step k"}`) until
//! the conversation holds `--tool-calls` of them, then a final text.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use airlock_tests::fake_model::{tool_loop, FakeModel, Reply, RequestCtx, Script};
use anyhow::{bail, Context, Result};
use serde_json::json;

struct Args {
    listen: SocketAddr,
    latency: Duration,
    script: String,
    tool_calls: usize,
    tool: String,
    record: Option<std::path::PathBuf>,
    exit_on_stdin_eof: bool,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        latency: Duration::ZERO,
        script: "echo".into(),
        tool_calls: 50,
        tool: "bash".into(),
        record: None,
        exit_on_stdin_eof: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => a.listen = value()?.parse().context("--listen")?,
            "--latency-ms" => {
                a.latency = Duration::from_millis(value()?.parse().context("--latency-ms")?)
            }
            "--script" => a.script = value()?,
            "--tool-calls" => a.tool_calls = value()?.parse().context("--tool-calls")?,
            "--tool" => a.tool = value()?,
            "--record" => a.record = Some(value()?.into()),
            "--exit-on-stdin-eof" => a.exit_on_stdin_eof = true,
            "-h" | "--help" => {
                println!("fake-model [--listen ADDR] [--latency-ms N] [--script echo|tool-loop] [--tool-calls N] [--tool NAME] [--record FILE] [--exit-on-stdin-eof]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if !a.listen.ip().is_loopback() {
        bail!("--listen must be a loopback address, got {}", a.listen);
    }
    Ok(a)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = parse()?;
    let builder = FakeModel::builder()
        .listen(args.listen)
        .latency(args.latency);
    let fake = match args.script.as_str() {
        "echo" => {
            builder
                .start(|r: &RequestCtx| {
                    Reply::text(format!("echo: {}", r.last_user_text().unwrap_or("")))
                })
                .await?
        }
        "tool-loop" => {
            let tool = args.tool.clone();
            let inner = tool_loop(args.tool_calls, move |k| {
                (tool.clone(), json!({"command": format!("echo step {k}")}))
            });
            builder.start(move |r: &RequestCtx| inner.reply(r)).await?
        }
        other => bail!("unknown --script {other} (echo, tool-loop)"),
    };
    println!("listening on {}", fake.base_url());
    std::io::stdout().flush()?;
    let started = Instant::now();
    let mut written = 0usize;
    let mut file = match &args.record {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening {}", p.display()))?,
        ),
        None => None,
    };
    let watch_stdin = args.exit_on_stdin_eof;
    let mut stdin_closed = Box::pin(async move {
        if !watch_stdin {
            std::future::pending::<()>().await;
        }
        airlock_tests::fake_model::stdin_closed().await;
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            () = &mut stdin_closed => break,
        }
        if let Some(f) = file.as_mut() {
            let reqs = fake.requests();
            for r in reqs.iter().skip(written) {
                let line = json!({
                    "n": r.n,
                    "at_ms": r.at.duration_since(started).as_millis() as u64,
                    "path": r.path,
                    "body": r.body,
                });
                writeln!(f, "{line}")?;
            }
            written = reqs.len();
            f.flush()?;
        }
    }
    Ok(())
}
