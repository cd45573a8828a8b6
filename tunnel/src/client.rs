//! The agent's side: dial the control plane (QUIC first, TLS over TCP with h2
//! as the fallback, optionally through an HTTP CONNECT proxy), say hello,
//! serve the calls the control plane opens, keep the link alive, and redial
//! with capped, fully jittered backoff when it dies. While on TCP it retries
//! QUIC in the background and moves back, draining the TCP link gracefully.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use protocol::hello::{PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use protocol::{
    CallError, ErrorCode, Frame, FrameCodec, FrameError, Hello, HelloAnswer, Request, Response,
};
use rustls_pki_types::ServerName;
use settings::split_host_port_or;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::backoff::{Backoff, BackoffPolicy};
use crate::call::{CallHandler, CallIo};
use crate::control::{ControlCmd, ControlLoop, ControlState};
use crate::error::{
    h2_is_revoked, quic_is_busy, quic_is_revoked, CloseReason, ConnectError, StreamError,
};
use crate::link::{quic_close_message, Link, LinkKind, H2_CALL_PATH, H2_CONTROL_PATH};
use crate::proxy::ProxyConfig;
use crate::select::{Transport, TransportMode, TransportSelector};
use crate::stream::{FrameReceiver, FrameSender, RecvHalf, SendHalf, StreamCode};
use crate::tuning::{self, Tuning};
use crate::ALPN;

/// Agent-side settings.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Control plane `host:port` (UDP for QUIC, TCP for the fallback).
    pub server: String,
    /// Name the control plane's certificate must carry.
    pub server_name: String,
    /// Which transports to use.
    pub mode: TransportMode,
    /// HTTP CONNECT proxy for the TCP transport.
    pub proxy: Option<ProxyConfig>,
    /// How long QUIC may take to come up before falling back to TCP.
    pub quic_connect_timeout: Duration,
    /// While on TCP, how often to try QUIC again.
    pub quic_retry_interval: Duration,
    /// Limit for a whole TCP dial (proxy, TLS, h2, hello).
    pub connect_timeout: Duration,
    /// Missed heartbeat intervals before the link counts as dead.
    pub heartbeat_misses: u32,
    /// Frame cap.
    pub max_frame_bytes: usize,
    /// Reconnect backoff.
    pub backoff: BackoffPolicy,
    /// How long in-flight calls get when a link drains.
    pub drain_deadline: Duration,
    /// Our agent id (must match the certificate).
    pub agent_id: String,
    /// Our software version.
    pub software_version: String,
    /// Capabilities announced in the hello.
    pub capabilities: Vec<String>,
    /// Flow-control windows.
    pub tuning: Tuning,
    /// Advertise this protocol version range instead of ours (tests of negotiation).
    pub version_range: (u32, u32),
    /// The agent's audit status to publish to the control plane: the
    /// current value is sent right after every (re)connect and again on
    /// every change (`None`: nothing is published). Control planes that do
    /// not know the message ignore it.
    pub audit_status: Option<tokio::sync::watch::Receiver<protocol::audit::AuditStatus>>,
    /// The QUIC endpoint to dial from. `None` (an agent): a fresh endpoint,
    /// with its own UDP socket, for every dial. `Some`: this one, shared
    /// with other clients of the process -- for many simulated agents in one
    /// process (`bench-agents`), where a socket and quinn's receive buffer
    /// (about 3 MiB) per dial would cost more than the agents' protocol work.
    /// Made with [`shared_quic_endpoint`].
    pub quic_endpoint: Option<quinn::Endpoint>,
}

/// A client-only QUIC endpoint on `bind` (e.g. `0.0.0.0:0`) for
/// [`ClientSettings::quic_endpoint`].
pub fn shared_quic_endpoint(bind: SocketAddr, tuning: &Tuning) -> std::io::Result<quinn::Endpoint> {
    let socket = tuning::udp_socket(bind, tuning)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for quinn"))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
}

