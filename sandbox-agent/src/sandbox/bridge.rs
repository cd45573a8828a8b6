//! Client of the local vault-bridge's agent channel (`protocol::bridge`
//! frames over a Unix socket): `open_egress` when a sandbox is bound to a
//! session, `close_egress` when it goes away; the MCP requests
//! (`mcp_list_tools`, `mcp_call_tool`, `mcp_validate`) of [`crate::mcp`].
//!
//! Each call opens its own connection, sends `hello`, then the request, and
//! reads the one answer; the whole exchange runs under the configured
//! deadline, so a bridge that is down or stuck fails the call with a typed
//! error naming the socket instead of hanging (fail closed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;
use protocol::bridge::{
    check_sandbox_id, BridgeErrorCode, EgressRepository, FromBridge, ToBridge,
    BRIDGE_VERSION_EGRESS_HOSTS,
};
use protocol::frame::{Frame, FrameCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::config::BridgeSettings;

/// Where the sandbox's egress directory is mounted inside the container.
pub const SANDBOX_EGRESS_DIR: &str = "/run/airlock";
/// The egress socket as the executor sees it.
pub const SANDBOX_EGRESS_SOCKET: &str = "/run/airlock/egress.sock";
/// Where the egress CA certificate is mounted inside the container.
pub const SANDBOX_CA_CERT: &str = "/etc/airlock/egress-ca.pem";
/// The proxy the executor's forwarder listens on inside the sandbox.
pub const SANDBOX_PROXY_URL: &str = "http://127.0.0.1:3128";

/// The environment every tool call of a bridged sandbox gets: the proxy
/// (the executor's forwarder) and the egress CA for TLS clients and git.
pub fn sandbox_env() -> [(String, String); 4] {
    [
        ("HTTPS_PROXY".into(), SANDBOX_PROXY_URL.into()),
        ("https_proxy".into(), SANDBOX_PROXY_URL.into()),
        ("SSL_CERT_FILE".into(), SANDBOX_CA_CERT.into()),
        ("GIT_SSL_CAINFO".into(), SANDBOX_CA_CERT.into()),
    ]
}

/// An agent-channel call that failed. Never carries a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// The socket could not be reached, read or written.
    #[error("vault-bridge agent channel {socket}: {operation} failed: {source}")]
    Io {
        /// The agent channel socket.
        socket: PathBuf,
        /// What the client was doing.
        operation: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The exchange did not finish within the deadline.
    #[error("vault-bridge agent channel {socket}: no answer within {timeout:?}")]
    Timeout {
        /// The agent channel socket.
        socket: PathBuf,
        /// The deadline.
        timeout: Duration,
    },
    /// The bridge refused the request.
    #[error("vault-bridge agent channel {socket}: refused ({code}): {message}")]
    Refused {
        /// The agent channel socket.
        socket: PathBuf,
        /// The bridge's error code.
        code: BridgeErrorCode,
        /// The bridge's sentence.
        message: String,
    },
    /// The bridge answered something this client did not expect.
    #[error("vault-bridge agent channel {socket}: protocol error: {message}")]
    Protocol {
        /// The agent channel socket.
        socket: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The sandbox id cannot name a socket directory.
    #[error(transparent)]
    InvalidSandboxId(#[from] protocol::bridge::InvalidSandboxId),
    /// The agent has `policy.egress_hosts` but the bridge is too old to
    /// enforce it; the request was not sent (fail closed).
    #[error(
        "vault-bridge agent channel {socket}: the bridge speaks agent channel version {version}, which does not enforce policy.egress_hosts (version {needed} does); egress not opened: upgrade the vault-bridge"
    )]
    PolicyUnsupported {
        /// The agent channel socket.
        socket: PathBuf,
        /// The version the bridge accepted.
        version: u32,
        /// The first version that enforces it.
        needed: u32,
    },
}

/// A failed agent-channel call and how far it got.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct CallFailure {
    /// What failed.
    pub error: BridgeError,
    /// Whether the request had started to go out: `false` means the bridge
    /// never saw it (not reachable, hello refused); `true` means it may
    /// have acted on it (a timeout or a lost connection after the send).
    pub sent: bool,
}

