"""pgjob-helper, the program pgjob execs for its helper processes, and the C spawn's
clone3(CLONE_INTO_CGROUP): what the kernel received, read back from /proc."""
import os
import subprocess
import uuid

import pytest

import pgjob
from pgjob import _jobobject as c
from pgjob import _linux_helpers
from pgjob._linux_spawn import _execute_child_with, _spawn

from proc_helpers import wait_until


# -- a temporary cgroup v2 ------------------------------------------------------------------------

def unified_mount():
    """Mount point of the cgroup2 hierarchy, from /proc/self/mountinfo; None without one."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2":
                return left.split()[4].replace("\\040", " ")
    return None


def own_cgroup():
    """Our cgroup in the unified hierarchy, from the 0:: line of /proc/self/cgroup."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].rstrip("\n")
    return None


def cgroup_of(pid):
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].rstrip("\n")
    return None


@pytest.fixture
def child_cgroup():
    """(path relative to the hierarchy, directory) of a new child of our own cgroup, removed
    after the test; skipped where we may not create one (no cgroup2, not delegated to us)."""
    mount, own = unified_mount(), own_cgroup()
    if mount is None or own is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    name = f"pgjob-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    relative = os.path.join(own, name)
    directory = os.path.join(mount, relative.lstrip("/"))
    try:
        os.mkdir(directory)
    except PermissionError:
        pytest.skip(f"no permission to create a cgroup under {os.path.dirname(directory)}")
    try:
        yield relative, directory
    finally:
        # Anything left inside would keep rmdir from working: kill it first (5.14+).
        if os.path.exists(os.path.join(directory, "cgroup.kill")):
            with open(os.path.join(directory, "cgroup.kill"), "w") as f:
                f.write("1")

        def removed():
            try:
                os.rmdir(directory)
            except OSError:
                return False
            return True
        assert wait_until(removed, timeout=10), f"could not remove {directory}"


class CgroupPopen(subprocess.Popen):
    """subprocess.Popen whose one fork_exec call goes to pgjob's spawn with a cgroup_fd."""

    def __init__(self, args, cgroup_fd, **kwargs):
        self._cgroup_fd = cgroup_fd
        super().__init__(args, **kwargs)

    def _execute_child(self, *args):
        def fork_exec(*fork_exec_args):
            pid, pidfd = _spawn(fork_exec_args, -1, -1, False, self._cgroup_fd)
            os.close(pidfd)
            return pid
        _execute_child_with(subprocess.Popen._execute_child, fork_exec)(self, *args)


def test_spawn_with_cgroup_fd_starts_the_program_in_that_cgroup(child_cgroup, tracker):
    relative, directory = child_cgroup
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        proc = CgroupPopen(["sleep", "60"], fd)
    finally:
        os.close(fd)
    tracker.track(proc.pid)
    try:
        assert cgroup_of(proc.pid) == relative
        with open(os.path.join(directory, "cgroup.procs")) as f:
            assert [int(line) for line in f] == [proc.pid]
        assert cgroup_of(os.getpid()) == own_cgroup() != relative  # and we stayed where we were
    finally:
        proc.kill()
        proc.wait(10)


def test_spawn_without_cgroup_fd_stays_in_our_cgroup(child_cgroup, tracker):
    """The control case: the same spawn without a cgroup_fd is a child in our own cgroup."""
    proc = CgroupPopen(["sleep", "60"], -1)
    tracker.track(proc.pid)
    try:
        assert cgroup_of(proc.pid) == own_cgroup()
    finally:
        proc.kill()
        proc.wait(10)


def test_spawn_into_a_cgroup_reports_a_failed_exec_as_subprocess_does(child_cgroup):
    _, directory = child_cgroup
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with pytest.raises(FileNotFoundError):
            CgroupPopen(["/nonexistent/pgjob-program"], fd)
    finally:
        os.close(fd)


def test_spawn_into_a_file_that_is_no_cgroup_fails_with_the_kernels_errno():
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with pytest.raises(OSError) as info:
            CgroupPopen(["true"], fd)
    finally:
        os.close(fd)
    assert "CLONE_INTO_CGROUP" in str(info.value)


# -- the helper program ---------------------------------------------------------------------------

def test_helper_path_is_the_executable_next_to_the_extension():
    path = _linux_helpers.helper_path()
    assert os.path.isabs(path)
    assert os.path.dirname(path) == os.path.dirname(os.path.abspath(c.__file__))
    assert os.access(path, os.X_OK)


def test_helper_path_names_a_missing_helper(monkeypatch, tmp_path):
    monkeypatch.setattr(c, "__file__", str(tmp_path / "_jobobject.so"))
    with pytest.raises(pgjob.UnsupportedError) as info:
        _linux_helpers.helper_path()
    assert str(tmp_path / "pgjob-helper") in str(info.value)


def test_helper_path_names_a_helper_that_is_not_executable(monkeypatch, tmp_path):
    (tmp_path / "pgjob-helper").write_bytes(b"")
    (tmp_path / "pgjob-helper").chmod(0o644)  # no x bit: not even root may exec it
    monkeypatch.setattr(c, "__file__", str(tmp_path / "_jobobject.so"))
    with pytest.raises(pgjob.UnsupportedError) as info:
        _linux_helpers.helper_path()
    assert "not executable" in str(info.value)
