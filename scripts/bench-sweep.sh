#!/usr/bin/env bash
# What the bridge costs at the rates Fondo really sends: the release binary at a fixed event rate,
# with the load generator in its own process, per path and per rate, plus idle (heartbeats only).
#
#   scripts/bench-sweep.sh                       # every path at 100, 1 000 and 10 000 events/s, and idle
#   RATES="100 1000" PATHS=ws-nats DURATION=20 scripts/bench-sweep.sh
#
# Paths (PATHS, comma-separated):
#   ws-nats       simulated WebSocket stream -> spool -> NATS JetStream (file storage, as production)
#   ws-nats-pwc   the same with `spool.publish_while_committing: true` (published while the append
#                 commits; see the README for what a crash can lose then)
#   ws-nats-nospool  the same without the spool (nothing is durable before it is published)
#   ws-nats-peer  the peer, mq-bridge 1.2.0 (scripts/peer.sh installs and runs it), on the same job:
#                 the same simulator (token in the query), a `switch` on eventType to one subject
#                 per type. It keeps nothing on disk and has no metrics, so fondo-probe consumes
#                 the subjects (in its own process) and checks the count at the end; its latency is
#                 send -> visible on the broker (`--stamp`), and events/s is the simulator's rate
#   ws-kafka      simulated WebSocket stream -> spool -> Kafka (tansu on loopback)
#   webhook-nats  Standard Webhooks POSTs (64 concurrent senders, paced) -> NATS JetStream
# Every run starts a new bridge process and a new simulator process. After WARMUP seconds (default
# 5) the script samples, over DURATION seconds (default 30), the bridge's user and system CPU time
# (/proc/PID/stat), the events it published (its /metrics), its resident memory at the end
# (VmRSS) and its peak (VmHWM). Latency is receive -> ack: p50 and p99 from the bridge's
# HdrHistogram quantiles over its rolling window (`fondo_bridge_receive_to_ack_quantile_seconds`;
# the window holds the warm-up and the start too), and the p99 over the sampled interval alone, from
# the differences of the bridge's Prometheus histogram buckets (an upper bound, the bucket's bound:
# at most 1.28x above the true value); for webhooks also the sender's own p50 and p99 of each
# request, from every request of the run. Idle (IDLE_S seconds, default 60): the WebSocket path with
# heartbeats every 5 s and no events.
#
# Writes a Markdown table to stdout and bench-results/sweep.md, and one JSON object per run to
# bench-results/sweep.json. Environment: RATES, PATHS, DURATION, WARMUP, IDLE_S (0 skips idle),
# PAYLOAD_BYTES (default 2048), BENCH_SKIP_BUILD=1, BENCH_KAFKA_PORT (default 19192), BRIDGE_EXTRA
# (YAML appended to every bridge config, e.g. 'delivery: { max_in_flight: 256 }'), SMAPS_DIR (keep
# each bridge's /proc/PID/smaps, status and /metrics at the end of its run there, to see where its
# RSS sits, scripts/rss-breakdown.py summarises the smaps, and what its latency is made of),
# PROFILE_DIR (perf stat per thread and perf record call graphs of each bridge over its window).
set -euo pipefail
cd "$(dirname "$0")/.."

RATES=${RATES:-100 1000 10000}
PATHS=${PATHS:-ws-nats,ws-nats-pwc,ws-nats-nospool,ws-nats-peer,ws-kafka,webhook-nats}
DURATION=${DURATION:-30}
WARMUP=${WARMUP:-5}
IDLE_S=${IDLE_S:-60}
PAYLOAD_BYTES=${PAYLOAD_BYTES:-2048}
KAFKA_PORT=${BENCH_KAFKA_PORT:-19192}
SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
CLIENT=49ad7378-121c-4a53-9894-dfd14a7b4877
say() { echo "bench-sweep: $*" >&2; }

if [[ -z ${BENCH_SKIP_BUILD:-} ]]; then
    say "building fondo-bridge (release)"
    cargo build --release --bin fondo-bridge --bin fondo-probe -p fondo-bridge -p fondo-bench >&2
fi
BIN=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/fondo-bridge
PROBE=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/fondo-probe
if [[ ,$PATHS, == *,ws-kafka,* ]]; then
    eval "$(KAFKA_PORT=$KAFKA_PORT scripts/brokers.sh up)"
    export FONDO_BRIDGE_TEST_KAFKA="127.0.0.1:$KAFKA_PORT"
