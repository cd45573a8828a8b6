//! Messages of the local channel between the sandbox-agent and its
//! vault-bridge (a Unix socket only the agent's uid may use), carried as
//! control frames of the [`crate::frame`] codec.
//!
//! ```text
//! agent -> bridge:  Hello{min_version, max_version, software_version}
//!                   OpenEgress{sandbox_id, session_id, allowed_hosts, repositories, credentials,
//!                              egress_hosts?}
//!                   CloseEgress{sandbox_id}   Health
//!                   PutCredential | ForgetCredential | PutSessionToken | ForgetSessionToken
//!                   SubscribeAudit{after_seq}
//!                   McpListTools | McpCallTool | McpValidate        (crate::mcp)
//!                   Scrub{id, value}
//! bridge -> agent:  HelloAccepted{version, software_version} | Error{code: unsupported_version,..}
//!                   EgressOpened{socket_path, env}   EgressClosed{existed}
//!                   Health{backend, message}    Relayed{held}    Error{code, message}
//!                   AuditRecord{..}*   (only after SubscribeAudit)
//!                   Mcp(McpReply)   McpValidated(McpValidation)
//!                   Scrubbed{id, value, redactions}
//! ```
//!
//! `Scrub` asks the bridge to replace, in every string of a JSON value, each
//! secret value it currently knows (raw, URL-encoded and base64 forms) with
//! `[redacted:<credential id or kind>]`, so the agent can keep tool inputs
//! and outputs in its audit record without ever holding the secrets. The
//! request and the answer each fit one frame; an answer that would not is
//! refused with [`BridgeErrorCode::TooLarge`].
//!
//! The relay messages ([`crate::relay`]) are what the control plane sent the
//! agent over the tunnel, forwarded unchanged. `SubscribeAudit` turns the
//! connection into a one-way stream: the bridge sends every credential use
//! with a sequence number above `after_seq` that it still holds, then each
//! new one as it happens, and reads nothing more.
//!
//! The agent sends `Hello` first; after that every request gets exactly one
//! answer, in order (one request in flight per connection). A request type
//! this build does not know decodes to [`ToBridge::Unknown`] and is answered
//! with [`BridgeErrorCode::UnsupportedRequest`]; an answer this build does not
//! know decodes to [`FromBridge::Unknown`].
//!
//! `OpenEgress` makes the bridge listen on a Unix socket for that sandbox
//! only; whoever connects to it *is* that sandbox (the listener says so, the
//! client cannot). Sandbox ids are checked with [`check_sandbox_id`] on both
//! sides, because the bridge builds a path from them.
//!
//! Versions:
//!
//! - **1**: everything above.
//! - **2**: `OpenEgress` may carry `egress_hosts`, the agent's
//!   `[policy] egress_hosts`, and the bridge enforces it. An agent with that
//!   policy refuses to open egress on a version-1 bridge (which would ignore
//!   the field); without it nothing changes and the field is not sent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::frame::{Frame, FrameError};
pub use crate::mcp::{McpCallTool, McpListTools, McpReply, McpValidate, McpValidation};
pub use crate::relay::{
    CredentialBinding, EgressCredential, ForgetCredential, ForgetSessionToken, PutCredential,
    PutSessionToken,
};

/// Lowest agent-channel version this build speaks.
pub const BRIDGE_PROTOCOL_VERSION_MIN: u32 = 1;
/// Highest agent-channel version this build speaks.
pub const BRIDGE_PROTOCOL_VERSION_MAX: u32 = 2;
/// The first version whose bridges enforce `OpenEgress::egress_hosts`.
pub const BRIDGE_VERSION_EGRESS_HOSTS: u32 = 2;
/// Longest sandbox id the bridge accepts.
pub const SANDBOX_ID_MAX_LEN: usize = 64;

