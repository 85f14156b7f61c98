//! More than one replica sharing identity state on Redis (`dedupe.store: redis`), as real
//! `fondo-bridge` processes: replica 0 owns the simulator's stream (StatefulSet sharding by
//! ordinal), both take webhooks, both publish to one NATS JetStream stream whose own duplicate
//! window is 100 ms, so what is counted there is what the bridges published.
//!
//! Redis: `FONDO_BRIDGE_TEST_REDIS` (the README's test command sets it), each test under its own
//! key prefix; the stop/start test runs a redis-server of its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "reliability/support.rs"]
mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::free_port;
use fondo_bridge::simulator::generator::Generator;
use fondo_bridge::simulator::stream::{self, SimHandle, StreamConfig};
use fondo_bridge::simulator::webhook_sender::{Outgoing, WebhookSender};
use support::*;

const COLLECT: Duration = Duration::from_secs(60);

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Replica `ordinal` of two: both sources configured, the Redis store under `prefix`.
struct Replica {
    proc: BridgeProc,
    webhook: u16,
    _dir: tempfile::TempDir,
}

impl Replica {
    fn start(ordinal: usize, nats: &str, sim: &SimHandle, redis: &str, prefix: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let webhook = free_port();
        let mut cfg = ConfigBuilder::new(
            dir.path(),
            free_port(),
            &format!("{{ type: nats, url: \"{nats}\", confirm_timeout_ms: 2000 }}"),
        );
        cfg.topic = "fondo.rep".into();
        cfg.ws = Some(sim.base_url());
        cfg.webhook = Some(webhook);
        let config = format!(
            "{}dedupe: {{ store: redis, redis: {{ url: \"{redis}\", prefix: \"{prefix}\", timeout_ms: 200, owner_wait_ms: 2000 }} }}\n",
            cfg.render()
        );
        let secrets = format!("[\"{WEBHOOK_SECRET}\"]");
        let pod = format!("fondo-bridge-{ordinal}");
        let env = [
            WS_TOKEN_ENV,
            (WEBHOOK_SECRETS_ENV, secrets.as_str()),
            ("FONDO_BRIDGE_REPLICAS", "2"),
            ("FONDO_BRIDGE_POD_NAME", pod.as_str()),
        ];
        let proc = blocking(|| BridgeProc::start(dir.path(), cfg.admin, &config, &env));
        Self {
            proc,
            webhook,
            _dir: dir,
        }
    }

    fn sender(&self) -> WebhookSender {
        fondo_sender(
            self.webhook,
            8,
            Duration::from_millis(50),
            Duration::from_millis(500),
        )
    }

    fn metric(&self, name: &str) -> f64 {
        self.proc.metric(name).unwrap_or(-1.0)
    }
}

/// The machine's Redis, and a NATS server of the test's own with stream `REP` (duplicate window
/// 100 ms, so what is counted there is what the bridges published).
async fn brokers() -> Option<(String, NatsServer, String)> {
    let redis = common::broker("REDIS")?;
    let nats = blocking(NatsServer::start)?;
    let url = nats.url();
    nats_stream_window(&url, "REP", "fondo.rep", Duration::from_millis(100)).await;
    Some((redis, nats, url))
}

async fn scripted_sim(script: Vec<Bytes>, rate: f64) -> SimHandle {
    let (_, h) = stream::start(StreamConfig {
        rate,
        heartbeat: Some(Duration::from_millis(1000)),
        client_ids: vec![CID.to_owned()],
        record: true,
        script: Arc::new(script),
        ..StreamConfig::default()
    })
    .await
    .expect("simulator starts");
    h
}

/// `n` distinct events of 40 objects (each with its object's sequence number).
fn history(n: usize, seed: u64) -> Vec<Bytes> {
    let mut g = Generator::new(seed, CID, 40, 0);
    (0..n).map(|_| g.next_event()).collect()
}

