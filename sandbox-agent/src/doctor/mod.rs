//! `sandbox-agent doctor`: check, one by one, what this agent needs to work
//! (network paths to the control plane, TLS, clock, certificates, Docker, the
//! sandbox image, the executor, disk, the vault-bridge) and say what to fix.

/// Flags of `sandbox-agent doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Run the checks and print the report; the exit code says the worst result.
pub fn run(args: &DoctorArgs, config: &crate::config::Config) -> std::process::ExitCode {
    let _ = (args, config);
    eprintln!("error: sandbox-agent doctor is not built yet");
    std::process::ExitCode::FAILURE
}
