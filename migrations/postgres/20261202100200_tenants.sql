-- Tenants: quotas, fair share and retention (README "Tenants: quotas, fair share, retention";
-- server/src/quota.rs, server/src/scheduler/dispatch.rs, server/src/retention.rs).
--
-- A tenant is a submitter token. Its row holds what the admin set with
-- PUT /api/v1/tokens/{id}/share: its fair-share weight and its quota overrides (NULL: the
-- master's default; 0: no limit), and the bytes of the modules it uploaded, kept as a counter so
-- that an upload never sums the tenant's modules. A token without a row has weight 1, the
-- defaults, and no modules.
CREATE TABLE tenants (
    token_id                   BIGINT PRIMARY KEY REFERENCES tokens (id) ON DELETE CASCADE,
    weight                     INT NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 1000),
    max_open_chunks            BIGINT CHECK (max_open_chunks >= 0),
    max_module_bytes           BIGINT CHECK (max_module_bytes >= 0),
    max_submissions_per_minute INT CHECK (max_submissions_per_minute >= 0),
    module_bytes               BIGINT NOT NULL DEFAULT 0 CHECK (module_bytes >= 0),
    updated_at                 TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO tenants (token_id, module_bytes)
SELECT uploaded_by, SUM(size) FROM modules WHERE uploaded_by IS NOT NULL GROUP BY uploaded_by;

-- The tenant whose job a chunk belongs to (the job's owner_token_id, 0 for the admin), copied
-- from the job like `priority`, so that the dispatch index alone lists each tenant's ready
-- chunks in its own order: the feeder takes a share of every backlogged tenant's chunks instead
-- of the first few thousand of whichever job is oldest.
ALTER TABLE chunks ADD COLUMN tenant BIGINT NOT NULL DEFAULT 0;
UPDATE chunks SET tenant = j.owner_token_id
FROM jobs j WHERE j.id = chunks.job_id AND j.owner_token_id IS NOT NULL;
CREATE INDEX chunks_ready_by_tenant ON chunks (tenant, priority DESC, job_id, idx)
    WHERE state = 'open' AND wanted > 0;
-- Replaced by chunks_ready_by_tenant: nothing orders ready chunks across tenants any more.
DROP INDEX chunks_ready;

-- Queued and running jobs by owner: the tenants with work (the feeder) and a tenant's open
-- chunks (its quota), read from the jobs' counters. Each such job has an open chunk, so this
-- reads at most as many rows as the tenant has open chunks.
CREATE INDEX jobs_active_by_owner ON jobs (owner_token_id) WHERE state IN ('queued', 'running');
-- Queued and running jobs by program: a module in use cannot be deleted.
CREATE INDEX jobs_active_by_program ON jobs (kernel) WHERE state IN ('queued', 'running');

-- Retention (--retention-days): the results of a job finished long enough ago are deleted in
-- bounded batches. `results_expired_at` is set first (from then on its results answer 410, and
-- the job's replica counters are kept here, since its replicas are about to go);
-- `results_purged_at` once its chunks and replicas are all gone. The job row itself stays.
ALTER TABLE jobs ADD COLUMN results_expired_at TIMESTAMPTZ;
ALTER TABLE jobs ADD COLUMN results_purged_at TIMESTAMPTZ;
ALTER TABLE jobs ADD COLUMN kept_replicas_issued BIGINT;
ALTER TABLE jobs ADD COLUMN kept_replicas_returned BIGINT;
ALTER TABLE jobs ADD COLUMN kept_replicas_invalid BIGINT;
ALTER TABLE jobs ADD COLUMN kept_replicas_expired BIGINT;
CREATE INDEX jobs_retention ON jobs (finished_at)
    WHERE finished_at IS NOT NULL AND results_purged_at IS NULL;
