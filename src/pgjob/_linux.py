"""Linux backend: a Job owns one PID namespace whose PID 1 is a small C init that dies with
the owner process, so the kernel kills the whole tree (mechanism "pid_namespace"); each
job.popen() child enters that namespace as it is created, staying a child of this process;
where namespaces are refused, direct children get PR_SET_PDEATHSIG ("pdeathsig", weaker,
see docs/linux.md).

subprocess.Popen keeps doing everything it does (argument and env conversion, pipes,
errpipe protocol, communicate, timeouts); only its one call to _posixsubprocess.fork_exec is
routed to _jobobject.spawn, by running Popen's own _execute_child code with a globals mapping
in which that one name differs. Nothing global is patched. That call's shape is private and
changes between CPython versions (_FORK_EXEC_SHAPES has each one); it is checked at import,
and a Python that no longer matches gets a RuntimeWarning and a log line naming its version
then, and an UnsupportedError from job.popen() (see _check_fork_exec_interface).

Every descriptor kept here is above 2 and close-on-exec, and a child of os.fork() holds
none of them: its copy of every backend object is inert (_after_fork_in_child).
"""
from __future__ import annotations

import collections
import errno
import fcntl
import os
import queue
import select
import signal
import sys
import threading
import time
import types
import warnings
import weakref
from typing import TYPE_CHECKING, Optional

from . import _errors
from . import _jobobject as c
from ._base import EventKind, JobBackend, JobOptions, records as _records
from ._errors import JobClosedError, ProcessExitedError, UnsupportedError
from ._log import logger
from ._unprotected import UnprotectedJob

if TYPE_CHECKING:
    from ._records import JobEvent, JobStats


_CLK_TCK = os.sysconf("SC_CLK_TCK")
# Popen reads "noexec:chdir" from the errpipe as "chdir(cwd) failed" since Python 3.13.
_CHDIR_MARKER = sys.version_info >= (3, 13)


# -- descriptors pgjob keeps -----------------------------------------------------------------

def _above_stdio(fd: int) -> int:
    """`fd`, moved above 2 if it landed on 0, 1 or 2 (the caller had closed one), and
    close-on-exec either way. A descriptor of ours on 0-2 would be replaced the moment the
    caller restores its stdin/stdout/stderr with dup2, and we would go on using the caller's
    file as our pidfd or namespace."""
    if fd > 2:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


def _pipe_above_stdio() -> tuple:
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        read_end = _above_stdio(read_end)
    except BaseException:
        os.close(write_end)
        raise
    try:
        return read_end, _above_stdio(write_end)
    except BaseException:
        os.close(read_end)
        raise


def _open_above_stdio(path: str) -> int:
    return _above_stdio(os.open(path, os.O_RDONLY | os.O_CLOEXEC))


# -- procfs ---------------------------------------------------------------------------------

def _all_pids() -> list:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _pid_namespace(pid) -> Optional[tuple]:
    """(st_dev, st_ino) of the PID namespace `pid` (or "self") lives in; None if it is gone.

    A process that exits between listing /proc and this stat is a benign race: it is no
    member any more, so "gone" is the right answer."""
    try:
        st = os.stat(f"/proc/{pid}/ns/pid")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return (st.st_dev, st.st_ino)


def _stat_fields(pid: int) -> Optional[list]:
    """Fields of /proc/<pid>/stat after the command name (field 3, "state", is index 0)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None  # exited since it was listed
    return data[data.rindex(b")") + 2:].split()


def _nspid_depth(pid) -> int:
    """How many PID namespaces `pid` is nested in (1: the initial one), from NSpid."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"NSpid:"):
                return len(line.split()) - 1
    return 1


def _running(pid: int) -> bool:
    """Not exited: a zombie is waiting for its parent (Popen) to reap it, and no member."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in (b"Z", b"X")


def _namespace_members(namespaces: set, inits: set) -> list:
    """Host pids of the running processes in one of `namespaces` (as _pid_namespace returns
    them), pgjob's own inits (`inits`) left out."""
    if not namespaces:
        return []
    return [pid for pid in _all_pids()
            if pid not in inits and _pid_namespace(pid) in namespaces and _running(pid)]


