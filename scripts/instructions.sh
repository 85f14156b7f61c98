#!/usr/bin/env bash
# Instructions per event, bridge core vs. raw client: an A/B measure that does not drift.
#
#   scripts/instructions.sh [--only kafka,nats,rabbitmq,file] [--scenarios raw,core,ws] [--small N]
#                           [--large N] [--bin PATH]
#
# Timings on a shared VM drift (the same binary's throughput varies by up to 1.7x within an hour),
# so two builds compared by msg/s need many alternating runs. valgrind's callgrind counts the
# instructions every thread executes instead: the same for the same binary and input whatever else
# the machine is doing. For each broker and scenario (raw client, bridge core; `ws` adds the
# WebSocket source with its spool in front of the core: the simulator's stream into the broker) this runs
# `fondo-bench --events N` under callgrind at two sizes and prints the marginal cost of one event,
# (total(large) - total(small)) / (large - small), less the bench's own payload generator (read off
# the profile), so start-up, connection set-up and the generator cancel out.
#
# Needs valgrind and the brokers of scripts/brokers.sh (Kafka: tansu on $BENCH_KAFKA_PORT, default
# 19192, started here when missing). Uses $CARGO_TARGET_DIR/release/fondo-bench (default target/;
# built when missing) or --bin.
# The runs are slow (about 50x) but short: a few minutes per broker.
set -euo pipefail
cd "$(dirname "$0")/.."

ONLY=kafka,nats
SCENARIOS=raw,core
SMALL=5000
LARGE=15000
BIN=${CARGO_TARGET_DIR:-target}/release/fondo-bench
while (($#)); do
    case $1 in
    --only) ONLY=$2; shift 2 ;;
    --scenarios) SCENARIOS=$2; shift 2 ;;
    --small) SMALL=$2; shift 2 ;;
    --large) LARGE=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "instructions: unknown argument $1" >&2; exit 2 ;;
    esac
done
command -v valgrind >/dev/null || { echo "instructions: valgrind is not installed" >&2; exit 1; }
if ((LARGE <= SMALL)); then
    echo "instructions: --large must be above --small" >&2
    exit 2
fi
if [[ ! -x $BIN ]]; then
    cargo build --release -p fondo-bench >&2
fi
PORT=${BENCH_KAFKA_PORT:-19192}
eval "$(KAFKA_PORT=$PORT scripts/brokers.sh up)"

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# Total instructions of one run, and those of the payload generator within it.
measure() { # broker scenario events -> "total generator"
    local f="$OUT/$1.$2.$3" log
    if ! log=$(valgrind --tool=callgrind --callgrind-out-file="$f" "$BIN" --quick --no-write \
        --only "$1" --scenarios "$2" --events "$3" --kafka "127.0.0.1:$PORT" 2>&1); then
        echo "instructions: $1 $2 --events $3 failed:" >&2
        echo "$log" | tail -20 >&2
        return 1
    fi
    if ! grep -q "verified Some(true)" <<<"$log"; then
        echo "instructions: $1 $2 --events $3 was not verified against the broker's count:" >&2
        echo "$log" | grep -E "msg/s|verified" >&2 || true
        return 1
    fi
    local total gen
    total=$(grep -oE "Collected : [0-9]+" <<<"$log" | tail -1 | grep -oE "[0-9]+")
    gen=$(callgrind_annotate --inclusive=yes "$f" 2>/dev/null |
        grep -E "fondo_bench::payload::pool \[" | head -1 | awk '{gsub(",", "", $1); print $1}')
    echo "$total ${gen:-0}"
}

printf "%-9s %-5s %14s %14s\n" broker path "instr/event" "bridge/raw"
IFS=, read -ra BROKERS <<<"$ONLY"
for b in "${BROKERS[@]}"; do
    raw_per=""
    IFS=, read -ra KINDS <<<"$SCENARIOS"
    for s in "${KINDS[@]}"; do
        [[ $b == file && $s == raw ]] && continue
        m1=$(measure "$b" "$s" "$SMALL") || exit 1
        m2=$(measure "$b" "$s" "$LARGE") || exit 1
        read -r t1 g1 <<<"$m1"
        read -r t2 g2 <<<"$m2"
        per=$(((t2 - t1 - (g2 - g1)) / (LARGE - SMALL)))
        ratio=""
        if [[ $s == raw ]]; then
            raw_per=$per
        elif [[ -n $raw_per ]]; then
            ratio=$(awk -v r="$raw_per" -v c="$per" 'BEGIN { printf "%.0f%%", 100 * r / c }')
        fi
        printf "%-9s %-5s %14d %14s\n" "$b" "$s" "$per" "$ratio"
    done
done
echo "(marginal instructions per event between --events $SMALL and $LARGE, all threads, payload generator subtracted;"
echo " bridge/raw = raw instructions / bridge instructions: the throughput ratio's bound when both are CPU-bound)"
