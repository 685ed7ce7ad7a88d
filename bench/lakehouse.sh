#!/usr/bin/env bash
# The Delta Lake export of a big job (issue 16): a job of CHUNKS (default 1,000,000) echo
# chunks at redundancy 1, its sink a Delta table on the local file system, computed by
# WORKERS x SLOTS simulated workers (grid-loadgen) against a master on PostgreSQL (STORE=sqlite
# for the embedded default). Prints, from the master's own timestamps: the export's time (from
# the job's finished_at to its exported_at), the master's resident memory when the job finished
# and its peak during the export (sampled every 0.1 s), the table's size on disk, and, with
# GRID_PYTHON (the project's virtual environment), the rows PyPI's deltalake reads back.
#
# Usage: bench/lakehouse.sh     (env: CHUNKS, WORKERS, SLOTS, STORE)
source "$(dirname "$0")/common.sh"

CHUNKS="${CHUNKS:-1000000}"
WORKERS="${WORKERS:-50}"
SLOTS="${SLOTS:-8}"
STORE="${STORE:-postgres}"

build_binaries
raise_fd_limit
[ "$STORE" = postgres ] && create_database

LAKE="$BENCH_TMP/lake"
TABLE="file://$LAKE/echo"
SERVER_FLAGS="--sink-root $LAKE" start_server "$STORE"
echo "== lakehouse: $CHUNKS echo chunks, redundancy 1 ($STORE), sink $TABLE =="
write_echo_job "$CHUNKS" 1
jq -c --arg t "$TABLE" '. + {sink: {delta: $t}}' "$BENCH_TMP/job.json" >"$BENCH_TMP/job.sink.json"
mv "$BENCH_TMP/job.sink.json" "$BENCH_TMP/job.json"
submit_job
echo "submitted job $JOB_ID in $(fmt "$SUBMIT_SECONDS" 1) s"

"$LOADGEN_BIN" --server "$SERVER_URL" --workers "$WORKERS" --slots "$SLOTS" --seed 5 \
  --until-idle --idle-s 3 >"$BENCH_TMP/loadgen.txt" 2>&1 &
LOADGEN_PID=$!
wait_job "$JOB_ID" 3600 0.1 || { echo "bench: the job did not finish" >&2; exit 1; }
RSS_FINISHED="$(rss_kib "$SERVER_PID")"
peak="$RSS_FINISHED"
while :; do
  r="$(rss_kib "$SERVER_PID")"; [ "$r" -gt "$peak" ] && peak=$r
  state="$(job_view "$JOB_ID" | jq -r .export.state)"
  [ "$state" != pending ] && break
  sleep 0.1
done
RSS_AFTER="$(rss_kib "$SERVER_PID")"
wait "$LOADGEN_PID" 2>/dev/null || true
LOADGEN_PID=""
view="$(job_view "$JOB_ID")"
[ "$(echo "$view" | jq -r .export.state)" = done ] || { echo "bench: export: $(echo "$view" | jq -c .export)" >&2; exit 1; }
EXPORT_S="$(seconds_between "$(echo "$view" | jq -r .finished_at)" "$(echo "$view" | jq -r .export.exported_at)")"
RUN_S="$(seconds_between "$(echo "$view" | jq -r .started_at)" "$(echo "$view" | jq -r .finished_at)")"
SIZE_KIB="$(du -sk "$LAKE/echo" | cut -f1)"
ROWS="-"
if [ -n "${GRID_PYTHON:-}" ]; then
  ROWS="$("$GRID_PYTHON" -c "import sys; from deltalake import DeltaTable; print(DeltaTable(sys.argv[1]).to_pyarrow_dataset().count_rows())" "$TABLE")"
fi

echo
echo "== summary =="
printf "%-52s %12s\n" "chunks" "$CHUNKS"
printf "%-52s %12s\n" "job run (started -> finished), s" "$(fmt "$RUN_S" 1)"
printf "%-52s %12s\n" "export (finished -> exported, incl. <=1 s poll), s" "$(fmt "$EXPORT_S" 1)"
printf "%-52s %12s\n" "rows exported per second" "$(fmt "$(calc "$CHUNKS / $EXPORT_S")")"
printf "%-52s %12s\n" "master RSS at finish / peak in export / after, MiB" \
  "$(fmt "$(calc "$RSS_FINISHED/1024")") / $(fmt "$(calc "$peak/1024")") / $(fmt "$(calc "$RSS_AFTER/1024")")"
printf "%-52s %12s\n" "table on disk, MiB" "$(fmt "$(calc "$SIZE_KIB/1024")" 1)"
printf "%-52s %12s\n" "rows read back (deltalake)" "$ROWS"
