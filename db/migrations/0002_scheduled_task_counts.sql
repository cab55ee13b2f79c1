-- 0002: exact totals for GET /api/v1/tasks without counting rows (see docs/BENCHMARKS.md, listing).
-- One counter per (status, task_type), kept by statement-level triggers in the same transaction
-- as the change, so a total read in one statement with the page is exact. Each change goes to
-- one of 16 slots (by backend) so concurrent writers of one type rarely wait on one row.
CREATE TABLE scheduled_task_counts (
    status    TEXT        NOT NULL,
    task_type VARCHAR(50) NOT NULL,
    slot      SMALLINT    NOT NULL,
    n         BIGINT      NOT NULL,
    PRIMARY KEY (status, task_type, slot)
);

CREATE FUNCTION scheduled_task_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Only the branch for TG_OP is planned, so each names only the transition tables it has.
    IF TG_OP = 'INSERT' THEN
        INSERT INTO scheduled_task_counts AS c (status, task_type, slot, n)
        SELECT status, task_type, pg_backend_pid() % 16, count(*) FROM new_rows
        GROUP BY status, task_type ORDER BY status, task_type
        ON CONFLICT (status, task_type, slot) DO UPDATE SET n = c.n + excluded.n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO scheduled_task_counts AS c (status, task_type, slot, n)
        SELECT status, task_type, pg_backend_pid() % 16, -count(*) FROM old_rows
        GROUP BY status, task_type ORDER BY status, task_type
        ON CONFLICT (status, task_type, slot) DO UPDATE SET n = c.n + excluded.n;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO scheduled_task_counts AS c (status, task_type, slot, n)
        SELECT d.status, d.task_type, pg_backend_pid() % 16, sum(d.n)
        FROM (SELECT status, task_type, 1 AS n FROM new_rows
              UNION ALL
              SELECT status, task_type, -1 FROM old_rows) AS d
        GROUP BY d.status, d.task_type HAVING sum(d.n) <> 0 ORDER BY d.status, d.task_type
        ON CONFLICT (status, task_type, slot) DO UPDATE SET n = c.n + excluded.n;
    ELSE  -- TRUNCATE
        DELETE FROM scheduled_task_counts;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER scheduled_task_counts_insert AFTER INSERT ON scheduled_tasks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION scheduled_task_counts_apply();
CREATE TRIGGER scheduled_task_counts_update AFTER UPDATE ON scheduled_tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION scheduled_task_counts_apply();
CREATE TRIGGER scheduled_task_counts_delete AFTER DELETE ON scheduled_tasks
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION scheduled_task_counts_apply();
CREATE TRIGGER scheduled_task_counts_truncate AFTER TRUNCATE ON scheduled_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION scheduled_task_counts_apply();

-- The counts of the rows already there; writers wait meanwhile so none is missed or counted twice.
LOCK TABLE scheduled_tasks IN SHARE ROW EXCLUSIVE MODE;
INSERT INTO scheduled_task_counts (status, task_type, slot, n)
SELECT status, task_type, 0, count(*) FROM scheduled_tasks GROUP BY status, task_type;
