//! Scrubbing for the agent's audit record: the `Scrub` request of the agent
//! channel ([`protocol::bridge::ToBridge::Scrub`]).
//!
//! The agent keeps tool inputs and outputs in its audit record but never
//! holds the secrets, so it asks the bridge to replace every secret value the
//! bridge currently knows in every string (and object key) of a JSON value
//! with `[redacted:<credential id or kind>]`:
//!
//! - every credential in the secret backend (static credentials and the ones
//!   the control plane relayed; each field: `token`, `access_token`,
//!   `refresh_token`, `client_secret`, `secret_value`), labelled with the
//!   credential id (`vcrd_…`);
//! - every session Git token the bridge holds, labelled with its session
//!   resource id (`sesrsc_…`);
//! - every value the bridge served from a customer's KV path since it
//!   started, and MCP OAuth tokens it refreshed and holds in memory.
//!
//! Each value is matched raw and in its URL-encoded and base64 (standard and
//! URL-safe, padded and not) forms when they differ. Values shorter than
//! [`MIN_SECRET_LEN`] bytes are not matched (they would shred ordinary
//! text); a longer value is replaced before a shorter one. The set is
//! gathered from the stores at most every [`KNOWN_MAX_AGE`] and at once after
//! a relay put (so a credential relayed a moment ago is known).
//!
//! Limits: a secret split across two strings, transformed otherwise (hex,
//! inside a larger base64 blob at an unaligned offset, `user:token` in a
//! Basic header) or shorter than [`MIN_SECRET_LEN`] is not found here; the
//! agent's own token-format scrubber catches common shapes of those.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::backend::SecretBackend;

/// Shortest secret value that is matched, in bytes.
pub const MIN_SECRET_LEN: usize = 8;
/// How long a gathered set of known values is reused.
pub const KNOWN_MAX_AGE: Duration = Duration::from_secs(5);
/// How long gathering the known values from the stores may take.
const GATHER_TIMEOUT: Duration = Duration::from_secs(10);

/// One form of one secret value and what replaces it.
struct Needle {
    pattern: SecretString,
    marker: String,
}

/// The secret values the bridge knows, ready to match (longest first).
#[derive(Default)]
pub struct Known {
    needles: Vec<Needle>,
    /// Values skipped because they are shorter than [`MIN_SECRET_LEN`].
    pub too_short: usize,
    /// Stores that could not be read when this set was gathered (never a secret).
    pub errors: Vec<String>,
}

impl std::fmt::Debug for Known {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Known")
            .field("needles", &self.needles.len())
            .field("too_short", &self.too_short)
            .field("errors", &self.errors)
            .finish()
    }
}

/// Percent-encode everything but RFC 3986's unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The forms of `value` that are matched.
fn forms(value: &str) -> BTreeSet<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut out = BTreeSet::new();
    out.insert(value.to_owned());
    out.insert(url_encode(value));
    // Lower-case hex digits after `%` are as common as upper-case ones.
    let lower = {
        let mut s = String::new();
        let mut rest = url_encode(value);
        while let Some(i) = rest.find('%') {
            s.push_str(&rest[..i]);
            let end = (i + 3).min(rest.len());
            s.push_str(&rest[i..end].to_ascii_lowercase());
            rest = rest[end..].to_owned();
        }
        s.push_str(&rest);
        s
    };
    out.insert(lower);
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        out.insert(engine.encode(value.as_bytes()));
    }
    out
}

