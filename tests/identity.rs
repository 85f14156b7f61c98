//! Event identity against a real NATS JetStream (see `event::id` and `dispatch::identity`): Fondo's
//! bodies carry no id, so a state that flips back and forth repeats bodies, and every repeat is a
//! real change. Each test feeds the whole bridge (config file, `Bridge::start`, real sockets) with
//! histories whose bodies repeat, and counts what the stream stored with an independent consumer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use fondo_bridge::app::Bridge;
use fondo_bridge::config::Config;
use fondo_bridge::simulator::generator::Generator;
use fondo_bridge::simulator::stream::{SimHandle, StreamConfig, start};
use fondo_bridge::simulator::webhook_sender::{Outgoing, SenderOptions, Signer, WebhookSender};
use futures::StreamExt as _;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const CLIENT: &str = "49ad7378-121c-4a53-9894-dfd14a7b4877";

/// `account.update` of account `id` from `from` to `to`: the body of a status change.
fn account_change(id: &str, from: &str, to: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"eventType":"account.update","current":{{"id":"{id}","clientId":"{CLIENT}","status":"{to}","accountType":"isk"}},"previous":{{"id":"{id}","clientId":"{CLIENT}","status":"{from}","accountType":"isk"}}}}"#
    ))
}

/// active → blocked → active → blocked → active: the first and third bodies are byte for byte
/// the same, and so are the second and fourth.
fn flip_flop(id: &str) -> Vec<Bytes> {
    let s = ["active", "blocked", "active", "blocked", "active"];
    s.windows(2)
        .map(|w| account_change(id, w[0], w[1]))
        .collect()
}

struct Rig {
    bridge: Option<Bridge>,
    js: jetstream::Context,
    stream: stream::Stream,
    prefix: String,
    sender: Option<WebhookSender>,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn sender_for(bridge: &Bridge) -> Option<WebhookSender> {
    bridge.webhook_addr.map(|a| {
        let mut opts = SenderOptions::new(
            format!("http://{a}/fondo/webhooks/callback"),
            Signer::standard(SECRET).unwrap(),
        );
        opts.max_attempts = 5;
        opts.backoff_initial = Duration::from_millis(50);
        opts.backoff_max = Duration::from_millis(300);
        WebhookSender::new(opts).unwrap()
    })
}

/// Which sources the bridge runs.
struct Sources<'a> {
    websocket: Option<&'a SimHandle>,
    webhook: bool,
}

/// Where the bridge keeps identity state: every test runs with both stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Store {
    Memory,
    /// The machine's Redis (`FONDO_BRIDGE_TEST_REDIS`), under a prefix of the test's own.
    Redis,
}

