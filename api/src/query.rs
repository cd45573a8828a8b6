//! Query strings (`types[]=a&types[]=b`, `created_at[gte]=...`, repeated
//! keys) and opaque page cursors.
//!
//! A cursor is URL-safe base64 of `v1|<listing>|<order>|<after|before>|<n>`:
//! `n` is the position (sessions, agents, environments), version (agent
//! versions) or seq (events) to continue from. A cursor only works with the
//! listing and order it was made for; anything else is a 400 naming `page`.

use base64::Engine;
use time::format_description::well_known::{Iso8601, Rfc3339};
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::error::ApiError;

/// Sort direction of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Oldest first.
    Asc,
    /// Newest first.
    Desc,
}

impl Dir {
    fn as_str(self) -> &'static str {
        match self {
            Dir::Asc => "asc",
            Dir::Desc => "desc",
        }
    }

    /// The other direction.
    pub(crate) fn reverse(self) -> Dir {
        match self {
            Dir::Asc => Dir::Desc,
            Dir::Desc => Dir::Asc,
        }
    }
}

/// The query of a list endpoint over archivable resources (environments,
/// vaults, credentials), newest first: `include_archived`, `limit`
/// (default 20, at most 100) and `page`, nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArchivableList {
    /// The listing its cursors are made for.
    listing: &'static str,
    /// Include archived items.
    pub include_archived: bool,
    /// Page size.
    pub limit: usize,
    /// Continue after this position (exclusive).
    pub after_position: Option<i64>,
}

impl ArchivableList {
    /// Parse the raw query string of `listing`.
    pub(crate) fn parse(raw: Option<&str>, listing: &'static str) -> Result<Self, ApiError> {
        let q = Query::parse(raw)?;
        q.only(&["include_archived", "limit", "page"])?;
        Ok(Self {
            listing,
            include_archived: q.bool("include_archived")?.unwrap_or(false),
            limit: q.limit(20, 100)?,
            after_position: q.cursor(listing, Dir::Desc)?.map(|c| c.at),
        })
    }

    /// As the catalog's page request over vaults or credentials.
    pub(crate) fn vault_query(&self) -> catalog::VaultQuery {
        catalog::VaultQuery {
            include_archived: self.include_archived,
            order: catalog::Order::Descending,
            after_position: self.after_position,
            limit: self.limit,
        }
    }

    /// The response: the page's items rendered, and the cursor of the next
    /// page (after the last item's `position`) when there is more.
    pub(crate) fn respond<T>(
        &self,
        items: &[T],
        has_more: bool,
        position: impl Fn(&T) -> i64,
        render: impl Fn(&T) -> serde_json::Value,
    ) -> serde_json::Value {
        let next = Cursor::next_desc(self.listing, has_more, items.last().map(&position));
        serde_json::json!({"data": items.iter().map(render).collect::<Vec<_>>(), "next_page": next})
    }
}

/// A decoded page cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The listing order it was made for.
    pub order: Dir,
    /// `true`: the page before `at`; `false`: the page after `at`.
    pub before: bool,
    /// Position, version or seq to continue from (exclusive).
    pub at: i64,
}

impl Cursor {
    /// The `next_page` of a descending listing: the cursor after `last`
    /// (position or version of the page's last item) when there is more.
    pub(crate) fn next_desc(listing: &str, has_more: bool, last: Option<i64>) -> Option<String> {
        let at = last.filter(|_| has_more)?;
        Some(
            Cursor {
                order: Dir::Desc,
                before: false,
                at,
            }
            .encode(listing),
        )
    }

    /// The opaque form.
    pub(crate) fn encode(&self, listing: &str) -> String {
        let raw = format!(
            "v1|{listing}|{}|{}|{}",
            self.order.as_str(),
            if self.before { "before" } else { "after" },
            self.at
        );
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// Decodes `page` for `listing`, which is read in `order`.
    pub(crate) fn decode(page: &str, listing: &str, order: Dir) -> Result<Cursor, ApiError> {
        let bad = || {
            ApiError::invalid(
                "page",
                "not a page cursor of this listing (pass next_page or prev_page as given)",
            )
        };
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(page.trim_end_matches('='))
            .map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let parts: Vec<&str> = raw.split('|').collect();
        let [v, l, o, d, n] = parts.as_slice() else {
            return Err(bad());
        };
        if *v != "v1" || *l != listing {
            return Err(bad());
        }
        let cursor_order = match *o {
            "asc" => Dir::Asc,
            "desc" => Dir::Desc,
            _ => return Err(bad()),
        };
        if cursor_order != order {
            return Err(ApiError::invalid(
                "page",
                format!(
                    "the cursor was made for order={}; pass the same order",
                    cursor_order.as_str()
                ),
            ));
        }
        let before = match *d {
            "before" => true,
            "after" => false,
            _ => return Err(bad()),
        };
        Ok(Cursor {
            order,
            before,
            at: n.parse().map_err(|_| bad())?,
        })
    }
}

/// A parsed query string.
#[derive(Debug, Clone, Default)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

fn decode_component(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => return Err(ApiError::invalid("query", "malformed percent-encoding")),
                }
            }
            b'%' => return Err(ApiError::invalid("query", "malformed percent-encoding")),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::invalid("query", "not utf-8"))
}

