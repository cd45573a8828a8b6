//! The agent channel: the Unix socket the sandbox-agent (and only it) talks
//! to the bridge over, with the [`protocol::bridge`] messages in control
//! frames.
//!
//! Access is decided by the kernel-reported peer uid (`SO_PEERCRED`),
//! checked on every connection against the bridge's own uid plus
//! `bridge.allowed_peer_uids`; anyone else gets one
//! [`BridgeErrorCode::PeerNotAllowed`] answer and the connection is closed.
//! The socket is mode `0600` when only the bridge's uid is allowed (the
//! agent runs as the same user), and `0666` when other uids are allowed
//! (the file mode cannot name them; the uid check decides).
//!
//! A connection starts with `Hello` (version negotiated as on the tunnel),
//! then carries one request at a time: `OpenEgress` starts a sandbox's
//! egress socket ([`EgressListeners`]), `CloseEgress` stops it, `Health`
//! asks the secret backend.

use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use protocol::bridge::{
    BackendStatus, BridgeErrorCode, FromBridge, ToBridge, BRIDGE_PROTOCOL_VERSION_MAX,
    BRIDGE_PROTOCOL_VERSION_MIN,
};
use protocol::frame::{Frame, FrameCodec, FrameError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use crate::agent_channel_egress::{session_policy, with_agent_policy, EgressListeners, OpenError};
use crate::backend::SecretBackend;
use crate::egress::{EgressPolicy, SandboxIdentity};

/// Frame cap of the agent channel: the protocol's default (1 MiB), so an
/// MCP tool call's arguments and its result (up to
/// [`protocol::mcp::MCP_RESULT_MAX_BYTES`]) fit in one frame.
pub const MAX_FRAME_BYTES: usize = protocol::frame::DEFAULT_MAX_FRAME_BYTES;
/// How long a health request may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the agent channel (or one of its connections) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The socket could not be created.
    #[error("cannot bind the agent channel socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The peer's uid may not use the channel.
    #[error("peer uid {uid} is not allowed on the agent channel (allowed uids: {allowed:?})")]
    PeerNotAllowed {
        /// The peer's uid, as the kernel reports it.
        uid: u32,
        /// The allowed uids.
        allowed: Vec<u32>,
    },
    /// The kernel would not say who the peer is.
    #[error("cannot read the agent channel peer's credentials: {0}")]
    PeerCredentials(#[source] io::Error),
    /// Reading or writing the connection failed.
    #[error("agent channel i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not a frame or not a message.
    #[error("agent channel peer sent an invalid frame: {0}")]
    Frame(#[from] FrameError),
    /// The peer's first message was not an acceptable hello.
    #[error("agent channel hello refused: {0}")]
    Hello(String),
}

/// Check a peer's uid against the allowed ones.
pub fn check_peer_uid(uid: u32, allowed: &[u32]) -> Result<(), ChannelError> {
    if allowed.contains(&uid) {
        Ok(())
    } else {
        Err(ChannelError::PeerNotAllowed {
            uid,
            allowed: allowed.to_vec(),
        })
    }
}

/// The bridge's uid (always allowed on its own channel).
pub fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

struct State {
    allowed_uids: Vec<u32>,
    listeners: Arc<EgressListeners>,
    backend: Arc<dyn SecretBackend>,
    relay: Option<Arc<crate::relay::Relay>>,
    audit: Option<Arc<crate::audit_journal::AuditJournal>>,
    mcp: Option<Arc<crate::mcp::McpClient>>,
    /// The values `Scrub` replaces (see [`crate::scrub`]).
    known: crate::scrub::KnownSecrets,
}

/// The bound agent channel, ready to [`run`](AgentChannel::run).
pub struct AgentChannel {
    listener: UnixListener,
    path: PathBuf,
    state: Arc<State>,
}

impl std::fmt::Debug for AgentChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentChannel")
            .field("path", &self.path)
            .field("allowed_uids", &self.state.allowed_uids)
            .finish()
    }
}

impl AgentChannel {
    /// Bind the channel at `path` (a stale socket there is replaced; the
    /// parent directory is created `0711` if missing). `allowed_peer_uids`
    /// are allowed besides the bridge's own uid. Must run inside a tokio runtime.
    pub fn bind(
        path: &Path,
        allowed_peer_uids: &[u32],
        listeners: Arc<EgressListeners>,
        backend: Arc<dyn SecretBackend>,
    ) -> Result<Self, ChannelError> {
        let bind_err = |source| ChannelError::Bind {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(parent)
                .map_err(bind_err)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        let mut allowed_uids = vec![own_uid()];
        allowed_uids.extend(allowed_peer_uids.iter().copied());
        allowed_uids.sort_unstable();
        allowed_uids.dedup();
        let mode = if allowed_uids.len() > 1 { 0o666 } else { 0o600 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
            state: Arc::new(State {
                allowed_uids,
                listeners,
                known: crate::scrub::KnownSecrets::new(backend.clone()),
                backend,
                relay: None,
                audit: None,
                mcp: None,
            }),
        })
    }

