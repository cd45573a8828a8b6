//! Credential uses from the vault-bridge into the agent's hash-chained audit
//! record ([`crate::audit`]).
//!
//! [`run`] holds one `SubscribeAudit` connection on the bridge's agent
//! channel: hello, then `SubscribeAudit{after_seq}` with the last bridge
//! sequence number already in the audit record (recovered from the file on
//! start), then one `credential_use` line per [`CredentialUse`] received (a
//! destination a host policy refused is one too: `outcome: host_refused`,
//! with a `decision` naming the policy and the refusal).
//! Uses at or below the last recorded sequence number are skipped (no
//! duplicates after a reconnect); a jump in the sequence means the bridge's
//! bounded journal dropped uses before they could be delivered: logged and
//! recorded as a `credential_use_gap` line. When the bridge goes away the
//! task reconnects with backoff until the service shuts down.
//!
//! [`ToolCalls`] says which tool call ran in which sandbox when: the execute
//! path holds a [`ToolCallGuard`] for the duration of each call, and a use is
//! attributed to the one call of its sandbox whose span contains the use's
//! time (`tool_use_id` is left out when there is none, or more than one).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use protocol::bridge::{CredentialUse, FromBridge, ToBridge};
use protocol::frame::{Frame, FrameCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use super::bridge::BridgeError;
use super::config::BridgeSettings;
use crate::audit::{AuditEvent, AuditLog, CredentialUseDetail};

/// Pauses between attempts to reach the bridge.
const RECONNECT: settings::BackoffPolicy = settings::BackoffPolicy::new(
    Duration::from_millis(100),
    Duration::from_secs(5),
    settings::Jitter::None,
);
/// How long a finished tool call stays attributable (uses arrive shortly after).
const FINISHED_KEPT: Duration = Duration::from_secs(120);
/// Slack around a call's span (the bridge's clock is the same host's).
const SLACK: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
struct Span {
    tool_use_id: String,
    started: SystemTime,
    ended: Option<SystemTime>,
}

/// Which tool calls run (or recently ran) in which sandbox. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ToolCalls {
    spans: Arc<Mutex<HashMap<String, Vec<Span>>>>,
}

/// Marks a tool call as running until dropped.
#[derive(Debug)]
pub struct ToolCallGuard {
    calls: ToolCalls,
    sandbox_id: String,
    tool_use_id: String,
}

impl ToolCalls {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Span>>> {
        // Every update is a single push or field write; a poisoned map is still consistent.
        self.spans.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Note that `tool_use_id` starts running in `sandbox_id`.
    pub fn begin(&self, sandbox_id: &str, tool_use_id: &str) -> ToolCallGuard {
        let now = SystemTime::now();
        let mut map = self.lock();
        // Forget calls that ended long ago, in every sandbox (destroyed ones too).
        map.retain(|_, spans| {
            spans.retain(|s| {
                s.ended
                    .is_none_or(|e| now.duration_since(e).unwrap_or_default() < FINISHED_KEPT)
            });
            !spans.is_empty()
        });
        let spans = map.entry(sandbox_id.to_owned()).or_default();
        spans.push(Span {
            tool_use_id: tool_use_id.to_owned(),
            started: now,
            ended: None,
        });
        ToolCallGuard {
            calls: self.clone(),
            sandbox_id: sandbox_id.to_owned(),
            tool_use_id: tool_use_id.to_owned(),
        }
    }

