//! Observability through the admin port and the logs:
//!
//! - `/metrics` is valid OpenMetrics text (checked by a strict parser below) and its counters match
//!   what the test sent, what was delivered, deduplicated, rejected and dead-lettered;
//! - `/readyz` turns 503 (naming the sink, not its address) while the NATS server behind a sink
//!   is down, and 200 when it is back (the test owns that `nats-server`);
//! - the binary never writes a secret (webhook signing secret, OTLP header token) or a payload to
//!   its logs, even at debug level, and its JSON logs are one JSON object per line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fondo_bridge::app::Bridge;
use fondo_bridge::config::Config;
use fondo_bridge::simulator::webhook_sender::Signer;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

// ---------------------------------------------------------------------------------------------
// a strict OpenMetrics text parser

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: Option<String>,
    samples: Vec<Sample>,
}

#[derive(Debug, Default)]
struct Exposition {
    families: BTreeMap<String, Family>,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s
            .parse::<f64>()
            .map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// `{a="x",b="y"}` → labels; returns the rest of the line after `}`.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, '\n')) => return Err("raw newline in label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err(format!("expected , or }} after a label, got {rest:?}"));
        }
    }
}

/// The suffixes a sample of a family of `kind` may have.
fn suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "gauge" | "unknown" => &[""],
        "histogram" => &["_bucket", "_sum", "_count", "_created"],
        "info" => &["_info"],
        "stateset" => &[""],
        "summary" => &["", "_sum", "_count", "_created"],
        _ => &[],
    }
}

