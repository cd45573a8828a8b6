//! Wire types shared by the control plane, the sandbox-agent and the in-sandbox
//! executor: frame encoding with a hard size cap, the versioned hello, and the
//! request/response messages of every tunnel call.
//!
//! This crate owns bytes-on-the-wire and nothing else: no sockets, no TLS, no
//! async runtime. Decoders never panic; every failure is a typed error.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

#[macro_use]
mod codes;
pub mod audit;
pub mod bridge;
pub mod call;
pub mod control;
pub mod executor;
pub mod frame;
pub mod hello;
pub mod mcp;
pub mod relay;
pub mod sandbox;

pub use call::{CallError, ErrorCode, Reply, Request, Response};
pub use control::ControlMessage;
pub use frame::{Frame, FrameCodec, FrameError};
pub use hello::{Hello, HelloAnswer, RejectCode};
