//! Enrollment wire types: `POST /v1/enroll` on the enrollment listener, JSON
//! in and out. The agent sends its join token and a CSR; the control plane
//! answers with the agent id, the environment, the certificate chain and the
//! CA certificate. Errors use one envelope, `{"error": {"type", "message"}}`,
//! with the `type` values of [`EnrollErrorCode`].

use std::fmt;

/// Path of the enrollment endpoint.
pub const ENROLL_PATH: &str = "/v1/enroll";
/// Largest request body accepted, in bytes.
pub const MAX_ENROLL_BODY_BYTES: usize = 64 * 1024;

/// The request body.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct EnrollRequest {
    /// The join token (secret).
    pub token: String,
    /// PKCS#10 request, PEM.
    pub csr_pem: String,
    /// Host name of the agent's machine (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Agent software version (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

impl fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &"[redacted]")
            .field("hostname", &self.hostname)
            .field("agent_version", &self.agent_version)
            .finish_non_exhaustive()
    }
}

/// The success body.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EnrollResponse {
    /// Assigned agent id.
    pub agent_id: String,
    /// Environment the agent joined.
    pub environment_id: String,
    /// Leaf certificate followed by the CA, PEM.
    pub certificate_chain_pem: String,
    /// The CA certificate, PEM.
    pub ca_certificate_pem: String,
    /// Leaf expiry, Unix seconds.
    pub not_after: i64,
}

/// The error body.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

/// One error.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// Machine-readable kind, see [`EnrollErrorCode`].
    #[serde(rename = "type")]
    pub kind: String,
    /// Human-readable, lowercase.
    pub message: String,
}

/// Error kinds on the wire. Unknown kinds from a newer server are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnrollErrorCode {
    /// Token shape is wrong.
    TokenMalformed,
    /// No such token.
    TokenUnknown,
    /// Token expired.
    TokenExpired,
    /// Token already used.
    TokenUsed,
    /// Token revoked by the operator before it was used.
    TokenRevoked,
    /// CSR unparseable or signature bad.
    InvalidCsr,
    /// CSR key type not accepted.
    UnsupportedKey,
    /// Body larger than [`MAX_ENROLL_BODY_BYTES`].
    PayloadTooLarge,
    /// Body is not the JSON expected.
    BadRequest,
    /// Wrong path.
    NotFound,
    /// Wrong method.
    MethodNotAllowed,
    /// Server-side failure; retry later.
    Internal,
    /// A kind this version does not know.
    Unknown(String),
}

impl EnrollErrorCode {
    /// The wire string.
    pub fn as_str(&self) -> &str {
        match self {
            Self::TokenMalformed => "token_malformed",
            Self::TokenUnknown => "token_unknown",
            Self::TokenExpired => "token_expired",
            Self::TokenUsed => "token_used",
            Self::TokenRevoked => "token_revoked",
            Self::InvalidCsr => "invalid_csr",
            Self::UnsupportedKey => "unsupported_key",
            Self::PayloadTooLarge => "payload_too_large",
            Self::BadRequest => "bad_request",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Internal => "internal",
            Self::Unknown(s) => s,
        }
    }

    /// Parse a wire string.
    pub fn parse(s: &str) -> Self {
        match s {
            "token_malformed" => Self::TokenMalformed,
            "token_unknown" => Self::TokenUnknown,
            "token_expired" => Self::TokenExpired,
            "token_used" => Self::TokenUsed,
            "token_revoked" => Self::TokenRevoked,
            "invalid_csr" => Self::InvalidCsr,
            "unsupported_key" => Self::UnsupportedKey,
            "payload_too_large" => Self::PayloadTooLarge,
            "bad_request" => Self::BadRequest,
            "not_found" => Self::NotFound,
            "method_not_allowed" => Self::MethodNotAllowed,
            "internal" => Self::Internal,
            other => Self::Unknown(other.to_owned()),
        }
    }
}

impl fmt::Display for EnrollErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
