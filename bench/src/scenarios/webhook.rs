//! `bridge-webhook`: signed (Standard Webhooks) POSTs from the simulator's sender, which waits
//! for each answer, into the whole bridge; the bridge answers 2xx only once the broker confirmed.
//! Latency is each acknowledged POST's final attempt, request to 2xx, at the sender.

use std::time::Duration;

use anyhow::anyhow;
use serde_json::json;

use fondo_bridge::app::Bridge;
use fondo_bridge::simulator::webhook_sender::{
    Outgoing, SendReport, SenderOptions, Signer, WebhookSender,
};

use crate::dest::{Dest, SinkKind, bridge_config, tmp_dir};
use crate::latency::Latencies;
use crate::measure::{CpuMeter, peak_rss_mb, reset_peak_rss};
use crate::payload::{avg_len, pool};
use crate::row::{Outcome, Row, Setup};
use crate::scenarios::{Ctx, publish_latency, shutdown};
use crate::sim::SimThread;

const SECRET: &str = "whsec_Zm9uZG8tYmVuY2gtc2VjcmV0LTAxMjM0NTY3ODlhYmNkZWY=";

pub async fn run(c: &Ctx, kind: SinkKind, payload: usize, n: u64) -> anyhow::Result<Row> {
    let a = &c.args;
    let tmp = tmp_dir("wh")?;
    let dest = Dest::prepare(a, kind, &tmp).await?;
    let source = json!({"webhook": {"listen": "127.0.0.1:0",
        "signature": {"scheme": "standard-webhooks", "secrets": [SECRET]}}});
    let cfg = bridge_config(a, &dest, source, 1, &tmp)?;
    let sim = SimThread::spawn(None, c.load_cpus())?; // only its runtime: the sender runs there
    let p = pool(a.objects, payload, n as usize);
    let avg = avg_len(&p);
    let events: Vec<Outgoing> = p
        .into_iter()
        .enumerate()
        .map(|(i, e)| Outgoing::new(format!("msg_bench{i}"), e.body))
        .collect();
    reset_peak_rss();
    let bridge = Bridge::start(cfg).await.map_err(|e| anyhow!("{e}"))?;
    let addr = bridge
        .webhook_addr
        .ok_or_else(|| anyhow!("webhook source did not start"))?;
    let sender = sender(
        format!("http://{addr}/fondo/webhooks/callback"),
        a.webhook_concurrency,
    )?;
    let cpu = CpuMeter::start(c.tck, sim.tid.clone());
    let report = sim
        .rt
        .spawn(async move { sender.send_all(events, None).await })
        .await?;
    let cpu_s = cpu.read();
    let rss = peak_rss_mb();
    let delivered = bridge.metrics.delivered_total();
    let publish = publish_latency(&bridge);
    shutdown(bridge).await;
    sim.stop().await;
    let count = dest.count_and_clean(a, n).await;
    let _ = std::fs::remove_dir_all(&tmp);
    let setup = Setup {
        scenario: "bridge-webhook",
        sink: kind.name(),
        group: "main",
        payload_bytes: payload,
        avg_body_bytes: avg,
        routes: 1,
        window: a.webhook_concurrency,
        events: n,
    };
    let outcome = Outcome {
        confirmed: report.acknowledged as u64,
        errors: report.failed as u64,
        elapsed_s: report.elapsed_s,
        cpu_s,
        peak_rss_mb: rss,
    };
    let mut row = Row::measured(&setup, &outcome);
    row.set_latency("POST→2xx at the sender (each request)", &answered(&report));
    row.set_publish_latency(&publish);
    row.note = format!(
        "window = sender concurrency; {} attempts; bridge delivered {delivered}",
        report.attempts
    );
    row.verify(count);
    Ok(row)
}

/// The sender: `concurrency` requests at once, retrying quickly.
fn sender(url: String, concurrency: usize) -> anyhow::Result<WebhookSender> {
    let signer = Signer::standard(SECRET).map_err(|e| anyhow!("signer: {e}"))?;
    let mut opts = SenderOptions::new(url, signer);
    opts.concurrency = concurrency;
    opts.backoff_initial = Duration::from_millis(50);
    opts.backoff_max = Duration::from_millis(500);
    WebhookSender::new(opts).map_err(|e| anyhow!("sender: {e}"))
}

/// The final attempt's latency of every acknowledged delivery.
fn answered(report: &SendReport) -> Latencies {
    let mut l = Latencies::new();
    for d in report.deliveries.iter().filter(|d| d.acknowledged) {
        l.record(Duration::from_secs_f64(d.last_attempt_s.max(0.0)));
    }
    l
}
