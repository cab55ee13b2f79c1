"""The local run's execution engine: the layer's dispatcher loop feeding in-process workers.

Same claims, executors and outcome SQL as on AWS; the SQS queue is replaced by a thread pool,
and outcomes are written in batches by one recorder thread (one statement per batch).
`python -m devtools.engine` runs one engine process; `make run` starts AT_DISPATCHERS of them.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import threading
import time

from atcore import db, execution
from atcore.dispatcher import Dispatcher
from atcore.errors import DatabaseUnavailable
from atcore.execution import ClaimedTask, Outcome
from atcore.observability import logger

_RECORD_BATCH = 1000


class LocalEngine:
    def __init__(self, workers: int = 32, max_in_flight: int = 2000) -> None:
        # Long-lived worker threads on a plain queue: an executor Future per task cost more than
        # the queue itself, and keep-alive callback connections are cached per thread.
        self._workers = workers
        self._tasks: queue.SimpleQueue[ClaimedTask | None] = queue.SimpleQueue()
        self._outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._in_flight = 0
        self._lock = threading.Lock()
        self._max_in_flight = max_in_flight
        self._stopping = threading.Event()
        self._dispatcher = Dispatcher(self._submit, capacity=self._room)
        self._threads: list[threading.Thread] = []

    def _room(self) -> int:
        with self._lock:
            return self._max_in_flight - self._in_flight

    def _submit(self, tasks: list[ClaimedTask]) -> None:
        with self._lock:
            self._in_flight += len(tasks)
        for task in tasks:
            self._tasks.put(task)

    def _work_forever(self) -> None:
        while (task := self._tasks.get()) is not None:
            self._outcomes.put(execution.execute(task))

    def _record_forever(self) -> None:
        while not (self._stopping.is_set() and self._in_flight == 0):
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
            self._in_flight -= len(batch)

    def start(self) -> LocalEngine:
        keep_running = lambda: not self._stopping.is_set()  # noqa: E731
        threads = [threading.Thread(target=self._dispatcher.run, args=(keep_running,), name="at-dispatcher"),
                   threading.Thread(target=self._record_forever, name="at-recorder")]
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
