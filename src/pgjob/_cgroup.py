"""cgroup v2 for the "cgroup" mechanism: where the unified hierarchy is mounted and which
cgroup this process is in (from /proc, never assumed), where a job's cgroup may go, and the
few cgroup files pgjob reads and writes. Every refusal is an UnsupportedError that names what
is missing: the controller, the file, the permission, the mount."""
from __future__ import annotations

import errno
import fcntl
import itertools
import os
import select
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING, Optional

from ._errors import ProcessExitedError, UnsupportedError
from ._log import logger
from ._procfs import _above_stdio, _close_quietly

if TYPE_CHECKING:
    from ._base import JobOptions
    from ._linux import CgroupJob
    from ._procfs import PidOrSelf

if TYPE_CHECKING and sys.platform != "linux":
    # Never true at run time. It tells mypy, checking for another platform, that this
    # Linux-only module ends here, instead of reporting each Linux API below as missing.
    raise ImportError("pgjob._cgroup is Linux-only")

# Which controller each limit needs. process_memory_limit needs none: it is each member's
# RLIMIT_DATA (see _linux.lower_data_limit).
LIMIT_CONTROLLERS = (("memory_limit", "memory"), ("process_limit", "pids"), ("cpu_rate", "cpu"))

_COUNTER = itertools.count(1)


def _unescape_mountinfo(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo (octal)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def cgroup2_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str, bool]]:
    """(mount point, root inside the hierarchy, read-only?) of every cgroup2 mount we see."""
    found = []
    with open(mountinfo) as f:
        for line in f:
            left, sep, right = line.partition(" - ")
            if not sep:
                continue
            fields, after = left.split(), right.split()
            if not after or after[0] != "cgroup2" or len(fields) < 6:
                continue
            options = fields[5].split(",")
            found.append((_unescape_mountinfo(fields[4]), _unescape_mountinfo(fields[3]),
                          "ro" in options))
    return found


def own_cgroup(pid: PidOrSelf = "self") -> Optional[str]:
    """The cgroup v2 path of `pid` from the "0::" line of /proc/<pid>/cgroup; None if the
    process is in no v2 hierarchy (pure v1)."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                path = line[3:].rstrip("\n")
                if path.endswith(" (deleted)"):
                    path = path[:-len(" (deleted)")]
                return path
    return None


def _cgroup_of(pid: int) -> Optional[str]:
    try:
        return own_cgroup(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None  # exited since it was listed


class Hierarchy:
    """The cgroup2 mount that shows this process's own cgroup, and that cgroup's directory."""

    def __init__(self, mount: str, root: str, read_only: bool, own: str) -> None:
        self.mount, self.root, self.read_only, self.own = mount, root, read_only, own
        rel = os.path.relpath(own, root) if root != "/" else own.lstrip("/")
        self.own_dir = os.path.normpath(os.path.join(mount, "" if rel == "." else rel))

    def path_of(self, cgroup: str) -> Optional[str]:
        """The directory of the cgroup path `cgroup` (as /proc/<pid>/cgroup says), or None if
        this mount does not show it."""
        if self.root != "/" and not (cgroup == self.root or cgroup.startswith(self.root + "/")):
            return None
        rel = cgroup[len(self.root):] if self.root != "/" else cgroup
        return os.path.normpath(os.path.join(self.mount, rel.lstrip("/")))

    def cgroup_of_dir(self, directory: str) -> str:
        rel = os.path.relpath(directory, self.mount)
        return os.path.normpath(os.path.join(self.root, "" if rel == "." else rel))


def discover() -> Hierarchy:
    """Find the cgroup2 mount that holds our own cgroup. UnsupportedError when there is
    none (pure cgroup v1), or when no mount shows our cgroup (a cgroup namespace, or a mount
    of another part of the tree)."""
    try:
        own = own_cgroup()
        mounts = cgroup2_mounts()
    except OSError as exc:
        raise UnsupportedError(exc.errno, f"can't read /proc/self/cgroup or /proc/self/mountinfo: "
                               f"{exc.strerror}") from exc
    if own is None:
        raise UnsupportedError(errno.EOPNOTSUPP, "this process is in no cgroup v2 hierarchy "
                               "(/proc/self/cgroup has no '0::' line: cgroup v1 only); the "
                               "'cgroup' mechanism needs cgroup v2")
    if not mounts:
        raise UnsupportedError(errno.EOPNOTSUPP, "no cgroup2 file system is mounted "
                               "(/proc/self/mountinfo lists none)")
    for mount, root, ro in mounts:
        h = Hierarchy(mount, root, ro, own)
        if h.path_of(own) is not None and os.path.isdir(h.own_dir):
            return h
    raise UnsupportedError(errno.EOPNOTSUPP, f"this process's cgroup {own!r} is not visible "
                           f"under any cgroup2 mount ({', '.join(m for m, _, _ in mounts)}; "
                           f"their roots: {', '.join(r for _, r, _ in mounts)})")


# -- files ---------------------------------------------------------------------------------

def read_text(directory: str, name: str) -> Optional[str]:
    """The content of a cgroup file; None if the kernel doesn't offer it (no such file)."""
    try:
        with open(os.path.join(directory, name)) as f:
            return f.read()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV):  # ENODEV: the cgroup was just removed
            return None
        raise


