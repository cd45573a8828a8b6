//! Requests and responses of tunnel calls. Each call is its own bidirectional
//! stream opened by the control plane:
//!
//! ```text
//! control plane -> agent:  control(Request)  data*  <end of stream>
//! agent -> control plane:  data*  control(Response)  <end of stream>
//! ```
//!
//! Data frames before the response carry streamed output (`echo` bytes,
//! execute stdout). On the wire a request is `{"call": NAME, "args": {...}}`
//! and a response `{"call": NAME, "result": {...}}` or
//! `{"error": {"code": CODE, "message": ...}}`. A call name this build does not
//! know decodes to [`Request::Unknown`] and is answered with
//! [`ErrorCode::UnsupportedCall`]; the connection stays up.

use serde::{Deserialize, Serialize};

use crate::frame::{Frame, FrameError};
use crate::mcp::{McpCallTool, McpListTools, McpReply, McpValidate, McpValidation};
use crate::relay::{
    ForgetCredential, ForgetSessionToken, PutCredential, PutSessionToken, RelayAck,
};
use crate::sandbox::{
    DestroyRequest, ExecuteRequest, ProvisionRequest, Provisioned, SandboxCallError,
    SandboxErrorCode, SandboxInfo, ToolResult,
};

/// A call from the control plane to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawRequest", into = "RawRequest")]
#[non_exhaustive]
pub enum Request {
    /// Liveness of the call path (answers [`Reply::Pong`]).
    Ping,
    /// Stream every data frame back unchanged, then answer [`Reply::Echo`].
    Echo,
    /// Create a sandbox.
    Provision(ProvisionRequest),
    /// Run one tool call in a sandbox; output may stream as data frames.
    Execute(ExecuteRequest),
    /// Remove a sandbox.
    Destroy(DestroyRequest),
    /// List this agent's sandboxes.
    ListSandboxes,
    /// Hand a vault credential's secret to the agent's vault-bridge.
    PutCredential(PutCredential),
    /// Tell the agent's vault-bridge to stop using a vault credential.
    ForgetCredential(ForgetCredential),
    /// Hand a session resource's Git token to the agent's vault-bridge.
    PutSessionToken(PutSessionToken),
    /// Tell the agent's vault-bridge to drop a session's Git token(s).
    ForgetSessionToken(ForgetSessionToken),
    /// List an MCP server's tools through the agent's vault-bridge.
    McpListTools(McpListTools),
    /// Call an MCP tool through the agent's vault-bridge (at most once per
    /// `tool_use_id`).
    McpCallTool(McpCallTool),
    /// Probe an MCP credential (`mcp_oauth_validate`).
    McpValidate(McpValidate),
    /// A call this build does not know (from a newer control plane).
    Unknown {
        /// The call name as sent.
        name: String,
    },
}

/// Wire form of [`Request`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RawRequest {
    call: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    args: serde_json::Value,
}

impl TryFrom<RawRequest> for Request {
    type Error = String;

    fn try_from(raw: RawRequest) -> Result<Self, String> {
        fn args<T: serde::de::DeserializeOwned>(
            call: &str,
            v: serde_json::Value,
        ) -> Result<T, String> {
            serde_json::from_value(v).map_err(|e| format!("invalid args of call `{call}`: {e}"))
        }
        Ok(match raw.call.as_str() {
            "ping" => Request::Ping,
            "echo" => Request::Echo,
            "provision" => Request::Provision(args(&raw.call, raw.args)?),
            "execute" => Request::Execute(args(&raw.call, raw.args)?),
            "destroy" => Request::Destroy(args(&raw.call, raw.args)?),
            "list_sandboxes" => Request::ListSandboxes,
            "put_credential" => Request::PutCredential(args(&raw.call, raw.args)?),
            "forget_credential" => Request::ForgetCredential(args(&raw.call, raw.args)?),
            "put_session_token" => Request::PutSessionToken(args(&raw.call, raw.args)?),
            "forget_session_token" => Request::ForgetSessionToken(args(&raw.call, raw.args)?),
            "mcp_list_tools" => Request::McpListTools(args(&raw.call, raw.args)?),
            "mcp_call_tool" => Request::McpCallTool(args(&raw.call, raw.args)?),
            "mcp_validate" => Request::McpValidate(args(&raw.call, raw.args)?),
            _ => Request::Unknown { name: raw.call },
        })
    }
}

