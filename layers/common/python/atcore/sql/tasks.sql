-- Queries of the API. Rows come back whole (RETURNING *, SELECT t.*) and are mapped to
-- atcore.models.Task by column name, so the model is the one list of a task's fields.
-- A task due soon wakes the dispatcher through a trigger (migration 0006), whatever writes it.

-- name: create_task
INSERT INTO scheduled_tasks (execute_at, task_type, payload, max_attempts, created_by)
VALUES (:execute_at, :task_type, CAST(:payload AS jsonb), :max_attempts, :created_by)
RETURNING *

-- name: create_tasks
-- A batch in one statement (and one transaction): ids are given in the request's order.
INSERT INTO scheduled_tasks (execute_at, task_type, payload, max_attempts, created_by)
SELECT b.execute_at, b.task_type, b.payload, b.max_attempts, :created_by
FROM unnest(CAST(:execute_ats AS timestamptz[]), CAST(:task_types AS text[]), CAST(:payloads AS jsonb[]),
            CAST(:max_attempts AS integer[])) WITH ORDINALITY AS b(execute_at, task_type, payload, max_attempts, n)
ORDER BY b.n
RETURNING *

-- name: update_task
-- PATCH: only while :changeable (pending), and max_attempts never below the attempts made + 1. A
-- new time also withdraws a hand-off to SQS (its message then starts nothing: start_attempts
-- wants a handed-over task that is due) so the task is handed over again when it falls due. A
-- PATCH racing a claim waits for the claim's row lock and then finds the task processing.
UPDATE scheduled_tasks
SET execute_at = COALESCE(:execute_at, execute_at),
    payload = COALESCE(CAST(:payload AS jsonb), payload),
    max_attempts = COALESCE(:max_attempts, max_attempts),
    queued_until = CASE WHEN CAST(:execute_at AS timestamptz) IS NULL THEN queued_until END,
    updated_at = now()
WHERE id = :id AND status = ANY(CAST(:changeable AS text[]))
  AND (CAST(:max_attempts AS integer) IS NULL OR :max_attempts >= attempts + 1)
RETURNING *

-- name: retry_task
-- POST .../retry: a :retryable (failed or cancelled) task pending again from attempt 1, due at
-- :execute_at or now; the attempts made so far move to attempts_before_retry, so the history's
-- numbers keep counting.
UPDATE scheduled_tasks
SET status = 'pending',
    attempts_before_retry = attempts_before_retry + attempts,
    attempts = 0,
    execute_at = COALESCE(:execute_at, now()),
    completed_at = NULL,
    error_message = NULL,
    lease_expires_at = NULL,
    queued_until = NULL,
    updated_at = now()
WHERE id = :id AND status = ANY(CAST(:retryable AS text[]))
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

-- name: task_state
SELECT status, attempts FROM scheduled_tasks WHERE id = :id

-- name: list_attempts
-- The history of one task, oldest first, at most :limit attempts, with the total and whether the
-- task exists (one row of NULLs and the two counts when it has no attempts).
SELECT counted.total, counted.task_exists, a.number, a.started_at, a.finished_at, a.outcome, a.error,
       CAST(round(EXTRACT(EPOCH FROM a.finished_at - a.started_at) * 1000) AS bigint) AS duration_ms
FROM (SELECT (SELECT count(*) FROM task_attempts WHERE task_id = :id) AS total,
             EXISTS (SELECT 1 FROM scheduled_tasks WHERE id = :id) AS task_exists) AS counted
LEFT JOIN LATERAL (
    SELECT * FROM task_attempts WHERE task_id = :id ORDER BY number LIMIT :limit
) AS a ON true
ORDER BY a.number

