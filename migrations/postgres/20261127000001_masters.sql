-- Several masters may share this database (scale-out and failover). Each running master has a
-- row here, heartbeated every second by its scheduler; every lease records the master whose
-- session holds it. A master whose heartbeat is older than 10 seconds is dead: any master's
-- sweep expires its leases so the chunks are reissued.
CREATE TABLE masters (
    id            TEXT PRIMARY KEY,
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- NULL for leases issued before this migration: treated as held by a dead master.
ALTER TABLE replicas ADD COLUMN master_id TEXT;