def read_keyed(directory: str, name: str) -> Optional[dict[str, int]]:
    """A "key value" per line file (cgroup.events, cpu.stat, memory.events) as a dict of ints."""
    text = read_text(directory, name)
    if text is None:
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            pass  # "max" and the like: not a counter
    return out


def read_int(directory: str, name: str) -> Optional[int]:
    text = read_text(directory, name)
    if text is None:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def write(directory: str, name: str, value: str) -> None:
    """Write one value to a cgroup file; the OSError names the file."""
    path = os.path.join(directory, name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        exc.filename = path
        raise
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        exc.filename = path
        raise
    finally:
        os.close(fd)


def procs(directory: str) -> list[int]:
    """Pids in this cgroup and every cgroup below it (cgroup.procs lists only its own)."""
    found: list[int] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        try:
            with open(os.path.join(dirpath, "cgroup.procs")) as f:
                found.extend(int(line) for line in f if line.strip())
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                raise
            dirnames[:] = []  # removed since we listed it (ENODEV: while we read it)
    return found


def populated(directory: str) -> Optional[bool]:
    events = read_keyed(directory, "cgroup.events")
    if events is None:
        return None
    return bool(events.get("populated", 0))


def remove_tree(directory: str) -> None:
    """rmdir the cgroup and every cgroup below it, children first. A cgroup that still holds a
    process refuses with EBUSY: the caller kills and waits first."""
    for dirpath, dirnames, _ in os.walk(directory, topdown=False):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass  # removed meanwhile (by the watcher)


def open_dir(directory: str) -> int:
    """A descriptor of the cgroup directory, for clone3(CLONE_INTO_CGROUP)."""
    return _above_stdio(os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))


# -- placement -------------------------------------------------------------------------------

def needed_controllers(options: JobOptions) -> list[str]:
    out = []
    for field, controller in LIMIT_CONTROLLERS:
        if getattr(options, field) is not None and controller not in out:
            out.append(controller)
    return out


def _controllers(directory: str, name: str) -> set[str]:
    text = read_text(directory, name)
    return set(text.split()) if text else set()


def _refused(exc: OSError, what: str, h: Hierarchy) -> UnsupportedError:
    """An OSError of a cgroup operation, as the UnsupportedError that says what is missing."""
    if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        why = ("the cgroup2 file system is mounted read-only (as Docker does unless the "
               "container is privileged)" if exc.errno == errno.EROFS or h.read_only else
               f"uid {os.geteuid()} may not write there: a cgroup subtree is writable by an "
               "ordinary user only where it was delegated (systemd Delegate=yes, e.g. "
               "`systemd-run --user --scope -p Delegate=yes`)")
    else:
        why = exc.strerror or str(exc)
    err = UnsupportedError(exc.errno, f"{what}: {why} (cgroup2 mounted at {h.mount}, "
                           f"this process's cgroup {h.own!r})")
    err.__cause__ = exc
    return err


def _enable(h: Hierarchy, directory: str, controllers: list[str]) -> Optional[OSError]:
    """Enable `controllers` for the children of `directory`; the OSError if refused."""
    try:
        write(directory, "cgroup.subtree_control", " ".join("+" + c for c in controllers))
        logger.debug("cgroup: enabled %s in %s/cgroup.subtree_control", " ".join(controllers),
                     directory)
        return None
    except OSError as exc:
        return exc


def _v1_mounts() -> dict[str, str]:
    """controller -> mount point of the cgroup v1 hierarchies (a hybrid's), for messages."""
    found: dict[str, str] = {}
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                after = right.split()
                if len(after) >= 3 and after[0] == "cgroup":
                    for option in after[2].split(","):
                        found.setdefault(option, _unescape_mountinfo(left.split()[4]))
    except OSError:
        pass  # only for a message
    return found