/// The stream brings every change but a lost stretch (a disconnection Fondo does not replay) to
/// replica 0; then every change comes as a webhook, spread over both replicas, and every fifth
/// is retried on the other replica after its first copy was answered. Every change is on the
/// broker exactly once; apart from the changes only the webhooks carried (published late, after
/// later changes of their object), in order per object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_publish_every_change_once_in_order() {
    let Some((redis, _nats, url)) = brokers().await else {
        return;
    };
    let all = history(1_500, 11);
    let lost: HashSet<usize> = (600..700).collect();
    let streamed: Vec<Bytes> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| !lost.contains(i))
        .map(|(_, b)| b.clone())
        .collect();
    let sim = scripted_sim(streamed.clone(), 1_000.0).await;
    let prefix = common::unique("fb-rep");
    let a = Replica::start(0, &url, &sim, &redis, &prefix);
    let b = Replica::start(1, &url, &sim, &redis, &prefix);
    // The stream runs ahead; replica 0 has delivered it before the webhooks come.
    common::eventually("the stream", Duration::from_secs(60), || {
        a.metric("fondo_bridge_acked_total") >= streamed.len() as f64
    })
    .await;
    let (to_a, to_b): (Vec<_>, Vec<_>) = all
        .iter()
        .enumerate()
        .map(|(i, body)| (i, Outgoing::new(format!("w{i}"), body.clone())))
        .partition(|(i, _)| i % 2 == 0);
    let (sa, sb) = (a.sender(), b.sender());
    let strip = |v: Vec<(usize, Outgoing)>| v.into_iter().map(|(_, o)| o).collect::<Vec<_>>();
    let (ra, rb) = tokio::join!(
        sa.send_all(strip(to_a), None),
        sb.send_all(strip(to_b), None)
    );
    assert_eq!(
        ra.acknowledged + rb.acknowledged,
        all.len(),
        "every webhook answered 2xx"
    );
    // Retries on the other replica: the first copy was answered, so they are not changes.
    let retried: Vec<(usize, Outgoing)> = (0..all.len())
        .step_by(5)
        .map(|i| (i, Outgoing::new(format!("w{i}"), all[i].clone())))
        .collect();
    let (on_b, on_a): (Vec<_>, Vec<_>) = retried.into_iter().partition(|(i, _)| i % 2 == 0);
    let (ra, rb) = tokio::join!(
        sa.send_all(strip(on_a), None),
        sb.send_all(strip(on_b), None)
    );
    assert_eq!(ra.acknowledged + rb.acknowledged, all.len().div_ceil(5));

    let got = nats_collect(&url, "REP", COLLECT, Want::of(&all, &[])).await;
    // Let anything published late show up before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got_more = nats_collect(&url, "REP", Duration::from_secs(5), Want::drain()).await;
    let got = if got_more.len() > got.len() {
        got_more
    } else {
        got
    };
    let t = tally(&all, &got, &[]);
    let lost_bodies: HashSet<&Bytes> = lost.iter().map(|&i| &all[i]).collect();
    let kept_sent: Vec<Bytes> = all
        .iter()
        .filter(|b| !lost_bodies.contains(b))
        .cloned()
        .collect();
    let kept_got: Vec<Bytes> = got
        .iter()
        .filter(|b| !lost_bodies.contains(b))
        .cloned()
        .collect();
    let in_order = tally(&kept_sent, &kept_got, &[]);
    let covered = |r: &Replica| r.metric("fondo_bridge_identity_covered_total");
    let errors = a.metric("fondo_bridge_dedupe_store_errors_total")
        + b.metric("fondo_bridge_dedupe_store_errors_total");
    eprintln!(
        "two replicas: sent {} (stream {}, webhooks {} + {} retries), stored {}, lost {}, duplicated {}, \
         order violations {} (of them outside the lost stretch {}), covered A={} B={}, late A={} B={}, store errors {errors}",
        all.len(),
        streamed.len(),
        all.len(),
        all.len().div_ceil(5),
        got.len(),
        t.lost,
        t.duplicated,
        t.order_violations,
        in_order.order_violations,
        covered(&a),
        covered(&b),
        a.metric("fondo_bridge_late_total"),
        b.metric("fondo_bridge_late_total"),
    );
    assert_eq!(t.lost, 0, "{t:?}");
    assert_eq!(t.duplicated, 0, "published exactly once: {t:?}");
    assert_eq!(t.corrupted + t.unexpected, 0, "{t:?}");
    assert_eq!(
        in_order.order_violations, 0,
        "in order per object: {in_order:?}"
    );
    assert_eq!(errors, 0.0, "the store answered every lookup");
    assert!(
        covered(&b) > 0.0,
        "replica 1's copies were acknowledged as delivered by replica 0"
    );
    drop((a, b));
}

