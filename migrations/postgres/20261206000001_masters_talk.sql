-- Other masters sharing this database hear at once (LISTEN grid_jobs, see
-- server/src/store/changes.rs) when a job is submitted, reopened by backtracking or cancelled,
-- instead of at their next one-second sweep. The notice is sent when the transaction commits.
-- Only real transitions notify: the counters' UPDATE sets `state` on every review round, and
-- its value mostly stays the same.
CREATE FUNCTION grid_notify_job_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('grid_jobs', 'work:' || NEW.id);
    ELSIF NEW.state IS DISTINCT FROM OLD.state THEN
        IF NEW.state = 'cancelled' THEN
            PERFORM pg_notify('grid_jobs', 'cancelled:' || NEW.id);
        ELSIF OLD.state IN ('done', 'failed') AND NEW.state IN ('queued', 'running') THEN
            PERFORM pg_notify('grid_jobs', 'work:' || NEW.id);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_notify_change
    AFTER INSERT OR UPDATE OF state ON jobs
    FOR EACH ROW EXECUTE FUNCTION grid_notify_job_change();

-- The WebSocket URL each master is reached at (`--advertise-url`), which masters name to their
-- workers (in the welcome, and at GET /api/v1/masters) so that a worker given one URL can fail
-- over to the others. NULL: not advertised (no URL known, or draining).
ALTER TABLE masters ADD COLUMN url TEXT;
