//! Errors of the tunnel, one enum per boundary: a stream ([`StreamError`]), a
//! call as the caller sees it ([`CallFailure`]), dialing ([`ConnectError`]) and
//! listening ([`ListenError`]). [`CloseReason`] is the one place that maps a
//! connection close to what the peer sees (QUIC application close code and reason).

use std::time::Duration;

use protocol::{CallError, FrameError, RejectCode};

use crate::proxy::ProxyError;
use crate::select::Transport;

/// A stream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The peer sent bytes that are not a valid frame or message (peer misbehaved).
    #[error("bad frame from peer: {0}")]
    Frame(FrameError),
    /// The peer reset or stopped the stream with this code.
    #[error("stream reset by peer (code {0})")]
    Reset(u64),
    /// The whole connection is gone; every stream on it fails like this.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The stream was already finished or reset locally.
    #[error("stream closed")]
    Closed,
    /// The stream ended where a message was expected.
    #[error("stream ended before the expected message")]
    UnexpectedEnd,
    /// The h2 peer answered a stream with a non-success status.
    #[error("stream refused by peer with status {0}")]
    Refused(String),
    /// A transport-level protocol error on this stream.
    #[error("stream protocol error: {0}")]
    Protocol(String),
    /// No frame arrived within the allowed time.
    #[error("timed out after {0:?} waiting for the peer")]
    Timeout(Duration),
}

impl StreamError {
    pub(crate) fn from_quic_write(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::Stopped(code) => StreamError::Reset(code.into_inner()),
            quinn::WriteError::ConnectionLost(c) => StreamError::ConnectionLost(c.to_string()),
            quinn::WriteError::ClosedStream => StreamError::Closed,
            other => StreamError::Protocol(other.to_string()),
        }
    }

    pub(crate) fn from_quic_read(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::Reset(code) => StreamError::Reset(code.into_inner()),
            quinn::ReadError::ConnectionLost(c) => StreamError::ConnectionLost(c.to_string()),
            quinn::ReadError::ClosedStream => StreamError::Closed,
            other => StreamError::Protocol(other.to_string()),
        }
    }

    pub(crate) fn from_h2(e: h2::Error) -> Self {
        if let Some(reason) = e.reason() {
            if e.is_reset() {
                return StreamError::Reset(u64::from(u32::from(reason)));
            }
            if e.is_go_away() {
                return StreamError::ConnectionLost(format!("peer sent goaway ({reason})"));
            }
        }
        if e.is_io() {
            return StreamError::ConnectionLost(e.to_string());
        }
        StreamError::Protocol(e.to_string())
    }

    /// Whether the connection (not just this stream) is gone.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, StreamError::ConnectionLost(_))
    }
}

/// A call failed, as the control-plane caller sees it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallFailure {
    /// The connection is draining (goaway sent or received): no new calls.
    #[error("connection to agent is draining; no new calls")]
    Draining,
    /// The connection to the agent died while the call was in flight (or before it started).
    #[error("connection to agent lost: {0}")]
    ConnectionLost(String),
    /// The call's stream failed.
    #[error("call stream failed: {0}")]
    Stream(StreamError),
    /// The agent answered with an error.
    #[error("agent answered with an error: {0}")]
    Remote(CallError),
    /// The agent broke the call sequence (e.g. ended the stream without a response).
    #[error("agent broke the call protocol: {0}")]
    Protocol(String),
}

impl From<StreamError> for CallFailure {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::ConnectionLost(m) => CallFailure::ConnectionLost(m),
            StreamError::UnexpectedEnd => {
                CallFailure::Protocol("stream ended without a response".into())
            }
            other => CallFailure::Stream(other),
        }
    }
}

