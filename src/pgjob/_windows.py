"""Windows backend: a Job Object per Job, children spawned straight into it.

subprocess.Popen keeps doing everything it does (argument quoting, pipes, handle lists,
audit hooks); only its one call to _winapi.CreateProcess is routed to
_jobobject.CreateProcessInJob, by running Popen's own _execute_child code with a globals
mapping whose `_winapi` differs in that single attribute. Nothing global is patched.
"""
from __future__ import annotations

import _winapi
import collections
import errno
import functools
import operator
import os
import sys
import threading
import time
import types
from typing import TYPE_CHECKING, Any, Dict, Iterator, Mapping, Optional, cast

from . import _jobobject as c
from . import _errors, _records
from ._base import EventKind, JobBackend, JobOptions
from ._errors import ProcessExitedError, UnsupportedError
from ._log import logger
from ._spawn_hook import run_execute_child

if TYPE_CHECKING:
    from ._job import Popen
    from ._records import JobEvent, JobStats

    if sys.platform == "win32":
        from subprocess import STARTUPINFO
    else:
        # mypy checks every module for the --platform it is given; this one is imported only
        # on Windows (by _job.py), and `import _winapi` fails elsewhere: mypy stops here, once
        # the Windows-only name the annotations below use is bound.
        STARTUPINFO = Any
        raise ImportError("pgjob._windows is the Windows backend")


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
    c.JOB_OBJECT_MSG_NOTIFICATION_LIMIT: EventKind.NOTIFICATION_LIMIT,
}
# Messages whose value slot is a pid rather than a job-wide value (JOBOBJECT_ASSOCIATE_
# COMPLETION_PORT: every one but END_OF_JOB_TIME, ACTIVE_PROCESS_LIMIT, ACTIVE_PROCESS_ZERO).
_PID_MESSAGES = {c.JOB_OBJECT_MSG_NEW_PROCESS, c.JOB_OBJECT_MSG_EXIT_PROCESS,
                 c.JOB_OBJECT_MSG_ABNORMAL_EXIT_PROCESS, c.JOB_OBJECT_MSG_PROCESS_MEMORY_LIMIT,
                 c.JOB_OBJECT_MSG_JOB_MEMORY_LIMIT, c.JOB_OBJECT_MSG_END_OF_PROCESS_TIME,
                 c.JOB_OBJECT_MSG_NOTIFICATION_LIMIT}
# What pgjob keeps of each member: enough to wait on it and read its exit code.
_MEMBER_ACCESS = _SYNCHRONIZE | _PROCESS_QUERY_LIMITED_INFORMATION
# Past this many held member handles, a spawn first drops those of members that have exited
# (their exit events then carry no exit code), so a job whose events nobody reads can't
# pin an unbounded number of dead process objects.
_MAX_HELD_MEMBERS = 256
# SIZE_T's range: Py_ssize_t has its width on Windows. A 32-bit build can't express a memory
# limit over 4 GiB, and truncating it would set another limit.
_SIZE_MAX = sys.maxsize * 2 + 1

_JOB_LIST_SUPPORTED: Optional[bool] = None
_IO_ACCOUNTING = True


def _use_job_list() -> bool:
    """Does this system know PROC_THREAD_ATTRIBUTE_JOB_LIST? Only a definite answer is
    remembered: a probe that failed for another reason (out of memory) means "not this
    time", and the spawn takes the suspended path."""
    global _JOB_LIST_SUPPORTED
    if _JOB_LIST_SUPPORTED is None:
        try:
            _JOB_LIST_SUPPORTED = bool(c.JobListSupported())
        except (OSError, MemoryError) as exc:
            logger.debug("probing PROC_THREAD_ATTRIBUTE_JOB_LIST failed (%r); "
                         "spawning on the suspended path", exc)
            return False
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


# -- the checks are _winapi's own ------------------------------------------------------------------
#
# _winapi.CreateProcess checks and converts its arguments, raises its audit event and reads the
# startupinfo fields and the whole environment before it reads the handle list, and creates
# nothing until after that (_spawn_hook.WINAPI_CREATE_PROCESS_ORDER). pgjob calls it first with a
# handle list that stops it there: those checks, their order and messages, and the audit event
# are _winapi's; the C layer makes the two that follow (the handles, command_line) as it does;
# the child gets exactly what _winapi read.