/// A request from the agent to the bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ToBridge {
    /// First message of a connection: the versions the agent speaks.
    Hello {
        /// Lowest version the agent speaks.
        min_version: u32,
        /// Highest version the agent speaks.
        max_version: u32,
        /// The agent's software version, for logs.
        software_version: String,
    },
    /// Start (or replace) the egress listener of one sandbox.
    OpenEgress {
        /// The sandbox (`sbx_…`); names the socket's directory.
        sandbox_id: String,
        /// The session it serves (audited with every request).
        session_id: String,
        /// Hosts the sandbox may reach (`git.example.com`, `*.example.com`).
        #[serde(default)]
        allowed_hosts: Vec<String>,
        /// Repositories the session names (their hosts are allowed too).
        #[serde(default)]
        repositories: Vec<EgressRepository>,
        /// The session's vault credentials (metadata; the bridge holds or
        /// fetches the secrets).
        #[serde(default)]
        credentials: Vec<EgressCredential>,
        /// The agent's egress policy (`[policy] egress_hosts`: `host`,
        /// `*.domain`, either with `:port`): the only hosts of the above the
        /// sandbox may reach. `None`: no limit beyond them; empty: none.
        /// Sent only to bridges of version [`BRIDGE_VERSION_EGRESS_HOSTS`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        egress_hosts: Option<Vec<String>>,
    },
    /// Stop a sandbox's egress listener and remove its socket.
    CloseEgress {
        /// The sandbox.
        sandbox_id: String,
    },
    /// Ask for the bridge's secret backend status.
    Health,
    /// Store a vault credential's secret (answered with `Relayed`).
    PutCredential(PutCredential),
    /// Stop using a vault credential (answered with `Relayed`).
    ForgetCredential(ForgetCredential),
    /// Hold a session resource's Git token (answered with `Relayed`).
    PutSessionToken(PutSessionToken),
    /// Drop a session's Git token(s) (answered with `Relayed`).
    ForgetSessionToken(ForgetSessionToken),
    /// Stream credential uses with a sequence number above `after_seq`.
    SubscribeAudit {
        /// The last sequence number the agent has recorded (0: none).
        #[serde(default)]
        after_seq: u64,
    },
    /// List an MCP server's tools (answered with `Mcp`).
    McpListTools(McpListTools),
    /// Call an MCP tool (answered with `Mcp`). The bridge does not dedupe by
    /// `tool_use_id`; the agent's record does.
    McpCallTool(McpCallTool),
    /// Probe an MCP credential (answered with `McpValidated`).
    McpValidate(McpValidate),
    /// Replace every secret value the bridge knows in the strings of
    /// `value` (answered with `Scrubbed`).
    Scrub {
        /// Caller-chosen id, echoed in the answer.
        id: u64,
        /// Any JSON value (a tool input, a result's content blocks).
        value: serde_json::Value,
    },
    /// A request type this build does not know.
    #[serde(other)]
    Unknown,
}

/// A repository a session names: its host is allowed. Never a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRepository {
    /// The repository's HTTPS URL.
    pub url: String,
    /// The session resource (`sesrsc_...`) whose relayed token the bridge
    /// adds on requests to this repository, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
}

