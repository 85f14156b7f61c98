//! Reliability scenarios (issue #11, the fault half): the real `fondo-bridge` binary, fed by the
//! simulated Fondo, against brokers each test starts for itself on free ports; faults are real
//! (broker stopped and restarted, broker process paused, bridge SIGKILLed, connections dropped,
//! heartbeats stopped, spool full, dead-letter destination down). An independent checker (raw
//! async-nats / lapin / rdkafka consumers) reads everything back and compares it with what the
//! simulator sent: every event present, order per object kept, duplicates counted, nothing lost.
//!
//! Each test prints one `RELIABILITY ...` line and appends a JSON record to the file named by
//! `FONDO_BRIDGE_RELIABILITY_REPORT` when set. The soak runs `FONDO_BRIDGE_SOAK_SECS` seconds
//! (default 120; 1800 for the full form). See docs/reliability.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "reliability/support.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fondo_bridge::simulator::generator::Generator;
use fondo_bridge::simulator::stream::{self, SimHandle, StreamConfig};
use fondo_bridge::simulator::webhook_sender::Outgoing;
use support::*;

/// Runs blocking work (process control, broker scripts) without starving the runtime's tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn sim(rate: f64, count: u64, tweak: impl FnOnce(&mut StreamConfig)) -> SimHandle {
    let mut cfg = StreamConfig {
        rate,
        count: Some(count),
        objects: 200,
        heartbeat: Some(Duration::from_millis(1000)),
        client_ids: vec![CID.to_owned()],
        record: true,
        ..StreamConfig::default()
    };
    tweak(&mut cfg);
    let (_, h) = stream::start(cfg).await.expect("simulator starts");
    h
}

