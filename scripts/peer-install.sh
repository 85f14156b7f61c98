#!/usr/bin/env bash
# Installs the benchmarks' peer, mq-bridge 1.2.0 (PyPI `mq-bridge`, a Rust bridge in a Python wheel)
# with mq-bridge-connect 0.2.2 (its WebSocket client input), pinned, into PEER_DIR (default
# ~/.cache/fondo-bridge/mq-bridge-1.2.0, about 300 MB). Does nothing when it is already there.
# Used by scripts/bench-peer.sh and scripts/bench-sweep.sh; prints PEER_DIR on stdout.
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
if ! peer_ok; then
    echo "peer-install: installing mq-bridge==$PEER_VERSION mq-bridge-connect==$CONNECT_VERSION into $PEER_DIR (~300 MB)" >&2
    mkdir -p "$PEER_DIR"
    python3 -m pip install --quiet --disable-pip-version-check --target "$PEER_DIR" --upgrade \
        "mq-bridge==$PEER_VERSION" "mq-bridge-connect==$CONNECT_VERSION" >&2
    peer_ok || { echo "peer-install: mq-bridge did not install into $PEER_DIR" >&2; exit 1; }
fi
echo "$PEER_DIR"
