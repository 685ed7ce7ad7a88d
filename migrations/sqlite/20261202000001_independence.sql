-- Independent replicas (docs/trust.md, "Quorums from independent workers").
--
-- The origin of a replica: the network its worker connected from (IPv4 /24, IPv6 /48 by
-- default, e.g. '198.51.100.0/24'), or the worker's identity when it connected from one of the
-- host's trusted networks. Network keys contain '/', which identities cannot, so the two never
-- collide. Two replicas of one chunk never share an origin, whatever became of the first: a
-- worker (or its network) that released, dropped or let a lease of a chunk expire never gets
-- that chunk again, and the results of one quorum come from distinct networks. Only revoked
-- replicas (the chunk was decided, or reopened by backtracking) free their origin. Rows from
-- before this migration have no origin and are not constrained.
ALTER TABLE replicas ADD COLUMN origin TEXT;
CREATE UNIQUE INDEX replicas_distinct_origins ON replicas (job_id, chunk_idx, origin)
    WHERE state <> 'revoked';

-- Accepted chunks of built-in kernels that the master computed itself: 'agreed' means the
-- accepted output is known independently of every worker, so the chunk may serve as a
-- spot-check that earns trust; 'disagreed' means the accepted output was wrong (it is reopened).
ALTER TABLE chunks ADD COLUMN master_checked TEXT
    CHECK (master_checked IN ('agreed', 'disagreed'));
-- The master's own checker reads the most recently accepted unchecked kernel chunks.
CREATE INDEX chunks_master_unchecked ON chunks (finished_at)
    WHERE state = 'done' AND master_checked IS NULL;
