-- Replica counters on the jobs row (server/src/store/counters.rs). A job view used to count
-- every replica of the job on each read (GET /jobs/{id}, GET /jobs, cancel, the start of results
-- and events); the store's commit now keeps these up to date in the same transaction that
-- changes a replica. Spot-check ringers are not counted, as before.
--   replicas_issued: leases ever created; replicas_returned: results received;
--   replicas_invalid: results judged invalid (withdrawn verdicts are subtracted again);
--   replicas_expired: leases that ended without a result (deadline passed, worker gone).
ALTER TABLE jobs
    ADD COLUMN replicas_issued BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN replicas_returned BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN replicas_invalid BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN replicas_expired BIGINT NOT NULL DEFAULT 0;

-- Backfill from the replicas of existing jobs.
UPDATE jobs j
SET replicas_issued = r.issued,
    replicas_returned = r.returned,
    replicas_invalid = r.invalid,
    replicas_expired = r.expired
FROM (
    SELECT job_id,
           count(*) AS issued,
           count(*) FILTER (WHERE state = 'returned') AS returned,
           count(*) FILTER (WHERE verdict = 'invalid') AS invalid,
           count(*) FILTER (WHERE state = 'expired') AS expired
    FROM replicas WHERE NOT ringer GROUP BY job_id
) r
WHERE j.id = r.job_id;
