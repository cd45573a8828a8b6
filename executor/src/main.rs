//! `airlock-executor --settings <json>`: serve tool calls on stdin/stdout.
//! Exit codes: 0 on a clean end of input or `Shutdown`, 2 on undecodable
//! input (after a `Fatal` message), 64 on bad arguments.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use executor::server::{self, ServeError};
use protocol::executor::ExecutorSettings;
use protocol::frame::FrameCodec;

fn parse_args() -> Result<ExecutorSettings, String> {
    let mut args = std::env::args().skip(1);
    let mut settings = ExecutorSettings::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--settings" => {
                let json = args.next().ok_or("--settings needs a JSON value")?;
                settings =
                    serde_json::from_str(&json).map_err(|e| format!("invalid --settings: {e}"))?;
            }
            "--version" => {
                println!("airlock-executor {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(settings)
}

fn main() -> ExitCode {
    let settings = match parse_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("airlock-executor: {e}");
            return ExitCode::from(64);
        }
    };
    if let Some(socket) = &settings.egress_socket {
        if let Err(e) = executor::egress::start(executor::egress::LISTEN_ADDR, socket.as_ref()) {
            // Tools still work without egress; the proxy answers nothing.
            eprintln!(
                "airlock-executor: cannot listen on {} for egress: {e}",
                executor::egress::LISTEN_ADDR
            );
        }
    }
    let codec = FrameCodec::new(settings.max_frame_bytes as usize);
    let stdin = std::io::stdin().lock();
    match server::serve(settings, stdin, std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServeError::Input(message)) => {
            eprintln!("airlock-executor: {message}");
            server::report_fatal(codec, &mut std::io::stdout(), &message);
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("airlock-executor: {e}");
            ExitCode::from(2)
        }
    }
}
