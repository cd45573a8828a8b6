//! The public HTTP API (in progress).
#![forbid(unsafe_code)]
