"""Process helpers and the reaper fixture for the CLI tests: start `pgjob run`, read readiness
lines with a deadline, find every process of a test by its token, and make sure all of them
are gone at the end."""
import os
import signal
import subprocess
import sys
import time

import pytest

import pgjob
from proc_helpers import LineReader, pids_with_argument, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
ACTOR = os.path.join(HERE, "cli_actor.py")
IS_WINDOWS = sys.platform == "win32"
#: The guarantee under test: the whole tree is gone this soon after the wrapper dies.
GONE_WITHIN = 5.0
#: Generous: a Python under Wine or on a loaded 2-core machine starts slowly.
READY_WITHIN = 60.0


def pgjob_env(**extra):
    """The environment for a child that must import the same pgjob as this test."""
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(pgjob.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def pgjob_run(*options):
    """`python -m pgjob run OPTIONS` up to (not including) the `--`."""
    return [sys.executable, "-m", "pgjob", "run", *options]


def actor(role, token, *extra):
    return [sys.executable, ACTOR, role, "--token", token, *map(str, extra)]


if IS_WINDOWS:
    import _winapi

    _SYNCHRONIZE = 0x00100000
    _PROCESS_TERMINATE = 0x0001

    def _open(pid, access):
        try:
            return _winapi.OpenProcess(access, False, pid)
        except OSError:
            return None

    def alive(pid):
        handle = _open(pid, _SYNCHRONIZE)
        if handle is None:
            return False
        try:
            return _winapi.WaitForSingleObject(handle, 0) == _winapi.WAIT_TIMEOUT
        finally:
            _winapi.CloseHandle(handle)

    def kill(pid):
        handle = _open(pid, _PROCESS_TERMINATE)
        if handle is None:
            return
        try:
            _winapi.TerminateProcess(handle, 9)
        except OSError:
            pass  # exited between OpenProcess and TerminateProcess
        finally:
            _winapi.CloseHandle(handle)

    def token_pids(token):
        raise NotImplementedError("finding processes by command line is Linux-only here")
elif not sys.platform.startswith("linux"):
    # macOS and the BSDs: no /proc; ps(1) tells the same things.
    def alive(pid):
        result = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True)
        state = result.stdout.strip()
        return bool(state) and not state.startswith("Z")

    def kill(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # already gone

    def token_pids(token):
        result = subprocess.run(["ps", "-A", "-o", "pid=,stat=,args="], capture_output=True, text=True)
        found = []
        for line in result.stdout.splitlines():
            pid, state, args = (line.split(None, 2) + ["", ""])[:3]
            if token in args.split() and not state.startswith("Z"):
                found.append(int(pid))
        return sorted(found)
else:
    def alive(pid):
        """True while `pid` runs; a zombie (dead, not yet reaped by a parent that may never
        reap it, e.g. a container's pid 1) counts as gone."""
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except (FileNotFoundError, ProcessLookupError):
            return False
        state = stat[stat.rindex(b")") + 2:][:1]
        return state not in (b"Z", b"X")

    def kill(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # already gone

    def token_pids(token):
        """Host pids of the live processes whose command line contains `token`."""
        return [pid for pid in pids_with_argument(token) if alive(pid)]


def wait_gone(pids, timeout=GONE_WITHIN):
    """Wait until none of `pids` runs; return the survivors (empty on success)."""
    pids = list(pids)
    wait_until(lambda: not any(alive(p) for p in pids), timeout)
    return [p for p in pids if alive(p)]


class Running(LineReader):
    """A started process with a deadline-bounded reader of its stdout lines."""

    def __init__(self, popen):
        super().__init__(popen, READY_WITHIN)

    def wait(self, timeout=READY_WITHIN):
        return self.popen.wait(timeout)


class Reaper:
    """Every process a test started, found again at the end: killed if still there, reaped,
    and asserted gone."""

    def __init__(self):
        self.popens = []
        self.pids = set()
        self.tokens = []
        self._count = 0

    def token(self):
        self._count += 1
        token = f"pgjobtest-{os.getpid()}-{self._count}-{time.monotonic_ns()}"
        self.tokens.append(token)
        return token

    def track(self, *pids):
        self.pids.update(p for p in pids if p)

    def start(self, command, **kwargs):
        """Start `command` (stdout read line by line, pgjob importable) and track it."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("text", True)
        kwargs.setdefault("env", pgjob_env())
        if not IS_WINDOWS:
            # No controlling terminal: signals the test sends are the only ones the wrapper
            # gets, whether pytest runs in a terminal or in CI.
            kwargs.setdefault("start_new_session", True)
        popen = subprocess.Popen(command, **kwargs)
        running = Running(popen) if kwargs["stdout"] == subprocess.PIPE else None
        self.popens.append((popen, running))
        self.track(popen.pid)
        return running or popen

    def survivors(self):
        pids = set(self.pids)
        if not IS_WINDOWS:
            for token in self.tokens:
                pids.update(token_pids(token))
        return sorted(p for p in pids if alive(p))

    def finish(self):
        leftovers = self.survivors()
        for pid in leftovers:
            kill(pid)
        for popen, running in self.popens:
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                pass
            if running is not None:
                # Every writer of the pipe is dead now: the reader sees EOF and ends.
                running.reader.join(10)
            if popen.stdout is not None:
                popen.stdout.close()
        gone_late = wait_gone(leftovers, timeout=10)
        assert not gone_late, f"processes survived the cleanup: {gone_late}"
        assert not self.survivors(), f"processes left behind: {self.survivors()}"
        return leftovers


@pytest.fixture
def reaper():
    """The Reaper of one test (imported by the test module; no conftest.py here, because a
    second top-level `conftest` module would shadow tests/windows' and tests/linux' own when
    several suites are collected in one run)."""
    reaper = Reaper()
    try:
        yield reaper
    finally:
        reaper.finish()
