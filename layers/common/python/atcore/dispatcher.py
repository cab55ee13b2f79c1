"""The dispatcher loop: hand every due task to an outlet the moment it falls due.

It never waits for a fixed poll tick: after each pass it sleeps until the next task is due, a
lease or a hand-off expires (PostgreSQL says when), at most the wake horizon (migration 0006),
and a LISTEN connection wakes it early when a task due sooner than that is written. It claims only what its
outlet has room for, so tasks wait in the table, oldest due first, never in a queue behind it.
Any number of dispatchers may run at once: claims use SKIP LOCKED.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from atcore import db, execution, execution_repository
from atcore.errors import DatabaseUnavailable
from atcore.execution import ExecutionSettings
from atcore.observability import logger
from atcore.sql import query

RECOVERY_INTERVAL_SECONDS = 1.0
MIN_PASS_INTERVAL_SECONDS = 0.01
RETRY_AFTER_FAILURE_SECONDS = 1.0


class Outlet(Protocol):
    """Where a dispatcher sends due tasks: the local engine's workers, or the SQS task queue."""

    # How long to wait before looking again when the outlet is full.
    full_wait_seconds: float

    def room(self, conn: db.Connection) -> int:
        """How many more tasks it can take now."""
        ...

    def claim(self, conn: db.Connection, limit: int) -> Sequence[object]:
        """Claim up to `limit` due tasks in the form deliver() takes."""
        ...

    def deliver(self, claimed: Sequence[object]) -> None: ...


class Dispatcher:
    def __init__(self, outlet: Outlet, settings: ExecutionSettings | None = None) -> None:
        self._outlet = outlet
        self._settings = settings or execution.execution_settings()
        self._listener = db.NotificationListener(query("listen_for_due_soon"))
        self._next_recovery = 0.0

    def run_once(self) -> float:
        """Recover expired leases and hand-offs, claim and deliver what is due; returns seconds to sleep."""
        with db.connection() as conn:
            if time.monotonic() >= self._next_recovery:  # leases last seconds: once a second is enough
                execution.housekeeping(conn, self._settings)
                self._next_recovery = time.monotonic() + RECOVERY_INTERVAL_SECONDS
            while (room := min(self._outlet.room(conn), self._settings.claim_batch_size)) > 0:
                claimed = self._outlet.claim(conn, room)
                if claimed:
                    self._outlet.deliver(claimed)
                if len(claimed) < room:
                    break
            else:
                return self._outlet.full_wait_seconds  # the outlet is full: look again soon
            wake_in = execution_repository.seconds_until_next_wake(conn)  # at most the wake horizon
        # While tasks fall due back to back, a pass per task would spend more on its three
        # statements than on the tasks: passes are at least MIN_PASS_INTERVAL apart.
        return max(MIN_PASS_INTERVAL_SECONDS, wake_in)

    def run(self, keep_running: Callable[[], bool]) -> None:
        try:
            while keep_running():
                try:
                    sleep_for = self.run_once()
                except DatabaseUnavailable:
                    logger.warning("Dispatcher cannot reach the database; retrying")
                    sleep_for = RETRY_AFTER_FAILURE_SECONDS
                except Exception:  # noqa: BLE001 - the loop must outlive one bad pass; claims recover by lease
                    logger.exception("Dispatcher pass failed; retrying")
                    sleep_for = RETRY_AFTER_FAILURE_SECONDS
                self._listener.wait(sleep_for)
        finally:
            self._listener.close()
