-- The embedded (SQLite) form of ../postgres/20261201000001_modules.sql; see that file for the
-- commentary.
CREATE TABLE modules (
    id           TEXT PRIMARY KEY,
    bytes        BLOB NOT NULL,
    size         INTEGER NOT NULL,
    uploaded_by  INTEGER REFERENCES tokens (id),
    created_at   TEXT NOT NULL
);

ALTER TABLE jobs ADD COLUMN timeout_ms INTEGER CHECK (timeout_ms > 0);
ALTER TABLE jobs ADD COLUMN max_memory_mb INTEGER CHECK (max_memory_mb > 0);
