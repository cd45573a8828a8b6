//! Values that cross the [`crate::SessionStore`] interface.

use std::ops::Bound;

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::{Result, StoreError};
use crate::status::SessionStatus;

/// How a write proves it may touch the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// No lease: API-side writes (user events, status changes by the API).
    None,
    /// The epoch of the caller's lease: refused with [`StoreError::Fenced`]
    /// unless it is the session's current epoch.
    Epoch(u64),
}

impl From<&Lease> for Fence {
    fn from(lease: &Lease) -> Self {
        Fence::Epoch(lease.epoch)
    }
}

/// An event to append. The store assigns `seq`, `created_at`, the id (unless
/// given) and `processed_at` (unless queued).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The event as a JSON object with a string `type`. Fields `id`, `seq` and
    /// `processed_at` in it are ignored: the store owns them.
    pub body: Value,
    /// A pre-assigned id (the harness streams previews under an id before the
    /// buffered event is stored). `None`: the store makes a `sevt_…` id.
    pub id: Option<String>,
    /// `true`: stored with `processed_at = null` until
    /// [`crate::SessionStore::mark_processed`] (client-sent `user.*` events).
    pub queued: bool,
}

impl NewEvent {
    /// An event that is processed as it is stored (server-produced events).
    pub fn processed(body: Value) -> Self {
        NewEvent {
            body,
            id: None,
            queued: false,
        }
    }

    /// A client-sent event that waits in the queue (`processed_at = null`).
    pub fn queued(body: Value) -> Self {
        NewEvent {
            body,
            id: None,
            queued: true,
        }
    }

    /// The same event with a pre-assigned id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// Fields of an event body that the store owns and strips from what it is given.
pub(crate) const STORE_OWNED_FIELDS: [&str; 3] = ["id", "seq", "processed_at"];

/// A new event checked and ready to insert.
#[derive(Debug)]
pub(crate) struct PreparedEvent {
    pub id: String,
    pub event_type: String,
    pub body: Map<String, Value>,
    pub body_text: String,
    pub queued: bool,
}

impl PreparedEvent {
    /// Validates `events` for `session_id` (JSON objects with a string `type`,
    /// non-empty ids).
    pub(crate) fn prepare_all(
        session_id: &str,
        events: Vec<NewEvent>,
    ) -> Result<Vec<PreparedEvent>> {
        if events.is_empty() {
            return Err(StoreError::invalid(
                session_id,
                "an append needs at least one event",
            ));
        }
        events
            .into_iter()
            .enumerate()
            .map(|(index, event)| {
                let Value::Object(mut body) = event.body else {
                    return Err(StoreError::invalid(
                        session_id,
                        format!("event {index} is not a json object"),
                    ));
                };
                for field in STORE_OWNED_FIELDS {
                    body.remove(field);
                }
                let event_type = match body.get("type") {
                    Some(Value::String(t)) if !t.is_empty() => t.clone(),
                    _ => {
                        return Err(StoreError::invalid(
                            session_id,
                            format!("event {index} has no string `type`"),
                        ))
                    }
                };
                let id = match event.id {
                    Some(id) if id.is_empty() => {
                        return Err(StoreError::invalid(
                            session_id,
                            format!("event {index} has an empty id"),
                        ))
                    }
                    Some(id) => id,
                    None => new_event_id(),
                };
                let body_text = serde_json::to_string(&body).map_err(|e| {
                    StoreError::invalid(
                        session_id,
                        format!("event {index} does not serialize: {e}"),
                    )
                })?;
                Ok(PreparedEvent {
                    id,
                    event_type,
                    body,
                    body_text,
                    queued: event.queued,
                })
            })
            .collect()
    }
}

/// A fresh, unique event id (`sevt_` + a time-ordered UUIDv7 in hex).
pub fn new_event_id() -> String {
    format!("sevt_{}", uuid::Uuid::now_v7().simple())
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// The session it belongs to.
    pub session_id: String,
    /// Gap-free position in the session, starting at 1.
    pub seq: u64,
    /// Unique id (`sevt_…` unless the appender chose one).
    pub id: String,
    /// The body's `type`.
    pub event_type: String,
    /// When the event was processed; `None` while a client event is queued.
    pub processed_at: Option<OffsetDateTime>,
    /// When the store accepted it.
    pub created_at: OffsetDateTime,
    /// The body as given, without `id`, `seq` and `processed_at`.
    pub body: Map<String, Value>,
}

impl StoredEvent {
    /// The body's `type`, typed.
    pub fn kind(&self) -> crate::names::EventType {
        crate::names::EventType::parse(&self.event_type)
    }

