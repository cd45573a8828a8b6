//! Several `control-plane serve` replicas for one test: one PostgreSQL
//! (session store and catalog, a fresh schema per test), one CA shared by
//! every replica (`[pki] ca_cert_file` / `ca_key_file`), and the
//! `AIRLOCK_TEST_PG_URL` convention of the PostgreSQL tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// `AIRLOCK_TEST_PG_URL`, or `None` (the test is skipped, said on stderr);
/// under `CI=true` a missing URL panics instead.
pub fn pg_url(test: &str) -> Option<String> {
    match std::env::var("AIRLOCK_TEST_PG_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("AIRLOCK_TEST_PG_URL is not set under CI=true: source scripts/setup.d/20-postgres.sh (scripts/test-all does)")
        }
        _ => {
            eprintln!("skipping {test}: AIRLOCK_TEST_PG_URL is not set (source scripts/setup.d/20-postgres.sh)");
            None
        }
    }
}

/// A schema name unique to this process and moment (`<prefix>_<pid>_<unix time>`).
pub fn fresh_schema(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp()
    )
}

/// A CA made for the test, in PEM files every replica is pointed at.
#[derive(Debug)]
pub struct SharedCa {
    dir: tempfile::TempDir,
    fingerprint: String,
}

impl SharedCa {
    /// Generate a CA (the same kind a control plane makes for itself) and
    /// write it: the certificate 0644, the key 0600.
    pub fn generate() -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new().prefix("airlock-ca-").tempdir()?;
        let (ca, key_pem) = pki::CertificateAuthority::generate().context("generate a CA")?;
        let me = Self {
            fingerprint: ca.fingerprint().to_string(),
            dir,
        };
        std::fs::write(me.cert_file(), ca.cert_pem())?;
        std::fs::write(me.key_file(), key_pem)?;
        std::fs::set_permissions(me.key_file(), std::fs::Permissions::from_mode(0o600))?;
        Ok(me)
    }

    /// The certificate (PEM).
    pub fn cert_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The key (PEM, 0600).
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("ca.key")
    }

    /// `sha256:<hex>` of the certificate.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The directory holding both files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ca_cert_file` / `ca_key_file` lines for the `[pki]` table. The test
    /// deployment's config ends with its `[pki]` table, so these lines must
    /// come first in `CpOptions::extra_toml`, before any table header.
    pub fn pki_keys(&self) -> String {
        format!(
            "ca_cert_file = \"{}\"\nca_key_file = \"{}\"\n",
            self.cert_file().display(),
            self.key_file().display()
        )
    }
}

/// `[session_store]` and `[catalog]` on PostgreSQL (`<schema>` and
/// `<schema>_cat`), for every replica of one test.
pub fn postgres_toml(url: &str, schema: &str) -> String {
    format!(
        "\n[session_store]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\npostgres_schema = \"{schema}\"\npostgres_max_connections = 8\ntail_poll_interval_seconds = 1\n\
         \n[catalog]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\npostgres_schema = \"{schema}_cat\"\n"
    )
}

/// A session-store client on the replicas' schema (two connections), to
/// read leases and logs directly.
pub async fn session_store(url: &str, schema: &str) -> session_store::PgStore {
    session_store::PgStore::connect(
        url,
        session_store::PgOptions {
            schema: schema.to_owned(),
            max_connections: 2,
            ..session_store::PgOptions::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("session store on schema {schema}: {e}"))
}

/// A replica's lease holder name: its stable instance id
/// (`<data_dir>/instance_id`, written by `serve` at start).
pub fn instance_id(cp: &crate::deploy::ControlPlane) -> String {
    let path = cp.dir().join("data").join("instance_id");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// The holder of a running session's unexpired lease (a replica's
/// [`instance_id`]), or `None` when the session is not running or its lease
/// is free or expired.
pub async fn live_holder(
    store: &dyn session_store::SessionStore,
    session_id: &str,
) -> Option<String> {
    let r = store.get_session(session_id).await.ok()?;
    if r.status != session_store::SessionStatus::Running {
        return None;
    }
    if r.lease.expires_at? <= time::OffsetDateTime::now_utc() {
        return None;
    }
    r.lease.holder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_ca_loads_as_a_provided_ca() {
        let ca = SharedCa::generate().unwrap();
        let loaded = pki::CertificateAuthority::load(&ca.cert_file(), &ca.key_file()).unwrap();
        assert_eq!(loaded.fingerprint().to_string(), ca.fingerprint());
        let toml = format!("[pki]\n{}", ca.pki_keys());
        let v: toml::Value = toml::from_str(&toml).unwrap();
        assert_eq!(
            v["pki"]["ca_key_file"].as_str().unwrap(),
            ca.key_file().display().to_string()
        );
    }
}
