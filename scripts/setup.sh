#!/usr/bin/env bash
# Sets a fresh Debian/Ubuntu machine up for fondo-bridge's tests and demo: the brokers the tests run
# against (RabbitMQ, NATS with JetStream, Redis, and tansu as the Kafka-protocol broker), the AsyncAPI
# validator's node packages, and the release build.
# Idempotent: what is already there is skipped. Run as root or with sudo available.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "setup: $*" >&2; }
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"

need_apt=()
command -v rabbitmq-server >/dev/null 2>&1 || need_apt+=(rabbitmq-server)
command -v nats-server >/dev/null 2>&1 || [[ -x /usr/sbin/nats-server ]] || need_apt+=(nats-server)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)   # the shared identity store's tests
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)   # tests/top.rs runs `fondo-bridge top` in a terminal
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || need_apt+=(libssl-dev)   # rdkafka's SSL/SASL
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)   # the AsyncAPI parser of tests/asyncapi.rs
if ((${#need_apt[@]})); then
    say "installing ${need_apt[*]} from Debian's packages"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

scripts/kafka-broker.sh install
say "installing the AsyncAPI validator's node packages (tests/asyncapi/)"
npm ci --prefix tests/asyncapi --ignore-scripts --no-audit --no-fund --loglevel=error
command -v cargo-fuzz >/dev/null 2>&1 || { say "installing cargo-fuzz (scripts/fuzz.sh)"; cargo install cargo-fuzz --locked; }
say "building fondo-bridge (release)"
cargo build --release
say "done: 'cargo run --release -- demo' runs the demo, 'scripts/test.sh' runs the tests"