def _descendants(roots: list) -> list:
    """`roots` and every process whose parent chain leads to one of them (one /proc pass)."""
    children = collections.defaultdict(list)
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is not None:
            children[int(fields[1])].append(pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return sorted(found)


def _cpu_times(pids: list) -> tuple:
    """User and system seconds of `pids` plus the children each of them has reaped."""
    user = system = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # utime, stime, cutime, cstime are fields 14-17 of /proc/<pid>/stat.
            user += int(fields[11]) + int(fields[13])
            system += int(fields[12]) + int(fields[14])
    return user / _CLK_TCK, system / _CLK_TCK


# -- running Popen._execute_child with our spawn ------------------------------------------------

# How each CPython's Popen._execute_child calls _posixsubprocess.fork_exec: the positional
# arguments in order (checked against Lib/subprocess.py of each version), and the global name
# it calls it by. The entry for the newest version at or below the running one applies.
_FORK_EXEC_HEAD = (
    "args", "executables", "close_fds", "fds_to_keep", "cwd", "env", "p2cread", "p2cwrite",
    "c2pread", "c2pwrite", "errread", "errwrite", "errpipe_read", "errpipe_write",
    "restore_signals", "start_new_session")
_FORK_EXEC_SHAPES = (
    # 3.9, 3.10: 21 arguments, called as _posixsubprocess.fork_exec
    ((3, 9), "_posixsubprocess",
     _FORK_EXEC_HEAD + ("gid", "groups", "uid", "umask", "preexec_fn")),
    # 3.11 - 3.13: 23, process_group added, allow_vfork (_USE_VFORK) at the end
    ((3, 11), "_fork_exec",
     _FORK_EXEC_HEAD + ("process_group", "gid", "groups", "uid", "umask", "preexec_fn",
                        "allow_vfork")),
    # 3.14, 3.15: 22, allow_vfork dropped (subprocess._USE_VFORK is gone)
    ((3, 14), "_fork_exec",
     _FORK_EXEC_HEAD + ("process_group", "gid", "groups", "uid", "umask", "preexec_fn")),
)
_NEWEST_CHECKED = (3, 15)  # the last version whose subprocess.py the table was checked against


def _fork_exec_shape(version: tuple) -> tuple:
    """(name _execute_child calls fork_exec by, argument names) for Python `version`."""
    found: tuple = _FORK_EXEC_SHAPES[0]
    for shape in _FORK_EXEC_SHAPES:
        if tuple(version[:2]) >= shape[0]:
            found = shape
    return found[1], found[2]


def _fork_exec_interface_problem(execute_child, fork_exec, version: tuple) -> Optional[str]:
    """What is wrong with the private interface pgjob hooks into, for Python `version`; None if
    it looks as the table says. Checked: the globals _execute_child reads and that we replace
    (the fork_exec name, _USE_POSIX_SPAWN) exist, and, where fork_exec has a text signature
    (3.12+), that it takes the number of arguments we unpack."""
    hook, names = _fork_exec_shape(version)
    where = f"Python {version[0]}.{version[1]}"
    used = execute_child.__code__.co_names
    for name in (hook, "_USE_POSIX_SPAWN"):
        if name not in used or name not in execute_child.__globals__:
            return (f"{where}: subprocess.Popen._execute_child no longer uses {name}, which "
                    f"pgjob replaces to start processes in a job")
    signature = getattr(fork_exec, "__text_signature__", None)
    if signature:
        params = [p.strip() for p in signature.strip("()").split(",")]
        params = [p for p in params if p and p not in ("$module", "/")]
        if len(params) != len(names):
            return (f"{where}: _posixsubprocess.fork_exec takes {len(params)} arguments, "
                    f"pgjob knows the {len(names)}-argument form of this version")
    return None


def _check_fork_exec_interface() -> Optional[str]:
    """Run once at import: pgjob says at once, naming the Python version, when this Python's
    subprocess internals are not the ones it knows, instead of failing on the first spawn. The
    problem is logged and warned about (RuntimeWarning) here, and every job.popen() on Linux then
    raises UnsupportedError with the same text. A version newer than the table's last checked
    one is used with the newest shape if it passes the check, and logged at debug level."""
    import subprocess
    try:
        import _posixsubprocess
    except ImportError:
        return f"Python {sys.version_info[0]}.{sys.version_info[1]} has no _posixsubprocess"
    problem = _fork_exec_interface_problem(
        subprocess.Popen._execute_child,  # type: ignore[attr-defined]
        _posixsubprocess.fork_exec, sys.version_info)
    if problem is not None:
        logger.warning("%s: job.popen() is unavailable on this Python", problem)
        warnings.warn(f"pgjob: {problem}: job.popen() is unavailable on this Python",
                      RuntimeWarning, stacklevel=2)
    elif sys.version_info[:2] > _NEWEST_CHECKED:
        logger.debug("Python %d.%d is newer than the last one pgjob's fork_exec table was checked "
                     "against (%d.%d); its interface passed the import check",
                     sys.version_info[0], sys.version_info[1], *_NEWEST_CHECKED)
    return problem


_FORK_EXEC_HOOK, _FORK_EXEC_ARGS = _fork_exec_shape(sys.version_info)
_INTERFACE_PROBLEM = _check_fork_exec_interface()


class _PosixsubprocessWithJob:
    """Stands in for the _posixsubprocess module (Python 3.9/3.10 call it by module name):
    every attribute is the real module's, except fork_exec."""

    def __init__(self, fork_exec) -> None:
        import _posixsubprocess
        self._module = _posixsubprocess
        self.fork_exec = fork_exec

    def __getattr__(self, name: str):
        return getattr(self._module, name)


def _execute_child_with(execute_child, fork_exec):
    if _INTERFACE_PROBLEM is not None:
        raise UnsupportedError(errno.EOPNOTSUPP, f"{_INTERFACE_PROBLEM}: job.popen() is "
                               "unavailable on this Python")
    namespace = dict(execute_child.__globals__)
    # posix_spawn would bypass fork_exec: always take the fork_exec path.
    namespace["_USE_POSIX_SPAWN"] = False
    if _FORK_EXEC_HOOK == "_fork_exec":
        namespace["_fork_exec"] = fork_exec
    else:
        namespace["_posixsubprocess"] = _PosixsubprocessWithJob(fork_exec)
    return types.FunctionType(execute_child.__code__, namespace, execute_child.__name__,
                              execute_child.__defaults__, execute_child.__closure__)


def _spawn(fork_exec_args: tuple, pidns_fd: int, userns_fd: int, pdeathsig: bool) -> tuple:
    """Call _jobobject.spawn with what subprocess passed to _posixsubprocess.fork_exec;
    (pid, pidfd) of the program."""
    if len(fork_exec_args) != len(_FORK_EXEC_ARGS):
        raise UnsupportedError(
            errno.EOPNOTSUPP, f"Python {sys.version_info[0]}.{sys.version_info[1]} called "
            f"fork_exec with {len(fork_exec_args)} arguments; pgjob knows the "
            f"{len(_FORK_EXEC_ARGS)}-argument form of this version")
    a = dict(zip(_FORK_EXEC_ARGS, fork_exec_args))
    if a["preexec_fn"] is not None:
        raise UnsupportedError(
            errno.EINVAL, "preexec_fn is not supported by pgjob on Linux: the child is set up in C "
            "between clone and exec, where running Python is unsafe. Use start_new_session, "
            "process_group, umask, user/group/extra_groups, cwd or env, or do the setup in the "
            "child program itself.")
    gid, groups, uid, cwd = a["gid"], a["groups"], a["uid"], a["cwd"]
    return c.spawn(
        [os.fsencode(arg) for arg in a["args"]], tuple(a["executables"]), a["env"],
        None if cwd is None else os.fsencode(cwd), bool(a["close_fds"]), tuple(a["fds_to_keep"]),
        a["p2cread"], a["p2cwrite"], a["c2pread"], a["c2pwrite"], a["errread"], a["errwrite"],
        a["errpipe_read"], a["errpipe_write"], bool(a["restore_signals"]),
        bool(a["start_new_session"]), a.get("process_group", -1),
        -1 if gid is None else gid, None if groups is None else tuple(groups),
        -1 if uid is None else uid, a["umask"], pidns_fd, userns_fd, pdeathsig, _CHDIR_MARKER)


class _SpawnThread:
    """PR_SET_PDEATHSIG fires when the parent *thread* exits (golang/go#27505), so a pdeathsig
    child (or a namespace's init) made from a worker thread would die with that thread. Such
    clones run here, on one thread that lives as long as the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: "queue.SimpleQueue" = queue.SimpleQueue()
        self._pid = -1

    def after_fork_in_child(self) -> None:
        """The thread is not in the child, and its lock may have been held by another thread
        at the fork: start afresh (call() starts a new thread on first use)."""
        self._lock = threading.Lock()
        self._requests = queue.SimpleQueue()
        self._pid = -1

    def call(self, fn, *args):
        if threading.current_thread() is threading.main_thread():
            return fn(*args)
        with self._lock:
            if self._pid != os.getpid():  # first use, or we are a fork of the process that had it
                self._requests = queue.SimpleQueue()
                threading.Thread(target=self._serve, args=(self._requests,),
                                 name="pgjob-spawner", daemon=True).start()
                self._pid = os.getpid()
            requests = self._requests
        done = threading.Event()
        box: list = [None, None]
        requests.put((fn, args, box, done))
        done.wait()
        if box[1] is not None:
            raise box[1]
        return box[0]

    @staticmethod
    def _serve(requests) -> None:
        while True:
            fn, args, box, done = requests.get()
            try:
                box[0] = fn(*args)
            except BaseException as exc:  # handed to the caller's thread
                box[1] = exc
            finally:
                done.set()


_SPAWN_THREAD = _SpawnThread()


# -- the job backends ---------------------------------------------------------------------------

def _close_quietly(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass  # not open (any more): nothing to release


# Every backend object that holds descriptors, so that a fork's copies can be made inert.
_HOLDERS: "weakref.WeakSet" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """os.fork() copied our descriptors and module state into the child: none of it may act
    there on the owner's namespaces, inits or members (guarantee 12 of STYLE.md)."""
    global _UNREAPED_LOCK
    owner = _OWNER_PID[0]
    _OWNER_PID[0] = os.getpid()
    _SPAWN_THREAD.after_fork_in_child()
    for holder in list(_HOLDERS):
        holder.after_fork_in_child(owner)
    _UNREAPED_LOCK = threading.Lock()
    for fd in _UNREAPED_INITS:  # the owner's children: the owner reaps them, not a fork
        _close_quietly(fd)
    _UNREAPED_INITS.clear()


_OWNER_PID = [os.getpid()]
os.register_at_fork(after_in_child=_after_fork_in_child)


class _Member:
    """A process job.popen() started (the program itself, in both mechanisms)."""

    __slots__ = ("pid", "pidfd")

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd


class _LinuxJob(JobBackend):
    """What both Linux mechanisms share: members tracked by pidfd (a pid could be reused once
    Popen reaps it; a pidfd can't), exit events from pidfd readiness, wait(), close()."""

    spawn_path = "?"

    def __init__(self, options: JobOptions) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._members: list = []  # running (or not yet noted as exited)
        self._events: collections.deque = collections.deque()
        self._started = 0
        self._zero_pending = False  # a member started since the last ACTIVE_PROCESS_ZERO
        self._closed = False
        self._forked_from: Optional[int] = None  # set in a fork's copy: the owner's pid
        # Lets next_event() wake up when a process is started while it waits.
        self._wake_read, self._wake_write = _pipe_above_stdio()
        _HOLDERS.add(self)

    def after_fork_in_child(self, owner: int) -> None:
        """In a child of os.fork(): this copy is inert. Close the child's copies of our
        descriptors (so the child holds nothing of the owner's: a member's pidfd, the wake
        pipe) and never act on the owner's members again; close() and detach() do nothing."""
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._forked_from = owner
        self._closed = True
        members, self._members = self._members, []
        for fd in [m.pidfd for m in members] + [self._wake_read, self._wake_write]:
            _close_quietly(fd)
        self._wake_read = self._wake_write = -1

    # subclass hooks
    def _spawn_member(self, fork_exec_args: tuple) -> tuple:
        raise NotImplementedError

    def _others_alive(self) -> bool:
        """Members beyond the ones we hold pidfds for (their descendants, daemons)."""
        return False

    # membership
    def execute_child(self, popen, execute_child, args) -> None:
        if self._forked_from is not None:
            raise JobClosedError(
                errno.EBADF, f"this job belongs to process {self._forked_from}; in this fork of "
                "it (pid %d) the job is inert and can start no processes" % os.getpid())

        def fork_exec(*fork_exec_args):
            self._note_exits()
            pid, pidfd = self._spawn_member(fork_exec_args)
            with self._lock:
                if self._closed:  # close() raced with this spawn: don't leave it running
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    os.close(pidfd)
                else:
                    self._members.append(_Member(pid, pidfd))
                    self._started += 1
                    self._zero_pending = True
                    self._events.append(_records.JobEvent(EventKind.NEW_PROCESS, pid))
            logger.debug("%s: pid %d, pidfd %d", self.spawn_path, pid, pidfd)
            try:
                os.write(self._wake_write, b"!")
            except OSError:
                pass  # the pipe is full: next_event() is awake anyway
            return pid

        popen.spawn_path = self.spawn_path
        _execute_child_with(execute_child, fork_exec)(popen, *args)

    def assign(self, pid: int, handle: Optional[int]) -> None:
        raise UnsupportedError(
            errno.EOPNOTSUPP, "Linux can't move a running process into a job's PID namespace: "
            "start it with job.popen() (or call pgjob.protect_children() before it is created)")

    def assign_current(self) -> None:
        raise UnsupportedError(
            errno.EOPNOTSUPP, f"mechanism {self.mechanism!r} can't cover children this process "
            "creates by other means (subprocess, os.system): that needs a PID namespace")

    def _note_exits(self) -> list:
        """Mark members whose pidfd turned readable (the process exited), queue their
        EXIT_PROCESS and close their pidfd (a long-lived job must not hold one descriptor per
        process it ever started); return the live ones."""
        # Under the lock throughout: another thread must not poll a pidfd we close.
        with self._lock:
            if not self._members:
                return []
            poller = select.poll()
            for m in self._members:
                poller.register(m.pidfd, select.POLLIN)
            ready = {fd for fd, _ in poller.poll(0)}
            live = []
            for m in self._members:
                if m.pidfd not in ready:
                    live.append(m)
                    continue
                self._member_exited(m.pid)
                self._events.append(_records.JobEvent(EventKind.EXIT_PROCESS, m.pid))
                os.close(m.pidfd)
            self._members = live
            return list(live)

    def _member_exited(self, pid: int) -> None:
        """Hook, called with the lock held."""

    def _poll_exits(self) -> list:
        """_note_exits(), and queue ACTIVE_PROCESS_ZERO once nobody is left, the members'
        descendants included."""
        live = self._note_exits()
        if not live and self._zero_pending and not self._others_alive():
            with self._lock:
                if self._zero_pending:
                    self._zero_pending = False
                    self._events.append(_records.JobEvent(EventKind.ACTIVE_PROCESS_ZERO))
        return live

    def stats(self) -> JobStats:
        pids = self.pids()
        user, kernel = _cpu_times(pids)
        # Linux keeps no count of every process that ever was in a namespace, nor peak
        # memory or I/O for a group without a cgroup: those stay None.
        return _records.JobStats(active_processes=len(pids), user_time=user, kernel_time=kernel)

    def next_event(self, timeout: Optional[float]) -> Optional[JobEvent]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            live = self._poll_exits()
            with self._lock:
                if self._events:
                    return self._events.popleft()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            poller = select.poll()
            poller.register(self._wake_read, select.POLLIN)
            for m in live:
                poller.register(m.pidfd, select.POLLIN)
            poller.poll(self._poll_slice_ms(live, remaining))
            try:
                os.read(self._wake_read, 4096)
            except BlockingIOError:
                pass

    def _poll_slice_ms(self, live: list, remaining: Optional[float]) -> Optional[int]:
        """How long to sleep in poll(): members we hold no pidfd for (daemons, grandchildren)
        don't wake us, so while only they can be left, look again every 50 ms."""
        slice_ms = None if live or not self._zero_pending else 50
        if remaining is None:
            return slice_ms
        wanted = max(1, int(remaining * 1000))
        return wanted if slice_ms is None else min(wanted, slice_ms)

    def wait(self, timeout: Optional[float]) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            live = self._poll_exits()
            if not live and not self._others_alive():
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            poller = select.poll()
            for m in live:
                poller.register(m.pidfd, select.POLLIN)
            # Re-check at least every 50 ms for members we hold no pidfd for.
            slice_ms = 50 if remaining is None else max(1, min(50, int(remaining * 1000)))
            poller.poll(slice_ms)

    def _kill_members(self) -> None:
        with self._lock:
            members = list(self._members)
        for m in members:
            try:
                signal.pidfd_send_signal(m.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass  # exited since we looked: nothing to kill

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.options.kill_on_close:
            try:
                self.terminate(1)
            except OSError as exc:
                logger.debug("close: terminate failed: %s", exc)
        self._release()

    def detach(self) -> Optional[int]:
        with self._lock:
            self._closed = True
        self._release()
        return None

    def _release(self) -> None:
        with self._lock:
            members, self._members = self._members, []
        for m in members:
            os.close(m.pidfd)
        for fd in (self._wake_read, self._wake_write):
            _close_quietly(fd)
        self._wake_read = self._wake_write = -1


_KILLED_INIT_WAIT_MS = 20  # how long close() waits for a killed init before reaping it later
_UNREAPED_INITS: list = []  # pidfds of inits we no longer use that had not exited yet
_UNREAPED_LOCK = threading.Lock()


def _reaped(pidfd: int) -> bool:
    try:
        return os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG) is not None
    except ChildProcessError:
        return True  # someone's waitpid(-1) reaped it already: nothing left to do


def _reap_inits(pidfd: int = -1) -> None:
    """Reap the inits we let go of, now or on a later call. A killed init stays a zombie-to-be
    until every member has been reaped by its own parent (the kernel waits for them before it
    lets a namespace's init go), so Popen.wait() may come first: like subprocess's _active."""
    with _UNREAPED_LOCK:
        if pidfd >= 0:
            _UNREAPED_INITS.append(pidfd)
        for fd in list(_UNREAPED_INITS):
            if _reaped(fd):
                _UNREAPED_INITS.remove(fd)
                os.close(fd)


class _Init:
    """PID 1 of a namespace pgjob made (a job's, or protect_children()'s reaper), and the
    descriptors that reach it: its pidfd, the control socket, the namespace files to setns."""

    __slots__ = ("pid", "pidfd", "control", "pidns_fd", "userns_fd", "namespace", "_lock",
                 "__weakref__")

    def __init__(self, pid: int, pidfd: int, control: int, with_userns: bool) -> None:
        self.pid, self.pidfd, self.control = pid, pidfd, control
        self.pidns_fd = self.userns_fd = -1
        self._lock = threading.Lock()
        _HOLDERS.add(self)
        try:
            # Our child and not reaped: the pid can't name another process meanwhile.
            self.pidns_fd = _open_above_stdio(f"/proc/{pid}/ns/pid")
            if with_userns:
                self.userns_fd = _open_above_stdio(f"/proc/{pid}/ns/user")
        except OSError:
            self.kill()
            self.release()
            raise
        st = os.fstat(self.pidns_fd)
        self.namespace = (st.st_dev, st.st_ino)

    def after_fork_in_child(self, owner: int) -> None:
        """In a child of os.fork(): close the child's copies. Above all the control socket,
        whose EOF tells the init that the owner exec'd or died: a fork must not keep it open,
        nor ever kill, terminate or detach the owner's namespace."""
        self._lock = threading.Lock()
        for fd in (self.control, self.pidns_fd, self.userns_fd, self.pidfd):
            _close_quietly(fd)
        self.control = self.pidns_fd = self.userns_fd = self.pidfd = -1

    def terminate_members(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the namespace but the init, which stays for later spawns;
        returns once the init has sent them the signal."""
        if self.pidfd < 0 or self.control < 0:
            return  # released (or a fork's inert copy): nothing of ours to act on
        try:
            # A stopped init could not answer: let it run (it ignores the signal itself).
            signal.pidfd_send_signal(self.pidfd, signal.SIGCONT)
        except ProcessLookupError:
            return  # the init is gone, and with it every member
        with self._lock:
            try:
                os.write(self.control, bytes([c.PGJOB_INIT_TERMINATE]))
            except BrokenPipeError:
                return  # the init exited: so did the namespace
            poller = select.poll()
            poller.register(self.control, select.POLLIN)
            poller.register(self.pidfd, select.POLLIN)
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(errno.ETIMEDOUT, f"the job's init (pid {self.pid}) did "
                                       f"not answer the terminate request in {timeout} s")
                for fd, _ in poller.poll(max(1, int(remaining * 1000))):
                    if fd == self.pidfd:
                        return  # the init exited: the kernel kills the namespace
                    if os.read(self.control, 1) in (b"", bytes([c.PGJOB_INIT_TERMINATE])):
                        return

    def exited(self, wait_ms: int = 0) -> bool:
        """Has the init exited (a zombie counts)? Its pidfd turns readable then, which can
        come a little after the kernel already refuses new processes in the namespace: wait
        up to `wait_ms` for it."""
        if self.pidfd < 0:
            return True
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(wait_ms))

    def kill(self) -> None:
        """The namespace dies with its init: the kernel SIGKILLs every process in it."""
        if self.pidfd < 0:
            return  # released (or a fork's inert copy)
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass  # exited already, and the namespace with it

    def detach(self) -> None:
        """Let the members outlive the job and the owner: the init stays until they are gone."""
        if self.control < 0:
            return  # released (or a fork's inert copy)
        try:
            os.write(self.control, bytes([c.PGJOB_INIT_DETACH]))
        except OSError:
            pass  # the init is gone: nothing left to detach from

    def release(self, killed: bool = False) -> None:
        for fd in (self.control, self.pidns_fd, self.userns_fd):
            if fd >= 0:
                os.close(fd)
        self.control = self.pidns_fd = self.userns_fd = -1
        if self.pidfd >= 0:
            if killed:
                # Usually gone within a millisecond: reap it now rather than leave it (and
                # its pidfd) for later. It takes longer only while members' zombies wait for
                # their parent, and then _reap_inits() comes back to it.
                poller = select.poll()
                poller.register(self.pidfd, select.POLLIN)
                poller.poll(_KILLED_INIT_WAIT_MS)
            _reap_inits(self.pidfd)
            self.pidfd = -1


class NamespaceJob(_LinuxJob):
    """One PID namespace per job, created with the job; its init (pgjob C code, PID 1) reaps
    orphans and exits with the owner process (or when the job is closed), and then the kernel
    SIGKILLs everything left in the namespace, double-forked setsid daemons included. Each
    job.popen() child enters the namespace as it is created, as our own child: Popen.pid,
    returncode and signals are the program's own."""

    mechanism = "pid_namespace"
    spawn_path = "setns"

    def __init__(self, options: JobOptions, init: _Init) -> None:
        super().__init__(options)
        self._init = init          # the namespace job.popen() starts processes in
        self._inits = [init]       # every namespace whose processes are members
        self._reaper: Optional[_Init] = None  # protect_children(): our own children's namespace

    def _spawn_member(self, fork_exec_args: tuple) -> tuple:
        # Members arm no PR_SET_PDEATHSIG: the init watches the owner for the whole namespace,
        # so any thread may spawn.
        init = self._init
        try:
            return _spawn(fork_exec_args, init.pidns_fd, init.userns_fd, False)
        except OSError as exc:
            # A namespace whose init has exited takes no new process: the kernel refuses the
            # clone with ENOMEM. Asking the init's pidfd tells that apart from a real ENOMEM.
            if not init.exited(wait_ms=1000):
                raise
            raise JobClosedError(
                errno.EBADF, f"the job's PID namespace is gone: its init (pid {init.pid}) has "
                "exited (killed by someone, or by the OOM killer), and with it every member; "
                "this job can start no more processes") from exc

    def pids(self) -> list:
        return _namespace_members({i.namespace for i in self._inits},
                                  {i.pid for i in self._inits})

    def contains(self, pid: int) -> bool:
        return (all(pid != i.pid for i in self._inits)
                and _pid_namespace(pid) in {i.namespace for i in self._inits} and _running(pid))

    def _others_alive(self) -> bool:
        return bool(self.pids())

    def terminate(self, exit_code: int) -> None:
        # A PID namespace has no exit code to give: every member dies of SIGKILL. The inits
        # stay, so the job can start processes again (as a Windows job can).
        for init in self._inits:
            init.terminate_members()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for init in self._inits:
            if self.options.kill_on_close:
                init.kill()
            else:
                init.detach()
        self._release(killed=self.options.kill_on_close)

    def detach(self) -> Optional[int]:
        with self._lock:
            self._closed = True
        for init in self._inits:
            init.detach()
        self._release()
        return None

    def assign_current(self) -> None:
        if self._reaper is not None:
            return
        if self._forked_from is not None:
            raise JobClosedError(errno.EBADF, f"this job belongs to process {self._forked_from}; "
                                 "in a fork of it the job is inert")
        threads = len(os.listdir("/proc/self/task"))
        # Our ids as the kernel knows them now: after unshare(CLONE_NEWUSER) and before the
        # maps are written, geteuid() says 65534 (the overflow uid), which is no id of ours.
        uid, gid = os.geteuid(), os.getegid()
        try:
            c.unshare(c.CLONE_NEWPID)
            logger.debug("unshare(CLONE_NEWPID): this thread's later children get a new PID namespace")
        except PermissionError:
            # Without CAP_SYS_ADMIN: a user namespace first, which the kernel allows only to a
            # single-threaded process (EINVAL otherwise).
            c.unshare(c.CLONE_NEWUSER | c.CLONE_NEWPID)
            _map_own_ids(uid, gid)
            logger.debug("unshare(CLONE_NEWUSER|CLONE_NEWPID) and mapped uid %d", uid)
        try:
            # PR_SET_PDEATHSIG only from the main thread: it fires when the parent thread
            # exits. The reaper stays when this process execs (the control socket closes
            # then): the new program's children still need an init to be created at all.
            pid, pidfd, control = c.start_init(
                0, False, c.PGJOB_INIT_KILL, c.PGJOB_INIT_IGNORE,
                threading.current_thread() is threading.main_thread())
            reaper = _Init(pid, pidfd, control, False)
        except BaseException:
            _leave_pid_namespace_for_children()
            raise
        logger.debug("started the namespace's init (reaper): pid %d", pid)
        self._reaper = reaper
        self._inits.append(reaper)
        # job.popen() from now on starts in the reaper's namespace too: after
        # unshare(CLONE_NEWUSER) we could not enter the job's own one any more.
        own, self._init = self._init, reaper
        if self._started == 0:
            self._inits.remove(own)
            own.kill()
            own.release(killed=True)
        if threads > 1:
            logger.warning(
                "protect_children(): %d other threads already existed; children they create "
                "(and threads they start) are outside the PID namespace and not protected. "
                "Call it early, before starting threads.", threads - 1)

    def holds_current_process(self) -> bool:
        # Our own namespace's init must outlive this Job: closing would kill it, and without
        # an init the kernel refuses every later fork of this process. Like the owner-in-job
        # trap on Windows, Job.close() then keeps the protection for the process lifetime.
        return self._reaper is not None

    def _release(self, killed: bool = False) -> None:
        super()._release()
        for init in self._inits:
            init.release(killed)


class PdeathsigJob(_LinuxJob):
    """The fallback when PID namespaces are refused: each job.popen() child is a direct child
    with PR_SET_PDEATHSIG=SIGKILL (re-checked against getppid() after arming), spawned from a
    thread that lives as long as the process. Only those direct children die with the owner;
    their descendants are killed by close()/terminate(), if they can still be found then."""

    mechanism = "pdeathsig"
    spawn_path = "vfork_pdeathsig"

    def _spawn_member(self, fork_exec_args: tuple) -> tuple:
        if not self.options.kill_on_close:
            return _spawn(fork_exec_args, -1, -1, False)
        return _SPAWN_THREAD.call(_spawn, fork_exec_args, -1, -1, True)

    def __init__(self, options: JobOptions) -> None:
        super().__init__(options)
        self._exited: list = []  # members noted as exited, while they may be zombies

    def _member_exited(self, pid: int) -> None:
        self._exited.append(pid)

    def _roots(self) -> list:
        return [m.pid for m in self._poll_exits()]

    def pids(self) -> list:
        roots = self._roots()
        return _descendants(roots) if roots else []

    def contains(self, pid: int) -> bool:
        return pid in self.pids()

    def _others_alive(self) -> bool:
        """Descendants of members that exited but are not reaped yet (zombies: their pid
        can't have been reused). Once Popen reaps one, its children are reparented away and
        out of our sight: the documented limit of this mechanism."""
        with self._lock:
            exited = list(self._exited)
        zombies = [pid for pid in exited if (_stat_fields(pid) or [b""])[0] == b"Z"]
        with self._lock:  # reaped ones are out of sight for good: forget them
            self._exited = [pid for pid in self._exited if pid in zombies]
        return bool(zombies) and len(_descendants(zombies)) > len(zombies)

    def terminate(self, exit_code: int) -> None:
        # Stop the whole tree first, so nobody forks or reparents while we kill it.
        with self._lock:
            roots = [m.pid for m in self._members]
        tree = _descendants(roots) if roots else []
        for pid in tree:
            _signal_quietly(pid, signal.SIGSTOP)
        tree = sorted(set(tree) | set(_descendants(roots) if roots else []))
        self._kill_members()
        for pid in tree:
            _signal_quietly(pid, signal.SIGKILL)


def _signal_quietly(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # exited since we listed it


def _map_own_ids(uid: int, gid: int) -> None:
    """After unshare(CLONE_NEWUSER): map our uid/gid (as read before the unshare) onto
    themselves (one line each is what an unprivileged process may write)."""
    try:
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{uid} {uid} 1\n")
        try:
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
        except FileNotFoundError:
            pass  # kernels before 3.19
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{gid} {gid} 1\n")
    except OSError as exc:
        exc.syscall = "write /proc/self/uid_map"  # what classify() keys on, as from C
        raise


def _leave_pid_namespace_for_children() -> None:
    """Undo unshare(CLONE_NEWPID) for this thread: point its children back at our own namespace."""
    try:
        fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            c.setns(fd, c.CLONE_NEWPID)
        finally:
            os.close(fd)
    except OSError as exc:
        logger.warning("could not return to this process's PID namespace: %s", exc)


# -- choosing a mechanism -------------------------------------------------------------------------

_NAMESPACE_FLAGS: dict = {}  # pid -> (clone_flags, map_ids) that worked in that process


def _start_job_init(options: JobOptions) -> tuple:
    """Start the init of a new PID namespace for a job: (_Init, clone_flags, map_ids).
    CLONE_NEWPID alone works with CAP_SYS_ADMIN, else an unprivileged user namespace is
    needed too; which one works is remembered per process. Raises the OSError of the last
    attempt if the kernel refuses both."""
    # kill_on_close: the namespace dies with the owner. Otherwise members outlive the owner
    # (as on Windows), and the init stays until the namespace is empty.
    on_exit = c.PGJOB_INIT_KILL if options.kill_on_close else c.PGJOB_INIT_DRAIN
    found = _NAMESPACE_FLAGS.get(os.getpid())
    candidates = [found] if found else [(c.CLONE_NEWPID, False),
                                        (c.CLONE_NEWUSER | c.CLONE_NEWPID, True)]
    failure = None
    for flags, map_ids in candidates:
        try:
            if options.kill_on_close:
                # The init arms PR_SET_PDEATHSIG, which follows the thread that clones it.
                pid, pidfd, control = _SPAWN_THREAD.call(c.start_init, flags, map_ids,
                                                         on_exit, on_exit, True)
            else:
                pid, pidfd, control = c.start_init(flags, map_ids, on_exit, on_exit, False)
        except OSError as exc:
            logger.debug("clone3(0x%x) for a job's init: %s", flags, exc)
            failure = exc
            continue
        _NAMESPACE_FLAGS[os.getpid()] = (flags, map_ids)
        logger.debug("started the job's init: pid %d, clone3 flags 0x%x%s", pid, flags,
                     ", unprivileged user namespace" if map_ids else "")
        return _Init(pid, pidfd, control, map_ids), flags, map_ids
    assert failure is not None
    raise failure


def namespace_flags() -> tuple:
    """The clone flags that give a job its own PID namespace here, and whether a user
    namespace (with our ids mapped) is part of it; probed once per process."""
    found = _NAMESPACE_FLAGS.get(os.getpid())
    if found is not None:
        return found
    init, flags, map_ids = _start_job_init(JobOptions())
    init.kill()
    init.release(killed=True)
    return flags, map_ids


def _cgroup2_controllers() -> Optional[set]:
    try:
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1] for line in f if line.split()[2:3] == ["cgroup2"]]
        if not mounts:
            return None
        with open(os.path.join(mounts[0], "cgroup.controllers")) as f:
            return set(f.read().split())
    except OSError:
        return None


def _limits_unsupported(options: JobOptions) -> UnsupportedError:
    asked = [name for name in ("memory_limit", "process_memory_limit", "process_limit", "cpu_rate")
             if getattr(options, name) is not None]
    controllers = _cgroup2_controllers()
    where = ("no cgroup v2 hierarchy is mounted" if controllers is None
             else f"cgroup v2 controllers available here: {' '.join(sorted(controllers)) or 'none'}")
    return UnsupportedError(
        errno.EOPNOTSUPP, f"{', '.join(asked)}: job limits on Linux need delegated cgroup v2 "
        f"controllers (memory, pids, cpu), which pgjob does not drive yet ({where})")


def open_job(options: JobOptions) -> JobBackend:
    if options.has_limits:
        # A limit the user asked for and we can't enforce is an error, never a silent no-op.
        raise _limits_unsupported(options)
    wanted = options.mechanism
    if wanted == "none":
        return UnprotectedJob(options)
    if wanted == "job_object":
        raise UnsupportedError(errno.EOPNOTSUPP, "mechanism 'job_object' is Windows-only")
    if wanted == "pdeathsig":
        return PdeathsigJob(options)
    try:
        init, _, _ = _start_job_init(options)
    except OSError as exc:
        err = _errors.classify(exc, "create")
        if wanted == "pid_namespace" or options.on_unavailable == "raise":
            if err is exc:
                raise
            raise err from exc
        logger.warning(
            "PID namespaces are unavailable: %s (errno %s); falling back to mechanism=pdeathsig: "
            "processes started with job.popen() are SIGKILLed when this process dies, but "
            "their own children (and daemons) survive that and are killed only by "
            "close()/terminate(), if still found", exc.strerror or exc, exc.errno)
        return PdeathsigJob(options)
    _reap_inits()
    return NamespaceJob(options, init)


def in_job(pid: Optional[int]) -> bool:
    """In a pgjob-made PID namespace? For this process: are its children put in one (after
    protect_children()), or is it itself below the initial namespace? For another process:
    is it nested deeper than we are?"""
    try:
        if pid is None or pid == os.getpid():
            if _pid_namespace("self") != _pid_namespace_for_children():
                return True
            return _nspid_depth("self") > 1
        return _nspid_depth(pid) > _nspid_depth("self")
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessExitedError(errno.ESRCH, f"no process with pid {pid}") from exc


def _pid_namespace_for_children() -> Optional[tuple]:
    try:
        st = os.stat("/proc/thread-self/ns/pid_for_children")
    except OSError:
        return _pid_namespace("self")  # no such link before Linux 4.12
    return (st.st_dev, st.st_ino)