impl From<Request> for RawRequest {
    fn from(r: Request) -> Self {
        fn val<T: Serialize>(t: &T) -> serde_json::Value {
            // Plain data structs with string keys: serialization cannot fail.
            serde_json::to_value(t).unwrap_or(serde_json::Value::Null)
        }
        let call = r.name().to_owned();
        let args = match &r {
            Request::Provision(p) => val(p),
            Request::Execute(e) => val(e),
            Request::Destroy(d) => val(d),
            Request::PutCredential(p) => val(p),
            Request::ForgetCredential(f) => val(f),
            Request::PutSessionToken(p) => val(p),
            Request::ForgetSessionToken(f) => val(f),
            Request::McpListTools(m) => val(m),
            Request::McpCallTool(m) => val(m),
            Request::McpValidate(m) => val(m),
            Request::Ping | Request::Echo | Request::ListSandboxes | Request::Unknown { .. } => {
                serde_json::Value::Null
            }
        };
        RawRequest { call, args }
    }
}

impl Request {
    /// The call name on the wire.
    pub fn name(&self) -> &str {
        match self {
            Request::Ping => "ping",
            Request::Echo => "echo",
            Request::Provision(_) => "provision",
            Request::Execute(_) => "execute",
            Request::Destroy(_) => "destroy",
            Request::ListSandboxes => "list_sandboxes",
            Request::PutCredential(_) => "put_credential",
            Request::ForgetCredential(_) => "forget_credential",
            Request::PutSessionToken(_) => "put_session_token",
            Request::ForgetSessionToken(_) => "forget_session_token",
            Request::McpListTools(_) => "mcp_list_tools",
            Request::McpCallTool(_) => "mcp_call_tool",
            Request::McpValidate(_) => "mcp_validate",
            Request::Unknown { name } => name,
        }
    }

    /// Encode as a control frame.
    pub fn to_frame(&self) -> Result<Frame, FrameError> {
        Frame::control(self)
    }

    /// Decode from a frame. A known call with malformed args is
    /// [`FrameError::InvalidJson`] (answer it with [`ErrorCode::BadRequest`]).
    pub fn from_frame(frame: &Frame) -> Result<Self, FrameError> {
        frame.parse_control()
    }
}

/// A successful call's result.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Reply {
    /// Answer to `ping`.
    Pong(Pong),
    /// Answer to `echo`, after all echoed bytes.
    Echo(EchoReply),
    /// Answer to `provision`.
    Provision(Provisioned),
    /// Answer to `execute`.
    Execute(ToolResult),
    /// Answer to `destroy`.
    Destroy,
    /// Answer to `list_sandboxes`.
    ListSandboxes(Vec<SandboxInfo>),
    /// Answer to `put_credential`, `forget_credential`, `put_session_token`
    /// and `forget_session_token` (the call's name).
    Relay {
        /// Which of the four.
        call: String,
        /// What the bridge said.
        ack: RelayAck,
    },
    /// Answer to `mcp_list_tools` and `mcp_call_tool` (the call's name).
    Mcp {
        /// Which of the two.
        call: String,
        /// What the bridge (or the agent's record) said.
        reply: McpReply,
    },
    /// Answer to `mcp_validate`.
    McpValidated(McpValidation),
    /// A result of a call this build does not know.
    Unknown {
        /// The call name.
        name: String,
        /// The result as sent.
        result: serde_json::Value,
    },
}

/// Result of `ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Pong {
    /// The agent's software version.
    #[serde(default)]
    pub software_version: String,
}

/// Result of `echo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EchoReply {
    /// Bytes echoed.
    pub bytes: u64,
}

/// The final frame of a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawResponse", into = "RawResponse")]
pub enum Response {
    /// The call succeeded.
    Ok(Reply),
    /// The call failed as an RPC (a failed tool is a successful `execute`
    /// whose [`ToolResult::is_error`] is set).
    Err(CallError),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RawResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    call: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<CallError>,
}

impl TryFrom<RawResponse> for Response {
    type Error = String;

    fn try_from(raw: RawResponse) -> Result<Self, String> {
        if let Some(error) = raw.error {
            return Ok(Response::Err(error));
        }
        let call = raw.call.ok_or("response has neither `error` nor `call`")?;
        let result = raw.result.unwrap_or(serde_json::Value::Null);
        fn res<T: serde::de::DeserializeOwned>(
            call: &str,
            v: serde_json::Value,
        ) -> Result<T, String> {
            serde_json::from_value(v).map_err(|e| format!("invalid result of call `{call}`: {e}"))
        }
        let v = || {
            if result.is_null() {
                serde_json::json!({})
            } else {
                result.clone()
            }
        };
        Ok(Response::Ok(match call.as_str() {
            "ping" => Reply::Pong(res(&call, v())?),
            "echo" => Reply::Echo(res(&call, v())?),
            "provision" => Reply::Provision(res(&call, result)?),
            "execute" => Reply::Execute(res(&call, result)?),
            "destroy" => Reply::Destroy,
            "list_sandboxes" => Reply::ListSandboxes(res(&call, result)?),
            "put_credential"
            | "forget_credential"
            | "put_session_token"
            | "forget_session_token" => Reply::Relay {
                ack: res(&call, v())?,
                call,
            },
            "mcp_list_tools" | "mcp_call_tool" => Reply::Mcp {
                reply: res(&call, result)?,
                call,
            },
            "mcp_validate" => Reply::McpValidated(res(&call, result)?),
            _ => Reply::Unknown { name: call, result },
        }))
    }
}