class _StopBeforeCreating(Exception):
    """Raised inside the trial _winapi.CreateProcess where it reads the handle list."""


def _is_mapping(obj: Any) -> bool:
    """PyMapping_Check(obj), which _winapi asks of `env` and of lpAttributeList: mappingproxy()
    accepts exactly what it accepts except lists and tuples, and runs no code of obj's."""
    if isinstance(obj, (list, tuple)):
        return True
    try:
        types.MappingProxyType(obj)
    except TypeError:
        return False
    return True


class _HandleListAsRead:
    """startupinfo.lpAttributeList["handle_list"] as _winapi reads it, then the stop. Its
    PySequence_Fast rewords a TypeError from iter(), not from the iteration: the list is
    read in the iterator, so a failure there reaches the caller as it is."""

    def __init__(self, handles: Any) -> None:
        self._handles = handles
        self.read: Optional[list[Any]] = None  # the items, once _winapi has read them

    def __iter__(self) -> Iterator[Any]:
        if self._handles is None:
            raise _StopBeforeCreating
        return self._read(iter(self._handles))

    def _read(self, items: Iterator[Any]) -> Iterator[Any]:
        self.read = list(items)
        raise _StopBeforeCreating
        yield  # a generator: _winapi iterates it


class _StartupInfoAsRead:
    """The startupinfo fields _winapi reads, copied as plain attributes, so that its lookups
    go as on the plain STARTUPINFO Popen passes (it reads all five before it looks for a
    conversion error, and a later lookup decides whether an earlier error survives), with an
    attribute list that stops it at its handle list."""

    _FIELDS = ("dwFlags", "wShowWindow", "hStdInput", "hStdOutput", "hStdError")

    def __init__(self, startupinfo: object) -> None:
        for name in self._FIELDS:
            try:
                setattr(self, name, getattr(startupinfo, name))
            except Exception:
                pass  # _winapi takes a field it can't read for 0 (and clears the error)
        self.handle_list = _HandleListAsRead(None)
        try:
            attributes = getattr(startupinfo, "lpAttributeList")
        except Exception:
            attributes = None  # as a field: not read is none
        if attributes is not None and not _is_mapping(attributes):
            self.lpAttributeList: object = attributes  # _winapi refuses it, creating nothing
            return
        if attributes is not None:
            try:
                handles = attributes["handle_list"]
            except Exception:
                handles = None  # _winapi ignores a handle list it can't get
            self.handle_list = _HandleListAsRead(handles)
        self.lpAttributeList = {"handle_list": self.handle_list}

    def value(self, name: str) -> int:
        """A field as _winapi converted it: missing or None is 0."""
        read = getattr(self, name, None)
        return 0 if read is None else cast(int, read)


class _EnvironmentAsRead:
    """`env` as _winapi reads it: keys() then values() before gh-87868; from 3.11.8/3.12.2 on
    keys(), sorted and merged by _winapi, then [name] for each name it keeps, into a dict.
    The block pgjob passes is built from exactly those objects, which _winapi has checked."""

    def __init__(self, env: object) -> None:
        self._env: Any = env
        self._keys: list[Any] = []
        self._values: Optional[list[Any]] = None
        self._kept: dict[Any, Any] = {}

    def keys(self) -> list[Any]:
        self._keys = list(self._env.keys())
        return list(self._keys)  # a copy: _winapi sorts the one it gets

    def values(self) -> list[Any]:
        self._values = list(self._env.values())
        return self._values

    def __getitem__(self, key: Any) -> Any:
        value = self._kept[key] = self._env[key]
        return value

    def block(self) -> str:
        """The UTF-16 environment block _winapi built from what it read."""
        pairs = (zip(self._keys, self._values) if self._values is not None
                 else self._kept.items())
        # str.join, which copies a str subclass's characters as _winapi does, calling nothing
        return "\0".join(map("=".join, pairs)) + "\0\0"  # empty: the "\0\0" CreateProcessW wants


