#!/usr/bin/env bash
# Adversaries benchmark (issue 12): each attack of the security review mounted over real
# sockets by grid-loadgen against a master on PostgreSQL that trusts no network
# (GRID_TRUSTED_NETWORKS=none), so that on loopback every 127.x.y.0/24 is a network of its own.
# Honest workers: HONEST simulated workers (4 slots each), one per network 127.0.1.1,
# 127.0.2.1, ...; attackers: a second grid-loadgen process started first, on the networks each
# attack names. Each cell runs one echo job of CHUNKS chunks on a fresh database and prints:
# the attackers' share of the declared slots, wrong results accepted (an echo output differing
# from its input, read from the final results), chunks failed, replicas issued per chunk
# (ringers included), honest identities blacklisted, honest throughput (chunks per second from
# the job's own timestamps, up to its first "done") relative to the run without attackers, the
# master's resident memory after the job, and the slowest of the /healthz probes made once a
# second during the job. "wrong" is read once the master has checked every accepted chunk
# (its own recomputation of the echo kernel) and re-verified what it refuted; "revised" counts
# the chunks that were reopened on the way (accepted, then found wrong or their voter caught).
#
# A second table (issue 19) runs the review's resource attacks (bench/attacks.py, in the
# project's Python environment) beside the same honest grid, one per job: honest throughput
# relative to the run without attackers, results lost, the master's resident memory before and
# after the job, the slowest /healthz answer, and what the attacker saw (connections made,
# connections the master closed).
#
#   bench/adversaries.sh                  # every attack, 10,000 chunks
#   CHUNKS=2000 ATTACKS="sybil release" RESOURCE_ATTACKS="slowloris" bench/adversaries.sh
source "$(dirname "$0")/common.sh"

CHUNKS="${CHUNKS:-10000}"
HONEST="${HONEST:-8}"
SEED="${SEED:-7}"
ATTACKS="${ATTACKS:-sybil colluding-fixed colluding-adaptive sleeper rotate release drop slots}"
RESOURCE_ATTACKS="${RESOURCE_ATTACKS:-slowloris outbox hungry nul pings volunteers tokens streams}"
PYTHON="${GRID_PYTHON:-}"
if [ -n "$RESOURCE_ATTACKS" ] && [ -z "$PYTHON" ]; then
  PYTHON="$(cd "$BENCH_ROOT" && cargo xtask python 2>/dev/null)"
fi

build_binaries
raise_fd_limit

honest_bind=$(seq -s, -f '127.0.%g.1' 1 "$HONEST")
# Attackers holding a fifth of the slots: HONEST*4 honest slots against HONEST/2 attacking
# workers of 2 slots (attacks that declare more slots say so in the table).
attackers=$(( HONEST / 2 ))
[ "$attackers" -ge 2 ] || attackers=2
distinct_bind=$(seq -s, -f '127.0.%g.1' 101 $(( 100 + attackers )))
one_network=$(seq -s, -f '127.0.200.%g' 1 "$attackers")

BASE_RATE=""
HEALTH_PID=""

# Probe /healthz once a second; the slowest answer goes to $BENCH_TMP/health.max.
watch_health() {
  local slowest=0 took
  while :; do
    took=$(curl -s -o /dev/null -w '%{time_total}' --max-time 5 "$SERVER_URL/healthz" || echo 5)
    slowest=$(awk -v a="$slowest" -v b="$took" 'BEGIN { print (b > a) ? b : a }')
    echo "$slowest" >"$BENCH_TMP/health.max"
    sleep 1
  done
}

# Start the honest grid on a fresh master and run the warm-up job (see run_cell).
start_honest_grid() {
  create_database
  GRID_TRUSTED_NETWORKS=none start_server postgres
  "$LOADGEN_BIN" --server "$SERVER_URL" --workers "$HONEST" --slots 4 --bind "$honest_bind" \
    --seed "$SEED" --duration-s 3600 >"$BENCH_TMP/loadgen.out" 2>"$BENCH_TMP/loadgen.err" &
  LOADGEN_PID=$!
  jq -nc '{kernel: "echo", redundancy: 2, inputs: [range(0; 500) | {warm: .}]}' >"$BENCH_TMP/job.json"
  submit_job
  wait_job "$JOB_ID" 300 1 || echo "bench: the warm-up job did not finish" >&2
  sleep 1
}

