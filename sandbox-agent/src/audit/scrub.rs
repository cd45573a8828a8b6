//! Secrets scrubbing, agent side: common token formats found by pattern in
//! every string of a JSON value are replaced by `[redacted:<kind>]`.
//!
//! This is the first of two passes. The second, every value the
//! vault-bridge knows (raw, URL-encoded, base64), runs in the bridge
//! (`ToBridge::Scrub`): the agent never holds those values, so this type
//! takes no list of literals. Call sites send the input to the bridge when
//! there is one, then run [`Scrubber::scrub`] on what comes back, and add
//! both counts into the line's `redactions`. The audit writer runs this
//! pass again over `input` in any case, so a call site that forgets cannot
//! put a token of these formats on disk.

use std::borrow::Cow;

use regex::{Captures, Regex};
use serde_json::Value;

/// One token format.
struct Pattern {
    kind: &'static str,
    regex: Regex,
    /// Capture group kept in front of the replacement (e.g. `Bearer `).
    keep_prefix: Option<usize>,
    /// Capture group kept after the replacement (e.g. `@`).
    keep_suffix: Option<usize>,
}

/// `(kind, pattern, kept prefix group, kept suffix group)`, applied in this
/// order (more specific first).
const PATTERNS: &[(&str, &str, Option<usize>, Option<usize>)] = &[
    (
        "private_key",
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:[\s\S]*?-----END [A-Z0-9 ]*PRIVATE KEY-----|[\s\S]*)",
        None,
        None,
    ),
    (
        "authorization",
        r"(?i)(authorization\s*[:=]\s*['\x22]?\s*(?:bearer|basic|token|digest)\s+)[A-Za-z0-9._~+/=\-]{6,}",
        Some(1),
        None,
    ),
    (
        "github_token",
        r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,255}\b",
        None,
        None,
    ),
    (
        "github_token",
        r"\bgithub_pat_[A-Za-z0-9_]{22,255}",
        None,
        None,
    ),
    ("gitlab_token", r"\bglpat-[A-Za-z0-9_\-]{20,}", None, None),
    (
        "slack_token",
        r"\bxox[abprs]-[A-Za-z0-9\-]{10,}",
        None,
        None,
    ),
    (
        "aws_access_key",
        r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
        None,
        None,
    ),
    ("anthropic_key", r"\bsk-ant-[A-Za-z0-9_\-]{20,}", None, None),
    (
        "openai_key",
        r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_\-]{32,}",
        None,
        None,
    ),
    (
        "jwt",
        r"\beyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}",
        None,
        None,
    ),
    (
        "bearer_token",
        r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/\-]{20,}=*",
        Some(1),
        None,
    ),
    (
        // last, and not over a token already replaced (`[redacted:…]`)
        "url_password",
        r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)[^/\s@\[][^/\s@]*(@)",
        Some(1),
        Some(2),
    ),
];

/// Replaces common token formats in JSON values (see the module docs).
pub struct Scrubber {
    patterns: Vec<Pattern>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber")
            .field("patterns", &self.patterns.len())
            .finish()
    }
}

static GLOBAL: std::sync::LazyLock<Scrubber> = std::sync::LazyLock::new(Scrubber::new);

impl Default for Scrubber {
    fn default() -> Self {
        Self::new()
    }
}

impl Scrubber {
    /// Compile the patterns. (They are constants covered by the unit tests;
    /// one that did not compile would be logged and skipped.)
    pub fn new() -> Self {
        let patterns = PATTERNS
            .iter()
            .filter_map(|(kind, p, keep_prefix, keep_suffix)| match Regex::new(p) {
                Ok(regex) => Some(Pattern {
                    kind,
                    regex,
                    keep_prefix: *keep_prefix,
                    keep_suffix: *keep_suffix,
                }),
                Err(error) => {
                    tracing::error!(kind, %error, "scrub pattern does not compile (bug)");
                    None
                }
            })
            .collect();
        Self { patterns }
    }