impl ClientSettings {
    /// Defaults for everything but where to connect and who we are.
    pub fn new(
        server: impl Into<String>,
        server_name: impl Into<String>,
        agent_id: impl Into<String>,
    ) -> Self {
        Self {
            server: server.into(),
            server_name: server_name.into(),
            mode: TransportMode::Auto,
            proxy: None,
            quic_connect_timeout: Duration::from_secs(3),
            quic_retry_interval: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            heartbeat_misses: 3,
            max_frame_bytes: protocol::frame::DEFAULT_MAX_FRAME_BYTES,
            backoff: crate::backoff::RECONNECT,
            drain_deadline: Duration::from_secs(30),
            agent_id: agent_id.into(),
            software_version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: vec!["echo".into()],
            tuning: Tuning::default(),
            version_range: (PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX),
            audit_status: None,
            quic_endpoint: None,
        }
    }
}

/// Connection status, as published by [`ClientHandle::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientStatus {
    /// Dialing (first time or after a loss).
    Connecting,
    /// Connected.
    Connected {
        /// Transport in use.
        transport: Transport,
        /// Since when.
        since: SystemTime,
        /// Negotiated protocol version.
        version: u32,
    },
    /// The last dial failed or the link died; a redial is scheduled.
    Disconnected {
        /// Why.
        error: String,
    },
    /// Shut down; no more dials.
    Stopped,
    /// The control plane refused the hello with `unsupported_version`: no
    /// protocol version in common (the message names both ranges). Final:
    /// redialing with this build cannot succeed.
    Incompatible {
        /// The refusal as received.
        error: String,
    },
    /// The control plane refused this agent as revoked (TLS
    /// `certificate_revoked` alert, close code `revoked`, or the hello
    /// answered `rejected{revoked}`). Final: no more dials.
    Revoked {
        /// The refusal as received.
        error: String,
    },
}

/// Set by a TCP link's h2 driver when the TLS layer received the
/// `certificate_revoked` alert (QUIC links carry it in their close reason).
type RevokedFlag = Arc<OnceLock<String>>;

/// Why `link` was closed, if the control plane closed it because this agent is revoked.
fn revoked_signal(link: &Link, flag: &RevokedFlag) -> Option<String> {
    if let LinkKind::Quic(conn) = &link.kind {
        if let Some(e) = conn.close_reason() {
            if quic_is_revoked(&e) {
                return Some(quic_close_message(&e));
            }
        }
    }
    flag.get().cloned()
}

/// An established, hello'd link (agent side).
struct Active {
    link: Arc<Link>,
    control: Option<(FrameSender, FrameReceiver)>,
    version: u32,
    heartbeat: Duration,
    in_flight: Arc<AtomicU64>,
    /// The control loop's state, once serving.
    state: Option<Arc<ControlState>>,
    /// Set when a TCP link learns that this agent is revoked.
    revoked: RevokedFlag,
    /// Our clock minus the control plane's (version >= 2 answers carry its time).
    clock_skew_ms: Option<i64>,
}

/// A clock further off than this from the control plane's is warned about
/// at every connect (certificate validity and audit times depend on it).
pub const CLOCK_SKEW_WARN: Duration = Duration::from_secs(30);

