//! Connections to upstream hosts: names resolved through a [`Resolve`]
//! (the system resolver in production, a fixed map in tests), TCP with a
//! deadline, then TLS verified against the configured roots (webpki's
//! Mozilla roots, or CA files) for the host name the sandbox asked for.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

/// Resolves an upstream host name to addresses.
#[async_trait]
pub trait Resolve: Send + Sync + fmt::Debug {
    /// Addresses for `host:port`.
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

/// The system resolver (`getaddrinfo` on a blocking thread).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

#[async_trait]
impl Resolve for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// Fixed names (tests): `git.internal.test` → `127.0.0.1`. Names not in the
/// map do not resolve; IP literals resolve to themselves.
#[derive(Debug, Default, Clone)]
pub struct StaticResolver {
    map: HashMap<String, IpAddr>,
}

impl StaticResolver {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Map `host` to `ip`.
    pub fn with(mut self, host: &str, ip: IpAddr) -> Self {
        self.map.insert(host.to_ascii_lowercase(), ip);
        self
    }
}

#[async_trait]
impl Resolve for StaticResolver {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        match self.map.get(host) {
            Some(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no address for {host}"),
            )),
        }
    }
}

/// Which certificate authorities the proxy trusts for upstream hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustRoots {
    /// Mozilla's roots (webpki-roots), for public hosts.
    Webpki,
    /// PEM files with CA certificates (an internal CA), instead of Mozilla's.
    Files(Vec<PathBuf>),
    /// PEM text (tests).
    Pem(String),
}

/// Why an upstream could not be reached or trusted. Messages name the host.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The trust roots could not be loaded.
    #[error("upstream trust roots {what}: {message}")]
    Roots {
        /// The file (or "pem").
        what: String,
        /// Why.
        message: String,
    },
    /// The name did not resolve.
    #[error("upstream {host}: name does not resolve: {source}")]
    Resolve {
        /// Host.
        host: String,
        /// Why.
        source: io::Error,
    },
    /// No address accepted a TCP connection.
    #[error("upstream {host}:{port}: connect failed: {source}")]
    Connect {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// The last address's error.
        source: io::Error,
    },
    /// TCP connect or TLS handshake took longer than the deadline.
    #[error("upstream {host}:{port}: no answer within {after:?}")]
    Timeout {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// The deadline.
        after: Duration,
    },
    /// The TLS handshake failed, e.g. an untrusted certificate.
    #[error("upstream {host}:{port}: tls handshake failed (certificate not trusted or tls error): {source}")]
    Tls {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// rustls' reason.
        source: io::Error,
    },
    /// The host is not a valid TLS server name.
    #[error("upstream {0}: not a valid tls server name")]
    ServerName(String),
}

/// Opens verified TLS connections to upstream hosts.
#[derive(Debug, Clone)]
pub struct Upstream {
    resolver: Arc<dyn Resolve>,
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
}

impl Upstream {
    /// A connector trusting `roots`, resolving with `resolver`, giving up
    /// on TCP connect + TLS handshake after `connect_timeout`.
    pub fn new(
        roots: &TrustRoots,
        resolver: Arc<dyn Resolve>,
        connect_timeout: Duration,
    ) -> Result<Self, UpstreamError> {
        let mut store = rustls::RootCertStore::empty();
        let mut add_pem = |what: &str, pem: &str| -> Result<(), UpstreamError> {
            let certs = pki::ca::pem_to_certs(pem).map_err(|e| UpstreamError::Roots {
                what: what.to_owned(),
                message: e.to_string(),
            })?;
            for c in certs {
                store.add(c).map_err(|e| UpstreamError::Roots {
                    what: what.to_owned(),
                    message: e.to_string(),
                })?;
            }
            Ok(())
        };
        match roots {
            TrustRoots::Webpki => {
                store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            TrustRoots::Files(files) => {
                for f in files {
                    let what = f.display().to_string();
                    let pem = std::fs::read_to_string(f).map_err(|e| UpstreamError::Roots {
                        what: what.clone(),
                        message: e.to_string(),
                    })?;
                    add_pem(&what, &pem)?;
                }
            }
            TrustRoots::Pem(pem) => add_pem("pem", pem)?,
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(pki::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamError::Roots {
                what: "tls config".into(),
                message: e.to_string(),
            })?
            .with_root_certificates(store)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            resolver,
            tls: Arc::new(tls),
            connect_timeout,
        })
    }

    /// Resolve, connect and handshake with `host:port`, verifying its certificate for `host`.
    pub async fn connect_tls(
        &self,
        host: &str,
        port: u16,
    ) -> Result<TlsStream<TcpStream>, UpstreamError> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| UpstreamError::ServerName(host.to_owned()))?;
        let timeout = || UpstreamError::Timeout {
            host: host.to_owned(),
            port,
            after: self.connect_timeout,
        };
        let work = async {
            let tcp = self.connect_tcp(host, port).await?;
            tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|source| UpstreamError::Tls {
                    host: host.to_owned(),
                    port,
                    source,
                })
        };
        tokio::time::timeout(self.connect_timeout, work)
            .await
            .map_err(|_| timeout())?
    }

    /// Resolve and connect `host:port` over plain TCP (within the deadline).
    pub async fn connect_tcp(&self, host: &str, port: u16) -> Result<TcpStream, UpstreamError> {
        let work = async {
            let addrs = self.resolver.resolve(host, port).await.map_err(|source| {
                UpstreamError::Resolve {
                    host: host.to_owned(),
                    source,
                }
            })?;
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no addresses");
            for a in addrs {
                match TcpStream::connect(a).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        return Ok(s);
                    }
                    Err(e) => last = e,
                }
            }
            Err(UpstreamError::Connect {
                host: host.to_owned(),
                port,
                source: last,
            })
        };
        tokio::time::timeout(self.connect_timeout, work)
            .await
            .map_err(|_| UpstreamError::Timeout {
                host: host.to_owned(),
                port,
                after: self.connect_timeout,
            })?
    }
}
