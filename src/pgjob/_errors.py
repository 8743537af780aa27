"""pgjob's exception classes, and how an OSError becomes the one that says what it means.

Every class is an OSError subclass: code that already catches OSError keeps working, and
`errno`/`winerror` stay readable. The original OSError is always kept as `__cause__`.
"""
from __future__ import annotations

import errno
import sys

__all__ = [
    "JobError",
    "AlreadyInJobError",
    "ProcessExitedError",
    "JobClosedError",
    "UnsupportedError",
    "LimitExceededError",
    "mark",
    "error_from",
    "by_code",
    "classify",
]


class JobError(OSError):
    """Base class of every pgjob error."""


class AlreadyInJobError(JobError):
    """The process is already in a job (or namespace) that forbids what was asked:
    nesting, breakaway, or a second assignment."""


class ProcessExitedError(JobError):
    """The target process is gone (exited, or the pid does not exist)."""


class JobClosedError(JobError):
    """The Job was closed or detached; its OS object can no longer be used."""


class UnsupportedError(JobError):
    """The platform, kernel or privileges can't provide the requested feature."""


class LimitExceededError(JobError):
    """A job limit (active processes, memory) refused the operation."""


def mark(exc: OSError, meaning: "type[JobError] | None") -> OSError:
    """Say what `exc` means, where that is known: the pgjob class Job._use raises from it, or
    None for an error that is not about jobs (it stays what subprocess would raise). The C
    layer marks its errors the same way (common_errors.c); returns `exc`."""
    exc._pgjob_meaning = meaning  # type: ignore[attr-defined]
    return exc


def error_from(cls: type[JobError], exc: OSError) -> JobError:
    """`exc` as a `cls`: its code (and winerror), its message naming the failed call, its
    filename and .syscall; the caller raises it `from exc`."""
    syscall = getattr(exc, "syscall", None)
    message = exc.strerror or str(exc)
    if syscall and syscall not in message:
        message = f"{syscall} failed: {message}"
    if sys.platform == "win32" and getattr(exc, "winerror", None) is not None:
        new = cls(exc.errno, message, exc.filename, exc.winerror)
    elif exc.filename is not None:
        new = cls(exc.errno, message, exc.filename)
    else:
        new = cls(exc.errno, message)
    new.syscall = syscall  # type: ignore[attr-defined]
    return new


def by_code(exc: OSError) -> type[JobError]:
    """The class a failed job operation's code names wherever it comes from; JobError if
    none is finer."""
    if sys.platform == "win32" and getattr(exc, "winerror", None) is not None:
        from . import _jobobject as c

        winerror = exc.winerror
        if winerror == c.ERROR_INVALID_HANDLE:
            return JobClosedError  # a job operation's handle is the job's
        if winerror in (c.ERROR_NOT_SUPPORTED, c.ERROR_CALL_NOT_IMPLEMENTED,
                        c.ERROR_INVALID_FUNCTION):
            return UnsupportedError
        if winerror == c.ERROR_NOT_ENOUGH_QUOTA:
            return LimitExceededError
        return JobError
    if exc.errno == errno.ESRCH:
        return ProcessExitedError
    if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
        return UnsupportedError
    return JobError


def classify(exc: OSError, *, spawning: bool = False) -> OSError:
    """The pgjob error `exc` means, raised by Job._use (and at job creation) `from exc`; or
    `exc` itself where it stands as it is.

    The meaning is marked where it is known (`mark`, and `_pgjob_meaning` from the C layer):
    ERROR_ACCESS_DENIED from AssignProcessToJobObject is AlreadyInJobError, from
    CreateProcessW a plain PermissionError. An unmarked error of a job operation is a
    JobError (or the finer class its code names: `by_code`); an unmarked error while
    spawning is the program's (a missing executable, a bad cwd) and stays what
    subprocess.Popen raises.
    """
    if isinstance(exc, JobError):
        return exc
    cls: type[JobError] | None
    try:
        cls = exc._pgjob_meaning  # type: ignore[attr-defined]  # set by mark() or the C layer
    except AttributeError:
        cls = None if spawning else JobError
    if cls is JobError:
        cls = by_code(exc)
    if cls is None:
        return exc
    new = error_from(cls, exc)
    new.__cause__ = exc
    return new
