//! `fondo-bridge dlq` against the real brokers: events dead-lettered because their destination was
//! missing (no JetStream stream, an unroutable RabbitMQ routing key, an absent Kafka topic) are
//! listed with the right reasons; replay while the destination is still broken dead-letters them
//! again and exits 1; after the destination is created, replay delivers every one once with its
//! original bytes and event id; the dead letters are still there afterwards; a replay interrupted
//! half way and run again delivers nothing twice (JetStream dedupe) and loses nothing; unparseable
//! dead letters (from the fallback file) are refused unless an explicit destination is given.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fondo_bridge::app;
use fondo_bridge::dlq::commands::{self as dlq_cli, DlqCommand, DlqOutcome, ReadFrom, Select};
use fondo_bridge::dlq::{DeadLetter, DeadLetterWriter, ReasonKind};
use fondo_bridge::event::{
    AckHandle, AckStatus, Envelope, Event, ParseContext, ParseOptions, SourceKind, TraceContext,
};
use fondo_bridge::metrics::Metrics;
use fondo_bridge::plan::Plan;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// helpers

fn config(yaml: &str) -> Plan {
    // Validation wants a source; `dlq` never starts one.
    let yaml = format!(
        "sources: {{ webhook: {{ listen: \"127.0.0.1:0\", signature: {{ scheme: none, insecure: true }} }} }}\n{yaml}"
    );
    let yaml = yaml.as_str();
    Plan::from_str_with_env(yaml, "yaml", Vec::<(String, String)>::new())
        .unwrap_or_else(|e| panic!("test config invalid: {:?}\n{yaml}", e.problems()))
}

/// Bodies of `n` distinct order events (unique to this run), with non-ASCII text.
fn bodies(nonce: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"eventType":"order.update","current":{{"id":"o-{}","seq":{i},"run":"{nonce}","note":"åäö \r\n"}}}}"#,
                i % 4
            )
            .into_bytes()
        })
        .collect()
}

/// Runs the events through a dispatcher built from `plan`, as the bridge would, and returns
/// their event ids; every one must end acknowledged (delivered or dead-lettered).
async fn run_events(plan: &Plan, bodies: &[Vec<u8>]) -> Vec<String> {
    let sinks = app::build_sinks(plan.config()).await.expect("sinks start");
    let metrics = Arc::new(Metrics::new());
    let writer = plan.dead_letter_writer(plan.dead_letter_sink(&sinks), &metrics);
    let d = plan.dispatcher(sinks, writer, &metrics);
    let mut ids = Vec::new();
    let mut rxs = Vec::new();
    for b in bodies {
        let ev = Event::parse(
            Bytes::from(b.clone()),
            &ParseOptions::default(),
            &ParseContext::default(),
        )
        .unwrap();
        ids.push(ev.event_id.to_string());
        let (ack, rx) = AckHandle::new();
        let mut env = Envelope::new(ev, ack, SourceKind::Webhook);
        env.trace.traceparent =
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        d.submit(env).await.unwrap();
        rxs.push(rx);
    }
    for rx in rxs {
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(60), rx.wait())
                .await
                .expect("acknowledged in time"),
            AckStatus::Delivered
        );
    }
    let end = std::time::Instant::now() + Duration::from_secs(5);
    d.drain(end).await;
    d.shutdown(end).await;
    ids
}

/// Writes one unparseable dead letter to the fallback file only.
async fn unparseable_to_fallback(path: &Path, raw: &[u8], id: &str) {
    let w = DeadLetterWriter::new(
        None,
        "unused".into(),
        1,
        path.to_path_buf(),
        Arc::new(Metrics::new()),
    );
    w.write(&unparseable(raw, id)).await.unwrap();
}

/// The dead letter of a webhook body that is not JSON.
fn unparseable(raw: &[u8], id: &str) -> DeadLetter {
    DeadLetter::unparseable(
        raw,
        id.into(),
        None,
        SourceKind::Webhook,
        SystemTime::now(),
        &TraceContext::default(),
        "body is not valid JSON",
    )
}

