"""Linux backends: a Job owns one PID namespace whose PID 1 is a small C init that dies with
the owner process, so the kernel kills the whole tree (mechanism "pid_namespace"); each
job.popen() child enters that namespace as it is created, staying a child of this process;
or one cgroup v2 whose watcher writes cgroup.kill when the owner dies ("cgroup": limits,
assign(), protect_children()); where namespaces are refused, direct children get
PR_SET_PDEATHSIG ("pdeathsig", weaker, see docs/linux.md).

The backend is split by responsibility:
  _procfs.py         what is read from /proc, and descriptor hygiene;
  _linux_spawn.py    the spawn adapter (Popen's _execute_child with our fork_exec);
  _linux_helpers.py  the lives of the helper processes (a namespace's init) and the fork hook;
  _cgroup.py         cgroup v2: discovery, placement, its files, and the watcher's life;
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
import resource
import select
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Optional, cast

from . import _errors, _records
from ._base import EventKind, JobBackend, JobOptions
from ._errors import JobClosedError, ProcessExitedError, UnsupportedError
from ._log import logger
from . import _cgroup
from ._linux_helpers import _HOLDERS, _Init, _reap_inits, _start_job_init
from ._linux_spawn import _SPAWN_THREAD, _spawn
from ._spawn_hook import fork_exec_replacements, run_execute_child
from ._procfs import (_above_stdio, _close_quietly, _cpu_times, _descendants, _namespace_members,
                      _nspid_depth, _open_above_stdio, _pid_namespace, _pipe_above_stdio,
                      _running, _signal_quietly, _stat_fields)

if TYPE_CHECKING:
    import types
    from typing import Any

    from ._job import Popen
    from ._procfs import PidOrSelf
    from ._records import JobEvent, JobStats

if TYPE_CHECKING and sys.platform != "linux":
    # Never true at run time. It tells mypy, checking for another platform, that this
    # Linux-only module ends here, instead of reporting each Linux API below as missing.
    raise ImportError("pgjob._linux is Linux-only")


def lower_data_limit(pid: int, limit: int) -> None:
    """process_memory_limit for a running process: its RLIMIT_DATA, soft and hard, lowered to
    `limit` (a lower one is kept; nothing is raised). pid 0: this process. PermissionError if
    we may not change that process's limits (another user's, without CAP_SYS_RESOURCE)."""
    soft, hard = resource.prlimit(pid, resource.RLIMIT_DATA)
    if hard == resource.RLIM_INFINITY or hard > limit:
        hard = limit
    if soft == resource.RLIM_INFINITY or soft > hard:
        soft = hard
    resource.prlimit(pid, resource.RLIMIT_DATA, (soft, hard))


# The most events a Linux job keeps for events() (about 6 MiB of them).
MAX_QUEUED_EVENTS = 65536


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
        # process_memory_limit: each member's RLIMIT_DATA, set between clone and exec.
        self._data_limit = (-1 if options.process_memory_limit is None
                            else options.process_memory_limit)
        self._lock = threading.Lock()
        self._members: list[_Member] = []  # running (or not yet noted as exited)
        # Every member's pidfd, registered once: a spawn's look for exited members is then one
        # poll(0), not a poll object and a register per member.
        self._exit_poller = select.poll()
        # (kind, pid) pairs; next_event() makes the JobEvent (under a microsecond, and most jobs
        # never read their events).
        # Bounded: a job nobody reads events from would otherwise grow by two entries per
        # process it starts, for its whole life. The oldest go first, counted, and the next
        # next_event() logs how many (Windows, too, does not guarantee delivery).
        self._events: collections.deque[tuple[EventKind, Optional[int]]] = collections.deque(
            maxlen=MAX_QUEUED_EVENTS)
        self._events_dropped = 0  # since the last next_event()
        self._waiting = 0  # threads inside next_event()'s poll: the ones a spawn must wake
        self._started = 0
        self._zero_pending = False  # a member started since the last ACTIVE_PROCESS_ZERO
        self._closed = False
        self._forked_from: Optional[int] = None  # set in a fork's copy: the owner's pid
        # Lets next_event() wake up when a process is started while it waits; made by the
        # first next_event() (most jobs are never waited on for events).
        self._wake_read = self._wake_write = -1
        # The write ends of the asyncio layer's watches (_Watch): poked whenever an event is
        # queued or the job is released, so an await never misses what another thread saw.
        self._pokes: list[int] = []
        _HOLDERS.add(self)

    def after_fork_in_child(self, owner: int) -> None:
        """In a child of os.fork(): this copy is inert. Close the child's copies of our
        descriptors (so the child holds nothing of the owner's: a member's pidfd, the wake
        pipe) and never act on the owner's members again; close() and detach() do nothing."""
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._forked_from = owner
        self._closed = True
        members, self._members = self._members, []
        self._exit_poller = select.poll()
        for fd in [m.pidfd for m in members] + [self._wake_read, self._wake_write]:
            _close_quietly(fd)
        self._wake_read = self._wake_write = -1
        self._pokes = []  # the parent's watches: its own to wake

    # subclass hooks
    def _spawn_member(self, fork_exec_args: tuple[Any, ...]) -> tuple[int, int]:
        raise NotImplementedError

    def _others_alive(self) -> bool:
        """Members beyond the ones we hold pidfds for (their descendants, daemons)."""
        return False

    def _event_fds(self) -> list[int]:
        """Descriptors that signal POLLPRI when the job changes (a cgroup's cgroup.events)."""
        return []

    def _other_pids(self) -> list[int]:
        """The running members we hold no pidfd for, when _others_alive() can only learn of
        their exit by looking again (the asyncio layer opens a pidfd of each instead)."""
        return []

    def _rearm_event_fds(self) -> None:
        """Consume what _event_fds() have signalled, so that a new poll waits for the next change."""

    # membership
    def execute_child(self, popen: Popen, execute_child: types.FunctionType,
                      args: tuple[Any, ...]) -> None:
        if self._forked_from is not None:
            raise JobClosedError(
                errno.EBADF, f"this job belongs to process {self._forked_from}; in this fork of "
                "it (pid %d) the job is inert and can start no processes" % os.getpid())

        def fork_exec(*fork_exec_args: Any) -> int:
            if self._members:
                self._note_exits()
            pid, pidfd = self._spawn_member(fork_exec_args)
            popen.spawn_path = self.spawn_path  # also the proof, for Job, that this hook ran
            with self._lock:
                if self._closed:  # close() raced with this spawn: don't leave it running
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    os.close(pidfd)
                    return pid
                self._add_member(pid, pidfd)
                self._started += 1
                self._zero_pending = True
                self._queue_event(EventKind.NEW_PROCESS, pid)
                wake = self._waiting > 0
            if wake:
                try:
                    os.write(self._wake_write, b"!")
                except OSError:
                    pass  # the pipe is full: next_event() is awake anyway
            return pid

        run_execute_child(execute_child, popen, args, fork_exec_replacements(fork_exec))

    def assign(self, pid: int, handle: Optional[int]) -> None:
        raise UnsupportedError(
            errno.EOPNOTSUPP, "Linux can't move a running process into a job's PID namespace: "
            "start it with job.popen() (or call pgjob.protect_children() before it is created)")

    def assign_current(self) -> None:
        raise UnsupportedError(
            errno.EOPNOTSUPP, f"mechanism {self.mechanism!r} can't cover children this process "
            "creates by other means (subprocess, os.system): that needs a PID namespace")

    def _queue_event(self, kind: EventKind, pid: Optional[int]) -> None:
        """With the lock held."""
        if len(self._events) == MAX_QUEUED_EVENTS:
            self._events_dropped += 1
        self._events.append((kind, pid))
        self._poke()

    def _poke(self) -> None:
        """Wake every watch (with the lock held): its await looks at the job again."""
        for fd in self._pokes:
            try:
                os.write(fd, b"!")
            except OSError:
                pass  # full (the watch is awake anyway), or its watch is being closed

    def watch(self) -> "_Watch":
        """For the asyncio layer: a descriptor that turns readable when wait(0) or
        next_event(0) may answer differently from the call just made (see _Watch)."""
        return _Watch(self)

    def _add_member(self, pid: int, pidfd: int) -> None:
        """With the lock held."""
        self._members.append(_Member(pid, pidfd))
        self._exit_poller.register(pidfd, select.POLLIN)

    def _note_exits(self) -> list[_Member]:
        """Mark members whose pidfd turned readable (the process exited), queue their
        EXIT_PROCESS and close their pidfd (a long-lived job must not hold one descriptor per
        process it ever started); return the live ones."""
        # Under the lock throughout: another thread must not poll a pidfd we close (nor the
        # poll object: it refuses concurrent use).
        with self._lock:
            if not self._members:
                return []
            ready = self._exit_poller.poll(0)
            if not ready:
                return list(self._members)
            exited = {fd for fd, _ in ready}
            live = []
            for m in self._members:
                if m.pidfd not in exited:
                    live.append(m)
                    continue
                self._member_exited(m.pid)
                self._queue_event(EventKind.EXIT_PROCESS, m.pid)
                self._exit_poller.unregister(m.pidfd)
                os.close(m.pidfd)
            self._members = live
            return list(live)

    def _member_exited(self, pid: int) -> None:
        """Hook, called with the lock held."""

    def _poll_exits(self) -> list[_Member]:
        """_note_exits(), and queue ACTIVE_PROCESS_ZERO once nobody is left, the members'
        descendants included."""
        live = self._note_exits()
        if not live and self._zero_pending and not self._others_alive():
            with self._lock:
                if self._zero_pending:
                    self._zero_pending = False
                    self._queue_event(EventKind.ACTIVE_PROCESS_ZERO, None)
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
                dropped, self._events_dropped = self._events_dropped, 0
                if self._events:
                    kind, pid = self._events.popleft()
                    event: Optional[JobEvent] = _records.JobEvent(kind, pid)
                elif timeout == 0:
                    event = None  # a look, not a wait: no wake pipe needed
                else:
                    # Counted under the lock that queues NEW_PROCESS: a spawn either queued
                    # its event before we looked, or sees us waiting and writes the wake pipe.
                    event = None
                    if self._wake_read < 0:
                        self._wake_read, self._wake_write = _pipe_above_stdio()
                    self._waiting += 1
            if dropped:
                logger.warning("%d job events were dropped: nobody read them while %d were "
                               "queued (the oldest go first); read events() as they come, or "
                               "not at all", dropped, MAX_QUEUED_EVENTS)
            if event is not None:
                return event
            if timeout == 0:
                return None
            try:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                poller = select.poll()
                poller.register(self._wake_read, select.POLLIN)
                for m in live:
                    poller.register(m.pidfd, select.POLLIN)
                for fd in self._event_fds():
                    poller.register(fd, select.POLLPRI)
                poller.poll(self._poll_slice_ms(live, remaining))
                try:
                    os.read(self._wake_read, 4096)
                except BlockingIOError:
                    pass
            finally:
                with self._lock:
                    self._waiting -= 1

    def _poll_slice_ms(self, live: list[_Member], remaining: Optional[float]) -> Optional[int]:
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
            self._exit_poller = select.poll()
        for m in members:
            os.close(m.pidfd)
        for fd in (self._wake_read, self._wake_write):
            _close_quietly(fd)
        self._wake_read = self._wake_write = -1
        with self._lock:
            self._poke()  # closed or detached: every await must see it


