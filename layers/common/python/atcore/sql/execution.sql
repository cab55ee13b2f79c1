-- Queries of the dispatcher and workers. One clock: PostgreSQL's now() decides what is due,
-- so a skewed worker clock can never run a task early.

-- name: claim_due_tasks
-- The local engine's claim: start the attempts of due tasks at once (it claims only as many as
-- it has idle workers, so the lease measures the execution). Any number of dispatchers may run
-- this at once: SKIP LOCKED hands each row to one of them. Each started attempt gets its
-- history row in the same statement.
WITH started AS (
    UPDATE scheduled_tasks AS t
    SET status = 'processing',
        attempts = t.attempts + 1,
        lease_expires_at = now() + make_interval(secs => :lease_seconds),
        updated_at = now()
    FROM (SELECT id FROM due_tasks ORDER BY execute_at LIMIT :batch_size FOR UPDATE SKIP LOCKED) AS due
    WHERE t.id = due.id
    RETURNING t.id, t.task_type, t.payload, t.attempts, t.max_attempts, t.execute_at, t.attempts_before_retry
),
history AS (
    INSERT INTO task_attempts (task_id, number, started_at)
    SELECT id, attempts_before_retry + attempts, now() FROM started
)
SELECT id, task_type, payload, attempts AS attempt, max_attempts, execute_at, now() AS claimed_at FROM started

-- name: hand_over_due_tasks
-- The AWS dispatcher's claim: reserve due tasks for the queue without starting them. They stay
-- pending (a cancel simply wins), no attempt is counted and no lease is taken; queued_until is
-- when another dispatcher may hand them over again, should their message never start them.
UPDATE scheduled_tasks AS t
SET queued_until = now() + make_interval(secs => :handoff_seconds)
FROM (SELECT id FROM due_tasks ORDER BY execute_at LIMIT :batch_size FOR UPDATE SKIP LOCKED) AS due
WHERE t.id = due.id
RETURNING t.id, t.attempts + 1 AS attempt, t.execute_at

-- name: start_attempts
-- A worker starts the attempts its messages name; the lease starts now, with the execution.
-- One winner per attempt: a message delivered twice (SQS delivers at least once), or one for a
-- task cancelled, rescheduled or started since, matches no row and starts nothing. Two workers
-- holding the same message queue on the row lock, and the second finds it no longer pending.
WITH started AS (
    UPDATE scheduled_tasks AS t
    SET status = 'processing',
        attempts = t.attempts + 1,
        queued_until = NULL,
        lease_expires_at = now() + make_interval(secs => :lease_seconds),
        updated_at = now()
    FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS integer[])) AS m(id, attempt)
    WHERE t.id = m.id
      AND t.id = ANY(CAST(:ids AS bigint[]))  -- the id list again, as an index condition (see record_outcomes)
      AND t.status = 'pending' AND t.queued_until IS NOT NULL
      AND t.attempts = m.attempt - 1 AND t.execute_at <= now()
    RETURNING t.id, t.task_type, t.payload, t.attempts, t.max_attempts, t.execute_at, t.attempts_before_retry
),
history AS (
    INSERT INTO task_attempts (task_id, number, started_at)
    SELECT id, attempts_before_retry + attempts, now() FROM started
)
SELECT id, task_type, payload, attempts AS attempt, max_attempts, execute_at, now() AS claimed_at FROM started

-- name: record_outcomes
-- Outcomes of many attempts in one statement. A row is written only while the task is still
-- the attempt that was claimed, so a cancel or a newer attempt always wins over a late result.
-- retry_in_seconds NULL means "do not retry"; a retry is honoured only while attempts remain.
WITH outcome AS (
    SELECT * FROM unnest(
        CAST(:ids AS bigint[]), CAST(:attempts AS integer[]), CAST(:succeeded AS boolean[]),
        CAST(:errors AS text[]), CAST(:retry_in_seconds AS double precision[])
    ) AS o(id, attempt, succeeded, error, retry_in_seconds)
),
decided AS (
    SELECT t.id,
           CASE WHEN o.succeeded THEN 'completed'
                WHEN o.retry_in_seconds IS NOT NULL AND at_attempts_remain(t.attempts, t.max_attempts) THEN 'pending'
                ELSE 'failed' END AS status,
           o.error, o.retry_in_seconds
    FROM scheduled_tasks AS t
    JOIN outcome AS o ON o.id = t.id AND o.attempt = t.attempts
    -- The id list again, as an index condition: without it the planner hash-joins every
    -- processing task (777 ms instead of 49 ms for 500 outcomes among 50k processing tasks).
    WHERE t.id = ANY(CAST(:ids AS bigint[])) AND t.status = 'processing'
    FOR UPDATE OF t
),
recorded AS (
    UPDATE scheduled_tasks AS t
    SET status = d.status,
        completed_at = CASE WHEN d.status = 'pending' THEN NULL ELSE now() END,
        execute_at = CASE WHEN d.status = 'pending'
                          THEN now() + make_interval(secs => d.retry_in_seconds) ELSE t.execute_at END,
        error_message = CASE WHEN d.status = 'completed' THEN t.error_message ELSE d.error END,
        lease_expires_at = NULL,
        updated_at = now()
    FROM decided AS d
    WHERE t.id = d.id
    RETURNING t.id, t.status, t.attempts, t.attempts_before_retry, d.error
),
history AS (
    UPDATE task_attempts AS a
    SET finished_at = now(),
        outcome = CASE r.status WHEN 'completed' THEN 'succeeded' WHEN 'pending' THEN 'retry_scheduled'
                                ELSE 'failed' END,
        error = CASE WHEN r.status = 'completed' THEN NULL ELSE COALESCE(r.error, 'failed') END
    FROM recorded AS r
    WHERE a.task_id = r.id AND a.number = r.attempts_before_retry + r.attempts AND a.outcome = 'running'
)
SELECT id, status, attempts FROM recorded

