-- 0004: the history of every attempt, written by the same statements that start attempts and
-- record their outcomes, so it can never disagree with the task.
--
-- outcome words (GET /api/v1/tasks/{id}/attempts):
--   running -> succeeded | failed | retry_scheduled | lease_expired | superseded (cancelled meanwhile)

-- Attempts made before the last POST .../retry (which sets attempts back to 0): an attempt's
-- number in the history is attempts_before_retry + attempts, so numbers keep counting.
ALTER TABLE scheduled_tasks ADD COLUMN attempts_before_retry INTEGER NOT NULL DEFAULT 0
    CONSTRAINT attempts_before_retry_not_negative CHECK (attempts_before_retry >= 0);

CREATE TABLE task_attempts (
    task_id     BIGINT      NOT NULL REFERENCES scheduled_tasks (id) ON DELETE CASCADE,
    number      INTEGER     NOT NULL CHECK (number >= 1),
    started_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    outcome     TEXT        NOT NULL DEFAULT 'running'
                CHECK (outcome IN ('running', 'succeeded', 'failed', 'retry_scheduled', 'lease_expired', 'superseded')),
    error       TEXT,
    PRIMARY KEY (task_id, number),
    CONSTRAINT finished_iff_not_running CHECK ((finished_at IS NULL) = (outcome = 'running')),
    CONSTRAINT error_iff_not_succeeded CHECK ((error IS NULL) = (outcome IN ('running', 'succeeded')))
) WITH (fillfactor = 80);  -- room on the page, so recording an outcome is a HOT update

COMMENT ON TABLE task_attempts IS 'Every attempt of a task: when it started and finished, and how it ended.';
