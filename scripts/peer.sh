#!/usr/bin/env bash
# The benchmarks' peer, mq-bridge 1.2.0 (PyPI `mq-bridge`, a Rust bridge in a Python wheel) with
# mq-bridge-connect 0.2.2 (its WebSocket client input), for scripts/bench-peer.sh and
# scripts/bench-sweep.sh:
#
#   scripts/peer.sh install        # pinned, into PEER_DIR (default ~/.cache/fondo-bridge/mq-bridge-1.2.0,
#                                  # about 300 MB) unless already there; prints PEER_DIR
#   scripts/peer.sh route SRC BROKER URL PORT SIMPORT PREFIX STREAM EXCHANGE CLIENT TOKEN TYPE...
#                                  # the route's YAML on stdout: input webhook (HTTP on PORT) or ws (the
#                                  # simulator on SIMPORT, token in the query), a `switch` on eventType
#                                  # with one case per TYPE to `PREFIX.TYPE` on BROKER (nats|rabbitmq|kafka)
#   exec scripts/peer.sh run YAML SRC LEVEL   # runs the route named `bench` (exec: the caller's pid is it)
set -euo pipefail
PEER_VERSION=1.2.0
CONNECT_VERSION=0.2.2
PEER_DIR=${PEER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fondo-bridge/mq-bridge-$PEER_VERSION}

peer_ok() {
    PYTHONPATH=$PEER_DIR python3 -c "
import mq_bridge, mq_bridge_connect, importlib.metadata as m
assert m.version('mq-bridge') == '$PEER_VERSION' and m.version('mq-bridge-connect') == '$CONNECT_VERSION'
" >/dev/null 2>&1
}

case ${1:-} in
install)
    if ! peer_ok; then
        echo "peer: installing mq-bridge==$PEER_VERSION mq-bridge-connect==$CONNECT_VERSION into $PEER_DIR (~300 MB)" >&2
        mkdir -p "$PEER_DIR"
        python3 -m pip install --quiet --disable-pip-version-check --target "$PEER_DIR" --upgrade \
            "mq-bridge==$PEER_VERSION" "mq-bridge-connect==$CONNECT_VERSION" >&2
        peer_ok || { echo "peer: mq-bridge did not install into $PEER_DIR" >&2; exit 1; }
    fi
    echo "$PEER_DIR"
    ;;
route)
    shift
    src=$1 broker=$2 url=$3 port=$4 simport=$5 prefix=$6 stream=$7 exchange=$8 client=$9 token=${10}
    shift 10
    echo "routes:"
    echo "  bench:"
    echo "    input:"
    if [[ $src == webhook ]]; then
        echo "      http: { url: \"127.0.0.1:$port\" }"
    else
        echo "      custom: { name: connect, config: { connector: websocket, url: \"ws://127.0.0.1:$simport/v2/partner/client/$client/subscribe?token=$token\" } }"
    fi
    echo "    output:"
    echo "      switch:"
    echo "        when:"
    for t in "$@"; do
        echo "          - if: \"eventType == '$t'\""
        case $broker in
        nats) echo "            to: { nats: { url: \"$url\", subject: \"$prefix.$t\", stream: \"$stream\" } }" ;;
        rabbitmq) echo "            to: { amqp: { url: \"$url\", exchange: \"$exchange\", queue: \"$prefix.$t\", no_declare_queue: true } }" ;;
        kafka) echo "            to: { kafka: { url: \"$url\", topic: \"$prefix.$t\" } }" ;;
        esac
    done
    echo "        default: { \"null\": null }"
    ;;
run)
    # mq-bridge-connect (its Go library) is loaded only for the WebSocket client input.
    PYTHONPATH=$PEER_DIR exec python3 -c '
import sys, logging, mq_bridge
if sys.argv[2] == "ws":
    import mq_bridge_connect
    mq_bridge_connect.register()
mq_bridge.init_logging(sys.argv[3])
logging.basicConfig(level=sys.argv[3].upper())
mq_bridge.Route.from_file(sys.argv[1], "bench").run()
' "$2" "$3" "$4"
    ;;
*)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
