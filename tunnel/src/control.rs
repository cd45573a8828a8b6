//! The control-stream loop run by both sides of a connection after the
//! hello: sends heartbeats, watches the peer's (the [`Heartbeat`] state
//! machine), carries goaway, certificate renewal and the agent's audit
//! status (agent → control plane: the current value right after every
//! connect and on every change; the control plane hands what it receives to
//! the application through a bounded queue). When it ends, the link is
//! closed with the reason.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use protocol::audit::AuditStatus;
use protocol::{CallError, ControlMessage, ErrorCode};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::CloseReason;
use crate::heartbeat::{Heartbeat, HeartbeatAction};
use crate::link::Link;
use crate::stream::{FrameReceiver, FrameSender};

/// Issues a renewed certificate chain (PEM) for a CSR (PEM); the control
/// plane's side supplies it, bound to the verified peer.
pub type RenewFn = Arc<dyn Fn(String) -> Result<String, CallError> + Send + Sync>;

/// Most audit statuses received and not yet taken by the application; when
/// full, the newest is dropped (with a warning): the next status carries a
/// later checkpoint anyway.
pub(crate) const AUDIT_QUEUE: usize = 64;

pub(crate) enum ControlCmd {
    GoAway {
        reason: String,
        deadline: Duration,
    },
    Renew {
        csr_pem: String,
        reply: oneshot::Sender<Result<String, CallError>>,
    },
}

/// What holders of a connection can see of its control loop.
pub(crate) struct ControlState {
    last_heard: Mutex<SystemTime>,
    pub(crate) peer_draining: AtomicBool,
    pub(crate) cmd_tx: mpsc::UnboundedSender<ControlCmd>,
    /// Where received audit statuses go (control-plane side).
    audit_tx: mpsc::Sender<AuditStatus>,
    /// Taken once by the application ([`ControlState::take_audit_statuses`]).
    audit_rx: Mutex<Option<mpsc::Receiver<AuditStatus>>>,
}

impl std::fmt::Debug for ControlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlState").finish_non_exhaustive()
    }
}

impl ControlState {
    pub(crate) fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<ControlCmd>) {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (audit_tx, audit_rx) = mpsc::channel(AUDIT_QUEUE);
        (
            Arc::new(Self {
                last_heard: Mutex::new(SystemTime::now()),
                peer_draining: AtomicBool::new(false),
                cmd_tx,
                audit_tx,
                audit_rx: Mutex::new(Some(audit_rx)),
            }),
            cmd_rx,
        )
    }

    pub(crate) fn last_heard(&self) -> SystemTime {
        self.last_heard
            .lock()
            .map(|t| *t)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// The receiving end of the peer's audit statuses; `Some` only the first time.
    pub(crate) fn take_audit_statuses(&self) -> Option<mpsc::Receiver<AuditStatus>> {
        self.audit_rx.lock().ok().and_then(|mut r| r.take())
    }

    fn heard(&self) {
        if let Ok(mut t) = self.last_heard.lock() {
            *t = SystemTime::now();
        }
    }
}

pub(crate) struct ControlLoop {
    pub(crate) link: Arc<Link>,
    pub(crate) tx: FrameSender,
    pub(crate) rx: FrameReceiver,
    pub(crate) interval: Duration,
    pub(crate) misses: u32,
    pub(crate) state: Arc<ControlState>,
    pub(crate) cmd_rx: mpsc::UnboundedReceiver<ControlCmd>,
    pub(crate) renew: Option<RenewFn>,
    /// Who the peer is, for the one log line on failure.
    pub(crate) peer: String,
    /// Agent side: the audit status to publish (sent at start and on every change).
    pub(crate) audit: Option<watch::Receiver<AuditStatus>>,
}

/// Waits for the next audit status to publish; never resolves without one
/// (and stops watching once the publisher is gone).
async fn next_audit(audit: &mut Option<watch::Receiver<AuditStatus>>) -> AuditStatus {
    let Some(rx) = audit.as_mut() else {
        return std::future::pending().await;
    };
    match rx.changed().await {
        Ok(()) => rx.borrow_and_update().clone(),
        Err(_) => {
            *audit = None;
            std::future::pending().await
        }
    }
}

impl ControlLoop {
    /// Run until the link dies; closes it with the reason found.
    pub(crate) async fn run(mut self) {
        let reason = self.run_inner().await;
        if let Some(reason) = reason {
            self.link.close(reason);
        }
    }

