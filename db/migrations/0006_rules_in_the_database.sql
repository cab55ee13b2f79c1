-- 0006: rules every statement must follow, written once, in the database.

-- The dispatcher's longest sleep. A statement that leaves a pending task due sooner than this
-- wakes it (below); next_wake never answers more than this. Its one home.
CREATE FUNCTION at_wake_horizon_seconds() RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS 'SELECT 1.0::double precision';

-- Whether a task that has made `attempts` of `max_attempts` may be tried again.
CREATE FUNCTION at_attempts_remain(attempts integer, max_attempts integer) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS 'SELECT attempts < max_attempts';

-- "A task due soon is waiting" wakes the dispatcher, whichever statement wrote it: a create, a
-- batch, a reschedule, a retry, a recovered lease or a released hand-off. Statement-level, and
-- only when such a row is there, so bulk creates of later tasks notify nobody (NOTIFY takes a
-- lock at commit). The notification is delivered when the transaction commits.
CREATE FUNCTION scheduled_tasks_wake_dispatcher() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows
               WHERE status = 'pending' AND queued_until IS NULL
                 AND execute_at <= now() + make_interval(secs => at_wake_horizon_seconds())) THEN
        PERFORM pg_notify('at_task_due_soon', '');
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER scheduled_tasks_wake_on_insert AFTER INSERT ON scheduled_tasks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION scheduled_tasks_wake_dispatcher();
CREATE TRIGGER scheduled_tasks_wake_on_update AFTER UPDATE ON scheduled_tasks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION scheduled_tasks_wake_dispatcher();
