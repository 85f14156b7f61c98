//! The bridge's Prometheus metrics, one registry per running bridge.
//!
//! Names follow Prometheus conventions (`fondo_bridge_*_total`, `*_seconds`). Labels are low
//! cardinality: source, sink, route, reason kinds; never event ids or client data.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::event::{AckStatus, SourceKind};
use crate::telemetry::quantiles::{QUANTILES, RollingLatency};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceReasonLabels {
    pub source: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkRouteLabels {
    pub sink: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    pub destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    pub client_id: String,
}

/// The mantissas of the latency buckets: ten per decade, each about 1.26× the one before (the
/// E10-like series 1, 1.25, 1.6, 2, 2.5, 3.2, 4, 5, 6.3, 8).
const MANTISSAS: [&str; 10] = ["1", "1.25", "1.6", "2", "2.5", "3.2", "4", "5", "6.3", "8"];

/// The upper bounds (seconds) of the latency histograms: ten per decade from 100 µs to 63 s,
/// 59 buckets (plus `+Inf`).
///
/// Adjacent bounds are at most 1.28× apart, so `histogram_quantile` always lands in a bucket
/// whose edges are within 28 % of each other: about ±12 % around the bucket's geometric middle,
/// where the ×2 buckets this replaces allowed a factor of two. For exact quantiles, see
/// `*_quantile_seconds` ([`crate::telemetry::quantiles`]).
///
/// Cardinality: 59 buckets + `+Inf` + `_sum` + `_count` = 62 series per label set, so
/// `receive_to_ack_seconds` exports 3 × 62 = 186 series (the three sources are always
/// registered) and `publish_latency_seconds` 62 per sink: 310 series with two sinks, against
/// 120 with the old 21 buckets. Labels stay source and sink only (no route, no client), so the
/// count grows with the number of sinks configured, never with traffic.
pub fn latency_buckets() -> Vec<f64> {
    let mut b = Vec::with_capacity(59);
    for exp in -4..=1 {
        for m in MANTISSAS {
            // Parsed from the decimal text, so a bound prints as `0.000125`, not as a product
            // with rounding noise in its last digits.
            if let Ok(v) = format!("{m}e{exp}").parse::<f64>()
                && v <= 63.0
            {
                b.push(v);
            }
        }
    }
    b
}

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// One latency series: the Prometheus histogram and the exact rolling window beside it.
#[derive(Clone)]
pub struct Latency {
    histogram: Histogram,
    window: Arc<RollingLatency>,
}

impl Latency {
    /// Records `d` in both.
    pub fn observe(&self, d: Duration) {
        self.histogram.observe(d.as_secs_f64());
        self.window.record(d);
    }
}

/// The windows behind `*_quantile_seconds`, read at scrape time.
#[derive(Debug, Default)]
struct ExactQuantiles {
    /// By source, in [`SOURCES`] order.
    sources: [Arc<RollingLatency>; 3],
    /// By sink name.
    sinks: Mutex<BTreeMap<String, Arc<RollingLatency>>>,
}

impl ExactQuantiles {
    fn sink(&self, name: &str) -> Arc<RollingLatency> {
        let mut sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(sinks.entry(name.to_owned()).or_default())
    }
}

/// Encodes one `*_quantile_seconds` family and its `*_window_count`, over `windows` labelled
/// `label`.
fn encode_windows<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    family: &str,
    help: &str,
    label: &str,
    windows: impl Iterator<Item = (&'a str, &'a RollingLatency)>,
) -> Result<(), std::fmt::Error> {
    let snaps: Vec<_> = windows
        .filter_map(|(name, w)| w.snapshot().map(|s| (name, s)))
        .collect();
    if snaps.is_empty() {
        // Like a labelled family with no series yet: nothing, not a bare `# TYPE`.
        return Ok(());
    }
    let name = format!("{family}_quantile_seconds");
    let mut m = encoder.encode_descriptor(&name, help, None, MetricType::Gauge)?;
    for (series, snap) in &snaps {
        for ((_, q), v) in QUANTILES.iter().zip(snap.quantiles) {
            let labels = [(label, *series), ("quantile", *q)];
            ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
        }
    }
    let name = format!("{family}_window_count");
    let help = format!("Values {family}_quantile_seconds rests on (the last 45 to 60 s)");
    let mut m = encoder.encode_descriptor(&name, &help, None, MetricType::Gauge)?;
    for (series, snap) in &snaps {
        let labels = [(label, *series)];
        ConstGauge::new(snap.count as i64).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for ExactQuantiles {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let sources = SOURCES
            .iter()
            .zip(&self.sources)
            .map(|(s, w)| (s.as_str(), &**w));
        encode_windows(
            &mut encoder,
            "receive_to_ack",
            "Exact receive→ack quantiles over the last 45 to 60 s (HdrHistogram, 3 significant digits)",
            "source",
            sources,
        )?;
        let sinks: Vec<(String, Arc<RollingLatency>)> = self
            .sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        encode_windows(
            &mut encoder,
            "publish_latency",
            "Exact publish→confirm quantiles over the last 45 to 60 s (HdrHistogram, 3 significant digits)",
            "sink",
            sinks.iter().map(|(k, v)| (k.as_str(), &**v)),
        )
    }
}

/// Every metric the bridge exports. Cheap to clone handles out of; shared as `Arc<Metrics>`.
pub struct Metrics {
    pub registry: Registry,
    pub received: Family<SourceLabels, Counter>,
    pub rejected: Family<SourceReasonLabels, Counter>,
    pub published: Family<SinkRouteLabels, Counter>,
    pub retried: Family<SinkRouteLabels, Counter>,
    pub dead_lettered: Family<ReasonLabels, Counter>,
    pub dead_letter_writes: Family<DestinationLabels, Counter>,
    pub dead_letter_failures: Counter,
    pub deduplicated: Family<SourceLabels, Counter>,
    pub identity_paired: Family<SourceLabels, Counter>,
    pub identity_retries: Counter,
    pub identity_forgotten: Family<TableLabels, Counter>,
    pub late: Counter,
    pub broker_duplicates: Family<SinkLabels, Counter>,
    pub order_inversions: Family<SinkLabels, Counter>,
    pub dedupe_store_errors: Family<OpLabels, Counter>,
    pub identity_covered: Family<SourceLabels, Counter>,
    pub identity_owner_timeouts: Counter,
    pub unmatched: Counter,
    pub dropped_unmatched: Counter,
    pub filtered: Counter,
    pub acked: Family<SourceReasonLabels, Counter>,
    pub in_flight: Gauge,
    pub spool_events: Gauge,
    pub spool_bytes: Gauge,
    /// `spool.max_bytes`: what `spool_bytes` may grow to.
    pub spool_max_bytes: Gauge,
    /// When this bridge started (Unix seconds), for its uptime.
    pub start_time: Gauge<f64, AtomicU64>,
    /// Appends handed to the spool writer thread and not yet committed.
    pub spool_writer_pending: Gauge,
    /// When the spool writer last committed a batch, or, if it was idle, when work for it
    /// arrived (Unix seconds): with appends pending, how long it has made no progress.
    pub spool_writer_progress: Gauge<f64, AtomicU64>,
    pub ws_connected: Family<ClientLabels, Gauge>,
    pub ws_gap_seconds: Family<ClientLabels, Counter<f64, AtomicU64>>,
    pub ws_gaps: Family<ClientLabels, Counter>,
    pub reload_failures: Counter,
    pub reloads: Counter,
    pub publish_latency: Family<SinkLabels, Histogram>,
    pub receive_to_ack: Family<SourceLabels, Histogram>,
    exact: Arc<ExactQuantiles>,
    delivered_total: AtomicU64,
    /// Handles into the families above for every source, resolved once: the per-event path does
    /// no label allocation, hashing or locking.
    per_source: [PerSource; 3],
}

/// One source's per-event series.
struct PerSource {
    received: Counter,
    deduplicated: Counter,
    /// By [`AckStatus`] as index.
    acked: [Counter; 3],
    receive_to_ack: Latency,
}

impl PerSource {
    fn placeholder() -> Self {
        Self {
            received: Counter::default(),
            deduplicated: Counter::default(),
            acked: Default::default(),
            receive_to_ack: Latency {
                histogram: latency_histogram(),
                window: Arc::default(),
            },
        }
    }

    fn resolve(m: &Metrics, source: SourceKind) -> Self {
        let labels = m.source(source.as_str());
        let acked = |reason: &str| {
            m.acked
                .get_or_create(&SourceReasonLabels {
                    source: source.as_str().into(),
                    reason: reason.into(),
                })
                .clone()
        };
        Self {
            received: m.received.get_or_create(&labels).clone(),
            deduplicated: m.deduplicated.get_or_create(&labels).clone(),
            acked: [acked("delivered"), acked("rejected"), acked("retry")],
            receive_to_ack: Latency {
                histogram: m.receive_to_ack.get_or_create(&labels).clone(),
                window: Arc::clone(&m.exact.sources[source_index(source)]),
            },
        }
    }
}

const SOURCES: [SourceKind; 3] = [
    SourceKind::WebSocket,
    SourceKind::Webhook,
    SourceKind::Replay,
];

fn source_index(s: SourceKind) -> usize {
    match s {
        SourceKind::WebSocket => 0,
        SourceKind::Webhook => 1,
        SourceKind::Replay => 2,
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every family, registered with its help text: one long list on purpose, so what
    /// `/metrics` exports can be read in one place.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fondo_bridge");
        let m = Self {
            received: Family::default(),
            rejected: Family::default(),
            published: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            dead_letter_writes: Family::default(),
            dead_letter_failures: Counter::default(),
            deduplicated: Family::default(),
            identity_paired: Family::default(),
            identity_retries: Counter::default(),
            identity_forgotten: Family::default(),
            late: Counter::default(),
            broker_duplicates: Family::default(),
            order_inversions: Family::default(),
            dedupe_store_errors: Family::default(),
            identity_covered: Family::default(),
            identity_owner_timeouts: Counter::default(),
            unmatched: Counter::default(),
            dropped_unmatched: Counter::default(),
            filtered: Counter::default(),
            acked: Family::default(),
            in_flight: Gauge::default(),
            spool_events: Gauge::default(),
            spool_bytes: Gauge::default(),
            spool_max_bytes: Gauge::default(),
            start_time: Gauge::default(),
            spool_writer_pending: Gauge::default(),
            spool_writer_progress: Gauge::default(),
            ws_connected: Family::default(),
            ws_gap_seconds: Family::default(),
            ws_gaps: Family::default(),
            reload_failures: Counter::default(),
            reloads: Counter::default(),
            publish_latency: Family::new_with_constructor(latency_histogram),
            receive_to_ack: Family::new_with_constructor(latency_histogram),
            exact: Arc::default(),
            delivered_total: AtomicU64::new(0),
            registry: Registry::default(),
            per_source: std::array::from_fn(|_| PerSource::placeholder()),
        };
        m.start_time.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        let per_source = SOURCES.map(|s| PerSource::resolve(&m, s));
        let m = Self { per_source, ..m };
        registry.register(
            "received",
            "Events received from a source",
            m.received.clone(),
        );
        registry.register(
            "rejected",
            "Inputs refused before routing (bad signature, malformed, too large)",
            m.rejected.clone(),
        );
        registry.register(
            "published",
            "Messages confirmed by a sink",
            m.published.clone(),
        );
        registry.register(
            "retried",
            "Publish attempts that failed retriably and were retried",
            m.retried.clone(),
        );
        registry.register(
            "dead_lettered",
            "Events (per destination) sent to the dead-letter path",
            m.dead_lettered.clone(),
        );
        registry.register(
            "dead_letter_writes",
            "Dead letters written, by where they were written",
            m.dead_letter_writes.clone(),
        );
        registry.register(
            "dead_letter_failures",
            "Dead letters that could be written nowhere (the source was not acknowledged)",
            m.dead_letter_failures.clone(),
        );
        registry.register(
            "deduplicated",
            "Events recognised as already delivered and not published again",
            m.deduplicated.clone(),
        );
        registry.register(
            "identity_paired",
            "Copies that paired with an occurrence the other source brought (both sources on), by the copy's source",
            m.identity_paired.clone(),
        );
        registry.register(
            "identity_retries",
            "Webhook deliveries recognised by their delivery id as a retry of an earlier copy",
            m.identity_retries.clone(),
        );
        registry.register(
            "identity_forgotten",
            "Identity entries forgotten for capacity before their time (a later copy becomes a duplicate, never a loss)",
            m.identity_forgotten.clone(),
        );
        registry.register(
            "late",
            "Changes published after a later change of their object (lost on the stream, carried by their webhook); marked with the fondo-late header",
            m.late.clone(),
        );
        registry.register(
            "broker_duplicates",
            "Publishes the broker collapsed as a repeat of the same occurrence to the same destination (JetStream Nats-Msg-Id)",
            m.broker_duplicates.clone(),
        );
        registry.register(
            "order_inversions",
            "Messages delivered by a retry after a later message of their key on the same sink (on Kafka: it timed out in the producer's queue after the later one was placed); the key's order on the broker is inverted once",
            m.order_inversions.clone(),
        );
        registry.register(
            "dedupe_store_errors",
            "Shared identity store (Redis) operations that failed or timed out, by operation; a failed lookup publishes the event (a possible duplicate, never a loss)",
            m.dedupe_store_errors.clone(),
        );
        registry.register(
            "identity_covered",
            "Copies acknowledged without publishing because another replica delivered their occurrence (shared store), by the copy's source",
            m.identity_covered.clone(),
        );
        registry.register(
            "identity_owner_timeouts",
            "Copies whose occurrence another replica owned but did not finish within dedupe.redis.owner_wait_ms; published here (a possible duplicate)",
            m.identity_owner_timeouts.clone(),
        );
        registry.register("unmatched", "Events no route matched", m.unmatched.clone());
        registry.register(
            "dropped_unmatched",
            "Unmatched events dropped by `unmatched: drop`",
            m.dropped_unmatched.clone(),
        );
        registry.register(
            "filtered",
            "Route matches excluded by a route's `where` filter",
            m.filtered.clone(),
        );
        registry.register(
            "acked",
            "Events acknowledged to their source, by outcome",
            m.acked.clone(),
        );
        registry.register(
            "in_flight",
            "Events inside the bridge now",
            m.in_flight.clone(),
        );
        registry.register(
            "spool_events",
            "Events in the WebSocket spool not yet released",
            m.spool_events.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes of WebSocket spool segments on disk",
            m.spool_bytes.clone(),
        );
        registry.register(
            "spool_max_bytes",
            "The spool's max_bytes: what spool_bytes may grow to",
            m.spool_max_bytes.clone(),
        );
        registry.register(
            "start_time_seconds",
            "When this bridge started (Unix seconds)",
            m.start_time.clone(),
        );
        registry.register(
            "spool_writer_pending",
            "Appends handed to the spool writer and not yet committed",
            m.spool_writer_pending.clone(),
        );
        registry.register(
            "spool_writer_progress_timestamp_seconds",
            "When the spool writer last committed, or work reached it while idle (Unix seconds)",
            m.spool_writer_progress.clone(),
        );
        registry.register(
            "websocket_connected",
            "1 while the WebSocket stream of a client id is connected",
            m.ws_connected.clone(),
        );
        registry.register("websocket_gap_seconds", "Seconds the WebSocket stream was disconnected (events in gaps are not replayed by Fondo)", m.ws_gap_seconds.clone());
        registry.register(
            "websocket_gaps",
            "Disconnections of a WebSocket stream",
            m.ws_gaps.clone(),
        );
        registry.register(
            "routing_reloads",
            "Routing tables loaded and swapped in",
            m.reloads.clone(),
        );
        registry.register(
            "routing_reload_failures",
            "Routing reloads rejected as invalid",
            m.reload_failures.clone(),
        );
        registry.register(
            "publish_latency_seconds",
            "Time from a publish call to the broker's confirmation",
            m.publish_latency.clone(),
        );
        registry.register(
            "receive_to_ack_seconds",
            "Time from receiving an event to acknowledging it to its source",
            m.receive_to_ack.clone(),
        );
        registry.register_collector(Box::new(Arc::clone(&m.exact)));
        registry.register(
            "build",
            "The running build: fondo_bridge_build_info{version} 1",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            }),
        );
        Self { registry, ..m }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn source(&self, s: &str) -> SourceLabels {
        SourceLabels { source: s.into() }
    }

    /// `received{source}`.
    pub fn received_from(&self, s: SourceKind) -> &Counter {
        &self.per_source[source_index(s)].received
    }

    /// `deduplicated{source}`.
    pub fn deduplicated_from(&self, s: SourceKind) -> &Counter {
        &self.per_source[source_index(s)].deduplicated
    }

    /// `identity_paired{source}` (not on the per-event path of one source alone).
    pub fn identity_paired_from(&self, s: SourceKind) -> Counter {
        self.identity_paired
            .get_or_create(&SourceLabels {
                source: s.as_str().into(),
            })
            .clone()
    }

    /// `dedupe_store_errors{op}`.
    pub fn dedupe_store_errors_in(&self, op: &str) -> Counter {
        self.dedupe_store_errors
            .get_or_create(&OpLabels { op: op.into() })
            .clone()
    }

    /// `identity_forgotten{table}`.
    pub fn identity_forgotten_in(&self, table: &str) -> Counter {
        self.identity_forgotten
            .get_or_create(&TableLabels {
                table: table.into(),
            })
            .clone()
    }

    /// `acked{source, reason}`.
    pub fn acked_as(&self, s: SourceKind, status: AckStatus) -> &Counter {
        &self.per_source[source_index(s)].acked[status as usize]
    }

    /// `receive_to_ack_seconds{source}` and its exact window.
    pub fn receive_to_ack_of(&self, s: SourceKind) -> &Latency {
        &self.per_source[source_index(s)].receive_to_ack
    }

    /// `publish_latency_seconds{sink}` and its exact window (resolve once per sink).
    pub fn publish_latency_of(&self, sink: &str) -> Latency {
        Latency {
            histogram: self
                .publish_latency
                .get_or_create(&SinkLabels { sink: sink.into() })
                .clone(),
            window: self.exact.sink(sink),
        }
    }

    pub(crate) fn count_delivered(&self) {
        self.delivered_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Destination deliveries confirmed since start (all sinks).
    pub fn delivered_total(&self) -> u64 {
        self.delivered_total.load(Ordering::Relaxed)
    }
}