    /// The one tool call of `sandbox_id` running at `at`, if exactly one was.
    /// A call whose span contains `at` itself wins; only when none does is
    /// [`SLACK`] allowed around the spans (so two calls back to back, closer
    /// than the slack, do not make a use inside the second one ambiguous).
    pub fn at(&self, sandbox_id: &str, at: SystemTime) -> Option<String> {
        let map = self.lock();
        let spans = map.get(sandbox_id)?;
        let only = |slack: Duration| {
            let mut hits = spans
                .iter()
                .filter(|s| s.started <= at + slack && s.ended.is_none_or(|e| at <= e + slack));
            let first = hits.next()?;
            if hits.next().is_some() {
                return None;
            }
            Some(first.tool_use_id.clone())
        };
        let within = |s: &&Span| s.started <= at && s.ended.is_none_or(|e| at <= e);
        match spans.iter().filter(within).count() {
            0 => only(SLACK),
            1 => only(Duration::ZERO),
            _ => None,
        }
    }
}

impl Drop for ToolCallGuard {
    fn drop(&mut self) {
        let now = SystemTime::now();
        let mut map = self.calls.lock();
        if let Some(spans) = map.get_mut(&self.sandbox_id) {
            if let Some(s) = spans
                .iter_mut()
                .rev()
                .find(|s| s.tool_use_id == self.tool_use_id && s.ended.is_none())
            {
                s.ended = Some(now);
            }
        }
    }
}

fn parse_at(at: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()?;
    Some(SystemTime::from(t))
}

/// Turns received uses into audit lines: dedupe, gap detection, attribution.
#[derive(Debug)]
pub struct Recorder {
    audit: AuditLog,
    calls: ToolCalls,
    last_seq: u64,
}

impl Recorder {
    /// Resume after the last use already in `audit`'s file.
    pub fn new(audit: AuditLog, calls: ToolCalls) -> Result<Self, crate::audit::AuditError> {
        let last_seq = crate::audit::last_credential_seq(audit.path())?;
        Ok(Self {
            audit,
            calls,
            last_seq,
        })
    }

    /// The last bridge sequence number recorded.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Record one use (skipped when already recorded).
    pub fn record(&mut self, u: CredentialUse) {
        if u.seq <= self.last_seq {
            tracing::debug!(
                seq = u.seq,
                last_seq = self.last_seq,
                "credential use already recorded"
            );
            return;
        }
        if u.seq > self.last_seq + 1 {
            let dropped = u.seq - self.last_seq - 1;
            tracing::warn!(
                after_seq = self.last_seq,
                next_seq = u.seq,
                dropped,
                "credential uses lost: the bridge's journal bound dropped them before the agent recorded them"
            );
            self.audit.record(AuditEvent {
                call: "credential_use_gap".into(),
                outcome: "gap".into(),
                detail: Some(format!(
                    "bridge sequence numbers {}..={} were dropped by the bridge's journal bound",
                    self.last_seq + 1,
                    u.seq - 1
                )),
                ..Default::default()
            });
        }
        let tool_use_id = parse_at(&u.at).and_then(|at| self.calls.at(&u.sandbox_id, at));
        let refused = u.outcome == protocol::bridge::UseOutcome::HostRefused;
        let decision = refused.then(|| crate::audit::Decision {
            allowed: false,
            rule: u.policy.clone(),
            reason: u.reason.clone(),
        });
        self.audit.record(AuditEvent {
            call: "credential_use".into(),
            decision,
            sandbox_id: Some(u.sandbox_id),
            session_id: Some(u.session_id),
            tool_use_id,
            outcome: u.outcome.to_string(),
            credential_use: Some(CredentialUseDetail {
                bridge_seq: u.seq,
                bridge_at: u.at,
                credential_id: u.credential_id,
                vault_id: u.vault_id,
                host: u.host,
                method: u.method,
                path: u.path,
                status: u.status,
            }),
            ..Default::default()
        });
        self.last_seq = u.seq;
    }
}

/// Keep a subscription to the bridge's credential uses until `cancel`.
pub async fn run(settings: BridgeSettings, mut recorder: Recorder, cancel: CancellationToken) {
    let mut retry = 0u32;
    loop {
        let outcome = tokio::select! {
            r = subscribe_once(&settings, &mut recorder, &mut retry) => r,
            () = cancel.cancelled() => return,
        };
        match outcome {
            Ok(()) => {
                tracing::info!(socket = %settings.socket_path.display(), "vault-bridge ended the audit stream; reconnecting")
            }
            Err(error) => {
                tracing::warn!(%error, "audit subscription to the vault-bridge failed; reconnecting")
            }
        }
        let pause = RECONNECT.delay(retry, 0.0);
        retry = retry.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = cancel.cancelled() => return,
        }
    }
}

