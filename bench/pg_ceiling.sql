-- pgbench script for bench/throughput.sh: the raw PostgreSQL ceiling of batched
-- claim-and-complete. One transaction claims 100 ready rows with FOR UPDATE SKIP LOCKED (so
-- concurrent clients never wait on each other) and completes them with a result, as a
-- scheduler round would with 100 results. Rows per second = 100 x transactions per second.
\set batch random(1, 2000000000)
BEGIN;
UPDATE bench_queue SET state = 'leased', batch = :batch
 WHERE id IN (SELECT id FROM bench_queue WHERE state = 'ready'
              ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED);
UPDATE bench_queue SET state = 'done', result = '{"i":1}', done_at = now()
 WHERE batch = :batch AND state = 'leased';
COMMIT;
