//! `raw`: the bare client publishing pre-generated payloads with the confirm window: the
//! broker's ceiling.

use std::sync::Arc;

use crate::brokers::{file, kafka, nats, rabbitmq};
use crate::dest::{Dest, SinkKind, tmp_dir};
use crate::measure::{CpuMeter, peak_rss_mb, reset_peak_rss};
use crate::payload::{POOL, avg_len, pool};
use crate::row::{Outcome, Row, Setup};
use crate::scenarios::Ctx;

pub async fn run(
    c: &Ctx,
    kind: SinkKind,
    payload: usize,
    n: u64,
    group: &str,
) -> anyhow::Result<Row> {
    let a = &c.args;
    let tmp = tmp_dir("raw")?;
    let dest = Dest::prepare(a, kind, &tmp).await?;
    let p = Arc::new(pool(a.objects, payload, POOL.min(n as usize).max(1)));
    let avg = avg_len(&p);
    reset_peak_rss();
    let cpu = CpuMeter::start(c.tck, None);
    // Spawned, so the publishing loop runs on a runtime worker as a bridge source does (the
    // bridge-core scenario does the same), not on the thread that blocks on `main`.
    let (args, prefix, exchange) = (a.clone(), dest.prefix.clone(), dest.exchange.clone());
    let file_dir = dest.file_dir.clone();
    let p2 = Arc::clone(&p);
    let published = tokio::spawn(async move {
        let a = &args;
        match kind {
            SinkKind::Kafka => kafka::raw(&a.kafka, &prefix, &p2, n, a.window).await,
            SinkKind::Rabbit => rabbitmq::raw(&a.amqp, &exchange, &prefix, &p2, n, a.window).await,
            SinkKind::Nats => nats::raw(&a.nats, &prefix, &p2, n, a.window).await,
            SinkKind::File => {
                let window = a.window;
                tokio::task::spawn_blocking(move || file::raw(&file_dir, &prefix, &p2, n, window))
                    .await?
            }
        }
    })
    .await??;
    let (cpu_p, _) = cpu.read();
    let rss = peak_rss_mb();
    drop(p);
    let count = dest.count_and_clean(a, n).await;
    let _ = std::fs::remove_dir_all(&tmp);
    let setup = Setup {
        scenario: "raw",
        sink: kind.name(),
        group,
        payload_bytes: payload,
        avg_body_bytes: avg,
        routes: 1,
        window: a.window,
        events: n,
    };
    let mut row = Row::measured(
        &setup,
        &Outcome {
            confirmed: published.latencies.count(),
            errors: published.errors,
            elapsed_s: published.elapsed_s,
            cpu_s: (cpu_p, 0.0),
            peak_rss_mb: rss,
        },
    );
    let what = if kind == SinkKind::File {
        "batch write→last fdatasync (each message's batch)"
    } else {
        "publish→confirm (each message)"
    };
    row.set_latency(what, &published.latencies);
    row.note = "payloads pre-generated (pool of 20k, cycled) before timing".into();
    row.verify(count);
    Ok(row)
}
