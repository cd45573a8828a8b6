//! The bridge's HTTP client for MCP servers and token endpoints, and the
//! [`StreamableHttpClient`] rmcp's transport drives: reqwest's own
//! implementation, with the credential's *current* access token put in
//! `Authorization: Bearer` on every request (so a refresh takes effect on
//! the very next request of a live MCP session) and each request reported
//! to the credential-use journal.
//!
//! TLS: rustls with the bridge's upstream trust roots (`[egress]
//! upstream_ca_files`, or Mozilla's roots), the same roots the egress proxy
//! verifies upstream hosts with. No redirects are followed (a token is never
//! carried to another URL). No proxy from the environment.
//!
//! Connection reuse: rmcp stops reading a POST's SSE answer as soon as the
//! JSON-RPC response is in, often before the chunked body's last chunk has
//! arrived; a body dropped unread makes hyper close the connection, so every
//! call would pay a new TCP + TLS handshake. [`drain_when_dropped`] reads
//! such a stream to its end (briefly, discarding) after rmcp lets go of it,
//! and the connection goes back to the pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use http::{HeaderName, HeaderValue};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
    StreamableHttpResponseLimits,
};
use sse_stream::Sse;

use crate::egress::{AuditEvent, AuditOutcome, AuditSink, SecretValue, TrustRoots};
use crate::lock;

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("mcp http client: {0}")]
pub struct HttpClientError(pub String);

/// A reqwest client verifying servers against `roots`.
pub fn build_client(
    roots: &TrustRoots,
    connect_timeout: Duration,
) -> Result<reqwest::Client, HttpClientError> {
    let mut store = rustls::RootCertStore::empty();
    let mut add_pem = |what: &str, pem: &str| -> Result<(), HttpClientError> {
        let certs = pki::ca::pem_to_certs(pem)
            .map_err(|e| HttpClientError(format!("trust roots {what}: {e}")))?;
        for c in certs {
            store
                .add(c)
                .map_err(|e| HttpClientError(format!("trust roots {what}: {e}")))?;
        }
        Ok(())
    };
    match roots {
        TrustRoots::Webpki => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        TrustRoots::Files(files) => {
            for f in files {
                let what = f.display().to_string();
                let pem = std::fs::read_to_string(f)
                    .map_err(|e| HttpClientError(format!("trust roots {what}: {e}")))?;
                add_pem(&what, &pem)?;
            }
        }
        TrustRoots::Pem(pem) => add_pem("pem", pem)?,
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(pki::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpClientError(format!("tls config: {e}")))?
        .with_root_certificates(store)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .map_err(|e| HttpClientError(e.to_string()))
}

/// The access token requests of one MCP session carry; swapped on refresh.
#[derive(Debug, Default)]
pub struct TokenSlot(Mutex<Option<SecretValue>>);

impl TokenSlot {
    /// A slot holding `token` (`None`: requests go without `Authorization`).
    pub fn new(token: Option<SecretValue>) -> Self {
        Self(Mutex::new(token))
    }

    /// Replace the token.
    pub fn set(&self, token: Option<SecretValue>) {
        *lock(&self.0) = token;
    }

    /// The token now.
    pub fn get(&self) -> Option<SecretValue> {
        lock(&self.0).clone()
    }
}

/// Who a request is made for, for the credential-use journal.
#[derive(Debug, Clone)]
pub struct AuditContext {
    /// Where uses are reported.
    pub sink: Arc<dyn AuditSink>,
    /// The session (empty for a validation probe).
    pub session_id: String,
    /// `vcrd_...`, when a credential is used.
    pub credential_id: Option<String>,
    /// `vlt_...`.
    pub vault_id: Option<String>,
    /// The server's host.
    pub host: String,
    /// The server URL's path.
    pub path: String,
}

impl AuditContext {
    /// Report one request (only when a credential went with it).
    pub fn record(&self, method: &str, outcome: AuditOutcome) {
        if self.credential_id.is_none() {
            return;
        }
        self.sink.record(AuditEvent {
            credential_id: self.credential_id.clone(),
            vault_id: self.vault_id.clone(),
            host: self.host.clone(),
            method: method.to_owned(),
            path: self.path.clone(),
            sandbox_id: String::new(),
            session_id: self.session_id.clone(),
            outcome,
        });
    }
}

/// The HTTP status an rmcp transport error stands for, when it is one.
pub fn error_status<E: std::error::Error + Send + Sync + 'static>(
    e: &StreamableHttpError<E>,
) -> Option<u16> {
    match e {
        StreamableHttpError::AuthRequired(_) => Some(401),
        StreamableHttpError::InsufficientScope(_) => Some(403),
        StreamableHttpError::HttpStatus(s) => Some(s.status),
        StreamableHttpError::SessionExpired => Some(404),
        _ => None,
    }
}

