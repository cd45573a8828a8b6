//! What `sandbox-agent doctor` and `vault-bridge doctor` share: one
//! [`Check`] per thing a daemon needs (pass, warn, fail or skip, a one-line
//! detail and a one-line fix), a [`Report`] of them in order, the table and
//! the `--json` object it prints, and its exit code ([`EXIT_OK`],
//! [`EXIT_FAILED`]; a config that does not load exits with
//! [`crate::EXIT_CONFIG`] before any check runs). [`timed`] runs one check
//! under a deadline so that no check can hang the command.
//!
//! The checks themselves live with the daemon they check.

use std::future::Future;
use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Exit code: every check passed, was skipped, or only warned (without `--strict`).
pub const EXIT_OK: u8 = 0;
/// Exit code: at least one check failed (or, with `--strict`, warned).
pub const EXIT_FAILED: u8 = 1;

/// The result of one check. Ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works.
    Pass,
    /// Not applicable here (not configured, or an earlier check failed).
    Skip,
    /// Works now but will not for long, or works in a degraded way.
    Warn,
    /// Does not work.
    Fail,
}

impl Status {
    /// `pass`, `skip`, `warn`, `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Skip => "skip",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }

    /// ANSI colour for the table on a terminal.
    fn colour(self) -> &'static str {
        match self {
            Self::Pass => "\x1b[32m",
            Self::Skip => "\x1b[2m",
            Self::Warn => "\x1b[33m",
            Self::Fail => "\x1b[31m",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable id of the check (`udp`, `docker`, ...).
    pub name: String,
    /// The result.
    pub status: Status,
    /// What was found, one line.
    pub detail: String,
    /// What to do about it, one line (absent on pass and most skips).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// How long the check took.
    pub duration_ms: u64,
}

impl Check {
    fn new(name: &str, status: Status, detail: String, fix: Option<String>) -> Self {
        Self {
            name: name.to_owned(),
            status,
            detail: one_line(&detail),
            fix: fix.map(|f| one_line(&f)),
            duration_ms: 0,
        }
    }

    /// A passed check.
    pub fn pass(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Pass, detail.into(), None)
    }

    /// A warning with its fix.
    pub fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, Status::Warn, detail.into(), Some(fix.into()))
    }

    /// A failure with its fix.
    pub fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, Status::Fail, detail.into(), Some(fix.into()))
    }

    /// A skipped check and why.
    pub fn skip(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Skip, detail.into(), None)
    }

    /// The same check with `duration_ms` set from `started`.
    pub fn took(mut self, started: Instant) -> Self {
        self.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self
    }
}

/// Collapse whitespace runs (newlines from nested error messages) into one space.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Run one check under `limit`; past it, the check fails with `fix_on_timeout`.
/// The returned check carries its duration.
pub async fn timed(
    name: &str,
    limit: Duration,
    fix_on_timeout: &str,
    check: impl Future<Output = Check>,
) -> Check {
    let started = Instant::now();
    match tokio::time::timeout(limit, check).await {
        Ok(c) => c.took(started),
        Err(_) => Check::fail(
            name,
            format!("did not finish within {} s", limit.as_secs_f64()),
            fix_on_timeout,
        )
        .took(started),
    }
}

/// Counts of each status and the overall result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Checks that passed.
    pub pass: usize,
    /// Checks that warned.
    pub warn: usize,
    /// Checks that failed.
    pub fail: usize,
    /// Checks that were skipped.
    pub skip: usize,
    /// The worst status (`pass` when there are only passes and skips).
    pub status: Status,
    /// The exit code the command returns.
    pub exit_code: u8,
}

/// Every check of one run, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `sandbox-agent` or `vault-bridge`.
    pub program: String,
    /// Checks in the order they ran.
    pub checks: Vec<Check>,
    /// Warnings count as failures for the exit code.
    pub strict: bool,
}

/// The `--json` object.
#[derive(Serialize)]
struct JsonReport<'a> {
    program: &'a str,
    version: &'a str,
    checks: &'a [Check],
    summary: Summary,
}

/// Run a doctor's `checks` on a small single-threaded runtime and print the
/// report (`--json` when `json`); the exit code says the worst result. The
/// runtime is not waited on past 200 ms at the end (a QUIC endpoint's close
/// need not hold up a finished report).
pub fn run_checks(checks: impl Future<Output = Report>, json: bool, version: &str) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(checks);
    runtime.shutdown_timeout(Duration::from_millis(200));
    report.print(json, version)
}

impl Report {
    /// An empty report for `program`.
    pub fn new(program: &str, strict: bool) -> Self {
        Self {
            program: program.to_owned(),
            checks: Vec::new(),
            strict,
        }
    }

