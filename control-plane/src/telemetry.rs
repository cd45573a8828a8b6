//! Tracing set-up shared by every subcommand: human-readable by default, JSON
//! lines behind `--log-format json`, filtered by `RUST_LOG` (default `info`).
//! The same for both daemons: see the `daemon` crate.

pub use daemon::telemetry::{init, LogFormat};
