//! The Kafka sink against a real Kafka-protocol broker (tansu, started by
//! `scripts/kafka-broker.sh start 19092`, address in `FONDO_BRIDGE_TEST_KAFKA`), and against
//! rdkafka's in-process `MockCluster` for error injection.
//!
//! `FONDO_BRIDGE_TEST_KAFKA=127.0.0.1:19092 cargo test --test sink_kafka`
#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fondo_bridge::config::KafkaSinkConfig;
use fondo_bridge::config::kafka::KafkaTopicConfig;
use fondo_bridge::sinks::kafka::KafkaSink;
use fondo_bridge::sinks::{Message, Sink, SinkError, headers};
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers as _;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

fn config(brokers: &str, options: &[(&str, &str)]) -> KafkaSinkConfig {
    KafkaSinkConfig {
        brokers: brokers.to_owned(),
        options: options
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        connect_timeout_ms: 5_000,
        ..KafkaSinkConfig::default()
    }
}

/// A topic for the sink to create at connect (`create_topics`), one replica.
fn created(name: &str, partitions: i32, retention_ms: Option<i64>) -> Vec<KafkaTopicConfig> {
    vec![KafkaTopicConfig {
        name: name.to_owned(),
        partitions: Some(partitions),
        replication: Some(1),
        retention_ms,
        config: BTreeMap::new(),
    }]
}

/// The shared test message, with an event id made of its key and sequence number.
fn message(topic: &str, key: Option<&str>, seq: usize) -> Message {
    let id = format!("evt-{}-{seq}", key.unwrap_or("none"));
    common::messages::message(topic, key, seq, &id)
}

async fn connect(cfg: &KafkaSinkConfig) -> KafkaSink {
    match KafkaSink::connect("kafka", cfg).await {
        Ok(s) => s,
        Err(e) => panic!("connect: {e}"),
    }
}

/// Publishes `per_key` messages for each key: keys concurrently, each key's next publish only
/// after the previous one resolved (as the dispatcher does). Returns the messages in order per key.
async fn publish_per_key(
    sink: &Arc<KafkaSink>,
    topic: &str,
    keys: usize,
    per_key: usize,
) -> Vec<Message> {
    let mut tasks = Vec::new();
    for k in 0..keys {
        let sink = sink.clone();
        let topic = topic.to_owned();
        tasks.push(tokio::spawn(async move {
            let key = format!("order-{k}");
            let mut sent = Vec::new();
            for seq in 0..per_key {
                let m = message(&topic, Some(&key), seq);
                sink.publish(&m)
                    .await
                    .map_err(|e| format!("{key}/{seq}: {e}"))?;
                sent.push(m);
            }
            Ok::<_, String>(sent)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap().unwrap());
    }
    all
}

/// Consumes `n` records from `topic` with an independent consumer group.
async fn consume(brokers: &str, topic: &str, n: usize) -> Vec<Received> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", common::unique("sink-kafka-test"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => panic!("consume: {e}"),
            Err(_) => panic!("only {} of {n} messages arrived within 40s", got.len()),
        };
        let mut hs = Vec::new();
        if let Some(h) = m.headers() {
            for h in h.iter() {
                hs.push((
                    h.key.to_owned(),
                    String::from_utf8(h.value.unwrap_or_default().to_vec()).unwrap(),
                ));
            }
        }
        got.push(Received {
            key: m.key().map(|k| String::from_utf8(k.to_vec()).unwrap()),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers: hs,
            partition: m.partition(),
        });
    }
    got
}

#[derive(Debug)]
struct Received {
    key: Option<String>,
    payload: Vec<u8>,
    headers: Vec<(String, String)>,
    partition: i32,
}