    /// The published JSON shape: the body plus `id`, `type` and `processed_at`
    /// (RFC 3339, UTC, or null). `seq` is not included; the API may add it.
    pub fn to_json(&self) -> Value {
        let mut obj = self.body.clone();
        obj.insert("id".into(), Value::String(self.id.clone()));
        obj.insert("type".into(), Value::String(self.event_type.clone()));
        obj.insert(
            "processed_at".into(),
            match self.processed_at {
                Some(t) => Value::String(format_rfc3339(t)),
                None => Value::Null,
            },
        );
        Value::Object(obj)
    }
}

/// RFC 3339 in UTC with a `Z` (falls back to the unix timestamp if the date
/// is outside what RFC 3339 can spell, which no clock here produces).
pub fn format_rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// A lease grant on a session. Every grant has a fresh, higher epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The session leased.
    pub session_id: String,
    /// Who holds it (a replica or harness instance id).
    pub holder: String,
    /// The fencing epoch of this grant (1 for the first grant).
    pub epoch: u64,
    /// When it lapses unless renewed (store clock; the database clock for PostgreSQL).
    pub expires_at: OffsetDateTime,
}

/// The lease state of a session as seen in a [`SessionRecord`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    /// Epoch of the latest grant (0: never leased).
    pub epoch: u64,
    /// Holder of the latest grant while it is not released.
    pub holder: Option<String>,
    /// Expiry of the latest grant while it is not released.
    pub expires_at: Option<OffsetDateTime>,
}

/// A session as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    /// The session id (`sesn_…`, chosen by the caller).
    pub id: String,
    /// Creation order, unique and increasing; the pagination key.
    pub position: i64,
    /// Current status.
    pub status: SessionStatus,
    /// The API's session object (agent snapshot, resources, metadata...).
    pub body: Value,
    /// Bumped on every body or status change; for optimistic updates.
    pub version: u64,
    /// The seq of the last event (0: no events).
    pub last_seq: u64,
    /// Lease state.
    pub lease: LeaseState,
    /// When created.
    pub created_at: OffsetDateTime,
    /// When the body or status last changed.
    pub updated_at: OffsetDateTime,
}

/// A session the recovery scan should wake (see
/// [`SessionStore::sessions_needing_wake`](crate::SessionStore::sessions_needing_wake)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WakeCandidate {
    /// The session.
    pub session_id: String,
    /// Its creation position (the scan's order and paging key).
    pub position: i64,
    /// The seq of its last event when scanned: a caller that saw a wake end
    /// with nothing to do at this seq can skip the session until it changes.
    pub last_seq: u64,
}

/// A session to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSession {
    /// The id; must be unique ([`StoreError::Conflict`] otherwise).
    pub id: String,
    /// Initial status.
    pub status: SessionStatus,
    /// The API's session object.
    pub body: Value,
    /// Events appended atomically with the creation (`initial_events`).
    pub initial_events: Vec<NewEvent>,
}

/// How to change a session's body.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyUpdate {
    /// RFC 7396 JSON merge patch: objects merge, `null` deletes a key, other
    /// values (arrays included) replace.
    MergePatch(Value),
    /// Replace the body whole.
    Replace(Value),
}

/// A change to a session. Fields left `None` are untouched.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionUpdate {
    /// New status.
    pub status: Option<SessionStatus>,
    /// Body change.
    pub body: Option<BodyUpdate>,
    /// Refuse with [`StoreError::Conflict`] unless the stored version is this.
    pub if_version: Option<u64>,
}

/// Sort order of a listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// Oldest first.
    #[default]
    Ascending,
    /// Newest first.
    Descending,
}

