"""The local run's execution engine: the layer's dispatcher loop feeding in-process workers.

The same executors, outcome SQL and lease recovery as on AWS. Instead of handing tasks to SQS
and letting the worker start them, it claims and starts attempts in one statement, as many as it
has idle worker threads; outcomes are written in batches by one recorder thread.
`python -m devtools.engine` runs one engine process; `make run` starts AT_DISPATCHERS of them.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import threading
import time
from collections.abc import Sequence

from atcore import db, execution
from atcore.dispatcher import Dispatcher
from atcore.errors import DatabaseUnavailable
from atcore.execution import ClaimedTask, Outcome
from atcore.observability import logger

_RECORD_BATCH = 1000


class LocalEngine:
    """An outlet for the layer's Dispatcher: it claims (and starts) only as many tasks as it has idle
    workers, so an attempt's lease measures its execution, never a wait in this process's queue."""

    full_wait_seconds = 0.005  # a worker frees up within milliseconds when callbacks are fast

    def __init__(self, workers: int = 32, max_unrecorded: int = 2000) -> None:
        # Long-lived worker threads on a plain queue: an executor Future per task cost more than
        # the queue itself, and keep-alive callback connections are cached per thread.
        self._workers = workers
        self._tasks: queue.SimpleQueue[ClaimedTask | None] = queue.SimpleQueue()
        self._outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._unexecuted = 0  # claimed, not yet executed
        self._unrecorded = 0  # claimed, outcome not yet written
        self._lock = threading.Lock()
        self._max_unrecorded = max_unrecorded
        self._stopping = threading.Event()
        self._dispatcher = Dispatcher(self)
        self._threads: list[threading.Thread] = []

    def room(self, _conn: object = None) -> int:
        with self._lock:
            return min(self._workers - self._unexecuted, self._max_unrecorded - self._unrecorded)

    def claim(self, conn: db.Connection, limit: int) -> list[ClaimedTask]:
        return execution.claim_due(conn, limit, execution.execution_settings().lease_seconds)

    def deliver(self, tasks: Sequence[object]) -> None:
        with self._lock:
            self._unexecuted += len(tasks)
            self._unrecorded += len(tasks)
        for task in tasks:
            assert isinstance(task, ClaimedTask)
            self._tasks.put(task)

    def _work_forever(self) -> None:
        while (task := self._tasks.get()) is not None:
            outcome = execution.execute(task)
            with self._lock:
                self._unexecuted -= 1
            self._outcomes.put(outcome)

    def _record_forever(self) -> None:
        while not (self._stopping.is_set() and self._unrecorded == 0):
            try:
                batch = [self._outcomes.get(timeout=0.1)]
            except queue.Empty:
                continue
            while len(batch) < _RECORD_BATCH:
                try:
                    batch.append(self._outcomes.get_nowait())
                except queue.Empty:
                    break
            self._record(batch)

    def _record(self, batch: list[Outcome]) -> None:
        while True:  # an outcome is kept until written; if this process dies, the lease recovers it
            try:
                with db.connection() as conn:
                    execution.record_outcomes(conn, batch)
                break
            except DatabaseUnavailable:
                logger.warning("Cannot record outcomes yet; retrying", extra={"count": len(batch)})
                time.sleep(0.5)
        with self._lock:
            self._unrecorded -= len(batch)

    def wait_until_idle(self, timeout: float = 10.0) -> bool:
        """Until every claimed task has been executed and recorded (tests); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._unrecorded == 0:
                    return True
            time.sleep(0.01)
        return False

    def start(self) -> LocalEngine:
        keep_running = lambda: not self._stopping.is_set()  # noqa: E731
        threads = [
            threading.Thread(target=self._dispatcher.run, args=(keep_running,), name="at-dispatcher"),
            threading.Thread(target=self._record_forever, name="at-recorder"),
        ]
        threads += [threading.Thread(target=self._work_forever, name=f"at-worker-{n}") for n in range(self._workers)]
        for thread in threads:
            thread.daemon = True
            thread.start()
        self._threads = threads
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop claiming, finish what was claimed, record it."""
        self._stopping.set()
        for _ in range(self._workers):
            self._tasks.put(None)  # each worker leaves after the tasks queued before it
        for thread in self._threads:
            thread.join(timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("AT_WORKERS", "32")))
    args = parser.parse_args()
    engine = LocalEngine(workers=args.workers).start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    logger.info("Engine started", extra={"workers": args.workers, "pid": os.getpid()})
    stop.wait()
    engine.stop()


if __name__ == "__main__":
    main()
