#!/usr/bin/env bash
# Trust benchmark (issue 6): plain 2-voting (a "fixed" job on a master started with
# --no-trust: no spot-checks, blacklisting or backtracking) against adaptive verification (with
# them), same seeds, same run. For each saboteur fraction and sabotage mode, one echo job of CHUNKS chunks is run
# by WORKERS simulated workers (grid-loadgen) on a fresh PostgreSQL database per cell, and we
# print the wrong results accepted (an echo output differing from its input, read from the
# final results) and the replicas issued per chunk (every replica, spot-check ringers
# included).
#
#   bench/saboteurs.sh                 # fractions 0.1 0.2 0.3, all four modes, 10,000 chunks
#   CHUNKS=2000 MODES=colluding FRACTIONS=0.2 bench/saboteurs.sh
source "$(dirname "$0")/common.sh"

CHUNKS="${CHUNKS:-10000}"
WORKERS="${WORKERS:-50}"
FRACTIONS="${FRACTIONS:-0.1 0.2 0.3}"
MODES="${MODES:-colluding sleeper random intermittent}"
SEED="${SEED:-7}"

build_binaries
raise_fd_limit

run_cell() {
  local policy="$1" mode="$2" fraction="$3" saboteurs
  saboteurs=$(awk "BEGIN { printf \"%d\", $WORKERS * $fraction + 0.5 }")
  create_database
  if [ "$policy" = fixed ]; then
    GRID_NO_TRUST=true start_server postgres
  else
    GRID_NO_TRUST=false start_server postgres
  fi
  jq -nc --argjson n "$CHUNKS" --arg p "$policy" \
    '{kernel: "echo", redundancy: 2, verification: $p, inputs: [range(0; $n) | {i: .}]}' \
    >"$BENCH_TMP/job.json"
  submit_job
  "$LOADGEN_BIN" --server "$SERVER_URL" --workers "$WORKERS" --slots 2 \
    --saboteurs "$saboteurs" --sabotage "$mode" --seed "$SEED" --until-idle --idle-s 3 \
    >"$BENCH_TMP/loadgen.out" 2>"$BENCH_TMP/loadgen.err" &
  LOADGEN_PID=$!
  wait_job "$JOB_ID" 900 1 || echo "bench: job $JOB_ID did not finish" >&2
  # Backtracking may still reopen chunks right after "done": let the workers finish.
  wait "$LOADGEN_PID" || true
  LOADGEN_PID=""
  wait_job "$JOB_ID" 300 1 || true
  local wrong replicas blacklisted
  wrong=$(curl -sS -H "Authorization: Bearer $BENCH_TOKEN" "$SERVER_URL/api/v1/jobs/$JOB_ID/results" \
    | jq -s '[.[] | select(.output != {i: .index})] | length')
  replicas=$(psql -qtA "$DB_URL" -c "SELECT count(*) FROM replicas")
  blacklisted=$(psql -qtA "$DB_URL" -c "SELECT count(*) FROM workers WHERE blacklisted_at IS NOT NULL")
  printf "| %-12s | %4s | %-8s | %5d | %6s | %8s | %4s |\n" "$mode" "$fraction" "$policy" \
    "$CHUNKS" "$wrong" "$(fmt "$(calc "$replicas / $CHUNKS")" 3)" "$blacklisted"
  stop_server
  psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" >/dev/null
  BENCH_DB=""
}

echo "workers: $WORKERS (2 slots each), chunks per job: $CHUNKS, seed: $SEED"
echo
echo "| sabotage     | frac | policy   | chunks | wrong | replicas/chunk | blacklisted |"
echo "|--------------|------|----------|--------|-------|----------------|-------------|"
for mode in $MODES; do
  for fraction in $FRACTIONS; do
    for policy in ${POLICIES:-fixed adaptive}; do
      run_cell "$policy" "$mode" "$fraction"
    done
  done
done
