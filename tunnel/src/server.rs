//! The control plane's side: one listener on a UDP port (QUIC) and the TCP
//! port of the same number (TLS, then h2 with the control plane as the h2
//! client). Each accepted connection is handshaken, its control stream opened
//! and its hello read; the embedding app then decides ([`PendingConnection`])
//! and calls agents through [`ServerConnection`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use protocol::hello::{PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use protocol::{FrameCodec, Hello, HelloAnswer, RejectCode, Request};
use rustls_pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::call::Call;
use crate::control::{ControlCmd, ControlLoop, ControlState, RenewFn};
use crate::error::{CallFailure, CloseReason, ListenError, StreamError};
use crate::link::{Link, LinkKind, H2_CALL_PATH, H2_CONTROL_PATH};
use crate::select::Transport;
use crate::stream::{FrameReceiver, FrameSender};
use crate::tuning::{self, Tuning};
use crate::ALPN;

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// UDP and TCP address (same port number for both).
    pub listen: SocketAddr,
    /// Heartbeat interval announced to agents and used by the watchdog.
    pub heartbeat_interval: Duration,
    /// Missed intervals before a link counts as dead.
    pub heartbeat_misses: u32,
    /// Frame cap.
    pub max_frame_bytes: usize,
    /// Time allowed for a handshake, from when it starts (it got one of
    /// the `max_concurrent_handshakes` slots) to a complete hello.
    pub handshake_timeout: Duration,
    /// Handshakes (TLS/QUIC handshake up to the hello) in progress at once,
    /// both transports together; more connections wait for a slot, at most
    /// `handshake_queue_wait`, and are then refused (QUIC
    /// `CONNECTION_REFUSED`, TCP closed) so the agent backs off.
    pub max_concurrent_handshakes: usize,
    /// Longest wait for a handshake slot (see `max_concurrent_handshakes`).
    pub handshake_queue_wait: Duration,
    /// Longest time a handshake holds its slot; past it, the handshake goes
    /// on without one (until `handshake_timeout`) and the slot serves the
    /// next connection. A handshake costs a few ms of CPU and a few round
    /// trips; one still going after the hold (500 ms) is waiting on a slow
    /// path or on an agent that gave up (at its 3 s QUIC connect timeout it
    /// drops the dial and sends nothing more), and neither needs the slot's
    /// protection of the CPU. A 2 s hold let such abandoned handshakes stall
    /// every slot for seconds during a 10,000-agent cold start.
    pub handshake_slot_hold: Duration,
    /// Our software version (in the hello answer).
    pub software_version: String,
    /// Flow-control windows.
    pub tuning: Tuning,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_misses: 3,
            max_frame_bytes: protocol::frame::DEFAULT_MAX_FRAME_BYTES,
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_handshakes: DEFAULT_MAX_CONCURRENT_HANDSHAKES,
            handshake_queue_wait: Duration::from_secs(1),
            handshake_slot_hold: Duration::from_millis(500),
            software_version: env!("CARGO_PKG_VERSION").to_owned(),
            tuning: Tuning::default(),
        }
    }
}

/// Default of [`ServerSettings::max_concurrent_handshakes`].
pub const DEFAULT_MAX_CONCURRENT_HANDSHAKES: usize = 64;

/// The handshake slots of a listener: a burst of dialers (every agent after
/// a control-plane restart) is handshaken a few at a time, each at full
/// speed, instead of all at once, each at a crawl until all time out.
struct HandshakeGate {
    slots: Arc<Semaphore>,
    queue_wait: Duration,
    slot_hold: Duration,
    /// Refusals: in all, since the last warning, and when that was.
    refused: Mutex<Refusals>,
}

#[derive(Default)]
struct Refusals {
    total: u64,
    since_warning: u64,
    warned: Option<Instant>,
}

