//! The executor's stdio server: reads framed [`ToExecutor`] messages from
//! stdin, runs each call on its own thread (bash calls queue on the one
//! persistent shell; file tools run in parallel) and writes framed
//! [`FromExecutor`] messages to stdout, one whole message at a time.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use protocol::executor::{ExecutorSettings, FromExecutor, ToExecutor, EXECUTOR_PROTOCOL_VERSION};
use protocol::frame::{blocking, Frame, FrameCodec};
use serde::Deserialize;
use serde_json::Value;

use crate::shell::{Shell, ShellConfig};
use crate::tools::{self, Output};

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Input could not be decoded (the stream is in an unknown state).
    #[error("bad input: {0}")]
    Input(String),
    /// stdout is gone.
    #[error("cannot write to the agent: {0}")]
    Output(std::io::Error),
}

/// Shared writer: whole messages, never interleaved.
pub struct Sink<W> {
    codec: FrameCodec,
    out: Arc<Mutex<W>>,
}

impl<W> Clone for Sink<W> {
    fn clone(&self) -> Self {
        Self {
            codec: self.codec,
            out: self.out.clone(),
        }
    }
}

impl<W> std::fmt::Debug for Sink<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("codec", &self.codec).finish()
    }
}

impl<W: Write> Sink<W> {
    /// Write one message with its body.
    pub fn send(&self, message: &FromExecutor, body: &[u8]) -> Result<(), ServeError> {
        let mut buf = BytesMut::new();
        let frame = Frame::control(message).map_err(|e| ServeError::Input(e.to_string()))?;
        self.codec
            .encode(&frame, &mut buf)
            .map_err(|e| ServeError::Input(e.to_string()))?;
        for chunk in body.chunks(self.codec.max_data_chunk()) {
            self.codec
                .encode(&Frame::data(Bytes::copy_from_slice(chunk)), &mut buf)
                .map_err(|e| ServeError::Input(e.to_string()))?;
        }
        // A panic while writing cannot leave a half-written message that a
        // later writer could complete correctly anyway; recover the guard.
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.write_all(&buf).map_err(ServeError::Output)?;
        out.flush().map_err(ServeError::Output)
    }

