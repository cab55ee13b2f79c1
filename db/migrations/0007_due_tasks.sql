-- 0007: what "due" means, once: a pending task nobody holds whose time has come (PostgreSQL's
-- clock decides). The local engine's claim and the AWS dispatcher's hand-over both read it; the
-- planner inlines the view, so both still use scheduled_tasks_due_idx, and FOR UPDATE SKIP LOCKED
-- locks the table's rows through it.
CREATE VIEW due_tasks AS
    SELECT * FROM scheduled_tasks
    WHERE status = 'pending' AND queued_until IS NULL AND execute_at <= now();
