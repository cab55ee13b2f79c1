"""Processes of the local run that end with their parent, however it ends.

`make run` starts engine processes and pre-forks API servers; if the parent is killed outright
(SIGKILL, a crashed terminal) they must not live on, claiming tasks from the database with nobody
watching. Linux delivers PR_SET_PDEATHSIG's signal when the parent dies; elsewhere this is a no-op
and a clean stop (Ctrl+C, SIGTERM) still stops them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Call in the child: SIGTERM it when the parent dies (and now, if it already has)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