impl From<Response> for RawResponse {
    fn from(r: Response) -> Self {
        fn val<T: Serialize>(t: &T) -> serde_json::Value {
            // Plain data structs with string keys: serialization cannot fail.
            serde_json::to_value(t).unwrap_or(serde_json::Value::Null)
        }
        match r {
            Response::Err(e) => RawResponse {
                call: None,
                result: None,
                error: Some(e),
            },
            Response::Ok(reply) => {
                let (call, result) = match reply {
                    Reply::Pong(p) => ("ping".to_owned(), val(&p)),
                    Reply::Echo(e) => ("echo".to_owned(), val(&e)),
                    Reply::Provision(p) => ("provision".to_owned(), val(&p)),
                    Reply::Execute(t) => ("execute".to_owned(), val(&t)),
                    Reply::Destroy => ("destroy".to_owned(), serde_json::json!({})),
                    Reply::ListSandboxes(l) => ("list_sandboxes".to_owned(), val(&l)),
                    Reply::Relay { call, ack } => (call, val(&ack)),
                    Reply::Mcp { call, reply } => (call, val(&reply)),
                    Reply::McpValidated(v) => ("mcp_validate".to_owned(), val(&v)),
                    Reply::Unknown { name, result } => (name, result),
                };
                RawResponse {
                    call: Some(call),
                    result: Some(result),
                    error: None,
                }
            }
        }
    }
}

impl Response {
    /// Encode as a control frame.
    pub fn to_frame(&self) -> Result<Frame, FrameError> {
        Frame::control(self)
    }

    /// Decode from a frame.
    pub fn from_frame(frame: &Frame) -> Result<Self, FrameError> {
        frame.parse_control()
    }

    /// Shorthand for an error response.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Err(CallError::new(code, message))
    }
}

/// A call that failed as an RPC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CallError {
    /// Machine-readable class.
    pub code: ErrorCode,
    /// Human-readable message naming what failed.
    pub message: String,
    /// For `policy_denied`: the policy rule that refused the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

impl CallError {
    /// A call error without a rule.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            rule: None,
        }
    }
}

code_enum! {
    /// Class of a [`CallError`].
    ErrorCode {
        /// The agent does not implement this call (caller should not retry it here).
        UnsupportedCall => "unsupported_call",
        /// The request is malformed (caller misused the API).
        BadRequest => "bad_request",
        /// A frame on the call's stream could not be decoded (peer misbehaved).
        BadFrame => "bad_frame",
        /// The agent's local policy refused the request.
        PolicyDenied => "policy_denied",
        /// No sandbox with that id.
        UnknownSandbox => "unknown_sandbox",
        /// Transient: retry later (engine unreachable, capacity, no agent connected).
        Unavailable => "unavailable",
        /// The peer is draining and takes no new calls.
        ShuttingDown => "shutting_down",
        /// The request is not allowed for this peer (e.g. renewal for another id).
        Forbidden => "forbidden",
        /// A bug or unexpected fault on the answering side.
        Internal => "internal",
    }
}

