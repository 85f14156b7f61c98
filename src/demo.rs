//! `fondo-bridge demo`: the simulator and the bridge in one process, with `config/demo.yaml`,
//! writing JSON-lines files under `./demo-out/` and showing live progress. No broker, loopback only.

use std::io::Write as _;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::app::{AppError, Bridge};
use crate::config::{Config, ConfigError};
use crate::metrics::{Metrics, ReasonLabels};
use crate::simulator::stream::{self, SimHandle, SimulateArgs, StreamConfig};

/// The demo's config, compiled in so `demo` works from any directory.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.yaml");

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Events per second the simulated Fondo sends (0 = as fast as possible).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Stop after this many events (default: run until Ctrl-C).
    #[arg(long)]
    pub count: Option<u64>,
    /// Inject a malformed frame every N events, to see dead letters.
    #[arg(long)]
    pub malformed_every: Option<u64>,
    /// Drop the WebSocket connection every N events, to see reconnects and gaps.
    #[arg(long)]
    pub drop_every: Option<u64>,
    /// Where the output goes (replaces ./demo-out in the demo config).
    #[arg(long, default_value = "./demo-out")]
    pub out: std::path::PathBuf,
    /// Serve the admin endpoint (`/metrics`, `/healthz`, `/readyz`) on this address, for
    /// `fondo-bridge top` or a scraper (default: off).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<std::net::SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo config: {0}")]
    Config(#[from] ConfigError),
    #[error("simulator: {0}")]
    Simulator(String),
    #[error(transparent)]
    App(#[from] AppError),
}

/// What the demo did, for the closing summary.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub sent: u64,
    pub received: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub elapsed: Duration,
}

fn dead_lettered(m: &Metrics) -> u64 {
    [
        "unparseable",
        "unmatched",
        "render",
        "fatal",
        "exhausted",
        "no_sink",
    ]
    .iter()
    .map(|r| {
        m.dead_lettered
            .get_or_create(&ReasonLabels {
                reason: (*r).into(),
            })
            .get()
    })
    .sum()
}

/// Runs until `stop` is cancelled (Ctrl-C) or `count` events were delivered, then drains.
pub async fn run(args: DemoArgs, stop: CancellationToken) -> Result<Summary, DemoError> {
    let out = args.out.display().to_string();
    let text = DEMO_CONFIG.replace("./demo-out", out.trim_end_matches('/'));
    let mut cfg = Config::from_str_with_env(&text, "yaml", std::env::vars())?;
    let ws = cfg
        .sources
        .websocket
        .as_mut()
        .ok_or_else(|| DemoError::Simulator("demo config has no websocket source".into()))?;
    let token = ws
        .token
        .as_ref()
        .map(|t| t.expose().to_owned())
        .unwrap_or_default();
    let (addr, sim) = stream::start(StreamConfig::from(&simulator_args(&args, token)?))
        .await
        .map_err(|e| DemoError::Simulator(e.to_string()))?;
    ws.url = format!("ws://{addr}");
    // The admin port of the demo config may be taken: the demo serves one only when asked.
    cfg.admin.listen = args.admin;
    let bridge = Bridge::start(cfg).await?;
    let metrics = std::sync::Arc::clone(&bridge.metrics);
    let started = Instant::now();
    eprintln!("demo: simulated Fondo on ws://{addr} → bridge → {out}/*.jsonl   (Ctrl-C to stop)");
    if let Some(admin) = args.admin {
        eprintln!(
            "demo: admin endpoint on http://{admin} (`fondo-bridge top --admin http://{admin}`)"
        );
    }
    show_progress(&bridge, &sim, args.count, &stop).await;
    let sent = sim.events_sent();
    bridge.shutdown().await?;
    sim.stop().await;
    Ok(Summary {
        sent,
        received: metrics
            .received
            .get_or_create(&metrics.source("websocket"))
            .get(),
        delivered: metrics.delivered_total(),
        dead_lettered: dead_lettered(&metrics),
        elapsed: started.elapsed(),
    })
}

/// The simulator the demo streams from, as `--rate`, `--count`, `--drop-every` and
/// `--malformed-every` ask.
fn simulator_args(args: &DemoArgs, token: String) -> Result<SimulateArgs, DemoError> {
    Ok(SimulateArgs {
        listen: "127.0.0.1:0"
            .parse()
            .map_err(|_| DemoError::Simulator("address".into()))?,
        token,
        query_token: false,
        open: false,
        stamp: false,
        seed: 1,
        rate: args.rate,
        count: args.count,
        objects: 1000,
        payload_bytes: 0,
        heartbeat_ms: 1000,
        drop_every: args.drop_every,
        malformed_every: args.malformed_every,
        oversized_bytes: 1536 * 1024,
        stall_after: None,
        stall_ms: 0,
        client_ids: Vec::new(),
    })
}

/// The live line on stderr, twice a second, until `stop` or (with `--count`) until every event
/// was sent, received and acknowledged.
async fn show_progress(
    bridge: &Bridge,
    sim: &SimHandle,
    count: Option<u64>,
    stop: &CancellationToken,
) {
    let metrics = &bridge.metrics;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last = (Instant::now(), 0u64);
    let mut stderr = std::io::stderr();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let received = metrics
            .received
            .get_or_create(&metrics.source("websocket"))
            .get();
        let delivered = metrics.delivered_total();
        let dl = dead_lettered(metrics);
        let rate = (delivered - last.1.min(delivered)) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), delivered);
        let _ = write!(
            stderr,
            "\r  received {received:>9}   delivered {delivered:>9}   dead-lettered {dl:>6}   {rate:>9.0} events/s   in flight {:>5} ",
            bridge.dispatcher.in_flight()
        );
        let _ = stderr.flush();
        if count.is_some_and(|c| {
            sim.events_sent() >= c && received >= c && bridge.dispatcher.in_flight() == 0
        }) {
            break;
        }
    }
    eprintln!();
}
