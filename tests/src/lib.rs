//! Support for Airlock's end-to-end tests: locating and spawning the real
//! binaries, temporary deployments, and fakes of the external systems that
//! cannot run here (the model API).
#![forbid(unsafe_code)]

pub mod api_stack;
pub mod bench_client;
pub mod bridge;
pub mod deploy;
pub mod doctor_support;
pub mod egress;
pub mod fake_model;
pub mod git_server;
pub mod link_cutter;
pub mod mcp;
pub mod relay;
pub mod replicas;
pub mod sandbox;
pub mod tinyproxy;
