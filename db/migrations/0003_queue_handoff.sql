-- 0003: waiting is not failing. A dispatcher on AWS hands a due task to SQS without starting
-- it: the task stays 'pending', marked queued_until (when another dispatcher may hand it over
-- again, should the message never reach a worker). A worker starts the attempt itself, in one
-- statement with one winner, and only then are attempts counted and the lease taken; a task
-- that waits in the queue can no longer run out of lease, lose an attempt or run twice.
ALTER TABLE scheduled_tasks ADD COLUMN queued_until TIMESTAMPTZ;

-- NOT VALID, then VALIDATE: the check never blocks writers on a large table while it scans.
ALTER TABLE scheduled_tasks
    ADD CONSTRAINT queued_only_while_pending CHECK (queued_until IS NULL OR status = 'pending') NOT VALID;
ALTER TABLE scheduled_tasks VALIDATE CONSTRAINT queued_only_while_pending;

-- Claims look only at tasks nobody holds, so queued ones never have to be skipped over.
DROP INDEX scheduled_tasks_due_idx;
CREATE INDEX scheduled_tasks_due_idx ON scheduled_tasks (execute_at) WHERE status = 'pending' AND queued_until IS NULL;
-- What is in the queue (backpressure counts it) and hand-offs that expired (recovered once a second).
CREATE INDEX scheduled_tasks_queued_idx ON scheduled_tasks (queued_until) WHERE queued_until IS NOT NULL;
