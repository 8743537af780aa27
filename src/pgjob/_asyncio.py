"""pgjob's asyncio API: Job.create_subprocess_exec/_shell, Job.wait_async, Job.events_async.

Imported on first use (asyncio costs more to import than pgjob itself).

Spawning. asyncio's own create_subprocess_exec passes unknown keywords through
loop.subprocess_exec and the loop's _make_subprocess_transport to the transport's _start,
which calls subprocess.Popen (Linux: unix_events._UnixSubprocessTransport) or
windows_utils.Popen (Windows: windows_events._WindowsSubprocessTransport). pgjob adds one
private keyword, the job, and wraps _start once: a call that carries it starts pgjob's Popen
in that job instead, and the rest of asyncio (the child watcher or the Proactor's
wait_for_handle, the pipes, the streams, Process) is the stdlib's, unchanged, on every version.
A call without the keyword goes to the original _start untouched. Only the stdlib's own
loops have these transports: another loop (uvloop) gets UnsupportedError, never a child
outside the job.

Waiting, without a thread or a timer:
- Linux: the backend's watch() (_linux._Watch) is one epoll descriptor made of the members'
  pidfds, pidfds of the processes it holds none for, cgroup.events' POLLPRI and a pipe the job
  pokes when it queues an event; the loop's add_reader waits on it, then wait(0) or
  next_event(0) looks again.
- Windows: the Proactor's wait_for_handle on our own handles of the members (the system's
  wait threads, as asyncio's own process waits). events_async: the process's one pump thread
  (_windows._EventPump), which reads the completion port every Job shares, wakes the await
  with call_soon_threadsafe.
"""
from __future__ import annotations

import asyncio
import functools
import sys
import threading
from typing import TYPE_CHECKING, Any, AsyncIterator, Optional

from ._errors import JobClosedError, UnsupportedError

if TYPE_CHECKING:
    from ._job import Job
    from ._records import JobEvent

__all__ = ["create_subprocess_exec", "create_subprocess_shell", "wait_async", "events_async"]

# The keyword that carries the job through asyncio to the transport's _start.
_JOB_KEYWORD = "_pgjob_job"
_INSTALL_LOCK = threading.Lock()
_WINDOWS = sys.platform == "win32"


def _transport_class() -> Any:
    if sys.platform == "win32":
        from asyncio import windows_events
        return getattr(windows_events, "_WindowsSubprocessTransport")
    from asyncio import unix_events
    return getattr(unix_events, "_UnixSubprocessTransport")


def _loop_classes() -> tuple[type, ...]:
    """The stdlib loops whose subprocess transport is _transport_class()."""
    if sys.platform == "win32":
        from asyncio import windows_events
        return (windows_events.ProactorEventLoop,)
    from asyncio import unix_events
    return (getattr(unix_events, "_UnixSelectorEventLoop"),)


# What the stdlib's _start must do for _start_in_job to be its copy: the names its code uses.
_START_USES = ({"windows_utils", "Popen", "_proc", "_proactor", "wait_for_handle",
                "_process_exited"} if _WINDOWS else {"subprocess", "Popen", "_proc"})


def _install() -> None:
    """Wrap the transport's _start, once per process."""
    cls = _transport_class()
    with _INSTALL_LOCK:
        original = cls._start
        if getattr(original, "_pgjob_original", None) is not None:
            return
        code = getattr(original, "__code__", None)
        names = set(code.co_names) if code is not None else set()
        for inner in (code.co_consts if code is not None else ()):
            names |= set(getattr(inner, "co_names", ()))  # the Windows callback's
        if not _START_USES <= names:
            import errno
            raise UnsupportedError(
                errno.EOPNOTSUPP, f"asyncio's {cls.__qualname__}._start of this Python "
                f"({sys.version.split()[0]}) is not the one pgjob knows (it does not use "
                f"{sorted(_START_USES - names)}): pgjob can't start asyncio subprocesses in a "
                "job here; use job.popen() in loop.run_in_executor()")

        @functools.wraps(original)
        def _start(self: Any, args: Any, shell: bool, stdin: Any, stdout: Any, stderr: Any,
                   bufsize: int, **kwargs: Any) -> None:
            job = kwargs.pop(_JOB_KEYWORD, None)
            if job is None:
                return original(self, args, shell, stdin, stdout, stderr, bufsize, **kwargs)  # type: ignore[no-any-return]
            return _start_in_job(self, job, args, shell, stdin, stdout, stderr, bufsize, **kwargs)

        _start._pgjob_original = original  # type: ignore[attr-defined]
        cls._start = _start


