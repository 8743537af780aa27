"""cgroup v2 for the "cgroup" mechanism: where the unified hierarchy is mounted and which
cgroup this process is in (from /proc, never assumed), where a job's cgroup may go, and the
few cgroup files pgjob reads and writes. Every refusal is an UnsupportedError that names what
is missing: the controller, the file, the permission, the mount."""
from __future__ import annotations

import errno
import itertools
import os
from typing import Optional

from ._errors import ProcessExitedError, UnsupportedError
from ._log import logger
from ._procfs import _above_stdio

# Which controller each limit needs.
LIMIT_CONTROLLERS = (("memory_limit", "memory"), ("process_memory_limit", "memory"),
                     ("process_limit", "pids"), ("cpu_rate", "cpu"))

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


def cgroup2_mounts(mountinfo: str = "/proc/self/mountinfo") -> list:
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


def own_cgroup(pid="self") -> Optional[str]:
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
    except FileNotFoundError:
        return None


def read_keyed(directory: str, name: str) -> Optional[dict]:
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


def procs(directory: str) -> list:
    """Pids in this cgroup and every cgroup below it (cgroup.procs lists only its own)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        try:
            with open(os.path.join(dirpath, "cgroup.procs")) as f:
                found.extend(int(line) for line in f if line.strip())
        except FileNotFoundError:
            dirnames[:] = []  # removed since we listed it
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

def needed_controllers(options) -> list:
    out = []
    for field, controller in LIMIT_CONTROLLERS:
        if getattr(options, field) is not None and controller not in out:
            out.append(controller)
    return out


def _controllers(directory: str, name: str) -> set:
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


def _enable(h: Hierarchy, directory: str, controllers: list) -> Optional[OSError]:
    """Enable `controllers` for the children of `directory`; the OSError if refused."""
    try:
        write(directory, "cgroup.subtree_control", " ".join("+" + c for c in controllers))
        logger.debug("cgroup: enabled %s in %s/cgroup.subtree_control", " ".join(controllers),
                     directory)
        return None
    except OSError as exc:
        return exc


def choose_parent(h: Hierarchy, controllers: list) -> str:
    """The directory a job cgroup goes in (see docs/linux.md, "Where the job's cgroup goes"):
    our own cgroup C if it has, or can enable for its children, every controller the limits
    need; else C's parent when C holds processes (the no-internal-processes rule forbids
    enabling them in C) and the parent has them and is writable; else UnsupportedError naming
    what is missing."""
    own = h.own_dir
    if not controllers:
        return own
    missing = [c for c in controllers if c not in _controllers(own, "cgroup.subtree_control")]
    if not missing:
        return own
    available = _controllers(own, "cgroup.controllers")
    absent = [c for c in missing if c not in available]
    if absent:
        parent = os.path.dirname(own) if own != h.mount else None
        raise UnsupportedError(
            errno.EOPNOTSUPP, f"controller {', '.join(absent)} is not available to this "
            f"process's cgroup: {own}/cgroup.controllers lists "
            f"'{' '.join(sorted(available)) or 'none'}'"
            + (f" (its parent {parent} does not enable it in cgroup.subtree_control"
               if parent else " (the root of the hierarchy")
            + f"; cgroup2 mounted at {h.mount})"
            + ("; on a cgroup v1/v2 hybrid the controller is probably mounted as v1, which "
               "pgjob does not drive" if os.path.isdir("/sys/fs/cgroup/unified")
               and h.mount.endswith("/unified") else ""))
    exc = _enable(h, own, missing)
    if exc is None:
        return own
    parent = os.path.dirname(own)
    if exc.errno == errno.EBUSY and own != h.mount and parent.startswith(h.mount):
        # C holds processes (us, at least): its children may not have controllers then.
        # A sibling under C's parent gets them, if the parent has them and lets us in.
        if all(c in _controllers(parent, "cgroup.subtree_control") for c in missing):
            if os.access(parent, os.W_OK) and os.access(os.path.join(parent, "cgroup.procs"),
                                                       os.W_OK):
                logger.debug("cgroup: %s holds processes, so %s can't be enabled below it; "
                             "using its parent %s", own, " ".join(missing), parent)
                return parent
            raise UnsupportedError(
                errno.EACCES, f"controller {', '.join(missing)}: this process's cgroup {own} "
                f"holds processes, so its children can't have it (cgroup v2's "
                f"no-internal-processes rule), and its parent {parent}, which has it, is not "
                f"writable by uid {os.geteuid()} (cgroup2 mounted at {h.mount})")
        raise UnsupportedError(
            errno.EBUSY, f"controller {', '.join(missing)}: this process's cgroup {own} holds "
            f"processes, so writing {own}/cgroup.subtree_control is refused (cgroup v2's "
            "no-internal-processes rule), and its parent does not enable it either; run the "
            f"program in a leaf cgroup below a delegated one that enables it (cgroup2 mounted "
            f"at {h.mount})")
    raise _refused(exc, f"enabling {', '.join(missing)} in {own}/cgroup.subtree_control", h)


def create_job_cgroup(h: Hierarchy, controllers: list) -> str:
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


def apply_limits(directory: str, options, h: Hierarchy) -> None:
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


def is_inside(directory: str, pid, h: Hierarchy) -> bool:
    path = _cgroup_of(pid) if pid != "self" else own_cgroup()
    if path is None:
        return False
    where = h.path_of(path)
    return where is not None and (where == directory or where.startswith(directory + "/"))
