-- 0012: exact totals for GET /api/v1/tasks with execute_after / execute_before, without counting
-- every row of a wide range (see docs/DECISIONS.md, due-time filters). One counter per (UTC day of
-- execute_at, status, task_type), kept by statement-level triggers in the same transaction as the
-- change, as 0002's counters are (and spread over 16 slots by backend for the same reason). A total
-- sums the whole days inside the range and counts only the two partial days at its edges, on an
-- index below; the days that hold matching tasks are also where a page looks.
CREATE TABLE scheduled_task_due_day_counts (
    due_day   TIMESTAMPTZ NOT NULL,  -- at_due_day(execute_at)
    status    TEXT        NOT NULL,
    task_type VARCHAR(50) NOT NULL,
    slot      SMALLINT    NOT NULL,
    n         BIGINT      NOT NULL,
    PRIMARY KEY (due_day, status, task_type, slot)
);

-- The UTC day an execute_at falls in; the one definition the triggers and list_tasks share.
CREATE FUNCTION at_due_day(at TIMESTAMPTZ) RETURNS TIMESTAMPTZ
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN date_bin(interval '1 day', at, TIMESTAMPTZ '2000-01-01 00:00:00+00');

CREATE FUNCTION scheduled_task_due_day_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO scheduled_task_due_day_counts AS c (due_day, status, task_type, slot, n)
        SELECT at_due_day(execute_at), status, task_type, pg_backend_pid() % 16, count(*) FROM new_rows
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (due_day, status, task_type, slot) DO UPDATE SET n = c.n + excluded.n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO scheduled_task_due_day_counts AS c (due_day, status, task_type, slot, n)
        SELECT at_due_day(execute_at), status, task_type, pg_backend_pid() % 16, -count(*) FROM old_rows
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (due_day, status, task_type, slot) DO UPDATE SET n = c.n + excluded.n;
    ELSIF TG_OP = 'UPDATE' THEN
        -- A PATCH moves execute_at, a claim or an outcome changes status: -1 where a row was, +1
        -- where it is; updates that change neither (leases, hand-offs) net to nothing and write nothing.
        INSERT INTO scheduled_task_due_day_counts AS c (due_day, status, task_type, slot, n)
        SELECT d.due_day, d.status, d.task_type, pg_backend_pid() % 16, sum(d.n)
        FROM (SELECT at_due_day(execute_at) AS due_day, status, task_type, 1 AS n FROM new_rows
              UNION ALL
              SELECT at_due_day(execute_at), status, task_type, -1 FROM old_rows) AS d
        GROUP BY 1, 2, 3 HAVING sum(d.n) <> 0 ORDER BY 1, 2, 3
        ON CONFLICT (due_day, status, task_type, slot) DO UPDATE SET n = c.n + excluded.n;
    ELSE  -- TRUNCATE
        DELETE FROM scheduled_task_due_day_counts;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER scheduled_task_due_day_counts_insert AFTER INSERT ON scheduled_tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION scheduled_task_due_day_counts_apply();
CREATE TRIGGER scheduled_task_due_day_counts_update AFTER UPDATE ON scheduled_tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION scheduled_task_due_day_counts_apply();
CREATE TRIGGER scheduled_task_due_day_counts_delete AFTER DELETE ON scheduled_tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION scheduled_task_due_day_counts_apply();
CREATE TRIGGER scheduled_task_due_day_counts_truncate AFTER TRUNCATE ON scheduled_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION scheduled_task_due_day_counts_apply();

-- A due-time page is found day by day on this index, newest first within each day (ids grow with
-- creation, not with execute_at, so one scan by id would wade through every newer task of other
-- days when the range is in the past).
CREATE INDEX scheduled_tasks_due_day_idx ON scheduled_tasks (at_due_day(execute_at), id)
    INCLUDE (execute_at, status, task_type);
-- The partial days at a range's edges are counted on this one, and a deep offset's page found, both
-- without reading the table.
CREATE INDEX scheduled_tasks_execute_at_idx ON scheduled_tasks (execute_at) INCLUDE (status, task_type, id);

-- The counts of the rows already there; writers wait meanwhile so none is missed or counted twice.
LOCK TABLE scheduled_tasks IN SHARE ROW EXCLUSIVE MODE;
INSERT INTO scheduled_task_due_day_counts (due_day, status, task_type, slot, n)
SELECT at_due_day(execute_at), status, task_type, 0, count(*) FROM scheduled_tasks GROUP BY 1, 2, 3;

COMMENT ON TABLE scheduled_task_due_day_counts IS
    'Tasks by UTC day of execute_at, status and task_type (sum over slots), kept by triggers: exact list totals with due-time filters.';
