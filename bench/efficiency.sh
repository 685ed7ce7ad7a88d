#!/usr/bin/env bash
# Efficiency: the share of worker time spent computing when chunks take 1 s.
#
# WORKERS x SLOTS simulated workers (default 20 x 2) compute a job of CHUNKS echo chunks
# (default 400) at redundancy 1, each chunk taking COMPUTE_MS (default 1000 ms). Figures:
# - overall: compute time summed / (workers x slots x (first assignment to last result));
#   target >= 97 %;
# - job: the ideal length (chunks x compute / slots) over the master's started_at..finished_at;
# - tail: from the first moment a worker that had work lost a busy slot for good (the job ran
#   dry for it) to the last result, busy slot time over available slot time. A slow tail is
#   the workers waiting on the last few chunks (BOINC's complaint).
# Run twice: chunks of exactly COMPUTE_MS, then of COMPUTE_MS plus up to JITTER_MS (default
# 250) at random, since real workers and chunks are never equally fast and that is what makes
# tails slow. The ideal length uses the mean chunk length.
#
# Usage: bench/efficiency.sh      (env: WORKERS, SLOTS, CHUNKS, COMPUTE_MS, JITTER_MS, STORE)
source "$(dirname "$0")/common.sh"

WORKERS="${WORKERS:-20}"
SLOTS="${SLOTS:-2}"
CHUNKS="${CHUNKS:-400}"
COMPUTE_MS="${COMPUTE_MS:-1000}"
JITTER_MS="${JITTER_MS:-250}"
STORE="${STORE:-postgres}"

build_binaries
[ "$STORE" = postgres ] && create_database

# One run: $1 = jitter in ms. Prints one summary row.
run_once() {
  local jitter="$1" report="$BENCH_TMP/loadgen-$1.json" view job_s ideal_s timeout_s
  start_server "$STORE"
  "$LOADGEN_BIN" --server "$SERVER_URL" --workers "$WORKERS" --slots "$SLOTS" \
    --compute-ms "$COMPUTE_MS" --compute-jitter-ms "$jitter" --seed 3 --until-idle --idle-s 2 \
    --json "$report" >"$BENCH_TMP/loadgen-$jitter.txt" &
  LOADGEN_PID=$!
  # The workers connect first, so the job starts on all of them at once.
  sleep 1
  write_echo_job "$CHUNKS" 1
  submit_job
  timeout_s=$(( CHUNKS * (COMPUTE_MS + jitter) / 1000 / (WORKERS * SLOTS) * 3 + 30 ))
  wait_job "$JOB_ID" "$timeout_s" 1 || echo "job not finished after $timeout_s s"
  wait "$LOADGEN_PID" || true
  LOADGEN_PID=""
  view="$(job_view "$JOB_ID")"
  stop_server
  sed 's/^/  /' "$BENCH_TMP/loadgen-$jitter.txt" >&2
  job_s="$(seconds_between "$(echo "$view" | jq -r .started_at)" "$(echo "$view" | jq -r .finished_at)")"
  # The ideal: every slot busy from start to end with the mean chunk length.
  ideal_s="$(calc "$CHUNKS * ($COMPUTE_MS + $jitter / 2) / 1000 / ($WORKERS * $SLOTS)")"
  printf "%-12s %-6s %8s %8s %9s%% %9s%% %9s%% %13s\n" "$COMPUTE_MS+0..$jitter" \
    "$(echo "$view" | jq -r .state)" "$(fmt "$ideal_s" 2)" "$(fmt "$job_s" 2)" \
    "$(fmt "$(calc "100 * $ideal_s / $job_s")" 2)" \
    "$(fmt "$(jq '.efficiency * 100' "$report")" 2)" \
    "$(fmt "$(jq '(.tail.efficiency // 0) * 100' "$report")" 2)" \
    "$(jq -r '"\(.tail.start_s // 0 | . * 100 | floor / 100) / \(.tail.length_s // 0 | . * 100 | floor / 100)"' "$report")"
}

echo "== efficiency: $CHUNKS chunks, redundancy 1, $WORKERS workers x $SLOTS slots ($STORE) =="
rows=()
for jitter in 0 $JITTER_MS; do
  rows+=("$(run_once "$jitter")")
done
echo
echo "== summary (worker efficiency target >= 97 %) =="
printf "%-12s %-6s %8s %8s %10s %10s %10s %13s\n" "chunk ms" "state" "ideal s" "job s" "job eff" "worker eff" "tail eff" "tail at/len s"
printf "%s\n" "${rows[@]}"
