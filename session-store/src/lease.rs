//! The lease state machine, without I/O.
//!
//! A session's lease row is `(epoch, holder, expires_at)`. A grant is possible
//! when the lease is free (never granted, released) or expired, and always
//! bumps the epoch, so epochs increase forever and every grant is unique. A
//! renewal or release must present the current epoch; a stale one is
//! [`LeaseError::Fenced`]. The SQLite store runs these functions inside its
//! write transaction; the PostgreSQL store does the same in single SQL
//! statements (see `postgres/`).

use crate::error::{Result, StoreError};
use crate::types::Fence;

/// Lease columns of a session, times in unix microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseRow {
    pub epoch: u64,
    pub holder: Option<String>,
    pub expires_at_us: Option<i64>,
}

/// Why a lease operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaseError {
    /// Held by `holder` until `expires_at_us`.
    Held {
        holder: String,
        epoch: u64,
        expires_at_us: i64,
    },
    /// The presented epoch is not current.
    Fenced { current_epoch: u64 },
}

impl LeaseRow {
    /// Whether nobody holds an unexpired grant at `now_us`.
    pub(crate) fn is_free(&self, now_us: i64) -> bool {
        match (&self.holder, self.expires_at_us) {
            (Some(_), Some(expires)) => expires <= now_us,
            _ => true,
        }
    }

    /// Grants the lease to `holder` for `ttl_us` if it is free or expired.
    pub(crate) fn acquire(
        &self,
        holder: &str,
        now_us: i64,
        ttl_us: i64,
    ) -> Result<LeaseRow, LeaseError> {
        if !self.is_free(now_us) {
            return Err(LeaseError::Held {
                holder: self.holder.clone().unwrap_or_default(),
                epoch: self.epoch,
                expires_at_us: self.expires_at_us.unwrap_or_default(),
            });
        }
        Ok(LeaseRow {
            epoch: self.epoch + 1,
            holder: Some(holder.to_owned()),
            expires_at_us: Some(now_us.saturating_add(ttl_us)),
        })
    }

    /// Extends the grant `epoch` held by `holder`. Allowed even after expiry
    /// as long as nobody took the lease over (the epoch is still current).
    pub(crate) fn renew(
        &self,
        epoch: u64,
        holder: &str,
        now_us: i64,
        ttl_us: i64,
    ) -> Result<LeaseRow, LeaseError> {
        if self.epoch != epoch || self.holder.as_deref() != Some(holder) {
            return Err(LeaseError::Fenced {
                current_epoch: self.epoch,
            });
        }
        Ok(LeaseRow {
            epoch,
            holder: Some(holder.to_owned()),
            expires_at_us: Some(now_us.saturating_add(ttl_us)),
        })
    }

    /// A new grant to `holder` of a lease it holds (expired or not), with a
    /// higher epoch: a restarted process taking back what its previous
    /// incarnation held, so anything still running under the old grant is
    /// fenced. `None` when `holder` does not hold it (free, or another's).
    pub(crate) fn reclaim(&self, holder: &str, now_us: i64, ttl_us: i64) -> Option<LeaseRow> {
        if self.holder.as_deref() != Some(holder) {
            return None;
        }
        Some(LeaseRow {
            epoch: self.epoch + 1,
            holder: Some(holder.to_owned()),
            expires_at_us: Some(now_us.saturating_add(ttl_us)),
        })
    }

    /// Frees the grant `epoch`; the epoch stays so the next grant is higher.
    pub(crate) fn release(&self, epoch: u64, holder: &str) -> Result<LeaseRow, LeaseError> {
        if self.epoch != epoch || self.holder.as_deref() != Some(holder) {
            return Err(LeaseError::Fenced {
                current_epoch: self.epoch,
            });
        }
        Ok(LeaseRow {
            epoch,
            holder: None,
            expires_at_us: None,
        })
    }
}

