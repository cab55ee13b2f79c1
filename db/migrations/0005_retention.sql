-- 0005: finished tasks are deleted after AT_RETENTION_DAYS (the dispatcher, in small batches).
-- Partial: it holds only finished tasks, oldest change first, so finding the next batch to delete
-- never reads a live task, whatever the size of the table.
CREATE INDEX scheduled_tasks_finished_idx ON scheduled_tasks (updated_at)
    WHERE status IN ('completed', 'failed', 'cancelled');
