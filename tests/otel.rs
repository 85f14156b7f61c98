//! Traces end to end, against OTLP receivers that live in this test (no collector is needed):
//!
//! - an OTLP/gRPC receiver (`opentelemetry-proto` + `tonic`) gets the spans of an event's path from
//!   an in-process dispatcher: the event span, a child `publish` span per attempt with the
//!   OpenTelemetry messaging attributes, `retry` and `dead_letter` spans;
//! - an incoming W3C `traceparent` is continued (same trace id, the event span's parent is the
//!   caller's span) and `tracestate` is kept;
//! - the `traceparent` of a message read back from real Kafka, RabbitMQ and NATS JetStream brokers
//!   names the publish span that sent it;
//! - the real binary exports over OTLP/HTTP configured only through `OTEL_*` variables, sends the
//!   configured headers, and flushes its spans on SIGTERM.
//!
//! One process-wide subscriber exports to one receiver; tests tell their spans apart by trace id.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fondo_bridge::config::{DestinationConfig, OtlpProtocol, RouteConfig, TelemetryConfig};
use fondo_bridge::dispatch::Dispatcher;
use fondo_bridge::event::{
    AckHandle, AckStatus, Envelope, Event, ParseContext, ParseOptions, SourceKind, TraceContext,
};
use fondo_bridge::metrics::Metrics;
use fondo_bridge::sinks::testing::{Faults, TestSink};
use fondo_bridge::sinks::{DynSink, Message, headers};
use fondo_bridge::telemetry::Telemetry;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

// ---------------------------------------------------------------------------------------------
// the receiver

/// One received span with its resource's `service.name`.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    span: ProtoSpan,
}

impl Got {
    fn trace_id(&self) -> String {
        hex::encode(&self.span.trace_id)
    }
    fn span_id(&self) -> String {
        hex::encode(&self.span.span_id)
    }
    fn parent_id(&self) -> String {
        hex::encode(&self.span.parent_span_id)
    }
    fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
            .map(|v| match v {
                AnyValue::StringValue(s) => s.clone(),
                AnyValue::IntValue(i) => i.to_string(),
                AnyValue::BoolValue(b) => b.to_string(),
                AnyValue::DoubleValue(d) => d.to_string(),
                other => format!("{other:?}"),
            })
    }
    fn status(&self) -> i32 {
        self.span.status.as_ref().map(|s| s.code).unwrap_or(0)
    }
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Got>>>,
    /// Request metadata/headers seen (lower-case name → value).
    headers: Arc<Mutex<Vec<(String, String)>>>,
}

impl Collector {
    fn add(&self, req: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(AnyValue::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(Got {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
    }

    fn trace(&self, trace_id: &str) -> Vec<Got> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.trace_id() == trace_id)
            .cloned()
            .collect()
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        {
            let mut h = self.headers.lock().unwrap();
            for (k, v) in req.metadata().clone().into_headers().iter() {
                h.push((k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()));
            }
        }
        self.add(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn serve_grpc(collector: Collector, listener: tokio::net::TcpListener) {
    let incoming = futures::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| s);
        Some((conn, l))
    });
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector))
        .serve_with_incoming(incoming)
        .await
        .unwrap();
}

/// An OTLP/HTTP (protobuf) receiver: `POST /v1/traces`.
async fn serve_http(collector: Collector, listener: tokio::net::TcpListener) {
    use axum::http::HeaderMap;
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |hm: HeaderMap, body: Bytes| {
            let c = collector.clone();
            async move {
                {
                    let mut h = c.headers.lock().unwrap();
                    for (k, v) in &hm {
                        h.push((k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()));
                    }
                }
                match <ExportTraceServiceRequest as prost::Message>::decode(body) {
                    Ok(req) => {
                        c.add(req);
                        (
                            axum::http::StatusCode::OK,
                            [("content-type", "application/x-protobuf")],
                            Vec::new(),
                        )
                    }
                    Err(_) => (
                        axum::http::StatusCode::BAD_REQUEST,
                        [("content-type", "text/plain")],
                        b"not an ExportTraceServiceRequest".to_vec(),
                    ),
                }
            }
        }),
    );
    axum::serve(listener, app).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// the process-wide exporter