impl HandshakeGate {
    fn new(settings: &ServerSettings) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(settings.max_concurrent_handshakes.max(1))),
            queue_wait: settings.handshake_queue_wait,
            slot_hold: settings.handshake_slot_hold,
            refused: Mutex::new(Refusals::default()),
        }
    }

    /// A slot, or `None` when none came free within the queue wait.
    async fn enter(&self) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(self.queue_wait, self.slots.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }

    /// Run `handshake` holding `slot` for at most the slot hold, then
    /// without it.
    async fn hold<F: std::future::Future>(
        &self,
        slot: OwnedSemaphorePermit,
        handshake: F,
    ) -> F::Output {
        tokio::pin!(handshake);
        tokio::select! {
            out = &mut handshake => return out,
            _ = tokio::time::sleep(self.slot_hold) => {}
        }
        drop(slot);
        handshake.await
    }

    /// Count a refusal; warn at most every 5 s (a storm refuses thousands).
    fn refused(&self, transport: &'static str) {
        let Ok(mut r) = self.refused.lock() else {
            return;
        };
        r.total += 1;
        r.since_warning += 1;
        let now = Instant::now();
        if r.warned
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5))
        {
            tracing::warn!(
                refused = r.since_warning,
                refused_total = r.total,
                transport,
                wait_ms = self.queue_wait.as_millis() as u64,
                "tunnel handshakes refused: every handshake slot stayed busy (tunnel.max_concurrent_handshakes); the agents back off and redial"
            );
            r.since_warning = 0;
            r.warned = Some(now);
        }
    }
}

/// The secret that keys QUIC stateless resets. When it is the same after a
/// restart (derived from a secret that survives restarts, such as the CA
/// key), the restarted listener answers packets of connections it no longer
/// knows with a reset the agent accepts as genuine, so agents redial at once
/// instead of waiting out their idle timeout (three heartbeat intervals).
/// The connection ids the listener issues are checked with a key derived
/// from it too, so the restarted listener recognises its predecessor's ids
/// (and answers them) instead of dropping their packets as junk. Without a
/// key both are random per process, and agents wait out their idle timeout.
#[derive(Clone)]
pub struct StatelessResetKey([u8; 32]);

impl StatelessResetKey {
    /// A key from 32 secret bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl std::fmt::Debug for StatelessResetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatelessResetKey(..)")
    }
}

/// Least time between two stateless resets the listener sends (quinn's
/// default is 20 ms: 50 per second, which would take minutes to tell
/// 10,000 agents of a restart). A reset is always smaller than the packet
/// that caused it, so it cannot amplify.
const MIN_RESET_INTERVAL: Duration = Duration::from_micros(50);

/// The key of the check in our QUIC connection ids, from the reset secret.
fn cid_key(reset: &ring::hmac::Key) -> u64 {
    let tag = ring::hmac::sign(reset, b"airlock tunnel quic connection id check v1");
    let mut k = [0u8; 8];
    k.copy_from_slice(&tag.as_ref()[..8]);
    u64::from_le_bytes(k)
}

/// Why a connection's hello could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HelloFailure {
    /// The hello frame was malformed or the stream failed.
    #[error("bad hello: {0}")]
    Stream(#[from] StreamError),
}

/// Accepts agent connections.
#[derive(Debug)]
pub struct Listener {
    local_addr: SocketAddr,
    endpoint: quinn::Endpoint,
    rx: mpsc::Receiver<PendingConnection>,
    tcp_task: tokio::task::AbortHandle,
    quic_task: tokio::task::AbortHandle,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.tcp_task.abort();
        self.quic_task.abort();
    }
}

impl Listener {
    /// Bind UDP and TCP on `settings.listen` (port 0: one free port number
    /// for both), with a random stateless reset key.
    pub async fn bind(
        settings: ServerSettings,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<Self, ListenError> {
        Self::bind_with_reset_key(settings, tls, None).await
    }

    /// [`Self::bind`] with the QUIC stateless reset key `reset_key` (see
    /// [`StatelessResetKey`]; `None`: random).
    pub async fn bind_with_reset_key(
        settings: ServerSettings,
        tls: Arc<rustls::ServerConfig>,
        reset_key: Option<StatelessResetKey>,
    ) -> Result<Self, ListenError> {
        let endpoint_config = match &reset_key {
            Some(key) => {
                let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key.0);
                // Connection ids carry a check keyed by the same secret: ids
                // the previous process issued are then valid here, so their
                // packets are answered with a reset instead of dropped as junk
                // (quinn's default key is random per process).
                let cid_key = cid_key(&hmac);
                let mut c = quinn::EndpointConfig::new(Arc::new(hmac));
                c.cid_generator(move || {
                    Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
                });
                c.min_reset_interval(MIN_RESET_INTERVAL);
                c
            }
            None => quinn::EndpointConfig::default(),
        };
        let mut tls = (*tls).clone();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let tls = Arc::new(tls);
        let quic_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.clone())
            .map_err(|e| ListenError::TlsConfig(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic_crypto));
        server_config.transport_config(Arc::new(tuning::quic_transport(
            &settings.tuning,
            tuning::AGENT_OPENED_STREAMS,
            settings.heartbeat_interval,
            settings.heartbeat_misses,
        )));

