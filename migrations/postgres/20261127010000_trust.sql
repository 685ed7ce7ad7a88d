-- Trust without doubling the work (see docs/trust.md).
--
-- Reputation per worker identity: validated results in a row since its last invalid one,
-- totals, and the blacklist. A blacklisted identity gets no more work, and every chunk its
-- word helped accept is verified again (backtracking).
ALTER TABLE workers ADD COLUMN consecutive_valid INT NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN valid_count INT NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN invalid_count INT NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN blacklisted_at TIMESTAMPTZ;
ALTER TABLE workers ADD COLUMN blacklist_reason TEXT;

-- fixed: every chunk needs `redundancy` agreeing results. adaptive: a trusted worker's result
-- may be accepted alone, spot-checked at random at a rate that falls as its trust grows.
ALTER TABLE jobs ADD COLUMN verification TEXT NOT NULL DEFAULT 'fixed'
    CHECK (verification IN ('fixed', 'adaptive'));
-- Chunks reopened after acceptance because a worker behind them was caught lying.
ALTER TABLE jobs ADD COLUMN chunks_revised INT NOT NULL DEFAULT 0;

-- Adaptive jobs: agreeing results this chunk needs, fixed when its first result arrives
-- (1 = accepted on a trusted worker's word alone). NULL until then, and for fixed jobs.
ALTER TABLE chunks ADD COLUMN quorum INT;
-- The worker whose word alone accepted the chunk (adaptive), for backtracking.
ALTER TABLE chunks ADD COLUMN accepted_alone_by TEXT;
-- Digest of the accepted outcome: spot-check ringers are judged against it.
ALTER TABLE chunks ADD COLUMN output_digest BYTEA;
-- Times the chunk was reopened by backtracking.
ALTER TABLE chunks ADD COLUMN revised INT NOT NULL DEFAULT 0;

-- A ringer is a replica of an already-accepted chunk sent to a worker as a spot-check: it is
-- indistinguishable on the wire, judged against the accepted digest, and feeds reputation
-- only; it never counts towards its chunk's quorum.
ALTER TABLE replicas ADD COLUMN ringer BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX chunks_ringer_pool ON chunks (job_id, idx) WHERE state = 'done' AND agreeing >= 2;