else
    eval "$(BROKERS_NO_KAFKA=1 scripts/brokers.sh up)"
fi
if [[ ,$PATHS, == *,ws-nats-peer,* ]]; then
    PEER_DIR=$(scripts/peer.sh install)
fi
TICK=$(getconf CLK_TCK)
WORK=$(mktemp -d)
BRIDGE_PID=""
SIM_PID=""
PROBE_PID=""
stop_run() {
    [[ -n $SIM_PID ]] && kill "$SIM_PID" 2>/dev/null && wait "$SIM_PID" 2>/dev/null
    [[ -n $BRIDGE_PID ]] && kill -TERM "$BRIDGE_PID" 2>/dev/null && wait "$BRIDGE_PID" 2>/dev/null
    [[ -n $PROBE_PID ]] && kill "$PROBE_PID" 2>/dev/null && wait "$PROBE_PID" 2>/dev/null
    SIM_PID=""
    BRIDGE_PID=""
    PROBE_PID=""
    return 0
}
trap 'stop_run; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# "utime stime" in clock ticks.
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
metric_sum() { # metrics-text name -> the sum of that metric's samples
    awk -v n="$2" '$1 == n || index($1, n "{") == 1 {s += $NF} END {print s + 0}' <<<"$1"
}
quantile() { # metrics-text source quantile -> milliseconds, or "n/a"
    awk -v s="$2" -v q="$3" '
        index($1, "fondo_bridge_receive_to_ack_quantile_seconds{") == 1 &&
        index($1, "source=\"" s "\"") && index($1, "quantile=\"" q "\"") { v = $NF * 1000; found = 1 }
        END { if (found) printf "%.2f", v; else print "n/a" }' <<<"$1"
}

# metrics-before metrics-after source quantile -> milliseconds, or "n/a": the quantile of
# receive -> ack over the sampled interval alone, from the differences of the Prometheus histogram's
# buckets (an upper bound: the bucket's bound, at most 1.28x the true value). The exact quantiles
# above cover the bridge's last 45-60 s, which hold its start when a run is shorter than that.
interval_quantile() {
    awk -v s="$3" -v q="$4" '
        index($1, "fondo_bridge_receive_to_ack_seconds_bucket{") == 1 && index($1, "source=\"" s "\"") {
            match($1, /le="[^"]*"/)
            le = substr($1, RSTART + 4, RLENGTH - 5)
            if (FNR == NR) before[le] = $NF
            else { after[le] = $NF; order[++n] = le }
        }
        END {
            total = after["+Inf"] - before["+Inf"]
            if (total <= 0) { print "n/a"; exit }
            for (i = 1; i <= n; i++) {
                le = order[i]
                if (after[le] - before[le] >= q * total) {
                    if (le == "+Inf") print "inf"; else printf "%.2f", le * 1000
                    exit
                }
            }
        }' <(printf '%s\n' "$1") <(printf '%s\n' "$2")
}

config() { # path index sim_port webhook_port admin_port -> writes the config
    local path=$1 i=$2 sim=$3 hook=$4 admin=$5 source sink topic
    case $path in
    ws-*)
        source="  websocket:
    url: ws://127.0.0.1:$sim
    client_ids: [$CLIENT]
    token: sim-token"
        ;;
    webhook-*)
        source="  webhook:
    listen: 127.0.0.1:$hook
    signature: { scheme: standard-webhooks }"
        ;;
    esac
    local spool="spool: { dir: $WORK/spool-$i }"
    [[ $path == *-pwc ]] && spool="spool: { dir: $WORK/spool-$i, publish_while_committing: true }"
    [[ $path == *-nospool ]] && spool=""
    case $path in
    *-nats | *-nats-pwc | *-nats-nospool)
        sink="  broker: { type: nats, url: \"$FONDO_BRIDGE_TEST_NATS\", streams: [{ name: SWEEP$$_$i, subjects: [\"sweep$$.$i.>\"], max_age_ms: 600000 }] }"
        topic="sweep$$.$i.{entity}"
        ;;
    *-kafka)
        sink="  broker: { type: kafka, brokers: \"$FONDO_BRIDGE_TEST_KAFKA\" }"
        topic="sweep$$-$i.{event_type}"
        ;;
    esac
    cat >"$WORK/bridge-$i.yaml" <<EOF
sources:
$source
sinks:
$sink
routes:
  - { name: all, match: ["*"], to: [{ sink: broker, topic: "$topic" }] }