        // Same port number for UDP and TCP; with port 0 retry until both are free.
        let mut attempt = 0;
        let (endpoint, tcp) = loop {
            attempt += 1;
            let socket =
                tuning::udp_socket(settings.listen, &settings.tuning).map_err(|source| {
                    ListenError::Bind {
                        protocol: "udp",
                        address: settings.listen,
                        source,
                    }
                })?;
            let udp_addr = socket.local_addr().map_err(|source| ListenError::Bind {
                protocol: "udp",
                address: settings.listen,
                source,
            })?;
            match TcpListener::bind(udp_addr).await {
                Ok(tcp) => {
                    let runtime = quinn::default_runtime()
                        .ok_or_else(|| ListenError::TlsConfig("no async runtime".into()))?;
                    let endpoint = quinn::Endpoint::new(
                        endpoint_config.clone(),
                        Some(server_config.clone()),
                        socket,
                        runtime,
                    )
                    .map_err(|source| ListenError::Bind {
                        protocol: "udp",
                        address: udp_addr,
                        source,
                    })?;
                    break (endpoint, tcp);
                }
                Err(source) if settings.listen.port() != 0 || attempt >= 20 => {
                    return Err(ListenError::Bind {
                        protocol: "tcp",
                        address: udp_addr,
                        source,
                    });
                }
                Err(_) => continue,
            }
        };
        let local_addr = endpoint.local_addr().map_err(|source| ListenError::Bind {
            protocol: "udp",
            address: settings.listen,
            source,
        })?;
        let (tx, rx) = mpsc::channel(64);
        let gate = Arc::new(HandshakeGate::new(&settings));
        let settings = Arc::new(settings);
        let quic_task = tokio::spawn(quic_accept_loop(
            endpoint.clone(),
            settings.clone(),
            gate.clone(),
            tx.clone(),
        ))
        .abort_handle();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let tcp_task =
            tokio::spawn(tcp_accept_loop(tcp, acceptor, settings, gate, tx)).abort_handle();
        tracing::info!(%local_addr, "tunnel listening (udp quic + tcp tls)");
        Ok(Self {
            local_addr,
            endpoint,
            rx,
            tcp_task,
            quic_task,
        })
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next connection whose hello arrived.
    pub async fn accept(&mut self) -> Option<PendingConnection> {
        self.rx.recv().await
    }

    /// Stop accepting new connections (existing ones are untouched).
    pub fn stop_accepting(&self) {
        self.endpoint.set_server_config(None);
        self.tcp_task.abort();
    }

    /// Close the QUIC endpoint and wait (bounded) for its connections to be told.
    pub async fn shutdown(&self, grace: Duration) {
        self.stop_accepting();
        let (code, reason) = CloseReason::Shutdown.quic();
        self.endpoint.close(code, reason);
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
    }
}

async fn quic_accept_loop(
    endpoint: quinn::Endpoint,
    settings: Arc<ServerSettings>,
    gate: Arc<HandshakeGate>,
    tx: mpsc::Sender<PendingConnection>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let settings = settings.clone();
        let gate = gate.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let remote_addr = incoming.remote_address();
            // Nothing is done for the connection until it has a slot; the
            // handshake timeout counts from then.
            let Some(slot) = gate.enter().await else {
                incoming.refuse();
                gate.refused("quic");
                return;
            };
            let result = tokio::time::timeout(
                settings.handshake_timeout,
                gate.hold(slot, quic_handshake(incoming, &settings)),
            )
            .await;
            match result {
                Ok(Ok(pending)) => {
                    let _ = tx.send(pending).await;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%remote_addr, transport = "quic", %error, "tunnel handshake failed")
                }
                Err(_) => {
                    tracing::warn!(%remote_addr, transport = "quic", "tunnel handshake timed out")
                }
            }
        });
    }
}