def check_with_winapi(application_name: Any, command_line: Any, process_attributes: Any,
                      thread_attributes: Any, inherit_handles: Any, creation_flags: Any, env: Any,
                      cwd: Any, startupinfo: Any,
                      ) -> tuple[_StartupInfoAsRead, Optional[_EnvironmentAsRead]]:
    """Have _winapi.CreateProcess check these arguments, raise its audit event and read the
    startupinfo fields and the environment, and stop before it creates anything; return what
    it read. Raises what _winapi raises."""
    fields = _StartupInfoAsRead(startupinfo)
    environment = _EnvironmentAsRead(env) if env is not None and _is_mapping(env) else None
    mapping: Any = env if environment is None else environment  # (typeshed wants a dict)
    # Only if a _winapi ever read the handle list after creating the child would it be
    # created here: suspended (it never runs), then killed below.
    trial_flags = (creation_flags | c.CREATE_SUSPENDED if type(creation_flags) is int
                   else creation_flags)
    try:
        created = _winapi.CreateProcess(
            application_name, command_line, process_attributes, thread_attributes,
            inherit_handles, trial_flags, mapping, cwd, fields)
    except _StopBeforeCreating:
        return fields, environment
    process, thread = created[0], created[1]
    _winapi.TerminateProcess(process, 1)
    _winapi.CloseHandle(thread)
    _winapi.CloseHandle(process)
    raise UnsupportedError(errno.EOPNOTSUPP, f"_winapi.CreateProcess of Python "
                           f"{sys.version.split()[0]} created a process before reading its handle "
                           "list; pgjob can't check the arguments with it (killed it)")


class _WinapiWithJob:
    """Stands in for the _winapi module inside one Popen._execute_child call: every
    attribute is _winapi's, except CreateProcess, which spawns into the job."""

    def __init__(self, job: "WindowsJob", popen: "Popen") -> None:
        self._job = job
        self._popen = popen

    def __getattr__(self, name: str) -> Any:  # whatever _winapi has under that name
        return getattr(_winapi, name)

    def CreateProcess(self, application_name: Optional[str], command_line: str,
                      process_attributes: object, thread_attributes: object,
                      inherit_handles: int, creation_flags: int,
                      env: Optional[Mapping[str, str]], cwd: Optional[str],
                      startupinfo: "STARTUPINFO") -> tuple[int, int, int, int]:
        si, environment = check_with_winapi(
            application_name, command_line, process_attributes, thread_attributes,
            inherit_handles, creation_flags, env, cwd, startupinfo)
        # What _winapi checks after its handle list is left to the C layer, which checks it
        # the same way and in the same order: the handles, then command_line (a str from
        # Popen; a NUL in it is ValueError). 3.14's _winapi takes any __index__ as flags.
        creation_flags = operator.index(creation_flags)
        block = None if environment is None else environment.block()
        job = self._job
        create = functools.partial(
            c.CreateProcessInJob, application_name=application_name, command_line=command_line,
            inherit_handles=bool(inherit_handles), creation_flags=creation_flags,
            environment_block=block, current_directory=cwd, startup_flags=si.value("dwFlags"),
            show_window=si.value("wShowWindow"), std_input=si.value("hStdInput"),
            std_output=si.value("hStdOutput"), std_error=si.value("hStdError"),
            handle_list=si.handle_list.read, job=cast(int, job.handle))
        use_job_list = not job.job_list_refused and _use_job_list()
        try:
            hp, ht, pid, tid, path = create(use_job_list=use_job_list)
        except OSError as exc:
            # Windows refuses the job list when the new job can't join the job hierarchy
            # this process is in (UI limits on either job, a packaged app's job): the same
            # job can still be entered by assignment while the child is suspended. Once
            # refused, this job stays on that path.
            if not (getattr(exc, "job_list", False) and exc.winerror == c.ERROR_ACCESS_DENIED):
                raise
            logger.debug("CreateProcessW refused PROC_THREAD_ATTRIBUTE_JOB_LIST (winerror %d); "
                         "retrying on the suspended path", exc.winerror)
            job.job_list_refused = True
            hp, ht, pid, tid, path = create(use_job_list=False)
        try:
            job.hold_member(pid, hp)
            if creation_flags & c.CREATE_SUSPENDED:
                # Popen closes the thread handle it is given; keep our own so resume() works.
                self._popen._suspended_thread = _winapi.DuplicateHandle(
                    _CURRENT_PROCESS, ht, _CURRENT_PROCESS, 0, False,
                    _winapi.DUPLICATE_SAME_ACCESS)
        except BaseException:
            # Popen never sees this child: kill it (it may be left suspended) and close
            # what CreateProcessInJob gave us, rather than leak a process nobody owns.
            try:
                _winapi.TerminateProcess(hp, 1)
            except OSError:
                pass  # already gone
            job.release_member(pid)
            _winapi.CloseHandle(ht)
            _winapi.CloseHandle(hp)
            raise
        logger.debug("CreateProcessW: pid %d is a job member (%s)%s", pid, path,
                     ", left suspended" if creation_flags & c.CREATE_SUSPENDED else ", resumed")
        self._popen.spawn_path = path
        return hp, ht, pid, tid


