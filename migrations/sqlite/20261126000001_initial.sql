-- The embedded (SQLite) form of ../postgres/20261126000001_initial.sql: same tables, same
-- meaning; see that file for the commentary. Differences: timestamps are RFC 3339 text written
-- by the master, lease deadlines are Unix milliseconds, digests are BLOBs.

CREATE TABLE tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash  BLOB NOT NULL CONSTRAINT tokens_hash_unique UNIQUE,
    created_at  TEXT NOT NULL
);

CREATE TABLE jobs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_token_id INTEGER REFERENCES tokens (id),
    name           TEXT,
    kernel         TEXT NOT NULL,
    redundancy     INTEGER NOT NULL CHECK (redundancy BETWEEN 1 AND 5),
    max_replicas   INTEGER NOT NULL CHECK (max_replicas >= redundancy),
    priority       INTEGER NOT NULL,
    lease_seconds  INTEGER NOT NULL CHECK (lease_seconds > 0),
    state          TEXT NOT NULL DEFAULT 'queued'
                   CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    chunk_count    INTEGER NOT NULL,
    chunks_done    INTEGER NOT NULL DEFAULT 0,
    chunks_failed  INTEGER NOT NULL DEFAULT 0,
    created_at     TEXT NOT NULL,
    started_at     TEXT,
    finished_at    TEXT
);
CREATE INDEX jobs_by_owner ON jobs (owner_token_id, id);

CREATE TABLE chunks (
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    priority    INTEGER NOT NULL,
    input       TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'open'
                CHECK (state IN ('open', 'done', 'failed', 'cancelled')),
    wanted      INTEGER NOT NULL CHECK (wanted >= 0),
    output      TEXT,
    agreeing    INTEGER,
    error       TEXT,
    finished_at TEXT,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE INDEX chunks_ready ON chunks (priority DESC, job_id, idx) WHERE state = 'open' AND wanted > 0;

CREATE TABLE replicas (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id           INTEGER NOT NULL,
    chunk_idx        INTEGER NOT NULL,
    worker_id        TEXT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'leased'
                     CHECK (state IN ('leased', 'returned', 'expired', 'released', 'revoked')),
    issued_at        TEXT NOT NULL,
    deadline_ms      INTEGER NOT NULL,
    returned_at      TEXT,
    outcome_digest   BLOB,
    outcome_is_error INTEGER,
    outcome          TEXT,
    verdict          TEXT CHECK (verdict IN ('valid', 'invalid')),
    FOREIGN KEY (job_id, chunk_idx) REFERENCES chunks (job_id, idx) ON DELETE CASCADE
);
CREATE UNIQUE INDEX replicas_distinct_workers ON replicas (job_id, chunk_idx, worker_id)
    WHERE state IN ('leased', 'returned');
CREATE INDEX replicas_by_chunk ON replicas (job_id, chunk_idx);
CREATE INDEX replicas_leased_by_deadline ON replicas (deadline_ms) WHERE state = 'leased';

CREATE TABLE workers (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    first_seen  TEXT NOT NULL,
    last_seen   TEXT NOT NULL
);
