//! Which transport to dial, as a plain state machine: QUIC first; if it does
//! not come up within `quic_timeout`, TLS over TCP; while on TCP, retry QUIC
//! every `quic_retry_interval` and move back when it comes up.

use std::time::{Duration, Instant};

/// A transport in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// QUIC (UDP), mutual TLS 1.3.
    Quic,
    /// TLS over TCP, calls multiplexed with h2.
    Tcp,
}

impl Transport {
    /// `quic` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which transports the agent may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportMode {
    /// QUIC first, TCP fallback, move back to QUIC when it works again.
    #[default]
    Auto,
    /// QUIC only.
    QuicOnly,
    /// TCP only (e.g. a proxy-only network).
    TcpOnly,
}

/// Transport selection state.
#[derive(Debug, Clone)]
pub struct TransportSelector {
    mode: TransportMode,
    retry_interval: Duration,
    next_quic_retry: Option<Instant>,
}

impl TransportSelector {
    /// New selector.
    pub fn new(mode: TransportMode, quic_retry_interval: Duration) -> Self {
        Self {
            mode,
            retry_interval: quic_retry_interval,
            next_quic_retry: None,
        }
    }

    /// The transports to try, in order, for a fresh dial.
    pub fn dial_order(&self) -> &'static [Transport] {
        match self.mode {
            TransportMode::Auto => &[Transport::Quic, Transport::Tcp],
            TransportMode::QuicOnly => &[Transport::Quic],
            TransportMode::TcpOnly => &[Transport::Tcp],
        }
    }

    /// A link on `transport` came up at `now`.
    pub fn connected(&mut self, transport: Transport, now: Instant) {
        self.next_quic_retry = match (self.mode, transport) {
            (TransportMode::Auto, Transport::Tcp) => Some(now + self.retry_interval),
            _ => None,
        };
    }

    /// The link went down.
    pub fn disconnected(&mut self) {
        self.next_quic_retry = None;
    }

    /// When to try QUIC again in the background (only while on TCP in auto mode).
    pub fn next_quic_retry(&self) -> Option<Instant> {
        self.next_quic_retry
    }

    /// A background QUIC attempt failed at `now`.
    pub fn quic_retry_failed(&mut self, now: Instant) {
        if self.next_quic_retry.is_some() {
            self.next_quic_retry = Some(now + self.retry_interval);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_and_retries() {
        let t0 = Instant::now();
        let r = Duration::from_secs(30);
        let mut s = TransportSelector::new(TransportMode::Auto, r);
        assert_eq!(s.dial_order(), &[Transport::Quic, Transport::Tcp]);
        s.connected(Transport::Tcp, t0);
        assert_eq!(s.next_quic_retry(), Some(t0 + r));
        s.quic_retry_failed(t0 + r);
        assert_eq!(s.next_quic_retry(), Some(t0 + 2 * r));
        s.connected(Transport::Quic, t0 + 2 * r);
        assert_eq!(s.next_quic_retry(), None);
        s.quic_retry_failed(t0 + 3 * r);
        assert_eq!(s.next_quic_retry(), None);
    }

    #[test]
    fn fixed_modes_never_retry() {
        let t0 = Instant::now();
        let mut s = TransportSelector::new(TransportMode::TcpOnly, Duration::from_secs(1));
        assert_eq!(s.dial_order(), &[Transport::Tcp]);
        s.connected(Transport::Tcp, t0);
        assert_eq!(s.next_quic_retry(), None);
        let s = TransportSelector::new(TransportMode::QuicOnly, Duration::from_secs(1));
        assert_eq!(s.dial_order(), &[Transport::Quic]);
    }
}