/// 300 messages, 20 keys published concurrently: all arrive, with key, every header and the
/// payload bytes intact, in order per key; the topic is created by the sink's `create_topics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_everything_in_order_per_key_with_headers() {
    let Some(brokers) = common::broker("KAFKA") else {
        return;
    };
    let topic = common::unique("fondo.sink-kafka");
    let mut cfg = config(&brokers, &[]);
    cfg.create_topics = created(&topic, 3, Some(3_600_000));
    let sink = Arc::new(connect(&cfg).await);
    sink.healthcheck().await.expect("healthy");
    // Creating it again is fine: the topic exists.
    drop(connect(&cfg).await);

    let (keys, per_key) = (20, 15);
    let started = Instant::now();
    let mut sent = publish_per_key(&sink, &topic, keys, per_key).await;
    let took = started.elapsed();
    // One message without a key.
    let unkeyed = message(&topic, None, 0);
    sink.publish(&unkeyed.clone())
        .await
        .expect("unkeyed publish");
    sent.push(unkeyed);
    eprintln!(
        "published {} messages ({keys} keys, one publish in flight per key) in {took:?}",
        sent.len() - 1
    );
    sink.close(Instant::now() + Duration::from_secs(5))
        .await
        .expect("close");

    let got = consume(&brokers, &topic, sent.len()).await;
    assert_eq!(got.len(), sent.len());

    // Every message present, byte for byte.
    let by_id: HashMap<&str, &Message> = sent.iter().map(|m| (&*m.event_id, m)).collect();
    let mut seen = HashMap::new();
    for r in &got {
        let id = r
            .headers
            .iter()
            .find(|(k, _)| k == headers::EVENT_ID)
            .map(|(_, v)| v.as_str())
            .expect("fondo-event-id header");
        let m = by_id
            .get(id)
            .unwrap_or_else(|| panic!("unexpected message {id}"));
        assert_eq!(r.key, m.key, "{id}");
        assert_eq!(r.payload, m.payload.to_vec(), "{id}");
        assert_eq!(r.headers, m.headers, "{id}");
        assert!(seen.insert(id, r.partition).is_none(), "{id} twice");
    }
    assert_eq!(seen.len(), sent.len());

    // Order per key, and each key on one partition.
    let mut last: HashMap<&str, (usize, i32)> = HashMap::new();
    for r in got.iter().filter(|r| r.key.is_some()) {
        let key = r.key.as_deref().unwrap();
        let seq: usize = r
            .headers
            .iter()
            .find(|(k, _)| k == "x-test-seq")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap();
        match last.get(key) {
            None => assert_eq!(seq, 0, "{key} starts at {seq}"),
            Some((prev, p)) => {
                assert_eq!(seq, prev + 1, "{key}: {seq} after {prev}");
                assert_eq!(r.partition, *p, "{key} changed partition");
            }
        }
        last.insert(key, (seq, r.partition));
    }
    assert_eq!(last.len(), keys);
    let partitions: std::collections::BTreeSet<i32> = got.iter().map(|r| r.partition).collect();
    assert!(
        partitions.len() > 1,
        "all keys on one partition: {partitions:?}"
    );
}

/// A topic that does not exist (tansu creates none automatically) is a fatal error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_is_fatal_and_named() {
    let Some(brokers) = common::broker("KAFKA") else {
        return;
    };
    let topic = common::unique("fondo.no-such-topic");
    // librdkafka waits this long for a new topic to appear before failing its messages.
    let sink = connect(&config(
        &brokers,
        &[("topic.metadata.propagation.max.ms", "1000")],
    ))
    .await;
    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        sink.publish(&message(&topic, Some("k"), 0)),
    )
    .await
    .expect("publish resolves")
    .expect_err("no such topic");
    eprintln!("{err} (after {:?})", started.elapsed());
    assert!(matches!(err, SinkError::Fatal(_)), "{err}");
    assert!(err.reason().contains(&topic), "{err}");
    assert!(!err.reason().contains("seq"), "payload leaked: {err}");
}

/// Security settings the broker does not speak fail at start, naming the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_security_settings_fail_at_start() {
    let Some(brokers) = common::broker("KAFKA") else {
        return;
    };
    for (options, hint) in [
        (&[("security.protocol", "SSL")][..], "security.protocol"),
        (
            &[
                ("security.protocol", "SASL_PLAINTEXT"),
                ("sasl.mechanisms", "SCRAM-SHA-256"),
                ("sasl.username", "bridge"),
                ("sasl.password", "hunter2"),
            ][..],
            "SASL",
        ),
    ] {
        let mut cfg = config(&brokers, options);
        cfg.connect_timeout_ms = 2_000;
        let err = match KafkaSink::connect("kafka", &cfg).await {
            Ok(_) => panic!("connected with {options:?} to a plaintext listener"),
            Err(e) => e,
        };
        eprintln!("{err}");
        // A listener that does not speak the configured protocol looks like one that does not
        // answer: the bridge starts and keeps trying (not ready), and the reason says what to check.
        assert!(
            matches!(err, SinkError::Fatal(_) | SinkError::Retriable(_)),
            "{err}"
        );
        assert!(err.reason().contains("cannot reach the cluster"), "{err}");
        assert!(err.reason().contains(hint), "{err}");
        assert!(!err.reason().contains("hunter2"), "{err}");
    }
}

