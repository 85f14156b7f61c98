//! `docs/benchmarks.md`: one function per section, in the order they appear.

use crate::args::Args;
use crate::environment::Env;
use crate::row::Row;
use crate::summary::{BASELINE_TARGET, MachineRuns, PairRatios, baseline_ratio};

use super::{cpu_rss_verified, f, lat, ok};

const BROKERS: [&str; 4] = ["kafka", "rabbitmq", "nats", "file"];

/// How every latency figure is read, said once under the run table.
const QUANTILES: &str = "Every latency percentile is read the same way, from an HdrHistogram \
    (3 significant digits): the smallest value that that share of the events did not exceed. \
    Rows that time each event (raw, bridge core, sink, webhook) record every event's latency. \
    The same-job baseline records each event's receive→confirm. The bridge's receive→ack and \
    publish→confirm latencies are known only to the bridge, as its Prometheus histograms (ten \
    buckets per decade from 100 µs, adjacent bounds at most 1.28× apart); those rows record each \
    observation at its bucket's upper bound, so their percentiles are upper bounds, at most 28 % \
    above the true value.";

pub fn markdown(env: &Env, rows: &[Row], a: &Args) -> String {
    let mut s = String::new();
    run_table(&mut s, env, a);
    let main: Vec<&Row> = rows.iter().filter(|r| r.group == "main").collect();
    if main.iter().any(|r| r.scenario == "bridge-core") {
        core_vs_raw(&mut s, &main, rows, a);
    }
    ws_vs_raw(&mut s, &main);
    ws_vs_baseline(&mut s, &main, rows);
    webhook(&mut s, &main);
    if let Some(m) = MachineRuns::of(rows) {
        machine(&mut s, rows, &m);
    }
    parts(&mut s, rows);
    sweeps(&mut s, rows);
    how_measured(&mut s);
    s
}

fn push(s: &mut String, l: &str) {
    s.push_str(l);
    s.push('\n');
}

fn find<'a>(rows: &[&'a Row], scenario: &str, sink: &str) -> Option<&'a Row> {
    rows.iter()
        .copied()
        .find(|r| r.scenario == scenario && r.sink == sink)
}

/// `bridge/raw` throughput in percent, or `n/a`.
fn ratio(raw: Option<&Row>, bridge: &Row) -> String {
    raw.filter(|r| r.msgs_per_s > 0.0)
        .map(|r| format!("{:.0}%", 100.0 * bridge.msgs_per_s / r.msgs_per_s))
        .unwrap_or_else(|| "n/a".into())
}

/// `CPU s (cores/10k)` of a row, or `n/a`.
fn cpu(r: Option<&Row>) -> String {
    r.map(|r| format!("{:.2} ({:.2})", r.cpu_s_sut, r.sut_cores_per_10k))
        .unwrap_or_else(|| "n/a".into())
}

fn run_table(s: &mut String, env: &Env, a: &Args) {
    push(s, "# Benchmarks\n");
    push(
        s,
        "Produced by `scripts/bench.sh` (binary `fondo-bench`, the workspace package in `bench/`); \
         the raw numbers are in `bench-results/results.json`. Re-run it rather than editing this \
         file.\n",
    );
    push(s, "## Run\n");
    push(s, "| | |\n|---|---|");
    let dirty = if env.git_dirty {
        " (tracked files modified)"
    } else {
        ""
    };
    for (k, v) in [
        ("crate version", env.crate_version.clone()),
        ("git commit", format!("`{}`{dirty}", env.git_commit)),
        ("rustc", env.rustc.clone()),
        ("build", env.build.to_string()),
        ("nproc", env.nproc.clone()),
        ("CPU", env.cpu_model.clone()),
        ("date (UTC)", env.date_utc.clone()),
        (
            "load average at start (1/5/15 min)",
            env.loadavg_start.clone(),
        ),
        ("load average at end", env.loadavg_end.clone()),
        ("bench process pinned to CPUs", env.cpus_allowed.clone()),
        ("profile", env.profile.clone()),
        (
            "confirm window (raw client and bridge sink)",
            a.window.to_string(),
        ),
        (
            "bridge intake bound (`delivery.max_in_flight`)",
            a.intake().to_string(),
        ),
        ("note", env.note.clone()),
    ] {
        push(s, &format!("| {k} | {v} |"));
    }
    push(s, "");
    push(s, &format!("{QUANTILES}\n"));
}

