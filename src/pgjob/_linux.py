"""Linux backends: a Job owns one PID namespace whose PID 1 is a small C init that dies with
the owner process, so the kernel kills the whole tree (mechanism "pid_namespace"); each
job.popen() child enters that namespace as it is created, staying a child of this process;
where namespaces are refused, direct children get PR_SET_PDEATHSIG ("pdeathsig", weaker,
see docs/linux.md).

The backend is split by responsibility:
  _procfs.py         what is read from /proc, and descriptor hygiene;
  _linux_spawn.py    the spawn adapter (Popen's _execute_child with our fork_exec);
  _linux_helpers.py  the lives of the helper processes (a namespace's init) and the fork hook;
  _linux.py          the backends (this module), one class per mechanism.
Which mechanism a Job gets, and what it falls back to, is decided in one place: _job.Job.

subprocess.Popen keeps doing everything it does (argument and env conversion, pipes,
errpipe protocol, communicate, timeouts); only its one call to _posixsubprocess.fork_exec is
routed to _jobobject.spawn (_linux_spawn.py). Nothing global is patched.

Every descriptor kept here is above 2 and close-on-exec, and a child of os.fork() holds
none of them: its copy of every backend object is inert (_linux_helpers._after_fork_in_child).
"""
from __future__ import annotations

import collections
import errno
import os
import select
import signal
import threading
import time
from typing import TYPE_CHECKING, Optional

from . import _jobobject as c
from ._base import EventKind, JobBackend, JobOptions, records as _records
from ._errors import JobClosedError, ProcessExitedError, UnsupportedError
from ._log import logger
from ._linux_helpers import (_HOLDERS, _Init, _leave_pid_namespace_for_children, _map_own_ids,
                             _reap_inits, _start_job_init, helper_path)
from ._linux_spawn import _SPAWN_THREAD, _execute_child_with, _spawn
from ._procfs import (_close_quietly, _cpu_times, _descendants, _namespace_members, _nspid_depth,
                      _pid_namespace, _pid_namespace_for_children, _pipe_above_stdio, _running,
                      _signal_quietly, _stat_fields)

if TYPE_CHECKING:
    from ._records import JobEvent, JobStats


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
                threading.current_thread() is threading.main_thread(), helper_path())
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


# -- the mechanisms this backend offers (Job chooses among them and owns the fallback policy) ----

# What each mechanism leaves protected, for the line Job logs when it falls back to it.
GUARANTEES = {
    "pid_namespace": "the kernel SIGKILLs the job's whole PID namespace when this process dies",
    "pdeathsig": "processes started with job.popen() are SIGKILLed when this process dies, but "
                 "their own children (and daemons) survive that and are killed only by "
                 "close()/terminate(), if still found",
}


def candidates(options: JobOptions) -> list:
    """The mechanisms to try, best first, for a Job that did not name one."""
    if options.has_limits:
        # Only a cgroup enforces limits: never fall back to something that would ignore them.
        return ["cgroup"]
    return ["pid_namespace", "pdeathsig"]


def open_mechanism(name: str, options: JobOptions) -> JobBackend:
    """A backend of mechanism `name`; OSError (or UnsupportedError) if it can't be had here."""
    if name == "job_object":
        raise UnsupportedError(errno.EOPNOTSUPP, "mechanism 'job_object' is Windows-only")
    if name == "pdeathsig":
        if options.has_limits:
            raise _limits_unsupported(options)
        return PdeathsigJob(options)
    if name == "cgroup":
        raise _limits_unsupported(options)
    if name == "pid_namespace":
        if options.has_limits:
            raise _limits_unsupported(options)
        init, _, _ = _start_job_init(options)
        _reap_inits()
        return NamespaceJob(options, init)
    raise UnsupportedError(errno.EOPNOTSUPP, f"mechanism {name!r} is not available on Linux")


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