/// Whether a write fenced by `presented` may proceed when the current epoch is `current`.
pub(crate) fn fence_allows(presented: Option<u64>, current: u64) -> bool {
    match presented {
        None => true,
        Some(epoch) => epoch == current,
    }
}

/// Refuse a write fenced by `fence` when the session's lease epoch is now
/// `current`: [`StoreError::Fenced`] names both epochs.
pub(crate) fn check_fence(session_id: &str, fence: Fence, current: u64) -> Result<()> {
    let presented = match fence {
        Fence::None => None,
        Fence::Epoch(e) => Some(e),
    };
    if fence_allows(presented, current) {
        Ok(())
    } else {
        Err(StoreError::Fenced {
            session_id: session_id.to_owned(),
            presented_epoch: presented.unwrap_or_default(),
            current_epoch: current,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn free() -> LeaseRow {
        LeaseRow {
            epoch: 0,
            holder: None,
            expires_at_us: None,
        }
    }

    #[test]
    fn grant_expire_takeover_fences_the_old_holder() {
        let mut now = 100 * S;
        let a = free().acquire("a", now, 10 * S).unwrap();
        assert_eq!(a.epoch, 1);
        // held: b is refused until expiry, even one microsecond before it
        now += 10 * S - 1;
        assert_eq!(
            a.acquire("b", now, 10 * S),
            Err(LeaseError::Held {
                holder: "a".into(),
                epoch: 1,
                expires_at_us: 110 * S
            })
        );
        // expired: b takes over with a higher epoch
        now += 1;
        let b = a.acquire("b", now, 10 * S).unwrap();
        assert_eq!(b.epoch, 2);
        // a can neither renew nor release nor write any more
        assert_eq!(
            b.renew(1, "a", now, S),
            Err(LeaseError::Fenced { current_epoch: 2 })
        );
        assert_eq!(
            b.release(1, "a"),
            Err(LeaseError::Fenced { current_epoch: 2 })
        );
        assert!(!fence_allows(Some(1), b.epoch));
        assert!(fence_allows(Some(2), b.epoch));
        assert!(fence_allows(None, b.epoch));
    }

    #[test]
    fn renew_after_expiry_is_fine_until_someone_takes_over() {
        let a = free().acquire("a", 0, S).unwrap();
        let renewed = a.renew(1, "a", 5 * S, S).unwrap();
        assert_eq!(renewed.epoch, 1);
        assert_eq!(renewed.expires_at_us, Some(6 * S));
    }

    #[test]
    fn reclaim_regrants_only_to_the_holder_and_fences_the_old_grant() {
        let a = free().acquire("a", 0, 100 * S).unwrap();
        // someone else, or a free lease: nothing to reclaim
        assert_eq!(a.reclaim("b", S, 10 * S), None);
        assert_eq!(free().reclaim("a", S, 10 * S), None);
        // the holder, before or after expiry: a new grant, higher epoch
        let again = a.reclaim("a", S, 10 * S).unwrap();
        assert_eq!(again.epoch, 2);
        assert_eq!(again.holder.as_deref(), Some("a"));
        assert_eq!(again.expires_at_us, Some(11 * S));
        assert!(again.reclaim("a", 500 * S, S).is_some());
        // the old grant can neither renew, release nor write
        assert!(again.renew(1, "a", S, S).is_err());
        assert!(again.release(1, "a").is_err());
        assert!(!fence_allows(Some(1), again.epoch));
    }

    #[test]
    fn release_frees_but_keeps_the_epoch_increasing() {
        let a = free().acquire("a", 0, 100 * S).unwrap();
        let released = a.release(1, "a").unwrap();
        assert!(released.is_free(0));
        let b = released.acquire("b", 0, S).unwrap();
        assert_eq!(b.epoch, 2);
        // a stale holder name with the right epoch is still refused
        assert!(b.renew(2, "a", 0, S).is_err());
    }
}
