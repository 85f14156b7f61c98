#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Black-box tests of the WebSocket source against the simulator, on real sockets on 127.0.0.1,
//! through a real dispatcher into a test sink.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use fondo_bridge::config::{SpoolConfig, WebSocketSourceConfig};
use fondo_bridge::dispatch::Dispatcher;
use fondo_bridge::dlq::read_fallback_file;
use fondo_bridge::event::ParseOptions;
use fondo_bridge::metrics::Metrics;
use fondo_bridge::simulator::generator::object_key;
use fondo_bridge::simulator::stream::{MalformedKind, SimHandle, StreamConfig, start};
use fondo_bridge::sinks::DynSink;
use fondo_bridge::sinks::testing::{Faults, TestSink};
use fondo_bridge::sources::Readiness;
use fondo_bridge::sources::websocket::{WebSocketSource, WebSocketStats};
use fondo_bridge::spool::Spool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "sim-token";

/// A real dispatcher routing every event type to one test sink.
struct Rig {
    d: Dispatcher,
    sink: Arc<TestSink>,
    readiness: Arc<Readiness>,
    dl_file: PathBuf,
}

fn rig(faults: Faults, dir: &Path) -> Rig {
    let dl_file = dir.join("dead-letter.jsonl");
    let sink = Arc::new(TestSink::new("t", faults));
    let d = common::rig::DispatcherRig::new(&dl_file)
        .sink("t", sink.clone() as DynSink)
        .route_all("t", "fondo.{entity}")
        .max_in_flight(10_000)
        .start(&Arc::new(Metrics::new()));
    Rig {
        d,
        sink,
        readiness: Arc::new(Readiness::default()),
        dl_file,
    }
}

/// A source config with short timeouts; `extra` overrides fields (as in the config file).
fn ws_cfg(sim: &SimHandle, clients: &[&str], extra: serde_json::Value) -> WebSocketSourceConfig {
    let mut v = serde_json::json!({
        "url": sim.base_url().replace("ws://", "http://"),
        "client_ids": clients,
        "token": TOKEN,
        "heartbeat_timeout_ms": 5000,
        "ping_interval_ms": 1000,
        "connect_timeout_ms": 2000,
        "reconnect_initial_ms": 10,
        "reconnect_max_ms": 100,
        "auth_retry_ms": 1000,
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in e {
            o.insert(k.clone(), val.clone());
        }
    }
    serde_json::from_value(v).unwrap()
}

fn spool_cfg(dir: &Path, max_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        enabled: true,
        dir: dir.join("spool"),
        max_bytes,
        segment_bytes: 64 * 1024,
        ..SpoolConfig::default()
    }
}

struct Running {
    stats: Arc<WebSocketStats>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), fondo_bridge::sources::websocket::WebSocketError>>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("source did not stop")
            .unwrap()
            .unwrap();
    }
}

fn run_source(rig: &Rig, cfg: WebSocketSourceConfig, spool: SpoolConfig) -> Running {
    let src = WebSocketSource::new(
        cfg,
        spool,
        ParseOptions::default(),
        rig.d.clone(),
        rig.readiness.clone(),
    )
    .unwrap();
    let stats = src.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(src.run(stop.clone()));
    Running { stats, stop, task }
}

fn group_by_object(bodies: impl IntoIterator<Item = Bytes>) -> HashMap<String, Vec<Bytes>> {
    let mut m: HashMap<String, Vec<Bytes>> = HashMap::new();
    for b in bodies {
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        let k = object_key(&v).unwrap_or_else(|| "?".into());
        m.entry(k).or_default().push(b);
    }
    m
}

/// Every sent event arrived with its original bytes, and the events of each object in order.
fn assert_all_in_order(sent: &[Bytes], delivered: &[Bytes]) {
    assert_eq!(delivered.len(), sent.len(), "delivered count");
    let s = group_by_object(sent.iter().cloned());
    let d = group_by_object(delivered.iter().cloned());
    assert_eq!(s.len(), d.len(), "objects");
    for (k, events) in &s {
        assert_eq!(
            d.get(k),
            Some(events),
            "events of {k} differ or are out of order"
        );
    }
}