/// Many publishes at once through a tiny producer queue: they wait for room, none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_backpressure_not_failure() {
    let Some(brokers) = common::broker("KAFKA") else {
        return;
    };
    let topic = common::unique("fondo.sink-kafka-q");
    let mut cfg = config(&brokers, &[("queue.buffering.max.messages", "4")]);
    cfg.create_topics = created(&topic, 1, None);
    let sink = Arc::new(connect(&cfg).await);
    let sent = publish_per_key(&sink, &topic, 50, 2).await;
    assert_eq!(sent.len(), 100);
}

// ---- error injection with rdkafka's in-process mock cluster (no broker needed) ----

fn mock_sink_config(mock: &MockCluster<'_, impl rdkafka::ClientContext>) -> KafkaSinkConfig {
    config(
        &mock.bootstrap_servers(),
        &[("retry.backoff.ms", "10"), ("retry.backoff.max.ms", "50")],
    )
}

/// Transient produce errors are retried (inside librdkafka) and the message is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_transient_errors_are_retried_and_delivered() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let sink = connect(&mock_sink_config(&mock)).await;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        ],
    );
    tokio::time::timeout(
        Duration::from_secs(20),
        sink.publish(&message("t", Some("k"), 0)),
    )
    .await
    .expect("in time")
    .expect("delivered after transient errors");
}

/// A broker that goes down and comes back: the publish waits and is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_broker_down_then_up_is_delivered() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let sink = Arc::new(connect(&mock_sink_config(&mock)).await);
    sink.publish(&message("t", Some("k"), 0))
        .await
        .expect("first");
    mock.broker_down(1).unwrap();
    let pending = {
        let sink = sink.clone();
        tokio::spawn(async move { sink.publish(&message("t", Some("k"), 1)).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !pending.is_finished(),
        "published while the broker was down"
    );
    mock.broker_up(1).unwrap();
    tokio::time::timeout(Duration::from_secs(20), pending)
        .await
        .expect("in time")
        .unwrap()
        .expect("delivered after the broker came back");
}

/// `max_in_flight` bounds the messages handed to librdkafka and awaiting a delivery report: with
/// the broker down, the rest wait in the sink, and all are delivered once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_confirm_window_bounds_messages_awaiting_reports() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let mut cfg = mock_sink_config(&mock);
    cfg.max_in_flight = 2;
    let sink = Arc::new(connect(&cfg).await);
    sink.publish(&message("t", Some("k0"), 0))
        .await
        .expect("first");
    mock.broker_down(1).unwrap();
    let pending: Vec<_> = (1..=5)
        .map(|i| {
            let sink = sink.clone();
            tokio::spawn(
                async move { sink.publish(&message("t", Some(&format!("k{i}")), i)).await },
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(sink.in_flight(), 2, "messages handed to librdkafka");
    assert!(pending.iter().all(|p| !p.is_finished()));
    mock.broker_up(1).unwrap();
    for p in pending {
        tokio::time::timeout(Duration::from_secs(20), p)
            .await
            .expect("in time")
            .unwrap()
            .expect("delivered after the broker came back");
    }
    // librdkafka's count (`rd_kafka_outq_len`) drops a message after its delivery report has been
    // served, which can be just after the publish above returned, and it also counts protocol
    // requests, such as the metadata request after the broker came back: wait for it to drain.
    let drained = tokio::time::Instant::now() + Duration::from_secs(10);
    while sink.in_flight() != 0 && tokio::time::Instant::now() < drained {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        sink.in_flight(),
        0,
        "still in flight 10 s after every delivery"
    );
}

/// The health check follows the broker; statistics come when asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_healthcheck_and_statistics() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let mut cfg = mock_sink_config(&mock);
    cfg.options
        .insert("statistics.interval.ms".into(), "100".into());
    cfg.connect_timeout_ms = 1_000;
    let sink = connect(&cfg).await;
    sink.healthcheck().await.expect("healthy");
    sink.publish(&message("t", Some("k"), 0))
        .await
        .expect("published");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = sink.statistics().expect("statistics");
    assert!(stats.txmsgs >= 1, "{}", stats.txmsgs);
    mock.broker_down(1).unwrap();
    let err = sink.healthcheck().await.expect_err("broker down");
    eprintln!("{err}");
    assert!(err.is_retriable());
    mock.broker_up(1).unwrap();
}

/// A broker that stays down past `message.timeout.ms`: retriable, not fatal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_timeout_is_retriable() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let mut cfg = mock_sink_config(&mock);
    cfg.options
        .insert("message.timeout.ms".into(), "500".into());
    let sink = connect(&cfg).await;
    mock.broker_down(1).unwrap();
    let err = sink
        .publish(&message("t", Some("k"), 0))
        .await
        .expect_err("times out");
    eprintln!("{err}");
    assert!(err.is_retriable(), "{err}");
    assert!(err.reason().contains("\"t\""), "{err}");
}

/// Authorization and size errors from the broker are fatal, with the reason and the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_fatal_broker_errors_are_fatal() {
    for (code, what) in [
        (
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
            "TopicAuthorizationFailed",
        ),
        (
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
            "MessageSizeTooLarge",
        ),
    ] {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("fondo.t", 1, 1).unwrap();
        mock.create_topic("fondo.u", 1, 1).unwrap();
        let sink = connect(&mock_sink_config(&mock)).await;
        mock.request_errors(RDKafkaApiKey::Produce, &[code]);
        let err = tokio::time::timeout(
            Duration::from_secs(20),
            sink.publish(&message("fondo.t", Some("k"), 0)),
        )
        .await
        .expect("in time")
        .expect_err("fails");
        eprintln!("{err}");
        assert!(matches!(err, SinkError::Fatal(_)), "{what}: {err}");
        assert!(err.reason().contains(what), "{err}");
        assert!(err.reason().contains("\"fondo.t\""), "{err}");
        // The producer still works (librdkafka keeps a topic's authorization error until its
        // metadata is refreshed, so use another topic).
        sink.publish(&message("fondo.u", Some("k"), 1))
            .await
            .expect("next message delivered");
    }
}

