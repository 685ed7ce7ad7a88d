-- The grid's durable state. Every state change the master acknowledges is in these tables
-- first; the master's memory holds only caches that can be rebuilt from them.
--
-- Vocabulary: a job is a list of chunks (independent inputs); a replica is one assignment of a
-- chunk to one worker under a lease (its id is the lease id on the wire).

-- Submitter bearer tokens. Only the SHA-256 of a token is kept; the token is shown once.
CREATE TABLE tokens (
    id          BIGSERIAL PRIMARY KEY,
    token_hash  BYTEA NOT NULL CONSTRAINT tokens_hash_unique UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id             BIGSERIAL PRIMARY KEY,
    -- The submitter token that owns the job; NULL for jobs the admin submitted.
    owner_token_id BIGINT REFERENCES tokens (id),
    name           TEXT,
    kernel         TEXT NOT NULL,
    -- Distinct workers whose outputs must agree byte for byte before a chunk is accepted.
    redundancy     INT NOT NULL CHECK (redundancy BETWEEN 1 AND 5),
    -- Most results (agreeing or not) gathered for one chunk before it fails without quorum.
    max_replicas   INT NOT NULL CHECK (max_replicas >= redundancy),
    priority       INT NOT NULL,
    lease_seconds  INT NOT NULL CHECK (lease_seconds > 0),
    -- queued -> running -> done | failed; cancelled from queued or running.
    state          TEXT NOT NULL DEFAULT 'queued'
                   CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    chunk_count    INT NOT NULL,
    -- Decided chunks, kept as counters so finishing a job never scans its chunks.
    chunks_done    INT NOT NULL DEFAULT 0,
    chunks_failed  INT NOT NULL DEFAULT 0,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at     TIMESTAMPTZ,
    finished_at    TIMESTAMPTZ
);
CREATE INDEX jobs_by_owner ON jobs (owner_token_id, id);

CREATE TABLE chunks (
    job_id      BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx         INT NOT NULL,
    -- Copied from the job so the dispatch index alone orders ready chunks.
    priority    INT NOT NULL,
    -- Canonical JSON text of the chunk's input.
    input       TEXT NOT NULL,
    -- open -> done (quorum reached) | failed (agreed error, or no quorum) | cancelled.
    state       TEXT NOT NULL DEFAULT 'open'
                CHECK (state IN ('open', 'done', 'failed', 'cancelled')),
    -- Replicas to issue now. Decremented when leases are created, recomputed by the verifier
    -- whenever a replica of the chunk ends (result, expiry, release).
    wanted      INT NOT NULL CHECK (wanted >= 0),
    -- The accepted output (canonical JSON) and how many distinct workers returned it.
    output      TEXT,
    agreeing    INT,
    -- Why the chunk failed.
    error       TEXT,
    finished_at TIMESTAMPTZ,
    PRIMARY KEY (job_id, idx)
);
-- The feeder's query: open chunks that want replicas, highest priority first, then oldest job.
CREATE INDEX chunks_ready ON chunks (priority DESC, job_id, idx) WHERE state = 'open' AND wanted > 0;

CREATE TABLE replicas (
    -- The lease id quoted on the wire.
    id              BIGSERIAL PRIMARY KEY,
    job_id          BIGINT NOT NULL,
    chunk_idx       INT NOT NULL,
    worker_id       TEXT NOT NULL,
    -- leased -> returned (result in) | expired (deadline passed or worker gone)
    --        | released (worker gave it back) | revoked (chunk decided or job cancelled).
    state           TEXT NOT NULL DEFAULT 'leased'
                    CHECK (state IN ('leased', 'returned', 'expired', 'released', 'revoked')),
    issued_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    deadline        TIMESTAMPTZ NOT NULL,
    returned_at     TIMESTAMPTZ,
    -- SHA-256 of the outcome (see grid_protocol::outcome_digest) and its canonical text.
    outcome_digest  BYTEA,
    outcome_is_error BOOLEAN,
    outcome         TEXT,
    -- Set once the chunk is decided: valid (agrees with the accepted outcome) or invalid.
    verdict         TEXT CHECK (verdict IN ('valid', 'invalid')),
    FOREIGN KEY (job_id, chunk_idx) REFERENCES chunks (job_id, idx) ON DELETE CASCADE
);
-- Never two live or returned replicas of one chunk on one worker identity: the quorum needs
-- distinct workers. Expired and released replicas do not count, so a worker that lost its
-- connection may compute the chunk again.
CREATE UNIQUE INDEX replicas_distinct_workers ON replicas (job_id, chunk_idx, worker_id)
    WHERE state IN ('leased', 'returned');
CREATE INDEX replicas_by_chunk ON replicas (job_id, chunk_idx);
CREATE INDEX replicas_leased_by_deadline ON replicas (deadline) WHERE state = 'leased';

-- Every worker identity ever seen (reputation builds on this).
CREATE TABLE workers (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    first_seen  TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen   TIMESTAMPTZ NOT NULL DEFAULT now()
);
