"""Windows backend: a Job Object per Job, children spawned straight into it.

subprocess.Popen keeps doing everything it does (argument quoting, pipes, handle lists,
audit hooks); only its one call to _winapi.CreateProcess is routed to
_jobobject.CreateProcessInJob, by running Popen's own _execute_child code with a globals
mapping whose `_winapi` differs in that single attribute. Nothing global is patched.
"""
from __future__ import annotations

import _winapi
import os
import subprocess
import time
import types
from typing import TYPE_CHECKING, Optional

from . import _jobobject as c
from ._base import EventKind, JobBackend, JobOptions, records as _records
from ._errors import ProcessExitedError
from ._log import logger

if TYPE_CHECKING:
    from ._records import JobEvent, JobStats


_PROCESS_QUERY_INFORMATION = 0x0400
_PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
_PROCESS_SET_QUOTA = 0x0100
_PROCESS_TERMINATE = 0x0001
_SYNCHRONIZE = 0x00100000
_CURRENT_PROCESS = _winapi.GetCurrentProcess()
_NTSTATUS_ERROR = 0xC0000000  # severity bits of an error NTSTATUS: an exception exit code

_EVENT_KINDS = {
    c.JOB_OBJECT_MSG_NEW_PROCESS: EventKind.NEW_PROCESS,
    c.JOB_OBJECT_MSG_EXIT_PROCESS: EventKind.EXIT_PROCESS,
    c.JOB_OBJECT_MSG_ABNORMAL_EXIT_PROCESS: EventKind.ABNORMAL_EXIT_PROCESS,
    c.JOB_OBJECT_MSG_ACTIVE_PROCESS_ZERO: EventKind.ACTIVE_PROCESS_ZERO,
    c.JOB_OBJECT_MSG_ACTIVE_PROCESS_LIMIT: EventKind.ACTIVE_PROCESS_LIMIT,
    c.JOB_OBJECT_MSG_PROCESS_MEMORY_LIMIT: EventKind.PROCESS_MEMORY_LIMIT,
    c.JOB_OBJECT_MSG_JOB_MEMORY_LIMIT: EventKind.JOB_MEMORY_LIMIT,
    c.JOB_OBJECT_MSG_END_OF_JOB_TIME: EventKind.END_OF_JOB_TIME,
    c.JOB_OBJECT_MSG_END_OF_PROCESS_TIME: EventKind.END_OF_PROCESS_TIME,
}
# Messages whose value slot is a pid rather than a job-wide value.
_PID_MESSAGES = {c.JOB_OBJECT_MSG_NEW_PROCESS, c.JOB_OBJECT_MSG_EXIT_PROCESS,
                 c.JOB_OBJECT_MSG_ABNORMAL_EXIT_PROCESS, c.JOB_OBJECT_MSG_PROCESS_MEMORY_LIMIT,
                 c.JOB_OBJECT_MSG_END_OF_PROCESS_TIME}

_JOB_LIST_SUPPORTED: Optional[bool] = None
_IO_ACCOUNTING = True


def _use_job_list() -> bool:
    global _JOB_LIST_SUPPORTED
    if _JOB_LIST_SUPPORTED is None:
        _JOB_LIST_SUPPORTED = bool(c.JobListSupported())
    return _JOB_LIST_SUPPORTED


def limit_flags(options: JobOptions) -> int:
    flags = 0
    if options.kill_on_close:
        flags |= c.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    if options.breakaway:
        flags |= c.JOB_OBJECT_LIMIT_BREAKAWAY_OK
    if options.silent_breakaway:
        flags |= c.JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK
    if options.die_on_unhandled_exception:
        flags |= c.JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION
    if options.process_limit is not None:
        flags |= c.JOB_OBJECT_LIMIT_ACTIVE_PROCESS
    if options.memory_limit is not None:
        flags |= c.JOB_OBJECT_LIMIT_JOB_MEMORY
    if options.process_memory_limit is not None:
        flags |= c.JOB_OBJECT_LIMIT_PROCESS_MEMORY
    return flags


