//! The agent's side of one executor's stdio: framed messages
//! ([`protocol::executor`]) written to the container's attached stdin and read
//! from its demultiplexed stdout. One reader task per executor routes
//! `Output`/`Result` to the waiting call by id; when the stream ends every
//! waiting call learns that the executor is gone.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::container::{AttachContainerResults, LogOutput};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use protocol::executor::{FromExecutor, ToExecutor, EXECUTOR_PROTOCOL_VERSION};
use protocol::frame::{Frame, FrameCodec};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// How a call to the executor failed (as opposed to the tool failing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The executor's stream ended (container died, OOM, removed).
    #[error("the executor stream ended")]
    Gone,
    /// No answer within the deadline.
    #[error("no answer from the executor within {0:?}")]
    TimedOut(Duration),
    /// The executor sent something this agent cannot understand.
    #[error("executor protocol error: {0}")]
    Protocol(String),
}

/// A tool result as the executor reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct CallResult {
    /// True when the tool failed.
    pub is_error: bool,
    /// Content blocks.
    pub content: Vec<serde_json::Value>,
    /// The command's exit status (`bash`, when it ran to its end and the
    /// executor is recent enough to say).
    pub exit_code: Option<i32>,
}

type Writer = Pin<Box<dyn AsyncWrite + Send>>;

struct Pending {
    /// Unbounded so the reader never waits on a slow consumer; the executor
    /// caps what one call streams (`bash_stream_max_bytes`), which bounds it.
    stream: Option<mpsc::UnboundedSender<Bytes>>,
    done: oneshot::Sender<Result<CallResult, CallError>>,
}

#[derive(Default)]
struct Waiters {
    calls: HashMap<u64, Pending>,
    ready: Option<oneshot::Sender<Result<(), CallError>>>,
    configured: Option<oneshot::Sender<Option<String>>>,
    pongs: HashMap<u64, oneshot::Sender<()>>,
}

struct Shared {
    waiters: Mutex<Waiters>,
    gone: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        // A panic while holding this lock would be a bug in this module; the
        // map stays usable, so recover the guard rather than propagate.
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail_all(&self, error: CallError) {
        self.gone.store(true, Ordering::SeqCst);
        let mut w = self.lock();
        for (_, p) in w.calls.drain() {
            let _ = p.done.send(Err(error.clone()));
        }
        if let Some(r) = w.ready.take() {
            let _ = r.send(Err(error.clone()));
        }
        if let Some(c) = w.configured.take() {
            let _ = c.send(Some(error.to_string()));
        }
        w.pongs.clear();
    }
}

/// A connection to one executor.
pub struct ExecutorClient {
    writer: tokio::sync::Mutex<Writer>,
    codec: FrameCodec,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ExecutorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorClient")
            .field("gone", &self.shared.gone.load(Ordering::SeqCst))
            .finish()
    }
}

impl Drop for ExecutorClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl ExecutorClient {
    /// Take over an attached stdio pair. `sandbox_id` names the reader task's logs.
    pub fn new(attach: AttachContainerResults, max_frame_bytes: usize, sandbox_id: &str) -> Self {
        let codec = FrameCodec::new(max_frame_bytes);
        let shared = Arc::new(Shared {
            waiters: Mutex::new(Waiters::default()),
            gone: AtomicBool::new(false),
        });
        let reader = tokio::spawn(read_loop(
            attach.output,
            codec,
            shared.clone(),
            sandbox_id.to_owned(),
        ));
        Self {
            writer: tokio::sync::Mutex::new(attach.input),
            codec,
            shared,
            next_id: AtomicU64::new(1),
            reader,
        }
    }

    /// Whether the executor's stream has ended.
    pub fn is_gone(&self) -> bool {
        self.shared.gone.load(Ordering::SeqCst)
    }

    /// Wait for the executor's first message (`Ready`). Register before start.
    pub fn ready_waiter(&self) -> oneshot::Receiver<Result<(), CallError>> {
        let (tx, rx) = oneshot::channel();
        self.shared.lock().ready = Some(tx);
        rx
    }

