//! TLS for the public API (and any other HTTP listener of the control plane
//! that wants it, such as the console's): a certificate and key read from
//! PEM files, presented through a resolver that can be swapped while the
//! listener runs, and a listener that hands axum finished TLS streams.
//!
//! - [`CertReloader::load`] reads `cert_file` and `key_file` once (start-up
//!   fails on a bad pair), [`CertReloader::reload`] reads them again and
//!   swaps them in only if the new pair is good: a bad file is an error
//!   naming that file and the old pair stays in use.
//!   [`CertReloader::reload_on_sighup`] does that on every `SIGHUP`.
//! - Established connections (and the SSE streams on them) keep the session
//!   they were made with; only new handshakes see a new certificate.
//! - [`TlsListener`] accepts TCP, runs each handshake in its own task with a
//!   deadline (a slow client cannot hold up the accept loop) and yields the
//!   finished streams; wrap it in [`axum::serve::ListenerExt::tap_io`] to get
//!   the remote address as connect info.
//!
//! The key file must not be readable by others (mode `o+r`): that is refused.
//! Group-readable keys are accepted (Debian's `ssl-cert` group convention).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use hyper_rustls::HttpsConnector;

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a listener's certificate and key are (`[api.tls]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, PEM, leaf first.
    pub cert_file: PathBuf,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// The config section the keys are in (`api.tls`), for error messages.
    pub section: String,
}

/// Why a certificate or key could not be used. Every variant names the
/// config key and the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("{key} {}: cannot read: {source}", path.display())]
    Read {
        /// `api.tls.cert_file` or `api.tls.key_file`.
        key: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{key} {}: no PEM certificate found", path.display())]
    NoCertificate {
        /// `api.tls.cert_file`.
        key: String,
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no usable PEM private key.
    #[error("{key} {}: no usable PEM private key ({message})", path.display())]
    BadKey {
        /// `api.tls.key_file`.
        key: String,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The key file is readable by others.
    #[error("{key} {}: mode {mode:o} lets other users read the private key; chmod o-rwx it (0600 or 0640)", path.display())]
    KeyReadableByOthers {
        /// `api.tls.key_file`.
        key: String,
        /// The file.
        path: PathBuf,
        /// The file's permission bits.
        mode: u32,
    },
    /// The certificate is not usable with the key, or is not valid now.
    #[error("{key} {}: {message}", path.display())]
    BadCertificate {
        /// `api.tls.cert_file`.
        key: String,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The rustls server configuration could not be built.
    #[error("{section}: tls configuration: {message}")]
    Config {
        /// `api.tls`.
        section: String,
        /// The rustls error.
        message: String,
    },
}

/// The crypto provider of every TLS config in Airlock (ring).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate and key loaded from [`TlsFiles`], with when it expires.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    /// What rustls presents.
    pub certified: Arc<CertifiedKey>,
    /// The leaf's `notAfter`.
    pub not_after: SystemTime,
}

impl TlsFiles {
    fn cert_key(&self) -> String {
        format!("{}.cert_file", self.section)
    }

    fn key_key(&self) -> String {
        format!("{}.key_file", self.section)
    }

    /// Read and check the pair: the key file's mode, the PEM, that the key
    /// belongs to the leaf, and that the leaf is valid now.
    pub fn load(&self) -> Result<LoadedCert, TlsError> {
        let cert_pem = std::fs::read(&self.cert_file).map_err(|source| TlsError::Read {
            key: self.cert_key(),
            path: self.cert_file.clone(),
            source,
        })?;
        check_key_mode(&self.key_file).map_err(|e| match e {
            ModeError::Io(source) => TlsError::Read {
                key: self.key_key(),
                path: self.key_file.clone(),
                source,
            },
            ModeError::Others(mode) => TlsError::KeyReadableByOthers {
                key: self.key_key(),
                path: self.key_file.clone(),
                mode,
            },
        })?;
        let key_pem = std::fs::read(&self.key_file).map_err(|source| TlsError::Read {
            key: self.key_key(),
            path: self.key_file.clone(),
            source,
        })?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::BadCertificate {
                key: self.cert_key(),
                path: self.cert_file.clone(),
                message: format!("bad PEM: {e}"),
            })?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::NoCertificate {
                key: self.cert_key(),
                path: self.cert_file.clone(),
            });
        };
        let bad_cert = |message: String| TlsError::BadCertificate {
            key: self.cert_key(),
            path: self.cert_file.clone(),
            message,
        };
        let (not_before, not_after) = validity(leaf).map_err(bad_cert)?;
        let now = SystemTime::now();
        if now > not_after {
            return Err(bad_cert(format!(
                "the certificate expired at {}",
                rfc3339(not_after)
            )));
        }
        if now < not_before {
            return Err(bad_cert(format!(
                "the certificate is not valid before {}",
                rfc3339(not_before)
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
            key: self.key_key(),
            path: self.key_file.clone(),
            message: e.to_string(),
        })?;
        let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => bad_cert(format!(
                "the key in {} does not match the certificate",
                self.key_file.display()
            )),
            other => TlsError::BadKey {
                key: self.key_key(),
                path: self.key_file.clone(),
                message: other.to_string(),
            },
        })?;
        Ok(LoadedCert {
            certified: Arc::new(certified),
            not_after,
        })
    }
}

