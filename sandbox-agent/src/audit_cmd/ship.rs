//! `audit ship`: the audit record to a syslog receiver, RFC 5424 messages
//! over TCP + TLS with RFC 5425 octet-counting framing (`<len> <msg>`).
//!
//! Message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [airlock@32473 …] MSG`
//! with PRI = facility × 8 + a severity from the outcome, TIMESTAMP the
//! record's `at`, MSGID the record's `call`, STRUCTURED-DATA
//! `[airlock@32473 seq="N" hash="…" session="…" sandbox="…" tool_use_id="…"]`
//! (values escaped per RFC 5424: `"`, `\` and `]`) and MSG the record's JSON
//! line, byte for byte as hashed (so a receiver can check the chain).
//!
//! Resume and exactly-once: records are sent in batches; after a batch was
//! written and flushed to the TLS socket the cursor (see [`super::cursor`])
//! moves to its last record. A shipper that is stopped (SIGTERM, or its
//! parent agent gone: stdin closed) finishes the batch in flight and its
//! cursor before it exits, so a restart neither repeats nor skips a
//! record. What is left: a `kill -9` of the shipper itself between a
//! socket write and the cursor write repeats that one batch on restart, and
//! a write error mid-batch resends the batch on the new connection; every
//! message carries seq and hash, so the receiver can drop repeats. "Written"
//! means accepted by the local socket: a receiver that dies with data
//! unread loses it (seq numbers show the gap).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::cursor::{self, Cursor, ShipLock};
use super::log::{LogReader, Record};
use super::AuditCmdError;
use crate::audit::SyslogSettings;

/// Private enterprise number in the STRUCTURED-DATA id (`airlock@32473`;
/// 32473 is the example PEN of RFC 5612).
pub const SD_ID: &str = "airlock@32473";
/// The CA bundle used when `[audit.syslog] ca_file` is not set.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Default records per batch.
pub const DEFAULT_BATCH_RECORDS: usize = 500;
/// Most bytes in one batch (a batch ends early when it would pass this).
const BATCH_BYTES: usize = 1024 * 1024;
/// How often the log is looked at for new records when idle.
const POLL: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// How long a drain (a clean stop of the agent) may go on shipping.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// What the agent writes to its child's standard input before closing it
/// on a clean stop: ship what is in the log (at most [`DRAIN_LIMIT`]), then
/// exit. A bare end of input (the agent died) stops after the batch in
/// flight.
pub const DRAIN_REQUEST: &[u8] = b"drain\n";

/// A shipper failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShipError {
    /// `[audit.syslog]` is missing or disabled in the config.
    #[error("no [audit.syslog] in the config (or enabled = false): nothing to ship to")]
    NotConfigured,
    /// A TLS file could not be read or holds nothing usable.
    #[error("audit.syslog.{key} {path}: {reason}")]
    TlsFile {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The TLS client could not be configured.
    #[error("TLS client for audit.syslog: {0}")]
    Tls(#[from] rustls::Error),
    /// `server_name` is not a DNS name or IP address.
    #[error("audit.syslog.server_name {0:?} is not a DNS name or IP address")]
    ServerName(String),
    /// The receiver could not be reached or the TLS handshake failed.
    #[error("syslog receiver {address}: {reason}")]
    Connect {
        /// `host:port`.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// The cursor does not match the log (the log was replaced, or the
    /// cursor belongs to another log).
    #[error("shipper cursor at seq {seq} does not match the audit log: {reason}")]
    CursorMismatch {
        /// The cursor's seq.
        seq: u64,
        /// What does not match.
        reason: String,
    },
}

/// The syslog facility (RFC 5424 PRI = facility × 8 + severity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facility(pub u8);

impl Facility {
    /// authpriv (10): security/authorization messages, kept private by
    /// default syslog configs. The default.
    pub const AUTHPRIV: Self = Self(10);

    /// `authpriv`, `auth`, `daemon`, `user` or `local0`..`local7`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(Self(match name {
            "user" => 1,
            "daemon" => 3,
            "auth" => 4,
            "authpriv" => 10,
            _ => {
                let n: u8 = name.strip_prefix("local")?.parse().ok()?;
                if n > 7 {
                    return None;
                }
                16 + n
            }
        }))
    }
}

/// What the shipper needs to know.
#[derive(Debug, Clone)]
pub struct ShipSettings {
    /// `[audit.syslog]`.
    pub syslog: SyslogSettings,
    /// PRI facility.
    pub facility: Facility,
}