fn outcome_of<T, E: std::error::Error + Send + Sync + 'static>(
    r: &Result<T, StreamableHttpError<E>>,
    ok_status: impl FnOnce(&T) -> u16,
) -> AuditOutcome {
    match r {
        Ok(v) => AuditOutcome::Injected {
            status: ok_status(v),
        },
        Err(e) => match error_status(e) {
            Some(status) => AuditOutcome::Injected { status },
            None => AuditOutcome::UpstreamFailed,
        },
    }
}

/// How long a POST's SSE answer is read on after its reader let go of it.
const DRAIN_AFTER_DROP: Duration = Duration::from_millis(500);

/// `stream`, read by a task that hands items over while the returned stream
/// is held and, once it is dropped, reads the rest (at most
/// [`DRAIN_AFTER_DROP`], items discarded) so the HTTP body ends and its
/// connection can be reused.
pub fn drain_when_dropped<T: Send + 'static>(
    mut stream: BoxStream<'static, T>,
) -> BoxStream<'static, T> {
    let (tx, rx) = tokio::sync::mpsc::channel::<T>(8);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(item) => {
                        if tx.send(item).await.is_err() {
                            break;
                        }
                    }
                    None => return,
                },
                () = tx.closed() => break,
            }
        }
        let _ = tokio::time::timeout(DRAIN_AFTER_DROP, async {
            while stream.next().await.is_some() {}
        })
        .await;
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// reqwest's [`StreamableHttpClient`] with the session's current bearer
/// token and per-request audit.
#[derive(Clone, Debug)]
pub struct BearerClient {
    /// The HTTP client.
    pub inner: reqwest::Client,
    /// The token to send.
    pub token: Arc<TokenSlot>,
    /// Who to report requests for.
    pub audit: AuditContext,
    /// The last error of a response's SSE stream (rmcp ends the session on
    /// one without saying why; the caller reads it from here).
    pub stream_error: Arc<Mutex<Option<String>>>,
}

impl BearerClient {
    fn auth(&self) -> Option<String> {
        self.token.get().map(|t| t.expose().to_owned())
    }
}

impl StreamableHttpClient for BearerClient {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        self.post_message_with_response_limits(
            uri,
            message,
            session_id,
            None,
            custom_headers,
            StreamableHttpResponseLimits::default(),
        )
        .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        let r = self
            .inner
            .post_message_with_response_limits(
                uri,
                message,
                session_id,
                self.auth(),
                custom_headers,
                limits,
            )
            .await;
        self.audit.record(
            "POST",
            outcome_of(&r, |v| match v {
                StreamableHttpPostResponse::Accepted => 202,
                _ => 200,
            }),
        );
        match r {
            Ok(StreamableHttpPostResponse::Sse(stream, sid)) => {
                let slot = self.stream_error.clone();
                let stream = stream.inspect(move |item| {
                    if let Err(e) = item {
                        *lock(&slot) = Some(e.to_string());
                    }
                });
                Ok(StreamableHttpPostResponse::Sse(
                    drain_when_dropped(Box::pin(stream)),
                    sid,
                ))
            }
            other => other,
        }
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        let r = self
            .inner
            .delete_session(uri, session_id, self.auth(), custom_headers)
            .await;
        self.audit.record("DELETE", outcome_of(&r, |_| 200));
        r
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        let r = self
            .inner
            .get_stream(uri, session_id, last_event_id, self.auth(), custom_headers)
            .await;
        self.audit.record("GET", outcome_of(&r, |_| 200));
        r
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        let r = self
            .inner
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                self.auth(),
                custom_headers,
                max_sse_event_size,
            )
            .await;
        self.audit.record("GET", outcome_of(&r, |_| 200));
        r
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn a_dropped_answer_is_read_to_its_end() {
        let ended = Arc::new(AtomicBool::new(false));
        let e = ended.clone();
        // The response, then a slow end (the last chunk arriving late).
        let inner = futures::stream::iter([1, 2])
            .chain(futures::stream::once(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                e.store(true, Ordering::SeqCst);
                3
            }))
            .boxed();
        let mut s = drain_when_dropped(inner);
        assert_eq!(s.next().await, Some(1));
        drop(s);
        let waited = tokio::time::timeout(Duration::from_secs(2), async {
            while !ended.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "the rest of the stream was not read");
    }

    #[tokio::test]
    async fn a_held_answer_passes_every_item_in_order() {
        let s = drain_when_dropped(futures::stream::iter(0..100).boxed());
        assert_eq!(s.collect::<Vec<_>>().await, (0..100).collect::<Vec<_>>());
    }
}
