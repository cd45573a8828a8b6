//! The embedded backend: every credential's secret in one file, encrypted
//! with XChaCha20-Poly1305 under a 256-bit key kept apart from it (a key
//! file readable by its owner only, or a systemd credential).
//!
//! File layout (all of it is authenticated):
//!
//! ```text
//! magic   8 bytes  "ALVBSTR1"
//! key id  8 bytes  first 8 bytes of SHA-256("airlock vault-bridge key id v1" || key)
//! nonce  24 bytes  random per write
//! sealed  rest     XChaCha20-Poly1305(key, nonce, aad = magic || key id, JSON)
//! ```
//!
//! The key id tells "written with another key" ([`BackendError::WrongKey`])
//! apart from "damaged" ([`BackendError::Corrupt`]); either way the store is
//! never overwritten. Writes take an exclusive `flock` on `<store>.lock`
//! (the daemon and `vault-bridge credentials set` may write at once), then
//! replace the file atomically: a temporary file in the same directory,
//! `fsync`, `rename`, `fsync` of the directory. Readers need no lock.
//!
//! The key file holds the key as 64 hex digits (or 32 raw bytes, for a
//! systemd credential); `vault-bridge init` (or the first start, with
//! `create_if_missing`) writes a new one with mode 0600.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use zeroize::Zeroizing;

use super::private_file::{check_private, read_private_file};
use super::{with_deadline, BackendError, SecretBackend, SecretFileError, SecretSource, Subject};
use crate::config::FileConfig;
use crate::secret::{Secret, SecretKey};

const MAGIC: &[u8; 8] = b"ALVBSTR1";
const KEY_ID_LEN: usize = 8;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = MAGIC.len() + KEY_ID_LEN + NONCE_LEN;
/// How often a writer retries a busy lock before its deadline.
const LOCK_RETRY: Duration = Duration::from_millis(10);

/// A 256-bit store key, zeroized on drop.
#[derive(Clone)]
struct StoreKey(Zeroizing<[u8; 32]>);

impl StoreKey {
    fn generate() -> Self {
        let k = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&k);
        Self(out)
    }

    /// Hex text or 32 raw bytes.
    fn parse(bytes: &[u8], path: &Path) -> Result<Self, SecretFileError> {
        let mut out = Zeroizing::new([0u8; 32]);
        if bytes.len() == 32 {
            out.copy_from_slice(bytes);
            return Ok(Self(out));
        }
        let text = std::str::from_utf8(bytes).map(str::trim).unwrap_or("");
        if text.len() == 64 && hex::decode_to_slice(text, &mut out[..]).is_ok() {
            return Ok(Self(out));
        }
        Err(SecretFileError::Content {
            path: path.to_owned(),
            message: "is not a store key (expected 64 hex digits or 32 bytes)".into(),
        })
    }

    fn id(&self) -> [u8; KEY_ID_LEN] {
        let mut h = sha2::Sha256::new();
        h.update(b"airlock vault-bridge key id v1");
        h.update(&self.0[..]);
        let d = h.finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&d[..KEY_ID_LEN]);
        id
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0[..]).into())
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreKey(id {})", hex::encode(self.id()))
    }
}

/// One credential in the plaintext.
#[derive(Serialize, Deserialize)]
struct Entry<S> {
    vault_id: String,
    credential_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kv_path: Option<String>,
    fields: BTreeMap<String, S>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Plain<S> {
    version: u32,
    credentials: Vec<Entry<S>>,
}

/// The decrypted store: credential -> secret.
#[derive(Default)]
struct Contents(BTreeMap<(String, String), (Option<String>, Secret)>);

/// The encrypted file backend.
#[derive(Debug)]
pub struct FileBackend {
    path: PathBuf,
    key: StoreKey,
    name: String,
    timeout: Duration,
}

impl FileBackend {
    /// Open the store `config` names: read the key (refusing a file others
    /// can read), create key and store when `create_if_missing` and neither
    /// exists, and decrypt the store once to check the key.
    pub async fn open(config: &FileConfig) -> Result<Self, BackendError> {
        let c = config.clone();
        let name = format!("file store {}", config.path.display());
        let n = name.clone();
        let opened = with_deadline(
            config.request_timeout,
            || Subject::Open,
            &name,
            async move {
                tokio::task::spawn_blocking(move || Self::open_blocking(&c, n))
                    .await
                    .map_err(|e| BackendError::Other {
                        subject: Subject::Open,
                        backend: format!("file store {}", config.path.display()),
                        cause: format!("open task failed: {e}"),
                    })?
            },
        )
        .await?;
        Ok(opened)
    }