impl ShipSettings {
    /// From `[audit.syslog]` (its `facility`, authpriv by default).
    pub fn from_config(syslog: Option<&SyslogSettings>) -> Result<Self, ShipError> {
        let syslog = syslog
            .filter(|s| s.enabled)
            .ok_or(ShipError::NotConfigured)?
            .clone();
        // The config parser accepts only names Facility::parse knows.
        let facility = Facility::parse(&syslog.facility).unwrap_or(Facility::AUTHPRIV);
        Ok(Self { syslog, facility })
    }
}

/// How `ship` runs.
#[derive(Debug, Clone)]
pub struct ShipOptions {
    /// Ship what is there, then exit (a connection failure is an error).
    pub once: bool,
    /// Stop (after the batch in flight) when standard input closes: the
    /// mode of the child process of `sandbox-agent run`.
    pub until_stdin_closes: bool,
    /// Records per batch.
    pub batch_records: usize,
}

/// What a shipper run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShipReport {
    /// Records sent.
    pub shipped: u64,
    /// The cursor's seq at exit.
    pub cursor_seq: u64,
}

/// The RFC 5424 severity of a record.
pub fn severity(rec: &Record) -> u8 {
    if rec.call() == "credential_use_gap" {
        return 3;
    }
    match rec.outcome() {
        "ok" | "started" | "signed" | "injected" | "replayed" => 6,
        "tool_error" => 5,
        "refused" | "denied" | "unknown" => 4,
        "error" | "failed" => 3,
        _ => 5,
    }
}

/// Escape a PARAM-VALUE (RFC 5424 §6.3.3: `"`, `\` and `]`).
pub fn escape_param(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// PRINTUSASCII only, at most `max`; `-` when nothing is left.
fn header_field(value: &str, max: usize) -> String {
    let s: String = value
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if s.is_empty() {
        "-".to_owned()
    } else {
        s
    }
}

/// The record's `at` as an RFC 5424 TIMESTAMP (UTC, microseconds), or `-`.
fn timestamp(rec: &Record) -> String {
    let Some(at) = rec.at() else {
        return "-".to_owned();
    };
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.microsecond()
    )
}

/// One record as an RFC 5424 message (without framing).
pub fn message(rec: &Record, settings: &ShipSettings) -> String {
    let pri = u16::from(settings.facility.0) * 8 + u16::from(severity(rec));
    let mut sd = format!("[{SD_ID} seq=\"{}\"", rec.seq);
    for (name, key) in [
        ("hash", "hash"),
        ("session", "session_id"),
        ("sandbox", "sandbox_id"),
        ("tool_use_id", "tool_use_id"),
    ] {
        if let Some(v) = rec.str(key) {
            sd.push_str(&format!(" {name}=\"{}\"", escape_param(v)));
        }
    }
    sd.push(']');
    format!(
        "<{pri}>1 {} {} {} - {} {sd} {}",
        timestamp(rec),
        header_field(&settings.syslog.hostname, 255),
        header_field(&settings.syslog.app_name, 48),
        header_field(rec.call(), 32),
        rec.raw
    )
}

/// One record framed for RFC 5425 (`<octet count> <message>`).
pub fn frame(rec: &Record, settings: &ShipSettings, out: &mut Vec<u8>) {
    let msg = message(rec, settings);
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg.as_bytes());
}

fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, ShipError> {
    std::fs::read(path).map_err(|e| ShipError::TlsFile {
        key,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// The TLS client for the receiver: its CA from `ca_file` (else the
/// system bundle), and the client certificate when configured.
pub fn tls_connector(s: &SyslogSettings) -> Result<TlsConnector, ShipError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (ca_key, ca_path) = match &s.ca_file {
        Some(p) => ("ca_file", p.clone()),
        None => ("ca_file", PathBuf::from(SYSTEM_CA_BUNDLE)),
    };
    let pem = read_pem(ca_key, &ca_path)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| ShipError::TlsFile {
            key: ca_key,
            path: ca_path.clone(),
            reason: e.to_string(),
        })?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(ShipError::TlsFile {
            key: ca_key,
            path: ca_path,
            reason: "no certificate in the file".into(),
        });
    }
    let builder = rustls::ClientConfig::builder_with_provider(pki::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match &s.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert_path, key_path)) => {
            let pem = read_pem("client_cert_file", cert_path)?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ShipError::TlsFile {
                    key: "client_cert_file",
                    path: cert_path.clone(),
                    reason: e.to_string(),
                })?;
            let key_pem = read_pem("client_key_file", key_path)?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| ShipError::TlsFile {
                key: "client_key_file",
                path: key_path.clone(),
                reason: e.to_string(),
            })?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn connect(
    connector: &TlsConnector,
    s: &SyslogSettings,
) -> Result<TlsStream<TcpStream>, ShipError> {
    let fail = |reason: String| ShipError::Connect {
        address: s.address.clone(),
        reason,
    };
    let name = rustls_pki_types::ServerName::try_from(s.server_name.clone())
        .map_err(|_| ShipError::ServerName(s.server_name.clone()))?;
    let attempt = async {
        let tcp = TcpStream::connect((s.host.as_str(), s.port))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| fail(format!("TLS: {e}")))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| fail("timed out".into()))?
}