/// An answer from the bridge to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum FromBridge {
    /// The hello is accepted at `version`.
    HelloAccepted {
        /// Chosen version.
        version: u32,
        /// The bridge's software version.
        software_version: String,
    },
    /// The sandbox's egress socket is listening.
    EgressOpened {
        /// Absolute path of the socket on the bridge's host.
        socket_path: String,
        /// Variables for the sandbox's environment: each
        /// `environment_variable` credential's `secret_name` → its
        /// placeholder (not a secret).
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// The sandbox's egress listener is stopped and its socket removed.
    EgressClosed {
        /// Whether there was a listener to stop.
        existed: bool,
    },
    /// Backend status.
    Health {
        /// Whether the secret backend answers.
        backend: BackendStatus,
        /// Why not, when it does not (never a secret).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// Answer to a relay message.
    Relayed {
        /// For a put: the bridge holds it. For a forget: there was something to drop.
        held: bool,
    },
    /// One credential use (on a `SubscribeAudit` connection).
    AuditRecord(CredentialUse),
    /// Answer to `McpListTools` / `McpCallTool` (a failed MCP exchange is an
    /// `McpOutcome::Failed` here, not `Error`).
    Mcp(McpReply),
    /// Answer to `McpValidate`.
    McpValidated(McpValidation),
    /// Answer to `Scrub`: the value with every known secret replaced.
    Scrubbed {
        /// The request's id.
        id: u64,
        /// The scrubbed value (same shape as the request's).
        value: serde_json::Value,
        /// How many occurrences were replaced.
        redactions: u32,
    },
    /// The request failed.
    Error {
        /// What kind of failure.
        code: BridgeErrorCode,
        /// A sentence naming what failed (never a secret).
        message: String,
    },
    /// An answer type this build does not know.
    #[serde(other)]
    Unknown,
}

code_enum! {
    /// Secret backend status in a [`FromBridge::Health`].
    BackendStatus {
        /// The backend answers.
        Healthy => "healthy",
        /// The backend is down, sealed or refusing.
        Unhealthy => "unhealthy",
    }
}

code_enum! {
    /// Why the bridge refused a request.
    BridgeErrorCode {
        /// No version in common; the bridge closes the connection.
        UnsupportedVersion => "unsupported_version",
        /// The peer's uid may not use the channel; the bridge closes the connection.
        PeerNotAllowed => "peer_not_allowed",
        /// A request came before the hello.
        HelloRequired => "hello_required",
        /// The request could not be decoded; the bridge closes the connection.
        Malformed => "malformed",
        /// A request type the bridge does not know.
        UnsupportedRequest => "unsupported_request",
        /// The sandbox id is not a safe path component.
        InvalidSandboxId => "invalid_sandbox_id",
        /// An allowed host or repository URL is not valid.
        InvalidHost => "invalid_host",
        /// The bridge could not create or bind the socket.
        Io => "io",
        /// The bridge is shutting down.
        ShuttingDown => "shutting_down",
        /// The secret backend refused or could not be reached.
        Backend => "backend",
        /// A relay message named an invalid id, field or URL.
        InvalidRelay => "invalid_relay",
        /// The answer would not fit one frame (a `Scrub` of a value too large).
        TooLarge => "too_large",
    }
}

code_enum! {
    /// What happened to a request that used (or tried to use) a credential.
    UseOutcome {
        /// The secret was added; the upstream answered (see `status`).
        Injected => "injected",
        /// The secret was added but the upstream exchange failed.
        UpstreamFailed => "upstream_failed",
        /// The secret could not be had (backend down, archived, not found); not sent.
        SecretUnavailable => "secret_unavailable",
        /// A placeholder was sent to a host it is not allowed on; refused (403).
        PlaceholderRefused => "placeholder_refused",
        /// The destination was refused (403) by a host policy (see `policy`);
        /// no credential involved.
        HostRefused => "host_refused",
    }
}

/// One credential use, as the bridge reports it to the agent's audit record.
/// Never a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialUse {
    /// The bridge's sequence number (increasing; survives bridge restarts).
    pub seq: u64,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// The sandbox that sent the request.
    pub sandbox_id: String,
    /// Its session.
    pub session_id: String,
    /// `vcrd_...`, or the `sesrsc_...` of a repository token; `None` for an
    /// unknown placeholder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
    /// `vlt_...` when the credential belongs to a vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_id: Option<String>,
    /// Upstream host.
    pub host: String,
    /// HTTP method.
    pub method: String,
    /// Request path without the query string.
    pub path: String,
    /// What happened.
    pub outcome: UseOutcome,
    /// The upstream's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// For `host_refused`: the policy that refused (`session.allowed_hosts`,
    /// `session.plain_http`, `policy.egress_hosts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// For `host_refused`: the refusal (names host and port; never a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A sandbox id that cannot name a socket directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sandbox id {0:?}: expected 1 to 64 ascii letters, digits, '_' or '-'")]
pub struct InvalidSandboxId(pub String);

/// Check that `id` is a safe single path component: 1 to
/// [`SANDBOX_ID_MAX_LEN`] ASCII letters, digits, `_` or `-` (so never `.`,
/// `..`, a slash or a NUL).
pub fn check_sandbox_id(id: &str) -> Result<(), InvalidSandboxId> {
    let ok = !id.is_empty()
        && id.len() <= SANDBOX_ID_MAX_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(InvalidSandboxId(id.chars().take(80).collect()))
    }
}

