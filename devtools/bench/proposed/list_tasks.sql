-- name: list_tasks
-- (proposed) One round trip: the exact total and one page, newest first. An absent filter is NULL.
-- The total is summed from scheduled_task_counts (kept by triggers, see 0002), so it costs the
-- same for 10 or 10 million matching tasks. The page's ids come from an index-only scan of the
-- filter's index, so a deep offset skips index entries, not table rows; only the page's rows
-- are read from the table. When the page is empty the single row carries the total.
WITH page_ids AS (
    SELECT id
    FROM scheduled_tasks
    WHERE (CAST(:status AS text) IS NULL OR status = :status)
      AND (CAST(:task_type AS text) IS NULL OR task_type = :task_type)
    ORDER BY id DESC LIMIT :limit OFFSET :offset
),
page AS (
    SELECT id, execute_at, task_type, payload, status, attempts, max_attempts,
           created_at, updated_at, completed_at, error_message
    FROM scheduled_tasks
    WHERE id IN (SELECT id FROM page_ids)
),
counted AS (
    SELECT CAST(COALESCE(sum(n), 0) AS bigint) AS total
    FROM scheduled_task_counts
    WHERE (CAST(:status AS text) IS NULL OR status = :status)
      AND (CAST(:task_type AS text) IS NULL OR task_type = :task_type)
)
SELECT counted.total, page.*
FROM counted
LEFT JOIN page ON true
ORDER BY page.id DESC