/// Dial once over `transport` and complete the hello.
async fn dial(
    transport: Transport,
    settings: &ClientSettings,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Active, ConnectError> {
    let codec = FrameCodec::new(settings.max_frame_bytes);
    let (link, tx, rx, revoked) = match transport {
        Transport::Quic => tokio::time::timeout(
            settings.quic_connect_timeout,
            dial_quic(settings, tls, codec),
        )
        .await
        .map_err(|_| ConnectError::Timeout {
            transport,
            address: settings.server.clone(),
            after: settings.quic_connect_timeout,
        })??,
        Transport::Tcp => {
            tokio::time::timeout(settings.connect_timeout, dial_tcp(settings, tls, codec))
                .await
                .map_err(|_| ConnectError::Timeout {
                    transport,
                    address: settings.server.clone(),
                    after: settings.connect_timeout,
                })??
        }
    };
    let limit = match transport {
        Transport::Quic => settings.quic_connect_timeout,
        Transport::Tcp => settings.connect_timeout,
    };
    match tokio::time::timeout(limit, hello(&link, tx, rx, settings, revoked.clone())).await {
        Ok(Ok(active)) => Ok(active),
        Ok(Err(e)) => {
            // The revocation alert may arrive after the handshake looked complete
            // (TLS 1.3 verifies the client certificate last) and fail the hello.
            let revoked = revoked_signal(&link, &revoked);
            link.close(CloseReason::ProtocolError);
            match revoked {
                Some(detail) => Err(ConnectError::Revoked {
                    transport,
                    address: settings.server.clone(),
                    detail,
                }),
                None => Err(e),
            }
        }
        Err(_) => {
            link.close(CloseReason::HeartbeatTimeout);
            Err(ConnectError::Timeout {
                transport,
                address: settings.server.clone(),
                after: limit,
            })
        }
    }
}

async fn resolve(server: &str) -> Result<SocketAddr, ConnectError> {
    let mut addrs = tokio::net::lookup_host(server)
        .await
        .map_err(|e| ConnectError::Resolve {
            address: server.to_owned(),
            message: e.to_string(),
        })?;
    addrs.next().ok_or_else(|| ConnectError::Resolve {
        address: server.to_owned(),
        message: "no addresses".into(),
    })
}

fn with_alpn(tls: &Arc<rustls::ClientConfig>) -> rustls::ClientConfig {
    let mut c = (**tls).clone();
    c.alpn_protocols = vec![ALPN.to_vec()];
    c
}

async fn dial_quic(
    settings: &ClientSettings,
    tls: &Arc<rustls::ClientConfig>,
    codec: FrameCodec,
) -> Result<(Arc<Link>, FrameSender, FrameReceiver, RevokedFlag), ConnectError> {
    let addr = resolve(&settings.server).await?;
    let err = |message: String| ConnectError::Transport {
        transport: Transport::Quic,
        address: settings.server.clone(),
        message,
    };
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(with_alpn(tls)))
        .map_err(|e| ConnectError::TlsConfig(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    // The control plane's heartbeat interval is not known before the hello;
    // keep-alive at 5 s and idle timeout at 3 x 5 s until then is harmless.
    config.transport_config(Arc::new(tuning::quic_transport(
        &settings.tuning,
        settings.tuning.max_concurrent_streams,
        Duration::from_secs(5),
        settings.heartbeat_misses,
    )));
    let endpoint = match &settings.quic_endpoint {
        Some(shared) => shared.clone(),
        None => {
            let bind: SocketAddr = if addr.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                ([0u16; 8], 0).into()
            };
            shared_quic_endpoint(bind, &settings.tuning)
                .map_err(|e| err(format!("udp endpoint: {e}")))?
        }
    };
    let closed = |e: quinn::ConnectionError| {
        if quic_is_revoked(&e) {
            ConnectError::Revoked {
                transport: Transport::Quic,
                address: settings.server.clone(),
                detail: e.to_string(),
            }
        } else {
            err(e.to_string())
        }
    };
    // A close before our side of the handshake is done may come in an
    // Initial packet, which anyone on the path can forge: never final. The
    // control plane's refusal comes after, authenticated (see `closed`).
    let conn = endpoint
        .connect_with(config, addr, &settings.server_name)
        .map_err(|e| err(e.to_string()))?
        .await
        .map_err(|e| {
            if quic_is_busy(&e) {
                ConnectError::Busy {
                    address: settings.server.clone(),
                }
            } else {
                err(e.to_string())
            }
        })?;
    let link = Link::new(LinkKind::Quic(conn.clone()), Transport::Quic, addr, codec);
    let (send, recv) = conn.open_bi().await.map_err(closed)?;
    Ok((
        link,
        FrameSender::new(SendHalf::Quic(send), codec),
        FrameReceiver::new(RecvHalf::Quic(recv), codec),
        RevokedFlag::default(),
    ))
}

async fn dial_tcp(
    settings: &ClientSettings,
    tls: &Arc<rustls::ClientConfig>,
    codec: FrameCodec,
) -> Result<(Arc<Link>, FrameSender, FrameReceiver, RevokedFlag), ConnectError> {
    let revoked_err = |detail: String| ConnectError::Revoked {
        transport: Transport::Tcp,
        address: settings.server.clone(),
        detail,
    };
    let err = |message: String| ConnectError::Transport {
        transport: Transport::Tcp,
        address: settings.server.clone(),
        message,
    };
    let (host, _) = split_host_port_or(&settings.server, 443)
        .ok_or_else(|| err("bad server address".into()))?;
    let stream = match settings.proxy.as_ref().filter(|p| p.applies_to(host)) {
        Some(proxy) => {
            tracing::debug!(proxy = %proxy, "dialing through http connect proxy");
            proxy.connect(&settings.server).await?
        }
        None => {
            let addr = resolve(&settings.server).await?;
            TcpStream::connect(addr)
                .await
                .map_err(|e| err(e.to_string()))?
        }
    };
    let _ = stream.set_nodelay(true);
    let remote_addr = stream.peer_addr().map_err(|e| err(e.to_string()))?;
    let name = ServerName::try_from(settings.server_name.clone()).map_err(|e| {
        ConnectError::TlsConfig(format!("server name {}: {e}", settings.server_name))
    })?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(with_alpn(tls)));
    // An alert during the handshake may be a plaintext one that anyone on
    // the path (a proxy) can forge: never final.
    let tls_stream = connector
        .connect(name, stream)
        .await
        .map_err(|e| err(format!("tls: {e}")))?;
    // TLS 1.3: the control plane verifies our certificate after our side of
    // the handshake is done (its certificate already verified by us), so its
    // certificate_revoked alert arrives here, encrypted, and is final.
    let mut conn = tuning::h2_server(&settings.tuning)
        .handshake::<_, bytes::Bytes>(tls_stream)
        .await
        .map_err(|e| {
            if h2_is_revoked(&e) {
                revoked_err(format!("h2: {e}"))
            } else {
                err(format!("h2: {e}"))
            }
        })?;
    let revoked = RevokedFlag::default();
    let driver_revoked = revoked.clone();
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = oneshot::channel::<String>();
    let driver = tokio::spawn(async move {
        let msg = loop {
            match conn.accept().await {
                Some(Ok(incoming)) => {
                    if in_tx.send(incoming).is_err() {
                        break "link dropped".to_owned();
                    }
                }
                Some(Err(e)) => {
                    let msg = format!("h2 connection failed: {e}");
                    if h2_is_revoked(&e) {
                        let _ = driver_revoked.set(msg.clone());
                    }
                    break msg;
                }
                None => break "h2 connection ended".to_owned(),
            }
        };
        let _ = done_tx.send(msg);
    })
    .abort_handle();
    let link = Link::new(
        LinkKind::H2Server {
            incoming: tokio::sync::Mutex::new(in_rx),
            driver,
        },
        Transport::Tcp,
        remote_addr,
        codec,
    );
    link.close_when_done(done_rx);
    // The control plane (h2 client) opens the control stream first.
    match link.accept().await.map_err(|e| err(e.to_string()))? {
        Some((Some(path), tx, rx)) if path == H2_CONTROL_PATH => Ok((link, tx, rx, revoked)),
        Some((path, _, _)) => Err(err(format!(
            "expected the control stream first, got {path:?}"
        ))),
        None => match revoked.get() {
            Some(detail) => Err(revoked_err(detail.clone())),
            None => Err(err(link
                .closed_message()
                .unwrap_or_else(|| "closed before hello".into()))),
        },
    }
}