class _Watch:
    """One await's view of a job, as one epoll descriptor for the event loop's reader: it turns
    readable when something may have changed, and then stays readable until closed (level
    triggered). Made only of what the kernel already gives, no thread and no timer:

    - each member's pidfd (readable once the process has exited);
    - a pidfd opened now for each running process the job holds none for (`_other_pids`:
      a namespace's orphans and daemons): when one exits, a new watch looks again and sees
      what it left behind, since nothing joins the job without a running member;
    - POLLPRI of the job's event descriptors (a cgroup's cgroup.events, re-armed first);
    - a pipe the job pokes when it queues an event or is released. This covers what another
      thread saw first: the job closes a member's pidfd (which drops it from this epoll) only
      after noting its exit, and that queues an event.
    """

    def __init__(self, job: _LinuxJob) -> None:
        self._job = job
        self._epoll = select.epoll()
        self._opened: list[int] = []
        self._poke_read = self._poke_write = -1
        try:
            self._poke_read, self._poke_write = _pipe_above_stdio()
            self._epoll.register(self._poke_read, select.EPOLLIN)
            job._rearm_event_fds()
            with job._lock:
                # Registered under the lock: a member's pidfd is open while it is listed.
                job._pokes.append(self._poke_write)
                if job._closed:
                    job._poke()
                for m in job._members:
                    self._epoll.register(m.pidfd, select.EPOLLIN)
                for fd in job._event_fds():
                    self._epoll.register(fd, select.EPOLLPRI)
            for pid in job._other_pids():
                try:
                    fd = _above_stdio(os.pidfd_open(pid))
                except ProcessLookupError:
                    os.write(self._poke_write, b"!")  # gone already: look again at once
                    continue
                self._opened.append(fd)
                self._epoll.register(fd, select.EPOLLIN)
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        return self._epoll.fileno()

    def close(self) -> None:
        """Idempotent."""
        job = self._job
        if self._poke_write >= 0:
            with job._lock:
                try:
                    job._pokes.remove(self._poke_write)
                except ValueError:
                    pass  # a fork's copy forgot it
        self._epoll.close()
        for fd in self._opened + [self._poke_read, self._poke_write]:
            _close_quietly(fd)
        self._opened = []
        self._poke_read = self._poke_write = -1


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

    def _spawn_member(self, fork_exec_args: tuple[Any, ...]) -> tuple[int, int]:
        # Members arm no PR_SET_PDEATHSIG: the init watches the owner for the whole namespace,
        # so any thread may spawn.
        init = self._init
        try:
            return _spawn(fork_exec_args, pidns_fd=init.pidns_fd, userns_fd=init.userns_fd,
                          data_limit=self._data_limit)
        except OSError as exc:
            # A namespace whose init has exited takes no new process: the kernel refuses the
            # clone with ENOMEM. Asking the init's pidfd tells that apart from a real ENOMEM.
            if not init.exited(wait_ms=1000):
                raise
            raise JobClosedError(
                errno.EBADF, f"the job's PID namespace is gone: its init (pid {init.pid}) has "
                "exited (killed by someone, or by the OOM killer), and with it every member; "
                "this job can start no more processes") from exc

    def pids(self) -> list[int]:
        return _namespace_members({i.namespace for i in self._inits},
                                  {i.pid for i in self._inits})

    def contains(self, pid: int) -> bool:
        return (all(pid != i.pid for i in self._inits)
                and _pid_namespace(pid) in {i.namespace for i in self._inits} and _running(pid))

    def _others_alive(self) -> bool:
        return bool(self.pids())

    def _other_pids(self) -> list[int]:
        with self._lock:
            tracked = {m.pid for m in self._members}
        return [pid for pid in self.pids() if pid not in tracked]

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
        # Once unshare(CLONE_NEWPID) was used for this, and it broke the caller: the thread
        # that did it could never start a thread again (the kernel refuses CLONE_THREAD when
        # pid_for_children differs from the active namespace), and unprivileged it needed a
        # user namespace that a threaded process can't enter (issue 9).
        raise UnsupportedError(
            errno.EOPNOTSUPP, "a process can't move itself into a PID namespace: mechanism "
            "'pid_namespace' can only start processes in its namespace (job.popen()); to cover "
            "this process's own children use mechanism 'cgroup' (what protect_children() "
            "does), or run the program inside a namespace from its start (`pgjob run`)")

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

    def _spawn_member(self, fork_exec_args: tuple[Any, ...]) -> tuple[int, int]:
        if not self.options.kill_on_close:
            return _spawn(fork_exec_args, data_limit=self._data_limit)
        return _SPAWN_THREAD.call(_spawn, fork_exec_args, pdeathsig=True,
                                  data_limit=self._data_limit)

    def __init__(self, options: JobOptions) -> None:
        super().__init__(options)
        self._exited: list[int] = []  # members noted as exited, while they may be zombies

    def _member_exited(self, pid: int) -> None:
        self._exited.append(pid)

    def _roots(self) -> list[int]:
        return [m.pid for m in self._poll_exits()]

    def pids(self) -> list[int]:
        roots = self._roots()
        return _descendants(roots) if roots else []

    def contains(self, pid: int) -> bool:
        return pid in self.pids()

    def _others_alive(self) -> bool:
        """Descendants of members that exited but are not reaped yet (zombies: their pid
        can't have been reused). Once Popen reaps one, its children are reparented away and
        out of our sight: the documented limit of this mechanism."""
        return bool(self._other_pids())

    def _other_pids(self) -> list[int]:
        with self._lock:
            exited = list(self._exited)
        zombies = [pid for pid in exited if (_stat_fields(pid) or [b""])[0] == b"Z"]
        with self._lock:  # reaped ones are out of sight for good: forget them
            self._exited = [pid for pid in self._exited if pid in zombies]
        return [pid for pid in _descendants(zombies) if pid not in zombies] if zombies else []

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


