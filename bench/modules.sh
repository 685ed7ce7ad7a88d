#!/usr/bin/env bash
# Benchmark: uploaded task modules in the native worker's sandbox (wasmtime, Cranelift) against
# the same Rust compiled natively, and what every chunk and every module costs on top:
#   1. one Collatz chunk (examples/collatz, 500,000 numbers) natively and as collatz.wasm
#      through grid-worker's TaskModule::run, in alternating rounds: medians, ratio wasm/native;
#   2. compiling collatz.wasm (Sandbox::compile), and one near-empty chunk (a WAT echo module,
#      and collatz.wasm on a one-number range): µs per chunk;
#   3. the same chunk in headless Chromium between native and wasmtime runs (skipped with
#      NO_BROWSER=1, or when Chromium or frontend/node_modules is missing).
# Not a test: figures vary with the machine; run it on an otherwise idle one. ~1 min.
#
#   bench/modules.sh               # RUNS=7 rounds, CHUNKS=2000 chunks per round
#   BENCH_NO_BUILD=1 bench/...     # use collatz.wasm and module_bench as they are built
#   START=1 END=500001 bench/...   # another Collatz chunk (at most 1,000,000 numbers)
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${RUNS:-7}"
CHUNKS="${CHUNKS:-2000}"
START="${START:-1}"
END="${END:-500001}"

target="$(cargo metadata --format-version 1 --no-deps | sed -e 's/.*"target_directory":"\([^"]*\)".*/\1/')"
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  cargo xtask modules >&2   # <target>/task-modules/*.wasm, checked against the task ABI
  cargo build --release -q -p grid-worker --example module_bench
fi
wasm="$target/task-modules/collatz.wasm"
[ -f "$wasm" ] || { echo "bench: $wasm is missing: run cargo xtask modules" >&2; exit 1; }

# Copied aside, so a rebuild during the run cannot swap them.
tmp="$(mktemp -d /tmp/grid-bench.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
cp "$target/release/examples/module_bench" "$tmp/module_bench"
cp "$wasm" "$tmp/collatz.wasm"

echo "CPU: $(sed -n 's/^model name\s*:\s*//p' /proc/cpuinfo | head -1), $(nproc) cores," \
  "load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$tmp/module_bench" "$tmp/collatz.wasm" --rounds "$RUNS" --chunks "$CHUNKS" --start "$START" --end "$END"

chromium="${CHROMIUM:-/usr/bin/chromium}"
if [ "${NO_BROWSER:-0}" = 1 ]; then
  exit 0
elif [ ! -x "$chromium" ] || ! command -v node >/dev/null; then
  echo; echo "(no $chromium or node: the browser comparison is skipped)"
  exit 0
fi
[ -f frontend/node_modules/playwright-core/package.json ] || (cd frontend && npm ci --no-audit --no-fund)
CHROMIUM="$chromium" node bench/modules.mjs --native "$tmp/module_bench" --wasm "$tmp/collatz.wasm" \
  --runs "$RUNS" --chunks "$CHUNKS" --start "$START" --end "$END"