    fn open_blocking(c: &FileConfig, name: String) -> Result<Self, BackendError> {
        let file_err = |source| BackendError::SecretFile {
            subject: Subject::Open,
            source,
        };
        let key_path = c.key.path().map_err(file_err)?;
        let key_exists = exists(&key_path).map_err(file_err)?;
        let store_exists = exists(&c.path).map_err(file_err)?;
        let key = if !key_exists && !store_exists && c.create_if_missing {
            match &c.key {
                SecretSource::File(p) => create_key(p).map_err(file_err)?,
                // A systemd credential is made by the admin, not by us.
                SecretSource::SystemdCredential(_) => load_key(&key_path).map_err(file_err)?,
            }
        } else {
            load_key(&key_path).map_err(file_err)?
        };
        let backend = Self {
            path: c.path.clone(),
            key,
            name,
            timeout: c.request_timeout,
        };
        if !store_exists {
            if !c.create_if_missing {
                return Err(BackendError::NotFound {
                    subject: Subject::Open,
                    backend: backend.name.clone(),
                });
            }
            backend.locked(Instant::now() + c.request_timeout, &Subject::Open, |b| {
                // Re-check under the lock: another process may have made it.
                if exists(&b.path).map_err(file_err)? {
                    return Ok(());
                }
                b.write(&Contents::default(), &Subject::Open)
            })?;
        }
        backend.read(&Subject::Open)?;
        Ok(backend)
    }

    /// Create a new key file (mode 0600) and an empty store; refuse when
    /// either exists. Used by `vault-bridge init`.
    pub fn init(config: &FileConfig) -> Result<(), BackendError> {
        let file_err = |source| BackendError::SecretFile {
            subject: Subject::Open,
            source,
        };
        let SecretSource::File(key_path) = &config.key else {
            return Err(BackendError::Other {
                subject: Subject::Open,
                backend: format!("file store {}", config.path.display()),
                cause: "the key is a systemd credential; create it with systemd-creds and start the bridge".into(),
            });
        };
        for p in [key_path, &config.path] {
            if exists(p).map_err(file_err)? {
                return Err(BackendError::Other {
                    subject: Subject::Open,
                    backend: format!("file store {}", config.path.display()),
                    cause: format!("{} already exists; refusing to replace it", p.display()),
                });
            }
        }
        let c = FileConfig {
            create_if_missing: true,
            ..config.clone()
        };
        Self::open_blocking(&c, format!("file store {}", config.path.display())).map(|_| ())
    }

    fn subject_err(&self, subject: &Subject, cause: String) -> BackendError {
        BackendError::Corrupt {
            subject: subject.clone(),
            backend: self.name.clone(),
            cause,
        }
    }

    fn io_err(
        &self,
        subject: &Subject,
        what: &str,
        path: &Path,
        e: std::io::Error,
    ) -> BackendError {
        BackendError::Other {
            subject: subject.clone(),
            backend: self.name.clone(),
            cause: format!("cannot {what} {}: {e}", path.display()),
        }
    }