async fn hello(
    link: &Arc<Link>,
    mut tx: FrameSender,
    mut rx: FrameReceiver,
    settings: &ClientSettings,
    revoked: RevokedFlag,
) -> Result<Active, ConnectError> {
    let hello = Hello {
        min_version: settings.version_range.0,
        max_version: settings.version_range.1,
        agent_id: settings.agent_id.clone(),
        software_version: settings.software_version.clone(),
        capabilities: settings.capabilities.clone(),
    };
    let sent = SystemTime::now();
    tx.send_message(&hello).await.map_err(ConnectError::Hello)?;
    let answer: HelloAnswer = rx.recv_message().await.map_err(|e| match e {
        StreamError::ConnectionLost(m) => ConnectError::Hello(StreamError::ConnectionLost(m)),
        other => ConnectError::Hello(other),
    })?;
    let received = SystemTime::now();
    match answer {
        HelloAnswer::Accepted {
            version,
            heartbeat_interval_ms,
            server_time_unix_ms,
            ..
        } => Ok(Active {
            link: link.clone(),
            control: Some((tx, rx)),
            version,
            heartbeat: Duration::from_millis(heartbeat_interval_ms.clamp(100, 3_600_000)),
            in_flight: Arc::new(AtomicU64::new(0)),
            state: None,
            revoked,
            clock_skew_ms: server_time_unix_ms
                .map(|t| protocol::hello::clock_skew_ms(t, sent, received)),
        }),
        HelloAnswer::Rejected { code, message, .. } => {
            Err(ConnectError::Rejected { code, message })
        }
    }
}

