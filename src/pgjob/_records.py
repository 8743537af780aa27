"""The records pgjob hands back: JobStats and JobEvent, small frozen dataclasses.

They live apart from _base so that `import pgjob` does not import dataclasses (and with it
inspect): this module is loaded the first time a record is made.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from ._base import EventKind

__all__ = ["JobStats", "JobEvent"]


@dataclasses.dataclass(frozen=True)
class JobStats:
    """Accounting for a job. Fields an OS can't report are None."""

    active_processes: int
    total_processes: Optional[int] = None
    terminated_processes: Optional[int] = None
    user_time: Optional[float] = None  # seconds, summed over all members ever
    kernel_time: Optional[float] = None  # seconds
    peak_process_memory: Optional[int] = None  # bytes
    peak_job_memory: Optional[int] = None  # bytes
    read_bytes: Optional[int] = None
    write_bytes: Optional[int] = None
    peak_processes: Optional[int] = None  # most processes at once (Linux cgroup: pids.peak)


@dataclasses.dataclass(frozen=True)
class JobEvent:
    """One notification about the job. `pid` is None for job-wide events.

    ABNORMAL_EXIT_PROCESS means the member died from an exception or a signal: on Windows an
    exit code with NTSTATUS error severity (0xC0000005 ...), reported as such even where the
    kernel posted a plain exit (fast-fail codes, Wine). `os_message` keeps the kernel's own
    message code (Windows JOB_OBJECT_MSG_*), None where the event has no kernel message.
    """

    kind: EventKind
    pid: Optional[int] = None
    exit_code: Optional[int] = None
    os_message: Optional[int] = None