def resume(popen: "Popen") -> None:
    """Resume a child started with CREATE_SUSPENDED (pgjob.Popen keeps its thread handle)."""
    thread = getattr(popen, "_suspended_thread", None)
    if thread is None:
        raise ValueError("this process was not started suspended, or was already resumed")
    popen._suspended_thread = None
    try:
        c.ResumeThread(thread)
    finally:
        _winapi.CloseHandle(thread)


#: Events kept per job until read; the oldest are dropped past this (as on Linux), counted.
MAX_QUEUED_EVENTS = 65536


class _EventPump:
    """One I/O completion port for every Job of this process, and one daemon thread that reads
    it and files each message with its job (by the completion key the job was associated
    with). Why a thread: a completion port can't be waited on by anything but
    GetQueuedCompletionStatus (it is not a waitable object, and the Proactor loop's own port
    would take a job's messages for I/O completions), so someone must block on it; one thread
    for the whole process, instead of one reader per job or per wait. It also keeps the
    kernel's queue short when nobody reads a job's events: messages are taken off the port as
    they come and kept, bounded, in the job; and it holds a new member's handle (and reads a
    member's exit code) when the message arrives, not when someone reads it."""

    def __init__(self) -> None:
        self.port = c.CreateIoCompletionPort()
        self._lock = threading.Lock()
        self._jobs: Dict[int, "WindowsJob"] = {}
        self._next_key = 1
        self._thread: Optional[threading.Thread] = None

    def register(self, job: "WindowsJob") -> int:
        """A new completion key for `job`: its messages go to job._deliver from now on."""
        with self._lock:
            key = self._next_key
            self._next_key += 1
            self._jobs[key] = job
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pgjob-job-events",
                                                daemon=True)
                self._thread.start()
        return key

    def unregister(self, key: int) -> None:
        """Messages still arriving for `key` (a closed or detached job) are dropped."""
        with self._lock:
            self._jobs.pop(key, None)

    def _run(self) -> None:
        while True:
            try:
                message = c.GetQueuedCompletionStatus(self.port, 0xFFFFFFFE)
            except OSError as exc:  # the port itself failed: nothing can be read again
                logger.warning("job events: GetQueuedCompletionStatus failed (%s); no more "
                               "events will be reported", exc)
                return
            if message is None:
                continue
            msg, key, value = message
            with self._lock:
                job = self._jobs.get(key)
            if job is None:
                continue
            try:
                job._deliver(msg, value)
            except Exception as exc:  # never let one job's message stop every job's events
                logger.debug("job events: message 0x%x for key %d failed: %s", msg, key, exc)


_PUMP: Optional[_EventPump] = None
_PUMP_LOCK = threading.Lock()


def _pump() -> _EventPump:
    global _PUMP
    with _PUMP_LOCK:
        if _PUMP is None:
            _PUMP = _EventPump()
        return _PUMP