    /// Read and decrypt the store.
    fn read(&self, subject: &Subject) -> Result<Contents, BackendError> {
        let data =
            std::fs::read(&self.path).map_err(|e| self.io_err(subject, "read", &self.path, e))?;
        if data.len() < HEADER_LEN || &data[..MAGIC.len()] != MAGIC {
            return Err(self.subject_err(subject, "not a vault-bridge store (bad header)".into()));
        }
        let stored_id = &data[MAGIC.len()..MAGIC.len() + KEY_ID_LEN];
        let key_id = self.key.id();
        if stored_id != key_id {
            return Err(BackendError::WrongKey {
                subject: subject.clone(),
                backend: self.name.clone(),
                stored: hex::encode(stored_id),
                configured: hex::encode(key_id),
            });
        }
        let nonce = XNonce::from_slice(&data[MAGIC.len() + KEY_ID_LEN..HEADER_LEN]);
        let plain = Zeroizing::new(
            self.key
                .cipher()
                .decrypt(
                    nonce,
                    Payload {
                        msg: &data[HEADER_LEN..],
                        aad: &data[..MAGIC.len() + KEY_ID_LEN],
                    },
                )
                .map_err(|_| self.subject_err(subject, "authentication failed".into()))?,
        );
        let parsed: Plain<String> = serde_json::from_slice(&plain).map_err(|e| {
            self.subject_err(subject, format!("bad contents at byte {}", e.column()))
        })?;
        if parsed.version != 1 {
            return Err(self.subject_err(subject, format!("unknown version {}", parsed.version)));
        }
        let mut out = Contents::default();
        for e in parsed.credentials {
            let mut secret = Secret::new();
            for (field, value) in e.fields {
                secret
                    .insert(&field, SecretString::from(value))
                    .map_err(|e| self.subject_err(subject, e.to_string()))?;
            }
            out.0
                .insert((e.vault_id, e.credential_id), (e.kv_path, secret));
        }
        Ok(out)
    }

    /// Encrypt `contents` and replace the store atomically. Call with the
    /// lock held.
    fn write(&self, contents: &Contents, subject: &Subject) -> Result<(), BackendError> {
        let plain = Plain {
            version: 1,
            credentials: contents
                .0
                .iter()
                .map(|((v, c), (p, s))| Entry {
                    vault_id: v.clone(),
                    credential_id: c.clone(),
                    kv_path: p.clone(),
                    fields: s
                        .iter()
                        .map(|(k, v)| (k.to_owned(), v.expose_secret()))
                        .collect(),
                })
                .collect(),
        };
        let mut text = Zeroizing::new(Vec::with_capacity(4096));
        serde_json::to_writer(&mut *text, &plain)
            .map_err(|e| self.subject_err(subject, format!("cannot encode: {e}")))?;
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let key_id = self.key.id();
        let mut out = Vec::with_capacity(HEADER_LEN + text.len() + 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&key_id);
        out.extend_from_slice(&nonce);
        let sealed = self
            .key
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: &text,
                    aad: &out[..MAGIC.len() + KEY_ID_LEN],
                },
            )
            .map_err(|_| self.subject_err(subject, "encryption failed".into()))?;
        out.extend_from_slice(&sealed);
        write_atomic(&self.path, &out).map_err(|(p, e)| self.io_err(subject, "write", &p, e))
    }

    /// Run `f` holding the store's write lock, taken before `deadline`.
    fn locked<T>(
        &self,
        deadline: Instant,
        subject: &Subject,
        f: impl FnOnce(&Self) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let lock_path = lock_path(&self.path);
        if let Some(dir) = self.path.parent() {
            make_dir(dir).map_err(|e| self.io_err(subject, "create", dir, e))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| self.io_err(subject, "open", &lock_path, e))?;
        let _guard = loop {
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(g) => break g,
                Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(LOCK_RETRY);
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    return Err(BackendError::Timeout {
                        subject: subject.clone(),
                        backend: format!("{} (waiting for {})", self.name, lock_path.display()),
                        after: self.timeout,
                    })
                }
                Err((_, e)) => {
                    return Err(self.io_err(subject, "lock", &lock_path, e.into()));
                }
            }
        };
        f(self)
    }

    /// Run a blocking store operation with the backend's deadline.
    async fn run<T: Send + 'static>(
        &self,
        subject: Subject,
        op: impl FnOnce(&Self, Instant, &Subject) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let me = Self {
            path: self.path.clone(),
            key: self.key.clone(),
            name: self.name.clone(),
            timeout: self.timeout,
        };
        let deadline = Instant::now() + self.timeout;
        let s = subject.clone();
        let s2 = subject.clone();
        let name = self.name.clone();
        with_deadline(self.timeout, move || subject, &self.name, async move {
            tokio::task::spawn_blocking(move || op(&me, deadline, &s))
                .await
                .map_err(|e| BackendError::Other {
                    subject: s2,
                    backend: name,
                    cause: format!("store task failed: {e}"),
                })?
        })
        .await
    }
}