async fn quic_handshake(
    incoming: quinn::Incoming,
    settings: &ServerSettings,
) -> Result<PendingConnection, String> {
    let conn = incoming.await.map_err(|e| e.to_string())?;
    let remote_addr = conn.remote_address();
    let certs = peer_certs_quic(&conn).ok_or("no verified client certificate")?;
    let codec = FrameCodec::new(settings.max_frame_bytes);
    let link = Link::new(
        LinkKind::Quic(conn.clone()),
        Transport::Quic,
        remote_addr,
        codec,
    );
    let (send, recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
    let tx = FrameSender::new(crate::stream::SendHalf::Quic(send), codec);
    let rx = FrameReceiver::new(crate::stream::RecvHalf::Quic(recv), codec);
    Ok(PendingConnection::read_hello(link, certs, tx, rx).await)
}

fn peer_certs_quic(conn: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()
        .map(|b| *b)
        .filter(|v| !v.is_empty())
}

async fn tcp_accept_loop(
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    settings: Arc<ServerSettings>,
    gate: Arc<HandshakeGate>,
    tx: mpsc::Sender<PendingConnection>,
) {
    loop {
        let (stream, remote_addr) = match tcp.accept().await {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let settings = settings.clone();
        let gate = gate.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let Some(slot) = gate.enter().await else {
                drop(stream);
                gate.refused("tcp");
                return;
            };
            let result = tokio::time::timeout(
                settings.handshake_timeout,
                gate.hold(
                    slot,
                    tcp_handshake(stream, remote_addr, acceptor, &settings),
                ),
            )
            .await;
            match result {
                Ok(Ok(pending)) => {
                    let _ = tx.send(pending).await;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%remote_addr, transport = "tcp", %error, "tunnel handshake failed")
                }
                Err(_) => {
                    tracing::warn!(%remote_addr, transport = "tcp", "tunnel handshake timed out")
                }
            }
        });
    }
}

async fn tcp_handshake(
    stream: TcpStream,
    remote_addr: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    settings: &ServerSettings,
) -> Result<PendingConnection, String> {
    let _ = stream.set_nodelay(true);
    let tls = acceptor
        .accept(stream)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let certs: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    if certs.is_empty() {
        return Err("no verified client certificate".into());
    }
    let (send_request, connection) = tuning::h2_client(&settings.tuning)
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .map_err(|e| format!("h2: {e}"))?;
    let codec = FrameCodec::new(settings.max_frame_bytes);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<String>();
    let driver = tokio::spawn(async move {
        let msg = match connection.await {
            Ok(()) => "h2 connection ended".to_owned(),
            Err(e) => format!("h2 connection failed: {e}"),
        };
        let _ = done_tx.send(msg);
    })
    .abort_handle();
    let link = Link::new(
        LinkKind::H2Client {
            send_request,
            driver,
        },
        Transport::Tcp,
        remote_addr,
        codec,
    );
    link.close_when_done(done_rx);
    let (tx, rx) = link
        .open(H2_CONTROL_PATH)
        .await
        .map_err(|e| e.to_string())?;
    Ok(PendingConnection::read_hello(link, certs, tx, rx).await)
}

/// A handshaken connection whose hello has been read; accept or reject it.
pub struct PendingConnection {
    link: Arc<Link>,
    certs: Vec<CertificateDer<'static>>,
    hello: Result<Hello, HelloFailure>,
    tx: FrameSender,
    rx: FrameReceiver,
}

impl std::fmt::Debug for PendingConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingConnection")
            .field("remote_addr", &self.link.remote_addr)
            .field("transport", &self.link.transport)
            .field("hello", &self.hello)
            .finish_non_exhaustive()
    }
}

impl PendingConnection {
    async fn read_hello(
        link: Arc<Link>,
        certs: Vec<CertificateDer<'static>>,
        tx: FrameSender,
        mut rx: FrameReceiver,
    ) -> Self {
        let hello = rx.recv_message::<Hello>().await.map_err(HelloFailure::from);
        Self {
            link,
            certs,
            hello,
            tx,
            rx,
        }
    }

