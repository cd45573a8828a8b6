//! The sandbox-agent: a small daemon on a customer host. It dials OUT to the
//! control plane (mTLS over QUIC, TLS-over-TCP fallback, optionally through an
//! HTTP CONNECT proxy), serves `provision`/`execute` by running hardened Docker
//! containers, enforces a local policy and keeps its own audit record.
//!
//! It owns what happens on the customer host; it does not own sessions, the
//! model, or credentials for Git/MCP (those belong to vault-bridge).
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod audit;
pub mod audit_cmd;
pub mod config;
pub mod connect;
pub mod doctor;
pub mod identity;
pub mod mcp;
pub mod sandbox;
