//! `audit show`, `audit tail [-f]` and `audit export`: selected records as
//! JSON lines (the raw lines, byte for byte as hashed), a table for people,
//! or OCSF events.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::log::{LogReader, Record};
use super::{ocsf, print_line, AuditCmdError};
use crate::audit::Filter;

/// How records are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// The raw JSON lines (default).
    #[default]
    Json,
    /// A table with one row per record.
    Table,
}

/// What `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// The raw JSON lines.
    Jsonl,
    /// One OCSF 1.3 event (JSON) per line.
    Ocsf,
}

/// How often `tail -f` looks for new records.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// `show`: every selected record, oldest first.
pub fn show(
    dir: &Path,
    filter: &Filter,
    format: Format,
    out: &mut impl Write,
) -> Result<(), AuditCmdError> {
    let mut reader = LogReader::open(dir, 0, filter.clone());
    if format == Format::Table {
        print_line(out, &table_header())?;
    }
    while let Some(rec) = reader.next_record()? {
        print_record(&rec, format, out)?;
    }
    out.flush().map_err(|_| AuditCmdError::StdoutClosed)
}

/// `tail`: the last `n` selected records; with `follow`, then every new one
/// as it is written (across rotation) until the process is stopped.
pub fn tail(
    dir: &Path,
    filter: &Filter,
    format: Format,
    n: usize,
    follow: bool,
    out: &mut impl Write,
) -> Result<(), AuditCmdError> {
    let mut reader = LogReader::open(dir, 0, filter.clone());
    let mut last: VecDeque<Record> = VecDeque::with_capacity(n.min(4096));
    while let Some(rec) = reader.next_record()? {
        if n > 0 {
            if last.len() == n {
                last.pop_front();
            }
            last.push_back(rec);
        }
    }
    if format == Format::Table {
        print_line(out, &table_header())?;
    }
    for rec in &last {
        print_record(rec, format, out)?;
    }
    out.flush().map_err(|_| AuditCmdError::StdoutClosed)?;
    if !follow {
        return Ok(());
    }
    loop {
        let mut any = false;
        while let Some(rec) = reader.next_record()? {
            print_record(&rec, format, out)?;
            any = true;
        }
        if any {
            out.flush().map_err(|_| AuditCmdError::StdoutClosed)?;
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// `export`: every selected record as a raw line or an OCSF event.
pub fn export(
    dir: &Path,
    filter: &Filter,
    format: ExportFormat,
    source: &ocsf::Source,
    out: &mut impl Write,
) -> Result<(), AuditCmdError> {
    let mut reader = LogReader::open(dir, 0, filter.clone());
    let mut buf = std::io::BufWriter::new(out);
    while let Some(rec) = reader.next_record()? {
        match format {
            ExportFormat::Jsonl => print_line(&mut buf, &rec.raw)?,
            ExportFormat::Ocsf => print_line(&mut buf, &ocsf::event(&rec, source).to_string())?,
        }
    }
    buf.flush().map_err(|_| AuditCmdError::StdoutClosed)
}

fn print_record(rec: &Record, format: Format, out: &mut impl Write) -> Result<(), AuditCmdError> {
    match format {
        Format::Json => print_line(out, &rec.raw),
        Format::Table => print_line(out, &table_row(rec)),
    }
}

fn table_header() -> String {
    format!(
        "{:>8}  {:<27}  {:<15}  {:<5}  {:<10}  {:<10}  {:<22}  {:<22}  DETAIL",
        "SEQ", "AT", "CALL", "PHASE", "TOOL", "OUTCOME", "SESSION", "SANDBOX"
    )
}

/// What a person wants to see of the input: the command, the path, the
/// pattern, the MCP tool (truncated to one short line).
fn detail(rec: &Record) -> String {
    let input = rec.fields.get("input");
    let pick = |k: &str| input.and_then(|i| i.get(k)).and_then(|v| v.as_str());
    let mut d = pick("command")
        .or_else(|| pick("file_path"))
        .or_else(|| pick("pattern"))
        .map(str::to_owned)
        .or_else(|| {
            rec.fields
                .get("decision")
                .and_then(|d| d.get("reason"))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
        .or_else(|| rec.str("detail").map(str::to_owned))
        .or_else(|| {
            rec.fields.get("credential_use").map(|c| {
                format!(
                    "{} {}{}",
                    c.get("method").and_then(|v| v.as_str()).unwrap_or(""),
                    c.get("host").and_then(|v| v.as_str()).unwrap_or(""),
                    c.get("path").and_then(|v| v.as_str()).unwrap_or("")
                )
            })
        })
        .unwrap_or_default();
    if let Some(code) = rec.fields.get("exit_code").and_then(|v| v.as_i64()) {
        d = format!("exit={code} {d}");
    }
    let one_line: String = d
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() > 80 {
        let mut s: String = one_line.chars().take(79).collect();
        s.push('…');
        s
    } else {
        one_line
    }
}

fn table_row(rec: &Record) -> String {
    format!(
        "{:>8}  {:<27}  {:<15}  {:<5}  {:<10}  {:<10}  {:<22}  {:<22}  {}",
        rec.seq,
        rec.str("at").unwrap_or("-"),
        rec.call(),
        rec.str("phase").unwrap_or("-"),
        rec.tool().unwrap_or("-"),
        rec.outcome(),
        rec.str("session_id").unwrap_or("-"),
        rec.str("sandbox_id").unwrap_or("-"),
        detail(rec)
    )
}
