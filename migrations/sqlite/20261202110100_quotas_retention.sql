-- The embedded (SQLite) form of ../postgres/20261202110100_quotas_retention.sql; see that file
-- for the commentary.
CREATE TABLE module_uploads (
    module_id   TEXT NOT NULL REFERENCES modules (id) ON DELETE CASCADE,
    uploader    INTEGER NOT NULL,
    size        INTEGER NOT NULL CHECK (size >= 0),
    created_at  TEXT NOT NULL,
    PRIMARY KEY (module_id, uploader)
);
CREATE INDEX module_uploads_by_uploader ON module_uploads (uploader);
INSERT INTO module_uploads (module_id, uploader, size, created_at)
SELECT id, COALESCE(uploaded_by, 0), size, created_at FROM modules;

CREATE INDEX jobs_unfinished_by_owner ON jobs (owner_token_id)
    WHERE state IN ('queued', 'running');
CREATE INDEX jobs_unfinished_by_program ON jobs (kernel)
    WHERE state IN ('queued', 'running');

ALTER TABLE jobs ADD COLUMN results_deleted_at TEXT;
ALTER TABLE jobs ADD COLUMN results_purged_at TEXT;
CREATE INDEX jobs_retention ON jobs (finished_at)
    WHERE finished_at IS NOT NULL AND results_purged_at IS NULL;
