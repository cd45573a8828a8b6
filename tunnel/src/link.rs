//! One established connection, either transport, either role. The control
//! plane's side opens streams; the agent's side accepts them. Closing is
//! observable by every holder (a watch channel), so a call in flight on a
//! dead link fails at once with [`StreamError::ConnectionLost`].

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use protocol::FrameCodec;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::error::{CloseReason, StreamError};
use crate::select::Transport;
use crate::stream::{FrameReceiver, FrameSender, RecvHalf, SendHalf};

/// h2 path of the control stream (the control plane opens it first).
pub(crate) const H2_CONTROL_PATH: &str = "/airlock/control";
/// h2 path of call streams.
pub(crate) const H2_CALL_PATH: &str = "/airlock/call";

pub(crate) type H2Incoming = (
    http::Request<h2::RecvStream>,
    h2::server::SendResponse<Bytes>,
);

pub(crate) enum LinkKind {
    Quic(quinn::Connection),
    /// Control-plane side of the TCP transport: we are the h2 client.
    H2Client {
        send_request: h2::client::SendRequest<Bytes>,
        driver: AbortHandle,
    },
    /// Agent side of the TCP transport: we are the h2 server.
    H2Server {
        incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<H2Incoming>>,
        driver: AbortHandle,
    },
}

/// A live connection (shared by its control loop and its callers).
pub(crate) struct Link {
    pub(crate) kind: LinkKind,
    pub(crate) transport: Transport,
    pub(crate) remote_addr: SocketAddr,
    pub(crate) codec: FrameCodec,
    closed_tx: watch::Sender<Option<String>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("transport", &self.transport)
            .field("remote_addr", &self.remote_addr)
            .finish_non_exhaustive()
    }
}

impl Link {
    pub(crate) fn new(
        kind: LinkKind,
        transport: Transport,
        remote_addr: SocketAddr,
        codec: FrameCodec,
    ) -> Arc<Self> {
        let (closed_tx, _) = watch::channel(None);
        let link = Arc::new(Self {
            kind,
            transport,
            remote_addr,
            codec,
            closed_tx,
        });
        if let LinkKind::Quic(conn) = &link.kind {
            let conn = conn.clone();
            let weak = Arc::downgrade(&link);
            tokio::spawn(async move {
                let e = conn.closed().await;
                if let Some(link) = weak.upgrade() {
                    link.mark_closed(quic_close_message(&e));
                }
            });
        }
        link
    }

