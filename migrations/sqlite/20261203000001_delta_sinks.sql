-- The embedded (SQLite) form of ../postgres/20261203000001_delta_sinks.sql; see that file for
-- the commentary. Times are RFC 3339 text, as elsewhere in this dialect.
ALTER TABLE jobs ADD COLUMN sink TEXT;
ALTER TABLE jobs ADD COLUMN export_state TEXT
    CHECK (export_state IN ('pending', 'done', 'failed', 'skipped'));
ALTER TABLE jobs ADD COLUMN export_master TEXT;
ALTER TABLE jobs ADD COLUMN export_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN export_not_before TEXT;
ALTER TABLE jobs ADD COLUMN export_error TEXT;
ALTER TABLE jobs ADD COLUMN export_version INTEGER;
ALTER TABLE jobs ADD COLUMN exported_at TEXT;

CREATE INDEX jobs_export_pending ON jobs (id) WHERE export_state = 'pending';