    async fn send(&self, message: &ToExecutor, body: &[u8]) -> Result<(), CallError> {
        let mut buf = BytesMut::new();
        let header = Frame::control(message).map_err(|e| CallError::Protocol(e.to_string()))?;
        self.codec
            .encode(&header, &mut buf)
            .map_err(|e| CallError::Protocol(e.to_string()))?;
        for chunk in body.chunks(self.codec.max_data_chunk()) {
            self.codec
                .encode(&Frame::data(Bytes::copy_from_slice(chunk)), &mut buf)
                .map_err(|e| CallError::Protocol(e.to_string()))?;
        }
        let mut w = self.writer.lock().await;
        w.write_all(&buf).await.map_err(|_| CallError::Gone)?;
        w.flush().await.map_err(|_| CallError::Gone)
    }

    /// Liveness check (used after re-attaching to an adopted sandbox).
    pub async fn ping(&self, timeout: Duration) -> Result<(), CallError> {
        let nonce = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        self.shared.lock().pongs.insert(nonce, tx);
        self.send(&ToExecutor::Ping { nonce }, &[]).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(CallError::Gone),
            Err(_) => Err(CallError::TimedOut(timeout)),
        }
    }

    /// Apply env and workdir to the shell. `Ok(Some(msg))` if the executor refused.
    pub async fn configure(
        &self,
        env: std::collections::BTreeMap<String, String>,
        workdir: Option<String>,
        timeout: Duration,
    ) -> Result<Option<String>, CallError> {
        let (tx, rx) = oneshot::channel();
        self.shared.lock().configured = Some(tx);
        self.send(&ToExecutor::Configure { env, workdir }, &[])
            .await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(CallError::Gone),
            Err(_) => Err(CallError::TimedOut(timeout)),
        }
    }

    /// Run one tool call; streamed output (bash) goes to `stream` as produced.
    pub async fn call(
        &self,
        name: &str,
        input: &serde_json::Value,
        stream: Option<mpsc::Sender<Bytes>>,
        timeout: Duration,
    ) -> Result<CallResult, CallError> {
        if self.is_gone() {
            return Err(CallError::Gone);
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let body = serde_json::to_vec(input).map_err(|e| CallError::Protocol(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        let mut forwarder = None;
        let stream = stream.map(|out| {
            let (utx, mut urx) = mpsc::unbounded_channel::<Bytes>();
            forwarder = Some(tokio::spawn(async move {
                while let Some(chunk) = urx.recv().await {
                    if out.send(chunk).await.is_err() {
                        return; // the caller stopped listening
                    }
                }
            }));
            utx
        });
        self.shared
            .lock()
            .calls
            .insert(id, Pending { stream, done: tx });
        let message = ToExecutor::Call {
            id,
            name: name.to_owned(),
            input_bytes: body.len() as u64,
        };
        if let Err(e) = self.send(&message, &body).await {
            self.shared.lock().calls.remove(&id);
            return Err(e);
        }
        let outcome = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(CallError::Gone),
            Err(_) => {
                self.shared.lock().calls.remove(&id);
                Err(CallError::TimedOut(timeout))
            }
        };
        // The call's stream sender is gone now; let every streamed chunk reach
        // the caller before the result does (bounded, in case nobody reads).
        if let Some(f) = forwarder {
            let _ = tokio::time::timeout(Duration::from_secs(10), f).await;
        }
        outcome
    }

    /// Ask the executor to exit (best effort).
    pub async fn shutdown(&self) {
        let _ = self.send(&ToExecutor::Shutdown, &[]).await;
    }
}

/// A message header waiting for its body.
enum Partial {
    Output {
        id: u64,
        left: usize,
        buf: BytesMut,
    },
    Result {
        id: u64,
        is_error: bool,
        exit_code: Option<i32>,
        left: usize,
        buf: BytesMut,
    },
}

async fn read_loop(
    mut output: Pin<
        Box<dyn futures::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
    >,
    codec: FrameCodec,
    shared: Arc<Shared>,
    sandbox_id: String,
) {
    let mut buf = BytesMut::new();
    let mut partial: Option<Partial> = None;
    let mut failure = CallError::Gone;
    'outer: while let Some(item) = output.next().await {
        let bytes = match item {
            Ok(LogOutput::StdOut { message }) => message,
            Ok(LogOutput::StdErr { message }) => {
                for line in String::from_utf8_lossy(&message).lines() {
                    tracing::debug!(sandbox_id = %sandbox_id, line, "executor stderr");
                }
                continue;
            }
            Ok(_) => continue,
            Err(error) => {
                tracing::debug!(sandbox_id = %sandbox_id, %error, "executor stream error");
                break;
            }
        };
        buf.extend_from_slice(&bytes);
        loop {
            let frame = match codec.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    failure = CallError::Protocol(e.to_string());
                    break 'outer;
                }
            };
            if let Err(e) = handle_frame(frame, &mut partial, &shared) {
                failure = e;
                break 'outer;
            }
        }
    }
    tracing::debug!(sandbox_id = %sandbox_id, %failure, "executor stream closed");
    shared.fail_all(failure);
}