enum ModeError {
    Io(std::io::Error),
    Others(u32),
}

fn check_key_mode(path: &Path) -> Result<(), ModeError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(ModeError::Io)?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o007 != 0 {
        return Err(ModeError::Others(mode));
    }
    Ok(())
}

fn validity(leaf: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let v = cert.validity();
    let at = |t: i64| {
        u64::try_from(t)
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    Ok((at(v.not_before.timestamp()), at(v.not_after.timestamp())))
}

fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} (unix)"))
}

/// The certificate a listener presents, reloadable from its files. Cheap
/// to clone; clones share the current pair.
#[derive(Debug, Clone)]
pub struct CertReloader {
    files: TlsFiles,
    current: Arc<RwLock<LoadedCert>>,
}

impl CertReloader {
    /// Load the pair (blocking file reads; fine at start-up).
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let loaded = files.load()?;
        tracing::info!(
            cert_file = %files.cert_file.display(),
            not_after = %rfc3339(loaded.not_after),
            "tls certificate loaded"
        );
        Ok(Self {
            files,
            current: Arc::new(RwLock::new(loaded)),
        })
    }

    /// The files it reloads from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// When the certificate presented now expires.
    pub fn not_after(&self) -> SystemTime {
        self.get().not_after
    }

    fn get(&self) -> LoadedCert {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Read the files again; on success new handshakes present the new pair,
    /// on failure the old one stays and the error is returned.
    pub fn reload(&self) -> Result<SystemTime, TlsError> {
        let loaded = self.files.load()?;
        let not_after = loaded.not_after;
        match self.current.write() {
            Ok(mut g) => *g = loaded,
            Err(p) => *p.into_inner() = loaded,
        }
        Ok(not_after)
    }

    /// Reload on every `SIGHUP` until `shutdown` fires. A failed reload is
    /// logged at ERROR naming the file; the old pair stays in use.
    pub async fn reload_on_sighup(self, shutdown: CancellationToken) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(%error, section = %self.files.section, "cannot watch SIGHUP; the certificate will not be reloaded");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.reload()).await {
                Ok(Ok(not_after)) => tracing::info!(
                    section = %self.files.section,
                    cert_file = %self.files.cert_file.display(),
                    not_after = %rfc3339(not_after),
                    "SIGHUP: tls certificate reloaded; new connections use it"
                ),
                Ok(Err(error)) => tracing::error!(
                    section = %self.files.section,
                    %error,
                    "SIGHUP: tls certificate reload failed; still serving the previous certificate"
                ),
                Err(error) => tracing::error!(%error, "SIGHUP: tls reload task failed"),
            }
        }
    }

    /// A rustls server config presenting the current pair (TLS 1.2 and 1.3,
    /// ALPN `h2` and `http/1.1`).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config {
                section: self.files.section.clone(),
                message: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self.clone()));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get().certified)
    }
}

