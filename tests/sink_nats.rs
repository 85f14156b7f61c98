//! The NATS sink against a real nats-server with JetStream: everything published arrives with its
//! bytes and headers, in order per key; JetStream drops redeliveries by `Nats-Msg-Id`; a subject
//! without a stream is fatal; a server killed with SIGKILL and restarted mid-stream loses nothing;
//! bad config, an unreachable server and wrong credentials give clear errors.
//!
//! The shared server comes from `FONDO_BRIDGE_TEST_NATS`; the restart and credential tests start their
//! own `nats-server` (on PATH, or /usr/sbin/nats-server) on a free port with a temporary store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::messages::message;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use fondo_bridge::config::NatsSinkConfig;
use fondo_bridge::config::nats::{NatsMode, validate_subject_template};
use fondo_bridge::sinks::nats::NatsSink;
use fondo_bridge::sinks::{Message, Sink, SinkError};
use futures::StreamExt;

// ---------------------------------------------------------------------------------------------
// helpers

fn sink_config(url: &str) -> NatsSinkConfig {
    let mut cfg = NatsSinkConfig::new(url);
    cfg.connect_timeout_ms = 2_000;
    cfg.confirm_timeout_ms = 2_000;
    cfg.reconnect_wait_ms = 3_000;
    cfg.reconnect_max_ms = 250;
    cfg
}

async fn create_stream(
    js: &jetstream::Context,
    name: &str,
    subjects: &str,
    storage: stream::StorageType,
) -> stream::Stream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = js
            .create_stream(stream::Config {
                name: name.to_owned(),
                subjects: vec![subjects.to_owned()],
                storage,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await;
        match r {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("create stream {name}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot create stream {name}: {e}"),
        }
    }
}

/// Everything in the stream under `filter`, read with an independent pull consumer (one filter
/// subject: nats-server 2.9 ignores `filter_subjects`).
async fn read_all(
    stream: &stream::Stream,
    filter: &str,
    expected: usize,
) -> Vec<jetstream::Message> {
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: filter.to_owned(),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("create pull consumer");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut empty_rounds = 0;
    while Instant::now() < deadline && empty_rounds < 2 {
        let want = (expected + 10).saturating_sub(got.len()).clamp(1, 500);
        let mut batch = consumer
            .batch()
            .max_messages(want)
            .expires(Duration::from_millis(700))
            .messages()
            .await
            .expect("fetch batch");
        let before = got.len();
        while let Some(m) = batch.next().await {
            let m = m.expect("message from batch");
            m.ack().await.expect("ack");
            got.push(m);
        }
        if got.len() == before {
            empty_rounds += 1;
        } else {
            empty_rounds = 0;
        }
    }
    got
}

async fn stream_count(stream: &mut stream::Stream) -> u64 {
    stream.info().await.expect("stream info").state.messages
}

fn header<'a>(m: &'a jetstream::Message, name: &str) -> Option<&'a str> {
    m.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
}

