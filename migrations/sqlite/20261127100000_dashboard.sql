-- The embedded form of ../postgres/20261127100000_dashboard.sql; see that file for the
-- commentary.

CREATE INDEX chunks_finished ON chunks (job_id, finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE volunteer_names (
    worker_id     TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL CHECK (length(display_name) BETWEEN 1 AND 32),
    updated_at    TEXT NOT NULL
);

CREATE TABLE volunteer_credit (
    worker_id  TEXT PRIMARY KEY,
    results    INTEGER NOT NULL,
    credit_ms  REAL NOT NULL
);
CREATE TABLE credited_jobs (
    job_id       INTEGER PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    credited_at  TEXT NOT NULL
);
