"""The "none" backend: no kernel guarantee, but the same API over the processes pgjob itself
started. Used where the OS refused protection (and on_unavailable="log") and on platforms
without a backend, so callers never need a second code path."""
from __future__ import annotations

import errno
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Optional

from . import _records
from ._base import JobBackend, JobOptions
from ._errors import UnsupportedError

if TYPE_CHECKING:
    import types

    from ._job import Popen
    from ._records import JobEvent, JobStats


class UnprotectedJob(JobBackend):
    mechanism = "none"

    def __init__(self, options: JobOptions) -> None:
        self.options = options
        self._children: "weakref.WeakValueDictionary[int, Popen]" = weakref.WeakValueDictionary()
        self._started = 0
        self._lock = threading.Lock()

    def execute_child(self, popen: Popen, execute_child: types.FunctionType,
                      args: tuple[Any, ...]) -> None:
        execute_child(popen, *args)
        popen.spawn_path = "plain"
        with self._lock:
            self._children[popen.pid] = popen
            self._started += 1

    def _alive(self) -> list[Popen]:
        with self._lock:
            popens = list(self._children.values())
        return [p for p in popens if p.poll() is None]

    def assign(self, pid: int, handle: Optional[int]) -> None:
        raise UnsupportedError(errno.EOPNOTSUPP, "no job mechanism is available: a running process can't be assigned")

    def assign_current(self) -> None:
        raise UnsupportedError(errno.EOPNOTSUPP, "no job mechanism is available on this platform")

    def contains(self, pid: int) -> bool:
        return any(p.pid == pid for p in self._alive())

    def pids(self) -> list[int]:
        return [p.pid for p in self._alive()]

    def terminate(self, exit_code: int) -> None:
        for p in self._alive():
            try:
                p.kill()
            except OSError:
                pass  # exited between poll() and kill()

    def stats(self) -> JobStats:
        alive = len(self._alive())
        return _records.JobStats(active_processes=alive, total_processes=self._started,
                                 terminated_processes=None)

    def next_event(self, timeout: Optional[float]) -> Optional[JobEvent]:
        # No event source without a kernel object: honour the wait, report nothing.
        time.sleep(0.25 if timeout is None else timeout)
        return None

    def wait(self, timeout: Optional[float]) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for p in self._alive():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                p.wait(remaining)
            except Exception:  # subprocess.TimeoutExpired
                return False
        return True

    def close(self) -> None:
        if self.options.kill_on_close:
            self.terminate(1)

    def detach(self) -> Optional[int]:
        return None


GUARANTEES: dict[str, str] = {}


def candidates(options: JobOptions, current_process: bool = False) -> list[str]:
    """Platforms pgjob has no kernel mechanism for (e.g. macOS): nothing to try."""
    return []


def open_mechanism(name: str, options: JobOptions) -> JobBackend:
    # Job() logs this and falls back to UnprotectedJob, or raises with on_unavailable="raise".
    raise UnsupportedError(errno.EOPNOTSUPP, f"pgjob has no process-containment mechanism on {sys.platform}")


def in_job(pid: Optional[int]) -> bool:
    return False