    /// The verified client certificate chain (leaf first).
    pub fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// Where the connection comes from (the proxy's address when proxied).
    pub fn remote_addr(&self) -> SocketAddr {
        self.link.remote_addr
    }

    /// Transport in use.
    pub fn transport(&self) -> Transport {
        self.link.transport
    }

    /// The agent's hello, or why it could not be read.
    pub fn hello(&self) -> Result<&Hello, &HelloFailure> {
        self.hello.as_ref()
    }

    /// The protocol version to use with this hello, if any.
    pub fn negotiate(&self) -> Option<u32> {
        let h = self.hello.as_ref().ok()?;
        protocol::hello::negotiate(
            (PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX),
            (h.min_version, h.max_version),
        )
    }

    /// Refuse the connection with a typed answer, then close it.
    pub async fn reject(mut self, code: RejectCode, message: impl Into<String>) {
        let supported = matches!(code, RejectCode::UnsupportedVersion)
            .then_some((PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX));
        let answer = HelloAnswer::Rejected {
            code,
            message: message.into(),
            supported,
        };
        let link = self.link.clone();
        let send = async {
            let _ = self.tx.send_message(&answer).await;
            let _ = self.tx.finish();
            // Let the answer reach the peer before the close overtakes it:
            // until it is acknowledged (QUIC) or the peer hangs up.
            tokio::select! {
                _ = self.tx.acknowledged() => {}
                _ = link.closed() => {}
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), send).await;
        self.link.close(CloseReason::Rejected);
    }

    /// Accept at `version`: answer the hello and start the control loop
    /// (heartbeats, watchdog, renewal through `renew`). `peer` names the
    /// agent in log lines.
    pub async fn accept(
        mut self,
        version: u32,
        settings: &ServerSettings,
        renew: Option<RenewFn>,
        peer: String,
    ) -> Result<ServerConnection, StreamError> {
        let answer = HelloAnswer::Accepted {
            version,
            heartbeat_interval_ms: u64::try_from(settings.heartbeat_interval.as_millis())
                .unwrap_or(u64::MAX),
            max_frame_bytes: settings.max_frame_bytes as u64,
            software_version: settings.software_version.clone(),
            // Version 2 on: our clock, so the agent can measure its skew.
            server_time_unix_ms: (version >= protocol::hello::VERSION_SERVER_TIME).then(|| {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    .unwrap_or(0)
            }),
        };
        self.tx.send_message(&answer).await?;
        let (state, cmd_rx) = ControlState::new();
        let control = ControlLoop {
            link: self.link.clone(),
            tx: self.tx,
            rx: self.rx,
            interval: settings.heartbeat_interval,
            misses: settings.heartbeat_misses,
            state: state.clone(),
            cmd_rx,
            renew,
            peer,
            audit: None,
        };
        tokio::spawn(control.run());
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Ok(ServerConnection {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                link: self.link,
                state,
                version,
                connected_at: SystemTime::now(),
                local_draining: AtomicBool::new(false),
                in_flight: AtomicU64::new(0),
            }),
        })
    }
}

struct Inner {
    id: u64,
    link: Arc<Link>,
    state: Arc<ControlState>,
    version: u32,
    connected_at: SystemTime,
    local_draining: AtomicBool,
    in_flight: AtomicU64,
}

/// An accepted agent connection, control-plane side. Cheap to clone.
#[derive(Clone)]
pub struct ServerConnection {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ServerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConnection")
            .field("id", &self.inner.id)
            .field("transport", &self.inner.link.transport)
            .field("remote_addr", &self.inner.link.remote_addr)
            .finish_non_exhaustive()
    }
}

