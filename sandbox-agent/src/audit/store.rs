//! The outputs store (`[audit.outputs] store = true`): the scrubbed result
//! content of calls, content-addressed at `<dir>/sha256/<2 hex>/<62 hex>`,
//! named by the audit line's `output.stored`. Retention (at open and by
//! [`OutputStore::retain`], hourly from the audit log's task) deletes
//! entries older than `max_age_days`, then the oldest until the store is
//! under `max_bytes`. An entry stored again is touched (its age restarts).
//!
//! The store is not part of the chain: the line holds the SHA-256 of the
//! stored copy, so a stored output that was altered no longer matches its
//! name and line.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::config::OutputsSettings;
use super::AuditError;

/// Content-addressed store of scrubbed outputs.
#[derive(Debug, Clone)]
pub struct OutputStore {
    dir: PathBuf,
    max_age: Duration,
    max_bytes: u64,
}

/// What a retention pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Entries deleted for their age.
    pub expired: u64,
    /// Entries deleted to get under `max_bytes`.
    pub evicted: u64,
    /// Entries left.
    pub entries: u64,
    /// Bytes left.
    pub bytes: u64,
}

impl OutputStore {
    /// Open (creating) the store and run retention once.
    pub fn open(settings: &OutputsSettings) -> Result<Self, AuditError> {
        let store = Self {
            dir: settings.dir.clone(),
            max_age: settings.max_age,
            max_bytes: settings.max_bytes,
        };
        let root = store.dir.join("sha256");
        std::fs::create_dir_all(&root).map_err(|source| AuditError::Io { path: root, source })?;
        store.retain()?;
        Ok(store)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry `sha256` (64 lowercase hex) lives; `None` when it is
    /// not such a name.
    pub fn path_of(&self, sha256: &str) -> Option<PathBuf> {
        if sha256.len() != 64
            || !sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        Some(
            self.dir
                .join("sha256")
                .join(&sha256[..2])
                .join(&sha256[2..]),
        )
    }

    /// Store `content` (already scrubbed); returns its SHA-256 (hex), the
    /// name the audit line records as `output.stored`.
    pub fn put(&self, content: &[u8]) -> Result<String, AuditError> {
        let sha = hex::encode(Sha256::digest(content));
        let path = self.dir.join("sha256").join(&sha[..2]).join(&sha[2..]);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| AuditError::Io { path, source }
        };
        if path.exists() {
            let f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            f.set_modified(SystemTime::now()).map_err(io(&path))?;
            return Ok(sha);
        }
        let parent = path.parent().unwrap_or(&self.dir).to_owned();
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        // unique per writer: two calls storing the same content at once
        let tmp = parent.join(format!(
            ".{}.{}.tmp",
            &sha[2..],
            uuid::Uuid::new_v4().simple()
        ));
        {
            let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            if let Err(e) = f.write_all(content) {
                let _ = std::fs::remove_file(&tmp);
                return Err(io(&tmp)(e));
            }
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(sha)
    }

    /// The stored content of `sha256`, when present.
    pub fn get(&self, sha256: &str) -> Result<Option<Vec<u8>>, AuditError> {
        let Some(path) = self.path_of(sha256) else {
            return Ok(None);
        };
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AuditError::Io { path, source }),
        }
    }

    /// Delete by age, then oldest first until under `max_bytes`.
    pub fn retain(&self) -> Result<Retention, AuditError> {
        self.retain_at(SystemTime::now())
    }

    /// [`OutputStore::retain`] as of `now`.
    pub fn retain_at(&self, now: SystemTime) -> Result<Retention, AuditError> {
        let root = self.dir.join("sha256");
        let mut entries = Vec::new();
        let read = |p: &Path| {
            std::fs::read_dir(p).map_err(|source| AuditError::Io {
                path: p.to_owned(),
                source,
            })
        };
        for sub in read(&root)? {
            let sub = sub.map_err(|source| AuditError::Io {
                path: root.clone(),
                source,
            })?;
            if !sub.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            for e in read(&sub.path())? {
                let Ok(e) = e else { continue };
                let Ok(meta) = e.metadata() else { continue };
                if !meta.is_file() || e.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let modified = meta.modified().unwrap_or(now);
                entries.push((modified, meta.len(), e.path()));
            }
        }
        entries.sort();
        let mut r = Retention::default();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        let mut kept = Vec::with_capacity(entries.len());
        for (modified, len, path) in entries {
            let age = now.duration_since(modified).unwrap_or_default();
            if age > self.max_age {
                remove(&path)?;
                total -= len;
                r.expired += 1;
            } else {
                kept.push((len, path));
            }
        }
        let mut kept = kept.into_iter();
        while total > self.max_bytes {
            let Some((len, path)) = kept.next() else {
                break;
            };
            remove(&path)?;
            total -= len;
            r.evicted += 1;
        }
        r.entries = kept.len() as u64;
        r.bytes = total;
        if r.expired + r.evicted > 0 {
            tracing::info!(dir = %self.dir.display(), expired = r.expired, evicted = r.evicted, bytes = r.bytes, "audit outputs retention");
        }
        Ok(r)
    }
}

fn remove(path: &Path) -> Result<(), AuditError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(AuditError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, max_bytes: u64) -> OutputsSettings {
        OutputsSettings {
            store: true,
            dir: dir.join("outputs"),
            max_age: Duration::from_secs(3600),
            max_bytes,
        }
    }

    #[test]
    fn put_is_content_addressed_and_retention_keeps_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let store = OutputStore::open(&settings(tmp.path(), 250)).unwrap();
        let a = store.put(&[b'a'; 100]).unwrap();
        assert_eq!(a, hex::encode(Sha256::digest([b'a'; 100])));
        assert_eq!(store.put(&[b'a'; 100]).unwrap(), a);
        let p = store.path_of(&a).unwrap();
        assert!(p.ends_with(format!("sha256/{}/{}", &a[..2], &a[2..])));
        assert_eq!(store.get(&a).unwrap().unwrap(), vec![b'a'; 100]);
        assert_eq!(store.get(&"0".repeat(64)).unwrap(), None);
        assert!(store.path_of("../etc/passwd").is_none());
        // age the first entry, add two more: over 250 bytes, oldest goes
        let old = SystemTime::now() - Duration::from_secs(600);
        std::fs::File::options()
            .append(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let b = store.put(&[b'b'; 100]).unwrap();
        let c = store.put(&[b'c'; 100]).unwrap();
        let r = store.retain().unwrap();
        assert_eq!((r.expired, r.evicted, r.entries, r.bytes), (0, 1, 2, 200));
        assert_eq!(store.get(&a).unwrap(), None);
        assert!(store.get(&b).unwrap().is_some() && store.get(&c).unwrap().is_some());
        // by age: two hours later everything is gone
        let later = SystemTime::now() + Duration::from_secs(7200);
        let r = store.retain_at(later).unwrap();
        assert_eq!((r.expired, r.entries, r.bytes), (2, 0, 0));
        // reopen runs retention and works on an empty store
        OutputStore::open(&settings(tmp.path(), 250)).unwrap();
    }
}
