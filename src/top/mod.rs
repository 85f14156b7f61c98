//! What `fondo-bridge top` shows, without the terminal: the scrape of a bridge's admin endpoint
//! (`/metrics` and `/readyz`), the figures read from it, and the rates between two scrapes.
//!
//! - [`Scraper`] fetches both pages; a bridge that does not answer is an error the caller shows
//!   and retries, never a reason to stop.
//! - [`Figures::parse`] reads the counters and gauges of one `/metrics` text (names in
//!   `telemetry/metrics.rs`) into maps keyed by their labels.
//! - [`Model`] keeps the previous figures and turns two scrapes into a [`View`]: totals, and
//!   rates as counter deltas over the time between the scrapes (a counter that went down means
//!   the bridge restarted: its new value is the delta).
//!
//! The drawing is in `src/cli/top.rs`; it only lays out a [`View`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::telemetry::prom;

const PREFIX: &str = "fondo_bridge_";

#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error("invalid admin URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("{url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
}

/// One scrape: the `/metrics` text and, when `/readyz` answered, whether the bridge is ready and
/// what it said.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub metrics: String,
    pub readiness: Option<Readiness>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Readiness {
    pub ready: bool,
    /// `/readyz`'s lines: each source and sink and its state.
    pub lines: Vec<String>,
}

/// Fetches `/metrics` and `/readyz` from one admin endpoint.
#[derive(Debug, Clone)]
pub struct Scraper {
    client: reqwest::Client,
    metrics_url: reqwest::Url,
    readyz_url: reqwest::Url,
}

impl Scraper {
    /// `admin` is the endpoint's base URL (`http://127.0.0.1:9090`); each request gives up after
    /// `timeout`.
    pub fn new(admin: &str, timeout: Duration) -> Result<Self, TopError> {
        let url_err = |reason: String| TopError::Url {
            url: admin.to_owned(),
            reason,
        };
        let base = reqwest::Url::parse(admin).map_err(|e| url_err(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(url_err("the scheme must be http or https".into()));
        }
        let join = |path: &str| base.join(path).map_err(|e| url_err(e.to_string()));
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| TopError::Client(e.to_string()))?;
        Ok(Self {
            client,
            metrics_url: join("/metrics")?,
            readyz_url: join("/readyz")?,
        })
    }

    /// Both pages. `/metrics` must answer 200; `/readyz` answers 200 (ready) or 503 (not ready,
    /// with the reasons), and any other outcome leaves the readiness unknown.
    pub async fn scrape(&self) -> Result<Scrape, TopError> {
        let metrics = self.get(&self.metrics_url).await?;
        if metrics.0 != reqwest::StatusCode::OK {
            return Err(TopError::Status {
                url: self.metrics_url.to_string(),
                status: metrics.0.as_u16(),
            });
        }
        let readiness = match self.get(&self.readyz_url).await {
            Ok((status, body))
                if status == reqwest::StatusCode::OK
                    || status == reqwest::StatusCode::SERVICE_UNAVAILABLE =>
            {
                Some(Readiness {
                    ready: status == reqwest::StatusCode::OK,
                    lines: body.lines().map(str::to_owned).collect(),
                })
            }
            _ => None,
        };
        Ok(Scrape {
            metrics: metrics.1,
            readiness,
        })
    }

    async fn get(&self, url: &reqwest::Url) -> Result<(reqwest::StatusCode, String), TopError> {
        let unreachable = |e: reqwest::Error| TopError::Unreachable {
            url: url.to_string(),
            reason: describe(&e),
        };
        let response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let body = response.text().await.map_err(unreachable)?;
        Ok((status, body))
    }
}

/// What went wrong, in the words of the innermost cause ("Connection refused (os error 111)"):
/// reqwest's own message only repeats the URL the error names already.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    let mut innermost: &dyn std::error::Error = e;
    while let Some(cause) = innermost.source() {
        innermost = cause;
    }
    innermost.to_string()
}

/// A WebSocket stream's figures, per client id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamFigures {
    pub connected: bool,
    /// Disconnections so far (each one is followed by a reconnect attempt).
    pub gaps: f64,
    pub gap_seconds: f64,
}

/// The figures of one `/metrics` text that `top` shows, keyed by their labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// `published{sink, route}`: destinations confirmed, by (sink, route).
    pub published: BTreeMap<(String, String), f64>,
    /// `retried{sink, route}`: publish attempts that failed retriably.
    pub retried: BTreeMap<(String, String), f64>,
    /// `received{source}`.
    pub received: BTreeMap<String, f64>,
    /// `dead_lettered{reason}`.
    pub dead_lettered: BTreeMap<String, f64>,
    /// Dead letters that could be written nowhere.
    pub dead_letter_failures: f64,
    pub in_flight: f64,
    pub spool_events: Option<f64>,
    pub spool_bytes: Option<f64>,
    pub spool_max_bytes: Option<f64>,
    pub streams: BTreeMap<String, StreamFigures>,
    /// When the bridge started (Unix seconds).
    pub start_time: Option<f64>,
    pub version: Option<String>,
    /// `receive_to_ack_quantile_seconds{source, quantile="0.99"}`: exact, over the last minute.
    pub receive_p99: BTreeMap<String, f64>,
    /// `publish_latency_quantile_seconds{sink, quantile="0.99"}`.
    pub publish_p99: BTreeMap<String, f64>,
}