async fn run(cmd: DlqCommand, cfg: &Plan) -> (DlqOutcome, String) {
    let mut out = Vec::new();
    let r = dlq_cli::run_with(cmd, cfg, CancellationToken::new(), &mut out)
        .await
        .unwrap_or_else(|e| panic!("dlq command failed: {e}"));
    (r, String::from_utf8(out).unwrap())
}

fn from(queue: Option<&str>) -> ReadFrom {
    ReadFrom {
        queue: queue.map(str::to_owned),
        read_timeout: Duration::from_secs(30),
    }
}

fn list(queue: Option<&str>) -> DlqCommand {
    DlqCommand::List {
        select: Select {
            from: from(queue),
            ..Select::default()
        },
        json: false,
    }
}

fn replay(select: Select) -> DlqCommand {
    DlqCommand::Replay {
        select,
        original: false,
        to_sink: None,
        to_topic: None,
        dry_run: false,
        rate: None,
        limit: None,
    }
}

fn fatal_only(queue: Option<&str>) -> Select {
    Select {
        reasons: vec![ReasonKind::Fatal],
        from: from(queue),
        ..Select::default()
    }
}

/// The dead letters of the original (webhook) failures, one per event id.
fn originals(o: &DlqOutcome) -> Vec<&DeadLetter> {
    o.dead_letters
        .iter()
        .filter(|d| d.source == "webhook" && d.reason_kind == ReasonKind::Fatal)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// NATS JetStream (+ the fallback file)

#[cfg(feature = "nats")]
mod nats {
    use super::*;
    use async_nats::jetstream::{self, consumer, stream};

    pub(super) async fn js(url: &str) -> jetstream::Context {
        jetstream::new(async_nats::connect(url).await.expect("nats connect"))
    }

    pub(super) async fn create_stream(
        js: &jetstream::Context,
        name: &str,
        subject: &str,
    ) -> stream::Stream {
        js.create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.to_owned()],
            storage: stream::StorageType::Memory,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("create stream")
    }

    /// Every message of the stream, read with an independent consumer.
    pub(super) async fn read_all(stream: &stream::Stream) -> Vec<jetstream::Message> {
        let c: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut got = Vec::new();
        let mut empty = 0;
        while empty < 2 {
            let mut batch = c
                .batch()
                .max_messages(500)
                .expires(Duration::from_millis(700))
                .messages()
                .await
                .expect("batch");
            let before = got.len();
            while let Some(m) = batch.next().await {
                let m = m.expect("message");
                m.ack().await.expect("ack");
                got.push(m);
            }
            if got.len() == before {
                empty += 1;
            }
        }
        got
    }

    pub(super) fn header<'a>(m: &'a jetstream::Message, name: &str) -> Option<&'a str> {
        m.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    }

    pub(super) fn cfg_yaml(url: &str, prefix: &str, fallback: &Path) -> String {
        format!(
            r#"
sinks:
  nats: {{ type: nats, url: "{url}", confirm_timeout_ms: 3000 }}
routes:
  - name: orders
    match: ["order.*"]
    to: [{{ sink: nats, topic: "{prefix}.orders.{{action}}", key: "{{/current/id}}" }}]
dead_letter: {{ sink: nats, topic: "{prefix}.dead", fallback_file: "{}" }}
delivery: {{ max_attempts: 2, backoff_initial_ms: 10, backoff_max_ms: 50 }}
spool: {{ enabled: false }}
admin: {{ listen: null }}
"#,
            fallback.display()
        )
    }
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_missing_stream_listed_replayed_when_broken_and_when_fixed() {
    let Some(url) = common::broker("NATS") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let fallback = tmp.path().join("dead-letter.jsonl");
    let prefix = common::unique("dlqt");
    let js = nats::js(&url).await;
    let dead_stream = format!("{prefix}-DEAD");
    let _dead = nats::create_stream(&js, &dead_stream, &format!("{prefix}.dead")).await;
    let cfg = config(&nats::cfg_yaml(&url, &prefix, &fallback));

    // 1. Six events whose subject no stream captures: dead-lettered (to the NATS dead-letter stream).
    let bodies = bodies(&prefix, 6);
    let ids = run_events(&cfg, &bodies).await;
    let by_id: HashMap<&str, &Vec<u8>> = ids.iter().map(String::as_str).zip(&bodies).collect();
    // Plus one unparseable body that only reached the fallback file.
    unparseable_to_fallback(&fallback, b"{not json \xff", "raw-1").await;

    let (listed, table) = run(list(None), &cfg).await;
    assert_eq!(listed.code, 0);
    assert_eq!(listed.dead_letters.len(), 7, "{table}");
    let fatal = originals(&listed);
    assert_eq!(fatal.len(), 6, "{table}");
    for d in &fatal {
        assert!(
            d.reason.contains("no JetStream stream"),
            "reason: {}",
            d.reason
        );
        assert_eq!(d.destination.sink.as_deref(), Some("nats"));
        assert_eq!(
            d.destination.topic.as_deref(),
            Some(format!("{prefix}.orders.update").as_str())
        );
        assert!(by_id.contains_key(d.event_id.as_str()));
    }
    assert!(table.contains("EVENT ID") && table.contains("raw-1") && table.contains("fatal"));
    let unparseable: Vec<_> = listed
        .dead_letters
        .iter()
        .filter(|d| d.reason_kind == ReasonKind::Unparseable)
        .collect();
    assert_eq!(unparseable.len(), 1);

    // Filters.
    let (o, _) = run(
        DlqCommand::List {
            select: Select {
                event_type: Some("order.*".into()),
                since: Some("1h".into()),
                ..Select::default()
            },
            json: true,
        },
        &cfg,
    )
    .await;
    assert_eq!(o.dead_letters.len(), 6);
    let (o, _) = run(
        DlqCommand::List {
            select: Select {
                until: Some("1h".into()),
                ..Select::default()
            },
            json: false,
        },
        &cfg,
    )
    .await;
    assert!(o.dead_letters.is_empty());

    // show: the body in full.
    let (shown, text) = run(
        DlqCommand::Show {
            id: ids[0].clone(),
            from: from(None),
            json: false,
        },
        &cfg,
    )
    .await;
    assert_eq!(shown.dead_letters.len(), 1);
    assert!(text.contains("åäö"), "{text}");

    // 2. Replay while the stream is still missing: dead-lettered again with the new reason, exit 1.
    let (broken, text) = run(replay(fatal_only(None)), &cfg).await;
    let s = broken.replay.clone().unwrap();
    assert_eq!(broken.code, 1, "{text}");
    assert_eq!((s.selected, s.succeeded, s.failed), (6, 0, 6), "{text}");
    assert!(text.contains("6 failed"), "{text}");
    let (again, _) = run(list(None), &cfg).await;
    assert_eq!(again.dead_letters.len(), 13);
    let replayed: Vec<_> = again
        .dead_letters
        .iter()
        .filter(|d| d.source == "replay")
        .collect();
    assert_eq!(replayed.len(), 6);
    assert!(replayed.iter().all(|d| d.reason_kind == ReasonKind::Fatal));

    // Unparseable: refused without an explicit destination.
    let (refused, text) = run(
        replay(Select {
            reasons: vec![ReasonKind::Unparseable],
            ..Select::default()
        }),
        &cfg,
    )
    .await;
    assert_eq!(refused.code, 1);
    assert_eq!(refused.replay.as_ref().unwrap().refused, 1, "{text}");

    // Dry run: nothing sent.
    let (dry, text) = run(
        DlqCommand::Replay {
            select: fatal_only(None),
            original: true,
            to_sink: None,
            to_topic: None,
            dry_run: true,
            rate: None,
            limit: None,
        },
        &cfg,
    )
    .await;
    assert_eq!(dry.code, 0, "{text}");
    assert!(text.contains("would send to nats/"), "{text}");

    // 3. The destination now exists: every event delivered once, bytes and id intact.
    let mut orders = nats::create_stream(
        &js,
        &format!("{prefix}-ORDERS"),
        &format!("{prefix}.orders.>"),
    )
    .await;
    let (fixed, text) = run(replay(fatal_only(None)), &cfg).await;
    let s = fixed.replay.clone().unwrap();
    assert_eq!(fixed.code, 0, "{text}");
    assert_eq!((s.selected, s.succeeded, s.failed), (6, 6, 0), "{text}");
    let got = nats::read_all(&orders).await;
    assert_eq!(got.len(), 6);
    assert_eq!(orders.info().await.unwrap().state.messages, 6);
    let mut seen = HashSet::new();
    let mut msg_ids = HashSet::new();
    for m in &got {
        let id = nats::header(m, "fondo-event-id").unwrap().to_owned();
        assert!(msg_ids.insert(nats::header(m, "Nats-Msg-Id").unwrap().to_owned()));
        assert!(nats::header(m, "fondo-replayed-at").is_some());
        assert_eq!(by_id[id.as_str()].as_slice(), m.payload.as_ref());
        assert!(seen.insert(id));
    }

    // The unparseable one, to an explicit destination.
    let (explicit, text) = run(
        DlqCommand::Replay {
            select: Select {
                reasons: vec![ReasonKind::Unparseable],
                ..Select::default()
            },
            original: false,
            to_sink: Some("nats".into()),
            to_topic: Some(format!("{prefix}.orders.raw")),
            dry_run: false,
            rate: None,
            limit: None,
        },
        &cfg,
    )
    .await;
    assert_eq!(explicit.code, 0, "{text}");
    let got = nats::read_all(&orders).await;
    let raw = got
        .iter()
        .find(|m| nats::header(m, "fondo-event-id") == Some("raw-1"))
        .expect("raw one replayed");
    assert_eq!(raw.payload.as_ref(), b"{not json \xff");

    // 4. Nothing was deleted.
    let (after, _) = run(list(None), &cfg).await;
    assert_eq!(after.dead_letters.len(), 13);
    let _ = js.delete_stream(&dead_stream).await;
    let _ = js.delete_stream(format!("{prefix}-ORDERS")).await;
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_replay_interrupted_then_rerun_delivers_each_once() {
    let Some(url) = common::broker("NATS") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let fallback = tmp.path().join("dead-letter.jsonl");
    let prefix = common::unique("dlqi");
    let js = nats::js(&url).await;
    let dead_stream = format!("{prefix}-DEAD");
    nats::create_stream(&js, &dead_stream, &format!("{prefix}.dead")).await;
    let cfg = config(&nats::cfg_yaml(&url, &prefix, &fallback));
    let bodies = bodies(&prefix, 20);
    let ids = run_events(&cfg, &bodies).await;
    let mut orders = nats::create_stream(
        &js,
        &format!("{prefix}-ORDERS"),
        &format!("{prefix}.orders.>"),
    )
    .await;

    // Interrupted after about a second at 10/s.
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        stopper.cancel();
    });
    let mut out = Vec::new();
    let first = dlq_cli::run_with(
        DlqCommand::Replay {
            select: Select::default(),
            original: false,
            to_sink: None,
            to_topic: None,
            dry_run: false,
            rate: Some(10.0),
            limit: None,
        },
        &cfg,
        stop,
        &mut out,
    )
    .await
    .unwrap();
    let s = first.replay.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(first.code, 1, "{text}");
    assert!(s.interrupted, "{text}");
    assert!(s.succeeded > 0 && s.succeeded < 20, "{text}");
    assert_eq!(s.failed, 0, "{text}");
    assert_eq!(s.succeeded + s.not_sent, 20, "{text}");
    let partial = orders.info().await.unwrap().state.messages;
    assert_eq!(partial as usize, s.succeeded);

    // Run again: everything, each once.
    let (second, text) = run(replay(Select::default()), &cfg).await;
    let s2 = second.replay.unwrap();
    assert_eq!(second.code, 0, "{text}");
    assert_eq!(s2.succeeded, 20, "{text}");
    assert_eq!(orders.info().await.unwrap().state.messages, 20);
    let got = nats::read_all(&orders).await;
    let got_ids: HashSet<String> = got
        .iter()
        .map(|m| nats::header(m, "fondo-event-id").unwrap().to_owned())
        .collect();
    assert_eq!(got_ids, ids.iter().cloned().collect::<HashSet<_>>());
    let msg_ids: HashSet<&str> = got
        .iter()
        .map(|m| nats::header(m, "Nats-Msg-Id").unwrap())
        .collect();
    assert_eq!(
        msg_ids.len(),
        20,
        "one message id per occurrence and destination"
    );
    let _ = js.delete_stream(&dead_stream).await;
    let _ = js.delete_stream(format!("{prefix}-ORDERS")).await;
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_unroutable_listed_replayed_and_still_there() {
    use lapin::options::{
        BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{Connection, ConnectionProperties, ExchangeKind};

    let Some(url) = common::broker("AMQP") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let fallback = tmp.path().join("dead-letter.jsonl");
    let prefix = common::unique("dlqr");
    let exchange = format!("{prefix}-x");
    let dead_q = format!("{prefix}-dead");
    let orders_q = format!("{prefix}-orders");
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for q in [&dead_q, &orders_q] {
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    ch.queue_bind(
        dead_q.as_str().into(),
        exchange.as_str().into(),
        format!("{prefix}.dead").as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let cfg = config(&format!(
        r#"
sinks:
  rabbit: {{ type: rabbitmq, url: "{url}", exchange: "{exchange}" }}
routes:
  - name: orders
    match: ["order.*"]
    to: [{{ sink: rabbit, topic: "{prefix}.orders.{{action}}" }}]
dead_letter: {{ sink: rabbit, topic: "{prefix}.dead", fallback_file: "{}" }}
delivery: {{ max_attempts: 2, backoff_initial_ms: 10, backoff_max_ms: 50 }}
spool: {{ enabled: false }}
admin: {{ listen: null }}
"#,
        fallback.display()
    ));
    let bodies = bodies(&prefix, 5);
    let ids = run_events(&cfg, &bodies).await;
    let by_id: HashMap<&str, &Vec<u8>> = ids.iter().map(String::as_str).zip(&bodies).collect();

    // Without --queue: a usage error naming what to do.
    let mut sink = Vec::new();
    let err = dlq_cli::run_with(list(None), &cfg, CancellationToken::new(), &mut sink)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("--queue"), "{err}");

    let (listed, table) = run(list(Some(&dead_q)), &cfg).await;
    assert_eq!(listed.dead_letters.len(), 5, "{table}");
    for d in &listed.dead_letters {
        assert_eq!(d.reason_kind, ReasonKind::Fatal);
        assert!(
            d.reason.contains("unroutable") || d.reason.contains("NO_ROUTE"),
            "{}",
            d.reason
        );
    }
    // Reading requeued them all.
    let (again, _) = run(list(Some(&dead_q)), &cfg).await;
    assert_eq!(again.dead_letters.len(), 5);

    // Still broken: failed again, exit 1, dead-lettered again.
    let (broken, text) = run(replay(fatal_only(Some(&dead_q))), &cfg).await;
    assert_eq!(broken.code, 1, "{text}");
    assert_eq!(broken.replay.unwrap().failed, 5, "{text}");

    // Bind the destination, replay with --original, consume.
    ch.queue_bind(
        orders_q.as_str().into(),
        exchange.as_str().into(),
        format!("{prefix}.orders.#").as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let (fixed, text) = run(
        DlqCommand::Replay {
            select: Select {
                reasons: vec![ReasonKind::Fatal],
                from: from(Some(&dead_q)),
                ..Select::default()
            },
            original: true,
            to_sink: None,
            to_topic: None,
            dry_run: false,
            rate: Some(100.0),
            limit: None,
        },
        &cfg,
    )
    .await;
    let s = fixed.replay.unwrap();
    assert_eq!(fixed.code, 0, "{text}");
    assert_eq!((s.selected, s.succeeded), (5, 5), "{text}");
    let mut got = HashSet::new();
    while let Some(m) = ch
        .basic_get(orders_q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let h = m.delivery.properties.headers().as_ref().unwrap();
        let id = match h.inner().get("fondo-event-id") {
            Some(lapin::types::AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("fondo-event-id header: {other:?}"),
        };
        assert!(m.delivery.properties.message_id().is_some());
        assert_eq!(by_id[id.as_str()].as_slice(), m.delivery.data.as_slice());
        assert!(h.inner().contains_key("fondo-replayed-at"));
        assert!(got.insert(id));
    }
    assert_eq!(got.len(), 5);

    // Nothing deleted: 5 originals + 5 from the broken replay.
    let (after, _) = run(list(Some(&dead_q)), &cfg).await;
    assert_eq!(after.dead_letters.len(), 10);

    let _ = ch
        .queue_delete(dead_q.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = ch
        .queue_delete(orders_q.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = ch
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
}

// ---------------------------------------------------------------------------------------------
// Kafka

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_absent_topic_listed_replayed_once_created() {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{Consumer as _, StreamConsumer};
    use rdkafka::message::{Headers as _, Message as _};

    let Some(brokers) = common::broker("KAFKA") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let fallback = tmp.path().join("dead-letter.jsonl");
    let prefix = common::unique("dlqk");
    let yaml = |create_orders: bool| {
        let extra = if create_orders {
            format!(", {{ name: \"{prefix}.orders\", partitions: 1 }}")
        } else {
            String::new()
        };
        format!(
            r#"
sinks:
  kafka: {{ type: kafka, brokers: "{brokers}", create_topics: [{{ name: "{prefix}.dead", partitions: 1 }}{extra}], options: {{ "message.timeout.ms": "5000" }} }}
routes:
  - name: orders
    match: ["order.*"]
    to: [{{ sink: kafka, topic: "{prefix}.orders", key: "{{/current/id}}" }}]
dead_letter: {{ sink: kafka, topic: "{prefix}.dead", fallback_file: "{}" }}
delivery: {{ max_attempts: 2, backoff_initial_ms: 10, backoff_max_ms: 50 }}
spool: {{ enabled: false }}
admin: {{ listen: null }}
"#,
            fallback.display()
        )
    };
    let cfg = config(&yaml(false));
    let bodies = bodies(&prefix, 4);
    let ids = run_events(&cfg, &bodies).await;
    let by_id: HashMap<&str, &Vec<u8>> = ids.iter().map(String::as_str).zip(&bodies).collect();

    let (listed, table) = run(list(None), &cfg).await;
    let fatal: Vec<_> = listed
        .dead_letters
        .iter()
        .filter(|d| d.source == "webhook")
        .collect();
    assert_eq!(fatal.len(), 4, "{table}");
    for d in &fatal {
        assert!(
            matches!(d.reason_kind, ReasonKind::Fatal | ReasonKind::Exhausted),
            "{:?}: {}",
            d.reason_kind,
            d.reason
        );
        assert_eq!(
            d.destination.topic.as_deref(),
            Some(format!("{prefix}.orders").as_str())
        );
    }

    // The topic is created (by the sink's create_topics) and the replay delivers.
    let fixed_cfg = config(&yaml(true));
    let (fixed, text) = run(
        replay(Select {
            from: from(None),
            ..Select::default()
        }),
        &fixed_cfg,
    )
    .await;
    let s = fixed.replay.unwrap();
    assert_eq!(fixed.code, 0, "{text}");
    assert_eq!(s.succeeded, 4, "{text}");

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", common::unique("dlq-test"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&format!("{prefix}.orders")]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut got = HashSet::new();
    while got.len() < 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, consumer.recv())
            .await
            .expect("all replayed messages arrive")
            .unwrap();
        let mut hs = HashMap::new();
        if let Some(h) = m.headers() {
            for h in h.iter() {
                hs.insert(
                    h.key.to_owned(),
                    String::from_utf8(h.value.unwrap_or_default().to_vec()).unwrap(),
                );
            }
        }
        let id = hs["fondo-event-id"].clone();
        assert!(hs.contains_key("fondo-replayed-at"));
        assert_eq!(by_id[id.as_str()].as_slice(), m.payload().unwrap());
        assert!(got.insert(id));
    }

    // The dead letters are still there.
    let (after, _) = run(list(None), &fixed_cfg).await;
    assert_eq!(after.dead_letters.len(), listed.dead_letters.len());
}

// ---------------------------------------------------------------------------------------------
// The file sink as the dead-letter destination (no broker)

/// Dead letters written to a file sink's topic are listed; a line that is not a file-sink record
/// and a record whose payload is not a dead letter are both counted as unreadable, not dropped
/// silently and not listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_dead_letters_listed_and_foreign_lines_counted() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let fallback = dir.path().join("fallback.jsonl");
    let cfg = config(&format!(
        r#"
sinks:
  files: {{ type: file, dir: "{}" }}
routes:
  - name: orders
    match: ["order.*"]
    to: [{{ sink: files, topic: "orders" }}]
dead_letter: {{ sink: files, topic: "dead", fallback_file: "{}" }}
spool: {{ enabled: false }}
admin: {{ listen: null }}
"#,
        out.display(),
        fallback.display()
    ));
    let sinks = app::build_sinks(cfg.config()).await.expect("sinks start");
    let writer = cfg.dead_letter_writer(cfg.dead_letter_sink(&sinks), &Arc::new(Metrics::new()));
    for (i, raw) in [&b"{not json"[..], b"\xff\xfe binary"].iter().enumerate() {
        writer
            .write(&unparseable(raw, &format!("unparseable:{i}")))
            .await
            .unwrap();
    }
    // A line that is not a file-sink record, and a record whose payload is not a dead letter.
    let dead = fondo_bridge::sinks::file::topic_file(&out, "dead");
    let mut text = std::fs::read_to_string(&dead).expect("dead letters in the file sink");
    text.push_str("this is not a record\n");
    text.push_str(r#"{"topic":"dead","event_id":"x","headers":{},"payload_json":{"eventType":"order.create"}}"#);
    text.push('\n');
    std::fs::write(&dead, text).unwrap();

    let (o, printed) = run(list(None), &cfg).await;
    let mut ids: Vec<&str> = o.dead_letters.iter().map(|d| d.event_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["unparseable:0", "unparseable:1"], "{printed}");
    assert_eq!(o.unreadable, 2, "{printed}");
    assert!(
        !fallback.exists() || std::fs::read_to_string(&fallback).unwrap().is_empty(),
        "the file sink took the dead letters; nothing went to the fallback file"
    );
}

/// A crash cut a dead-letter append short, so the fallback file ends in half a line. The next
/// dead letter goes on a line of its own (the fragment, never acknowledged, is cut off and kept
/// next to the file), and `dlq list` shows every dead letter, none unreadable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_fallback_line_is_cut_aside_and_every_dead_letter_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let fallback = dir.path().join("fallback.jsonl");
    let cfg = config(&format!(
        r#"
sinks:
  files: {{ type: file, dir: "{}" }}
routes:
  - name: orders
    match: ["order.*"]
    to: [{{ sink: files, topic: "orders" }}]
dead_letter: {{ fallback_file: "{}" }}
spool: {{ enabled: false }}
admin: {{ listen: null }}
"#,
        dir.path().join("out").display(),
        fallback.display()
    ));
    unparseable_to_fallback(&fallback, b"{first", "unparseable:0").await;
    unparseable_to_fallback(&fallback, b"{second", "unparseable:1").await;
    let mut text = std::fs::read(&fallback).unwrap();
    let third = serde_json::to_vec(&unparseable(b"{third", "unparseable:2")).unwrap();
    let fragment = &third[..third.len() / 2];
    text.extend_from_slice(fragment);
    std::fs::write(&fallback, &text).unwrap();
    unparseable_to_fallback(&fallback, b"{fourth", "unparseable:3").await;

    let (o, printed) = run(list(None), &cfg).await;
    let mut ids: Vec<&str> = o.dead_letters.iter().map(|d| d.event_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["unparseable:0", "unparseable:1", "unparseable:3"],
        "{printed}"
    );
    assert_eq!(o.unreadable, 0, "{printed}");
    let torn: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("fallback.jsonl.torn-"))
        .collect();
    assert_eq!(torn.len(), 1, "the fragment is kept aside");
    assert_eq!(std::fs::read(&torn[0]).unwrap(), fragment);
}