    /// Serve `SubscribeAudit` from `journal` (without it the request is unsupported).
    pub fn with_audit(mut self, journal: Arc<crate::audit_journal::AuditJournal>) -> Self {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.audit = Some(journal);
        }
        self
    }

    /// Serve the relay messages (credentials and session tokens) with
    /// `relay`; without it they are refused as unsupported.
    pub fn with_relay(mut self, relay: Arc<crate::relay::Relay>) -> Self {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            let known = std::mem::replace(
                &mut state.known,
                crate::scrub::KnownSecrets::new(state.backend.clone()),
            );
            state.known = known.with_relay(relay.clone());
            state.relay = Some(relay);
        }
        self
    }

    /// Serve the MCP requests with `client`; without it they are refused
    /// as unsupported.
    pub fn with_mcp(mut self, client: Arc<crate::mcp::McpClient>) -> Self {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            let known = std::mem::replace(
                &mut state.known,
                crate::scrub::KnownSecrets::new(state.backend.clone()),
            );
            state.known = known.with_mcp(client.clone());
            state.mcp = Some(client);
        }
        self
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serve connections until `shutdown` resolves; then stop every
    /// connection and every sandbox's egress listener and remove the socket.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let state = self.state.clone();
                        conns.spawn(async move {
                            if let Err(error) = serve_agent(stream, &state).await {
                                tracing::warn!(%error, "agent channel connection failed");
                            }
                        });
                    }
                    Err(error) => {
                        tracing::warn!(%error, "agent channel accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
        conns.abort_all();
        self.state.listeners.close_all();
        if let Err(error) = std::fs::remove_file(&self.path) {
            if error.kind() != io::ErrorKind::NotFound {
                tracing::warn!(%error, path = %self.path.display(), "cannot remove the agent channel socket");
            }
        }
        tracing::info!("agent channel stopped");
    }
}

struct Conn {
    stream: UnixStream,
    buf: BytesMut,
    codec: FrameCodec,
}

impl Conn {
    async fn read(&mut self) -> Result<Option<Frame>, ChannelError> {
        loop {
            if let Some(f) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(f));
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Ok(self.codec.decode_eof(&mut self.buf)?);
            }
        }
    }

    async fn write(&mut self, m: &FromBridge) -> Result<(), ChannelError> {
        let bytes = self.codec.encode_to_bytes(&Frame::control(m)?)?;
        self.stream.write_all(&bytes).await?;
        Ok(())
    }
}

