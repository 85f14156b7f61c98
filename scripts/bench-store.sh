#!/usr/bin/env bash
# What the shared identity store costs: webhook -> NATS JetStream with `dedupe.store: memory` and
# with `dedupe.store: redis`, alternating in one run, on the release binary.
#
#   scripts/bench-store.sh            # 3 pairs of 50 000 signed webhooks, 64 concurrent senders
#   EVENTS=20000 PAIRS=2 scripts/bench-store.sh
#
# Load: `fondo-bridge simulate webhooks` (Standard Webhooks, so every delivery has a delivery id
# and is looked up: one `SET NX GET` per event to identify it and one `SET` to mark it done, both
# pipelined with whatever else is queued on the connection). Each run
# has a new JetStream stream (memory storage). Per run: events/s over the load's wall time, the
# bridge's CPU seconds (user + system, /proc) per event, Redis's CPU seconds, the bridge's peak
# RSS, and the count the bridge published (checked against the events sent). Writes a Markdown
# table to stdout and bench-results/store.md.
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${EVENTS:-50000}
CONCURRENCY=${CONCURRENCY:-64}
PAIRS=${PAIRS:-3}
SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
say() { echo "bench-store: $*" >&2; }

if [[ -z ${BENCH_SKIP_BUILD:-} ]]; then
    say "building fondo-bridge (release)"
    cargo build --release --bin fondo-bridge >&2
fi
BIN=${CARGO_TARGET_DIR:-target}/release/fondo-bridge
eval "$(BROKERS_NO_KAFKA=1 scripts/brokers.sh up)"
REDIS_URL=$FONDO_BRIDGE_TEST_REDIS
REDIS_PORT=$(sed -E 's#.*:([0-9]+)/.*#\1#' <<<"$REDIS_URL")
REDIS_PID=$(pgrep -f "redis-server .*:$REDIS_PORT" | head -1 || true)
TICK=$(getconf CLK_TCK)
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() { # store index -> prints "store events_per_s cpu_us_per_event redis_cpu_us_per_event rss_mb published"
    local store=$1 i=$2 port admin dedupe
    port=$(free_port)
    admin=$(free_port)
    if [[ $store == redis ]]; then
        dedupe="{ store: redis, redis: { url: \"$REDIS_URL\", prefix: \"bench-$$-$i\" } }"
    else
        dedupe="{ store: memory }"
    fi
    cat >"$WORK/bridge-$i.yaml" <<EOF
sources:
  webhook:
    listen: 127.0.0.1:$port
    signature: { scheme: standard-webhooks }
sinks:
  nats:
    type: nats
    url: "$FONDO_BRIDGE_TEST_NATS"
    streams: [{ name: BENCHSTORE$$_$i, subjects: ["benchstore$$.$i.>"], storage: memory, max_age_ms: 300000 }]
routes:
  - { name: all, match: ["*"], to: [{ sink: nats, topic: "benchstore$$.$i.{entity}" }] }
dead_letter: { fallback_file: $WORK/dead-letter-$i.jsonl }
dedupe: $dedupe
admin: { listen: 127.0.0.1:$admin }
telemetry: { log_level: warn }
EOF
    FONDO_BRIDGE__SOURCES__WEBHOOK__SIGNATURE__SECRETS="[\"$SECRET\"]" \
        "$BIN" run --config "$WORK/bridge-$i.yaml" 2>"$WORK/bridge-$i.log" &
    local pid=$!
    for _ in $(seq 1 200); do
        curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
        sleep 0.05
    done
    local c0 r0 t0 t1 c1 r1 rss published
    c0=$(cpu_ticks "$pid")
    r0=$( [[ -n $REDIS_PID ]] && cpu_ticks "$REDIS_PID" || echo 0)
    t0=$(date +%s.%N)
    "$BIN" simulate webhooks --url "http://127.0.0.1:$port/fondo/webhooks/callback" \
        --secret "$SECRET" --events "$EVENTS" --concurrency "$CONCURRENCY" --seed "$i" \
        >"$WORK/sim-$i.log" 2>&1
    t1=$(date +%s.%N)
    c1=$(cpu_ticks "$pid")
    r1=$( [[ -n $REDIS_PID ]] && cpu_ticks "$REDIS_PID" || echo 0)
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    published=$(curl -fsS "http://127.0.0.1:$admin/metrics" |
        awk '/^fondo_bridge_published_total/ {s += $NF} END {print s + 0}')
    kill -TERM "$pid"
    wait "$pid" || true
    awk -v s="$store" -v n="$EVENTS" -v t0="$t0" -v t1="$t1" -v c="$((c1 - c0))" \
        -v r="$((r1 - r0))" -v tick="$TICK" -v rss="$rss" -v p="$published" \
        'BEGIN { printf "%s %.0f %.1f %.1f %.1f %d\n", s, n / (t1 - t0), c / tick / n * 1e6, r / tick / n * 1e6, rss / 1024, p }'
}

say "$PAIRS pairs of $EVENTS signed webhooks, $CONCURRENCY concurrent senders; Redis $REDIS_URL"
mkdir -p bench-results
RESULTS=()
i=0
for p in $(seq 1 "$PAIRS"); do
    for store in memory redis; do
        i=$((i + 1))
        line=$(run "$store" "$i")
        say "run $i: $line"
        RESULTS+=("$line")
        read -r _ _ _ _ _ published <<<"$line"
        if ((published != EVENTS)); then
            say "run $i published $published of $EVENTS"
            exit 1
        fi
    done
done

{
    echo "| run | store | events/s | bridge CPU µs/event | Redis CPU µs/event | bridge peak RSS MB | published |"
    echo "|---|---|---|---|---|---|---|"
    n=0
    for line in "${RESULTS[@]}"; do
        n=$((n + 1))
        read -r s eps cpu rcpu rss pub <<<"$line"
        echo "| $n | $s | $eps | $cpu | $rcpu | $rss | $pub |"
    done
    printf '%s\n' "${RESULTS[@]}" | awk '
        { eps[$1] += $2; cpu[$1] += $3; n[$1]++ }
        END {
            m = eps["memory"] / n["memory"]; r = eps["redis"] / n["redis"]
            printf "\nMean: memory %.0f events/s, %.1f µs CPU/event; redis %.0f events/s, %.1f µs CPU/event; the Redis store costs %.1f %% of webhook throughput.\n",
                m, cpu["memory"] / n["memory"], r, cpu["redis"] / n["redis"], (1 - r / m) * 100
        }'
} | tee bench-results/store.md