struct Harness {
    collector: Collector,
    telemetry: Telemetry,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

/// The receiver and the global subscriber, started once on a runtime of their own (the gRPC
/// exporter's connection lives there, so it outlives every test's runtime).
fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let collector = Collector::default();
                tokio::spawn(serve_grpc(collector.clone(), listener));
                let telemetry = fondo_bridge::telemetry::init(&TelemetryConfig {
                    otlp_endpoint: Some(format!("http://{addr}")),
                    protocol: Some(OtlpProtocol::Grpc),
                    headers: [(
                        "x-otlp-test".to_owned(),
                        fondo_bridge::config::Secret("grpc-header-value".into()),
                    )]
                    .into(),
                    sampling_ratio: Some(1.0),
                    log_level: "warn".into(),
                    service_name: "fondo-bridge-otel-test".into(),
                    ..TelemetryConfig::default()
                });
                assert!(telemetry.traces_enabled(), "trace export is set up");
                tx.send((collector, telemetry)).unwrap();
                std::future::pending::<()>().await;
            });
        });
        let (collector, telemetry) = rx.recv().unwrap();
        Harness {
            collector,
            telemetry,
        }
    })
}

/// Flushes and waits until the spans of `trace_id` satisfy `done`; returns them.
async fn wait_trace(trace_id: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
    let h = harness();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        tokio::task::spawn_blocking(|| harness().telemetry.force_flush())
            .await
            .unwrap()
            .unwrap();
        let spans = h.collector.trace(trace_id);
        if done(&spans) {
            return spans;
        }
        if Instant::now() > deadline {
            panic!(
                "spans of trace {trace_id} incomplete after 20s: {:#?}",
                spans
                    .iter()
                    .map(|g| (g.span.name.clone(), g.span_id(), g.parent_id()))
                    .collect::<Vec<_>>()
            );
        }
        // Poll interval (this wait's failure message lists the spans that did arrive).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn named<'a>(spans: &'a [Got], name: &str) -> Vec<&'a Got> {
    spans.iter().filter(|g| g.span.name == name).collect()
}

fn one<'a>(spans: &'a [Got], name: &str) -> &'a Got {
    let v = named(spans, name);
    assert_eq!(v.len(), 1, "exactly one span {name}: {spans:#?}");
    v[0]
}

// ---------------------------------------------------------------------------------------------
// a dispatcher

fn route(name: &str, matches: &[&str], sink: &str, topic: &str) -> RouteConfig {
    RouteConfig {
        name: name.into(),
        matches: matches.iter().map(|s| s.to_string()).collect(),
        filter: Default::default(),
        redact: vec![],
        to: vec![DestinationConfig {
            sink: sink.into(),
            topic: topic.into(),
            key: None,
            headers: Default::default(),
            ..Default::default()
        }],
    }
}

struct Rig {
    d: Dispatcher,
    metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

fn rig(routes: Vec<RouteConfig>, sinks: Vec<(&str, DynSink)>, max_attempts: u32) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let d = sinks
        .into_iter()
        .fold(
            common::rig::DispatcherRig::new(dir.path().join("dead-letter.jsonl")),
            |rig, (n, s)| rig.sink(n, s),
        )
        .routes(routes)
        .max_attempts(max_attempts)
        .max_in_flight(100)
        .start(&metrics);
    Rig {
        d,
        metrics,
        _dir: dir,
    }
}

const CLIENT: &str = "49ad7378-121c-4a53-9894-dfd14a7b4877";

fn event(t: &str, id: &str) -> Event {
    let raw = format!(r#"{{"eventType":"{t}","current":{{"id":"{id}","seq":1}}}}"#);
    Event::parse(
        Bytes::from(raw),
        &ParseOptions::default(),
        &ParseContext {
            client_id: Some(CLIENT),
            ..Default::default()
        },
    )
    .unwrap()
}

async fn send(d: &Dispatcher, e: Event, source: SourceKind, trace: TraceContext) -> AckStatus {
    let (ack, rx) = AckHandle::new();
    let mut env = Envelope::new(e, ack, source);
    env.trace = trace;
    d.submit(env).await.map_err(|_| "submit failed").unwrap();
    tokio::time::timeout(Duration::from_secs(30), rx.wait())
        .await
        .expect("acknowledged within 30s")
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect()
}

/// `(trace id, parent span id)` of a `traceparent` value.
fn parse_traceparent(tp: &str) -> (String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {tp:?}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1].len(), 32);
    assert_eq!(parts[2].len(), 16);
    (parts[1].to_owned(), parts[2].to_owned())
}

