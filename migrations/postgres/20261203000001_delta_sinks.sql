-- Delta Lake sinks (server/src/lakehouse): a job may name a Delta table that its results are
-- appended to, in one commit, once it finishes. The commit carries the Delta transaction
-- identifier `grid-server/job-<id>` (a `txn` action), so a table that already holds it is not
-- written again: an export interrupted after its commit, or run by two masters at once, lands
-- exactly once.
--
-- sink              the table's URI (file:// or s3://), checked against --sink-root at submit
-- export_state      NULL without a sink; pending, done, failed (given up, see export_error)
--                   or skipped (the job was cancelled)
-- export_master     the master exporting it now (masters.id); a claim by a master whose
--                   heartbeat is stale is taken over
-- export_attempts   claims so far (a failed attempt is retried after a back-off, at most 5)
-- export_not_before no claim before this (the back-off after a failed attempt)
-- export_error      why the last attempt failed
-- export_version    the table version of the commit that holds the job
ALTER TABLE jobs ADD COLUMN sink TEXT;
ALTER TABLE jobs ADD COLUMN export_state TEXT
    CHECK (export_state IN ('pending', 'done', 'failed', 'skipped'));
ALTER TABLE jobs ADD COLUMN export_master TEXT;
ALTER TABLE jobs ADD COLUMN export_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN export_not_before TIMESTAMPTZ;
ALTER TABLE jobs ADD COLUMN export_error TEXT;
ALTER TABLE jobs ADD COLUMN export_version BIGINT;
ALTER TABLE jobs ADD COLUMN exported_at TIMESTAMPTZ;

-- The exporters' poll looks at pending exports only.
CREATE INDEX jobs_export_pending ON jobs (id) WHERE export_state = 'pending';