dead_letter: { fallback_file: $WORK/dead-letter-$i.jsonl }
$spool
admin: { listen: 127.0.0.1:$admin }
telemetry: { log_level: warn }
${BRIDGE_EXTRA:-}
EOF
}

# index broker -> waits up to 30 s for run <index>'s fondo-probe to have prepared the broker.
probe_ready() {
    for _ in $(seq 1 600); do
        [[ -f $WORK/probe-$1.ready ]] && return 0
        sleep 0.05
    done
    say "fondo-probe did not prepare $2"
    cat "$WORK/probe-$1.log" >&2
    return 1
}

# rate index -> one JSON object on stdout: mq-bridge's WebSocket -> NATS route at a fixed rate.
run_peer() {
    local rate=$1 i=$2 sim prefix="sweeppeer$$x$i" stream="SWEEPPEER$$X$i" n
    sim=$(free_port)
    n=$((rate * (WARMUP + DURATION + 2)))
    "$PROBE" watch --broker nats --url "$FONDO_BRIDGE_TEST_NATS" --prefix "$prefix" --stream "$stream" \
        --expect "$n" --idle-ms 15000 --timeout-s $((WARMUP + DURATION + 120)) \
        --ready-file "$WORK/probe-$i.ready" >"$WORK/probe-$i.json" 2>"$WORK/probe-$i.log" &
    PROBE_PID=$!
    probe_ready "$i" NATS || return 1
    # shellcheck disable=SC2046 # one argument per event type
    scripts/peer.sh route ws nats "$FONDO_BRIDGE_TEST_NATS" 0 "$sim" "$prefix" "$stream" - "$CLIENT" \
        peer-token $("$PROBE" event-types) >"$WORK/peer-$i.yaml"
    PEER_DIR=$PEER_DIR scripts/peer.sh run "$WORK/peer-$i.yaml" ws warn >"$WORK/bridge-$i.log" 2>&1 &
    BRIDGE_PID=$!
    sleep 1
    "$BIN" simulate stream --listen "127.0.0.1:$sim" --token peer-token --query-token --rate "$rate" \
        --count "$n" --stamp --payload-bytes "$PAYLOAD_BYTES" --heartbeat-ms 5000 --client-id "$CLIENT" \
        --seed "$i" >"$WORK/sim-$i.log" 2>&1 &
    SIM_PID=$!
    sleep "$WARMUP"
    local c0 c1 t0 t1 rss hwm
    c0=$(cpu_ticks "$BRIDGE_PID")
    t0=$(date +%s.%N)
    sleep "$DURATION"
    c1=$(cpu_ticks "$BRIDGE_PID")
    t1=$(date +%s.%N)
    rss=$(status_kb "$BRIDGE_PID" VmRSS)
    hwm=$(status_kb "$BRIDGE_PID" VmHWM)
    wait "$PROBE_PID" || true
    PROBE_PID=""
    stop_run
    read -r u0 s0 <<<"$c0"
    read -r u1 s1 <<<"$c1"
    python3 - "$rate" "$t0" "$t1" "$((u1 - u0))" "$((s1 - s0))" "$TICK" "$rss" "$hwm" "$n" "$WORK/probe-$i.json" <<'PY'
import json, sys
rate, t0, t1, u, s, tick, rss, hwm, n, probe_file = sys.argv[1:11]
rate, n, t = int(rate), int(n), float(t1) - float(t0)
try:
    probe = json.loads(open(probe_file).read().strip().splitlines()[-1])
except Exception:
    probe = {}
cpu = (int(u) + int(s)) / float(tick)
ev = rate * t
on = probe.get("on_broker")
print(json.dumps({"path": "ws-nats-peer", "rate": rate, "seconds": round(t, 1), "events": round(ev),
    "events_per_s": float(rate), "core_percent": cpu / t * 100, "user_percent": int(u) / float(tick) / t * 100,
    "system_percent": int(s) / float(tick) / t * 100, "cpu_us_per_event": cpu / ev * 1e6 if ev else None,
    "p50_ms": "%.2f" % probe["latency_p50_ms"] if "latency_p50_ms" in probe else "n/a",
    "p99_ms": "%.2f" % probe["latency_p99_ms"] if "latency_p99_ms" in probe else "n/a",
    "p99_interval_ms": "-", "sender_latency": "", "rss_mib": int(rss) / 1024, "peak_rss_mib": int(hwm) / 1024,
    "on_broker": on, "sent": n, "verified": on == n}))
PY
}

