//! Reconnect delays: the redial state (how many attempts failed in a row)
//! over the shared capped exponential backoff ([`settings::BackoffPolicy`])
//! with *full* jitter (the delay is uniform in
//! `[0, min(cap, base * 2^attempt)]`), so hundreds of agents that lost the
//! same control plane at the same instant spread their reconnects over the
//! whole window instead of arriving as one wave.
//!
//! Plain state, no clock: the caller sleeps for what [`Backoff::next_delay`]
//! returns and calls [`Backoff::reset`] once a connection has proved healthy.

use std::time::Duration;

use rand::Rng;
pub use settings::{BackoffPolicy, Jitter};

/// The reconnect backoff of an agent: 0.5 s doubling to 30 s, full jitter.
pub const RECONNECT: BackoffPolicy = BackoffPolicy::new(
    Duration::from_millis(500),
    Duration::from_secs(30),
    Jitter::Full,
);

/// Ceiling of the wait after a refusal for want of a handshake slot
/// ([`Backoff::next_busy_delay`]).
pub const BUSY_CAP: Duration = Duration::from_secs(8);

/// Backoff state: how many attempts failed in a row.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    attempt: u32,
}

impl Backoff {
    /// Fresh state.
    pub fn new(policy: BackoffPolicy) -> Self {
        Self { policy, attempt: 0 }
    }

    /// Failed attempts in a row so far.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The ceiling of the next delay (before jitter).
    pub fn ceiling(&self) -> Duration {
        self.policy.ceiling(self.attempt)
    }

    /// The next delay, drawn from `rng`, and count one more attempt.
    pub fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        self.draw(self.policy, rng)
    }

    /// The next delay with the thread's RNG.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::thread_rng())
    }

    /// The next delay after a refusal for want of a handshake slot: as
    /// [`Self::next_delay_with`], but its ceiling stops at [`BUSY_CAP`]. The
    /// control plane is up and admitting agents as fast as it can, so the
    /// refused ones should keep coming back within seconds, not drift to the
    /// 30 s cap and come back long after it has gone idle.
    pub fn next_busy_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        let policy = BackoffPolicy {
            cap: self.policy.cap.min(BUSY_CAP),
            ..self.policy
        };
        self.draw(policy, rng)
    }

    /// The delay of `policy` for the current attempt; count one more.
    fn draw(&mut self, policy: BackoffPolicy, rng: &mut impl Rng) -> Duration {
        let delay = policy.delay(self.attempt, rng.gen());
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// [`Self::next_busy_delay_with`] with the thread's RNG.
    pub fn next_busy_delay(&mut self) -> Duration {
        self.next_busy_delay_with(&mut rand::thread_rng())
    }

    /// A connection came up and stayed healthy: start over.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn busy_refusals_back_off_at_most_the_busy_cap() {
        let mut b = Backoff::new(RECONNECT);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut longest = Duration::ZERO;
        for _ in 0..64 {
            let d = b.next_busy_delay_with(&mut rng);
            assert!(d <= BUSY_CAP, "{d:?}");
            longest = longest.max(d);
        }
        // Full jitter under the cap, and the attempts still count.
        assert!(longest > BUSY_CAP / 2, "{longest:?}");
        assert_eq!(b.attempt(), 64);
        assert_eq!(b.ceiling(), RECONNECT.cap);
    }

    #[test]
    fn ceiling_doubles_up_to_cap() {
        let mut b = Backoff::new(BackoffPolicy::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
            Jitter::Full,
        ));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut ceilings = vec![];
        for _ in 0..8 {
            ceilings.push(b.ceiling());
            let d = b.next_delay_with(&mut rng);
            assert!(d <= *ceilings.last().unwrap());
        }
        assert_eq!(ceilings[0], Duration::from_millis(100));
        assert_eq!(ceilings[1], Duration::from_millis(200));
        assert_eq!(ceilings[3], Duration::from_millis(800));
        assert_eq!(ceilings[4], Duration::from_secs(1));
        assert_eq!(ceilings[7], Duration::from_secs(1));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        for _ in 0..100 {
            b.next_delay_with(&mut rng);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_spreads_a_wave() {
        // 500 agents reconnecting at once: delays cover the window, not a point.
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let settings = BackoffPolicy::new(
            Duration::from_secs(10),
            Duration::from_secs(10),
            Jitter::Full,
        );
        let mut buckets = [0u32; 10];
        for _ in 0..500 {
            let d = Backoff::new(settings).next_delay_with(&mut rng);
            let i = usize::try_from(d.as_secs()).unwrap().min(9);
            buckets[i] += 1;
        }
        // every second of the window gets some, none gets most
        assert!(buckets.iter().all(|&n| n > 10 && n < 150), "{buckets:?}");
    }
}
