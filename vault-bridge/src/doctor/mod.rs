//! `vault-bridge doctor`: check what this bridge needs to work (its config,
//! its backend reachable and unsealed, its agent socket, upstream reachability)
//! and say what to fix.

/// Flags of `vault-bridge doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Run the checks and print the report; the exit code says the worst result.
pub fn run(args: &DoctorArgs, config: &crate::config::Config) -> std::process::ExitCode {
    let _ = (args, config);
    eprintln!("error: vault-bridge doctor is not built yet");
    std::process::ExitCode::FAILURE
}