/// A TCP listener that yields finished TLS streams. Handshakes run in their
/// own tasks (bounded by [`HANDSHAKE_TIMEOUT`]); failed ones are logged at
/// DEBUG and dropped. The accept task stops when `shutdown` fires or the
/// listener is dropped.
#[derive(Debug)]
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    _stop: tokio_util::sync::DropGuard,
}

impl TlsListener {
    /// Start accepting on `listener` with `config`.
    pub fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let stop = shutdown.child_token();
        let guard = stop.clone().drop_guard();
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(error) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(%error, "api accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                if let Err(error) = tcp.set_nodelay(true) {
                    tracing::debug!(%error, "cannot set TCP_NODELAY");
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                    let stream = tokio::select! {
                        _ = stop.cancelled() => return,
                        r = handshake => r,
                    };
                    match stream {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(remote_addr = %peer, %error, "tls handshake failed")
                        }
                        Err(_) => tracing::debug!(
                            remote_addr = %peer,
                            timeout_seconds = HANDSHAKE_TIMEOUT.as_secs(),
                            "tls handshake timed out"
                        ),
                    }
                });
            }
        });
        Ok(Self {
            local_addr,
            ready,
            _stop: guard,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accept task stopped (shutdown): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// The HTTPS connector of the API's own clients (the operator CLI): trusts
/// Mozilla's roots (`webpki-roots`) and, if given, the CA certificates in
/// `ca_file` (PEM); plain `http://` URLs still work.
pub fn https_connector(
    ca_file: Option<&Path>,
) -> Result<HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let key = "--api-ca-file".to_owned();
        let pem = std::fs::read(path).map_err(|source| TlsError::Read {
            key: key.clone(),
            path: path.to_owned(),
            source,
        })?;
        let mut added = 0usize;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| TlsError::BadCertificate {
                key: key.clone(),
                path: path.to_owned(),
                message: format!("bad PEM: {e}"),
            })?;
            roots.add(cert).map_err(|e| TlsError::BadCertificate {
                key: key.clone(),
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsError::NoCertificate {
                key,
                path: path.to_owned(),
            });
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config {
            section: "client".into(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let c = dir.join(format!("{name}.crt"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        (c, k)
    }

    fn files(c: &Path, k: &Path) -> TlsFiles {
        TlsFiles {
            cert_file: c.to_owned(),
            key_file: k.to_owned(),
            section: "api.tls".into(),
        }
    }

    #[test]
    fn loads_reloads_and_keeps_the_old_pair_on_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = pair(dir.path(), "one");
        let (c2, k2) = pair(dir.path(), "two");
        let r = CertReloader::load(files(&c1, &k1)).unwrap();
        let first = r.get().certified.cert[0].clone();
        // a key of another certificate: refused, the old pair stays
        std::fs::copy(&k2, &k1).unwrap();
        std::fs::copy(&c2, dir.path().join("keep.crt")).unwrap();
        let e = r.reload().unwrap_err().to_string();
        assert!(
            e.contains("api.tls.cert_file") && e.contains("does not match"),
            "{e}"
        );
        assert_eq!(r.get().certified.cert[0], first);
        // garbage in the certificate file
        std::fs::write(&c1, "not pem").unwrap();
        let e = r.reload().unwrap_err().to_string();
        assert!(
            e.contains("api.tls.cert_file") && e.contains("one.crt"),
            "{e}"
        );
        // a good pair again
        std::fs::copy(&c2, &c1).unwrap();
        r.reload().unwrap();
        assert_ne!(r.get().certified.cert[0], first);
    }

    #[test]
    fn key_readable_by_others_is_refused_group_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = pair(dir.path(), "one");
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = files(&c, &k).load().unwrap_err().to_string();
        assert!(e.contains("api.tls.key_file") && e.contains("644"), "{e}");
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o640)).unwrap();
        files(&c, &k).load().unwrap();
        let e = files(&c, &dir.path().join("missing.key"))
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("api.tls.key_file") && e.contains("missing.key"),
            "{e}"
        );
    }

    #[test]
    fn expired_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let c = dir.path().join("old.crt");
        let k = dir.path().join("old.key");
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = files(&c, &k).load().unwrap_err().to_string();
        assert!(e.contains("expired at 2021-01-01"), "{e}");
    }
}