impl Known {
    /// The set built from `(label, value)` pairs (label: a credential id or
    /// a kind; never a secret).
    pub fn from_values<'a>(values: impl IntoIterator<Item = (String, &'a str)>) -> Self {
        let mut known = Self::default();
        // pattern -> marker; one pattern keeps the first label it came with.
        let mut by_pattern: BTreeMap<String, String> = BTreeMap::new();
        for (label, value) in values {
            if value.len() < MIN_SECRET_LEN {
                if !value.is_empty() {
                    known.too_short += 1;
                }
                continue;
            }
            for form in forms(value) {
                by_pattern
                    .entry(form)
                    .or_insert_with(|| format!("[redacted:{label}]"));
            }
        }
        let mut needles: Vec<Needle> = by_pattern
            .into_iter()
            .map(|(pattern, marker)| Needle {
                pattern: SecretString::from(pattern),
                marker,
            })
            .collect();
        needles.sort_by(|a, b| {
            b.pattern
                .expose_secret()
                .len()
                .cmp(&a.pattern.expose_secret().len())
        });
        known.needles = needles;
        known
    }

    /// How many patterns are matched (forms of values).
    pub fn len(&self) -> usize {
        self.needles.len()
    }

    /// Whether no value is known.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// Replace every known value in `s`; returns how many were replaced.
    pub fn scrub_str(&self, s: &mut String) -> u32 {
        let mut n = 0u32;
        for needle in &self.needles {
            let p = needle.pattern.expose_secret();
            if s.contains(p) {
                let count = s.matches(p).count();
                n = n.saturating_add(u32::try_from(count).unwrap_or(u32::MAX));
                *s = s.replace(p, &needle.marker);
            }
        }
        n
    }

    /// Replace every known value in every string and object key of `value`;
    /// returns how many were replaced.
    pub fn scrub_value(&self, value: &mut Value) -> u32 {
        if self.needles.is_empty() {
            return 0;
        }
        match value {
            Value::String(s) => self.scrub_str(s),
            Value::Array(items) => items
                .iter_mut()
                .fold(0u32, |n, v| n.saturating_add(self.scrub_value(v))),
            Value::Object(map) => {
                let mut n = 0u32;
                let old = std::mem::take(map);
                for (mut k, mut v) in old {
                    n = n.saturating_add(self.scrub_str(&mut k));
                    n = n.saturating_add(self.scrub_value(&mut v));
                    map.insert(k, v);
                }
                n
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        }
    }
}

/// Where the known values come from, and the cached set.
#[derive(Debug)]
pub struct KnownSecrets {
    backend: Arc<dyn SecretBackend>,
    relay: Option<Arc<crate::relay::Relay>>,
    mcp: Option<Arc<crate::mcp::McpClient>>,
    cache: tokio::sync::Mutex<Option<(Instant, Arc<Known>)>>,
}