def _start_in_job(transport: Any, job: "Job", args: Any, shell: bool, stdin: Any, stdout: Any,
                  stderr: Any, bufsize: int, **kwargs: Any) -> None:
    """The stdlib transport's _start (the same on 3.9 to 3.15), with pgjob's Popen."""
    if _WINDOWS:
        transport._proc = _windows_popen_class()(
            args, job=job, shell=shell, stdin=stdin, stdout=stdout, stderr=stderr,
            bufsize=bufsize, **kwargs)

        def callback(future: Any) -> None:
            transport._process_exited(transport._proc.poll())

        wait = transport._loop._proactor.wait_for_handle(int(transport._proc._handle))
        wait.add_done_callback(callback)
        return
    from ._job import Popen
    transport._proc = Popen(args, job=job, shell=shell, stdin=stdin, stdout=stdout,
                            stderr=stderr, universal_newlines=False, bufsize=bufsize, **kwargs)


@functools.lru_cache(maxsize=None)
def _windows_popen_class() -> type:
    """windows_utils.Popen (overlapped pipes for the Proactor) over pgjob.Popen (the job)."""
    from asyncio import windows_utils

    from ._job import Popen

    # (typeshed declares windows_utils only for win32, and its Popen without arguments.)
    base: Any = getattr(windows_utils, "Popen")

    class _ProactorPopen(base, Popen):  # type: ignore[misc]
        pass

    return _ProactorPopen


def _running_loop(job: "Job", operation: str) -> asyncio.AbstractEventLoop:
    loop = asyncio.get_running_loop()
    if not isinstance(loop, _loop_classes()):
        import errno
        raise UnsupportedError(
            errno.EOPNOTSUPP, f"{operation}: pgjob starts processes only on asyncio's own "
            f"{'Proactor' if _WINDOWS else 'selector'} event loop, not on "
            f"{type(loop).__module__}.{type(loop).__qualname__}; use job.popen() in "
            "loop.run_in_executor() there")
    if job.closed:
        raise job._closed_error("start a process")
    return loop


async def create_subprocess_exec(job: "Job", program: Any, *args: Any,
                                 **kwargs: Any) -> asyncio.subprocess.Process:
    _running_loop(job, "create_subprocess_exec")
    _install()
    kwargs[_JOB_KEYWORD] = job
    return await asyncio.create_subprocess_exec(program, *args, **kwargs)


async def create_subprocess_shell(job: "Job", cmd: Any,
                                  **kwargs: Any) -> asyncio.subprocess.Process:
    _running_loop(job, "create_subprocess_shell")
    _install()
    kwargs[_JOB_KEYWORD] = job
    return await asyncio.create_subprocess_shell(cmd, **kwargs)


def _deadline(loop: asyncio.AbstractEventLoop, timeout: Optional[float]) -> Optional[float]:
    return None if timeout is None else loop.time() + timeout