/// The agent's side of the agent channel.
#[derive(Debug, Clone)]
pub struct BridgeClient {
    socket: PathBuf,
    timeout: Duration,
    codec: FrameCodec,
}

/// Repositories named by a provision request's `resources`: every object
/// with an `https://` `url` whose `type` mentions `repository`. Other
/// resources (and anything that is not an object) are ignored.
pub fn repositories_from_resources(resources: &[serde_json::Value]) -> Vec<EgressRepository> {
    resources
        .iter()
        .filter(|r| {
            r.get("type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.contains("repository"))
        })
        .filter_map(|r| {
            let url = r.get("url").and_then(|u| u.as_str())?;
            let id = r.get("id").and_then(|i| i.as_str()).map(str::to_owned);
            Some((url, id))
        })
        .filter(|(u, _)| u.starts_with("https://"))
        .map(|(u, id)| EgressRepository {
            url: u.to_owned(),
            resource_id: id,
        })
        .collect()
}

impl BridgeClient {
    /// A client of the channel described by `[bridge]`.
    pub fn new(settings: &BridgeSettings) -> Self {
        Self {
            socket: settings.socket_path.clone(),
            timeout: settings.call_timeout,
            codec: FrameCodec::default(),
        }
    }

    /// The agent channel socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The `open_egress` request for a sandbox (kept to re-send it after a
    /// bridge restart). `egress_hosts` is the agent's `policy.egress_hosts`
    /// (`None`: none configured); with it, the request only goes to a bridge
    /// that enforces it ([`BRIDGE_VERSION_EGRESS_HOSTS`]).
    pub fn open_egress_request(
        sandbox_id: &str,
        session_id: &str,
        allowed_hosts: Vec<String>,
        repositories: Vec<EgressRepository>,
        credentials: Vec<protocol::relay::EgressCredential>,
        egress_hosts: Option<Vec<String>>,
    ) -> Result<ToBridge, BridgeError> {
        check_sandbox_id(sandbox_id)?;
        Ok(ToBridge::OpenEgress {
            sandbox_id: sandbox_id.to_owned(),
            session_id: session_id.to_owned(),
            allowed_hosts,
            repositories,
            credentials,
            egress_hosts,
        })
    }

    /// Start the sandbox's egress listener; returns the socket path the
    /// bridge bound (on the host) and the placeholders of the sandbox's
    /// `environment_variable` credentials (`secret_name` -> placeholder).
    pub async fn open_egress(
        &self,
        request: &ToBridge,
    ) -> Result<(String, BTreeMap<String, String>), BridgeError> {
        match self.call(request).await? {
            FromBridge::EgressOpened { socket_path, env } => Ok((socket_path, env)),
            other => Err(self.unexpected("open_egress", &other)),
        }
    }

    /// Stop the sandbox's egress listener; returns whether there was one.
    pub async fn close_egress(&self, sandbox_id: &str) -> Result<bool, BridgeError> {
        check_sandbox_id(sandbox_id)?;
        let request = ToBridge::CloseEgress {
            sandbox_id: sandbox_id.to_owned(),
        };
        match self.call(&request).await? {
            FromBridge::EgressClosed { existed } => Ok(existed),
            other => Err(self.unexpected("close_egress", &other)),
        }
    }

    /// Relay a vault credential's secret to the bridge; whether it holds it.
    pub async fn put_credential(
        &self,
        put: protocol::relay::PutCredential,
    ) -> Result<bool, BridgeError> {
        self.relay("put_credential", ToBridge::PutCredential(put))
            .await
    }

    /// Tell the bridge to stop using a vault credential.
    pub async fn forget_credential(
        &self,
        forget: protocol::relay::ForgetCredential,
    ) -> Result<bool, BridgeError> {
        self.relay("forget_credential", ToBridge::ForgetCredential(forget))
            .await
    }

    /// Relay a session resource's Git token to the bridge.
    pub async fn put_session_token(
        &self,
        put: protocol::relay::PutSessionToken,
    ) -> Result<bool, BridgeError> {
        self.relay("put_session_token", ToBridge::PutSessionToken(put))
            .await
    }

    /// Tell the bridge to drop a session's Git token(s).
    pub async fn forget_session_token(
        &self,
        forget: protocol::relay::ForgetSessionToken,
    ) -> Result<bool, BridgeError> {
        self.relay("forget_session_token", ToBridge::ForgetSessionToken(forget))
            .await
    }

    async fn relay(&self, name: &str, request: ToBridge) -> Result<bool, BridgeError> {
        match self.call(&request).await? {
            FromBridge::Relayed { held } => Ok(held),
            other => Err(self.unexpected(name, &other)),
        }
    }

    /// Whether the bridge answers `health` within the deadline.
    pub async fn health(&self) -> Result<(), BridgeError> {
        match self.call(&ToBridge::Health).await? {
            FromBridge::Health { .. } => Ok(()),
            other => Err(self.unexpected("health", &other)),
        }
    }

    /// List an MCP server's tools through the bridge, under `timeout`.
    pub async fn mcp_list_tools(
        &self,
        request: protocol::mcp::McpListTools,
        timeout: Duration,
    ) -> Result<protocol::mcp::McpReply, CallFailure> {
        match self
            .call_within(&ToBridge::McpListTools(request), timeout)
            .await?
        {
            FromBridge::Mcp(reply) => Ok(reply),
            other => Err(CallFailure {
                error: self.unexpected("mcp_list_tools", &other),
                sent: true,
            }),
        }
    }

    /// Call an MCP tool through the bridge, under `timeout`. A failure with
    /// `sent` means the bridge may have called the server.
    pub async fn mcp_call_tool(
        &self,
        request: protocol::mcp::McpCallTool,
        timeout: Duration,
    ) -> Result<protocol::mcp::McpReply, CallFailure> {
        match self
            .call_within(&ToBridge::McpCallTool(request), timeout)
            .await?
        {
            FromBridge::Mcp(reply) => Ok(reply),
            other => Err(CallFailure {
                error: self.unexpected("mcp_call_tool", &other),
                sent: true,
            }),
        }
    }

    /// Probe an MCP credential through the bridge, under `timeout`.
    pub async fn mcp_validate(
        &self,
        request: protocol::mcp::McpValidate,
        timeout: Duration,
    ) -> Result<protocol::mcp::McpValidation, CallFailure> {
        match self
            .call_within(&ToBridge::McpValidate(request), timeout)
            .await?
        {
            FromBridge::McpValidated(v) => Ok(v),
            other => Err(CallFailure {
                error: self.unexpected("mcp_validate", &other),
                sent: true,
            }),
        }
    }

    /// Ask the bridge to replace every secret value it knows in the strings
    /// of `value` (for the audit record); returns the scrubbed value and how
    /// many occurrences were replaced. A value whose request or answer would
    /// not fit one frame is refused ([`BridgeErrorCode::TooLarge`]) before
    /// or by the bridge.
    pub async fn scrub(
        &self,
        value: serde_json::Value,
    ) -> Result<(serde_json::Value, u32), BridgeError> {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request = ToBridge::Scrub { id, value };
        let size = serde_json::to_vec(&request).map_or(usize::MAX, |v| v.len());
        if size >= self.codec.max_frame_bytes().saturating_sub(64) {
            return Err(BridgeError::Refused {
                socket: self.socket.clone(),
                code: BridgeErrorCode::TooLarge,
                message: format!("the value to scrub is {size} bytes; it does not fit one frame"),
            });
        }
        match self.call(&request).await? {
            FromBridge::Scrubbed {
                id: answered,
                value,
                redactions,
            } if answered == id => Ok((value, redactions)),
            other => Err(self.unexpected("scrub", &other)),
        }
    }

    fn unexpected(&self, request: &str, answer: &FromBridge) -> BridgeError {
        let kind = serde_json::to_value(answer)
            .ok()
            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        BridgeError::Protocol {
            socket: self.socket.clone(),
            message: format!("unexpected answer `{kind}` to {request}"),
        }
    }

    /// Connect, hello, one request, one answer: all under the deadline.
    pub async fn call(&self, request: &ToBridge) -> Result<FromBridge, BridgeError> {
        self.call_within(request, self.timeout)
            .await
            .map_err(|f| f.error)
    }

    /// [`Self::call`] under `timeout`; a failure says whether the request
    /// had started to go out (so the bridge may have acted on it).
    async fn call_within(
        &self,
        request: &ToBridge,
        timeout: Duration,
    ) -> Result<FromBridge, CallFailure> {
        let mut sent = false;
        let result = tokio::time::timeout(timeout, self.exchange(request, &mut sent)).await;
        match result {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(CallFailure { error, sent }),
            Err(_) => Err(CallFailure {
                error: BridgeError::Timeout {
                    socket: self.socket.clone(),
                    timeout,
                },
                sent,
            }),
        }
    }

    async fn exchange(
        &self,
        request: &ToBridge,
        sent: &mut bool,
    ) -> Result<FromBridge, BridgeError> {
        let io = |operation: &'static str| {
            let socket = self.socket.clone();
            move |source| BridgeError::Io {
                socket,
                operation,
                source,
            }
        };
        let mut stream = UnixStream::connect(&self.socket)
            .await
            .map_err(io("connect"))?;
        let mut buf = BytesMut::new();
        self.send(&mut stream, &ToBridge::hello(env!("CARGO_PKG_VERSION")))
            .await?;
        match self.receive(&mut stream, &mut buf).await? {
            FromBridge::HelloAccepted { version, .. } => {
                // A bridge that would ignore the agent's egress policy never
                // gets a sandbox's egress.
                if let ToBridge::OpenEgress {
                    egress_hosts: Some(_),
                    ..
                } = request
                {
                    if version < BRIDGE_VERSION_EGRESS_HOSTS {
                        return Err(BridgeError::PolicyUnsupported {
                            socket: self.socket.clone(),
                            version,
                            needed: BRIDGE_VERSION_EGRESS_HOSTS,
                        });
                    }
                }
            }
            other => return Err(self.refused_or_unexpected("hello", other)),
        }
        *sent = true;
        self.send(&mut stream, request).await?;
        let answer = self.receive(&mut stream, &mut buf).await?;
        match answer {
            FromBridge::Error { .. } => Err(self.refused_or_unexpected("request", answer)),
            other => Ok(other),
        }
    }

    fn refused_or_unexpected(&self, request: &str, answer: FromBridge) -> BridgeError {
        match answer {
            FromBridge::Error { code, message } => BridgeError::Refused {
                socket: self.socket.clone(),
                code,
                message,
            },
            other => self.unexpected(request, &other),
        }
    }

    async fn send(&self, stream: &mut UnixStream, message: &ToBridge) -> Result<(), BridgeError> {
        let bytes = Frame::control(message)
            .and_then(|f| self.codec.encode_to_bytes(&f))
            .map_err(|e| BridgeError::Protocol {
                socket: self.socket.clone(),
                message: format!("cannot encode request: {e}"),
            })?;
        stream
            .write_all(&bytes)
            .await
            .map_err(|source| BridgeError::Io {
                socket: self.socket.clone(),
                operation: "write",
                source,
            })
    }

    async fn receive(
        &self,
        stream: &mut UnixStream,
        buf: &mut BytesMut,
    ) -> Result<FromBridge, BridgeError> {
        let protocol = |message: String| BridgeError::Protocol {
            socket: self.socket.clone(),
            message,
        };
        loop {
            if let Some(frame) = self
                .codec
                .decode(buf)
                .map_err(|e| protocol(format!("bad frame: {e}")))?
            {
                return FromBridge::decode(&frame)
                    .map_err(|e| protocol(format!("bad answer: {e}")));
            }
            let n = stream
                .read_buf(buf)
                .await
                .map_err(|source| BridgeError::Io {
                    socket: self.socket.clone(),
                    operation: "read",
                    source,
                })?;
            if n == 0 {
                return Err(protocol("connection closed before an answer".into()));
            }
        }
    }
}