async fn wait_sent(sim: &SimHandle, count: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while sim.events_sent() < count {
        assert!(
            Instant::now() < deadline,
            "simulator sent only {} of {count} events within {within:?}",
            sim.events_sent()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ws_env() -> Vec<(&'static str, &'static str)> {
    vec![WS_TOKEN_ENV]
}

fn start_bridge(dir: &Path, cfg: &ConfigBuilder, env: &[(&str, &str)]) -> BridgeProc {
    blocking(|| BridgeProc::start(dir, cfg.admin, &cfg.render(), env))
}

const COLLECT: Duration = Duration::from_secs(90);

/// The skeleton most scenarios share: a private nats-server with stream `REL`, the simulator
/// streaming `count` events at `RATE`, and the bridge (WebSocket source → NATS) as a process.
struct NatsWs {
    nats: NatsServer,
    url: String,
    dir: tempfile::TempDir,
    sim: SimHandle,
    bridge: BridgeProc,
    t0: Instant,
    count: u64,
}

impl NatsWs {
    /// `None` when nats-server is missing (outside CI). `sink_extra` is added to the NATS sink's
    /// YAML; `tweak` adjusts the bridge config (spool, ...).
    async fn start(
        count: u64,
        sink_extra: &str,
        tweak_sim: impl FnOnce(&mut StreamConfig),
        tweak: impl FnOnce(&mut ConfigBuilder, &Path),
    ) -> Option<Self> {
        let nats = blocking(NatsServer::start)?;
        let url = nats.url();
        nats_stream(&url, "REL", "fondo.events").await;
        let dir = tempfile::tempdir().unwrap();
        let sim = sim(RATE, count, tweak_sim).await;
        let mut cfg = ConfigBuilder::new(
            dir.path(),
            free_port(),
            &format!("{{ type: nats, url: \"{url}\"{sink_extra} }}"),
        );
        cfg.ws = Some(sim.base_url());
        tweak(&mut cfg, dir.path());
        let t0 = Instant::now();
        let bridge = start_bridge(dir.path(), &cfg, &ws_env());
        Some(Self {
            nats,
            url,
            dir,
            sim,
            bridge,
            t0,
            count,
        })
    }

    fn sampler(&self) -> Sampler {
        Sampler::start(
            self.bridge.admin,
            self.bridge.pid.clone(),
            Duration::from_millis(100),
        )
    }

    /// Waits for the whole stream, collects everything from `REL` and the fallback dead letters.
    async fn outcome(&self) -> Tally {
        wait_sent(&self.sim, self.count, Duration::from_secs(120)).await;
        let sent = self.sim.sent_events(CID);
        let got = nats_collect(&self.url, "REL", COLLECT, Want::of(&sent, &[])).await;
        let dead = fallback_bodies(&self.dir.path().join("dead-letter.jsonl"));
        tally(&sent, &got, &dead)
    }

    /// Emits the record and checks that nothing was lost.
    fn report(
        &self,
        scenario: &str,
        tally: Tally,
        recovery: Option<Duration>,
        notes: String,
    ) -> Record {
        let rec = Record {
            scenario: scenario.into(),
            broker: "nats".into(),
            tally,
            recovery,
            elapsed: self.t0.elapsed(),
            notes,
        };
        rec.emit();
        rec.assert_sound();
        rec
    }
}

/// The longest interval between two WebSocket handshakes: the reconnect time is inside it.
fn longest_connection_interval(sim: &SimHandle) -> Option<Duration> {
    let hs = sim.handshakes();
    hs.windows(2).map(|w| w[1].at - w[0].at).max()
}

// ---------------------------------------------------------------------------------------------
// 1. each broker stopped ~10 s and started again mid-stream

/// Stream rate and length for the broker-restart scenarios: the stream outlives the outage.
const RATE: f64 = 1000.0;
const COUNT: u64 = 16_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_10s_mid_stream() {
    let Some(mut run) = NatsWs::start(
        COUNT,
        ", confirm_timeout_ms: 2000, reconnect_wait_ms: 1000",
        |_| {},
        |_, _| {},
    )
    .await
    else {
        return;
    };
    let sampler = run.sampler();
    // Three seconds of normal flow before the outage.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let at_stop = run.sim.events_sent();
    let t_stop = Instant::now();
    blocking(|| run.nats.stop());
    // The broker stays down 10 s from the stop.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(t_stop.elapsed())).await;
    blocking(|| run.nats.spawn());
    let t_up = Instant::now();
    eprintln!(
        "nats-server stopped for {:?} after {at_stop} events sent",
        t_up - t_stop
    );
    let tally = run.outcome().await;
    let samples = sampler.finish();
    eprintln!("stream REL: {}", nats_stream_state(&run.url, "REL").await);
    let rec = run.report(
        "broker-stopped-10s",
        tally,
        recovery_after(&samples, t_up),
        format!("outage={:.1}s", (t_up - t_stop).as_secs_f64()),
    );
    assert_eq!(
        rec.tally.dead_lettered, 0,
        "a 10 s outage dead-letters nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_stopped_10s_mid_stream() {
    let Some(node) = blocking(RabbitNode::start) else {
        return;
    };
    let url = node.url();
    rabbit_topology(&url, "fondo-rel", "rel-q", "fondo.#").await;
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(RATE, COUNT, |_| {}).await;
    let mut cfg = ConfigBuilder::new(
        dir.path(),
        free_port(),
        &format!("{{ type: rabbitmq, url: \"{url}\", exchange: fondo-rel }}"),
    );
    cfg.ws = Some(sim.base_url());
    let t0 = Instant::now();
    let bridge = start_bridge(dir.path(), &cfg, &ws_env());
    let sampler = Sampler::start(bridge.admin, bridge.pid.clone(), Duration::from_millis(100));

    // Three seconds of normal flow before the outage.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t_stop = Instant::now();
    blocking(|| node.stop());
    // The broker stays down 10 s from the stop.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(t_stop.elapsed())).await;
    blocking(|| node.up());
    let t_up = Instant::now();
    eprintln!("rabbitmq node down for {:?}", t_up - t_stop);

    wait_sent(&sim, COUNT, Duration::from_secs(120)).await;
    let sent = sim.sent_events(CID);
    let got = rabbit_collect(&url, "rel-q", COLLECT, Want::of(&sent, &[])).await;
    let dead = fallback_bodies(&dir.path().join("dead-letter.jsonl"));
    let samples = sampler.finish();
    let rec = Record {
        scenario: "broker-stopped-10s".into(),
        broker: "rabbitmq".into(),
        tally: tally(&sent, &got, &dead),
        recovery: recovery_after(&samples, t_up),
        elapsed: t0.elapsed(),
        notes: format!("outage={:.1}s", (t_up - t_stop).as_secs_f64()),
    };
    rec.emit();
    rec.assert_sound();
    assert_eq!(
        rec.tally.dead_lettered, 0,
        "a 10 s outage dead-letters nothing"
    );
    drop(bridge);
}

/// tansu keeps records in memory only, so a stopped tansu forgets every topic and record: the test
/// stops it at a moment when the checker has read everything published so far (the simulator
/// paused briefly for that), then lets the stream run on into the outage. The fault the bridge sees
/// is the same: a broker gone for 10 s while events keep arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_stopped_10s_mid_stream() {
    let Some(tansu) = blocking(Tansu::start) else {
        return;
    };
    let bootstrap = tansu.bootstrap();
    kafka_create_topic(&bootstrap, "fondo.events", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(RATE, COUNT, |_| {}).await;
    let mut cfg = ConfigBuilder::new(
        dir.path(),
        free_port(),
        &format!(
            "{{ type: kafka, brokers: \"{bootstrap}\", options: {{ reconnect.backoff.max.ms: \"500\" }} }}"
        ),
    );
    cfg.ws = Some(sim.base_url());
    let t0 = Instant::now();
    let bridge = start_bridge(dir.path(), &cfg, &ws_env());
    let sampler = Sampler::start(bridge.admin, bridge.pid.clone(), Duration::from_millis(100));

    // Three seconds of normal flow, then the stream pauses.
    tokio::time::sleep(Duration::from_secs(3)).await;
    sim.set_paused(true);
    // Lets a send under way at the pause finish, so `before` is all phase 1 streamed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = sim.sent_events(CID);
    let phase1 = kafka_collect(&bootstrap, "fondo.events", COLLECT, Want::of(&before, &[])).await;
    assert!(complete(&before, &phase1, &[]), "phase 1 incomplete");
    let t_stop = Instant::now();
    blocking(|| tansu.stop());
    sim.set_paused(false);
    // The broker stays down 10 s while the stream goes on.
    tokio::time::sleep(Duration::from_secs(10)).await;
    blocking(|| tansu.up());
    kafka_create_topic(&bootstrap, "fondo.events", 3).await;
    let t_up = Instant::now();
    eprintln!(
        "tansu down for {:?} after {} events",
        t_up - t_stop,
        before.len()
    );

    wait_sent(&sim, COUNT, Duration::from_secs(120)).await;
    let sent = sim.sent_events(CID);
    let rest = sent[before.len()..].to_vec();
    let dead = fallback_bodies(&dir.path().join("dead-letter.jsonl"));
    let phase2 = kafka_collect(&bootstrap, "fondo.events", COLLECT, Want::of(&rest, &dead)).await;
    let dead = fallback_bodies(&dir.path().join("dead-letter.jsonl"));
    let got: Vec<Bytes> = phase1.into_iter().chain(phase2).collect();
    let samples = sampler.finish();
    let rec = Record {
        scenario: "broker-stopped-10s".into(),
        broker: "kafka (tansu)".into(),
        tally: tally(&sent, &got, &dead),
        recovery: recovery_after(&samples, t_up),
        elapsed: t0.elapsed(),
        notes: format!(
            "outage={:.1}s (memory storage: stopped at a drained moment, topic recreated)",
            (t_up - t_stop).as_secs_f64()
        ),
    };
    rec.emit();
    rec.assert_sound();
    drop(bridge);
}

// ---------------------------------------------------------------------------------------------
// 2. bridge SIGKILLed at random moments, three times, restarted each time

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_sigkilled_three_times() {
    let Some(nats) = blocking(NatsServer::start) else {
        return;
    };
    let url = nats.url();
    nats_stream(&url, "REL", "fondo.events").await;
    let dir = tempfile::tempdir().unwrap();
    const WS_COUNT: u64 = 12_000;
    const WH_COUNT: usize = 3_000;
    let sim = sim(RATE, WS_COUNT, |_| {}).await;
    let webhook = free_port();
    let mut cfg = ConfigBuilder::new(
        dir.path(),
        free_port(),
        &format!(
            "{{ type: nats, url: \"{url}\", confirm_timeout_ms: 2000, reconnect_wait_ms: 1000 }}"
        ),
    );
    cfg.ws = Some(sim.base_url());
    cfg.webhook = Some(webhook);
    let secrets = format!("[\"{WEBHOOK_SECRET}\"]");
    let env = [WS_TOKEN_ENV, (WEBHOOK_SECRETS_ENV, secrets.as_str())];
    let t0 = Instant::now();
    let mut bridge = start_bridge(dir.path(), &cfg, &env);
    let sampler = Sampler::start(bridge.admin, bridge.pid.clone(), Duration::from_millis(100));

    // Webhooks alongside: Fondo retries until a 2xx, so every webhook event must arrive.
    let mut g = Generator::new(0x5eed_0042, CID, 100, 0);
    let outgoing: Vec<Outgoing> = (0..WH_COUNT)
        .map(|i| Outgoing::new(format!("msg_{i:05}"), g.next_event()))
        .collect();
    let wh_sent: Vec<Bytes> = outgoing.iter().map(|o| o.body.clone()).collect();
    let sender = fondo_sender(
        webhook,
        8,
        Duration::from_millis(50),
        Duration::from_millis(500),
    );
    let send = tokio::spawn(async move { sender.send_all(outgoing, Some(300.0)).await });

    let mut rng = fastrand::Rng::new();
    let mut restarts = Vec::new();
    let mut kill_points = Vec::new();
    for k in 0..3 {
        // A random spell of streaming before each kill.
        let wait = Duration::from_millis(rng.u64(1000..3000));
        tokio::time::sleep(wait).await;
        let sent_at_kill = sim.events_sent();
        kill_points.push(sent_at_kill as usize);
        let published = bridge
            .metric("fondo_bridge_published_total")
            .unwrap_or(-1.0);
        blocking(|| bridge.sigkill());
        blocking(|| bridge.spawn());
        let t = Instant::now();
        restarts.push(t);
        eprintln!(
            "SIGKILL #{} after {wait:?}: {sent_at_kill} ws events sent, {published} published by that process; restarted",
            k + 1
        );
    }
    wait_sent(&sim, WS_COUNT, Duration::from_secs(120)).await;
    let report = send.await.unwrap();
    assert_eq!(report.acknowledged, WH_COUNT, "{}", report.summary());
    let ws_sent = sim.sent_events(CID);
    let all_sent: Vec<Bytes> = ws_sent.iter().chain(wh_sent.iter()).cloned().collect();
    let got = nats_collect(&url, "REL", COLLECT, Want::of(&all_sent, &[])).await;
    let dead = fallback_bodies(&dir.path().join("dead-letter.jsonl"));
    let samples = sampler.finish();
    let recovery = restarts
        .iter()
        .filter_map(|t| recovery_after(&samples, *t))
        .max();
    let replayed = bridge
        .log_text()
        .lines()
        .filter(|l| l.contains("replayed unreleased events from the spool"))
        .count();

    let ws = tally(&ws_sent, &got, &dead);
    let wh = tally(&wh_sent, &got, &dead);
    // WebSocket events not yet spooled at the kill (in socket buffers, or read and awaiting their
    // fsync) were never received: Fondo's stream has no acknowledgements and no replay, so each
    // kill may leave one gap, ending where the simulator noticed the dead connection.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &i in &ws.lost_indexes {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == i => *end = i,
            _ => runs.push((i, i)),
        }
    }
    let rec = Record {
        scenario: "bridge-sigkill-x3".into(),
        broker: "nats".into(),
        tally: tally(&all_sent, &got, &dead),
        recovery,
        elapsed: t0.elapsed(),
        notes: format!(
            "ws_sent={} ws_lost={} (unspooled at kill, runs {runs:?}, kills at sent={kill_points:?}, connection ends {:?}) webhook_sent={} webhook_lost={} spool_replays={replayed} webhook_attempts={}",
            ws_sent.len(),
            ws.lost,
            sim.connection_ends(CID),
            WH_COUNT,
            wh.lost,
            report.attempts
        ),
    };
    rec.emit();
    assert_eq!(wh.lost, 0, "webhook events lost: {wh:?}");
    assert_eq!(wh.corrupted + ws.corrupted + rec.tally.unexpected, 0);
    assert_eq!(ws.order_violations, 0, "order per object (WebSocket)");
    assert!(
        runs.len() <= kill_points.len(),
        "WebSocket loss outside kill points: {runs:?}"
    );
    // A lost run is what the killed process held unspooled: frames in its socket buffer, frames
    // read but awaiting their group-committed fsync, and whatever the simulator still wrote on
    // that connection before it saw the reset. So it starts at most a second of events before the
    // count read just ahead of SIGKILL (what was in flight then: a group fsync can take hundreds of
    // milliseconds when CI loads the disk), and it lies inside the killed connection: it ends
    // before the simulator's count at that connection's end.
    const IN_FLIGHT_SLACK: usize = RATE as usize;
    let ends = sim.connection_ends(CID);
    let windows: Vec<(usize, usize)> = kill_points
        .iter()
        .filter_map(|&k| ends.iter().find(|&&e| e >= k).map(|&e| (k, e)))
        .collect();
    assert_eq!(
        windows.len(),
        kill_points.len(),
        "every killed connection ended: kills {kill_points:?}, connection ends {ends:?}"
    );
    for (a, b) in &runs {
        assert!(
            windows
                .iter()
                .any(|(k, e)| k.saturating_sub(IN_FLIGHT_SLACK) <= *a && *b < *e),
            "WebSocket events {a}..={b} lost outside every killed connection's tail (kill point, connection end): {windows:?}"
        );
    }
    drop(bridge);
}

/// A crash replays what was in flight, not whole spool segments. The bridge (WebSocket → NATS)
/// sends each event to two subjects of server A and one of server B. B is frozen (SIGSTOP) and
/// the bridge SIGKILLed while events are published on A but still waiting for B, then twice more
/// at random moments; each time it is restarted. Stream `RAW` on A keeps every re-publication
/// (100 ms duplicate window, the least JetStream allows; a replay comes seconds later), so the test
/// counts them on the broker: there must be some (the frozen B made sure), and no more per kill
/// than the events in flight (`delivery.max_in_flight`) plus the releases of one commit window
/// (generously a second of the stream, for a loaded CI disk). Stream `REL` on A has a 120 s
/// duplicate window: a replayed record keeps its occurrence id, hence its `Nats-Msg-Id`, so the
/// broker collapses every one of those re-publications there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_replays_only_what_was_in_flight() {
    let Some(nats) = blocking(NatsServer::start) else {
        return;
    };
    let Some(slow) = blocking(NatsServer::start) else {
        return;
    };
    let url = nats.url();
    nats_stream(&url, "REL", "fondo.events").await;
    nats_stream_window(&url, "RAW", "fondo.raw", Duration::from_millis(100)).await;
    nats_stream(&slow.url(), "SLOW", "fondo.slow").await;
    let dir = tempfile::tempdir().unwrap();
    const N: u64 = 8_000;
    const MAX_IN_FLIGHT: usize = 200;
    const KILLS: usize = 3;
    let sim = sim(RATE, N, |_| {}).await;
    let mut cfg = ConfigBuilder::new(
        dir.path(),
        free_port(),
        &format!("{{ type: nats, url: \"{url}\", confirm_timeout_ms: 2000 }}"),
    );
    cfg.ws = Some(sim.base_url());
    cfg.extra_sinks = format!(
        "  slow: {{ type: nats, url: \"{}\", confirm_timeout_ms: 1000, reconnect_wait_ms: 1000 }}\n",
        slow.url()
    );
    cfg.extra_destinations =
        ", { sink: main, topic: fondo.raw }, { sink: slow, topic: fondo.slow }".into();
    cfg.delivery = format!(
        "{{ max_attempts: 1000, backoff_initial_ms: 50, backoff_max_ms: 500, max_in_flight: {MAX_IN_FLIGHT}, drain_timeout_ms: 5000 }}"
    );
    let t0 = Instant::now();
    let mut bridge = start_bridge(dir.path(), &cfg, &ws_env());
    let mut rng = fastrand::Rng::new();
    for k in 0..KILLS {
        // A random spell of streaming before each kill.
        tokio::time::sleep(Duration::from_millis(rng.u64(1200..2200))).await;
        if k == 0 {
            // Published on A, stuck on B: these are in flight when the bridge dies.
            slow.pause();
            // Lets events pile up in flight before the kill.
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        let sent = sim.events_sent();
        blocking(|| bridge.sigkill());
        if k == 0 {
            slow.resume();
        }
        blocking(|| bridge.spawn());
        eprintln!("SIGKILL #{} at {sent} events sent; restarted", k + 1);
    }
    wait_sent(&sim, N, Duration::from_secs(120)).await;
    wait_idle(&bridge, COLLECT).await;
    let sent = sim.sent_events(CID);
    let raw = nats_collect(&url, "RAW", COLLECT, Want::drain()).await;
    let rel = nats_collect(&url, "REL", COLLECT, Want::drain()).await;
    let dead = fallback_bodies(&dir.path().join("dead-letter.jsonl"));
    let raw_t = tally(&sent, &raw, &dead);
    let rel_t = tally(&sent, &rel, &dead);
    let replayed = spool_replayed(&bridge);
    let bound = KILLS * (MAX_IN_FLIGHT + RATE as usize);
    let rec = Record {
        scenario: "sigkill-replay-bound".into(),
        broker: "nats".into(),
        tally: raw_t.clone(),
        recovery: None,
        elapsed: t0.elapsed(),
        notes: format!(
            "republished_on_RAW={} (bound {bound}) republished_on_REL={} spool_replayed={replayed}",
            raw_t.duplicated, rel_t.duplicated
        ),
    };
    rec.emit();
    // Loss at a kill is what was not spooled yet (Fondo's stream has no replay); the other
    // SIGKILL test bounds it. Here: what was delivered, once, and re-published within the bound.
    assert_eq!(raw_t.corrupted + raw_t.unexpected + rel_t.unexpected, 0);
    assert_eq!(
        raw_t.delivered, rel_t.delivered,
        "both subjects got the same changes"
    );
    assert!(
        raw_t.duplicated > 0,
        "events published on A while stuck on B were in flight at the kill: their replay must re-publish"
    );
    assert!(
        raw_t.duplicated <= bound,
        "re-published {} after {KILLS} kills: more than {KILLS} x (max_in_flight {MAX_IN_FLIGHT} + one second of events)",
        raw_t.duplicated
    );
    assert!(
        (raw_t.duplicated as u64) <= replayed,
        "every re-publication is a spool replay ({replayed} replayed)"
    );
    assert_eq!(
        rel_t.duplicated, 0,
        "a replayed record keeps its Nats-Msg-Id, so JetStream collapses it"
    );
    drop(bridge);
}

/// Both sources on, the lossless mode: every event the simulator streams is also POSTed as a
/// signed webhook (each its own delivery, trailing the stream, retried until 2xx as Fondo does),
/// and the bridge is SIGKILLed three times mid-stream. What the stream loses at a kill (read, not
/// yet spooled) still comes by webhook, so nothing is lost. Duplicates come from two places,
/// counted on a stream that keeps them (100 ms duplicate window): spool replays, and webhook copies
/// whose stream twin was paired in the killed process's memory (the in-memory identity state dies
/// with the process; a shared store would keep it). Both are bounded: the replays by what was in
/// flight, the orphaned twins by the webhooks' lag behind the stream (here at most a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sources_sigkilled_lose_nothing() {
    let Some(nats) = blocking(NatsServer::start) else {
        return;
    };
    let url = nats.url();
    nats_stream_window(&url, "RAW", "fondo.raw", Duration::from_millis(100)).await;
    let dir = tempfile::tempdir().unwrap();
    const N: u64 = 5_000;
    const MAX_IN_FLIGHT: usize = 500;
    const KILLS: usize = 3;
    let sim = std::sync::Arc::new(sim(RATE, N, |_| {}).await);
    let webhook = free_port();
    let mut cfg = ConfigBuilder::new(
        dir.path(),
        free_port(),
        &format!("{{ type: nats, url: \"{url}\", confirm_timeout_ms: 2000 }}"),
    );
    cfg.topic = "fondo.raw".into();
    cfg.ws = Some(sim.base_url());
    cfg.webhook = Some(webhook);
    cfg.delivery = format!(
        "{{ max_attempts: 1000, backoff_initial_ms: 50, backoff_max_ms: 500, max_in_flight: {MAX_IN_FLIGHT}, drain_timeout_ms: 5000 }}"
    );
    let secrets = format!("[\"{WEBHOOK_SECRET}\"]");
    let env = [WS_TOKEN_ENV, (WEBHOOK_SECRETS_ENV, secrets.as_str())];
    let t0 = Instant::now();
    let mut bridge = start_bridge(dir.path(), &cfg, &env);

    let sender = std::sync::Arc::new(fondo_sender(
        webhook,
        8,
        Duration::from_millis(50),
        Duration::from_millis(500),
    ));
    // The webhooks mirror the stream: whatever the simulator streamed is POSTed 50 ms later.
    let mirror_sim = std::sync::Arc::clone(&sim);
    let mirror = tokio::spawn(async move {
        let mut mirrored = 0usize;
        let mut batches = Vec::new();
        while (mirrored as u64) < N {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let sent = mirror_sim.sent_events(CID);
            if sent.len() > mirrored {
                let batch: Vec<Outgoing> = sent[mirrored..]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| Outgoing::new(format!("msg_{}", mirrored + i), b.clone()))
                    .collect();
                mirrored = sent.len();
                let sender = std::sync::Arc::clone(&sender);
                batches.push(tokio::spawn(
                    async move { sender.send_all(batch, None).await },
                ));
            }
        }
        let mut acknowledged = 0;
        for b in batches {
            acknowledged += b.await.unwrap().acknowledged;
        }
        acknowledged
    });

    let mut rng = fastrand::Rng::new();
    for k in 0..KILLS {
        // A random spell of streaming before each kill.
        tokio::time::sleep(Duration::from_millis(rng.u64(800..1500))).await;
        let sent = sim.events_sent();
        blocking(|| bridge.sigkill());
        blocking(|| bridge.spawn());
        eprintln!("SIGKILL #{} at {sent} events streamed; restarted", k + 1);
    }
    wait_sent(&sim, N, Duration::from_secs(120)).await;
    let acknowledged = mirror.await.unwrap();
    assert_eq!(
        acknowledged as u64, N,
        "every webhook was answered 2xx in the end"
    );
    wait_idle(&bridge, COLLECT).await;
    let sent = sim.sent_events(CID);
    let got = nats_collect(&url, "RAW", COLLECT, Want::of(&sent, &[])).await;
    let dead = fallback_bodies(&dir.path().join("dead-letter.jsonl"));
    let t = tally(&sent, &got, &dead);
    let replayed = spool_replayed(&bridge);
    let orphan_bound = KILLS * RATE as usize;
    let rec = Record {
        scenario: "both-sources-sigkill-x3".into(),
        broker: "nats".into(),
        tally: t.clone(),
        recovery: None,
        elapsed: t0.elapsed(),
        notes: format!(
            "spool_replayed={replayed} duplicates={} (bound: replays + {KILLS} x one second of the stream = {})",
            t.duplicated,
            replayed as usize + orphan_bound
        ),
    };
    rec.emit();
    assert_eq!(t.lost, 0, "a change either source brought was lost: {t:?}");
    assert_eq!(t.corrupted + t.unexpected + t.dead_lettered, 0, "{t:?}");
    assert!(
        t.duplicated <= replayed as usize + orphan_bound,
        "duplicates {} beyond spool replays {replayed} + orphaned webhook twins {orphan_bound}",
        t.duplicated
    );
    drop(bridge);
}

