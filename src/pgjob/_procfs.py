"""What the Linux backends read from /proc, and the descriptor hygiene they share: every
descriptor pgjob keeps is above 2 and close-on-exec."""
from __future__ import annotations

import collections
import fcntl
import os
import sys
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from typing import Literal, Union

    # What /proc/<pid> is read for: a pid, or "self" for this process.
    PidOrSelf = Union[int, Literal["self"]]

if TYPE_CHECKING and sys.platform != "linux":
    # Never true at run time. It tells mypy, checking for another platform, that this
    # Linux-only module ends here, instead of reporting each Linux API below as missing.
    raise ImportError("pgjob._procfs is Linux-only")


_CLK_TCK = os.sysconf("SC_CLK_TCK")

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


def _pipe_above_stdio() -> tuple[int, int]:
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

def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _pid_namespace(pid: PidOrSelf) -> Optional[tuple[int, int]]:
    """(st_dev, st_ino) of the PID namespace `pid` (or "self") lives in; None if it is gone.

    A process that exits between listing /proc and this stat is a benign race: it is no
    member any more, so "gone" is the right answer."""
    try:
        st = os.stat(f"/proc/{pid}/ns/pid")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return (st.st_dev, st.st_ino)


def _stat_fields(pid: int) -> Optional[list[bytes]]:
    """Fields of /proc/<pid>/stat after the command name (field 3, "state", is index 0)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None  # exited since it was listed
    return data[data.rindex(b")") + 2:].split()


def _nspid_depth(pid: PidOrSelf) -> int:
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


def _namespace_members(namespaces: set[tuple[int, int]], inits: set[int]) -> list[int]:
    """Host pids of the running processes in one of `namespaces` (as _pid_namespace returns
    them), pgjob's own inits (`inits`) left out."""
    if not namespaces:
        return []
    return [pid for pid in _all_pids()
            if pid not in inits and _pid_namespace(pid) in namespaces and _running(pid)]


def _descendants(roots: list[int]) -> list[int]:
    """`roots` and every process whose parent chain leads to one of them (one /proc pass)."""
    children: collections.defaultdict[int, list[int]] = collections.defaultdict(list)
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


def _cpu_times(pids: list[int]) -> tuple[float, float]:
    """User and system seconds of `pids` plus the children each of them has reaped."""
    user = system = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # utime, stime, cutime, cstime are fields 14-17 of /proc/<pid>/stat.
            user += int(fields[11]) + int(fields[13])
            system += int(fields[12]) + int(fields[14])
    return user / _CLK_TCK, system / _CLK_TCK


def _close_quietly(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass  # not open (any more): nothing to release


def _signal_quietly(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # exited since we listed it

def _pid_namespace_for_children() -> Optional[tuple[int, int]]:
    try:
        st = os.stat("/proc/thread-self/ns/pid_for_children")
    except OSError:
        return _pid_namespace("self")  # no such link before Linux 4.12
    return (st.st_dev, st.st_ino)
