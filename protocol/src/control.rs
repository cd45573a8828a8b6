//! Messages of a connection's control stream, after the hello: heartbeats
//! (both ways), goaway (either side is draining), and certificate renewal
//! over the live connection (agent asks with a CSR, the control plane answers
//! with a certificate chain).
//!
//! A message type this build does not know decodes to
//! [`ControlMessage::Unknown`] and is ignored, so newer peers can add messages.

use serde::{Deserialize, Serialize};

use crate::call::CallError;

/// One control-stream message (after the hello exchange).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ControlMessage {
    /// Liveness, sent by both sides every heartbeat interval. Anything
    /// received on the control stream counts as a sign of life.
    Heartbeat {
        /// Sender's counter, for logs.
        seq: u64,
    },
    /// The sender is draining: the control plane opens no new calls on this
    /// connection; in-flight calls finish; the connection closes at the deadline.
    GoAway {
        /// Why (`shutdown`, `migrate_to_quic`, ...).
        reason: String,
        /// How long in-flight calls have, in milliseconds.
        deadline_ms: u64,
    },
    /// Agent -> control plane: issue a fresh certificate for this CSR.
    RenewRequest {
        /// Agent-chosen id, echoed in the answer.
        id: u64,
        /// PKCS#10 certificate signing request, PEM.
        csr_pem: String,
    },
    /// Control plane -> agent: the renewed certificate chain.
    Renewed {
        /// The request's id.
        id: u64,
        /// Leaf first, then intermediates, PEM.
        cert_chain_pem: String,
    },
    /// Control plane -> agent: renewal refused.
    RenewFailed {
        /// The request's id.
        id: u64,
        /// Why.
        error: CallError,
    },
    /// Agent -> control plane: the agent's audit condition and latest signed
    /// checkpoint (sent on connect, on every new checkpoint and when the
    /// condition changes). See [`crate::audit`].
    AuditStatus(crate::audit::AuditStatus),
    /// A message type this build does not know; ignored.
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_unknown() {
        for m in [
            ControlMessage::Heartbeat { seq: 3 },
            ControlMessage::GoAway {
                reason: "shutdown".into(),
                deadline_ms: 5000,
            },
            ControlMessage::RenewRequest {
                id: 1,
                csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
            },
        ] {
            let s = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<ControlMessage>(&s).unwrap(), m);
        }
        let u: ControlMessage = serde_json::from_str(r#"{"type":"stats","x":1}"#).unwrap();
        assert_eq!(u, ControlMessage::Unknown);
    }
}
