-- See ../postgres/20261127010000_trust.sql.
ALTER TABLE workers ADD COLUMN consecutive_valid INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN valid_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN invalid_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN blacklisted_at TEXT;
ALTER TABLE workers ADD COLUMN blacklist_reason TEXT;

ALTER TABLE jobs ADD COLUMN verification TEXT NOT NULL DEFAULT 'fixed'
    CHECK (verification IN ('fixed', 'adaptive'));
ALTER TABLE jobs ADD COLUMN chunks_revised INTEGER NOT NULL DEFAULT 0;

ALTER TABLE chunks ADD COLUMN quorum INTEGER;
ALTER TABLE chunks ADD COLUMN accepted_alone_by TEXT;
ALTER TABLE chunks ADD COLUMN output_digest BLOB;
ALTER TABLE chunks ADD COLUMN revised INTEGER NOT NULL DEFAULT 0;

ALTER TABLE replicas ADD COLUMN ringer INTEGER NOT NULL DEFAULT 0;
CREATE INDEX chunks_ringer_pool ON chunks (job_id, idx) WHERE state = 'done' AND agreeing >= 2;
