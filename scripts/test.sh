#!/usr/bin/env bash
# The test command: starts the brokers (scripts/brokers.sh), then runs every test against them.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh --test sink_kafka`).
set -euo pipefail
cd "$(dirname "$0")/.."
# tests/asyncapi.rs checks the AsyncAPI documents with the official parser: its node packages,
# pinned by tests/asyncapi/package-lock.json (installed again only when the lock file changed).
if command -v npm >/dev/null 2>&1; then
    [[ tests/asyncapi/node_modules/.package-lock.json -nt tests/asyncapi/package-lock.json ]] ||
        npm ci --prefix tests/asyncapi --ignore-scripts --no-audit --no-fund --loglevel=error >&2
fi
eval "$(scripts/brokers.sh up)"
trap 'scripts/brokers.sh down >/dev/null 2>&1 || true' EXIT
echo "test brokers: kafka=$FONDO_BRIDGE_TEST_KAFKA amqp=127.0.0.1:5672 nats=$FONDO_BRIDGE_TEST_NATS redis=$FONDO_BRIDGE_TEST_REDIS" >&2
cargo test --all-targets "$@"