def _remaining(loop: asyncio.AbstractEventLoop, deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else max(0.0, deadline - loop.time())


async def _until_readable(loop: asyncio.AbstractEventLoop, fd: int,
                          timeout: Optional[float]) -> None:
    """Return when `fd` is readable or `timeout` seconds passed."""
    future = loop.create_future()

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    loop.add_reader(fd, wake)
    timer = None if timeout is None else loop.call_later(timeout, wake)
    try:
        await future
    finally:
        loop.remove_reader(fd)
        if timer is not None:
            timer.cancel()


async def _until_one_exits(loop: asyncio.AbstractEventLoop, handles: list[int],
                           timeout: Optional[float]) -> None:
    """Windows: return when one of the process `handles` is signalled or `timeout` passed."""
    proactor = loop._proactor  # type: ignore[attr-defined]
    waits = [proactor.wait_for_handle(h) for h in handles]
    try:
        if waits:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        else:
            # Members we may not open (another user's): nothing to wait on but time.
            await asyncio.sleep(0.5 if timeout is None else min(timeout, 0.5))
    finally:
        for w in waits:
            w.cancel()
        if waits:
            # Let the Proactor unregister each wait before its handle is closed.
            await asyncio.wait(waits)


async def wait_async(job: "Job", timeout: Optional[float]) -> bool:
    loop = asyncio.get_running_loop()
    deadline = _deadline(loop, timeout)
    first = True
    while True:
        watch: Any = None
        try:
            with job._use("wait") as impl:
                if impl.wait(0):
                    return True
                if _WINDOWS and hasattr(impl, "watch_handles"):
                    watch = impl.watch_handles()
                    if watch is None:
                        continue  # one exited meanwhile: look again at once
                elif hasattr(impl, "watch"):
                    watch = impl.watch()
        except JobClosedError:
            if first:
                raise
            return False
        first = False
        remaining = _remaining(loop, deadline)
        if remaining == 0.0:
            _close_watch(watch)
            return False
        try:
            if isinstance(watch, list):
                await _until_one_exits(loop, watch, remaining)
            elif watch is not None:
                await _until_readable(loop, watch.fileno(), remaining)
            else:
                # mechanism "none": no kernel object to watch; the Popens' own waits, off the loop.
                await loop.run_in_executor(None, _wait_unprotected, job, remaining)
        finally:
            _close_watch(watch)


def _wait_unprotected(job: "Job", timeout: Optional[float]) -> None:
    try:
        job.wait(0.25 if timeout is None else min(timeout, 0.25))
    except JobClosedError:
        pass


def _close_watch(watch: Any) -> None:
    if watch is None:
        return
    if isinstance(watch, list):
        if sys.platform == "win32":
            import _winapi
            for h in watch:
                _winapi.CloseHandle(h)
    else:
        watch.close()


async def events_async(job: "Job", timeout: Optional[float]) -> AsyncIterator["JobEvent"]:
    loop = asyncio.get_running_loop()
    deadline = _deadline(loop, timeout)
    while True:
        remaining = _remaining(loop, deadline)
        try:
            event = await (_next_event_windows(job, loop, remaining) if _WINDOWS
                           else _next_event_linux(job, loop, remaining))
            if event is _NO_EVENTS:
                await asyncio.sleep(0.25 if remaining is None else remaining)
                event = None
        except JobClosedError:
            return
        if event is not None:
            yield event
        elif deadline is not None and loop.time() >= deadline:
            return


# From a _next_event_*: this backend has no events at all (mechanism "none").
_NO_EVENTS: "JobEvent" = object()  # type: ignore[assignment]


async def _next_event_linux(job: "Job", loop: asyncio.AbstractEventLoop,
                            timeout: Optional[float]) -> Optional["JobEvent"]:
    """The next event, or None once `timeout` passed (the job closed: JobClosedError)."""
    deadline = _deadline(loop, timeout)
    while True:
        with job._use("events") as impl:
            event = impl.next_event(0)
            if event is not None:
                return event
            watch = impl.watch() if hasattr(impl, "watch") else None
        try:
            remaining = _remaining(loop, deadline)
            if remaining == 0.0:
                return None
            if watch is None:
                return _NO_EVENTS
            else:
                await _until_readable(loop, watch.fileno(), remaining)
        finally:
            _close_watch(watch)


async def _next_event_windows(job: "Job", loop: asyncio.AbstractEventLoop,
                              timeout: Optional[float]) -> Optional["JobEvent"]:
    """The next event the pump thread files (_windows._EventPump), or None after `timeout`."""
    deadline = _deadline(loop, timeout)
    while True:
        future = loop.create_future()

        def wake() -> None:  # in the pump's thread
            loop.call_soon_threadsafe(_resolve, future)

        with job._use("events") as impl:
            if not hasattr(impl, "next_event_or_notify"):
                return _NO_EVENTS  # mechanism "none": nothing ever comes
            event: Optional[JobEvent] = impl.next_event_or_notify(wake)
            if event is not None:
                return event
        remaining = _remaining(loop, deadline)
        try:
            if remaining == 0.0:
                return None
            timer = None if remaining is None else loop.call_later(remaining, _resolve, future)
            try:
                await future
            finally:
                if timer is not None:
                    timer.cancel()
        finally:
            try:
                with job._use("events") as impl:
                    impl.cancel_notify(wake)  # type: ignore[attr-defined]
            except JobClosedError:
                pass


def _resolve(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)