def choose_parent(h: Hierarchy, controllers: list[str]) -> str:
    """The directory a job cgroup goes in (see docs/linux.md, "Where the job's cgroup goes"):
    our own cgroup C if it has every controller the limits need in its subtree_control (or is
    the root and can enable them); else C's parent, since C holds processes (the
    no-internal-processes rule), if the parent has them and is writable; else
    UnsupportedError naming what is missing."""
    own = h.own_dir
    parent: Optional[str]  # the directory above own; None where own is the mount's root
    if not controllers:
        if not os.access(own, os.W_OK) and own != h.mount:
            # A leaf we may not write (a scope created for us by root) below a subtree
            # delegated to us: the job goes beside it.
            parent = os.path.dirname(own)
            if os.access(parent, os.W_OK) and os.access(os.path.join(parent, "cgroup.procs"),
                                                         os.W_OK):
                logger.debug("cgroup: %s is not writable, its parent %s is: the job goes "
                             "there", own, parent)
                return parent
        return own
    missing = [c for c in controllers if c not in _controllers(own, "cgroup.subtree_control")]
    if not missing:
        return own
    available = _controllers(own, "cgroup.controllers")
    absent = [c for c in missing if c not in available]
    if absent:
        parent = os.path.dirname(own) if own != h.mount else None
        v1 = [f"{c} is a cgroup v1 hierarchy at {_v1_mounts().get(c)}" for c in absent
              if c in _v1_mounts()]
        raise UnsupportedError(
            errno.EOPNOTSUPP, f"cgroup v2 controller {', '.join(absent)} is not available to "
            f"this process's cgroup: {own}/cgroup.controllers lists "
            f"'{' '.join(sorted(available)) or 'none'}'"
            + (f" (its parent {parent} does not enable it in cgroup.subtree_control"
               if parent else " (the root of the hierarchy")
            + f"; cgroup2 mounted at {h.mount})"
            + (f"; {'; '.join(v1)} (a v1/v2 hybrid), which pgjob does not drive" if v1 else ""))
    if own == h.mount:
        # Only the root cgroup may hold processes and give its children controllers.
        exc = _enable(h, own, missing)
        if exc is None:
            return own
        raise _refused(exc, f"enabling {', '.join(missing)} in {own}/cgroup.subtree_control", h)
    # C holds this process, so its children may not have controllers (cgroup v2's
    # no-internal-processes rule). C's subtree_control is never written: where the kernel
    # accepts it anyway (seen in a delegated subtree on 6.1), every cgroup below C becomes
    # an invalid domain that takes no process (EOPNOTSUPP). A sibling under C's parent gets
    # them, if the parent has them and lets us in (a delegated subtree).
    parent = os.path.dirname(own)
    if parent.startswith(h.mount):
        why = (f"this process's cgroup {own} holds processes, so its children can't have "
               "it (cgroup v2's no-internal-processes rule)")
        if all(c in _controllers(parent, "cgroup.subtree_control") for c in missing):
            if os.access(parent, os.W_OK) and os.access(os.path.join(parent, "cgroup.procs"),
                                                       os.W_OK):
                logger.debug("cgroup: %s can't be enabled below %s (it holds processes); "
                             "using its parent %s", " ".join(missing), own, parent)
                return parent
            raise UnsupportedError(
                errno.EACCES, f"controller {', '.join(missing)}: {why}, and its parent "
                f"{parent}, which has it, is not writable by uid {os.geteuid()} (cgroup2 "
                f"mounted at {h.mount})")
        raise UnsupportedError(
            errno.EBUSY, f"controller {', '.join(missing)}: {why}, and its parent's "
            f"{parent}/cgroup.subtree_control does not enable it either; run the program in "
            f"a leaf cgroup below a delegated one that enables it (cgroup2 mounted at "
            f"{h.mount})")
    raise UnsupportedError(errno.EBUSY, f"controller {', '.join(missing)}: {own} holds "
                           f"processes and has no parent in the cgroup2 mount {h.mount}")