/// Publishes like the dispatcher: retriable failures retried with a small backoff, until `limit`.
async fn publish_with_retry(sink: &NatsSink, msg: Message, limit: Duration, retries: &AtomicUsize) {
    let start = Instant::now();
    let mut backoff = Duration::from_millis(20);
    loop {
        match sink.publish(&msg).await {
            Ok(()) => return,
            Err(SinkError::Retriable(reason)) => {
                retries.fetch_add(1, Ordering::Relaxed);
                assert!(
                    start.elapsed() < limit,
                    "event {} still failing after {limit:?}: {reason}",
                    msg.event_id
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
            Err(SinkError::Fatal(reason)) => panic!("event {}: fatal: {reason}", msg.event_id),
        }
    }
}

fn nats_server_bin() -> PathBuf {
    let on_path = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if on_path {
        PathBuf::from("nats-server")
    } else {
        PathBuf::from("/usr/sbin/nats-server")
    }
}

/// A nats-server owned by one test: its own port and store, killed on drop.
struct OwnServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl OwnServer {
    fn start(extra: &[&str]) -> Self {
        let mut s = Self {
            child: None,
            port: common::free_port(),
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        s.spawn();
        s
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let store = self.dir.path().join("store");
        let child = Command::new(nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(&store)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, no goodbye.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap(); // SIGKILL on Unix
            c.wait().unwrap();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_arrive_complete_with_headers_in_key_order() {
    let Some(url) = common::broker("NATS") else {
        return;
    };
    let prefix = common::unique("fbnats");
    let client = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(client);
    let stream_name = common::unique("FBNATS");
    let mut stream = create_stream(
        &js,
        &stream_name,
        &format!("{prefix}.>"),
        stream::StorageType::Memory,
    )
    .await;

    let sink = Arc::new(NatsSink::connect("nats", &sink_config(&url)).await.unwrap());
    assert_eq!(sink.system(), "nats");
    assert_eq!(sink.name(), "nats");
    sink.healthcheck().await.unwrap();

    const KEYS: usize = 20;
    const PER_KEY: usize = 15;
    let mut sent: HashMap<String, Message> = HashMap::new();
    let mut tasks = Vec::new();
    for k in 0..KEYS {
        let key = format!("ord-{k}");
        let subject = if k % 2 == 0 {
            format!("{prefix}.order.update")
        } else {
            format!("{prefix}.order.k{k}")
        };
        let msgs: Vec<Message> = (0..PER_KEY)
            .map(|i| message(&subject, &key, i, &format!("{prefix}-{k}-{i}")))
            .collect();
        for m in &msgs {
            sent.insert(m.event_id.to_string(), m.clone());
        }
        let sink = Arc::clone(&sink);
        tasks.push(tokio::spawn(async move {
            for m in msgs {
                sink.publish(&m).await.unwrap(); // per key sequential, like the dispatcher
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    assert_eq!(stream_count(&mut stream).await, (KEYS * PER_KEY) as u64);
    let got = read_all(&stream, &format!("{prefix}.>"), KEYS * PER_KEY).await;
    assert_eq!(got.len(), KEYS * PER_KEY);

    let mut last_seq: BTreeMap<String, i64> = BTreeMap::new();
    for m in &got {
        let id = header(m, "fondo-event-id").expect("fondo-event-id header");
        let orig = sent
            .get(id)
            .unwrap_or_else(|| panic!("unexpected event {id}"));
        assert_eq!(m.subject.as_str(), orig.topic);
        assert_eq!(m.payload, orig.payload, "payload bytes of {id}");
        for (k, v) in &orig.headers {
            assert_eq!(header(m, k), Some(v.as_str()), "header {k} of {id}");
        }
        assert_eq!(header(m, "fondo-key"), orig.key.as_deref());
        assert_eq!(header(m, "Nats-Msg-Id"), Some(id));
        let key = orig.key.clone().unwrap();
        let seq: i64 = header(m, "x-test-seq").unwrap().parse().unwrap();
        let prev = last_seq.insert(key.clone(), seq).unwrap_or(-1);
        assert_eq!(seq, prev + 1, "order of key {key}");
    }
    assert_eq!(last_seq.len(), KEYS);

    // A larger run: 200 keys publishing at once, every message stored. (How fast is the
    // benchmark harness's to say: `fondo-bench --scenarios sink`.)
    const BIG_KEYS: usize = 200;
    const BIG_PER_KEY: usize = 25;
    let mut tasks = Vec::new();
    for k in 0..BIG_KEYS {
        let sink = Arc::clone(&sink);
        let prefix = prefix.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..BIG_PER_KEY {
                let m = message(
                    &format!("{prefix}.bulk.update"),
                    &format!("b-{k}"),
                    i,
                    &format!("{prefix}-bulk-{k}-{i}"),
                );
                sink.publish(&m).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        stream_count(&mut stream).await,
        (KEYS * PER_KEY + BIG_KEYS * BIG_PER_KEY) as u64
    );

    sink.close(Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        sink.publish(&message(&format!("{prefix}.x"), "k", 0, "late"))
            .await
            .is_err()
    );
    js.delete_stream(&stream_name).await.unwrap();
}

#[tokio::test]
async fn same_event_twice_is_stored_once() {
    let Some(url) = common::broker("NATS") else {
        return;
    };
    let prefix = common::unique("fbdup");
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let stream_name = common::unique("FBDUP");
    let mut stream = create_stream(
        &js,
        &stream_name,
        &format!("{prefix}.>"),
        stream::StorageType::Memory,
    )
    .await;
    let sink = NatsSink::connect("nats", &sink_config(&url)).await.unwrap();

    let m = message(
        &format!("{prefix}.order.update"),
        "o-1",
        1,
        &format!("{prefix}-ev-1"),
    );
    sink.publish(&m).await.unwrap();
    sink.publish(&m).await.unwrap(); // a redelivery: confirmed, dropped by the stream
    assert_eq!(stream_count(&mut stream).await, 1);

    // The same event id on another subject of the stream is still the same event.
    let mut moved = m.clone();
    moved.topic = format!("{prefix}.order.other");
    sink.publish(&moved).await.unwrap();
    assert_eq!(stream_count(&mut stream).await, 1);

    let other = message(
        &format!("{prefix}.order.update"),
        "o-1",
        2,
        &format!("{prefix}-ev-2"),
    );
    sink.publish(&other).await.unwrap();
    assert_eq!(stream_count(&mut stream).await, 2);

    js.delete_stream(&stream_name).await.unwrap();
}

#[tokio::test]
async fn subject_without_stream_and_bad_messages_are_fatal() {
    let Some(url) = common::broker("NATS") else {
        return;
    };
    let sink = NatsSink::connect("nats", &sink_config(&url)).await.unwrap();
    let subject = format!("{}.nobody.listens", common::unique("fbnostream"));

    let err = sink
        .publish(&message(&subject, "k", 1, "ev-nostream"))
        .await
        .unwrap_err();
    match &err {
        SinkError::Fatal(reason) => {
            assert!(reason.contains(&subject), "{reason}");
            assert!(
                reason.contains("no JetStream stream captures subject"),
                "{reason}"
            );
        }
        other => panic!("expected Fatal, got {other:?}"),
    }
    assert!(
        !err.reason().contains("åäö"),
        "a reason never carries the payload"
    );

    // A rendered subject that is not a valid subject, and header values that would break the
    // protocol: fatal (dead-lettered), never a panic.
    for bad in ["has space.x", "a..b", "a.*", ""] {
        let r = sink.publish(&message(bad, "k", 1, "ev-bad")).await;
        assert!(matches!(r, Err(SinkError::Fatal(_))), "{bad:?}: {r:?}");
    }
    let mut crlf = message(&subject, "k", 1, "ev-crlf");
    crlf.headers
        .push(("x-injected".into(), "a\r\nPUB evil 0".into()));
    assert!(matches!(
        sink.publish(&crlf).await,
        Err(SinkError::Fatal(_))
    ));
    // Larger than the server's max_payload (1 MiB by default): fatal, never sent.
    let mut huge = message(&subject, "k", 1, "ev-huge");
    huge.payload = Bytes::from(vec![b'x'; 2 * 1024 * 1024]);
    match sink.publish(&huge).await {
        Err(SinkError::Fatal(r)) => assert!(r.contains("max_payload"), "{r}"),
        other => panic!("expected Fatal, got {other:?}"),
    }
    let mut bad_name = message(&subject, "k", 1, "ev-colon");
    bad_name.headers.push(("bad:name".into(), "v".into()));
    assert!(matches!(
        sink.publish(&bad_name).await,
        Err(SinkError::Fatal(_))
    ));
    sink.healthcheck().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_and_restarted_mid_stream_loses_nothing() {
    if common::broker("NATS").is_none() {
        return;
    }
    let mut server = OwnServer::start(&["-js"]);
    let url = server.url();
    let prefix = common::unique("fbrestart");
    let stream_name = common::unique("FBRESTART");
    let test_client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(&url)
        .await
        .unwrap();
    let js = jetstream::new(test_client);
    create_stream(
        &js,
        &stream_name,
        &format!("{prefix}.>"),
        stream::StorageType::File,
    )
    .await;

    let mut cfg = sink_config(&url);
    // Shorter than the outage below, so publishes waiting for the reconnect fail and are retried.
    cfg.reconnect_wait_ms = 400;
    let sink = Arc::new(NatsSink::connect("nats", &cfg).await.unwrap());
    sink.healthcheck().await.unwrap();

    const KEYS: usize = 10;
    const PER_KEY: usize = 300;
    const TOTAL: usize = KEYS * PER_KEY;
    let delivered = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for k in 0..KEYS {
        let sink = Arc::clone(&sink);
        let delivered = Arc::clone(&delivered);
        let retries = Arc::clone(&retries);
        let prefix = prefix.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_KEY {
                let m = message(
                    &format!("{prefix}.order.update"),
                    &format!("k{k}"),
                    i,
                    &format!("{prefix}-{k}-{i}"),
                );
                publish_with_retry(&sink, m, Duration::from_secs(60), &retries).await;
                delivered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Kill once a third has been confirmed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered.load(Ordering::Relaxed) < TOTAL / 3 {
        assert!(Instant::now() < deadline, "publishing does not progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let at_kill = delivered.load(Ordering::Relaxed);
    eprintln!("killed nats-server (SIGKILL) after {at_kill} confirmed");

    // Unhealthy while the server is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sink.healthcheck().await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "healthcheck stays ok with the server dead"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(sink.healthcheck().await.is_err());
    server.spawn();
    eprintln!("restarted nats-server on the same port and store");

    // Healthy again once reconnected.
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Err(e) = sink.healthcheck().await {
        assert!(
            Instant::now() < deadline,
            "not healthy after the restart: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(delivered.load(Ordering::Relaxed), TOTAL);
    eprintln!(
        "all {TOTAL} confirmed; {} retriable failures retried",
        retries.load(Ordering::Relaxed)
    );
    assert!(
        retries.load(Ordering::Relaxed) > 0,
        "the outage should have failed some publishes"
    );

    let mut stream = js.get_stream(&stream_name).await.unwrap();
    assert_eq!(
        stream_count(&mut stream).await,
        TOTAL as u64,
        "stored exactly once each"
    );
    let got = read_all(&stream, &format!("{prefix}.>"), TOTAL).await;
    let ids: HashSet<String> = got
        .iter()
        .map(|m| header(m, "fondo-event-id").unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), TOTAL, "every event present");
    for k in 0..KEYS {
        for i in 0..PER_KEY {
            assert!(ids.contains(&format!("{prefix}-{k}-{i}")), "lost {k}-{i}");
        }
    }
    sink.close(Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_config_unreachable_server_and_wrong_credentials_are_clear_errors() {
    if common::broker("NATS").is_none() {
        return;
    }

    // Subject templates (called by config validation for routes to NATS sinks).
    assert!(validate_subject_template("fondo.{entity}.{action}").is_ok());
    for bad in [
        "fondo..order",
        "fondo.{action",
        "fondo order",
        "fondo.>",
        "fondo.*.x",
        ".fondo",
    ] {
        let e = validate_subject_template(bad).unwrap_err();
        assert!(e.contains(bad), "{bad:?}: {e}");
    }

    // Invalid config: refused before connecting.
    let mut core = sink_config("nats://127.0.0.1:4222");
    core.mode = NatsMode::Core;
    match NatsSink::connect("nats", &core).await {
        Err(SinkError::Fatal(r)) => assert!(r.contains("accept_at_most_once"), "{r}"),
        other => panic!("expected Fatal, got {other:?}"),
    }
    match NatsSink::connect("nats", &sink_config("http://127.0.0.1:4222")).await {
        Err(SinkError::Fatal(r)) => assert!(r.contains("url"), "{r}"),
        other => panic!("expected Fatal, got {other:?}"),
    }

    // Unreachable: a port nobody listens on; fails within the connect timeout, no endless retry.
    let dead = format!("nats://127.0.0.1:{}", common::free_port());
    let started = Instant::now();
    match NatsSink::connect("nats", &sink_config(&dead)).await {
        Err(SinkError::Retriable(r)) => {
            assert!(r.contains("cannot connect to NATS"), "{r}");
            assert!(r.contains(&dead), "{r}");
        }
        other => panic!("expected Retriable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );

    // Wrong credentials.
    let auth = OwnServer::start(&["-js", "--user", "a", "--pass", "b"]);
    let mut wrong = sink_config(&auth.url());
    wrong.user = Some("a".into());
    wrong.password = Some(fondo_bridge::config::Secret("not-b".into()));
    match NatsSink::connect("nats", &wrong).await {
        Err(SinkError::Fatal(r)) => {
            assert!(r.contains("refused the credentials"), "{r}");
            assert!(!r.contains("not-b"), "the password must not appear: {r}");
        }
        other => panic!("expected Fatal, got {other:?}"),
    }
    let anonymous = sink_config(&auth.url());
    assert!(matches!(
        NatsSink::connect("nats", &anonymous).await,
        Err(SinkError::Fatal(_))
    ));
    // The right ones, from a file.
    let pw = auth.dir.path().join("password");
    std::fs::write(&pw, "b\n").unwrap();
    let mut right = sink_config(&auth.url());
    right.user = Some("a".into());
    right.password_file = Some(pw);
    let sink = NatsSink::connect("nats", &right).await.unwrap();
    sink.healthcheck().await.unwrap();

    // Token authentication.
    let token_server = OwnServer::start(&["-js", "--auth", "s3cret-token"]);
    let mut wrong = sink_config(&token_server.url());
    wrong.token = Some(fondo_bridge::config::Secret("wrong-token".into()));
    match NatsSink::connect("nats", &wrong).await {
        Err(SinkError::Fatal(r)) => {
            assert!(r.contains("refused the credentials"), "{r}");
            assert!(!r.contains("wrong-token"), "the token must not appear: {r}");
        }
        other => panic!("expected Fatal, got {other:?}"),
    }
    let token_file = token_server.dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let mut right = sink_config(&token_server.url());
    right.token_file = Some(token_file);
    NatsSink::connect("nats", &right)
        .await
        .unwrap()
        .healthcheck()
        .await
        .unwrap();
    let mut missing = sink_config(&token_server.url());
    missing.token_file = Some(token_server.dir.path().join("no-such-file"));
    match NatsSink::connect("nats", &missing).await {
        Err(SinkError::Fatal(r)) => assert!(r.contains("cannot read NATS token file"), "{r}"),
        other => panic!("expected Fatal, got {other:?}"),
    }

    // A server without JetStream: fatal at start in JetStream mode, not per message later.
    let plain = OwnServer::start(&[]);
    match NatsSink::connect("nats", &sink_config(&plain.url())).await {
        Err(SinkError::Fatal(r)) => assert!(r.contains("JetStream is not enabled"), "{r}"),
        other => panic!("expected Fatal, got {other:?}"),
    }
    // ... where core mode works when at-most-once is accepted explicitly.
    let mut core = sink_config(&plain.url());
    core.mode = NatsMode::Core;
    core.accept_at_most_once = true;
    let core_sink = NatsSink::connect("nats", &core).await.unwrap();
    core_sink.healthcheck().await.unwrap();
    core_sink
        .publish(&message("fb.core.test", "k", 1, "ev-core"))
        .await
        .unwrap();
}

#[tokio::test]
async fn streams_from_config_are_created_when_missing() {
    let Some(url) = common::broker("NATS") else {
        return;
    };
    let prefix = common::unique("fbcfg");
    let name = common::unique("FBCFG");
    let mut cfg = sink_config(&url);
    cfg.streams
        .push(fondo_bridge::config::nats::NatsStreamConfig {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            storage: fondo_bridge::config::nats::NatsStorage::Memory,
            replicas: 1,
            max_age_ms: 3_600_000,
            duplicate_window_ms: 60_000,
        });
    let sink = NatsSink::connect("nats", &cfg).await.unwrap();
    sink.publish(&message(&format!("{prefix}.a"), "k", 1, "ev-a"))
        .await
        .unwrap();
    // Connecting again finds it and leaves it alone.
    let again = NatsSink::connect("nats", &cfg).await.unwrap();
    again
        .publish(&message(&format!("{prefix}.a"), "k", 1, "ev-a"))
        .await
        .unwrap();

    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let mut stream = js.get_stream(&name).await.unwrap();
    let info = stream.info().await.unwrap().clone();
    assert_eq!(info.config.subjects, vec![format!("{prefix}.>")]);
    assert_eq!(info.config.storage, stream::StorageType::Memory);
    assert_eq!(info.config.max_age, Duration::from_secs(3600));
    assert_eq!(info.config.duplicate_window, Duration::from_secs(60));
    assert_eq!(info.state.messages, 1);
    js.delete_stream(&name).await.unwrap();
}