fn core_vs_raw(s: &mut String, main: &[&Row], rows: &[Row], a: &Args) {
    push(s, "## Bridge core vs. raw client\n");
    push(
        s,
        "Both sides publish the same pre-generated payloads to the same broker with the same \
         confirm window (messages awaiting the broker's confirm: the raw client's window, the \
         bridge sink's `max_in_flight`), in the same run. On RabbitMQ the raw client also \
         sets the properties and headers the bridge's sink sets (with ids of the same \
         length), so the broker handles the same messages on both sides. The bridge holds at most \
         `delivery.max_in_flight` events inside (above; by default the same number), \
         including those queued behind an earlier event of the same object. Raw: the bare client. \
         Bridge core: each body is parsed (`Event::parse`), submitted to the dispatcher (routing, \
         per-key ordering, headers, deduplication, acknowledgement) and published by the bridge's \
         sink; no network source, no spool. Latency: publish→confirm (raw) and submit→ack \
         (bridge), each message's own. CPU is the whole process's.\n",
    );
    push(
        s,
        "| broker | raw msg/s | bridge core msg/s | bridge/raw | raw p50/p99/p99.9 ms | bridge p50/p99/p99.9 ms | raw CPU s (cores/10k) | bridge CPU s (cores/10k) | verified (broker count) |",
    );
    push(s, "|---|---|---|---|---|---|---|---|---|");
    for kind in BROKERS {
        let Some(br) = find(main, "bridge-core", kind) else {
            continue;
        };
        let raw = find(main, "raw", kind);
        push(
            s,
            &format!(
                "| {kind} | {} | {} | {} | {} | {} | {} | {} | {} ({}) |",
                raw.map_or("n/a".into(), |r| format!("{:.0}", r.msgs_per_s)),
                br.msgs_per_s,
                ratio(raw, br),
                raw.map_or("n/a".into(), lat),
                lat(br),
                cpu(raw),
                cpu(Some(br)),
                ok(br),
                br.broker_count.map(|c| c.to_string()).unwrap_or_default(),
            ),
        );
    }
    push(s, "");
    let repeated: Vec<String> = BROKERS
        .iter()
        .filter_map(|kind| {
            PairRatios::of(rows, kind).map(|p| format!("- {kind}: {}", p.describe()))
        })
        .collect();
    if !repeated.is_empty() {
        push(
            s,
            &format!(
                "Repeated pairs (`--pairs {}`; the table shows the first; later pairs alternate \
                 which side runs first; every row is in `bench-results/results.json`):\n",
                a.pairs
            ),
        );
        for line in repeated {
            push(s, &line);
        }
        push(s, "");
    }
}

