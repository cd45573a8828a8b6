//! What a backend stores: a [`Secret`] (a few named fields, each a
//! [`SecretString`]) under a [`SecretKey`] (vault id, credential id and, when
//! the credential's metadata names one, an explicit KV path). A `Secret`'s
//! `Debug` shows field names only and every value is zeroized on drop.

use std::collections::BTreeMap;
use std::fmt;

pub use secrecy::{ExposeSecret, SecretString};

/// The field names a credential's secret may carry (the secret fields of the
/// SDK's `auth` types).
pub const FIELD_NAMES: &[&str] = &[
    "token",
    "access_token",
    "refresh_token",
    "client_secret",
    "secret_value",
];

/// Longest id accepted after its prefix.
const MAX_ID_LEN: usize = 128;

/// An id or field name that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The id does not start with its prefix or has characters outside
    /// `[A-Za-z0-9_-]`.
    #[error("invalid {what} id `{id}`: expected `{prefix}` followed by 1 to {MAX_ID_LEN} characters of [A-Za-z0-9_-]")]
    BadId {
        /// `vault` or `credential`.
        what: &'static str,
        /// The required prefix.
        prefix: &'static str,
        /// The id as given.
        id: String,
    },
    /// The KV path is empty, absolute, or has an empty, `.` or `..` segment.
    #[error("invalid kv path `{0}`: expected relative segments of [A-Za-z0-9_.-], no `.` or `..`")]
    BadKvPath(String),
    /// Not one of [`FIELD_NAMES`].
    #[error("unknown secret field `{0}`: expected one of token, access_token, refresh_token, client_secret, secret_value")]
    BadField(String),
}

fn check_id(what: &'static str, prefix: &'static str, id: &str) -> Result<(), KeyError> {
    let ok = id.strip_prefix(prefix).is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= MAX_ID_LEN
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadId {
            what,
            prefix,
            id: id.to_owned(),
        })
    }
}

/// Check a secret field name.
pub fn check_field(name: &str) -> Result<(), KeyError> {
    if FIELD_NAMES.contains(&name) {
        Ok(())
    } else {
        Err(KeyError::BadField(name.to_owned()))
    }
}

/// Where a credential's secret lives: the vault and credential ids, plus an
/// explicit KV path when the credential's metadata (`airlock.kv_path`) names
/// one in the customer's Vault.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretKey {
    vault_id: String,
    credential_id: String,
    kv_path: Option<String>,
}

impl SecretKey {
    /// The key of credential `credential_id` (`vcrd_…`) in vault `vault_id`
    /// (`vlt_…`).
    pub fn new(vault_id: &str, credential_id: &str) -> Result<Self, KeyError> {
        check_id("vault", "vlt_", vault_id)?;
        check_id("credential", "vcrd_", credential_id)?;
        Ok(Self {
            vault_id: vault_id.to_owned(),
            credential_id: credential_id.to_owned(),
            kv_path: None,
        })
    }

    /// The same key with an explicit KV path (relative to the backend's mount).
    pub fn with_kv_path(mut self, path: &str) -> Result<Self, KeyError> {
        let ok = !path.is_empty()
            && path.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            });
        if !ok {
            return Err(KeyError::BadKvPath(path.to_owned()));
        }
        self.kv_path = Some(path.to_owned());
        Ok(self)
    }

    /// The vault id.
    pub fn vault_id(&self) -> &str {
        &self.vault_id
    }

    /// The credential id.
    pub fn credential_id(&self) -> &str {
        &self.credential_id
    }

    /// The explicit KV path, if any.
    pub fn kv_path(&self) -> Option<&str> {
        self.kv_path.as_deref()
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "credential {} (vault {})",
            self.credential_id, self.vault_id
        )?;
        if let Some(p) = &self.kv_path {
            write!(f, " at kv path {p}")?;
        }
        Ok(())
    }
}

/// A credential's secret: field name -> value. `Debug` lists the field names
/// only; values are zeroized when dropped.
#[derive(Clone, Default)]
pub struct Secret {
    fields: BTreeMap<String, SecretString>,
}

impl Secret {
    /// No fields.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set `field` (one of [`FIELD_NAMES`]) to `value`.
    pub fn insert(&mut self, field: &str, value: SecretString) -> Result<(), KeyError> {
        check_field(field)?;
        self.fields.insert(field.to_owned(), value);
        Ok(())
    }

    /// Remove `field`; whether it was there.
    pub fn remove(&mut self, field: &str) -> bool {
        self.fields.remove(field).is_some()
    }

    /// The value of `field`.
    pub fn get(&self, field: &str) -> Option<&SecretString> {
        self.fields.get(field)
    }

    /// The field names, sorted.
    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.fields.keys().map(String::as_str)
    }

    /// Fields and values, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &SecretString)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// No fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_field_names_never_values() {
        let mut s = Secret::new();
        s.insert("token", SecretString::from("canary-4c1d"))
            .unwrap();
        let shown = format!("{s:?}");
        assert!(shown.contains("token"), "{shown}");
        assert!(!shown.contains("canary-4c1d"), "{shown}");
        assert_eq!(s.get("token").unwrap().expose_secret(), "canary-4c1d");
        assert!(s.insert("password", SecretString::from("x")).is_err());
    }

    #[test]
    fn ids_and_paths_are_checked() {
        let k = SecretKey::new("vlt_01ab", "vcrd_9Z-x").unwrap();
        assert_eq!(k.to_string(), "credential vcrd_9Z-x (vault vlt_01ab)");
        for (v, c) in [
            ("vault_1", "vcrd_1"),
            ("vlt_", "vcrd_1"),
            ("vlt_1", "vcrd_a/b"),
            ("vlt_1", "vcrd_.."),
        ] {
            let e = SecretKey::new(v, c).unwrap_err();
            assert!(matches!(e, KeyError::BadId { .. }), "{v} {c}: {e}");
        }
        for bad in ["", "/abs", "a//b", "a/../b", "a/./b", "a b"] {
            assert!(k.clone().with_kv_path(bad).is_err(), "{bad}");
        }
        let k = k.with_kv_path("team/git/gitea").unwrap();
        assert_eq!(k.kv_path(), Some("team/git/gitea"));
    }
}