/// The webhooks come first, to replica 1 (which reads no stream); then replica 0 reads the same
/// changes on the stream: a flip-flop whose bodies repeat. Replica 0's
/// copies pair with replica 1's occurrences and are released without publishing: each change is
/// stored once, in the order it happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_copies_of_changes_another_replica_published_are_not_published_again() {
    let Some((redis, _nats, url)) = brokers().await else {
        return;
    };
    let account = |from: &str, to: &str| {
        Bytes::from(format!(
            r#"{{"eventType":"account.update","current":{{"id":"acc-ff","clientId":"{CID}","status":"{to}"}},"previous":{{"id":"acc-ff","clientId":"{CID}","status":"{from}"}}}}"#
        ))
    };
    let states = ["active", "blocked", "active", "blocked", "active"];
    let changes: Vec<Bytes> = states.windows(2).map(|w| account(w[0], w[1])).collect();
    // The stream's simulator is held back until the webhooks were delivered.
    let sim = scripted_sim(changes.clone(), 50.0).await;
    sim.set_paused(true);
    let prefix = common::unique("fb-rep");
    let a = Replica::start(0, &url, &sim, &redis, &prefix);
    let b = Replica::start(1, &url, &sim, &redis, &prefix);
    let sb = b.sender();
    for (i, body) in changes.iter().enumerate() {
        let d = sb
            .send(&Outgoing::new(format!("ff{i}"), body.clone()))
            .await;
        assert!(d.acknowledged, "{:?}", d.statuses);
    }
    sim.set_paused(false);
    common::eventually("replica 0 to release the stream's copies", COLLECT, || {
        a.metric("fondo_bridge_identity_covered_total") >= changes.len() as f64
    })
    .await;
    let got = nats_collect(&url, "REP", Duration::from_secs(3), Want::drain()).await;
    assert_eq!(got, changes, "each change once, in order");
    assert_eq!(
        a.metric("fondo_bridge_identity_paired_total"),
        changes.len() as f64
    );
    drop((a, b));
}

/// A redis-server of the test's own (append-only file, so a restart keeps its keys).
struct OwnRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl OwnRedis {
    fn start() -> Option<Self> {
        let bin = tool(
            "redis-server",
            &[
                "/usr/bin/redis-server".into(),
                "/usr/local/bin/redis-server".into(),
            ],
        )?;
        let mut r = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        r.spawn(&bin);
        Some(r)
    }