async fn subscribe_once(
    settings: &BridgeSettings,
    recorder: &mut Recorder,
    retry: &mut u32,
) -> Result<(), BridgeError> {
    let socket = settings.socket_path.clone();
    let io = |operation: &'static str| {
        let socket = socket.clone();
        move |source| BridgeError::Io {
            socket,
            operation,
            source,
        }
    };
    let protocol_err = |message: String| BridgeError::Protocol {
        socket: socket.clone(),
        message,
    };
    let codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    let handshake = async {
        let mut stream = UnixStream::connect(&socket).await.map_err(io("connect"))?;
        for m in [
            ToBridge::hello(env!("CARGO_PKG_VERSION")),
            ToBridge::SubscribeAudit {
                after_seq: recorder.last_seq(),
            },
        ] {
            let frame = Frame::control(&m).map_err(|e| protocol_err(e.to_string()))?;
            let bytes = codec
                .encode_to_bytes(&frame)
                .map_err(|e| protocol_err(e.to_string()))?;
            stream.write_all(&bytes).await.map_err(io("write"))?;
        }
        match read(&socket, &mut stream, &codec, &mut buf).await? {
            Some(FromBridge::HelloAccepted { .. }) => Ok(stream),
            Some(FromBridge::Error { code, message }) => Err(BridgeError::Refused {
                socket: socket.clone(),
                code,
                message,
            }),
            Some(_) => Err(protocol_err("unexpected answer to hello".into())),
            None => Err(protocol_err("the bridge closed the connection".into())),
        }
    };
    let mut stream = match tokio::time::timeout(settings.call_timeout, handshake).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(BridgeError::Timeout {
                socket,
                timeout: settings.call_timeout,
            })
        }
    };
    tracing::info!(socket = %socket.display(), after_seq = recorder.last_seq(), "subscribed to the vault-bridge's credential uses");
    *retry = 0;
    loop {
        match read(&socket, &mut stream, &codec, &mut buf).await? {
            Some(FromBridge::AuditRecord(u)) => recorder.record(u),
            Some(FromBridge::Error { code, message }) => {
                return Err(BridgeError::Refused {
                    socket,
                    code,
                    message,
                })
            }
            Some(_) => {
                return Err(protocol_err(
                    "unexpected message on the audit stream".into(),
                ))
            }
            None => return Ok(()),
        }
    }
}