impl Figures {
    /// Reads the families `top` knows from `text`; others are ignored, and a family that is
    /// absent stays empty (an older bridge, or a part that is off).
    pub fn parse(text: &str) -> Self {
        let mut f = Self::default();
        for s in prom::samples(text) {
            let Some(name) = s.name.strip_prefix(PREFIX) else {
                continue;
            };
            let label = |k: &str| s.label(k).unwrap_or_default().to_owned();
            let sink_route = || (label("sink"), label("route"));
            match name {
                "published_total" => add(&mut f.published, sink_route(), s.value),
                "retried_total" => add(&mut f.retried, sink_route(), s.value),
                "received_total" => add(&mut f.received, label("source"), s.value),
                "dead_lettered_total" => add(&mut f.dead_lettered, label("reason"), s.value),
                "dead_letter_failures_total" => f.dead_letter_failures = s.value,
                "in_flight" => f.in_flight = s.value,
                "spool_events" => f.spool_events = Some(s.value),
                "spool_bytes" => f.spool_bytes = Some(s.value),
                "spool_max_bytes" => f.spool_max_bytes = Some(s.value),
                "start_time_seconds" => f.start_time = Some(s.value),
                "build_info" => f.version = s.label("version").map(str::to_owned),
                "websocket_connected" => {
                    f.streams.entry(label("client_id")).or_default().connected = s.value >= 1.0;
                }
                "websocket_gaps_total" => {
                    f.streams.entry(label("client_id")).or_default().gaps = s.value
                }
                "receive_to_ack_quantile_seconds" if s.label("quantile") == Some("0.99") => {
                    f.receive_p99.insert(label("source"), s.value);
                }
                "publish_latency_quantile_seconds" if s.label("quantile") == Some("0.99") => {
                    f.publish_p99.insert(label("sink"), s.value);
                }
                "websocket_gap_seconds_total" => {
                    f.streams.entry(label("client_id")).or_default().gap_seconds = s.value;
                }
                _ => {}
            }
        }
        f
    }
}

fn add<K: Ord>(map: &mut BTreeMap<K, f64>, key: K, value: f64) {
    *map.entry(key).or_default() += value;
}

/// A total and its rate per second (`None` until there are two scrapes to compare).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Count {
    pub total: f64,
    pub per_sec: Option<f64>,
}

/// One line of a table: a name, what it delivered (or received) and what it retried.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    /// For a route's line: its sink.
    pub sink: Option<String>,
    pub events: Count,
    pub retries: Count,
    /// p99 latency over the last minute, ms: publish→confirm for a sink, receive→ack for a
    /// source; `None` for routes and while the bridge saw nothing.
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamRow {
    pub client_id: String,
    pub connected: bool,
    pub reconnects: f64,
    pub gap_seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpoolUse {
    pub events: f64,
    pub bytes: f64,
    pub max_bytes: Option<f64>,
}

impl SpoolUse {
    /// Share of `max_bytes` on disk, in percent.
    pub fn percent(&self) -> Option<f64> {
        self.max_bytes
            .filter(|m| *m > 0.0)
            .map(|m| 100.0 * self.bytes / m)
    }
}

/// Everything one screen shows, from the latest scrape and the one before it.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// Per sink, over all routes.
    pub sinks: Vec<Row>,
    /// Per route and sink.
    pub routes: Vec<Row>,
    /// Per source: events received.
    pub sources: Vec<Row>,
    pub dead_letters: Count,
    /// Per reason, totals.
    pub dead_letter_reasons: Vec<(String, f64)>,
    pub dead_letter_failures: f64,
    pub in_flight: f64,
    pub streams: Vec<StreamRow>,
    pub spool: Option<SpoolUse>,
    pub readiness: Option<Readiness>,
    pub uptime: Option<Duration>,
    pub version: Option<String>,
}

/// The scrapes so far: the last good figures, the view made from them, and the last error.
#[derive(Debug, Default)]
pub struct Model {
    last: Option<(Instant, Figures)>,
    view: Option<View>,
    error: Option<String>,
    last_ok: Option<Instant>,
}

