//! What every Airlock crate's tests share: waiting on a condition with a
//! deadline instead of sleeping for a fixed time and hoping.
//!
//! One polling loop, three ways in: [`eventually`] for a synchronous check,
//! [`eventually_async`] for a check that awaits, and [`eventually_blocking`]
//! for synchronous tests and helpers. Each panics on a timeout; its `try_`
//! twin returns the timeout as a [`TimedOut`] error instead, for helpers
//! that return `Result`. A check returns a [`Probe`]: `bool`,
//! `Option<T>` (the value is returned) or `Result<T, E>` (the last error is
//! quoted in the failure). A timeout names what was awaited and for how long.
//!
//! The async forms measure time with tokio's clock, so they work unchanged in
//! tests that pause it (`#[tokio::test(start_paused = true)]`). This crate
//! owns no fixtures and depends on none of the workspace's crates; besides
//! waiting it picks loopback ports for servers a test starts
//! ([`free_loopback_ports`]).
#![forbid(unsafe_code)]

use std::fmt;
use std::future::Future;
use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The first of `consecutive` loopback ports, each free on both UDP and TCP
/// (the tunnel needs both; `bao server -dev` also binds the port after its
/// listener's, for its cluster).
///
/// Ports come from 20000..32000, below the kernel's ephemeral range
/// (32768..60999 by default), so the outgoing sockets that tests open by the
/// hundred (agents' QUIC sockets, TCP connects, `bind(0)`) can never take a
/// port between the moment it is picked here and the moment the process it
/// was picked for binds it. A process-wide cursor starting at a pid-derived
/// offset keeps two picks in one test binary, and picks of concurrently
/// running test processes, apart.
pub fn free_loopback_ports(consecutive: u16) -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);
    let n = u32::from(consecutive.max(1));
    let _ = CURSOR.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let free = |port: u32| {
        let port = port as u16;
        UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
    };
    for _ in 0..SPAN {
        let first = CURSOR.fetch_add(n, Ordering::SeqCst) % SPAN;
        if first + n <= SPAN && (first..first + n).all(|i| free(LOW + i)) {
            return (LOW + first) as u16;
        }
    }
    panic!(
        "no {n} consecutive loopback ports free on both UDP and TCP in {LOW}..{}",
        LOW + SPAN
    );
}

/// The first pause between two checks; it doubles up to [`MAX_INTERVAL`].
const FIRST_INTERVAL: Duration = Duration::from_millis(2);
/// The longest pause between two checks.
const MAX_INTERVAL: Duration = Duration::from_millis(50);

/// What a check returns: done (with a value) or not yet (with, perhaps, why).
pub trait Probe {
    /// What the wait returns once the check passes.
    type Value;
    /// `Ok(value)` when the condition holds; `Err(note)` when it does not
    /// yet, where `note` says why (quoted if the wait times out).
    fn check(self) -> Result<Self::Value, Option<String>>;
}

impl Probe for bool {
    type Value = ();
    fn check(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Probe for Option<T> {
    type Value = T;
    fn check(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: fmt::Debug> Probe for Result<T, E> {
    type Value = T;
    fn check(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(format!("{e:?}")))
    }
}

/// A wait that ran out of time: what was awaited, for how long, and the last
/// reason the check gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    /// What was awaited.
    pub what: String,
    /// How long.
    pub limit: Duration,
    /// The last check's note (`Err` of a `Result` probe), if any.
    pub last: Option<String>,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {}",
            self.limit, self.what
        )?;
        if let Some(last) = &self.last {
            write!(f, " (last check: {last})")?;
        }
        Ok(())
    }
}

impl std::error::Error for TimedOut {}

/// The pause before the next check: doubling from [`FIRST_INTERVAL`] up to
/// [`MAX_INTERVAL`], never past the deadline.
#[derive(Debug)]
struct Interval(Duration);

impl Interval {
    fn new() -> Self {
        Self(FIRST_INTERVAL)
    }

    fn next(&mut self, left: Duration) -> Duration {
        let pause = self.0.min(left);
        self.0 = (self.0 * 2).min(MAX_INTERVAL);
        pause
    }
}

/// Polls `check` until it passes or `limit` (on tokio's clock) runs out;
/// returns the probe's value. A check still running at the deadline is
/// abandoned and counts as a timeout.
pub async fn try_eventually_async<P, F, Fut>(
    what: &str,
    limit: Duration,
    mut check: F,
) -> Result<P::Value, TimedOut>
where
    P: Probe,
    F: FnMut() -> Fut,
    Fut: Future<Output = P>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut interval = Interval::new();
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(probe) => match probe.check() {
                Ok(value) => return Ok(value),
                Err(note) => last = note.or(last),
            },
            Err(_) => {
                last = Some("still running at the deadline".to_owned());
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(TimedOut {
                what: what.to_owned(),
                limit,
                last,
            });
        }
        tokio::time::sleep(interval.next(left)).await;
    }
}

