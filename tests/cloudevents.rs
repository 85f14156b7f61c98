//! CloudEvents on every broker, end to end: a `fondo-bridge` process reads the simulator's stream
//! and publishes each event to Kafka (tansu), RabbitMQ and NATS JetStream twice, once per content
//! mode (`cloudevents-binary` with the default `source` and `type`, `cloudevents-structured` with
//! configured templates), through a route that redacts `/current/owner`. Every message is read
//! back from its broker and turned into an event by the official CloudEvents Rust SDK
//! (`cloudevents-sdk`): structured bodies with its JSON event format, binary messages with its
//! binding deserializer for `ce-` headers, after renaming the broker's prefix to that one (Kafka's
//! `ce_`, AMQP's `cloudEvents_`; NATS uses `ce-` itself). Then every attribute is checked against
//! what the bridge knows of the event, and `data` against the simulator's body, redacted.
//!
//! The trace context extension is checked in `dispatch/tests.rs`, where a traced event is at hand.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg(all(feature = "kafka", feature = "rabbitmq", feature = "nats"))]

mod common;
#[path = "reliability/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cloudevents::{AttributesReader, Data, Event};
use fondo_bridge::simulator::generator::Generator;
use fondo_bridge::simulator::stream::{self, StreamConfig};
use futures::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use support::{BridgeProc, CID, WS_TOKEN_ENV};

const EVENTS: usize = 30;

/// One message as read from a broker: its headers (names as the broker gave them), its content
/// type where the broker has a field for it, its body.
struct Received {
    headers: Vec<(String, String)>,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The SDK's event from a binary-mode message whose attribute headers start with `prefix`.
    fn binary_event(&self, prefix: &str) -> Event {
        let mut h = HeaderMap::new();
        for (k, v) in &self.headers {
            let name = match k.strip_prefix(prefix) {
                Some(attr) => format!("ce-{attr}"),
                None => k.to_ascii_lowercase(),
            };
            if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::from_str(v)) {
                h.append(n, v);
            }
        }
        if let Some(ct) = &self.content_type {
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_str(ct).unwrap(),
            );
        }
        assert!(
            h.contains_key("ce-specversion"),
            "a binary-mode message carries {prefix}specversion; headers: {:?}",
            self.headers
        );
        cloudevents::binding::http::to_event(&h, self.body.clone())
            .unwrap_or_else(|e| panic!("the SDK refuses the binary message: {e}"))
    }

    fn structured_event(&self) -> Event {
        let ct = self
            .content_type
            .clone()
            .or_else(|| self.header("content-type").map(str::to_owned))
            .unwrap_or_default();
        assert!(
            ct.starts_with("application/cloudevents+json"),
            "structured mode declares the JSON event format, not {ct:?}"
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("the SDK refuses the structured body: {e}"))
    }
}

fn data_json(e: &Event) -> Value {
    match e.data() {
        Some(Data::Json(v)) => v.clone(),
        Some(Data::Binary(b)) => serde_json::from_slice(b).expect("data is JSON"),
        Some(Data::String(s)) => serde_json::from_str(s).expect("data is JSON"),
        None => panic!("the event has no data"),
    }
}

/// What the simulator sent, redacted as the route redacts: body → event type.
fn expected(script: &[Bytes]) -> BTreeMap<String, String> {
    script
        .iter()
        .map(|b| {
            let mut v: Value = serde_json::from_slice(b).unwrap();
            if let Some(cur) = v.get_mut("current").and_then(Value::as_object_mut) {
                cur.remove("owner");
            }
            let t = v["eventType"].as_str().unwrap().to_owned();
            (v.to_string(), t)
        })
        .collect()
}

