"""The records pgjob hands back: JobStats and JobEvent, immutable plain records (_base._Record:
compared and hashed by their fields, `_asdict()`, `_replace()`, picklable)."""
from __future__ import annotations

from typing import Optional

from ._base import EventKind, _Record

__all__ = ["JobStats", "JobEvent"]


class JobStats(_Record):
    """Accounting for a job. Fields an OS can't report are None."""

    __slots__ = ("active_processes", "total_processes", "terminated_processes", "user_time",
                 "kernel_time", "peak_process_memory", "peak_job_memory", "read_bytes",
                 "write_bytes", "peak_processes")

    active_processes: int
    total_processes: Optional[int]
    terminated_processes: Optional[int]
    user_time: Optional[float]  # seconds, summed over all members ever
    kernel_time: Optional[float]  # seconds
    peak_process_memory: Optional[int]  # bytes
    peak_job_memory: Optional[int]  # bytes
    read_bytes: Optional[int]
    write_bytes: Optional[int]
    peak_processes: Optional[int]  # most processes at once (Linux cgroup: pids.peak)

    def __init__(self, active_processes: int, total_processes: Optional[int] = None,
                 terminated_processes: Optional[int] = None, user_time: Optional[float] = None,
                 kernel_time: Optional[float] = None, peak_process_memory: Optional[int] = None,
                 peak_job_memory: Optional[int] = None, read_bytes: Optional[int] = None,
                 write_bytes: Optional[int] = None, peak_processes: Optional[int] = None) -> None:
        self._set_fields(active_processes, total_processes, terminated_processes, user_time,
                         kernel_time, peak_process_memory, peak_job_memory, read_bytes,
                         write_bytes, peak_processes)


class JobEvent(_Record):
    """One notification about the job. `pid` is None for job-wide events.

    ABNORMAL_EXIT_PROCESS means the member died from an exception or a signal: on Windows an
    exit code with NTSTATUS error severity (0xC0000005 ...), reported as such even where the
    kernel posted a plain exit (fast-fail codes, Wine). `os_message` keeps the kernel's own
    message code (Windows JOB_OBJECT_MSG_*), None where the event has no kernel message.
    """

    __slots__ = ("kind", "pid", "exit_code", "os_message")

    kind: EventKind
    pid: Optional[int]
    exit_code: Optional[int]
    os_message: Optional[int]

    def __init__(self, kind: EventKind, pid: Optional[int] = None,
                 exit_code: Optional[int] = None, os_message: Optional[int] = None) -> None:
        self._set_fields(kind, pid, exit_code, os_message)
