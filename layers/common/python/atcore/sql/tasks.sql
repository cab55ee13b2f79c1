-- Queries of the API. Rows come back whole (RETURNING *, SELECT t.*) and are mapped to
-- atcore.models.Task by column name, so the model is the one list of a task's fields.
-- A task due soon wakes the dispatcher through a trigger (migration 0006), whatever writes it.

-- name: create_task
INSERT INTO scheduled_tasks (execute_at, task_type, payload, max_attempts)
VALUES (:execute_at, :task_type, CAST(:payload AS jsonb), :max_attempts)
RETURNING *

-- name: get_task
SELECT * FROM scheduled_tasks WHERE id = :id

-- name: cancel_task
-- Only :cancellable tasks (pending, processing) can be cancelled; a worker's late result then cannot
-- overwrite 'cancelled', because outcomes are written only while status = 'processing', and a
-- queued message cannot start it, because attempts start only while it is 'pending'. An attempt
-- still running is closed in its history as superseded: its result will not count.
WITH cancelled AS (
    UPDATE scheduled_tasks
    SET status = 'cancelled', lease_expires_at = NULL, queued_until = NULL, updated_at = now()
    WHERE id = :id AND status = ANY(CAST(:cancellable AS text[]))
    RETURNING *
),
history AS (
    UPDATE task_attempts
    SET finished_at = now(), outcome = 'superseded', error = 'the task was cancelled while this attempt ran'
    WHERE task_id = :id AND outcome = 'running' AND EXISTS (SELECT 1 FROM cancelled)
)
SELECT * FROM cancelled

-- name: task_status
SELECT status FROM scheduled_tasks WHERE id = :id

-- name: ping
SELECT 1

-- name: list_tasks
-- One round trip: the exact total and one page, newest first. An absent filter is NULL.
-- The total is summed from scheduled_task_counts (kept by triggers, see 0002), so it costs the
-- same for 10 or 10 million matching tasks. The page's ids come from an index-only scan of the
-- filter's index, so a deep offset skips index entries, not table rows; only the page's rows
-- are read from the table. When the page is empty the single row carries the total.
-- A cursor's page starts below the last id of the page before (before_id; NULL without a
-- cursor): keyset paging on the same indexes, so tasks created meanwhile (higher ids) neither
-- shift it nor repeat in it. The caller asks for one row more than it shows, to learn whether
-- another page follows; the total ignores before_id, as it ignores limit and offset.
-- A row is read whole only while the newer rows of the page hold under max_bytes of payload
-- text; the rows after that come back as their id alone (the caller shows them on a later
-- page), so a page of large tasks never reads much more than one response can carry.
WITH page_ids AS (
    SELECT id
    FROM scheduled_tasks
    WHERE (CAST(:status AS text) IS NULL OR status = :status)
      AND (CAST(:task_type AS text) IS NULL OR task_type = :task_type)
      AND (CAST(:before_id AS bigint) IS NULL OR id < :before_id)
    ORDER BY id DESC LIMIT :limit OFFSET :offset
),
sized AS (
    SELECT id, sum(octet_length(CAST(payload AS text))) OVER (
               ORDER BY id DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS newer_bytes
    FROM scheduled_tasks
    WHERE id IN (SELECT id FROM page_ids)
),
page AS (
    SELECT sized.id AS page_id, t.*
    FROM sized
    LEFT JOIN scheduled_tasks AS t ON t.id = sized.id AND COALESCE(sized.newer_bytes, 0) < :max_bytes
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
ORDER BY page.page_id DESC