/// Decrements the in-flight count when a call ends.
struct InFlight(Arc<Inner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ServerConnection {
    /// Process-unique connection id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Transport in use.
    pub fn transport(&self) -> Transport {
        self.inner.link.transport
    }

    /// Peer address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.inner.link.remote_addr
    }

    /// Negotiated protocol version.
    pub fn version(&self) -> u32 {
        self.inner.version
    }

    /// When the hello was accepted.
    pub fn connected_at(&self) -> SystemTime {
        self.inner.connected_at
    }

    /// The audit statuses the agent sends on the control stream
    /// ([`protocol::ControlMessage::AuditStatus`]), in order of arrival.
    /// `Some` only on the first call: one reader per connection. Until it is
    /// taken (and whenever the reader lags by
    /// 64 statuses) newer statuses are dropped with a warning.
    pub fn take_audit_statuses(
        &self,
    ) -> Option<tokio::sync::mpsc::Receiver<protocol::audit::AuditStatus>> {
        self.inner.state.take_audit_statuses()
    }

    /// When the agent was last heard from on the control stream.
    pub fn last_heartbeat(&self) -> SystemTime {
        self.inner.state.last_heard()
    }

    /// Either side sent a goaway: no new calls go here.
    pub fn is_draining(&self) -> bool {
        self.inner.local_draining.load(Ordering::SeqCst)
            || self.inner.state.peer_draining.load(Ordering::SeqCst)
    }

    /// The link is gone.
    pub fn is_closed(&self) -> bool {
        self.inner.link.closed_message().is_some()
    }

    /// Calls in flight.
    pub fn in_flight(&self) -> u64 {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Open a call. Fails with [`CallFailure::Draining`] on a draining
    /// connection and [`CallFailure::ConnectionLost`] on a dead one.
    pub async fn call(&self, request: &Request) -> Result<TrackedCall, CallFailure> {
        self.open_tracked(request, None).await
    }

    /// Open a call whose whole input is `request` plus `data`, sent with the
    /// end of input in one write; only the receiver is left to use.
    pub async fn call_finished(
        &self,
        request: &Request,
        data: bytes::Bytes,
    ) -> Result<TrackedCall, CallFailure> {
        self.open_tracked(request, Some(data)).await
    }

    /// Open a call counted in flight until it is dropped; with `input`, the
    /// input is written and finished at once.
    async fn open_tracked(
        &self,
        request: &Request,
        input: Option<bytes::Bytes>,
    ) -> Result<TrackedCall, CallFailure> {
        if self.is_draining() {
            return Err(CallFailure::Draining);
        }
        self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self.inner.clone());
        let link = self.inner.link.clone();
        let call = match input {
            None => Call::open(link, H2_CALL_PATH, request).await?,
            Some(data) => Call::open_finished(link, H2_CALL_PATH, request, data).await?,
        };
        Ok(TrackedCall {
            call,
            _guard: guard,
        })
    }

    /// Open a stream and write `raw` bytes as is (not framed): for tests of
    /// how an agent handles malformed input. Not for production use.
    #[doc(hidden)]
    pub async fn call_raw(&self, raw: bytes::Bytes) -> Result<Call, CallFailure> {
        Call::open_raw(self.inner.link.clone(), H2_CALL_PATH, raw).await
    }

    /// Tell the agent we are draining; no new calls are opened here.
    pub fn goaway(&self, reason: &str, deadline: Duration) {
        self.inner.local_draining.store(true, Ordering::SeqCst);
        let _ = self.inner.state.cmd_tx.send(ControlCmd::GoAway {
            reason: reason.to_owned(),
            deadline,
        });
    }

    /// Close now; in-flight calls fail with `ConnectionLost`.
    pub fn close(&self, reason: CloseReason) {
        self.inner.link.close(reason);
    }

    /// Wait until the connection is closed; returns why.
    pub async fn closed(&self) -> String {
        self.inner.link.closed().await
    }

    /// Wait until no call is in flight or `deadline` passes; `true` if drained.
    pub async fn drained(&self, deadline: Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        while self.in_flight() > 0 && !self.is_closed() {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// A [`Call`] counted in its connection's in-flight calls until dropped.
#[derive(Debug)]
pub struct TrackedCall {
    /// The call.
    pub call: Call,
    _guard: InFlight,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InFlight")
    }
}

impl std::ops::Deref for TrackedCall {
    type Target = Call;
    fn deref(&self) -> &Call {
        &self.call
    }
}

impl std::ops::DerefMut for TrackedCall {
    fn deref_mut(&mut self) -> &mut Call {
        &mut self.call
    }
}

impl TrackedCall {
    /// See [`Call::finish_and_collect`].
    pub async fn finish_and_collect(
        mut self,
    ) -> Result<(bytes::Bytes, protocol::Response), CallFailure> {
        self.call.sender.finish()?;
        self.call.receiver.collect().await
    }
}
