//! The WebSocket source: the simulator streams `n` events over loopback (rate unlimited) into
//! the whole bridge (`Bridge::start`), timed from the simulator's first event until the bridge
//! counts `n` broker-confirmed deliveries.
//!
//! - `bridge-ws`: spool on, to the broker under test;
//! - `source`: spool on or off, into a file sink that does not fsync, so what is left is the
//!   source, the spool and the dispatcher.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use serde_json::json;

use fondo_bridge::app::Bridge;
use fondo_bridge::simulator::stream::StreamConfig;

use crate::dest::{Dest, SinkKind, bridge_config, tmp_dir};
use crate::measure::{CpuMeter, peak_rss_mb, reset_peak_rss};
use crate::payload::{CLIENT_ID, TOKEN, avg_len, pool};
use crate::row::{Outcome, Row, Setup};
use crate::scenarios::{Ctx, FROM_BRIDGE_HISTOGRAM, publish_latency, receive_to_ack, shutdown};
use crate::sim::SimThread;

/// One WebSocket scenario.
struct Case<'a> {
    scenario: &'static str,
    kind: SinkKind,
    payload: usize,
    routes: usize,
    n: u64,
    group: &'a str,
    spool: bool,
    /// The file sink's `fsync` (for `kind` file).
    file_fsync: &'static str,
}

/// `bridge-ws`: the whole bridge from the WebSocket source, spool on, to `kind`.
pub async fn bridge(
    c: &Ctx,
    kind: SinkKind,
    payload: usize,
    routes: usize,
    n: u64,
    group: &str,
) -> anyhow::Result<Row> {
    let case = Case {
        scenario: "bridge-ws",
        kind,
        payload,
        routes,
        n,
        group,
        spool: true,
        file_fsync: "batch",
    };
    measure(c, &case).await
}

/// `source`: the WebSocket source with the spool on or off, into a file sink without fsync.
pub async fn source(c: &Ctx, spool: bool, n: u64) -> anyhow::Result<Row> {
    let case = Case {
        scenario: "source",
        kind: SinkKind::File,
        payload: c.args.payload_bytes,
        routes: 1,
        n,
        group: "parts",
        spool,
        file_fsync: "never",
    };
    let mut row = measure(c, &case).await?;
    row.note = format!(
        "spool {}; file sink with fsync: never",
        if spool { "on" } else { "off" }
    );
    Ok(row)
}

async fn measure(c: &Ctx, case: &Case<'_>) -> anyhow::Result<Row> {
    let (a, n) = (&c.args, case.n);
    let tmp = tmp_dir(case.kind.name())?;
    let mut dest = Dest::prepare(a, case.kind, &tmp).await?;
    dest.file_fsync = case.file_fsync;
    let sim = SimThread::spawn(Some(stream(a.objects, case.payload, n)), c.load_cpus())?;
    let source = json!({"websocket": {
        "url": sim.handle.base_url(), "client_ids": [CLIENT_ID], "token": TOKEN,
        "heartbeat_timeout_ms": 10000,
    }});
    let mut cfg = bridge_config(a, &dest, source, case.routes, &tmp)?;
    cfg.spool.enabled = case.spool;
    reset_peak_rss();
    let bridge = Bridge::start(cfg).await.map_err(|e| anyhow!("{e}"))?;
    // Time from the first event the simulator sent.
    sim.first_event_sent().await?;
    let cpu = CpuMeter::start(c.tck, sim.tid.clone());
    let t0 = Instant::now();
    let limit = Duration::from_secs(60 + n / 500);
    while bridge.metrics.delivered_total() < n && t0.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu_s = cpu.read();
    let rss = peak_rss_mb();
    let delivered = bridge.metrics.delivered_total();
    let (latencies, publish) = (
        receive_to_ack(&bridge, "websocket"),
        publish_latency(&bridge),
    );
    shutdown(bridge).await;
    sim.stop().await;
    let count = dest.count_and_clean(a, n).await;
    let _ = std::fs::remove_dir_all(&tmp);
    let setup = Setup {
        scenario: case.scenario,
        sink: case.kind.name(),
        group: case.group,
        payload_bytes: case.payload,
        avg_body_bytes: avg_len(&pool(a.objects, case.payload, 2000)),
        routes: case.routes,
        window: a.window,
        events: n,
    };
    let outcome = Outcome {
        confirmed: delivered,
        errors: 0,
        elapsed_s: elapsed,
        cpu_s,
        peak_rss_mb: rss,
    };
    let mut row = Row::measured(&setup, &outcome);
    row.set_latency(&format!("receive→ack, {FROM_BRIDGE_HISTOGRAM}"), &latencies);
    row.set_publish_latency(&publish);
    row.verify(count);
    Ok(row)
}

/// The simulated stream: `n` events as fast as the connection takes them, a heartbeat a second.
pub(crate) fn stream(objects: usize, payload_bytes: usize, n: u64) -> StreamConfig {
    StreamConfig {
        token: TOKEN.into(),
        seed: 11,
        rate: 0.0,
        count: Some(n),
        objects: objects.max(1),
        payload_bytes,
        heartbeat: Some(Duration::from_secs(1)),
        record: false,
        ..StreamConfig::default()
    }
}
