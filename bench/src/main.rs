//! `fondo-bench`: the benchmark harness of fondo-bridge.
//!
//! For each broker it measures, in one run and against the same broker:
//! - the **raw ceiling**: the bare client (rdkafka `FutureProducer` with `acks=all` and idempotence,
//!   lapin with publisher confirms and `mandatory`, async-nats JetStream publish + PubAck),
//!   publishing the same Fondo payloads (from the simulator's `Generator`) with the same in-flight
//!   window;
//! - **the bridge core**: the same bodies parsed, dispatched and published by the bridge's sink;
//! - **the same-job baseline**: the bridge's job done by hand on the same simulated stream (a
//!   bare WebSocket client, serde_json, the topic from `eventType`, the raw client and window;
//!   no spool, dedupe or per-key queues): the ceiling for what the bridge does;
//! - **the bridge**: simulator → WebSocket source (spool on) → bridge → sink, counting only
//!   broker-confirmed deliveries, then checked against the broker's own count;
//! - the webhook source (signed Standard Webhooks POSTs) → file and → NATS;
//! - on request (`--scenarios`, all of them with `--full`), parts alone: the bridge's sink without
//!   the dispatcher, the WebSocket source into a sink that does not fsync, and the simulator.
//!
//! Each row records messages/s, latency percentiles, CPU seconds of the system under test and
//! peak RSS. Every percentile is read from an HdrHistogram ([`latency::Latencies`]). The simulator
//! (and the webhook sender) run on their own single-threaded runtime in their own OS thread
//! ([`sim::SimThread`]); that thread's CPU time is subtracted from the process's, so "SUT CPU" is
//! the bridge (plus the broker clients' threads). Results go to `bench-results/results.json` and
//! `docs/benchmarks.md`.
//!
//! Run it through `scripts/bench.sh --quick|--full`, which starts the brokers and pins the process.
//!
//! Where things are: [`args`] the options; [`schedule`] which scenarios run in which order;
//! [`scenarios`] one module per scenario kind; [`brokers`] the raw clients and what each broker
//! needs set up, counted and cleaned ([`dest`]); [`latency`], [`prom`] and [`measure`] how figures
//! are taken; [`row`] and [`summary`] what is kept of them; [`report`] the Markdown.

mod args;
mod brokers;
mod dest;
mod environment;
mod latency;
mod measure;
mod payload;
mod report;
mod row;
mod scenarios;
mod schedule;
mod sim;
mod summary;
mod window;

/// mimalloc instead of glibc's malloc, as in the product binary: the per-event path allocates
/// many small short-lived objects (parsed JSON, headers), where glibc spent a quarter of the CPU
/// in a profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    use clap::Parser as _;
    let args = args::Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(schedule::run(args))
}
