//! Reading the files that hold a key, a token or a secret id: a path that
//! must be readable by its owner only, or a systemd credential
//! (`LoadCredential=`) read from `$CREDENTIALS_DIRECTORY/<name>`.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::SecretFileError;

/// Where a key, token or secret id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file readable by its owner only (mode 0600 or 0400).
    File(PathBuf),
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>`.
    SystemdCredential(String),
}

impl SecretSource {
    /// The file this source reads now (resolving `$CREDENTIALS_DIRECTORY`).
    pub fn path(&self) -> Result<PathBuf, SecretFileError> {
        match self {
            Self::File(p) => Ok(p.clone()),
            Self::SystemdCredential(name) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(dir) => Ok(Path::new(&dir).join(name)),
                None => Err(SecretFileError::NoCredentialsDirectory { name: name.clone() }),
            },
        }
    }
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::SystemdCredential(n) => write!(f, "systemd credential {n}"),
        }
    }
}

/// Refuse `path` unless it is a regular file with no group or other
/// permission bits.
pub(crate) fn check_private(path: &Path) -> Result<(), SecretFileError> {
    let meta = std::fs::metadata(path).map_err(|source| SecretFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(SecretFileError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Mode {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Read the whole private file at `path` (checked with [`check_private`]).
pub(crate) fn read_private_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, SecretFileError> {
    check_private(path)?;
    let mut buf = Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(|source| SecretFileError::Read {
            path: path.to_owned(),
            source,
        })?;
    Ok(buf)
}

/// Read a one-line text secret (a token, a secret id): trimmed, not empty,
/// UTF-8.
pub(crate) fn read_private_text(
    source: &SecretSource,
) -> Result<secrecy::SecretString, SecretFileError> {
    let path = source.path()?;
    let bytes = read_private_file(&path)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| SecretFileError::Content {
        path: path.clone(),
        message: "is not UTF-8 text".into(),
    })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(SecretFileError::Content {
            path,
            message: "is empty".into(),
        });
    }
    Ok(secrecy::SecretString::from(text))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn a_file_others_can_read_is_refused_naming_path_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "s.abc\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_private_text(&SecretSource::File(p.clone())).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, SecretFileError::Mode { mode: 0o644, .. }),
            "{msg}"
        );
        assert!(
            msg.contains(&p.display().to_string()) && msg.contains("0644"),
            "{msg}"
        );
        assert!(!msg.contains("s.abc"), "{msg}");
        for ok in [0o600, 0o400] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(ok)).unwrap();
            let t = read_private_text(&SecretSource::File(p.clone())).unwrap();
            assert_eq!(t.expose_secret(), "s.abc");
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_private_text(&SecretSource::File(p.clone())).is_err());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, "  \n").unwrap();
        let e = read_private_text(&SecretSource::File(p)).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        let e = read_private_file(dir.path()).unwrap_err();
        assert!(matches!(e, SecretFileError::NotAFile { .. }), "{e}");
    }
}
