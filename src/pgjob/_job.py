"""The public face of pgjob: Job, Popen, protect_children() and in_job().

All policy lives here: argument checking, the closed state, logging of fallbacks, and the
boundary where OSErrors from a backend are classified into pgjob's exception classes.
The OS work is delegated to exactly one backend module, chosen once at import.
"""
from __future__ import annotations

import errno
import logging
import math
import numbers
import os
import subprocess
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator, Literal, Optional

from . import _errors
from ._base import JobBackend, JobOptions, ProcessHandle
from ._errors import AlreadyInJobError, JobClosedError, JobError, UnsupportedError
from ._log import logger

if TYPE_CHECKING:
    import asyncio.subprocess
    import types

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
    number = int(pid)
    if not 0 < number < 2**32:
        raise ValueError(f"not a valid pid: {pid}")
    return number


class _Borrow:
    """Job._use(): a class, not a contextlib generator (cheaper, and spawns are frequent)."""

    __slots__ = ("job", "operation", "spawning", "impl")

    def __init__(self, job: "Job", operation: str, spawning: bool) -> None:
        self.job = job
        self.operation = operation
        self.spawning = spawning

    def __enter__(self) -> JobBackend:
        self.impl = self.job._borrow(self.operation)
        return self.impl

    def __exit__(self, exc_type: Any, exc: Optional[BaseException],
                 tb: Any) -> Literal[False]:
        try:
            if exc is not None:
                self.job._classify_failure(self.impl, exc, self.spawning)
            return False
        finally:
            self.job._give_back(self.impl)