    async fn run_inner(&mut self) -> Option<CloseReason> {
        let mut hb = Heartbeat::new(self.interval, self.misses, Instant::now());
        let mut pending: HashMap<u64, oneshot::Sender<Result<String, CallError>>> = HashMap::new();
        let mut next_id = 0u64;
        let peer = self.peer.clone();
        let mut audit = self.audit.take();
        if let Some(rx) = audit.as_mut() {
            let status = rx.borrow_and_update().clone();
            if let Err(error) = self
                .tx
                .send_message(&ControlMessage::AuditStatus(status))
                .await
            {
                tracing::debug!(peer = %peer, %error, "audit status send failed");
            }
        }
        loop {
            let wait_until = match hb.poll(Instant::now()) {
                HeartbeatAction::Send => {
                    let seq = hb.sent(Instant::now());
                    if let Err(error) = self
                        .tx
                        .send_message(&ControlMessage::Heartbeat { seq })
                        .await
                    {
                        tracing::debug!(peer = %peer, %error, "heartbeat send failed");
                        return Some(CloseReason::HeartbeatTimeout);
                    }
                    continue;
                }
                HeartbeatAction::Dead { silent_for } => {
                    tracing::warn!(peer = %peer, silent_ms = silent_for.as_millis() as u64,
                        "peer silent for three heartbeat intervals; closing half-dead link");
                    return Some(CloseReason::HeartbeatTimeout);
                }
                HeartbeatAction::WaitUntil(t) => t,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wait_until.into()) => {}
                message = self.link.closed() => {
                    tracing::debug!(peer = %peer, %message, "link closed; control loop ends");
                    for (_, reply) in pending.drain() {
                        let _ = reply.send(Err(CallError::new(ErrorCode::Unavailable, format!("connection lost: {message}"))));
                    }
                    return None;
                }
                status = next_audit(&mut audit) => {
                    if let Err(error) = self.tx.send_message(&ControlMessage::AuditStatus(status)).await {
                        tracing::debug!(peer = %peer, %error, "audit status send failed");
                    }
                }
                cmd = self.cmd_rx.recv() => match cmd {
                    None => return Some(CloseReason::Normal),
                    Some(ControlCmd::GoAway { reason, deadline }) => {
                        let msg = ControlMessage::GoAway { reason, deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX) };
                        let _ = self.tx.send_message(&msg).await;
                    }
                    Some(ControlCmd::Renew { csr_pem, reply }) => {
                        next_id += 1;
                        if let Err(error) = self.tx.send_message(&ControlMessage::RenewRequest { id: next_id, csr_pem }).await {
                            let _ = reply.send(Err(CallError::new(ErrorCode::Unavailable, format!("cannot send renewal request: {error}"))));
                        } else {
                            pending.insert(next_id, reply);
                        }
                    }
                },
                frame = self.rx.recv() => {
                    let message = match frame {
                        Ok(Some(f)) => f.parse_control::<ControlMessage>(),
                        Ok(None) => {
                            tracing::debug!(peer = %peer, "peer ended the control stream");
                            return Some(CloseReason::Normal);
                        }
                        Err(error) if error.is_connection_lost() => return None,
                        Err(error) => {
                            tracing::warn!(peer = %peer, %error, "bad control stream; closing connection");
                            return Some(CloseReason::ProtocolError);
                        }
                    };
                    hb.received(Instant::now());
                    self.state.heard();
                    match message {
                        Err(error) => {
                            tracing::warn!(peer = %peer, %error, "malformed control message; closing connection");
                            return Some(CloseReason::ProtocolError);
                        }
                        Ok(ControlMessage::GoAway { reason, deadline_ms }) => {
                            tracing::info!(peer = %peer, %reason, deadline_ms, "peer is draining");
                            self.state.peer_draining.store(true, Ordering::SeqCst);
                        }
                        Ok(ControlMessage::RenewRequest { id, csr_pem }) => {
                            let answer = match &self.renew {
                                None => ControlMessage::RenewFailed { id, error: CallError::new(ErrorCode::UnsupportedCall, "renewal is not offered on this side") },
                                Some(renew) => {
                                    let renew = renew.clone();
                                    match tokio::task::spawn_blocking(move || renew(csr_pem)).await {
                                        Ok(Ok(cert_chain_pem)) => ControlMessage::Renewed { id, cert_chain_pem },
                                        Ok(Err(error)) => ControlMessage::RenewFailed { id, error },
                                        Err(e) => ControlMessage::RenewFailed { id, error: CallError::new(ErrorCode::Internal, format!("renewal task failed: {e}")) },
                                    }
                                }
                            };
                            if self.tx.send_message(&answer).await.is_err() {
                                return None;
                            }
                        }
                        Ok(ControlMessage::Renewed { id, cert_chain_pem }) => {
                            if let Some(reply) = pending.remove(&id) {
                                let _ = reply.send(Ok(cert_chain_pem));
                            }
                        }
                        Ok(ControlMessage::RenewFailed { id, error }) => {
                            if let Some(reply) = pending.remove(&id) {
                                let _ = reply.send(Err(error));
                            }
                        }
                        Ok(ControlMessage::AuditStatus(status)) => {
                            match self.state.audit_tx.try_send(status) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Full(_)) => {
                                    tracing::warn!(peer = %peer, "audit status queue full; status dropped");
                                }
                                Err(mpsc::error::TrySendError::Closed(_)) => {
                                    tracing::debug!(peer = %peer, "audit status received but nobody reads them");
                                }
                            }
                        }
                        // Heartbeats only count as life; unknown messages are ignored.
                        Ok(_) => {}
                    }
                }
            }
        }
    }
}
