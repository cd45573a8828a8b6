//! The persistent shell behind the `bash` tool: one `/bin/bash` per sandbox,
//! reading commands from a pipe, so the working directory, variables and
//! background jobs survive between calls.
//!
//! Each call writes one line to the shell's stdin that reads the command
//! (terminated by a NUL byte) with `read -d ''`, runs it with `eval`
//! (stdin from /dev/null), then prints a per-call random marker followed by
//! the exit status. stdout and stderr share one pipe; everything before the
//! marker is the call's output. The shell leads its own process group; a
//! timeout sends SIGTERM then SIGKILL to the whole group and the next call
//! starts a fresh shell. The shell's environment is the executor's minus
//! every `ANTHROPIC_*` and `AIRLOCK_*` variable, plus the configured env.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::ansi::AnsiStripper;

/// What a bash call produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BashOutcome {
    /// Output text (ANSI stripped, capped, with a truncation marker if cut).
    pub text: String,
    /// True when the tool failed (non-zero status, timeout, shell died).
    pub is_error: bool,
    /// The command's exit status, when it ran to its end (not on a timeout
    /// or a dead shell).
    pub exit_code: Option<i32>,
}

/// Settings of a shell.
#[derive(Debug, Clone)]
pub struct ShellConfig {
    /// Path of bash.
    pub shell_path: String,
    /// Working directory at start.
    pub workdir: String,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Output kept (the last bytes).
    pub output_max_bytes: usize,
    /// Streamed output cap.
    pub stream_max_bytes: usize,
    /// SIGTERM → SIGKILL grace.
    pub kill_grace: Duration,
}

/// The persistent shell (started lazily).
#[derive(Debug)]
pub struct Shell {
    config: ShellConfig,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    child: Child,
    stdin: ChildStdin,
    output: Receiver<Vec<u8>>,
    pgid: Pid,
}