class CgroupJob(_LinuxJob):
    """One cgroup v2 per job, pgjob-<owner pid>-<n>: members are created inside it
    (clone3(CLONE_INTO_CGROUP): never a moment outside), limits and accounting are its files,
    terminate() and close() write cgroup.kill, which kills the whole cgroup atomically, forks
    racing with it included. Nothing in the kernel writes cgroup.kill when the owner dies: a
    watcher (pgjob-helper watch) outside the cgroup does; see docs/linux.md for what that
    guarantee is worth."""

    mechanism = "cgroup"
    spawn_path = "clone_into_cgroup"

    def __init__(self, options: JobOptions) -> None:
        h = _cgroup.discover()
        controllers = _cgroup.needed_controllers(options)
        path = _cgroup.create_job_cgroup(h, controllers)
        self._h, self._dir = h, path
        self._dirfd = self._events_fd = -1
        self._watcher: Optional[_cgroup.Watcher] = None
        self._holds_self = False
        self._counters = {"oom_kill": 0, "max": 0}
        self._generation = 0  # cgroups made below the job after a terminate()
        try:
            _cgroup.apply_limits(path, options, h)
            self._dirfd = _cgroup.open_dir(path)
            self._events_fd = _open_above_stdio(os.path.join(path, "cgroup.events"))
            on_exit = "kill" if options.kill_on_close else "drain"
            self._watcher = _cgroup.Watcher(path, "-", on_exit, on_exit)
        except BaseException:
            for fd in (self._dirfd, self._events_fd):
                _close_quietly(fd)
            _cgroup.remove_tree(path)
            raise
        self._home = h.own_dir  # where a new watcher must live: outside the job
        super().__init__(options)
        _cgroup._MONITOR.watch(self, self._watcher)

    @property
    def cgroup_path(self) -> str:
        return self._dir

    @property
    def watcher_pid(self) -> int:
        watcher = self._watcher
        return watcher.pid if watcher is not None else -1

    def after_fork_in_child(self, owner: int) -> None:
        super().after_fork_in_child(owner)
        if self._watcher is not None:
            self._watcher.after_fork_in_child(owner)
        for fd in (self._dirfd, self._events_fd):
            _close_quietly(fd)
        self._dirfd = self._events_fd = -1

    def _watcher_died(self, watcher: _cgroup.Watcher) -> None:
        """From the monitor thread: our watcher is gone while the job is open."""
        with self._lock:
            if self._closed or watcher is not self._watcher:
                return
        _reap_inits(watcher.pidfd)
        watcher.pidfd = -1
        _close_quietly(watcher.control)
        watcher.control = -1
        logger.warning("the watcher of job cgroup %s (pid %d) died: orphan protection is off "
                       "for this job (its members would survive this process); starting a new "
                       "one", self._dir, watcher.pid)
        try:
            on_exit = "kill" if self.options.kill_on_close else "drain"
            new = _cgroup.Watcher(self._dir, self._home if self._holds_self else "-",
                                  on_exit, "ignore" if self._holds_self else on_exit)
        except OSError as exc:
            logger.warning("could not start a new watcher for job cgroup %s: %s; orphan "
                           "protection stays off for this job", self._dir, exc)
            return
        with self._lock:
            closed = self._closed
            if not closed:
                self._watcher = new
        if closed:
            new.stop(b"x")
            return
        _cgroup._MONITOR.watch(self, new)
        logger.warning("a new watcher (pid %d) protects job cgroup %s again", new.pid, self._dir)

    # membership
    def _spawn_member(self, fork_exec_args: tuple[Any, ...]) -> tuple[int, int]:
        # No PR_SET_PDEATHSIG: the watcher covers the whole cgroup, so any thread may spawn.
        return _spawn(fork_exec_args, cgroup_fd=self._dirfd, data_limit=self._data_limit)

    def assign(self, pid: int, handle: Optional[int]) -> None:
        try:
            pidfd = _above_stdio(os.pidfd_open(pid))
        except ProcessLookupError as exc:
            raise ProcessExitedError(errno.ESRCH, f"no process with pid {pid}") from exc
        try:
            if self._data_limit >= 0:
                # Reading its limits takes the same permission as lowering them: a process
                # whose limits we can't set is refused before it is moved.
                resource.prlimit(pid, resource.RLIMIT_DATA)
            _cgroup.move(self._dir, pid, self._h)
            if self._data_limit >= 0:
                lower_data_limit(pid, self._data_limit)
        except ProcessLookupError as exc:
            os.close(pidfd)
            raise ProcessExitedError(errno.ESRCH, f"process {pid} exited") from exc
        except PermissionError as exc:
            os.close(pidfd)
            # Its limits refused: another user's process, whose rights we lack. That is not
            # about jobs: it stays the PermissionError it is.
            raise _errors.mark(exc, None)
        except BaseException:
            os.close(pidfd)
            raise
        with self._lock:
            self._add_member(pid, pidfd)
            self._zero_pending = True
        logger.debug("cgroup: moved pid %d into %s", pid, self._dir)

    def assign_current(self) -> None:
        if self._forked_from is not None:
            raise JobClosedError(errno.EBADF, f"this job belongs to process {self._forked_from}; "
                                 "in a fork of it the job is inert")
        if self._holds_self:
            return
        before = _cgroup.own_cgroup()
        # First tell the watcher that we will be a member: when this process execs (its end of
        # the control socket closes) the protection must stay, not kill the new program.
        watcher = self._watcher
        if watcher is None or not watcher.alive() or not watcher.send(b"p"):
            raise UnsupportedError(errno.ESRCH, f"the watcher of job cgroup {self._dir} is gone")
        # One write moves the whole process, every thread of it: all it forks afterwards,
        # from any thread, by any means, starts inside.
        _cgroup.move(self._dir, os.getpid(), self._h)
        if not _cgroup.is_inside(self._dir, "self", self._h):
            raise UnsupportedError(errno.EOPNOTSUPP, f"writing our pid to {self._dir}/"
                                   "cgroup.procs did not move this process there")
        self._holds_self = True
        self._before = before
        if self._data_limit >= 0:
            # Last, because it can't be undone: a lowered hard limit stays lowered. As on
            # Windows, the process in the job has the per-process limit too.
            try:
                lower_data_limit(0, self._data_limit)
            except BaseException:
                self.leave()
                raise
        logger.debug("cgroup: moved this process (pid %d, all threads) from %s into %s",
                     os.getpid(), before, self._dir)

    def leave(self) -> None:
        """Undo assign_current(): move this process back where it was (a failure half-way
        through protect_children())."""
        if self._holds_self:
            # A str: assign_current() read it in the v2 hierarchy discover() found us in.
            back = self._h.path_of(cast(str, self._before)) or self._h.own_dir
            _cgroup.move(back, os.getpid(), self._h)
            self._holds_self = False

    def holds_current_process(self) -> bool:
        # Closing would kill this very process: like the owner-in-job trap on Windows,
        # Job.close() then keeps the protection for the process lifetime.
        return self._holds_self

    def pids(self) -> list[int]:
        return [pid for pid in _cgroup.procs(self._dir) if _running(pid)]

    def contains(self, pid: int) -> bool:
        return _cgroup.is_inside(self._dir, pid, self._h) and _running(pid)

    def _populated(self) -> bool:
        """cgroup.events' "populated" (the cgroup or one below it holds a process), read
        through the descriptor we poll: reading it is what re-arms its POLLPRI."""
        fd = self._events_fd
        if fd < 0:
            return bool(_cgroup.populated(self._dir))
        # pread: a sync waiter and an await may read it at once; a shared offset would not do.
        for line in os.pread(fd, 4096, 0).decode().splitlines():
            key, _, value = line.partition(" ")
            if key == "populated":
                return value.strip() != "0"
        return False

    def _others_alive(self) -> bool:
        if not self._holds_self:
            return self._populated()
        me = os.getpid()
        return any(pid != me for pid in self.pids())

    def _event_fds(self) -> list[int]:
        return [self._events_fd] if self._events_fd >= 0 else []

    def _rearm_event_fds(self) -> None:
        if self._events_fd >= 0:
            self._populated()

    def _other_pids(self) -> list[int]:
        if not self._holds_self:
            return []  # cgroup.events' POLLPRI tells when the cgroup empties
        me = os.getpid()
        with self._lock:
            tracked = {m.pid for m in self._members}
        return [pid for pid in self.pids() if pid != me and pid not in tracked]

    def _poll_exits(self) -> list[_Member]:
        live = super()._poll_exits()
        for name, key, kind in (("memory.events", "oom_kill", EventKind.JOB_MEMORY_LIMIT),
                                ("pids.events", "max", EventKind.ACTIVE_PROCESS_LIMIT)):
            counters = _cgroup.read_keyed(self._dir, name)
            if not counters or key not in counters:
                continue
            with self._lock:
                if counters[key] > self._counters[key]:
                    self._counters[key] = counters[key]
                    self._queue_event(kind, None)
        return live

    def stats(self) -> JobStats:
        pids = self.pids()
        cpu = _cgroup.read_keyed(self._dir, "cpu.stat") or {}
        io_read = io_write = None
        io = _cgroup.read_text(self._dir, "io.stat")
        if io is not None:
            io_read = io_write = 0
            for line in io.splitlines():
                for field in line.split()[1:]:
                    key, _, value = field.partition("=")
                    if key == "rbytes":
                        io_read += int(value)
                    elif key == "wbytes":
                        io_write += int(value)
        user = cpu.get("user_usec")
        system = cpu.get("system_usec")
        return _records.JobStats(
            active_processes=len(pids),
            user_time=None if user is None else user / 1e6,
            kernel_time=None if system is None else system / 1e6,
            peak_job_memory=_cgroup.read_int(self._dir, "memory.peak"),
            peak_processes=_cgroup.read_int(self._dir, "pids.peak"),
            read_bytes=io_read, write_bytes=io_write)

    def terminate(self, exit_code: int) -> None:
        # cgroup.kill has no exit code to give: every member dies of SIGKILL.
        if not self._holds_self:
            _cgroup.write(self._dir, "cgroup.kill", "1")
            self._new_spawn_target()
            return
        # This process is a member (protect_children()): cgroup.kill would kill it too. Kill
        # the others, again while new ones appear (a member forking while we kill).
        me = os.getpid()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            others = [pid for pid in self.pids() if pid != me]
            if not others:
                return
            for pid in others:
                _signal_quietly(pid, signal.SIGKILL)
            time.sleep(0.001)

    def _new_spawn_target(self) -> None:
        """After cgroup.kill, start later members in a fresh cgroup below the job's. Seen on
        Linux 6.18: every clone3(CLONE_INTO_CGROUP) into a cgroup that was once killed is
        SIGKILLed at birth (the kill sequence number the fork recorded is the parent's
        cgroup's, not the target's), while a new cgroup below it takes children normally.
        Below the job cgroup it stays under its limits, its cgroup.kill and its counts."""
        self._generation += 1
        path = os.path.join(self._dir, f"after-terminate-{self._generation}")
        os.mkdir(path)
        try:
            fd = _cgroup.open_dir(path)
        except BaseException:
            os.rmdir(path)
            raise
        old, self._dirfd = self._dirfd, fd
        _close_quietly(old)
        logger.debug("cgroup: later members start in %s", path)

    def _empty_within(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self._events_fd, select.POLLPRI)
        while self._populated():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            poller.poll(max(1, min(100, int(remaining * 1000))))
        return True

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        watcher, self._watcher = self._watcher, None
        command = b"d"
        if self.options.kill_on_close:
            command = b"k"
            try:
                _cgroup.write(self._dir, "cgroup.kill", "1")
                if self._empty_within(2.0):
                    _cgroup.remove_tree(self._dir)
                    command = b"x"
            except OSError as exc:
                logger.debug("close: cgroup.kill/rmdir of %s: %s; the watcher finishes it",
                             self._dir, exc)
        if watcher is not None:
            watcher.stop(command)
        elif command != b"x":
            logger.warning("job cgroup %s stays: its watcher is gone", self._dir)
        self._release()

    def detach(self) -> Optional[int]:
        with self._lock:
            self._closed = True
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            # The members live on; the watcher removes the cgroup once they are all gone.
            watcher.stop(b"d")
        self._release()
        return None

    def _release(self) -> None:
        super()._release()
        for fd in (self._dirfd, self._events_fd):
            _close_quietly(fd)
        self._dirfd = self._events_fd = -1