/// A value as the audit record may keep it after the bridge's scrub pass.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditScrubbed {
    /// The scrubbed value, or (when the bridge could not scrub it) an
    /// `{"omitted": why, "sha256": …, "bytes": …}` object in its place.
    pub value: serde_json::Value,
    /// How many secret values the bridge replaced.
    pub redactions: u32,
    /// Whether `value` is the scrubbed value (false: it was omitted).
    pub complete: bool,
}

/// The bridge's scrub pass over `value` for the audit record (the agent's
/// own token patterns are applied by the audit writer). Without a bridge
/// the value is kept as is: there are no bridge secrets to find. When a
/// bridge is configured but cannot scrub it (down, stuck, too large), the
/// value is not kept: its digest and size stand in for it, so a secret the
/// bridge would have found never reaches the audit files.
pub async fn scrub_for_audit(
    bridge: Option<&BridgeClient>,
    value: &serde_json::Value,
) -> AuditScrubbed {
    let Some(bridge) = bridge else {
        return AuditScrubbed {
            value: value.clone(),
            redactions: 0,
            complete: true,
        };
    };
    match bridge.scrub(value.clone()).await {
        Ok((value, redactions)) => AuditScrubbed {
            value,
            redactions,
            complete: true,
        },
        Err(error) => {
            use sha2::Digest as _;
            let bytes = serde_json::to_vec(value).unwrap_or_default();
            tracing::warn!(%error, bytes = bytes.len(), "audit: the vault-bridge could not scrub a value; its digest is kept instead");
            AuditScrubbed {
                value: serde_json::json!({
                    "omitted": format!("the vault-bridge could not scrub it: {error}"),
                    "sha256": hex::encode(sha2::Sha256::digest(&bytes)),
                    "bytes": bytes.len(),
                }),
                redactions: 0,
                complete: false,
            }
        }
    }
}

