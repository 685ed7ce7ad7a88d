#!/usr/bin/env bash
# A job of CHUNKS (default 1,000,000) echo chunks.
#
# 1. Submission time: one POST of the whole job (about 12 MB of JSON), until the 201. Target
#    under 10 s.
# 2. The master's memory while the job runs: VmRSS sampled every SAMPLE_S seconds for RUN_S
#    seconds (default 60) while WORKERS x SLOTS simulated workers compute it. It should stay
#    flat: the master holds a bounded cache of ready chunks, not the job. (The whole job takes
#    minutes at redundancy 2; RUN_S=0 runs it to the end.) The job is cancelled afterwards.
#
# Usage: bench/million.sh     (env: CHUNKS, REDUNDANCY, WORKERS, SLOTS, RUN_S, SAMPLE_S, STORE)
source "$(dirname "$0")/common.sh"

CHUNKS="${CHUNKS:-1000000}"
REDUNDANCY="${REDUNDANCY:-2}"
WORKERS="${WORKERS:-200}"
SLOTS="${SLOTS:-8}"
RUN_S="${RUN_S:-60}"
SAMPLE_S="${SAMPLE_S:-5}"
STORE="${STORE:-postgres}"

build_binaries
raise_fd_limit
[ "$STORE" = postgres ] && create_database

echo "== million: $CHUNKS echo chunks, redundancy $REDUNDANCY ($STORE) =="
start_server "$STORE"
write_echo_job "$CHUNKS" "$REDUNDANCY"
echo "body: $(( $(stat -c %s "$BENCH_TMP/job.json") / 1024 / 1024 )) MiB"
RSS_BEFORE="$(rss_kib "$SERVER_PID")"
# Sample the RSS during the submission too (its peak is the parsed request).
( peak=0; while kill -0 "$SERVER_PID" 2>/dev/null; do
    r="$(rss_kib "$SERVER_PID")"; [ "$r" -gt "$peak" ] && { peak=$r; echo "$peak" >"$BENCH_TMP/submit-peak"; }
    sleep 0.1
  done ) &
SAMPLER=$!
submit_job
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
RSS_SUBMIT_PEAK="$(cat "$BENCH_TMP/submit-peak" 2>/dev/null || echo 0)"
RSS_AFTER_SUBMIT="$(rss_kib "$SERVER_PID")"
echo "submitted job $JOB_ID in $(fmt "$SUBMIT_SECONDS" 2) s"
echo "master RSS: $RSS_BEFORE KiB before, peak $RSS_SUBMIT_PEAK KiB while submitting, $RSS_AFTER_SUBMIT KiB after"

duration=()
[ "$RUN_S" -gt 0 ] && duration=(--duration-s "$RUN_S")
[ "$RUN_S" -gt 0 ] || duration=(--until-idle --idle-s 3)
report="$BENCH_TMP/loadgen.json"
"$LOADGEN_BIN" --server "$SERVER_URL" --workers "$WORKERS" --slots "$SLOTS" --seed 4 \
  "${duration[@]}" --json "$report" >"$BENCH_TMP/loadgen.txt" &
LOADGEN_PID=$!
echo "RSS while the job runs (every $SAMPLE_S s):"
samples=()
t0=$(date +%s)
while kill -0 "$LOADGEN_PID" 2>/dev/null; do
  sleep "$SAMPLE_S"
  kill -0 "$LOADGEN_PID" 2>/dev/null || break
  r="$(rss_kib "$SERVER_PID")"
  samples+=("$r")
  printf "  %4d s  %8d KiB\n" $(( $(date +%s) - t0 )) "$r"
done
wait "$LOADGEN_PID" || true
LOADGEN_PID=""
view="$(job_view "$JOB_ID")"
curl -sS -o /dev/null -X DELETE -H "Authorization: Bearer $BENCH_TOKEN" "$SERVER_URL/api/v1/jobs/$JOB_ID"

min=${samples[0]:-0}; max=${samples[0]:-0}
for r in "${samples[@]}"; do [ "$r" -lt "$min" ] && min=$r; [ "$r" -gt "$max" ] && max=$r; done
first=${samples[0]:-0}; last=${samples[-1]:-0}
echo
echo "== summary =="
printf "%-44s %10s\n" "submission time, s (< 10)" "$(fmt "$SUBMIT_SECONDS" 2)"
printf "%-44s %10s\n" "RSS before / peak submitting / after, MiB" \
  "$(fmt "$(calc "$RSS_BEFORE/1024")") / $(fmt "$(calc "$RSS_SUBMIT_PEAK/1024")") / $(fmt "$(calc "$RSS_AFTER_SUBMIT/1024")")"
printf "%-44s %10s\n" "RSS while running: min / max, MiB" "$(fmt "$(calc "$min/1024")" 1) / $(fmt "$(calc "$max/1024")" 1)"
printf "%-44s %10s\n" "RSS first -> last sample, MiB" "$(fmt "$(calc "$first/1024")" 1) -> $(fmt "$(calc "$last/1024")" 1)"
printf "%-44s %10s\n" "chunks done while sampled" "$(echo "$view" | jq .chunks.done)"
printf "%-44s %10s\n" "results/s (loadgen)" "$(jq '.results_per_s | floor' "$report")"