fn header<'a>(m: &'a Message, name: &str) -> &'a str {
    m.header(name)
        .unwrap_or_else(|| panic!("message has no {name} header: {:?}", m.headers))
}

// ---------------------------------------------------------------------------------------------
// spans of the event path

/// An event arriving with a W3C `traceparent`: its span continues the caller's trace; the publish
/// span is its child, carries the messaging attributes, and is what the message's `traceparent`
/// names; `tracestate` is handed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_traceparent_is_continued_and_publish_span_is_in_the_message() {
    let h = harness();
    let sink = Arc::new(TestSink::new("ledger", Faults::default()));
    let rig = rig(
        vec![route("orders", &["order.*"], "ledger", "fondo.{entity}")],
        vec![("ledger", sink.clone() as DynSink)],
        3,
    );
    let (tid, caller) = (random_hex(16), random_hex(8));
    let e = event("order.update", "o-1");
    let event_id = e.event_id.to_string();
    let status = send(
        &rig.d,
        e,
        SourceKind::Webhook,
        TraceContext {
            traceparent: Some(format!("00-{tid}-{caller}-01")),
            tracestate: Some("fondo=t61rcwz,congo=lZWRzIHRoNhcm5hbCBwbGVhc3VyZS4".into()),
        },
    )
    .await;
    assert_eq!(status, AckStatus::Delivered);

    let msg = sink.delivered().pop().expect("delivered");
    assert_eq!(
        msg.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(headers::TRACEPARENT))
            .count(),
        1,
        "one traceparent: the incoming one is replaced, not duplicated: {:?}",
        msg.headers
    );
    let (msg_tid, msg_parent) = parse_traceparent(header(&msg, headers::TRACEPARENT));
    assert_eq!(msg_tid, tid, "the message continues the incoming trace");
    assert_ne!(
        msg_parent, caller,
        "the message names our span, not the caller's"
    );
    assert_eq!(
        header(&msg, headers::TRACESTATE),
        "fondo=t61rcwz,congo=lZWRzIHRoNhcm5hbCBwbGVhc3VyZS4"
    );

    let spans = wait_trace(&tid, |s| {
        !named(s, "process order.update").is_empty() && !named(s, "send fondo.order").is_empty()
    })
    .await;
    let ev = one(&spans, "process order.update");
    let publish = one(&spans, "send fondo.order");
    assert_eq!(
        ev.parent_id(),
        caller,
        "event span's parent is the caller's span"
    );
    assert_eq!(ev.span.kind, SpanKind::Consumer as i32);
    assert_eq!(ev.service, "fondo-bridge-otel-test");
    assert_eq!(ev.attr("fondo.source").as_deref(), Some("webhook"));
    assert_eq!(ev.attr("fondo.client_id").as_deref(), Some(CLIENT));
    assert_eq!(ev.attr("fondo.event_type").as_deref(), Some("order.update"));
    assert_eq!(
        ev.attr("fondo.event_id").as_deref(),
        Some(event_id.as_str())
    );
    assert_eq!(ev.attr("fondo.outcome").as_deref(), Some("delivered"));

    assert_eq!(
        publish.parent_id(),
        ev.span_id(),
        "publish is a child of the event span"
    );
    assert_eq!(
        publish.span_id(),
        msg_parent,
        "the message names the publish span"
    );
    assert_eq!(publish.span.kind, SpanKind::Producer as i32);
    assert_eq!(publish.attr("messaging.system").as_deref(), Some("test"));
    assert_eq!(
        publish.attr("messaging.destination.name").as_deref(),
        Some("fondo.order")
    );
    assert_eq!(
        publish.attr("messaging.operation.type").as_deref(),
        Some("send")
    );
    assert_eq!(
        publish.attr("messaging.message.id").as_deref(),
        Some(event_id.as_str())
    );
    assert_eq!(publish.attr("fondo.sink").as_deref(), Some("ledger"));
    assert_eq!(publish.attr("fondo.route").as_deref(), Some("orders"));
    assert_ne!(publish.status(), StatusCode::Error as i32);
    // The event span lasts until the acknowledgement, so it encloses the publish.
    assert!(ev.span.start_time_unix_nano <= publish.span.start_time_unix_nano);
    assert!(ev.span.end_time_unix_nano >= publish.span.end_time_unix_nano);

    // The gRPC exporter sent the configured header.
    assert!(
        h.collector
            .headers
            .lock()
            .unwrap()
            .iter()
            .any(|(k, v)| k == "x-otlp-test" && v == "grpc-header-value"),
        "configured OTLP header arrives as gRPC metadata"
    );
    assert_eq!(rig.metrics.delivered_total(), 1);
}

