//! Write the seed corpus of the `frame_decoder` fuzz target (`fuzz/`): one
//! file per seed, each a valid frame sequence encoded by this crate, so the
//! corpus follows the wire format and is never committed.
//!
//! Run: `cargo run -q -p protocol --example fuzz_seeds -- <dir>` (`scripts/fuzz` does).

use std::error::Error;
use std::path::PathBuf;

use bytes::BytesMut;
use protocol::call::{CallError, EchoReply, ErrorCode, Pong, Reply, Request, Response};
use protocol::{ControlMessage, Frame, FrameCodec, Hello, HelloAnswer, RejectCode};

fn request(json: &str) -> Result<Request, Box<dyn Error>> {
    Ok(serde_json::from_str(json)?)
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: fuzz_seeds <corpus dir>")?,
    );
    std::fs::create_dir_all(&dir)?;
    let hello = Hello {
        min_version: protocol::hello::PROTOCOL_VERSION_MIN,
        max_version: protocol::hello::PROTOCOL_VERSION_MAX,
        agent_id: "agt_0123456789abcdef".into(),
        software_version: "0.1.0".into(),
        capabilities: vec!["echo".into(), "renew".into(), "sandbox".into()],
    };
    let seeds: Vec<(&str, Vec<Frame>)> = vec![
        ("hello", vec![Frame::control(&hello)?]),
        (
            "hello_accepted",
            vec![Frame::control(&HelloAnswer::Accepted {
                version: 1,
                heartbeat_interval_ms: 5000,
                max_frame_bytes: 1 << 20,
                software_version: "0.1.0".into(),
                server_time_unix_ms: None,
            })?],
        ),
        (
            "hello_accepted_v2",
            vec![Frame::control(&HelloAnswer::Accepted {
                version: 2,
                heartbeat_interval_ms: 5000,
                max_frame_bytes: 1 << 20,
                software_version: "0.1.0".into(),
                server_time_unix_ms: Some(1_767_225_600_000),
            })?],
        ),
        (
            "hello_rejected",
            vec![Frame::control(&HelloAnswer::Rejected {
                code: RejectCode::UnsupportedVersion,
                message: protocol::hello::unsupported_message((3, 4), (1, 2)),
                supported: Some((1, 2)),
            })?],
        ),
        (
            "control_stream",
            vec![
                Frame::control(&ControlMessage::Heartbeat { seq: 7 })?,
                Frame::control(&ControlMessage::GoAway {
                    reason: "migrate_to_quic".into(),
                    deadline_ms: 30_000,
                })?,
                Frame::control(&ControlMessage::RenewRequest {
                    id: 1,
                    csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nAA==\n-----END CERTIFICATE REQUEST-----\n".into(),
                })?,
                Frame::control(&ControlMessage::Renewed {
                    id: 1,
                    cert_chain_pem: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
                })?,
                Frame::control(&ControlMessage::RenewFailed {
                    id: 2,
                    error: CallError::new(ErrorCode::Forbidden, "revoked"),
                })?,
            ],
        ),
        (
            "echo_call",
            vec![
                Request::Echo.to_frame()?,
                Frame::data(&b"hello"[..]),
                Frame::data(vec![0u8; 300]),
                Response::Ok(Reply::Echo(EchoReply { bytes: 305 })).to_frame()?,
            ],
        ),
        (
            "ping_call",
            vec![
                Request::Ping.to_frame()?,
                Response::Ok(Reply::Pong(Pong {
                    software_version: "0.1.0".into(),
                }))
                .to_frame()?,
            ],
        ),
        (
            "provision",
            vec![request(
                r#"{"call":"provision","args":{"session_id":"ses_1","image":"python:3.12","cpu":1.5,"memory_bytes":536870912,"network":{"type":"named","name":"egress"},"env":{"A":"b"},"ttl_seconds":600,"labels":{"k":"v"}}}"#,
            )?
            .to_frame()?],
        ),
        (
            "execute",
            vec![
                request(
                    r#"{"call":"execute","args":{"sandbox_id":"sbx_1","tool_use_id":"toolu_1","name":"bash","input":{"command":"ls -la"},"stream":true}}"#,
                )?
                .to_frame()?,
                Frame::data(&b"total 0\n"[..]),
            ],
        ),
        (
            "destroy_list_unknown",
            vec![
                request(r#"{"call":"destroy","args":{"sandbox_id":"sbx_1"}}"#)?.to_frame()?,
                Request::ListSandboxes.to_frame()?,
                request(r#"{"call":"from_the_future","args":{"x":1}}"#)?.to_frame()?,
                Response::error(ErrorCode::UnsupportedCall, "not supported").to_frame()?,
            ],
        ),
    ];
    let codec = FrameCodec::new(protocol::frame::DEFAULT_MAX_FRAME_BYTES);
    for (name, frames) in &seeds {
        let mut buf = BytesMut::new();
        for frame in frames {
            codec.encode(frame, &mut buf)?;
        }
        std::fs::write(dir.join(format!("seed_{name}")), &buf)?;
    }
    println!("wrote {} seeds to {}", seeds.len(), dir.display());
    Ok(())
}