fn random_token() -> String {
    let mut bytes = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !ok {
        // No /dev/urandom: fall back to time and pid (the marker must only
        // be unpredictable enough not to appear in output by accident).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes[..16].copy_from_slice(&(t ^ u128::from(std::process::id())).to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The environment the shell gets: ours, minus `ANTHROPIC_*` and `AIRLOCK_*`.
pub fn shell_env(extra: &BTreeMap<String, String>, workdir: &str) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| !k.starts_with("ANTHROPIC_") && !k.starts_with("AIRLOCK_"))
        .collect();
    for (k, v) in extra {
        if !k.starts_with("ANTHROPIC_") && !k.starts_with("AIRLOCK_") {
            env.insert(k.clone(), v.clone());
        }
    }
    env.entry("HOME".into())
        .or_insert_with(|| workdir.to_owned());
    env.entry("PATH".into())
        .or_insert_with(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    env.insert("TERM".into(), "dumb".into());
    env
}

impl Shell {
    /// A shell that starts on first use.
    pub fn new(config: ShellConfig) -> Self {
        Self {
            config,
            running: None,
        }
    }

    /// Replace env/workdir (kills the current shell; the next call starts afresh).
    pub fn reconfigure(&mut self, env: BTreeMap<String, String>, workdir: Option<String>) {
        self.kill();
        self.config.env = env;
        if let Some(w) = workdir {
            self.config.workdir = w;
        }
    }

    fn start(&mut self) -> std::io::Result<&mut Running> {
        if self.running.is_none() {
            let (reader, writer) = nix::unistd::pipe().map_err(std::io::Error::from)?;
            let reader = std::fs::File::from(reader);
            let writer = std::fs::File::from(writer);
            let writer2 = writer.try_clone()?;
            let workdir = if std::path::Path::new(&self.config.workdir).is_dir() {
                self.config.workdir.clone()
            } else {
                "/".to_owned()
            };
            let mut child = Command::new(&self.config.shell_path)
                .args(["--noprofile", "--norc"])
                .env_clear()
                .envs(shell_env(&self.config.env, &self.config.workdir))
                .current_dir(workdir)
                .stdin(Stdio::piped())
                .stdout(writer)
                .stderr(writer2)
                .process_group(0)
                .spawn()?;
            let stdin = child
                .stdin
                .take()
                .ok_or_else(|| std::io::Error::other("shell stdin not captured"))?;
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut reader = reader;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            if tx.send(buf[..n].to_vec()).is_err() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => return,
                    }
                }
            });
            let pgid = Pid::from_raw(child.id() as i32);
            self.running = Some(Running {
                child,
                stdin,
                output: rx,
                pgid,
            });
        }
        self.running
            .as_mut()
            .ok_or_else(|| std::io::Error::other("shell not running"))
    }

    /// Kill the shell's whole process group and forget it.
    pub fn kill(&mut self) {
        if let Some(mut r) = self.running.take() {
            let _ = killpg(r.pgid, Signal::SIGKILL);
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }

    /// Run `command`; `stream` receives output chunks as they are produced.
    pub fn run(
        &mut self,
        command: &str,
        timeout: Duration,
        stream: &mut dyn FnMut(&[u8]),
    ) -> BashOutcome {
        if command.contains('\0') {
            return BashOutcome {
                text: "command contains a NUL byte".into(),
                is_error: true,
                exit_code: None,
            };
        }
        let token = random_token();
        let marker = format!("\n__AIRLOCK_DONE_{token}:");
        let cfg = self.config.clone();
        let running = match self.start() {
            Ok(r) => r,
            Err(e) => {
                return BashOutcome {
                    text: format!("cannot start {}: {e}", cfg.shell_path),
                    is_error: true,
                    exit_code: None,
                }
            }
        };
        let script = format!(
            "IFS= read -r -d '' __airlock_cmd; eval \"$__airlock_cmd\" </dev/null; printf '\\n__AIRLOCK_DONE_{token}:%d\\n' \"$?\"\n"
        );
        let mut payload = script.into_bytes();
        payload.extend_from_slice(command.as_bytes());
        payload.push(0);
        if let Err(e) = running
            .stdin
            .write_all(&payload)
            .and_then(|_| running.stdin.flush())
        {
            self.kill();
            return BashOutcome {
                text: format!("the shell is gone ({e}); a new shell starts on the next call"),
                is_error: true,
                exit_code: None,
            };
        }

        let mut collector = Collector::new(
            cfg.output_max_bytes,
            cfg.stream_max_bytes,
            marker.as_bytes(),
        );
        let deadline = Instant::now() + timeout;
        let status: Result<i32, String> = loop {
            if let Some(code) = collector.find_marker(&marker) {
                break Ok(code);
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(format!("timed out after {} ms", timeout.as_millis()));
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            match running.output.recv_timeout(wait) {
                Ok(chunk) => collector.push(&chunk, stream),
                Err(RecvTimeoutError::Timeout) => {
                    if let Ok(Some(st)) = running.child.try_wait() {
                        // Shell exited; take what is already in the pipe.
                        while let Ok(chunk) = running.output.recv_timeout(Duration::from_millis(50))
                        {
                            collector.push(&chunk, stream);
                        }
                        if let Some(code) = collector.find_marker(&marker) {
                            break Ok(code);
                        }
                        break Err(describe_exit(st));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let st = running.child.wait();
                    break Err(match st {
                        Ok(st) => describe_exit(st),
                        Err(e) => format!("the shell is gone ({e})"),
                    });
                }
            }
        };
        match status {
            Ok(code) => {
                let mut text = collector.finish(stream);
                if code != 0 {
                    text.push_str(&format!(
                        "{}[exit code: {code}]",
                        if text.is_empty() || text.ends_with('\n') {
                            ""
                        } else {
                            "\n"
                        }
                    ));
                }
                BashOutcome {
                    text,
                    is_error: code != 0,
                    exit_code: Some(code),
                }
            }
            Err(why) => {
                let timed_out = why.starts_with("timed out");
                if timed_out {
                    if let Some(r) = &self.running {
                        let _ = killpg(r.pgid, Signal::SIGTERM);
                        let until = Instant::now() + cfg.kill_grace;
                        while Instant::now() < until {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
                // Drain what the dying group still wrote, briefly.
                if let Some(r) = &self.running {
                    let _ = killpg(r.pgid, Signal::SIGKILL);
                    while let Ok(chunk) = r.output.recv_timeout(Duration::from_millis(100)) {
                        collector.push(&chunk, stream);
                    }
                }
                self.kill();
                let mut text = collector.finish(stream);
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&format!(
                    "[{why}: the shell and its process group were killed; the next call starts a new shell \
                     (working directory, variables and background jobs are reset)]"
                ));
                BashOutcome {
                    text,
                    is_error: true,
                    exit_code: None,
                }
            }
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        self.kill();
    }
}

fn describe_exit(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("the shell exited with status {c}"),
        (None, Some(9)) => {
            "the shell was killed by SIGKILL (possibly out of memory: the sandbox memory limit)"
                .into()
        }
        (None, Some(s)) => format!("the shell was killed by signal {s}"),
        _ => "the shell stopped".into(),
    }
}

/// Accumulates output: keeps the last `max` bytes, streams stripped chunks
/// (holding back a tail that could be the start of the marker).
struct Collector {
    buf: Vec<u8>,
    total: usize,
    max: usize,
    streamed: usize,
    stream_max: usize,
    stream_stopped: bool,
    holdback: usize,
    /// The call's marker (starts with `\n`).
    marker: Vec<u8>,
    /// Offset in `buf` up to which bytes have been streamed.
    stream_pos: usize,
    stripper: AnsiStripper,
    /// Found marker: (offset in buf, exit code).
    done: Option<(usize, i32)>,
    /// No marker starts before this offset of `buf` (avoids rescanning).
    scanned: usize,
}

impl Collector {
    fn new(max: usize, stream_max: usize, marker: &[u8]) -> Self {
        let holdback = marker.len() + 24;
        Self {
            buf: Vec::new(),
            total: 0,
            max,
            streamed: 0,
            stream_max,
            stream_stopped: false,
            holdback,
            marker: marker.to_vec(),
            stream_pos: 0,
            stripper: AnsiStripper::default(),
            done: None,
            scanned: 0,
        }
    }

    fn push(&mut self, chunk: &[u8], stream: &mut dyn FnMut(&[u8])) {
        if self.done.is_some() {
            return; // late output of background jobs belongs to no call
        }
        self.buf.extend_from_slice(chunk);
        self.total += chunk.len();
        let safe = self.streamable_end();
        self.stream_upto(safe, stream);
        // Bound memory: keep at most 2*max (+holdback) bytes.
        let keep = self.max + self.holdback;
        if self.buf.len() > 2 * keep {
            let cut = self.buf.len() - keep;
            self.buf.drain(..cut);
            self.stream_pos = self.stream_pos.saturating_sub(cut);
            self.scanned = self.scanned.saturating_sub(cut);
        }
    }

    /// Everything can be streamed except a tail that may be the start of
    /// the marker (which begins with a newline): hold back from the first
    /// newline near the end whose tail is a prefix of the marker (or the
    /// marker itself, followed by its status).
    fn streamable_end(&self) -> usize {
        let len = self.buf.len();
        let from = self.stream_pos.max(len.saturating_sub(self.holdback));
        for i in from..len {
            if self.buf[i] == b'\n' {
                let tail = &self.buf[i..];
                let n = tail.len().min(self.marker.len());
                if tail[..n] == self.marker[..n] {
                    return i;
                }
            }
        }
        len
    }

    fn stream_upto(&mut self, upto: usize, stream: &mut dyn FnMut(&[u8])) {
        if upto <= self.stream_pos {
            return;
        }
        if !self.stream_stopped {
            let mut out = Vec::new();
            self.stripper
                .push(&self.buf[self.stream_pos..upto], &mut out);
            if !out.is_empty() {
                if self.streamed + out.len() > self.stream_max {
                    self.stream_stopped = true;
                    stream(b"\n[streaming stopped: too much output; the final result keeps the last part]\n");
                } else {
                    self.streamed += out.len();
                    stream(&out);
                }
            }
        }
        self.stream_pos = upto;
    }

    fn find_marker(&mut self, marker: &str) -> Option<i32> {
        if let Some((_, c)) = self.done {
            return Some(c);
        }
        let m = marker.as_bytes();
        let from = self.scanned;
        let found = self.buf[from..]
            .windows(m.len())
            .position(|w| w == m)
            .map(|p| p + from);
        let Some(pos) = found else {
            // Everything but a possible marker prefix at the end is now known marker-free.
            self.scanned = self.buf.len().saturating_sub(m.len() - 1).max(from);
            return None;
        };
        // Stay on this candidate until its status line is complete.
        self.scanned = pos;
        let rest = &self.buf[pos + m.len()..];
        let nl = rest.iter().position(|&b| b == b'\n')?;
        let code = std::str::from_utf8(&rest[..nl]).ok()?.trim().parse().ok()?;
        self.done = Some((pos, code));
        Some(code)
    }

    fn finish(&mut self, stream: &mut dyn FnMut(&[u8])) -> String {
        let end = self.done.map_or(self.buf.len(), |(p, _)| p);
        let marker_tail = self.buf.len() - end;
        self.stream_upto(end, stream);
        let body = &self.buf[..end];
        let produced = self.total - marker_tail;
        let kept = if body.len() > self.max {
            &body[body.len() - self.max..]
        } else {
            body
        };
        let clean = crate::ansi::strip(kept);
        let mut text = String::from_utf8_lossy(&clean).into_owned();
        if produced > kept.len() {
            text = format!(
                "[output truncated: showing the last {} of {} bytes]\n{}",
                kept.len(),
                produced,
                text
            );
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_streams_short_output_at_once_and_holds_back_a_marker_prefix() {
        let marker = b"\n__AIRLOCK_DONE_abc:";
        let mut c = Collector::new(1024, 1 << 20, marker);
        let mut streamed = Vec::new();
        c.push(b"first\n", &mut |b| streamed.extend_from_slice(b));
        // only the trailing newline waits (it may begin the marker)
        assert_eq!(
            streamed, b"first",
            "a short line is streamed without waiting for more"
        );
        c.push(b"second\n__AIRLOCK_DO", &mut |b| {
            streamed.extend_from_slice(b)
        });
        assert_eq!(
            streamed, b"first\nsecond",
            "a possible marker prefix is held back"
        );
        c.push(b"NE_abc:0\n", &mut |b| streamed.extend_from_slice(b));
        assert_eq!(c.find_marker(std::str::from_utf8(marker).unwrap()), Some(0));
        let text = c.finish(&mut |b| streamed.extend_from_slice(b));
        assert_eq!(text, "first\nsecond");
        assert_eq!(streamed, b"first\nsecond");
    }

    #[test]
    fn shell_keeps_state_and_times_out_a_group() {
        let mut sh = Shell::new(ShellConfig {
            shell_path: "/bin/bash".into(),
            workdir: "/tmp".into(),
            env: BTreeMap::new(),
            output_max_bytes: 1024,
            stream_max_bytes: 1024,
            kill_grace: Duration::from_millis(100),
        });
        let mut sink = |_: &[u8]| {};
        let o = sh.run("cd / && X=1", Duration::from_secs(10), &mut sink);
        assert!(!o.is_error, "{}", o.text);
        assert_eq!(o.exit_code, Some(0));
        let o = sh.run("echo \"$PWD $X\"", Duration::from_secs(10), &mut sink);
        assert_eq!(o.text, "/ 1\n");
        let o = sh.run("(exit 7)", Duration::from_secs(10), &mut sink);
        assert!(o.is_error && o.exit_code == Some(7), "{o:?}");
        let o = sh.run(
            "trap '' TERM; sleep 30",
            Duration::from_millis(300),
            &mut sink,
        );
        assert!(
            o.is_error && o.text.contains("timed out after 300 ms"),
            "{}",
            o.text
        );
        assert_eq!(o.exit_code, None, "no status for a killed command");
        let o = sh.run("echo \"[$X]\"", Duration::from_secs(10), &mut sink);
        assert_eq!(o.text, "[]\n", "a new shell after the timeout");
    }
}