#[async_trait]
impl SecretBackend for FileBackend {
    async fn get(&self, key: &SecretKey) -> Result<Secret, BackendError> {
        let k = (key.vault_id().to_owned(), key.credential_id().to_owned());
        self.run(key.into(), move |b, _, s| {
            let mut c = b.read(s)?;
            c.0.remove(&k)
                .map(|(_, secret)| secret)
                .ok_or_else(|| BackendError::NotFound {
                    subject: s.clone(),
                    backend: b.name.clone(),
                })
        })
        .await
    }

    async fn put(&self, key: &SecretKey, secret: &Secret) -> Result<(), BackendError> {
        let k = (key.vault_id().to_owned(), key.credential_id().to_owned());
        let path = key.kv_path().map(str::to_owned);
        let secret = secret.clone();
        self.run(key.into(), move |b, deadline, s| {
            b.locked(deadline, s, |b| {
                let mut c = b.read(s)?;
                c.0.insert(k, (path, secret));
                b.write(&c, s)
            })
        })
        .await
    }

    async fn delete(&self, key: &SecretKey) -> Result<(), BackendError> {
        let k = (key.vault_id().to_owned(), key.credential_id().to_owned());
        self.run(key.into(), move |b, deadline, s| {
            b.locked(deadline, s, |b| {
                let mut c = b.read(s)?;
                if c.0.remove(&k).is_none() {
                    return Err(BackendError::NotFound {
                        subject: s.clone(),
                        backend: b.name.clone(),
                    });
                }
                b.write(&c, s)
            })
        })
        .await
    }

    async fn list(&self) -> Result<Vec<(SecretKey, Vec<String>)>, BackendError> {
        self.run(Subject::List, |b, _, s| {
            let c = b.read(s)?;
            let mut out = Vec::with_capacity(c.0.len());
            for ((v, cr), (p, secret)) in &c.0 {
                let mut key = SecretKey::new(v, cr).map_err(|e| b.subject_err(s, e.to_string()))?;
                if let Some(p) = p {
                    key = key
                        .with_kv_path(p)
                        .map_err(|e| b.subject_err(s, e.to_string()))?;
                }
                out.push((key, secret.field_names().map(str::to_owned).collect()));
            }
            Ok(out)
        })
        .await
    }

    async fn health(&self) -> Result<(), BackendError> {
        self.run(Subject::Health, |b, _, s| b.read(s).map(|_| ()))
            .await
    }
}

fn exists(p: &Path) -> Result<bool, SecretFileError> {
    match std::fs::symlink_metadata(p) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(SecretFileError::Read {
            path: p.to_owned(),
            source,
        }),
    }
}

fn load_key(path: &Path) -> Result<StoreKey, SecretFileError> {
    let bytes = read_private_file(path)?;
    StoreKey::parse(&bytes, path)
}

/// Write a new key file: mode 0600, never replacing an existing one.
fn create_key(path: &Path) -> Result<StoreKey, SecretFileError> {
    let key = StoreKey::generate();
    let text = Zeroizing::new(format!("{}\n", hex::encode(&key.0[..])));
    let err = |source| SecretFileError::Read {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        make_dir(dir).map_err(err)?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    }
    check_private(path)?;
    Ok(key)
}

