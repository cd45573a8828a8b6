//! The versioned hello: the first exchange on a tunnel connection's control
//! stream. The agent sends [`Hello`] (the protocol versions it speaks, who it
//! claims to be, what it can do); the control plane answers [`HelloAnswer`]
//! with the chosen version or a typed rejection.
//!
//! Version negotiation picks the highest version both ranges contain
//! ([`negotiate`]); disjoint ranges are [`RejectCode::UnsupportedVersion`].

use serde::{Deserialize, Serialize};

/// Lowest protocol version this build speaks.
pub const PROTOCOL_VERSION_MIN: u32 = 1;
/// Highest protocol version this build speaks.
pub const PROTOCOL_VERSION_MAX: u32 = 1;

/// Agent -> control plane, first frame of the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Lowest protocol version the agent speaks.
    pub min_version: u32,
    /// Highest protocol version the agent speaks.
    pub max_version: u32,
    /// The agent's id; must match the id in its verified client certificate.
    pub agent_id: String,
    /// The agent's software version (`CARGO_PKG_VERSION`).
    pub software_version: String,
    /// Optional features (`echo`, `sandbox`, `renew`, ...). Unknown ones are ignored.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// Control plane -> agent: the answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HelloAnswer {
    /// The connection is accepted at `version`.
    Accepted {
        /// Chosen protocol version.
        version: u32,
        /// Heartbeat interval the control plane expects, in milliseconds.
        heartbeat_interval_ms: u64,
        /// Frame cap the control plane enforces (kind byte plus body).
        max_frame_bytes: u64,
        /// The control plane's software version.
        software_version: String,
    },
    /// The connection is refused; the control plane closes it after sending this.
    Rejected {
        /// Why.
        code: RejectCode,
        /// Human-readable detail.
        message: String,
        /// For `unsupported_version`: the control plane's range.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        supported: Option<(u32, u32)>,
    },
}

code_enum! {
    /// Why a hello was refused.
    RejectCode {
        /// No protocol version in common.
        UnsupportedVersion => "unsupported_version",
        /// The hello's agent id differs from the verified certificate's.
        IdentityMismatch => "identity_mismatch",
        /// The agent is revoked.
        Revoked => "revoked",
        /// The control plane is draining and takes no new connections.
        ShuttingDown => "shutting_down",
        /// The hello frame could not be decoded.
        Malformed => "malformed",
    }
}

/// Pick the highest version in both `[ours_min, ours_max]` and `[min, max]`.
pub fn negotiate(ours: (u32, u32), theirs: (u32, u32)) -> Option<u32> {
    let lo = ours.0.max(theirs.0);
    let hi = ours.1.min(theirs.1);
    (lo <= hi && theirs.0 <= theirs.1).then_some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(negotiate((1, 1), (1, 1)), Some(1));
        assert_eq!(negotiate((1, 3), (2, 5)), Some(3));
        assert_eq!(negotiate((1, 1), (2, 3)), None);
        assert_eq!(negotiate((1, 4), (3, 2)), None);
    }

    #[test]
    fn answer_round_trip_and_unknown_code() {
        let a = HelloAnswer::Rejected {
            code: RejectCode::UnsupportedVersion,
            message: "x".into(),
            supported: Some((1, 1)),
        };
        let s = serde_json::to_string(&a).unwrap();
        assert!(s.contains("\"unsupported_version\""), "{s}");
        assert_eq!(serde_json::from_str::<HelloAnswer>(&s).unwrap(), a);
        let b: HelloAnswer =
            serde_json::from_str(r#"{"type":"rejected","code":"too_cold","message":"m"}"#).unwrap();
        assert!(
            matches!(b, HelloAnswer::Rejected { code: RejectCode::Unknown(c), .. } if c == "too_cold")
        );
    }
}
