//! Resource ids: a published prefix and a time-ordered UUIDv7 in hex.

/// A new id with `prefix` (`agent`, `env`, `sesn`, `key`, `req`).
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// RFC 3339 in UTC.
pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    session_store::format_rfc3339(t)
}