/// A page request over sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionQuery {
    /// Only sessions with this status.
    pub status: Option<SessionStatus>,
    /// Sort order by creation.
    pub order: Order,
    /// Start after this [`SessionRecord::position`] (exclusive) in `order`.
    pub after_position: Option<i64>,
    /// Page size (1..=1000).
    pub limit: usize,
}

impl Default for SessionQuery {
    fn default() -> Self {
        SessionQuery {
            status: None,
            order: Order::Ascending,
            after_position: None,
            limit: 100,
        }
    }
}

/// One page of sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionPage {
    /// The sessions, in the requested order.
    pub sessions: Vec<SessionRecord>,
    /// Whether more sessions follow the last one.
    pub has_more: bool,
}

/// A page request over a session's events (the API's event list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    /// Ascending or descending seq.
    pub order: Order,
    /// Start after this seq (exclusive) in `order`; `None`: from the start
    /// (or the end, descending).
    pub after_seq: Option<u64>,
    /// Page size (1..=100000).
    pub limit: usize,
    /// Only events whose `type` is one of these (`None` or empty: all).
    pub types: Option<Vec<String>>,
    /// Only events with `processed_at` within these bounds (events still
    /// queued never match a bound). `Unbounded` on both: no filter.
    pub processed_from: Bound<OffsetDateTime>,
    /// Upper bound on `processed_at`.
    pub processed_to: Bound<OffsetDateTime>,
}

impl Default for EventQuery {
    fn default() -> Self {
        EventQuery {
            order: Order::Ascending,
            after_seq: None,
            limit: 1000,
            types: None,
            processed_from: Bound::Unbounded,
            processed_to: Bound::Unbounded,
        }
    }
}

/// One page of events.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    /// The events, in the requested order.
    pub events: Vec<StoredEvent>,
    /// Whether more matching events follow the last one.
    pub has_more: bool,
}

/// Filters and pages `events` (all of a session, ascending) per `query`:
/// the model the SQL of both stores implements.
pub(crate) fn page_events(events: Vec<StoredEvent>, query: &EventQuery) -> EventPage {
    use std::ops::RangeBounds;
    let types = query.types.as_ref().filter(|t| !t.is_empty());
    let timed = !matches!(
        (query.processed_from, query.processed_to),
        (Bound::Unbounded, Bound::Unbounded)
    );
    let keep = |e: &StoredEvent| {
        types.is_none_or(|t| t.contains(&e.event_type))
            && (!timed
                || e.processed_at
                    .is_some_and(|p| (query.processed_from, query.processed_to).contains(&p)))
    };
    let mut selected: Vec<StoredEvent> = match query.order {
        Order::Ascending => events
            .into_iter()
            .filter(|e| query.after_seq.is_none_or(|a| e.seq > a))
            .filter(|e| keep(e))
            .take(query.limit + 1)
            .collect(),
        Order::Descending => events
            .into_iter()
            .rev()
            .filter(|e| query.after_seq.is_none_or(|a| e.seq < a))
            .filter(|e| keep(e))
            .take(query.limit + 1)
            .collect(),
    };
    let has_more = selected.len() > query.limit;
    selected.truncate(query.limit);
    EventPage {
        events: selected,
        has_more,
    }
}

/// `processed_at` bounds as inclusive microsecond limits (`i64::MIN`/`MAX`
/// when unbounded).
pub(crate) fn micros_bounds(from: Bound<OffsetDateTime>, to: Bound<OffsetDateTime>) -> (i64, i64) {
    let lo = match from {
        Bound::Unbounded => i64::MIN,
        Bound::Included(t) => to_micros(t),
        Bound::Excluded(t) => to_micros(t).saturating_add(1),
    };
    let hi = match to {
        Bound::Unbounded => i64::MAX,
        Bound::Included(t) => to_micros(t),
        Bound::Excluded(t) => to_micros(t).saturating_sub(1),
    };
    (lo, hi)
}