# path rate index -> one JSON object on stdout. rate 0 = idle (heartbeats only).
run() {
    [[ $1 == ws-nats-peer ]] && { run_peer "$2" "$3"; return; }
    local path=$1 rate=$2 i=$3 sim hook admin window=$DURATION
    sim=$(free_port)
    hook=$(free_port)
    admin=$(free_port)
    ((rate == 0)) && window=$IDLE_S
    config "$path" "$i" "$sim" "$hook" "$admin"
    if [[ $path == *-kafka ]]; then
        # tansu creates no topics on its own: fondo-probe makes one per event type (and reads
        # them, in its own process) until the run ends.
        "$PROBE" watch --broker kafka --url "$FONDO_BRIDGE_TEST_KAFKA" --prefix "sweep$$-$i" \
            --expect 1000000000 --idle-ms 3600000 --ready-file "$WORK/probe-$i.ready" \
            >"$WORK/probe-$i.log" 2>&1 &
        PROBE_PID=$!
        probe_ready "$i" Kafka || return 1
    fi
    if [[ $path == ws-* ]]; then
        local count=()
        ((rate == 0)) && count=(--count 0)
        "$BIN" simulate stream --listen "127.0.0.1:$sim" --rate "$rate" "${count[@]}" \
            --payload-bytes "$PAYLOAD_BYTES" --heartbeat-ms 5000 --client-id "$CLIENT" --seed "$i" \
            >"$WORK/sim-$i.log" 2>&1 &
        SIM_PID=$!
    fi
    local secrets=()
    [[ $path == webhook-* ]] && secrets=("FONDO_BRIDGE__SOURCES__WEBHOOK__SIGNATURE__SECRETS=[\"$SECRET\"]")
    env "${secrets[@]}" "$BIN" run --config "$WORK/bridge-$i.yaml" 2>"$WORK/bridge-$i.log" &
    BRIDGE_PID=$!
    local ready=""
    for _ in $(seq 1 400); do
        if curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1; then
            ready=1
            break
        fi
        sleep 0.05
    done
    if [[ -z $ready ]]; then
        say "run $i ($path at $rate/s): the bridge never became ready; its log:"
        cat "$WORK/bridge-$i.log" >&2
        stop_run
        return 1
    fi
    if [[ $path == webhook-* ]]; then
        "$BIN" simulate webhooks --url "http://127.0.0.1:$hook/fondo/webhooks/callback" \
            --secret "$SECRET" --events $((rate * (WARMUP + window + 2))) --rate "$rate" \
            --concurrency 64 --payload-bytes "$PAYLOAD_BYTES" --seed "$i" >"$WORK/sim-$i.log" 2>&1 &
        SIM_PID=$!
    fi
    sleep "$WARMUP"
    local m0 m1 c0 c1 t0 t1
    m0=$(curl -fsS "http://127.0.0.1:$admin/metrics")
    c0=$(cpu_ticks "$BRIDGE_PID")
    t0=$(date +%s.%N)
    if [[ -n ${PROFILE_DIR:-} ]]; then
        # Where the CPU goes, per thread (perf stat), and a sampled call graph (perf record). Both
        # add some cost of their own to the bridge: compare figures from runs without them.
        mkdir -p "$PROFILE_DIR"
        perf stat --per-thread -e task-clock,context-switches,cpu-migrations -p "$BRIDGE_PID" \
            -o "$PROFILE_DIR/stat-$path-$rate.txt" -- sleep "$window" &
        local stat_pid=$!
        perf record -q -F 997 -g -p "$BRIDGE_PID" -o "$PROFILE_DIR/perf-$path-$rate.data" \
            -- sleep "$window" >/dev/null 2>&1 || true
        wait "$stat_pid" || true
    else
        sleep "$window"
    fi
    m1=$(curl -fsS "http://127.0.0.1:$admin/metrics")
    c1=$(cpu_ticks "$BRIDGE_PID")
    t1=$(date +%s.%N)
    local rss hwm p0 p1 src p50 p99 sender=""
    rss=$(status_kb "$BRIDGE_PID" VmRSS)
    hwm=$(status_kb "$BRIDGE_PID" VmHWM)
    if [[ -n ${SMAPS_DIR:-} ]]; then
        mkdir -p "$SMAPS_DIR"
        cat "/proc/$BRIDGE_PID/smaps" >"$SMAPS_DIR/smaps-$path-$rate.txt"
        cat "/proc/$BRIDGE_PID/status" >"$SMAPS_DIR/status-$path-$rate.txt"
        printf '%s\n' "$m1" >"$SMAPS_DIR/metrics-$path-$rate.txt"
    fi
    p0=$(metric_sum "$m0" fondo_bridge_published_total)
    p1=$(metric_sum "$m1" fondo_bridge_published_total)
    src=websocket
    [[ $path == webhook-* ]] && src=webhook
    p50=$(quantile "$m1" "$src" 0.5)
    p99=$(quantile "$m1" "$src" 0.99)
    local p99i
    p99i=$(interval_quantile "$m0" "$m1" "$src" 0.99)
    if [[ $path == webhook-* ]]; then
        wait "$SIM_PID" || true
        SIM_PID=""
        sender=$(grep -o 'latency p50 [0-9.]* ms p99 [0-9.]* ms' "$WORK/sim-$i.log" | tail -1 || true)
    fi
    stop_run
    read -r u0 s0 <<<"$c0"
    read -r u1 s1 <<<"$c1"
    awk -v path="$path" -v rate="$rate" -v t="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" \
        -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v tick="$TICK" -v ev=$((p1 - p0)) \
        -v rss="$rss" -v hwm="$hwm" -v p50="$p50" -v p99="$p99" -v p99i="$p99i" -v sender="$sender" 'BEGIN {
            cpu = (u + s) / tick
            printf "{\"path\":\"%s\",\"rate\":%d,\"seconds\":%.1f,\"events\":%d,\"events_per_s\":%.1f,", path, rate, t, ev, ev / t
            printf "\"core_percent\":%.2f,\"user_percent\":%.2f,\"system_percent\":%.2f,", cpu / t * 100, u / tick / t * 100, s / tick / t * 100
            printf "\"cpu_us_per_event\":%s,", (ev > 0 ? sprintf("%.1f", cpu / ev * 1e6) : "null")
            printf "\"p50_ms\":\"%s\",\"p99_ms\":\"%s\",\"p99_interval_ms\":\"%s\",\"sender_latency\":\"%s\",\"rss_mib\":%.1f,\"peak_rss_mib\":%.1f}\n", p50, p99, p99i, sender, rss / 1024, hwm / 1024
        }'
}

