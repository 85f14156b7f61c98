#!/usr/bin/env bash
# A Kafka-protocol broker for the tests: tansu 0.6.0 (Apache-2.0, written in Rust), memory storage,
# listening on 127.0.0.1 only.
#
#   scripts/kafka-broker.sh install          install tansu unless it is on PATH (or in ~/.cargo/bin)
#   scripts/kafka-broker.sh start [PORT]     start it on 127.0.0.1:PORT (default 19092) in the
#                                            background, wait until it accepts connections, print
#                                            its PID on stdout (everything else goes to stderr)
#   scripts/kafka-broker.sh stop [PORT|all]  stop the broker this script started on PORT (default
#                                            19092), or with `all` every broker it started
#   scripts/kafka-broker.sh status [PORT]    exit 0 when it runs (and print its PID)
#
# Then: FONDO_BRIDGE_TEST_KAFKA=127.0.0.1:PORT cargo test --test sink_kafka
#
# Environment: TANSU (the binary to use), FONDO_BRIDGE_RUN_DIR (where PID and log files go; default
# ${TMPDIR:-/tmp}/fondo-bridge-brokers), KAFKA_BROKER_START_TIMEOUT (seconds, default 30).
# Memory storage keeps everything in RAM and loses it on stop: topics must be created again.
set -euo pipefail

TANSU_VERSION=0.6.0
DEFAULT_PORT=19092
RUN_DIR=${FONDO_BRIDGE_RUN_DIR:-${TMPDIR:-/tmp}/fondo-bridge-brokers}
START_TIMEOUT=${KAFKA_BROKER_START_TIMEOUT:-30}

say() { echo "kafka-broker: $*" >&2; }
die() { say "$*"; exit 1; }

usage() {
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

tansu_bin() {
    if [[ -n ${TANSU:-} ]]; then
        echo "$TANSU"
    elif command -v tansu >/dev/null 2>&1; then
        command -v tansu
    elif [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/tansu ]]; then
        echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
    else
        return 1
    fi
}

install() {
    if bin=$(tansu_bin); then
        say "tansu found at $bin"
        return 0
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo is needed to install tansu (https://rustup.rs)"
    say "installing tansu $TANSU_VERSION with cargo (about 15 minutes on 2 cores, once)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore >&2
    tansu_bin >/dev/null || die "tansu installed but not found; add ${CARGO_HOME:-$HOME/.cargo}/bin to PATH"
}

check_port() {
    [[ $1 =~ ^[0-9]+$ ]] && (($1 > 0 && $1 < 65536)) || die "not a port: $1"
}

pid_file() { echo "$RUN_DIR/tansu-$1.pid"; }
log_file() { echo "$RUN_DIR/tansu-$1.log"; }

# The PID recorded for PORT when that process still runs.
running_pid() {
    local f pid
    f=$(pid_file "$1")
    [[ -f $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
    local port=${1:-$DEFAULT_PORT} pid bin log deadline
    check_port "$port"
    mkdir -p "$RUN_DIR"
    if pid=$(running_pid "$port"); then
        say "already running on 127.0.0.1:$port (pid $pid)"
        echo "$pid"
        return 0
    fi
    if accepts "$port"; then
        die "127.0.0.1:$port is already taken by another process"
    fi
    install
    bin=$(tansu_bin)
    log=$(log_file "$port")
    # setsid: the broker outlives this script and the caller's terminal; its own process group, so
    # stop can signal exactly it.
    setsid "$bin" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://tansu/ \
        >"$log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$(pid_file "$port")"
    deadline=$((SECONDS + START_TIMEOUT))
    until accepts "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$(pid_file "$port")"
            say "tansu exited during start; its log ($log) ends with:"
            tail -n 20 "$log" >&2 || true
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            stop_port "$port"
            die "tansu did not accept connections on 127.0.0.1:$port within ${START_TIMEOUT}s (log: $log)"
        fi
        sleep 0.2
    done
    say "tansu $TANSU_VERSION listening on 127.0.0.1:$port (pid $pid, log $log)"
    echo "$pid"
}

stop_port() {
    local port=$1 pid i
    if ! pid=$(running_pid "$port"); then
        rm -f "$(pid_file "$port")"
        say "nothing of ours runs on port $port"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "pid $pid ignored SIGTERM for 5s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$(pid_file "$port")"
    say "stopped tansu on port $port (pid $pid)"
}

stop() {
    local f port
    if [[ ${1:-} != all ]]; then
        local port=${1:-$DEFAULT_PORT}
        check_port "$port"
        stop_port "$port"
        return
    fi
    shopt -s nullglob
    for f in "$RUN_DIR"/tansu-*.pid; do
        port=${f##*/tansu-}
        port=${port%.pid}
        stop_port "$port"
    done
}

status() {
    local port=${1:-$DEFAULT_PORT} pid
    check_port "$port"
    if pid=$(running_pid "$port"); then
        echo "$pid"
    else
        say "not running on port $port"
        return 1
    fi
}

case ${1:-} in
    install) install ;;
    start) start "${2:-}" ;;
    stop) stop "${2:-}" ;;
    status) status "${2:-}" ;;
    *) usage ;;
esac