    /// Append a check.
    pub fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    /// The check named `name`, if it ran.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// Whether the check named `name` ran and passed (or warned: it works).
    pub fn usable(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|c| matches!(c.status, Status::Pass | Status::Warn))
    }

    /// Counts and exit code.
    pub fn summary(&self) -> Summary {
        let count = |s: Status| self.checks.iter().filter(|c| c.status == s).count();
        let status = self
            .checks
            .iter()
            .map(|c| c.status)
            .filter(|s| *s != Status::Skip)
            .max()
            .unwrap_or(Status::Pass);
        let failed = status == Status::Fail || (self.strict && status == Status::Warn);
        Summary {
            pass: count(Status::Pass),
            warn: count(Status::Warn),
            fail: count(Status::Fail),
            skip: count(Status::Skip),
            status,
            exit_code: if failed { EXIT_FAILED } else { EXIT_OK },
        }
    }

    /// The `--json` object: `{program, version, checks: [{name, status,
    /// detail, fix?, duration_ms}], summary: {pass, warn, fail, skip,
    /// status, exit_code}}`.
    pub fn to_json(&self, version: &str) -> String {
        let r = JsonReport {
            program: &self.program,
            version,
            checks: &self.checks,
            summary: self.summary(),
        };
        serde_json::to_string_pretty(&r)
            .unwrap_or_else(|e| format!("{{\"error\":\"report could not be encoded: {e}\"}}"))
    }

    /// The table: one row per check (status, name, detail), its fix on the
    /// next line, and a summary line. ANSI colour only when `colour`.
    pub fn to_table(&self, colour: bool) -> String {
        let width = self
            .checks
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(0)
            .max(5);
        let mut out = String::new();
        for c in &self.checks {
            let status = format!("{:<4}", c.status.as_str().to_ascii_uppercase());
            let status = if colour {
                format!("{}{status}\x1b[0m", c.status.colour())
            } else {
                status
            };
            out.push_str(&format!("{status}  {:<width$}  {}\n", c.name, c.detail));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("{:<4}  {:<width$}  fix: {fix}\n", "", ""));
            }
        }
        let s = self.summary();
        out.push_str(&format!(
            "\n{}: {} pass, {} warn, {} fail, {} skip (exit {})\n",
            self.program, s.pass, s.warn, s.fail, s.skip, s.exit_code
        ));
        out
    }

    /// Print the table (colour when stdout is a terminal and `NO_COLOR` is
    /// unset) or the JSON object on stdout; return the exit code.
    pub fn print(&self, json: bool, version: &str) -> ExitCode {
        if json {
            println!("{}", self.to_json(version));
        } else {
            let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            print!("{}", self.to_table(colour));
        }
        ExitCode::from(self.summary().exit_code)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn summary_exit_codes_and_json_shape() {
        let mut r = Report::new("x", false);
        r.push(Check::pass("a", "ok"));
        r.push(Check::skip("b", "not configured"));
        assert_eq!(r.summary().exit_code, EXIT_OK);
        assert_eq!(r.summary().status, Status::Pass);
        r.push(Check::warn("c", "soon\nexpires", "renew"));
        assert_eq!(r.summary().exit_code, EXIT_OK);
        r.strict = true;
        assert_eq!(r.summary().exit_code, EXIT_FAILED);
        r.strict = false;
        r.push(Check::fail("d", "broken", "fix it"));
        let s = r.summary();
        assert_eq!((s.pass, s.warn, s.fail, s.skip), (1, 1, 1, 1));
        assert_eq!(s.exit_code, EXIT_FAILED);
        let v: serde_json::Value = serde_json::from_str(&r.to_json("0.1.0")).unwrap();
        assert_eq!(v["checks"][2]["detail"], "soon expires");
        assert_eq!(v["checks"][3]["status"], "fail");
        assert_eq!(v["checks"][3]["fix"], "fix it");
        assert!(v["checks"][0].get("fix").is_none());
        assert_eq!(v["summary"]["status"], "fail");
        assert_eq!(v["summary"]["exit_code"], 1);
        let t = r.to_table(false);
        assert!(t.contains("FAIL  d      broken\n"), "{t}");
        assert!(t.contains("fix: fix it"), "{t}");
        assert!(!t.contains('\x1b'), "{t}");
        assert!(r.to_table(true).contains('\x1b'));
    }

    #[tokio::test]
    async fn timed_fails_a_check_that_hangs() {
        let c = timed("slow", Duration::from_millis(50), "look", async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Check::pass("slow", "never")
        })
        .await;
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.fix.as_deref(), Some("look"));
        assert!(c.duration_ms >= 50);
    }
}