def environment_block(env) -> Optional[str]:
    """The UTF-16 environment block CreateProcessW wants, built as _winapi builds it, so that
    job.popen fails exactly where subprocess.Popen does, with the same exception.

    _winapi (3.11.9, 3.13) first maps every name to upper case to sort them (a non-str name
    is TypeError there, an empty one OSError(winerror 87) from LCMapStringEx), then checks
    the pairs in sorted order; later duplicates of a name win."""
    if env is None:
        return None
    keys = list(env.keys())
    for key in keys:
        if not isinstance(key, str):
            raise TypeError("bad argument type for built-in operation")
        if not key:
            # The system's own text, trimmed as PyErr_SetFromWindowsErr trims it ("The
            # parameter is incorrect" on Windows, "Invalid parameter" under Wine).
            from ctypes import FormatError  # only on this error path
            text = FormatError(c.ERROR_INVALID_PARAMETER).rstrip(" .\t\r\n")
            raise OSError(0, text, None, c.ERROR_INVALID_PARAMETER, None)
    merged = {}
    # sorted() is stable: names equal but for case keep their order, so the later one wins.
    for key in sorted(keys, key=str.upper):
        value = env[key]
        if not isinstance(value, str):
            raise TypeError("environment can only contain strings")
        if "\0" in key or "\0" in value:
            raise ValueError("embedded null character")
        if "=" in key[1:]:  # '=' only as the first character, as in "=C:"
            raise ValueError("illegal environment variable name")
        merged[key.upper()] = (key, value)
    entries = [f"{k}={v}" for k, v in (merged[u] for u in sorted(merged))]
    return "\0".join(entries) + "\0\0" if entries else "\0\0"


def _bad_argument(position: int, expected: str, value: object) -> TypeError:
    """The TypeError _winapi.CreateProcess's argument converters raise."""
    got = "None" if value is None else type(value).__name__
    return TypeError(f"CreateProcess() argument {position} must be {expected}, not {got}")


class _WinapiWithJob:
    """Stands in for the _winapi module inside one Popen._execute_child call: every
    attribute is _winapi's, except CreateProcess, which spawns into the job."""

    def __init__(self, job: "WindowsJob", popen) -> None:
        self._job = job
        self._popen = popen

    def __getattr__(self, name: str):
        return getattr(_winapi, name)

    def CreateProcess(self, application_name, command_line, process_attributes,
                      thread_attributes, inherit_handles, creation_flags, env, cwd,
                      startupinfo):
        # _winapi's argument converters run before it looks at the environment: check the
        # caller's own values first too, with _winapi's messages, so that a call with two bad
        # arguments fails here exactly as in subprocess.Popen. (An out-of-range int is masked
        # to 32 bits there, as pgjob's C layer does too: -1 is every flag, 2**40 none.)
        if application_name is not None and not isinstance(application_name, str):
            raise _bad_argument(1, "str or None", application_name)
        if not isinstance(creation_flags, int):
            raise _bad_argument(6, "int", creation_flags)
        si = startupinfo
        attribute_list = getattr(si, "lpAttributeList", None) or {}
        handle_list = attribute_list.get("handle_list") or None
        if handle_list is not None:
            handle_list = [int(h) for h in handle_list]
        hp, ht, pid, tid, path = c.CreateProcessInJob(
            application_name, command_line, bool(inherit_handles), creation_flags,
            environment_block(env), cwd,
            si.dwFlags, si.wShowWindow,
            int(si.hStdInput or 0), int(si.hStdOutput or 0), int(si.hStdError or 0),
            handle_list, self._job.handle, _use_job_list())
        logger.debug("CreateProcessW: pid %d is a job member (%s)%s", pid, path,
                     ", left suspended" if creation_flags & c.CREATE_SUSPENDED else ", resumed")
        self._popen.spawn_path = path
        if creation_flags & c.CREATE_SUSPENDED:
            # Popen closes the thread handle it is given; keep our own so resume() works.
            self._popen._suspended_thread = _winapi.DuplicateHandle(
                _CURRENT_PROCESS, ht, _CURRENT_PROCESS, 0, False, _winapi.DUPLICATE_SAME_ACCESS)
        return hp, ht, pid, tid


def _execute_child_with(job: "WindowsJob", popen, execute_child):
    namespace = dict(execute_child.__globals__)
    namespace["_winapi"] = _WinapiWithJob(job, popen)
    return types.FunctionType(execute_child.__code__, namespace, execute_child.__name__,
                              execute_child.__defaults__, execute_child.__closure__)


def resume(popen) -> None:
    """Resume a child started with CREATE_SUSPENDED (pgjob.Popen keeps its thread handle)."""
    thread = getattr(popen, "_suspended_thread", None)
    if thread is None:
        raise ValueError("this process was not started suspended, or was already resumed")
    popen._suspended_thread = None
    try:
        c.ResumeThread(thread)
    finally:
        _winapi.CloseHandle(thread)