def create_job_cgroup(h: Hierarchy, controllers: list[str]) -> str:
    """mkdir pgjob-<pid>-<n> where choose_parent() says; check it has cgroup.kill (Linux 5.14)
    and the controllers. Returns its directory."""
    parent = choose_parent(h, controllers)
    while True:
        path = os.path.join(parent, f"pgjob-{os.getpid()}-{next(_COUNTER)}")
        try:
            os.mkdir(path)
            break
        except FileExistsError:
            continue  # a fork of ours used the same counter: take the next
        except OSError as exc:
            raise _refused(exc, f"creating the job's cgroup (mkdir {path})", h) from exc
    try:
        if not os.path.exists(os.path.join(path, "cgroup.kill")):
            raise UnsupportedError(errno.EOPNOTSUPP, f"{path} has no cgroup.kill: killing a "
                                   "cgroup atomically needs Linux 5.14 or later (this is "
                                   f"{os.uname().release})")
        if not os.access(os.path.join(path, "cgroup.procs"), os.W_OK):
            raise UnsupportedError(errno.EACCES, f"{path}/cgroup.procs is not writable by uid "
                                   f"{os.geteuid()}")
        have = _controllers(path, "cgroup.controllers")
        lacking = [c for c in controllers if c not in have]
        if lacking:
            raise UnsupportedError(errno.EOPNOTSUPP, f"{path}/cgroup.controllers lacks "
                                   f"{', '.join(lacking)}")
    except BaseException:
        remove_tree(path)
        raise
    logger.debug("cgroup: mkdir %s", path)
    return path


def apply_limits(directory: str, options: JobOptions, h: Hierarchy) -> None:
    """memory_limit -> memory.max, process_limit -> pids.max, cpu_rate -> cpu.max (a quota of
    cpu_rate percent of all CPUs per 100 ms period)."""
    writes = []
    if options.memory_limit is not None:
        writes.append(("memory.max", str(options.memory_limit)))
    if options.process_limit is not None:
        writes.append(("pids.max", str(options.process_limit)))
    if options.cpu_rate is not None:
        period = 100000
        quota = max(1000, int(options.cpu_rate / 100.0 * (os.cpu_count() or 1) * period))
        writes.append(("cpu.max", f"{quota} {period}"))
    for name, value in writes:
        try:
            write(directory, name, value)
        except OSError as exc:
            raise _refused(exc, f"writing {value!r} to {directory}/{name}", h) from exc
        logger.debug("cgroup: %s/%s = %s", directory, name, value)


def move(directory: str, pid: int, h: Hierarchy) -> None:
    """Write `pid` to cgroup.procs: the whole process (all its threads) moves."""
    try:
        write(directory, "cgroup.procs", str(pid))
    except ProcessLookupError as exc:
        raise ProcessExitedError(errno.ESRCH, f"no process with pid {pid}") from exc
    except OSError as exc:
        if isinstance(exc, PermissionError) or exc.errno in (errno.EROFS,):
            raise _refused(exc, f"moving pid {pid} into {directory} (cgroup.procs of it and of "
                           "the common ancestor must be writable)", h) from exc
        raise


def is_inside(directory: str, pid: PidOrSelf, h: Hierarchy) -> bool:
    path = _cgroup_of(pid) if pid != "self" else own_cgroup()
    if path is None:
        return False
    where = h.path_of(path)
    return where is not None and (where == directory or where.startswith(directory + "/"))


# -- the watcher ------------------------------------------------------------------------------

_WATCHER_READY_TIMEOUT = 10.0 if os.environ.get("PGJOB_IN_VM") else 5.0