-- name: task_stats
-- Exact counts by status from scheduled_task_counts (its size grows with the task types, not the
-- tasks), the oldest due task and the next one to fall due, from the small partial indexes.
SELECT (SELECT CAST(COALESCE(json_object_agg(status, n), '{}') AS text)
        FROM (SELECT status, sum(n) AS n FROM scheduled_task_counts GROUP BY status) AS by_status) AS counts,
       COALESCE(EXTRACT(EPOCH FROM now() - LEAST(
           (SELECT min(execute_at) FROM due_tasks),
           (SELECT min(execute_at) FROM scheduled_tasks WHERE queued_until IS NOT NULL)
       )), 0)::double precision AS oldest_due_age_seconds,
       (SELECT min(execute_at) FROM scheduled_tasks
        WHERE status = 'pending' AND queued_until IS NULL AND execute_at > now()) AS next_execute_at

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
-- execute_after <= execute_at < execute_before (each NULL when not given): the total sums the
-- whole UTC days inside the range from scheduled_task_due_day_counts (0012) and counts the rows
-- of the partial days at its edges on scheduled_tasks_execute_at_idx. The page (by_due_day) is the
-- newest of each day that holds matching tasks, merged: a scan by id alone would wade through
-- every newer task of other days when the range is in the past (ids follow creation). Unless
-- status and task_type match at most :scan_by_id_max tasks in all (a cheap sum over
-- scheduled_task_counts): then one scan by id reads no more than those, fewer than the day by day
-- merge, which reads every task of a day to find the few of that status and type.
WITH by_day AS MATERIALIZED (
    SELECT CAST(:by_due_day AS boolean)
           AND (SELECT COALESCE(sum(n), 0) FROM scheduled_task_counts
                WHERE (CAST(:status AS text) IS NULL OR status = :status)
                  AND (CAST(:task_type AS text) IS NULL OR task_type = :task_type)) > :scan_by_id_max AS yes
),
page_ids AS (
    (SELECT id
     FROM scheduled_tasks
     WHERE NOT (SELECT yes FROM by_day)
       AND (CAST(:status AS text) IS NULL OR status = :status)
       AND (CAST(:task_type AS text) IS NULL OR task_type = :task_type)
       AND (CAST(:execute_after AS timestamptz) IS NULL OR execute_at >= :execute_after)
       AND (CAST(:execute_before AS timestamptz) IS NULL OR execute_at < :execute_before)
       AND (CAST(:before_id AS bigint) IS NULL OR id < :before_id)
     ORDER BY id DESC LIMIT :limit OFFSET :offset)
    UNION ALL
    (SELECT per_day.id
     FROM (SELECT due_day FROM scheduled_task_due_day_counts
           WHERE (SELECT yes FROM by_day)
             AND (CAST(:status AS text) IS NULL OR status = :status)
             AND (CAST(:task_type AS text) IS NULL OR task_type = :task_type)
             AND (CAST(:execute_after AS timestamptz) IS NULL OR due_day >= at_due_day(:execute_after))
             AND (CAST(:execute_before AS timestamptz) IS NULL OR due_day <= at_due_day(:execute_before))
           GROUP BY due_day HAVING sum(n) > 0) AS days
     CROSS JOIN LATERAL (
         SELECT id FROM scheduled_tasks
         WHERE at_due_day(execute_at) = days.due_day
           AND (CAST(:status AS text) IS NULL OR status = :status)
           AND (CAST(:task_type AS text) IS NULL OR task_type = :task_type)
           AND (CAST(:execute_after AS timestamptz) IS NULL OR execute_at >= :execute_after)
           AND (CAST(:execute_before AS timestamptz) IS NULL OR execute_at < :execute_before)
           AND (CAST(:before_id AS bigint) IS NULL OR id < :before_id)
         ORDER BY id DESC LIMIT :limit + :offset) AS per_day
     ORDER BY per_day.id DESC LIMIT :limit OFFSET :offset)
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
bounds AS (  -- whole days: from first_day (the first at or after execute_after) to end_day
    SELECT lo, hi, at_due_day(lo) AS lo_day, at_due_day(hi) AS end_day,
           at_due_day(lo) + CASE WHEN at_due_day(lo) = lo THEN interval '0' ELSE interval '1 day' END AS first_day
    FROM (SELECT CAST(:execute_after AS timestamptz) AS lo, CAST(:execute_before AS timestamptz) AS hi) AS given
),
matching AS NOT MATERIALIZED (  -- the other filters, for the edge counts
    SELECT execute_at FROM scheduled_tasks
    WHERE (CAST(:status AS text) IS NULL OR status = :status)
      AND (CAST(:task_type AS text) IS NULL OR task_type = :task_type)
),
counted AS (
    SELECT CAST(CASE
        WHEN bounds.lo IS NULL AND bounds.hi IS NULL THEN
            (SELECT COALESCE(sum(n), 0) FROM scheduled_task_counts
             WHERE (CAST(:status AS text) IS NULL OR status = :status)
               AND (CAST(:task_type AS text) IS NULL OR task_type = :task_type))
        WHEN bounds.lo_day = bounds.end_day THEN  -- within one day
            (SELECT count(*) FROM matching WHERE execute_at >= bounds.lo AND execute_at < bounds.hi)
        ELSE
            (SELECT COALESCE(sum(n), 0) FROM scheduled_task_due_day_counts
             WHERE (CAST(:status AS text) IS NULL OR status = :status)
               AND (CAST(:task_type AS text) IS NULL OR task_type = :task_type)
               AND (bounds.first_day IS NULL OR due_day >= bounds.first_day)
               AND (bounds.end_day IS NULL OR due_day < bounds.end_day))
            + (SELECT count(*) FROM matching  -- the part of lo's day from lo on (none when lo is midnight)
               WHERE execute_at >= bounds.lo AND execute_at < bounds.first_day)
            + (SELECT count(*) FROM matching  -- the part of hi's day before hi
               WHERE execute_at >= bounds.end_day AND execute_at < bounds.hi)
        END AS bigint) AS total
    FROM bounds
)
SELECT counted.total, page.*, (SELECT yes FROM by_day) AS went_by_day  -- the way it took
FROM counted
LEFT JOIN page ON true
ORDER BY page.page_id DESC
