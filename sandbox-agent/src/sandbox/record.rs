//! The execution record: `tool_use_id` → outcome, persisted in the agent's
//! data dir so that a tool call re-sent after a crash (of the control plane,
//! the harness or this agent) is answered from the record instead of running
//! twice.
//!
//! File: `executions.jsonl`, append-only JSON lines:
//!
//! ```text
//! {"t":"start","id":"toolu_1","sandbox_id":"sbx_…","at":1700000000}
//! {"t":"done","id":"toolu_1","sandbox_id":"sbx_…","at":…,"result":{…ToolResult…}}
//! {"t":"unknown","id":"toolu_2","sandbox_id":"sbx_…","at":…,"reason":"…"}
//! ```
//!
//! A `start` is written before the call is sent to the executor; `done` after
//! its result. On open, a `start` without a `done` means the agent stopped
//! while the call ran: its outcome is `unknown` (it may have run; the result
//! was lost), and a re-sent call says so rather than running again. The file
//! is written with `write(2)`, not fsync'd: the guarantee is across agent
//! process restarts; a host crash also ends every sandbox. Entries older than
//! the retention are dropped when the file is compacted at open.
//! The in-memory index keeps only offsets; results are read back on replay.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use protocol::sandbox::{Disposition, ToolResult};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::docker::unix_now;
use super::SandboxError;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Line {
    Start {
        id: String,
        sandbox_id: String,
        at: u64,
    },
    Done {
        id: String,
        sandbox_id: String,
        at: u64,
        result: ToolResult,
    },
    Unknown {
        id: String,
        sandbox_id: String,
        at: u64,
        reason: String,
    },
}

#[derive(Debug)]
enum State {
    Running(watch::Sender<Option<ToolResult>>),
    Done { offset: u64, len: usize },
    Unknown { reason: String },
}

#[derive(Debug)]
struct Entry {
    sandbox_id: String,
    at: u64,
    state: State,
}

/// What to do with an `execute` given the record.
#[derive(Debug)]
pub enum Begin {
    /// First time: run it (a `start` line has been written).
    Run,
    /// Already answered: here is the recorded result (disposition `replayed`).
    Replay(ToolResult),
    /// It was running when the agent or its sandbox died: outcome unknown.
    Unknown(ToolResult),
    /// The same id is running right now: wait on this for its result.
    InFlight(watch::Receiver<Option<ToolResult>>),
}

/// The persisted execution record.
#[derive(Debug)]
pub struct ExecutionRecord {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: File,
    len: u64,
    index: HashMap<String, Entry>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::State {
        path: path.to_owned(),
        source,
    }
}

/// The result returned for an unknown outcome.
pub fn unknown_result(tool_use_id: &str, reason: &str) -> ToolResult {
    let mut r = ToolResult::text(
        format!(
            "the outcome of tool call {tool_use_id} is unknown: {reason}. It may or may not have run; \
             check the sandbox state before retrying"
        ),
        true,
    );
    r.disposition = Disposition::Unknown;
    r
}

