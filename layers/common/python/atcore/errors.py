"""Domain errors. Each carries the HTTP status it maps to; api.py is the one place that turns
them into responses, so services and repositories never build HTTP answers themselves."""

from http import HTTPStatus


class AtError(Exception):
    status = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidRequest(AtError):
    status = HTTPStatus.BAD_REQUEST


class TaskNotFound(AtError):
    status = HTTPStatus.NOT_FOUND


class TaskNotCancellable(AtError):
    # The contract answers 404 here too (as the original did); the message says why.
    status = HTTPStatus.NOT_FOUND


class TaskConflict(AtError):
    """A valid request for a task in the wrong state for it (PATCH a running task, retry a pending one)."""

    status = HTTPStatus.CONFLICT


class IdempotencyKeyReused(AtError):
    """The Idempotency-Key was already used with a different request."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY


class PayloadTooLarge(AtError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class DatabaseUnavailable(AtError):
    """The database could not be reached or dropped the connection; retrying later may work."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class DatabaseError(AtError):
    """The database answered with an error we did not expect: a bug, not the client's fault."""
