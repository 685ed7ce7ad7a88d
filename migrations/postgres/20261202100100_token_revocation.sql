-- Submitter tokens can be named, listed and revoked (issue 19). A revoked token's row stays:
-- its jobs and modules still point at it, and the list shows when it was revoked.
-- `last_used_at` is written when a master looks the token up in the database, which it does
-- at most once per token per cache lifetime (a few seconds), not on every request.
ALTER TABLE tokens ADD COLUMN label TEXT;
ALTER TABLE tokens ADD COLUMN last_used_at TIMESTAMPTZ;
ALTER TABLE tokens ADD COLUMN revoked_at TIMESTAMPTZ;
