"""Fixtures for the Linux suite: every process a test creates is tracked by (pid, start time),
killed if it is still there at the end, and the test fails if it had to be."""
import errno
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

from proc_helpers import scaled, wait_until

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
                 wrapper=(), python=sys.executable, ready_within=20.0):
        self.tracker = tracker
        # Not under tmp_path: pytest makes that 0700, and an unprivileged owner must write here.
        self.ready_dir = ready_dir = tempfile.mkdtemp(prefix="pgjob-ready-")
        os.chmod(ready_dir, 0o777)
        env = dict(os.environ, PYTHONPATH=SRC, PYTHONDONTWRITEBYTECODE="1")
        env.pop("PGJOB_DEBUG", None)
        kwargs = {}
        if user is not None and user != os.geteuid():  # already that user: nothing to switch
            kwargs.update(user=user, group=user, extra_groups=[])
        self.proc = subprocess.Popen(
            [*wrapper, python, OWNER, mechanism, scenario, str(ready_dir), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            **kwargs)
        me = tracker.track(self.proc.pid)
        self.info = self._read_report(scaled(ready_within))
        # Only processes younger than the owner can be its members: the tracker SIGKILLs
        # leftovers, and a wrong report must never make it kill the machine's processes.
        reported = [pid for pid in self.info.get("pids", [])
                    if (start_time(pid) or -1) >= (me[1] or 0) and pid != os.getpid()]
        self.members = [tracker.track(pid) for pid in reported]
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
    if os.geteuid() == uid:
        return sys.executable  # the suite runs as that user (scripts/vm --user, H4's harness)
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
        # A test that failed half-way leaves a live owner's members: give the mechanism its
        # usual time to take them down before the tracker counts leftovers.
        o.members_gone(timeout=scaled(2))
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


# -- cgroup v2 and delegation ---------------------------------------------------------------

TEST_UID = 1500  # pgjob-tester, an ordinary user (scripts/setup makes it); not 65534


def cgroup2_mount():
    """Where the unified (cgroup2) hierarchy is mounted, from /proc/self/mountinfo; None if
    nowhere. (This host has a v1/v2 hybrid with it at .../unified; never assume a path.)"""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                return fields[4].replace("\\040", " ")
    return None


def cgroup_of(pid="self"):
    """The cgroup v2 path of `pid` (the "0::" line of /proc/PID/cgroup), relative to the
    mount; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def cgroup_path(relative):
    return os.path.join(cgroup2_mount(), relative.lstrip("/"))


def cgroup_procs(directory):
    """The pids in a cgroup; none once it is removed (ENOENT, or ENODEV for a cgroup that was
    removed, by pgjob's watcher for one, between our open and our read)."""
    try:
        with open(os.path.join(directory, "cgroup.procs")) as f:
            return [int(line) for line in f if line.strip()]
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV):
            return []
        raise


# The files systemd's Delegate=yes hands to the user besides the directory itself.
DELEGATED_FILES = ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads")


def _own_delegated_cgroup():
    """A cgroup delegated to this (non-root) process's user, where it may make children and
    move itself: the one the harness names (scripts/vm's guest sets
    PGJOB_VM_DELEGATED_CGROUP to user@UID.service, whose leaf scope the command runs in),
    else our own cgroup if it is ours (systemd's Delegate=yes). None if neither is."""
    mount = cgroup2_mount()
    if mount is None:
        return None
    named = os.environ.get("PGJOB_VM_DELEGATED_CGROUP")
    candidates = ([cgroup_path(named)] if named else []) + [cgroup_path(cgroup_of())]
    for path in candidates:
        try:
            if os.stat(path).st_uid != os.geteuid():
                continue
        except OSError:
            continue
        if os.access(path, os.W_OK) and os.access(os.path.join(path, "cgroup.procs"), os.W_OK):
            return path
    return None


def remove_cgroup_tree(top):
    """Kill whatever is left in `top` and below (cgroup.kill), then remove the directories
    bottom up; return the directories that were there besides `top` itself."""
    extra = []
    for dirpath, dirs, _files in os.walk(top, topdown=False):
        if dirpath != top:
            extra.append(dirpath)
        kill = os.path.join(dirpath, "cgroup.kill")
        if os.path.exists(kill) and cgroup_procs(dirpath):
            try:
                with open(kill, "w") as f:
                    f.write("1")
            except OSError:
                pass  # an old kernel without cgroup.kill: the tracker kills what it knows
        wait_until(lambda: not cgroup_procs(dirpath), timeout=scaled(10))
        # EBUSY for a moment after the last process left: the kernel still accounts it
        # (exiting, or a zombie not reaped yet).
        wait_until(lambda: _rmdir(dirpath), timeout=scaled(10))
        if os.path.exists(dirpath):
            os.rmdir(dirpath)  # raises with the kernel's reason
    return extra


def _rmdir(path):
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True  # the job's own cleanup got there first
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return False
        raise
    return True


class DelegatedCgroup:
    """A cgroup delegated to an ordinary user, as systemd's Delegate=yes gives one: the owner
    starts inside it (its pid is written to cgroup.procs before it execs Python) as `uid`."""

    def __init__(self, path, uid, python, as_root):
        self.path = path
        self.relative = "/" + os.path.relpath(path, cgroup2_mount())
        self.uid = uid
        self.python = python
        if as_root:
            # sh moves itself in, then becomes the ordinary user in place (setpriv execs).
            self.wrapper = ("sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec setpriv '
                            f'--reuid={uid} --regid={uid} --clear-groups "$@"', path)
        else:
            self.wrapper = ("sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', path)

    def subdirectories(self):
        found = []
        for dirpath, dirs, _ in os.walk(self.path):
            found.extend(os.path.join(dirpath, d) for d in dirs)
        return found


@pytest.fixture
def delegated_cgroup():
    """A fresh cgroup delegated to uid 1500 in the cgroup2 hierarchy (root makes and chowns
    it), or, when the suite itself runs as an ordinary user inside a delegated cgroup, a new
    child of that one. Removed (after killing what is left in it) at the end."""
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup2 hierarchy is mounted")
    name = f"pgjob-delegated-{os.getpid()}-{time.monotonic_ns()}"
    if os.geteuid() == 0:
        parent = cgroup_path(cgroup_of())
        if not os.access(parent, os.W_OK):
            pytest.skip(f"cgroup2 at {mount} is read-only here")
        python = unprivileged_python(TEST_UID)
        path = os.path.join(parent, name)
        os.mkdir(path)
        try:
            os.chown(path, TEST_UID, TEST_UID)
            for file in DELEGATED_FILES:
                os.chown(os.path.join(path, file), TEST_UID, TEST_UID)
        except OSError:
            os.rmdir(path)
            raise
        cgroup = DelegatedCgroup(path, TEST_UID, python, as_root=True)
    else:
        own = _own_delegated_cgroup()
        if own is None:
            pytest.skip(f"uid {os.geteuid()} runs in cgroup {cgroup_of()}, which is not "
                        "delegated to it (run as root, or in a Delegate=yes cgroup)")
        path = os.path.join(own, name)
        os.mkdir(path)
        cgroup = DelegatedCgroup(path, os.geteuid(), sys.executable, as_root=False)
    try:
        yield cgroup
    finally:
        remove_cgroup_tree(path)


@pytest.fixture
def undelegated_user():
    """How to run an owner as an ordinary user whose cgroup is not delegated to it:
    {"user": uid or None, "python": interpreter}. Skips where the suite can't arrange that."""
    if os.geteuid() == 0:
        return {"user": TEST_UID, "python": unprivileged_python(TEST_UID)}
    if _own_delegated_cgroup() is not None:
        pytest.skip("this ordinary user runs in a delegated cgroup: there is no undelegated "
                    "place to start the owner in")
    return {"user": None, "python": sys.executable}
