//! Heartbeat and watchdog for one connection, as a plain state machine over
//! a caller-supplied clock (`now`), so it is tested with a virtual clock.
//!
//! Each side sends a heartbeat every `interval`; any frame received on the
//! control stream counts as a sign of life. When nothing arrived for
//! `misses * interval` (three by default) the link is half-dead and the owner
//! closes it and redials.

use std::time::{Duration, Instant};

/// What the owner should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatAction {
    /// Send a heartbeat now (then call [`Heartbeat::sent`]).
    Send,
    /// The peer has been silent for too long: close the link.
    Dead {
        /// Silence so far.
        silent_for: Duration,
    },
    /// Nothing to do until this instant.
    WaitUntil(Instant),
}

/// Heartbeat/watchdog state of one connection.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    interval: Duration,
    misses: u32,
    next_send: Instant,
    last_received: Instant,
    seq: u64,
}

impl Heartbeat {
    /// Start at `now`: the first heartbeat is due at once, the peer counts as
    /// heard from now.
    pub fn new(interval: Duration, misses: u32, now: Instant) -> Self {
        Self {
            interval,
            misses: misses.max(1),
            next_send: now,
            last_received: now,
            seq: 0,
        }
    }

    /// The interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Silence after which the link is declared dead.
    pub fn dead_after(&self) -> Duration {
        self.interval.saturating_mul(self.misses)
    }

    /// Decide what to do at `now`.
    pub fn poll(&self, now: Instant) -> HeartbeatAction {
        let silent_for = now.saturating_duration_since(self.last_received);
        if silent_for >= self.dead_after() {
            return HeartbeatAction::Dead { silent_for };
        }
        if now >= self.next_send {
            return HeartbeatAction::Send;
        }
        let dead_at = self.last_received + self.dead_after();
        HeartbeatAction::WaitUntil(self.next_send.min(dead_at))
    }

    /// A heartbeat was sent at `now`; returns its sequence number.
    pub fn sent(&mut self, now: Instant) -> u64 {
        self.next_send = now + self.interval;
        self.seq += 1;
        self.seq
    }

    /// Something arrived from the peer at `now`.
    pub fn received(&mut self, now: Instant) {
        if now > self.last_received {
            self.last_received = now;
        }
    }

    /// When the peer was last heard from.
    pub fn last_received(&self) -> Instant {
        self.last_received
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_every_interval_and_declares_dead_after_three_misses() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut hb = Heartbeat::new(s, 3, t0);
        assert_eq!(hb.poll(t0), HeartbeatAction::Send);
        hb.sent(t0);
        assert_eq!(hb.poll(t0), HeartbeatAction::WaitUntil(t0 + s));
        // peer talks at 0.5 s; we keep sending
        hb.received(t0 + s / 2);
        assert_eq!(hb.poll(t0 + s), HeartbeatAction::Send);
        hb.sent(t0 + s);
        hb.sent(t0 + 2 * s);
        hb.sent(t0 + 3 * s);
        // silent since 0.5 s: dead at 3.5 s, not before
        assert_eq!(
            hb.poll(t0 + 3 * s + s / 4),
            HeartbeatAction::WaitUntil(t0 + 3 * s + s / 2)
        );
        assert!(matches!(
            hb.poll(t0 + 3 * s + s / 2),
            HeartbeatAction::Dead { .. }
        ));
    }

    #[test]
    fn traffic_keeps_it_alive() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut hb = Heartbeat::new(s, 3, t0);
        for i in 1..100u32 {
            let now = t0 + s * i;
            hb.received(now);
            assert!(!matches!(hb.poll(now), HeartbeatAction::Dead { .. }));
            if hb.poll(now) == HeartbeatAction::Send {
                hb.sent(now);
            }
        }
    }
}
