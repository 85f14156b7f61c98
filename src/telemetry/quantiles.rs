//! Exact latency quantiles over a rolling window, for operators: an HdrHistogram (3 significant
//! digits, microseconds) per source and per sink, exported at scrape time as
//! `fondo_bridge_receive_to_ack_quantile_seconds{source,quantile}` and
//! `fondo_bridge_publish_latency_quantile_seconds{sink,quantile}`, with the number of values they
//! rest on in `*_window_count`.
//!
//! The window is a ring of [`SLOTS`] histograms of [`SLOT`] each: a value is recorded in the slot
//! of the current interval, and a slot is cleared when the clock enters its interval again. A
//! scrape merges the ring, so it covers the last 45 to 60 s (the current interval plus the three
//! before it). Two halves rotated would be cheaper by half but make the window jump between 30
//! and 60 s; a longer ring costs memory per series for little: quantiles over a minute are what
//! an operator compares with the Prometheus histogram's `rate(...[1m])`.
//!
//! Cost: the ring is allocated on the first value (sources that never record cost nothing); each
//! slot is a `Histogram<u32>` from 1 µs to 120 s, about 72 KB, so 288 KB per series in use.
//! Recording takes one uncontended lock, no allocation; entering a new interval clears one slot
//! (a 72 KB memset) on whichever record or scrape gets there first. Values above 120 s count as
//! 120 s.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Slots in the ring.
pub const SLOTS: usize = 4;
/// The interval one slot covers.
pub const SLOT: Duration = Duration::from_secs(15);
/// The quantiles exported, with their `quantile` label.
pub const QUANTILES: [(f64, &str); 3] = [(0.5, "0.5"), (0.99, "0.99"), (0.999, "0.999")];

/// The largest value tracked, in microseconds (120 s).
const HIGHEST_US: u64 = 120_000_000;
/// Significant decimal digits kept: a value is off by at most 0.1 %.
const SIGFIG: u8 = 3;

/// A rolling window of latencies; cheap to record into from many tasks.
pub struct RollingLatency {
    origin: Instant,
    ring: Mutex<Option<Ring>>,
}

struct Ring {
    slots: Vec<Histogram<u32>>,
    /// The interval number (since `origin`) of the newest slot.
    head: u64,
}

/// What a scrape reads of a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Values in the window.
    pub count: u64,
    /// The value (seconds) at each of [`QUANTILES`], in that order.
    pub quantiles: [f64; QUANTILES.len()],
}

impl Default for RollingLatency {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RollingLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RollingLatency").finish_non_exhaustive()
    }
}

impl RollingLatency {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            ring: Mutex::new(None),
        }
    }

    /// Records one latency, now.
    pub fn record(&self, d: Duration) {
        self.record_at(d, Instant::now());
    }

    /// The window's count and quantiles now; `None` when it holds no value.
    pub fn snapshot(&self) -> Option<Snapshot> {
        self.snapshot_at(Instant::now())
    }

    fn tick(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(nanos / SLOT.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records `d` as seen at `now`.
    pub fn record_at(&self, d: Duration, now: Instant) {
        let tick = self.tick(now);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        let mut guard = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Ring::new(tick);
        }
        if let Some(ring) = guard.as_mut() {
            ring.advance(tick);
            let i = (ring.head % SLOTS as u64) as usize;
            if let Some(h) = ring.slots.get_mut(i) {
                h.saturating_record(us);
            }
        }
    }

    /// The window as seen at `now`.
    pub fn snapshot_at(&self, now: Instant) -> Option<Snapshot> {
        let tick = self.tick(now);
        let merged = {
            let mut guard = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            let ring = guard.as_mut()?;
            ring.advance(tick);
            let first = ring.slots.first()?;
            let mut merged: Histogram<u32> = Histogram::new_from(first);
            for s in &ring.slots {
                // Same bounds, so adding cannot fail; a count would overflow only past 4e9
                // values in one window.
                let _ = merged.add(s);
            }
            merged
        };
        let count = merged.len();
        if count == 0 {
            return None;
        }
        Some(Snapshot {
            count,
            quantiles: QUANTILES.map(|(q, _)| merged.value_at_quantile(q) as f64 / 1e6),
        })
    }
}