    fn spawn(&mut self, bin: &Path) {
        let child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !accepts(self.port) {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            // Poll interval of this blocking wait (a plain fn) for redis-server to listen.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Redis is killed mid-stream and started again 2 s later while replica 0 reads the stream and
/// both replicas take its webhooks. Nothing is lost; the duplicates are bounded by the lookups
/// that failed while Redis was away (each can make one copy a new occurrence), which are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_stream_loses_nothing() {
    let Some(mut redis) = blocking(OwnRedis::start) else {
        assert!(!ci(), "redis-server is needed under CI=true");
        eprintln!("!!! SKIPPING: no redis-server binary");
        return;
    };
    let Some(nats) = blocking(NatsServer::start) else {
        return;
    };
    let url = nats.url();
    nats_stream_window(&url, "REP", "fondo.rep", Duration::from_millis(100)).await;
    const N: usize = 4_000;
    let all = history(N, 23);
    let sim = Arc::new(scripted_sim(all.clone(), 500.0).await);
    let prefix = common::unique("fb-rep");
    let a = Replica::start(0, &url, &sim, &redis.url(), &prefix);
    let b = Replica::start(1, &url, &sim, &redis.url(), &prefix);
    // Webhooks mirror the stream 100 ms behind it, alternating between the replicas.
    let senders = Arc::new([a.sender(), b.sender()]);
    let mirror_sim = Arc::clone(&sim);
    let mirror = tokio::spawn(async move {
        let mut mirrored = 0usize;
        let mut batches = Vec::new();
        while mirrored < N {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let sent = mirror_sim.sent_events(CID);
            if sent.len() > mirrored {
                for r in 0..2 {
                    let batch: Vec<Outgoing> = (mirrored..sent.len())
                        .filter(|i| i % 2 == r)
                        .map(|i| Outgoing::new(format!("m{i}"), sent[i].clone()))
                        .collect();
                    let senders = Arc::clone(&senders);
                    batches.push(tokio::spawn(async move {
                        senders[r].send_all(batch, None).await.acknowledged
                    }));
                }
                mirrored = sent.len();
            }
        }
        let mut acknowledged = 0;
        for b in batches {
            acknowledged += b.await.unwrap();
        }
        acknowledged
    });
    common::eventually("a third of the stream", Duration::from_secs(60), || {
        sim.events_sent() >= (N / 3) as u64
    })
    .await;
    let at = sim.events_sent();
    blocking(|| redis.kill());
    common::eventually(
        "/readyz to report the store unreachable",
        Duration::from_secs(30),
        || {
            http_get(a.proc.admin, "/readyz")
                .is_some_and(|r| r.contains("dedupe_store: unreachable"))
        },
    )
    .await;
    // Redis stays down for two seconds of the stream (1000 events at 500/s).
    common::eventually(
        "1000 events streamed while Redis is down",
        Duration::from_secs(60),
        || sim.events_sent() >= at + 1000,
    )
    .await;
    let readyz = http_get(a.proc.admin, "/readyz").unwrap_or_default();
    assert!(
        readyz.contains("dedupe_store: unreachable"),
        "/readyz reports the store: {readyz}"
    );
    assert!(
        readyz.starts_with("HTTP/1.1 200") || readyz.starts_with("HTTP/1.0 200"),
        "a missing store does not make the bridge unready (it still delivers): {readyz}"
    );
    let bin = tool("redis-server", &["/usr/bin/redis-server".into()]).unwrap();
    blocking(|| redis.spawn(&bin));
    let back = sim.events_sent();
    eprintln!("Redis down from event {at} to {back} of the stream");
    assert_eq!(mirror.await.unwrap(), N, "every webhook answered 2xx");
    common::eventually(
        "/readyz to report the store again",
        Duration::from_secs(10),
        || http_get(a.proc.admin, "/readyz").is_some_and(|r| r.contains("dedupe_store: ok")),
    )
    .await;
    let got = nats_collect(&url, "REP", COLLECT, Want::of(&all, &[])).await;
    // A quiet second: anything published late shows up before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = nats_collect(&url, "REP", Duration::from_secs(5), Want::drain()).await;
    let got = if again.len() > got.len() { again } else { got };
    let t = tally(&all, &got, &[]);
    let errors = |r: &Replica| {
        r.metric("fondo_bridge_dedupe_store_errors_total")
            + r.metric("fondo_bridge_identity_owner_timeouts_total")
    };
    let failed = errors(&a) + errors(&b);
    eprintln!(
        "Redis stop/start: sent {N}, stored {}, lost {}, duplicated {}, failed lookups and owner timeouts {failed}",
        got.len(),
        t.lost,
        t.duplicated
    );
    assert_eq!(t.lost, 0, "{t:?}");
    assert_eq!(t.corrupted + t.unexpected, 0, "{t:?}");
    assert!(failed > 0.0, "the outage was noticed and counted");
    assert!(
        t.duplicated as f64 <= failed,
        "duplicates {} beyond the failed lookups {failed}",
        t.duplicated
    );
    drop((a, b));
}

/// Replica 0, which owns the stream, is killed mid-stream and comes back 2 s later (as its
/// StatefulSet pod would); a stretch of changes never reaches the stream (as while nobody reads
/// it: Fondo does not replay). Every change also comes as a webhook, all to replica 1, after the
/// stream: nothing is lost. Measures the gap: from the kill to the stream read again, and from
/// the process start to the stream read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_loss_gap_is_covered_by_webhooks_on_the_other_replica() {
    let Some((redis, _nats, url)) = brokers().await else {
        return;
    };
    const N: usize = 3_000;
    const RATE: f64 = 500.0;
    let all = history(N, 31);
    let unread: HashSet<usize> = (N / 2..N / 2 + 300).collect();
    let streamed: Vec<Bytes> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| !unread.contains(i))
        .map(|(_, b)| b.clone())
        .collect();
    let sim = scripted_sim(streamed.clone(), RATE).await;
    let prefix = common::unique("fb-rep");
    let mut a = Replica::start(0, &url, &sim, &redis, &prefix);
    let b = Replica::start(1, &url, &sim, &redis, &prefix);
    common::eventually("a third of the stream", Duration::from_secs(60), || {
        sim.events_sent() >= (N / 3) as u64
    })
    .await;
    let connections = sim.connections();
    let killed = Instant::now();
    blocking(|| a.proc.sigkill());
    // The pod stays down for 2 s, as a StatefulSet's replacement would.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    blocking(|| a.proc.spawn());
    common::eventually("the stream read again", Duration::from_secs(30), || {
        sim.connections() > connections
    })
    .await;
    let (gap, own) = (killed.elapsed(), started.elapsed());
    common::eventually("the rest of the stream", Duration::from_secs(60), || {
        sim.events_sent() >= streamed.len() as u64
    })
    .await;
    let outgoing: Vec<Outgoing> = all
        .iter()
        .enumerate()
        .map(|(i, body)| Outgoing::new(format!("p{i}"), body.clone()))
        .collect();
    let answered = b.sender().send_all(outgoing, None).await.acknowledged;
    assert_eq!(answered, N, "every webhook answered 2xx");
    let got = nats_collect(&url, "REP", COLLECT, Want::of(&all, &[])).await;
    let t = tally(&all, &got, &[]);
    let replayed = spool_replayed(&a.proc);
    let bound = replayed as usize + RATE as usize;
    eprintln!(
        "pod loss: stream unread for {:.2} s (of which {:.2} s from the process start to the stream read again); \
         sent {N}, stored {}, lost {}, duplicated {} (bound: spool replays {replayed} + one second of the stream)",
        gap.as_secs_f64(),
        own.as_secs_f64(),
        got.len(),
        t.lost,
        t.duplicated
    );
    assert_eq!(
        t.lost, 0,
        "the webhooks covered what the stream did not carry: {t:?}"
    );
    assert_eq!(t.corrupted + t.unexpected, 0, "{t:?}");
    assert!(
        t.duplicated <= bound,
        "duplicates {} beyond {bound}",
        t.duplicated
    );
    drop((a, b));
}