impl From<SandboxCallError> for CallError {
    fn from(e: SandboxCallError) -> Self {
        let code = match e.code {
            SandboxErrorCode::PolicyDenied => ErrorCode::PolicyDenied,
            SandboxErrorCode::UnknownSandbox => ErrorCode::UnknownSandbox,
            SandboxErrorCode::BadRequest => ErrorCode::BadRequest,
            SandboxErrorCode::Unavailable => ErrorCode::Unavailable,
            SandboxErrorCode::Internal | SandboxErrorCode::Unknown => ErrorCode::Internal,
        };
        CallError {
            code,
            message: e.message,
            rule: e.rule,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn request_round_trip() {
        for r in [
            Request::Ping,
            Request::Echo,
            Request::ListSandboxes,
            Request::Destroy(DestroyRequest {
                sandbox_id: "sbx_1".into(),
            }),
            Request::Provision(ProvisionRequest::default()),
            Request::PutCredential(crate::relay::PutCredential {
                vault_id: "vlt_1".into(),
                credential_id: "vcrd_1".into(),
                fields: [("token".to_owned(), crate::relay::WireSecret::new("s"))].into(),
            }),
            Request::ForgetCredential(ForgetCredential {
                vault_id: "vlt_1".into(),
                credential_id: "vcrd_1".into(),
                reason: crate::relay::ForgetReason::Archived,
            }),
            Request::PutSessionToken(PutSessionToken {
                session_id: "sesn_1".into(),
                resource_id: "sesrsc_1".into(),
                url: "https://git.example.com/a.git".into(),
                token: crate::relay::WireSecret::new("t"),
            }),
            Request::ForgetSessionToken(ForgetSessionToken {
                session_id: "sesn_1".into(),
                resource_id: None,
            }),
        ] {
            let f = r.to_frame().unwrap();
            assert_eq!(Request::from_frame(&f).unwrap(), r);
        }
    }

    #[test]
    fn a_request_carrying_a_secret_never_debugs_it() {
        let r = Request::PutSessionToken(PutSessionToken {
            session_id: "sesn_1".into(),
            resource_id: "sesrsc_1".into(),
            url: "https://git.example.com/a.git".into(),
            token: crate::relay::WireSecret::new("canary-42"),
        });
        assert!(!format!("{r:?}").contains("canary"));
    }

    #[test]
    fn mcp_calls_and_replies_round_trip() {
        use crate::mcp::{McpCallTool, McpOutcome, McpReply, McpServer};
        let r = Request::McpCallTool(McpCallTool {
            session_id: "sesn_1".into(),
            tool_use_id: "mcptoolu_1".into(),
            server: McpServer {
                name: "tickets".into(),
                url: "https://mcp.internal/mcp".into(),
            },
            credentials: vec![],
            tool: "search".into(),
            arguments: serde_json::json!({"q": "outage"}),
        });
        let f = r.to_frame().unwrap();
        let Frame::Control(body) = &f else {
            panic!("not a control frame")
        };
        assert!(String::from_utf8_lossy(body).contains(r#""call":"mcp_call_tool""#));
        assert_eq!(Request::from_frame(&f).unwrap(), r);
        let resp = Response::Ok(Reply::Mcp {
            call: "mcp_call_tool".into(),
            reply: McpReply {
                outcome: McpOutcome::Called {
                    content: vec![serde_json::json!({"type": "text", "text": "3 tickets"})],
                    is_error: false,
                },
                credential_id: None,
                replayed: true,
                tools_changed: false,
            },
        });
        let f = resp.to_frame().unwrap();
        assert_eq!(Response::from_frame(&f).unwrap(), resp);
    }

    #[test]
    fn unknown_call_decodes() {
        let f = Frame::Control(Bytes::from_static(
            br#"{"call":"teleport","args":{"to":"mars"}}"#,
        ));
        assert_eq!(
            Request::from_frame(&f).unwrap(),
            Request::Unknown {
                name: "teleport".into()
            }
        );
    }

    #[test]
    fn bad_args_is_typed_error_naming_call() {
        let f = Frame::Control(Bytes::from_static(
            br#"{"call":"destroy","args":{"nope":1}}"#,
        ));
        let e = Request::from_frame(&f).unwrap_err();
        assert!(e.to_string().contains("destroy"), "{e}");
    }

    #[test]
    fn response_round_trip() {
        for r in [
            Response::Ok(Reply::Pong(Pong {
                software_version: "1".into(),
            })),
            Response::Ok(Reply::Echo(EchoReply { bytes: 9 })),
            Response::Ok(Reply::Destroy),
            Response::Ok(Reply::ListSandboxes(vec![])),
            Response::Ok(Reply::Relay {
                call: "forget_session_token".into(),
                ack: RelayAck { held: true },
            }),
            Response::error(ErrorCode::UnsupportedCall, "no teleport"),
            Response::Err(CallError::new(ErrorCode::Unknown("x_y".into()), "m")),
        ] {
            let f = r.to_frame().unwrap();
            assert_eq!(Response::from_frame(&f).unwrap(), r);
        }
        let u = Response::from_frame(&Frame::Control(Bytes::from_static(
            br#"{"call":"teleport","result":{"ok":true}}"#,
        )))
        .unwrap();
        assert!(matches!(u, Response::Ok(Reply::Unknown { name, .. }) if name == "teleport"));
        let e = Response::from_frame(&Frame::Control(Bytes::from_static(
            br#"{"error":{"code":"brand_new","message":"m"}}"#,
        )))
        .unwrap();
        assert!(
            matches!(e, Response::Err(CallError { code: ErrorCode::Unknown(c), .. }) if c == "brand_new")
        );
    }
}
