//! `sandbox-agent`: parse arguments, load config, initialise tracing, run.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sandbox_agent::config::Config;

/// Exit code for configuration errors.
const EXIT_CONFIG: u8 = daemon::EXIT_CONFIG;
/// Exit code of `run` when the control plane refused this agent as revoked
/// (sysexits' EX_NOPERM). The systemd unit does not restart on it
/// (`RestartPreventExitStatus=77`); re-enroll with a new join token.
const EXIT_REVOKED: u8 = 77;

#[derive(Debug, Parser)]
#[command(name = "sandbox-agent", version, about = "Airlock sandbox-agent")]
struct Cli {
    #[command(flatten)]
    global: daemon::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the config file and exit.
    CheckConfig,
    /// Enroll with the control plane: make a key here, get a certificate.
    Enroll(EnrollFlags),
    /// Run the agent: dial the control plane and serve its calls until SIGTERM.
    Run,
    /// The audit log: verify, public-key, show, tail, export, ship.
    Audit {
        #[command(subcommand)]
        command: sandbox_agent::audit_cmd::cli::AuditCommand,
    },
    /// Check what this agent needs (network, TLS, clock, certificates, Docker, image, bridge) and say what to fix.
    Doctor(sandbox_agent::doctor::DoctorArgs),
}

#[derive(Debug, clap::Args)]
struct EnrollFlags {
    /// Join string printed by `control-plane tokens create` (token, address and CA fingerprint in one).
    #[arg(long, env = "AIRLOCK_JOIN")]
    join: Option<String>,
    /// Join token (instead of, or overriding, the one in --join).
    #[arg(long, env = "AIRLOCK_JOIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Enrollment address, host:port.
    #[arg(long)]
    enroll_address: Option<String>,
    /// CA fingerprint to pin, sha256:<hex> (`control-plane ca fingerprint`).
    #[arg(long)]
    ca_fingerprint: Option<String>,
    /// Tunnel address, host:port (default: from the join string, or the enroll host on port 7443).
    #[arg(long)]
    tunnel_address: Option<String>,
    /// Name the control plane's certificate must carry (default: the host of the address).
    #[arg(long)]
    server_name: Option<String>,
    /// Replace an existing identity.
    #[arg(long)]
    force: bool,
    /// Give up after this long.
    #[arg(long, default_value_t = 30)]
    timeout_seconds: u64,
}

fn enroll(config: &Config, flags: EnrollFlags) -> ExitCode {
    use sandbox_agent::identity::enroll as e;
    let args = e::EnrollArgs {
        join: flags.join,
        token: flags.token,
        enroll_address: flags.enroll_address,
        ca_fingerprint: flags.ca_fingerprint,
        tunnel_address: flags.tunnel_address,
        server_name: flags.server_name,
        force: flags.force,
        timeout_seconds: flags.timeout_seconds,
    };
    let opts = match e::resolve(args, config) {
        Ok(o) => o,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let dir = opts.files.dir().to_owned();
    daemon::run_command(async {
        let (record, not_after) = e::enroll(opts).await?;
        let expires = not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        println!("agent_id={}", record.agent_id);
        println!("environment_id={}", record.environment_id);
        println!("cert_not_after_unix={expires}");
        println!("identity_dir={}", dir.display());
        tracing::info!(agent_id = %record.agent_id, environment_id = %record.environment_id, "enrolled");
        Ok::<(), e::EnrollClientError>(())
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config: Config = match cli.global.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command {
        Command::CheckConfig => daemon::config_ok(&config),
        Command::Enroll(flags) => enroll(&config, flags),
        Command::Run => run(config, &cli.global),
        Command::Audit { command } => sandbox_agent::audit_cmd::cli::run(command, &config),
        Command::Doctor(args) => sandbox_agent::doctor::run(&args, &config),
    }
}

/// `run`: the long-running daemon on a single-threaded runtime. The agent's
/// work is I/O (the tunnel, Docker's API, executor pipes); blocking work
/// (key generation, identity files) goes to the blocking pool. One thread
/// keeps a call's hops (QUIC driver, stream, handler) on one core: on
/// `bench-tunnel` this cut the QUIC echo p50 from 0.103 to 0.075 ms against a
/// two-worker runtime, and the agent idles at a few MiB.
///
/// With `[audit.syslog]`, the audit shipper runs as a child process
/// (`audit ship`, see `sandbox_agent::audit_cmd::child`) that outlives a
/// killed agent just long enough to finish its batch.
fn run(config: Config, global: &daemon::GlobalArgs) -> ExitCode {
    use sandbox_agent::audit_cmd::child;
    let shipper = if child::wanted(&config) {
        let spec = child::ChildSpec {
            config: global.config.clone(),
            global_args: log_format_args(global),
        };
        match child::ShipperChild::start(spec) {
            Ok(c) => Some(c),
            Err(error) => {
                tracing::error!(%error, "audit shipper child could not be started");
                None
            }
        }
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(8)
        .enable_all()
        .build();
    let code = daemon::block_on(runtime, async move {
        exit_code(sandbox_agent::connect::run(config).await)
    });
    if let Some(shipper) = shipper {
        shipper.stop(SHIPPER_STOP_DEADLINE);
    }
    code
}

/// How long `run` waits at exit for its shipper child to drain (its drain
/// stops after 10 s; the agent unit's TimeoutStopSec is 30 s).
const SHIPPER_STOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(12);

/// `--log-format <the agent's>` for a child of this binary.
fn log_format_args(global: &daemon::GlobalArgs) -> Vec<String> {
    use clap::ValueEnum as _;
    global
        .log_format
        .to_possible_value()
        .map(|v| vec!["--log-format".to_owned(), v.get_name().to_owned()])
        .unwrap_or_default()
}

/// How `run` ended, as its exit code.
fn exit_code(result: Result<(), sandbox_agent::connect::RunError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // One error line (the log goes to stderr) naming the agent and what to do.
        Err(error @ sandbox_agent::connect::RunError::Revoked { .. }) => {
            tracing::error!(%error, exit_code = EXIT_REVOKED, "sandbox-agent run stopped: agent revoked");
            ExitCode::from(EXIT_REVOKED)
        }
        Err(error) => {
            tracing::error!(%error, "sandbox-agent run failed");
            eprintln!("error: {error}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
