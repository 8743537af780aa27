"""pgjob's exception classes and the one function that maps an OS error code to them.

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


#: The .syscall the C layer names when setting CPU-rate control fails (win_job.c).
CPU_RATE_SYSCALL = "SetInformationJobObject(JobObjectCpuRateControlInformation)"


def _windows_table() -> dict[int, type[JobError]]:
    from . import _jobobject as c

    if sys.platform != "win32":  # (for mypy: these codes exist in the Windows build only)
        return {}
    return {
        c.ERROR_NOT_SUPPORTED: UnsupportedError,
        c.ERROR_CALL_NOT_IMPLEMENTED: UnsupportedError,
        c.ERROR_INVALID_FUNCTION: UnsupportedError,
        c.ERROR_NOT_ENOUGH_QUOTA: LimitExceededError,
    }


_POSIX_TABLE: dict[int, type[JobError]] = {
    errno.ESRCH: ProcessExitedError,
    errno.ENOSYS: UnsupportedError,
    errno.EOPNOTSUPP: UnsupportedError,
}


# Linux syscalls whose refusal means "no PID namespace here", and the codes they refuse with.
_NAMESPACE_SYSCALLS = ("clone3", "clone", "unshare", "setns", "pidfd_open",
                       "write /proc/self/uid_map", "write /proc/<init>/setgroups",
                       "write /proc/<init>/gid_map", "write /proc/<init>/uid_map")
_NAMESPACE_REFUSED = (errno.EPERM, errno.EACCES, errno.EINVAL, errno.ENOSPC, errno.EUSERS,
                      errno.ENOSYS)


def classify(exc: OSError, operation: str) -> OSError:
    """Map an OSError raised by pgjob._jobobject to the pgjob class it means.

    `operation` is what pgjob was doing ("create", "assign", "assign_current", "spawn",
    "query", "terminate", ...): the same code means different things in different places
    (ERROR_ACCESS_DENIED from AssignProcessToJobObject means "already in a job that forbids
    nesting"; from CreateProcess it is a plain PermissionError). A target that exited
    mid-call (Windows reports that as ACCESS_DENIED too) is told apart by the backend, which
    can check the process, and raised as ProcessExitedError before it gets here. Errors that
    aren't about jobs (a missing executable while spawning) are returned unchanged, so Popen
    callers still see FileNotFoundError and friends.
    """
    if isinstance(exc, JobError):
        return exc
    cls = _class_for(exc, operation)
    if cls is None:
        return exc
    syscall = getattr(exc, "syscall", None)
    message = exc.strerror or str(exc)
    if syscall and syscall not in message:
        message = f"{syscall} failed: {message}"
    if sys.platform == "win32" and getattr(exc, "winerror", None) is not None:
        new = cls(exc.errno, message, None, exc.winerror)
    else:
        new = cls(exc.errno, message)
    new.syscall = syscall  # type: ignore[attr-defined]
    new.__cause__ = exc
    return new


def _class_for(exc: OSError, operation: str) -> type[JobError] | None:
    winerror = getattr(exc, "winerror", None)
    if sys.platform == "win32" and winerror is not None:
        from . import _jobobject as c

        if winerror == c.ERROR_ACCESS_DENIED and operation in ("assign", "assign_current"):
            return AlreadyInJobError
        if winerror == c.ERROR_INVALID_PARAMETER and getattr(exc, "syscall", "") == CPU_RATE_SYSCALL:
            # Windows 7 (and Wine 8) don't know the CPU-rate information class at all.
            return UnsupportedError
        if winerror == c.ERROR_ACCESS_DENIED and operation == "create":
            # No right to create a job here (sandbox, restricted token): not available.
            return UnsupportedError
        if winerror == c.ERROR_INVALID_PARAMETER and operation in ("open_process", "assign"):
            # OpenProcess says INVALID_PARAMETER for a pid that does not exist (any more).
            return ProcessExitedError
        if winerror == c.ERROR_INVALID_HANDLE and operation not in ("spawn", "open_process"):
            return JobClosedError
        if operation == "spawn" and getattr(exc, "syscall", None) is None:
            # Not from pgjob's C layer (_winapi.CreateProcess's own argument checks):
            # Popen's own error, passed on exactly as subprocess.Popen raises it.
            return None
        if operation == "spawn" and getattr(exc, "syscall", "") == "CreateProcessW":
            # Popen semantics: a missing program is FileNotFoundError, not a job error;
            # only the quota (active-process limit) is ours to name.
            return LimitExceededError if winerror == c.ERROR_NOT_ENOUGH_QUOTA else None
        if operation == "spawn" and winerror == c.ERROR_ACCESS_DENIED:
            return AlreadyInJobError
        return _windows_table().get(winerror, JobError)
    code = exc.errno
    if (operation in ("create", "assign_current")
            and getattr(exc, "syscall", None) in _NAMESPACE_SYSCALLS
            and code in _NAMESPACE_REFUSED):
        # Linux: the kernel, a sysctl (user.max_*_namespaces), seccomp or missing privileges
        # refuse a PID/user namespace. Not "already in a job": the feature is unavailable.
        return UnsupportedError
    if code in (errno.EPERM, errno.EACCES) and operation == "assign":
        # Linux: moving another process into a cgroup, or lowering its limits, refused: we
        # lack the right over that process (another user's). Not about jobs: PermissionError.
        return None
    if code in (errno.EPERM, errno.EACCES) and operation == "assign_current":
        return AlreadyInJobError
    if code == errno.EAGAIN and operation == "spawn":
        return LimitExceededError
    if code == errno.EINVAL and operation in ("create", "assign_current"):
        # unshare()/clone() with a namespace flag the kernel or seccomp policy refuses.
        return UnsupportedError
    if operation == "spawn":
        return None if code is None or code == errno.ESRCH else _POSIX_TABLE.get(code)
    return JobError if code is None else _POSIX_TABLE.get(code, JobError)