# One resource attack beside the honest grid (second table).
run_resource_cell() {
  local attack="$1" n=1
  case "$attack" in
    slowloris) n=3000 ;;
    outbox) n=64 ;;
    hungry) n=64 ;;
    nul) n=4 ;;
    pings) n=16 ;;
    volunteers) n=8 ;;
    tokens) n=8 ;;
    streams) n=1024 ;;
    *) echo "bench: unknown resource attack $attack" >&2; exit 1 ;;
  esac
  start_honest_grid
  local rss_before attack_pid
  rss_before=$(( $(awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status") / 1024 ))
  "$PYTHON" "$BENCH_ROOT/bench/attacks.py" "$SERVER_URL" "$attack" --n "$n" \
    >"$BENCH_TMP/attack.out" 2>"$BENCH_TMP/attack.err" &
  attack_pid=$!
  local attack_started
  attack_started=$(date +%s.%N)
  sleep 3
  write_echo_job "$CHUNKS" 2
  submit_job
  : >"$BENCH_TMP/health.max"
  watch_health & HEALTH_PID=$!
  wait_job "$JOB_ID" 900 1 || echo "bench: job $JOB_ID did not finish under $attack" >&2
  local view rss_after rate relative health lost seen cpu
  view="$(job_view "$JOB_ID")"
  rss_after=$(( $(awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status") / 1024 ))
  kill "$HEALTH_PID" 2>/dev/null; wait "$HEALTH_PID" 2>/dev/null || true; HEALTH_PID=""
  # The attacker's own CPU, in cores over its run: it shares the machine's cores with the
  # master, PostgreSQL and the honest workers, so its share is taken from them too.
  cpu=$(awk -v hz="$(getconf CLK_TCK)" -v wall="$(calc "$(date +%s.%N) - $attack_started")" \
    '{ printf "%.2f", ($14 + $15) / hz / wall }' "/proc/$attack_pid/stat" 2>/dev/null || echo "?")
  kill -TERM "$attack_pid" 2>/dev/null; wait "$attack_pid" 2>/dev/null || true
  kill -INT "$LOADGEN_PID" 2>/dev/null; wait "$LOADGEN_PID" 2>/dev/null || true; LOADGEN_PID=""
  lost=$(curl -sS -H "Authorization: Bearer $BENCH_TOKEN" "$SERVER_URL/api/v1/jobs/$JOB_ID/results" \
    | jq -s --argjson n "$CHUNKS" '$n - ([.[] | select(.output == {i: .index})] | length)')
  rate=$(calc "$CHUNKS / $(seconds_between "$(echo "$view" | jq -r .started_at)" "$(echo "$view" | jq -r .finished_at)")")
  relative=$(calc "100 * $rate / $BASE_RATE")
  health=$(cat "$BENCH_TMP/health.max" 2>/dev/null || echo "?")
  seen=$(jq -r '"\(.connections) / \(.closed_by_master)"' "$BENCH_TMP/attack.out" 2>/dev/null || echo "?")
  printf "| %-10s | %5s | %7s %% | %4s | %8s | %8s MiB | %9s | %17s | %6s |\n" \
    "$attack" "$n" "$(fmt "$relative" 0)" "$lost" "$(echo "$view" | jq -r .state)" \
    "$rss_before → $rss_after" "$(fmt "$(calc "$health * 1000")" 0) ms" "$seen" "$cpu"
  stop_server
  psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" >/dev/null
  BENCH_DB=""
}

run_cell() {
  local attack="$1" policy="fixed" lie_args=() bind="" slots=2 declared
  case "$attack" in
    none) ;;
    sybil) lie_args=(--attack sybil); bind="$one_network"; slots=256 ;;
    colluding-fixed) lie_args=(--sabotage colluding); bind="$distinct_bind" ;;
    colluding-adaptive) lie_args=(--sabotage colluding); bind="$distinct_bind"; policy=adaptive ;;
    sleeper) lie_args=(--attack sleeper --sleeper-after 40); bind="$distinct_bind"; policy=adaptive ;;
    rotate) lie_args=(--attack rotate --rotate-after 20 --sabotage colluding); bind="$distinct_bind"; policy=adaptive ;;
    release) lie_args=(--attack release); bind="$one_network"; slots=256 ;;
    drop) lie_args=(--attack drop --drop-hold-ms 500); bind="$one_network"; slots=64 ;;
    slots) lie_args=(--attack slots --attack-slots 256); bind="$one_network"; slots=256 ;;
    *) echo "bench: unknown attack $attack" >&2; exit 1 ;;
  esac
  # The honest grid runs first, and a warm-up job of 500 chunks gives the master answers of
  # its own to spot-check with (a grid that has run before has them).
  start_honest_grid
  local attacker_pid=""
  if [ "$attack" != none ]; then
    "$LOADGEN_BIN" --server "$SERVER_URL" --workers "$attackers" --saboteurs "$attackers" \
      --slots "$slots" --attacker-bind "$bind" --bind "$bind" "${lie_args[@]}" \
      --seed $(( SEED + 1 )) --duration-s 3600 \
      >"$BENCH_TMP/attackers.out" 2>"$BENCH_TMP/attackers.err" &
    attacker_pid=$!
    sleep 1
  fi
  jq -nc --argjson n "$CHUNKS" --arg p "$policy" \
    '{kernel: "echo", redundancy: 2, verification: $p, inputs: [range(0; $n) | {i: .}]}' \
    >"$BENCH_TMP/job.json"
  submit_job
  : >"$BENCH_TMP/health.max"
  watch_health & HEALTH_PID=$!
  wait_job "$JOB_ID" 900 1 || echo "bench: job $JOB_ID did not finish" >&2
  local first_done
  first_done="$(job_view "$JOB_ID")"
  # The master's own checks and backtracking may still reopen chunks after "done": wait until
  # it has checked every accepted chunk (at most 120 s), and the job is done again.
  for _ in $(seq 240); do
    [ "$(psql -qtA "$DB_URL" -c "SELECT count(*) FROM chunks WHERE job_id = $JOB_ID
         AND (state = 'open' OR (state = 'done' AND master_checked IS NULL))")" = 0 ] && break
    sleep 0.5
  done
  wait_job "$JOB_ID" 300 1 || true
  kill "$HEALTH_PID" 2>/dev/null; wait "$HEALTH_PID" 2>/dev/null || true; HEALTH_PID=""
  kill -INT "$LOADGEN_PID" 2>/dev/null; wait "$LOADGEN_PID" 2>/dev/null || true; LOADGEN_PID=""
  if [ -n "$attacker_pid" ]; then kill -INT "$attacker_pid" 2>/dev/null; wait "$attacker_pid" 2>/dev/null || true; fi

  local view wrong wrong_at_done failed replicas blacklisted rate relative rss health
  view="$(job_view "$JOB_ID")"
  wrong_at_done=$(psql -qtA "$DB_URL" -c "SELECT count(*) FROM chunks WHERE job_id = $JOB_ID AND revised > 0")
  wrong=$(curl -sS -H "Authorization: Bearer $BENCH_TOKEN" "$SERVER_URL/api/v1/jobs/$JOB_ID/results" \
    | jq -s '[.[] | select(.output != null and .output != {i: .index})] | length')
  failed=$(echo "$view" | jq .chunks.failed)
  replicas=$(psql -qtA "$DB_URL" -c "SELECT count(*) FROM replicas WHERE job_id = $JOB_ID")
  blacklisted=$(psql -qtA "$DB_URL" -c \
    "SELECT count(*) FROM workers WHERE id LIKE 'loadgen-$SEED-%' AND blacklisted_at IS NOT NULL")
  rate=$(calc "$CHUNKS / $(seconds_between "$(echo "$first_done" | jq -r .started_at)" "$(echo "$first_done" | jq -r .finished_at)")")
  [ -n "$BASE_RATE" ] || BASE_RATE="$rate"
  relative=$(calc "100 * $rate / $BASE_RATE")
  rss=$(( $(awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status") / 1024 ))
  health=$(cat "$BENCH_TMP/health.max" 2>/dev/null || echo "?")
  declared=$(calc "100 * $attackers * $slots / ($attackers * $slots + $HONEST * 4)")
  [ "$attack" = none ] && declared=0
  printf "| %-18s | %-8s | %5s %% | %5s | %7s | %6s | %14s | %17s | %7s %% | %8s | %9s |\n" \
    "$attack" "$policy" "$(fmt "$declared" 0)" "$wrong" "$wrong_at_done" "$failed" \
    "$(fmt "$(calc "$replicas / $CHUNKS")" 2)" "$blacklisted" "$(fmt "$relative" 0)" \
    "$rss MiB" "$(fmt "$(calc "$health * 1000")" 0) ms"
  stop_server
  psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" >/dev/null
  BENCH_DB=""
}

echo "honest: $HONEST workers x 4 slots on $HONEST networks; attackers: $attackers workers;" \
  "chunks per job: $CHUNKS (echo, redundancy 2); master on PostgreSQL trusting no network"
echo
echo "| attack             | policy   | attacker slots | wrong | revised | failed | replicas/chunk | honest blacklisted | honest rate | master RSS | /healthz max |"
echo "|--------------------|----------|----------------|-------|---------|--------|----------------|--------------------|-------------|------------|--------------|"
# A first run without attackers warms the machine up (page cache, PostgreSQL); the second is
# the reference the others are compared with.
run_cell none >/dev/null
BASE_RATE=""
run_cell none
echo "(honest rate without attackers: $(fmt "$BASE_RATE" 0) chunks/s)" >&2
for attack in $ATTACKS; do
  run_cell "$attack"
done

if [ -n "$RESOURCE_ATTACKS" ]; then
  echo
  echo "Resource attacks (issue 19), each beside the same honest grid; attacker: connections made / closed by the master"
  echo
  echo "| attack     | conns | honest rate | lost | job      | master RSS before → after | /healthz max | attacker conns / closed | attacker CPU (cores) |"
  echo "|------------|-------|-------------|------|----------|---------------------------|--------------|-------------------------|----------------------|"
  for attack in $RESOURCE_ATTACKS; do
    run_resource_cell "$attack"
  done
fi