/// The idempotent producer's fatal state (here: a sequence gap it cannot close with
/// `enable.gapless.guarantee`) fails the publish as retriable and a new producer delivers the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_fatal_producer_state_is_recovered() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let mut cfg = mock_sink_config(&mock);
    cfg.options
        .insert("enable.gapless.guarantee".into(), "true".into());
    let sink = connect(&cfg).await;
    sink.publish(&message("t", Some("k"), 0))
        .await
        .expect("first");
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        sink.publish(&message("t", Some("k"), 1)),
    )
    .await
    .expect("in time");
    eprintln!("{r:?}");
    let err = r.expect_err("fatal producer state");
    assert!(err.is_retriable(), "{err}");
    assert_eq!(sink.producers_replaced(), 1);
    sink.publish(&message("t", Some("k"), 1))
        .await
        .expect("the retry is delivered by a new producer");
    sink.healthcheck().await.expect("healthy again");
}

/// A message over `message.max.bytes` is refused at once, fatally, without its bytes in the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_too_large_locally_is_fatal() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let mut cfg = mock_sink_config(&mock);
    cfg.options
        .insert("message.max.bytes".into(), "2000".into());
    let sink = connect(&cfg).await;
    let mut m = message("t", Some("k"), 0);
    m.payload = Bytes::from(vec![b'Z'; 10_000]);
    let err = sink.publish(&m).await.expect_err("too large");
    eprintln!("{err}");
    assert!(matches!(err, SinkError::Fatal(_)), "{err}");
    assert!(!err.reason().contains("ZZZ"), "payload leaked: {err}");
}

