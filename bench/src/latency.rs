//! Latencies, and the one way the bench reads quantiles from them.
//!
//! Every p50/p99/p99.9 in the results comes from [`Latencies::quantile_ms`]: HdrHistogram's value
//! at quantile q, the smallest recorded value that q of the recordings do not exceed (to 3
//! significant digits, reported at the top of its bucket). Values are kept in whole
//! microseconds, from 1 µs to one hour; a longer one is kept as one hour.
//!
//! Most scenarios record each event's own latency. The bridge's receive→ack and publish→confirm
//! latencies are only known to the bridge, as its Prometheus histograms; [`Latencies::from_buckets`]
//! records those the same way at the histogram's resolution (see there).

use std::time::Duration;

use hdrhistogram::Histogram;

const MAX_US: u64 = 3_600_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// Latency recordings of one scenario.
#[derive(Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    pub fn new() -> Self {
        // Constant bounds within HdrHistogram's limits (low ≥ 1, high ≥ 2 × low, at most 5
        // digits): creation cannot fail.
        #[allow(clippy::expect_used)]
        let h = Histogram::new_with_bounds(1, MAX_US, SIGNIFICANT_DIGITS)
            .expect("constant histogram bounds are valid");
        Self(h)
    }

    /// One latency.
    pub fn record(&mut self, d: Duration) {
        self.record_us(u64::try_from(d.as_micros()).unwrap_or(MAX_US), 1);
    }

    /// `n` latencies of `us` microseconds each (below 1 µs counts as 1 µs).
    pub fn record_us(&mut self, us: u64, n: u64) {
        if n > 0 {
            self.0.saturating_record_n(us.clamp(1, MAX_US), n);
        }
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The latency (ms) at quantile `q` (0..=1); `None` when nothing was recorded.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        (self.count() > 0).then(|| self.0.value_at_quantile(q) as f64 / 1000.0)
    }

    /// p50, p99 and p99.9 in milliseconds.
    pub fn p50_p99_p999(&self) -> (Option<f64>, Option<f64>, Option<f64>) {
        (
            self.quantile_ms(0.5),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
        )
    }

    /// A Prometheus histogram's observations: `buckets` are its `(le in seconds, cumulative
    /// count)` pairs in any order. Each observation is recorded at the upper bound of its bucket,
    /// so a quantile read from the result is the bucket bound the exact quantile does not exceed:
    /// an upper bound at the bucket's resolution (the bridge's buckets double from 100 µs).
    /// Observations above the last finite bound are recorded at that bound.
    pub fn from_buckets(buckets: &[(f64, f64)]) -> Self {
        let mut sorted = buckets.to_vec();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut l = Self::new();
        let (mut below, mut last_finite) = (0.0, 0.0);
        for (le, cumulative) in sorted {
            let bound = if le.is_finite() { le } else { last_finite };
            let inside = (cumulative - below).max(0.0).round() as u64;
            l.record_us((bound * 1e6).ceil() as u64, inside);
            below = cumulative.max(below);
            if le.is_finite() {
                last_finite = le;
            }
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_exact_latencies() {
        let mut l = Latencies::new();
        for ms in 1..=1000u64 {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.count(), 1000);
        // 3 significant digits: the value, or the top of its bucket just above it.
        let near = |got: Option<f64>, want: f64| {
            let got = got.unwrap();
            assert!(got >= want && got <= want * 1.001, "{got} vs {want}");
        };
        near(l.quantile_ms(0.5), 500.0);
        near(l.quantile_ms(0.99), 990.0);
        near(l.quantile_ms(0.999), 999.0);
        assert_eq!(Latencies::new().quantile_ms(0.5), None);
    }

    #[test]
    fn sub_microsecond_latencies_count_as_one_microsecond() {
        let mut l = Latencies::new();
        l.record(Duration::from_nanos(10));
        assert_eq!(l.quantile_ms(0.5), Some(0.001));
    }

    #[test]
    fn histogram_buckets_give_their_upper_bounds() {
        // 50 observations up to 1 ms, 50 more up to 2 ms, none above.
        let buckets = [(0.002, 100.0), (0.001, 50.0), (f64::INFINITY, 100.0)];
        let l = Latencies::from_buckets(&buckets);
        assert_eq!(l.count(), 100);
        assert_eq!(l.quantile_ms(0.5), Some(1.0));
        assert_eq!(l.quantile_ms(0.75), Some(2.0));
        assert_eq!(l.quantile_ms(0.99), Some(2.0));
    }

    #[test]
    fn observations_above_the_last_bound_are_kept_at_it() {
        let l = Latencies::from_buckets(&[(0.001, 1.0), (f64::INFINITY, 3.0)]);
        assert_eq!(l.count(), 3);
        assert_eq!(l.quantile_ms(0.99), Some(1.0));
        assert_eq!(Latencies::from_buckets(&[]).count(), 0);
    }
}