/// The lookup is atomic: 200 stream copies and 200 webhook copies of one body (one content key),
/// looked up all at once by two replicas' stores, make exactly 200 pairs: no copy paired twice,
/// none left unpaired while a twin waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_pair_each_copy_exactly_once() {
    use fondo_bridge::config::RedisStoreConfig;
    use fondo_bridge::dispatch::identity::Copy;
    use fondo_bridge::dispatch::redis_store::RedisStore;
    use fondo_bridge::dispatch::{IdentityConfig, Resolution};
    use fondo_bridge::event::SourceKind;
    let Some(redis) = common::broker("REDIS") else {
        return;
    };
    let rc = RedisStoreConfig {
        url: Some(redis),
        prefix: common::unique("fb-atomic"),
        ..RedisStoreConfig::default()
    };
    let cfg = IdentityConfig {
        pair_sources: true,
        ..IdentityConfig::default()
    };
    let metrics = Arc::new(fondo_bridge::metrics::Metrics::new());
    let stores = [
        RedisStore::new(&rc, cfg.clone(), Arc::clone(&metrics)).unwrap(),
        RedisStore::new(&rc, cfg, Arc::clone(&metrics)).unwrap(),
    ];
    const N: usize = 200;
    let mut tasks = Vec::new();
    for i in 0..2 * N {
        let store = Arc::clone(&stores[i % 2]);
        tasks.push(tokio::spawn(async move {
            let id: Arc<str> = Arc::from(format!("occ-{i}"));
            let delivery = format!("d-{i}");
            let (source, delivery) = if i % 4 < 2 {
                (SourceKind::WebSocket, None)
            } else {
                (SourceKind::Webhook, Some(delivery.as_str()))
            };
            let found = store
                .resolve(Copy {
                    source,
                    content_key: 0xfeed,
                    object: Some("acc-1"),
                    delivery_id: delivery,
                    id: &id,
                })
                .await
                .expect("Redis answers");
            (source, found.resolved.how, found.resolved.id.to_string())
        }));
    }
    let mut paired = 0;
    let mut new = HashSet::new();
    let mut adopted = Vec::new();
    for t in tasks {
        let (_, how, id) = t.await.unwrap();
        match how {
            Resolution::Paired => {
                paired += 1;
                adopted.push(id);
            }
            Resolution::New => {
                new.insert(id);
            }
            Resolution::Retry => panic!("no delivery id was sent twice"),
        }
    }
    assert_eq!(
        paired, N,
        "every copy of one source paired with one of the other"
    );
    assert_eq!(new.len(), N);
    let distinct: HashSet<_> = adopted.iter().collect();
    assert_eq!(distinct.len(), N, "no occurrence was paired twice");
    assert!(adopted.iter().all(|id| new.contains(id)));
}
