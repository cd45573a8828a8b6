//! Flow-control windows and transport parameters for both transports. The
//! defaults are sized for bulk transfers of hundreds of MB/s on a LAN or
//! loopback (windows of a few bandwidth-delay products) while capping the
//! memory a peer can make us buffer.

use std::time::Duration;

/// Window sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Per-stream receive window.
    pub stream_window_bytes: u32,
    /// Whole-connection receive window.
    pub connection_window_bytes: u32,
    /// Concurrent calls a peer may open.
    pub max_concurrent_streams: u32,
    /// Largest UDP payload QUIC's path MTU discovery tries (1200..=65527).
    pub max_udp_payload_bytes: u16,
    /// Requested UDP socket send and receive buffer size (the kernel caps it
    /// at `net.core.rmem_max`/`wmem_max`). The default 208 KiB drops
    /// datagrams at a few hundred MB/s whenever the receiver is descheduled.
    pub udp_buffer_bytes: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            stream_window_bytes: 8 << 20,
            connection_window_bytes: 32 << 20,
            max_concurrent_streams: 1024,
            max_udp_payload_bytes: 8952,
            udp_buffer_bytes: 4 << 20,
        }
    }
}

impl Tuning {
    /// The config key `tunnel.quic_max_udp_payload_bytes` (both binaries'
    /// `[tunnel]`): `v` or the default, which must lie in 1200..=65527.
    pub fn max_udp_payload_bytes_key(v: Option<u32>) -> Result<u16, settings::InvalidKey> {
        match v {
            None => Ok(Self::default().max_udp_payload_bytes),
            Some(v) if (1200..=65527).contains(&v) => {
                u16::try_from(v).map_err(|e| settings::InvalidKey::new(UDP_PAYLOAD_KEY, e))
            }
            Some(_) => Err(settings::InvalidKey::new(
                UDP_PAYLOAD_KEY,
                "must be between 1200 and 65527",
            )),
        }
    }
}

const UDP_PAYLOAD_KEY: &str = "tunnel.quic_max_udp_payload_bytes";

/// QUIC transport parameters: windows, the streams the peer may open at
/// once (`peer_streams`), keep-alive at the heartbeat interval and an idle
/// timeout of `misses` intervals.
pub(crate) fn quic_transport(
    t: &Tuning,
    peer_streams: u32,
    heartbeat: Duration,
    misses: u32,
) -> quinn::TransportConfig {
    let mut c = quinn::TransportConfig::default();
    c.stream_receive_window(quinn::VarInt::from_u32(t.stream_window_bytes));
    c.receive_window(quinn::VarInt::from_u32(t.connection_window_bytes));
    c.send_window(u64::from(t.connection_window_bytes));
    c.max_concurrent_bidi_streams(quinn::VarInt::from_u32(peer_streams));
    c.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    // Path MTU discovery searches up to this size and settles on what the
    // path carries (lost probes are not congestion signals), so a jumbo
    // ceiling costs a few probes on a 1500-byte path and pays on LANs and
    // loopback.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(t.max_udp_payload_bytes.max(1200));
    c.mtu_discovery_config(Some(mtu));
    c.keep_alive_interval(Some(heartbeat));
    let idle = heartbeat
        .saturating_mul(misses.max(1))
        .max(Duration::from_secs(1));
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle) {
        c.max_idle_timeout(Some(idle));
    }
    c
}

/// Streams an agent may open toward the control plane at once. An agent
/// opens one, its control stream (calls are opened by the control plane),
/// so a few are plenty. It matters for memory: quinn sets up a slot for
/// every stream the peer may open, in two maps, when the connection starts
/// (about 70 KiB per connection at 1,024 streams, most of a quiet agent's
/// cost on the control plane).
pub(crate) const AGENT_OPENED_STREAMS: u32 = 4;

pub(crate) fn h2_client(t: &Tuning) -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(t.stream_window_bytes)
        .initial_connection_window_size(t.connection_window_bytes)
        .max_frame_size(256 * 1024)
        .max_concurrent_streams(t.max_concurrent_streams)
        .max_send_buffer_size(1 << 20);
    b
}

pub(crate) fn h2_server(t: &Tuning) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(t.stream_window_bytes)
        .initial_connection_window_size(t.connection_window_bytes)
        .max_frame_size(256 * 1024)
        .max_concurrent_streams(t.max_concurrent_streams)
        .max_send_buffer_size(1 << 20);
    b
}

/// A UDP socket bound to `addr` with larger buffers for QUIC. A buffer size
/// the kernel refuses is logged and left at its default.
pub(crate) fn udp_socket(
    addr: std::net::SocketAddr,
    t: &Tuning,
) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let s = socket2::SockRef::from(&socket);
    if let Err(error) = s.set_recv_buffer_size(t.udp_buffer_bytes) {
        tracing::debug!(%error, "cannot enlarge the udp receive buffer");
    }
    if let Err(error) = s.set_send_buffer_size(t.udp_buffer_bytes) {
        tracing::debug!(%error, "cannot enlarge the udp send buffer");
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_payload_key_is_bounded_and_named() {
        assert_eq!(Tuning::max_udp_payload_bytes_key(None).unwrap(), 8952);
        assert_eq!(Tuning::max_udp_payload_bytes_key(Some(1200)).unwrap(), 1200);
        assert_eq!(
            Tuning::max_udp_payload_bytes_key(Some(65527)).unwrap(),
            65527
        );
        for bad in [1199, 65528, u32::MAX] {
            let e = Tuning::max_udp_payload_bytes_key(Some(bad)).unwrap_err();
            assert_eq!(
                e.to_string(),
                "invalid value for `tunnel.quic_max_udp_payload_bytes`: must be between 1200 and 65527"
            );
        }
    }
}