/// Without an incoming context the event span starts a trace; failed attempts are error spans,
/// each retry and the dead letter have their own span, and the outcome says dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_dead_letters_have_spans_and_a_new_trace_starts_without_traceparent() {
    harness();
    let flaky = Arc::new(TestSink::new(
        "flaky",
        Faults {
            fail_first: 2,
            ..Faults::default()
        },
    ));
    let broken = Arc::new(TestSink::new(
        "broken",
        Faults {
            fatal_topics: vec!["gone".into()],
            ..Faults::default()
        },
    ));
    let mut r = route("orders", &["order.*"], "flaky", "fondo.{entity}");
    r.to.push(DestinationConfig {
        sink: "broken".into(),
        topic: "gone".into(),
        key: None,
        headers: Default::default(),
        ..Default::default()
    });
    let rig = rig(
        vec![r],
        vec![
            ("flaky", flaky.clone() as DynSink),
            ("broken", broken.clone() as DynSink),
        ],
        5,
    );
    let status = send(
        &rig.d,
        event("order.create", "o-2"),
        SourceKind::WebSocket,
        TraceContext::default(),
    )
    .await;
    assert_eq!(
        status,
        AckStatus::Delivered,
        "dead letter written: acknowledged"
    );
    let msg = flaky.delivered().pop().expect("delivered after retries");
    let (tid, parent) = parse_traceparent(header(&msg, headers::TRACEPARENT));

    let spans = wait_trace(&tid, |s| {
        named(s, "send fondo.order").len() == 3
            && named(s, "retry").len() == 2
            && !named(s, "dead_letter").is_empty()
            && named(s, "process order.create")
                .iter()
                .any(|e| e.attr("fondo.outcome").is_some())
    })
    .await;
    let ev = one(&spans, "process order.create");
    assert_eq!(
        ev.parent_id(),
        "",
        "a new trace: the event span is the root"
    );
    assert_eq!(ev.attr("fondo.source").as_deref(), Some("websocket"));
    assert_eq!(ev.attr("fondo.outcome").as_deref(), Some("dead_lettered"));

    let mut attempts = named(&spans, "send fondo.order");
    attempts.sort_by_key(|g| g.attr("fondo.attempt").unwrap().parse::<u32>().unwrap());
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a.parent_id(), ev.span_id());
        assert_eq!(a.attr("fondo.attempt"), Some((i + 1).to_string()));
    }
    assert_eq!(attempts[0].status(), StatusCode::Error as i32);
    assert_eq!(attempts[0].attr("error.type").as_deref(), Some("retriable"));
    assert_eq!(attempts[1].status(), StatusCode::Error as i32);
    assert_ne!(attempts[2].status(), StatusCode::Error as i32);
    assert_eq!(
        attempts[2].span_id(),
        parent,
        "the delivered message names the attempt that succeeded"
    );
    for r in named(&spans, "retry") {
        assert_eq!(r.parent_id(), ev.span_id());
        assert_eq!(r.attr("fondo.sink").as_deref(), Some("flaky"));
    }

    let fatal = one(&spans, "send gone");
    assert_eq!(fatal.status(), StatusCode::Error as i32);
    assert_eq!(fatal.attr("error.type").as_deref(), Some("fatal"));
    let dl = one(&spans, "dead_letter");
    assert_eq!(dl.parent_id(), ev.span_id());
    assert_eq!(dl.attr("fondo.reason_kind").as_deref(), Some("fatal"));
    assert_eq!(dl.attr("fondo.sink").as_deref(), Some("broken"));
    assert_eq!(dl.attr("fondo.written").as_deref(), Some("true"));
    assert_eq!(dl.status(), StatusCode::Error as i32);
}

