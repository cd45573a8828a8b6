//! The tunnel: one long-lived, agent-dialed connection (QUIC, or TLS over TCP
//! multiplexed with h2) on which the control plane opens one bidirectional
//! stream per call. Owns transports, hello, heartbeats, reconnect and drain;
//! does not own certificates (it takes rustls configurations and hands out
//! the verified peer certificate; see `pki`) or what a call does (the
//! embedding app implements [`CallHandler`]).
//!
//! - control plane: [`server::Listener`] accepts connections (UDP and TCP on
//!   one port number), [`server::PendingConnection`] is accepted or rejected
//!   after the hello, [`server::ServerConnection::call`] opens a call;
//! - agent: [`client::spawn`] dials and redials, serves calls with a
//!   [`CallHandler`], renews over the live link ([`client::ClientHandle::renew`]);
//! - plain state machines tested with a virtual clock: [`heartbeat`],
//!   [`backoff`], [`select`].
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod backoff;
pub mod call;
pub mod client;
mod control;
pub mod error;
pub mod heartbeat;
mod link;
pub mod proxy;
pub mod select;
pub mod server;
pub mod stream;
pub mod tuning;

pub use call::{Call, CallEvent, CallHandler, CallIo};
pub use client::{ClientHandle, ClientSettings, ClientStatus};
pub use control::RenewFn;
pub use error::{CallFailure, CloseReason, ConnectError, ListenError, StreamError};
pub use select::{Transport, TransportMode};
pub use server::{Listener, PendingConnection, ServerConnection, ServerSettings};

/// ALPN protocol id of the tunnel, on both transports.
pub const ALPN: &[u8] = b"airlock/1";
