-- The embedded form of ../postgres/20261202100100_token_revocation.sql (timestamps as RFC 3339
-- text written by the master).
ALTER TABLE tokens ADD COLUMN label TEXT;
ALTER TABLE tokens ADD COLUMN last_used_at TEXT;
ALTER TABLE tokens ADD COLUMN revoked_at TEXT;
