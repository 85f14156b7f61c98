//! `sink`: the bridge's sink alone (`Sink::publish`, built from the same config as the bridge's),
//! publishing pre-generated messages as the dispatcher would render them, with at most `window`
//! awaiting their confirm; no parse, no routing, no per-key order. Between `raw` and
//! `bridge-core`: what the sink adds to the bare client, and what the dispatcher adds to the sink.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use serde_json::json;

use fondo_bridge::group_commit::Pace;
use fondo_bridge::sinks::{DynSink, Message, headers};

use crate::dest::{Dest, SinkKind, bridge_config, tmp_dir};
use crate::measure::{CpuMeter, peak_rss_mb, reset_peak_rss};
use crate::payload::{CLIENT_ID, Ev, POOL, avg_len, pool};
use crate::row::{Outcome, Row, Setup};
use crate::scenarios::Ctx;
use crate::window::windowed;

pub async fn run(c: &Ctx, kind: SinkKind, payload: usize, n: u64) -> anyhow::Result<Row> {
    let a = &c.args;
    let tmp = tmp_dir(&format!("sink-{}", kind.name()))?;
    let dest = Dest::prepare(a, kind, &tmp).await?;
    // Only `sinks` matters here; a source is required by the config and never started.
    let source = json!({"webhook": {"listen": "127.0.0.1:0",
        "signature": {"scheme": "none", "insecure": true}}});
    let cfg = bridge_config(a, &dest, source, 1, &tmp)?;
    let p = Arc::new(pool(a.objects, payload, POOL.min(n as usize).max(1)));
    let avg = avg_len(&p);
    reset_peak_rss();
    let sink = fondo_bridge::app::build_sinks(&cfg)
        .await
        .map_err(|e| anyhow!("{e}"))?
        .remove("out")
        .ok_or_else(|| anyhow!("no sink `out` built"))?;
    let cpu = CpuMeter::start(c.tck, None);
    // Spawned, as the dispatcher's worker for the sink is.
    let (s, p2, prefix, window) = (sink.clone(), Arc::clone(&p), dest.prefix.clone(), a.window);
    let published = tokio::spawn(async move {
        let s = &s;
        windowed(n, window, |i| {
            let msg = message(&prefix, &p2[(i as usize) % p2.len()], i);
            async move { s.publish(&msg).await.map_err(|e| anyhow!("{e}")) }
        })
        .await
    })
    .await?;
    let (cpu_p, _) = cpu.read();
    let rss = peak_rss_mb();
    close(&sink).await;
    let count = dest.count_and_clean(a, n).await;
    let _ = std::fs::remove_dir_all(&tmp);
    let setup = Setup {
        scenario: "sink",
        sink: kind.name(),
        group: "parts",
        payload_bytes: payload,
        avg_body_bytes: avg,
        routes: 1,
        window: a.window,
        events: n,
    };
    let outcome = Outcome {
        confirmed: published.latencies.count(),
        errors: published.errors,
        elapsed_s: published.elapsed_s,
        cpu_s: (cpu_p, 0.0),
        peak_rss_mb: rss,
    };
    let mut row = Row::measured(&setup, &outcome);
    row.set_latency("publish→confirm (each message)", &published.latencies);
    row.note = "messages rendered before each publish, outside its latency".into();
    row.verify(count);
    Ok(row)
}

/// The `i`-th message as the dispatcher renders a WebSocket event for the catch-all route:
/// topic `<prefix>.<entity>`, the object's key, the four `fondo-*` headers, ids of the bridge's
/// length.
fn message(prefix: &str, ev: &Ev, i: u64) -> Message {
    let id: Arc<str> = Arc::from(format!("{i:032x}"));
    Message {
        topic: format!("{prefix}.{}", ev.entity),
        key: Some(ev.key.clone()),
        headers: vec![
            (headers::EVENT_ID.to_owned(), id.to_string()),
            (headers::EVENT_TYPE.to_owned(), ev.etype.to_owned()),
            (headers::CLIENT_ID.to_owned(), CLIENT_ID.to_owned()),
            (headers::SOURCE.to_owned(), "websocket".to_owned()),
        ],
        payload: ev.body.clone(),
        message_id: Arc::clone(&id),
        event_id: id,
        payload_is_json: true,
        // As the bridge-core scenario's events (replays): confirmed as soon as possible.
        pace: Pace::Prompt,
        cloudevent: None,
    }
}

async fn close(sink: &DynSink) {
    if let Err(e) = sink.close(Instant::now() + Duration::from_secs(30)).await {
        eprintln!("  sink close: {e}");
    }
}