impl ExecutionRecord {
    /// Open (creating) `dir/executions.jsonl`, compacting away entries older
    /// than `retention` and turning unfinished calls into `unknown`.
    pub fn open(dir: &Path, retention: Duration) -> Result<Self, SandboxError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join("executions.jsonl");
        let cutoff = unix_now().saturating_sub(retention.as_secs());
        let mut kept: Vec<Line> = Vec::new();
        if path.exists() {
            let file = File::open(&path).map_err(io(&path))?;
            for line in BufReader::new(file).split(b'\n') {
                let line = line.map_err(io(&path))?;
                // A torn last line (crash mid-write) is skipped, not fatal.
                let Ok(parsed) = serde_json::from_slice::<Line>(&line) else {
                    continue;
                };
                let at = match &parsed {
                    Line::Start { at, .. } | Line::Done { at, .. } | Line::Unknown { at, .. } => {
                        *at
                    }
                };
                if at >= cutoff {
                    kept.push(parsed);
                }
            }
        }
        // Fold into final states, then rewrite the file compactly.
        let mut order: Vec<String> = Vec::new();
        let mut last: HashMap<String, Line> = HashMap::new();
        for l in kept {
            let id = match &l {
                Line::Start { id, .. } | Line::Done { id, .. } | Line::Unknown { id, .. } => {
                    id.clone()
                }
            };
            if !last.contains_key(&id) {
                order.push(id.clone());
            }
            match (&l, last.get(&id)) {
                // a later `start` never overrides an outcome
                (Line::Start { .. }, Some(Line::Done { .. } | Line::Unknown { .. })) => {}
                _ => {
                    last.insert(id, l);
                }
            }
        }
        let tmp = dir.join("executions.jsonl.tmp");
        let mut out = std::io::BufWriter::new(File::create(&tmp).map_err(io(&tmp))?);
        let mut index = HashMap::new();
        let mut offset = 0u64;
        for id in order {
            let Some(l) = last.remove(&id) else { continue };
            let l = match l {
                Line::Start { id, sandbox_id, at } => Line::Unknown {
                    id,
                    sandbox_id,
                    at,
                    reason: "the sandbox-agent restarted while the call was running".into(),
                },
                other => other,
            };
            let mut bytes =
                serde_json::to_vec(&l).map_err(|e| SandboxError::Internal(e.to_string()))?;
            bytes.push(b'\n');
            out.write_all(&bytes).map_err(io(&tmp))?;
            let (sandbox_id, at, state) = match l {
                Line::Done { sandbox_id, at, .. } => (
                    sandbox_id,
                    at,
                    State::Done {
                        offset,
                        len: bytes.len() - 1,
                    },
                ),
                Line::Unknown {
                    sandbox_id,
                    at,
                    reason,
                    ..
                } => (sandbox_id, at, State::Unknown { reason }),
                Line::Start { .. } => continue,
            };
            index.insert(
                id,
                Entry {
                    sandbox_id,
                    at,
                    state,
                },
            );
            offset += bytes.len() as u64;
        }
        out.flush().map_err(io(&tmp))?;
        drop(out);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        Ok(Self {
            path,
            inner: Mutex::new(Inner {
                file,
                len: offset,
                index,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The index stays consistent on panic (each update is one insert).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append(&self, inner: &mut Inner, line: &Line) -> Result<(u64, usize), SandboxError> {
        let mut bytes =
            serde_json::to_vec(line).map_err(|e| SandboxError::Internal(e.to_string()))?;
        bytes.push(b'\n');
        let offset = inner.len;
        inner.file.write_all(&bytes).map_err(io(&self.path))?;
        inner.len += bytes.len() as u64;
        Ok((offset, bytes.len() - 1))
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<ToolResult, SandboxError> {
        let mut f = File::open(&self.path).map_err(io(&self.path))?;
        f.seek(SeekFrom::Start(offset)).map_err(io(&self.path))?;
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf).map_err(io(&self.path))?;
        match serde_json::from_slice::<Line>(&buf) {
            Ok(Line::Done { mut result, .. }) => {
                result.disposition = Disposition::Replayed;
                Ok(result)
            }
            _ => Err(SandboxError::Internal(format!(
                "execution record {} is corrupt at offset {offset}",
                self.path.display()
            ))),
        }
    }

    /// Decide what to do with call `id` on `sandbox_id`; records `start` when it should run.
    pub fn begin(&self, id: &str, sandbox_id: &str) -> Result<Begin, SandboxError> {
        let mut inner = self.lock();
        if let Some(e) = inner.index.get(id) {
            return match &e.state {
                State::Running(tx) => Ok(Begin::InFlight(tx.subscribe())),
                State::Unknown { reason } => Ok(Begin::Unknown(unknown_result(id, reason))),
                State::Done { offset, len } => {
                    let (offset, len) = (*offset, *len);
                    drop(inner);
                    self.read_at(offset, len).map(Begin::Replay)
                }
            };
        }
        let at = unix_now();
        self.append(
            &mut inner,
            &Line::Start {
                id: id.to_owned(),
                sandbox_id: sandbox_id.to_owned(),
                at,
            },
        )?;
        let (tx, _) = watch::channel(None);
        inner.index.insert(
            id.to_owned(),
            Entry {
                sandbox_id: sandbox_id.to_owned(),
                at,
                state: State::Running(tx),
            },
        );
        Ok(Begin::Run)
    }

    /// Record the result of call `id`.
    pub fn finish(&self, id: &str, result: &ToolResult) -> Result<(), SandboxError> {
        let mut inner = self.lock();
        let Some(sandbox_id) = inner.index.get(id).map(|e| e.sandbox_id.clone()) else {
            return Err(SandboxError::Internal(format!(
                "finish of unrecorded tool_use_id {id}"
            )));
        };
        let at = unix_now();
        let (offset, len) = self.append(
            &mut inner,
            &Line::Done {
                id: id.to_owned(),
                sandbox_id: sandbox_id.clone(),
                at,
                result: result.clone(),
            },
        )?;
        if let Some(e) = inner.index.get_mut(id) {
            let old = std::mem::replace(&mut e.state, State::Done { offset, len });
            e.at = at;
            if let State::Running(tx) = old {
                let mut replay = result.clone();
                replay.disposition = Disposition::Replayed;
                let _ = tx.send(Some(replay));
            }
        }
        Ok(())
    }

    /// Record that call `id` ended with an unknown outcome (its sandbox died,
    /// or the agent gave up waiting); returns the result to answer with.
    pub fn finish_unknown(&self, id: &str, reason: &str) -> Result<ToolResult, SandboxError> {
        let mut inner = self.lock();
        let sandbox_id = inner
            .index
            .get(id)
            .map(|e| e.sandbox_id.clone())
            .unwrap_or_default();
        self.append(
            &mut inner,
            &Line::Unknown {
                id: id.to_owned(),
                sandbox_id,
                at: unix_now(),
                reason: reason.to_owned(),
            },
        )?;
        let result = unknown_result(id, reason);
        if let Some(e) = inner.index.get_mut(id) {
            let old = std::mem::replace(
                &mut e.state,
                State::Unknown {
                    reason: reason.to_owned(),
                },
            );
            if let State::Running(tx) = old {
                let _ = tx.send(Some(result.clone()));
            }
        }
        Ok(result)
    }

    /// Forget a call that never started (e.g. refused before running).
    pub fn abandon(&self, id: &str) {
        let mut inner = self.lock();
        if matches!(
            inner.index.get(id).map(|e| &e.state),
            Some(State::Running(_))
        ) {
            inner.index.remove(id);
        }
    }

    /// Number of entries (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().index.len()
    }

    /// Whether the record is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Oldest entry time, unix seconds (for tests).
    pub fn oldest(&self) -> Option<u64> {
        self.lock().index.values().map(|e| e.at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_survives_reopen_and_unfinished_becomes_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_secs(3600);
        {
            let r = ExecutionRecord::open(dir.path(), ttl).unwrap();
            assert!(matches!(r.begin("t1", "sbx_a").unwrap(), Begin::Run));
            r.finish("t1", &ToolResult::text("hello", false)).unwrap();
            assert!(matches!(r.begin("t2", "sbx_a").unwrap(), Begin::Run));
            match r.begin("t2", "sbx_a").unwrap() {
                Begin::InFlight(_) => {}
                other => panic!("{other:?}"),
            }
            match r.begin("t1", "sbx_a").unwrap() {
                Begin::Replay(res) => {
                    assert_eq!(res.disposition, Disposition::Replayed);
                    assert_eq!(res.content[0]["text"], "hello");
                }
                other => panic!("{other:?}"),
            }
        }
        let r = ExecutionRecord::open(dir.path(), ttl).unwrap();
        assert!(matches!(r.begin("t1", "sbx_a").unwrap(), Begin::Replay(_)));
        match r.begin("t2", "sbx_a").unwrap() {
            Begin::Unknown(res) => {
                assert_eq!(res.disposition, Disposition::Unknown);
                assert!(res.is_error);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.begin("t3", "sbx_a").unwrap(), Begin::Run));
    }

    #[test]
    fn torn_last_line_is_ignored_and_old_entries_expire() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("executions.jsonl");
        std::fs::write(
            &p,
            "{\"t\":\"start\",\"id\":\"old\",\"sandbox_id\":\"s\",\"at\":1}\n{\"t\":\"done\",\"id\":\"x\"",
        )
        .unwrap();
        let r = ExecutionRecord::open(dir.path(), Duration::from_secs(60)).unwrap();
        assert!(r.is_empty());
        assert!(matches!(r.begin("old", "s").unwrap(), Begin::Run));
    }
}
