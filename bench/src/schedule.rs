//! Which scenarios run, in which order, and what becomes of their rows.

use crate::args::Args;
use crate::dest::SinkKind;
use crate::environment::{environment, loadavg};
use crate::measure::clk_tck;
use crate::report;
use crate::row::Row;
use crate::scenarios::{Ctx, baseline, bridge_core, machine, raw, simulator, sink, webhook, ws};
use crate::summary::{PairRatios, baseline_ratio};

pub async fn run(a: Args) -> anyhow::Result<()> {
    let mut env = environment(&a);
    eprintln!(
        "fondo-bench {} ({} build), load {} , cpus {}",
        env.profile, env.build, env.loadavg_start, env.cpus_allowed
    );
    let c = Ctx {
        tck: clk_tck(),
        args: a.clone(),
    };
    let n = a.events();
    let mut rows: Vec<Row> = Vec::new();
    for k in SinkKind::ALL {
        if a.wants(k.name()) {
            per_broker(&c, k, n, &mut rows).await;
        }
    }
    if a.wants("webhook") {
        let nwh = a.webhook_events();
        for k in [SinkKind::File, SinkKind::Nats] {
            eprintln!("webhook → {} ({nwh} events)", k.name());
            let r = webhook::run(&c, k, a.payload_bytes, nwh).await;
            record(r, "webhook", &mut rows);
        }
    }
    parts(&c, n, &mut rows).await;
    if a.full {
        sweeps(&c, n, &mut rows).await;
    }
    if a.machine_runs > 0 && a.wants("file") {
        machine::run(&a, n, &mut rows).await?;
    }
    env.loadavg_end = loadavg();
    report::write(&a, &env, &rows)
}

/// Keeps a scenario's row and prints it, or prints why it failed.
fn record(r: anyhow::Result<Row>, what: &str, rows: &mut Vec<Row>) {
    match r {
        Ok(r) => {
            eprintln!(
                "  {what}: {:.0} msg/s, p50/p99/p99.9 {} ms, SUT cpu {:.2}s, rss {:.0} MB, verified {:?} ({:?})",
                r.msgs_per_s,
                report::lat(&r),
                r.cpu_s_sut,
                r.peak_rss_mb,
                r.verified,
                r.broker_count
            );
            rows.push(r);
        }
        Err(e) => eprintln!("  {what}: FAILED: {e:#}"),
    }
}

/// One broker: raw, bridge core, the further raw/core pairs, the sink alone, the WebSocket
/// source; each when `--scenarios` asks for it.
async fn per_broker(c: &Ctx, k: SinkKind, n: u64, rows: &mut Vec<Row>) {
    let (a, name, payload) = (&c.args, k.name(), c.args.payload_bytes);
    if a.runs("raw") {
        eprintln!("{name}: raw ({n} events)");
        record(raw::run(c, k, payload, n, "main").await, "raw", rows);
    }
    if a.runs("core") {
        eprintln!("{name}: bridge core (parse, route, dispatch, sink)");
        let r = bridge_core::run(c, k, payload, n, "main").await;
        record(r, "bridge core", rows);
    }
    if a.runs("raw") && a.runs("core") {
        for pair in 2..=a.pairs {
            let group = format!("pair-{pair}");
            let raw_first = pair % 2 == 1;
            for raw_turn in [raw_first, !raw_first] {
                if raw_turn {
                    eprintln!("{name}: raw, pair {pair}");
                    record(raw::run(c, k, payload, n, &group).await, "raw", rows);
                } else {
                    eprintln!("{name}: bridge core, pair {pair}");
                    let r = bridge_core::run(c, k, payload, n, &group).await;
                    record(r, "bridge core", rows);
                }
            }
        }
        if let Some(p) = PairRatios::of(rows, name) {
            eprintln!("  {}", p.describe());
        }
    }
    if a.runs("sink") {
        eprintln!("{name}: the sink alone");
        record(sink::run(c, k, payload, n).await, "sink", rows);
    }
    if a.runs("baseline") && k != SinkKind::File {
        eprintln!("{name}: same-job baseline (the WebSocket stream parsed and published by hand)");
        let r = baseline::run(c, k, payload, n, "main").await;
        record(r, "baseline", rows);
    }
    if a.runs("ws") {
        eprintln!("{name}: bridge from the WebSocket source");
        let r = ws::bridge(c, k, payload, 1, n, "main").await;
        record(r, "bridge", rows);
    }
    if let Some(pct) = baseline_ratio(rows, name) {
        eprintln!("  bridge (ws) / baseline: {pct:.0}% (target ≥ 80%)");
    }
}

/// The parts that are no broker's: the WebSocket source (spool on, then off) and the simulator.
async fn parts(c: &Ctx, n: u64, rows: &mut Vec<Row>) {
    if c.args.runs("source") {
        for spool in [true, false] {
            let state = if spool { "on" } else { "off" };
            eprintln!("source: WebSocket source, spool {state}, into a file sink without fsync");
            record(ws::source(c, spool, n).await, "source", rows);
        }
    }
    if c.args.runs("simulator") {
        eprintln!("simulator: the load generator alone ({n} events to a bare client)");
        record(simulator::run(c, n).await, "simulator", rows);
    }
}

/// `--full`: payload sizes (raw and bridge per broker) and route counts (file and NATS).
async fn sweeps(c: &Ctx, n: u64, rows: &mut Vec<Row>) {
    let ns = (n / 2).max(1);
    for payload in [256usize, 1024, 4096, 8192] {
        for k in [SinkKind::Kafka, SinkKind::Rabbit, SinkKind::Nats] {
            if !c.args.wants(k.name()) {
                continue;
            }
            eprintln!("sweep payload {payload}: {}", k.name());
            record(raw::run(c, k, payload, ns, "payload").await, "raw", rows);
            let r = ws::bridge(c, k, payload, 1, ns, "payload").await;
            record(r, "bridge", rows);
        }
    }
    for routes in [1usize, 10, 100, 1000] {
        for k in [SinkKind::File, SinkKind::Nats] {
            eprintln!("sweep routes {routes}: {}", k.name());
            let r = ws::bridge(c, k, c.args.payload_bytes, routes, ns, "routes").await;
            record(r, "bridge", rows);
        }
    }
}