class Watcher:
    """`pgjob-helper watch`: a small exec'd program (no copy of our memory), in its own
    session (setsid: outside our process group, so a terminal's signals don't reach it),
    outside the job's cgroup, holding a pidfd of this process; it writes cgroup.kill when this
    process is gone. Started with os.posix_spawn (vfork-class)."""

    def __init__(self, cgroup: str, home: str, on_exit: str, on_eof: str) -> None:
        from ._linux_helpers import helper_path
        self.cgroup, self.home, self.on_exit, self.on_eof = cgroup, home, on_exit, on_eof
        self.pid = -1
        self.pidfd = self.control = -1
        helper = helper_path()
        owner = os.pidfd_open(os.getpid())
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        high = []
        try:
            # dup2 onto 3 and 4 in the child: sources above 9 can't be 3 or 4 themselves
            # (dup2 of a descriptor onto itself would keep its close-on-exec flag).
            for fd in (owner, theirs.fileno()):
                high.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10))
            self.pid = os.posix_spawn(
                helper, [helper, "watch", cgroup, home, on_exit, on_eof],
                {k: v for k, v in os.environ.items() if k == "PGJOB_DEBUG"},
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                              (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                              (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0),
                              (os.POSIX_SPAWN_DUP2, high[0], 3),
                              (os.POSIX_SPAWN_DUP2, high[1], 4)],
                setsid=True, setsigmask=())
            # Our child, not reaped: the pid names it until we reap it.
            self.pidfd = _above_stdio(os.pidfd_open(self.pid))
            self.control = _above_stdio(os.dup(ours.fileno()))
            os.set_inheritable(self.control, False)
        except BaseException:
            self._abandon()
            raise
        finally:
            for fd in high + [owner]:
                os.close(fd)
            ours.close()
            theirs.close()
        logger.debug("cgroup: started watcher pid %d for %s (on exit: %s, on EOF: %s, home %s)",
                     self.pid, cgroup, on_exit, on_eof, home)
        try:
            self._wait_ready()
        except BaseException:
            self._abandon()
            raise

    def _wait_ready(self) -> None:
        poller = select.poll()
        poller.register(self.control, select.POLLIN)
        if not poller.poll(int(_WATCHER_READY_TIMEOUT * 1000)):
            raise UnsupportedError(errno.ETIMEDOUT, f"pgjob's watcher (pid {self.pid}) did not "
                                   f"start within {_WATCHER_READY_TIMEOUT} s")
        answer = os.read(self.control, 1)
        if answer != b"R":
            raise UnsupportedError(
                errno.EACCES, f"pgjob's watcher (pid {self.pid}) could not set itself up"
                + (f": moving itself into {self.home}/cgroup.procs was refused"
                   if answer == b"E" else " (it exited)"))

    def _abandon(self) -> None:
        """Kill and reap a watcher that never got to work; nothing of it remains."""
        if self.pid > 0:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # exited already
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass  # reaped by someone's waitpid(-1)
            self.pid = -1
        for fd in (self.pidfd, self.control):
            _close_quietly(fd)
        self.pidfd = self.control = -1

    def send(self, command: bytes) -> bool:
        if self.control < 0:
            return False
        try:
            os.write(self.control, command)
            return True
        except OSError:
            return False  # the watcher is gone: the caller notices through its pidfd

    def alive(self) -> bool:
        if self.pidfd < 0:
            return False
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return not poller.poll(0)

    def stop(self, command: bytes) -> None:
        """Tell the watcher what to do ('x' exit, 'd' drain, 'k' kill), let it go, and reap it
        (now if it is quick, later otherwise: it is our child)."""
        from ._linux_helpers import _reap_inits
        _MONITOR.forget(self)
        self.send(command)
        _close_quietly(self.control)
        self.control = -1
        if self.pidfd >= 0:
            if command == b"x":
                poller = select.poll()
                poller.register(self.pidfd, select.POLLIN)
                poller.poll(100)
            _reap_inits(self.pidfd)
            self.pidfd = -1

    def after_fork_in_child(self, owner: int) -> None:
        _close_quietly(self.control)
        _close_quietly(self.pidfd)
        self.control = self.pidfd = -1


class _Monitor:
    """One daemon thread that watches every live watcher's pidfd: if a watcher dies while its
    job is open, orphan protection is off for that job. It says so, and starts a new watcher."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[int, tuple[CgroupJob, Watcher]] = {}  # watcher pidfd -> (job, watcher)
        self._pid = -1
        self._wake_r = self._wake_w = -1

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._jobs = {}
        _close_quietly(self._wake_r)
        _close_quietly(self._wake_w)
        self._pid, self._wake_r, self._wake_w = -1, -1, -1

    def watch(self, job: CgroupJob, watcher: Watcher) -> None:
        with self._lock:
            if self._pid != os.getpid():
                from ._procfs import _pipe_above_stdio
                self._wake_r, self._wake_w = _pipe_above_stdio()
                threading.Thread(target=self._run, name="pgjob-watcher-monitor",
                                 daemon=True).start()
                self._pid = os.getpid()
            self._jobs[watcher.pidfd] = (job, watcher)
        self._wake()

    def forget(self, watcher: Watcher) -> None:
        with self._lock:
            self._jobs.pop(watcher.pidfd, None)
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass  # full (the thread is awake anyway) or not started

    def _run(self) -> None:
        while True:
            with self._lock:
                fds = list(self._jobs)
                wake = self._wake_r
            poller = select.poll()
            poller.register(wake, select.POLLIN)
            for fd in fds:
                poller.register(fd, select.POLLIN)
            try:
                ready = [fd for fd, _ in poller.poll()]
            except OSError:
                ready = []
            if wake in ready:
                try:
                    os.read(wake, 4096)
                except OSError:
                    pass
            for fd in ready:
                with self._lock:
                    entry = self._jobs.pop(fd, None)
                if entry is not None:
                    entry[0]._watcher_died(entry[1])


_MONITOR = _Monitor()
os.register_at_fork(after_in_child=_MONITOR.after_fork_in_child)
