//! The arguments of `sandbox-agent audit …` (clap) and the function that
//! runs one; `main.rs` only flattens [`AuditCommand`] into its parser and
//! calls [`run`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::log::parse_time;
use super::ship::{self, ShipOptions, ShipSettings};
use super::show::{self, ExportFormat, Format};
use super::{exit_code, ocsf, verify, AuditCmdError};
use crate::audit::Filter;
use crate::config::Config;

/// `sandbox-agent audit …`.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Verify the audit log: chain, seq, hashes, checkpoint signatures and,
    /// with --checkpoints, the control plane's checkpoints (truncation,
    /// rollback). Exit 0 when intact; 3 when broken or a signature is bad;
    /// 4 when truncated, rolled back or replaced; 1 when it cannot be read.
    Verify(VerifyArgs),
    /// Print the base64 public key of the checkpoint signing key (made when absent).
    PublicKey(DirArgs),
    /// Print the selected records, oldest first.
    Show(ShowArgs),
    /// Print the last records, and with -f the new ones as they are written.
    Tail(TailArgs),
    /// Export the selected records as JSON lines or OCSF 1.3 events.
    Export(ExportArgs),
    /// Ship the log to the [audit.syslog] receiver (RFC 5424 over TLS),
    /// resuming from the cursor in the audit dir.
    Ship(ShipArgs),
}

/// Where the audit dir is.
#[derive(Debug, Clone, clap::Args)]
pub struct DirArgs {
    /// The audit dir (default: `[audit] dir` of --config, else its data_dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `audit verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// The control plane's checkpoints of this agent (`control-plane audit
    /// checkpoints --agent <id>` JSON lines, or the API's JSON).
    #[arg(long)]
    checkpoints: Option<PathBuf>,
    /// The trusted public key (base64, `audit public-key`); default: the
    /// local signing key's.
    #[arg(long)]
    public_key: Option<String>,
}

/// Record filters (all given must hold).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Only this session (`sesn_…`).
    #[arg(long)]
    session: Option<String>,
    /// Only this sandbox (`sbx_…`).
    #[arg(long)]
    sandbox: Option<String>,
    /// Only this tool (bash, read, …, or an MCP tool name).
    #[arg(long)]
    tool: Option<String>,
    /// Only this outcome (ok, tool_error, refused, error, started, …).
    #[arg(long)]
    outcome: Option<String>,
    /// Only this call (execute, provision, mcp_call_tool, credential_use, checkpoint, …).
    #[arg(long)]
    call: Option<String>,
    /// Only records written at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Only records written at or before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
}

impl FilterArgs {
    /// The filter, or a usage error naming the flag.
    pub fn filter(&self) -> Result<Filter, AuditCmdError> {
        Ok(Filter {
            session: self.session.clone(),
            sandbox: self.sandbox.clone(),
            tool: self.tool.clone(),
            outcome: self.outcome.clone(),
            call: self.call.clone(),
            since: self
                .since
                .as_deref()
                .map(|v| parse_time("since", v))
                .transpose()?,
            until: self
                .until
                .as_deref()
                .map(|v| parse_time("until", v))
                .transpose()?,
        })
    }
}

/// `audit show`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    dir: DirArgs,
    #[command(flatten)]
    filter: FilterArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

/// `audit tail`.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    dir: DirArgs,
    #[command(flatten)]
    filter: FilterArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// How many of the last selected records to print first.
    #[arg(short = 'n', long = "lines", default_value_t = 10)]
    lines: usize,
    /// Keep printing new records as they are written (across rotation).
    #[arg(short = 'f', long)]
    follow: bool,
}

/// `audit export`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    dir: DirArgs,
    #[command(flatten)]
    filter: FilterArgs,
    /// `jsonl` (the raw lines) or `ocsf` (OCSF 1.3 events, one per line).
    #[arg(long, value_enum, default_value = "jsonl")]
    format: ExportFormat,
}

/// `audit ship`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShipArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// Ship what is in the log now, then exit (non-zero when the receiver
    /// cannot be reached).
    #[arg(long)]
    once: bool,
    /// Stop after the batch in flight when standard input closes (how
    /// `sandbox-agent run` runs its shipper child).
    #[arg(long, hide = true)]
    until_stdin_closes: bool,
    /// Records per batch (the cursor is written after each batch).
    #[arg(long, env = "AIRLOCK_AUDIT_SHIP_BATCH_RECORDS", default_value_t = ship::DEFAULT_BATCH_RECORDS)]
    batch_records: usize,
}

/// The audit dir: `--dir`, else the config's `[audit] dir`.
fn audit_dir(dir: &DirArgs, config: &Config) -> PathBuf {
    dir.dir.clone().unwrap_or_else(|| config.audit.dir.clone())
}

fn identity_dir(config: &Config) -> &Path {
    &config.identity.dir
}

/// Run one audit command; its exit code.
pub fn run(command: AuditCommand, config: &Config) -> ExitCode {
    let result = match command {
        AuditCommand::Verify(a) => {
            let dir = audit_dir(&a.dir, config);
            verify::verify(&dir, a.checkpoints.as_deref(), a.public_key).map(|(report, key)| {
                println!("{}", verify::summary(&dir, &report, key.as_deref()));
            })
        }
        AuditCommand::PublicKey(d) => {
            verify::public_key(&audit_dir(&d, config)).map(|k| println!("{k}"))
        }
        AuditCommand::Show(a) => a.filter.filter().and_then(|f| {
            show::show(
                &audit_dir(&a.dir, config),
                &f,
                a.format,
                &mut std::io::stdout().lock(),
            )
        }),
        AuditCommand::Tail(a) => a.filter.filter().and_then(|f| {
            show::tail(
                &audit_dir(&a.dir, config),
                &f,
                a.format,
                a.lines,
                a.follow,
                &mut std::io::stdout().lock(),
            )
        }),
        AuditCommand::Export(a) => a.filter.filter().and_then(|f| {
            let source = ocsf::Source::detect(identity_dir(config));
            show::export(
                &audit_dir(&a.dir, config),
                &f,
                a.format,
                &source,
                &mut std::io::stdout().lock(),
            )
        }),
        AuditCommand::Ship(a) => ship_command(&a, config),
    };
    if let Err(error) = &result {
        if !matches!(error, AuditCmdError::StdoutClosed) {
            eprintln!("error: {error}");
        }
    }
    ExitCode::from(exit_code(&result))
}

fn ship_command(a: &ShipArgs, config: &Config) -> Result<(), AuditCmdError> {
    let settings = ShipSettings::from_config(config.audit.syslog.as_ref())?;
    let dir = audit_dir(&a.dir, config);
    let opts = ShipOptions {
        once: a.once,
        until_stdin_closes: a.until_stdin_closes,
        batch_records: a.batch_records,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| AuditCmdError::Io {
            path: PathBuf::from("<tokio runtime>"),
            source,
        })?;
    let report = runtime.block_on(ship::run(&dir, &settings, &opts))?;
    if a.once {
        println!(
            "shipped {} record(s); cursor at seq {}",
            report.shipped, report.cursor_seq
        );
    }
    Ok(())
}
