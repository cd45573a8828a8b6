//! `sandbox-agent enroll`: generate a key pair on this host (it never leaves),
//! send a CSR and the join token to the control plane's enrollment listener
//! over TLS pinned to the CA fingerprint (no system roots), and store the
//! issued chain, the CA and an identity record.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use pki::agent::{AgentFiles, IdentityRecord, PendingKey};
use pki::enroll::{EnrollErrorCode, EnrollRequest, EnrollResponse, ErrorEnvelope, ENROLL_PATH};
use pki::tls::PinnedCaVerifier;
use pki::{AgentId, EnvironmentId, Fingerprint, JoinToken};
use rustls_pki_types::ServerName;
use settings::split_host_port;

/// Largest response accepted from the enrollment listener.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// What `enroll` needs.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// The join token.
    pub token: JoinToken,
    /// Enrollment address, `host:port`.
    pub enroll_address: String,
    /// Pinned CA fingerprint.
    pub ca_fingerprint: Fingerprint,
    /// Tunnel address to record, if known.
    pub tunnel_address: Option<String>,
    /// TLS server name (default: the host of `enroll_address`).
    pub server_name: Option<String>,
    /// Where to store the identity.
    pub files: AgentFiles,
    /// Replace an existing identity.
    pub force: bool,
    /// Deadline for the whole exchange.
    pub timeout: Duration,
}

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollClientError {
    /// An identity exists and `--force` was not given.
    #[error("already enrolled ({0} exists); pass --force to replace this identity")]
    AlreadyEnrolled(PathBuf),
    /// The enrollment address is not `host:port`.
    #[error("enroll address `{0}` is not host:port")]
    BadAddress(String),
    /// TCP connection failed.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// TLS failed (including a CA fingerprint mismatch).
    #[error("tls with {address} failed: {source}")]
    Tls {
        /// The address.
        address: String,
        /// What failed.
        source: TlsFailure,
    },
    /// The task generating the key pair did not finish (it panicked or was
    /// cancelled).
    #[error("key generation task failed: {0}")]
    KeyTask(#[from] tokio::task::JoinError),
    /// HTTP failed.
    #[error("enrollment request failed: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("enrollment request failed: {0}")]
    Request(#[from] http::Error),
    /// The request body could not be encoded.
    #[error("enrollment request failed: {0}")]
    Encode(#[source] serde_json::Error),
    /// The response body could not be read, or was larger than the cap.
    #[error("enrollment request failed: reading the response: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The control plane refused.
    #[error("control plane refused enrollment: {message} ({code})")]
    Refused {
        /// Machine-readable kind.
        code: EnrollErrorCode,
        /// Its message.
        message: String,
    },
    /// The answer did not make sense.
    #[error("unexpected enrollment response: {0}")]
    BadResponse(String),
    /// The answer is not the JSON of an enrollment response.
    #[error("unexpected enrollment response: {0}")]
    Decode(#[source] serde_json::Error),
    /// The answer names an agent or environment id that does not parse.
    #[error("unexpected enrollment response: {0}")]
    BadId(#[from] pki::IdentityError),
    /// Key generation or storing the identity failed.
    #[error(transparent)]
    Identity(#[from] pki::agent::AgentIdentityError),
    /// The exchange took longer than the deadline.
    #[error("enrollment timed out after {0:?}")]
    Timeout(Duration),
}

/// What failed in the TLS session with the enrollment listener.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The client configuration could not be built.
    #[error(transparent)]
    Config(#[from] pki::TlsError),
    /// The handshake failed (a CA fingerprint mismatch among others).
    #[error(transparent)]
    Handshake(std::io::Error),
    /// The handshake finished, yet the verifier saw no pinned CA (a bug).
    #[error("handshake finished without the pinned ca")]
    NoPinnedCa,
}

/// Enroll and store the identity. Returns the stored record and expiry.
pub async fn enroll(
    opts: EnrollOptions,
) -> Result<(IdentityRecord, std::time::SystemTime), EnrollClientError> {
    if opts.files.is_enrolled() && !opts.force {
        return Err(EnrollClientError::AlreadyEnrolled(
            opts.files.credentials_file(),
        ));
    }
    let timeout = opts.timeout;
    tokio::time::timeout(timeout, enroll_inner(opts))
        .await
        .map_err(|_| EnrollClientError::Timeout(timeout))?
}

async fn enroll_inner(
    opts: EnrollOptions,
) -> Result<(IdentityRecord, std::time::SystemTime), EnrollClientError> {
    let (host, _port) = split_host_port(&opts.enroll_address)
        .ok_or_else(|| EnrollClientError::BadAddress(opts.enroll_address.clone()))?;
    let server_name_str = opts.server_name.clone().unwrap_or_else(|| host.to_owned());
    let server_name = ServerName::try_from(server_name_str.clone())
        .map_err(|_| EnrollClientError::BadAddress(opts.enroll_address.clone()))?;

    // The key is generated here and only its public half goes into the CSR.
    let key = tokio::task::spawn_blocking(PendingKey::generate).await??;

    let verifier = Arc::new(PinnedCaVerifier::new(opts.ca_fingerprint));
    let tls_config = verifier
        .client_config()
        .map_err(|e| EnrollClientError::Tls {
            address: opts.enroll_address.clone(),
            source: TlsFailure::Config(e),
        })?;
    let tcp = tokio::net::TcpStream::connect(&opts.enroll_address)
        .await
        .map_err(|source| EnrollClientError::Connect {
            address: opts.enroll_address.clone(),
            source,
        })?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| EnrollClientError::Tls {
            address: opts.enroll_address.clone(),
            source: TlsFailure::Handshake(e),
        })?;
    let ca_seen = verifier.pinned_ca().ok_or_else(|| EnrollClientError::Tls {
        address: opts.enroll_address.clone(),
        source: TlsFailure::NoPinnedCa,
    })?;

    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    let driver = tokio::spawn(conn);
    let body = EnrollRequest {
        token: opts.token.expose().to_owned(),
        csr_pem: key.csr_pem.clone(),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned()),
        agent_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
    };
    let body = serde_json::to_vec(&body).map_err(EnrollClientError::Encode)?;
    let req = http::Request::builder()
        .method(http::Method::POST)
        .uri(ENROLL_PATH)
        .header(http::header::HOST, server_name_str.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(EnrollClientError::Body)?
        .to_bytes();
    driver.abort();
    if !status.is_success() {
        return Err(match serde_json::from_slice::<ErrorEnvelope>(&bytes) {
            Ok(env) => EnrollClientError::Refused {
                code: EnrollErrorCode::parse(&env.error.kind),
                message: env.error.message,
            },
            Err(_) => EnrollClientError::BadResponse(format!("http status {status}")),
        });
    }
    let answer: EnrollResponse =
        serde_json::from_slice(&bytes).map_err(EnrollClientError::Decode)?;
    let chain = pki::ca::pem_to_certs(&answer.certificate_chain_pem)
        .map_err(|e| EnrollClientError::BadResponse(format!("certificate chain: {e}")))?;
    let ca = pki::ca::pem_to_certs(&answer.ca_certificate_pem)
        .map_err(|e| EnrollClientError::BadResponse(format!("ca certificate: {e}")))?
        .swap_remove(0);
    if ca.as_ref() != ca_seen.as_ref() {
        return Err(EnrollClientError::BadResponse(
            "ca in the response differs from the pinned ca of the tls session".into(),
        ));
    }
    let record = IdentityRecord {
        agent_id: AgentId::parse(&answer.agent_id)?,
        environment_id: EnvironmentId::parse(&answer.environment_id)?,
        ca_fingerprint: opts.ca_fingerprint,
        tunnel_address: opts.tunnel_address.clone(),
        enroll_address: Some(opts.enroll_address.clone()),
        server_name: opts.server_name.clone(),
    };
    // save_enrollment re-verifies the chain against the CA and our key, and
    // checks the identity in it.
    let creds = opts.files.save_enrollment(&key, &chain, &ca, &record)?;
    if creds.identity.agent_id != record.agent_id
        || creds.identity.environment_id != record.environment_id
    {
        return Err(EnrollClientError::BadResponse(
            "certificate names a different agent than the response".into(),
        ));
    }
    Ok((record, creds.identity.not_after))
}

/// Flags of `sandbox-agent enroll`, before resolution.
#[derive(Debug, Clone, Default)]
pub struct EnrollArgs {
    /// `--join`: a join string from `control-plane tokens create`.
    pub join: Option<String>,
    /// `--token`.
    pub token: Option<String>,
    /// `--enroll-address`.
    pub enroll_address: Option<String>,
    /// `--ca-fingerprint`.
    pub ca_fingerprint: Option<String>,
    /// `--tunnel-address`.
    pub tunnel_address: Option<String>,
    /// `--server-name`.
    pub server_name: Option<String>,
    /// `--force`.
    pub force: bool,
    /// `--timeout-seconds`.
    pub timeout_seconds: u64,
}

/// A flag problem, naming the flag.
#[derive(Debug, thiserror::Error)]
#[error("invalid {flag}: {message}")]
pub struct UsageError {
    /// The flag.
    pub flag: &'static str,
    /// What is wrong.
    pub message: String,
}

/// Resolve flags, join string and config into [`EnrollOptions`]. Explicit
/// flags win over the join string, which wins over `[control_plane]`.
pub fn resolve(
    args: EnrollArgs,
    config: &crate::config::Config,
) -> Result<EnrollOptions, UsageError> {
    let usage = |flag: &'static str, message: String| UsageError { flag, message };
    let join: Option<pki::JoinString> = args
        .join
        .as_deref()
        .map(|s| {
            s.parse()
                .map_err(|e: pki::tokens::JoinStringError| usage("--join", e.to_string()))
        })
        .transpose()?;
    let token = match (&args.token, &join) {
        (Some(t), _) => JoinToken::parse(t).map_err(|e| usage("--token", e.to_string()))?,
        (None, Some(j)) => j.token().map_err(|e| usage("--join", e.to_string()))?,
        (None, None) => {
            return Err(usage(
                "--token",
                "a join token is required (--join or --token)".into(),
            ))
        }
    };
    let cp = &config.control_plane;
    let enroll_address = args
        .enroll_address
        .or_else(|| join.as_ref().map(|j| j.enroll_address.clone()))
        .or_else(|| cp.enroll_address.clone())
        .ok_or_else(|| {
            usage(
                "--enroll-address",
                "required (or --join, or control_plane.enroll_address)".into(),
            )
        })?;
    if split_host_port(&enroll_address).is_none() {
        return Err(usage(
            "--enroll-address",
            format!("`{enroll_address}` is not host:port"),
        ));
    }
    let ca_fingerprint = match args.ca_fingerprint {
        Some(f) => f
            .parse()
            .map_err(|e: pki::FingerprintError| usage("--ca-fingerprint", e.to_string()))?,
        None => join
            .as_ref()
            .map(|j| j.ca_fingerprint)
            .or(cp.ca_fingerprint)
            .ok_or_else(|| {
                usage(
                    "--ca-fingerprint",
                    "required (or --join, or control_plane.ca_fingerprint)".into(),
                )
            })?,
    };
    let tunnel_address = args
        .tunnel_address
        .or_else(|| join.as_ref().and_then(|j| j.tunnel_address.clone()))
        .or_else(|| cp.address.clone());
    if let Some(t) = &tunnel_address {
        if split_host_port(t).is_none() {
            return Err(usage("--tunnel-address", format!("`{t}` is not host:port")));
        }
    }
    if args.timeout_seconds == 0 {
        return Err(usage("--timeout-seconds", "must be at least 1".into()));
    }
    Ok(EnrollOptions {
        token,
        enroll_address,
        ca_fingerprint,
        tunnel_address,
        server_name: args.server_name.or_else(|| cp.server_name.clone()),
        files: AgentFiles::new(&config.identity.dir),
        force: args.force,
        timeout: Duration::from_secs(args.timeout_seconds),
    })
}