fn delivered(rig: &Rig) -> Vec<Bytes> {
    rig.sink
        .delivered()
        .into_iter()
        .map(|m| m.payload)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_event_in_order_per_object_with_original_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sim) = start(StreamConfig {
        count: Some(2000),
        heartbeat: Some(Duration::from_millis(100)),
        ..Default::default()
    })
    .await
    .unwrap();
    let rig = rig(Faults::default(), dir.path());
    let src = run_source(
        &rig,
        ws_cfg(&sim, &["c1", "c2"], serde_json::json!({})),
        spool_cfg(dir.path(), 64 << 20),
    );
    common::eventually("4000 events delivered", Duration::from_secs(30), || {
        rig.sink.delivered().len() >= 4000
    })
    .await;
    let mut sent = sim.sent_events("c1");
    sent.extend(sim.sent_events("c2"));
    assert_eq!(sent.len(), 4000);
    assert_all_in_order(&sent, &delivered(&rig));
    assert_eq!(rig.readiness.snapshot().get("websocket:c1"), Some(&Ok(())));
    assert_eq!(rig.readiness.snapshot().get("websocket:c2"), Some(&Ok(())));
    common::eventually("all acknowledged", Duration::from_secs(10), || {
        src.stats.acknowledged.load(Ordering::SeqCst) == 4000
    })
    .await;
    assert_eq!(src.stats.events.load(Ordering::SeqCst), 4000);
    assert!(src.stats.heartbeats.load(Ordering::SeqCst) > 0 || sim.heartbeats_sent() == 0);
    assert_eq!(src.stats.gaps.load(Ordering::SeqCst), 0);
    // Shutdown: the source closes its connections and returns.
    src.stop().await;
    common::eventually("server saw the close", Duration::from_secs(5), || {
        sim.open_connections() == 0
    })
    .await;
    assert!(
        rig.readiness.snapshot()["websocket:c1"].is_err(),
        "not ready after stop"
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_server_drops_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sim) = start(StreamConfig {
        count: Some(2000),
        drop_every: Some(250),
        ..Default::default()
    })
    .await
    .unwrap();
    let rig = rig(Faults::default(), dir.path());
    let src = run_source(
        &rig,
        ws_cfg(&sim, &["c1"], serde_json::json!({ "gap_marker": true })),
        spool_cfg(dir.path(), 64 << 20),
    );
    let is_marker = |b: &Bytes| b.starts_with(br#"{"eventType":"bridge.gap""#);
    common::eventually("2000 events delivered", Duration::from_secs(30), || {
        delivered(&rig).iter().filter(|b| !is_marker(b)).count() >= 2000
    })
    .await;
    let (_, events): (Vec<Bytes>, Vec<Bytes>) =
        delivered(&rig).into_iter().partition(|b| is_marker(b));
    assert_all_in_order(&sim.sent_events("c1"), &events);
    assert!(sim.connections() >= 8, "{} connections", sim.connections());
    let gaps = src.stats.gaps.load(Ordering::SeqCst);
    assert!(gaps >= 7, "{gaps} gaps");
    // One `bridge.gap` marker per gap, saying how long it was.
    common::eventually("gap markers", Duration::from_secs(5), || {
        delivered(&rig).iter().filter(|b| is_marker(b)).count() as u64
            == src.stats.gaps.load(Ordering::SeqCst)
    })
    .await;
    let marker = delivered(&rig).into_iter().find(is_marker).unwrap();
    let m: serde_json::Value = serde_json::from_slice(&marker).unwrap();
    assert_eq!(m["clientId"], "c1");
    assert!(m["seconds"].as_f64().unwrap() >= 0.0);
    assert!(m["from"].is_string() && m["to"].is_string());
    let metrics = rig.d.metrics().encode();
    assert!(
        metrics.contains("websocket_gaps_total{client_id=\"c1\"}"),
        "{metrics}"
    );
    src.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_reconnects_when_the_stream_goes_silent_but_heartbeats_keep_it() {
    let dir = tempfile::tempdir().unwrap();
    // Heartbeats every 50 ms and nothing else: the 300 ms watchdog must stay quiet.
    let (_, quiet) = start(StreamConfig {
        count: Some(0),
        heartbeat: Some(Duration::from_millis(50)),
        ..Default::default()
    })
    .await
    .unwrap();
    let rig1 = rig(Faults::default(), dir.path());
    let extra = serde_json::json!({ "heartbeat_timeout_ms": 300, "ping_interval_ms": 0 });
    let src = run_source(
        &rig1,
        ws_cfg(&quiet, &["c1"], extra.clone()),
        spool_cfg(dir.path(), 1 << 20),
    );
    common::eventually("the bridge to connect", Duration::from_secs(30), || {
        quiet.connections() == 1
    })
    .await;
    // Four watchdog periods of heartbeats only: the watchdog must not fire in that time.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(src.stats.watchdog_timeouts.load(Ordering::SeqCst), 0);
    assert_eq!(quiet.connections(), 1);
    src.stop().await;
    quiet.stop().await;

    // A stall after 5 events: no events, no heartbeats, TCP kept open.
    let (_, stalling) = start(StreamConfig {
        heartbeat: Some(Duration::from_millis(50)),
        stall_after: Some(5),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let rig2 = rig(Faults::default(), dir2.path());
    let src = run_source(
        &rig2,
        ws_cfg(&stalling, &["c1"], extra),
        spool_cfg(dir2.path(), 1 << 20),
    );
    common::eventually("a watchdog reconnect", Duration::from_secs(5), || {
        src.stats.watchdog_timeouts.load(Ordering::SeqCst) >= 1 && stalling.connections() >= 2
    })
    .await;
    // Every event that was sent before each stall arrived.
    common::eventually("events delivered", Duration::from_secs(5), || {
        rig2.sink.delivered().len() == stalling.sent_events("c1").len()
    })
    .await;
    src.stop().await;
    stalling.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_token_is_retried_slowly_and_a_fixed_token_file_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sim) = start(StreamConfig {
        count: Some(10),
        ..Default::default()
    })
    .await
    .unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "wrong-token\n").unwrap();
    let rig = rig(Faults::default(), dir.path());
    let auth_retry = Duration::from_millis(700);
    let mut cfg = ws_cfg(
        &sim,
        &["c1"],
        serde_json::json!({ "auth_retry_ms": auth_retry.as_millis() as u64, "reconnect_initial_ms": 1, "reconnect_max_ms": 5 }),
    );
    cfg.token = None;
    cfg.token_file = Some(token_file.clone());
    let src = run_source(&rig, cfg, spool_cfg(dir.path(), 1 << 20));
    common::eventually("two refused handshakes", Duration::from_secs(5), || {
        sim.handshakes().iter().filter(|h| h.status == 401).count() >= 2
    })
    .await;
    let refused: Vec<_> = sim
        .handshakes()
        .into_iter()
        .filter(|h| h.status == 401)
        .collect();
    let gap = refused[1].at - refused[0].at;
    assert!(
        gap >= auth_retry,
        "second attempt after {gap:?}, sooner than the auth backoff {auth_retry:?}"
    );
    let state = rig.readiness.snapshot()["websocket:c1"].clone();
    assert!(
        state.as_ref().is_err_and(|e| e.contains("401")),
        "{state:?}"
    );
    // The simulator records a refused handshake when it answers 401, before the source has read
    // that answer and counted it.
    common::eventually("two auth failures counted", Duration::from_secs(5), || {
        src.stats.auth_failures.load(Ordering::SeqCst) >= 2
    })
    .await;

    // The token file is re-read on every attempt.
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    common::eventually(
        "connected with the fixed token",
        Duration::from_secs(5),
        || rig.readiness.snapshot().get("websocket:c1") == Some(&Ok(())),
    )
    .await;
    common::eventually("events delivered", Duration::from_secs(5), || {
        rig.sink.delivered().len() == 10
    })
    .await;
    src.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_dead_lettered_and_the_connection_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sim) = start(StreamConfig {
        count: Some(100),
        malformed_every: Some(10),
        oversized_bytes: 20 * 1024,
        ..Default::default()
    })
    .await
    .unwrap();
    let rig = rig(Faults::default(), dir.path());
    let src = run_source(
        &rig,
        ws_cfg(
            &sim,
            &["c1"],
            serde_json::json!({ "max_frame_bytes": 16 * 1024 }),
        ),
        spool_cfg(dir.path(), 1 << 20),
    );
    let malformed = sim.malformed();
    common::eventually("everything handled", Duration::from_secs(10), || {
        rig.sink.delivered().len() == 102 && src.stats.dead_lettered.load(Ordering::SeqCst) == 8
    })
    .await;
    let malformed = if malformed.len() == 10 {
        malformed
    } else {
        sim.malformed()
    };
    assert_eq!(malformed.len(), 10);
    // The 100 generated events in order, plus the 2 events of an unknown type (kept and routed).
    let unknown: Vec<Bytes> = malformed
        .iter()
        .filter(|m| m.kind == MalformedKind::UnknownType)
        .map(|m| m.body.clone())
        .collect();
    assert_eq!(unknown.len(), 2);
    let (known, other): (Vec<Bytes>, Vec<Bytes>) = delivered(&rig)
        .into_iter()
        .partition(|b| !unknown.contains(b));
    assert_eq!(other.len(), 2);
    assert_all_in_order(&sim.sent_events("c1"), &known);
    assert_eq!(
        sim.connections(),
        1,
        "the connection must survive malformed frames"
    );

    let (dls, bad) = read_fallback_file(&rig.dl_file).unwrap();
    assert!(bad.is_empty());
    assert_eq!(dls.len(), 8);
    let reasons: Vec<&str> = dls.iter().map(|d| d.reason.as_str()).collect();
    for needle in [
        "malformed_json",
        "binary frame",
        "exceeds max_frame_bytes",
        "missing_event_type",
    ] {
        assert_eq!(
            reasons.iter().filter(|r| r.contains(needle)).count(),
            2,
            "{needle} in {reasons:?}"
        );
    }
    // Dead letters keep the original bytes.
    for m in malformed
        .iter()
        .filter(|m| m.kind != MalformedKind::UnknownType)
    {
        assert!(
            dls.iter().any(|d| d.body_bytes() == m.body.to_vec()),
            "{:?} not kept",
            m.kind
        );
    }
    assert!(dls.iter().all(|d| d.client_id.as_deref() == Some("c1")));
    src.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_beyond_the_hard_limit_is_refused_unread_and_the_source_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    // Every third malformed frame is oversized: 200 KiB, beyond 2 x 16 KiB and 16 KiB + 64 KiB.
    let (_, sim) = start(StreamConfig {
        count: Some(30),
        malformed_every: Some(10),
        oversized_bytes: 200 * 1024,
        ..Default::default()
    })
    .await
    .unwrap();
    let rig = rig(Faults::default(), dir.path());
    let src = run_source(
        &rig,
        ws_cfg(
            &sim,
            &["c1"],
            serde_json::json!({ "max_frame_bytes": 16 * 1024 }),
        ),
        spool_cfg(dir.path(), 1 << 20),
    );
    common::eventually("refused and reconnected", Duration::from_secs(10), || {
        src.stats.refused_too_large.load(Ordering::SeqCst) >= 1 && sim.connections() >= 2
    })
    .await;
    assert!(rig.d.metrics().encode().contains("frame_too_large"));
    src.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_stops_reading_until_space_frees_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sim) = start(StreamConfig {
        count: Some(600),
        ..Default::default()
    })
    .await
    .unwrap();
    // The sink hangs: nothing is acknowledged, so nothing is released.
    let rig = rig(
        Faults {
            hang: true,
            ..Default::default()
        },
        dir.path(),
    );
    let mut spool = spool_cfg(dir.path(), 48 * 1024);
    spool.segment_bytes = 8 * 1024;
    let src = run_source(&rig, ws_cfg(&sim, &["c1"], serde_json::json!({})), spool);
    common::eventually("the source reads some", Duration::from_secs(5), || {
        src.stats.frames.load(Ordering::SeqCst) > 10
    })
    .await;
    let frames = &src.stats.frames;
    common::eventually_async(
        "the source to stop reading (no new frame for 200 ms)",
        Duration::from_secs(30),
        || async move {
            let before = frames.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            frames.load(Ordering::SeqCst) == before
        },
    )
    .await;
    let a = src.stats.frames.load(Ordering::SeqCst);
    // An observation window: the source must stay stopped while the spool stays full.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = src.stats.frames.load(Ordering::SeqCst);
    assert_eq!(a, b, "the source kept reading while the spool was full");
    assert!(b < 200, "read {b} frames into a 48 KiB spool");
    let on_disk: u64 = std::fs::read_dir(dir.path().join("spool"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk <= 48 * 1024, "{on_disk} bytes on disk");
    assert_eq!(src.stats.watchdog_timeouts.load(Ordering::SeqCst), 0);

    rig.sink.recover();
    common::eventually("all 600 delivered", Duration::from_secs(30), || {
        rig.sink.delivered().len() >= 600
    })
    .await;
    assert_all_in_order(&sim.sent_events("c1"), &delivered(&rig));
    assert_eq!(sim.connections(), 1);
    src.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_every_spooled_event_is_delivered_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sim) = start(StreamConfig {
        count: Some(500),
        heartbeat: Some(Duration::from_millis(100)),
        ..Default::default()
    })
    .await
    .unwrap();
    let spool = spool_cfg(dir.path(), 64 << 20);

    // Run 1 on its own runtime with a sink that never confirms; then the runtime is torn down
    // mid-flight (every task dropped, nothing released, no graceful shutdown): a crash.
    let cfg1 = ws_cfg(&sim, &["c1"], serde_json::json!({}));
    let (spool1, dir1) = (spool.clone(), dir.path().join("run1"));
    let read_before_crash = std::thread::spawn(move || {
        std::fs::create_dir_all(&dir1).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let n = rt.block_on(async move {
            let rig = rig(
                Faults {
                    hang: true,
                    ..Default::default()
                },
                &dir1,
            );
            let src = run_source(&rig, cfg1, spool1);
            common::eventually("500 events spooled", Duration::from_secs(20), || {
                src.stats.events.load(Ordering::SeqCst) >= 500
            })
            .await;
            assert_eq!(rig.sink.delivered().len(), 0);
            src.stats.events.load(Ordering::SeqCst)
        });
        rt.shutdown_timeout(Duration::from_secs(2));
        n
    })
    .join()
    .unwrap();
    assert_eq!(read_before_crash, 500);

    // Run 2: a new source on the same spool, a healthy sink. The simulator has nothing new.
    let rig = rig(Faults::default(), dir.path());
    let src = run_source(&rig, ws_cfg(&sim, &["c1"], serde_json::json!({})), spool);
    common::eventually("replayed events delivered", Duration::from_secs(20), || {
        rig.sink.delivered().len() >= 500
    })
    .await;
    assert_eq!(src.stats.replayed.load(Ordering::SeqCst), 500);
    assert_all_in_order(&sim.sent_events("c1"), &delivered(&rig));
    let sent_ids: Vec<_> = rig
        .sink
        .delivered()
        .iter()
        .map(|m| m.event_id.clone())
        .collect();
    let mut unique = sent_ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 500, "ids");
    // Released once delivered: the spool empties.
    common::eventually("spool released", Duration::from_secs(10), || {
        src.stats.acknowledged.load(Ordering::SeqCst) == 500
    })
    .await;
    src.stop().await;
    sim.stop().await;
}

