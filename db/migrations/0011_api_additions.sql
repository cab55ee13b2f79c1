-- 0011: what the v1.1 API additions store.

-- Who created a task, when the API knows (an IAM principal's ARN, an API key's id).
ALTER TABLE scheduled_tasks ADD COLUMN created_by TEXT;

-- Idempotency-Key on creates: the key, what the request was (a fingerprint of its parsed body)
-- and the answer it got, written in the transaction that creates the task(s), so there is never
-- a task without its key nor a key without its tasks. A key is scoped to its caller ('' when the
-- API does not know who calls). Keys older than AT_IDEMPOTENCY_TTL_HOURS are ignored and deleted
-- by the dispatcher's housekeeping.
CREATE TABLE idempotency_keys (
    scope       TEXT        NOT NULL,
    key         TEXT        NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
    fingerprint TEXT        NOT NULL,
    status_code INTEGER     NOT NULL,
    -- The tasks as they were created, as the API answered them (a JSON array), for the replay.
    response    TEXT        NOT NULL,
    task_ids    BIGINT[]    NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

COMMENT ON TABLE idempotency_keys IS 'Idempotency-Key of creates: the request fingerprint and the answer to replay.';
