-- Weighted fair share between submitters (server/src/scheduler/dispatch.rs): each token's
-- share of the workers, set by the admin (PATCH /api/v1/tokens/{id}). The admin's own jobs
-- count as one more tenant of weight 1.
ALTER TABLE tokens ADD COLUMN weight INTEGER NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 1000);

-- The fair-share load lists unfinished jobs per tenant; this keeps it off the job history.
CREATE INDEX jobs_unfinished ON jobs (owner_token_id, priority DESC, id)
    WHERE state IN ('queued', 'running');

-- Masters sharing a database poll for cancellations made through the others, so that they
-- revoke the leases their own workers hold (review M7).
CREATE INDEX jobs_cancelled ON jobs (finished_at) WHERE state = 'cancelled';
