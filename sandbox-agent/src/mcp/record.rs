//! The MCP call record: `tool_use_id` → reply, persisted in the agent's data
//! dir so that an `mcp_call_tool` re-sent after a crash (of the control
//! plane, the harness, this agent or the bridge) is answered from the record
//! and never reaches the MCP server twice.
//!
//! File: `mcp_calls.jsonl`, append-only JSON lines, the same discipline as
//! the execution record of `execute` ([`crate::sandbox::record`]):
//!
//! ```text
//! {"t":"start","id":"mcptoolu_1","session_id":"sesn_…","server":"tickets","at":1700000000}
//! {"t":"done","id":"mcptoolu_1","at":…,"reply":{…McpReply…}}
//! {"t":"unknown","id":"mcptoolu_2","at":…,"reason":"…"}
//! ```
//!
//! `start` is written and flushed to disk (`fdatasync`) before the request
//! goes to the bridge, so that even a host crash cannot lose it; `done` is
//! written after the reply (not synced: losing it turns the call into
//! `unknown`, never into a second call). On open, a `start` without an
//! outcome becomes `unknown`. Entries older than the retention are dropped
//! when the file is compacted at open. The index keeps offsets; replies are
//! read back on replay.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use protocol::mcp::{McpFailure, McpOutcome, McpReply};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::sandbox::docker::unix_now;

/// File name of the record in the data dir.
pub const FILE_NAME: &str = "mcp_calls.jsonl";

/// The record could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// A file operation failed.
    #[error("MCP call record {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A recorded reply could not be read back.
    #[error("MCP call record {path} is corrupt at offset {offset}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
    },
    /// `finish` of an id that was never started.
    #[error("MCP call record: finish of unrecorded tool_use_id {0}")]
    NotStarted(String),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Line {
    Start {
        id: String,
        session_id: String,
        server: String,
        at: u64,
    },
    Done {
        id: String,
        at: u64,
        reply: McpReply,
    },
    Unknown {
        id: String,
        at: u64,
        reason: String,
    },
    /// The call never reached the bridge: as if it had not started.
    Abandoned {
        id: String,
        at: u64,
    },
}

impl Line {
    fn id(&self) -> &str {
        match self {
            Line::Start { id, .. }
            | Line::Done { id, .. }
            | Line::Unknown { id, .. }
            | Line::Abandoned { id, .. } => id,
        }
    }

    fn at(&self) -> u64 {
        match self {
            Line::Start { at, .. }
            | Line::Done { at, .. }
            | Line::Unknown { at, .. }
            | Line::Abandoned { at, .. } => *at,
        }
    }
}

#[derive(Debug)]
enum State {
    Running(watch::Sender<Option<McpReply>>),
    Done { offset: u64, len: usize },
    Unknown { reason: String },
}

/// What to do with an `mcp_call_tool` given the record.
#[derive(Debug)]
pub enum Begin {
    /// First time: call it (`start` is on disk).
    Call,
    /// Already answered: the recorded reply, `replayed: true`.
    Replay(McpReply),
    /// An earlier attempt started and its outcome was never recorded:
    /// `Failed { outcome_unknown }`, `replayed: true`.
    Unknown(McpReply),
    /// The same id is being called right now: its reply comes on this.
    InFlight(watch::Receiver<Option<McpReply>>),
}

/// The reply to a call whose outcome is unknown.
pub fn unknown_reply(tool_use_id: &str, reason: &str) -> McpReply {
    McpReply {
        outcome: McpOutcome::Failed {
            failure: McpFailure::OutcomeUnknown,
            message: format!(
                "the outcome of MCP tool call {tool_use_id} is unknown: {reason}; it may or may \
                 not have reached the MCP server, and it is not called again"
            ),
        },
        credential_id: None,
        replayed: true,
        tools_changed: false,
    }
}

/// The persisted MCP call record.
#[derive(Debug)]
pub struct McpRecord {
    path: PathBuf,
    inner: Mutex<Inner>,
    /// A second handle on the file, to `fdatasync` outside the lock.
    sync: File,
}

