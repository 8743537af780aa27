"""The records pgjob hands back: JobStats and JobEvent, immutable named tuples.

Named tuples, as psutil's records are: immutable, hashable, compared field by field, with
`_asdict()` and `_replace()`, and built from `typing`, which `import pgjob` loads anyway
(a dataclass would load `dataclasses` and with it `inspect`: more than the rest of pgjob).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

from ._base import EventKind

__all__ = ["JobStats", "JobEvent"]


class JobStats(NamedTuple):
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


class JobEvent(NamedTuple):
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