    /// Mark the link closed with the message its h2 connection driver
    /// sends on `done` when it ends (without keeping the link alive).
    pub(crate) fn close_when_done(self: &Arc<Self>, done: tokio::sync::oneshot::Receiver<String>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let msg = done.await.unwrap_or_else(|_| "h2 connection closed".into());
            if let Some(link) = weak.upgrade() {
                link.mark_closed(msg);
            }
        });
    }

    /// Record that the link is gone (first message wins).
    pub(crate) fn mark_closed(&self, message: String) {
        self.closed_tx.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(message);
                true
            } else {
                false
            }
        });
    }

    /// Close the link now.
    pub(crate) fn close(&self, reason: CloseReason) {
        match &self.kind {
            LinkKind::Quic(conn) => {
                let (code, text) = reason.quic();
                conn.close(code, text);
            }
            LinkKind::H2Client { driver, .. } | LinkKind::H2Server { driver, .. } => driver.abort(),
        }
        self.mark_closed(format!("closed locally: {}", reason.as_str()));
    }

    /// Why this side closed it, if it did.
    /// Why the link is closed, if it is.
    pub(crate) fn closed_message(&self) -> Option<String> {
        self.closed_tx.borrow().clone()
    }

    /// Wait until the link is closed; returns why.
    pub(crate) async fn closed(&self) -> String {
        let mut rx = self.closed_tx.subscribe();
        loop {
            if let Some(m) = rx.borrow_and_update().clone() {
                return m;
            }
            if rx.changed().await.is_err() {
                return "link dropped".into();
            }
        }
    }

    /// Control-plane side: open a new stream (h2: `path`).
    pub(crate) async fn open(
        &self,
        path: &str,
    ) -> Result<(FrameSender, FrameReceiver), StreamError> {
        if let Some(m) = self.closed_message() {
            return Err(StreamError::ConnectionLost(m));
        }
        match &self.kind {
            LinkKind::Quic(conn) => {
                let (send, recv) = conn
                    .open_bi()
                    .await
                    .map_err(|e| StreamError::ConnectionLost(quic_close_message(&e)))?;
                Ok((
                    FrameSender::new(SendHalf::Quic(send), self.codec),
                    FrameReceiver::new(RecvHalf::Quic(recv), self.codec),
                ))
            }
            LinkKind::H2Client { send_request, .. } => {
                let mut sr = send_request
                    .clone()
                    .ready()
                    .await
                    .map_err(StreamError::from_h2)?;
                let req = http::Request::builder()
                    .method(http::Method::POST)
                    .uri(format!("https://airlock{path}"))
                    .body(())
                    .map_err(|e| StreamError::Protocol(e.to_string()))?;
                let (resp, send) = sr.send_request(req, false).map_err(StreamError::from_h2)?;
                Ok((
                    FrameSender::new(SendHalf::H2(send), self.codec),
                    FrameReceiver::new(RecvHalf::H2Pending(resp), self.codec),
                ))
            }
            LinkKind::H2Server { .. } => Err(StreamError::Protocol(
                "the agent side cannot open streams".into(),
            )),
        }
    }

    /// Agent side: accept the next stream the control plane opened, with its
    /// h2 path (`None` on QUIC). `Ok(None)` when the link is closed.
    pub(crate) async fn accept(
        &self,
    ) -> Result<Option<(Option<String>, FrameSender, FrameReceiver)>, StreamError> {
        match &self.kind {
            LinkKind::Quic(conn) => match conn.accept_bi().await {
                Ok((send, recv)) => Ok(Some((
                    None,
                    FrameSender::new(SendHalf::Quic(send), self.codec),
                    FrameReceiver::new(RecvHalf::Quic(recv), self.codec),
                ))),
                Err(e) => {
                    self.mark_closed(quic_close_message(&e));
                    Ok(None)
                }
            },
            LinkKind::H2Server { incoming, .. } => {
                let next = incoming.lock().await.recv().await;
                let Some((req, respond)) = next else {
                    self.mark_closed("h2 connection ended".into());
                    return Ok(None);
                };
                let path = req.uri().path().to_owned();
                // The 200 goes out with the first write (SendHalf::answer).
                Ok(Some((
                    Some(path),
                    FrameSender::new(SendHalf::H2Unanswered(Some(respond)), self.codec),
                    FrameReceiver::new(RecvHalf::H2(req.into_body()), self.codec),
                )))
            }
            LinkKind::H2Client { .. } => Err(StreamError::Protocol(
                "the control-plane side does not accept streams".into(),
            )),
        }
    }
}

pub(crate) fn quic_close_message(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            format!(
                "closed by peer: {} (code {})",
                String::from_utf8_lossy(&c.reason),
                c.error_code
            )
        }
        quinn::ConnectionError::LocallyClosed => "closed locally".into(),
        quinn::ConnectionError::TimedOut => "idle timeout (peer unreachable)".into(),
        other => other.to_string(),
    }
}

/// Run `fut` unless the link closes first; then fail with `ConnectionLost`.
pub(crate) async fn or_lost<T>(
    link: &Link,
    fut: impl std::future::Future<Output = Result<T, StreamError>>,
) -> Result<T, StreamError> {
    tokio::select! {
        r = fut => r,
        m = link.closed() => Err(StreamError::ConnectionLost(m)),
    }
}
