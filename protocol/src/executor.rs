//! Messages between the sandbox-agent and the in-sandbox executor, carried
//! over the executor's attached stdin/stdout with the [`crate::frame`] codec.
//!
//! Every message is one control frame (JSON, below) optionally followed by a
//! body of `*_bytes` bytes carried in data frames (split at the codec's
//! [`FrameCodec::max_data_chunk`](crate::frame::FrameCodec::max_data_chunk)).
//! A sender writes a message's control frame and all of its data frames
//! without interleaving another message, so a receiver reads a header, then
//! exactly the announced body bytes. Bodies carry bulk (tool input JSON,
//! streamed output, result content JSON) so a 1 MiB file never has to fit one
//! frame.
//!
//! ```text
//! agent -> executor:  Call{id, name, input_bytes} [data...]   Configure{..}  Ping{..}  Shutdown
//! executor -> agent:  Ready{version, pid}   Output{id, bytes} [data...]
//!                     Result{id, is_error, content_bytes} [data...]
//!                     Configured{error}  Pong{..}  Fatal{message}
//! ```
//!
//! The executor writes `Ready` first. Calls may overlap; `bash` calls of one
//! sandbox run one at a time (one persistent shell), file tools in parallel.
//! If the executor cannot decode its input it writes `Fatal` and exits: the
//! stream is then in an unknown state, and the sandbox is cattle.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of this message set; the executor announces it in `Ready`.
pub const EXECUTOR_PROTOCOL_VERSION: u32 = 1;

/// A message the agent sends to the executor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToExecutor {
    /// Run one tool call. The tool input (JSON) follows as `input_bytes`
    /// bytes of data frames.
    Call {
        /// Agent-chosen call id, echoed in `Output`/`Result`.
        id: u64,
        /// Tool name (`bash`, `read`, `write`, `edit`, `glob`, `grep`).
        name: String,
        /// Length of the JSON input body that follows.
        input_bytes: u64,
    },
    /// Apply per-sandbox settings chosen at hand-out (a warm-pool container
    /// learns its environment and working directory here). Restarts the shell.
    Configure {
        /// Non-secret environment for the shell (added to the container's).
        env: BTreeMap<String, String>,
        /// Working directory for the shell and relative file paths.
        workdir: Option<String>,
    },
    /// Liveness probe.
    Ping {
        /// Echoed in `Pong`.
        nonce: u64,
    },
    /// Stop the shell and exit cleanly.
    Shutdown,
}

/// A message the executor sends to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromExecutor {
    /// First message: the executor is up and serving.
    Ready {
        /// [`EXECUTOR_PROTOCOL_VERSION`] of the executor.
        version: u32,
        /// The executor's pid inside the container.
        pid: u32,
    },
    /// Streamed output of a running call (bash); `bytes` bytes of raw output
    /// (ANSI already stripped) follow in data frames.
    Output {
        /// Call id.
        id: u64,
        /// Length of the output chunk that follows.
        bytes: u64,
    },
    /// Final result of a call; its `content` (a JSON array of content blocks)
    /// follows as `content_bytes` bytes of data frames.
    Result {
        /// Call id.
        id: u64,
        /// True when the tool failed.
        is_error: bool,
        /// Length of the JSON content body that follows.
        content_bytes: u64,
        /// The command's exit status (`bash` only, when the command ran to
        /// its end; absent on a timeout, a dead shell or a file tool). Absent
        /// from older executors: decoding defaults it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
    },
    /// Answer to `Configure`.
    Configured {
        /// Why the settings could not be applied, if they could not.
        error: Option<String>,
    },
    /// Answer to `Ping`.
    Pong {
        /// The nonce of the `Ping`.
        nonce: u64,
    },
    /// The executor cannot go on (undecodable input); it exits after this.
    Fatal {
        /// What went wrong.
        message: String,
    },
}