/// Two tests of one case: with the in-memory store and with the Redis store.
macro_rules! with_both_stores {
    ($case:ident, $memory:ident, $redis:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $memory() {
            $case(Store::Memory).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $redis() {
            $case(Store::Redis).await;
        }
    };
}

async fn rig(sources: Sources<'_>, extra_route: Option<&str>, store: Store) -> Option<Rig> {
    let nats = common::broker("NATS")?;
    let dedupe = match store {
        Store::Memory => "{ snapshot_file: DIR/identity.jsonl }".to_owned(),
        Store::Redis => format!(
            "{{ store: redis, redis: {{ url: \"{}\", prefix: \"{}\" }} }}",
            common::broker("REDIS")?,
            common::unique("fb-test")
        ),
    };
    let client = async_nats::connect(&nats).await.expect("connect to NATS");
    let js = jetstream::new(client);
    let prefix = common::unique("ident").replace('-', "_");
    let stream = js
        .create_stream(stream::Config {
            name: prefix.clone(),
            subjects: vec![format!("{prefix}.>")],
            storage: stream::StorageType::Memory,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("create stream");
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::from("sources:\n");
    if let Some(sim) = sources.websocket {
        yaml += &format!(
            "  websocket:\n    url: {}\n    client_ids: [\"{CLIENT}\"]\n    token: sim-token\n    heartbeat_timeout_ms: 60000\n    reconnect_initial_ms: 10\n    reconnect_max_ms: 100\n",
            sim.base_url()
        );
    }
    if sources.webhook {
        yaml += &format!(
            "  webhook:\n    listen: 127.0.0.1:0\n    signature: {{ scheme: standard-webhooks, secrets: [\"{SECRET}\"] }}\n"
        );
    }
    yaml += &format!(
        r#"sinks:
  nats: {{ type: nats, url: "{nats}" }}
routes:
  - {{ name: all, match: ["*"], to: [{{ sink: nats, topic: "{prefix}.{{entity}}" }}] }}
{extra}
dead_letter: {{ fallback_file: {dir}/dead-letter.jsonl }}
spool: {{ dir: {dir}/spool }}
dedupe: {dedupe}
admin: {{ listen: null }}
"#,
        extra = extra_route.unwrap_or_default().replace("PREFIX", &prefix),
        dir = dir.path().display(),
        dedupe = dedupe.replace("DIR", &dir.path().display().to_string()),
    );
    let path = dir.path().join("bridge.yaml");
    std::fs::write(&path, yaml).unwrap();
    let cfg = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => panic!("config: {:?}", e.problems()),
    };
    let bridge = Bridge::start(cfg).await.expect("bridge starts");
    let sender = sender_for(&bridge);
    Some(Rig {
        bridge: Some(bridge),
        js,
        stream,
        prefix,
        sender,
        config: path,
        _dir: dir,
    })
}

impl Rig {
    fn bridge(&self) -> &Bridge {
        self.bridge.as_ref().expect("bridge running")
    }

    /// POSTs one delivery and waits for the answer, which must be 2xx.
    async fn post(&self, id: &str, body: &Bytes) {
        let d = self
            .sender
            .as_ref()
            .expect("webhook source on")
            .send(&Outgoing::new(id, body.clone()))
            .await;
        assert!(d.acknowledged, "delivery {id}: {:?}", d.statuses);
    }

    /// A clean restart: SIGTERM's path (drain, save), then a new bridge on the same config.
    async fn restart(&mut self) {
        if let Some(b) = self.bridge.take() {
            b.shutdown().await.expect("drained");
        }
        let cfg = Config::load(&self.config).expect("config");
        let bridge = Bridge::start(cfg).await.expect("bridge restarts");
        self.sender = sender_for(&bridge);
        self.bridge = Some(bridge);
    }

    fn counter(&self, f: impl Fn(&fondo_bridge::metrics::Metrics) -> u64) -> u64 {
        f(&self.bridge().metrics)
    }

    /// Waits until the bridge has acknowledged `n` events from its sources.
    async fn wait_acked(&self, n: u64) {
        let t0 = Instant::now();
        while self.bridge().metrics.delivered_total() < n {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "acknowledged {} of {n}",
                self.bridge().metrics.delivered_total()
            );
            // Poll interval (the failure message reports the count reached).
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every message the stream holds under `subject`, in stream order (payload, headers).
    async fn stored(&self, subject: &str) -> Vec<jetstream::Message> {
        let filter = format!("{}.{subject}", self.prefix);
        let consumer: consumer::PullConsumer = self
            .stream
            .create_consumer(consumer::pull::Config {
                filter_subject: filter,
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut got = Vec::new();
        loop {
            let mut batch = consumer
                .batch()
                .max_messages(500)
                .expires(Duration::from_millis(500))
                .messages()
                .await
                .expect("batch");
            let before = got.len();
            while let Some(m) = batch.next().await {
                got.push(m.expect("message"));
            }
            if got.len() == before {
                return got;
            }
        }
    }

    async fn finish(mut self) {
        if let Some(b) = self.bridge.take() {
            b.shutdown().await.expect("drained");
        }
        let _ = self.js.delete_stream(&self.prefix).await;
    }
}

fn payloads(msgs: &[jetstream::Message]) -> Vec<Bytes> {
    msgs.iter().map(|m| m.payload.clone()).collect()
}

fn header(m: &jetstream::Message, name: &str) -> Option<String> {
    m.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_owned())
}

fn deduplicated(m: &fondo_bridge::metrics::Metrics) -> u64 {
    ["websocket", "webhook"]
        .iter()
        .map(|s| m.deduplicated.get_or_create(&m.source(s)).get())
        .sum()
}

/// A bridge with both sources on: the stream from `sim`, and webhooks.
async fn both(sim: &SimHandle, store: Store) -> Option<Rig> {
    rig(
        Sources {
            websocket: Some(sim),
            webhook: true,
        },
        None,
        store,
    )
    .await
}

async fn sim(script: Vec<Bytes>) -> SimHandle {
    let (_, sim) = start(StreamConfig {
        rate: 200.0,
        heartbeat: None,
        client_ids: vec![CLIENT.into()],
        script: Arc::new(script),
        ..StreamConfig::default()
    })
    .await
    .unwrap();
    sim
}

/// active → blocked → active → blocked → active on the stream, then 31 identical frames of a type
/// nobody knows: every frame is a change and is stored, in order.
async fn repeated_bodies_on_the_websocket_are_all_published_in_order(store: Store) {
    let changes = flip_flop("acc-1");
    let unknown = Bytes::from_static(br#"{"eventType":"mystery.thing","current":{"id":"m1"}}"#);
    let mut script = changes.clone();
    script.extend(std::iter::repeat_n(unknown.clone(), 31));
    let sim = sim(script).await;
    let Some(rig) = rig(
        Sources {
            websocket: Some(&sim),
            webhook: false,
        },
        None,
        store,
    )
    .await
    else {
        return;
    };
    rig.wait_acked(35).await;
    let accounts = rig.stored("account").await;
    assert_eq!(payloads(&accounts), changes, "every change, in order");
    let ids: std::collections::HashSet<_> = accounts
        .iter()
        .map(|m| header(m, "fondo-event-id").unwrap())
        .collect();
    assert_eq!(ids.len(), 4, "four occurrences, four ids");
    assert_eq!(rig.stored("mystery").await.len(), 31);
    assert_eq!(rig.counter(deduplicated), 0);
    rig.finish().await;
    sim.stop().await;
}

/// The same history as webhooks with a delivery id each: all published. The same delivery
/// retried three times: published once (and answered 2xx each time). A new delivery whose body
/// repeats one already delivered: published again.
async fn webhook_retries_are_recognised_by_delivery_id_not_by_body(store: Store) {
    let Some(rig) = rig(
        Sources {
            websocket: None,
            webhook: true,
        },
        None,
        store,
    )
    .await
    else {
        return;
    };
    let changes = flip_flop("acc-2");
    for (i, body) in changes.iter().enumerate() {
        rig.post(&format!("msg_{i}"), body).await;
    }
    assert_eq!(payloads(&rig.stored("account").await), changes);
    for _ in 0..3 {
        rig.post("msg_1", &changes[1]).await;
    }
    assert_eq!(
        rig.stored("account").await.len(),
        4,
        "a retry is not a change"
    );
    assert_eq!(rig.counter(|m| m.identity_retries.get()), 3);
    assert_eq!(rig.counter(deduplicated), 3);
    // After a clean restart the delivery ids are still remembered (the replay cache is saved
    // beside the spool), so Fondo's retries that straddle a rolling update are not republished.
    let mut rig = rig;
    rig.restart().await;
    for _ in 0..3 {
        rig.post("msg_2", &changes[2]).await;
    }
    assert_eq!(
        rig.stored("account").await.len(),
        4,
        "a retry after a restart is not a change"
    );
    // Recognised by the bridge itself, not collapsed by JetStream's duplicate window.
    assert_eq!(rig.counter(|m| m.identity_retries.get()), 3);
    assert_eq!(rig.counter(deduplicated), 3);
    let collapsed = rig.counter(|m| {
        m.broker_duplicates
            .get_or_create(&fondo_bridge::metrics::SinkLabels {
                sink: "nats".into(),
            })
            .get()
    });
    assert_eq!(collapsed, 0, "nothing was sent to the broker again");
    rig.post("msg_9", &changes[0]).await;
    let stored = rig.stored("account").await;
    assert_eq!(
        stored.len(),
        5,
        "a new delivery with a known body is a change"
    );
    assert_eq!(stored[4].payload, changes[0]);
    assert_eq!(
        header(&stored[4], "fondo-event-id").as_deref(),
        Some("msg_9"),
        "a webhook occurrence is named by its delivery id"
    );
    rig.finish().await;
}

/// Both sources on: the stream carries the flip-flop, then the webhooks bring the same four
/// changes (each its own delivery). Each change is stored once, in order, and every webhook
/// copy paired with its own stream copy (not with the first body that looks like it).
async fn flip_flop_on_both_sources_is_published_once_per_change_in_order(store: Store) {
    let changes = flip_flop("acc-3");
    let sim = sim(changes.clone()).await;
    let Some(rig) = both(&sim, store).await else {
        return;
    };
    rig.wait_acked(4).await;
    for (i, body) in changes.iter().enumerate() {
        rig.post(&format!("d{i}"), body).await;
    }
    let stored = rig.stored("account").await;
    assert_eq!(payloads(&stored), changes);
    let paired = rig.counter(|m| m.identity_paired.get_or_create(&m.source("webhook")).get());
    assert_eq!(paired, 4);
    assert_eq!(rig.counter(deduplicated), 4);
    rig.finish().await;
    sim.stop().await;
}

/// Both sources on, and the stream loses a stretch of changes (a disconnection: Fondo does not
/// replay them) while the webhooks, trailing, bring every change. Nothing is lost and nothing is
/// stored twice; a change carried only by its webhook after later changes of its object were
/// published is marked `fondo-late`, and counted.
async fn changes_lost_on_the_stream_come_by_webhook_once_and_late_ones_are_marked(store: Store) {
    const N: usize = 300;
    let mut g = Generator::new(7, CLIENT, 5, 0);
    let mut all: Vec<Bytes> = (0..N).map(|_| g.next_event()).collect();
    // Some flip-flops in the middle of the lost stretch and around it: repeated bodies.
    let ff = flip_flop("acc-4");
    all.splice(100..100, ff.iter().cloned());
    all.splice(150..150, ff.iter().cloned());
    let total = all.len();
    let lost = 120..200;
    let streamed: Vec<Bytes> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| !lost.contains(i))
        .map(|(_, b)| b.clone())
        .collect();
    let sim = sim(streamed.clone()).await;
    let Some(rig) = both(&sim, store).await else {
        return;
    };
    // The stream runs ahead; the webhooks trail it, one delivery after another.
    rig.wait_acked(streamed.len() as u64).await;
    for (i, body) in all.iter().enumerate() {
        rig.post(&format!("w{i}"), body).await;
    }
    let stored = rig.stored(">").await;
    let mut want: std::collections::HashMap<Bytes, usize> = std::collections::HashMap::new();
    for b in &all {
        *want.entry(b.clone()).or_default() += 1;
    }
    let mut got: std::collections::HashMap<Bytes, usize> = std::collections::HashMap::new();
    for m in &stored {
        *got.entry(m.payload.clone()).or_default() += 1;
    }
    assert_eq!(stored.len(), total, "each change stored exactly once");
    assert_eq!(
        got, want,
        "the stored bodies are the changes, each as often as it happened"
    );
    let marked = stored
        .iter()
        .filter(|m| header(m, "fondo-late").as_deref() == Some("true"))
        .count() as u64;
    let late = rig.counter(|m| m.late.get());
    assert_eq!(marked, late, "every late change is marked and counted");
    assert!(
        late > 0 && late <= lost.len() as u64,
        "late changes: {late} (only changes the stream lost can be late)"
    );
    rig.finish().await;
    sim.stop().await;
}

/// One event routed to two subjects of one JetStream stream is stored on both: the broker's
/// message id is per occurrence and destination, while `fondo-event-id` is the same on both.
async fn fan_out_to_two_subjects_of_one_stream_stores_both(store: Store) {
    let audit = r#"  - { name: audit, match: ["*"], to: [{ sink: nats, topic: "PREFIX.audit" }] }"#;
    let Some(rig) = rig(
        Sources {
            websocket: None,
            webhook: true,
        },
        Some(audit),
        store,
    )
    .await
    else {
        return;
    };
    let mut g = Generator::new(11, CLIENT, 20, 0);
    let bodies: Vec<Bytes> = (0..100).map(|_| g.next_event()).collect();
    for (i, b) in bodies.iter().enumerate() {
        rig.post(&format!("f{i}"), b).await;
    }
    let audit = rig.stored("audit").await;
    let mut stream = rig.js.get_stream(&rig.prefix).await.unwrap();
    let messages = stream.info().await.unwrap().state.messages;
    assert_eq!(messages, 200, "100 events, two destinations each");
    assert_eq!(audit.len(), 100);
    let mut ids_audit: Vec<String> = audit
        .iter()
        .map(|m| header(m, "fondo-event-id").unwrap())
        .collect();
    let mut ids_entity: Vec<String> = rig
        .stored(">")
        .await
        .iter()
        .filter(|m| !m.subject.ends_with(".audit"))
        .map(|m| header(m, "fondo-event-id").unwrap())
        .collect();
    ids_audit.sort();
    ids_entity.sort();
    assert_eq!(
        ids_audit, ids_entity,
        "one occurrence id on both destinations"
    );
    let msg_ids: std::collections::HashSet<String> = audit
        .iter()
        .map(|m| header(m, "Nats-Msg-Id").unwrap())
        .collect();
    assert_eq!(msg_ids.len(), 100);
    assert!(
        !ids_audit.iter().any(|i| msg_ids.contains(i)),
        "message ids are per destination"
    );
    rig.finish().await;
}

with_both_stores!(
    repeated_bodies_on_the_websocket_are_all_published_in_order,
    repeated_bodies_on_the_websocket_are_all_published_in_order_memory,
    repeated_bodies_on_the_websocket_are_all_published_in_order_redis
);
with_both_stores!(
    webhook_retries_are_recognised_by_delivery_id_not_by_body,
    webhook_retries_are_recognised_by_delivery_id_not_by_body_memory,
    webhook_retries_are_recognised_by_delivery_id_not_by_body_redis
);
with_both_stores!(
    flip_flop_on_both_sources_is_published_once_per_change_in_order,
    flip_flop_on_both_sources_is_published_once_per_change_in_order_memory,
    flip_flop_on_both_sources_is_published_once_per_change_in_order_redis
);
with_both_stores!(
    changes_lost_on_the_stream_come_by_webhook_once_and_late_ones_are_marked,
    changes_lost_on_the_stream_come_by_webhook_once_and_late_ones_are_marked_memory,
    changes_lost_on_the_stream_come_by_webhook_once_and_late_ones_are_marked_redis
);
with_both_stores!(
    fan_out_to_two_subjects_of_one_stream_stores_both,
    fan_out_to_two_subjects_of_one_stream_stores_both_memory,
    fan_out_to_two_subjects_of_one_stream_stores_both_redis
);

/// Redis forgets its scripts (a restart, a failover, `SCRIPT FLUSH`) while the bridge runs: the
/// next lookup gives Redis the script again in the same pipeline round, and pairing goes on with
/// no store error and no duplicate.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_forgotten_by_redis_are_given_again() {
    let changes = flip_flop("acc-scripts");
    let sim = sim(changes.clone()).await;
    let Some(rig) = both(&sim, Store::Redis).await else {
        return;
    };
    rig.wait_acked(4).await;
    let url = common::broker("REDIS").expect("the rig found Redis");
    let client = redis::Client::open(url.as_str()).expect("Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis");
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut conn)
        .await
        .expect("SCRIPT FLUSH");
    for (i, body) in changes.iter().enumerate() {
        rig.post(&format!("s{i}"), body).await;
    }
    assert_eq!(payloads(&rig.stored("account").await), changes);
    let paired = rig.counter(|m| m.identity_paired.get_or_create(&m.source("webhook")).get());
    assert_eq!(paired, 4, "every webhook copy paired with its stream copy");
    let errors = rig.counter(|m| {
        ["resolve", "await_owner", "mark"]
            .iter()
            .map(|op| m.dedupe_store_errors_in(op).get())
            .sum()
    });
    assert_eq!(errors, 0, "no lookup failed");
    rig.finish().await;
    sim.stop().await;
}