fn handle_frame(
    frame: Frame,
    partial: &mut Option<Partial>,
    shared: &Shared,
) -> Result<(), CallError> {
    match frame {
        Frame::Data(data) => {
            let Some(p) = partial.as_mut() else {
                return Err(CallError::Protocol(
                    "data frame without a message header".into(),
                ));
            };
            let (left, buf) = match p {
                Partial::Output { left, buf, .. } | Partial::Result { left, buf, .. } => {
                    (left, buf)
                }
            };
            if data.len() > *left {
                return Err(CallError::Protocol(
                    "message body longer than announced".into(),
                ));
            }
            *left -= data.len();
            buf.extend_from_slice(&data);
            if *left == 0 {
                if let Some(p) = partial.take() {
                    complete(p, shared)?;
                }
            }
            Ok(())
        }
        Frame::Control(_) => {
            if partial.is_some() {
                return Err(CallError::Protocol(
                    "control frame inside a message body".into(),
                ));
            }
            let message: FromExecutor = frame
                .parse_control()
                .map_err(|e| CallError::Protocol(e.to_string()))?;
            match message {
                FromExecutor::Ready { version, .. } => {
                    let r = if version == EXECUTOR_PROTOCOL_VERSION {
                        Ok(())
                    } else {
                        Err(CallError::Protocol(format!(
                            "executor speaks version {version}, the agent {EXECUTOR_PROTOCOL_VERSION}"
                        )))
                    };
                    if let Some(tx) = shared.lock().ready.take() {
                        let _ = tx.send(r);
                    }
                }
                FromExecutor::Output { id, bytes } => {
                    let p = Partial::Output {
                        id,
                        left: bytes as usize,
                        buf: BytesMut::new(),
                    };
                    if bytes == 0 {
                        complete(p, shared)?;
                    } else {
                        *partial = Some(p);
                    }
                }
                FromExecutor::Result {
                    id,
                    is_error,
                    content_bytes,
                    exit_code,
                } => {
                    let p = Partial::Result {
                        id,
                        is_error,
                        exit_code,
                        left: content_bytes as usize,
                        buf: BytesMut::new(),
                    };
                    if content_bytes == 0 {
                        complete(p, shared)?;
                    } else {
                        *partial = Some(p);
                    }
                }
                FromExecutor::Configured { error } => {
                    if let Some(tx) = shared.lock().configured.take() {
                        let _ = tx.send(error);
                    }
                }
                FromExecutor::Pong { nonce } => {
                    if let Some(tx) = shared.lock().pongs.remove(&nonce) {
                        let _ = tx.send(());
                    }
                }
                FromExecutor::Fatal { message } => {
                    return Err(CallError::Protocol(format!("executor gave up: {message}")));
                }
            }
            Ok(())
        }
    }
}

fn complete(p: Partial, shared: &Shared) -> Result<(), CallError> {
    match p {
        Partial::Output { id, buf, .. } => {
            let sender = shared.lock().calls.get(&id).and_then(|c| c.stream.clone());
            if let Some(tx) = sender {
                let _ = tx.send(buf.freeze());
            }
        }
        Partial::Result {
            id,
            is_error,
            exit_code,
            buf,
            ..
        } => {
            let content: Vec<serde_json::Value> = if buf.is_empty() {
                Vec::new()
            } else {
                serde_json::from_slice(&buf)
                    .map_err(|e| CallError::Protocol(format!("result content: {e}")))?
            };
            if let Some(p) = shared.lock().calls.remove(&id) {
                let _ = p.done.send(Ok(CallResult {
                    is_error,
                    content,
                    exit_code,
                }));
            }
        }
    }
    Ok(())
}
