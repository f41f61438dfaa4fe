"""The cores this process may use, and background work at a lower CPU priority than the event loop, so
the loop and short calls keep pace.

On Linux a thread's nice value is its own (setpriority on its thread id) and every thread it starts
inherits it. A model built from a thread that lowered its priority therefore runs all of its worker
threads, and the thread pools they start later, at that priority, while the event loop, the voice
activity threads and the rest of the process keep theirs. Elsewhere the value is ignored.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def available_cores() -> int:
    """Cores this process may run on (affinity and cpusets respected where the OS says)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def build_at_nice(build: Callable[[], T], nice: int) -> T:
    """`build()` run in a new thread whose nice value is raised by `nice` (0: in this thread, unchanged). Blocking."""
    if nice <= 0 or sys.platform != "linux":
        return build()
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
            result.append(build())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="build-at-lower-priority")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]
