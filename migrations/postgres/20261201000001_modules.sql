-- Uploaded WebAssembly task modules (POST /api/v1/modules; the ABI is docs/task-abi.md).
--
-- Content addressed: the id is 'sha256:' and the hex SHA-256 of the bytes, so uploading the
-- same module twice stores it once, and a worker can check what it downloads. Modules are
-- checked against the ABI before they are stored and are never changed afterwards.
CREATE TABLE modules (
    id           TEXT PRIMARY KEY,
    bytes        BYTEA NOT NULL,
    size         INT NOT NULL,
    -- The submitter token that first uploaded it; NULL for the admin.
    uploaded_by  BIGINT REFERENCES tokens (id),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- From this migration on, `jobs.kernel` names the job's program: a built-in kernel, or the id
-- of an uploaded module ('sha256:...', which no kernel name can be). Module jobs also carry the
-- per-chunk limits every worker enforces; both are NULL for kernel jobs.
ALTER TABLE jobs ADD COLUMN timeout_ms INT CHECK (timeout_ms > 0);
ALTER TABLE jobs ADD COLUMN max_memory_mb INT CHECK (max_memory_mb > 0);
