"""Helpers every suite shares (Linux, Windows under Wine, CLI, PostgreSQL, stress): a
deadline wait, a deadline-bounded reader of a child's JSON lines, and (Linux) searches of
/proc: the processes that carry a marker argument, each parent's children.

Importable as `proc_helpers` from any test module: tests/conftest.py lives beside this file,
and pytest's default (prepend) import mode puts its folder on sys.path.
"""
import json
import os
import queue
import subprocess
import sys
import threading
import time


def _timeout_scale():
    """How much slower than this host the machine is: PGJOB_TIMEOUT_SCALE if set, else 20 in
    scripts/vm's guest (PGJOB_IN_VM=1; TCG makes a spawn cost 40-80 ms, 50-80x the host),
    else 1. Every deadline that waits for processes to start or die is multiplied by it."""
    value = os.environ.get("PGJOB_TIMEOUT_SCALE")
    if value:
        return max(1.0, float(value))
    return 20.0 if os.environ.get("PGJOB_IN_VM") == "1" else 1.0


TIMEOUT_SCALE = _timeout_scale()


def scaled(seconds):
    """`seconds` on this host, stretched by TIMEOUT_SCALE where spawns are slower."""
    return seconds * TIMEOUT_SCALE


def wait_until(predicate, timeout=10.0):
    """Poll `predicate` until it is true or `timeout` seconds have passed; return its last
    value. Polls every 2 ms at first, backing off to 50 ms, so a quick outcome is seen
    quickly and a slow one costs little CPU."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.05)


def children_by_parent():
    """(Linux) {parent pid: [child pids]} from one pass over /proc."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue  # exited while we looked
            ppid = int(data[data.rindex(b")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(name))
    return children


def pids_with_argument(argument, exclude=()):
    """Linux: host pids of the processes with `argument` (str) as one of their argv entries,
    except the pids in `exclude` (a zombie's cmdline reads empty: it is never found). A test marks every process it starts with such an argument, so this
    finds them again wherever they went: reparented daemons, another PID namespace."""
    needle = argument.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue  # exited while we listed /proc
        if needle in argv:
            found.append(int(entry))
    return sorted(found)


class LineReader:
    """A started process whose stdout (text mode) is read by a daemon thread, so a test can
    wait for its next line with a deadline instead of blocking forever on a silent child."""

    def __init__(self, popen, ready_within, what="process"):
        self.popen = popen
        self.pid = popen.pid
        self.ready_within = ready_within
        self.what = what
        self._lines = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.popen.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def read_json(self, timeout=None):
        """The next stdout line, parsed as JSON; AssertionError if none comes in time."""
        timeout = self.ready_within if timeout is None else timeout
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.what} {self.pid} said nothing within {timeout} s") from None
        if line is None:
            try:
                status = self.popen.wait(5)
            except subprocess.TimeoutExpired:  # still running with its stdout closed
                status = "none yet"
            raise AssertionError(f"{self.what} {self.pid} closed its output (exit status "
                                 f"{status}) before it was ready")
        return json.loads(line)


def pgjob_plugin_args():
    """The pytest arguments that load pgjob's plugin in a child pytest run: none where pgjob
    is installed (its pytest11 entry point loads it), `-p pgjob.pytest_plugin` in the source
    tree (loading it both ways would register it twice)."""
    from importlib import metadata
    points = metadata.entry_points()
    group = (points.select(group="pytest11") if hasattr(points, "select")
             else points.get("pytest11", ()))
    return [] if any(p.name == "pgjob" for p in group) else ["-p", "pgjob.pytest_plugin"]


def running(pid):
    """Is `pid` a running process (a zombie is not), on Linux and on Windows?"""
    if sys.platform == "win32":
        import _winapi
        try:
            handle = _winapi.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        except OSError:
            return False
        try:
            return _winapi.GetExitCodeProcess(handle) == 259  # STILL_ACTIVE
        finally:
            _winapi.CloseHandle(handle)
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return data[data.rindex(b")") + 2:].split()[0] not in (b"Z", b"X")