class Job:
    """A group of processes that dies as one: with kill_on_close, when the Job is closed or
    its owner dies by any means, the OS kills every member.

    `mechanism` tells what protects you: "job_object" (Windows), "pid_namespace", "cgroup"
    or "pdeathsig" (Linux), or "none" (asked for, or the OS refused the default and
    on_unavailable="log"; a named mechanism or a limit is never downgraded).

    A Job belongs to the process that created it: in a child of os.fork() it is inert.
    """

    # True for the Job protect_children() makes: it is for this process itself, which
    # narrows the mechanisms a backend may offer (_backend.candidates).
    _current_process = False

    @classmethod
    def _for_current_process(cls, **job_options: Any) -> "Job":
        job = cls.__new__(cls)
        job._current_process = True
        cls.__init__(job, **job_options)
        return job

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
        # A Condition on _lock, made by the first detach() that has to wait for borrowers:
        # notified when the last one returns.
        self._idle: Optional[threading.Condition] = None
        self._detaching = 0  # threads in detach() waiting on _idle
        self._users = 0
        self._release_pending = False
        self._owner = os.getpid()
        self._gone_reason: Optional[str] = None  # why the Job closed itself, if it did
        self._options = JobOptions(
            kill_on_close=kill_on_close, name=name, breakaway=breakaway,
            silent_breakaway=silent_breakaway, die_on_unhandled_exception=die_on_unhandled_exception,
            memory_limit=memory_limit, process_memory_limit=process_memory_limit,
            process_limit=process_limit, cpu_rate=cpu_rate, on_unavailable=on_unavailable,
            mechanism=mechanism,
        )
        self._mechanism = "none"
        if self._options.mechanism == "none":
            # Asked for by name: no backend involved, nothing to fall back from. It enforces
            # no limit, and an unenforced limit must not pass silently.
            if self._options.has_limits:
                raise UnsupportedError(errno.EOPNOTSUPP,
                                       "mechanism 'none' can't enforce job limits")
            impl: JobBackend = _unprotected.UnprotectedJob(self._options)
        else:
            impl = self._open_backend()
        self._impl = impl
        self._mechanism = impl.mechanism
        _LIVE_JOBS.add(self)

    def _open_backend(self) -> JobBackend:
        """The one place a mechanism is chosen: the one named, or the backend's candidates
        best first. A failure that means "unavailable here" moves on to the next candidate
        (logged, naming what is lost), and after the last to "none" (logged as the
        PostgreSQL patch does); anything else raises. Never a silent downgrade: a job with
        limits or a named mechanism raises, and so does any with on_unavailable="raise"."""
        options = self._options
        named = options.mechanism
        candidates = ([named] if named is not None
                      else _backend.candidates(options, current_process=self._current_process))
        strict = options.on_unavailable == "raise" or options.has_limits or named is not None
        err: Optional[BaseException] = None
        for i, name in enumerate(candidates):
            try:
                return _backend.open_mechanism(name, options)
            except OSError as exc:
                err = _errors.classify(exc)
                if not isinstance(err, _UNAVAILABLE) or strict:
                    if err is exc:
                        raise
                    raise err from exc
            if i + 1 < len(candidates):
                fallback = candidates[i + 1]
                logger.warning("mechanism=%s is unavailable: %s (errno %s); falling back to "
                               "mechanism=%s: %s", name, _describe(err),
                               getattr(err, "errno", None), fallback,
                               _backend.GUARANTEES.get(fallback, "weaker protection"))
        if err is None:  # no candidate at all on this platform
            err = UnsupportedError(errno.EOPNOTSUPP,
                                   f"pgjob has no process-containment mechanism on {sys.platform}")
            if strict:
                raise err
        _log_unprotected("could not create a job", err)
        return _unprotected.UnprotectedJob(options)

    # -- state -------------------------------------------------------------------------

    @property
    def mechanism(self) -> str:
        """What protects the members: "job_object", "pid_namespace", "cgroup", "pdeathsig"
        or "none"."""
        return self._mechanism

    @property
    def closed(self) -> bool:
        # In a child of os.fork() the Job is the parent's: closed here, hook or no hook.
        return self._impl is None or self._owner != os.getpid()

    @property
    def options(self) -> JobOptions:
        return self._options

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<pgjob.Job {state} mechanism={self._mechanism!r} kill_on_close={self._options.kill_on_close}>"

    def _closed_error(self, operation: str) -> JobClosedError:
        if self._owner != os.getpid():
            return JobClosedError(errno.EBADF, f"cannot {operation}: this Job belongs to process "
                                     f"{self._owner}; in process {os.getpid()} (made by "
                                     "os.fork()) it is inert")
        if self._gone_reason is not None:
            return JobClosedError(errno.EBADF, f"cannot {operation}: the job is closed "
                                     f"({self._gone_reason})")
        return JobClosedError(errno.EBADF, f"cannot {operation}: the job is closed")

    def _use(self, operation: str, *, spawning: bool = False) -> "_Borrow":
        """Borrow the backend for one operation (`with job._use("assign") as impl:`); raise
        what it raises as the pgjob error it means (`_errors.classify`; while `spawning`, an
        unmarked error is the program's and stays as it is). `operation` names it in errors.

        close() or detach() from another thread while we are inside only marks the job
        closed; the OS handle is released when the last borrower returns, so a handle value
        is never reused under a running syscall.
        """
        return _Borrow(self, operation, spawning)

    def _borrow(self, operation: str) -> JobBackend:
        """The start of a borrow (_use): the backend, counted as in use."""
        if self._owner != os.getpid():
            # A fork whose at-fork hook did not run (a raw fork syscall): inert all the same.
            self._forget_after_fork()
        with self._lock:
            impl = self._impl
            if impl is None:
                raise self._closed_error(operation)
            self._users += 1
        return impl

    def _classify_failure(self, impl: JobBackend, exc: BaseException, spawning: bool) -> None:
        """What a borrow does with the backend's exception: a JobClosedError (the OS object
        is gone) closes the Job; another OSError is classified, and raised as the class it
        means (from the original) if that differs. Returns when `exc` stands as it is."""
        if isinstance(exc, JobClosedError):
            self._gone(impl, exc)
        elif isinstance(exc, OSError) and not isinstance(exc, JobError):
            # (A target that exited mid-call is detected by the backend, at the lowest layer.)
            err = _errors.classify(exc, spawning=spawning)
            if isinstance(err, JobClosedError):
                self._gone(impl, err)
            if err is not exc:
                raise err from exc

    def _give_back(self, impl: JobBackend) -> None:
        """The end of a borrow (_use): the last borrower releases an object closed meanwhile,
        and wakes a detach() waiting for the borrowers to leave."""
        with self._lock:
            self._users -= 1
            release = self._users == 0 and self._release_pending
            if release:
                self._release_pending = False
            if self._users == 0 and self._detaching:
                self._idle.notify_all()  # type: ignore[union-attr]  # made by detach()
        if release:
            try:
                impl.close()
            except OSError as exc:  # an object already gone can fail to close: say so, go on
                logger.debug("releasing the job's OS object: %s", exc)

    def _gone(self, impl: JobBackend, err: OSError) -> None:
        """The backend says its OS object is gone (a namespace's init was killed, a handle
        closed behind our back): the Job closes itself, once, and says so."""
        with self._lock:
            if self._impl is not impl:
                return  # closed or detached meanwhile, or already noted by another thread
            self._impl = None
            self._gone_reason = f"its OS object is gone: {err.strerror or err}"
            self._release_pending = True  # released by the last borrower (at least us)
        logger.warning("the job (mechanism=%s) can no longer be used: %s; it is closed now",
                       self._mechanism, err.strerror or err)

    # -- membership ------------------------------------------------------------------------

    def popen(self, *args: Any, **popen_kwargs: Any) -> "Popen":
        """Start a process in this job; same arguments as subprocess.Popen."""
        return Popen(*args, job=self, **popen_kwargs)

    def assign(self, target: Any) -> None:
        """Make a running process a member: a Popen, a pid, or a pgjob.ProcessHandle."""
        handle = None
        if isinstance(target, subprocess.Popen):
            if target.returncode is not None:
                raise _errors.ProcessExitedError(errno.ESRCH,
                                                 f"process {target.pid} has already exited")
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

    def pids(self) -> list[int]:
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
        if self._owner != os.getpid():
            self._forget_after_fork()
        if self.closed:
            raise self._closed_error("read events")
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
        """Block until no member is left; True if so, False if `timeout` seconds passed first
        or another thread closed or detached the Job meanwhile."""
        timeout = _check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        first = True
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            # In slices, as events(): close() or detach() from another thread must not wait
            # for the members to exit before it can release the OS object.
            chunk = 0.25 if remaining is None else min(remaining, 0.25)
            try:
                with self._use("wait") as impl:
                    if impl.wait(chunk):
                        return True
            except JobClosedError:
                if first:
                    raise
                return False
            first = False
            if deadline is not None and time.monotonic() >= deadline:
                return False

    # -- asyncio -------------------------------------------------------------------------

    async def create_subprocess_exec(self, program: Any, *args: Any,
                                     **kwargs: Any) -> "asyncio.subprocess.Process":
        """asyncio.create_subprocess_exec(program, *args, **kwargs), with the child a member
        from its first instruction (as job.popen()). On asyncio's own event loops: the
        selector loop on Linux, the Proactor loop on Windows."""
        from . import _asyncio
        return await _asyncio.create_subprocess_exec(self, program, *args, **kwargs)

    async def create_subprocess_shell(self, cmd: Any,
                                      **kwargs: Any) -> "asyncio.subprocess.Process":
        """asyncio.create_subprocess_shell(cmd, **kwargs), with the shell a member."""
        from . import _asyncio
        return await _asyncio.create_subprocess_shell(self, cmd, **kwargs)

    async def wait_async(self, timeout: Optional[float] = None) -> bool:
        """wait() for asyncio: True once no member is left, False if `timeout` seconds passed
        first or the Job was closed or detached meanwhile. Cancelling it changes nothing."""
        timeout = _check_timeout(timeout)
        from . import _asyncio
        return await _asyncio.wait_async(self, timeout)

    def events_async(self, timeout: Optional[float] = None) -> AsyncIterator[JobEvent]:
        """events() for asyncio: `async for event in job.events_async():`."""
        timeout = _check_timeout(timeout)
        if self._owner != os.getpid():
            self._forget_after_fork()
        if self.closed:
            raise self._closed_error("read events")
        from . import _asyncio
        return _asyncio.events_async(self, timeout)

    async def __aenter__(self) -> "Job":
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the job. With kill_on_close, members still running are killed.

        The owner-in-job trap: if the current process is itself a member (assign_current(),
        protect_children()), closing the last handle would kill this very process. close()
        then only marks the Job closed and keeps the OS handle open until the process exits,
        exactly like the PostgreSQL patch does on purpose; the protection stays in force.
        Idempotent; safe to call from any thread. In a process made by os.fork() the Job
        is inert: close() there does nothing (the OS object is the parent's).
        """
        if self._owner != os.getpid():
            self._forget_after_fork()
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
        None. The members are no longer killed when this Job is closed or collected.

        Other threads inside events(), wait() or terminate() finish their call first (events
        and wait return within a quarter of a second, as after close()); the descriptors
        are released after that, never under a running syscall."""
        if self._owner != os.getpid():
            self._forget_after_fork()
        with self._lock:
            impl = self._impl
            if impl is None:
                raise self._closed_error("detach")
            self._impl = None
            self._detaching += 1
            try:
                while self._users:
                    if self._idle is None:
                        self._idle = threading.Condition(self._lock)
                    self._idle.wait()
            finally:
                self._detaching -= 1
        return impl.detach()

    def __enter__(self) -> "Job":
        if self._owner != os.getpid():
            self._forget_after_fork()
        if self.closed:
            raise self._closed_error("enter the job")
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

    def _forget_after_fork(self) -> None:
        """In the child of os.fork(): the OS object is the parent's. Drop it without
        touching it (no kill, no detach, no close of what the parent still uses), so that
        nothing this process does can reach the parent's members."""
        impl, self._impl = self._impl, None
        # The parent's lock may have been held by a thread that does not exist here.
        self._lock = threading.Lock()
        self._idle = None
        self._detaching = 0
        self._users = 0
        self._release_pending = False
        if impl is not None:
            # Kept, never collected: a backend's cleanup would act on the parent's objects.
            # Its descriptors are close-on-exec, so a program this process execs has none.
            _INHERITED_FROM_PARENT.append(impl)

    # -- used by Popen and protect_children ---------------------------------------------------

    def _replace_with_unprotected(self) -> None:
        with self._lock:
            old, self._impl = self._impl, _unprotected.UnprotectedJob(self._options)
            self._mechanism = "none"
        if old is not None:
            old.close()

    def _execute_child(self, popen: "Popen", execute_child: types.FunctionType,
                       args: tuple[Any, ...]) -> None:
        # _use("spawn", spawning=True), spelled out: a spawn is the hot path.
        impl = self._borrow("spawn")
        try:
            impl.execute_child(popen, execute_child, args)
        except BaseException as exc:
            self._classify_failure(impl, exc, True)
            raise
        finally:
            self._give_back(impl)
        if popen.spawn_path is None and getattr(popen, "_child_created", False):
            # The backend's hook sets spawn_path when it creates the process. A child made
            # without it is not a member: a wrapper around Popen._execute_child (a profiler,
            # a mocking library) called the original function, whose own globals pgjob did
            # not route. Don't hand out an unprotected child as a member.
            _kill_escaped(popen)
            code = getattr(execute_child, "__code__", None)
            where = "?" if code is None else f"{code.co_filename}:{code.co_firstlineno}"
            raise UnsupportedError(
                errno.EOPNOTSUPP, f"the child (pid {popen.pid}) was started outside the job, "
                "and has been killed: subprocess.Popen._execute_child is a wrapper (defined at "
                f"{where}) that calls another function; pgjob can put a child in a job only "
                "through subprocess's own _execute_child")
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("spawned pid %s in the job (%s)", popen.pid,
                         popen.spawn_path or self._mechanism)


def _kill_escaped(popen: "Popen") -> None:
    try:
        popen.kill()
        popen.wait()
    except OSError:
        pass  # gone already


# Jobs that hold the current process: closing them would kill us, so they live until exit.
_KEPT_FOR_PROCESS_LIFETIME: list[JobBackend] = []

# Every open Job of this process, so that a child of os.fork() can make its copies inert.
_LIVE_JOBS: "weakref.WeakSet[Job]" = weakref.WeakSet()
# In a forked child: the parent's backends, which must neither act nor be collected here.
_INHERITED_FROM_PARENT: list[JobBackend] = []


def _after_fork_in_child() -> None:
    try:
        jobs = list(_LIVE_JOBS)
    except Exception:  # a set another thread was changing at fork time: nothing to lose
        jobs = []
    for job in jobs:
        job._forget_after_fork()
    # The parent's dropped Popens are the parent's to sweep.
    del _DROPPED_POPENS[:]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Popen(subprocess.Popen[Any]):
    """subprocess.Popen whose child is a member of `job` before it runs its first instruction.

    Everything subprocess.Popen accepts works the same, positional arguments included, plus
    the keyword-only `job`. Without `job`, a private kill-on-close job is made for this child
    (`p.job`): it is closed when the Popen's `with` block ends, and the tree dies with it.
    Dropping the Popen does not kill the child, as with subprocess.Popen: the private job
    stays until the child has exited (it is closed then, killing what the child left
    behind), and still kills the tree if this process dies first.
    """

    #: Windows: the thread handle of a child started with CREATE_SUSPENDED, kept for resume().
    _suspended_thread: Optional[int]

    def __init__(self, *args: Any, job: Optional[Job] = None, **kwargs: Any) -> None:
        if job is not None and not isinstance(job, Job):
            raise TypeError(f"job must be a pgjob.Job, not {type(job).__name__}")
        if _DROPPED_POPENS:
            _sweep_dropped_popens()
        self._owns_job = job is None
        self.job = Job() if job is None else job
        #: How the child joined the job: "setns", "vfork_pdeathsig" (Linux), "job_list",
        #: "suspended" (Windows) or "plain" (mechanism "none").
        self.spawn_path: Optional[str] = None
        try:
            if self.job.closed:
                raise self.job._closed_error("start a process")
            super().__init__(*args, **kwargs)
        except BaseException:
            if self._owns_job:
                self.job.close()
            raise

    def _execute_child(self, *args: Any) -> None:
        # The next _execute_child in the MRO, not subprocess.Popen's attribute: after
        # `subprocess.Popen = pgjob.Popen` that would be this very method.
        # (typeshed does not declare the private _execute_child.)
        execute_child = super()._execute_child.__func__  # type: ignore[misc]
        self.job._execute_child(self, execute_child, args)

    def resume(self) -> None:
        """Let a child started with CREATE_SUSPENDED (Windows) run."""
        resume = getattr(_backend, "resume", None)
        if resume is None:
            raise UnsupportedError(errno.EOPNOTSUPP, "starting a process suspended is a Windows feature")
        resume(self)

    def __exit__(self, *exc_info: Any) -> None:
        try:
            super().__exit__(*exc_info)
        finally:
            if self._owns_job:
                self.job.close()

    def __del__(self, *args: Any, **kwargs: Any) -> None:
        # subprocess's rule: dropping a Popen never kills its child (on POSIX it keeps the
        # object in subprocess._active; on Windows it lets it go). Keep a running child's
        # private job alive with it, on every system, until a later Popen sees it exited.
        try:
            super().__del__(*args, **kwargs)
            if (getattr(self, "_owns_job", False) and getattr(self, "_child_created", False)
                    and self.returncode is None and not self.job.closed):
                _DROPPED_POPENS.append(self)
        except Exception:
            pass  # a finalizer never raises (and at shutdown, modules may be half gone)


# Popens dropped while their child ran, kept with their private job (like subprocess._active).
_DROPPED_POPENS: list[Popen] = []


def _sweep_dropped_popens() -> None:
    """Let go of the dropped Popens whose child has exited: their private job is closed
    when they are collected. list.remove and the slice copy are atomic under the GIL."""
    for popen in _DROPPED_POPENS[:]:
        try:
            exited = popen.poll() is not None
        except Exception:
            exited = True
        if exited:
            try:
                _DROPPED_POPENS.remove(popen)
            except ValueError:
                pass  # another thread swept it


def protect_children(**job_options: Any) -> Job:
    """Make every child this process creates from now on die with it, by any means it is
    created (subprocess, os.system, multiprocessing), from any thread. The PostgreSQL patch
    in one call. On Windows the process joins a Job Object; on Linux a cgroup (mechanism
    "cgroup", docs/linux.md): which one is chosen where every Job's mechanism is.

    Never raises because protection is unavailable: it logs what failed, the error code and
    that orphan protection is off, leaves the process as it was, and returns a Job whose
    mechanism is "none". Pass on_unavailable="raise" to get the exception instead (raised
    before anything changed). Calling it again returns the same Job.
    """
    global _PROTECTION
    with _PROTECTION_LOCK:
        if _PROTECTION is not None:
            return _PROTECTION
        job_options.setdefault("kill_on_close", True)
        job = Job._for_current_process(**job_options)
        if job.mechanism != "none":
            try:
                job.assign_current()
            except _UNAVAILABLE as exc:
                # The backend leaves the process where it was when it fails; closing the job
                # removes what was made for it (the cgroup, the watcher).
                if job.options.on_unavailable == "raise":
                    job.close()
                    raise
                _log_unprotected("could not put this process in a job", exc)
                job._replace_with_unprotected()
            except BaseException:
                job.close()
                raise
            else:
                logger.info("orphan protection enabled: children die with this process "
                            "(mechanism=%s)", job.mechanism)
        _PROTECTION = job
        return job

_PROTECTION: Optional[Job] = None
_PROTECTION_LOCK = threading.Lock()


def _describe(err: BaseException) -> str:
    """An error's text for a log line: an OSError's strerror and the file it names."""
    text = getattr(err, "strerror", None) or str(err)
    filename = getattr(err, "filename", None)
    return f"{text}: {filename}" if filename is not None else text


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
        err = _errors.classify(exc)
        if err is exc:
            raise
        raise err from exc