/// Checks every event of one destination: the SDK's attributes against the bridge's headers and
/// the defaults or templates, `data` against the simulator's bodies (each exactly once).
fn check(
    what: &str,
    events: &[(Event, &Received)],
    script: &BTreeMap<String, String>,
    source: &str,
    type_prefix: &str,
    window: (SystemTime, SystemTime),
) {
    assert_eq!(events.len(), script.len(), "{what}: every event, once");
    let mut seen = BTreeMap::new();
    for (e, r) in events {
        let event_type = r.header("fondo-event-type").expect("fondo-event-type");
        assert_eq!(e.specversion().as_str(), "1.0", "{what}");
        assert_eq!(Some(e.id()), r.header("fondo-event-id"), "{what}: id");
        assert_eq!(e.source().as_str(), source, "{what}: source");
        assert_eq!(e.ty(), format!("{type_prefix}{event_type}"), "{what}: type");
        assert_eq!(e.datacontenttype(), Some("application/json"), "{what}");
        let data = data_json(e);
        let object = data["current"]
            .get("ref")
            .or_else(|| data["current"].get("id"))
            .or_else(|| data["previous"].get("ref"))
            .or_else(|| data["previous"].get("id"))
            .and_then(Value::as_str);
        assert_eq!(e.subject(), object, "{what}: subject is the object ref");
        let time: SystemTime = (*e.time().expect("time")).into();
        assert!(
            time >= window.0 - Duration::from_secs(1) && time <= window.1,
            "{what}: time is when the bridge received it"
        );
        assert!(
            data["current"].get("owner").is_none(),
            "{what}: redaction applies to data"
        );
        let was = script
            .get(&data.to_string())
            .unwrap_or_else(|| panic!("{what}: data is not a body the simulator sent"));
        assert_eq!(was, event_type, "{what}");
        *seen.entry(data.to_string()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), script.len(), "{what}: every body once");
}

async fn read_nats(url: &str, stream: &str, subject: &str, n: usize) -> Vec<Received> {
    use async_nats::jetstream::consumer::pull::Config;
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(Config {
            filter_subject: subject.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(30), msgs.next())
            .await
            .unwrap_or_else(|_| panic!("{subject}: {} of {n} messages", out.len()))
            .unwrap()
            .unwrap();
        let headers = m
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .flat_map(|(k, vs)| {
                vs.iter()
                    .map(move |v| (k.to_string(), v.as_str().to_owned()))
            })
            .collect();
        out.push(Received {
            headers,
            content_type: None,
            body: m.payload.to_vec(),
        });
        m.ack().await.unwrap();
    }
    out
}

async fn read_amqp(ch: &lapin::Channel, queue: &str, n: usize) -> Vec<Received> {
    use lapin::options::{BasicAckOptions, BasicConsumeOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            format!("ce-test-{queue}").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("{queue}: {} of {n} messages", out.len()))
            .unwrap()
            .unwrap();
        let mut headers = Vec::new();
        if let Some(t) = d.properties.headers() {
            for (k, v) in t.inner() {
                if let AMQPValue::LongString(s) = v {
                    headers.push((k.to_string(), s.to_string()));
                }
            }
        }
        out.push(Received {
            headers,
            content_type: d.properties.content_type().as_ref().map(|c| c.to_string()),
            body: d.data.clone(),
        });
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    out
}

