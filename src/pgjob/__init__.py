"""pgjob: make a process's children die with it, enforced by the kernel.

    with pgjob.Job(kill_on_close=True) as job:
        job.popen(["server", "--port", "5432"])

Windows: a Job Object with KILL_ON_JOB_CLOSE. Linux: a PID namespace whose init dies with
the owner (or a weaker, named fallback). `job.mechanism` always says which one protects you.
"""
from ._base import EventKind, JobEvent, JobOptions, JobStats, ProcessHandle
from ._errors import (
    AlreadyInJobError,
    JobClosedError,
    JobError,
    LimitExceededError,
    ProcessExitedError,
    UnsupportedError,
)
from ._job import Job, Popen, in_job, protect_children

__version__ = "0.1.0"

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
