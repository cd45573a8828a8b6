//! Model clients: the Anthropic Messages API over hyper and rustls with
//! streaming SSE, behind a small provider trait.
#![forbid(unsafe_code)]