/// Polls the async `check` until it passes; panics naming `what` and `limit`
/// when it has not within `limit`. Returns the probe's value.
pub async fn eventually_async<P, F, Fut>(what: &str, limit: Duration, check: F) -> P::Value
where
    P: Probe,
    F: FnMut() -> Fut,
    Fut: Future<Output = P>,
{
    match try_eventually_async(what, limit, check).await {
        Ok(value) => value,
        Err(e) => panic!("{e}"),
    }
}

/// Polls the synchronous `check` (from async code) until it passes or
/// `limit` runs out; returns the probe's value.
pub async fn try_eventually<P: Probe>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> P,
) -> Result<P::Value, TimedOut> {
    try_eventually_async(what, limit, || std::future::ready(check())).await
}

/// Polls the synchronous `check` (from async code) until it passes; panics
/// naming `what` and `limit` when it has not within `limit`. Returns the
/// probe's value.
pub async fn eventually<P: Probe>(
    what: &str,
    limit: Duration,
    check: impl FnMut() -> P,
) -> P::Value {
    match try_eventually(what, limit, check).await {
        Ok(value) => value,
        Err(e) => panic!("{e}"),
    }
}

/// [`eventually`] for synchronous code: polls `check` with the thread
/// sleeping between checks; the timeout is an error, not a panic, so helpers
/// that return `Result` can add context.
pub fn try_eventually_blocking<P: Probe>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> P,
) -> Result<P::Value, TimedOut> {
    let deadline = std::time::Instant::now() + limit;
    let mut interval = Interval::new();
    let mut last = None;
    loop {
        match check().check() {
            Ok(value) => return Ok(value),
            Err(note) => last = note.or(last),
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(TimedOut {
                what: what.to_owned(),
                limit,
                last,
            });
        }
        std::thread::sleep(interval.next(left));
    }
}

/// [`try_eventually_blocking`] that panics on a timeout.
pub fn eventually_blocking<P: Probe>(
    what: &str,
    limit: Duration,
    check: impl FnMut() -> P,
) -> P::Value {
    match try_eventually_blocking(what, limit, check) {
        Ok(value) => value,
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn returns_the_value_once_the_check_passes() {
        let n = AtomicU32::new(0);
        let v = eventually("the third check", Duration::from_secs(1), || {
            let k = n.fetch_add(1, Ordering::SeqCst);
            (k >= 2).then_some(k)
        })
        .await;
        assert_eq!(v, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_names_what_and_how_long_and_the_last_error() {
        let e = try_eventually_async("the door to open", Duration::from_millis(300), || async {
            Err::<(), _>("still locked")
        })
        .await
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "timed out after 300ms waiting for the door to open (last check: \"still locked\")"
        );
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out after 1s waiting for nothing")]
    async fn eventually_panics_on_timeout() {
        eventually("nothing", Duration::from_secs(1), || false).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_that_hangs_times_out_at_the_deadline() {
        let started = tokio::time::Instant::now();
        let e = try_eventually_async("a hanging check", Duration::from_secs(2), || {
            std::future::pending::<bool>()
        })
        .await
        .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(e.last.as_deref(), Some("still running at the deadline"));
    }

    #[test]
    fn blocking_checks_until_true_and_reports_a_timeout() {
        let mut n = 0;
        eventually_blocking("five checks", Duration::from_secs(5), || {
            n += 1;
            n == 5
        });
        assert_eq!(n, 5);
        let started = std::time::Instant::now();
        let e =
            try_eventually_blocking("never", Duration::from_millis(40), || None::<()>).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(40));
        assert_eq!(e.to_string(), "timed out after 40ms waiting for never");
    }

    #[test]
    fn the_interval_doubles_up_to_the_cap_and_never_passes_the_deadline() {
        let mut i = Interval::new();
        let pauses: Vec<_> = (0..7).map(|_| i.next(Duration::from_secs(1))).collect();
        assert_eq!(
            pauses,
            [2, 4, 8, 16, 32, 50, 50]
                .map(Duration::from_millis)
                .to_vec()
        );
        assert_eq!(i.next(Duration::from_millis(3)), Duration::from_millis(3));
    }
}
