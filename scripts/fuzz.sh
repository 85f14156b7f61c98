#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each for SECONDS_PER_TARGET seconds (default 20).
# Fails when any target crashes, hangs (one input over FUZZ_TIMEOUT_S, default 10 s) or runs out of
# memory (FUZZ_RSS_MB, default 2048); the reproducer is left in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh                 # 20 s per target (CI)
#   scripts/fuzz.sh 3600            # an hour per target
#   FUZZ_TARGETS=parse_event scripts/fuzz.sh 600
#   FUZZ_JOBS=2 scripts/fuzz.sh 1800   # libFuzzer -fork=2 (one process per core)
#
# The working corpus grows in fuzz/corpus/<target>/ (not committed); fuzz/seeds/<target>/ holds
# the committed seeds (the Fondo fixtures, signed requests) and is read on every run.
# Needs the nightly toolchain and cargo-fuzz (scripts/setup.sh installs cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

SECS="${1:-20}"
TIMEOUT_S="${FUZZ_TIMEOUT_S:-10}"
RSS_MB="${FUZZ_RSS_MB:-2048}"
JOBS="${FUZZ_JOBS:-1}"
say() { echo "fuzz: $*" >&2; }

if ! [[ "$SECS" =~ ^[0-9]+$ ]] || ((SECS < 1)); then
    say "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]"
    exit 2
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    say "the nightly toolchain is needed: rustup toolchain install nightly --profile minimal"
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    say "cargo-fuzz is missing; installing it (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked >&2
fi

say "building the fuzz targets (nightly, address sanitizer, optimised with debug assertions)"
cargo +nightly fuzz build -O

read -r -a targets <<<"${FUZZ_TARGETS:-$(cargo +nightly fuzz list | tr '\n' ' ')}"
failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t"
    say "== $t for ${SECS}s (corpus: $(find "corpus/$t" -type f | wc -l) files + $(find "seeds/$t" -type f | wc -l) seeds)"
    args=(-max_total_time="$SECS" -timeout="$TIMEOUT_S" -rss_limit_mb="$RSS_MB" -print_final_stats=1)
    if ((JOBS > 1)); then
        args+=(-fork="$JOBS")
    fi
    if ! cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- "${args[@]}"; then
        say "!! $t FAILED: reproducer in fuzz/artifacts/$t/ (cargo +nightly fuzz run $t <file>)"
        failed+=("$t")
    fi
done

if ((${#failed[@]})); then
    say "failed targets: ${failed[*]}"
    exit 1
fi
say "all ${#targets[@]} targets ran ${SECS}s each without a crash"
