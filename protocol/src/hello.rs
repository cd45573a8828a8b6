//! The versioned hello: the first exchange on a tunnel connection's control
//! stream. The agent sends [`Hello`] (the protocol versions it speaks, who it
//! claims to be, what it can do); the control plane answers [`HelloAnswer`]
//! with the chosen version or a typed rejection.
//!
//! Version negotiation picks the highest version both ranges contain
//! ([`negotiate`]); disjoint ranges are [`RejectCode::UnsupportedVersion`],
//! answered with the control plane's range in `supported` and a message
//! naming both ranges ([`unsupported_message`]).
//!
//! Versions (policy in `docs/upgrades.md`: every build speaks its own
//! version and the one before, so an agent one version older or newer than
//! its control plane keeps working; upgrade the control plane first):
//!
//! - **1**: the hello, heartbeats, calls, renewal, audit status.
//! - **2**: [`HelloAnswer::Accepted`] carries `server_time_unix_ms`, the
//!   control plane's clock when it answered, so an agent can measure its
//!   clock skew ([`clock_skew_ms`]) without another round trip. Nothing else
//!   changes; a version-1 peer never sees the field.

use serde::{Deserialize, Serialize};

/// Lowest protocol version this build speaks.
pub const PROTOCOL_VERSION_MIN: u32 = 1;
/// Highest protocol version this build speaks.
pub const PROTOCOL_VERSION_MAX: u32 = 2;
/// The first version whose [`HelloAnswer::Accepted`] carries `server_time_unix_ms`.
pub const VERSION_SERVER_TIME: u32 = 2;

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
        /// Version >= 2: the control plane's clock when it answered, in
        /// milliseconds since the Unix epoch (absent at version 1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server_time_unix_ms: Option<u64>,
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

/// The message of an `unsupported_version` rejection: both ranges and
/// which side to upgrade.
pub fn unsupported_message(agent: (u32, u32), control_plane: (u32, u32)) -> String {
    let advice = if agent.0 > control_plane.1 {
        "the agent is newer than the control plane: upgrade the control plane first"
    } else {
        "the agent is older than the control plane supports: upgrade the agent"
    };
    format!(
        "no common protocol version: agent speaks {}..={}, control plane speaks {}..={}; {advice}",
        agent.0, agent.1, control_plane.0, control_plane.1
    )
}

/// The agent's clock minus the control plane's, in milliseconds, from the
/// `server_time_unix_ms` of an answer received between `sent` and
/// `received` (the server's time is taken as the midpoint of the round
/// trip, so the error is at most half of it). Positive: the agent is ahead.
pub fn clock_skew_ms(
    server_time_unix_ms: u64,
    sent: std::time::SystemTime,
    received: std::time::SystemTime,
) -> i64 {
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| i128::try_from(d.as_millis()).unwrap_or(i128::MAX))
            .unwrap_or(0)
    };
    let midpoint = (ms(sent) + ms(received)) / 2;
    let skew = midpoint - i128::from(server_time_unix_ms);
    i64::try_from(skew).unwrap_or(if skew < 0 { i64::MIN } else { i64::MAX })
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
        // the N-1 policy: a v2 build and a v1 build meet at 1, N+2 is refused
        assert_eq!(
            negotiate((PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX), (1, 1)),
            Some(1)
        );
        assert_eq!(negotiate((1, 1), (1, 2)), Some(1));
        assert_eq!(negotiate((1, 2), (1, 2)), Some(2));
        assert_eq!(negotiate((1, 2), (3, 4)), None);
        const { assert!(PROTOCOL_VERSION_MAX - PROTOCOL_VERSION_MIN >= 1) };
    }

    #[test]
    fn unsupported_message_names_both_ranges_and_the_side_to_upgrade() {
        let m = unsupported_message((3, 4), (1, 2));
        assert!(
            m.contains("agent speaks 3..=4, control plane speaks 1..=2"),
            "{m}"
        );
        assert!(m.contains("upgrade the control plane first"), "{m}");
        let m = unsupported_message((1, 1), (2, 3));
        assert!(m.contains("upgrade the agent"), "{m}");
    }

    #[test]
    fn server_time_is_optional_on_the_wire_and_gives_the_skew() {
        // a version-1 answer (no server time) still decodes
        let v1 = r#"{"type":"accepted","version":1,"heartbeat_interval_ms":5000,"max_frame_bytes":1048576,"software_version":"0.1.0"}"#;
        let a: HelloAnswer = serde_json::from_str(v1).unwrap();
        assert!(matches!(
            a,
            HelloAnswer::Accepted {
                server_time_unix_ms: None,
                ..
            }
        ));
        // and a version-2 answer carries it; a v1 decoder ignores unknown fields
        let v2 = HelloAnswer::Accepted {
            version: 2,
            heartbeat_interval_ms: 5000,
            max_frame_bytes: 1 << 20,
            software_version: "0.2.0".into(),
            server_time_unix_ms: Some(1_000_000),
        };
        let s = serde_json::to_string(&v2).unwrap();
        assert!(s.contains("\"server_time_unix_ms\":1000000"), "{s}");
        assert_eq!(serde_json::from_str::<HelloAnswer>(&s).unwrap(), v2);
        let at = |ms: u64| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        assert_eq!(
            clock_skew_ms(1_000_000, at(1_060_000), at(1_060_100)),
            60_050
        );
        assert_eq!(clock_skew_ms(1_000_000, at(990_000), at(990_000)), -10_000);
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
