"""pgjob: make a process's children die with it, enforced by the kernel.

    with pgjob.Job(kill_on_close=True) as job:
        job.popen(["server", "--port", "5432"])

Windows: a Job Object with KILL_ON_JOB_CLOSE. Linux: a PID namespace whose init dies with
the owner (or a weaker, named fallback). `job.mechanism` always says which one protects you.
"""
from typing import TYPE_CHECKING

from ._base import EventKind, JobOptions, ProcessHandle
from ._errors import (
    AlreadyInJobError,
    JobClosedError,
    JobError,
    LimitExceededError,
    ProcessExitedError,
    UnsupportedError,
)
from ._job import Job, Popen, in_job, protect_children

if TYPE_CHECKING:
    from ._records import JobEvent, JobStats

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # JobStats and JobEvent are dataclasses; importing dataclasses only when they are first
    # needed keeps `import pgjob` cheap for programs that never ask for stats or events.
    if name in ("JobStats", "JobEvent"):
        from ._base import records
        return getattr(records, name)
    raise AttributeError(f"module 'pgjob' has no attribute {name!r}")

__all__ = [
    "Job",
    "Popen",
    "protect_children",
    "in_job",
    "JobStats",
    "JobEvent",
    "EventKind",
    "JobOptions",
    "ProcessHandle",
    "JobError",
    "AlreadyInJobError",
    "ProcessExitedError",
    "JobClosedError",
    "UnsupportedError",
    "LimitExceededError",
    "__version__",
]