#[derive(Debug)]
struct Inner {
    file: File,
    len: u64,
    index: HashMap<String, State>,
}

impl McpRecord {
    /// Open (creating) `dir/mcp_calls.jsonl`, compacting away entries older
    /// than `retention` and turning unfinished calls into `unknown`.
    pub fn open(dir: &Path, retention: Duration) -> Result<Self, RecordError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| RecordError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(FILE_NAME);
        let cutoff = unix_now().saturating_sub(retention.as_secs());
        let mut order: Vec<String> = Vec::new();
        let mut last: HashMap<String, Line> = HashMap::new();
        if path.exists() {
            let file = File::open(&path).map_err(io(&path))?;
            for line in BufReader::new(file).split(b'\n') {
                let line = line.map_err(io(&path))?;
                // A torn last line (crash mid-write) is skipped.
                let Ok(l) = serde_json::from_slice::<Line>(&line) else {
                    continue;
                };
                if l.at() < cutoff {
                    continue;
                }
                let id = l.id().to_owned();
                match (&l, last.get(&id)) {
                    // A later `start` never overrides an outcome.
                    (Line::Start { .. }, Some(Line::Done { .. } | Line::Unknown { .. })) => {}
                    // An abandoned start is forgotten (an outcome is kept).
                    (Line::Abandoned { .. }, Some(Line::Start { .. })) => {
                        last.remove(&id);
                    }
                    (Line::Abandoned { .. }, _) => {}
                    _ => {
                        if !last.contains_key(&id) {
                            order.push(id.clone());
                        }
                        last.insert(id, l);
                    }
                }
            }
        }
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        let mut out = std::io::BufWriter::new(File::create(&tmp).map_err(io(&tmp))?);
        let mut index = HashMap::new();
        let mut offset = 0u64;
        for id in order {
            let Some(l) = last.remove(&id) else { continue };
            let l = match l {
                Line::Start { id, at, .. } => Line::Unknown {
                    id,
                    at,
                    reason: "the sandbox-agent restarted while the call was running".into(),
                },
                other => other,
            };
            let mut bytes =
                serde_json::to_vec(&l).map_err(|e| io(&tmp)(std::io::Error::other(e)))?;
            bytes.push(b'\n');
            out.write_all(&bytes).map_err(io(&tmp))?;
            let state = match l {
                Line::Done { .. } => State::Done {
                    offset,
                    len: bytes.len() - 1,
                },
                Line::Unknown { reason, .. } => State::Unknown { reason },
                Line::Start { .. } | Line::Abandoned { .. } => continue,
            };
            index.insert(id, state);
            offset += bytes.len() as u64;
        }
        out.flush().map_err(io(&tmp))?;
        out.get_ref().sync_data().map_err(io(&tmp))?;
        drop(out);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let sync = file.try_clone().map_err(io(&path))?;
        Ok(Self {
            path,
            inner: Mutex::new(Inner {
                file,
                len: offset,
                index,
            }),
            sync,
        })
    }

    /// The record's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Each update is one insert: a poisoned lock still holds a consistent index.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn io_err(&self, source: std::io::Error) -> RecordError {
        RecordError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn append(&self, inner: &mut Inner, line: &Line) -> Result<(u64, usize), RecordError> {
        let mut bytes =
            serde_json::to_vec(line).map_err(|e| self.io_err(std::io::Error::other(e)))?;
        bytes.push(b'\n');
        let offset = inner.len;
        inner.file.write_all(&bytes).map_err(|e| self.io_err(e))?;
        inner.len += bytes.len() as u64;
        Ok((offset, bytes.len() - 1))
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<McpReply, RecordError> {
        let mut f = File::open(&self.path).map_err(|e| self.io_err(e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| self.io_err(e))?;
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf).map_err(|e| self.io_err(e))?;
        match serde_json::from_slice::<Line>(&buf) {
            Ok(Line::Done { mut reply, .. }) => {
                reply.replayed = true;
                Ok(reply)
            }
            _ => Err(RecordError::Corrupt {
                path: self.path.clone(),
                offset,
            }),
        }
    }

    /// Decide what to do with call `id`; when it should be called, `start`
    /// is written and synced to disk before this returns.
    pub fn begin(&self, id: &str, session_id: &str, server: &str) -> Result<Begin, RecordError> {
        {
            let mut inner = self.lock();
            if let Some(state) = inner.index.get(id) {
                return match state {
                    State::Running(tx) => Ok(Begin::InFlight(tx.subscribe())),
                    State::Unknown { reason } => Ok(Begin::Unknown(unknown_reply(id, reason))),
                    State::Done { offset, len } => {
                        let (offset, len) = (*offset, *len);
                        drop(inner);
                        self.read_at(offset, len).map(Begin::Replay)
                    }
                };
            }
            self.append(
                &mut inner,
                &Line::Start {
                    id: id.to_owned(),
                    session_id: session_id.to_owned(),
                    server: server.to_owned(),
                    at: unix_now(),
                },
            )?;
            let (tx, _) = watch::channel(None);
            inner.index.insert(id.to_owned(), State::Running(tx));
        }
        // Outside the lock: concurrent calls sync together, none waits on
        // another's disk flush while holding the index.
        if let Err(e) = self.sync.sync_data() {
            // Not durable: do not call the server on a start that may vanish.
            self.finish_unknown(id, "the MCP call record could not be synced to disk")
                .ok();
            return Err(self.io_err(e));
        }
        Ok(Begin::Call)
    }

    /// Record the bridge's `reply` to call `id`.
    pub fn finish(&self, id: &str, reply: &McpReply) -> Result<(), RecordError> {
        let mut inner = self.lock();
        if !inner.index.contains_key(id) {
            return Err(RecordError::NotStarted(id.to_owned()));
        }
        let (offset, len) = self.append(
            &mut inner,
            &Line::Done {
                id: id.to_owned(),
                at: unix_now(),
                reply: reply.clone(),
            },
        )?;
        if let Some(state) = inner.index.get_mut(id) {
            let old = std::mem::replace(state, State::Done { offset, len });
            if let State::Running(tx) = old {
                let mut replay = reply.clone();
                replay.replayed = true;
                let _ = tx.send(Some(replay));
            }
        }
        Ok(())
    }

    /// Record that call `id` ended with an unknown outcome; returns the
    /// reply to answer with.
    pub fn finish_unknown(&self, id: &str, reason: &str) -> Result<McpReply, RecordError> {
        let mut reply = unknown_reply(id, reason);
        let mut inner = self.lock();
        let written = self.append(
            &mut inner,
            &Line::Unknown {
                id: id.to_owned(),
                at: unix_now(),
                reason: reason.to_owned(),
            },
        );
        let old = inner.index.insert(
            id.to_owned(),
            State::Unknown {
                reason: reason.to_owned(),
            },
        );
        if let Some(State::Running(tx)) = old {
            let _ = tx.send(Some(reply.clone()));
        }
        written?;
        // The first answer about this attempt is not a replay.
        reply.replayed = false;
        Ok(reply)
    }

    /// Forget call `id`: it never reached the bridge (no bridge, bridge not
    /// reachable, refused before sending), so a retry may call it. Waiters
    /// get `reply`.
    pub fn abandon(&self, id: &str, reply: &McpReply) {
        let mut inner = self.lock();
        if matches!(inner.index.get(id), Some(State::Running(_))) {
            if let Some(State::Running(tx)) = inner.index.remove(id) {
                let _ = tx.send(Some(reply.clone()));
            }
            // Without this line the `start` would read as unknown after a
            // restart; losing it errs the same safe way.
            if let Err(error) = self.append(
                &mut inner,
                &Line::Abandoned {
                    id: id.to_owned(),
                    at: unix_now(),
                },
            ) {
                tracing::warn!(tool_use_id = %id, %error, "MCP call record: abandon not written");
            }
        }
    }

    /// Number of calls in the record.
    pub fn len(&self) -> usize {
        self.lock().index.len()
    }

    /// Whether the record is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
