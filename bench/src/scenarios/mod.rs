//! The scenarios, one module per kind. Each prepares its destination, measures, counts what the
//! broker holds and returns one [`Row`](crate::row::Row).
//!
//! - [`raw`]: the bare broker client (the ceiling);
//! - [`baseline`]: `ws`'s job by hand (the same stream read with a bare WebSocket client, parsed,
//!   a topic from `eventType`, published with the raw client and window): the ceiling for what
//!   the bridge does;
//! - [`bridge_core`]: bodies parsed, dispatched and published by the bridge, no network source;
//! - [`ws`]: simulator → WebSocket source → the whole bridge → broker (`bridge-ws`), and the
//!   same into a file sink that does not fsync, spool on and off (`source`);
//! - [`webhook`]: signed POSTs from the simulator's sender → the whole bridge → broker;
//! - [`sink`]: the bridge's sink alone, without the dispatcher;
//! - [`simulator`]: the load generator alone, read by a bare WebSocket client;
//! - [`machine`]: `ws` → file in child processes allowed every CPU.

pub mod baseline;
pub mod bridge_core;
pub mod machine;
pub mod raw;
pub mod simulator;
pub mod sink;
pub mod webhook;
pub mod ws;

use fondo_bridge::app::Bridge;

use crate::args::Args;
use crate::latency::Latencies;
use fondo_bridge::telemetry::prom;

/// What every scenario reads.
pub struct Ctx {
    pub args: Args,
    /// Clock ticks per second, for `/proc` CPU times.
    pub tck: f64,
}

impl Ctx {
    /// `--load-cpus`: where the simulator's thread runs.
    pub fn load_cpus(&self) -> Option<&str> {
        self.args.load_cpus.as_deref()
    }
}

/// The bridge's receive→ack latencies of `source` (`websocket`, `webhook`), from its histogram.
pub fn receive_to_ack(bridge: &Bridge, source: &str) -> Latencies {
    Latencies::from_buckets(&prom::histogram(
        &bridge.metrics.encode(),
        "fondo_bridge_receive_to_ack_seconds",
        &[("source", source)],
    ))
}

/// The bridge's publish→confirm latencies over all its sinks, from its histogram.
pub fn publish_latency(bridge: &Bridge) -> Latencies {
    Latencies::from_buckets(&prom::histogram(
        &bridge.metrics.encode(),
        "fondo_bridge_publish_latency_seconds",
        &[],
    ))
}

/// What the latency columns of rows read from the bridge's histograms say.
pub const FROM_BRIDGE_HISTOGRAM: &str =
    "bridge histogram (10 buckets per decade from 100 µs; upper bounds)";

/// Stops the bridge, logging (not failing on) a drain that timed out.
pub async fn shutdown(bridge: Bridge) {
    if let Err(e) = bridge.shutdown().await {
        eprintln!("  bridge shutdown: {e}");
    }
}
