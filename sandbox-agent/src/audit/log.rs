//! The writer: one chain per audit dir and process, appended under a lock.
//!
//! Invariants: `len` is the length of `audit.jsonl` up to its last whole
//! line; a write that fails is cut back to `len` before anything else is
//! written (`dirty` until that succeeded), so the file never holds a partial
//! line followed by a good one. `seq`/`prev` move only after a whole line
//! was written. A checkpoint is published (status, control plane) only
//! after its line is written and synced.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use pki::audit_key::AuditKey;
use protocol::audit::{AuditCheckpoint, AuditStatus};
use serde::Serialize;
use tokio::sync::watch;

use super::chain::{hash_of, segment_name};
use super::config::{AuditSettings, Detail};
use super::store::OutputStore;
use super::verify::{tail_state, TailState};
use super::{AuditError, AuditEvent, CALL_CHECKPOINT, CURRENT_FILE, FORMAT_VERSION, KEY_FILE};

/// How a line is encoded before its hash is appended.
#[derive(Serialize)]
struct LineOut<'a> {
    seq: u64,
    at: &'a str,
    #[serde(flatten)]
    event: &'a AuditEvent,
    prev: &'a str,
}

struct Signer {
    key: AuditKey,
    agent_id: String,
}

struct Writer {
    dir: PathBuf,
    path: PathBuf,
    /// `None` after a rotation whose new file could not be created.
    file: Option<File>,
    seq: u64,
    prev: String,
    len: u64,
    /// A failed write may have left bytes after `len`.
    dirty: bool,
    settings: AuditSettings,
    signer: Option<Signer>,
    since_checkpoint: u64,
    last_is_checkpoint: bool,
    last_checkpoint_at: Instant,
    timer_started: bool,
    /// A checkpoint written and synced but not yet in the status.
    unpublished: Option<AuditCheckpoint>,
}

struct Shared {
    writer: Mutex<Writer>,
    status: watch::Sender<AuditStatus>,
    outputs: OnceLock<OutputStore>,
}

type OpenLogs = std::collections::HashMap<PathBuf, Weak<Shared>>;

/// The logs open in this process, by absolute path of `audit.jsonl`.
static OPEN_LOGS: std::sync::LazyLock<Mutex<OpenLogs>> = std::sync::LazyLock::new(Default::default);

/// Append handle on the audit log. Cheap to clone (clones share the file,
/// the chain state and the status).
#[derive(Clone)]
pub struct AuditLog {
    path: PathBuf,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl AuditLog {
    /// Open (creating) `dir/audit.jsonl` with the default settings and no
    /// agent id: no checkpoints are made by this handle (until the log is
    /// opened with [`AuditLog::open_with`] in the same process).
    ///
    /// Within one process a log already open is shared, not reopened: two
    /// writers with their own chain state would fork the chain.
    pub fn open(dir: &Path) -> Result<Self, AuditError> {
        Self::open_inner(&AuditSettings::defaults(dir), None)
    }

    /// Open (creating) the log of `settings.dir` for `agent_id`: checks the
    /// current file's chain from the last segment's head, loads or makes
    /// the signing key (`audit-signing.key`), opens the outputs store (and
    /// runs its retention), and, inside a tokio runtime, starts the
    /// periodic checkpoint (and hourly retention) task. When the log is
    /// already open in this process, the shared handle takes these settings
    /// and the agent id.
    pub fn open_with(settings: &AuditSettings, agent_id: &str) -> Result<Self, AuditError> {
        Self::open_inner(settings, Some(agent_id))
    }

    fn open_inner(settings: &AuditSettings, agent_id: Option<&str>) -> Result<Self, AuditError> {
        let path = settings.dir.join(CURRENT_FILE);
        let key = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
        let mut open = OPEN_LOGS.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, w| w.strong_count() > 0);
        let log = match open.get(&key).and_then(Weak::upgrade) {
            Some(shared) => {
                let log = Self { path, shared };
                if agent_id.is_some() {
                    log.configure(settings, agent_id)?;
                }
                log
            }
            None => {
                let log = Self::open_file(settings, agent_id, path)?;
                open.insert(key, Arc::downgrade(&log.shared));
                log
            }
        };
        drop(open);
        log.start_tasks();
        Ok(log)
    }

