#!/usr/bin/env bash
# The grid against the engines people use instead, side by side in one run: TASKS trivial
# tasks (return the input, default 100,000) through
#   - Dask distributed, `client.map` on a LocalCluster of 2 worker processes,
#   - Celery 5, `group(...).apply_async()`, 2 prefork worker processes, the machine's Redis as
#     broker and result backend (database 15, flushed before and after),
#   - the grid at redundancy 1 and 2: an `echo` job on a master on PostgreSQL, computed by
#     grid-loadgen (GRID_WORKERS x GRID_SLOTS simulated workers, default 2 x 64: two worker
#     processes, like the peers).
# The peers are installed by this script with pip into a virtual environment under the target
# directory. Their figure runs from submitting the tasks to the last result back; the grid's
# from its job's `started_at` to `finished_at` (the master's own timestamps). The peers verify
# nothing; the grid at redundancy 2 has every task computed by two workers and compared.
#
# Usage: bench/peers.sh        (env: TASKS, GRID_WORKERS, GRID_SLOTS, SKIP_DASK=1, SKIP_CELERY=1)
source "$(dirname "$0")/common.sh"

TASKS="${TASKS:-100000}"
GRID_WORKERS="${GRID_WORKERS:-2}"
GRID_SLOTS="${GRID_SLOTS:-64}"
VENV="$CARGO_TARGET_DIR/bench-peers-venv"

build_binaries
raise_fd_limit
create_database

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check 'distributed>=2024.1' 'celery[redis]>=5.3,<6'

echo "== peers: $TASKS tasks that return their input, on $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg) =="
declare -A RATE

peer() {
  local name="$1" out
  out="$("$VENV/bin/python" "$BENCH_ROOT/bench/peers.py" "$name" "$TASKS" 2>"$BENCH_TMP/$name.err" | tail -1)" || {
    echo "[$name] failed:"; tail -5 "$BENCH_TMP/$name.err"; return 0; }
  RATE[$name]="$(echo "$out" | jq -r .tasks_per_s)"
  echo "[$name] $(echo "$out" | jq -r '"\(.tasks) tasks in \(.seconds) s: \(.tasks_per_s) tasks/s"')"
}

grid() {
  local redundancy="$1" view started finished seconds
  start_server postgres
  write_echo_job "$TASKS" "$redundancy"
  submit_job
  "$LOADGEN_BIN" --server "$SERVER_URL" --workers "$GRID_WORKERS" --slots "$GRID_SLOTS" --seed 1 \
    --until-idle --idle-s 3 >"$BENCH_TMP/loadgen-$redundancy.txt" 2>&1 &
  LOADGEN_PID=$!
  wait_job "$JOB_ID" 600 1 || echo "[grid r=$redundancy] not finished after 600 s"
  wait "$LOADGEN_PID" || true
  LOADGEN_PID=""
  view="$(job_view "$JOB_ID")"
  started="$(echo "$view" | jq -r .started_at)"
  finished="$(echo "$view" | jq -r .finished_at)"
  seconds="$(seconds_between "$started" "$finished")"
  RATE["grid-r$redundancy"]="$(calc "$TASKS / $seconds")"
  echo "[grid r=$redundancy] $(echo "$view" | jq -r .state): $TASKS tasks, $(echo "$view" | jq .replicas.returned) results, in $(fmt "$seconds" 2) s: $(fmt "${RATE["grid-r$redundancy"]}" 1) verified tasks/s (submitted in $(fmt "$SUBMIT_SECONDS" 2) s)"
  stop_server
  psql -q "$DB_URL" -c 'SET client_min_messages = warning' -c 'TRUNCATE jobs CASCADE' >/dev/null
}

[ -n "${SKIP_DASK:-}" ] || peer dask
[ -n "${SKIP_CELERY:-}" ] || peer celery
grid 1
grid 2

fastest=0
for name in dask celery; do
  rate="${RATE[$name]:-0}"
  if awk "BEGIN { exit !($rate > $fastest) }"; then fastest="$rate"; fi
done
echo
echo "| engine | tasks/s | grid r=1 / it | grid r=2 / it |"
echo "|---|---|---|---|"
for name in dask celery grid-r1 grid-r2; do
  rate="${RATE[$name]:-}"
  [ -n "$rate" ] || continue
  echo "| $name | $(fmt "$rate" 1) | $(fmt "$(calc "${RATE[grid-r1]} / $rate")" 1)x | $(fmt "$(calc "${RATE[grid-r2]} / $rate")" 1)x |"
done
if awk "BEGIN { exit !($fastest > 0) }"; then
  echo "grid vs the faster peer: r=1 $(fmt "$(calc "${RATE[grid-r1]} / $fastest")" 1)x, r=2 $(fmt "$(calc "${RATE[grid-r2]} / $fastest")" 1)x (peers verify nothing)"
fi
