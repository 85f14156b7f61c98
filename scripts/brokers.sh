#!/usr/bin/env bash
# Makes sure the brokers the tests need are running on 127.0.0.1 and prints the FONDO_BRIDGE_TEST_*
# variables for them (eval "$(scripts/brokers.sh up)"):
#   RabbitMQ on 5672 (guest/guest), NATS with JetStream on 4222, tansu (Kafka protocol) on $KAFKA_PORT,
#   Redis on 6379 (or, when nothing answers there, a redis-server started on $REDIS_PORT, keeping
#   nothing on disk).
# `scripts/brokers.sh down` stops the tansu broker this script started (the others are the machine's).
# BROKERS_NO_KAFKA=1 leaves tansu out (for jobs that need no Kafka).
set -euo pipefail
cd "$(dirname "$0")/.."
KAFKA_PORT=${KAFKA_PORT:-19092}
REDIS_PORT=${REDIS_PORT:-16379}
say() { echo "brokers: $*" >&2; }
accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 name=$2 i
    for i in $(seq 1 120); do
        accepts "$port" && return 0
        sleep 0.5
    done
    say "$name did not come up on 127.0.0.1:$port"
    return 1
}

up() {
    if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
        say "starting RabbitMQ"
        rabbitmq-server -detached >&2 || true
        for _ in $(seq 1 120); do
            rabbitmq-diagnostics -q ping >/dev/null 2>&1 && break
            sleep 1
        done
    fi
    wait_port 5672 RabbitMQ
    if ! accepts 4222; then
        say "starting NATS with JetStream"
        mkdir -p /var/lib/nats-server
        start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
            -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log >&2
    fi
    wait_port 4222 NATS
    local redis=6379
    if ! redis-cli -h 127.0.0.1 -p "$redis" ping >/dev/null 2>&1; then
        redis=$REDIS_PORT
        if ! redis-cli -h 127.0.0.1 -p "$redis" ping >/dev/null 2>&1; then
            say "nothing answers on 127.0.0.1:6379; starting redis-server on $redis"
            redis-server --daemonize yes --bind 127.0.0.1 --port "$redis" --save "" --appendonly no \
                --dir /tmp --logfile "/tmp/fondo-bridge-redis-$redis.log" >&2
        fi
    fi
    wait_port "$redis" Redis
    if [[ -z ${BROKERS_NO_KAFKA:-} ]]; then
        scripts/kafka-broker.sh start "$KAFKA_PORT" >/dev/null
        wait_port "$KAFKA_PORT" tansu
    fi
    echo "export FONDO_BRIDGE_TEST_AMQP='amqp://guest:guest@127.0.0.1:5672/%2f'"
    echo "export FONDO_BRIDGE_TEST_NATS='nats://127.0.0.1:4222'"
    echo "export FONDO_BRIDGE_TEST_KAFKA='127.0.0.1:$KAFKA_PORT'"
    echo "export FONDO_BRIDGE_TEST_REDIS='redis://127.0.0.1:$redis/0'"
}

case ${1:-up} in
up) up ;;
down) scripts/kafka-broker.sh stop "$KAFKA_PORT" ;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