async fn read(
    socket: &Path,
    stream: &mut UnixStream,
    codec: &FrameCodec,
    buf: &mut BytesMut,
) -> Result<Option<FromBridge>, BridgeError> {
    let err = |message: String| BridgeError::Protocol {
        socket: socket.to_owned(),
        message,
    };
    loop {
        if let Some(f) = codec.decode(buf).map_err(|e| err(e.to_string()))? {
            return FromBridge::decode(&f)
                .map(Some)
                .map_err(|e| err(e.to_string()));
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|source| BridgeError::Io {
                socket: socket.to_owned(),
                operation: "read",
                source,
            })?;
        if n == 0 {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::bridge::UseOutcome;

    fn use_(seq: u64, at: &str) -> CredentialUse {
        CredentialUse {
            seq,
            at: at.into(),
            sandbox_id: "sbx_1".into(),
            session_id: "sesn_1".into(),
            credential_id: Some("vcrd_1".into()),
            vault_id: Some("vlt_1".into()),
            host: "git.example.com".into(),
            method: "GET".into(),
            path: "/x".into(),
            outcome: UseOutcome::Injected,
            status: Some(200),
            policy: None,
            reason: None,
        }
    }

    fn now_rfc3339() -> String {
        time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    }

    #[test]
    fn a_use_inside_the_second_of_two_calls_back_to_back_is_the_seconds() {
        let calls = ToolCalls::default();
        drop(calls.begin("sbx_1", "toolu_a"));
        // toolu_b starts within SLACK of toolu_a's end; a use during b (also
        // within SLACK of a's end) is b's, not ambiguous.
        let _b = calls.begin("sbx_1", "toolu_b");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            calls.at("sbx_1", SystemTime::now()).as_deref(),
            Some("toolu_b")
        );
    }

    #[test]
    fn attribution_needs_exactly_one_call_spanning_the_use() {
        let calls = ToolCalls::default();
        assert_eq!(calls.at("sbx_1", SystemTime::now()), None);
        let g = calls.begin("sbx_1", "toolu_a");
        assert_eq!(
            calls.at("sbx_1", SystemTime::now()).as_deref(),
            Some("toolu_a")
        );
        assert_eq!(calls.at("sbx_2", SystemTime::now()), None);
        let h = calls.begin("sbx_1", "toolu_b");
        assert_eq!(calls.at("sbx_1", SystemTime::now()), None, "two candidates");
        drop(h);
        drop(g);
        // A use long after both ended belongs to neither.
        assert_eq!(
            calls.at("sbx_1", SystemTime::now() + Duration::from_secs(5)),
            None
        );
        // A use before either started belongs to neither.
        assert_eq!(
            calls.at("sbx_1", SystemTime::now() - Duration::from_secs(60)),
            None
        );
    }

    #[test]
    fn recorder_dedupes_attributes_and_records_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditLog::open(dir.path()).unwrap();
        let calls = ToolCalls::default();
        let mut r = Recorder::new(audit.clone(), calls.clone()).unwrap();
        let guard = calls.begin("sbx_1", "toolu_1");
        r.record(use_(1, &now_rfc3339()));
        r.record(use_(1, &now_rfc3339()));
        drop(guard);
        r.record(use_(4, "2000-01-01T00:00:00Z"));
        assert_eq!(r.last_seq(), 4);
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(audit.path())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0]["call"], "credential_use");
        assert_eq!(lines[0]["tool_use_id"], "toolu_1");
        assert_eq!(lines[0]["outcome"], "injected");
        assert_eq!(lines[0]["credential_use"]["bridge_seq"], 1);
        assert_eq!(lines[0]["credential_use"]["vault_id"], "vlt_1");
        assert_eq!(lines[1]["call"], "credential_use_gap");
        assert_eq!(lines[2]["credential_use"]["bridge_seq"], 4);
        assert!(lines[2].get("tool_use_id").is_none());
        crate::audit::verify(audit.path()).unwrap();
        // A restarted agent resumes after the last recorded use.
        let r = Recorder::new(AuditLog::open(dir.path()).unwrap(), calls).unwrap();
        assert_eq!(r.last_seq(), 4);
    }

    #[test]
    fn a_host_refusal_is_a_line_whose_decision_names_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditLog::open(dir.path()).unwrap();
        let mut r = Recorder::new(audit.clone(), ToolCalls::default()).unwrap();
        let mut u = use_(1, &now_rfc3339());
        u.credential_id = None;
        u.vault_id = None;
        u.host = "b.test".into();
        u.method = "CONNECT".into();
        u.path = String::new();
        u.status = None;
        u.outcome = UseOutcome::HostRefused;
        u.policy = Some("policy.egress_hosts".into());
        u.reason = Some("host b.test port 443 is in the session's allowed hosts but not in this agent's policy.egress_hosts".into());
        r.record(u);
        let line: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(audit.path()).unwrap().trim()).unwrap();
        assert_eq!(line["call"], "credential_use");
        assert_eq!(line["outcome"], "host_refused");
        assert_eq!(line["decision"]["allowed"], false);
        assert_eq!(line["decision"]["rule"], "policy.egress_hosts");
        assert!(line["decision"]["reason"]
            .as_str()
            .unwrap()
            .contains("b.test port 443"));
        assert_eq!(line["credential_use"]["bridge_seq"], 1);
        assert_eq!(line["credential_use"]["host"], "b.test");
        crate::audit::verify(audit.path()).unwrap();
        // Its seq counts for the resume like any use.
        assert_eq!(
            Recorder::new(AuditLog::open(dir.path()).unwrap(), ToolCalls::default())
                .unwrap()
                .last_seq(),
            1
        );
    }
}