/// An invalid incoming `traceparent` is ignored (a new trace starts), and a duplicate of a
/// delivered event gets an event span with outcome `duplicate` and no publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_traceparent_starts_a_new_trace_and_duplicates_are_marked() {
    harness();
    let sink = Arc::new(TestSink::new("s", Faults::default()));
    let rig = rig(
        vec![route("all", &["*"], "s", "t")],
        vec![("s", sink.clone() as DynSink)],
        3,
    );
    let bad = TraceContext {
        traceparent: Some("00-00000000000000000000000000000000-0000000000000000-01".into()),
        tracestate: None,
    };
    let e = event("account.update", "a-1");
    assert_eq!(
        send(&rig.d, e.clone(), SourceKind::Webhook, bad.clone()).await,
        AckStatus::Delivered
    );
    let msg = sink.delivered().pop().unwrap();
    let (tid, _) = parse_traceparent(header(&msg, headers::TRACEPARENT));
    assert_ne!(tid, "0".repeat(32));
    let spans = wait_trace(&tid, |s| !named(s, "process account.update").is_empty()).await;
    assert_eq!(one(&spans, "process account.update").parent_id(), "");

    // The same event again, continuing a valid trace: deduplicated, not published.
    let tid2 = random_hex(16);
    let again = TraceContext {
        traceparent: Some(format!("00-{tid2}-{}-01", random_hex(8))),
        tracestate: None,
    };
    assert_eq!(
        send(&rig.d, e, SourceKind::Webhook, again).await,
        AckStatus::Delivered
    );
    assert_eq!(sink.delivered().len(), 1);
    let spans = wait_trace(&tid2, |s| !named(s, "process account.update").is_empty()).await;
    let ev = one(&spans, "process account.update");
    assert_eq!(ev.attr("fondo.outcome").as_deref(), Some("duplicate"));
    assert!(named(&spans, "send t").is_empty());
}

// ---------------------------------------------------------------------------------------------
// real brokers: the traceparent read back names the publish span