impl ToBridge {
    /// The hello this build sends.
    pub fn hello(software_version: impl Into<String>) -> Self {
        Self::Hello {
            min_version: BRIDGE_PROTOCOL_VERSION_MIN,
            max_version: BRIDGE_PROTOCOL_VERSION_MAX,
            software_version: software_version.into(),
        }
    }

    /// Decode a frame: a control frame holding a request, else a typed error.
    pub fn decode(frame: &Frame) -> Result<Self, FrameError> {
        frame.parse_control()
    }
}

impl FromBridge {
    /// Decode a frame: a control frame holding an answer, else a typed error.
    pub fn decode(frame: &Frame) -> Result<Self, FrameError> {
        frame.parse_control()
    }

    /// An error answer.
    pub fn error(code: BridgeErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameCodec;
    use bytes::BytesMut;

    fn through_codec<T: Serialize>(m: &T) -> Frame {
        let codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        codec.encode(&Frame::control(m).unwrap(), &mut buf).unwrap();
        codec.decode(&mut buf).unwrap().unwrap()
    }

    #[test]
    fn requests_round_trip_through_the_codec() {
        for m in [
            ToBridge::hello("0.1.0"),
            ToBridge::OpenEgress {
                sandbox_id: "sbx_1".into(),
                session_id: "sesn_1".into(),
                allowed_hosts: vec!["git.example.com".into(), "*.example.org".into()],
                repositories: vec![EgressRepository {
                    url: "https://git.example.com/a/b.git".into(),
                    resource_id: Some("sesrsc_1".into()),
                }],
                credentials: vec![EgressCredential {
                    http_auth: Default::default(),
                    vault_id: "vlt_1".into(),
                    credential_id: "vcrd_1".into(),
                    kv_path: None,
                    binding: CredentialBinding::StaticBearer {
                        mcp_server_url: "https://mcp.example.com/mcp".into(),
                    },
                }],
                egress_hosts: Some(vec!["git.example.com:443".into(), "*.example.org".into()]),
            },
            ToBridge::ForgetSessionToken(ForgetSessionToken {
                session_id: "sesn_1".into(),
                resource_id: Some("sesrsc_1".into()),
            }),
            ToBridge::SubscribeAudit { after_seq: 7 },
            ToBridge::CloseEgress {
                sandbox_id: "sbx_1".into(),
            },
            ToBridge::Health,
            ToBridge::Scrub {
                id: 9,
                value: serde_json::json!({"command": "echo hi", "n": [1, "x"]}),
            },
        ] {
            assert_eq!(ToBridge::decode(&through_codec(&m)).unwrap(), m);
        }
    }

    #[test]
    fn answers_round_trip_and_wire_shape() {
        let m = FromBridge::EgressOpened {
            socket_path: "/run/airlock-vault-bridge/egress/sbx_1/egress.sock".into(),
            env: [("API_KEY".to_owned(), "airlock-placeholder-x".to_owned())].into(),
        };
        let s = serde_json::to_string(&m).unwrap();
        assert!(s.starts_with(r#"{"type":"egress_opened""#), "{s}");
        for m in [
            m,
            FromBridge::HelloAccepted {
                version: 1,
                software_version: "x".into(),
            },
            FromBridge::EgressClosed { existed: true },
            FromBridge::Health {
                backend: BackendStatus::Unhealthy,
                message: Some("sealed".into()),
            },
            FromBridge::error(BridgeErrorCode::InvalidSandboxId, "bad"),
            FromBridge::Relayed { held: true },
            FromBridge::Scrubbed {
                id: 9,
                value: serde_json::json!({"command": "echo [redacted:vcrd_1]"}),
                redactions: 1,
            },
            FromBridge::error(BridgeErrorCode::TooLarge, "too large"),
            FromBridge::AuditRecord(CredentialUse {
                seq: 3,
                at: "2026-12-06T14:00:00Z".into(),
                sandbox_id: "sbx_1".into(),
                session_id: "sesn_1".into(),
                credential_id: Some("vcrd_1".into()),
                vault_id: Some("vlt_1".into()),
                host: "git.example.com".into(),
                method: "GET".into(),
                path: "/a/b.git/info/refs".into(),
                outcome: UseOutcome::Injected,
                status: Some(200),
                policy: None,
                reason: None,
            }),
            FromBridge::AuditRecord(CredentialUse {
                seq: 4,
                at: "2026-12-06T14:00:01Z".into(),
                sandbox_id: "sbx_1".into(),
                session_id: "sesn_1".into(),
                credential_id: None,
                vault_id: None,
                host: "b.example.com".into(),
                method: "CONNECT".into(),
                path: String::new(),
                outcome: UseOutcome::HostRefused,
                status: None,
                policy: Some("policy.egress_hosts".into()),
                reason: Some("host b.example.com port 443 is in the session's allowed hosts but not in this agent's policy.egress_hosts".into()),
            }),
        ] {
            assert_eq!(FromBridge::decode(&through_codec(&m)).unwrap(), m);
        }
    }

    #[test]
    fn open_egress_lists_default_to_empty() {
        let m: ToBridge =
            serde_json::from_str(r#"{"type":"open_egress","sandbox_id":"s","session_id":"t"}"#)
                .unwrap();
        assert_eq!(
            m,
            ToBridge::OpenEgress {
                sandbox_id: "s".into(),
                session_id: "t".into(),
                allowed_hosts: vec![],
                repositories: vec![],
                credentials: vec![],
                egress_hosts: None,
            }
        );
        // Without a policy the field is not sent: a version-1 bridge sees
        // exactly what it always did.
        let s = serde_json::to_string(&m).unwrap();
        assert!(!s.contains("egress_hosts"), "{s}");
        let with: ToBridge = serde_json::from_str(
            r#"{"type":"open_egress","sandbox_id":"s","session_id":"t","egress_hosts":[]}"#,
        )
        .unwrap();
        assert!(
            matches!(&with, ToBridge::OpenEgress { egress_hosts: Some(h), .. } if h.is_empty()),
            "{with:?}"
        );
    }

    #[test]
    fn unknown_types_and_codes_decode() {
        let m: ToBridge = serde_json::from_str(r#"{"type":"rotate","x":1}"#).unwrap();
        assert_eq!(m, ToBridge::Unknown);
        let a: FromBridge = serde_json::from_str(r#"{"type":"stats"}"#).unwrap();
        assert_eq!(a, FromBridge::Unknown);
        let e: FromBridge =
            serde_json::from_str(r#"{"type":"error","code":"too_hot","message":"m"}"#).unwrap();
        assert!(
            matches!(e, FromBridge::Error { code: BridgeErrorCode::Unknown(c), .. } if c == "too_hot")
        );
        let h: FromBridge =
            serde_json::from_str(r#"{"type":"health","backend":"degraded"}"#).unwrap();
        assert!(matches!(
            h,
            FromBridge::Health {
                backend: BackendStatus::Unknown(_),
                message: None
            }
        ));
    }

    #[test]
    fn malformed_input_is_a_typed_error() {
        for body in [
            &b"not json"[..],
            br#"{"sandbox_id":"s"}"#,
            br#"{"type":"open_egress","sandbox_id":7,"session_id":"t"}"#,
            br#"{"type":"close_egress"}"#,
            br#"[]"#,
            b"",
        ] {
            let frame = Frame::Control(bytes::Bytes::copy_from_slice(body));
            match ToBridge::decode(&frame) {
                Err(FrameError::InvalidJson { expected, .. }) => assert_eq!(expected, "ToBridge"),
                other => panic!("{body:?}: {other:?}"),
            }
        }
        assert!(matches!(
            ToBridge::decode(&Frame::data(&b"{}"[..])),
            Err(FrameError::UnexpectedKind { .. })
        ));
        assert!(matches!(
            FromBridge::decode(&Frame::Control(bytes::Bytes::from_static(b"{\"type\":1}"))),
            Err(FrameError::InvalidJson { .. })
        ));
    }

    #[test]
    fn sandbox_ids_cannot_escape_a_directory() {
        for ok in ["sbx_1", "sbx_01HZY-abc", &"a".repeat(64)] {
            assert!(check_sandbox_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/abs",
            "a\0b",
            "sbx 1",
            "sbx.1",
            "é",
            &"a".repeat(65),
        ] {
            let e = check_sandbox_id(bad).unwrap_err();
            assert!(e.to_string().contains("invalid sandbox id"), "{e}");
        }
    }
}