/// Dialing the control plane failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The server address did not resolve.
    #[error("cannot resolve {address}: {message}")]
    Resolve {
        /// The configured address.
        address: String,
        /// Why.
        message: String,
    },
    /// A TCP connect or TLS handshake failed.
    #[error("{transport} connect to {address} failed: {message}")]
    Transport {
        /// Which transport.
        transport: Transport,
        /// The address dialed.
        address: String,
        /// Why (TLS alert, refused, reset...).
        message: String,
    },
    /// The transport did not come up in time (e.g. UDP blocked).
    #[error("{transport} connect to {address} timed out after {after:?}")]
    Timeout {
        /// Which transport.
        transport: Transport,
        /// The address dialed.
        address: String,
        /// The limit.
        after: Duration,
    },
    /// The HTTP CONNECT proxy failed.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// The hello exchange failed on the wire.
    #[error("hello exchange failed: {0}")]
    Hello(StreamError),
    /// The control plane refused our hello.
    #[error("control plane rejected the connection ({code}): {message}")]
    Rejected {
        /// Why.
        code: RejectCode,
        /// Detail.
        message: String,
    },
    /// The TLS configuration cannot be used for QUIC (e.g. no TLS 1.3 suite).
    #[error("tls configuration unusable: {0}")]
    TlsConfig(String),
    /// The control plane answered the QUIC dial with `CONNECTION_REFUSED`
    /// before any handshake: every handshake slot was busy
    /// (`tunnel.max_concurrent_handshakes`, e.g. all agents redialing after
    /// a restart). UDP reaches it, so the agent backs off and redials QUIC
    /// rather than handshaking again over TCP.
    #[error("{address} is busy and refused the quic connection (every handshake slot in use); backing off")]
    Busy {
        /// The address dialed.
        address: String,
    },
    /// The control plane refused our certificate because the agent is
    /// revoked: the TLS `certificate_revoked` alert during the handshake, or
    /// the connection closed with [`CloseReason::Revoked`]. Final: redialing
    /// cannot succeed with this identity.
    #[error("{transport} connection to {address} refused: this agent is revoked ({detail})")]
    Revoked {
        /// Which transport saw it.
        transport: Transport,
        /// The address dialed.
        address: String,
        /// The signal as received (alert or close code).
        detail: String,
    },
}

impl ConnectError {
    /// Whether the control plane said this agent is revoked (TLS
    /// `certificate_revoked` alert, close code `revoked`, or a hello answered
    /// `rejected{revoked}`). Every other failure is worth a redial.
    pub fn is_revoked(&self) -> bool {
        matches!(
            self,
            ConnectError::Revoked { .. }
                | ConnectError::Rejected {
                    code: RejectCode::Revoked,
                    ..
                }
        )
    }
}

impl ConnectError {
    /// Whether the control plane refused the dial for want of a handshake
    /// slot ([`ConnectError::Busy`]): back off, do not try another transport.
    pub fn is_busy(&self) -> bool {
        matches!(self, ConnectError::Busy { .. })
    }

    /// Whether the control plane found no protocol version in common
    /// (`rejected{unsupported_version}`): redialing with this build cannot help.
    pub fn is_incompatible(&self) -> bool {
        matches!(
            self,
            ConnectError::Rejected {
                code: RejectCode::UnsupportedVersion,
                ..
            }
        )
    }
}

/// Whether a TLS error is the peer's `certificate_revoked` alert.
pub(crate) fn tls_is_revoked(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked)
    )
}

/// Whether an I/O error (TLS over TCP) carries the peer's `certificate_revoked` alert.
pub(crate) fn io_is_revoked(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(tls_is_revoked)
}

/// Whether an h2 error (TLS over TCP) carries the peer's `certificate_revoked` alert.
pub(crate) fn h2_is_revoked(e: &h2::Error) -> bool {
    e.get_io().is_some_and(io_is_revoked)
}

/// Whether a QUIC connection ended because the control plane refused us as
/// revoked: the TLS alert (QUIC crypto error `0x100 + 44`) in the handshake,
/// or an application close with [`CloseReason::Revoked`]'s code.
pub(crate) fn quic_is_revoked(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::ConnectionClosed(c) => {
            c.error_code
                == quinn::TransportErrorCode::crypto(u8::from(
                    rustls::AlertDescription::CertificateRevoked,
                ))
        }
        quinn::ConnectionError::ApplicationClosed(c) => {
            c.error_code == CloseReason::Revoked.quic().0
        }
        _ => false,
    }
}

