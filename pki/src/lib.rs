//! Identity for Airlock: the control plane's internal CA, single-use join
//! tokens, certificate issuance from agent CSRs, renewal and revocation, and the
//! rustls configurations (mutual TLS, CA pinning by fingerprint) both sides use.
#![forbid(unsafe_code)]
