#!/usr/bin/env bash
# Starts, stops or kills a private RabbitMQ node for tests (broker restart tests must never touch the
# machine's shared node). Everything the node writes lives under one base directory.
#
#   scripts/rabbitmq-node.sh start NAME PORT [DIST_PORT]   # waits until the node answers, prints the AMQP URL
#   scripts/rabbitmq-node.sh stop  NAME                    # graceful stop (rabbitmqctl stop), data kept
#   scripts/rabbitmq-node.sh kill  NAME                    # SIGKILL the node's VM, data kept
#   scripts/rabbitmq-node.sh wipe  NAME                    # kill and delete the base directory
#
# NAME is the short node name (the node is NAME@localhost); PORT the AMQP port on 127.0.0.1;
# DIST_PORT the Erlang distribution port (default PORT+1). The base directory is
# ${FONDO_RABBITMQ_BASE:-${TMPDIR:-/tmp}/fondo-rabbitmq}/NAME. The Debian package's own
# /etc/rabbitmq files are bypassed, so the node never competes with the shared one on 5672.
set -euo pipefail

cmd=${1:-}
name=${2:-}
if [[ -z "$cmd" || -z "$name" ]]; then
    sed -n '2,12p' "$0" >&2
    exit 2
fi
if [[ ! "$name" =~ ^[A-Za-z0-9_-]+$ ]]; then
    echo "node name must use letters, digits, '-' and '_': $name" >&2
    exit 2
fi

sbin=/usr/lib/rabbitmq/bin
[[ -x "$sbin/rabbitmq-server" ]] || sbin=$(dirname "$(command -v rabbitmq-server || echo /usr/sbin/rabbitmq-server)")
if [[ ! -x "$sbin/rabbitmq-server" ]]; then
    echo "rabbitmq-server not found (Debian: apt-get install rabbitmq-server)" >&2
    exit 3
fi

base=${FONDO_RABBITMQ_BASE:-${TMPDIR:-/tmp}/fondo-rabbitmq}/$name
node="$name@localhost"

env_for_node() {
    export HOME="$base" # the Erlang cookie lives here, shared by the server and rabbitmqctl
    export RABBITMQ_NODENAME="$node"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_MNESIA_BASE="$base/mnesia"
    export RABBITMQ_LOG_BASE="$base/log"
    export RABBITMQ_PID_FILE="$base/node.pid"
    export RABBITMQ_CONF_ENV_FILE="$base/rabbitmq-env.conf"
    export RABBITMQ_CONFIG_FILE="$base/rabbitmq"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$base/advanced.config"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins"
    export RABBITMQ_ENABLED_PLUGINS=""
    export ERL_EPMD_ADDRESS=127.0.0.1
}

ctl() { "$sbin/rabbitmqctl" -n "$node" "$@"; }
diag() { "$sbin/rabbitmq-diagnostics" -n "$node" "$@"; }

# The pid of this node's Erlang VM, only if that process really is it (a stale pid file must never
# make us signal an unrelated process).
vm_pid() {
    local pid
    pid=$(cat "$base/node.pid" 2>/dev/null || true)
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    if { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -q "beam.*$base"; then
        echo "$pid"
    fi
}

# Waits (up to 30 s) until the node's VM has exited, so a following start cannot race it.
wait_gone() {
    local pid=${1:-}
    [[ -n "$pid" ]] || return 0
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "RabbitMQ node $node (pid $pid) is still running" >&2
    return 1
}

case "$cmd" in
start)
    port=${3:?AMQP port required}
    dist=${4:-$((port + 1))}
    mkdir -p "$base/mnesia" "$base/log"
    chmod 700 "$base"
    env_for_node
    pid=$(vm_pid)
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        echo "RabbitMQ node $node is already running (pid $pid)" >&2
        exit 1
    fi
    export RABBITMQ_NODE_PORT="$port"
    export RABBITMQ_DIST_PORT="$dist"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    : >"$base/rabbitmq-env.conf"
    printf 'listeners.tcp.default = 127.0.0.1:%s\nloopback_users = none\n' "$port" >"$base/rabbitmq.conf"
    echo '[].' >"$base/advanced.config"
    echo '[].' >"$base/enabled_plugins"
    "$sbin/rabbitmq-server" -detached >>"$base/log/startup.log" 2>&1
    for _ in $(seq 1 120); do
        if diag -q ping >/dev/null 2>&1 && diag -q check_port_connectivity >/dev/null 2>&1; then
            echo "amqp://guest:guest@127.0.0.1:$port/%2f"
            exit 0
        fi
        sleep 0.5
    done
    echo "RabbitMQ node $node did not come up on port $port within 60 s; see $base/log" >&2
    exit 1
    ;;
stop)
    env_for_node
    pid=$(vm_pid)
    ctl stop >/dev/null 2>&1 || true
    wait_gone "$pid"
    ;;
kill)
    env_for_node
    pid=$(vm_pid)
    if [[ -n "$pid" ]]; then
        kill -9 "$pid" 2>/dev/null || true
    fi
    wait_gone "$pid"
    ;;
wipe)
    env_for_node
    pid=$(vm_pid)
    if [[ -n "$pid" ]]; then
        kill -9 "$pid" 2>/dev/null || true
    fi
    wait_gone "$pid" || true
    rm -rf "$base"
    ;;
*)
    echo "unknown command: $cmd (start|stop|kill|wipe)" >&2
    exit 2
    ;;
esac
