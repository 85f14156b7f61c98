//! `simulator`: the load generator alone. The simulator streams `n` events, on its own thread as
//! in the WebSocket scenarios, to a bare WebSocket client that only counts them: how fast the
//! stand-in for Fondo can send, and what it costs. Its CPU is the simulator thread's; the
//! reading client's is left out.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures::StreamExt as _;
use tokio_tungstenite::tungstenite::Message;

use fondo_bridge::simulator::stream::StreamConfig;

use crate::measure::{CpuMeter, peak_rss_mb, reset_peak_rss};
use crate::payload::TOKEN;
use crate::row::{Outcome, Row, Setup};
use crate::scenarios::Ctx;
use crate::sim::SimThread;

pub async fn run(c: &Ctx, n: u64) -> anyhow::Result<Row> {
    let a = &c.args;
    let sim = SimThread::spawn(
        Some(StreamConfig {
            token: TOKEN.into(),
            seed: 11,
            count: Some(n),
            objects: a.objects.max(1),
            payload_bytes: a.payload_bytes,
            heartbeat: None,
            record: false,
            ..StreamConfig::default()
        }),
        c.load_cpus(),
    )?;
    let req = sim.client_request()?;
    reset_peak_rss();
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let cpu = CpuMeter::start(c.tck, sim.tid.clone());
    let t0 = Instant::now();
    let limit = Duration::from_secs(60 + n / 500);
    let read = tokio::time::timeout(limit, read(&mut ws, n)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let (cpu_p, cpu_sim) = cpu.read();
    let rss = peak_rss_mb();
    drop(ws);
    sim.stop().await;
    let (got, bytes) = read.map_err(|_| anyhow!("fewer than {n} events in {limit:?}"))??;
    let setup = Setup {
        scenario: "simulator",
        sink: "none",
        group: "parts",
        payload_bytes: a.payload_bytes,
        avg_body_bytes: bytes as f64 / got.max(1) as f64,
        routes: 0,
        window: 0,
        events: n,
    };
    // The system under test is the simulator: its thread's CPU is the row's SUT CPU (the
    // process's and the thread's are set as measured below).
    let outcome = Outcome {
        confirmed: got,
        errors: 0,
        elapsed_s: elapsed,
        cpu_s: (cpu_sim, 0.0),
        peak_rss_mb: rss,
    };
    let mut row = Row::measured(&setup, &outcome);
    (row.cpu_s_process, row.cpu_s_simulator) = (cpu_p, cpu_sim);
    row.verify(Ok(got));
    row.note = format!(
        "{:.1} MB/s; SUT CPU = the simulator thread's",
        bytes as f64 / elapsed.max(1e-9) / 1e6
    );
    Ok(row)
}

/// Reads `n` events; returns how many and their bytes.
async fn read<S>(ws: &mut S, n: u64) -> anyhow::Result<(u64, usize)>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let (mut got, mut bytes) = (0u64, 0usize);
    while got < n {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                got += 1;
                bytes += t.len();
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("after {got} events: {e}"),
            None => bail!("the stream ended after {got} of {n} events"),
        }
    }
    Ok((got, bytes))
}
