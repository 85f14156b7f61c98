//! The RabbitMQ sink against a real RabbitMQ: everything published arrives with its bytes, headers
//! and `message_id`, in order per key; an unroutable routing key is fatal and names the key while
//! routable messages published alongside are unaffected; the declared topology (quorum queue,
//! dead-letter exchange) works; a broker stopped and killed mid-stream loses nothing; wrong
//! credentials, a missing vhost or exchange and an unreachable port give clear errors.
//!
//! The shared broker comes from `FONDO_BRIDGE_TEST_AMQP`; the restart test starts its own node with
//! `scripts/rabbitmq-node.sh` on free ports (the shared node is never restarted).
#![cfg(feature = "rabbitmq")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::messages::message;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fondo_bridge::config::RabbitMqSinkConfig;
use fondo_bridge::sinks::rabbitmq::RabbitMqSink;
use fondo_bridge::sinks::{Sink, SinkError};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicNackOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

// ---------------------------------------------------------------------------------------------
// helpers

fn sink_config(url: &str, exchange: &str) -> RabbitMqSinkConfig {
    serde_json::from_value(serde_json::json!({ "url": url, "exchange": exchange })).unwrap()
}

async fn admin(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("test admin connection");
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

/// A topic exchange and a queue bound to it with `binding`, both unique to this test.
async fn exchange_and_queue(ch: &Channel, prefix: &str, binding: &str) -> (String, String) {
    let exchange = common::unique(&format!("{prefix}-x"));
    let queue = common::unique(&format!("{prefix}-q"));
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
        binding.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    (exchange, queue)
}

async fn cleanup(ch: &Channel, exchanges: &[&str], queues: &[&str]) {
    for q in queues {
        let _ = ch
            .queue_delete((*q).into(), QueueDeleteOptions::default())
            .await;
    }
    for x in exchanges {
        let _ = ch
            .exchange_delete((*x).into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// Consumes from `queue` (auto-ack) until `want` deliveries arrived or nothing came for `idle`.
async fn drain(ch: &Channel, queue: &str, want: usize, idle: Duration) -> Vec<Delivery> {
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            common::unique("test-consumer").as_str().into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < want {
        match tokio::time::timeout(idle, consumer.next()).await {
            Ok(Some(Ok(d))) => got.push(d),
            Ok(Some(Err(e))) => panic!("consumer error: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    got
}

fn header(d: &Delivery, name: &str) -> Option<String> {
    let table = d.properties.headers().as_ref()?;
    match table.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => Some(format!("{other:?}")),
    }
}

fn message_id(d: &Delivery) -> String {
    d.properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// delivery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_everything_with_headers_ids_and_order_per_key() {
    let Some(url) = common::broker("AMQP") else {
        return;
    };
    let (_conn, ch) = admin(&url).await;
    let (exchange, queue) = exchange_and_queue(&ch, "fb-deliver", "fondo.#").await;

    let sink = Arc::new(
        RabbitMqSink::connect("rabbit", &sink_config(&url, &exchange))
            .await
            .unwrap(),
    );
    assert_eq!(sink.system(), "rabbitmq");
    sink.healthcheck().await.unwrap();

    const KEYS: usize = 20;
    const PER_KEY: usize = 15;
    let run = common::unique("run");
    let mut tasks = Vec::new();
    for k in 0..KEYS {
        let sink = sink.clone();
        let run = run.clone();
        // Like the dispatcher: one publish in flight per key, many keys at once.
        tasks.push(tokio::spawn(async move {
            for seq in 0..PER_KEY {
                let key = format!("order-{k}");
                let id = format!("{run}-{k}-{seq}");
                let topic = format!("fondo.order.k{}", k % 4);
                sink.publish(&message(&topic, &key, seq, &id))
                    .await
                    .unwrap_or_else(|e| panic!("publish {id}: {e}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = KEYS * PER_KEY;

    let got = drain(&ch, &queue, total, Duration::from_secs(5)).await;
    assert_eq!(got.len(), total, "every confirmed message is in the queue");
    let mut last_seq: HashMap<String, usize> = HashMap::new();
    let mut ids = HashSet::new();
    for d in &got {
        let key = header(d, "fondo-key").expect("fondo-key header");
        let seq: usize = header(d, "x-test-seq").unwrap().parse().unwrap();
        let id = message_id(d);
        let k: usize = key.trim_start_matches("order-").parse().unwrap();
        assert_eq!(id, format!("{run}-{k}-{seq}"));
        assert!(ids.insert(id.clone()), "duplicate {id}");
        let expected = message(
            &format!("fondo.order.k{}", k % 4),
            &key,
            seq,
            &format!("{run}-{k}-{seq}"),
        );
        assert_eq!(d.data, expected.payload.to_vec(), "body bytes of {id}");
        assert_eq!(d.routing_key.as_str(), expected.topic);
        for (name, value) in &expected.headers {
            assert_eq!(header(d, name).as_deref(), Some(value.as_str()), "{name}");
        }
        assert_eq!(
            d.properties.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(*d.properties.delivery_mode(), Some(2), "persistent");
        assert_eq!(
            d.properties.kind().as_ref().map(|s| s.as_str()),
            Some("order.update")
        );
        if let Some(prev) = last_seq.insert(key.clone(), seq) {
            assert!(seq > prev, "order of {key}: {seq} after {prev}");
        }
    }
    assert_eq!(last_seq.len(), KEYS);

    sink.close(Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    assert!(sink.healthcheck().await.is_err());
    assert!(matches!(
        sink.publish(&message("fondo.x", "k", 0, "after-close"))
            .await,
        Err(SinkError::Retriable(_))
    ));
    cleanup(&ch, &[&exchange], &[&queue]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_is_fatal_and_names_the_key_others_unaffected() {
    let Some(url) = common::broker("AMQP") else {
        return;
    };
    let (_conn, ch) = admin(&url).await;
    let (exchange, queue) = exchange_and_queue(&ch, "fb-unroutable", "fondo.#").await;
    let sink = Arc::new(
        RabbitMqSink::connect("rabbit", &sink_config(&url, &exchange))
            .await
            .unwrap(),
    );

    // Many routable and unroutable messages at once, so the broker acks several per frame
    // (`multiple`): each outcome must still be the message's own.
    const N: usize = 400;
    let run = common::unique("unr");
    let mut tasks = Vec::new();
    for i in 0..N {
        let sink = sink.clone();
        let id = format!("{run}-{i}");
        let topic = if i % 2 == 0 {
            format!("fondo.ok.{i}")
        } else {
            format!("nowhere.{i}")
        };
        tasks.push(tokio::spawn(async move {
            let r = sink
                .publish(&message(&topic, &format!("k{i}"), i, &id))
                .await;
            (i, topic, r)
        }));
    }
    for t in tasks {
        let (i, topic, r) = t.await.unwrap();
        if i % 2 == 0 {
            r.unwrap_or_else(|e| panic!("routable {topic} failed: {e}"));
        } else {
            match r {
                Err(SinkError::Fatal(reason)) => {
                    assert!(reason.contains("unroutable"), "{reason}");
                    assert!(reason.contains(&topic), "names the key: {reason}");
                    assert!(reason.contains(&exchange), "names the exchange: {reason}");
                }
                other => panic!("unroutable {topic} gave {other:?}"),
            }
        }
    }
    let got = drain(&ch, &queue, N / 2, Duration::from_secs(3)).await;
    assert_eq!(got.len(), N / 2);
    assert!(
        got.iter()
            .all(|d| d.routing_key.as_str().starts_with("fondo.ok."))
    );
    sink.healthcheck().await.unwrap();
    sink.close(Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    cleanup(&ch, &[&exchange], &[&queue]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declares_topology_with_quorum_queue_and_dead_letter_exchange() {
    let Some(url) = common::broker("AMQP") else {
        return;
    };
    let (_conn, ch) = admin(&url).await;
    let exchange = common::unique("fb-topo-x");
    let queue = common::unique("fb-topo-q");
    let dlx = common::unique("fb-topo-dlx");
    let dead = common::unique("fb-topo-dead");
    let cfg: RabbitMqSinkConfig = serde_json::from_value(serde_json::json!({
        "url": url,
        "exchange": exchange,
        "declare": {
            "exchange": { "type": "topic", "durable": false },
            "dead_letter_exchange": { "name": dlx, "queue": dead },
            "queues": [{ "name": queue, "type": "quorum", "bindings": ["fondo.order.#", "fondo.account.*"] }]
        }
    }))
    .unwrap();
    let sink = RabbitMqSink::connect("rabbit", &cfg).await.unwrap();
    sink.publish(&message("fondo.order.update", "o1", 1, "topo-1"))
        .await
        .unwrap();
    sink.publish(&message("fondo.account.update", "a1", 2, "topo-2"))
        .await
        .unwrap();
    assert!(matches!(
        sink.publish(&message("fondo.account.x.y", "a1", 3, "topo-3"))
            .await,
        Err(SinkError::Fatal(_))
    ));
    // Connecting again with the same declaration is idempotent.
    let again = RabbitMqSink::connect("rabbit2", &cfg).await.unwrap();
    again
        .close(Instant::now() + Duration::from_secs(2))
        .await
        .unwrap();

    // A consumer rejects a message: it lands in the dead-letter queue.
    let first = ch
        .basic_get(queue.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message in the quorum queue");
    assert_eq!(message_id(&first.delivery), "topo-1");
    first
        .delivery
        .nack(BasicNackOptions {
            requeue: false,
            ..BasicNackOptions::default()
        })
        .await
        .unwrap();
    let mut dead_letter = None;
    for _ in 0..50 {
        dead_letter = ch
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        if dead_letter.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead_letter = dead_letter.expect("the rejected message in the dead-letter queue");
    assert_eq!(message_id(&dead_letter.delivery), "topo-1");

    sink.close(Instant::now() + Duration::from_secs(2))
        .await
        .unwrap();
    cleanup(&ch, &[&exchange, &dlx], &[&queue, &dead]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_when_the_exchange_is_deleted_and_recreated() {
    let Some(url) = common::broker("AMQP") else {
        return;
    };
    let (_conn, ch) = admin(&url).await;
    let (exchange, queue) = exchange_and_queue(&ch, "fb-vanish", "fondo.#").await;
    let mut cfg = sink_config(&url, &exchange);
    cfg.reconnect_wait_ms = 500;
    cfg.reconnect_max_ms = 300;
    let sink = RabbitMqSink::connect("rabbit", &cfg).await.unwrap();
    sink.publish(&message("fondo.a", "k", 0, "vanish-0"))
        .await
        .unwrap();

    ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    // The broker closes the channel (NOT_FOUND): the publish fails retriable, not fatal, and
    // nothing hangs.
    let e = sink
        .publish(&message("fondo.a", "k", 1, "vanish-1"))
        .await
        .unwrap_err();
    assert!(matches!(e, SinkError::Retriable(_)), "{e:?}");
    // The supervisor keeps reconnecting; the health check names the cause.
    let t = Instant::now();
    loop {
        match sink.healthcheck().await {
            Err(e) if e.reason().contains("does not exist") => break,
            other => {
                assert!(t.elapsed() < Duration::from_secs(5), "health: {other:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Publishing meanwhile waits at most `reconnect_wait_ms`, then fails retriable with the cause.
    let t = Instant::now();
    let e = sink
        .publish(&message("fondo.a", "k", 1, "vanish-1"))
        .await
        .unwrap_err();
    assert!(matches!(e, SinkError::Retriable(_)), "{e:?}");
    assert!(e.reason().contains("does not exist"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // Recreated: the sink comes back by itself.
    let (_, _) = (
        ch.exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap(),
        ch.queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "fondo.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap(),
    );
    let t = Instant::now();
    loop {
        match sink.publish(&message("fondo.a", "k", 1, "vanish-1")).await {
            Ok(()) => break,
            Err(SinkError::Retriable(e)) => {
                assert!(t.elapsed() < Duration::from_secs(5), "not back: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    sink.healthcheck().await.unwrap();
    let got = drain(&ch, &queue, 2, Duration::from_secs(3)).await;
    let ids: Vec<String> = got.iter().map(message_id).collect();
    assert_eq!(ids, ["vanish-0", "vanish-1"]);
    sink.close(Instant::now() + Duration::from_secs(2))
        .await
        .unwrap();
    cleanup(&ch, &[&exchange], &[&queue]).await;
}

// ---------------------------------------------------------------------------------------------
// start-up errors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_are_clear() {
    let Some(url) = common::broker("AMQP") else {
        return;
    };
    let parsed: lapin::uri::AMQPUri = url.parse().unwrap();
    let host = &parsed.authority.host;
    let port = parsed.authority.port;

    // Wrong password: fatal, says so, never shows the password.
    let bad = format!("amqp://guest:not-the-password@{host}:{port}/%2f");
    let e = RabbitMqSink::connect("rabbit", &sink_config(&bad, "amq.topic"))
        .await
        .unwrap_err();
    eprintln!("wrong password: {e}");
    assert!(matches!(e, SinkError::Fatal(_)), "{e:?}");
    assert!(e.reason().contains("ACCESS_REFUSED"), "{e}");
    assert!(!e.reason().contains("not-the-password"), "{e}");

    // Missing vhost.
    let vhost = format!(
        "{}/no-such-vhost-{}",
        url.rsplit_once('/').unwrap().0,
        std::process::id()
    );
    let e = RabbitMqSink::connect("rabbit", &sink_config(&vhost, "amq.topic"))
        .await
        .unwrap_err();
    eprintln!("missing vhost: {e}");
    assert!(matches!(e, SinkError::Fatal(_)), "{e:?}");
    assert!(e.reason().contains("vhost"), "{e}");
    assert!(e.reason().contains("no-such-vhost"), "{e}");

    // Missing exchange (passive declare): not there yet, worth trying again.
    let missing = common::unique("fb-missing-x");
    let e = RabbitMqSink::connect("rabbit", &sink_config(&url, &missing))
        .await
        .unwrap_err();
    eprintln!("missing exchange: {e}");
    assert!(matches!(e, SinkError::Retriable(_)), "{e:?}");
    assert!(
        e.reason().contains(&missing) && e.reason().contains("does not exist"),
        "{e}"
    );

    // Nothing listening.
    let closed = format!("amqp://guest:guest@127.0.0.1:{}/%2f", common::free_port());
    let started = Instant::now();
    let e = RabbitMqSink::connect("rabbit", &sink_config(&closed, "amq.topic"))
        .await
        .unwrap_err();
    eprintln!("unreachable: {e}");
    assert!(matches!(e, SinkError::Retriable(_)), "{e:?}");
    assert!(e.reason().contains("connection refused"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // TLS against a plain AMQP port: a clear error, no panic (the TLS stack is set up for real).
    let tls = format!("amqps://guest:guest@{host}:{port}/%2f");
    let e = RabbitMqSink::connect("rabbit", &sink_config(&tls, "amq.topic"))
        .await
        .unwrap_err();
    eprintln!("amqps to a plain port: {e}");
    assert!(e.reason().contains("TLS handshake failed"), "{e}");

    // A URL that is not AMQP, and an invalid config: fatal, no panic.
    let e = RabbitMqSink::connect("rabbit", &sink_config("amqp://host:notaport/", "x"))
        .await
        .unwrap_err();
    assert!(matches!(e, SinkError::Fatal(_)), "{e:?}");

    // A reserved exchange works without declaration.
    let ok = RabbitMqSink::connect("rabbit", &sink_config(&url, "amq.topic"))
        .await
        .unwrap();
    ok.healthcheck().await.unwrap();
    ok.close(Instant::now() + Duration::from_secs(2))
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// broker restart

/// A private RabbitMQ node, wiped when dropped.
struct Node {
    name: String,
    port: u16,
    dist: u16,
    base: PathBuf,
}

impl Node {
    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq-node.sh")
    }

    fn run(&self, args: &[&str]) {
        let t = Instant::now();
        // The publishers keep running on the other worker meanwhile.
        let out = tokio::task::block_in_place(|| {
            Command::new("bash")
                .arg(Self::script())
                .args(args)
                .env("FONDO_RABBITMQ_BASE", &self.base)
                .output()
        })
        .expect("run scripts/rabbitmq-node.sh");
        assert!(
            out.status.success(),
            "rabbitmq-node.sh {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("rabbitmq-node.sh {} took {:?}", args[0], t.elapsed());
    }

    fn start(&self) {
        let (port, dist) = (self.port.to_string(), self.dist.to_string());
        self.run(&["start", &self.name, &port, &dist]);
    }

    fn stop(&self) {
        self.run(&["stop", &self.name]);
    }

    fn kill(&self) {
        self.run(&["kill", &self.name]);
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Self::script())
            .args(["wipe", &self.name])
            .env("FONDO_RABBITMQ_BASE", &self.base)
            .output();
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Publishers like the dispatcher's: one task per key publishing sequentially, retrying retriable
/// errors with a small backoff; a confirmed message is recorded as delivered.
struct Publishers {
    stop: Arc<AtomicBool>,
    confirmed: Arc<Mutex<HashSet<String>>>,
    attempts: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
    slowest_failure: Arc<Mutex<Duration>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Publishers {
    fn start(sink: &Arc<RabbitMqSink>, keys: usize) -> Self {
        let mut p = Publishers {
            stop: Arc::default(),
            confirmed: Arc::default(),
            attempts: Arc::default(),
            failures: Arc::default(),
            slowest_failure: Arc::default(),
            tasks: Vec::new(),
        };
        for k in 0..keys {
            let (sink, stop, confirmed) = (sink.clone(), p.stop.clone(), p.confirmed.clone());
            let (attempts, failures, slowest) = (
                p.attempts.clone(),
                p.failures.clone(),
                p.slowest_failure.clone(),
            );
            p.tasks.push(tokio::spawn(async move {
                let mut seq = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("k{k}-{seq}");
                    let msg = message(&format!("fondo.order.k{k}"), &format!("k{k}"), seq, &id);
                    let mut backoff = Duration::from_millis(20);
                    loop {
                        attempts.fetch_add(1, Ordering::Relaxed);
                        let t = Instant::now();
                        match sink.publish(&msg).await {
                            Ok(()) => break,
                            Err(SinkError::Retriable(_)) => {
                                failures.fetch_add(1, Ordering::Relaxed);
                                let took = t.elapsed();
                                {
                                    let mut s = slowest.lock().unwrap();
                                    *s = (*s).max(took);
                                }
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(Duration::from_millis(500));
                            }
                            Err(e) => panic!("fatal during a fault test: {e}"),
                        }
                    }
                    confirmed.lock().unwrap().insert(id);
                    seq += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        p
    }

    fn count(&self) -> usize {
        self.confirmed.lock().unwrap().len()
    }

    /// Waits until 200 more messages than `from` were confirmed.
    async fn progress(&self, from: usize, what: &str) {
        let t = Instant::now();
        while self.count() < from + 200 {
            assert!(t.elapsed() < Duration::from_secs(30), "no progress {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the publishers and checks what a consumer finds in `queue`: every confirmed message
    /// (by `message_id`), first occurrences in order per key, duplicates bounded by the failed
    /// attempts (each is at most one message the broker stored but could not confirm).
    async fn finish_and_check(self, ch: &Channel, queue: &str, test: &str) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let confirmed = self.confirmed.lock().unwrap().clone();
        let got = drain(ch, queue, usize::MAX, Duration::from_secs(3)).await;
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut first_seq: HashMap<String, Vec<usize>> = HashMap::new();
        for d in &got {
            let id = message_id(d);
            let n = seen.entry(id.clone()).or_default();
            *n += 1;
            if *n == 1 {
                let key = header(d, "fondo-key").unwrap();
                let seq: usize = header(d, "x-test-seq").unwrap().parse().unwrap();
                first_seq.entry(key).or_default().push(seq);
            }
        }
        let lost: Vec<&String> = confirmed
            .iter()
            .filter(|id| !seen.contains_key(*id))
            .collect();
        let duplicates = got.len() - seen.len();
        let attempts = self.attempts.load(Ordering::Relaxed);
        let failures = self.failures.load(Ordering::Relaxed);
        let slowest = *self.slowest_failure.lock().unwrap();
        eprintln!(
            "{test}: {} confirmed, {} delivered ({} unique, {duplicates} duplicates), {attempts} attempts, {failures} retriable failures, slowest failure {slowest:?}",
            confirmed.len(),
            got.len(),
            seen.len(),
        );
        assert!(
            lost.is_empty(),
            "{} confirmed messages lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        assert!(failures > 0, "the fault was noticed");
        assert!(
            duplicates <= failures,
            "{duplicates} duplicates for {failures} failures"
        );
        for (key, seqs) in &first_seq {
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "order of {key} kept");
        }
        // A publish while the broker is away fails retriable within `reconnect_wait_ms` or the
        // heartbeat timeout (plus a connect attempt), rather than spinning or hanging.
        assert!(slowest < Duration::from_secs(7), "{slowest:?}");
    }
}

/// Polls the health check until it fails; how long that took.
async fn until_unhealthy(sink: &RabbitMqSink, within: Duration) -> Duration {
    let t = Instant::now();
    while sink.healthcheck().await.is_ok() {
        assert!(
            t.elapsed() < within,
            "health check still fine after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_and_killed_mid_stream_loses_nothing() {
    if common::broker("AMQP").is_none() {
        return;
    }
    let node = Node {
        name: format!("fbtest{}", std::process::id()),
        port: common::free_port(),
        dist: common::free_port(),
        base: std::env::temp_dir().join(common::unique("fondo-rabbitmq")),
    };
    node.start();
    let url = node.url();
    let queue = "fondo.all";
    let cfg: RabbitMqSinkConfig = serde_json::from_value(serde_json::json!({
        "url": url,
        "exchange": "fondo",
        "reconnect_wait_ms": 1000,
        "reconnect_initial_ms": 100,
        "reconnect_max_ms": 1000,
        "confirm_timeout_ms": 5000,
        "declare": {
            "exchange": { "type": "topic" },
            "queues": [{ "name": queue, "type": "quorum", "bindings": ["fondo.#"] }]
        }
    }))
    .unwrap();
    let sink = Arc::new(RabbitMqSink::connect("rabbit", &cfg).await.unwrap());
    let publishers = Publishers::start(&sink, 8);
    let t0 = Instant::now();
    publishers.progress(0, "at start").await;

    // 1. A graceful stop (the broker closes client connections with CONNECTION_FORCED), then start.
    // Counted only once the broker is back: confirms that arrive while the node is still shutting
    // down must not pass for progress after the restart.
    node.stop();
    until_unhealthy(&sink, Duration::from_secs(5)).await;
    node.start();
    let before = publishers.count();
    publishers
        .progress(before, "after the graceful restart")
        .await;
    eprintln!("{:?}: progress after the graceful restart", t0.elapsed());
    sink.healthcheck().await.unwrap();

    // 2. SIGKILL, then start.
    node.kill();
    until_unhealthy(&sink, Duration::from_secs(5)).await;
    node.start();
    let before = publishers.count();
    publishers.progress(before, "after kill -9").await;
    eprintln!("{:?}: progress after kill -9", t0.elapsed());

    let (_conn, ch) = admin(&url).await;
    publishers
        .finish_and_check(&ch, queue, "broker restart")
        .await;
    sink.close(Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// network cut

/// A TCP proxy that can black-hole traffic: after `cut`, connections that existed stay open but
/// nothing passes any more (no FIN, no RST, like a dead network path); new connections are
/// accepted and black-holed too until `heal`.
struct Blackhole {
    addr: std::net::SocketAddr,
    cut: Arc<AtomicBool>,
    epoch: Arc<AtomicUsize>,
}

impl Blackhole {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicUsize::new(0));
        let (c, e) = (cut.clone(), epoch.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let born = e.load(Ordering::SeqCst);
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(Self::pipe(cr, sw, c.clone(), e.clone(), born));
                tokio::spawn(Self::pipe(sr, cw, c.clone(), e.clone(), born));
            }
        });
        Blackhole { addr, cut, epoch }
    }

    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        cut: Arc<AtomicBool>,
        epoch: Arc<AtomicUsize>,
        born: usize,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if cut.load(Ordering::SeqCst) || epoch.load(Ordering::SeqCst) != born {
                continue; // swallowed
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    fn cut(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cut.store(true, Ordering::SeqCst);
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_network_cut_is_detected_by_heartbeat_and_loses_nothing() {
    let Some(url) = common::broker("AMQP") else {
        return;
    };
    let parsed: lapin::uri::AMQPUri = url.parse().unwrap();
    let proxy = Blackhole::start(format!(
        "{}:{}",
        parsed.authority.host, parsed.authority.port
    ))
    .await;
    let (_conn, ch) = admin(&url).await;
    let (exchange, queue) = exchange_and_queue(&ch, "fb-cut", "fondo.#").await;
    let via_proxy = format!(
        "amqp://{}:{}@{}/{}",
        parsed.authority.userinfo.username,
        parsed.authority.userinfo.password,
        proxy.addr,
        url.rsplit_once('/').unwrap().1
    );
    let cfg: RabbitMqSinkConfig = serde_json::from_value(serde_json::json!({
        "url": via_proxy,
        "exchange": exchange,
        "heartbeat_s": 1,
        "connect_timeout_ms": 1500,
        "confirm_timeout_ms": 10000,
        "reconnect_wait_ms": 1000,
        "reconnect_max_ms": 500
    }))
    .unwrap();
    let sink = Arc::new(RabbitMqSink::connect("rabbit", &cfg).await.unwrap());
    let publishers = Publishers::start(&sink, 4);
    publishers.progress(0, "at start").await;

    let before = publishers.count();
    proxy.cut();
    // Nothing is closed: only the heartbeat (1 s, so 2 s without a frame) can notice.
    let noticed = until_unhealthy(&sink, Duration::from_secs(6)).await;
    eprintln!("network cut noticed after {noticed:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stalled = publishers.count();
    proxy.heal();
    publishers
        .progress(stalled.max(before), "after the network came back")
        .await;
    sink.healthcheck().await.unwrap();

    publishers
        .finish_and_check(&ch, &queue, "network cut")
        .await;
    sink.close(Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    cleanup(&ch, &[&exchange], &[&queue]).await;
}