class WindowsJob(JobBackend):
    mechanism = "job_object"

    def __init__(self, options: JobOptions) -> None:
        self.options = options
        self.handle: Optional[int] = None
        self.port: Optional[int] = None
        self._in_self = False
        job = c.CreateJobObject(options.name)
        logger.debug("CreateJobObjectW(%r) -> handle %d", options.name, job)
        try:
            c.SetJobExtendedLimits(job, limit_flags(options), options.process_memory_limit or 0,
                                   options.memory_limit or 0, options.process_limit or 0)
            logger.debug("SetInformationJobObject: limit flags 0x%x", limit_flags(options))
            if options.cpu_rate is not None:
                c.SetJobCpuRate(job, c.JOB_OBJECT_CPU_RATE_CONTROL_ENABLE
                                | c.JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP,
                                max(1, round(options.cpu_rate * 100)))
            port = c.CreateIoCompletionPort()
            try:
                c.AssociateJobCompletionPort(job, port, job)
            except OSError:
                c.CloseHandle(port)
                raise
        except BaseException:
            c.CloseHandle(job)
            raise
        self.handle, self.port = job, port

    # membership
    def execute_child(self, popen, execute_child, args) -> None:
        _execute_child_with(self, popen, execute_child)(popen, *args)

    def assign(self, pid: int, handle: Optional[int]) -> None:
        opened = None
        if handle is None:
            try:
                opened = handle = _winapi.OpenProcess(
                    _PROCESS_SET_QUOTA | _PROCESS_TERMINATE | _SYNCHRONIZE
                    | _PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
            except OSError as exc:
                if exc.winerror == c.ERROR_INVALID_PARAMETER:
                    raise ProcessExitedError(exc.errno, f"no process with pid {pid}", None,
                                             exc.winerror) from exc
                raise
        try:
            c.AssignProcessToJobObject(self.handle, handle)
        except OSError as exc:
            # A process that exited between the caller's decision and our call can't be
            # assigned (ACCESS_DENIED); that benign race is reported as ProcessExitedError.
            if _winapi.WaitForSingleObject(handle, 0) == _winapi.WAIT_OBJECT_0:
                raise ProcessExitedError(exc.errno, f"process {pid or handle} has exited", None,
                                         exc.winerror) from exc
            raise
        finally:
            if opened is not None:
                _winapi.CloseHandle(opened)

    def assign_current(self) -> None:
        c.AssignProcessToJobObject(self.handle, _CURRENT_PROCESS)
        self._in_self = True

    def holds_current_process(self) -> bool:
        if not self.options.kill_on_close or self.handle is None:
            return False
        return self._in_self or c.IsProcessInJob(_CURRENT_PROCESS, self.handle)

    def contains(self, pid: int) -> bool:
        if pid == os.getpid():
            return c.IsProcessInJob(_CURRENT_PROCESS, self.handle)
        # The pid list, not OpenProcess: a member we may not open is still a member.
        return pid in c.QueryJobProcessIdList(self.handle)

    def pids(self) -> list:
        return c.QueryJobProcessIdList(self.handle)

    def terminate(self, exit_code: int) -> None:
        if self._in_self:
            # Killing the job would kill us too: kill every other member instead.
            self._terminate_others(exit_code)
        else:
            c.TerminateJobObject(self.handle, exit_code)

    def _terminate_others(self, exit_code: int) -> None:
        me = os.getpid()
        for pid in c.QueryJobProcessIdList(self.handle):
            if pid == me:
                continue
            try:
                # The full query right: Wine's IsProcessInJob refuses the limited one. A
                # process we may terminate grants it.
                h = _winapi.OpenProcess(
                    _PROCESS_TERMINATE | _PROCESS_QUERY_INFORMATION, False, pid)
            except OSError:
                continue  # exited since we listed it
            try:
                # The pid may name another process by now (Windows reuses pids): the open
                # handle pins whatever it names, so ask the kernel before killing it.
                if c.IsProcessInJob(h, self.handle):
                    _winapi.TerminateProcess(h, exit_code)
            except OSError:
                pass  # exited between OpenProcess and TerminateProcess
            finally:
                _winapi.CloseHandle(h)

    def stats(self) -> JobStats:
        global _IO_ACCOUNTING
        try:
            values = c.QueryJobAccounting(self.handle, _IO_ACCOUNTING)
        except OSError as exc:
            # The combined class is missing on some implementations (Wine 8); the basic
            # one is everywhere. Remember, so the fallback costs one failed call per process.
            if not _IO_ACCOUNTING or exc.winerror not in (c.ERROR_INVALID_FUNCTION,
                                                          c.ERROR_NOT_SUPPORTED,
                                                          c.ERROR_CALL_NOT_IMPLEMENTED):
                raise
            _IO_ACCOUNTING = False
            values = c.QueryJobAccounting(self.handle, False)
        total, active, terminated, user, kernel, read, write = values
        if not _IO_ACCOUNTING:
            read = write = None
        limits = c.QueryJobExtendedLimits(self.handle)
        peak_process, peak_job = limits[4], limits[5]
        return _records.JobStats(active_processes=active, total_processes=total,
                                 terminated_processes=terminated, user_time=user / 1e7,
                                 kernel_time=kernel / 1e7, peak_process_memory=peak_process,
                                 peak_job_memory=peak_job, read_bytes=read, write_bytes=write)

    def next_event(self, timeout: Optional[float]) -> Optional[JobEvent]:
        ms = 0xFFFFFFFE if timeout is None else min(int(timeout * 1000), 0xFFFFFFFE)
        message = c.GetQueuedCompletionStatus(self.port, ms)
        if message is None:
            return None
        msg, _key, value = message
        kind = _EVENT_KINDS.get(msg)
        if kind is None:
            return None
        pid = value if msg in _PID_MESSAGES else None
        exit_code = None
        if msg == c.JOB_OBJECT_MSG_ABNORMAL_EXIT_PROCESS or msg == c.JOB_OBJECT_MSG_EXIT_PROCESS:
            exit_code = _exit_code_of(pid)
            if exit_code is not None and exit_code >= _NTSTATUS_ERROR:
                # Died from an exception. Windows only posts ABNORMAL for codes on its own
                # list (fast-fail 0xC0000409 arrives as a plain exit; Wine never posts it).
                kind = EventKind.ABNORMAL_EXIT_PROCESS
        return _records.JobEvent(kind, pid, exit_code, msg)

    def wait(self, timeout: Optional[float]) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        me = os.getpid()
        while True:
            members = [p for p in c.QueryJobProcessIdList(self.handle) if p != me]
            if not members:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            # Block on the members' process handles; re-list at least every 0.5 s since
            # members can start other members while we wait.
            slice_s = 0.5 if remaining is None else min(remaining, 0.5)
            _wait_any(members, slice_s)

    def close(self) -> None:
        handle, port = self.handle, self.port
        self.handle = self.port = None
        if handle is not None:
            if self.options.kill_on_close:
                # Kill explicitly: a handle duplicated elsewhere would otherwise keep the job
                # (and its members) alive past this close().
                try:
                    c.TerminateJobObject(handle, 1)
                except OSError:
                    pass
            c.CloseHandle(handle)
        if port is not None:
            c.CloseHandle(port)

    def detach(self) -> Optional[int]:
        handle, port = self.handle, self.port
        self.handle = self.port = None
        if port is not None:
            c.CloseHandle(port)
        return handle


def _exit_code_of(pid: Optional[int]) -> Optional[int]:
    if not pid:
        return None
    try:
        h = _winapi.OpenProcess(_PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    except OSError:
        return None
    try:
        code = _winapi.GetExitCodeProcess(h)
        return None if code == c.STILL_ACTIVE else code
    finally:
        _winapi.CloseHandle(h)


def _wait_any(pids: list, timeout: float) -> None:
    handles = []
    try:
        for pid in pids[:63]:  # WaitForMultipleObjects takes at most 64 handles
            try:
                handles.append(_winapi.OpenProcess(_SYNCHRONIZE, False, pid))
            except OSError:
                return  # one exited already: let the caller re-list at once
        if handles:
            _winapi.WaitForMultipleObjects(handles, False, int(timeout * 1000))
    finally:
        for h in handles:
            _winapi.CloseHandle(h)


def open_job(options: JobOptions) -> JobBackend:
    if options.mechanism not in (None, "job_object"):
        from ._errors import UnsupportedError
        raise UnsupportedError(40, f"mechanism {options.mechanism!r} is not available on Windows")
    return WindowsJob(options)


def in_job(pid: Optional[int]) -> bool:
    if pid is None or pid == os.getpid():
        return c.IsProcessInJob(_CURRENT_PROCESS, 0)
    try:
        h = _winapi.OpenProcess(_PROCESS_QUERY_INFORMATION, False, pid)
    except PermissionError:
        # Protected processes only grant the limited right, which Windows accepts here
        # (Wine wants the full one, which is why it is tried first).
        h = _winapi.OpenProcess(_PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    try:
        return c.IsProcessInJob(h, 0)
    finally:
        _winapi.CloseHandle(h)


def wine_version() -> Optional[str]:
    return c.WineVersion()

