#!/usr/bin/env bash
# Instructions per webhook request, webhook -> NATS JetStream, counted by callgrind: a figure that
# does not move with the machine's load, for comparing two builds of the bridge.
#
#   scripts/profile-webhook.sh [BINARY ...]     # default: target/release/fondo-bridge
#   REQUESTS=4000 scripts/profile-webhook.sh /path/to/old/fondo-bridge target/release/fondo-bridge
#
# Per binary: the bridge runs under `valgrind --tool=callgrind` with an unsigned webhook source and
# one catch-all route to NATS (the machine's, FONDO_BRIDGE_TEST_NATS or 127.0.0.1:4222); the first
# binary's `simulate webhooks` sends REQUESTS deliveries (default 4000) from 16 concurrent senders,
# the same seed every time; then the bridge gets SIGTERM and exits. Reports the total instructions
# of the process (start-up and shutdown included) and that total divided by the requests, and keeps
# each callgrind.out in $OUT (default bench-results/profile) for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-4000}
OUT=${OUT:-bench-results/profile}
NATS=${FONDO_BRIDGE_TEST_NATS:-nats://127.0.0.1:4222}
say() { echo "profile-webhook: $*" >&2; }
command -v valgrind >/dev/null || { say "valgrind is not installed (apt-get install valgrind)"; exit 1; }
BINS=("$@")
((${#BINS[@]})) || BINS=(target/release/fondo-bridge)
SENDER=${BINS[0]}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

printf '| binary | requests | acknowledged | instructions | per request |\n|---|---|---|---|---|\n'
n=0
for bin in "${BINS[@]}"; do
    n=$((n + 1))
    port=$(free_port)
    admin=$(free_port)
    cat >"$WORK/bridge-$n.yaml" <<YAML
sources:
  webhook: { listen: 127.0.0.1:$port, signature: { scheme: none, insecure: true } }
sinks:
  out: { type: nats, url: "$NATS", streams: [{ name: PROF$$_$n, subjects: ["prof$$.$n.>"], max_age_ms: 600000 }] }
routes:
  - { name: all, match: ["*"], to: [{ sink: out, topic: "prof$$.$n.{entity}" }] }
dead_letter: { fallback_file: $WORK/dead-letter-$n.jsonl }
admin: { listen: 127.0.0.1:$admin }
telemetry: { log_level: warn }
YAML
    valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.$n" \
        "$bin" run --config "$WORK/bridge-$n.yaml" >"$WORK/bridge-$n.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do
        curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    "$SENDER" simulate webhooks --url "http://127.0.0.1:$port/fondo/webhooks/callback" \
        --scheme none --events "$REQUESTS" --concurrency 16 --seed 1 --max-attempts 1 \
        --timeout-ms 60000 >"$WORK/sim-$n.log" 2>&1 || true
    kill -TERM "$pid"
    wait "$pid" || true
    acked=$(grep -oE 'acknowledged [0-9]+' "$WORK/sim-$n.log" | tail -1 | grep -oE '[0-9]+' || echo 0)
    total=$(grep -E '^(summary|totals):' "$OUT/callgrind.out.$n" | tail -1 | awk '{print $2}')
    per=$(awk -v t="$total" -v r="$REQUESTS" 'BEGIN { printf "%.0f", t / r }')
    printf '| %s | %s | %s | %s | %s |\n' "$bin" "$REQUESTS" "$acked" "$total" "$per"
    ((acked == REQUESTS)) || say "$bin: only $acked of $REQUESTS acknowledged (see $WORK/bridge-$n.log)"
done
