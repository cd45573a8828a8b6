//! Session status and the one rule for changing it.
//!
//! Both backends call [`check_transition`] (or, for a group of batches
//! decided in one transaction, [`StatusMachine`]) before they write a new
//! status, so the rule lives here once, with no I/O, and both stores answer
//! the same: only `terminated` is final; every other move is the harness's
//! or the API's decision. A write that is also fenced checks its fence first
//! (a stale harness learns it was fenced, not that the session ended).

use std::fmt;
use std::str::FromStr;

use crate::error::{Result, StoreError};

/// Lifecycle status of a session (`rescheduling → running ↔ idle → terminated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    /// Waiting to be (re)started.
    Rescheduling,
    /// A harness should be advancing the session.
    Running,
    /// Waiting for input.
    Idle,
    /// Final; no further status change is accepted.
    Terminated,
}

impl SessionStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [SessionStatus; 4] = [
        SessionStatus::Rescheduling,
        SessionStatus::Running,
        SessionStatus::Idle,
        SessionStatus::Terminated,
    ];

    /// The wire spelling (`running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Rescheduling => "rescheduling",
            SessionStatus::Running => "running",
            SessionStatus::Idle => "idle",
            SessionStatus::Terminated => "terminated",
        }
    }

    /// Whether a session in `self` may move to `next`. Only `terminated` is
    /// final (setting it again is allowed and changes nothing but the
    /// version); every other move is the harness's or the API's decision.
    pub fn may_become(self, next: SessionStatus) -> bool {
        self != SessionStatus::Terminated || next == SessionStatus::Terminated
    }
}

impl fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status string that is not one of the four statuses.
#[derive(Debug, thiserror::Error)]
#[error("unknown session status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for SessionStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, UnknownStatus> {
        SessionStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// Parses a status read from a backend's row ([`StoreError::Corrupt`],
/// naming the session, if it is not one of the four).
pub(crate) fn stored_status(session_id: &str, text: &str) -> Result<SessionStatus> {
    text.parse()
        .map_err(|e| StoreError::corrupt(format!("session {session_id}: {e}")))
}

/// Checks that `session_id` may move from `from` to `to`:
/// [`StoreError::Conflict`] naming both statuses when it may not.
pub fn check_transition(session_id: &str, from: SessionStatus, to: SessionStatus) -> Result<()> {
    if from.may_become(to) {
        Ok(())
    } else {
        Err(StoreError::conflict(
            session_id,
            format!("status {from} cannot become {to}"),
        ))
    }
}

/// The status of one session while a group of batches is decided in one
/// transaction: each accepted change moves it, so a later batch of the group
/// is checked against the status the earlier ones left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatusMachine {
    status: SessionStatus,
    changes: usize,
}

impl StatusMachine {
    /// Starts from the stored status.
    pub(crate) fn new(status: SessionStatus) -> Self {
        StatusMachine { status, changes: 0 }
    }

    /// Applies `next` (if any) when [`check_transition`] allows it; on a
    /// refusal nothing changes.
    pub(crate) fn apply(&mut self, session_id: &str, next: Option<SessionStatus>) -> Result<()> {
        if let Some(next) = next {
            check_transition(session_id, self.status, next)?;
            self.status = next;
            self.changes += 1;
        }
        Ok(())
    }

    /// The status after every accepted change.
    pub(crate) fn status(&self) -> SessionStatus {
        self.status
    }

    /// How many changes were accepted (each bumps the session's version).
    pub(crate) fn changes(&self) -> usize {
        self.changes
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use SessionStatus::*;

    #[test]
    fn status_round_trips_and_unknown_is_refused() {
        for s in SessionStatus::ALL {
            assert_eq!(s.as_str().parse::<SessionStatus>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!("paused".parse::<SessionStatus>().is_err());
        let err = stored_status("sesn_1", "paused").unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("sesn_1"), "{err}");
    }

    #[test]
    fn only_terminated_is_final() {
        for from in SessionStatus::ALL {
            for to in SessionStatus::ALL {
                let allowed = check_transition("sesn_1", from, to).is_ok();
                let expected = from != Terminated || to == Terminated;
                assert_eq!(allowed, expected, "{from} -> {to}");
                assert_eq!(from.may_become(to), expected, "{from} -> {to}");
            }
        }
        let err = check_transition("sesn_1", Terminated, Running).unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "conflict on session sesn_1: status terminated cannot become running"
        );
    }

    #[test]
    fn a_group_is_checked_against_the_status_earlier_batches_left() {
        let mut m = StatusMachine::new(Idle);
        m.apply("s", None).unwrap();
        assert_eq!((m.status(), m.changes()), (Idle, 0));
        m.apply("s", Some(Running)).unwrap();
        m.apply("s", Some(Terminated)).unwrap();
        let refused = m.apply("s", Some(Idle)).unwrap_err();
        assert!(matches!(refused, StoreError::Conflict { .. }));
        assert_eq!((m.status(), m.changes()), (Terminated, 2));
        m.apply("s", Some(Terminated)).unwrap();
        assert_eq!((m.status(), m.changes()), (Terminated, 3));
    }
}
