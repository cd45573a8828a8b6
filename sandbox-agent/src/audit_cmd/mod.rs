//! The `sandbox-agent audit …` commands, offline tools over the agent's audit
//! dir: `verify` (chain, signed checkpoints and the control plane's
//! checkpoint export), `public-key`, `show`/`tail` with filters, `export`
//! (JSON lines or OCSF 1.3 events, see [`ocsf`]) and `ship` (RFC 5424 over
//! TLS to a syslog receiver, resuming from a cursor, see [`ship`]).
//!
//! The binary only parses arguments ([`cli`]) and maps results to exit codes
//! ([`exit_code`]); the work is here. Records are read through [`log`],
//! which follows rotated segments and the live file.

pub mod child;
pub mod cli;
pub mod cursor;
pub mod log;
pub mod ocsf;
pub mod ship;
pub mod show;
pub mod verify;

use std::path::PathBuf;

/// Exit code of a command that failed to run (I/O, a bad file).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of bad arguments (as clap's).
pub const EXIT_USAGE: u8 = 2;
/// Exit code of `ship` when `[audit.syslog]` is missing, disabled or names
/// unusable TLS files (as a config error: the ship unit does not restart).
pub const EXIT_CONFIG: u8 = daemon::EXIT_CONFIG;
/// Exit code of `verify` when the log is not intact: a broken chain, a bad
/// hash or seq, a checkpoint whose signature does not verify.
pub const EXIT_TAMPERED: u8 = 3;
/// Exit code of `verify --checkpoints` when the log does not match what the
/// control plane holds: truncated, rolled back or replaced.
pub const EXIT_CHECKPOINT_MISMATCH: u8 = 4;

/// A failure of an audit command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditCmdError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not an audit record.
    #[error("{path}:{line}: not an audit record: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// Why.
        reason: String,
    },
    /// Records are missing between two seqs (or before the first one read).
    #[error("{path}:{line}: seq {found} where {expected} was expected: records are missing")]
    Gap {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The seq that should have come.
        expected: u64,
        /// The seq that came.
        found: u64,
    },
    /// A flag's value is not usable.
    #[error("--{flag} {value:?}: {reason}")]
    Usage {
        /// The flag (without dashes).
        flag: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The audit log could not be read.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// The audit signing key could not be loaded.
    #[error(transparent)]
    Key(#[from] pki::audit_key::AuditKeyError),
    /// The shipper failed (see [`ship::ShipError`]).
    #[error(transparent)]
    Ship(#[from] ship::ShipError),
    /// `verify` found the log not intact or not matching the checkpoints.
    #[error(transparent)]
    Verify(#[from] verify::VerifyFailure),
    /// Standard output closed (e.g. piped into `head`).
    #[error("standard output closed")]
    StdoutClosed,
}

/// The exit code for a command's result.
pub fn exit_code(result: &Result<(), AuditCmdError>) -> u8 {
    match result {
        Ok(()) | Err(AuditCmdError::StdoutClosed) => 0,
        Err(AuditCmdError::Usage { .. }) => EXIT_USAGE,
        Err(AuditCmdError::Verify(f)) => f.exit_code(),
        Err(AuditCmdError::Ship(
            ship::ShipError::NotConfigured
            | ship::ShipError::TlsFile { .. }
            | ship::ShipError::ServerName(_),
        )) => EXIT_CONFIG,
        Err(_) => EXIT_FAILURE,
    }
}

/// Write `bytes` and a newline to standard output; a closed pipe is
/// [`AuditCmdError::StdoutClosed`].
pub(crate) fn print_line(out: &mut impl std::io::Write, text: &str) -> Result<(), AuditCmdError> {
    let r = out
        .write_all(text.as_bytes())
        .and_then(|()| out.write_all(b"\n"));
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(AuditCmdError::StdoutClosed),
        Err(source) => Err(AuditCmdError::Io {
            path: PathBuf::from("<stdout>"),
            source,
        }),
    }
}