impl Query {
    /// Parses a raw query string.
    pub(crate) fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut pairs = Vec::new();
        for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            pairs.push((decode_component(k)?, decode_component(v)?));
        }
        Ok(Query { pairs })
    }

    /// Refuses parameters not in `allowed` (`beta`, which the SDK adds, is
    /// always allowed). Array parameters may be written `key` or `key[]`.
    pub(crate) fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        for (k, _) in &self.pairs {
            let base = k.strip_suffix("[]").unwrap_or(k);
            if base != "beta" && !allowed.contains(&base) {
                return Err(ApiError::invalid(k, "unknown query parameter"));
            }
        }
        Ok(())
    }

    /// The single value of `key`.
    pub(crate) fn one(&self, key: &str) -> Result<Option<&str>, ApiError> {
        let mut found = None;
        for (k, v) in &self.pairs {
            if k == key {
                if found.is_some() {
                    return Err(ApiError::invalid(key, "given more than once"));
                }
                found = Some(v.as_str());
            }
        }
        Ok(found)
    }

    /// Every value of `key` (written `key` or `key[]`, repeated or not).
    pub(crate) fn many(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k.strip_suffix("[]").unwrap_or(k) == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// `limit` within `1..=max`, `default` when absent.
    pub(crate) fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.one("limit")? {
            None => Ok(default),
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::invalid(
                    "limit",
                    format!("must be an integer from 1 to {max}, got {s:?}"),
                )),
            },
        }
    }

    /// A boolean parameter.
    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.one(key)? {
            None => Ok(None),
            Some("true") | Some("1") => Ok(Some(true)),
            Some("false") | Some("0") => Ok(Some(false)),
            Some(s) => Err(ApiError::invalid(
                key,
                format!("expected true or false, got {s:?}"),
            )),
        }
    }

    /// A non-negative integer parameter.
    pub(crate) fn u64(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.one(key)? {
            None => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| {
                ApiError::invalid(key, format!("expected a non-negative integer, got {s:?}"))
            }),
        }
    }

    /// An RFC 3339 / ISO 8601 time (a time without an offset is UTC).
    pub(crate) fn time(&self, key: &str) -> Result<Option<OffsetDateTime>, ApiError> {
        match self.one(key)? {
            None => Ok(None),
            Some(s) => parse_time(s).map(Some).ok_or_else(|| {
                ApiError::invalid(key, format!("expected an RFC 3339 date-time, got {s:?}"))
            }),
        }
    }

    /// `order`: `asc` or `desc`.
    pub(crate) fn order(&self, default: Dir) -> Result<Dir, ApiError> {
        match self.one("order")? {
            None => Ok(default),
            Some("asc") => Ok(Dir::Asc),
            Some("desc") => Ok(Dir::Desc),
            Some(s) => Err(ApiError::invalid(
                "order",
                format!("expected asc or desc, got {s:?}"),
            )),
        }
    }

    /// The cursor in `page`, for `listing` read in `order`.
    pub(crate) fn cursor(&self, listing: &str, order: Dir) -> Result<Option<Cursor>, ApiError> {
        match self.one("page")? {
            None | Some("") => Ok(None),
            Some(p) => Cursor::decode(p, listing, order).map(Some),
        }
    }
}

/// Parses an RFC 3339 or ISO 8601 date-time; without an offset it is UTC.
pub(crate) fn parse_time(s: &str) -> Option<OffsetDateTime> {
    let candidates = [s.to_owned(), s.replace(' ', "+")];
    for c in &candidates {
        if let Ok(t) = OffsetDateTime::parse(c, &Rfc3339) {
            return Some(t);
        }
        if let Ok(t) = OffsetDateTime::parse(c, &Iso8601::DEFAULT) {
            return Some(t);
        }
        if let Ok(t) = PrimitiveDateTime::parse(c, &Iso8601::DEFAULT) {
            return Some(t.assume_utc());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_brackets_and_percent_encoding() {
        let q = Query::parse(Some("types%5B%5D=user.message&types[]=agent.tool_use&created_at%5Bgte%5D=2026-01-01T00%3A00%3A00%2B00%3A00&limit=5&beta=true")).unwrap();
        assert_eq!(q.many("types"), ["user.message", "agent.tool_use"]);
        assert!(q.time("created_at[gte]").unwrap().is_some());
        assert_eq!(q.limit(20, 100).unwrap(), 5);
        q.only(&["types", "created_at[gte]", "limit"]).unwrap();
        assert_eq!(
            q.only(&["types"]).unwrap_err().to_string(),
            "created_at[gte]: unknown query parameter"
        );
        let q = Query::parse(Some("limit=0")).unwrap();
        assert!(q
            .limit(20, 100)
            .unwrap_err()
            .to_string()
            .starts_with("limit:"));
        assert!(Query::parse(Some("a=%zz")).is_err());
        assert!(Query::parse(Some("a=%4")).is_err());
        let q = Query::parse(Some("limit=1&limit=2")).unwrap();
        assert!(q.limit(1, 2).is_err());
    }

    #[test]
    fn times_with_and_without_offsets() {
        assert!(parse_time("2026-01-01T00:00:00Z").is_some());
        assert!(parse_time("2026-01-01T00:00:00.123456+00:00").is_some());
        assert!(parse_time("2026-01-01T00:00:00 00:00").is_some());
        assert_eq!(
            parse_time("2026-01-01T00:00:00").unwrap(),
            parse_time("2026-01-01T00:00:00Z").unwrap()
        );
        assert!(parse_time("yesterday").is_none());
    }

    #[test]
    fn cursors_round_trip_and_refuse_other_listings_and_orders() {
        let c = Cursor {
            order: Dir::Desc,
            before: false,
            at: 42,
        };
        let s = c.encode("sessions");
        assert_eq!(Cursor::decode(&s, "sessions", Dir::Desc).unwrap(), c);
        assert!(Cursor::decode(&s, "agents", Dir::Desc).is_err());
        let e = Cursor::decode(&s, "sessions", Dir::Asc).unwrap_err();
        assert!(e.to_string().contains("order=desc"), "{e}");
        assert!(Cursor::decode("garbage!", "sessions", Dir::Desc).is_err());
    }
}