impl KnownSecrets {
    /// Values of `backend` (and, once set, of the relay and MCP client).
    pub fn new(backend: Arc<dyn SecretBackend>) -> Self {
        Self {
            backend,
            relay: None,
            mcp: None,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// Also the relay's session tokens and the KV-path values it served.
    pub fn with_relay(mut self, relay: Arc<crate::relay::Relay>) -> Self {
        self.relay = Some(relay);
        self
    }

    /// Also the MCP OAuth tokens the MCP client refreshed.
    pub fn with_mcp(mut self, mcp: Arc<crate::mcp::McpClient>) -> Self {
        self.mcp = Some(mcp);
        self
    }

    /// Forget the cached set (a credential or token was just relayed).
    pub async fn invalidate(&self) {
        *self.cache.lock().await = None;
    }

    /// The current set: the cached one if younger than [`KNOWN_MAX_AGE`],
    /// else gathered again from the stores.
    pub async fn current(&self) -> Arc<Known> {
        let mut cache = self.cache.lock().await;
        if let Some((at, known)) = cache.as_ref() {
            if at.elapsed() < KNOWN_MAX_AGE {
                return known.clone();
            }
        }
        let known = Arc::new(self.gather().await);
        if !known.errors.is_empty() {
            tracing::warn!(errors = ?known.errors, "scrub: some secret stores could not be read; their values are not scrubbed");
        }
        *cache = Some((Instant::now(), known.clone()));
        known
    }

    async fn gather(&self) -> Known {
        let mut values: Vec<(String, SecretString)> = Vec::new();
        let mut errors = Vec::new();
        match tokio::time::timeout(GATHER_TIMEOUT, backend_values(&*self.backend)).await {
            Ok(Ok(v)) => values.extend(v),
            Ok(Err(e)) => errors.push(format!("secret backend: {e}")),
            Err(_) => errors.push(format!(
                "secret backend: no answer within {GATHER_TIMEOUT:?}"
            )),
        }
        if let Some(relay) = &self.relay {
            match tokio::time::timeout(GATHER_TIMEOUT, relay.known_values()).await {
                Ok(Ok(v)) => values.extend(v),
                Ok(Err(e)) => errors.push(format!("session token store: {e}")),
                Err(_) => errors.push(format!(
                    "session token store: no answer within {GATHER_TIMEOUT:?}"
                )),
            }
        }
        if let Some(mcp) = &self.mcp {
            values.extend(mcp.tokens().held_values());
        }
        let mut known = Known::from_values(
            values
                .iter()
                .map(|(label, v)| (label.clone(), v.expose_secret())),
        );
        known.errors = errors;
        known
    }
}

/// Every field of every credential `backend` stores, labelled with its
/// credential id.
pub async fn backend_values(
    backend: &dyn SecretBackend,
) -> Result<Vec<(String, SecretString)>, crate::backend::BackendError> {
    let mut out = Vec::new();
    for (key, _) in backend.list().await? {
        match backend.get(&key).await {
            Ok(secret) => {
                for (_, value) in secret.iter() {
                    out.push((key.credential_id().to_owned(), value.clone()));
                }
            }
            // Deleted between list and get: nothing to scrub.
            Err(crate::backend::BackendError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn known(pairs: &[(&str, &str)]) -> Known {
        Known::from_values(pairs.iter().map(|(l, v)| ((*l).to_owned(), *v)))
    }

    #[test]
    fn raw_url_encoded_and_base64_forms_are_replaced_everywhere() {
        let secret = "canary/Se+cret=42";
        let k = known(&[("vcrd_1", secret)]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let mut v = json!({
            "command": format!("echo {secret} && curl https://h/?t={}", url_encode(secret)),
            "nested": [format!("Authorization: Basic {b64}"), 7, null, {"x": b64url}],
            "lower": "canary%2fSe%2bcret%3d42",
            secret: "key is a secret too",
        });
        let n = k.scrub_value(&mut v);
        let text = v.to_string();
        assert!(!text.contains("canary"), "{text}");
        assert!(!text.contains(&b64), "{text}");
        assert!(!text.contains(&b64url), "{text}");
        assert_eq!(n, 6, "{text}");
        assert_eq!(text.matches("[redacted:vcrd_1]").count(), 6, "{text}");
        assert_eq!(v["nested"][1], json!(7));
    }

    #[test]
    fn short_values_are_not_matched_and_longer_values_win() {
        let k = known(&[
            ("vcrd_short", "abc"),
            ("vcrd_long", "token-1234567890"),
            ("vcrd_prefix", "token-1234"),
        ]);
        assert_eq!(k.too_short, 1);
        let mut s = "abc token-1234567890 token-1234".to_owned();
        assert_eq!(k.scrub_str(&mut s), 2);
        assert_eq!(s, "abc [redacted:vcrd_long] [redacted:vcrd_prefix]");
    }

    #[test]
    fn nothing_known_changes_nothing() {
        let k = Known::default();
        let mut v = json!({"a": "b"});
        assert_eq!(k.scrub_value(&mut v), 0);
        assert_eq!(v, json!({"a": "b"}));
        assert!(k.is_empty());
    }

    #[test]
    fn debug_shows_no_value() {
        let k = known(&[("vcrd_1", "canary-debug-value")]);
        let d = format!("{k:?}");
        assert!(!d.contains("canary"), "{d}");
    }
}
