//! The in-sandbox executor: a static binary, bind-mounted read-only into each
//! sandbox and started once as its main process. It serves the
//! `agent_toolset_20260401` tools (`bash` with one persistent shell, `read`,
//! `write`, `edit`, `glob`, `grep`) over framed messages on its stdin/stdout
//! ([`protocol::executor`]), so no tool call needs a `docker exec`.
//!
//! It owns what runs inside the sandbox; it does not own policy, the
//! execution record or the container's lifecycle (the sandbox-agent does).
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod ansi;
pub mod egress;
pub mod server;
pub mod shell;
pub mod tools;
