//! Capped exponential backoff with jitter: the one shape behind every retry
//! loop (the tunnel's redials, the harness's model retries and wake retries,
//! certificate renewal). The ceiling of retry `n` (0 = the first wait) is
//! `base * 2^n`, never above `cap`; [`Jitter`] says how the wait is drawn
//! below it.
//!
//! Plain values, no clock and no random source: the caller draws `unit` (a
//! number in `[0, 1)`) and sleeps for what [`BackoffPolicy::delay`] returns,
//! so every schedule can be tested exactly.

use std::time::Duration;

/// How a wait is drawn below its ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// The wait is the ceiling.
    None,
    /// Uniform in `[ceiling / 2, ceiling]`: spread, but never much shorter
    /// than planned.
    Equal,
    /// Uniform in `[0, ceiling]`: hundreds of clients that failed at the same
    /// instant spread their retries over the whole window instead of
    /// arriving as one wave.
    Full,
}

/// Capped exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Ceiling of the first wait.
    pub base: Duration,
    /// Largest ceiling.
    pub cap: Duration,
    /// How each wait is drawn below its ceiling.
    pub jitter: Jitter,
}

impl BackoffPolicy {
    /// `base` doubling up to `cap`, drawn with `jitter`.
    pub const fn new(base: Duration, cap: Duration, jitter: Jitter) -> Self {
        Self { base, cap, jitter }
    }

    /// The ceiling of retry `retry` (0 = the first wait): `base * 2^retry`,
    /// at most `cap`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before retry `retry`, jittered with `unit` (a number in
    /// `[0, 1)`, clamped; anything that is not a number counts as 0).
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(retry);
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Equal => ceiling.mul_f64(0.5 + 0.5 * unit),
            Jitter::Full => ceiling.mul_f64(unit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap_and_never_overflows() {
        let p = BackoffPolicy::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
            Jitter::None,
        );
        assert_eq!(p.ceiling(0), Duration::from_millis(100));
        assert_eq!(p.ceiling(1), Duration::from_millis(200));
        assert_eq!(p.ceiling(3), Duration::from_millis(800));
        assert_eq!(p.ceiling(4), Duration::from_secs(1));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(1));
        let huge = BackoffPolicy::new(Duration::MAX, Duration::MAX, Jitter::None);
        assert_eq!(huge.ceiling(40), Duration::MAX);
        assert_eq!(p.delay(2, 0.3), Duration::from_millis(400));
    }

    #[test]
    fn jitter_draws_within_its_band() {
        let base = Duration::from_secs(10);
        let equal = BackoffPolicy::new(base, base, Jitter::Equal);
        assert_eq!(equal.delay(0, 0.0), Duration::from_secs(5));
        assert_eq!(equal.delay(0, 0.5), Duration::from_millis(7500));
        assert!(equal.delay(0, 0.999) <= base);
        let full = BackoffPolicy::new(base, base, Jitter::Full);
        assert_eq!(full.delay(0, 0.0), Duration::ZERO);
        assert_eq!(full.delay(0, 0.25), Duration::from_millis(2500));
        assert_eq!(full.delay(0, 7.0), base);
        assert_eq!(full.delay(0, f64::NAN), Duration::ZERO);
        assert_eq!(full.delay(0, -1.0), Duration::ZERO);
    }
}