/// A batch to append, with its fence and an optional status change made
/// atomically with it.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendBatch {
    /// The events, stored in this order with consecutive seqs.
    pub events: Vec<NewEvent>,
    /// The writer's fence.
    pub fence: Fence,
    /// Set the session's status in the same transaction.
    pub set_status: Option<SessionStatus>,
}

/// Which events [`crate::SessionStore::mark_processed`] marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSelector {
    /// By seq.
    Seqs(Vec<u64>),
    /// By event id.
    Ids(Vec<String>),
}

/// An item of a live tail.
#[derive(Debug, Clone, PartialEq)]
pub enum TailItem {
    /// The next event of the session: seqs are consecutive from the
    /// subscription's `from_seq`, never skipped or repeated.
    Appended(StoredEvent),
    /// An event delivered earlier as queued (`processed_at = null`) has since
    /// been processed; this is its new state.
    Processed(StoredEvent),
}

/// Current time in unix microseconds.
pub(crate) fn to_micros(t: OffsetDateTime) -> i64 {
    // i128 nanoseconds / 1000 fits i64 for any date the clock produces.
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// Unix microseconds to a UTC time.
pub(crate) fn from_micros(us: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .map_err(|e| StoreError::corrupt(format!("timestamp {us} out of range: {e}")))
}

/// Decodes a stored body text into a JSON object.
pub(crate) fn decode_body(session_id: &str, seq: u64, text: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(StoreError::corrupt(format!(
            "event body of session {session_id} seq {seq} is not a json object"
        ))),
        Err(e) => Err(StoreError::corrupt(format!(
            "event body of session {session_id} seq {seq} is not json: {e}"
        ))),
    }
}

/// Applies an RFC 7396 merge patch to `target`.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_obj) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target_obj) = target {
        for (key, value) in patch_obj {
            if value.is_null() {
                target_obj.remove(key);
            } else {
                merge_patch(target_obj.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Checks a session id given by a caller.
pub(crate) fn check_session_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 255 {
        return Err(StoreError::invalid(
            id,
            "a session id must be 1 to 255 bytes",
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7396() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "arr": [1]});
        merge_patch(
            &mut doc,
            &json!({"a": "z", "c": {"f": null}, "arr": [2, 3], "n": {"x": 1}}),
        );
        assert_eq!(
            doc,
            json!({"a": "z", "c": {"d": "e"}, "arr": [2, 3], "n": {"x": 1}})
        );
    }

    #[test]
    fn prepare_strips_store_fields_and_requires_type() {
        let ok = PreparedEvent::prepare_all(
            "sesn_1",
            vec![NewEvent::processed(
                json!({"type": "x", "id": "forged", "processed_at": "t", "seq": 9, "k": 1}),
            )],
        )
        .unwrap();
        assert_eq!(ok[0].event_type, "x");
        assert!(ok[0].id.starts_with("sevt_"));
        assert_eq!(ok[0].body.get("id"), None);
        assert_eq!(ok[0].body.get("seq"), None);
        assert_eq!(ok[0].body.get("k"), Some(&json!(1)));
        let err = PreparedEvent::prepare_all("sesn_1", vec![NewEvent::processed(json!({"k": 1}))])
            .unwrap_err();
        assert!(err.to_string().contains("sesn_1"), "{err}");
        assert!(
            PreparedEvent::prepare_all("sesn_1", vec![NewEvent::processed(json!([1]))]).is_err()
        );
        assert!(PreparedEvent::prepare_all("sesn_1", vec![]).is_err());
    }

    #[test]
    fn to_json_has_published_fields() {
        let e = StoredEvent {
            session_id: "s".into(),
            seq: 1,
            id: "sevt_1".into(),
            event_type: "user.message".into(),
            processed_at: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            body: serde_json::from_value(json!({"type": "user.message", "content": []})).unwrap(),
        };
        assert_eq!(
            e.to_json(),
            json!({"id": "sevt_1", "type": "user.message", "processed_at": null, "content": []})
        );
        let p = StoredEvent {
            processed_at: Some(OffsetDateTime::UNIX_EPOCH),
            ..e
        };
        assert_eq!(p.to_json()["processed_at"], json!("1970-01-01T00:00:00Z"));
    }
}