impl Model {
    /// Takes one scrape's outcome, made at `at` (`now_unix`: the wall clock then, for uptime).
    /// An error keeps the last view and records the error; the next good scrape clears it.
    pub fn update(&mut self, at: Instant, now_unix: f64, outcome: Result<Scrape, TopError>) {
        let scrape = match outcome {
            Ok(s) => s,
            Err(e) => {
                self.error = Some(e.to_string());
                return;
            }
        };
        let figures = Figures::parse(&scrape.metrics);
        let previous = self.last.as_ref().map(|(t, f)| {
            let secs = at.saturating_duration_since(*t).as_secs_f64();
            (f, secs)
        });
        let view = View::new(&figures, previous, scrape.readiness, now_unix);
        self.view = Some(view);
        self.last = Some((at, figures));
        self.error = None;
        self.last_ok = Some(at);
    }

    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    /// Why the last scrape failed, while no later one succeeded.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// When the last scrape succeeded.
    pub fn last_ok(&self) -> Option<Instant> {
        self.last_ok
    }
}

impl View {
    /// `previous`: the figures of the scrape before and the seconds between the two.
    fn new(
        now: &Figures,
        previous: Option<(&Figures, f64)>,
        readiness: Option<Readiness>,
        now_unix: f64,
    ) -> Self {
        let rate =
            |get: &dyn Fn(&Figures) -> f64| count(get(now), previous.map(|(p, s)| (get(p), s)));
        let sink_names = distinct(now.published.keys().chain(now.retried.keys()).map(|k| &k.0));
        let sinks = sink_names
            .into_iter()
            .map(|sink| Row {
                events: rate(&|f| sum_where(&f.published, |k| k.0 == sink)),
                retries: rate(&|f| sum_where(&f.retried, |k| k.0 == sink)),
                p99_ms: now.publish_p99.get(&sink).map(|s| s * 1e3),
                name: sink,
                sink: None,
            })
            .collect();
        let pairs = distinct(now.published.keys().chain(now.retried.keys()));
        let routes = pairs
            .into_iter()
            .map(|key| Row {
                events: rate(&|f| f.published.get(&key).copied().unwrap_or_default()),
                retries: rate(&|f| f.retried.get(&key).copied().unwrap_or_default()),
                name: key.1,
                sink: Some(key.0),
                p99_ms: None,
            })
            .collect();
        let sources = now
            .received
            .keys()
            .map(|source| Row {
                name: source.clone(),
                sink: None,
                events: rate(&|f| f.received.get(source).copied().unwrap_or_default()),
                retries: Count::default(),
                p99_ms: now.receive_p99.get(source).map(|s| s * 1e3),
            })
            .collect();
        Self {
            sinks,
            routes,
            sources,
            dead_letters: rate(&|f| f.dead_lettered.values().fold(0.0, |a, v| a + v)),
            dead_letter_reasons: now
                .dead_lettered
                .iter()
                .filter(|(_, n)| **n > 0.0)
                .map(|(r, n)| (r.clone(), *n))
                .collect(),
            dead_letter_failures: now.dead_letter_failures,
            in_flight: now.in_flight,
            streams: now
                .streams
                .iter()
                .map(|(id, s)| StreamRow {
                    client_id: id.clone(),
                    connected: s.connected,
                    reconnects: s.gaps,
                    gap_seconds: s.gap_seconds,
                })
                .collect(),
            spool: spool_use(now),
            readiness,
            uptime: now
                .start_time
                .map(|t| Duration::from_secs_f64((now_unix - t).max(0.0))),
            version: now.version.clone(),
        }
    }
}

/// A counter's total and its rate against `previous` (its value then, and the seconds since).
fn count(total: f64, previous: Option<(f64, f64)>) -> Count {
    let per_sec = previous.and_then(|(before, secs)| {
        // A counter that went down was reset (the bridge restarted): all of it is new.
        let delta = if total >= before {
            total - before
        } else {
            total
        };
        (secs > 0.0).then(|| delta / secs)
    });
    Count { total, per_sec }
}

fn sum_where<K>(map: &BTreeMap<K, f64>, wanted: impl Fn(&K) -> bool) -> f64 {
    // A fold from +0.0: an empty `sum` of floats is -0.0, which would show as "-0".
    map.iter()
        .filter(|(k, _)| wanted(k))
        .fold(0.0, |acc, (_, v)| acc + v)
}

fn distinct<'a, T: Ord + Clone + 'a>(items: impl Iterator<Item = &'a T>) -> Vec<T> {
    let mut v: Vec<T> = items.cloned().collect();
    v.sort();
    v.dedup();
    v
}

fn spool_use(f: &Figures) -> Option<SpoolUse> {
    // The spool's gauges exist whether or not a spool runs; a bridge without one never sets
    // its max_bytes.
    let max_bytes = f.spool_max_bytes.filter(|m| *m > 0.0);
    if max_bytes.is_none() && f.spool_bytes.unwrap_or_default() == 0.0 {
        return None;
    }
    Some(SpoolUse {
        events: f.spool_events.unwrap_or_default(),
        bytes: f.spool_bytes.unwrap_or_default(),
        max_bytes,
    })
}

#[cfg(test)]
mod tests;
