"""Name resolution with a deadline: getaddrinfo has no timeout of its own.

Lookups run on a few daemon threads shared by the whole process (a bounded pool, not a thread per
request) and the caller waits for the answer at most until its deadline. A lookup that outlives its
caller's deadline keeps its pool thread until the resolver gives up (resolv.conf's timeout and
attempts), so a dead DNS server can occupy at most POOL_SIZE threads; lookups queued behind them
fail when their own deadlines pass, and are dropped without running. The threads are daemons so a
stuck lookup never holds up the process's exit.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .deadlines import remaining

POOL_SIZE = 8

AddressInfo = list[tuple[Any, ...]]
_Job = tuple[Future[AddressInfo], Callable[[], AddressInfo]]

_jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
_threads: list[threading.Thread] = []
_threads_lock = threading.Lock()


def getaddrinfo(host: str, port: int, deadline: float) -> AddressInfo:
    """socket.getaddrinfo(host, port) for TCP, or TimeoutError once `deadline` has passed."""
    future: Future[AddressInfo] = Future()
    _jobs.put((future, lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)))
    _start_threads()
    try:
        return future.result(timeout=remaining(deadline))
    except TimeoutError:
        future.cancel()  # still queued: it will never run; already running: its answer is ignored
        raise


def _start_threads() -> None:
    if len(_threads) >= POOL_SIZE:
        return
    with _threads_lock:
        while len(_threads) < POOL_SIZE:
            thread = threading.Thread(target=_work, name=f"at-resolver-{len(_threads)}", daemon=True)
            thread.start()
            _threads.append(thread)


def _forget_threads_after_fork() -> None:
    """A forked child (the local run forks its engines and API servers) inherits no threads."""
    global _jobs, _threads_lock
    _jobs, _threads_lock = queue.SimpleQueue(), threading.Lock()
    _threads.clear()


os.register_at_fork(after_in_child=_forget_threads_after_fork)


def _work() -> None:
    jobs = _jobs
    while True:
        future, lookup = jobs.get()
        if not future.set_running_or_notify_cancel():
            continue  # its caller gave up while it was queued
        try:
            future.set_result(lookup())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller, who re-raises it
            future.set_exception(exc)
