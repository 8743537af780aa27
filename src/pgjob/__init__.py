"""pgjob: make a process's children die with it, enforced by the kernel.

    with pgjob.Job(kill_on_close=True) as job:
        job.popen(["server", "--port", "5432"])

Windows: a Job Object with KILL_ON_JOB_CLOSE. Linux: a PID namespace whose init dies with
the owner (or a weaker, named fallback). `job.mechanism` always says which one protects you.
"""
__version__ = "0.1.0"

from . import _jobobject  # noqa: E402  (checked before anything calls it)

if getattr(_jobobject, "VERSION", None) != __version__:
    # A stale build (an in-place extension from another checkout, a wheel's .so copied over):
    # its functions may take other arguments than this Python code passes. psutil does the same.
    raise ImportError(
        f"pgjob {__version__} found its C extension {_jobobject.__file__} built for pgjob "
        f"{getattr(_jobobject, 'VERSION', 'before 0.1.0')}: reinstall pgjob, or rebuild the "
        "extension in this tree (python setup.py build_ext --inplace)")

from ._base import EventKind, JobOptions, ProcessHandle  # noqa: E402
from ._errors import (  # noqa: E402
    AlreadyInJobError,
    JobClosedError,
    JobError,
    LimitExceededError,
    ProcessExitedError,
    UnsupportedError,
)
from ._job import Job, Popen, in_job, protect_children  # noqa: E402
from ._records import JobEvent, JobStats  # noqa: E402

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