mkdir -p bench-results
: >"$WORK/results.jsonl"
i=0
IFS=, read -r -a PATH_LIST <<<"$PATHS"
for path in "${PATH_LIST[@]}"; do
    rates=($RATES)
    [[ $path == ws-nats && $IDLE_S != 0 ]] && rates=(0 "${rates[@]}")
    for rate in "${rates[@]}"; do
        i=$((i + 1))
        say "run $i: $path at $rate events/s"
        line=$(run "$path" "$rate" "$i")
        say "  $line"
        echo "$line" >>"$WORK/results.jsonl"
    done
done
cp "$WORK/results.jsonl" bench-results/sweep.json

{
    echo "| path | rate (events/s) | measured events/s | % of a core (user + system) | CPU µs/event | receive→ack p50 / p99 (ms) | p99 over the sampled interval (ms, ≤) | webhook sender p50 / p99 | RSS / peak (MiB) |"
    echo "|---|---:|---:|---|---:|---|---|---|---|"
    python3 - "$WORK/results.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    rate = "idle" if r["rate"] == 0 else f'{r["rate"]:,}'.replace(",", " ")
    cpu = "" if r["cpu_us_per_event"] is None else f'{r["cpu_us_per_event"]:.1f}'
    sender = r["sender_latency"].replace("latency ", "") or "-"
    if "verified" in r:
        # The peer: latency is the probe's send -> visible on the broker, and the count is checked.
        sender = "on broker %s of %s%s" % (r["on_broker"], r["sent"], "" if r["verified"] else " **MISSING**")
    print(f'| {r["path"]} | {rate} | {r["events_per_s"]:.0f} | {r["core_percent"]:.2f} % ({r["user_percent"]:.2f} + {r["system_percent"]:.2f}) '
          f'| {cpu} | {r["p50_ms"]} / {r["p99_ms"]} | {r.get("p99_interval_ms", "-")} | {sender} | {r["rss_mib"]:.1f} / {r["peak_rss_mib"]:.1f} |')
EOF
} | tee bench-results/sweep.md