/// Handle to a running agent client.
#[derive(Debug)]
pub struct ClientHandle {
    status: watch::Receiver<ClientStatus>,
    control: Arc<Mutex<Option<Arc<ControlState>>>>,
    shutdown: watch::Sender<Option<Duration>>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ClientHandle {
    /// Status updates.
    pub fn status(&self) -> watch::Receiver<ClientStatus> {
        self.status.clone()
    }

    /// Ask the control plane, over the live connection, to issue a
    /// certificate for `csr_pem`; returns the chain (PEM).
    pub async fn renew(&self, csr_pem: String) -> Result<String, CallError> {
        let state = self
            .control
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .ok_or_else(|| {
                CallError::new(ErrorCode::Unavailable, "not connected to the control plane")
            })?;
        let (reply, rx) = oneshot::channel();
        state
            .cmd_tx
            .send(ControlCmd::Renew { csr_pem, reply })
            .map_err(|_| CallError::new(ErrorCode::Unavailable, "connection closing"))?;
        rx.await.unwrap_or_else(|_| {
            Err(CallError::new(
                ErrorCode::Unavailable,
                "connection closed before the answer",
            ))
        })
    }

    /// Resolves once the control plane has refused this agent as revoked
    /// ([`ClientStatus::Revoked`]); the client has stopped dialing by then.
    /// Returns the refusal as received. Pending forever otherwise.
    pub async fn revoked(&self) -> String {
        let mut status = self.status.clone();
        loop {
            if let ClientStatus::Revoked { error } = &*status.borrow_and_update() {
                return error.clone();
            }
            if status.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves once the control plane has refused this agent's protocol
    /// versions ([`ClientStatus::Incompatible`]); the client has stopped
    /// dialing by then. Returns the refusal, which names both version
    /// ranges. Pending forever otherwise.
    pub async fn incompatible(&self) -> String {
        let mut status = self.status.clone();
        loop {
            if let ClientStatus::Incompatible { error } = &*status.borrow_and_update() {
                return error.clone();
            }
            if status.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Drain: send goaway, let in-flight calls finish within `deadline`,
    /// close, stop redialing.
    pub async fn shutdown(&self, deadline: Duration) {
        let _ = self.shutdown.send(Some(deadline));
        if let Some(task) = self.task.lock().await.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(deadline + Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

/// Start the agent client: dial, serve calls with `handler`, redial with
/// backoff until [`ClientHandle::shutdown`] -- or until the control plane
/// refuses this agent as revoked ([`ConnectError::is_revoked`], a close with
/// [`CloseReason::Revoked`]): then it stops for good and publishes
/// [`ClientStatus::Revoked`]. Every other failure is redialed.
pub fn spawn(
    settings: ClientSettings,
    tls: Arc<rustls::ClientConfig>,
    handler: Arc<dyn CallHandler>,
) -> ClientHandle {
    let (status_tx, status) = watch::channel(ClientStatus::Connecting);
    let (shutdown, shutdown_rx) = watch::channel(None);
    let control = Arc::new(Mutex::new(None));
    let sup = Supervisor {
        settings,
        tls,
        handler,
        status: status_tx,
        control: control.clone(),
        shutdown: shutdown_rx,
    };
    let task = tokio::spawn(sup.run());
    ClientHandle {
        status,
        control,
        shutdown,
        task: tokio::sync::Mutex::new(Some(task)),
    }
}

struct Supervisor {
    settings: ClientSettings,
    tls: Arc<rustls::ClientConfig>,
    handler: Arc<dyn CallHandler>,
    status: watch::Sender<ClientStatus>,
    control: Arc<Mutex<Option<Arc<ControlState>>>>,
    shutdown: watch::Receiver<Option<Duration>>,
}

enum Outcome {
    Closed(String),
    Migrated(Box<Active>),
    Shutdown,
    Revoked(String),
}

impl Supervisor {
    fn shutdown_requested(&self) -> Option<Duration> {
        *self.shutdown.borrow()
    }

    async fn run(mut self) {
        let mut backoff = Backoff::new(self.settings.backoff);
        let mut selector =
            TransportSelector::new(self.settings.mode, self.settings.quic_retry_interval);
        let agent_id = self.settings.agent_id.clone();
        'outer: loop {
            if self.shutdown_requested().is_some() {
                break;
            }
            let _ = self.status.send(ClientStatus::Connecting);
            let mut active = None;
            let mut last_error = String::new();
            let mut busy = false;
            for &transport in selector.dial_order() {
                match dial(transport, &self.settings, &self.tls).await {
                    Ok(a) => {
                        active = Some(a);
                        break;
                    }
                    Err(error) if error.is_revoked() => {
                        self.stop_revoked(error.to_string());
                        return;
                    }
                    Err(error) if error.is_incompatible() => {
                        self.stop_incompatible(error.to_string());
                        return;
                    }
                    // Reachable over UDP but saturated: a TCP handshake would
                    // only add to its load. Back off and redial QUIC.
                    Err(error) if error.is_busy() => {
                        tracing::info!(agent_id = %agent_id, %transport, %error, "dial refused, control plane busy");
                        last_error = error.to_string();
                        busy = true;
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(agent_id = %agent_id, %transport, %error, "dial failed");
                        last_error = error.to_string();
                    }
                }
            }
            if let Some(mut active) = active {
                loop {
                    let transport = active.link.transport;
                    selector.connected(transport, Instant::now());
                    let up_since = Instant::now();
                    tracing::info!(agent_id = %agent_id, %transport, remote_addr = %active.link.remote_addr,
                        version = active.version, clock_skew_ms = active.clock_skew_ms, "connected to control plane");
                    if let Some(skew) = active
                        .clock_skew_ms
                        .filter(|s| s.unsigned_abs() > CLOCK_SKEW_WARN.as_millis() as u64)
                    {
                        tracing::warn!(agent_id = %agent_id, clock_skew_ms = skew,
                            "this host's clock differs from the control plane's by more than {} s; certificates and audit times depend on it: sync the clock (NTP)",
                            CLOCK_SKEW_WARN.as_secs());
                    }
                    let _ = self.status.send(ClientStatus::Connected {
                        transport,
                        since: SystemTime::now(),
                        version: active.version,
                    });
                    let outcome = self.serve(&mut active, &mut selector).await;
                    if up_since.elapsed() >= active.heartbeat.saturating_mul(2) {
                        backoff.reset();
                    }
                    match outcome {
                        Outcome::Migrated(next) => {
                            let old = std::mem::replace(&mut active, *next);
                            let deadline = self.settings.drain_deadline;
                            tracing::info!(agent_id = %agent_id, "moved to quic; draining the tcp link");
                            tokio::spawn(drain(old, "migrate_to_quic", deadline));
                        }
                        Outcome::Shutdown => break 'outer,
                        Outcome::Revoked(message) => {
                            self.stop_revoked(message);
                            return;
                        }
                        Outcome::Closed(message) => {
                            tracing::warn!(agent_id = %agent_id, %transport, %message, "link to control plane lost");
                            last_error = message;
                            break;
                        }
                    }
                }
            }
            selector.disconnected();
            if let Ok(mut c) = self.control.lock() {
                *c = None;
            }
            let _ = self
                .status
                .send(ClientStatus::Disconnected { error: last_error });
            let delay = if busy {
                backoff.next_busy_delay()
            } else {
                backoff.next_delay()
            };
            tracing::info!(agent_id = %agent_id, delay_ms = delay.as_millis() as u64, attempt = backoff.attempt(), "redialing after backoff");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.changed() => {}
            }
        }
        let _ = self.status.send(ClientStatus::Stopped);
    }

    /// The control plane refused us as revoked: stop dialing for good.
    fn stop_revoked(&self, error: String) {
        // The caller reports it (once, as the error it is); this is the tunnel's trace.
        tracing::warn!(agent_id = %self.settings.agent_id, %error,
            "the control plane refused this agent as revoked; not redialing");
        if let Ok(mut c) = self.control.lock() {
            *c = None;
        }
        let _ = self.status.send(ClientStatus::Revoked { error });
    }

    /// The control plane speaks no protocol version of ours: stop dialing.
    fn stop_incompatible(&self, error: String) {
        tracing::warn!(agent_id = %self.settings.agent_id, %error,
            "no protocol version in common with the control plane; not redialing");
        if let Ok(mut c) = self.control.lock() {
            *c = None;
        }
        let _ = self.status.send(ClientStatus::Incompatible { error });
    }

    /// Serve calls on `active` until it dies, we move to QUIC, or shutdown.
    async fn serve(&mut self, active: &mut Active, selector: &mut TransportSelector) -> Outcome {
        let link = active.link.clone();
        if let Some((tx, rx)) = active.control.take() {
            let (state, cmd_rx) = ControlState::new();
            if let Ok(mut c) = self.control.lock() {
                *c = Some(state.clone());
            }
            active.state = Some(state.clone());
            let control = ControlLoop {
                link: link.clone(),
                tx,
                rx,
                interval: active.heartbeat,
                misses: self.settings.heartbeat_misses,
                state,
                cmd_rx,
                renew: None,
                peer: "control-plane".into(),
                audit: self.settings.audit_status.clone(),
            };
            tokio::spawn(control.run());
            tokio::spawn(accept_loop(
                link.clone(),
                self.handler.clone(),
                active.in_flight.clone(),
                self.settings.agent_id.clone(),
            ));
        }
        loop {
            let retry_at = selector.next_quic_retry();
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = link.closed() => {
                    return match revoked_signal(&link, &active.revoked) {
                        Some(detail) => Outcome::Revoked(format!(
                            "{} connection to {} closed: this agent is revoked ({detail})",
                            link.transport, self.settings.server
                        )),
                        None => Outcome::Closed(message),
                    };
                }
                _ = self.shutdown.changed() => {
                    let deadline = self.shutdown_requested().unwrap_or(self.settings.drain_deadline);
                    drain_with(&link, active.state.clone(), active.in_flight.clone(), "shutdown", deadline).await;
                    return Outcome::Shutdown;
                }
                _ = retry => {
                    match dial(Transport::Quic, &self.settings, &self.tls).await {
                        Ok(next) => return Outcome::Migrated(Box::new(next)),
                        Err(error) if error.is_revoked() => return Outcome::Revoked(error.to_string()),
                        Err(error) => {
                            tracing::debug!(agent_id = %self.settings.agent_id, %error, "quic still unavailable; staying on tcp");
                            selector.quic_retry_failed(Instant::now());
                        }
                    }
                }
            }
        }
    }
}

/// Drain a link we are leaving: goaway, wait for in-flight calls, close.
async fn drain(old: Active, reason: &'static str, deadline: Duration) {
    drain_with(
        &old.link,
        old.state.clone(),
        old.in_flight.clone(),
        reason,
        deadline,
    )
    .await;
}

async fn drain_with(
    link: &Arc<Link>,
    state: Option<Arc<ControlState>>,
    in_flight: Arc<AtomicU64>,
    reason: &str,
    deadline: Duration,
) {
    if let Some(state) = &state {
        let _ = state.cmd_tx.send(ControlCmd::GoAway {
            reason: reason.to_owned(),
            deadline,
        });
    }
    let until = Instant::now() + deadline;
    // Let the goaway reach the peer before counting.
    tokio::time::sleep(Duration::from_millis(50)).await;
    while in_flight.load(Ordering::SeqCst) > 0
        && Instant::now() < until
        && link.closed_message().is_none()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    link.close(if reason == "shutdown" {
        CloseReason::Shutdown
    } else {
        CloseReason::Superseded
    });
}

struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(
    link: Arc<Link>,
    handler: Arc<dyn CallHandler>,
    in_flight: Arc<AtomicU64>,
    agent_id: String,
) {
    loop {
        match link.accept().await {
            Ok(Some((path, tx, rx))) => {
                if let Some(p) = &path {
                    if p != H2_CALL_PATH {
                        tracing::warn!(agent_id = %agent_id, path = %p, "unexpected stream path; refusing it");
                        let mut tx = tx;
                        tx.reset(StreamCode::BadFrame);
                        continue;
                    }
                }
                in_flight.fetch_add(1, Ordering::SeqCst);
                let guard = InFlight(in_flight.clone());
                let io = CallIo {
                    link: link.clone(),
                    tx,
                    rx,
                    input_done: false,
                };
                let handler = handler.clone();
                let agent_id = agent_id.clone();
                tokio::spawn(async move {
                    serve_call(io, handler, &agent_id).await;
                    drop(guard);
                });
            }
            Ok(None) => return,
            Err(error) => {
                tracing::debug!(agent_id = %agent_id, %error, "accept failed");
                return;
            }
        }
    }
}

/// Serve one call: read the request, answer unknown or malformed ones here,
/// hand the rest to the handler, send its response, finish the stream.
async fn serve_call(mut io: CallIo, handler: Arc<dyn CallHandler>, agent_id: &str) {
    let first = match io.rx.recv().await {
        Ok(Some(f)) => f,
        Ok(None) => return,
        Err(StreamError::Frame(error)) => {
            tracing::warn!(agent_id = %agent_id, %error, "malformed frame on a call stream; closing that stream");
            io.rx.stop(StreamCode::BadFrame);
            let _ = io
                .tx
                .send_message(&Response::error(ErrorCode::BadFrame, error.to_string()))
                .await;
            let _ = io.tx.finish();
            return;
        }
        Err(error) => {
            tracing::debug!(agent_id = %agent_id, %error, "call stream failed before the request");
            return;
        }
    };
    let response = match Request::from_frame(&first) {
        Ok(Request::Unknown { name }) => {
            tracing::info!(agent_id = %agent_id, call = %name, "unknown call; answering unsupported_call");
            Response::error(
                ErrorCode::UnsupportedCall,
                format!("call `{name}` is not supported by this agent"),
            )
        }
        Ok(request) => handler.handle(request, &mut io).await,
        Err(error) => {
            let code = match error {
                FrameError::InvalidJson { .. } => ErrorCode::BadRequest,
                _ => ErrorCode::BadFrame,
            };
            tracing::warn!(agent_id = %agent_id, %error, "malformed request; answering {code}");
            Response::error(code, error.to_string())
        }
    };
    let frame = match response.to_frame() {
        Ok(f) => f,
        Err(error) => {
            // A response too large for one frame is a handler bug; say so on the wire.
            tracing::error!(agent_id = %agent_id, %error, "response does not fit a frame");
            match Response::error(
                ErrorCode::Internal,
                format!("response does not fit a frame: {error}"),
            )
            .to_frame()
            {
                Ok(f) => f,
                Err(_) => Frame::data(bytes::Bytes::new()),
            }
        }
    };
    // The response and the end of the stream go together (one write on
    // QUIC, one DATA frame with END_STREAM on h2).
    if let Err(error) = io.tx.send_and_finish(&frame, bytes::Bytes::new()).await {
        tracing::debug!(agent_id = %agent_id, %error, "could not send response");
    }
}

/// The `echo` call: stream every received chunk back, then answer with the count.
pub async fn serve_echo(io: &mut CallIo) -> Response {
    let mut total = 0u64;
    loop {
        match io.recv_data().await {
            Ok(Some(chunk)) => {
                total += chunk.len() as u64;
                if let Err(error) = io.send_data(chunk).await {
                    return Response::error(
                        ErrorCode::Internal,
                        format!("echo send failed: {error}"),
                    );
                }
            }
            Ok(None) => {
                return Response::Ok(protocol::Reply::Echo(protocol::call::EchoReply {
                    bytes: total,
                }))
            }
            Err(error) => {
                return Response::error(
                    ErrorCode::BadFrame,
                    format!("echo receive failed: {error}"),
                )
            }
        }
    }
}
