"""The lives of pgjob's helper processes on Linux: a job's namespace init (start, terminate,
detach, kill, reap) and the fork hook that makes every copy of them inert in a child of
os.fork()."""
from __future__ import annotations

import errno
import os
import select
import signal
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING

from . import _jobobject as c
from ._base import JobOptions
from ._errors import UnsupportedError
from ._log import logger
from ._linux_spawn import _SPAWN_THREAD
from ._procfs import _close_quietly, _open_above_stdio

if TYPE_CHECKING:
    from typing import Protocol

    class _ForkAware(Protocol):
        """What _HOLDERS holds: an object whose descriptors a fork's copy must let go of."""

        def after_fork_in_child(self, owner: int) -> None: ...

if TYPE_CHECKING and sys.platform != "linux":
    # Never true at run time. It tells mypy, checking for another platform, that this
    # Linux-only module ends here, instead of reporting each Linux API below as missing.
    raise ImportError("pgjob._linux_helpers is Linux-only")


# -- the program the helpers exec -----------------------------------------------------------------

HELPER_NAME = "pgjob-helper"


_HELPER_FOUND: dict[str, str] = {}  # extension file -> the helper's path, once checked


def helper_path() -> str:
    """The absolute path of pgjob-helper, installed next to the extension (setup.py's build_ext
    puts it there, in the wheel and with --inplace). UnsupportedError naming the path if it is
    missing or not executable: pgjob then has no helper processes to offer. Checked once per
    process (a Job's start is a few hundred microseconds; two stat calls were a tenth of it);
    a helper deleted afterwards makes the exec fail with ENOENT, naming execve."""
    found = _HELPER_FOUND.get(c.__file__)
    if found is not None:
        return found
    path = os.path.join(os.path.dirname(os.path.abspath(c.__file__)), HELPER_NAME)
    if not os.path.isfile(path):
        raise UnsupportedError(errno.ENOENT, f"pgjob's helper program {path} is missing: "
                               "reinstall pgjob, or rebuild it (setup.py build_ext)")
    if not os.access(path, os.X_OK):
        raise UnsupportedError(errno.EACCES, f"pgjob's helper program {path} is not "
                               "executable")
    _HELPER_FOUND[c.__file__] = path
    return path


# Every object that holds descriptors of a helper or member, so that a fork's copies can be
# made inert.
_HOLDERS: weakref.WeakSet[_ForkAware] = weakref.WeakSet()


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

_KILLED_INIT_WAIT_MS = 20  # how long close() waits for a killed init before reaping it later
_UNREAPED_INITS: list[int] = []  # pidfds of inits we no longer use that had not exited yet
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
    """PID 1 of a job's PID namespace (pgjob-helper init), and the
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
        if not self._ask(c.PGJOB_INIT_TERMINATE, timeout):
            raise TimeoutError(errno.ETIMEDOUT, f"the job's init (pid {self.pid}) did not "
                               f"answer the terminate request in {timeout} s")

    def _ask(self, command: int, timeout: float) -> bool:
        """Send the init `command` and wait for its answer (the same byte): True once it has
        answered or exited (it then took the namespace with it), False after `timeout`."""
        if self.pidfd < 0 or self.control < 0:
            return True  # released (or a fork's inert copy): nothing of ours to act on
        try:
            # A stopped init could not answer: let it run (it ignores the signal itself).
            signal.pidfd_send_signal(self.pidfd, signal.SIGCONT)
        except ProcessLookupError:
            return True  # the init is gone, and with it every member
        with self._lock:
            try:
                os.write(self.control, bytes([command]))
            except BrokenPipeError:
                return True  # the init exited: so did the namespace
            poller = select.poll()
            poller.register(self.control, select.POLLIN)
            poller.register(self.pidfd, select.POLLIN)
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                for fd, _ in poller.poll(max(1, int(remaining * 1000))):
                    if fd == self.pidfd:
                        return True  # the init exited: the kernel kills the namespace
                    if os.read(self.control, 1) in (b"", bytes([command])):
                        return True

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

    def detach(self, timeout: float = 5.0) -> None:
        """Let the members outlive the job and the owner: the init stays until they are gone.
        Returns once the init has said it drains: from then on the owner may die (before,
        the init's PR_SET_PDEATHSIG would still take the namespace down with it)."""
        if not self._ask(c.PGJOB_INIT_DETACH, timeout):
            logger.warning("the job's init (pid %d) did not acknowledge detach() in %s s: "
                           "if this process dies soon, the members may die with it",
                           self.pid, timeout)

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


# -- choosing a mechanism -------------------------------------------------------------------------

# pid -> (clone_flags, map_ids) that worked in that process
_NAMESPACE_FLAGS: dict[int, tuple[int, bool]] = {}


def _start_job_init(options: JobOptions) -> tuple[_Init, int, bool]:
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
    helper = helper_path()
    failure = None
    for flags, map_ids in candidates:
        try:
            if options.kill_on_close:
                # The init arms PR_SET_PDEATHSIG, which follows the thread that clones it.
                pid, pidfd, control = _SPAWN_THREAD.call(
                    c.start_init, clone_flags=flags, map_ids=map_ids, on_owner_exit=on_exit,
                    on_eof=on_exit, arm_pdeathsig=True, helper_path=helper)
            else:
                pid, pidfd, control = c.start_init(
                    clone_flags=flags, map_ids=map_ids, on_owner_exit=on_exit, on_eof=on_exit,
                    arm_pdeathsig=False, helper_path=helper)
        except OSError as exc:
            # (A helper that can't be executed here, a noexec mount for one, fails the same
            # way on the next try: the C layer marks that as UnsupportedError too.)
            logger.debug("clone(0x%x) + exec of %s for a job's init: %s", flags, helper, exc)
            failure = exc
            continue
        _NAMESPACE_FLAGS[os.getpid()] = (flags, map_ids)
        logger.debug("started the job's init (%s): pid %d, clone flags 0x%x%s", helper, pid,
                     flags, ", unprivileged user namespace" if map_ids else "")
        return _Init(pid, pidfd, control, map_ids), flags, map_ids
    assert failure is not None
    raise failure


def namespace_flags() -> tuple[int, bool]:
    """The clone flags that give a job its own PID namespace here, and whether a user
    namespace (with our ids mapped) is part of it; probed once per process."""
    found = _NAMESPACE_FLAGS.get(os.getpid())
    if found is not None:
        return found
    init, flags, map_ids = _start_job_init(JobOptions())
    init.kill()
    init.release(killed=True)
    return flags, map_ids
