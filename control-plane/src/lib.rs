//! The control plane: holds the durable session log, runs the stateless
//! harness, serves the public API, and accepts the dialed-out connections of
//! sandbox-agents (the gateway). It owns no customer credentials.
//!
//! `main.rs` only parses arguments and config, initialises tracing and calls
//! into this library.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod console;
pub mod egress_credentials;
pub mod enroll;
pub mod gateway;
pub mod hands;
pub mod ops;
pub mod relay;
pub mod rfc3339;
pub mod runtime;