/// Parses OpenMetrics text strictly: `# TYPE` before a family's samples, families contiguous and
/// declared once, sample names matching their family's type, no duplicate series, counters and
/// histogram buckets sane, `# EOF` last.
fn parse_openmetrics(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let mut current: Option<String> = None;
    let mut closed: HashSet<String> = HashSet::new();
    let mut series: HashSet<(String, BTreeMap<String, String>)> = HashSet::new();
    let mut saw_eof = false;
    for (n, line) in text.split('\n').enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if saw_eof {
            if line.is_empty() && n + 1 == text.split('\n').count() {
                continue;
            }
            return Err(at("content after # EOF".into()));
        }
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (kw, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let arg = parts.next();
            if !is_metric_name(name) {
                return Err(at(format!("bad family name {name:?}")));
            }
            if current.as_deref() != Some(name) {
                if let Some(c) = current.take() {
                    closed.insert(c);
                }
                if closed.contains(name) {
                    return Err(at(format!("family {name} is not contiguous")));
                }
                current = Some(name.to_owned());
            }
            let fam = out.families.entry(name.to_owned()).or_default();
            match kw {
                "TYPE" => {
                    let kind = arg.ok_or_else(|| at("TYPE without type".into()))?;
                    if suffixes(kind).is_empty() {
                        return Err(at(format!("unknown type {kind}")));
                    }
                    if !fam.kind.is_empty() || !fam.samples.is_empty() {
                        return Err(at("TYPE twice or after samples".into()));
                    }
                    fam.kind = kind.to_owned();
                }
                "HELP" => {
                    if fam.help.is_some() {
                        return Err(at("HELP twice".into()));
                    }
                    fam.help = Some(arg.unwrap_or("").to_owned());
                }
                "UNIT" => {}
                _ => return Err(at(format!("unknown descriptor {kw}"))),
            }
            continue;
        }
        if line.starts_with('#') {
            return Err(at("comment that is not a descriptor".into()));
        }
        // A sample: name[{labels}] value [timestamp]
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| at("sample without value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(at(format!("bad sample name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before the value".into()))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(at)?;
        if let Some(ts) = fields.next() {
            parse_value(ts).map_err(at)?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields (exemplars are not expected)".into()));
        }
        let family = current
            .clone()
            .ok_or_else(|| at("sample before any # TYPE".into()))?;
        let fam = out.families.get_mut(&family).unwrap();
        if fam.kind.is_empty() {
            return Err(at("sample before its family's # TYPE".into()));
        }
        let suffix = name
            .strip_prefix(family.as_str())
            .ok_or_else(|| at(format!("sample {name} outside family {family}")))?;
        if !suffixes(&fam.kind).contains(&suffix) {
            return Err(at(format!(
                "suffix {suffix:?} not allowed for a {}",
                fam.kind
            )));
        }
        if fam.kind == "counter" && suffix == "_total" && (value.is_nan() || value < 0.0) {
            return Err(at("negative counter".into()));
        }
        if suffix == "_bucket" && !labels.contains_key("le") {
            return Err(at("bucket without le".into()));
        }
        if !series.insert((name.to_owned(), labels.clone())) {
            return Err(at("duplicate series".into()));
        }
        fam.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    if !saw_eof {
        return Err("no # EOF".into());
    }
    // Histograms: cumulative buckets ending in +Inf == _count.
    for (name, fam) in &out.families {
        if fam.kind != "histogram" {
            continue;
        }
        let mut by_series: HashMap<BTreeMap<String, String>, Vec<(f64, f64)>> = HashMap::new();
        let mut counts: HashMap<BTreeMap<String, String>, f64> = HashMap::new();
        for s in &fam.samples {
            let mut key = s.labels.clone();
            if s.name.ends_with("_bucket") {
                let le = parse_value(&key.remove("le").unwrap())?;
                by_series.entry(key).or_default().push((le, s.value));
            } else if s.name.ends_with("_count") {
                counts.insert(key, s.value);
            }
        }
        for (key, buckets) in by_series {
            let mut last = (f64::NEG_INFINITY, 0.0);
            for &(le, v) in &buckets {
                if le <= last.0 || v < last.1 {
                    return Err(format!("{name}{key:?}: buckets not cumulative"));
                }
                last = (le, v);
            }
            if last.0 != f64::INFINITY || Some(&last.1) != counts.get(&key) {
                return Err(format!("{name}{key:?}: +Inf bucket != _count"));
            }
        }
    }
    Ok(out)
}

impl Exposition {
    /// The value of the series `name` whose labels include `labels`, summed over the others.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.families
            .values()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    fn kind(&self, family: &str) -> &str {
        self.families
            .get(family)
            .map(|f| f.kind.as_str())
            .unwrap_or("")
    }
}

#[test]
fn the_parser_refuses_what_is_not_openmetrics() {
    let good = "# TYPE a counter\n# HELP a A.\na_total{x=\"1\"} 2\n# EOF\n";
    assert!(parse_openmetrics(good).is_ok());
    for bad in [
        "a_total 1\n# EOF\n",                                                // no TYPE
        "# TYPE a counter\na_total 1\n",                                     // no EOF
        "# TYPE a counter\na 1\n# EOF\n",                                    // wrong suffix
        "# TYPE a counter\na_total{x=\"1} 1\n# EOF\n",                       // unterminated
        "# TYPE a counter\na_total{1x=\"1\"} 1\n# EOF\n",                    // bad label name
        "# TYPE a counter\na_total -1\n# EOF\n",                             // negative counter
        "# TYPE a counter\na_total 1\na_total 1\n# EOF\n",                   // duplicate series
        "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# TYPE a gauge\n# EOF\n", // not contiguous
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 1\n# EOF\n",
        "# TYPE a gauge\na one\n# EOF\n",
    ] {
        assert!(parse_openmetrics(bad).is_err(), "accepted: {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// helpers

async fn get(url: &str) -> (u16, String, String) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, r.text().await.unwrap())
}

async fn scrape(admin: std::net::SocketAddr) -> Exposition {
    let (status, ct, body) = get(&format!("http://{admin}/metrics")).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    match parse_openmetrics(&body) {
        Ok(e) => e,
        Err(e) => panic!("/metrics is not valid OpenMetrics: {e}\n{body}"),
    }
}

/// Posts one signed webhook; returns the HTTP status.
async fn post(
    http: &reqwest::Client,
    addr: std::net::SocketAddr,
    id: &str,
    body: &str,
    secret: &str,
) -> u16 {
    let signer = Signer::standard(secret).unwrap();
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut req = http
        .post(format!("http://{addr}/fondo/webhooks/callback"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (k, v) in signer.headers(id, ts, body.as_bytes()) {
        req = req.header(k, v);
    }
    req.send().await.unwrap().status().as_u16()
}

fn load(dir: &std::path::Path, yaml: &str) -> Config {
    let path = dir.join("bridge.yaml");
    std::fs::write(&path, yaml).unwrap();
    match Config::load(&path) {
        Ok(c) => c,
        Err(e) => panic!("config: {:?}", e.problems()),
    }
}

// ---------------------------------------------------------------------------------------------
// counters match what happened

/// Sends orders (delivered), accounts (no route: dead-lettered), redeliveries (deduplicated) and
/// a badly signed request (rejected); every counter says exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_openmetrics_and_count_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = load(
        dir.path(),
        &format!(
            r#"
sources:
  webhook:
    listen: 127.0.0.1:0
    signature: {{ scheme: standard-webhooks, secrets: ["{SECRET}"] }}
sinks:
  files: {{ type: file, dir: {dir}/out, fsync: never }}
routes:
  - {{ name: orders, match: ["order.*"], to: [{{ sink: files, topic: "fondo.{{entity}}" }}] }}
event: {{ id_header: webhook-id }}
dead_letter: {{ fallback_file: {dir}/dead-letter.jsonl }}
admin: {{ listen: 127.0.0.1:0 }}
"#,
            dir = dir.path().display()
        ),
    );
    let bridge = Bridge::start(cfg).await.expect("bridge starts");
    let (admin, webhook) = (bridge.admin_addr.unwrap(), bridge.webhook_addr.unwrap());

    // Before anything: valid, zero, build info present.
    let m = scrape(admin).await;
    assert_eq!(m.kind("fondo_bridge_build"), "info");
    assert_eq!(
        m.sum(
            "fondo_bridge_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(m.sum("fondo_bridge_received_total", &[]), 0.0);

    let http = reqwest::Client::new();
    let order = |i: usize| format!(r#"{{"eventType":"order.update","current":{{"id":"o-{i}"}}}}"#);
    let account =
        |i: usize| format!(r#"{{"eventType":"account.update","current":{{"id":"a-{i}"}}}}"#);
    for i in 0..5 {
        assert_eq!(
            post(&http, webhook, &format!("msg_o{i}"), &order(i), SECRET).await,
            200
        );
    }
    for i in 0..3 {
        assert_eq!(
            post(&http, webhook, &format!("msg_a{i}"), &account(i), SECRET).await,
            200
        );
    }
    // Fondo retries two orders: deduplicated.
    for i in 0..2 {
        assert_eq!(
            post(&http, webhook, &format!("msg_o{i}"), &order(i), SECRET).await,
            200
        );
    }
    // Signed with another secret: rejected before it is an event.
    let other = "whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQQ==";
    let st = post(&http, webhook, "msg_bad", &order(99), other).await;
    assert!((400..500).contains(&st), "bad signature refused: {st}");

    let m = scrape(admin).await;
    let w = [("source", "webhook")];
    assert_eq!(m.kind("fondo_bridge_received"), "counter");
    assert_eq!(m.sum("fondo_bridge_received_total", &w), 10.0);
    assert_eq!(
        m.sum(
            "fondo_bridge_published_total",
            &[("sink", "files"), ("route", "orders")]
        ),
        5.0
    );
    assert_eq!(m.sum("fondo_bridge_published_total", &[]), 5.0);
    assert_eq!(m.sum("fondo_bridge_deduplicated_total", &w), 2.0);
    assert_eq!(m.sum("fondo_bridge_unmatched_total", &[]), 3.0);
    assert_eq!(
        m.sum(
            "fondo_bridge_dead_lettered_total",
            &[("reason", "unmatched")]
        ),
        3.0
    );
    assert_eq!(m.sum("fondo_bridge_dead_lettered_total", &[]), 3.0);
    assert_eq!(m.sum("fondo_bridge_rejected_total", &w), 1.0);
    assert_eq!(m.sum("fondo_bridge_retried_total", &[]), 0.0);
    assert_eq!(
        m.sum(
            "fondo_bridge_acked_total",
            &[("source", "webhook"), ("reason", "delivered")]
        ),
        10.0
    );
    assert_eq!(m.kind("fondo_bridge_publish_latency_seconds"), "histogram");
    assert_eq!(
        m.sum(
            "fondo_bridge_publish_latency_seconds_count",
            &[("sink", "files")]
        ),
        5.0
    );
    assert_eq!(m.sum("fondo_bridge_receive_to_ack_seconds_count", &w), 10.0);
    // The exact quantiles over the rolling window, of the same events.
    assert_eq!(
        m.kind("fondo_bridge_receive_to_ack_quantile_seconds"),
        "gauge"
    );
    assert_eq!(m.sum("fondo_bridge_receive_to_ack_window_count", &w), 10.0);
    assert_eq!(
        m.sum(
            "fondo_bridge_publish_latency_window_count",
            &[("sink", "files")]
        ),
        5.0
    );
    for (family, labels) in [
        ("fondo_bridge_receive_to_ack", ("source", "webhook")),
        ("fondo_bridge_publish_latency", ("sink", "files")),
    ] {
        let q = |quantile: &str| {
            m.sum(
                &format!("{family}_quantile_seconds"),
                &[labels, ("quantile", quantile)],
            )
        };
        let (p50, p99, p999) = (q("0.5"), q("0.99"), q("0.999"));
        assert!(
            0.0 < p50 && p50 <= p99 && p99 <= p999,
            "{family}: {p50} {p99} {p999}"
        );
        // Every value lies at or below the first bucket that holds them all, and above the
        // last bucket that holds none (HdrHistogram: within 0.1 %).
        let buckets: Vec<(f64, f64)> = m.families[&format!("{family}_seconds")]
            .samples
            .iter()
            .filter(|s| {
                s.name.ends_with("_bucket")
                    && s.labels.get(labels.0).map(String::as_str) == Some(labels.1)
            })
            .filter_map(|s| Some((s.labels.get("le")?.parse::<f64>().ok()?, s.value)))
            .collect();
        let total = buckets.iter().map(|b| b.1).fold(0.0, f64::max);
        let all_below = buckets
            .iter()
            .filter(|b| b.1 >= total)
            .map(|b| b.0)
            .fold(f64::INFINITY, f64::min);
        let none_below = buckets
            .iter()
            .filter(|b| b.1 == 0.0)
            .map(|b| b.0)
            .fold(0.0, f64::max);
        assert!(
            p999 <= all_below * 1.001 && p50 >= none_below * 0.999,
            "{family}: quantiles {p50}..{p999} outside the histogram's ({none_below}, {all_below}]"
        );
    }
    assert_eq!(m.kind("fondo_bridge_in_flight"), "gauge");
    assert_eq!(m.sum("fondo_bridge_in_flight", &[]), 0.0);
    // Every family follows the naming conventions.
    for (name, fam) in &m.families {
        assert!(name.starts_with("fondo_bridge_"), "{name}");
        assert!(fam.help.is_some(), "{name} has HELP");
        if fam.kind == "histogram" {
            assert!(
                name.ends_with("_seconds"),
                "{name}: histograms are in seconds"
            );
        }
    }
    bridge.shutdown().await.unwrap();
}

/// Retries and dead letters from a failing sink, counted per sink and route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_fatal_failures_are_counted_per_sink_and_route() {
    use fondo_bridge::config::{DestinationConfig, RouteConfig, Unmatched};
    use fondo_bridge::dispatch::{Dispatcher, DispatcherParts, RetryPolicy};
    use fondo_bridge::dlq::DeadLetterWriter;
    use fondo_bridge::event::{
        AckHandle, AckStatus, Envelope, Event, ParseContext, ParseOptions, SourceKind,
    };
    use fondo_bridge::metrics::Metrics;
    use fondo_bridge::router::Router;
    use fondo_bridge::sinks::DynSink;
    use fondo_bridge::sinks::testing::{Faults, TestSink};

    let dir = tempfile::tempdir().unwrap();
    let flaky: DynSink = Arc::new(TestSink::new(
        "flaky",
        Faults {
            fail_first: 2,
            fatal_topics: vec!["gone".into()],
            ..Faults::default()
        },
    ));
    let routes = vec![RouteConfig {
        name: "orders".into(),
        matches: vec!["order.*".into()],
        filter: Default::default(),
        redact: vec![],
        to: vec![
            DestinationConfig {
                sink: "flaky".into(),
                topic: "ok".into(),
                key: None,
                headers: Default::default(),
                ..Default::default()
            },
            DestinationConfig {
                sink: "flaky".into(),
                topic: "gone".into(),
                key: None,
                headers: Default::default(),
                ..Default::default()
            },
        ],
    }];
    let router = Router::compile_routes(&routes, Unmatched::DeadLetter, |s| s == "flaky").unwrap();
    let metrics = Arc::new(Metrics::new());
    let d = Dispatcher::start(DispatcherParts {
        router,
        sinks: [("flaky".to_owned(), flaky)].into(),
        dead_letters: Arc::new(DeadLetterWriter::new(
            None,
            "dl".into(),
            1,
            dir.path().join("dl.jsonl"),
            metrics.clone(),
        )),
        policy: RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
            max_elapsed: None,
        },
        max_in_flight: 10,
        identity: fondo_bridge::dispatch::IdentityConfig::default(),
        metrics: metrics.clone(),
    });
    for i in 0..3 {
        let raw = format!(r#"{{"eventType":"order.create","current":{{"id":"o{i}"}}}}"#);
        let e = Event::parse(
            Bytes::from(raw),
            &ParseOptions::default(),
            &ParseContext::default(),
        )
        .unwrap();
        let (ack, rx) = AckHandle::new();
        d.submit(Envelope::new(e, ack, SourceKind::WebSocket))
            .await
            .map_err(|_| "submit")
            .unwrap();
        assert_eq!(rx.wait().await, AckStatus::Delivered);
    }
    let m = parse_openmetrics(&metrics.encode()).unwrap();
    let sr = [("sink", "flaky"), ("route", "orders")];
    assert_eq!(m.sum("fondo_bridge_retried_total", &sr), 6.0, "2 per event");
    assert_eq!(m.sum("fondo_bridge_published_total", &sr), 3.0);
    assert_eq!(
        m.sum("fondo_bridge_dead_lettered_total", &[("reason", "fatal")]),
        3.0
    );
    assert_eq!(
        m.sum("fondo_bridge_received_total", &[("source", "websocket")]),
        3.0
    );
}

// ---------------------------------------------------------------------------------------------
// readiness follows the broker

struct Nats {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nats {
    fn start() -> Self {
        let mut n = Self {
            child: None,
            port: common::free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        n.up();
        n
    }

    fn up(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on PATH");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            // Poll interval of this blocking wait (a plain fn) for nats-server to listen.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `/readyz` until its status is `want`; returns the body.
async fn ready_becomes(admin: std::net::SocketAddr, want: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (status, _, body) = get(&format!("http://{admin}/readyz")).await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {status} (wanted {want}) for {within:?}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_a_sinks_broker_is_down_and_200_when_back() {
    if Command::new("nats-server")
        .arg("--version")
        .output()
        .is_err()
    {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "nats-server is not installed and CI=true");
        eprintln!("\n!!! SKIPPING: nats-server is not on PATH\n");
        return;
    }
    let mut nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = load(
        dir.path(),
        &format!(
            r#"
sources:
  webhook:
    listen: 127.0.0.1:0
    signature: {{ scheme: standard-webhooks, secrets: ["{SECRET}"] }}
sinks:
  bus:
    type: nats
    url: nats://127.0.0.1:{port}
    connect_timeout_ms: 3000
    confirm_timeout_ms: 1000
    reconnect_wait_ms: 500
    reconnect_max_ms: 200
    ping_interval_ms: 1000
    streams: [{{ name: OBS, subjects: ["obs.>"], storage: file }}]
  files: {{ type: file, dir: {dir}/out, fsync: never }}
routes:
  - {{ name: orders, match: ["order.*"], to: [{{ sink: bus, topic: "obs.{{entity}}" }}] }}
event: {{ id_header: webhook-id }}
dead_letter: {{ fallback_file: {dir}/dead-letter.jsonl }}
admin: {{ listen: 127.0.0.1:0 }}
"#,
            port = nats.port,
            dir = dir.path().display()
        ),
    );
    let bridge = Bridge::start(cfg).await.expect("bridge starts");
    let admin = bridge.admin_addr.unwrap();

    let body = ready_becomes(admin, 200, Duration::from_secs(10)).await;
    assert!(body.contains("webhook: ok"), "{body}");
    assert!(body.contains("sink:bus: ok"), "{body}");
    assert!(body.contains("sink:files: ok"), "{body}");

    nats.kill();
    let body = ready_becomes(admin, 503, Duration::from_secs(10)).await;
    let bus = body
        .lines()
        .find(|l| l.starts_with("sink:bus:"))
        .unwrap_or_else(|| panic!("body names the sink: {body}"));
    assert!(!bus.ends_with(": ok"), "{body}");
    assert!(bus.contains("not connected"), "{body}");
    // From the state the sink keeps: no broker address in the body.
    assert!(
        !body.contains("127.0.0.1") && !body.contains(&nats.port.to_string()),
        "/readyz shows no broker address: {body}"
    );
    assert!(
        body.contains("sink:files: ok"),
        "the healthy sink still says ok: {body}"
    );
    assert!(body.contains("webhook: ok"), "{body}");

    nats.up();
    let body = ready_becomes(admin, 200, Duration::from_secs(20)).await;
    assert!(body.contains("sink:bus: ok"), "{body}");

    // And during shutdown it says so.
    bridge.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// logs: no secrets, no payloads, JSON when asked

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_logs_never_contain_secrets_or_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let (webhook, admin) = (common::free_port(), common::free_port());
    let otlp_token = "otlp-token-7Jx9QpZr2sLw";
    let header_token = "cfg-header-token-Vb3nM8kT";
    let payload_marker = "PAYLOAD-MARKER-c0ffee-4242";
    std::fs::write(
        dir.path().join("bridge.yaml"),
        format!(
            r#"
sources:
  webhook:
    listen: 127.0.0.1:{webhook}
    signature: {{ scheme: standard-webhooks }}
sinks:
  files: {{ type: file, dir: {dir}/out, fsync: never }}
routes:
  - {{ name: orders, match: ["order.*"], to: [{{ sink: files, topic: "fondo.{{entity}}" }}] }}
event: {{ id_header: webhook-id }}
dead_letter: {{ fallback_file: {dir}/dead-letter.jsonl }}
admin: {{ listen: 127.0.0.1:{admin} }}
telemetry: {{ log_format: json }}
"#,
            dir = dir.path().display()
        ),
    )
    .unwrap();
    // An OTLP endpoint nobody listens on: export fails, and must not log the header either.
    let dead = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fondo-bridge"))
        .args(["run", "--config"])
        .arg(dir.path().join("bridge.yaml"))
        .env(
            "FONDO_BRIDGE__SOURCES__WEBHOOK__SIGNATURE__SECRETS",
            format!("[\"{SECRET}\"]"),
        )
        .env(
            "FONDO_BRIDGE__TELEMETRY__HEADERS__AUTHORIZATION",
            format!("Bearer {header_token}"),
        )
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            format!("authorization=Bearer%20{otlp_token}"),
        )
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{dead}"),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    common::eventually_async(
        "the bridge's /readyz to answer 2xx",
        Duration::from_secs(30),
        || async {
            reqwest::get(format!("http://{admin_addr}/readyz"))
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;
    let http = reqwest::Client::new();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{webhook}").parse().unwrap();
    let body = format!(
        r#"{{"eventType":"order.update","current":{{"id":"o-1","note":"{payload_marker}"}}}}"#
    );
    assert_eq!(post(&http, addr, "msg_1", &body, SECRET).await, 200);
    // Unroutable and badly signed requests log their reasons; neither may log the body.
    let unmatched = format!(
        r#"{{"eventType":"account.update","current":{{"id":"a-1","note":"{payload_marker}"}}}}"#
    );
    assert_eq!(post(&http, addr, "msg_2", &unmatched, SECRET).await, 200);
    let other = "whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQQ==";
    let st = post(&http, addr, "msg_3", &body, other).await;
    assert!((400..500).contains(&st));
    let st = http
        .post(format!("http://{addr}/fondo/webhooks/callback"))
        .body(format!("not json {payload_marker}"))
        .send()
        .await
        .unwrap()
        .status();
    assert!(st.is_client_error());
    // Lets the span exporter (every 100 ms) try and fail a few exports to the dead endpoint, so
    // that a header leaking into its error log would be caught below.
    tokio::time::sleep(Duration::from_millis(400)).await;

    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let log = log.join().unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.lines().count() > 3,
        "the bridge logged something:\n{log}"
    );
    let key = SECRET.trim_start_matches("whsec_");
    for secret in [SECRET, key, otlp_token, header_token] {
        assert!(
            !log.contains(secret),
            "a secret ({}…) is in the log:\n{log}",
            &secret[..6]
        );
    }
    assert!(
        !log.contains(payload_marker),
        "payload content is in the log at debug level:\n{log}"
    );
    for line in log.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.is_object()),
            "log_format json: every line is a JSON object: {line}"
        );
    }
}
