-- Queries of Idempotency-Key (migration 0011). A key is read and written by scope (the caller)
-- and key; one older than :ttl_hours counts as absent.

-- name: find_idempotency_key
SELECT fingerprint, status_code, response FROM idempotency_keys
WHERE scope = :scope AND key = :key AND created_at >= now() - make_interval(hours => :ttl_hours)

-- name: forget_expired_idempotency_key
-- Before claiming a key, in the same transaction: an expired row of it is as good as absent.
DELETE FROM idempotency_keys
WHERE scope = :scope AND key = :key AND created_at < now() - make_interval(hours => :ttl_hours)

-- name: claim_idempotency_key
-- In the transaction that created the tasks. A row with this key already there (committed or
-- not) wins: ON CONFLICT waits for its transaction, then this inserts nothing, and the caller
-- rolls back its tasks and replays the winner's answer.
INSERT INTO idempotency_keys (scope, key, fingerprint, status_code, response, task_ids)
VALUES (:scope, :key, :fingerprint, :status_code, :response, CAST(:task_ids AS bigint[]))
ON CONFLICT (scope, key) DO NOTHING
RETURNING key

-- name: delete_expired_idempotency_keys
-- Housekeeping (the dispatcher), a small batch at a time.
DELETE FROM idempotency_keys
WHERE (scope, key) IN (
    SELECT scope, key FROM idempotency_keys
    WHERE created_at < now() - make_interval(hours => :ttl_hours)
    ORDER BY created_at LIMIT :batch_size
    FOR UPDATE SKIP LOCKED
)
RETURNING key
