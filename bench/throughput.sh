#!/usr/bin/env bash
# Throughput: results accepted and durably stored per second by one master.
#
# An `echo` job of CHUNKS chunks (default 200,000) at redundancy 2 is computed by grid-loadgen
# (WORKERS x SLOTS simulated workers, default 200 x 8, no compute time: pure overhead) on
# PostgreSQL, then on the embedded SQLite store. The master's own timestamps give the figure:
# replicas returned / (finished_at - started_at). Beside it: this machine's raw PostgreSQL
# ceiling for batched claim-and-complete (pgbench, 100 rows per transaction, 4 clients) and
# our ratio to it. Target: >= 20,000 results/s on PostgreSQL.
#
# Usage: bench/throughput.sh            (env: CHUNKS, WORKERS, SLOTS, SKIP_SQLITE=1, SKIP_CEILING=1)
source "$(dirname "$0")/common.sh"

CHUNKS="${CHUNKS:-200000}"
WORKERS="${WORKERS:-200}"
SLOTS="${SLOTS:-8}"
LIMIT_S="${LIMIT_S:-600}"   # per run

build_binaries
raise_fd_limit
create_database

echo "== throughput: echo x $CHUNKS chunks, redundancy 2, $WORKERS workers x $SLOTS slots =="

# -- the raw PostgreSQL ceiling --------------------------------------------------------------
CEILING=""
if [ -z "${SKIP_CEILING:-}" ] && command -v pgbench >/dev/null; then
  psql -q "$DB_URL" >/dev/null <<'SQL'
CREATE TABLE bench_queue (
  id BIGSERIAL PRIMARY KEY, state TEXT NOT NULL DEFAULT 'ready', batch INT,
  payload TEXT NOT NULL, result TEXT, done_at TIMESTAMPTZ);
INSERT INTO bench_queue (payload) SELECT '{"i":' || g || '}' FROM generate_series(1, 1000000) g;
CREATE INDEX bench_queue_ready ON bench_queue (id) WHERE state = 'ready';
CREATE INDEX bench_queue_leased ON bench_queue (batch) WHERE state = 'leased';
VACUUM ANALYZE bench_queue;
SQL
  TPS="$(pgbench -n -c 4 -j 2 -T 10 -f "$BENCH_ROOT/bench/pg_ceiling.sql" "$DB_URL" 2>&1 \
    | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)"
  psql -q "$DB_URL" -c 'DROP TABLE bench_queue' >/dev/null
  if [ -n "$TPS" ]; then
    CEILING="$(calc "$TPS * 100")"
    echo "PostgreSQL ceiling (pgbench, claim+complete 100 rows/tx, 4 clients): $(fmt "$CEILING") rows/s"
  fi
fi

# -- one run: start the master, submit, compute, read the figures ----------------------------
# Sets RUN_RATE.
run_once() {
  local kind="$1" job report started finished returned done state seconds
  start_server "$kind"
  write_echo_job "$CHUNKS" 2
  submit_job
  job="$JOB_ID"
  echo "[$kind] submitted job $job ($CHUNKS chunks) in $(fmt "$SUBMIT_SECONDS" 2) s"
  report="$BENCH_TMP/loadgen-$kind.json"
  "$LOADGEN_BIN" --server "$SERVER_URL" --workers "$WORKERS" --slots "$SLOTS" --seed 1 \
    --until-idle --idle-s 3 --progress-s 5 --json "$report" >"$BENCH_TMP/loadgen-$kind.txt" &
  LOADGEN_PID=$!
  if ! wait_job "$job" "$LIMIT_S" 2; then
    echo "[$kind] job not finished after $LIMIT_S s"
  fi
  wait "$LOADGEN_PID" || true
  LOADGEN_PID=""
  local view; view="$(job_view "$job")"
  state="$(echo "$view" | jq -r .state)"
  started="$(echo "$view" | jq -r .started_at)"
  finished="$(echo "$view" | jq -r '.finished_at // empty')"
  returned="$(echo "$view" | jq -r .replicas.returned)"
  done="$(echo "$view" | jq -r .chunks.done)"
  [ -n "$finished" ] || finished="$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)"
  seconds="$(seconds_between "$started" "$finished")"
  RUN_RATE="$(calc "$returned / $seconds")"
  echo "[$kind] job $state: $done/$CHUNKS chunks, $returned results stored in $(fmt "$seconds" 2) s" \
       "(invalid $(echo "$view" | jq .replicas.invalid), expired $(echo "$view" | jq .replicas.expired))"
  echo "[$kind] stored results/s (master timestamps): $(fmt "$RUN_RATE")"
  echo "[$kind] loadgen: $(jq -r '"\(.results) results sent, \(.results_per_s|floor)/s, result->next assignment p50 \(.turnaround.p50_ms) ms p99 \(.turnaround.p99_ms) ms, connection errors \(.connect_failures + .sessions_lost + .master_errors)"' "$report")"
  stop_server
}

run_once postgres
PG_RATE="$RUN_RATE"
SQLITE_RATE=""
if [ -z "${SKIP_SQLITE:-}" ]; then
  run_once sqlite
  SQLITE_RATE="$RUN_RATE"
fi

echo
echo "== summary =="
printf "%-38s %12s\n" "PostgreSQL, results/s (target 20000)" "$(fmt "$PG_RATE")"
if [ -n "$CEILING" ]; then
  printf "%-38s %12s\n" "raw PostgreSQL ceiling, rows/s" "$(fmt "$CEILING")"
  printf "%-38s %11s%%\n" "ratio to the ceiling" "$(fmt "$(calc "100 * $PG_RATE / $CEILING")" 1)"
fi
[ -n "$SQLITE_RATE" ] && printf "%-38s %12s\n" "embedded SQLite, results/s" "$(fmt "$SQLITE_RATE")"