/// Submits one event continuing `tid` to `sink` (topic `topic`), and returns the publish span.
async fn publish_through(sink: DynSink, system: &str, topic: &str, tid: &str) -> Got {
    let name = sink.name().to_owned();
    let rig = rig(
        vec![route("r", &["order.*"], &name, topic)],
        vec![(&name, sink)],
        3,
    );
    let status = send(
        &rig.d,
        event("order.update", &common::unique("o")),
        SourceKind::Webhook,
        TraceContext {
            traceparent: Some(format!("00-{tid}-{}-01", random_hex(8))),
            tracestate: None,
        },
    )
    .await;
    assert_eq!(status, AckStatus::Delivered);
    rig.d
        .shutdown(Instant::now() + Duration::from_secs(5))
        .await;
    let span_name = format!("send {topic}");
    let spans = wait_trace(tid, |s| !named(s, &span_name).is_empty()).await;
    let p = one(&spans, &span_name).clone();
    assert_eq!(p.attr("messaging.system").as_deref(), Some(system));
    assert_eq!(p.attr("messaging.destination.name").as_deref(), Some(topic));
    p
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_message_carries_the_publish_span_context() {
    use rdkafka::ClientConfig;
    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers as _;

    let Some(brokers) = common::broker("KAFKA") else {
        return;
    };
    harness();
    let topic = common::unique("fondo.otel");
    let cfg = fondo_bridge::config::KafkaSinkConfig {
        brokers: brokers.clone(),
        connect_timeout_ms: 5_000,
        create_topics: vec![fondo_bridge::config::kafka::KafkaTopicConfig {
            name: topic.clone(),
            partitions: Some(1),
            replication: Some(1),
            retention_ms: Some(3_600_000),
            config: Default::default(),
        }],
        ..Default::default()
    };
    let sink = fondo_bridge::sinks::kafka::KafkaSink::connect("kafka", &cfg)
        .await
        .expect("kafka sink");
    let tid = random_hex(16);
    let publish = publish_through(Arc::new(sink), "kafka", &topic, &tid).await;

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", common::unique("otel-test"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(40), consumer.recv())
        .await
        .expect("a message within 40s")
        .expect("consume");
    let tp = m
        .headers()
        .and_then(|h| {
            h.iter()
                .find(|h| h.key == headers::TRACEPARENT)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
        })
        .expect("traceparent header on the Kafka record");
    let (got_tid, parent) = parse_traceparent(&tp);
    assert_eq!(got_tid, tid, "Kafka consumer continues the same trace");
    assert_eq!(got_tid, publish.trace_id());
    assert_eq!(parent, publish.span_id());
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_message_carries_the_publish_span_context() {
    use futures::StreamExt as _;
    use lapin::options::{
        BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{Connection, ConnectionProperties, ExchangeKind};

    let Some(url) = common::broker("AMQP") else {
        return;
    };
    harness();
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("test connection");
    let ch = conn.create_channel().await.unwrap();
    let exchange = common::unique("otel-x");
    let queue = common::unique("otel-q");
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let cfg: fondo_bridge::config::RabbitMqSinkConfig =
        serde_json::from_value(serde_json::json!({ "url": url, "exchange": exchange })).unwrap();
    let sink = fondo_bridge::sinks::rabbitmq::RabbitMqSink::connect("rabbit", &cfg)
        .await
        .expect("rabbitmq sink");
    let tid = random_hex(16);
    let publish = publish_through(Arc::new(sink), "rabbitmq", "fondo.order.update", &tid).await;

    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            common::unique("otel-consumer").as_str().into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
        .await
        .expect("a delivery within 20s")
        .expect("consumer open")
        .expect("delivery");
    let tp = d
        .properties
        .headers()
        .as_ref()
        .and_then(|t| t.inner().get(headers::TRACEPARENT).cloned())
        .map(|v| match v {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            AMQPValue::ShortString(s) => s.as_str().to_owned(),
            other => panic!("traceparent of unexpected AMQP type: {other:?}"),
        })
        .expect("traceparent header on the AMQP message");
    let (got_tid, parent) = parse_traceparent(&tp);
    assert_eq!(got_tid, tid, "AMQP consumer continues the same trace");
    assert_eq!(got_tid, publish.trace_id());
    assert_eq!(parent, publish.span_id());

    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = ch
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_message_carries_the_publish_span_context() {
    use async_nats::jetstream::{self, consumer, stream};
    use futures::StreamExt as _;

    let Some(url) = common::broker("NATS") else {
        return;
    };
    harness();
    let client = async_nats::connect(&url).await.expect("test connection");
    let js = jetstream::new(client);
    let name = common::unique("OTEL").replace('-', "_");
    let prefix = common::unique("otel").replace('-', "_");
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            storage: stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .expect("create stream");
    let cfg = fondo_bridge::config::NatsSinkConfig::new(&url);
    let sink = fondo_bridge::sinks::nats::NatsSink::connect("nats", &cfg)
        .await
        .expect("nats sink");
    let subject = format!("{prefix}.order");
    let tid = random_hex(16);
    let publish = publish_through(Arc::new(sink), "nats", &subject, &tid).await;

    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("pull consumer");
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .expect("fetch");
    let m = batch.next().await.expect("one message").expect("message");
    let tp = m
        .headers
        .as_ref()
        .and_then(|h| h.get(headers::TRACEPARENT))
        .map(|v| v.as_str().to_owned())
        .expect("traceparent header on the JetStream message");
    let (got_tid, parent) = parse_traceparent(&tp);
    assert_eq!(got_tid, tid, "JetStream consumer continues the same trace");
    assert_eq!(got_tid, publish.trace_id());
    assert_eq!(parent, publish.span_id());
    let _ = js.delete_stream(&name).await;
}

// ---------------------------------------------------------------------------------------------
// the real binary over OTLP/HTTP, configured through OTEL_* variables

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The binary exports over OTLP/HTTP when only `OTEL_EXPORTER_OTLP_*` are set, uses
/// `OTEL_SERVICE_NAME` and `OTEL_EXPORTER_OTLP_HEADERS`, continues the webhook's `traceparent`,
/// writes the publish span's context into the record, and flushes its spans on SIGTERM (the batch
/// delay is an hour, so only the shutdown flush can deliver them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_exports_over_http_from_env_and_flushes_on_sigterm() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    let collector = Collector::default();
    tokio::spawn(serve_http(collector.clone(), listener));

    let dir = tempfile::tempdir().unwrap();
    let (webhook, admin) = (common::free_port(), common::free_port());
    let cfg = format!(
        r#"
sources:
  webhook:
    listen: 127.0.0.1:{webhook}
    signature: {{ scheme: standard-webhooks }}
sinks:
  files: {{ type: file, dir: {dir}/out, fsync: never }}
routes:
  - {{ name: all, match: ["*"], to: [{{ sink: files, topic: "fondo.{{entity}}" }}] }}
event: {{ id_header: webhook-id }}
dead_letter: {{ fallback_file: {dir}/dead-letter.jsonl }}
admin: {{ listen: 127.0.0.1:{admin} }}
"#,
        dir = dir.path().display(),
    );
    let path = dir.path().join("bridge.yaml");
    std::fs::write(&path, cfg).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fondo-bridge"))
        .args(["run", "--config"])
        .arg(&path)
        .env(
            "FONDO_BRIDGE__SOURCES__WEBHOOK__SIGNATURE__SECRETS",
            format!("[\"{SECRET}\"]"),
        )
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_SERVICE_NAME", "bridge-from-env")
        .env("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")
        .env("OTEL_BSP_SCHEDULE_DELAY", "3600000")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());

    let http = reqwest::Client::new();
    common::eventually_async(
        "the bridge's /readyz to answer 2xx",
        Duration::from_secs(30),
        || {
            let http = &http;
            async move {
                http.get(format!("http://127.0.0.1:{admin}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        },
    )
    .await;

    let (tid, caller) = (random_hex(16), random_hex(8));
    let body = br#"{"eventType":"order.update","current":{"id":"o-9","seq":1}}"#;
    let signer = fondo_bridge::simulator::webhook_sender::Signer::standard(SECRET).unwrap();
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut req = http
        .post(format!(
            "http://127.0.0.1:{webhook}/fondo/webhooks/callback"
        ))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{tid}-{caller}-01"))
        .body(body.to_vec());
    for (k, v) in signer.headers("msg_otel_1", ts, body) {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    assert!(
        resp.status().is_success(),
        "webhook accepted: {}",
        resp.status()
    );

    // Nothing exported yet (the batch delay is an hour) ...
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(collector.trace(&tid).is_empty(), "spans held in the batch");
    // ... until shutdown flushes them.
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let log = log.join().unwrap();
    assert_eq!(status.code(), Some(0), "clean exit; log:\n{log}");

    let spans = collector.trace(&tid);
    let ev = one(&spans, "process order.update");
    assert_eq!(ev.parent_id(), caller);
    assert_eq!(ev.service, "bridge-from-env");
    assert_eq!(ev.attr("fondo.source").as_deref(), Some("webhook"));
    let publish = one(&spans, "send fondo.order");
    assert_eq!(publish.parent_id(), ev.span_id());
    assert_eq!(publish.attr("messaging.system").as_deref(), Some("file"));
    assert!(
        collector
            .headers
            .lock()
            .unwrap()
            .iter()
            .any(|(k, v)| k == "x-tenant" && v == "acme"),
        "OTEL_EXPORTER_OTLP_HEADERS sent"
    );

    // The record on disk names the publish span.
    let mut records = Vec::new();
    for e in std::fs::read_dir(dir.path().join("out")).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for line in text.lines() {
            records
                .push(serde_json::from_str::<fondo_bridge::sinks::file::FileRecord>(line).unwrap());
        }
    }
    assert_eq!(records.len(), 1);
    let (rt, rp) = parse_traceparent(&records[0].headers[headers::TRACEPARENT]);
    assert_eq!(rt, tid);
    assert_eq!(rp, publish.span_id());
}