    fn result(&self, id: u64, o: &Output) -> Result<(), ServeError> {
        let body = serde_json::to_vec(&o.content).map_err(|e| ServeError::Input(e.to_string()))?;
        self.send(
            &FromExecutor::Result {
                id,
                is_error: o.is_error,
                content_bytes: body.len() as u64,
                exit_code: o.exit_code,
            },
            &body,
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BashInput {
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    restart: bool,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

fn run_bash(
    shell: &Mutex<Shell>,
    settings: &ExecutorSettings,
    input: &Value,
    stream: &mut dyn FnMut(&[u8]),
) -> Output {
    let i: BashInput = match BashInput::deserialize(input) {
        Ok(i) => i,
        Err(e) => return Output::error(format!("invalid input for bash: {e}")),
    };
    // One call at a time per shell; a poisoned lock only means an earlier
    // call panicked, and the shell is restarted below if it is broken.
    let mut sh = shell.lock().unwrap_or_else(|p| p.into_inner());
    if i.restart {
        sh.kill();
        if i.command.as_deref().is_none_or(str::is_empty) {
            return Output::text("the shell was restarted");
        }
    }
    let Some(command) = i.command.filter(|c| !c.trim().is_empty()) else {
        return Output::error(
            "invalid input for bash: `command` is required unless `restart` is true",
        );
    };
    let timeout_ms = match i.timeout_ms {
        None | Some(0) => settings.bash_default_timeout_ms,
        Some(t) => t.min(settings.bash_max_timeout_ms),
    };
    let o = sh.run(&command, Duration::from_millis(timeout_ms), stream);
    let text = if o.text.is_empty() {
        "<no output>".to_owned()
    } else {
        o.text
    };
    Output {
        content: vec![serde_json::json!({"type": "text", "text": text})],
        is_error: o.is_error,
        exit_code: o.exit_code,
    }
}

/// Serve until stdin ends or `Shutdown`.
pub fn serve<R: Read, W: Write + Send + 'static>(
    settings: ExecutorSettings,
    mut input: R,
    output: W,
) -> Result<(), ServeError> {
    let codec = FrameCodec::new(settings.max_frame_bytes as usize);
    let sink = Sink {
        codec,
        out: Arc::new(Mutex::new(output)),
    };
    let settings = Arc::new(Mutex::new(settings));
    let snapshot =
        |s: &Arc<Mutex<ExecutorSettings>>| s.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let first = snapshot(&settings);
    let shell = Arc::new(Mutex::new(Shell::new(ShellConfig {
        shell_path: first.shell_path.clone(),
        workdir: first.workdir.clone(),
        env: Default::default(),
        output_max_bytes: first.bash_output_max_bytes as usize,
        stream_max_bytes: first.bash_stream_max_bytes as usize,
        kill_grace: Duration::from_millis(first.kill_grace_ms),
    })));
    sink.send(
        &FromExecutor::Ready {
            version: EXECUTOR_PROTOCOL_VERSION,
            pid: std::process::id(),
        },
        &[],
    )?;
    let mut buf = BytesMut::new();
    let next = |input: &mut R, buf: &mut BytesMut| -> Result<Option<Frame>, ServeError> {
        blocking::read_frame(&codec, input, buf).map_err(|e| ServeError::Input(e.to_string()))
    };
    loop {
        let Some(frame) = next(&mut input, &mut buf)? else {
            return Ok(());
        };
        let message: ToExecutor = frame
            .parse_control()
            .map_err(|e| ServeError::Input(e.to_string()))?;
        match message {
            ToExecutor::Call {
                id,
                name,
                input_bytes,
            } => {
                let mut body = Vec::with_capacity(input_bytes.min(64 << 20) as usize);
                while (body.len() as u64) < input_bytes {
                    match next(&mut input, &mut buf)? {
                        Some(Frame::Data(d)) => body.extend_from_slice(&d),
                        Some(Frame::Control(_)) => {
                            return Err(ServeError::Input(format!(
                                "control frame inside the input of call {id}"
                            )))
                        }
                        None => return Ok(()),
                    }
                }
                if body.len() as u64 != input_bytes {
                    return Err(ServeError::Input(format!(
                        "input of call {id} longer than announced"
                    )));
                }
                let sink = sink.clone();
                let shell = shell.clone();
                let s = snapshot(&settings);
                std::thread::spawn(move || {
                    let out = match serde_json::from_slice::<Value>(&body) {
                        Err(e) => {
                            Output::error(format!("invalid input for {name}: not JSON ({e})"))
                        }
                        Ok(input) => match name.as_str() {
                            "bash" => {
                                let stream_sink = sink.clone();
                                let mut stream = |chunk: &[u8]| {
                                    let _ = stream_sink.send(
                                        &FromExecutor::Output {
                                            id,
                                            bytes: chunk.len() as u64,
                                        },
                                        chunk,
                                    );
                                };
                                run_bash(&shell, &s, &input, &mut stream)
                            }
                            "read" => tools::read(&s, &input),
                            "write" => tools::write(&s, &input),
                            "edit" => tools::edit(&s, &input),
                            "glob" => tools::glob(&s, &input),
                            "grep" => tools::grep(&s, &input),
                            other => Output::error(format!("unknown tool `{other}`")),
                        },
                    };
                    if let Err(e) = sink.result(id, &out) {
                        eprintln!("airlock-executor: cannot send result of call {id}: {e}");
                    }
                });
            }
            ToExecutor::Configure { env, workdir } => {
                let error = match &workdir {
                    Some(w) if !w.starts_with('/') => {
                        Some(format!("workdir `{w}` is not absolute"))
                    }
                    Some(w) => std::fs::create_dir_all(w)
                        .err()
                        .map(|e| format!("cannot create workdir {w}: {e}")),
                    None => None,
                };
                if error.is_some() {
                    sink.send(&FromExecutor::Configured { error }, &[])?;
                    continue;
                }
                if let Some(w) = &workdir {
                    settings.lock().unwrap_or_else(|p| p.into_inner()).workdir = w.clone();
                }
                // The shell may be busy with a bash call: wait for it on a
                // thread so the read loop keeps serving other messages.
                let (sink, shell) = (sink.clone(), shell.clone());
                std::thread::spawn(move || {
                    shell
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .reconfigure(env, workdir);
                    let _ = sink.send(&FromExecutor::Configured { error: None }, &[]);
                });
            }
            ToExecutor::Ping { nonce } => sink.send(&FromExecutor::Pong { nonce }, &[])?,
            ToExecutor::Shutdown => {
                // Ends the process; the container's init then stops every
                // process left in the sandbox, including a busy shell.
                return Ok(());
            }
        }
    }
}

/// Report a fatal input error to the agent (best effort).
pub fn report_fatal<W: Write>(codec: FrameCodec, out: &mut W, message: &str) {
    let frame = Frame::control(&FromExecutor::Fatal {
        message: message.to_owned(),
    });
    if let Ok(frame) = frame {
        let _ = blocking::write_frame(&codec, out, &frame);
        let _ = out.flush();
    }
}
