//! The command line.

use std::path::PathBuf;

use clap::Parser;

/// The scenario kinds of `--scenarios` run when it is not given: the quick profile's.
const QUICK_SCENARIOS: &str = "raw,core,baseline,ws";
/// ... and the full profile's: every kind.
const FULL_SCENARIOS: &str = "raw,core,baseline,ws,sink,source,simulator";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "fondo-bench",
    about = "Raw broker ceiling vs. the bridge, per broker"
)]
pub struct Args {
    /// Quick profile (default): the main comparison at one payload size.
    #[arg(long, conflicts_with = "full")]
    pub quick: bool,
    /// Full profile: also payload-size and route-count sweeps, and the parts alone (sink, source,
    /// simulator).
    #[arg(long)]
    pub full: bool,
    /// Events per scenario (overrides the profile's count).
    #[arg(long)]
    pub events: Option<u64>,
    /// Events per webhook scenario (overrides the profile's count).
    #[arg(long)]
    pub webhook_events: Option<u64>,
    /// Generator payload padding for the main comparison (bodies are about this size).
    #[arg(long, default_value_t = 2048)]
    pub payload_bytes: usize,
    /// Confirm window: messages awaiting the broker's confirm at once, the same for the raw
    /// clients and the bridge's sinks (their `max_in_flight`).
    #[arg(long, default_value_t = 1024)]
    pub window: usize,
    /// The bridge's intake bound (`delivery.max_in_flight`: events inside the bridge, also
    /// those queued behind an earlier event of their key); default: the confirm window, so the
    /// bridge never holds more events than the raw client has in flight.
    #[arg(long)]
    pub bridge_in_flight: Option<usize>,
    /// Concurrent webhook requests.
    #[arg(long, default_value_t = 64)]
    pub webhook_concurrency: usize,
    #[arg(
        long,
        env = "FONDO_BRIDGE_TEST_KAFKA",
        default_value = "127.0.0.1:19092"
    )]
    pub kafka: String,
    #[arg(
        long,
        env = "FONDO_BRIDGE_TEST_AMQP",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp: String,
    #[arg(
        long,
        env = "FONDO_BRIDGE_TEST_NATS",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats: String,
    /// Comma-separated subset of: kafka,rabbitmq,nats,file,webhook.
    #[arg(long, default_value = "kafka,rabbitmq,nats,file,webhook")]
    pub only: String,
    /// Shell command run before each Kafka scenario (e.g. restart the memory-storage broker).
    #[arg(long)]
    pub kafka_restart_cmd: Option<String>,
    /// Objects the events are about; one object's events share a key and are kept in order.
    #[arg(long, default_value_t = 1000)]
    pub objects: usize,
    /// Raw-client / bridge-core pairs per broker. The first pair runs raw first; further pairs
    /// alternate the order (core first, then raw first, ...), so a machine that drifts within
    /// the run, or a broker still busy with the previous scenario, favours neither side. The
    /// report gives each pair's ratio, their median and their minimum.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub pairs: u32,
    /// Comma-separated subset of the scenario kinds: raw, core, baseline, ws (per broker), sink
    /// (the bridge's sink alone, per broker), source (the WebSocket source, spool on and off,
    /// into a file sink that does not fsync), simulator (the load generator alone). `baseline`
    /// is `ws`'s job done by hand (no file sink). Default: raw,core,baseline,ws; with --full
    /// every kind.
    #[arg(long)]
    pub scenarios: Option<String>,
    /// CPUs for the simulator's thread, the load generator of the WebSocket and webhook
    /// scenarios (`taskset` list, e.g. `0`); default: wherever the process runs.
    #[arg(long)]
    pub load_cpus: Option<String>,
    /// The spool's and the file sink's `group_commit_ms` (default: the bridge's default).
    #[arg(long)]
    pub group_commit_ms: Option<u64>,
    /// Free text recorded in the results: what else shared the machine, pinning.
    #[arg(long, default_value = "")]
    pub note: String,
    #[arg(long, default_value = "bench-results/results.json")]
    pub out_json: PathBuf,
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub out_md: PathBuf,
    /// Don't write the output files (smoke tests).
    #[arg(long)]
    pub no_write: bool,
    /// WebSocket → file runs on the whole machine (the demo's path at its real cost): each run is a
    /// child process of this binary with every CPU allowed, its simulator thread unpinned, so
    /// load generator and bridge share the machine's cores as `fondo-bridge demo` does. Runs
    /// when `file` is in `--only`. `scripts/bench.sh` asks for 5.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=50))]
    pub machine_runs: u32,
    /// Write the rows measured as JSON to this file instead of the report (the child
    /// processes of `--machine-runs` use it).
    #[arg(long, hide = true)]
    pub rows_out: Option<PathBuf>,
}

impl Args {
    /// `delivery.max_in_flight` for the bridge under test.
    pub fn intake(&self) -> usize {
        self.bridge_in_flight.unwrap_or(self.window)
    }

    /// Whether `what` (a broker, or `webhook`) is in `--only`.
    pub fn wants(&self, what: &str) -> bool {
        self.only.split(',').any(|s| s.trim() == what)
    }

    /// Whether the scenario kind runs (`--scenarios`, or the profile's kinds).
    pub fn runs(&self, scenario: &str) -> bool {
        let kinds = self.scenarios.as_deref().unwrap_or(if self.full {
            FULL_SCENARIOS
        } else {
            QUICK_SCENARIOS
        });
        kinds.split(',').any(|s| s.trim() == scenario)
    }

    /// Events per scenario.
    pub fn events(&self) -> u64 {
        self.events
            .unwrap_or(if self.full { 100_000 } else { 40_000 })
    }

    /// Events per webhook scenario.
    pub fn webhook_events(&self) -> u64 {
        self.webhook_events
            .unwrap_or(if self.full { 20_000 } else { 10_000 })
    }

    pub fn profile(&self) -> &'static str {
        if self.full { "full" } else { "quick" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_kinds_follow_the_profile_unless_given() {
        let quick = Args::parse_from(["fondo-bench"]);
        assert!(quick.runs("core") && quick.runs("baseline") && !quick.runs("sink"));
        let full = Args::parse_from(["fondo-bench", "--full"]);
        assert!(full.runs("core") && full.runs("sink") && full.runs("simulator"));
        let some = Args::parse_from(["fondo-bench", "--full", "--scenarios", "raw, sink"]);
        assert!(some.runs("sink") && some.runs("raw") && !some.runs("core"));
    }
}
