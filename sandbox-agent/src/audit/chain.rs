//! The chain's byte format: how a line is hashed, how its hash is found in
//! the raw bytes, and how the files of an audit dir are named and ordered.
//!
//! A line is `{…,"prev":"<hex>","hash":"<64 hex>"}`: `hash` is always the
//! last key, so the hashed body is the line with the trailing
//! `,"hash":"<64 hex>"` cut out (keeping the final `}`), exactly what the
//! encoder produced before it appended the hash. Verification works on the
//! raw bytes and never re-encodes.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::AuditError;

/// `,"hash":"` + 64 hex + `"}`.
pub(crate) const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;
const HASH_KEY: &[u8] = b",\"hash\":\"";

/// SHA-256(prev + "\n" + body) as lowercase hex.
pub(crate) fn hash_of(prev: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(body);
    hex::encode(h.finalize())
}

/// The body hashed for a raw line (without its newline) and the hash the
/// line carries; `None` when the line does not end in a well-formed hash.
pub(crate) fn split_hash(line: &[u8]) -> Option<(&[u8], &[u8])> {
    if line.len() < HASH_SUFFIX_LEN + 2 || !line.ends_with(b"\"}") {
        return None;
    }
    let cut = line.len() - HASH_SUFFIX_LEN;
    if &line[cut..cut + HASH_KEY.len()] != HASH_KEY {
        return None;
    }
    let hash = &line[cut + HASH_KEY.len()..line.len() - 2];
    if !hash
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return None;
    }
    Some((&line[..cut], hash))
}

/// The hash of a raw line given the previous hash (the body is the line
/// without its hash suffix, closed with `}`).
pub(crate) fn hash_raw(prev: &str, body_without_close: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(body_without_close);
    h.update(b"}");
    h.finalize().into()
}

/// The fields verification needs from a line (everything else is only
/// covered by the hash).
#[derive(Debug, Deserialize)]
pub(crate) struct ChainFields<'a> {
    pub seq: u64,
    #[serde(borrow)]
    pub prev: Cow<'a, str>,
    #[serde(borrow)]
    pub hash: Cow<'a, str>,
    #[serde(default, borrow)]
    pub call: Option<Cow<'a, str>>,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub checkpoint: Option<protocol::audit::AuditCheckpoint>,
    #[serde(default)]
    pub credential_use: Option<CredentialSeq>,
}

/// Just the bridge seq of a credential use.
#[derive(Debug, Deserialize)]
pub(crate) struct CredentialSeq {
    pub bridge_seq: u64,
}

/// The file name of the segment whose last line has `seq`.
pub(crate) fn segment_name(seq: u64) -> String {
    format!("audit.{seq:020}.jsonl")
}

/// The seq a segment's file name gives, if it is a segment name.
pub(crate) fn segment_seq(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("audit.")?.strip_suffix(".jsonl")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The rotated segments of `dir`, oldest first, with the seq of their last
/// line (from the name).
pub(crate) fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let io = |source| AuditError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        if let Some(seq) = name.to_str().and_then(segment_seq) {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The last complete line of a file (without its newline), if any.
pub(crate) fn last_line(path: &Path) -> Result<Option<Vec<u8>>, AuditError> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let io = |source| AuditError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut window: u64 = 4096;
    loop {
        let start = len.saturating_sub(window);
        f.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(io)?;
        let body = match buf.last() {
            Some(b'\n') => &buf[..buf.len() - 1],
            _ => &buf[..],
        };
        if let Some(nl) = body.iter().rposition(|b| *b == b'\n') {
            return Ok(Some(body[nl + 1..].to_vec()));
        }
        if start == 0 {
            return Ok((!body.is_empty()).then(|| body.to_vec()));
        }
        window = window.saturating_mul(4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_hash_matches_the_encoder() {
        let body =
            br#"{"seq":1,"at":"x","call":"execute","outcome":"ok","duration_ms":0,"prev":"00"}"#;
        let h = hash_of("00", body);
        let line = format!(
            "{},\"hash\":\"{h}\"}}",
            std::str::from_utf8(&body[..body.len() - 1]).unwrap()
        );
        let (rest, found) = split_hash(line.as_bytes()).unwrap();
        assert_eq!(found, h.as_bytes());
        assert_eq!(hex::encode(hash_raw("00", rest)), h);
        assert!(split_hash(b"{\"seq\":1}").is_none());
        let upper = line.replace(&h, &h.to_uppercase());
        assert!(h == h.to_uppercase() || split_hash(upper.as_bytes()).is_none());
    }

    #[test]
    fn segment_names_sort_by_seq() {
        assert_eq!(segment_name(42), "audit.00000000000000000042.jsonl");
        assert_eq!(segment_seq(&segment_name(42)), Some(42));
        assert_eq!(segment_seq("audit.jsonl"), None);
        assert_eq!(segment_seq("audit.42.jsonl"), None);
    }
}
