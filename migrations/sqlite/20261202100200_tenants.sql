-- The embedded (SQLite) form of ../postgres/20261202100200_tenants.sql; see that file for the
-- commentary.
CREATE TABLE tenants (
    token_id                   INTEGER PRIMARY KEY REFERENCES tokens (id) ON DELETE CASCADE,
    weight                     INTEGER NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 1000),
    max_open_chunks            INTEGER CHECK (max_open_chunks >= 0),
    max_module_bytes           INTEGER CHECK (max_module_bytes >= 0),
    max_submissions_per_minute INTEGER CHECK (max_submissions_per_minute >= 0),
    module_bytes               INTEGER NOT NULL DEFAULT 0 CHECK (module_bytes >= 0),
    updated_at                 TEXT
);
INSERT INTO tenants (token_id, module_bytes)
SELECT uploaded_by, SUM(size) FROM modules WHERE uploaded_by IS NOT NULL GROUP BY uploaded_by;

ALTER TABLE chunks ADD COLUMN tenant INTEGER NOT NULL DEFAULT 0;
UPDATE chunks SET tenant = (SELECT j.owner_token_id FROM jobs j WHERE j.id = chunks.job_id)
WHERE job_id IN (SELECT id FROM jobs WHERE owner_token_id IS NOT NULL);
CREATE INDEX chunks_ready_by_tenant ON chunks (tenant, priority DESC, job_id, idx)
    WHERE state = 'open' AND wanted > 0;
DROP INDEX chunks_ready;

CREATE INDEX jobs_active_by_owner ON jobs (owner_token_id) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_active_by_program ON jobs (kernel) WHERE state IN ('queued', 'running');

ALTER TABLE jobs ADD COLUMN results_expired_at TEXT;
ALTER TABLE jobs ADD COLUMN results_purged_at TEXT;
ALTER TABLE jobs ADD COLUMN kept_replicas_issued INTEGER;
ALTER TABLE jobs ADD COLUMN kept_replicas_returned INTEGER;
ALTER TABLE jobs ADD COLUMN kept_replicas_invalid INTEGER;
ALTER TABLE jobs ADD COLUMN kept_replicas_expired INTEGER;
CREATE INDEX jobs_retention ON jobs (finished_at)
    WHERE finished_at IS NOT NULL AND results_purged_at IS NULL;