def _limits_unsupported(options: JobOptions, name: str) -> UnsupportedError:
    asked = options.group_limits
    return UnsupportedError(
        errno.EOPNOTSUPP, f"{', '.join(asked)}: mechanism {name!r} enforces no limits; on "
        "Linux only mechanism 'cgroup' (cgroup v2 controllers) does")


# -- the mechanisms this backend offers (Job chooses among them and owns the fallback policy) ----

# What each mechanism leaves protected, for the line Job logs when it falls back to it.
GUARANTEES = {
    "pid_namespace": "the kernel SIGKILLs the job's whole PID namespace when this process dies",
    "cgroup": "pgjob's watcher process SIGKILLs the job's whole cgroup (cgroup.kill) when this "
              "process dies; if the watcher itself is killed, that protection is gone",
    "pdeathsig": "processes started with job.popen() are SIGKILLed when this process dies, but "
                 "their own children (and daemons) survive that and are killed only by "
                 "close()/terminate(), if still found",
}


def candidates(options: JobOptions, current_process: bool = False) -> list[str]:
    """The mechanisms to try, best first, for a Job that did not name one. `current_process`:
    the job is for this process itself (protect_children()), and a process can't move itself
    into a PID namespace, only into a cgroup."""
    if options.group_limits or current_process:
        # Only a cgroup enforces a job-wide limit: never fall back to one that would ignore it.
        # (process_memory_limit is each member's RLIMIT_DATA: every mechanism sets it.)
        return ["cgroup"]
    return ["pid_namespace", "pdeathsig"]


