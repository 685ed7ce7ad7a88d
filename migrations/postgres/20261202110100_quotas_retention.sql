-- Tenant quotas, module deletion and retention (README "Tenant quotas and retention";
-- server/src/quota.rs, server/src/retention.rs, DELETE /api/v1/modules/{id}).
--
-- Who holds a module. `modules` is content addressed, so several submitters uploading the same
-- bytes share one row; each of them holds it here, and each is charged its size against its
-- module-byte quota (`size` is copied so the quota sum reads this table alone). `uploader` is
-- the submitter token's id, 0 for the admin (tokens are revoked, never deleted, so no foreign
-- key is needed). Deleting a module removes the caller's row; the bytes go with the last row.
CREATE TABLE module_uploads (
    module_id   TEXT NOT NULL REFERENCES modules (id) ON DELETE CASCADE,
    uploader    BIGINT NOT NULL,
    size        BIGINT NOT NULL CHECK (size >= 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (module_id, uploader)
);
CREATE INDEX module_uploads_by_uploader ON module_uploads (uploader);
-- Modules stored before this migration are held by their first uploader (the only one known).
INSERT INTO module_uploads (module_id, uploader, size, created_at)
SELECT id, COALESCE(uploaded_by, 0), size, created_at FROM modules;

-- A submitter's open chunks (its quota) are summed from the counters of its queued and running
-- jobs, never by counting chunks; and a module in use by an unfinished job cannot be deleted.
CREATE INDEX jobs_unfinished_by_owner ON jobs (owner_token_id)
    WHERE state IN ('queued', 'running');
CREATE INDEX jobs_unfinished_by_program ON jobs (kernel)
    WHERE state IN ('queued', 'running');

-- Retention (--retention-days). `results_deleted_at` is set when the retention starts deleting
-- a finished job's replicas and chunks (its volunteers' credit is settled in that same
-- transaction); from then on GET /jobs/{id}/results answers 410 and the job view shows it. The
-- job row and its counters stay. `results_purged_at` is set once the last row is gone.
ALTER TABLE jobs ADD COLUMN results_deleted_at TIMESTAMPTZ;
ALTER TABLE jobs ADD COLUMN results_purged_at TIMESTAMPTZ;
CREATE INDEX jobs_retention ON jobs (finished_at)
    WHERE finished_at IS NOT NULL AND results_purged_at IS NULL;
