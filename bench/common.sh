# Shared by the bench/*.sh scripts (sourced, not run): build the release binaries, start a
# master on a fresh PostgreSQL database or a fresh SQLite directory, submit jobs, read figures.
# Everything runs on loopback and is cleaned up on exit: the master we started is stopped, the
# database dropped, the temporary directory removed.
#
# Environment:
#   DATABASE_URL      PostgreSQL server to create the bench database on
#                     (default postgres://postgres@127.0.0.1:5432/postgres)
#   CARGO_TARGET_DIR  where cargo builds (default ~/.cache/grid-target)
#   BENCH_NO_BUILD=1  use the binaries already built
#   GRID_SERVER_BIN, GRID_LOADGEN_BIN  use these binaries instead (e.g. a patched master)

set -euo pipefail

BENCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/grid-target}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
BENCH_TMP="$(mktemp -d /tmp/grid-bench.XXXXXX)"
BENCH_TOKEN="bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
BENCH_DB=""
SERVER_PID=""
SERVER_ADDR=""
LOADGEN_PID=""

for tool in curl jq psql; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 1; }
done

bench_cleanup() {
  set +e
  if [ -n "$LOADGEN_PID" ] && kill -0 "$LOADGEN_PID" 2>/dev/null; then
    kill -INT "$LOADGEN_PID"; wait "$LOADGEN_PID" 2>/dev/null
  fi
  stop_server
  if [ -n "$BENCH_DB" ]; then
    psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" >/dev/null 2>&1
  fi
  rm -rf "$BENCH_TMP"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# Build (unless told not to) and copy the binaries aside, so a rebuild during the run cannot
# swap them.
build_binaries() {
  if [ -z "${BENCH_NO_BUILD:-}" ] && { [ -z "${GRID_SERVER_BIN:-}" ] || [ -z "${GRID_LOADGEN_BIN:-}" ]; }; then
    (cd "$BENCH_ROOT" && cargo build --release -q -p grid-server -p grid-loadgen)
  fi
  cp "${GRID_SERVER_BIN:-$CARGO_TARGET_DIR/release/grid-server}" "$BENCH_TMP/grid-server"
  cp "${GRID_LOADGEN_BIN:-$CARGO_TARGET_DIR/release/grid-loadgen}" "$BENCH_TMP/grid-loadgen"
  SERVER_BIN="$BENCH_TMP/grid-server"
  LOADGEN_BIN="$BENCH_TMP/grid-loadgen"
}

# The open-file limit: as high as allowed (10,000 connections need as many descriptors).
raise_fd_limit() {
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
}

# A fresh database on the PostgreSQL server; sets DB_URL.
create_database() {
  if ! psql -q "$DATABASE_URL" -c 'SELECT 1' >/dev/null 2>&1; then
    echo "bench: no PostgreSQL at $DATABASE_URL (start it: pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start)" >&2
    exit 1
  fi
  BENCH_DB="grid_bench_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  psql -q "$DATABASE_URL" -c "CREATE DATABASE $BENCH_DB" >/dev/null
  DB_URL="$(db_url_for "$BENCH_DB")"
}

# $DATABASE_URL with its database name replaced by $1 (query string kept).
db_url_for() {
  local base="${DATABASE_URL%%\?*}" query=""
  [ "$base" != "$DATABASE_URL" ] && query="?${DATABASE_URL#*\?}"
  echo "${base%/*}/$1$query"
}

# Start the master: `start_server postgres` (on $DB_URL) or `start_server sqlite` (fresh data
# directory), with the flags in $SERVER_FLAGS (split on spaces). Waits for its "listening"
# line; sets SERVER_PID, SERVER_ADDR, SERVER_URL.
start_server() {
  local kind="$1" log="$BENCH_TMP/server.log"
  : >"$log"
  if [ "$kind" = postgres ]; then
    DATABASE_URL="$DB_URL" GRID_ADMIN_TOKEN="$BENCH_TOKEN" RUST_LOG="${SERVER_LOG:-warn}" \
      "$SERVER_BIN" --listen 127.0.0.1:0 ${SERVER_FLAGS:-} >"$log" 2>"$BENCH_TMP/server.err" &
  else
    mkdir -p "$BENCH_TMP/data"
    env -u DATABASE_URL GRID_ADMIN_TOKEN="$BENCH_TOKEN" RUST_LOG="${SERVER_LOG:-warn}" \
      "$SERVER_BIN" --listen 127.0.0.1:0 --data-dir "$BENCH_TMP/data" ${SERVER_FLAGS:-} >"$log" 2>"$BENCH_TMP/server.err" &
  fi
  SERVER_PID=$!
  for _ in $(seq 300); do
    SERVER_ADDR="$(sed -n 's/^grid-server listening on http:\/\///p' "$log" | head -1)"
    [ -n "$SERVER_ADDR" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$BENCH_TMP/server.err" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$SERVER_ADDR" ] || { echo "bench: the master did not start" >&2; exit 1; }
  SERVER_URL="http://$SERVER_ADDR"
}

stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}

# Write a job body of `count` echo inputs {"i": n} to $BENCH_TMP/job.json.
write_echo_job() {
  local count="$1" redundancy="$2"
  jq -nc --argjson n "$count" --argjson r "$redundancy" \
    '{kernel: "echo", redundancy: $r, inputs: [range(0; $n) | {i: .}]}' >"$BENCH_TMP/job.json"
}

# Submit $BENCH_TMP/job.json. Sets JOB_ID and SUBMIT_SECONDS.
submit_job() {
  local start end response
  start=$(date +%s.%N)
  response="$(curl -sS --max-time 120 -X POST -H "Authorization: Bearer $BENCH_TOKEN" \
    -H 'content-type: application/json' --data-binary @"$BENCH_TMP/job.json" \
    "$SERVER_URL/api/v1/jobs")"
  end=$(date +%s.%N)
  SUBMIT_SECONDS=$(calc "$end - $start")
  JOB_ID="$(echo "$response" | jq -er .id)" || { echo "bench: submission failed: $response" >&2; exit 1; }
}

job_view() {
  curl -sS --max-time 60 -H "Authorization: Bearer $BENCH_TOKEN" "$SERVER_URL/api/v1/jobs/$1"
}

# Wait until job $1 is finished, at most $2 seconds; polls every $3 seconds (default 2).
wait_job() {
  local id="$1" limit="$2" every="${3:-2}" start state
  start=$(date +%s)
  while :; do
    state="$(job_view "$id" | jq -r .state)"
    case "$state" in done|failed|cancelled) return 0 ;; esac
    [ $(( $(date +%s) - start )) -ge "$limit" ] && return 1
    sleep "$every"
  done
}

# Seconds between two RFC 3339 timestamps.
seconds_between() {
  calc "$(date -d "$2" +%s.%N) - $(date -d "$1" +%s.%N)"
}

# Floating-point arithmetic: calc "1 / 3".
calc() {
  awk "BEGIN { printf \"%.6f\", $1 }"
}

# Resident memory of a process, KiB.
rss_kib() {
  awk '/^VmRSS:/ {print $2}' "/proc/$1/status"
}

# printf a number with a fixed number of decimals ($2, default 0).
fmt() {
  printf "%.${2:-0}f" "$1"
}