    fn open_file(
        settings: &AuditSettings,
        agent_id: Option<&str>,
        path: PathBuf,
    ) -> Result<Self, AuditError> {
        let dir = settings.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| AuditError::Io {
            path: dir.clone(),
            source,
        })?;
        let TailState {
            torn,
            seq,
            hash,
            since_checkpoint,
            last_checkpoint,
            last_is_checkpoint,
        } = tail_state(&dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| AuditError::Io {
                path: path.clone(),
                source,
            })?;
        if let Some((offset, _)) = torn {
            // A write cut short by a crash: no whole line, never covered by
            // a checkpoint. Cut it; the first line written says so.
            file.set_len(offset)
                .and_then(|()| file.sync_data())
                .map_err(|source| AuditError::Io {
                    path: path.clone(),
                    source,
                })?;
        }
        let len = file
            .metadata()
            .map_err(|source| AuditError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        let signer = load_signer(settings, agent_id)?;
        let (status, _) = watch::channel(AuditStatus {
            healthy: true,
            problem: None,
            checkpoint: last_checkpoint,
        });
        let shared = Arc::new(Shared {
            writer: Mutex::new(Writer {
                dir,
                path: path.clone(),
                file: Some(file),
                seq,
                prev: hash,
                len,
                dirty: false,
                settings: settings.clone(),
                signer,
                since_checkpoint,
                last_is_checkpoint,
                last_checkpoint_at: Instant::now(),
                timer_started: false,
                unpublished: None,
            }),
            status,
            outputs: OnceLock::new(),
        });
        let log = Self { path, shared };
        if let Some((offset, cut)) = torn {
            tracing::warn!(path = %log.path.display(), offset, bytes = cut, "audit log: cut a partial last line left by a crash");
            log.try_record(AuditEvent {
                call: "audit_recovered".to_owned(),
                outcome: "torn_line_cut".to_owned(),
                detail: Some(format!(
                    "a partial last line of {cut} bytes (a write cut short) was cut at byte {offset} of {CURRENT_FILE}"
                )),
                ..Default::default()
            })?;
        }
        log.open_outputs(settings)?;
        tracing::info!(path = %log.path.display(), seq, "audit log open");
        Ok(log)
    }

    /// Take `settings` and `agent_id` on a log already open.
    fn configure(
        &self,
        settings: &AuditSettings,
        agent_id: Option<&str>,
    ) -> Result<(), AuditError> {
        {
            let mut w = self.lock();
            if w.signer.is_none() {
                w.signer = load_signer(settings, agent_id)?;
            }
            w.settings = settings.clone();
        }
        self.open_outputs(settings)
    }

    fn open_outputs(&self, settings: &AuditSettings) -> Result<(), AuditError> {
        if settings.outputs.store && self.shared.outputs.get().is_none() {
            let store = OutputStore::open(&settings.outputs)?;
            let _ = self.shared.outputs.set(store);
        }
        Ok(())
    }

