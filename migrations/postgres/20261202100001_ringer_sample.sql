-- Spot-checks sampled without a scan (review M11): the ringer pool was `ORDER BY random()` over
-- every accepted chunk the master had checked, every 5 s (every 250 ms while empty). Each such
-- chunk now gets a random key when the master finds it agreed; the pool is read from a random
-- point of a partial index on that key, so a refresh costs one index range read.
ALTER TABLE chunks ADD COLUMN ringer_key DOUBLE PRECISION;
UPDATE chunks SET ringer_key = random() WHERE master_checked = 'agreed';
CREATE INDEX chunks_ringer_sample ON chunks (ringer_key)
    WHERE state = 'done' AND master_checked = 'agreed';
