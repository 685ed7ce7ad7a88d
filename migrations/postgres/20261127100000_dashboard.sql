-- What the dashboard, the job events and the volunteers' credit read (server/src/store/insights.rs).

-- The job events stream (GET /api/v1/jobs/{id}/events) tails a job's chunks by the time they
-- were decided; without this index every poll would scan all the job's chunks.
CREATE INDEX chunks_finished ON chunks (job_id, finished_at) WHERE finished_at IS NOT NULL;

-- Display names volunteers chose for themselves (PUT /api/v1/volunteers/me). Keyed by the
-- worker identity, which is also the proof of who may set it; a name is shown instead of the
-- identity's pseudonym on the leaderboard. Validated (length, no control or formatting
-- characters) by the API before it gets here; pages escape it when they show it.
CREATE TABLE volunteer_names (
    worker_id     TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 32),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Credit (verified compute time) is settled per job once the job is finished: its valid
-- replicas are summed into volunteer_credit and the job is recorded in credited_jobs, in one
-- transaction (a second master finds the row and skips the job). Jobs not yet settled are
-- added up live when credit is read, so the cost of reading credit follows the running work,
-- not the whole history. See server/src/store/insights.rs.
CREATE TABLE volunteer_credit (
    worker_id  TEXT PRIMARY KEY,
    -- Valid replicas returned.
    results    BIGINT NOT NULL,
    -- Their chunks' compute time, in milliseconds.
    credit_ms  DOUBLE PRECISION NOT NULL
);
CREATE TABLE credited_jobs (
    job_id       BIGINT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    credited_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