class WindowsJob(JobBackend):
    mechanism = "job_object"

    def __init__(self, options: JobOptions) -> None:
        self.options = options
        # None once closed or detached. Job calls no other method after that (a borrow,
        # Job._use, keeps the handles open until it returns): those methods cast to int.
        self.handle: Optional[int] = None
        self.port: Optional[int] = None
        self._in_self = False
        #: Windows refused PROC_THREAD_ATTRIBUTE_JOB_LIST for this job once: don't ask again.
        self.job_list_refused = False
        # pid -> a handle on that member (SYNCHRONIZE | QUERY_LIMITED_INFORMATION), held from
        # its spawn, assignment or NEW_PROCESS message until its exit message is read: the
        # handle keeps the pid from naming anyone else, so the exit code read from it is
        # the member's own, and wait() never needs to open a pid it may not open.
        self._members: Dict[int, int] = {}
        self._members_lock = threading.Lock()  # events, spawns and wait() run in any thread
        # Events filed by the pump (_deliver), until read: bounded, the oldest dropped first.
        self._events: collections.deque[JobEvent] = collections.deque(maxlen=MAX_QUEUED_EVENTS)
        self._events_dropped = 0
        self._events_ready = threading.Condition(threading.Lock())
        self._notify: list[Any] = []  # callables: an asyncio waiter's wake-up, called once
        self._key = 0
        for limit in (options.memory_limit, options.process_memory_limit):
            if limit is not None and limit > _SIZE_MAX:
                raise OverflowError(f"memory limit {limit} does not fit in SIZE_T "
                                    f"(at most {_SIZE_MAX} on this {_SIZE_MAX.bit_length()}-bit Windows)")
        job = c.CreateJobObject(options.name)
        logger.debug("CreateJobObjectW(%r) -> handle %d", options.name, job)
        try:
            c.SetJobExtendedLimits(job, limit_flags=limit_flags(options),
                                   process_memory=options.process_memory_limit or 0,
                                   job_memory=options.memory_limit or 0,
                                   active_processes=options.process_limit or 0)
            logger.debug("SetInformationJobObject: limit flags 0x%x", limit_flags(options))
            if options.cpu_rate is not None:
                c.SetJobCpuRate(job, control_flags=(c.JOB_OBJECT_CPU_RATE_CONTROL_ENABLE
                                                    | c.JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP),
                                cpu_rate=max(1, round(options.cpu_rate * 100)))
            pump = _pump()
            key = pump.register(self)
            try:
                c.AssociateJobCompletionPort(job, pump.port, key=key)
            except BaseException:
                pump.unregister(key)
                raise
        except BaseException as exc:
            c.CloseHandle(job)
            if isinstance(exc, OSError) and exc.winerror == c.ERROR_ACCESS_DENIED:
                # No right to set up a job here (a sandbox, a restricted token): not available.
                _errors.mark(exc, UnsupportedError)
            raise
        self.handle, self.port, self._key = job, pump.port, key

    # membership
    def execute_child(self, popen: "Popen", execute_child: types.FunctionType,
                      args: tuple[Any, ...]) -> None:
        run_execute_child(execute_child, popen, args, {"_winapi": _WinapiWithJob(self, popen)})

    def hold_member(self, pid: int, handle: int) -> None:
        """Keep a handle of our own on member `pid` (`handle` stays the caller's)."""
        held = _winapi.DuplicateHandle(_CURRENT_PROCESS, handle, _CURRENT_PROCESS,
                                       _MEMBER_ACCESS, False, 0)
        with self._members_lock:
            if len(self._members) >= _MAX_HELD_MEMBERS:
                self._drop_exited_members()
            old = self._members.pop(pid, None)
            self._members[pid] = held
        if old is not None:
            _winapi.CloseHandle(old)

    def release_member(self, pid: int) -> Optional[int]:
        """Forget member `pid`; return its exit code if our handle says it has exited."""
        with self._members_lock:
            held = self._members.pop(pid, None)
        if held is None:
            return None
        try:
            code = _winapi.GetExitCodeProcess(held)
            return None if code == c.STILL_ACTIVE else code
        except OSError:
            return None
        finally:
            _winapi.CloseHandle(held)

    def _drop_exited_members(self) -> None:
        # (called with _members_lock held)
        for pid, held in list(self._members.items()):
            if _winapi.WaitForSingleObject(held, 0) == _winapi.WAIT_OBJECT_0:
                del self._members[pid]
                _winapi.CloseHandle(held)

    def _hold_announced_member(self, pid: int) -> None:
        """A NEW_PROCESS message named `pid` (a member's child, say): open it at once, and
        keep it only if the kernel says that process is ours (the pid may have exited and
        been reused before we read the message)."""
        with self._members_lock:
            if pid in self._members:
                return
        try:
            # The full query right: Wine's IsProcessInJob refuses the limited one.
            h = _winapi.OpenProcess(_MEMBER_ACCESS | _PROCESS_QUERY_INFORMATION, False, pid)
        except OSError:
            return  # gone already, or not ours to open: its exit event has no exit code
        try:
            if c.IsProcessInJob(h, cast(int, self.handle)):
                self.hold_member(pid, h)
        except OSError:
            pass
        finally:
            _winapi.CloseHandle(h)

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
            c.AssignProcessToJobObject(cast(int, self.handle), handle)
        except OSError as exc:
            # A process that exited between the caller's decision and our call can't be
            # assigned (ACCESS_DENIED); that benign race is reported as ProcessExitedError.
            if _winapi.WaitForSingleObject(handle, 0) == _winapi.WAIT_OBJECT_0:
                raise ProcessExitedError(exc.errno, f"process {pid or handle} has exited", None,
                                         exc.winerror) from exc
            raise
        else:
            if pid:
                try:
                    self.hold_member(pid, handle)
                except OSError:
                    # A caller's handle may lack the rights to copy with SYNCHRONIZE: the
                    # process is a member all the same; its exit event has no exit code.
                    pass
        finally:
            if opened is not None:
                _winapi.CloseHandle(opened)

    def assign_current(self) -> None:
        c.AssignProcessToJobObject(cast(int, self.handle), _CURRENT_PROCESS)
        self._in_self = True

    def holds_current_process(self) -> bool:
        if not self.options.kill_on_close or self.handle is None:
            return False
        return self._in_self or c.IsProcessInJob(_CURRENT_PROCESS, self.handle)

    def contains(self, pid: int) -> bool:
        if pid == os.getpid():
            return c.IsProcessInJob(_CURRENT_PROCESS, cast(int, self.handle))
        # The pid list, not OpenProcess: a member we may not open is still a member.
        return pid in c.QueryJobProcessIdList(cast(int, self.handle))

    def pids(self) -> list[int]:
        return c.QueryJobProcessIdList(cast(int, self.handle))

    def terminate(self, exit_code: int) -> None:
        if self._in_self:
            # Killing the job would kill us too: kill every other member instead.
            self._terminate_others(exit_code)
        else:
            c.TerminateJobObject(cast(int, self.handle), exit_code)

    def _terminate_others(self, exit_code: int) -> None:
        me = os.getpid()
        for pid in c.QueryJobProcessIdList(cast(int, self.handle)):
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
                if c.IsProcessInJob(h, cast(int, self.handle)):
                    _winapi.TerminateProcess(h, exit_code)
            except OSError:
                pass  # exited between OpenProcess and TerminateProcess
            finally:
                _winapi.CloseHandle(h)

    def stats(self) -> JobStats:
        global _IO_ACCOUNTING
        try:
            values = c.QueryJobAccounting(cast(int, self.handle), include_io=_IO_ACCOUNTING)
        except OSError as exc:
            # The combined class is missing on some implementations (Wine 8); the basic
            # one is everywhere. Remember, so the fallback costs one failed call per process.
            if not _IO_ACCOUNTING or exc.winerror not in (c.ERROR_INVALID_FUNCTION,
                                                          c.ERROR_NOT_SUPPORTED,
                                                          c.ERROR_CALL_NOT_IMPLEMENTED):
                raise
            _IO_ACCOUNTING = False
            values = c.QueryJobAccounting(cast(int, self.handle), include_io=False)
        read: Optional[int]  # None below when the I/O counters were not read
        write: Optional[int]
        total, active, terminated, user, kernel, read, write = values
        if not _IO_ACCOUNTING:
            read = write = None
        limits = c.QueryJobExtendedLimits(cast(int, self.handle))
        peak_process, peak_job = limits[4], limits[5]
        return _records.JobStats(active_processes=active, total_processes=total,
                                 terminated_processes=terminated, user_time=user / 1e7,
                                 kernel_time=kernel / 1e7, peak_process_memory=peak_process,
                                 peak_job_memory=peak_job, read_bytes=read, write_bytes=write)

    def _deliver(self, msg: int, value: int) -> None:
        """In the pump's thread: one message of this job's, as a JobEvent, filed."""
        kind = _EVENT_KINDS.get(msg)
        if kind is None or self.handle is None:  # (closed meanwhile: nobody will read it)
            return
        pid = value if msg in _PID_MESSAGES else None
        exit_code = None
        if msg == c.JOB_OBJECT_MSG_NEW_PROCESS and pid:
            self._hold_announced_member(pid)
        if msg == c.JOB_OBJECT_MSG_ABNORMAL_EXIT_PROCESS or msg == c.JOB_OBJECT_MSG_EXIT_PROCESS:
            # From the handle held since the member joined, never by opening the pid again:
            # by now that pid may name another process.
            exit_code = self.release_member(pid) if pid else None
            if exit_code is not None and exit_code >= _NTSTATUS_ERROR:
                # Died from an exception. Windows only posts ABNORMAL for codes on its own
                # list (fast-fail 0xC0000409 arrives as a plain exit; Wine never posts it).
                kind = EventKind.ABNORMAL_EXIT_PROCESS
        self._file(_records.JobEvent(kind, pid, exit_code, msg))

    def _file(self, event: Optional[JobEvent], first: bool = False) -> None:
        """Queue `event` (None: only wake the readers, the job is closing) and wake them."""
        with self._events_ready:
            if event is not None:
                if len(self._events) == MAX_QUEUED_EVENTS:
                    self._events_dropped += 1
                if first:
                    self._events.appendleft(event)
                else:
                    self._events.append(event)
            notify, self._notify = self._notify, []
            self._events_ready.notify_all()
        for wake in notify:
            wake()

    def give_back(self, event: JobEvent) -> None:
        """An event taken for a reader that is gone: the next next_event() returns it."""
        self._file(event, first=True)

    def next_event(self, timeout: Optional[float]) -> Optional[JobEvent]:
        with self._events_ready:
            if not self._events and timeout != 0 and self.handle is not None:
                self._events_ready.wait(timeout)
            event = self._events.popleft() if self._events else None
            dropped, self._events_dropped = self._events_dropped, 0
        if dropped:
            logger.warning("%d job events were dropped: nobody read them while %d were queued "
                           "(the oldest go first); read events() as they come, or not at all",
                           dropped, MAX_QUEUED_EVENTS)
        return event

    def next_event_or_notify(self, wake: Any) -> Optional[JobEvent]:
        """For the asyncio layer: the next event, or None and `wake()` is called (from the
        pump's thread, once) when there may be one, or when the job closes."""
        with self._events_ready:
            if not self._events and self.handle is not None:
                self._notify.append(wake)
                return None
        return self.next_event(0)

    def cancel_notify(self, wake: Any) -> None:
        with self._events_ready:
            try:
                self._notify.remove(wake)
            except ValueError:
                pass  # called already

    def wait(self, timeout: Optional[float]) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        me = os.getpid()
        while True:
            members = [p for p in c.QueryJobProcessIdList(cast(int, self.handle)) if p != me]
            if not members:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            # Block on the members' process handles; re-list at least every 0.5 s since
            # members can start other members while we wait.
            slice_s = 0.5 if remaining is None else min(remaining, 0.5)
            self._wait_any(members, slice_s)

    def _wait_any(self, pids: list[int], timeout: float) -> None:
        """Block until one of `pids` exits or `timeout` passes. A member we may not open is
        waited for by time alone (re-listed after `timeout`), never by returning at once:
        that spun."""
        handles = self._member_handles(pids, 63)  # WaitForMultipleObjects: at most 64
        if handles is None:
            return  # one exited since the list was read: re-list at once
        try:
            if handles:
                _winapi.WaitForMultipleObjects(handles, False, int(timeout * 1000))
            else:
                time.sleep(timeout)
        finally:
            for h in handles:
                _winapi.CloseHandle(h)

    def _member_handles(self, pids: list[int], most: Optional[int] = None) -> Optional[list[int]]:
        """Our own handles (the caller closes them) to wait on for `pids`: a copy of the one
        held since the member joined, else one opened now (alive but not ours to open:
        left out). None if one of them has exited since its pid was listed."""
        handles: list[int] = []
        try:
            for pid in pids:
                if most is not None and len(handles) == most:
                    break
                with self._members_lock:
                    held = self._members.get(pid)
                    if held is not None:
                        # Our own copy: an exit event read meanwhile closes the held one.
                        held = _winapi.DuplicateHandle(_CURRENT_PROCESS, held, _CURRENT_PROCESS,
                                                       0, False, _winapi.DUPLICATE_SAME_ACCESS)
                if held is not None:
                    handles.append(held)
                    continue
                try:
                    h = _winapi.OpenProcess(_SYNCHRONIZE, False, pid)
                except OSError as exc:
                    if exc.winerror == c.ERROR_INVALID_PARAMETER:
                        for h in handles:
                            _winapi.CloseHandle(h)
                        return None
                    continue  # alive but not ours to open (ACCESS_DENIED)
                handles.append(h)
        except BaseException:
            for h in handles:
                _winapi.CloseHandle(h)
            raise
        return handles

    def watch_handles(self) -> Optional[list[int]]:
        """For the asyncio layer (the Proactor loop waits on process handles): our own
        handles of the running members, closed by the caller; None if one exited meanwhile
        (look again at once)."""
        me = os.getpid()
        members = [p for p in c.QueryJobProcessIdList(cast(int, self.handle)) if p != me]
        return self._member_handles(members)

    def _close_members(self) -> None:
        with self._members_lock:
            members, self._members = self._members, {}
        for held in members.values():
            _winapi.CloseHandle(held)

    def _stop_events(self) -> None:
        _pump().unregister(self._key)
        self._file(None)  # wake every reader: the job is gone

    def close(self) -> None:
        handle = self.handle
        self.handle = self.port = None
        self._stop_events()
        self._close_members()
        if handle is not None:
            if self.options.kill_on_close:
                # Kill explicitly: a handle duplicated elsewhere would otherwise keep the job
                # (and its members) alive past this close().
                try:
                    c.TerminateJobObject(handle, exit_code=1)
                except OSError:
                    pass
            c.CloseHandle(handle)

    def detach(self) -> Optional[int]:
        handle = self.handle
        self.handle = self.port = None
        self._stop_events()
        self._close_members()
        return handle