/// Cancel `stop` on SIGTERM or SIGINT, and when standard input closes if
/// `stdin` is set (cancelling `drain` first when [`DRAIN_REQUEST`] came).
fn watch_stop(stop: &CancellationToken, drain: &CancellationToken, stdin: bool) {
    let s = stop.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("audit shipper: signal; stopping after the batch in flight");
        s.cancel();
    });
    if stdin {
        let s = stop.clone();
        let d = drain.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let mut input = tokio::io::stdin();
            let mut buf = [0u8; 256];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if buf[..n].starts_with(&DRAIN_REQUEST[..1]) {
                            d.cancel();
                        }
                    }
                }
            }
            tracing::info!(drain = d.is_cancelled(), "audit shipper: standard input closed (the agent stopped); stopping after the batch in flight, or after draining the log when asked to");
            s.cancel();
        });
    }
}

/// Open the log after `cursor`, checking that the record at the cursor
/// still has the cursor's hash.
fn resume(dir: &Path, cursor: &Cursor) -> Result<LogReader, AuditCmdError> {
    if cursor.seq == 0 {
        return Ok(LogReader::strict(dir, 1, None));
    }
    let mut reader = LogReader::strict(dir, cursor.seq, None);
    match reader.next_record()? {
        Some(rec) if rec.hash() == cursor.hash => Ok(reader),
        Some(rec) => Err(ShipError::CursorMismatch {
            seq: cursor.seq,
            reason: format!(
                "{}:{} has hash {} where the cursor has {}",
                rec.file.display(),
                rec.line,
                rec.hash(),
                cursor.hash
            ),
        }
        .into()),
        None => Err(ShipError::CursorMismatch {
            seq: cursor.seq,
            reason: "the log ends before it (truncated or replaced)".into(),
        }
        .into()),
    }
}

/// Run the shipper on the audit dir `dir` until stopped (or, with
/// `once`, until everything written so far is shipped).
pub async fn run(
    dir: &Path,
    settings: &ShipSettings,
    opts: &ShipOptions,
) -> Result<ShipReport, AuditCmdError> {
    let stop = CancellationToken::new();
    let drain = CancellationToken::new();
    watch_stop(&stop, &drain, opts.until_stdin_closes);
    run_until(dir, settings, opts, stop, drain).await
}

