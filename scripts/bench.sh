#!/usr/bin/env bash
# The benchmark harness (package `fondo-bench` in bench/): raw broker clients vs. the bridge, per
# broker.
#
#   scripts/bench.sh [--quick|--full] [fondo-bench options...]
#   scripts/bench.sh --peer     # fondo-bridge vs. mq-bridge 1.2.0, process against process (bench-peer.sh)
#   scripts/bench.sh --sweep    # the release binary at 100 / 1 000 / 10 000 events/s and idle (bench-sweep.sh)
#   scripts/bench.sh --all      # the three above (peer, sweep, quick), then docs/benchmarks.md
# Each writes its part to bench-results/ and assembles docs/benchmarks.md (scripts/bench-doc.sh).
#
# Starts the brokers (scripts/brokers.sh: RabbitMQ 5672, NATS+JetStream 4222; its own tansu Kafka
# broker on $BENCH_KAFKA_PORT, default 19192, restarted before every Kafka scenario because memory
# storage keeps everything in RAM), builds `fondo-bench` in release mode (in $CARGO_TARGET_DIR,
# default target/) and runs it pinned with taskset: the bench process (bridge, raw clients) on
# $BENCH_CPUS (default: the last CPU), its simulator thread (the load generator of the WebSocket
# and webhook scenarios) and tansu on the others ($BENCH_BROKER_CPUS). RabbitMQ and NATS are the
# machine's services and are not re-pinned.
# Then (when the file sink is in --only) WebSocket -> file runs $BENCH_MACHINE_RUNS times (default
# 5) on the whole machine, unpinned: the demo's path at its real cost.
# Writes bench-results/results.json and bench-results/ceiling.md, then docs/benchmarks.md.
#
# Environment: BENCH_CPUS, BENCH_KAFKA_PORT, BENCH_WAIT_LOAD (wait until the 1-minute load average
# is below this, e.g. 2.5; default: don't wait), BENCH_WAIT_MAX_S (give up waiting after this many
# seconds and run anyway; default 600), BENCH_SKIP_BUILD=1 (use the binary already built),
# BENCH_MACHINE_RUNS (default 5; 0 skips them).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=--quick
ARGS=()
MACHINE=(--machine-runs "${BENCH_MACHINE_RUNS:-5}")
for a in "$@"; do
    case $a in
    --quick | --full) MODE=$a ;;
    --peer) scripts/bench-peer.sh; exec scripts/bench-doc.sh ;;
    --sweep) scripts/bench-sweep.sh; exec scripts/bench-doc.sh ;;
    --all) scripts/bench-peer.sh; BENCH_SKIP_BUILD=1 scripts/bench-sweep.sh; BENCH_SKIP_BUILD=1 "$0" --quick; exit ;;
    --machine-runs | --machine-runs=*) MACHINE=(); ARGS+=("$a") ;;
    -h | --help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) ARGS+=("$a") ;;
    esac
done
say() { echo "bench: $*" >&2; }

PORT=${BENCH_KAFKA_PORT:-19192}
NCPU=$(nproc)
if command -v taskset >/dev/null 2>&1 && ((NCPU >= 2)); then
    SUT_CPUS=${BENCH_CPUS:-$((NCPU - 1))}
    BROKER_CPUS=${BENCH_BROKER_CPUS:-0-$((NCPU - 2))}
    PIN_SUT=(taskset -c "$SUT_CPUS")
    PIN_BROKER="taskset -c $BROKER_CPUS"
    LOAD=(--load-cpus "$BROKER_CPUS")
    PINNING="bridge and raw clients pinned to CPU $SUT_CPUS; the simulator's thread (load generator) and tansu to CPU $BROKER_CPUS; RabbitMQ and NATS unpinned"
else
    PIN_SUT=()
    LOAD=()
    PIN_BROKER=""
    PINNING="no pinning (taskset missing or a single CPU)"
fi

if [[ -z ${BENCH_SKIP_BUILD:-} ]]; then
    say "building fondo-bench (release)"
    cargo build --release -p fondo-bench >&2
fi
BIN=${CARGO_TARGET_DIR:-target}/release/fondo-bench

eval "$(KAFKA_PORT=$PORT scripts/brokers.sh up)"
export FONDO_BRIDGE_TEST_KAFKA="127.0.0.1:$PORT"
RESTART="scripts/kafka-broker.sh stop $PORT >/dev/null 2>&1; $PIN_BROKER scripts/kafka-broker.sh start $PORT >/dev/null"

if [[ -n ${BENCH_WAIT_LOAD:-} ]]; then
    deadline=$((SECONDS + ${BENCH_WAIT_MAX_S:-600}))
    while true; do
        load=$(cut -d' ' -f1 /proc/loadavg)
        if awk -v l="$load" -v m="$BENCH_WAIT_LOAD" 'BEGIN { exit !(l < m) }'; then
            break
        fi
        if ((SECONDS >= deadline)); then
            say "load $load still above $BENCH_WAIT_LOAD; running anyway"
            break
        fi
        say "load $load >= $BENCH_WAIT_LOAD; waiting"
        sleep 30
    done
fi

OTHERS=$(ps -eo pcpu=,comm= --sort=-pcpu | head -4 | awk '{printf "%s%s %s%%", (NR>1?", ":""), $2, $1}')
say "running $MODE ($PINNING)"
"${PIN_SUT[@]}" "$BIN" "$MODE" \
    --kafka "127.0.0.1:$PORT" \
    --kafka-restart-cmd "$RESTART" \
    --note "$PINNING; busiest processes at start: $OTHERS" \
    --out-md bench-results/ceiling.md \
    "${LOAD[@]}" "${MACHINE[@]}" "${ARGS[@]}"
scripts/kafka-broker.sh stop "$PORT" >/dev/null 2>&1 || true
scripts/bench-doc.sh