impl Ring {
    fn new(tick: u64) -> Option<Self> {
        let slots = (0..SLOTS)
            .map(|_| Histogram::new_with_bounds(1, HIGHEST_US, SIGFIG).ok())
            .collect::<Option<Vec<_>>>()?;
        Some(Self { slots, head: tick })
    }

    /// Moves the head to interval `tick`, clearing the slots of the intervals entered (all of
    /// them when the ring was idle for a whole window).
    fn advance(&mut self, tick: u64) {
        if tick <= self.head {
            return;
        }
        let entered = (tick - self.head).min(SLOTS as u64);
        for t in (tick + 1 - entered)..=tick {
            if let Some(h) = self.slots.get_mut((t % SLOTS as u64) as usize) {
                h.reset();
            }
        }
        self.head = tick;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact quantile of sorted `v`: the smallest value with at least `q` of them at or
    /// below it (HdrHistogram's definition).
    fn exact(v: &[u64], q: f64) -> u64 {
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }

    #[test]
    fn quantiles_match_the_sorted_values_within_a_thousandth() {
        let w = RollingLatency::new();
        let now = Instant::now();
        // A long-tailed distribution from 50 µs to ~2 s, deterministic.
        let mut rng = fastrand::Rng::with_seed(42);
        let mut us: Vec<u64> = (0..100_000)
            .map(|_| {
                let u = rng.f64();
                (50.0 * (1.0 / (1.0 - u * 0.99999)).powf(1.3)) as u64
            })
            .collect();
        for v in &us {
            w.record_at(Duration::from_micros(*v), now);
        }
        us.sort_unstable();
        let s = w.snapshot_at(now).expect("values recorded");
        assert_eq!(s.count, us.len() as u64);
        for (i, (q, _)) in QUANTILES.iter().enumerate() {
            let want = exact(&us, *q) as f64 / 1e6;
            let got = s.quantiles[i];
            assert!(
                (got - want).abs() <= want * 1e-3 + 1e-6,
                "q{q}: {got} s vs exact {want} s"
            );
        }
        assert!(s.quantiles[0] < s.quantiles[1] && s.quantiles[1] < s.quantiles[2]);
    }

    #[test]
    fn the_window_forgets_values_older_than_its_slots() {
        let w = RollingLatency::new();
        let t0 = Instant::now();
        for _ in 0..1000 {
            w.record_at(Duration::from_millis(500), t0);
        }
        w.record_at(Duration::from_millis(2), t0 + SLOT * 2);
        // Still inside the window: the old values dominate.
        let s = w.snapshot_at(t0 + SLOT * 3).expect("values");
        assert_eq!(s.count, 1001);
        assert!((s.quantiles[0] - 0.5).abs() < 0.001, "{s:?}");
        // Once the first interval leaves the ring, only the later value is left.
        let s = w.snapshot_at(t0 + SLOT * SLOTS as u32).expect("values");
        assert_eq!(s.count, 1);
        assert!((s.quantiles[0] - 0.002).abs() < 0.00001, "{s:?}");
        // A whole idle window later, nothing.
        assert_eq!(w.snapshot_at(t0 + SLOT * 100), None);
        // And recording again starts afresh.
        w.record_at(Duration::from_millis(7), t0 + SLOT * 101);
        let s = w.snapshot_at(t0 + SLOT * 101).expect("values");
        assert_eq!(s.count, 1);
    }

    #[test]
    fn an_unused_window_holds_nothing_and_huge_values_saturate() {
        let w = RollingLatency::new();
        assert_eq!(w.snapshot(), None);
        w.record(Duration::from_secs(3600));
        let s = w.snapshot().expect("one value");
        assert!((s.quantiles[2] - 120.0).abs() < 0.2, "{s:?}");
    }
}