async fn read_kafka(brokers: &str, topic: &str, n: usize) -> Vec<Received> {
    use rdkafka::ClientConfig;
    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", common::unique("ce-test"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("{topic}: {} of {n} messages", out.len()))
            .unwrap();
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                        (h.key.to_owned(), v.unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Received {
            headers,
            content_type: None,
            body: m.payload().unwrap_or_default().to_vec(),
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broker_carries_both_modes_as_the_sdk_reads_them() {
    let (Some(kafka), Some(amqp), Some(nats)) = (
        common::broker("KAFKA"),
        common::broker("AMQP"),
        common::broker("NATS"),
    ) else {
        return;
    };
    let u = common::unique("ce").replace('-', "_");
    let (bin, st) = (format!("{u}_bin"), format!("{u}_str"));

    // NATS: a stream for the test's subjects. RabbitMQ: an exchange and a queue per mode.
    let js = async_nats::jetstream::new(async_nats::connect(&nats).await.unwrap());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: u.clone(),
        subjects: vec![format!("{u}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    let conn = lapin::Connection::connect(&amqp, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        u.as_str().into(),
        lapin::ExchangeKind::Topic,
        lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        Default::default(),
    )
    .await
    .unwrap();
    for q in [&bin, &st] {
        ch.queue_declare(q.as_str().into(), Default::default(), Default::default())
            .await
            .unwrap();
        ch.queue_bind(
            q.as_str().into(),
            u.as_str().into(),
            q.as_str().into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    }

    let mut g = Generator::new(7, CID, 10, 0);
    let script: Vec<Bytes> = (0..EVENTS).map(|_| g.next_event()).collect();
    let (_, sim) = stream::start(StreamConfig {
        rate: 200.0,
        heartbeat: Some(Duration::from_millis(1000)),
        client_ids: vec![CID.to_owned()],
        script: Arc::new(script.clone()),
        ..StreamConfig::default()
    })
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let admin = common::free_port();
    let structured = r#"format: cloudevents-structured, cloudevents: { source: "urn:fondo:test:{client_id}", type: "com.example.{event_type}" }"#;
    let config = format!(
        r#"sources:
  websocket: {{ url: "{ws}", client_ids: ["{CID}"] }}
sinks:
  kafka: {{ type: kafka, brokers: "{kafka}", create_topics: [{{ name: "{bin}" }}, {{ name: "{st}" }}] }}
  rabbitmq: {{ type: rabbitmq, url: "{amqp}", exchange: "{u}" }}
  nats: {{ type: nats, url: "{nats}" }}
routes:
  - name: ce
    match: ["*"]
    redact: [/current/owner]
    to:
      - {{ sink: kafka, topic: "{bin}", format: cloudevents-binary }}
      - {{ sink: kafka, topic: "{st}", {structured} }}
      - {{ sink: rabbitmq, topic: "{bin}", format: cloudevents-binary }}
      - {{ sink: rabbitmq, topic: "{st}", {structured} }}
      - {{ sink: nats, topic: "{u}.bin", format: cloudevents-binary }}
      - {{ sink: nats, topic: "{u}.str", {structured} }}
dead_letter: {{ fallback_file: "{dl}" }}
spool: {{ dir: "{spool}" }}
admin: {{ listen: "127.0.0.1:{admin}" }}
"#,
        ws = sim.base_url(),
        dl = dir.path().join("dl.jsonl").display(),
        spool = dir.path().join("spool").display(),
    );
    let started = SystemTime::now();
    let mut bridge = BridgeProc::start(dir.path(), admin, &config, &[WS_TOKEN_ENV]);
    bridge.wait_healthy(Duration::from_secs(30));

    let kafka_bin = read_kafka(&kafka, &bin, EVENTS).await;
    let kafka_st = read_kafka(&kafka, &st, EVENTS).await;
    let amqp_bin = read_amqp(&ch, &bin, EVENTS).await;
    let amqp_st = read_amqp(&ch, &st, EVENTS).await;
    let nats_bin = read_nats(&nats, &u, &format!("{u}.bin"), EVENTS).await;
    let nats_st = read_nats(&nats, &u, &format!("{u}.str"), EVENTS).await;
    let window = (started, SystemTime::now());
    bridge.sigterm(Duration::from_secs(20));

    let script = expected(&script);
    let default_source = format!("fondo:client/{CID}");
    let configured_source = format!("urn:fondo:test:{CID}");
    for (what, msgs, prefix) in [
        ("kafka binary", &kafka_bin, "ce_"),
        ("rabbitmq binary", &amqp_bin, "cloudEvents_"),
        ("nats binary", &nats_bin, "ce-"),
    ] {
        let events: Vec<_> = msgs.iter().map(|r| (r.binary_event(prefix), r)).collect();
        check(what, &events, &script, &default_source, "se.fondo.", window);
    }
    for (what, msgs) in [
        ("kafka structured", &kafka_st),
        ("rabbitmq structured", &amqp_st),
        ("nats structured", &nats_st),
    ] {
        let events: Vec<_> = msgs.iter().map(|r| (r.structured_event(), r)).collect();
        check(
            what,
            &events,
            &script,
            &configured_source,
            "com.example.",
            window,
        );
    }
    // The Kafka key is the object ref, and the partitioning extension says so.
    for r in &kafka_bin {
        let e = r.binary_event("ce_");
        assert_eq!(
            e.extension("partitionkey").map(|v| v.to_string()),
            e.subject().map(str::to_owned),
            "partitionkey is the message key"
        );
    }
    let _ = js.delete_stream(&u).await;
}
