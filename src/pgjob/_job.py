"""The public face of pgjob: Job, Popen, protect_children() and in_job().

All policy lives here: argument checking, the closed state, logging of fallbacks, and the
boundary where OSErrors from a backend are classified into pgjob's exception classes.
The OS work is delegated to exactly one backend module, chosen once at import.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator, Optional

from . import _errors
from ._base import JobBackend, JobOptions, ProcessHandle
from ._errors import AlreadyInJobError, JobClosedError, JobError, UnsupportedError
from ._log import logger

if TYPE_CHECKING:
    from ._records import JobEvent, JobStats

if sys.platform == "win32":
    from . import _windows as _backend
elif sys.platform.startswith("linux"):
    from . import _linux as _backend
else:
    from . import _unprotected as _backend
from . import _unprotected

__all__ = ["Job", "Popen", "protect_children", "in_job"]

# Failures that mean "this protection can't be had here", as opposed to a bug or bad input.
_UNAVAILABLE = (AlreadyInJobError, UnsupportedError, PermissionError)


def _check_timeout(timeout: object) -> Optional[float]:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    value = float(timeout)
    if math.isnan(value) or value < 0:
        raise ValueError(f"timeout must be >= 0, got {timeout}")
    return value


def _check_pid(pid: object) -> int:
    if isinstance(pid, bool) or not isinstance(pid, numbers.Integral):
        raise TypeError(f"expected a pid (int) or a Popen, not {type(pid).__name__}")
    if not 0 < pid < 2**32:
        raise ValueError(f"not a valid pid: {pid}")
    return int(pid)


class Job:
    """A group of processes that dies as one: with kill_on_close, when the Job is closed or
    its owner dies by any means, the OS kills every member.

    `mechanism` tells what protects you: "job_object" (Windows), "pid_namespace" or
    "pdeathsig" (Linux), or "none" when the OS refused and on_unavailable="log".
    """

    def __init__(
        self,
        kill_on_close: bool = True,
        *,
        name: Optional[str] = None,
        breakaway: bool = False,
        silent_breakaway: bool = False,
        die_on_unhandled_exception: bool = False,
        memory_limit: Optional[int] = None,
        process_memory_limit: Optional[int] = None,
        process_limit: Optional[int] = None,
        cpu_rate: Optional[float] = None,
        on_unavailable: str = "log",
        mechanism: Optional[str] = None,
    ) -> None:
        # Set first: __del__ runs even when validation below raises.
        self._impl: Optional[JobBackend] = None
        self._lock = threading.Lock()
        self._users = 0
        self._release_pending = False
        self._options = JobOptions(
            kill_on_close=kill_on_close, name=name, breakaway=breakaway,
            silent_breakaway=silent_breakaway, die_on_unhandled_exception=die_on_unhandled_exception,
            memory_limit=memory_limit, process_memory_limit=process_memory_limit,
            process_limit=process_limit, cpu_rate=cpu_rate, on_unavailable=on_unavailable,
            mechanism=mechanism,
        )
        self._mechanism = "none"
        try:
            impl = _backend.open_job(self._options)
        except OSError as exc:
            err = _errors.classify(exc, "create")
            # A job with limits never falls back: "none" can't enforce them, and an
            # unenforced limit must not pass silently.
            if (not isinstance(err, _UNAVAILABLE) or self._options.on_unavailable == "raise"
                    or self._options.has_limits):
                if err is exc:
                    raise
                raise err from exc
            _log_unprotected("could not create a job", err)
            impl = _unprotected.UnprotectedJob(self._options)
        self._impl = impl
        self._mechanism = impl.mechanism

    # -- state -------------------------------------------------------------------------

    @property
    def mechanism(self) -> str:
        """What protects the members: "job_object", "pid_namespace", "pdeathsig" or "none"."""
        return self._mechanism

    @property
    def closed(self) -> bool:
        return self._impl is None

    @property
    def options(self) -> JobOptions:
        return self._options

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<pgjob.Job {state} mechanism={self._mechanism!r} kill_on_close={self._options.kill_on_close}>"

    @contextlib.contextmanager
    def _use(self, operation: str) -> Iterator[JobBackend]:
        """Borrow the backend for one operation; classify what it raises.

        close() from another thread while we are inside only marks the job closed; the OS
        handle is released when the last borrower returns, so a handle value is never
        reused under a running syscall.
        """
        with self._lock:
            impl = self._impl
            if impl is None:
                raise JobClosedError(9, f"cannot {operation}: the job is closed")  # EBADF
            self._users += 1
        try:
            yield impl
        except JobError:
            raise
        except OSError as exc:
            # (A target that exited mid-call is detected by the backend, at the lowest layer.)
            err = _errors.classify(exc, operation)
            if err is exc:
                raise
            raise err from exc
        finally:
            with self._lock:
                self._users -= 1
                release = self._users == 0 and self._release_pending
                if release:
                    self._release_pending = False
            if release:
                impl.close()

    # -- membership ------------------------------------------------------------------------

    def popen(self, args: Any, **popen_kwargs: Any) -> "Popen":
        """Start a process in this job; same arguments as subprocess.Popen."""
        return Popen(args, job=self, **popen_kwargs)

    def assign(self, target: Any) -> None:
        """Make a running process a member: a Popen, a pid, or a pgjob.ProcessHandle."""
        handle = None
        if isinstance(target, subprocess.Popen):
            if target.returncode is not None:
                raise _errors.ProcessExitedError(3, f"process {target.pid} has already exited")
            pid = target.pid
            handle = getattr(target, "_handle", None)
        elif isinstance(target, ProcessHandle) or (
                sys.platform == "win32" and type(target).__name__ == "Handle"
                and isinstance(target, int) and type(target).__module__ == "subprocess"):
            handle = int(target)
            pid = 0
        else:
            pid = _check_pid(target)
        with self._use("assign") as impl:
            impl.assign(pid, handle)
        logger.debug("assigned process %s to the job", pid or f"handle {handle}")

    def assign_current(self) -> None:
        """Make the current process a member: every child it creates from now on is one too.

        With kill_on_close, the job then also holds this process: see close() for what that means.
        """
        with self._use("assign_current") as impl:
            impl.assign_current()
        logger.debug("assigned the current process to the job (mechanism=%s)", self._mechanism)

    def contains(self, target: Any) -> bool:
        """Is this process (pid or Popen) a member right now?"""
        pid = target.pid if isinstance(target, subprocess.Popen) else _check_pid(target)
        with self._use("query") as impl:
            return impl.contains(pid)

    def pids(self) -> list:
        """Host pids of the current members, sorted."""
        with self._use("query") as impl:
            return sorted(impl.pids())

    def terminate(self, exit_code: int = 1) -> None:
        """Kill every member now (Windows: with `exit_code`; Linux: SIGKILL)."""
        if isinstance(exit_code, bool) or not isinstance(exit_code, numbers.Integral):
            raise TypeError(f"exit_code must be int, not {type(exit_code).__name__}")
        if not 0 <= exit_code <= 0xFFFFFFFF:
            raise ValueError(f"exit_code must be in 0..2**32-1, got {exit_code}")
        with self._use("terminate") as impl:
            impl.terminate(int(exit_code))
        logger.debug("terminated all members (exit code %d)", exit_code)

    def stats(self) -> JobStats:
        """Accounting: active/total/terminated processes, CPU times, peak memory."""
        with self._use("query") as impl:
            return impl.stats()

    def events(self, timeout: Optional[float] = None) -> Iterator[JobEvent]:
        """Yield JobEvents as the OS reports them, for at most `timeout` seconds in all
        (None: until the job is closed). Notifications may be dropped by the OS under load:
        use wait()/pids() for decisions, events for observation."""
        timeout = _check_timeout(timeout)
        if self.closed:
            raise JobClosedError(9, "cannot read events: the job is closed")
        return self._events(timeout)

    def _events(self, timeout: Optional[float]) -> Iterator[JobEvent]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            # Wait in slices so close() from another thread ends the iteration promptly.
            chunk = 0.25 if remaining is None else min(remaining, 0.25)
            try:
                with self._use("events") as impl:
                    event = impl.next_event(chunk)
            except JobClosedError:
                return
            if event is not None:
                yield event
            elif deadline is not None and time.monotonic() >= deadline:
                return

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until no member is left; True if so, False if `timeout` seconds passed first."""
        timeout = _check_timeout(timeout)
        with self._use("wait") as impl:
            return impl.wait(timeout)

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the job. With kill_on_close, members still running are killed.

        The owner-in-job trap: if the current process is itself a member (assign_current(),
        protect_children()), closing the last handle would kill this very process. close()
        then only marks the Job closed and keeps the OS handle open until the process exits,
        exactly like the PostgreSQL patch does on purpose; the protection stays in force.
        Idempotent; safe to call from any thread.
        """
        with self._lock:
            impl = self._impl
            if impl is None:
                return
            self._impl = None
            if impl.holds_current_process():
                _KEPT_FOR_PROCESS_LIFETIME.append(impl)
                logger.debug("job contains this process: its handle stays open until exit")
                return
            if self._users:
                self._release_pending = True
                impl = None
        if impl is not None:
            impl.close()
            logger.debug("closed the job (kill_on_close=%s)", self._options.kill_on_close)

    def detach(self) -> Optional[int]:
        """Stop owning the OS object without closing it; return its raw handle (Windows) or
        None. The members are no longer killed when this Job is closed or collected."""
        with self._lock:
            impl = self._impl
            if impl is None:
                raise JobClosedError(9, "cannot detach: the job is closed")
            self._impl = None
        return impl.detach()

    def __enter__(self) -> "Job":
        if self.closed:
            raise JobClosedError(9, "cannot enter a closed job")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A finalizer must never raise or replace an exception in flight.
        try:
            if getattr(self, "_impl", None) is not None:
                self.close()
        except Exception:
            pass

    # -- used by Popen and protect_children ---------------------------------------------------

    def _replace_with_unprotected(self) -> None:
        with self._lock:
            old, self._impl = self._impl, _unprotected.UnprotectedJob(self._options)
            self._mechanism = "none"
        if old is not None:
            old.close()

    def _execute_child(self, popen: "Popen", args: tuple) -> None:
        with self._use("spawn") as impl:
            impl.execute_child(popen, subprocess.Popen._execute_child, args)
        logger.debug("spawned pid %s in the job (%s)", popen.pid,
                     getattr(popen, "spawn_path", None) or self._mechanism)


# Jobs that hold the current process: closing them would kill us, so they live until exit.
_KEPT_FOR_PROCESS_LIFETIME: list = []


class Popen(subprocess.Popen):
    """subprocess.Popen whose child is a member of `job` before it runs its first instruction.

    Everything subprocess.Popen accepts works the same. Without `job`, a private
    kill-on-close job is made for this child (`p.job`): it is closed when the Popen's `with`
    block ends, or when the Popen object is garbage-collected, and the tree dies with it.
    Keep a reference for as long as the child should live.
    """

    def __init__(self, args: Any, *, job: Optional[Job] = None, **kwargs: Any) -> None:
        if job is not None and not isinstance(job, Job):
            raise TypeError(f"job must be a pgjob.Job, not {type(job).__name__}")
        self._owns_job = job is None
        self.job = Job() if job is None else job
        #: How the child joined the job: "job_list", "suspended", "clone" ... (backend-specific)
        self.spawn_path: Optional[str] = None
        try:
            if self.job.closed:
                raise JobClosedError(9, "cannot start a process in a closed job")
            super().__init__(args, **kwargs)
        except BaseException:
            if self._owns_job:
                self.job.close()
            raise

    def _execute_child(self, *args: Any) -> None:  # type: ignore[override]
        self.job._execute_child(self, args)

    def resume(self) -> None:
        """Let a child started with CREATE_SUSPENDED (Windows) run."""
        resume = getattr(_backend, "resume", None)
        if resume is None:
            raise UnsupportedError(38, "starting a process suspended is a Windows feature")
        resume(self)

    def __exit__(self, *exc_info: Any) -> None:
        try:
            super().__exit__(*exc_info)
        finally:
            if self._owns_job:
                self.job.close()


def protect_children(**job_options: Any) -> Job:
    """Make every child this process creates from now on die with it, by any means it is
    created (subprocess, os.system, multiprocessing). The PostgreSQL patch in one call.

    Never raises because protection is unavailable: it logs what failed, the error code and
    that orphan protection is off, and returns a Job whose mechanism is "none". Pass
    on_unavailable="raise" to get the exception instead. Calling it again returns the same Job.
    """
    global _PROTECTION
    with _PROTECTION_LOCK:
        if _PROTECTION is not None:
            return _PROTECTION
        job_options.setdefault("kill_on_close", True)
        job = Job(**job_options)
        if job.mechanism != "none":
            try:
                job.assign_current()
            except _UNAVAILABLE as exc:
                if job.options.on_unavailable == "raise":
                    job.close()
                    raise
                _log_unprotected("could not put this process in a job", exc)
                job._replace_with_unprotected()
            else:
                logger.info("orphan protection enabled: children die with this process "
                            "(mechanism=%s)", job.mechanism)
        _PROTECTION = job
        return job

_PROTECTION: Optional[Job] = None
_PROTECTION_LOCK = threading.Lock()


def _log_unprotected(what: str, err: BaseException) -> None:
    code = getattr(err, "winerror", None) or getattr(err, "errno", None)
    logger.warning("%s: %s (error code %s); orphan protection is off (mechanism=none)",
                   what, err, code)


def in_job(pid: Optional[int] = None) -> bool:
    """Is the process (default: this one) in any job (Windows) / pgjob namespace (Linux)?"""
    if pid is not None:
        pid = _check_pid(pid)
    try:
        return _backend.in_job(pid)
    except OSError as exc:
        err = _errors.classify(exc, "open_process")
        if err is exc:
            raise
        raise err from exc
