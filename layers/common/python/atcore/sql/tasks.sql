-- Queries of the API. The column list is the same everywhere so rows map to atcore.models.Task.

-- name: create_task
-- A task due within the dispatcher's longest sleep wakes it (NOTIFY is delivered on commit);
-- later tasks are found by its next regular look, so most creates notify nobody.
WITH created AS (
    INSERT INTO scheduled_tasks (execute_at, task_type, payload, max_attempts)
    VALUES (:execute_at, :task_type, CAST(:payload AS jsonb), :max_attempts)
    RETURNING id, execute_at, task_type, payload, status, attempts, max_attempts,
              created_at, updated_at, completed_at, error_message
)
SELECT created.*
FROM created
LEFT JOIN LATERAL (
    SELECT pg_notify('at_task_due_soon', '')
    WHERE created.execute_at <= now() + make_interval(secs => :wake_horizon_seconds)
) AS wake ON true

-- name: get_task
SELECT id, execute_at, task_type, payload, status, attempts, max_attempts,
       created_at, updated_at, completed_at, error_message
FROM scheduled_tasks
WHERE id = :id

-- name: cancel_task
-- Only pending/processing tasks can be cancelled; a worker's late result then cannot
-- overwrite 'cancelled', because outcomes are written only while status = 'processing'.
UPDATE scheduled_tasks
SET status = 'cancelled', lease_expires_at = NULL, updated_at = now()
WHERE id = :id AND status IN ('pending', 'processing')
RETURNING id, execute_at, task_type, payload, status, attempts, max_attempts,
          created_at, updated_at, completed_at, error_message

-- name: task_status
SELECT status FROM scheduled_tasks WHERE id = :id

-- name: ping
SELECT 1

-- name: list_tasks
-- One round trip: the exact total and one page, newest first. An absent filter is NULL;
-- unnamed statements are planned with the actual values, so `NULL IS NULL OR ...` folds away
-- and each filter combination gets its own index. When the page is empty (offset past the end)
-- the single row carries the total and NULL task columns.
WITH matching AS (
    SELECT id, execute_at, task_type, payload, status, attempts, max_attempts,
           created_at, updated_at, completed_at, error_message
    FROM scheduled_tasks
    WHERE (CAST(:status AS text) IS NULL OR status = :status)
      AND (CAST(:task_type AS text) IS NULL OR task_type = :task_type)
),
page AS (
    SELECT * FROM matching ORDER BY id DESC LIMIT :limit OFFSET :offset
)
SELECT counted.total, page.*
FROM (SELECT count(*) AS total FROM matching) AS counted
LEFT JOIN page ON true
ORDER BY page.id DESC
