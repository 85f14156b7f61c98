//! One result row: what one scenario measured, as it is written to `results.json`.

use serde::{Deserialize, Serialize};

use crate::latency::Latencies;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Row {
    /// `raw`, `bridge-core`, `baseline`, `bridge-ws`, `bridge-webhook`, `sink`, `source` or
    /// `simulator`.
    pub scenario: String,
    pub sink: String,
    /// Which part of the report the row belongs to: `main`, `pair-N`, `machine`, `parts`,
    /// `payload`, `routes`.
    pub group: String,
    pub payload_bytes: usize,
    pub avg_body_bytes: f64,
    pub routes: usize,
    pub window: usize,
    pub events: u64,
    pub confirmed: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    pub msgs_per_s: f64,
    /// What the latency columns measure.
    pub latency: String,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    /// Bridge (and baseline) only: the sink's publish→confirm.
    pub publish_p50_ms: Option<f64>,
    pub publish_p99_ms: Option<f64>,
    pub cpu_s_process: f64,
    pub cpu_s_simulator: f64,
    pub cpu_s_sut: f64,
    /// SUT cores busy per 10k events/s.
    pub sut_cores_per_10k: f64,
    pub peak_rss_mb: f64,
    pub rss_mb_per_10k: f64,
    pub broker_count: Option<u64>,
    pub verified: Option<bool>,
    pub note: String,
}

/// What a scenario ran: the row's description.
pub struct Setup<'a> {
    pub scenario: &'a str,
    pub sink: &'a str,
    pub group: &'a str,
    pub payload_bytes: usize,
    pub avg_body_bytes: f64,
    pub routes: usize,
    /// The confirm window (the webhook sender's concurrency for webhook rows).
    pub window: usize,
    pub events: u64,
}

/// What it measured.
pub struct Outcome {
    pub confirmed: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    /// CPU seconds of the whole process, and of the simulator's thread within it.
    pub cpu_s: (f64, f64),
    pub peak_rss_mb: f64,
}

impl Row {
    /// The row, with rates, SUT CPU (process − simulator thread) and the per-10k figures.
    pub fn measured(s: &Setup<'_>, o: &Outcome) -> Self {
        let rate = if o.elapsed_s > 0.0 {
            o.confirmed.min(s.events) as f64 / o.elapsed_s
        } else {
            0.0
        };
        let (cpu_p, cpu_s) = o.cpu_s;
        let sut = (cpu_p - cpu_s).max(0.0);
        let per10k = if rate > 0.0 {
            rate / 10_000.0
        } else {
            f64::NAN
        };
        Self {
            scenario: s.scenario.into(),
            sink: s.sink.into(),
            group: s.group.into(),
            payload_bytes: s.payload_bytes,
            avg_body_bytes: s.avg_body_bytes.round(),
            routes: s.routes,
            window: s.window,
            events: s.events,
            confirmed: o.confirmed,
            errors: o.errors,
            elapsed_s: o.elapsed_s,
            msgs_per_s: rate.round(),
            cpu_s_process: cpu_p,
            cpu_s_simulator: cpu_s,
            cpu_s_sut: sut,
            sut_cores_per_10k: if o.elapsed_s > 0.0 {
                (sut / o.elapsed_s) / per10k
            } else {
                f64::NAN
            },
            peak_rss_mb: o.peak_rss_mb,
            rss_mb_per_10k: o.peak_rss_mb / per10k,
            ..Self::default()
        }
    }

    /// The latency columns: `what` they measure, and p50/p99/p99.9 of `l`.
    pub fn set_latency(&mut self, what: &str, l: &Latencies) {
        self.latency = what.into();
        (self.p50_ms, self.p99_ms, self.p999_ms) = l.p50_p99_p999();
    }

    /// The bridge's publish→confirm columns.
    pub fn set_publish_latency(&mut self, l: &Latencies) {
        (self.publish_p50_ms, self.publish_p99_ms) = (l.quantile_ms(0.5), l.quantile_ms(0.99));
    }

    /// Records the broker's own count. At least once: the broker must hold at least every
    /// confirmed message, and every event must have been confirmed.
    pub fn verify(&mut self, count: anyhow::Result<u64>) {
        match count {
            Ok(b) => {
                self.broker_count = Some(b);
                self.verified = Some(b >= self.confirmed && self.confirmed >= self.events);
            }
            Err(e) => {
                self.note = format!("broker count failed: {e:#}");
                self.verified = Some(false);
            }
        }
    }
}
