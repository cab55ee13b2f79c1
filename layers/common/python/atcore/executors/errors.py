"""The one exception executors raise (defined apart from __init__ so executor modules can import it)."""

from __future__ import annotations


class ExecutionError(Exception):
    """A task's execution failed. `retryable=False` means retrying cannot help (bad payload, unknown type, 4xx).

    `message` is stored with the task as its error_message, which API clients read: it says what went
    wrong in terms the task's owner can act on, and never carries the worker's internals. `detail` is
    for the worker's log line only (resolved addresses, the AWS error message, the start of a response
    body); it is not part of str(error) or of the exception's args.
    """

    def __init__(self, message: str, *, retryable: bool = True, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.detail = detail

    def __repr__(self) -> str:
        return f"ExecutionError({self.message!r}, retryable={self.retryable})"


def truncate(text: str, limit: int = 200) -> str:
    """Keeps error messages short and single-line: they are stored with the task and shown to API users."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
