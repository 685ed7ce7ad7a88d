-- See ../postgres/20261127000001_masters.sql. The embedded database serves one master, so
-- these columns are kept for parity; leases of a previous process are expired at start-up.
CREATE TABLE masters (
    id            TEXT PRIMARY KEY,
    started_at    TEXT NOT NULL,
    heartbeat_at  TEXT NOT NULL
);

ALTER TABLE replicas ADD COLUMN master_id TEXT;
