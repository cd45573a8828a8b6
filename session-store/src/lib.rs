//! The durable session log: append-only events with gap-free per-session
//! sequence numbers, live tails, and session leases whose epochs fence appends.
//! SQLite (embedded default) and PostgreSQL implementations share one
//! conformance suite.
#![forbid(unsafe_code)]
