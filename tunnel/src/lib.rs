//! The tunnel: one long-lived, agent-dialed connection (QUIC, or TLS over TCP
//! multiplexed with h2) on which the control plane opens one bidirectional
//! stream per call. Owns transports, hello, heartbeats, reconnect and drain;
//! does not own certificates (see `pki`) or what a call does (the embedding app).
#![forbid(unsafe_code)]
