//! The one backoff model of the bridge, on backon's `ExponentialBuilder`: a delay that starts at
//! `initial` and doubles up to `max`, each pause drawn at random between half the delay and the
//! whole of it (so a pause never exceeds `max`, and many replicas that lost one broker at once
//! do not come back at once). Reconnects (WebSocket, RabbitMQ, NATS, a sink that connects late)
//! and the simulator's webhook retries use it; delivery retries build the same backoff with
//! their own limits (`delivery.*`, [`crate::dispatch::RetryPolicy`]).

use std::time::Duration;

use backon::BackoffBuilder as _;

/// Pauses between attempts; never runs out (the caller decides when to stop).
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    delays: backon::ExponentialBackoff,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let max = max.max(initial);
        Self {
            initial,
            max,
            delays: build(initial, max),
        }
    }

    /// The pause before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        // backon adds a jitter within `[0, d)` to a delay `d`; built from halves, a pause lies in
        // `[d/2, d)` of the delay this backoff means.
        self.delays.next().unwrap_or(self.max / 2).min(self.max)
    }

    /// Starts again from `initial` (after a connection that held).
    pub fn reset(&mut self) {
        self.delays = build(self.initial, self.max);
    }

    /// The pause before attempt `n` (0 for the first retry), for callers that are given an
    /// attempt count rather than keeping a [`Backoff`] (the NATS client's reconnect callback).
    pub fn nth(initial: Duration, max: Duration, n: usize) -> Duration {
        // The delay stops growing once it reaches `max`: 64 doublings cover any durations.
        let mut b = Self::new(initial, max);
        for _ in 0..n.min(64) {
            b.next_delay();
        }
        b.next_delay()
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

fn build(initial: Duration, max: Duration) -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(initial / 2)
        .with_max_delay(max / 2)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_the_cap_with_jitter_and_never_exceed_it() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_millis(1600));
        let mut b = Backoff::new(initial, max);
        let mut delay = initial;
        for _ in 0..12 {
            let p = b.next_delay();
            assert!(
                p >= delay / 2 && p <= delay,
                "{p:?} outside [{:?}, {delay:?}]",
                delay / 2
            );
            delay = (delay * 2).min(max);
        }
        b.reset();
        assert!(
            b.next_delay() <= initial,
            "reset starts again at the initial delay"
        );
        let distinct: std::collections::HashSet<Duration> =
            (0..20).map(|_| Backoff::nth(initial, max, 10)).collect();
        assert!(distinct.len() > 1, "pauses are jittered");
        assert!(distinct.iter().all(|p| *p >= max / 2 && *p <= max));
    }
}
