#!/usr/bin/env bash
# Benchmark: each built-in kernel (primes, mandelbrot, sha256) on bench/inputs.json, natively
# (release) and in headless Chromium (the release wasm the contribute page serves), with the
# ratios and their geometric mean (target: wasm ≤ 1.10× native). Not a test: figures vary
# with the machine; run it on an otherwise idle one.
#
#   bench/wasm_vs_native.sh            # RUNS=7 alternating rounds (native, wasm) per kernel
#   SKIP_WEB_BUILD=1 bench/...         # reuse frontend/dist as it is
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${RUNS:-7}"
if [ "${SKIP_WEB_BUILD:-0}" != 1 ]; then
  cargo xtask build   # the web assets (and release binaries)
fi
[ -f frontend/dist/bench.html ] || { echo "frontend/dist is missing: run cargo xtask build" >&2; exit 1; }
[ -f frontend/node_modules/playwright-core/package.json ] || (cd frontend && npm ci --no-audit --no-fund)

target="$(cargo metadata --format-version 1 --no-deps | sed -e 's/.*"target_directory":"\([^"]*\)".*/\1/')"
bins="$(mktemp -d)"
trap 'rm -rf "$bins"' EXIT
cargo build --release -q -p grid-worker-wasm --example bench_native
cp "$target/release/examples/bench_native" "$bins/native"
cargo build --release -q -p grid-worker-wasm --example bench_native --features bench-soft-sha
cp "$target/release/examples/bench_native" "$bins/native-soft"

node bench/wasm_vs_native.mjs --runs "$RUNS" --native "$bins/native" --native-soft "$bins/native-soft"