/// Whether a QUIC dial was refused before its handshake (the listener's
/// `CONNECTION_REFUSED`: no handshake slot free).
pub(crate) fn quic_is_busy(e: &quinn::ConnectionError) -> bool {
    matches!(e, quinn::ConnectionError::ConnectionClosed(c)
        if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
}

/// Binding the listener failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// UDP or TCP bind failed.
    #[error("cannot bind {protocol} {address}: {source}")]
    Bind {
        /// `udp` or `tcp`.
        protocol: &'static str,
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS configuration cannot be used for QUIC.
    #[error("tls configuration unusable: {0}")]
    TlsConfig(String),
}

/// Why a connection is closed; the one mapping to what the peer sees.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// Drained after a goaway, or an orderly shutdown.
    Normal,
    /// The peer was silent for too long (watchdog).
    HeartbeatTimeout,
    /// The peer broke the protocol (bad control frame, hello violation).
    ProtocolError,
    /// The hello was rejected.
    Rejected,
    /// The agent was revoked or disconnected by an operator.
    Revoked,
    /// This process is shutting down.
    Shutdown,
    /// Replaced by another connection of the same agent (e.g. moved to QUIC).
    Superseded,
}

impl CloseReason {
    /// QUIC application close code and reason bytes.
    pub fn quic(&self) -> (quinn::VarInt, &'static [u8]) {
        let (code, reason): (u32, &'static [u8]) = match self {
            CloseReason::Normal => (0, b"normal"),
            CloseReason::HeartbeatTimeout => (1, b"heartbeat timeout"),
            CloseReason::ProtocolError => (2, b"protocol error"),
            CloseReason::Rejected => (3, b"rejected"),
            CloseReason::Revoked => (4, b"revoked"),
            CloseReason::Shutdown => (5, b"shutdown"),
            CloseReason::Superseded => (6, b"superseded"),
        };
        (quinn::VarInt::from_u32(code), reason)
    }

    /// Human-readable reason (the QUIC reason text).
    pub fn as_str(&self) -> &'static str {
        // Reason bytes are ASCII literals above.
        std::str::from_utf8(self.quic().1).unwrap_or("closed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_revocation_signals_are_final() {
        let rejected = |code| ConnectError::Rejected {
            code,
            message: "x".into(),
        };
        assert!(rejected(RejectCode::Revoked).is_revoked());
        assert!(!rejected(RejectCode::IdentityMismatch).is_revoked());
        assert!(!rejected(RejectCode::ShuttingDown).is_revoked());
        assert!(!ConnectError::Transport {
            transport: Transport::Tcp,
            address: "a:1".into(),
            message: "tls: invalid peer certificate: UnknownIssuer".into(),
        }
        .is_revoked());

        let app = |code: u32| {
            quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: quinn::VarInt::from_u32(code),
                reason: bytes::Bytes::new(),
            })
        };
        assert!(quic_is_revoked(&app(4)));
        for code in [0, 1, 2, 3, 5, 6] {
            assert!(!quic_is_revoked(&app(code)), "code {code}");
        }
        let alert = |a: rustls::AlertDescription| {
            quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
                error_code: quinn::TransportErrorCode::crypto(u8::from(a)),
                frame_type: None,
                reason: bytes::Bytes::new(),
            })
        };
        assert!(quic_is_revoked(&alert(
            rustls::AlertDescription::CertificateRevoked
        )));
        assert!(!quic_is_revoked(&alert(
            rustls::AlertDescription::CertificateExpired
        )));
        assert!(!quic_is_revoked(&alert(
            rustls::AlertDescription::UnknownCA
        )));
        assert!(!quic_is_revoked(&quinn::ConnectionError::TimedOut));

        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert!(io_is_revoked(&io(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRevoked
        ))));
        assert!(!io_is_revoked(&io(rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate
        ))));
        assert!(!io_is_revoked(&std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        )));
    }
}