// ---------------------------------------------------------------------------------------------
// 3. WebSocket dropped every 100 events; a Fondo that stops heartbeats

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_dropped_every_100_events() {
    const N: u64 = 5_000;
    let Some(run) = NatsWs::start(N, "", |c| c.drop_every = Some(100), |_, _| {}).await else {
        return;
    };
    let tally = run.outcome().await;
    let notes = format!(
        "connections={} gaps_metric={}",
        run.sim.connections(),
        run.bridge
            .metric("fondo_bridge_websocket_gaps_total")
            .unwrap_or(-1.0)
    );
    // Reconnect time is hidden inside the connection intervals; report the longest interval.
    run.report(
        "ws-dropped-every-100",
        tally,
        longest_connection_interval(&run.sim),
        notes,
    );
    assert!(
        run.sim.connections() >= N / 100,
        "the stream was dropped every 100 events ({} connections)",
        run.sim.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fondo_stops_heartbeats_watchdog_reconnects() {
    const N: u64 = 3_000;
    // Every connection goes silent (no events, no heartbeats, TCP kept open) after 1000 events.
    // The watchdog: 3 s without any frame (ping/pong from the library does not count as Fondo's).
    let Some(run) = NatsWs::start(N, "", |c| c.stall_after = Some(1000), |_, _| {}).await else {
        return;
    };
    let tally = run.outcome().await;
    let notes = format!(
        "connections={} heartbeat_timeout=3s (recovery = longest interval between handshakes)",
        run.sim.connections()
    );
    run.report(
        "ws-heartbeats-stop",
        tally,
        longest_connection_interval(&run.sim),
        notes,
    );
    assert!(
        run.sim.connections() >= 3,
        "the watchdog reconnected after each stall ({} connections)",
        run.sim.connections()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. a broker that accepts connections but never answers (SIGSTOP / SIGCONT)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_paused_sigstop_then_sigcont() {
    let Some(run) = NatsWs::start(
        COUNT,
        ", confirm_timeout_ms: 2000, reconnect_wait_ms: 1000, ping_interval_ms: 2000",
        |_| {},
        |_, _| {},
    )
    .await
    else {
        return;
    };
    let sampler = run.sampler();
    // Three seconds of normal flow before the pause.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t_stop = Instant::now();
    run.nats.pause();
    // A paused process still accepts TCP connections (the kernel completes the handshake).
    assert!(accepts(run.nats.port), "a paused server still accepts");
    // The broker stays paused (hung, not gone) for 10 s.
    tokio::time::sleep(Duration::from_secs(10)).await;
    run.nats.resume();
    let t_up = Instant::now();
    let tally = run.outcome().await;
    let samples = sampler.finish();
    let notes = format!(
        "paused={:.1}s retried={}",
        (t_up - t_stop).as_secs_f64(),
        run.bridge
            .metric("fondo_bridge_retried_total")
            .unwrap_or(-1.0)
    );
    let rec = run.report(
        "broker-paused-sigstop-10s",
        tally,
        recovery_after(&samples, t_up),
        notes,
    );
    assert_eq!(rec.tally.dead_lettered, 0);
}

// ---------------------------------------------------------------------------------------------
// 5. dead-letter destination down together with the main destination

/// Webhooks into NATS; the dead-letter destination is a second stream on the same (stopped) server
/// and the fallback file cannot be written, so an event that exhausts its attempts during the
/// outage has nowhere to go: it must not be acknowledged (503), and Fondo's retry brings it back.
/// Once the sink knows it is disconnected, new webhooks are refused before they enter (503,
/// `rejected{reason="sink_not_connected"}`); events already inside meet the dead end. Which of the
/// two refuses how many depends on timing; the scenario must hit at least one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_destination_down_with_main() {
    let Some(mut nats) = blocking(NatsServer::start) else {
        return;
    };
    let url = nats.url();
    nats_stream(&url, "REL", "fondo.events").await;
    nats_stream(&url, "DEAD", "fondo.dead-letter").await;
    let dir = tempfile::tempdir().unwrap();
    // A fallback path under a regular file: ENOTDIR, even for root.
    std::fs::write(dir.path().join("not-a-dir"), b"").unwrap();
    let webhook = free_port();
    let mut cfg = ConfigBuilder::new(
        dir.path(),
        free_port(),
        &format!(
            "{{ type: nats, url: \"{url}\", confirm_timeout_ms: 1000, reconnect_wait_ms: 500 }}"
        ),
    );
    cfg.webhook = Some(webhook);
    cfg.dead_letter = format!(
        "{{ sink: main, topic: fondo.dead-letter, max_attempts: 2, fallback_file: {}/not-a-dir/dead-letter.jsonl }}",
        dir.path().display()
    );
    cfg.delivery = "{ max_attempts: 3, backoff_initial_ms: 50, backoff_max_ms: 200, max_in_flight: 2000, drain_timeout_ms: 5000 }".into();
    let secrets = format!("[\"{WEBHOOK_SECRET}\"]");
    let env = [(WEBHOOK_SECRETS_ENV, secrets.as_str())];
    let t0 = Instant::now();
    let bridge = start_bridge(dir.path(), &cfg, &env);
    let sampler = Sampler::start(bridge.admin, bridge.pid.clone(), Duration::from_millis(100));

    const N: usize = 4_000;
    let mut g = Generator::new(0x5eed_0051, CID, 100, 0);
    let outgoing: Vec<Outgoing> = (0..N)
        .map(|i| Outgoing::new(format!("msg_{i:05}"), g.next_event()))
        .collect();
    let sent: Vec<Bytes> = outgoing.iter().map(|o| o.body.clone()).collect();
    let sender = fondo_sender(
        webhook,
        16,
        Duration::from_millis(100),
        Duration::from_millis(1000),
    );
    let send = tokio::spawn(async move { sender.send_all(outgoing, Some(300.0)).await });

    // Three seconds of webhooks before the outage.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t_stop = Instant::now();
    blocking(|| nats.stop());
    // The broker stays down 10 s from the stop.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(t_stop.elapsed())).await;
    let failures_during = bridge
        .metric("fondo_bridge_dead_letter_failures_total")
        .unwrap_or(0.0);
    let refused_at_the_door: f64 = http_get(bridge.admin, "/metrics")
        .map(|text| {
            text.lines()
                .filter(|l| {
                    l.starts_with("fondo_bridge_rejected_total")
                        && l.contains("reason=\"sink_not_connected\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(0.0);
    blocking(|| nats.spawn());
    let t_up = Instant::now();
    let report = send.await.unwrap();
    let refused = report
        .deliveries
        .iter()
        .filter(|d| d.statuses.contains(&503))
        .count();
    assert_eq!(report.acknowledged, N, "{}", report.summary());
    let dead_records = nats_collect(&url, "DEAD", Duration::from_secs(5), Want::drain()).await;
    let dead = dead_letter_bodies(&dead_records);
    let main = nats_collect(&url, "REL", COLLECT, Want::of(&sent, &dead)).await;
    let samples = sampler.finish();
    let rec = Record {
        scenario: "dead-letter-down-with-main".into(),
        broker: "nats".into(),
        tally: tally(&sent, &main, &dead),
        recovery: recovery_after(&samples, t_up),
        elapsed: t0.elapsed(),
        notes: format!(
            "outage={:.1}s dead_letter_failures={failures_during} refused_sink_not_connected={refused_at_the_door} webhooks_answered_503={refused} attempts={}",
            (t_up - t_stop).as_secs_f64(),
            report.attempts
        ),
    };
    rec.emit();
    rec.assert_sound_but(false);
    assert!(
        failures_during > 0.0 || refused_at_the_door > 0.0,
        "the scenario must hit 'dead letter could be written nowhere' or refuse webhooks while the sink is down"
    );
    assert!(refused > 0, "unacknowledged events were answered 503");
    drop(bridge);
}

// ---------------------------------------------------------------------------------------------
// 6. disk full for the spool

/// The spool is capped at 256 KiB (a few hundred events) and the broker stays stopped until the
/// spool has filled and 6 s more: the WebSocket source must stop reading (TCP backpressure reaches the simulator) and lose
/// nothing. (`prlimit --fsize` is no substitute: the kernel sends SIGXFSZ, which kills the process.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_full_pauses_reading() {
    const N: u64 = 10_000;
    const MAX: u64 = 256 * 1024;
    let Some(mut run) = NatsWs::start(
        N,
        ", confirm_timeout_ms: 2000, reconnect_wait_ms: 1000",
        |_| {},
        |cfg, dir| {
            cfg.spool = format!(
                "{{ dir: {}/spool, max_bytes: {MAX}, segment_bytes: 65536 }}",
                dir.display()
            );
        },
    )
    .await
    else {
        return;
    };
    let sampler = run.sampler();
    // Two seconds of normal flow before the outage.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t_stop = Instant::now();
    blocking(|| run.nats.stop());
    let sent_at_stop = run.sim.events_sent();
    let bridge = &run.bridge;
    common::eventually_async(
        "the source to stop reading on a full spool (nothing received for 500 ms)",
        Duration::from_secs(30),
        || async move {
            let before = bridge.metric("fondo_bridge_received_total");
            tokio::time::sleep(Duration::from_millis(500)).await;
            before.is_some() && bridge.metric("fondo_bridge_received_total") == before
        },
    )
    .await;
    let recv = "fondo_bridge_received_total";
    let received_a = run.bridge.metric(recv).unwrap_or(0.0);
    // The measuring window: what the source reads while the spool is full.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let received_during = run.bridge.metric(recv).unwrap_or(0.0) - received_a;
    let sent_during = run.sim.events_sent() - sent_at_stop;
    blocking(|| run.nats.spawn());
    let t_up = Instant::now();
    let tally = run.outcome().await;
    let samples = sampler.finish();
    let max_spool = samples
        .iter()
        .filter_map(|s| s.spool_bytes)
        .fold(0.0, f64::max);
    run.report(
        "spool-full",
        tally,
        recovery_after(&samples, t_up),
        format!(
            "spool_max_bytes={MAX} max_spool_bytes_seen={max_spool} received_in_last_6s_of_outage={received_during} sim_sent_during_outage={sent_during} (unthrottled: {}; the rest sat in TCP buffers)",
            (RATE * (t_up - t_stop).as_secs_f64()) as u64
        ),
    );
    assert!(max_spool <= MAX as f64, "spool grew past max_bytes");
    assert!(
        received_during < RATE * 6.0 * 0.1,
        "reading paused while the spool was full, yet {received_during} events were received in 6 s"
    );
}

/// The spool's disk really fills: the spool sits on a 512 KiB tmpfs while its own cap is far above
/// that, and the broker stays stopped until the disk is full and 5 s more, so appends fail with "no space left". The source must keep
/// each event it read and append it again until it is durable, stop reading meanwhile, and lose
/// nothing once the broker is back and delivered events free the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_disk_full_pauses_reading_and_loses_nothing() {
    const N: u64 = 8_000;
    let mut tmpfs = None;
    let Some(mut run) = NatsWs::start(
        N,
        ", confirm_timeout_ms: 2000, reconnect_wait_ms: 1000",
        |_| {},
        |cfg, dir| {
            let spool = dir.join("spool");
            tmpfs = Tmpfs::mount(&spool, 512);
            cfg.spool = format!(
                "{{ dir: {}, max_bytes: 67108864, segment_bytes: 65536 }}",
                spool.display()
            );
        },
    )
    .await
    else {
        return;
    };
    let Some(_tmpfs) = tmpfs else {
        return;
    };
    // Two seconds of normal flow before the outage.
    tokio::time::sleep(Duration::from_secs(2)).await;
    blocking(|| run.nats.stop());
    common::eventually(
        "the 512 KiB spool disk to fill (/readyz: spool writes failing)",
        Duration::from_secs(30),
        || {
            http_get(run.bridge.admin, "/readyz")
                .is_some_and(|r| r.contains("spool writes failing"))
        },
    )
    .await;
    let recv = "fondo_bridge_received_total";
    let received_a = run.bridge.metric(recv).unwrap_or(0.0);
    // The measuring window: what the source reads while the disk is full.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let received_during = run.bridge.metric(recv).unwrap_or(0.0) - received_a;
    let failed_writes = run
        .bridge
        .metric("fondo_bridge_rejected_total")
        .unwrap_or(0.0);
    let ready = http_get(run.bridge.admin, "/readyz").unwrap_or_default();
    blocking(|| run.nats.spawn());
    let t_up = Instant::now();
    let tally = run.outcome().await;
    run.report(
        "spool-disk-full",
        tally,
        Some(t_up.elapsed()),
        format!(
            "failed_spool_writes={failed_writes} received_in_last_5s_of_outage={received_during}"
        ),
    );
    assert!(
        failed_writes > 0.0,
        "the 512 KiB disk never filled, so the test proved nothing"
    );
    assert!(
        ready.contains("spool writes failing"),
        "/readyz names the failing spool: {ready}"
    );
    assert!(
        received_during < RATE * 5.0 * 0.1,
        "reading paused while the disk was full, yet {received_during} events were received in 5 s"
    );
}

/// The metric `name` with label `reason="<reason>"`, summed.
fn metric_reason(bridge: &BridgeProc, name: &str, reason: &str) -> f64 {
    let text = http_get(bridge.admin, "/metrics").unwrap_or_default();
    let label = format!("reason=\"{reason}\"");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The bodies of the records a (killed) bridge left in its spool: what it had received and not
/// yet acknowledged. Read from a copy, so the bridge's next start recovers the original.
fn spooled_bodies(spool_dir: &Path) -> Vec<Bytes> {
    use fondo_bridge::config::SpoolConfig;
    use fondo_bridge::spool::Spool;
    let copy = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(spool_dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, copy.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let cfg = SpoolConfig {
        dir: copy.path().to_path_buf(),
        ..SpoolConfig::default()
    };
    let metrics = std::sync::Arc::new(fondo_bridge::metrics::Metrics::new());
    let (spool, _) = Spool::open(&cfg, metrics).unwrap();
    spool.replay().map(|r| r.unwrap().payload).collect()
}

/// `kill -9` while the disk is full, then a restart with room. The spool and the dead-letter
/// fallback file share a 1 MiB tmpfs; the broker stops, so events exhaust their attempts and are
/// dead-lettered to the file until it and the spool fill the disk: spool appends fail, dead
/// letters fail (those events stay in the spool and are retried). The bridge must stop reading
/// (the simulator's sends stall once the socket buffers are full) with bounded memory; then it is
/// SIGKILLed, the tmpfs grows, the broker and the bridge start again. What the killed bridge had
/// received (its spool, read from a copy after the kill, and its fallback file) must all be on
/// the broker or in the fallback file at the end, every fallback line must parse, and the only
/// events lost are the ones it never received: those after the last one it spooled, up to where
/// the simulator noticed the dead connection (socket buffers, and at most the read pipeline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_sigkill_then_restart_with_room_loses_nothing_received() {
    const N: u64 = 30_000;
    const DISK_KIB: u64 = 1024;
    /// The bridge's RSS while the disk is full may exceed its RSS before the outage by at most
    /// this: it holds at most `max_in_flight` (1000) + `MAX_RETRY_WAITING` (1024) + the read
    /// pipeline (1024) events of well under 1 KiB, a few MiB, plus allocator slack.
    const RSS_GROWTH_KB: u64 = 64 * 1024;
    let Some(mut nats) = blocking(NatsServer::start) else {
        return;
    };
    let url = nats.url();
    nats_stream(&url, "REL", "fondo.events").await;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let Some(tmpfs) = Tmpfs::mount(&disk, DISK_KIB) else {
        return;
    };
    let sim = sim(RATE, N, |_| {}).await;
    let mut cfg = ConfigBuilder::new(
        dir.path(),
        free_port(),
        &format!(
            "{{ type: nats, url: \"{url}\", confirm_timeout_ms: 1000, reconnect_wait_ms: 500 }}"
        ),
    );
    cfg.ws = Some(sim.base_url());
    cfg.spool = format!(
        "{{ dir: {}/spool, max_bytes: 67108864, segment_bytes: 65536 }}",
        disk.display()
    );
    let fallback = disk.join("dead-letter.jsonl");
    cfg.dead_letter = format!("{{ fallback_file: {} }}", fallback.display());
    cfg.delivery = "{ max_attempts: 2, backoff_initial_ms: 50, backoff_max_ms: 200, max_in_flight: 1000, drain_timeout_ms: 5000 }".into();
    let t0 = Instant::now();
    let mut bridge = start_bridge(dir.path(), &cfg, &ws_env());
    let sampler = Sampler::start(bridge.admin, bridge.pid.clone(), Duration::from_millis(100));
    // Three seconds of normal flow before the outage.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before = rss_kb(bridge.os_pid()).expect("VmRSS of the bridge");
    blocking(|| nats.stop());
    let t_stop = Instant::now();

    // The disk fills: spool appends and dead letters fail.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spool_failed =
            metric_reason(&bridge, "fondo_bridge_rejected_total", "spool_write_failed");
        let dl_failed = bridge
            .metric("fondo_bridge_dead_letter_failures_total")
            .unwrap_or(0.0);
        if spool_failed > 0.0 && dl_failed > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the {DISK_KIB} KiB disk did not fill: spool_write_failed={spool_failed} dead_letter_failures={dl_failed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t_full = Instant::now();
    // Reading stopped: the simulator's sends stall (its socket buffers are full) and stay stalled.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = sim.events_sent();
    let mut unchanged = 0;
    while unchanged < 3 {
        assert!(
            Instant::now() < deadline,
            "the simulator kept sending: the bridge kept reading on a full disk"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sim.events_sent();
        unchanged = if now == last { unchanged + 1 } else { 0 };
        last = now;
    }
    let sent_paused = sim.events_sent();
    // An observation window: reading must stay stopped while the disk is full.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        sim.events_sent(),
        sent_paused,
        "reading resumed while the disk was full"
    );
    assert!(sent_paused < N, "the stream must outlast the outage");
    let ready = http_get(bridge.admin, "/readyz").unwrap_or_default();
    assert!(
        ready.contains("spool writes failing"),
        "/readyz names the failing spool: {ready}"
    );

    blocking(|| bridge.sigkill());
    let t_kill = Instant::now();
    let samples = sampler.finish();
    let rss_full_max = samples
        .iter()
        .filter(|s| s.t >= t_stop)
        .filter_map(|s| s.rss_kb)
        .max()
        .unwrap_or(0);
    // No event was handed on before it was durable (the bridge logs each one it would be).
    let unprotected = bridge
        .log_text()
        .lines()
        .filter(|l| l.contains("without crash protection"))
        .count();
    // What the killed bridge had received and not acknowledged, and what it had dead-lettered.
    let spooled = spooled_bodies(&disk.join("spool"));
    let (dead_at_kill, bad) = fondo_bridge::dlq::read_fallback_file(&fallback).unwrap();
    assert!(
        bad.is_empty(),
        "fallback lines that do not parse at the kill: {bad:?}"
    );
    let dead_at_kill: Vec<Bytes> = dead_at_kill
        .iter()
        .map(|d| Bytes::from(d.body_bytes()))
        .collect();

    tmpfs.resize(16 * 1024);
    blocking(|| nats.spawn());
    blocking(|| bridge.spawn());
    let t_restart = Instant::now();
    wait_sent(&sim, N, Duration::from_secs(180)).await;
    // Some events are gone for good (never received), so "everything arrived" cannot end the wait;
    // a bridge holding nothing can.
    wait_idle(&bridge, COLLECT).await;
    let sent = sim.sent_events(CID);
    let (dead_letters, bad) = fondo_bridge::dlq::read_fallback_file(&fallback).unwrap();
    assert!(bad.is_empty(), "fallback lines that do not parse: {bad:?}");
    let dead: Vec<Bytes> = dead_letters
        .iter()
        .map(|d| Bytes::from(d.body_bytes()))
        .collect();
    let got = nats_collect(&url, "REL", Duration::from_secs(10), Want::drain()).await;
    let t = tally(&sent, &got, &dead);

    // Index of each sent event, to place what was received and what was lost.
    let index: std::collections::HashMap<(String, u64), usize> = sent
        .iter()
        .enumerate()
        .map(|(i, b)| (identity(b).unwrap(), i))
        .collect();
    let idx = |b: &Bytes| index.get(&identity(b).unwrap()).copied().unwrap();
    let on_broker: std::collections::HashSet<usize> =
        got.iter().chain(dead.iter()).map(idx).collect();
    let received_lost: Vec<usize> = spooled
        .iter()
        .chain(dead_at_kill.iter())
        .map(idx)
        .filter(|i| !on_broker.contains(i))
        .collect();
    let last_received = spooled
        .iter()
        .chain(dead_at_kill.iter())
        .map(idx)
        .max()
        .expect("the killed bridge held events");
    let ends = sim.connection_ends(CID);
    let killed_end = ends
        .iter()
        .copied()
        .find(|&e| e > last_received)
        .expect("the killed connection ended");
    let rec = Record {
        scenario: "disk-full-sigkill".into(),
        broker: "nats".into(),
        tally: t.clone(),
        recovery: None,
        elapsed: t0.elapsed(),
        notes: format!(
            "disk={DISK_KIB}KiB full_after={:.1}s paused_at_sent={sent_paused} spooled_at_kill={} dead_lettered_at_kill={} last_received_index={last_received} killed_connection_end={killed_end} handed_on_unprotected={unprotected} lost_received={} never_received={} (socket buffers and read pipeline at the kill) rss_kb before={rss_before} max_while_full={rss_full_max} fallback_lines={} kill_to_restart={:.1}s",
            (t_full - t_stop).as_secs_f64(),
            spooled.len(),
            dead_at_kill.len(),
            received_lost.len(),
            t.lost,
            dead.len(),
            (t_restart - t_kill).as_secs_f64(),
        ),
    };
    rec.emit();
    assert_eq!(
        unprotected, 0,
        "events were handed on without crash protection before the kill"
    );
    assert!(
        received_lost.is_empty(),
        "events the killed bridge had received are lost: send indexes {:?}",
        &received_lost[..received_lost.len().min(10)]
    );
    // The rest of what was lost is one run the killed process never received: after the last
    // event it spooled, inside the killed connection.
    assert!(
        t.lost_indexes
            .iter()
            .all(|&i| i > last_received && i < killed_end),
        "lost outside (last received {last_received}, killed connection end {killed_end}): {:?}",
        &t.lost_indexes[..t.lost_indexes.len().min(10)]
    );
    assert_eq!(t.corrupted + t.unexpected, 0);
    assert_eq!(t.order_violations, 0, "order per object");
    assert!(
        rss_full_max <= rss_before + RSS_GROWTH_KB,
        "RSS while the disk was full {rss_full_max} kB > before {rss_before} kB + {RSS_GROWTH_KB} kB"
    );
    drop(bridge);
}

// ---------------------------------------------------------------------------------------------
// 7. soak

/// Steady load for `FONDO_BRIDGE_SOAK_SECS` (default 120; the full form is 1800): RSS, open file
/// descriptors and in-flight sampled from the bridge every second must stay flat, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_steady_load() {
    let secs: u64 = std::env::var("FONDO_BRIDGE_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let Some(nats) = blocking(NatsServer::start) else {
        return;
    };
    let url = nats.url();
    nats_stream(&url, "REL", "fondo.events").await;
    let dir = tempfile::tempdir().unwrap();
    // Below what a debug build sustains on 2 cores (at 1000 ev/s it sat at max_in_flight).
    let rate = 500.0;
    let n = (rate * secs as f64) as u64;
    let sim = sim(rate, n, |_| {}).await;
    let mut cfg = ConfigBuilder::new(
        dir.path(),
        free_port(),
        &format!("{{ type: nats, url: \"{url}\" }}"),
    );
    cfg.ws = Some(sim.base_url());
    let t0 = Instant::now();
    let bridge = start_bridge(dir.path(), &cfg, &ws_env());
    let sampler = Sampler::start(bridge.admin, bridge.pid.clone(), Duration::from_secs(1));
    wait_sent(&sim, n, Duration::from_secs(secs * 2 + 60)).await;
    let samples = sampler.finish();
    let sent = sim.sent_events(CID);
    let got = nats_collect(&url, "REL", COLLECT, Want::of(&sent, &[])).await;
    let dead = fallback_bodies(&dir.path().join("dead-letter.jsonl"));

    // Skip the first 10 % (warm-up), then compare the first and last thirds.
    let s: Vec<&Sample> = samples.iter().skip(samples.len() / 10).collect();
    let third = (s.len() / 3).max(1);
    let (first, last) = (&s[..third], &s[s.len() - third..]);
    let med = |xs: &[&Sample], f: &dyn Fn(&Sample) -> Option<f64>| {
        median(xs.iter().filter_map(|x| f(x)).collect())
    };
    let rss = |x: &Sample| x.rss_kb.map(|v| v as f64);
    let fds = |x: &Sample| x.fds.map(|v| v as f64);
    let infl = |x: &Sample| x.in_flight;
    let (rss0, rss1) = (med(first, &rss), med(last, &rss));
    let (fd0, fd1) = (med(first, &fds), med(last, &fds));
    let (if0, if1) = (med(first, &infl), med(last, &infl));
    let rec = Record {
        scenario: format!("soak-{secs}s"),
        broker: "nats".into(),
        tally: tally(&sent, &got, &dead),
        recovery: None,
        elapsed: t0.elapsed(),
        notes: format!(
            "rate={rate}/s rss_kb first/last third median={rss0}/{rss1} fds={fd0}/{fd1} in_flight={if0}/{if1} samples={}",
            samples.len()
        ),
    };
    rec.emit();
    rec.assert_sound();
    assert!(rss0 > 0.0 && fd0 > 0.0, "sampling worked");
    assert!(
        rss1 <= rss0 * 1.2 + 16.0 * 1024.0,
        "RSS grew: {rss0} kB -> {rss1} kB"
    );
    assert!(fd1 <= fd0 + 8.0, "open fds grew: {fd0} -> {fd1}");
    assert!(if1 <= if0 + 200.0, "in-flight grew: {if0} -> {if1}");
    drop(bridge);
}
