//! `bridge-core`: the bridge's own path from bytes to broker confirm, without a network source.
//!
//! Each body is parsed (`Event::parse`, as both sources do), identified, submitted to the
//! dispatcher (routing, per-key ordering, headers, deduplication, acknowledgement) and published
//! by the sink, with at most `window` messages awaiting their confirm (the sink's
//! `max_in_flight`). It is the like-for-like counterpart of the raw client: same payloads,
//! generated before timing, same confirm window, same broker. Latency is submit→ack of each
//! event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use bytes::Bytes;
use serde_json::json;

use fondo_bridge::app::Bridge;
use fondo_bridge::dispatch::Dispatcher;
use fondo_bridge::event::{
    AckHandle, AckStatus, Envelope, Event, ParseContext, ParseOptions, SourceKind,
};

use crate::dest::{Dest, SinkKind, bridge_config, tmp_dir};
use crate::latency::Latencies;
use crate::measure::{CpuMeter, peak_rss_mb, reset_peak_rss};
use crate::payload::{CLIENT_ID, avg_len, pool};
use crate::row::{Outcome, Row, Setup};
use crate::scenarios::{Ctx, publish_latency, shutdown};

/// What the acknowledgements of the timed events recorded.
#[derive(Default)]
struct Acks {
    latencies: Mutex<Latencies>,
    failed: AtomicU64,
    done: AtomicU64,
}

pub async fn run(
    c: &Ctx,
    kind: SinkKind,
    payload: usize,
    n: u64,
    group: &str,
) -> anyhow::Result<Row> {
    let a = &c.args;
    let tmp = tmp_dir(&format!("core-{}", kind.name()))?;
    let dest = Dest::prepare(a, kind, &tmp).await?;
    // The dispatcher needs a source configured; this one is never sent to.
    let source = json!({"webhook": {"listen": "127.0.0.1:0",
        "signature": {"scheme": "none", "insecure": true}}});
    let cfg = bridge_config(a, &dest, source, 1, &tmp)?;
    // One more event than measured: the first warms the bridge up outside the timing, as the
    // raw Kafka client's warm-up message does (producer id, metadata, connections).
    let p = pool(a.objects, payload, n as usize + 1);
    let avg = avg_len(&p);
    let mut bodies: Vec<Bytes> = p.into_iter().map(|e| e.body).collect();
    let warm_body = bodies.remove(0);
    reset_peak_rss();
    let bridge = Bridge::start(cfg).await.map_err(|e| anyhow!("{e}"))?;
    warm_up(&bridge.dispatcher, warm_body).await?;
    let acks = Arc::new(Acks::default());
    let cpu = CpuMeter::start(c.tck, None);
    let t0 = Instant::now();
    // Spawned, as a source task is: it runs on a runtime worker beside the dispatcher.
    tokio::spawn(feed(bridge.dispatcher.clone(), bodies, Arc::clone(&acks))).await??;
    let limit = Duration::from_secs(60 + n / 500);
    while acks.done.load(Ordering::Acquire) < n && t0.elapsed() < limit {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (cpu_p, _) = cpu.read();
    let rss = peak_rss_mb();
    let publish = publish_latency(&bridge);
    shutdown(bridge).await;
    let count = dest.count_and_clean(a, n).await;
    let _ = std::fs::remove_dir_all(&tmp);
    let latencies = acks
        .latencies
        .lock()
        .map_err(|_| anyhow!("latency lock"))?
        .clone();
    let setup = Setup {
        scenario: "bridge-core",
        sink: kind.name(),
        group,
        payload_bytes: payload,
        avg_body_bytes: avg,
        routes: 1,
        window: a.window,
        events: n,
    };
    let outcome = Outcome {
        confirmed: latencies.count(),
        errors: acks.failed.load(Ordering::Acquire),
        elapsed_s: elapsed,
        cpu_s: (cpu_p, 0.0),
        peak_rss_mb: rss,
    };
    let mut row = Row::measured(&setup, &outcome);
    row.set_latency("submit→ack (each event)", &latencies);
    row.set_publish_latency(&publish);
    row.note =
        "bodies generated before timing; parse + route + dispatch + sink in the timed loop".into();
    row.verify(count);
    Ok(row)
}

/// Where the bodies come from: the bench's client id's stream.
fn parse_context() -> ParseContext<'static> {
    ParseContext {
        client_id: Some(CLIENT_ID),
        ..ParseContext::default()
    }
}

/// One event through the whole bridge before the timing starts, waited for.
async fn warm_up(dispatcher: &Dispatcher, body: Bytes) -> anyhow::Result<()> {
    let event = Event::parse(body, &ParseOptions::default(), &parse_context())
        .map_err(|e| anyhow!("parse: {e}"))?;
    let (ack, rx) = AckHandle::new();
    if dispatcher
        .submit(Envelope::new(event, ack, SourceKind::Replay))
        .await
        .is_err()
    {
        bail!("the dispatcher refused the warm-up event");
    }
    match tokio::time::timeout(Duration::from_secs(60), rx).await {
        Ok(AckStatus::Delivered) => Ok(()),
        other => bail!("warm-up event not delivered: {other:?}"),
    }
}

/// The timed loop: parse, identify and submit every body; each acknowledgement records its
/// submit→ack latency (or a failure) in `acks`.
async fn feed(dispatcher: Dispatcher, bodies: Vec<Bytes>, acks: Arc<Acks>) -> anyhow::Result<()> {
    let (opts, ctx) = (ParseOptions::default(), parse_context());
    for (i, body) in bodies.into_iter().enumerate() {
        let mut event = Event::parse(body, &opts, &ctx).map_err(|e| anyhow!("parse: {e}"))?;
        // Identified as the webhook source does it: a delivery id looked up and remembered in
        // the replay cache (the identity step's work per event).
        let delivery = format!("msg_{i}");
        let _ = dispatcher
            .identify(&mut event, SourceKind::Webhook, Some(&delivery))
            .await;
        let started = Instant::now();
        let acks = Arc::clone(&acks);
        let ack = AckHandle::on_done(move |status| {
            if status == AckStatus::Delivered {
                if let Ok(mut l) = acks.latencies.lock() {
                    l.record(started.elapsed());
                }
            } else {
                acks.failed.fetch_add(1, Ordering::Relaxed);
            }
            acks.done.fetch_add(1, Ordering::Release);
        });
        if dispatcher
            .submit(Envelope::new(event, ack, SourceKind::Replay))
            .await
            .is_err()
        {
            bail!("the dispatcher refused an event");
        }
    }
    Ok(())
}