fn ws_vs_raw(s: &mut String, main: &[&Row]) {
    push(s, "## Bridge vs. raw client (WebSocket source)\n");
    push(
        s,
        "Throughput counts broker-confirmed messages only. Raw latency is publish→confirm of each \
         message; bridge latency is receive→ack and its publish→confirm from the bridge's own \
         histograms (upper bounds, see above). SUT CPU = process CPU − simulator thread CPU; \
         cores/10k = SUT cores busy per 10k events/s. Peak RSS is VmHWM of the whole process \
         (simulator included), reset through `/proc/self/clear_refs` before each run; the \
         allocator keeps memory freed by earlier scenarios, so later rows are upper bounds.\n",
    );
    push(
        s,
        "| broker | payload (avg B) | raw msg/s | bridge msg/s | bridge/raw | raw p50/p99/p99.9 ms | bridge p50/p99/p99.9 ms | bridge publish p50/p99 ms | bridge SUT CPU s (cores/10k) | raw CPU s (cores/10k) | bridge peak RSS MB | verified (broker count) |",
    );
    push(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for kind in BROKERS {
        let Some(br) = find(main, "bridge-ws", kind) else {
            continue;
        };
        let raw = find(main, "raw", kind);
        push(
            s,
            &format!(
                "| {kind} | {} ({}) | {} | {} | {} | {} | {} | {} / {} | {} | {} | {:.0} | {} ({}) |",
                br.payload_bytes,
                br.avg_body_bytes,
                raw.map_or("n/a".into(), |r| format!("{:.0}", r.msgs_per_s)),
                br.msgs_per_s,
                ratio(raw, br),
                raw.map_or("n/a".into(), lat),
                lat(br),
                f(br.publish_p50_ms),
                f(br.publish_p99_ms),
                cpu(Some(br)),
                cpu(raw),
                br.peak_rss_mb,
                ok(br),
                br.broker_count.map(|c| c.to_string()).unwrap_or_default(),
            ),
        );
    }
    push(s, "");
}

fn ws_vs_baseline(s: &mut String, main: &[&Row], rows: &[Row]) {
    if !main.iter().any(|r| r.scenario == "baseline") {
        return;
    }
    push(s, "## Bridge vs. same-job baseline (WebSocket source)\n");
    push(
        s,
        &format!(
            "The baseline does the bridge's job by hand, in the same run: the same simulated \
             stream (same simulator thread, payloads and event count) read with a bare WebSocket \
             client, each frame parsed with serde_json, the topic picked from `eventType` as the \
             bridge's route renders it (`<prefix>.{{entity}}`, key = the object's ref), and \
             published with the raw client and confirm window; no spool, no deduplication, no \
             per-key queues. It is the ceiling for what the bridge does; the target is bridge ≥ \
             {BASELINE_TARGET:.0}% of it on NATS and Kafka. Baseline latency is receive→confirm \
             of each event; the bridge's is receive→ack from its histogram (upper bounds).\n"
        ),
    );
    push(
        s,
        "| broker | baseline msg/s | bridge msg/s | bridge / baseline | baseline p50/p99/p99.9 ms | bridge p50/p99/p99.9 ms | baseline publish p50/p99 ms | bridge publish p50/p99 ms | baseline SUT CPU s (cores/10k) | bridge SUT CPU s (cores/10k) | baseline peak RSS MB | bridge peak RSS MB | verified (broker count) |",
    );
    push(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for kind in BROKERS {
        let Some(base) = find(main, "baseline", kind) else {
            continue;
        };
        let br = find(main, "bridge-ws", kind);
        let pct = baseline_ratio(rows, kind).map_or("n/a".into(), |p| {
            let met = if p >= BASELINE_TARGET {
                ""
            } else {
                " (below target)"
            };
            format!("{p:.0}%{met}")
        });
        push(
            s,
            &format!(
                "| {kind} | {:.0} | {} | {pct} | {} | {} | {} / {} | {} | {} | {} | {:.0} | {} | {} ({}) |",
                base.msgs_per_s,
                br.map_or("n/a".into(), |r| format!("{:.0}", r.msgs_per_s)),
                lat(base),
                br.map_or("n/a".into(), lat),
                f(base.publish_p50_ms),
                f(base.publish_p99_ms),
                br.map_or("n/a".into(), |r| format!(
                    "{} / {}",
                    f(r.publish_p50_ms),
                    f(r.publish_p99_ms)
                )),
                cpu(Some(base)),
                cpu(br),
                base.peak_rss_mb,
                br.map_or("n/a".into(), |r| format!("{:.0}", r.peak_rss_mb)),
                ok(base),
                base.broker_count.map(|c| c.to_string()).unwrap_or_default(),
            ),
        );
    }
    push(s, "");
}

fn webhook(s: &mut String, main: &[&Row]) {
    let wh: Vec<&&Row> = main
        .iter()
        .filter(|r| r.scenario == "bridge-webhook")
        .collect();
    if wh.is_empty() {
        return;
    }
    push(s, "## Webhook source\n");
    push(
        s,
        "Signed (Standard Webhooks) POSTs from the simulator's sender, which waits for each \
         answer; the bridge answers 2xx only after the broker confirmed. Latency is POST→2xx \
         of each acknowledged request's final attempt, measured at the sender.\n",
    );
    push(
        s,
        "| sink | concurrency | msg/s | POST→2xx p50/p99/p99.9 ms | publish p50/p99 ms | SUT CPU s (cores/10k) | peak RSS MB | verified (broker count) |",
    );
    push(s, "|---|---|---|---|---|---|---|---|");
    for r in wh {
        push(
            s,
            &format!(
                "| {} | {} | {} | {} | {} / {} | {} |",
                r.sink,
                r.window,
                r.msgs_per_s,
                lat(r),
                f(r.publish_p50_ms),
                f(r.publish_p99_ms),
                cpu_rss_verified(r),
            ),
        );
    }
    push(s, "");
}

fn machine(s: &mut String, rows: &[Row], m: &MachineRuns) {
    push(s, "## WebSocket → file on the whole machine\n");
    push(
        s,
        "The simulator → WebSocket source → spool → file sink path, with the spool and \
         `fsync: batch` on, as `fondo-bridge demo` runs it: each run is a separate process \
         allowed every CPU of the machine, the simulator's thread unpinned, so load \
         generator and bridge share the cores. The table above runs the same path with the \
         bridge on one CPU. Latency is receive→ack from the bridge's histogram (the spool \
         record is released at the ack).\n",
    );
    push(
        s,
        "| run | events/s | receive→ack p50/p99/p99.9 ms | SUT CPU s (cores/10k) | peak RSS MB | verified (lines) |",
    );
    push(s, "|---|---|---|---|---|---|");
    for (i, r) in rows.iter().filter(|r| r.group == "machine").enumerate() {
        push(
            s,
            &format!(
                "| {} | {:.0} | {} | {} |",
                i + 1,
                r.msgs_per_s,
                lat(r),
                cpu_rss_verified(r),
            ),
        );
    }
    push(s, "");
    push(s, &format!("{}.\n", m.describe()));
}

fn parts(s: &mut String, rows: &[Row]) {
    let g: Vec<&Row> = rows.iter().filter(|r| r.group == "parts").collect();
    if g.is_empty() {
        return;
    }
    push(s, "## Parts alone\n");
    push(
        s,
        "Sink: the bridge's sink, built from the same config, publishing the messages the \
         dispatcher would render, with the same confirm window; no parse, no routing, no per-key \
         order (between raw and bridge core). Source: the simulator → WebSocket source → \
         dispatcher → a file sink with `fsync: never`, spool on and off. Simulator: the load \
         generator streaming to a bare client that only counts; its CPU is the simulator \
         thread's.\n",
    );
    push(
        s,
        "| scenario | sink | msg/s | p50/p99/p99.9 ms | latency | SUT CPU s (cores/10k) | peak RSS MB | verified (count) | note |",
    );
    push(s, "|---|---|---|---|---|---|---|---|---|");
    for r in g {
        push(
            s,
            &format!(
                "| {} | {} | {:.0} | {} | {} | {} | {} |",
                r.scenario,
                r.sink,
                r.msgs_per_s,
                lat(r),
                if r.latency.is_empty() {
                    "–"
                } else {
                    &r.latency
                },
                cpu_rss_verified(r),
                r.note,
            ),
        );
    }
    push(s, "");
}

fn sweeps(s: &mut String, rows: &[Row]) {
    for (group, title, col) in [
        ("payload", "## Sweep: payload size", "payload B (avg)"),
        ("routes", "## Sweep: route count", "routes"),
    ] {
        let g: Vec<&Row> = rows.iter().filter(|r| r.group == group).collect();
        if g.is_empty() {
            continue;
        }
        push(s, &format!("{title}\n"));
        push(
            s,
            &format!(
                "| scenario | sink | {col} | msg/s | p50/p99/p99.9 ms | SUT CPU cores/10k | peak RSS MB | verified |"
            ),
        );
        push(s, "|---|---|---|---|---|---|---|---|");
        for r in g {
            let c = if group == "payload" {
                format!("{} ({})", r.payload_bytes, r.avg_body_bytes)
            } else {
                r.routes.to_string()
            };
            push(
                s,
                &format!(
                    "| {} | {} | {c} | {} | {} | {:.2} | {:.0} | {} |",
                    r.scenario,
                    r.sink,
                    r.msgs_per_s,
                    lat(r),
                    r.sut_cores_per_10k,
                    r.peak_rss_mb,
                    ok(r)
                ),
            );
        }
        push(s, "");
    }
}

fn how_measured(s: &mut String) {
    push(s, "## How it is measured\n");
    for l in [
        "- **Raw**: the bare client, one connection, at most `window` messages awaiting their confirm: rdkafka `FutureProducer` (`acks=all`, `enable.idempotence=true`, the sink's queue limits), lapin with publisher confirms, `mandatory`, persistent messages to a durable topic exchange with one durable classic queue bound `#`, async-nats JetStream publish + PubAck (file storage, `Nats-Msg-Id`); for the file sink, the sink's lines appended to one file per topic, `window` lines per group commit, the files written fdatasynced in parallel before the next batch (the disk's own cost: no parse, no dispatcher, no spool). Same payloads (Generator, padded to the payload size), same keys, same 4-5 headers (on RabbitMQ also the sink's `fondo-key` header and its `message_id`, `type`, `app_id` and `timestamp` properties, with ids as long as the bridge's); payloads pre-generated before timing.",
        "- **Bridge**: `Bridge::start` in-process; the simulator streams `N` events over a WebSocket on loopback (rate unlimited); the WebSocket source spools to disk (spool on, temp dir); one catch-all route `<prefix>.{entity}`; the sink's confirm window (`max_in_flight`) = `window`, `delivery.max_in_flight` as in the run table. Timing starts at the simulator's first event and stops when `delivered_total` (broker-confirmed) reaches `N`.",
        "- **Verified**: after the bridge drained, the broker's own count (Kafka: the messages of the 7 topics × 3 partitions read back; RabbitMQ: message count of the bound queue; JetStream: stream message count; file: lines written) is at least the confirmed count, which is at least `N`. At-least-once may show a few duplicates (count > N).",
        "- **Sharing**: the simulator (and the webhook sender) run in the same process on their own thread and runtime, and their CPU is subtracted; `scripts/bench.sh` moves that thread off the bridge's CPU (`--load-cpus`, in the note above), as a separate load generator would be, so it shares a CPU with tansu instead. The brokers run on the same machine. Kafka is tansu (memory storage), not Apache Kafka.",
        "- **Route sweep**: `routes − 1` routes that match `*` but whose `where` filter never holds, plus the catch-all: every event is evaluated against every route.",
    ] {
        push(s, l);
    }
    push(s, "");
    push(s, "## Running\n");
    push(
        s,
        "```sh\nscripts/bench.sh --quick   # main comparison (3 raw/core pairs per broker), < 10 minutes with broker start\nscripts/bench.sh --quick --pairs 5   # more pairs where one is not enough to judge\nBENCH_MACHINE_RUNS=10 scripts/bench.sh --quick   # 10 WebSocket → file runs on the whole machine (default 5)\nscripts/bench.sh --quick --scenarios sink,source,simulator   # the parts alone\nscripts/bench.sh --full    # plus payload 256 B..8 KB, 1/10/100/1000 routes and the parts alone\n```\n",
    );
}