-- name: recover_expired_leases
-- A worker that died leaves its lease to expire: retry the task now, or fail it when spent.
WITH recovered AS (
    UPDATE scheduled_tasks AS t
    SET status = CASE WHEN at_attempts_remain(t.attempts, t.max_attempts) THEN 'pending' ELSE 'failed' END,
        completed_at = CASE WHEN at_attempts_remain(t.attempts, t.max_attempts) THEN NULL ELSE now() END,
        error_message = 'attempt ' || (t.attempts_before_retry + t.attempts) || ' did not finish: its lease expired',
        lease_expires_at = NULL,
        updated_at = now()
    FROM (
        SELECT id FROM scheduled_tasks
        WHERE status = 'processing' AND lease_expires_at < now()
        ORDER BY lease_expires_at
        LIMIT :batch_size
        FOR UPDATE SKIP LOCKED
    ) AS expired
    WHERE t.id = expired.id
    RETURNING t.id, t.status, t.attempts, t.attempts_before_retry, t.error_message
),
history AS (
    UPDATE task_attempts AS a
    SET finished_at = now(), outcome = 'lease_expired', error = r.error_message
    FROM recovered AS r
    WHERE a.task_id = r.id AND a.number = r.attempts_before_retry + r.attempts AND a.outcome = 'running'
)
SELECT id, status, attempts FROM recovered

-- name: next_wake
-- Seconds until the earliest unclaimed task falls due, a lease expires or a hand-off expires
-- (negative: already due), and never more than the wake horizon (new tasks due sooner wake the
-- dispatcher: migration 0006). All from small partial indexes.
SELECT LEAST(
           EXTRACT(EPOCH FROM (LEAST(
               (SELECT min(execute_at) FROM scheduled_tasks WHERE status = 'pending' AND queued_until IS NULL),
               (SELECT min(lease_expires_at) FROM scheduled_tasks WHERE status = 'processing'),
               (SELECT min(queued_until) FROM scheduled_tasks WHERE queued_until IS NOT NULL)
           ) - now()))::double precision,
           at_wake_horizon_seconds())

-- name: oldest_due_age
-- How late the most overdue task that has not started is, in seconds (0 when none is due),
-- whether it waits in the table or in the queue: the alarm metric.
SELECT COALESCE(EXTRACT(EPOCH FROM now() - LEAST(
           (SELECT min(execute_at) FROM due_tasks),
           (SELECT min(execute_at) FROM scheduled_tasks WHERE queued_until IS NOT NULL)
       )), 0)::double precision

-- name: listen_for_due_soon
LISTEN at_task_due_soon

-- name: release_handoffs
-- Hand-offs that never reached a worker (the queue refused the message, or the worker had no
-- time left to start it): free for the next dispatcher pass at once, nothing counted.
UPDATE scheduled_tasks AS t
SET queued_until = NULL
FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS integer[])) AS c(id, attempt)
WHERE t.id = c.id AND t.id = ANY(CAST(:ids AS bigint[]))
  AND t.attempts = c.attempt - 1 AND t.status = 'pending' AND t.queued_until IS NOT NULL
RETURNING t.id

-- name: recover_expired_handoffs
-- A message that never started its task (it went to the dead-letter queue, or was lost): after
-- queued_until the task may be handed over again. Should the old message arrive after all, the
-- attempt still has one winner (start_attempts), so the task runs once.
UPDATE scheduled_tasks AS t
SET queued_until = NULL
FROM (
    SELECT id FROM scheduled_tasks
    WHERE queued_until < now()
    ORDER BY queued_until
    LIMIT :batch_size
    FOR UPDATE SKIP LOCKED
) AS expired
WHERE t.id = expired.id
RETURNING t.id

-- name: count_queued
-- Tasks handed to the queue and not started yet: the dispatcher's backpressure keeps this small,
-- so the index-only count is cheap.
SELECT count(*) FROM scheduled_tasks WHERE queued_until IS NOT NULL

-- name: delete_expired_tasks
-- Retention: finished tasks unchanged for :retention_days, a small batch at a time, oldest first;
-- their attempts go with them (ON DELETE CASCADE) and the counts triggers keep totals exact.
-- SKIP LOCKED: a dispatcher deleting never waits for, nor blocks, another one.
DELETE FROM scheduled_tasks
WHERE id IN (
    SELECT id FROM scheduled_tasks
    WHERE status IN ('completed', 'failed', 'cancelled')
      AND updated_at < now() - make_interval(days => :retention_days)
    ORDER BY updated_at
    LIMIT :batch_size
    FOR UPDATE SKIP LOCKED
)
RETURNING id