    /// The process-wide scrubber (compiled once).
    pub fn global() -> &'static Scrubber {
        &GLOBAL
    }

    /// Replace every token found in the strings of `value` (object values,
    /// array items; not object keys) in place; returns how many were
    /// replaced.
    pub fn scrub(&self, value: &mut Value) -> u32 {
        match value {
            Value::String(s) => {
                let (out, n) = self.scrub_str(s);
                if n > 0 {
                    *s = out.into_owned();
                }
                n
            }
            Value::Array(items) => items.iter_mut().map(|v| self.scrub(v)).sum(),
            Value::Object(map) => map.values_mut().map(|v| self.scrub(v)).sum(),
            Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        }
    }

    /// [`Scrubber::scrub`] on an owned value.
    pub fn scrubbed(&self, mut value: Value) -> (Value, u32) {
        let n = self.scrub(&mut value);
        (value, n)
    }

    /// Replace every token in one string; returns the text and the count.
    pub fn scrub_str<'a>(&self, text: &'a str) -> (Cow<'a, str>, u32) {
        let mut out: Cow<'a, str> = Cow::Borrowed(text);
        let mut count = 0u32;
        for p in &self.patterns {
            if !p.regex.is_match(&out) {
                continue;
            }
            let replaced = p
                .regex
                .replace_all(&out, |c: &Captures<'_>| {
                    count = count.saturating_add(1);
                    let pre = p
                        .keep_prefix
                        .and_then(|i| c.get(i))
                        .map_or("", |m| m.as_str());
                    let post = p
                        .keep_suffix
                        .and_then(|i| c.get(i))
                        .map_or("", |m| m.as_str());
                    format!("{pre}[redacted:{}]{post}", p.kind)
                })
                .into_owned();
            out = Cow::Owned(replaced);
        }
        (out, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_pattern_compiles() {
        assert_eq!(Scrubber::new().patterns.len(), PATTERNS.len());
    }

    #[test]
    fn realistic_tokens_are_replaced() {
        let s = Scrubber::new();
        let cases: &[(&str, &str)] = &[
            ("git clone https://x:ghp_1A2b3C4d5E6f7G8h9I0jK1l2M3n4O5p6Q7r8@github.com/o/r", "github_token"),
            ("GH_TOKEN=gho_16C7e42F292c6912E7710c838347Ae178B4a", "github_token"),
            ("token github_pat_11ABCDEFG0123456789abc_defghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWX1234", "github_token"),
            ("PRIVATE-TOKEN: glpat-xYz12_abcdefGHIJKLmnop", "gitlab_token"),
            ("SLACK=xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "slack_token"),
            ("aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "aws_access_key"),
            ("export ANTHROPIC_API_KEY=sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-AbCdEf", "anthropic_key"),
            ("OPENAI_API_KEY=sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCd", "openai_key"),
            ("cookie: eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "jwt"),
            ("curl -H 'Authorization: Bearer abc.def-ghi_jkl' https://api", "authorization"),
            ("curl -H \"authorization: Basic dXNlcjpwYXNzd29yZA==\" https://api", "authorization"),
            ("psql postgres://app:s3cr3t-P4ss@db.internal:5432/app", "url_password"),
            ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----\n", "private_key"),
            ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA (cut", "private_key"),
        ];
        for (text, kind) in cases {
            let (out, n) = s.scrub_str(text);
            assert!(n >= 1, "{text}: nothing found");
            assert!(
                out.contains(&format!("[redacted:{kind}]")),
                "{text} -> {out}"
            );
            for secret in [
                "1A2b3C4d5E6f7G8h9I0jK1l2M3n4O5p6Q7r8",
                "16C7e42F292c6912E7710c838347Ae178B4a",
                "xYz12_abcdefGHIJKLmnop",
                "IOSFODNN7EXAMPLE",
                "s3cr3t-P4ss",
                "dXNlcjpwYXNzd29yZA",
                "abc.def-ghi_jkl",
                "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU",
                "MIIEowIBAAKCAQEA",
                "dozjgNryP4J3jVmNHl0w5N",
            ] {
                assert!(!out.contains(secret), "{text} -> {out}");
            }
        }
        // context is kept
        let (out, _) = s.scrub_str("psql postgres://app:s3cr3t-P4ss@db.internal:5432/app");
        assert_eq!(
            out,
            "psql postgres://app:[redacted:url_password]@db.internal:5432/app"
        );
        let (out, _) = s.scrub_str("curl -H 'Authorization: Bearer abc.def-ghi_jkl' https://api");
        assert_eq!(
            out,
            "curl -H 'Authorization: Bearer [redacted:authorization]' https://api"
        );
    }

    #[test]
    fn ordinary_text_is_left_alone_and_scrubbing_is_idempotent() {
        let s = Scrubber::new();
        for text in [
            "ls -la /workspace && git status",
            "grep -rn 'sk-' src/",
            "https://github.com/org/repo.git",
            "echo task-ask-1234",
            "the AKIA prefix",
        ] {
            let (out, n) = s.scrub_str(text);
            assert_eq!((out.as_ref(), n), (text, 0));
        }
        let mut v = json!({"command": "GITHUB_TOKEN=ghp_1A2b3C4d5E6f7G8h9I0jK1l2M3n4O5p6Q7r8 gh pr list",
            "env": ["AKIAIOSFODNN7EXAMPLE", 3, null, {"k": "xoxp-1234567890-abcdefghij"}]});
        assert_eq!(s.scrub(&mut v), 3);
        let once = v.clone();
        assert_eq!(s.scrub(&mut v), 0);
        assert_eq!(v, once);
        assert_eq!(v["env"][1], 3);
    }
}