/// `spool.publish_while_committing`: events are published while their appends commit, and a
/// record is released only once it is both durable and delivered. With bodies that repeat byte
/// for byte (accounts flipping active → blocked → active), every event is still delivered once,
/// as its own occurrence, in order per object, and every record is released: a restart on the
/// same spool replays nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_while_committing_delivers_repeated_bodies_in_order_and_releases_them() {
    let dir = tempfile::tempdir().unwrap();
    let change = |id: &str, from: &str, to: &str| {
        Bytes::from(
            serde_json::json!({
                "eventType": "account.update",
                "current": { "id": id, "status": to },
                "previous": { "id": id, "status": from },
            })
            .to_string(),
        )
    };
    // 3 accounts, each flipping 100 times: 300 events, only 6 distinct bodies.
    let mut script = Vec::new();
    for i in 0..100 {
        for id in ["a1", "a2", "a3"] {
            let (from, to) = if i % 2 == 0 {
                ("active", "blocked")
            } else {
                ("blocked", "active")
            };
            script.push(change(id, from, to));
        }
    }
    let n = script.len();
    let (_, sim) = start(StreamConfig {
        script: Arc::new(script),
        heartbeat: Some(Duration::from_millis(100)),
        record: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let rig = rig(Faults::default(), dir.path());
    let spool = SpoolConfig {
        publish_while_committing: true,
        ..spool_cfg(dir.path(), 64 << 20)
    };
    let src = run_source(
        &rig,
        ws_cfg(&sim, &["c1"], serde_json::json!({})),
        spool.clone(),
    );
    common::eventually("every event delivered", Duration::from_secs(30), || {
        rig.sink.delivered().len() >= n
    })
    .await;
    let sent = sim.sent_events("c1");
    assert_eq!(sent.len(), n);
    assert_all_in_order(&sent, &delivered(&rig));
    let mut ids: Vec<_> = rig
        .sink
        .delivered()
        .iter()
        .map(|m| m.event_id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "every repeated body is its own occurrence");
    common::eventually("all acknowledged", Duration::from_secs(10), || {
        src.stats.acknowledged.load(Ordering::SeqCst) == n as u64
    })
    .await;
    src.stop().await;
    sim.stop().await;
    let (_, report) = Spool::open(&spool, Arc::new(Metrics::new())).unwrap();
    assert_eq!(report.records, 0, "records left unreleased: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_disabled_goes_straight_to_the_dispatcher() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sim) = start(StreamConfig {
        count: Some(300),
        ..Default::default()
    })
    .await
    .unwrap();
    let rig = rig(Faults::default(), dir.path());
    let mut spool = spool_cfg(dir.path(), 1 << 20);
    spool.enabled = false;
    let src = run_source(&rig, ws_cfg(&sim, &["c1"], serde_json::json!({})), spool);
    common::eventually("300 delivered", Duration::from_secs(10), || {
        rig.sink.delivered().len() >= 300
    })
    .await;
    assert_all_in_order(&sim.sent_events("c1"), &delivered(&rig));
    assert!(!dir.path().join("spool").exists());
    src.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_against_a_plain_server_fails_cleanly_and_keeps_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sim) = start(StreamConfig::default()).await.unwrap();
    let rig = rig(Faults::default(), dir.path());
    let cfg = ws_cfg(
        &sim,
        &["c1"],
        serde_json::json!({ "url": sim.base_url().replace("ws://", "https://") }),
    );
    let src = run_source(&rig, cfg, spool_cfg(dir.path(), 1 << 20));
    common::eventually("several failed attempts", Duration::from_secs(10), || {
        src.stats.connect_attempts.load(Ordering::SeqCst) >= 3
    })
    .await;
    assert!(
        !src.task.is_finished(),
        "the source must survive TLS failures"
    );
    assert_eq!(src.stats.connections.load(Ordering::SeqCst), 0);
    let state = rig.readiness.snapshot()["websocket:c1"].clone();
    assert!(state.is_err(), "{state:?}");
    src.stop().await;
    sim.stop().await;
}