/// `close` flushes what is in flight; publishing after close is refused (retriable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_close_flushes() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let mut cfg = mock_sink_config(&mock);
    cfg.options.insert("linger.ms".into(), "200".into());
    let sink = Arc::new(connect(&cfg).await);
    let pending: Vec<_> = (0..50)
        .map(|i| {
            let sink = sink.clone();
            tokio::spawn(
                async move { sink.publish(&message("t", Some(&format!("k{i}")), 0)).await },
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    sink.close(Instant::now() + Duration::from_secs(5))
        .await
        .expect("flushed");
    assert_eq!(sink.in_flight(), 0);
    for p in pending {
        p.await.unwrap().expect("delivered");
    }
    let err = sink
        .publish(&message("t", Some("k"), 1))
        .await
        .expect_err("closed");
    assert!(err.is_retriable());
}

/// Bad settings fail at start with a clear reason, no panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_fails_clearly() {
    let cases: Vec<(KafkaSinkConfig, &str)> = vec![
        (
            config("127.0.0.1:1", &[("no.such.option", "1")]),
            "unknown librdkafka option",
        ),
        (
            config("127.0.0.1:1", &[("acks", "0")]),
            "accept_at_most_once",
        ),
        (
            config("127.0.0.1:1", &[("enable.idempotence", "false")]),
            "enable.idempotence",
        ),
    ];
    for (cfg, want) in cases {
        let err = match KafkaSink::connect("kafka", &cfg).await {
            Ok(_) => panic!("connected with {cfg:?}"),
            Err(e) => e,
        };
        eprintln!("{err}");
        assert!(matches!(err, SinkError::Fatal(_)), "{err}");
        assert!(err.reason().contains(want), "{err}");
    }
    // A cluster that does not answer is not a configuration error: retriable (the bridge starts
    // not ready and connects once it answers), with a reason that says so.
    let err = match KafkaSink::connect(
        "kafka",
        &KafkaSinkConfig {
            connect_timeout_ms: 1_000,
            ..config("127.0.0.1:1", &[])
        },
    )
    .await
    {
        Ok(_) => panic!("connected to 127.0.0.1:1"),
        Err(e) => e,
    };
    assert!(matches!(err, SinkError::Retriable(_)), "{err}");
    assert!(err.reason().contains("cannot reach the cluster"), "{err}");
}

/// A tansu of this test's own on a free port (`scripts/kafka-broker.sh`), memory storage: a stop
/// forgets every topic, record and producer id.
struct PrivateTansu {
    port: u16,
    run_dir: tempfile::TempDir,
}

impl PrivateTansu {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = Self {
            port,
            run_dir: tempfile::tempdir().unwrap(),
        };
        t.script("start");
        t
    }

    fn script(&self, what: &str) {
        let out = std::process::Command::new(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-broker.sh"),
        )
        .args([what, &self.port.to_string()])
        .env("FONDO_BRIDGE_RUN_DIR", self.run_dir.path())
        .output()
        .expect("run scripts/kafka-broker.sh");
        assert!(
            out.status.success(),
            "kafka-broker.sh {what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateTansu {
    fn drop(&mut self) {
        self.script("stop");
    }
}

/// Publishes `m` as the dispatcher does: retriable failures are retried (every 200 ms) until
/// `deadline`; the number of retriable failures on success.
async fn publish_retrying(sink: &KafkaSink, m: &Message, deadline: Instant) -> usize {
    let mut failures = 0;
    loop {
        match sink.publish(m).await {
            Ok(()) => return failures,
            Err(e) if e.is_retriable() && Instant::now() < deadline => {
                eprintln!("retriable: {e}");
                failures += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{}: {e}", m.event_id),
        }
    }
}

/// A broker that restarts empty (tansu, memory storage) no longer knows the idempotent producer's
/// id: it answers every produce with UNKNOWN_PRODUCER_ID and librdkafka bumps the epoch and retries
/// forever, without failing anything. The sink sees the stuck producer, fails its messages as
/// retriable and replaces it; everything published is delivered at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarted_empty_is_recovered() {
    if common::broker("KAFKA").is_none() {
        return; // the same policy as the shared broker: skip loudly, fail under CI
    }
    let tansu = PrivateTansu::start();
    let brokers = tansu.bootstrap();
    let topic = "restarted";
    let mut cfg = config(&brokers, &[("reconnect.backoff.max.ms", "500")]);
    cfg.create_topics = created(topic, 1, None);
    let sink = Arc::new(connect(&cfg).await);
    for seq in 0..5 {
        sink.publish(&message(topic, Some("k"), seq))
            .await
            .expect("before the restart");
    }

    tansu.script("stop");
    // One publish waits through the outage, as the dispatcher's would.
    let during = {
        let sink = sink.clone();
        tokio::spawn(async move {
            let m = message(topic, Some("k"), 5);
            let deadline = Instant::now() + Duration::from_secs(60);
            publish_retrying(&sink, &m, deadline).await;
            m
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    tansu.script("start");
    // The topic is created again (memory storage), as an operator would: with an admin client
    // only, since a new idempotent producer would take the restarted broker's first producer id
    // (the old producer's id) and turn the old producer's state into a fatal error instead.
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("admin client");
    let created = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    let started = Instant::now();
    let deadline = started + Duration::from_secs(45);
    let mut sent = vec![during.await.unwrap()];
    let mut retried = 0;
    for seq in 6..16 {
        let m = message(topic, Some("k"), seq);
        retried += publish_retrying(&sink, &m, deadline).await;
        sent.push(m);
    }
    eprintln!(
        "delivered {} after the restart in {:?} ({retried} retriable failures), producers replaced: {}",
        sent.len(),
        started.elapsed(),
        sink.producers_replaced()
    );
    assert!(
        sink.producers_replaced() >= 1,
        "the stuck producer was replaced"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "recovered in {:?}",
        started.elapsed()
    );
    sink.healthcheck().await.expect("healthy again");
    let got = consume(&brokers, topic, sent.len()).await;
    let payloads: Vec<&[u8]> = got.iter().map(|r| r.payload.as_slice()).collect();
    for m in &sent {
        assert!(
            payloads.contains(&m.payload.as_ref()),
            "{} was not delivered after the restart",
            m.event_id
        );
    }
}

/// The sink's half of pipelining a key: `placed` is called once librdkafka holds the record, well
/// before its confirm; 60 messages of one key, each handed over as soon as the previous one was
/// placed (as the dispatcher's lane does), arrive in order. A message whose key's earlier messages
/// went to another producer generation is refused, retriable, and not placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_pipelined_on_placement_arrives_in_order() {
    use fondo_bridge::sinks::Placement;
    use futures::StreamExt as _;
    use std::sync::Mutex;

    let Some(brokers) = common::broker("KAFKA") else {
        return;
    };
    let topic = common::unique("fondo.sink-kafka-placed");
    let mut cfg = config(&brokers, &[]);
    cfg.create_topics = created(&topic, 3, Some(3_600_000));
    let sink = connect(&cfg).await;

    let n = 60;
    let sent: Vec<Message> = (0..n).map(|i| message(&topic, Some("acct-1"), i)).collect();
    // What each message's `placed` saw: its generation, and how many publishes had resolved then.
    let resolved = std::sync::atomic::AtomicUsize::new(0);
    let seen: Vec<Mutex<Option<(u64, usize)>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let callbacks: Vec<Box<dyn Fn(u64) + Send + Sync + '_>> = (0..n)
        .map(|i| {
            let (tx, seen, resolved) = (tx.clone(), &seen, &resolved);
            Box::new(move |g: u64| {
                *seen[i].lock().unwrap() =
                    Some((g, resolved.load(std::sync::atomic::Ordering::SeqCst)));
                let _ = tx.send(i);
            }) as Box<dyn Fn(u64) + Send + Sync + '_>
        })
        .collect();
    let placements: Vec<Placement<'_>> = (0..n)
        .map(|i| Placement {
            after: (i > 0).then_some(0),
            placed: &*callbacks[i],
        })
        .collect();
    let mut running = futures::stream::FuturesUnordered::new();
    let mut outcomes = Vec::new();
    for i in 0..n {
        running.push(sink.publish_placed(&sent[i], &placements[i]));
        // The next one goes when this one is placed, not when it is confirmed.
        loop {
            tokio::select! {
                Some(p) = rx.recv() => { assert_eq!(p, i); break; }
                Some(r) = running.next() => {
                    resolved.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    outcomes.push(r);
                }
            }
        }
    }
    while let Some(r) = running.next().await {
        resolved.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        outcomes.push(r);
    }
    assert_eq!(outcomes.len(), n);
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let seen: Vec<(u64, usize)> = seen.iter().map(|s| s.lock().unwrap().unwrap()).collect();
    assert!(seen.iter().all(|(g, _)| *g == 0), "one producer: {seen:?}");
    let overlapped = seen.iter().enumerate().filter(|(i, (_, r))| r < i).count();
    assert!(
        overlapped > 0,
        "some message was placed while an earlier one of its key was unconfirmed: {seen:?}"
    );
    let got = consume(&brokers, &topic, n).await;
    let payloads: Vec<&[u8]> = got.iter().map(|r| r.payload.as_slice()).collect();
    let want: Vec<&[u8]> = sent.iter().map(|m| m.payload.as_ref()).collect();
    assert_eq!(
        payloads, want,
        "one key's messages in the order they were placed"
    );

    // Placed after messages of an older producer generation: refused before it is placed.
    let placed = std::sync::atomic::AtomicBool::new(false);
    let mark = |_: u64| placed.store(true, std::sync::atomic::Ordering::SeqCst);
    let stale = Placement {
        after: Some(7),
        placed: &mark,
    };
    match sink
        .publish_placed(&message(&topic, Some("acct-1"), n), &stale)
        .await
    {
        Err(SinkError::Retriable(r)) => assert!(r.contains("replaced"), "{r}"),
        other => panic!("a stale placement must be refused as retriable: {other:?}"),
    }
    assert!(!placed.load(std::sync::atomic::Ordering::SeqCst));
}
