"""Fixtures for the Linux suite: every process a test creates is tracked by (pid, start time),
killed if it is still there at the end, and the test fails if it had to be."""
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from proc_helpers import wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(os.path.dirname(HERE)), "src")
OWNER = os.path.join(HERE, "owner.py")


def start_time(pid):
    """Start time of `pid` (clock ticks since boot), None if it is gone or a zombie: with the
    pid it names one process, immune to pid reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def alive(proc):
    """proc is (pid, start_time) as recorded while it ran."""
    pid, started = proc
    return start_time(pid) == started


def kill_quietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # already gone


class ProcessTracker:
    def __init__(self):
        self.procs = set()

    def track(self, pid):
        started = start_time(pid)
        if started is not None:
            self.procs.add((pid, started))
        return (pid, started)

    def leftovers(self):
        return sorted(p for p in self.procs if alive(p))

    def kill_all(self):
        for pid, _ in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: not self.leftovers(), timeout=10)


@pytest.fixture
def tracker():
    """Every process a test records must be gone when it ends; leftovers are killed and the
    test fails (unless it marked them as expected survivors by forgetting them)."""
    t = ProcessTracker()
    yield t
    left = t.leftovers()
    t.kill_all()
    assert not t.leftovers(), "could not kill leftovers"
    assert not left, f"processes outlived the test: {left}"


class Owner:
    """A separate Python process that creates a job (tests/linux/owner.py), reports its members'
    host pids on stdout once they are all ready, then waits for a command on stdin."""

    def __init__(self, tracker, tmp_path, scenario, mechanism="auto", extra=(), user=None,
                 wrapper=(), python=sys.executable):
        self.tracker = tracker
        # Not under tmp_path: pytest makes that 0700, and an unprivileged owner must write here.
        self.ready_dir = ready_dir = tempfile.mkdtemp(prefix="pgjob-ready-")
        os.chmod(ready_dir, 0o777)
        env = dict(os.environ, PYTHONPATH=SRC, PYTHONDONTWRITEBYTECODE="1")
        env.pop("PGJOB_DEBUG", None)
        kwargs = {}
        if user is not None:
            kwargs.update(user=user, group=user, extra_groups=[])
        self.proc = subprocess.Popen(
            [*wrapper, python, OWNER, mechanism, scenario, str(ready_dir), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            **kwargs)
        tracker.track(self.proc.pid)
        self.info = self._read_report()
        self.members = [tracker.track(pid) for pid in self.info["pids"]]
        self.members = [m for m in self.members if m[1] is not None]

    def _read_report(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        line = b""
        fd = self.proc.stdout.fileno()
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                self.proc.kill()
                raise AssertionError(f"owner not ready in {timeout}s: {self.proc.stderr.read()!r}")
            chunk = os.read(fd, 1)
            if not chunk:
                self.proc.wait()
                raise AssertionError(f"owner exited {self.proc.returncode}: "
                                     f"{self.proc.stderr.read().decode()}")
            line += chunk
        return json.loads(line)

    def command(self, what):
        self.proc.stdin.write(what.encode() + b"\n")
        self.proc.stdin.flush()

    def sigkill(self):
        self.proc.kill()
        self.proc.wait(10)
        killed_at = time.monotonic()
        self.proc.stdin.close()
        return killed_at

    def finish(self, timeout=20):
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err.decode()

    def members_gone(self, timeout=10.0):
        return wait_until(lambda: not any(alive(m) for m in self.members), timeout)


# The uids a root test drops to. 1500 is an ordinary user's (scripts/setup makes pgjob-tester);
# 65534 is "nobody" and also the kernel's overflow uid, what any unmapped id reads as: a uid_map
# written with the wrong id still looks right as 65534, so every such test runs with both.
UNPRIVILEGED_UIDS = [1500, 65534]


def unprivileged_python(uid):
    """An interpreter `uid` may run that loads the extension we built (same ABI tag): pyenv's
    own lives under /root, which no other user can enter (scripts/test runs world-readable
    copies of them)."""
    if os.geteuid() != 0:
        pytest.skip("not root: can't switch to another uid (the suite itself also runs as an "
                    "ordinary user)")
    for candidate in (sys.executable, "/usr/bin/python3", shutil.which("python3") or ""):
        if not candidate or not os.path.exists(candidate):
            continue
        try:
            check = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                user=uid, group=uid, extra_groups=[], capture_output=True, text=True, cwd="/")
        except PermissionError:
            continue
        if check.returncode == 0 and check.stdout.strip() == "%d.%d" % sys.version_info[:2]:
            return candidate
    pytest.skip("no Python %d.%d that uid %d can run" % (*sys.version_info[:2], uid))


@pytest.fixture
def owner_factory(tracker, tmp_path):
    owners = []

    def make(scenario, mechanism="auto", **kwargs):
        o = Owner(tracker, tmp_path, scenario, mechanism, **kwargs)
        owners.append(o)
        return o

    yield make
    for o in owners:
        if o.proc.poll() is None:
            o.proc.kill()
        o.proc.wait(10)
        shutil.rmtree(o.ready_dir, ignore_errors=True)
        for stream in (o.proc.stdin, o.proc.stdout, o.proc.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass


@pytest.fixture
def job_factory():
    """pgjob.Job objects that are closed (and their members killed) after the test."""
    import pgjob
    jobs = []

    def make(**kwargs):
        job = pgjob.Job(**kwargs)
        jobs.append(job)
        return job

    yield make
    for job in jobs:
        job.close()