async fn serve_agent(stream: UnixStream, state: &State) -> Result<(), ChannelError> {
    let uid = stream
        .peer_cred()
        .map_err(ChannelError::PeerCredentials)?
        .uid();
    let mut conn = Conn {
        stream,
        buf: BytesMut::new(),
        codec: FrameCodec::new(MAX_FRAME_BYTES),
    };
    if let Err(e) = check_peer_uid(uid, &state.allowed_uids) {
        let _ = conn
            .write(&FromBridge::error(
                BridgeErrorCode::PeerNotAllowed,
                e.to_string(),
            ))
            .await;
        return Err(e);
    }
    let Some(first) = conn.read().await? else {
        return Ok(());
    };
    match ToBridge::decode(&first) {
        Ok(ToBridge::Hello {
            min_version,
            max_version,
            software_version,
        }) => {
            let ours = (BRIDGE_PROTOCOL_VERSION_MIN, BRIDGE_PROTOCOL_VERSION_MAX);
            let Some(version) = protocol::hello::negotiate(ours, (min_version, max_version)) else {
                let message = format!(
                    "no agent channel version in common: agent speaks {min_version}..={max_version}, bridge {}..={}",
                    ours.0, ours.1
                );
                conn.write(&FromBridge::error(
                    BridgeErrorCode::UnsupportedVersion,
                    &message,
                ))
                .await?;
                return Err(ChannelError::Hello(message));
            };
            tracing::info!(peer_uid = uid, version, agent_version = %software_version, "agent connected");
            conn.write(&FromBridge::HelloAccepted {
                version,
                software_version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .await?;
        }
        Ok(_) => {
            let message = "the first message must be hello".to_owned();
            conn.write(&FromBridge::error(BridgeErrorCode::HelloRequired, &message))
                .await?;
            return Err(ChannelError::Hello(message));
        }
        Err(e) => {
            conn.write(&FromBridge::error(
                BridgeErrorCode::Malformed,
                e.to_string(),
            ))
            .await?;
            return Err(e.into());
        }
    }
    while let Some(frame) = conn.read().await? {
        let request = match ToBridge::decode(&frame) {
            Ok(r) => r,
            Err(e) => {
                conn.write(&FromBridge::error(
                    BridgeErrorCode::Malformed,
                    e.to_string(),
                ))
                .await?;
                return Err(e.into());
            }
        };
        if let (ToBridge::SubscribeAudit { after_seq }, Some(journal)) = (&request, &state.audit) {
            return crate::agent_channel_audit::serve(conn.stream, *after_seq, journal.clone())
                .await;
        }
        let answer = handle(request, state).await;
        conn.write(&answer).await?;
    }
    Ok(())
}

async fn handle(request: ToBridge, state: &State) -> FromBridge {
    match request {
        ToBridge::OpenEgress {
            sandbox_id,
            session_id,
            allowed_hosts,
            repositories,
            credentials,
            egress_hosts,
        } => {
            if let Some(relay) = &state.relay {
                for c in &credentials {
                    relay.set_kv_path(&c.credential_id, c.kv_path.as_deref());
                }
            }
            let has_token = |resource_id: &str| {
                state
                    .relay
                    .as_ref()
                    .is_some_and(|r| r.holds_token(&session_id, resource_id))
            };
            let ended = state
                .relay
                .as_ref()
                .is_some_and(|r| r.session_ended(&session_id));
            let policy = if ended {
                tracing::info!(%sandbox_id, %session_id, "open_egress for an ended session: every request is refused");
                Ok((EgressPolicy::new(), Default::default()))
            } else {
                session_policy(
                    &sandbox_id,
                    &allowed_hosts,
                    &repositories,
                    &credentials,
                    has_token,
                )
                .and_then(|(policy, env)| {
                    with_agent_policy(&sandbox_id, policy, egress_hosts.as_deref())
                        .map(|policy| (policy, env))
                })
            };
            let opened = policy.and_then(|(policy, env)| {
                let path = state.listeners.open(
                    SandboxIdentity {
                        sandbox_id: sandbox_id.clone(),
                        session_id: session_id.clone(),
                    },
                    policy,
                )?;
                Ok((path, env))
            });
            match opened {
                Ok((path, env)) => FromBridge::EgressOpened {
                    socket_path: path.display().to_string(),
                    env,
                },
                Err(e) => {
                    let code = match &e {
                        OpenError::SandboxId(_) => BridgeErrorCode::InvalidSandboxId,
                        OpenError::Host { .. } => BridgeErrorCode::InvalidHost,
                        _ => BridgeErrorCode::Io,
                    };
                    tracing::warn!(%sandbox_id, error = %e, "open_egress refused");
                    FromBridge::error(code, e.to_string())
                }
            }
        }
        ToBridge::CloseEgress { sandbox_id } => match state.listeners.close(&sandbox_id) {
            Ok(existed) => FromBridge::EgressClosed { existed },
            Err(e) => FromBridge::error(BridgeErrorCode::InvalidSandboxId, e.to_string()),
        },
        ToBridge::Health => {
            match tokio::time::timeout(HEALTH_TIMEOUT, state.backend.health()).await {
                Ok(Ok(())) => FromBridge::Health {
                    backend: BackendStatus::Healthy,
                    message: None,
                },
                Ok(Err(e)) => FromBridge::Health {
                    backend: BackendStatus::Unhealthy,
                    message: Some(e.to_string()),
                },
                Err(_) => FromBridge::Health {
                    backend: BackendStatus::Unhealthy,
                    message: Some(format!(
                        "the secret backend did not answer within {HEALTH_TIMEOUT:?}"
                    )),
                },
            }
        }
        ToBridge::Hello { .. } => {
            FromBridge::error(BridgeErrorCode::Malformed, "hello was already exchanged")
        }
        ToBridge::PutCredential(p) => match &state.relay {
            Some(r) => {
                let answer = r.put_credential(&p).await;
                state.known.invalidate().await;
                answer
            }
            None => no_relay(),
        },
        ToBridge::ForgetCredential(f) => match &state.relay {
            Some(r) => r.forget_credential(&f).await,
            None => no_relay(),
        },
        ToBridge::PutSessionToken(p) => match &state.relay {
            Some(r) => {
                let answer = r.put_session_token(&p).await;
                state.known.invalidate().await;
                answer
            }
            None => no_relay(),
        },
        ToBridge::ForgetSessionToken(f) => match &state.relay {
            Some(r) => {
                if f.resource_id.is_none() {
                    // The session ended: cut its sandboxes' egress first.
                    if let Err(e) = end_session(r, &state.listeners, &f.session_id) {
                        return FromBridge::error(BridgeErrorCode::Io, e.to_string());
                    }
                }
                r.forget_session_token(&f).await
            }
            None => no_relay(),
        },
        ToBridge::McpListTools(r) => match &state.mcp {
            Some(m) => FromBridge::Mcp(m.list_tools(&r).await),
            None => no_mcp(),
        },
        ToBridge::McpCallTool(r) => match &state.mcp {
            Some(m) => FromBridge::Mcp(m.call_tool(&r).await),
            None => no_mcp(),
        },
        ToBridge::McpValidate(r) => match &state.mcp {
            Some(m) => FromBridge::McpValidated(crate::mcp::validate::validate(m, &r).await),
            None => no_mcp(),
        },
        ToBridge::Scrub { id, value } => scrub(id, value, state).await,
        _ => FromBridge::error(
            BridgeErrorCode::UnsupportedRequest,
            "this bridge does not know that request type",
        ),
    }
}

/// A session ended (`forget_session_token` without a resource): record it
/// (persisted, so a restarted bridge refuses it too) and re-open each of its
/// sandboxes' sockets under a policy that refuses every host. Re-opening
/// aborts their open connections (kept-alive tunnels included) and drops
/// their pooled upstream connections; the socket stays, so the agent does
/// not take it for a lost bridge and re-send the session's full policy.
fn end_session(
    relay: &crate::relay::Relay,
    listeners: &EgressListeners,
    session_id: &str,
) -> Result<(), crate::relay::RelayStoreError> {
    relay.end_session(session_id)?;
    for sandbox_id in listeners.sandboxes_of(session_id) {
        let who = SandboxIdentity {
            sandbox_id: sandbox_id.clone(),
            session_id: session_id.to_owned(),
        };
        match listeners.open(who, EgressPolicy::new()) {
            Ok(_) => {
                tracing::info!(%sandbox_id, %session_id, "egress of an ended session cut")
            }
            Err(error) => {
                // Could not re-bind: close it outright (the agent's re-send
                // then gets the refusing policy too).
                tracing::warn!(%sandbox_id, %session_id, %error, "egress of an ended session closed");
                let _ = listeners.close(&sandbox_id);
            }
        }
    }
    Ok(())
}

/// Answer a `Scrub`: every known secret value replaced; refused when the
/// answer would not fit one frame (the request already did: the codec
/// bounds it).
async fn scrub(id: u64, mut value: serde_json::Value, state: &State) -> FromBridge {
    let known = state.known.current().await;
    let redactions = known.scrub_value(&mut value);
    let answer = FromBridge::Scrubbed {
        id,
        value,
        redactions,
    };
    // The frame's JSON plus its header must fit the codec's cap.
    let size = serde_json::to_vec(&answer).map_or(usize::MAX, |v| v.len());
    if size > MAX_FRAME_BYTES.saturating_sub(64) {
        return FromBridge::error(
            BridgeErrorCode::TooLarge,
            format!("the scrubbed value is {size} bytes; at most {MAX_FRAME_BYTES} fit one frame"),
        );
    }
    tracing::debug!(scrub_id = id, redactions, known = known.len(), "scrubbed");
    answer
}

fn no_mcp() -> FromBridge {
    FromBridge::error(
        BridgeErrorCode::UnsupportedRequest,
        "this bridge was started without an MCP client",
    )
}

fn no_relay() -> FromBridge {
    FromBridge::error(
        BridgeErrorCode::UnsupportedRequest,
        "this bridge was started without relay state",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::{
        EgressCa, MemoryAudit, MemorySecrets, SystemResolver, TrustRoots, Upstream,
    };
    use protocol::bridge::EgressRepository;
    use std::os::unix::fs::MetadataExt;
    use tokio::io::AsyncBufReadExt;

    struct Fixture {
        dir: tempfile::TempDir,
        channel_path: PathBuf,
        egress_dir: PathBuf,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(extra_uids: &[u32]) -> Fixture {
        start_with(extra_uids, false).await
    }

    async fn start_with(extra_uids: &[u32], relay: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let config = crate::config::Config::parse(
            &format!(
                "[bridge]\ndata_dir = \"{}\"\n",
                dir.path().join("data").display()
            ),
            Path::new("test.toml"),
        )
        .unwrap();
        let backend = crate::backend::open(&config.backend).await.unwrap();
        let ca = EgressCa::load_or_create(&dir.path().join("ca")).unwrap();
        let upstream = Upstream::new(
            &TrustRoots::Webpki,
            Arc::new(SystemResolver),
            Duration::from_secs(2),
        )
        .unwrap();
        let egress = Arc::new(crate::egress::Egress::new(
            ca,
            upstream,
            Arc::new(MemorySecrets::new()),
            Arc::new(MemoryAudit::new()),
        ));
        let egress_dir = dir.path().join("egress");
        let listeners = Arc::new(EgressListeners::new(&egress_dir, egress).unwrap());
        let channel_path = dir.path().join("run").join("agent.sock");
        let mut channel =
            AgentChannel::bind(&channel_path, extra_uids, listeners, backend.clone()).unwrap();
        if relay {
            let r = crate::relay::Relay::open(
                &dir.path().join("data"),
                backend,
                Duration::from_secs(2),
            )
            .await
            .unwrap();
            channel = channel.with_relay(Arc::new(r));
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(channel.run(async move {
            let _ = stopped.await;
        }));
        Fixture {
            dir,
            channel_path,
            egress_dir,
            stop: Some(stop),
            task,
        }
    }

    struct Client(Conn);

    impl Client {
        async fn connect(path: &Path) -> Self {
            Client(Conn {
                stream: UnixStream::connect(path).await.unwrap(),
                buf: BytesMut::new(),
                codec: FrameCodec::new(MAX_FRAME_BYTES),
            })
        }

        async fn send_raw(&mut self, frame: &Frame) {
            let bytes = self.0.codec.encode_to_bytes(frame).unwrap();
            self.0.stream.write_all(&bytes).await.unwrap();
        }

        async fn call(&mut self, m: &ToBridge) -> FromBridge {
            self.send_raw(&Frame::control(m).unwrap()).await;
            self.recv().await.expect("an answer")
        }

        async fn recv(&mut self) -> Option<FromBridge> {
            let f = self.0.read().await.unwrap()?;
            Some(FromBridge::decode(&f).unwrap())
        }
    }

    fn open(sandbox_id: &str, hosts: &[&str]) -> ToBridge {
        ToBridge::OpenEgress {
            sandbox_id: sandbox_id.into(),
            session_id: "sesn_1".into(),
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            repositories: vec![EgressRepository {
                url: "https://git.example.com/a/b.git".into(),
                resource_id: None,
            }],
            credentials: vec![],
            egress_hosts: None,
        }
    }

    async fn hello(path: &Path) -> Client {
        let mut c = Client::connect(path).await;
        let a = c.call(&ToBridge::hello("test")).await;
        assert!(
            matches!(a, FromBridge::HelloAccepted { version, .. } if version == BRIDGE_PROTOCOL_VERSION_MAX),
            "{a:?}"
        );
        c
    }

    /// CONNECT through a sandbox's egress socket; returns the status line and body.
    async fn connect_through(socket: &str, host: &str) -> (String, String) {
        let mut s = UnixStream::connect(socket).await.unwrap();
        s.write_all(format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut r = tokio::io::BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status).await.unwrap();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn hello_health_open_connect_close_and_shutdown() {
        let mut f = start(&[]).await;
        let mode = std::fs::metadata(&f.channel_path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mut c = hello(&f.channel_path).await;
        assert_eq!(
            c.call(&ToBridge::Health).await,
            FromBridge::Health {
                backend: BackendStatus::Healthy,
                message: None
            }
        );
        let FromBridge::EgressOpened { socket_path, .. } =
            c.call(&open("sbx_1", &["allowed.example.com"])).await
        else {
            panic!("not opened");
        };
        assert_eq!(
            Path::new(&socket_path),
            f.egress_dir.join("sbx_1").join("egress.sock")
        );
        assert_eq!(
            std::fs::metadata(&socket_path).unwrap().mode() & 0o777,
            0o666
        );
        assert_eq!(
            std::fs::metadata(f.egress_dir.join("sbx_1"))
                .unwrap()
                .mode()
                & 0o777,
            0o711
        );
        // The listener serves this sandbox's policy: another host is refused, naming the policy.
        let (status, body) = connect_through(&socket_path, "other.example.net").await;
        assert!(status.starts_with("HTTP/1.1 403"), "{status}");
        assert!(
            body.contains("other.example.net") && body.contains("allowed hosts"),
            "{body}"
        );
        // A second sandbox gets its own socket and its own policy.
        let FromBridge::EgressOpened {
            socket_path: s2, ..
        } = c.call(&open("sbx_2", &["other.example.net"])).await
        else {
            panic!("not opened");
        };
        assert_ne!(s2, socket_path);

        // An idle connection on sbx_1's socket is cut when sbx_1 is closed.
        let mut idle = UnixStream::connect(&socket_path).await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(
            c.call(&ToBridge::CloseEgress {
                sandbox_id: "sbx_1".into()
            })
            .await,
            FromBridge::EgressClosed { existed: true }
        );
        assert!(!Path::new(&socket_path).exists());
        let mut b = [0u8; 1];
        // Bounded, not timed: the cut comes with the close, not after an idle timeout.
        let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut b))
            .await
            .expect("connection cut with the close")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(UnixStream::connect(&socket_path).await.is_err());
        assert_eq!(
            c.call(&ToBridge::CloseEgress {
                sandbox_id: "sbx_1".into()
            })
            .await,
            FromBridge::EgressClosed { existed: false }
        );

        // Shutdown removes the channel socket and every egress socket.
        f.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(1), &mut f.task)
            .await
            .unwrap()
            .unwrap();
        assert!(!f.channel_path.exists());
        assert!(!Path::new(&s2).exists());
        drop(f.dir);
    }

    #[tokio::test]
    async fn the_agents_egress_hosts_refuse_a_session_host_naming_the_policy() {
        let f = start(&[]).await;
        let mut c = hello(&f.channel_path).await;
        let mut req = open("sbx_4", &["a.example.com", "b.example.com"]);
        if let ToBridge::OpenEgress { egress_hosts, .. } = &mut req {
            *egress_hosts = Some(vec!["a.example.com".into(), "git.example.com:443".into()]);
        }
        let FromBridge::EgressOpened { socket_path, .. } = c.call(&req).await else {
            panic!("not opened");
        };
        let (status, body) = connect_through(&socket_path, "b.example.com").await;
        assert!(status.starts_with("HTTP/1.1 403"), "{status}");
        assert!(
            body.contains("b.example.com") && body.contains("policy.egress_hosts"),
            "{body}"
        );
        // A host in neither keeps the session's refusal.
        let (status, body) = connect_through(&socket_path, "c.example.com").await;
        assert!(status.starts_with("HTTP/1.1 403"), "{status}");
        assert!(
            body.contains("session's allowed hosts") && !body.contains("egress_hosts"),
            "{body}"
        );
        // A bad entry refuses the open, naming the key.
        if let ToBridge::OpenEgress { egress_hosts, .. } = &mut req {
            *egress_hosts = Some(vec!["https://a.example.com".into()]);
        }
        match c.call(&req).await {
            FromBridge::Error { code, message } => {
                assert_eq!(code, BridgeErrorCode::InvalidHost);
                assert!(message.contains("policy.egress_hosts"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn path_traversal_and_bad_hosts_are_refused() {
        let f = start(&[]).await;
        let mut c = hello(&f.channel_path).await;
        for id in ["../escape", "..", "a/b", "", "sbx.1"] {
            match c.call(&open(id, &[])).await {
                FromBridge::Error { code, message } => {
                    assert_eq!(code, BridgeErrorCode::InvalidSandboxId, "{message}");
                }
                other => panic!("{id}: {other:?}"),
            }
        }
        assert!(!f.dir.path().join("escape").exists());
        assert_eq!(std::fs::read_dir(&f.egress_dir).unwrap().count(), 0);
        match c.call(&open("sbx_3", &["bad host"])).await {
            FromBridge::Error { code, message } => {
                assert_eq!(code, BridgeErrorCode::InvalidHost);
                assert!(message.contains("bad host"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        match c
            .call(&ToBridge::CloseEgress {
                sandbox_id: "../x".into(),
            })
            .await
        {
            FromBridge::Error { code, .. } => assert_eq!(code, BridgeErrorCode::InvalidSandboxId),
            other => panic!("{other:?}"),
        }
        // Unknown request types get a typed answer; the connection goes on.
        c.send_raw(&Frame::Control(bytes::Bytes::from_static(
            br#"{"type":"rotate_keys"}"#,
        )))
        .await;
        assert!(matches!(
            c.recv().await,
            Some(FromBridge::Error {
                code: BridgeErrorCode::UnsupportedRequest,
                ..
            })
        ));
        assert!(matches!(
            c.call(&ToBridge::Health).await,
            FromBridge::Health { .. }
        ));
    }

    #[tokio::test]
    async fn hello_first_and_malformed_frames_close_the_connection() {
        let f = start(&[]).await;
        let mut c = Client::connect(&f.channel_path).await;
        assert!(matches!(
            c.call(&ToBridge::Health).await,
            FromBridge::Error {
                code: BridgeErrorCode::HelloRequired,
                ..
            }
        ));
        assert!(c.recv().await.is_none());

        let mut c = Client::connect(&f.channel_path).await;
        c.send_raw(&Frame::Control(bytes::Bytes::from_static(b"{not json")))
            .await;
        assert!(matches!(
            c.recv().await,
            Some(FromBridge::Error {
                code: BridgeErrorCode::Malformed,
                ..
            })
        ));
        assert!(c.recv().await.is_none());

        let mut c = Client::connect(&f.channel_path).await;
        let a = c
            .call(&ToBridge::Hello {
                min_version: 7,
                max_version: 9,
                software_version: "future".into(),
            })
            .await;
        assert!(
            matches!(&a, FromBridge::Error { code: BridgeErrorCode::UnsupportedVersion, message } if message.contains("7..=9")),
            "{a:?}"
        );

        // Bytes that are not a frame at all: the bridge closes without panicking.
        let mut s = UnixStream::connect(&f.channel_path).await.unwrap();
        s.write_all(&[0, 0, 0, 0]).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest)).await;
        // The channel still serves others.
        let mut c = hello(&f.channel_path).await;
        assert!(matches!(
            c.call(&ToBridge::Health).await,
            FromBridge::Health { .. }
        ));
    }

    #[tokio::test]
    async fn mcp_requests_without_an_mcp_client_are_unsupported() {
        let f = start(&[]).await;
        let mut c = hello(&f.channel_path).await;
        let req = ToBridge::McpListTools(protocol::mcp::McpListTools {
            session_id: "sesn_1".into(),
            server: protocol::mcp::McpServer {
                name: "s".into(),
                url: "https://mcp.example.com/mcp".into(),
            },
            credentials: vec![],
        });
        match c.call(&req).await {
            FromBridge::Error { code, message } => {
                assert_eq!(code, BridgeErrorCode::UnsupportedRequest);
                assert!(message.contains("MCP"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_session_end_cuts_its_sandboxes_egress_and_survives_a_reopen() {
        let f = start_with(&[], true).await;
        let mut c = hello(&f.channel_path).await;
        let opened = |a: FromBridge| match a {
            FromBridge::EgressOpened { socket_path, .. } => socket_path,
            other => panic!("not opened: {other:?}"),
        };
        let mine = opened(c.call(&open("sbx_end", &["allowed.example.com"])).await);
        let mut other = open("sbx_other", &["allowed.example.com"]);
        if let ToBridge::OpenEgress { session_id, .. } = &mut other {
            *session_id = "sesn_2".into();
        }
        let theirs = opened(c.call(&other).await);
        // A tunnel open before the end.
        let mut held = UnixStream::connect(&mine).await.unwrap();
        held.write_all(
            b"CONNECT allowed.example.com:443 HTTP/1.1\r\nHost: allowed.example.com:443\r\n\r\n",
        )
        .await
        .unwrap();
        let mut first = [0u8; 12];
        held.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        // Open and idle (the rest of the answer read, then nothing more).
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(Duration::from_millis(300), held.read(&mut buf)).await {
                Err(_) => break,
                Ok(Ok(0)) | Ok(Err(_)) => panic!("the tunnel closed before the session ended"),
                Ok(Ok(_)) => {}
            }
        }

        let ended = c
            .call(&ToBridge::ForgetSessionToken(
                protocol::relay::ForgetSessionToken {
                    session_id: "sesn_1".into(),
                    resource_id: None,
                },
            ))
            .await;
        assert!(matches!(ended, FromBridge::Relayed { .. }), "{ended:?}");
        // The held tunnel is cut, the socket stays (the agent sees no lost
        // bridge) and refuses every host; the other session is untouched.
        let mut rest = Vec::new();
        let cut = tokio::time::timeout(Duration::from_secs(2), held.read_to_end(&mut rest)).await;
        assert!(cut.is_ok(), "the open tunnel was not cut");
        let (status, _) = connect_through(&mine, "allowed.example.com").await;
        assert!(status.starts_with("HTTP/1.1 403"), "{status}");
        let (status, _) = connect_through(&theirs, "allowed.example.com").await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        // The agent re-sending the full policy (after a bridge restart) gets no egress either.
        let again = opened(c.call(&open("sbx_end", &["allowed.example.com"])).await);
        let (status, _) = connect_through(&again, "allowed.example.com").await;
        assert!(status.starts_with("HTTP/1.1 403"), "{status}");
        drop(f);
    }

    #[tokio::test]
    async fn scrub_replaces_relayed_credentials_and_session_tokens() {
        use protocol::relay::{PutCredential, PutSessionToken, WireSecret};
        let f = start_with(&[], true).await;
        let mut c = hello(&f.channel_path).await;
        let canary = "canary-static-7f3a9c";
        let token = "ghs_canarySessionToken0123456789";
        let a = c
            .call(&ToBridge::PutCredential(PutCredential {
                vault_id: "vlt_1".into(),
                credential_id: "vcrd_static".into(),
                fields: [("token".to_owned(), WireSecret::new(canary))].into(),
            }))
            .await;
        assert_eq!(a, FromBridge::Relayed { held: true });
        let a = c
            .call(&ToBridge::PutSessionToken(PutSessionToken {
                session_id: "sesn_1".into(),
                resource_id: "sesrsc_repo".into(),
                url: "https://git.example.com/a/b.git".into(),
                token: WireSecret::new(token),
            }))
            .await;
        assert_eq!(a, FromBridge::Relayed { held: true });
        let value = serde_json::json!({
            "command": format!("echo {canary}; git push https://x:{token}@git.example.com/a/b.git"),
            "content": [{"type": "text", "text": format!("{canary}\n")}],
            "short": "hi",
        });
        let a = c
            .call(&ToBridge::Scrub {
                id: 5,
                value: value.clone(),
            })
            .await;
        let FromBridge::Scrubbed {
            id,
            value: scrubbed,
            redactions,
        } = a
        else {
            panic!("{a:?}")
        };
        assert_eq!(id, 5);
        assert_eq!(redactions, 3);
        let text = scrubbed.to_string();
        assert!(!text.contains(canary) && !text.contains(token), "{text}");
        assert_eq!(text.matches("[redacted:vcrd_static]").count(), 2, "{text}");
        assert_eq!(text.matches("[redacted:sesrsc_repo]").count(), 1, "{text}");
        assert_eq!(scrubbed["short"], "hi");
        // An answer that would not fit one frame is refused, not cut.
        let big = serde_json::json!(canary.repeat(MAX_FRAME_BYTES * 19 / 20 / canary.len()));
        let a = c.call(&ToBridge::Scrub { id: 6, value: big }).await;
        assert!(
            matches!(
                &a,
                FromBridge::Error {
                    code: BridgeErrorCode::TooLarge,
                    ..
                }
            ),
            "{a:?}"
        );
        drop(f);
    }

    #[test]
    fn peer_uid_check() {
        assert!(check_peer_uid(1000, &[0, 1000]).is_ok());
        let e = check_peer_uid(65534, &[0, 1000]).unwrap_err();
        assert!(matches!(e, ChannelError::PeerNotAllowed { uid: 65534, .. }));
        assert!(
            e.to_string().contains("peer uid 65534 is not allowed"),
            "{e}"
        );
    }

    /// A real client running as another uid (a `setpriv` child) is refused
    /// by the SO_PEERCRED check even though the socket's mode lets it connect.
    #[tokio::test]
    async fn a_peer_with_another_uid_is_refused() {
        if own_uid() != 0 || !Path::new("/usr/bin/setpriv").exists() {
            eprintln!("skipped: needs root and setpriv to run a client as another uid");
            return;
        }
        let Some(python) = ["/usr/bin/python3", "/usr/local/bin/python3"]
            .into_iter()
            .find(|p| Path::new(p).exists())
        else {
            eprintln!("skipped: no system python3 for the client");
            return;
        };
        // uid 4242 is allowed (so the mode is 0666); the client runs as 65534.
        let f = start(&[4242]).await;
        assert_eq!(
            std::fs::metadata(&f.channel_path).unwrap().mode() & 0o777,
            0o666
        );
        std::fs::set_permissions(
            f.channel_path.parent().unwrap(),
            std::fs::Permissions::from_mode(0o711),
        )
        .unwrap();
        let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
# The bridge answers before reading anything: no need to send.
out = b""
while True:
    b = s.recv(65536)
    if not b: break
    out += b
sys.stdout.buffer.write(out)
"#;
        let out = tokio::process::Command::new("/usr/bin/setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(python)
            .arg("-c")
            .arg(script)
            .arg(&f.channel_path)
            .env_clear()
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut buf = BytesMut::from(&out.stdout[..]);
        let frame = FrameCodec::new(MAX_FRAME_BYTES)
            .decode(&mut buf)
            .unwrap()
            .expect("one frame");
        match FromBridge::decode(&frame).unwrap() {
            FromBridge::Error { code, message } => {
                assert_eq!(code, BridgeErrorCode::PeerNotAllowed);
                assert!(message.contains("peer uid 65534"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(buf.is_empty(), "nothing after the refusal");
    }
}