    /// The periodic checkpoint and retention task (once per log, only
    /// inside a tokio runtime).
    fn start_tasks(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let period = {
            let mut w = self.lock();
            if w.timer_started || w.signer.is_none() {
                return;
            }
            w.timer_started = true;
            w.settings.checkpoint_interval.min(Duration::from_secs(1))
        };
        let weak = Arc::downgrade(&self.shared);
        let path = self.path.clone();
        handle.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_retention = Instant::now();
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { break };
                let log = AuditLog {
                    path: path.clone(),
                    shared,
                };
                let retention = last_retention.elapsed() >= Duration::from_secs(3600);
                if retention {
                    last_retention = Instant::now();
                }
                // A checkpoint syncs the file and retention walks a
                // directory: off the async workers.
                let done = tokio::task::spawn_blocking(move || {
                    log.tick();
                    if let Some(store) = log.outputs().filter(|_| retention) {
                        if let Err(error) = store.retain() {
                            tracing::warn!(%error, "audit outputs retention failed");
                        }
                    }
                })
                .await;
                if let Err(error) = done {
                    tracing::error!(%error, "audit checkpoint task stopped");
                    break;
                }
            }
        });
    }

    /// Make a checkpoint when one is due by time.
    fn tick(&self) {
        let mut w = self.lock();
        if w.since_checkpoint > 0
            && w.last_checkpoint_at.elapsed() >= w.settings.checkpoint_interval
        {
            let result = w.checkpoint();
            self.publish_checkpoint(&mut w, &result);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        // The writer's state is updated only after a whole line is written,
        // so a panic elsewhere under the lock cannot leave it half-updated.
        self.shared.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Path of the current file (`audit.jsonl`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The audit dir.
    pub fn dir(&self) -> PathBuf {
        self.lock().dir.clone()
    }

    /// What lines hold (`[audit] detail`).
    pub fn detail(&self) -> Detail {
        self.lock().settings.detail
    }

    /// The outputs store, when `[audit.outputs] store = true`.
    pub fn outputs(&self) -> Option<&OutputStore> {
        self.shared.outputs.get()
    }

    /// The checkpoint public key (base64), when checkpoints are made.
    pub fn public_key(&self) -> Option<String> {
        self.lock()
            .signer
            .as_ref()
            .map(|s| s.key.public_key_b64().to_owned())
    }

    /// Append one event. Failures are logged, not propagated: for call
    /// sites that must go on whatever happens (an `end` line, a credential
    /// use). Prefer [`AuditLog::try_record`] before running anything.
    pub fn record(&self, event: AuditEvent) {
        if let Err(error) = self.try_record(event) {
            tracing::error!(%error, "audit record failed");
        }
    }

    /// Append one event; returns the seq of its line. On failure nothing of
    /// the line stays in the file and the log is unhealthy until a later
    /// write succeeds. With `detail = "full"` the writer sets `v`, runs the
    /// token patterns of the [`super::Scrubber`] over `input` (adding to
    /// `redactions`), and makes a checkpoint when `checkpoint_every_records`
    /// records were written since the last one, and rotates the file when it
    /// is larger than `rotate_bytes`. With `detail = "outcomes"` the input,
    /// output and redaction count are left out.
    pub fn try_record(&self, event: AuditEvent) -> Result<u64, AuditError> {
        // Scrub outside the lock: inputs can be large (a `write` call's content).
        let detail = self.lock().settings.detail;
        let event = prepare(detail, event);
        let mut w = self.lock();
        let result = w.append(&event);
        let seq = match result {
            Ok(seq) => seq,
            Err(error) => {
                self.publish(&mut w, Err(&error));
                return Err(error);
            }
        };
        w.since_checkpoint += 1;
        w.last_is_checkpoint = false;
        self.publish(&mut w, Ok(()));
        if w.signer.is_some() && w.since_checkpoint >= w.settings.checkpoint_every_records {
            let result = w.checkpoint();
            self.publish_checkpoint(&mut w, &result);
        }
        if w.len >= w.settings.rotate_bytes {
            match w.rotate() {
                Ok(()) => self.publish(&mut w, Ok(())),
                Err(error) => {
                    tracing::error!(%error, "audit log rotation failed; retrying after the next record");
                    self.publish(&mut w, Err(&error));
                }
            }
        }
        Ok(seq)
    }

    /// Sign the chain head now (the agent's shutdown path calls this);
    /// returns the checkpoint, or `None` when checkpoints are off or there
    /// is nothing new since the last one.
    pub fn checkpoint_now(&self) -> Result<Option<AuditCheckpoint>, AuditError> {
        let mut w = self.lock();
        let result = w.checkpoint();
        self.publish_checkpoint(&mut w, &result);
        result
    }

    /// The audit condition now.
    pub fn status(&self) -> AuditStatus {
        self.shared.status.borrow().clone()
    }

    /// The audit condition, changing on every health change and checkpoint.
    pub fn watch_status(&self) -> watch::Receiver<AuditStatus> {
        self.shared.status.subscribe()
    }

    /// [`AuditLog::publish`] after a checkpoint attempt: a checkpoint that
    /// was not needed wrote nothing and leaves the health as it is.
    fn publish_checkpoint(
        &self,
        w: &mut Writer,
        result: &Result<Option<AuditCheckpoint>, AuditError>,
    ) {
        match result {
            Ok(Some(_)) => self.publish(w, Ok(())),
            Ok(None) => self.publish_inner(w, None),
            Err(e) => self.publish(w, Err(e)),
        }
    }

    /// Update the status after a write (`Ok`) or a failure (`Err`); called
    /// under the writer lock so updates are ordered.
    fn publish(&self, w: &mut Writer, outcome: Result<(), &AuditError>) {
        self.publish_inner(w, Some(outcome))
    }

    /// `outcome` `None`: no write was attempted (only a pending checkpoint
    /// is published).
    fn publish_inner(&self, w: &mut Writer, outcome: Option<Result<(), &AuditError>>) {
        let checkpoint = w.take_published();
        self.shared.status.send_if_modified(|st| {
            let mut changed = false;
            match &outcome {
                None => {}
                Some(Ok(())) if !st.healthy => {
                    tracing::info!(path = %self.path.display(), "audit log writable again");
                    st.healthy = true;
                    st.problem = None;
                    changed = true;
                }
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    let problem = e.to_string();
                    if st.healthy || st.problem.as_deref() != Some(problem.as_str()) {
                        tracing::error!(path = %self.path.display(), error = %problem, "audit log unhealthy: calls are refused");
                        st.healthy = false;
                        st.problem = Some(problem);
                        changed = true;
                    }
                }
            }
            if let Some(cp) = checkpoint {
                st.checkpoint = Some(cp);
                changed = true;
            }
            changed
        });
    }
}

fn load_signer(
    settings: &AuditSettings,
    agent_id: Option<&str>,
) -> Result<Option<Signer>, AuditError> {
    let Some(agent_id) = agent_id else {
        return Ok(None);
    };
    if settings.detail == Detail::Outcomes {
        return Ok(None);
    }
    let key = AuditKey::load_or_generate(&settings.dir.join(KEY_FILE))?;
    Ok(Some(Signer {
        key,
        agent_id: agent_id.to_owned(),
    }))
}

/// Apply the detail level and run the token patterns over the input and
/// the free-text fields (`detail`, `decision.reason`).
fn prepare(detail: Detail, mut event: AuditEvent) -> AuditEvent {
    let scrubber = super::scrub::Scrubber::global();
    let mut found = 0u32;
    for text in [
        event.detail.as_mut(),
        event.decision.as_mut().and_then(|d| d.reason.as_mut()),
    ]
    .into_iter()
    .flatten()
    {
        let (out, n) = scrubber.scrub_str(text);
        if n > 0 {
            *text = out.into_owned();
            found = found.saturating_add(n);
        }
    }
    match detail {
        Detail::Full => {
            event.v = Some(FORMAT_VERSION);
            if let Some(input) = event.input.as_mut() {
                found = found.saturating_add(scrubber.scrub(input));
            }
            if found > 0 {
                event.redactions = Some(event.redactions.unwrap_or(0).saturating_add(found));
            }
        }
        Detail::Outcomes => {
            event.v = None;
            event.input = None;
            event.output = None;
            event.redactions = None;
            event.checkpoint = None;
        }
    }
    event
}

impl Writer {
    fn io(&self, source: std::io::Error) -> AuditError {
        AuditError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// The checkpoint made by the last [`Writer::checkpoint`] and not yet
    /// published.
    fn take_published(&mut self) -> Option<AuditCheckpoint> {
        self.unpublished.take()
    }

    /// Write one line; cut back on failure.
    fn append(&mut self, event: &AuditEvent) -> Result<u64, AuditError> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| self.io(e))?;
            self.len = file.metadata().map_err(|e| self.io(e))?.len();
            self.file = Some(file);
        }
        let Some(file) = self.file.as_mut() else {
            return Err(AuditError::Io {
                path: self.path.clone(),
                source: std::io::Error::other("audit file not open"),
            });
        };
        if self.dirty {
            file.set_len(self.len).map_err(|source| AuditError::Io {
                path: self.path.clone(),
                source,
            })?;
            self.dirty = false;
        }
        let at = now_rfc3339();
        let seq = self.seq + 1;
        let mut bytes = serde_json::to_vec(&LineOut {
            seq,
            at: &at,
            event,
            prev: &self.prev,
        })
        .map_err(AuditError::Encode)?;
        let hash = hash_of(&self.prev, &bytes);
        // `{…}` → `{…,"hash":"<hex>"}\n`: the bytes the hash covers, then
        // the hash as the last key.
        bytes.pop();
        bytes.extend_from_slice(b",\"hash\":\"");
        bytes.extend_from_slice(hash.as_bytes());
        bytes.extend_from_slice(b"\"}\n");
        if let Err(source) = file.write_all(&bytes) {
            self.dirty = true;
            match file.set_len(self.len) {
                Ok(()) => self.dirty = false,
                Err(cut) => {
                    tracing::error!(path = %self.path.display(), error = %cut, "could not cut a failed audit write back; will retry before the next write");
                }
            }
            return Err(AuditError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.len += bytes.len() as u64;
        self.seq = seq;
        self.prev = hash;
        Ok(seq)
    }

    fn sync(&mut self) -> Result<(), AuditError> {
        match self.file.as_ref() {
            Some(f) => f.sync_data().map_err(|e| self.io(e)),
            None => Ok(()),
        }
    }

    /// Write a checkpoint line for the current head, sync, and leave it to
    /// be published. `None` when checkpoints are off or nothing is new.
    fn checkpoint(&mut self) -> Result<Option<AuditCheckpoint>, AuditError> {
        let Some(signer) = self.signer.as_ref() else {
            return Ok(None);
        };
        if self.seq == 0 || (self.last_is_checkpoint && self.since_checkpoint == 0) {
            return Ok(None);
        }
        let at = now_rfc3339();
        let cp = signer
            .key
            .checkpoint(&signer.agent_id, self.seq, &self.prev, &at);
        let event = AuditEvent {
            v: Some(FORMAT_VERSION),
            call: CALL_CHECKPOINT.to_owned(),
            outcome: "signed".to_owned(),
            agent_id: Some(signer.agent_id.clone()),
            checkpoint: Some(cp.clone()),
            ..Default::default()
        };
        self.append(&event)?;
        self.sync()?;
        self.since_checkpoint = 0;
        self.last_is_checkpoint = true;
        self.last_checkpoint_at = Instant::now();
        tracing::debug!(seq = cp.seq, key_id = %cp.key_id, "audit checkpoint");
        self.unpublished = Some(cp.clone());
        Ok(Some(cp))
    }

    /// Checkpoint, sync, rename `audit.jsonl` to its segment name, open a
    /// new one.
    fn rotate(&mut self) -> Result<(), AuditError> {
        if self.seq == 0 || self.file.is_none() {
            return Ok(());
        }
        self.checkpoint()?;
        self.sync()?;
        let segment = self.dir.join(segment_name(self.seq));
        std::fs::rename(&self.path, &segment).map_err(|e| self.io(e))?;
        // From here the old handle points at the segment: never write to it.
        self.file = None;
        self.len = 0;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        self.file = Some(file);
        if let Ok(d) = File::open(&self.dir) {
            if let Err(error) = d.sync_all() {
                tracing::warn!(dir = %self.dir.display(), %error, "audit dir sync after rotation failed");
            }
        }
        tracing::info!(segment = %segment.display(), seq = self.seq, "audit log rotated");
        Ok(())
    }
}
