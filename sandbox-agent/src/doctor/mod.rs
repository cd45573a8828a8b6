//! `sandbox-agent doctor`: check, one by one, what this agent needs to work
//! (network paths to the control plane, TLS, clock, certificates, Docker, the
//! sandbox image, the executor, disk, the vault-bridge) and say what to fix.
//!
//! Each check runs under its own deadline ([`daemon::doctor::timed`]) and
//! reuses the code the agent runs: the tunnel client for the QUIC and TCP
//! dials ([`network`]), the identity loader ([`identity`]), the sandbox
//! module's hardened container spec and executor client, and the bridge
//! client ([`host`]). A check whose prerequisite failed is skipped, naming
//! the failed check. The report type, its table, `--json` and exit codes
//! are [`daemon::doctor`]'s; see docs/doctor.md.

mod host;
mod identity;
mod network;

use std::process::ExitCode;

use daemon::doctor::{Check, Report};

/// Flags of `sandbox-agent doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 on warnings too (default: only failures).
    #[arg(long)]
    pub strict: bool,
    /// Warn when the certificate expires within this many days (or within
    /// the last third of its life, when that is shorter: renewal is overdue).
    #[arg(long, default_value_t = 7.0)]
    pub cert_warn_days: f64,
    /// Skip the executor check (it creates and removes a throwaway container).
    #[arg(long)]
    pub no_container: bool,
}

/// Run the checks and print the report; the exit code says the worst result
/// (0: no failure, 1: a failure; see docs/doctor.md).
pub fn run(args: &DoctorArgs, config: &crate::config::Config) -> ExitCode {
    daemon::doctor::run_checks(checks(args, config), args.json, env!("CARGO_PKG_VERSION"))
}

/// All checks, in order.
pub async fn checks(args: &DoctorArgs, config: &crate::config::Config) -> Report {
    let mut r = Report::new("sandbox-agent", args.strict);
    // A config that does not load never gets here: `main` exits 64 first.
    r.push(Check::pass(
        "config",
        format!(
            "valid (data_dir {}, transport {}{})",
            config.data_dir.display(),
            match config.tunnel.transport {
                tunnel::TransportMode::Auto => "auto",
                tunnel::TransportMode::QuicOnly => "quic",
                tunnel::TransportMode::TcpOnly => "tcp",
            },
            match &config.tunnel.proxy {
                Some(p) => format!(", proxy {p}"),
                None => String::new(),
            }
        ),
    ));
    let id = identity::load(config).await;
    r.push(id.check.clone());
    r.push(identity::certificate(&id, args.cert_warn_days));
    network::all(&mut r, config, &id).await;
    host::all(&mut r, config, args).await;
    r
}
