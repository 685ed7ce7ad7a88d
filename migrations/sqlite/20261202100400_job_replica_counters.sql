-- Replica counters on the jobs row (server/src/store/counters.rs). A job view used to count
-- every replica of the job on each read (GET /jobs/{id}, GET /jobs, cancel, the start of results
-- and events); the store's commit now keeps these up to date in the same transaction that
-- changes a replica. Spot-check ringers are not counted, as before.
--   replicas_issued: leases ever created; replicas_returned: results received;
--   replicas_invalid: results judged invalid (withdrawn verdicts are subtracted again);
--   replicas_expired: leases that ended without a result (deadline passed, worker gone).
ALTER TABLE jobs ADD COLUMN replicas_issued INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN replicas_returned INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN replicas_invalid INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN replicas_expired INTEGER NOT NULL DEFAULT 0;

-- Backfill from the replicas of existing jobs.
UPDATE jobs
SET replicas_issued = (SELECT count(*) FROM replicas r WHERE r.job_id = jobs.id AND NOT r.ringer),
    replicas_returned = (SELECT count(*) FROM replicas r
                         WHERE r.job_id = jobs.id AND NOT r.ringer AND r.state = 'returned'),
    replicas_invalid = (SELECT count(*) FROM replicas r
                        WHERE r.job_id = jobs.id AND NOT r.ringer AND r.verdict = 'invalid'),
    replicas_expired = (SELECT count(*) FROM replicas r
                        WHERE r.job_id = jobs.id AND NOT r.ringer AND r.state = 'expired');