/// [`run`] with the caller's tokens (no signal or stdin watching): after
/// `stop`, the batch in flight is finished; when `drain` was cancelled
/// too, what is in the log is shipped first (for at most [`DRAIN_LIMIT`]).
pub async fn run_until(
    dir: &Path,
    settings: &ShipSettings,
    opts: &ShipOptions,
    stop: CancellationToken,
    drain: CancellationToken,
) -> Result<ShipReport, AuditCmdError> {
    let connector = tls_connector(&settings.syslog)?;
    std::fs::create_dir_all(dir).map_err(|source| AuditCmdError::Io {
        path: dir.to_owned(),
        source,
    })?;
    // One shipper per audit dir: wait for a previous one to finish its batch.
    let mut waited = false;
    let _lock = loop {
        if let Some(lock) = ShipLock::try_acquire(dir)? {
            break lock;
        }
        if !waited {
            tracing::info!(dir = %dir.display(), "audit shipper: another shipper holds the lock; waiting");
            waited = true;
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(ShipReport::default()),
            _ = tokio::time::sleep(POLL) => {}
        }
    };
    let mut cur = cursor::load(dir)?;
    let mut reader = resume(dir, &cur)?;
    tracing::info!(dir = %dir.display(), address = %settings.syslog.address, cursor_seq = cur.seq, "audit shipper started");
    let mut report = ShipReport {
        shipped: 0,
        cursor_seq: cur.seq,
    };
    let mut conn: Option<TlsStream<TcpStream>> = None;
    let mut pending: Vec<Record> = Vec::new();
    let mut backoff = BACKOFF_BASE;
    let batch_records = opts.batch_records.max(1);
    let mut stopped_at: Option<std::time::Instant> = None;
    loop {
        let stopping = stop.is_cancelled();
        if stopping && stopped_at.is_none() {
            stopped_at = Some(std::time::Instant::now());
        }
        if pending.is_empty() {
            let draining =
                drain.is_cancelled() && stopped_at.is_some_and(|t| t.elapsed() < DRAIN_LIMIT);
            if stopping && !draining {
                break;
            }
            let mut bytes = 0;
            while pending.len() < batch_records && bytes < BATCH_BYTES {
                match reader.next_record()? {
                    Some(rec) => {
                        bytes += rec.raw.len() + 128;
                        pending.push(rec);
                    }
                    None => break,
                }
            }
            if pending.is_empty() {
                if opts.once || stopping {
                    break;
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
                continue;
            }
        }
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => match connect(&connector, &settings.syslog).await {
                Ok(s) => {
                    tracing::info!(address = %settings.syslog.address, "audit shipper connected");
                    backoff = BACKOFF_BASE;
                    conn.insert(s)
                }
                Err(error) => {
                    if opts.once {
                        return Err(error.into());
                    }
                    tracing::warn!(%error, retry_ms = backoff.as_millis() as u64, "audit shipper: cannot reach the receiver");
                    tokio::select! {
                        // Stopping with a batch not sent: nothing was written, the cursor stays.
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_CAP);
                    continue;
                }
            },
        };
        let mut buf = Vec::with_capacity(pending.iter().map(|r| r.raw.len() + 160).sum());
        for rec in &pending {
            frame(rec, settings, &mut buf);
        }
        let write = async {
            stream.write_all(&buf).await?;
            stream.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {
                let Some(last) = pending.last() else {
                    continue;
                };
                cur = Cursor {
                    seq: last.seq,
                    hash: last.hash().to_owned(),
                    at: now_rfc3339(),
                };
                cursor::store(dir, &cur)?;
                report.shipped += pending.len() as u64;
                report.cursor_seq = cur.seq;
                tracing::debug!(
                    first_seq = pending[0].seq,
                    last_seq = cur.seq,
                    records = pending.len(),
                    "audit shipper: batch sent"
                );
                pending.clear();
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, first_seq = pending[0].seq, "audit shipper: write failed; resending the batch on a new connection");
                conn = None;
            }
            Err(_) => {
                tracing::warn!(
                    first_seq = pending[0].seq,
                    "audit shipper: write timed out; resending the batch on a new connection"
                );
                conn = None;
            }
        }
    }
    if let Some(mut s) = conn {
        let _ = tokio::time::timeout(Duration::from_secs(2), s.shutdown()).await;
    }
    tracing::info!(
        shipped = report.shipped,
        cursor_seq = report.cursor_seq,
        "audit shipper stopped"
    );
    Ok(report)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ShipSettings {
        ShipSettings {
            syslog: SyslogSettings {
                address: "127.0.0.1:6514".into(),
                host: "127.0.0.1".into(),
                port: 6514,
                ca_file: None,
                server_name: "localhost".into(),
                client_cert: None,
                app_name: "airlock-agent".into(),
                hostname: "host-1".into(),
                enabled: true,
                facility: "authpriv".into(),
                shipper: crate::audit::config::ShipperMode::Agent,
            },
            facility: Facility::AUTHPRIV,
        }
    }

    #[test]
    fn message_is_rfc5424_with_escaped_structured_data() {
        let raw = r#"{"seq":7,"at":"2026-12-06T20:00:00.123456Z","call":"execute","session_id":"se\"s]\\n","outcome":"refused","prev":"a","hash":"ff"}"#;
        let rec = Record::parse(Path::new("a"), 1, raw.into()).unwrap();
        let m = message(&rec, &settings());
        assert_eq!(
            m,
            format!("<84>1 2026-12-06T20:00:00.123456Z host-1 airlock-agent - execute [airlock@32473 seq=\"7\" hash=\"ff\" session=\"se\\\"s\\]\\\\n\"] {raw}")
        );
        let mut out = Vec::new();
        frame(&rec, &settings(), &mut out);
        assert!(out.starts_with(format!("{} <84>", m.len()).as_bytes()));
        assert_eq!(Facility::parse("local0"), Some(Facility(16)));
        assert_eq!(Facility::parse("local8"), None);
    }
}