fn make_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn lock_path(store: &Path) -> PathBuf {
    let mut s = store.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Replace `path` with `data`: temporary file in the same directory, fsync,
/// rename, fsync of the directory. On failure the old file is untouched.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), (PathBuf, std::io::Error)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".{name}.tmp-{}-{nanos}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| (tmp.clone(), e))?;
        f.write_all(data).map_err(|e| (tmp.clone(), e))?;
        f.sync_all().map_err(|e| (tmp.clone(), e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| (path.to_owned(), e))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| (dir.clone(), e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn config(dir: &Path) -> FileConfig {
        FileConfig {
            path: dir.join("state/credentials.enc"),
            key: SecretSource::File(dir.join("state/credentials.key")),
            create_if_missing: true,
            request_timeout: Duration::from_secs(5),
        }
    }

    fn secret(token: &str) -> Secret {
        let mut s = Secret::new();
        s.insert("token", SecretString::from(token)).unwrap();
        s
    }

    fn key(c: &str) -> SecretKey {
        SecretKey::new("vlt_1", c).unwrap()
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn first_open_creates_a_private_key_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let b = FileBackend::open(&c).await.unwrap();
        let SecretSource::File(kp) = &c.key else {
            unreachable!()
        };
        assert_eq!(mode(kp), 0o600);
        assert_eq!(mode(&c.path), 0o600);
        assert_eq!(mode(kp.parent().unwrap()), 0o700);
        b.health().await.unwrap();
        let e = b.get(&key("vcrd_a")).await.unwrap_err();
        assert!(matches!(e, BackendError::NotFound { .. }), "{e}");
        assert!(e.to_string().contains("vcrd_a"), "{e}");

        b.put(&key("vcrd_a"), &secret("canary-one")).await.unwrap();
        b.put(&key("vcrd_b"), &secret("canary-two")).await.unwrap();
        let got = b.get(&key("vcrd_a")).await.unwrap();
        assert_eq!(got.get("token").unwrap().expose_secret(), "canary-one");
        // On disk the value is sealed.
        let raw = std::fs::read(&c.path).unwrap();
        assert!(!raw.windows(6).any(|w| w == b"canary"));
        assert!(!raw.windows(7).any(|w| w == b"vcrd_a\""));

        // A second open (a restart) sees the same data with the same key.
        let b2 = FileBackend::open(&c).await.unwrap();
        let list = b2.list().await.unwrap();
        let ids: Vec<_> = list
            .iter()
            .map(|(k, f)| (k.credential_id().to_owned(), f.clone()))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("vcrd_a".to_owned(), vec!["token".to_owned()]),
                ("vcrd_b".to_owned(), vec!["token".to_owned()])
            ]
        );
        b2.delete(&key("vcrd_a")).await.unwrap();
        let e = b.get(&key("vcrd_a")).await.unwrap_err();
        assert!(matches!(e, BackendError::NotFound { .. }), "{e}");
        let e = b.delete(&key("vcrd_a")).await.unwrap_err();
        assert!(matches!(e, BackendError::NotFound { .. }), "{e}");
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(c.path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
    }

    #[tokio::test]
    async fn a_wrong_key_is_refused_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let b = FileBackend::open(&c).await.unwrap();
        b.put(&key("vcrd_a"), &secret("canary-one")).await.unwrap();
        let before = std::fs::read(&c.path).unwrap();

        let other = dir.path().join("other.key");
        create_key(&other).unwrap();
        let wrong = FileConfig {
            key: SecretSource::File(other.clone()),
            ..c.clone()
        };
        let e = FileBackend::open(&wrong).await.unwrap_err();
        assert!(matches!(e, BackendError::WrongKey { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("another key") && msg.contains("credentials.enc"),
            "{msg}"
        );

        // A backend holding the wrong key (the store replaced under it)
        // refuses to write too.
        let wrong_backend = FileBackend {
            path: c.path.clone(),
            key: load_key(&other).unwrap(),
            name: "file store test".into(),
            timeout: Duration::from_secs(5),
        };
        let e = wrong_backend
            .put(&key("vcrd_b"), &secret("canary-two"))
            .await
            .unwrap_err();
        assert!(matches!(e, BackendError::WrongKey { .. }), "{e}");
        assert_eq!(std::fs::read(&c.path).unwrap(), before);

        // A damaged store with the right key: corrupt, not wrong key.
        let mut damaged = before.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        std::fs::write(&c.path, &damaged).unwrap();
        let e = b.get(&key("vcrd_a")).await.unwrap_err();
        assert!(matches!(e, BackendError::Corrupt { .. }), "{e}");
        assert!(!e.to_string().contains("canary"));
        std::fs::write(&c.path, b"hello").unwrap();
        let e = FileBackend::open(&c).await.unwrap_err();
        assert!(matches!(e, BackendError::Corrupt { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_key_others_can_read_is_refused_naming_path_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        FileBackend::open(&c).await.unwrap();
        let SecretSource::File(kp) = &c.key else {
            unreachable!()
        };
        std::fs::set_permissions(kp, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = FileBackend::open(&c).await.unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, BackendError::SecretFile { .. }), "{msg}");
        assert!(
            msg.contains(&kp.display().to_string()) && msg.contains("0644"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn a_missing_key_with_an_existing_store_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let b = FileBackend::open(&c).await.unwrap();
        b.put(&key("vcrd_a"), &secret("canary-one")).await.unwrap();
        let before = std::fs::read(&c.path).unwrap();
        let SecretSource::File(kp) = &c.key else {
            unreachable!()
        };
        std::fs::remove_file(kp).unwrap();
        let e = FileBackend::open(&c).await.unwrap_err();
        assert!(matches!(e, BackendError::SecretFile { .. }), "{e}");
        assert!(e.to_string().contains("credentials.key"), "{e}");
        assert!(!kp.exists(), "no new key was made");
        assert_eq!(std::fs::read(&c.path).unwrap(), before);
        // init refuses too.
        let e = FileBackend::init(&c).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
    }

    #[tokio::test]
    async fn no_create_means_a_missing_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let c = FileConfig {
            create_if_missing: false,
            ..config(dir.path())
        };
        let e = FileBackend::open(&c).await.unwrap_err();
        assert!(e.to_string().contains("credentials.key"), "{e}");
        FileBackend::init(&c).unwrap();
        FileBackend::open(&c).await.unwrap();
    }

    #[tokio::test]
    async fn a_held_lock_makes_writes_time_out_not_hang() {
        let dir = tempfile::tempdir().unwrap();
        let c = FileConfig {
            request_timeout: Duration::from_millis(300),
            ..config(dir.path())
        };
        let b = FileBackend::open(&c).await.unwrap();
        let lock = File::create(lock_path(&c.path)).unwrap();
        let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
        let started = Instant::now();
        let e = b.put(&key("vcrd_a"), &secret("x")).await.unwrap_err();
        assert!(matches!(e, BackendError::Timeout { .. }), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no hang past the timeout"
        );
        // Reads need no lock.
        b.health().await.unwrap();
        drop(held);
        b.put(&key("vcrd_a"), &secret("x")).await.unwrap();
    }

    #[tokio::test]
    async fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        FileBackend::open(&c).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let b = FileBackend::open(&c).await.unwrap();
                b.put(&key(&format!("vcrd_{i}")), &secret("v"))
                    .await
                    .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let b = FileBackend::open(&c).await.unwrap();
        assert_eq!(b.list().await.unwrap().len(), 8);
    }

    #[test]
    fn key_parsing_accepts_hex_or_raw_and_debug_shows_the_id_only() {
        let k = StoreKey::generate();
        let hexed = format!("{}\n", hex::encode(&k.0[..]));
        let p = Path::new("/k");
        assert_eq!(StoreKey::parse(hexed.as_bytes(), p).unwrap().id(), k.id());
        assert_eq!(StoreKey::parse(&k.0[..], p).unwrap().id(), k.id());
        assert!(StoreKey::parse(b"short", p).is_err());
        let shown = format!("{k:?}");
        assert!(!shown.contains(&hex::encode(&k.0[..])), "{shown}");
    }
}