/// The `open_egress` requests of live sandboxes and the sockets the bridge
/// bound for them, so that a restarted bridge gets them back.
#[derive(Debug, Default)]
pub struct OpenEgresses(std::sync::Mutex<std::collections::HashMap<String, (ToBridge, PathBuf)>>);

impl OpenEgresses {
    fn map(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (ToBridge, PathBuf)>> {
        // Single map operations: a poisoned lock still holds a consistent map.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remember a sandbox's request and the socket the bridge answered.
    pub fn insert(&self, sandbox_id: &str, request: ToBridge, socket: PathBuf) {
        self.map().insert(sandbox_id.to_owned(), (request, socket));
    }

    /// Forget a sandbox; whether it was there.
    pub fn remove(&self, sandbox_id: &str) -> bool {
        self.map().remove(sandbox_id).is_some()
    }

    /// The sandboxes with an open egress.
    pub fn sandbox_ids(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    fn snapshot(&self) -> Vec<(String, ToBridge, PathBuf)> {
        self.map()
            .iter()
            .map(|(id, (r, p))| (id.clone(), r.clone(), p.clone()))
            .collect()
    }
}

/// How often [`keep_egress_open`] checks the sandboxes' egress sockets.
pub const EGRESS_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Until `cancel`: every [`EGRESS_CHECK_INTERVAL`], connect to each live
/// sandbox's egress socket; one that no longer accepts (the bridge was
/// killed or restarted and lost its listeners) gets its `open_egress`
/// re-sent, so a restarted bridge serves the sandbox again within about a
/// second of being back. While the bridge is down the re-sends fail fast
/// (connect refused) and are retried on the next tick.
pub async fn keep_egress_open(
    settings: BridgeSettings,
    book: std::sync::Arc<OpenEgresses>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let client = BridgeClient::new(&settings);
    let mut tick = tokio::time::interval(EGRESS_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut down_logged = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (sandbox_id, request, socket) in book.snapshot() {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                continue;
            }
            match client.open_egress(&request).await {
                Ok((path, _env)) => {
                    down_logged = false;
                    // Closed meanwhile: do not resurrect it.
                    if book.map().contains_key(&sandbox_id) {
                        book.insert(&sandbox_id, request, PathBuf::from(&path));
                        tracing::info!(%sandbox_id, socket = %path, "sandbox egress reopened on the vault-bridge");
                    } else {
                        let _ = client.close_egress(&sandbox_id).await;
                    }
                }
                Err(error) => {
                    if !down_logged {
                        tracing::warn!(%sandbox_id, %error, "sandbox egress is down; retrying while the vault-bridge is unreachable");
                        down_logged = true;
                    }
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    fn settings(dir: &Path, timeout: Duration) -> BridgeSettings {
        BridgeSettings {
            socket_path: dir.join("agent.sock"),
            egress_dir: dir.join("egress"),
            ca_cert_file: dir.join("ca.pem"),
            call_timeout: timeout,
        }
    }

    fn req(sandbox_id: &str, hosts: Vec<String>, repos: Vec<EgressRepository>) -> ToBridge {
        BridgeClient::open_egress_request(sandbox_id, "sesn_1", hosts, repos, Vec::new(), None)
            .unwrap()
    }

    async fn read_request(stream: &mut UnixStream, buf: &mut BytesMut) -> Option<ToBridge> {
        let codec = FrameCodec::default();
        loop {
            if let Some(f) = codec.decode(buf).unwrap() {
                return Some(ToBridge::decode(&f).unwrap());
            }
            if stream.read_buf(buf).await.unwrap() == 0 {
                return None;
            }
        }
    }

    async fn answer(stream: &mut UnixStream, m: &FromBridge) {
        let codec = FrameCodec::default();
        let b = codec.encode_to_bytes(&Frame::control(m).unwrap()).unwrap();
        stream.write_all(&b).await.unwrap();
    }

    /// A peer that accepts one connection, checks the hello, records the
    /// request and answers it with `reply`.
    fn peer(listener: UnixListener, reply: FromBridge) -> tokio::task::JoinHandle<Vec<ToBridge>> {
        peer_at(listener, 1, reply)
    }

    /// [`peer`] accepting the hello at `version`; records `None`-terminated:
    /// when the client hangs up after the hello, only the hello is seen.
    fn peer_at(
        listener: UnixListener,
        version: u32,
        reply: FromBridge,
    ) -> tokio::task::JoinHandle<Vec<ToBridge>> {
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = BytesMut::new();
            let mut seen = vec![];
            let hello = read_request(&mut s, &mut buf).await.unwrap();
            assert!(matches!(hello, ToBridge::Hello { .. }), "{hello:?}");
            answer(
                &mut s,
                &FromBridge::HelloAccepted {
                    version,
                    software_version: "test".into(),
                },
            )
            .await;
            seen.push(hello);
            let Some(req) = read_request(&mut s, &mut buf).await else {
                return seen;
            };
            seen.push(req);
            answer(&mut s, &reply).await;
            seen
        })
    }

    #[tokio::test]
    async fn the_egress_policy_goes_only_to_a_bridge_that_enforces_it() {
        let opened = FromBridge::EgressOpened {
            socket_path: "/x/sbx_1/egress.sock".into(),
            env: Default::default(),
        };
        let with_policy = BridgeClient::open_egress_request(
            "sbx_1",
            "sesn_1",
            vec!["a.example.com".into(), "b.example.com".into()],
            vec![],
            vec![],
            Some(vec!["a.example.com".into()]),
        )
        .unwrap();
        // A version-1 bridge would ignore the field: refused before sending.
        let dir = tempfile::tempdir().unwrap();
        let st = settings(dir.path(), Duration::from_secs(5));
        let old = peer_at(
            UnixListener::bind(&st.socket_path).unwrap(),
            1,
            opened.clone(),
        );
        let e = BridgeClient::new(&st)
            .open_egress(&with_policy)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                BridgeError::PolicyUnsupported {
                    version: 1,
                    needed: 2,
                    ..
                }
            ),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("policy.egress_hosts") && text.contains("upgrade the vault-bridge"),
            "{text}"
        );
        assert_eq!(old.await.unwrap().len(), 1, "only the hello reached it");
        // Without a policy a version-1 bridge is fine (nothing to enforce).
        let dir = tempfile::tempdir().unwrap();
        let st = settings(dir.path(), Duration::from_secs(5));
        let old = peer_at(
            UnixListener::bind(&st.socket_path).unwrap(),
            1,
            opened.clone(),
        );
        BridgeClient::new(&st)
            .open_egress(&req("sbx_1", vec!["a.example.com".into()], vec![]))
            .await
            .unwrap();
        let seen = old.await.unwrap();
        assert!(
            matches!(
                &seen[1],
                ToBridge::OpenEgress {
                    egress_hosts: None,
                    ..
                }
            ),
            "{seen:?}"
        );
        // A version-2 bridge gets the policy.
        let dir = tempfile::tempdir().unwrap();
        let st = settings(dir.path(), Duration::from_secs(5));
        let new = peer_at(UnixListener::bind(&st.socket_path).unwrap(), 2, opened);
        BridgeClient::new(&st)
            .open_egress(&with_policy)
            .await
            .unwrap();
        let seen = new.await.unwrap();
        assert_eq!(seen[1], with_policy);
    }

    #[tokio::test]
    async fn open_egress_sends_hello_then_the_request_and_returns_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let st = settings(dir.path(), Duration::from_secs(5));
        let listener = UnixListener::bind(&st.socket_path).unwrap();
        let peer = peer(
            listener,
            FromBridge::EgressOpened {
                socket_path: "/x/sbx_1/egress.sock".into(),
                env: Default::default(),
            },
        );
        let client = BridgeClient::new(&st);
        let repos = vec![EgressRepository {
            url: "https://git.example.com/a/b.git".into(),
            resource_id: None,
        }];
        let (path, _env) = client
            .open_egress(&req("sbx_1", vec!["h.example.com".into()], repos.clone()))
            .await
            .unwrap();
        assert_eq!(path, "/x/sbx_1/egress.sock");
        let seen = peer.await.unwrap();
        assert_eq!(
            seen[1],
            ToBridge::OpenEgress {
                sandbox_id: "sbx_1".into(),
                session_id: "sesn_1".into(),
                allowed_hosts: vec!["h.example.com".into()],
                repositories: repos,
                credentials: vec![],
                egress_hosts: None,
            }
        );
    }

    #[tokio::test]
    async fn close_egress_returns_whether_a_listener_existed() {
        let dir = tempfile::tempdir().unwrap();
        let st = settings(dir.path(), Duration::from_secs(5));
        let listener = UnixListener::bind(&st.socket_path).unwrap();
        let peer = peer(listener, FromBridge::EgressClosed { existed: true });
        assert!(BridgeClient::new(&st).close_egress("sbx_2").await.unwrap());
        let seen = peer.await.unwrap();
        assert_eq!(
            seen[1],
            ToBridge::CloseEgress {
                sandbox_id: "sbx_2".into()
            }
        );
    }

    #[tokio::test]
    async fn a_refusal_is_typed_and_names_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let st = settings(dir.path(), Duration::from_secs(5));
        let listener = UnixListener::bind(&st.socket_path).unwrap();
        let _peer = peer(
            listener,
            FromBridge::error(BridgeErrorCode::InvalidHost, "bad host `x y`"),
        );
        let e = BridgeClient::new(&st)
            .open_egress(&req("sbx_1", vec!["x y".into()], vec![]))
            .await
            .unwrap_err();
        assert!(
            matches!(
                &e,
                BridgeError::Refused {
                    code: BridgeErrorCode::InvalidHost,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("agent.sock"), "{e}");
    }

    #[tokio::test]
    async fn a_bridge_that_is_down_fails_at_once_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let st = settings(dir.path(), Duration::from_secs(5));
        let e = BridgeClient::new(&st)
            .open_egress(&req("sbx_1", vec![], vec![]))
            .await
            .unwrap_err();
        assert!(
            matches!(
                &e,
                BridgeError::Io {
                    operation: "connect",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains(&st.socket_path.display().to_string()),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_bridge_that_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let st = settings(dir.path(), Duration::from_millis(300));
        let listener = UnixListener::bind(&st.socket_path).unwrap();
        // Accepts and holds the connection without ever answering.
        let holder = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let started = std::time::Instant::now();
        let e = BridgeClient::new(&st)
            .close_egress("sbx_1")
            .await
            .unwrap_err();
        assert!(matches!(&e, BridgeError::Timeout { .. }), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        holder.abort();
    }

    #[tokio::test]
    async fn scrub_sends_the_value_and_returns_the_bridge_answer() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path(), Duration::from_secs(2));
        let listener = UnixListener::bind(&settings.socket_path).unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = BytesMut::new();
            let hello = read_request(&mut stream, &mut buf).await;
            assert!(matches!(hello, Some(ToBridge::Hello { .. })));
            answer(
                &mut stream,
                &FromBridge::HelloAccepted {
                    version: 1,
                    software_version: "t".into(),
                },
            )
            .await;
            let Some(ToBridge::Scrub { id, value }) = read_request(&mut stream, &mut buf).await
            else {
                panic!("no scrub request")
            };
            assert_eq!(value, serde_json::json!({"command": "echo s3cret-canary"}));
            answer(
                &mut stream,
                &FromBridge::Scrubbed {
                    id,
                    value: serde_json::json!({"command": "echo [redacted:vcrd_1]"}),
                    redactions: 1,
                },
            )
            .await;
        });
        let client = BridgeClient::new(&settings);
        let (value, n) = client
            .scrub(serde_json::json!({"command": "echo s3cret-canary"}))
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(value["command"], "echo [redacted:vcrd_1]");
        task.await.unwrap();
        // Too large to fit a frame: refused before connecting.
        let big = serde_json::json!("x".repeat(protocol::frame::DEFAULT_MAX_FRAME_BYTES));
        let e = client.scrub(big).await.unwrap_err();
        assert!(
            matches!(
                e,
                BridgeError::Refused {
                    code: BridgeErrorCode::TooLarge,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_unsafe_sandbox_id_is_refused_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let st = settings(dir.path(), Duration::from_secs(5));
        let e = BridgeClient::new(&st)
            .close_egress("../etc")
            .await
            .unwrap_err();
        assert!(matches!(e, BridgeError::InvalidSandboxId(_)), "{e:?}");
    }

    #[test]
    fn repositories_come_from_repository_resources_with_https_urls() {
        let resources = vec![
            serde_json::json!({"type": "github_repository", "url": "https://github.com/a/b"}),
            serde_json::json!({"type": "git_repository", "url": "http://insecure/a"}),
            serde_json::json!({"type": "mcp_server", "url": "https://mcp.example.com"}),
            serde_json::json!("not an object"),
        ];
        assert_eq!(
            repositories_from_resources(&resources),
            vec![EgressRepository {
                url: "https://github.com/a/b".into(),
                resource_id: None,
            }]
        );
    }
}