/// Settings the agent passes to the executor on its command line
/// (`--settings <json>`), so one binary serves every configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorSettings {
    /// Working directory of the shell; relative file paths resolve against it.
    pub workdir: String,
    /// Shell for `bash` (the published toolset requires `/bin/bash`).
    pub shell_path: String,
    /// Bash output kept per call: the last this many bytes.
    pub bash_output_max_bytes: u64,
    /// Streamed bash output per call stops (with a marker) after this many bytes.
    pub bash_stream_max_bytes: u64,
    /// Timeout when the call gives none (or 0).
    pub bash_default_timeout_ms: u64,
    /// Largest timeout a call may ask for.
    pub bash_max_timeout_ms: u64,
    /// Grace between SIGTERM and SIGKILL of a timed-out command's process group.
    pub kill_grace_ms: u64,
    /// Largest file `read` and `edit` accept (text).
    pub file_max_bytes: u64,
    /// Largest image `read` returns as an image block.
    pub image_max_bytes: u64,
    /// Most paths `glob` returns.
    pub glob_max_results: u64,
    /// Most output bytes `grep` returns.
    pub grep_max_bytes: u64,
    /// Longest line `grep` prints (longer lines are cut with a marker).
    pub grep_max_line_chars: u64,
    /// Frame cap of the stdio protocol.
    pub max_frame_bytes: u64,
    /// The sandbox's egress socket (a Unix socket of the vault-bridge mounted
    /// into the container, e.g. `/run/airlock/egress.sock`). When set, the
    /// executor listens on `127.0.0.1:3128` and forwards each connection to
    /// it (the sandbox's `HTTPS_PROXY`). Absent: no forwarder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_socket: Option<String>,
}

impl Default for ExecutorSettings {
    fn default() -> Self {
        Self {
            workdir: "/workspace".into(),
            shell_path: "/bin/bash".into(),
            bash_output_max_bytes: 100 * 1024,
            bash_stream_max_bytes: 1024 * 1024,
            bash_default_timeout_ms: 120_000,
            bash_max_timeout_ms: 600_000,
            kill_grace_ms: 500,
            file_max_bytes: 256 * 1024,
            image_max_bytes: 5 * 1024 * 1024,
            glob_max_results: 200,
            grep_max_bytes: 100 * 1024,
            grep_max_line_chars: 2000,
            max_frame_bytes: crate::frame::DEFAULT_MAX_FRAME_BYTES as u64,
            egress_socket: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_snake_case_tags() {
        let m = ToExecutor::Call {
            id: 7,
            name: "bash".into(),
            input_bytes: 12,
        };
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(
            s,
            r#"{"type":"call","id":7,"name":"bash","input_bytes":12}"#
        );
        assert_eq!(serde_json::from_str::<ToExecutor>(&s).unwrap(), m);
        let r = FromExecutor::Result {
            id: 7,
            is_error: true,
            content_bytes: 3,
            exit_code: Some(2),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<FromExecutor>(&s).unwrap(), r);
        // An older executor sends no exit_code; an older agent ignores it.
        let old: FromExecutor =
            serde_json::from_str(r#"{"type":"result","id":7,"is_error":false,"content_bytes":3}"#)
                .unwrap();
        assert!(matches!(
            old,
            FromExecutor::Result {
                exit_code: None,
                ..
            }
        ));
        let none = FromExecutor::Result {
            id: 1,
            is_error: false,
            content_bytes: 0,
            exit_code: None,
        };
        assert!(!serde_json::to_string(&none).unwrap().contains("exit_code"));
    }

    #[test]
    fn settings_reject_unknown_keys_and_default_missing_ones() {
        let s: ExecutorSettings = serde_json::from_str(r#"{"workdir":"/w"}"#).unwrap();
        assert_eq!(s.workdir, "/w");
        assert_eq!(s.bash_output_max_bytes, 100 * 1024);
        assert!(serde_json::from_str::<ExecutorSettings>(r#"{"nope":1}"#).is_err());
        assert_eq!(s.egress_socket, None);
        assert!(!serde_json::to_string(&s).unwrap().contains("egress_socket"));
        let e: ExecutorSettings =
            serde_json::from_str(r#"{"egress_socket":"/run/airlock/egress.sock"}"#).unwrap();
        assert_eq!(e.egress_socket.as_deref(), Some("/run/airlock/egress.sock"));
    }
}