GUARANTEES = {"job_object": "the kernel terminates every member when this process dies"}


def candidates(options: JobOptions, current_process: bool = False) -> list[str]:
    """The mechanisms to try, best first, for a Job that did not name one."""
    return ["job_object"]


def open_mechanism(name: str, options: JobOptions) -> JobBackend:
    if name != "job_object":
        raise UnsupportedError(errno.EOPNOTSUPP, f"mechanism {name!r} is not available on Windows")
    return WindowsJob(options)


def in_job(pid: Optional[int]) -> bool:
    if pid is None or pid == os.getpid():
        return c.IsProcessInJob(_CURRENT_PROCESS, job=0)  # in any job
    try:
        try:
            h = _winapi.OpenProcess(_PROCESS_QUERY_INFORMATION, False, pid)
        except PermissionError:
            # Protected processes only grant the limited right, which Windows accepts here
            # (Wine wants the full one, which is why it is tried first).
            h = _winapi.OpenProcess(_PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    except OSError as exc:
        if exc.winerror == c.ERROR_INVALID_PARAMETER:  # OpenProcess: no such pid (any more)
            raise ProcessExitedError(exc.errno, f"no process with pid {pid}", None,
                                     exc.winerror) from exc
        raise
    try:
        return c.IsProcessInJob(h, job=0)  # in any job
    finally:
        _winapi.CloseHandle(h)


def wine_version() -> Optional[str]:
    return c.WineVersion()

