#!/usr/bin/env bash
# Connections: WORKERS (default 10,000) concurrent simulated workers on one master.
#
# 1. Memory per connection: the master's RSS (VmRSS) before any worker connects and once all
#    are connected and idle; (after - before) / WORKERS. Target <= 64 KiB.
# 2. Assignment latency under that load: a job of JOB_CHUNKS echo chunks at redundancy 2 runs
#    while every worker stays connected; each chunk "computes" COMPUTE_MS plus up to JITTER_MS
#    (default 5 to 10 s, at random so the workers do not answer in lockstep), so the 10,000
#    workers return about 1,300 results/s in all: idle-ish connections, a steady trickle of
#    work. Latency = a result sent to the next assignment on that connection, as the workers
#    see it. Target p99 <= 20 ms.
#
# Usage: bench/connections.sh   (env: WORKERS, JOB_CHUNKS, COMPUTE_MS, JITTER_MS, STORE=postgres|sqlite)
source "$(dirname "$0")/common.sh"

WORKERS="${WORKERS:-10000}"
JOB_CHUNKS="${JOB_CHUNKS:-20000}"
COMPUTE_MS="${COMPUTE_MS:-5000}"
JITTER_MS="${JITTER_MS:-5000}"
STORE="${STORE:-postgres}"
LIMIT_S="${LIMIT_S:-300}"

build_binaries
raise_fd_limit
if [ "$(ulimit -n)" -lt $((WORKERS + 1000)) ]; then
  echo "bench: the open-file limit ($(ulimit -n)) is too low for $WORKERS connections; raise the hard limit" >&2
  exit 1
fi
[ "$STORE" = postgres ] && create_database

echo "== connections: $WORKERS workers on one master ($STORE) =="
start_server "$STORE"
fds() { ls "/proc/$SERVER_PID/fd" | wc -l; }
# Let the master settle (pool connections, first sweep) before the baseline.
sleep 2
RSS_BEFORE="$(rss_kib "$SERVER_PID")"
FDS_BEFORE="$(fds)"

report="$BENCH_TMP/loadgen.json"
"$LOADGEN_BIN" --server "$SERVER_URL" --workers "$WORKERS" --slots 1 --compute-ms "$COMPUTE_MS" \
  --compute-jitter-ms "$JITTER_MS" --seed 2 --until-idle --idle-s 5 --connect-concurrency 256 --json "$report" \
  >"$BENCH_TMP/loadgen.txt" 2>"$BENCH_TMP/loadgen.err" &
LOADGEN_PID=$!

# Wait until every worker holds a socket on the master (bounded).
start=$(date +%s.%N)
for _ in $(seq 600); do
  [ "$(fds)" -ge $((FDS_BEFORE + WORKERS)) ] && break
  kill -0 "$LOADGEN_PID" 2>/dev/null || { cat "$BENCH_TMP/loadgen.err" >&2; exit 1; }
  sleep 0.1
done
CONNECTED=$(( $(fds) - FDS_BEFORE ))
RAMP_S="$(calc "$(date +%s.%N) - $start")"
sleep 3   # hellos and welcomes are done; let allocations settle
RSS_IDLE="$(rss_kib "$SERVER_PID")"
LOADGEN_RSS="$(rss_kib "$LOADGEN_PID")"
PER_CONN="$(calc "($RSS_IDLE - $RSS_BEFORE) * 1024 / $CONNECTED")"
echo "connected $CONNECTED sockets in $(fmt "$RAMP_S" 1) s"
echo "master RSS: $RSS_BEFORE KiB before, $RSS_IDLE KiB with $CONNECTED idle workers" \
     "-> $(fmt "$(calc "$PER_CONN / 1024")" 1) KiB per connection"

write_echo_job "$JOB_CHUNKS" 2
submit_job
echo "submitted job $JOB_ID: $JOB_CHUNKS chunks x 2, $COMPUTE_MS + 0..$JITTER_MS ms each"
peak=$RSS_IDLE
deadline=$(( $(date +%s) + LIMIT_S ))
while kill -0 "$LOADGEN_PID" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do
  r="$(rss_kib "$SERVER_PID")"; [ "$r" -gt "$peak" ] && peak=$r
  sleep 1
done
RSS_BUSY="$peak"
wait "$LOADGEN_PID" || true
LOADGEN_PID=""
view="$(job_view "$JOB_ID")"
echo "job $(echo "$view" | jq -r .state): $(echo "$view" | jq .chunks.done)/$JOB_CHUNKS chunks"
cat "$BENCH_TMP/loadgen.txt"

P50="$(jq .turnaround.p50_ms "$report")"
P99="$(jq .turnaround.p99_ms "$report")"
echo
echo "== summary =="
printf "%-44s %10s\n" "workers connected at once" "$(jq .peak_connected "$report")"
printf "%-44s %10s\n" "connection errors" "$(jq '.connect_failures + .sessions_lost + .master_errors' "$report")"
printf "%-44s %10s\n" "master RSS per idle connection, KiB (<= 64)" "$(fmt "$(calc "$PER_CONN / 1024")" 1)"
printf "%-44s %10s\n" "master RSS peak while the job ran, MiB" "$(fmt "$(calc "$RSS_BUSY / 1024")" 1)"
printf "%-44s %10s\n" "grid-loadgen RSS with all connected, MiB" "$(fmt "$(calc "$LOADGEN_RSS / 1024")" 1)"
printf "%-44s %10s\n" "result -> next assignment p50, ms" "$(fmt "$P50" 2)"
printf "%-44s %10s\n" "result -> next assignment p99, ms (<= 20)" "$(fmt "$P99" 2)"
printf "%-44s %10s\n" "results/s during the job" "$(jq '.results_per_s | floor' "$report")"