def open_mechanism(name: str, options: JobOptions) -> JobBackend:
    """A backend of mechanism `name`; OSError (or UnsupportedError) if it can't be had here."""
    if name == "job_object":
        raise UnsupportedError(errno.EOPNOTSUPP, "mechanism 'job_object' is Windows-only")
    if name == "cgroup":
        _reap_inits()
        return CgroupJob(options)
    if options.group_limits:
        raise _limits_unsupported(options, name)
    if name == "pdeathsig":
        return PdeathsigJob(options)
    if name == "pid_namespace":
        init, _, _ = _start_job_init(options)
        _reap_inits()
        return NamespaceJob(options, init)
    raise UnsupportedError(errno.EOPNOTSUPP, f"mechanism {name!r} is not available on Linux")


def _in_job_cgroup(pid: PidOrSelf) -> bool:
    try:
        path = _cgroup.own_cgroup(pid)
    except OSError:
        return False
    return path is not None and any(part.startswith("pgjob-") for part in path.split("/"))


def in_job(pid: Optional[int]) -> bool:
    """In a pgjob job? A process is if it is in a pgjob cgroup (pgjob-<pid>-<n>: a "cgroup"
    job, protect_children()), or if it is nested in more PID namespaces than we are (for this
    process: below the initial one)."""
    try:
        if pid is None or pid == os.getpid():
            return _in_job_cgroup("self") or _nspid_depth("self") > 1
        depth = _nspid_depth(pid)
        return _in_job_cgroup(pid) or depth > _nspid_depth("self")
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessExitedError(errno.ESRCH, f"no process with pid {pid}") from exc
